//! Integrity pinning: the first copy of an artifact the proxy stores is the one it serves, and
//! GitLab's bytes for the same version seen later are compared with it; a difference (a moved
//! Git tag, a re-pushed gem) is logged, counted and listed, never adopted silently.
//!
//! The first copy's fingerprint (SHA-256, and for Go the `h1:` that go.sum holds) is a store
//! record that outlives eviction, so a refill of an evicted artifact is checked too. Only an
//! operator's purge forgets it; the next fill then becomes the first copy.
//!
//! When a change is seen while the first copy is still stored, that copy is pinned (kept from
//! eviction: it is the only good copy left) and keeps being served. A refill of an evicted
//! version is checked before any byte of it leaves (see [`OnChange`]); eviction keeps the
//! bytes of first copies in a share of the store set aside for them (`integrity.
//! originals_max_bytes`, see [`keeps_original`]), so a changed refill is answered with the
//! first copy, restored and pinned, rather than refused.

pub mod fill_reader;
pub mod verify;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::airgap::gosum;
use crate::metrics::Metrics;
use crate::protocol::goproxy::{case_decode, GoRequest};
use crate::protocol::rubygems::GemRequest;
use crate::route::{Endpoint, PackageRequest, PackageRoute};
use crate::storage::{ArtifactStore, FillId, Store, StoreError};

use fill_reader::FillReader;

/// Record namespace of first-copy fingerprints, keyed by artifact key.
const PINNED: &str = "integrity";
/// Record namespace of the list of detected changes (one record).
const CHANGES: &str = "integrity-changes";
const CHANGES_KEY: &[u8] = b"list";
/// Changes kept in the list; the oldest go first beyond it (the metric still counts them).
const MAX_CHANGES: usize = 1000;

/// The first copy recorded for `key`, read from `store` directly (for blocking callers such as
/// a bundle import).
pub fn first_copy_in(
    store: &dyn ArtifactStore,
    key: &str,
) -> Result<Option<Fingerprint>, StoreError> {
    let Some(raw) = store.get_record(PINNED, key.as_bytes())? else {
        return Ok(None);
    };
    serde_json::from_slice::<Pinned>(&raw)
        .map(|pinned| Some(pinned.first))
        .map_err(|e| StoreError::Corrupt {
            key_or_fill: format!("integrity record of {key}"),
            detail: e.to_string(),
        })
}

/// Records `first` as the first copy of `key` unless one is recorded already (for blocking
/// callers such as a bundle import).
pub fn record_first_in(
    store: &dyn ArtifactStore,
    key: &str,
    first: Fingerprint,
) -> Result<(), StoreError> {
    if Subject::of_key(key).is_none() || store.get_record(PINNED, key.as_bytes())?.is_some() {
        return Ok(());
    }
    let record = Pinned {
        first,
        stored_unix: unix_now(),
    };
    let value = serde_json::to_vec(&record).map_err(|e| StoreError::Io(e.to_string()))?;
    store.put_record(PINNED, key.as_bytes(), &value)
}

/// Whether the artifact under `key` keeps its bytes when evicted (see
/// [`crate::storage::OriginalsPolicy`]): the artifacts whose first copy is fingerprinted.
pub fn keeps_original(key: &str) -> bool {
    Subject::of_key(key).is_some()
}

/// The keys of every artifact of the version `key` is one of: a Go version's `.info`, `.mod`
/// and `.zip`; a gem's `.gem` and `.gemspec.rz`. Just `key` for anything else.
fn version_keys(key: &str) -> Vec<String> {
    if key.contains("/@v/") {
        for ext in [".info", ".mod", ".zip"] {
            if let Some(stem) = key.strip_suffix(ext) {
                return [".info", ".mod", ".zip"]
                    .iter()
                    .map(|ext| format!("{stem}{ext}"))
                    .collect();
            }
        }
    }
    if let Some((base, stem)) = key
        .rsplit_once("/gems/")
        .and_then(|(base, file)| Some((base, file.strip_suffix(".gem")?)))
    {
        return vec![
            key.to_owned(),
            format!("{base}/quick/Marshal.4.8/{stem}.gemspec.rz"),
        ];
    }
    if let Some((base, stem)) = key
        .rsplit_once("/quick/Marshal.4.8/")
        .and_then(|(base, file)| Some((base, file.strip_suffix(".gemspec.rz")?)))
    {
        return vec![format!("{base}/gems/{stem}.gem"), key.to_owned()];
    }
    vec![key.to_owned()]
}

