//! When a project's cached metadata stops being current: one moment per project, moved on by
//! writes and by refreshes that found new content, and the pushed versions still awaited
//! from GitLab.
//!
//! "One project, one moment": a cached answer fetched before its project's moment is of an
//! older generation and is revalidated with GitLab before it is served again, so a client
//! never gets answers of one project that GitLab gave at different times on either side of
//! a change the proxy knows of. After a push, the project's answers that could show the
//! pushed version are asked of GitLab every time (coalesced) until one shows it, or until
//! the push window ends: GitLab processes uploads in the background.

pub mod shows;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::clock::Clock;
use crate::protocol::rubygems::{GemRequest, SpecIndex};

/// Which of a project's answers a pushed version appears in, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Surface {
    /// The dependency API (GitLab's database: as soon as the upload is processed).
    Dependencies,
    /// The spec indexes (rebuilt by a later background job).
    SpecIndexes,
}

/// A version pushed through the proxy that GitLab has not shown yet on some surface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awaited {
    pub name: String,
    pub version: String,
    /// Surfaces that have not shown it yet.
    pending: Vec<Surface>,
    until_ms: u64,
}

#[derive(Debug, Default)]
struct ProjectState {
    /// Clock milliseconds of the last change; 0: none known.
    moment_ms: u64,
    awaited: Vec<Awaited>,
}

/// Per-project moments and awaited versions, shared by every request.
///
/// Projects are keyed as named in the URL (an id and a path of one project are two keys,
/// as for authorization decisions and cache keys).
#[derive(Debug, Clone)]
pub struct Freshness {
    clock: Clock,
    projects: Arc<Mutex<HashMap<Arc<str>, ProjectState>>>,
}

impl Freshness {
    /// `clock` must be the one cached answers are stamped with.
    pub fn new(clock: Clock) -> Freshness {
        Freshness {
            clock,
            projects: Arc::default(),
        }
    }

    fn with<T>(&self, project: &str, f: impl FnOnce(&mut ProjectState) -> T) -> T {
        let mut projects = self.projects.lock().unwrap_or_else(PoisonError::into_inner);
        match projects.get_mut(project) {
            Some(state) => f(state),
            None => f(projects.entry(Arc::from(project)).or_default()),
        }
    }

    /// Moves the project on: every answer of it cached before now is of an older
    /// generation. Returns the new moment.
    pub fn bump(&self, project: &str) -> u64 {
        self.bump_at(project, self.clock.now_ms())
    }

    /// Moves the project on to `at_ms` (a time already taken, such as the stamp of the new
    /// answer that showed the change, so that answer itself stays current).
    pub fn bump_at(&self, project: &str, at_ms: u64) -> u64 {
        self.with(project, |state| {
            state.moment_ms = state.moment_ms.max(at_ms);
            state.moment_ms
        })
    }

    /// The project's current moment (0 when nothing changed since start).
    pub fn moment(&self, project: &str) -> u64 {
        let projects = self.projects.lock().unwrap_or_else(PoisonError::into_inner);
        projects.get(project).map_or(0, |state| state.moment_ms)
    }

    /// Whether an answer of `project` fetched at `fetched_at_ms` belongs to its current
    /// generation.
    pub fn is_current(&self, project: &str, fetched_at_ms: u64) -> bool {
        fetched_at_ms >= self.moment(project)
    }

