//! A name source of its own: the gems the store holds for a project (imported from a bundle
//! or cached earlier), read from their own bytes into a [`Catalog`]. Offline mode serves its
//! compact index, spec indexes, gemspecs and dependency answers from this; GitLab is never
//! asked, so what is listed is exactly what can be downloaded.
//!
//! Who may read a project is decided by the offline access policy before any of it is
//! served (`service::offline`).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::catalog::{read_stored_spec, Catalog};
use super::compact_index::IndexedVersion;
use super::marshal::{self, MarshalError, Value};
use crate::cache::fill::Fills;
use crate::error::Error;
use crate::route::ProjectRef;

/// How long a held catalog is reused; an import forgets them all at once.
const KEEP: Duration = Duration::from_secs(60);

/// Held catalogs per project, and every held gem's metadata read so far.
#[derive(Clone)]
pub struct HeldCatalogs {
    built: moka::future::Cache<Arc<str>, Arc<Catalog>>,
    /// By (key of the `.gem`, its SHA-256): `None` for a gem that cannot be indexed.
    read: moka::future::Cache<(String, [u8; 32]), Option<Arc<IndexedVersion>>>,
}

impl Default for HeldCatalogs {
    fn default() -> Self {
        HeldCatalogs::new()
    }
}

impl HeldCatalogs {
    pub fn new() -> HeldCatalogs {
        HeldCatalogs {
            built: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(KEEP)
                .build(),
            read: moka::future::Cache::builder().max_capacity(100_000).build(),
        }
    }

    /// The catalog of the gems held for `project` (as the URL names it).
    pub async fn get(&self, fills: &Fills, project: &ProjectRef) -> Result<Arc<Catalog>, Error> {
        let key: Arc<str> = Arc::from(project.as_raw());
        self.built
            .try_get_with(key, async {
                self.build(fills, project).await.map(Arc::new)
            })
            .await
            .map_err(|e: Arc<Error>| Error::Internal(e.to_string()))
    }

    /// Forgets every held catalog (an import added or replaced gems).
    pub fn forget(&self) {
        self.built.invalidate_all();
    }

    async fn build(&self, fills: &Fills, project: &ProjectRef) -> Result<Catalog, Error> {
        let prefix = gems_prefix(project);
        let store = fills.store();
        let mut versions = Vec::new();
        let mut newest = 0u64;
        for key in store.keys(&prefix) {
            let Some(file) = held_file_name(&key, &prefix) else {
                continue;
            };
            let Some(meta) = store
                .lookup(&key)
                .await
                .map_err(|e| Error::Internal(format!("store lookup of {key}: {e}")))?
            else {
                continue;
            };
            let cache_key = (key.clone(), meta.sha256);
            let indexed = match self.read.get(&cache_key).await {
                Some(known) => known,
                None => {
                    let indexed = match read_stored_spec(fills, &key).await {
                        Ok(Some(spec)) => Some(Arc::new(IndexedVersion {
                            spec,
                            sha256: hex::encode(meta.sha256),
                        })),
                        Ok(None) => continue,
                        Err(reason) => {
                            tracing::warn!(%key, %reason, "held gem unreadable; left out of the index");
                            None
                        }
                    };
                    self.read.insert(cache_key, indexed.clone()).await;
                    indexed
                }
            };
            let Some(indexed) = indexed else {
                continue;
            };
            // Clients download `gems/<full name>.gem`: a gem held under another name (GitLab
            // drops platforms from file names) cannot be fetched as the index would say.
            if format!("{}.gem", indexed.spec.full_name()) != file {
                tracing::debug!(%key, "held gem stored under another name than its own");
                continue;
            }
            newest = newest.max(meta.stored_at_unix);
            versions.push(indexed);
        }
        // Stable while nothing changes, so the `versions` validator is too.
        let created_at =
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(newest)).to_string();
        Ok(Catalog::new(versions, &created_at))
    }
}

/// `/api/v4/projects/<project>/packages/rubygems/gems/`.
fn gems_prefix(project: &ProjectRef) -> String {
    format!(
        "/api/v4/projects/{}/packages/rubygems/gems/",
        project.as_raw()
    )
}

/// The decoded `.gem` file name of a key directly under `prefix`.
fn held_file_name(key: &str, prefix: &str) -> Option<String> {
    let file = key.strip_prefix(prefix)?;
    if file.contains('/') || !file.ends_with(".gem") {
        return None;
    }
    Some(
        percent_encoding::percent_decode_str(file)
            .decode_utf8()
            .ok()?
            .into_owned(),
    )
}