/// What identifies a copy of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Hex.
    pub sha256: String,
    pub len: u64,
    /// Go only: the zip's `h1:`, or the `.mod`'s `/go.mod` `h1:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h1: Option<String>,
}

impl Fingerprint {
    /// Whether `other` is the same content. GitLab rebuilds zips on every request, so zips
    /// with an `h1:` on both sides compare by it; everything else by SHA-256.
    pub fn same_content(&self, other: &Fingerprint) -> bool {
        match (&self.h1, &other.h1) {
            (Some(a), Some(b)) => a == b,
            _ => self.sha256 == other.sha256,
        }
    }
}

/// The first copy's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pinned {
    #[serde(flatten)]
    first: Fingerprint,
    stored_unix: u64,
}

/// What an artifact key names, for people reading a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// As in URLs: an id or a URL-encoded full path.
    pub project: String,
    /// `go_info`, `go_mod`, `go_zip`, `gem_file`, `gem_gemspec`.
    pub kind: String,
    /// The Go module path, or the gem name.
    pub name: String,
    /// The Go version, or the gem version (with its platform, if any).
    pub version: String,
}

impl Subject {
    /// `None` for keys that are not artifacts of a package route.
    pub fn of_key(key: &str) -> Option<Subject> {
        let uri: http::Uri = key.parse().ok()?;
        let Ok(Endpoint::Package(route)) = Endpoint::parse(&http::Method::GET, &uri) else {
            return None;
        };
        let kind = route.name().to_owned();
        let (name, version) = match &route.request {
            PackageRequest::Go { module, request } => match request {
                GoRequest::Info(v) | GoRequest::Mod(v) | GoRequest::Zip(v) => (
                    module.decoded().to_owned(),
                    case_decode(v.as_str()).unwrap_or_else(|| v.as_str().to_owned()),
                ),
                GoRequest::List => return None,
            },
            PackageRequest::Gem(GemRequest::Gem(file) | GemRequest::Gemspec(file)) => {
                let stem = file.decoded();
                let stem = stem
                    .strip_suffix(".gemspec.rz")
                    .or_else(|| stem.strip_suffix(".gem"))
                    .unwrap_or(stem);
                split_gem_stem(stem)
            }
            PackageRequest::Gem(_) => return None,
        };
        Some(Subject {
            project: route.project.as_raw().to_owned(),
            kind,
            name,
            version,
        })
    }

    fn is_zip(&self) -> bool {
        self.kind == "go_zip"
    }

    fn is_go_mod(&self) -> bool {
        self.kind == "go_mod"
    }
}

/// `rack-3.0.0` → (`rack`, `3.0.0`); `nokogiri-1.16.0-x86_64-linux` → (`nokogiri`,
/// `1.16.0-x86_64-linux`): gem versions start with a digit, gem names' segments rarely do.
fn split_gem_stem(stem: &str) -> (String, String) {
    let at = stem
        .match_indices('-')
        .map(|(i, _)| i)
        .find(|&i| stem[i + 1..].starts_with(|c: char| c.is_ascii_digit()));
    match at {
        Some(i) => (stem[..i].to_owned(), stem[i + 1..].to_owned()),
        None => (stem.to_owned(), String::new()),
    }
}

/// A difference between the first copy and what GitLab sent later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub key: String,
    #[serde(flatten)]
    pub subject: Subject,
    /// The copy the proxy keeps (the first one).
    pub pinned: Fingerprint,
    /// What GitLab sent.
    pub seen: Fingerprint,
    /// How it was seen: `refill` (fetched again after eviction or a purge of the bytes only)
    /// or `recheck` (a sampled background revalidation).
    pub how: String,
    pub first_seen_unix: u64,
    pub last_seen_unix: u64,
    /// How often this same difference was seen.
    pub times: u64,
}

