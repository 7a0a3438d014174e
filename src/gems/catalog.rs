//! A project's gems as the proxy describes them: which name-versions GitLab offers, each
//! one's metadata read from its own `.gem` (fetched into the store once, through the same
//! single-flight fills client downloads use), and the compact index, spec index and gemspec
//! bodies rendered from them.
//!
//! Names come from what GitLab offers the caller: the Packages API (tokens that may call
//! it, and anonymous callers of public projects), else the spec indexes GitLab 19.1
//! serves, else the names the project's dependency API has shown (`super::seen`). A catalog is built with the credentials of the caller who asked first and kept
//! per project for the metadata TTL; every caller is authorized for the project by the
//! service before any of it is served.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{stream, StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, Semaphore};

use super::compact_index::{self, IndexedVersion, VersionsEntry};
use super::gem_file::{self, GemSpec};
use super::gemspec::{self, IndexKind, Tuple};
use super::marshal::{self, Value};
use super::seen::Seen;
use crate::body::{self, collect_limited, Collected};
use crate::cache::fill::{Fills, Joined, Progress};
use crate::cache::memory::keep_header;
use crate::error::Error;
use crate::route::ProjectRef;
use crate::storage::ArtifactMeta;
use crate::upstream::{Upstream, UpstreamRequest};

/// Gems fetched from GitLab at once, over all catalogs being built.
const GEM_FETCHES: usize = 4;
/// Largest Packages API page or spec index read.
const MAX_LISTING_BYTES: usize = 16 * 1024 * 1024;
/// Packages API pages read at most (100 packages each).
const MAX_PAGES: u32 = 200;

/// Everything the proxy serves for one project's gems.
#[derive(Debug)]
pub struct Catalog {
    pub versions: Bytes,
    pub names: Bytes,
    /// `info/<name>` bodies.
    pub infos: BTreeMap<String, Bytes>,
    /// By full name (`name-version[-platform]`), for gemspecs.
    pub specs: HashMap<String, Arc<IndexedVersion>>,
    pub tuples: Vec<Tuple>,
}

impl Catalog {
    /// Renders the bodies from the indexed versions.
    pub fn new(versions: Vec<Arc<IndexedVersion>>, created_at: &str) -> Catalog {
        let mut by_name: BTreeMap<String, Vec<IndexedVersion>> = BTreeMap::new();
        let mut specs = HashMap::new();
        let mut tuples = Vec::new();
        for version in versions {
            let spec = &version.spec;
            tuples.push((
                spec.name.clone(),
                spec.version.clone(),
                spec.platform.clone(),
            ));
            by_name
                .entry(spec.name.clone())
                .or_default()
                .push((*version).clone());
            specs.insert(spec.full_name(), version);
        }
        let mut infos = BTreeMap::new();
        let mut entries = Vec::new();
        for (name, versions) in &by_name {
            let info = compact_index::info_body(versions);
            entries.push(VersionsEntry::new(name, versions, &info));
            infos.insert(name.clone(), Bytes::from(info));
        }
        Catalog {
            versions: Bytes::from(compact_index::versions_body(created_at, &entries)),
            names: Bytes::from(compact_index::names_body(
                by_name.keys().map(String::as_str),
            )),
            infos,
            specs,
            tuples,
        }
    }

    /// `specs.4.8.gz`, `latest_specs.4.8.gz` or `prerelease_specs.4.8.gz`.
    pub fn spec_index(&self, kind: IndexKind) -> Result<Bytes, Error> {
        gemspec::spec_index(kind, &self.tuples)
            .map(Bytes::from)
            .map_err(|e| Error::Internal(format!("writing a spec index: {e}")))
    }

    /// For `gems/<name>-<version>-<platform>.gem`: the file name GitLab stores that gem
    /// under (`<name>-<version>.gem`, never with a platform) and the SHA-256 of the bytes
    /// indexed. `None` unless the project holds a gem of that full name for a platform.
    pub fn platform_gem(&self, full_name: &str) -> Option<(String, &str)> {
        let version = self.specs.get(full_name)?;
        let spec = &version.spec;
        (spec.platform != "ruby").then(|| {
            (
                format!("{}-{}.gem", spec.name, spec.version),
                version.sha256.as_str(),
            )
        })
    }

