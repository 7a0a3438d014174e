//! An in-process fake of GitLab's Go module proxy and RubyGems package APIs, used as upstream.
//!
//! It follows `shared/reference/gitlab-api.md` (GitLab's behaviour read from its source): the
//! same routes, the same order of checks (route, then authentication, then project, then
//! module or package), the same status codes, bodies and headers. On top of that it records
//! what it received and can be told to misbehave (see [`Fault`] and [`FakeGitLab::set_down`]).
//!
//! ```ignore
//! let fake = FakeGitLab::builder()
//!     .project(7, "group/project", Visibility::Private)
//!     .go_version(7, "", "v1.0.0", "2021-04-07T13:05:12.000+00:00",
//!                 vec![("go.mod".into(), b"module gitlab.example.com/group/project\n".to_vec())])
//!     .token("glpat-reader", TokenKind::Personal { scopes: vec!["read_api"] }, TokenState::Active,
//!            &[(7, Access::Reporter)])
//!     .start()
//!     .await;
//! ```

mod auth;
mod go;
mod model;
mod object_store;
mod packages;
mod reply;
mod route;
mod rubygems;
mod server;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use model::{Credential, GemPackage, Instance, PatState, Project, Tag, Token};
use object_store::ObjectStore;

/// A project's visibility. (GitLab's "internal" behaves like private for anonymous callers.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Public,
    Private,
}

/// Which GitLab RubyGems API the fake behaves like (reference §0, §3.1, §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RubyGemsEra {
    /// Up to GitLab 19.0: the token is the whole raw `Authorization` header (so any Basic
    /// header is an invalid token), spec indexes and gemspecs are `404` stubs.
    Pre19_1,
    /// GitLab 19.1: HTTP Basic accepted as well, spec indexes and gemspecs served.
    V19_1,
}

/// A member's role in a project. Ordered: each role can do what the ones before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Can see a private project but not pull its packages (`403`).
    Guest,
    /// Can pull packages.
    Reporter,
    /// Can pull and push packages.
    Developer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    /// A personal (or project/group) access token; scopes that matter: `api`, `read_api`.
    Personal { scopes: Vec<&'static str> },
    /// A CI job token; it acts as the job's user, whose memberships are the token's grants.
    Job,
    /// A deploy token; scopes that matter: `read_package_registry`, `write_package_registry`.
    /// Its grants name the projects it belongs to; the [`Access`] given there is ignored,
    /// since what a deploy token may do comes from its scopes alone.
    Deploy { scopes: Vec<&'static str> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Active,
    /// For personal tokens: rejected with a Bearer `invalid_token` challenge. For deploy and
    /// job tokens: simply not found.
    Expired,
    /// As `Expired`, with the revocation message.
    Revoked,
    /// Only for job tokens: the job is no longer running, so its token is refused.
    JobFinished,
}

/// One gem version stored in a project, as GitLab would hold it after processing an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GemFixture {
    pub name: String,
    /// As GitLab stores it (`Gem::Version#to_s`); whether it is a prerelease follows from it.
    pub version: String,
    /// Recorded in the spec indexes; the dependency API always says `ruby`, and file names
    /// never carry it (GitLab stores `<name>-<version>.gem`).
    pub platform: String,
    pub gem_bytes: Vec<u8>,
    /// The stored `quick/Marshal.4.8/<name>-<version>.gemspec.rz`; gems pushed before GitLab
    /// generated these have none.
    pub gemspec_rz: Option<Vec<u8>>,
    /// `(name, requirement)`, runtime and development dependencies alike, as GitLab records them.
    pub dependencies: Vec<(String, String)>,
}

impl GemFixture {
    /// A `ruby`-platform gem with the given file contents, no gemspec and no dependencies.
    pub fn new(name: &str, version: &str, gem_bytes: impl Into<Vec<u8>>) -> GemFixture {
        GemFixture {
            name: name.to_owned(),
            version: version.to_owned(),
            platform: "ruby".to_owned(),
            gem_bytes: gem_bytes.into(),
            gemspec_rz: None,
            dependencies: Vec::new(),
        }
    }
}