/// A dependency API answer (`api/v1/dependencies?gems=…`) for `names` from the held gems:
/// `Marshal.dump` of one `{name:, number:, platform:, dependencies: [[name, requirement]]}`
/// Hash per held version, in the order the names were asked. Dependencies are the gem's
/// runtime ones, with requirements joined as RubyGems writes them (`>= 1.0, < 3`).
pub fn dependency_answer<'a>(
    catalog: &Catalog,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<u8>, MarshalError> {
    let mut entries = Vec::new();
    for name in names {
        let mut held: Vec<&Arc<IndexedVersion>> = catalog
            .specs
            .values()
            .filter(|v| v.spec.name == name)
            .collect();
        held.sort_by(|a, b| {
            super::version::compare(&a.spec.version, &b.spec.version)
                .then_with(|| a.spec.platform.cmp(&b.spec.platform))
        });
        for version in held {
            let spec = &version.spec;
            let mut deps: Vec<_> = spec.runtime_dependencies().collect();
            deps.sort_by(|a, b| a.name.cmp(&b.name));
            let dependencies = deps
                .into_iter()
                .map(|d| {
                    let requirement = if d.requirement.0.is_empty() {
                        ">= 0".to_owned()
                    } else {
                        d.requirement.constraints().join(", ")
                    };
                    Value::Array(vec![Value::str(&d.name), Value::str(requirement)])
                })
                .collect();
            entries.push(Value::Hash(vec![
                (Value::sym("name"), Value::str(&spec.name)),
                (Value::sym("number"), Value::str(&spec.version)),
                (Value::sym("platform"), Value::str(&spec.platform)),
                (Value::sym("dependencies"), Value::Array(dependencies)),
            ]));
        }
    }
    marshal::dump(&Value::Array(entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gems::gem_file::{Dependency, GemSpec, Requirement};

    #[test]
    fn file_names_directly_under_the_prefix_only() {
        let p = "/api/v4/projects/7/packages/rubygems/gems/";
        assert_eq!(
            held_file_name(&format!("{p}a-1.0.gem"), p).as_deref(),
            Some("a-1.0.gem")
        );
        assert_eq!(
            held_file_name(&format!("{p}a-1.0%2Bb.gem"), p).as_deref(),
            Some("a-1.0+b.gem")
        );
        assert_eq!(held_file_name(&format!("{p}x/a-1.0.gem"), p), None);
        assert_eq!(held_file_name(&format!("{p}a-1.0.gemspec"), p), None);
        assert_eq!(held_file_name("/elsewhere/a-1.0.gem", p), None);
    }

    #[test]
    fn dependency_answers_list_runtime_dependencies_of_held_versions() {
        let spec = |version: &str, deps: Vec<Dependency>| {
            Arc::new(IndexedVersion {
                spec: GemSpec {
                    name: "core".to_owned(),
                    version: version.to_owned(),
                    platform: "ruby".to_owned(),
                    dependencies: deps,
                    ..GemSpec::default()
                },
                sha256: "00".repeat(32),
            })
        };
        let leaf = Dependency {
            name: "leaf".to_owned(),
            requirement: Requirement(vec![
                (">=".to_owned(), "1.0".to_owned()),
                ("<".to_owned(), "3".to_owned()),
            ]),
            runtime: true,
        };
        let catalog = Catalog::new(
            vec![spec("2.0", vec![leaf]), spec("1.0", vec![])],
            "2024-01-01T00:00:00Z",
        );
        let answer = dependency_answer(&catalog, ["core", "absent"]).unwrap();
        let Value::Array(entries) = marshal::load(&answer).unwrap() else {
            panic!("not an array");
        };
        assert_eq!(entries.len(), 2);
        let Value::Hash(second) = &entries[1] else {
            panic!("not a hash");
        };
        assert_eq!(second[1], (Value::sym("number"), Value::str("2.0")));
        assert_eq!(
            second[3].1,
            Value::Array(vec![Value::Array(vec![
                Value::str("leaf"),
                Value::str(">= 1.0, < 3")
            ])])
        );
        assert_eq!(
            marshal::load(&dependency_answer(&catalog, []).unwrap()).unwrap(),
            Value::Array(vec![])
        );
    }
}
