//! Gem names and versions each project's dependency API has shown through the proxy: a
//! name source for catalogs built for callers GitLab lets list nothing else (deploy tokens
//! may not call the Packages API, and GitLab before 19.1 has no spec indexes).
//!
//! A successful dependency answer for a name proves that the project holds the name;
//! whether a given caller may read it is still GitLab's decision, made when the catalog
//! fetches each `.gem` with that caller's credentials and when the gate lets a caller in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

/// Projects remembered at most; beyond it, new projects are not remembered.
const MAX_PROJECTS: usize = 10_000;
/// Name-versions remembered per project at most.
const MAX_VERSIONS: usize = 20_000;

/// A project's names, each with its versions.
type Names = BTreeMap<String, BTreeSet<String>>;

/// Per project (as named in the URL), name → versions.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    projects: Arc<Mutex<HashMap<Arc<str>, Names>>>,
}

impl Seen {
    /// Records `(name, version)` pairs shown for `project`; true if any was new.
    pub fn note<'a>(
        &self,
        project: &str,
        shown: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> bool {
        let mut projects = self.projects.lock().unwrap_or_else(PoisonError::into_inner);
        if !projects.contains_key(project) && projects.len() >= MAX_PROJECTS {
            return false;
        }
        let names = projects.entry(Arc::from(project)).or_default();
        let mut count: usize = names.values().map(BTreeSet::len).sum();
        let mut grew = false;
        for (name, version) in shown {
            if count >= MAX_VERSIONS {
                break;
            }
            if names
                .entry(name.to_owned())
                .or_default()
                .insert(version.to_owned())
            {
                count += 1;
                grew = true;
            }
        }
        grew
    }

    /// Every `(name, version)` seen for `project`, sorted.
    pub fn listed(&self, project: &str) -> Vec<(String, String)> {
        let projects = self.projects.lock().unwrap_or_else(PoisonError::into_inner);
        projects.get(project).map_or_else(Vec::new, |names| {
            names
                .iter()
                .flat_map(|(name, versions)| versions.iter().map(|v| (name.clone(), v.clone())))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_remembered_per_project() {
        let seen = Seen::default();
        assert!(seen.note("7", [("b", "1.0"), ("a", "0.1")]));
        assert!(!seen.note("7", [("a", "0.1")]), "nothing new");
        assert!(seen.note("7", [("a", "0.2")]));
        assert_eq!(
            seen.listed("7"),
            vec![
                ("a".to_owned(), "0.1".to_owned()),
                ("a".to_owned(), "0.2".to_owned()),
                ("b".to_owned(), "1.0".to_owned())
            ]
        );
        assert!(seen.listed("8").is_empty());
    }
}