/// Scripted misbehaviour for requests whose path starts with a given prefix.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status with a short `text/plain` body, whatever the request.
    Status(u16),
    /// Send the real headers (with the real `Content-Length`) and half of the body, then
    /// drop the connection.
    ResetMidBody,
    /// Send the real headers and half of the body, then nothing more (until shutdown).
    StallMidBody,
    /// Declare a `Content-Length` larger than the body that is sent, then close.
    WrongContentLength,
    /// Send the headers, then the body after this delay, in small pieces.
    SlowBody(Duration),
    /// Accept the request and never answer it.
    Hang,
    /// Take one permit from the semaphore (for good: it is not given back) before answering
    /// normally, so a test can line requests up and release them with `add_permits`.
    Hold(Arc<Semaphore>),
}

pub struct FakeGitLabBuilder {
    host: String,
    era: RubyGemsEra,
    projects: Vec<Project>,
    tokens: HashMap<String, Token>,
    object_store_redirects: bool,
    processing: Processing,
}

/// How the fake processes an accepted upload in the background, as GitLab's
/// `ProcessGemService` (package) and `CreateSpecFilesWorker` (spec indexes) do.
#[derive(Clone)]
pub struct Processing {
    /// From the upload's acceptance until the package is installable (dependency API, `.gem`).
    pub package_after: Duration,
    /// From then until the spec indexes include it.
    pub indexes_after: Duration,
    /// Reads the uploaded bytes as GitLab's extraction does; `None`: processing fails and
    /// nothing becomes visible. The default reads name, version and platform from the
    /// gem's `metadata.gz` and records no dependencies and no gemspec.
    pub extract: Extract,
}

/// How an uploaded body becomes a gem package (see [`Processing::extract`]).
pub type Extract = Arc<dyn Fn(&[u8]) -> Option<GemFixture> + Send + Sync>;

impl Default for Processing {
    fn default() -> Self {
        Processing {
            package_after: Duration::from_millis(200),
            indexes_after: Duration::from_millis(200),
            extract: Arc::new(rubygems::extract_metadata),
        }
    }
}

impl FakeGitLabBuilder {
    /// The GitLab host that Go module paths must start with (no scheme, no port).
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    pub fn era(mut self, era: RubyGemsEra) -> Self {
        self.era = era;
        self
    }

    pub fn project(mut self, id: u64, full_path: &str, visibility: Visibility) -> Self {
        assert!(
            !self
                .projects
                .iter()
                .any(|p| p.id == id || p.full_path.eq_ignore_ascii_case(full_path)),
            "project {id} ({full_path}) is declared twice"
        );
        self.projects.push(Project {
            id,
            full_path: full_path.to_owned(),
            visibility,
            tags: Vec::new(),
            packages: Vec::new(),
            spec_indexes: Vec::new(),
        });
        self
    }

    /// Adds the files of a module directory (`subdir`, "" for the repository root) to the
    /// repository tag `version`, creating the tag at commit time `time` (as `.info` renders
    /// it, e.g. `2021-04-07T13:05:12.000+00:00`). Tags are repository-wide, as in Git: giving
    /// two module directories the same version puts both in one tag.
    pub fn go_version(
        mut self,
        project_id: u64,
        subdir: &str,
        version: &str,
        time: &str,
        files: Vec<(String, Vec<u8>)>,
    ) -> Self {
        assert!(
            files.iter().any(|(path, _)| path == "go.mod"),
            "go_version({version}) in {subdir:?}: the files must include go.mod"
        );
        add_go_files(self.project_mut(project_id), subdir, version, time, files);
        self
    }

    /// Stores a gem version in the project. Adding the same name and version twice stores a
    /// duplicate, as GitLab does; downloads then serve the later one.
    pub fn gem(mut self, project_id: u64, gem: GemFixture) -> Self {
        self.project_mut(project_id)
            .packages
            .push(GemPackage::new(gem));
        self
    }