/// What clients get when GitLab's content for an evicted version differs from its first copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnChange {
    /// Refills of versions seen before are checked before any byte is sent; a different
    /// content is refused (502, naming the change) until an operator purges the version.
    #[default]
    Hold,
    /// GitLab's new content is streamed to the caller as it arrives (never stored); the
    /// change is still detected, logged and listed.
    Relay,
}

/// What to do with a fill that is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing pinned for the key yet: publish it and pin it.
    First,
    /// The pinned content again: publish it.
    Same,
    /// Different content: do not publish it.
    Changed,
    /// Could not be decided (store failure): publish it, pin nothing.
    Unknown,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Integrity {
    store: Store,
    metrics: Arc<Metrics>,
    /// Chunk size of fills, to open stored zips in place.
    chunk_size: usize,
    /// Serializes read-modify-write of the change list.
    changes_lock: Arc<tokio::sync::Mutex<()>>,
    /// One in this many Go `.info`/`.mod` requests is rechecked (0: none).
    recheck_every: u32,
    recheck_count: Arc<AtomicU64>,
    verifier: verify::Verifier,
    on_change: OnChange,
}

impl std::fmt::Debug for Integrity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Integrity")
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Integrity {
    pub fn new(store: Store, metrics: Arc<Metrics>, chunk_size: usize) -> Integrity {
        Integrity {
            store,
            metrics,
            chunk_size,
            changes_lock: Arc::default(),
            recheck_every: 0,
            recheck_count: Arc::default(),
            verifier: verify::Verifier::default(),
            on_change: OnChange::default(),
        }
    }

    /// What a refill whose content changed gives its callers.
    pub fn with_on_change(mut self, on_change: OnChange) -> Integrity {
        self.on_change = on_change;
        self
    }

    pub fn on_change(&self) -> OnChange {
        self.on_change
    }

    /// Whether a refill of `key` must be checked whole before its first byte is sent: a
    /// first copy was recorded and changed content is held back.
    pub async fn holds_refill_of(&self, key: &str) -> bool {
        if self.on_change != OnChange::Hold || Subject::of_key(key).is_none() {
            return false;
        }
        match self.pinned(key).await {
            Ok(found) => found.is_some(),
            Err(e) => {
                // An unreadable record must not let changed bytes out unchecked.
                tracing::warn!(%key, error = %e, "integrity record unreadable; checking the refill first");
                true
            }
        }
    }

    /// Samples one in `every` requests of Go `.info` and `.mod` for [`Integrity::observe`].
    pub fn with_recheck(mut self, every: u32) -> Integrity {
        self.recheck_every = every;
        self
    }

    /// Whether this request is one of the sample to recheck against GitLab if it is answered
    /// from cache: cheap metadata of a Go version whose change means a moved tag.
    pub fn sample_recheck(&self, route: &PackageRoute) -> bool {
        let cheap = matches!(
            route.request,
            PackageRequest::Go {
                request: GoRequest::Info(_) | GoRequest::Mod(_),
                ..
            }
        );
        if self.recheck_every == 0 || !cheap {
            return false;
        }
        let n = self.recheck_count.fetch_add(1, Ordering::Relaxed);
        n.is_multiple_of(u64::from(self.recheck_every))
    }

    /// Compares a complete, not yet published fill of `key` with the first copy.
    pub async fn check_fill(&self, key: &str, fill: FillId, len: u64, sha256: [u8; 32]) -> Verdict {
        let Some(subject) = Subject::of_key(key) else {
            return Verdict::Unknown;
        };
        let pinned = match self.pinned(key).await {
            Ok(Some(pinned)) => pinned,
            Ok(None) => return Verdict::First,
            Err(e) => {
                tracing::warn!(%key, error = %e, "integrity record unreadable; not checked");
                return Verdict::Unknown;
            }
        };
        let mut seen = Fingerprint {
            sha256: hex::encode(sha256),
            len,
            h1: None,
        };
        if seen.sha256 == pinned.first.sha256 {
            return Verdict::Same;
        }
        seen.h1 = self.h1_of_fill(&subject, fill, len).await;
        if pinned.first.same_content(&seen) {
            return Verdict::Same;
        }
        self.report(key, subject, pinned.first, seen, "refill")
            .await;
        Verdict::Changed
    }

    /// Records the committed fill of `key` as its first copy.
    pub async fn pin_first(&self, key: &str, fill: FillId, len: u64, sha256: [u8; 32]) {
        let Some(subject) = Subject::of_key(key) else {
            return;
        };
        // The fill is read in place; the pin keeps it there even if it is evicted meanwhile.
        let Some(_pin) = self.store.pin(fill) else {
            return;
        };
        let first = Fingerprint {
            sha256: hex::encode(sha256),
            len,
            h1: self.h1_of_fill(&subject, fill, len).await,
        };
        let record = Pinned {
            first,
            stored_unix: unix_now(),
        };
        let result = match serde_json::to_vec(&record) {
            Ok(value) => self.store.put_record(PINNED, key.as_bytes(), &value).await,
            Err(e) => Err(StoreError::Io(e.to_string())),
        };
        if let Err(e) = result {
            tracing::warn!(%key, error = %e, "could not record the first copy's fingerprint");
        }
    }

    /// Compares content GitLab sent for a stored artifact (a recheck) with the first copy.
    pub async fn observe(&self, key: &str, content: &[u8]) -> Verdict {
        let Some(subject) = Subject::of_key(key) else {
            return Verdict::Unknown;
        };
        let pinned = match self.pinned(key).await {
            Ok(Some(pinned)) => pinned,
            Ok(None) => return Verdict::First,
            Err(e) => {
                tracing::warn!(%key, error = %e, "integrity record unreadable; not checked");
                return Verdict::Unknown;
            }
        };
        let seen = Fingerprint {
            sha256: hex::encode(sha2::Sha256::digest(content)),
            len: content.len() as u64,
            h1: subject.is_go_mod().then(|| gosum::hash_go_mod(content)),
        };
        if pinned.first.same_content(&seen) {
            return Verdict::Same;
        }
        self.report(key, subject, pinned.first, seen, "recheck")
            .await;
        Verdict::Changed
    }

    /// Starts re-reading the whole store in the background (see [`verify`]); false if a run
    /// is under way already.
    pub fn start_verify(&self) -> bool {
        self.verifier
            .start(self.store.clone(), self.metrics.clone(), unix_now())
    }

    /// The verification under way, or the last one.
    pub fn verify_report(&self) -> Option<verify::VerifyReport> {
        self.verifier.report()
    }

    /// Every difference detected, oldest first.
    pub async fn changes(&self) -> Result<Vec<Change>, StoreError> {
        let raw = self.store.get_record(CHANGES, CHANGES_KEY).await?;
        Ok(raw
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .unwrap_or_default())
    }

    /// Forgets the first copy of `key` and its listed changes (an operator's purge): the next
    /// fill becomes the first copy, and the pin a listed change put on it is lifted. True if
    /// anything was forgotten.
    pub async fn forget(&self, key: &str) -> Result<bool, StoreError> {
        let had_pin = self.store.remove_record(PINNED, key.as_bytes()).await?;
        let _guard = self.changes_lock.lock().await;
        let mut changes = self.changes().await?;
        let before = changes.len();
        changes.retain(|c| c.key != key);
        let had_change = changes.len() != before;
        if had_change {
            self.save_changes(&changes).await?;
            // The change had pinned the version's first copies (see `keep_first_copy`); the
            // operator has now decided about it.
            for key in version_keys(key) {
                self.store.set_kept(&key, false).await?;
            }
        }
        Ok(had_pin || had_change)
    }

    /// Keys whose first copy has a fingerprint (stored or evicted since).
    pub async fn fingerprinted_keys(&self) -> Result<Vec<String>, StoreError> {
        let store = self.store.inner().clone();
        let keys = tokio::task::spawn_blocking(move || store.record_keys(PINNED))
            .await
            .map_err(|e| StoreError::Io(format!("listing fingerprints: {e}")))??;
        Ok(keys
            .into_iter()
            .filter_map(|key| String::from_utf8(key).ok())
            .collect())
    }

    /// The first copy's fingerprint for `key`, if one is recorded.
    pub async fn first_copy(&self, key: &str) -> Result<Option<Fingerprint>, StoreError> {
        Ok(self.pinned(key).await?.map(|p| p.first))
    }

    async fn pinned(&self, key: &str) -> Result<Option<Pinned>, StoreError> {
        let Some(raw) = self.store.get_record(PINNED, key.as_bytes()).await? else {
            return Ok(None);
        };
        match serde_json::from_slice(&raw) {
            Ok(pinned) => Ok(Some(pinned)),
            Err(e) => Err(StoreError::Corrupt {
                key_or_fill: format!("integrity record of {key}"),
                detail: e.to_string(),
            }),
        }
    }

    /// `h1:` of a Go zip or `.mod` held in `fill`; `None` for other kinds or if it cannot be
    /// read as such (then SHA-256 alone decides).
    async fn h1_of_fill(&self, subject: &Subject, fill: FillId, len: u64) -> Option<String> {
        if !subject.is_zip() && !subject.is_go_mod() {
            return None;
        }
        let store = self.store.inner().clone();
        let chunk_size = self.chunk_size;
        let zip = subject.is_zip();
        let (module, version) = (subject.name.clone(), subject.version.clone());
        let hashed = tokio::task::spawn_blocking(move || {
            let mut reader = FillReader::new(store, fill, len, chunk_size);
            if zip {
                gosum::hash_zip(reader, &module, &version).map_err(|e| e.to_string())
            } else {
                let mut content = Vec::new();
                std::io::Read::read_to_end(&mut reader, &mut content).map_err(|e| e.to_string())?;
                Ok(gosum::hash_go_mod(&content))
            }
        })
        .await;
        match hashed {
            Ok(Ok(h1)) => Some(h1),
            Ok(Err(e)) => {
                tracing::debug!(fill = %fill, error = %e, "no h1 for this artifact");
                None
            }
            Err(_) => None,
        }
    }

    /// Lists a difference between the first copy of `key` and content seen some other way
    /// than a fill (`how`: e.g. `bundle`, for an imported bundle carrying other bytes).
    pub async fn report_seen(&self, key: &str, pinned: Fingerprint, seen: Fingerprint, how: &str) {
        if let Some(subject) = Subject::of_key(key) {
            self.report(key, subject, pinned, seen, how).await;
        }
    }

    async fn report(
        &self,
        key: &str,
        subject: Subject,
        pinned: Fingerprint,
        seen: Fingerprint,
        how: &str,
    ) {
        self.metrics.integrity_change(&subject.kind);
        tracing::warn!(
            project = %subject.project,
            kind = %subject.kind,
            name = %subject.name,
            version = %subject.version,
            pinned_sha256 = %pinned.sha256,
            seen_sha256 = %seen.sha256,
            pinned_h1 = pinned.h1.as_deref().unwrap_or(""),
            seen_h1 = seen.h1.as_deref().unwrap_or(""),
            how,
            "GitLab's content changed for a version already cached; keeping the first copy"
        );
        let now = unix_now();
        // Held until the version is pinned, so that a purge (which forgets the fingerprint,
        // then takes this lock to drop the change and its pins) never leaves a pin behind.
        let _guard = self.changes_lock.lock().await;
        if matches!(self.pinned(key).await, Ok(None)) {
            // Purged while this was being compared: the operator has decided already.
            return;
        }
        let result = async {
            let mut changes = self.changes().await?;
            match changes
                .iter_mut()
                .find(|c| c.key == key && c.seen.same_content(&seen))
            {
                Some(known) => {
                    known.last_seen_unix = now;
                    known.times += 1;
                }
                None => {
                    changes.push(Change {
                        key: key.to_owned(),
                        subject,
                        pinned,
                        seen,
                        how: how.to_owned(),
                        first_seen_unix: now,
                        last_seen_unix: now,
                        times: 1,
                    });
                    let excess = changes.len().saturating_sub(MAX_CHANGES);
                    changes.drain(..excess);
                }
            }
            self.save_changes(&changes).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(%key, error = %e, "could not record an integrity change");
        }
        self.keep_first_copy(key).await;
    }

    /// Pins the first copy of `key`, restored since GitLab was found serving other content
    /// for it, with the rest of its version that is stored (as for any change seen while the
    /// first copy is stored).
    pub async fn keep_restored(&self, key: &str) {
        let _guard = self.changes_lock.lock().await;
        if matches!(self.pinned(key).await, Ok(Some(_))) {
            self.keep_first_copy(key).await;
        }
    }

    /// Pins the first copy of `key` if it is still stored: once GitLab serves other content,
    /// it is the only good copy left, so eviction must not take it.
    /// The version's other artifacts too: a moved tag seen in a `.info` means the stored zip
    /// is the one copy of the old content left, however it was noticed.
    async fn keep_first_copy(&self, key: &str) {
        for key in version_keys(key) {
            if !matches!(self.store.lookup(&key).await, Ok(Some(_))) {
                continue;
            }
            match self.store.set_kept(&key, true).await {
                Ok(true) => tracing::warn!(
                    %key,
                    "first copy pinned after an integrity change; `gitlab-pkg-cache admin purge` lets GitLab's content in"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(%key, error = %e, "could not pin the first copy"),
            }
        }
    }

    async fn save_changes(&self, changes: &[Change]) -> Result<(), StoreError> {
        let value = serde_json::to_vec(changes).map_err(|e| StoreError::Io(e.to_string()))?;
        self.store.put_record(CHANGES, CHANGES_KEY, &value).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_is_all_its_artifacts() {
        let go = "/api/v4/projects/1/packages/go/example.com/m/@v/v1.0.0";
        let expected: Vec<String> = ["info", "mod", "zip"]
            .iter()
            .map(|ext| format!("{go}.{ext}"))
            .collect();
        assert_eq!(version_keys(&format!("{go}.info")), expected);
        assert_eq!(version_keys(&format!("{go}.zip")), expected);
        let gems = "/api/v4/projects/2/packages/rubygems";
        let pair = vec![
            format!("{gems}/gems/rack-3.0.0-java.gem"),
            format!("{gems}/quick/Marshal.4.8/rack-3.0.0-java.gemspec.rz"),
        ];
        assert_eq!(version_keys(&pair[0]), pair);
        assert_eq!(version_keys(&pair[1]), pair);
        let list = format!("{go}/list");
        assert_eq!(version_keys(&list), vec![list.clone()]);
    }

    #[test]
    fn subjects_name_project_module_and_version() {
        let go = Subject::of_key(
            "/api/v4/projects/group%2Fproj/packages/go/gitlab.example.com/group/!big!lib/@v/v1.0.0-!r!c1.zip",
        )
        .unwrap();
        assert_eq!(go.project, "group%2Fproj");
        assert_eq!(go.kind, "go_zip");
        assert_eq!(go.name, "gitlab.example.com/group/BigLib");
        assert_eq!(go.version, "v1.0.0-RC1");
        let gem =
            Subject::of_key("/api/v4/projects/7/packages/rubygems/gems/rack-3.0.0.gem").unwrap();
        assert_eq!(
            (gem.kind.as_str(), gem.name.as_str(), gem.version.as_str()),
            ("gem_file", "rack", "3.0.0")
        );
        let spec = Subject::of_key(
            "/api/v4/projects/7/packages/rubygems/quick/Marshal.4.8/net-http2-0.2.0-java.gemspec.rz",
        )
        .unwrap();
        assert_eq!(
            (
                spec.kind.as_str(),
                spec.name.as_str(),
                spec.version.as_str()
            ),
            ("gem_gemspec", "net-http2", "0.2.0-java")
        );
        assert!(Subject::of_key("/api/v4/projects/7/packages/go/x/@v/list").is_none());
        assert!(Subject::of_key("not a path").is_none());
    }

    #[test]
    fn zips_compare_by_h1_when_both_have_one() {
        let a = Fingerprint {
            sha256: "aa".into(),
            len: 1,
            h1: Some("h1:x".into()),
        };
        let rebuilt = Fingerprint {
            sha256: "bb".into(),
            len: 2,
            h1: Some("h1:x".into()),
        };
        assert!(a.same_content(&rebuilt));
        let moved = Fingerprint {
            h1: Some("h1:y".into()),
            ..rebuilt.clone()
        };
        assert!(!a.same_content(&moved));
        let unknown = Fingerprint {
            h1: None,
            ..rebuilt
        };
        assert!(!a.same_content(&unknown));
    }
}