    /// `quick/Marshal.4.8/<full name>.gemspec.rz`, if the project holds that gem.
    pub fn gemspec_rz(&self, full_name: &str) -> Option<Result<Bytes, Error>> {
        let version = self.specs.get(full_name)?;
        Some(
            gemspec::gemspec_rz(&version.spec)
                .map(Bytes::from)
                .map_err(|e| Error::Internal(format!("writing a gemspec: {e}"))),
        )
    }
}

/// What building a catalog needs from the proxy.
pub struct Source<'a> {
    pub upstream: &'a Upstream,
    pub fills: &'a Fills,
    pub project: &'a ProjectRef,
    /// The caller's headers, already translated and fit for a cacheable fetch.
    pub headers: HeaderMap,
    /// Versions pushed through the proxy that GitLab may not list yet (it extracts uploads
    /// in the background); their `.gem` is stored, so they are indexed from it.
    pub pushed: Vec<(String, String)>,
}

/// Catalogs per project, and the metadata of every gem read so far.
#[derive(Clone)]
pub struct Catalogs {
    built: moka::future::Cache<Arc<str>, Arc<Catalog>>,
    /// The last catalog built per project, for `offline_grace`: served when a rebuild fails
    /// because GitLab (or the upstream proxy) is unreachable. Callers are authorized before
    /// any of it is served, as for every cached answer.
    last: moka::future::Cache<Arc<str>, Arc<Catalog>>,
    /// By (content key of the `.gem`, its SHA-256): a gem is read once.
    read: moka::future::Cache<(String, [u8; 32]), Arc<IndexedVersion>>,
    fetches: Arc<Semaphore>,
    seen: Seen,
}

/// Where a catalog came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Built {
    /// Built for this request.
    Now,
    /// Built within the metadata TTL.
    Cached,
    /// The last one built, served because the upstream is unreachable.
    Stale,
}

impl Catalogs {
    pub fn new(ttl: Duration, offline_grace: Duration) -> Catalogs {
        Catalogs {
            built: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
            last: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(offline_grace.max(Duration::from_millis(1)))
                .build(),
            read: moka::future::Cache::builder().max_capacity(100_000).build(),
            fetches: Arc::new(Semaphore::new(GEM_FETCHES)),
            seen: Seen::default(),
        }
    }