    /// Records a push of `name`-`version` to `project`: its answers that could show it are
    /// asked of GitLab until they do, for at most `window`.
    pub fn await_push(&self, project: &str, name: &str, version: &str, window: Duration) {
        let until_ms = self
            .clock
            .now_ms()
            .saturating_add(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
        let awaited = Awaited {
            name: name.to_owned(),
            version: version.to_owned(),
            pending: vec![Surface::Dependencies, Surface::SpecIndexes],
            until_ms,
        };
        self.with(project, |state| {
            state
                .awaited
                .retain(|a| !(a.name == name && a.version == version));
            state.awaited.push(awaited);
        });
    }

    /// Every version pushed to `project` through the proxy within its window, as (name,
    /// version), whether or not GitLab shows it yet.
    pub fn pushed(&self, project: &str) -> Vec<(String, String)> {
        let now = self.clock.now_ms();
        let projects = self.projects.lock().unwrap_or_else(PoisonError::into_inner);
        projects.get(project).map_or_else(Vec::new, |state| {
            state
                .awaited
                .iter()
                .filter(|a| a.until_ms > now)
                .map(|a| (a.name.clone(), a.version.clone()))
                .collect()
        })
    }

    /// The versions an answer to `request` of `project` must be checked for: those pushed
    /// within the window that have not shown on its surface yet. Empty for requests that
    /// cannot show a pushed version (a dependency query for other gems).
    pub fn awaited_by(&self, project: &str, request: &GemRequest) -> Vec<Awaited> {
        let Some(surface) = surface_of(request) else {
            return Vec::new();
        };
        let now = self.clock.now_ms();
        let mut projects = self.projects.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(state) = projects.get_mut(project) else {
            return Vec::new();
        };
        state
            .awaited
            .retain(|a| a.until_ms > now && !a.pending.is_empty());
        state
            .awaited
            .iter()
            .filter(|a| a.pending.contains(&surface))
            .filter(|a| match request {
                GemRequest::Dependencies(Some(list)) => {
                    list.names().iter().any(|n| n.as_str() == a.name)
                }
                _ => true,
            })
            .cloned()
            .collect()
    }

    /// GitLab's answer on this surface now shows `awaited`: stop asking for it there.
    /// Returns whether anything changed.
    pub fn shown(&self, project: &str, surface: Surface, awaited: &Awaited) -> bool {
        self.with(project, |state| {
            let mut changed = false;
            for a in &mut state.awaited {
                if a.name == awaited.name && a.version == awaited.version {
                    let before = a.pending.len();
                    a.pending.retain(|s| *s != surface);
                    changed |= a.pending.len() != before;
                }
            }
            changed
        })
    }
}

/// The surface a RubyGems metadata request reads, if it can show a pushed version.
pub fn surface_of(request: &GemRequest) -> Option<Surface> {
    match request {
        GemRequest::Dependencies(Some(_)) => Some(Surface::Dependencies),
        GemRequest::SpecIndex(_) => Some(Surface::SpecIndexes),
        GemRequest::Dependencies(None)
        | GemRequest::RootFile
        | GemRequest::Root
        | GemRequest::CompactIndex(_)
        | GemRequest::Gemspec(_)
        | GemRequest::Gem(_)
        | GemRequest::Upload
        | GemRequest::UploadAuthorize => None,
    }
}

/// Whether a spec index of this kind can list `version` at all (released versions are in
/// `specs` and `latest_specs`, prereleases in `prerelease_specs`).
pub fn index_can_list(index: SpecIndex, version: &str) -> bool {
    let prerelease = version.bytes().any(|b| b.is_ascii_alphabetic());
    match index {
        SpecIndex::PrereleaseSpecs => prerelease,
        SpecIndex::Specs | SpecIndex::LatestSpecs => !prerelease,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::rubygems::GemList;

    fn deps(names: &str) -> GemRequest {
        GemRequest::Dependencies(GemList::from_query(Some(&format!("gems={names}"))).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn moments_make_older_answers_stale() {
        let clock = Clock::new();
        let freshness = Freshness::new(clock);
        let before = clock.now_ms();
        assert!(freshness.is_current("7", before), "nothing changed yet");
        tokio::time::advance(Duration::from_millis(5)).await;
        let moment = freshness.bump("7");
        assert!(!freshness.is_current("7", before));
        assert!(freshness.is_current("7", moment));
        assert!(
            freshness.is_current("8", before),
            "other projects are untouched"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pushes_are_awaited_per_surface_within_the_window() {
        let freshness = Freshness::new(Clock::new());
        freshness.await_push("7", "acme", "1.2.0", Duration::from_secs(60));
        assert_eq!(freshness.awaited_by("7", &deps("acme,rack")).len(), 1);
        assert!(freshness.awaited_by("7", &deps("rack")).is_empty());
        assert!(freshness.awaited_by("8", &deps("acme")).is_empty());
        let specs = GemRequest::SpecIndex(SpecIndex::Specs);
        let awaited = freshness.awaited_by("7", &specs);
        assert_eq!(awaited.len(), 1);
        assert!(freshness.shown("7", Surface::Dependencies, &awaited[0]));
        assert!(freshness.awaited_by("7", &deps("acme")).is_empty());
        assert_eq!(freshness.awaited_by("7", &specs).len(), 1, "indexes lag");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(freshness.awaited_by("7", &specs).is_empty(), "bounded");
    }
}