    /// Declares a token and the projects it grants access to.
    pub fn token(
        mut self,
        value: &str,
        kind: TokenKind,
        state: TokenState,
        grants: &[(u64, Access)],
    ) -> Self {
        assert!(!value.trim().is_empty(), "a token cannot be blank");
        let credential = match kind {
            TokenKind::Personal { scopes } => Credential::Personal {
                scopes,
                state: match state {
                    TokenState::Active => PatState::Active,
                    TokenState::Expired => PatState::Expired,
                    TokenState::Revoked => PatState::Revoked,
                    TokenState::JobFinished => {
                        panic!("token {value}: only job tokens can be JobFinished")
                    }
                },
            },
            TokenKind::Job => Credential::Job {
                running: state == TokenState::Active,
            },
            TokenKind::Deploy { scopes } => {
                assert_ne!(
                    state,
                    TokenState::JobFinished,
                    "token {value}: only job tokens can be JobFinished"
                );
                Credential::Deploy {
                    scopes,
                    active: state == TokenState::Active,
                }
            }
        };
        let token = Token {
            credential,
            grants: grants.to_vec(),
        };
        assert!(
            self.tokens.insert(value.to_owned(), token).is_none(),
            "token {value} is declared twice"
        );
        self
    }

    /// Serve `.gem`, gemspec and spec index downloads as GitLab does with object storage and
    /// direct download: a `302` to a pre-signed URL on a second listener (reference §1.4).
    pub fn object_store_redirects(mut self, enabled: bool) -> Self {
        self.object_store_redirects = enabled;
        self
    }

    /// How accepted uploads become visible (see [`Processing`]).
    pub fn processing(mut self, processing: Processing) -> Self {
        self.processing = processing;
        self
    }

    /// Binds `127.0.0.1:0` (and a second port for the object store when redirects are on)
    /// and serves on the current tokio runtime until [`FakeGitLab::shutdown`] or drop.
    pub async fn start(mut self) -> FakeGitLab {
        for project in &mut self.projects {
            project.spec_indexes = rubygems::spec_indexes(&project.packages);
        }
        let instance = Instance {
            host: self.host,
            projects: self.projects,
            tokens: self.tokens,
        };
        let (shutdown, shutdown_signal) = watch::channel(false);
        let mut tasks = Vec::new();
        let object_store = if self.object_store_redirects {
            let listener = bind().await;
            let store = Arc::new(ObjectStore::new(&listener, &instance));
            let handler = {
                let store = Arc::clone(&store);
                move |request| {
                    let store = Arc::clone(&store);
                    async move { Ok::<_, server::Dropped>(store.answer(&request)) }
                }
            };
            tasks.push(server::serve(listener, || false, handler));
            Some(store)
        } else {
            None
        };
        let listener = bind().await;
        let url = format!("http://{}", local_addr(&listener));
        let shared = Arc::new(Shared {
            host: instance.host.clone(),
            instance: RwLock::new(Arc::new(instance)),
            processing: self.processing,
            era: Mutex::new(self.era),
            down: AtomicBool::new(false),
            log: Mutex::default(),
            uploads: Mutex::default(),
            faults: Mutex::default(),
            object_store,
            shutdown: shutdown_signal,
        });
        let refuse = {
            let shared = Arc::clone(&shared);
            move || shared.down.load(Ordering::SeqCst)
        };
        let handler = {
            let shared = Arc::clone(&shared);
            move |request| server::handle(Arc::clone(&shared), request)
        };
        tasks.push(server::serve(listener, refuse, handler));
        FakeGitLab {
            shared,
            url,
            tasks,
            shutdown,
        }
    }