    /// Takes in versions a dependency answer of `project` showed. A project whose catalog
    /// could list new names is built again when next asked for.
    pub async fn saw<'a>(
        &self,
        project: &str,
        shown: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        if self.seen.note(project, shown) {
            self.invalidate(project).await;
        }
    }

    /// The project's catalog: the cached one, or one built now (concurrent builds of one
    /// project coalesce; failures are not kept), or, when a build fails because the
    /// upstream is unreachable, the last one built within `offline_grace`.
    pub async fn get(&self, source: Source<'_>) -> Result<(Arc<Catalog>, Built), Arc<Error>> {
        let key: Arc<str> = Arc::from(source.project.as_raw());
        let entry = self
            .built
            .entry(key.clone())
            .or_try_insert_with(async { self.build(&source).await.map(Arc::new) })
            .await;
        match entry {
            Ok(entry) => {
                let built = if entry.is_fresh() {
                    self.last.insert(key, entry.value().clone()).await;
                    Built::Now
                } else {
                    Built::Cached
                };
                Ok((entry.into_value(), built))
            }
            Err(e) if e.is_upstream_failure() => match self.last.get(&key).await {
                Some(last) => Ok((last, Built::Stale)),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Forgets a project's catalog (a push changed it), also as an outage fallback.
    pub async fn invalidate(&self, project: &str) {
        self.built.invalidate(project).await;
        self.last.invalidate(project).await;
    }

    async fn build(&self, source: &Source<'_>) -> Result<Catalog, Error> {
        let mut listed = list(source).await?;
        // Name source of last resort: GitLab listed nothing for this caller.
        if listed.is_empty() {
            listed = self.seen.listed(source.project.as_raw());
        }
        for pushed in &source.pushed {
            if !listed.contains(pushed) {
                listed.push(pushed.clone());
            }
        }
        let indexed: Vec<Option<Arc<IndexedVersion>>> = stream::iter(listed)
            .map(|(name, version)| self.indexed(source, name, version))
            .buffer_unordered(GEM_FETCHES)
            .try_collect()
            .await?;
        let created_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        Ok(Catalog::new(
            indexed.into_iter().flatten().collect(),
            &created_at,
        ))
    }

    /// One listed version's metadata; `None` when GitLab has no such `.gem` (yet) or the
    /// gem cannot be read (it is then left out of every index).
    async fn indexed(
        &self,
        source: &Source<'_>,
        name: String,
        version: String,
    ) -> Result<Option<Arc<IndexedVersion>>, Error> {
        let key = format!(
            "/api/v4/projects/{}/packages/rubygems/gems/{name}-{version}.gem",
            source.project.as_raw()
        );
        let Some(meta) = self.stored(source, &key).await? else {
            return Ok(None);
        };
        if let Some(known) = self.read.get(&(key.clone(), meta.sha256)).await {
            return Ok(Some(known));
        }
        match read_stored_spec(source.fills, &key).await {
            Ok(Some(spec)) => {
                let indexed = Arc::new(IndexedVersion {
                    spec,
                    sha256: hex::encode(meta.sha256),
                });
                self.read.insert((key, meta.sha256), indexed.clone()).await;
                Ok(Some(indexed))
            }
            Ok(None) => Ok(None),
            Err(reason) => {
                tracing::warn!(%key, %reason, "gem metadata unreadable; left out of the index");
                Ok(None)
            }
        }
    }

    /// The stored `.gem` at `key`, fetched from GitLab first if needed. `None` when GitLab
    /// answers anything but 200 for it.
    async fn stored(&self, source: &Source<'_>, key: &str) -> Result<Option<ArtifactMeta>, Error> {
        let store = source.fills.store();
        for _ in 0..3 {
            if let Some(meta) = store.lookup(key).await.ok().flatten() {
                return Ok(Some(meta));
            }
            match source.fills.join(key) {
                Joined::Leader(leader) => {
                    let _permit = self
                        .fetches
                        .acquire()
                        .await
                        .map_err(|_| Error::Internal("gem fetches closed".to_owned()))?;
                    let request = UpstreamRequest {
                        method: Method::GET,
                        path_and_query: key.to_owned(),
                        headers: source.headers.clone(),
                        body: body::empty(),
                        follow_redirects: true,
                    };
                    let (response, _) = source.upstream.send(request).await?;
                    let status = response.status();
                    if status.is_server_error() {
                        return Err(Error::UpstreamStatus(status));
                    }
                    if status != StatusCode::OK {
                        return Ok(None);
                    }
                    let (parts, incoming) = response.into_parts();
                    let kept: Vec<(String, String)> = parts
                        .headers
                        .iter()
                        .filter(|(name, _)| keep_header(name))
                        .filter_map(|(name, value)| {
                            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                        })
                        .collect();
                    let length = parts
                        .headers
                        .get(header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    // The leader's copy ends once the fill has committed (or failed); the
                    // loop then finds the stored gem.
                    match leader.start(kept, length, incoming).await {
                        Ok(mut copy) => {
                            while let Some(frame) = copy.frame().await {
                                if frame.is_err() {
                                    break;
                                }
                            }
                        }
                        Err(not_started) => {
                            return Err(Error::Internal(format!(
                                "storing a gem: {}",
                                not_started.error
                            )))
                        }
                    }
                }
                Joined::Waiter(mut progress) => loop {
                    let now = progress.borrow_and_update().clone();
                    match now {
                        Progress::Done { meta } => return Ok(Some((*meta).clone())),
                        Progress::Failed | Progress::NotFilled | Progress::Held { .. } => break,
                        Progress::Starting | Progress::Streaming { .. } => {}
                    }
                    if progress.changed().await.is_err() {
                        break;
                    }
                },
            }
        }
        Err(Error::UpstreamProtocol(
            "a gem could not be stored for indexing".to_owned(),
        ))
    }
}

/// Reads the specification of the stored gem at `key`, streaming its chunks to a blocking
/// reader that stops at `metadata.gz`. `Ok(None)` if it is no longer stored.
pub(super) async fn read_stored_spec(fills: &Fills, key: &str) -> Result<Option<GemSpec>, String> {
    let store = fills.store();
    let Some((meta, _pin)) = store.lookup_pinned(key).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    let parse = tokio::task::spawn_blocking(move || {
        gem_file::read_spec(ChannelReader {
            rx,
            current: Bytes::new(),
        })
    });
    for index in 0..meta.chunk_count {
        let chunk = match store.read_chunk(meta.fill, index).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Err("a stored chunk is missing".to_owned()),
            Err(e) => return Err(e.to_string()),
        };
        if tx.send(chunk).await.is_err() {
            // The reader has what it needs.
            break;
        }
    }
    drop(tx);
    match parse.await {
        Ok(Ok(spec)) => Ok(Some(spec)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("gem reader failed: {e}")),
    }
}

/// A blocking `Read` over chunks sent from the runtime.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// `(name, version)` of every gem GitLab offers the caller in the project.
async fn list(source: &Source<'_>) -> Result<Vec<(String, String)>, Error> {
    if let Some(listed) = list_packages(source).await? {
        return Ok(listed);
    }
    let mut listed = Vec::new();
    for index in ["specs.4.8.gz", "prerelease_specs.4.8.gz"] {
        let path = format!(
            "/api/v4/projects/{}/packages/rubygems/{index}",
            source.project.as_raw()
        );
        if let Some(bytes) = get_small(source.upstream, path, source.headers.clone()).await? {
            listed.extend(
                parse_spec_index(&bytes)
                    .into_iter()
                    .map(|(name, version, _)| (name, version)),
            );
        }
    }
    Ok(listed)
}

/// The Packages API's RubyGems packages, or `None` if it refuses the caller (deploy tokens
/// may not call it; GitLab answers 401/403/404).
async fn list_packages(source: &Source<'_>) -> Result<Option<Vec<(String, String)>>, Error> {
    let headers = packages_api_headers(&source.headers);
    let mut listed = Vec::new();
    let mut page = 1u32;
    while page <= MAX_PAGES {
        let path = format!(
            "/api/v4/projects/{}/packages?package_type=rubygems&per_page=100&page={page}",
            source.project.as_raw()
        );
        let request = UpstreamRequest {
            method: Method::GET,
            path_and_query: path,
            headers: headers.clone(),
            body: body::empty(),
            follow_redirects: false,
        };
        let (response, _) = source.upstream.send(request).await?;
        let status = response.status();
        if status.is_server_error() {
            return Err(Error::UpstreamStatus(status));
        }
        if status != StatusCode::OK {
            return Ok(None);
        }
        let next = response
            .headers()
            .get("x-next-page")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok());
        let bytes = collect(response.into_body()).await?;
        let packages: Vec<serde_json::Value> = serde_json::from_slice(&bytes).map_err(|e| {
            Error::UpstreamProtocol(format!("the Packages API sent no package list: {e}"))
        })?;
        for package in packages {
            let field = |name: &str| package.get(name).and_then(|v| v.as_str());
            let installable = field("status").is_none_or(|s| s == "default");
            if let (Some(name), Some(version), true) =
                (field("name"), field("version"), installable)
            {
                if field("package_type").is_none_or(|t| t == "rubygems") {
                    listed.push((name.to_owned(), version.to_owned()));
                }
            }
        }
        match next {
            Some(n) if n > page => page = n,
            _ => break,
        }
    }
    listed.sort();
    listed.dedup();
    Ok(Some(listed))
}

/// The RubyGems API reads a raw `Authorization: <token>`; the REST API reads the same
/// token from `Private-Token`, or from `Job-Token` for CI job tokens (`glcbt-` prefix).
fn packages_api_headers(gem_headers: &HeaderMap) -> HeaderMap {
    let mut headers = gem_headers.clone();
    let raw = headers
        .remove(header::AUTHORIZATION)
        .filter(|v| !v.as_bytes().contains(&b' '));
    if let Some(mut token) = raw {
        token.set_sensitive(true);
        let name = if token.as_bytes().starts_with(b"glcbt-") {
            HeaderName::from_static("job-token")
        } else {
            HeaderName::from_static("private-token")
        };
        headers.insert(name, token);
    }
    headers
}

/// A small GitLab answer's body if it is a 200; `None` for other client-side statuses.
async fn get_small(
    upstream: &Upstream,
    path_and_query: String,
    headers: HeaderMap,
) -> Result<Option<Bytes>, Error> {
    let request = UpstreamRequest {
        method: Method::GET,
        path_and_query,
        headers,
        body: body::empty(),
        follow_redirects: true,
    };
    let (response, _) = upstream.send(request).await?;
    let status = response.status();
    if status.is_server_error() {
        return Err(Error::UpstreamStatus(status));
    }
    if status != StatusCode::OK {
        return Ok(None);
    }
    collect(response.into_body()).await.map(Some)
}

async fn collect<B>(body: B) -> Result<Bytes, Error>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin,
    B::Error: std::fmt::Display,
{
    match collect_limited(body, MAX_LISTING_BYTES).await {
        Ok(Collected::Complete(bytes)) => Ok(bytes),
        Ok(Collected::TooLarge { .. }) => Err(Error::UpstreamProtocol(
            "a package listing is larger than the proxy reads".to_owned(),
        )),
        Err(e) => Err(Error::UpstreamProtocol(e.to_string())),
    }
}

/// `(name, version, platform)` of a gzipped spec index; entries that are not in the
/// expected shape are skipped.
pub fn parse_spec_index(gz: &[u8]) -> Vec<Tuple> {
    let mut raw = Vec::new();
    let decoder = flate2::read::GzDecoder::new(gz);
    if decoder
        .take(MAX_LISTING_BYTES as u64)
        .read_to_end(&mut raw)
        .is_err()
    {
        return Vec::new();
    }
    let Ok(Value::Array(entries)) = marshal::load(&raw) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let [name, version, platform] = parts.as_slice() else {
                return None;
            };
            let version = match version {
                Value::UserMarshal { data, .. } => match data.as_ref() {
                    Value::Array(inner) => inner.first()?.as_text()?.to_owned(),
                    _ => return None,
                },
                other => other.as_text()?.to_owned(),
            };
            Some((
                name.as_text()?.to_owned(),
                version,
                platform.as_text().unwrap_or("ruby").to_owned(),
            ))
        })
        .collect()
}

/// Response headers for a synthesized body: type, validators, no content coding.
pub fn synthesized_headers(content_type: &'static str, body: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(etag) = HeaderValue::from_str(&compact_index::etag(body)) {
        headers.insert(header::ETAG, etag);
    }
    if let Ok(digest) = HeaderValue::from_str(&compact_index::repr_digest(body)) {
        headers.insert("repr-digest", digest);
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("none"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=60, private, must-revalidate"),
    );
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_indexes_read_back() {
        let tuples = vec![
            ("a".to_owned(), "1.0".to_owned(), "ruby".to_owned()),
            ("b".to_owned(), "2.0".to_owned(), "x86_64-linux".to_owned()),
        ];
        let gz = gemspec::spec_index(IndexKind::Specs, &tuples).unwrap();
        assert_eq!(parse_spec_index(&gz), tuples);
        assert!(parse_spec_index(b"junk").is_empty());
    }

    #[test]
    fn packages_api_gets_the_token_where_it_reads_it() {
        let mut gem = HeaderMap::new();
        gem.insert(header::AUTHORIZATION, HeaderValue::from_static("glpat-x"));
        let rest = packages_api_headers(&gem);
        assert_eq!(rest["private-token"], "glpat-x");
        assert!(!rest.contains_key(header::AUTHORIZATION));
        gem.insert(header::AUTHORIZATION, HeaderValue::from_static("glcbt-1"));
        assert_eq!(packages_api_headers(&gem)["job-token"], "glcbt-1");
        assert!(packages_api_headers(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn catalogs_render_every_body() {
        let spec = |name: &str, version: &str| {
            Arc::new(IndexedVersion {
                spec: GemSpec {
                    name: name.to_owned(),
                    version: version.to_owned(),
                    platform: "ruby".to_owned(),
                    ..GemSpec::default()
                },
                sha256: "00".repeat(32),
            })
        };
        let catalog = Catalog::new(
            vec![spec("b", "1.0"), spec("a", "0.1"), spec("b", "1.1.rc1")],
            "2024-01-01T00:00:00Z",
        );
        let versions = String::from_utf8(catalog.versions.to_vec()).unwrap();
        assert!(versions.contains("\na 0.1 ") && versions.contains("\nb 1.0,1.1.rc1 "));
        assert_eq!(&catalog.names[..], b"---\na\nb\n");
        assert_eq!(catalog.infos.len(), 2);
        assert!(catalog.gemspec_rz("b-1.0").is_some());
        assert!(catalog.gemspec_rz("b-9").is_none());
    }
}