    fn project_mut(&mut self, id: u64) -> &mut Project {
        self.projects
            .iter_mut()
            .find(|p| p.id == id)
            .unwrap_or_else(|| panic!("project {id} must be declared with .project() first"))
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port for the fake GitLab")
}

fn local_addr(listener: &TcpListener) -> std::net::SocketAddr {
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

/// A running fake GitLab. Dropping it stops it too; [`shutdown`](Self::shutdown) also waits.
pub struct FakeGitLab {
    shared: Arc<Shared>,
    url: String,
    tasks: Vec<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
}

impl FakeGitLab {
    pub fn builder() -> FakeGitLabBuilder {
        FakeGitLabBuilder {
            host: "gitlab.example.com".to_owned(),
            era: RubyGemsEra::V19_1,
            projects: Vec::new(),
            tokens: HashMap::new(),
            object_store_redirects: false,
            processing: Processing::default(),
        }
    }

    /// `http://127.0.0.1:<port>`, the base for `/api/v4/...`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The GitLab host that Go module paths start with.
    pub fn host(&self) -> &str {
        &self.shared.host
    }

    /// Pushes a new tag to the repository, as `git push origin v1.3.0` would (see
    /// [`FakeGitLabBuilder::go_version`]); requests that arrive afterwards see it.
    pub fn create_tag(
        &self,
        project_id: u64,
        subdir: &str,
        version: &str,
        time: &str,
        files: Vec<(String, Vec<u8>)>,
    ) {
        self.shared.change_instance(|instance| {
            let project = instance
                .projects
                .iter_mut()
                .find(|p| p.id == project_id)
                .unwrap_or_else(|| panic!("no project {project_id}"));
            add_go_files(project, subdir, version, time, files);
        });
    }

    /// Changes a token's state, as revoking it (or its job finishing) in GitLab does; GitLab
    /// refuses it from the next request on.
    pub fn set_token_state(&self, value: &str, state: TokenState) {
        self.shared.change_instance(|instance| {
            let token = instance
                .tokens
                .get_mut(value)
                .unwrap_or_else(|| panic!("no token {value}"));
            match &mut token.credential {
                Credential::Personal { state: pat, .. } => {
                    *pat = match state {
                        TokenState::Active => PatState::Active,
                        TokenState::Expired => PatState::Expired,
                        TokenState::Revoked => PatState::Revoked,
                        TokenState::JobFinished => panic!("{value} is not a job token"),
                    }
                }
                Credential::Job { running } => *running = state == TokenState::Active,
                Credential::Deploy { active, .. } => *active = state == TokenState::Active,
            }
        });
    }

    /// The versions of `name` that the project's packages hold now (processed uploads included).
    pub fn gem_versions(&self, project_id: u64, name: &str) -> Vec<String> {
        self.shared
            .instance()
            .projects
            .iter()
            .filter(|p| p.id == project_id)
            .flat_map(|p| &p.packages)
            .filter(|p| p.gem.name == name)
            .map(|p| p.gem.version.clone())
            .collect()
    }

    pub fn set_era(&self, era: RubyGemsEra) {
        *lock(&self.shared.era) = era;
    }

    /// Requests received for exactly this path and query (as sent, still percent-encoded),
    /// HEAD and faulted requests included.
    pub fn hits(&self, path_and_query: &str) -> u64 {
        lock(&self.shared.log)
            .hits
            .get(path_and_query)
            .copied()
            .unwrap_or(0)
    }

    /// Requests received whose path and query start with `prefix`.
    pub fn hits_prefix(&self, prefix: &str) -> u64 {
        lock(&self.shared.log)
            .hits
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(_, count)| count)
            .sum()
    }

    pub fn total_hits(&self) -> u64 {
        lock(&self.shared.log).hits.values().sum()
    }

    /// Forgets every request seen so far, by the API and by the object store.
    pub fn reset_hits(&self) {
        *lock(&self.shared.log) = RequestLog::default();
        if let Some(store) = &self.shared.object_store {
            store.reset();
        }
    }

    /// The headers of the last request for this path (without query), as received.
    pub fn last_request_headers(&self, path: &str) -> Option<HeaderMap> {
        lock(&self.shared.log).last_headers.get(path).cloned()
    }

    /// Bodies of the gem uploads the project accepted (`201`), oldest first.
    pub fn uploads(&self, project_id: u64) -> Vec<Bytes> {
        lock(&self.shared.uploads)
            .get(&project_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Applies `fault` to requests whose path starts with `path_prefix`, replacing any fault
    /// set for the same prefix; when several prefixes match, the longest wins.
    pub fn set_fault(&self, path_prefix: &str, fault: Fault) {
        if let Fault::Status(code) = fault {
            assert!(
                StatusCode::from_u16(code).is_ok(),
                "{code} is not an HTTP status"
            );
        }
        let mut faults = lock(&self.shared.faults);
        faults.retain(|(prefix, _)| prefix != path_prefix);
        faults.push((path_prefix.to_owned(), fault));
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// While down, connections are accepted and dropped at once, and requests arriving on
    /// connections opened earlier are dropped without an answer.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Requests the object store received (0 without `object_store_redirects`).
    pub fn object_store_hits(&self) -> u64 {
        self.shared
            .object_store
            .as_ref()
            .map_or(0, |store| store.hits())
    }

    /// Whether any object store request carried `Authorization`, `Private-Token`,
    /// `Job-Token` or `Deploy-Token`: pre-signed URLs must be fetched without credentials.
    pub fn object_store_saw_credentials(&self) -> bool {
        self.shared
            .object_store
            .as_ref()
            .is_some_and(|store| store.saw_credentials())
    }

    /// Moves the repository tag `version` of a project to another commit (a force-pushed
    /// tag): its commit time and whole tree become `time` and `files`. GitLab builds `.info`,
    /// `.mod` and `.zip` from the tag on every request, so they change at once.
    pub fn move_tag(
        &self,
        project_id: u64,
        version: &str,
        time: &str,
        files: Vec<(String, Vec<u8>)>,
    ) {
        self.shared.change_instance(|instance| {
            let tag = instance
                .projects
                .iter_mut()
                .find(|p| p.id == project_id)
                .and_then(|p| p.tags.iter_mut().find(|t| t.name == version))
                .unwrap_or_else(|| panic!("project {project_id} has no tag {version}"));
            tag.time = time.to_owned();
            tag.files = files
                .into_iter()
                .map(|(path, contents)| (path, Bytes::from(contents)))
                .collect();
        });
    }

    /// Stores another package of a gem version after start, as a second push of the same
    /// version does in GitLab (a duplicate; downloads then serve the later one).
    pub fn push_gem(&self, project_id: u64, gem: GemFixture) {
        assert!(
            self.shared.object_store.is_none(),
            "push_gem is not modelled together with object_store_redirects"
        );
        self.shared.change_instance(|instance| {
            let project = instance
                .projects
                .iter_mut()
                .find(|p| p.id == project_id)
                .unwrap_or_else(|| panic!("project {project_id} is not declared"));
            project.packages.push(GemPackage::new(gem));
            project.spec_indexes = rubygems::spec_indexes(&project.packages);
        });
    }

    /// Stops both listeners and every open connection, and waits until they are gone.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            // The task was aborted: its (cancelled) outcome carries nothing to report.
            let _ = task.await;
        }
    }
}

impl Drop for FakeGitLab {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Everything the request handlers share: the fixtures and what happened at run time.
struct Shared {
    /// The instance's host, which never changes.
    host: String,
    /// Replaced whole when a test changes the repository or the registry at run time, so a
    /// request in flight keeps the snapshot it started with.
    instance: RwLock<Arc<Instance>>,
    processing: Processing,
    era: Mutex<RubyGemsEra>,
    down: AtomicBool,
    log: Mutex<RequestLog>,
    uploads: Mutex<HashMap<u64, Vec<Bytes>>>,
    /// `(path prefix, fault)`.
    faults: Mutex<Vec<(String, Fault)>>,
    object_store: Option<Arc<ObjectStore>>,
    /// Becomes true at shutdown; hanging requests wait for it so they end with the server.
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// The instance as it is now.
    fn instance(&self) -> Arc<Instance> {
        Arc::clone(&self.instance.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Applies `change` to a copy of the instance and makes the copy current.
    fn change_instance(&self, change: impl FnOnce(&mut Instance)) {
        let mut current = self.instance.write().unwrap_or_else(|p| p.into_inner());
        let mut next = Instance::clone(&current);
        change(&mut next);
        *current = Arc::new(next);
    }
}

/// Adds a module's files to tag `version` of a project, creating the tag if needed.
fn add_go_files(
    project: &mut Project,
    subdir: &str,
    version: &str,
    time: &str,
    files: Vec<(String, Vec<u8>)>,
) {
    let subdir = subdir.trim_matches('/');
    let tag = match project.tags.iter().position(|t| t.name == version) {
        Some(index) => &mut project.tags[index],
        None => {
            project.tags.push(Tag {
                name: version.to_owned(),
                time: time.to_owned(),
                files: Default::default(),
            });
            project.tags.last_mut().expect("just pushed")
        }
    };
    assert_eq!(tag.time, time, "tag {version} was given two commit times");
    for (path, contents) in files {
        let full_path = if subdir.is_empty() {
            path
        } else {
            format!("{subdir}/{path}")
        };
        tag.files.insert(full_path, Bytes::from(contents));
    }
}

#[derive(Default)]
struct RequestLog {
    /// Keyed by path and query as received.
    hits: HashMap<String, u64>,
    /// Keyed by path.
    last_headers: HashMap<String, HeaderMap>,
}

/// Locks a mutex, ignoring poisoning: a test that panicked while holding it has already
/// failed, and the counters stay meaningful for the rest of its teardown.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
