//! The auth matrix: every kind of caller × public and private project × cold and warm cache ×
//! the Go proxy and both RubyGems eras, each cell answered exactly as GitLab answers it, and
//! no cached byte ever reaching a caller GitLab refuses.
//!
//! Every cell sends one request straight to the fake GitLab and the same request through the
//! proxy. "Warm" means an authorized caller fetched every resource through that proxy first,
//! so the bytes sit in the memory tier (lists, dependency answers, spec indexes) or the store
//! (`.info`, `.mod`, `.zip`, `.gemspec.rz`, `.gem`). Two more passes per API: warm with
//! GitLab down (only the credential GitLab accepted before is served; everyone else fails
//! closed), and all callers in turn on one shared warm proxy, in both orders. The Go and
//! RubyGems 19.1 matrices run again through an office proxy in front of a regional one.

mod support;

use support::fixtures::same_body;

use support::eventually;

use std::collections::HashMap;

use base64::Engine;
use bytes::Bytes;
use gitlab_pkg_cache::route::{CacheClass, Endpoint};
use support::client::{self, Response};
use support::fake_gitlab::{
    Access, FakeGitLab, GemFixture, RubyGemsEra, TokenKind, TokenState, Visibility,
};
use support::proxy::TestProxy;

const PUBLIC: u64 = 1;
const PRIVATE: u64 = 2;
const OTHER: u64 = 3;
const TIME: &str = "2024-05-01T10:00:00.000+00:00";

/// Reporter in the private project; scope `api`.
const MEMBER_PAT: &str = "glpat-member";
/// Developer in another private project only.
const OTHER_PAT: &str = "glpat-other-project";
/// Was a Reporter's token in the private project.
const EXPIRED_PAT: &str = "glpat-expired";
/// A running job of the private project.
const JOB: &str = "glcbt-running-job";
/// A deploy token of the private project with `read_package_registry`.
const DEPLOY: &str = "gldt-reader";
/// Known to nobody.
const INVALID: &str = "glpat-does-not-exist";

/// Which API (and for RubyGems, which GitLab) a matrix runs against.
#[derive(Clone, Copy)]
enum Api {
    Go,
    RubyGems(RubyGemsEra),
}

impl Api {
    fn label(self) -> &'static str {
        match self {
            Api::Go => "Go",
            Api::RubyGems(RubyGemsEra::Pre19_1) => "RubyGems pre-19.1",
            Api::RubyGems(RubyGemsEra::V19_1) => "RubyGems 19.1",
        }
    }

    /// An authorized caller on both projects, in each API's own transport: `Private-Token`
    /// for Go, the raw `Authorization` header (what `gem push` sends) for RubyGems.
    fn warmer(self) -> Caller {
        match self {
            Api::Go => caller("warmer", &[("private-token", MEMBER_PAT.to_owned())]),
            Api::RubyGems(_) => caller("warmer", &[("authorization", MEMBER_PAT.to_owned())]),
        }
    }
}

struct Project {
    label: &'static str,
    /// As it appears in the URL: a numeric id, or the URL-encoded full path.
    reference: &'static str,
    module: &'static str,
}

const PROJECTS: [Project; 2] = [
    Project {
        label: "public",
        reference: "1",
        module: "gitlab.example.com/acme/public",
    },
    Project {
        label: "private",
        reference: "acme%2Fprivate",
        module: "gitlab.example.com/acme/private",
    },
];

/// Cached metadata and stored artifacts of one project.
fn resources(api: Api, project: &Project) -> Vec<String> {
    let Project {
        reference, module, ..
    } = project;
    match api {
        Api::Go => ["list", "v1.0.0.info", "v1.0.0.mod", "v1.0.0.zip"]
            .iter()
            .map(|file| format!("/api/v4/projects/{reference}/packages/go/{module}/@v/{file}"))
            .collect(),
        // Before 19.1 GitLab has no spec index and no gemspecs; the proxy writes them
        // (tests/gems.rs checks who gets them), so they are not GitLab's answers to compare.
        Api::RubyGems(RubyGemsEra::Pre19_1) => [
            "api/v1/dependencies",
            "api/v1/dependencies?gems=foo",
            "gems/foo-1.0.0.gem",
        ]
        .iter()
        .map(|rest| format!("/api/v4/projects/{reference}/packages/rubygems/{rest}"))
        .collect(),
        Api::RubyGems(RubyGemsEra::V19_1) => [
            "api/v1/dependencies",
            "api/v1/dependencies?gems=foo",
            "specs.4.8.gz",
            "quick/Marshal.4.8/foo-1.0.0.gemspec.rz",
            "gems/foo-1.0.0.gem",
        ]
        .iter()
        .map(|rest| format!("/api/v4/projects/{reference}/packages/rubygems/{rest}"))
        .collect(),
    }
}

#[derive(Clone)]
struct Caller {
    name: &'static str,
    headers: Vec<(&'static str, String)>,
}

impl Caller {
    fn headers(&self) -> Vec<(&str, &str)> {
        self.headers.iter().map(|(n, v)| (*n, v.as_str())).collect()
    }
}

fn caller(name: &'static str, headers: &[(&'static str, String)]) -> Caller {
    Caller {
        name,
        headers: headers.to_vec(),
    }
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Every caller, each with one way of sending one credential. All of them are sent to every
/// API: a transport one API ignores (a `Private-Token` for RubyGems, a raw `Authorization`
/// for Go) makes an anonymous caller there, which is a cell worth checking too.
fn callers() -> Vec<Caller> {
    let auth = |value: String| vec![("authorization", value)];
    vec![
        caller("anonymous", &[]),
        caller("Private-Token PAT", &[("private-token", MEMBER_PAT.into())]),
        caller("Basic user:PAT (netrc)", &auth(basic("me", MEMBER_PAT))),
        caller("Bearer PAT", &auth(format!("Bearer {MEMBER_PAT}"))),
        caller("raw Authorization PAT", &auth(MEMBER_PAT.into())),
        caller("Job-Token", &[("job-token", JOB.into())]),
        caller(
            "Basic gitlab-ci-token:job token (netrc in CI)",
            &auth(basic("gitlab-ci-token", JOB)),
        ),
        caller("raw Authorization job token", &auth(JOB.into())),
        caller("Deploy-Token header", &[("deploy-token", DEPLOY.into())]),
        caller("Basic user:deploy token", &auth(basic("deployer", DEPLOY))),
        caller("raw Authorization deploy token", &auth(DEPLOY.into())),
        caller(
            "invalid Private-Token",
            &[("private-token", INVALID.into())],
        ),
        caller("invalid Basic", &auth(basic("me", INVALID))),
        caller("invalid raw Authorization", &auth(INVALID.into())),
        caller(
            "expired Private-Token",
            &[("private-token", EXPIRED_PAT.into())],
        ),
        caller("expired raw Authorization", &auth(EXPIRED_PAT.into())),
        caller(
            "other project's Private-Token",
            &[("private-token", OTHER_PAT.into())],
        ),
        caller("other project's Basic", &auth(basic("me", OTHER_PAT))),
        caller("other project's raw Authorization", &auth(OTHER_PAT.into())),
    ]
}

fn go_mod(module: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "go.mod".to_owned(),
            format!("module {module}\n\ngo 1.21\n").into_bytes(),
        ),
        (
            "lib.go".to_owned(),
            format!("package lib // {module}\n").into_bytes(),
        ),
    ]
}

fn foo_gem(project: &str) -> GemFixture {
    let mut gem = GemFixture::new("foo", "1.0.0", format!("{project} foo-1.0.0.gem bytes"));
    gem.gemspec_rz = Some(format!("{project} foo-1.0.0.gemspec.rz bytes").into_bytes());
    gem.dependencies = vec![("bar".to_owned(), ">= 0.1".to_owned())];
    gem
}

/// A public and a private project holding the same module version and the same gem (with
/// different bytes), a third private project, and one token of every kind.
async fn gitlab(era: RubyGemsEra) -> FakeGitLab {
    let personal = || TokenKind::Personal {
        scopes: vec!["api"],
    };
    FakeGitLab::builder()
        .era(era)
        .project(PUBLIC, "acme/public", Visibility::Public)
        .project(PRIVATE, "acme/private", Visibility::Private)
        .project(OTHER, "acme/other", Visibility::Private)
        .go_version(PUBLIC, "", "v1.0.0", TIME, go_mod(PROJECTS[0].module))
        .go_version(PRIVATE, "", "v1.0.0", TIME, go_mod(PROJECTS[1].module))
        .gem(PUBLIC, foo_gem("public"))
        .gem(PRIVATE, foo_gem("private"))
        .gem(OTHER, foo_gem("other"))
        .token(
            MEMBER_PAT,
            personal(),
            TokenState::Active,
            &[(PRIVATE, Access::Reporter)],
        )
        .token(
            OTHER_PAT,
            personal(),
            TokenState::Active,
            &[(OTHER, Access::Developer)],
        )
        .token(
            EXPIRED_PAT,
            personal(),
            TokenState::Expired,
            &[(PRIVATE, Access::Reporter)],
        )
        .token(
            JOB,
            TokenKind::Job,
            TokenState::Active,
            &[(PRIVATE, Access::Developer)],
        )
        .token(
            DEPLOY,
            TokenKind::Deploy {
                scopes: vec!["read_package_registry"],
            },
            TokenState::Active,
            &[(PRIVATE, Access::Reporter)],
        )
        .start()
        .await
}

#[derive(Clone, Copy, Debug)]
enum Temperature {
    Cold,
    Warm,
    /// Warm, then GitLab goes down.
    WarmGitLabDown,
}

/// How the proxies under test stand in front of GitLab.
#[derive(Clone, Copy)]
enum Layout {
    /// One proxy.
    Single,
    /// An office proxy whose upstream is a regional proxy in front of GitLab.
    Chained,
}

/// The proxies under test; callers talk to the outermost.
struct Tiers {
    office: TestProxy,
    regional: Option<TestProxy>,
}

impl Tiers {
    async fn start(fake: &FakeGitLab, layout: Layout) -> Tiers {
        match layout {
            Layout::Single => Tiers {
                office: TestProxy::start(&fake.url()).await,
                regional: None,
            },
            Layout::Chained => {
                let regional = TestProxy::start(&fake.url()).await;
                let office =
                    TestProxy::start_with(&regional.url(), |c| c.upstream.chained = true).await;
                Tiers {
                    office,
                    regional: Some(regional),
                }
            }
        }
    }

    fn url(&self) -> String {
        self.office.url()
    }

    fn tiers(&self) -> impl Iterator<Item = &TestProxy> {
        std::iter::once(&self.office).chain(self.regional.as_ref())
    }

    async fn stop(self) {
        self.office.stop().await;
        if let Some(regional) = self.regional {
            regional.stop().await;
        }
    }
}

async fn get(base: &str, path: &str, caller: &Caller) -> Response {
    client::get(&format!("{base}{path}"), &caller.headers()).await
}

/// GitLab's answer to the caller's credentials as the proxy forwards them: Basic moved to
/// the raw token (RubyGems) or `Job-Token` (Go, user `gitlab-ci-token`).
async fn direct_get(base: &str, path: &str, api: Api, caller: &Caller) -> Response {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &caller.headers {
        headers.append(*name, value.parse().expect("a header value"));
    }
    let api = match api {
        Api::Go => gitlab_pkg_cache::route::Api::Go,
        Api::RubyGems(_) => gitlab_pkg_cache::route::Api::RubyGems,
    };
    gitlab_pkg_cache::credentials::translate(api, &mut headers);
    let pairs: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    client::get(&format!("{base}{path}"), &refs).await
}

/// Where the proxy keeps a path's answer, if it keeps it on disk.
fn artifact_key(path: &str) -> Option<String> {
    let uri: http::Uri = path.parse().expect("a valid path");
    match Endpoint::parse(&http::Method::GET, &uri) {
        Ok(Endpoint::Package(route)) if route.cache_class() == CacheClass::Artifact => {
            Some(route.content_key())
        }
        _ => None,
    }
}

/// Fetches every resource of both projects through the proxy as an authorized caller, waits
/// until the artifacts are committed, and checks that each is now served from cache.
/// Returns the bytes the proxy holds, by path.
async fn warm_up(fake: &FakeGitLab, proxy: &Tiers, api: Api) -> HashMap<String, Bytes> {
    let warmer = api.warmer();
    let mut cached = HashMap::new();
    for project in &PROJECTS {
        for path in resources(api, project) {
            let direct = get(&fake.url(), &path, &warmer).await;
            let r = get(&proxy.url(), &path, &warmer).await;
            assert_eq!(
                r.status,
                direct.status,
                "[{} warm-up] {path}: {}",
                api.label(),
                r.text()
            );
            if r.status == 200 {
                cached.insert(path, r.body);
            }
        }
    }
    assert!(!cached.is_empty(), "[{}] nothing to warm", api.label());
    let artifacts: Vec<String> = cached.keys().filter_map(|p| artifact_key(p)).collect();
    for tier in proxy.tiers() {
        let store = tier.state.fills.store().clone();
        eventually("the warm-up's artifacts are stored in every tier", || {
            artifacts
                .iter()
                .all(|key| matches!(store.inner().lookup(key), Ok(Some(_))))
        })
        .await;
    }
    for path in cached.keys() {
        let again = get(&proxy.url(), path, &warmer).await;
        assert_eq!(
            (again.status, again.header("x-cache")),
            (200, Some("hit")),
            "[{} warm-up] {path} is not served from cache",
            api.label()
        );
    }
    cached
}

/// A short rendering of a body for failure messages.
fn preview(r: &Response) -> String {
    match std::str::from_utf8(&r.body) {
        Ok(text) if text.len() <= 120 => format!("{text:?}"),
        Ok(text) => format!("{:?}…", &text[..120]),
        Err(_) => format!("<{} binary bytes>", r.body.len()),
    }
}

/// One cell: the proxy (`via`) must answer as GitLab (`direct`) does, and a caller GitLab
/// refuses must get GitLab's refusal, never the cached bytes. Returns what is wrong.
fn check_cell(direct: &Response, via: &Response, cached: Option<&Bytes>) -> Vec<String> {
    let mut problems = Vec::new();
    if via.status != direct.status {
        problems.push(format!(
            "status {} where GitLab says {}",
            via.status, direct.status
        ));
    }
    if !same_body(&via.body, &direct.body) {
        problems.push(format!(
            "body {} where GitLab says {}",
            preview(via),
            preview(direct)
        ));
    }
    for name in ["content-type", "www-authenticate"] {
        if via.header(name) != direct.header(name) {
            problems.push(format!(
                "{name} {:?} where GitLab says {:?}",
                via.header(name),
                direct.header(name)
            ));
        }
    }
    let outcome = via.header("x-cache");
    if outcome.is_none() {
        problems.push("no x-cache".to_owned());
    }
    // GitLab refuses this caller a resource whose bytes the proxy holds: they must not be
    // what the caller gets, nor may the answer claim to come from the cache. The one
    // exception is a 404 the proxy remembers for this very credential (`cache.negative_ttl`)
    // and replays as a hit: it is GitLab's own answer to this caller (status and body are
    // checked above), never anyone's cached bytes.
    if let Some(cached) = cached.filter(|_| direct.status != 200) {
        let replayed_own_404 = via.status == 404 && outcome == Some("hit");
        if !matches!(outcome, Some("refused" | "miss")) && !replayed_own_404 {
            problems.push(format!("x-cache {outcome:?} on a refusal"));
        }
        if same_body(&via.body, cached) {
            problems.push("a refused caller received the cached bytes".to_owned());
        }
    }
    problems
}

/// One cell while GitLab is down. Only a caller GitLab accepted earlier (here: the warmer's
/// very credential) may be answered from the cache, with what GitLab had said; everyone
/// else is failed closed with a 5xx text answer: never the cached bytes, never a 404 that
/// would send the go command to the next proxy, never a 200.
fn check_outage_cell(
    direct: &Response,
    via: &Response,
    cached: Option<&Bytes>,
    accepted_before: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    if accepted_before {
        if (via.status, same_body(&via.body, &direct.body)) != (direct.status, true) {
            problems.push(format!(
                "{} {} where GitLab said {} {} before it went down",
                via.status,
                preview(via),
                direct.status,
                preview(direct)
            ));
        }
        return problems;
    }
    if !(500..600).contains(&via.status) {
        problems.push(format!(
            "status {} {} for a caller never confirmed",
            via.status,
            preview(via)
        ));
    }
    if via.header("content-type") != Some("text/plain; charset=utf-8") {
        problems.push(format!("content-type {:?}", via.header("content-type")));
    }
    if cached.is_some_and(|cached| same_body(&via.body, cached)) {
        problems.push("an unconfirmed caller received the cached bytes".to_owned());
    }
    problems
}

/// Failures so far, and how many cells were checked.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
    cells: usize,
}

impl Report {
    /// Checks `caller` on every resource of both projects. The public project comes first,
    /// so that an acceptance GitLab gave for it must not carry over to the private one.
    /// GitLab's own answers are taken first, so that with `outage` the proxy can then be
    /// asked while GitLab is down.
    #[allow(clippy::too_many_arguments)]
    async fn caller(
        &mut self,
        fake: &FakeGitLab,
        proxy: &Tiers,
        api: Api,
        state: &str,
        caller: &Caller,
        cached: &HashMap<String, Bytes>,
        outage: bool,
    ) {
        let mut cells = Vec::new();
        for project in &PROJECTS {
            for path in resources(api, project) {
                let direct = direct_get(&fake.url(), &path, api, caller).await;
                cells.push((project.label, path, direct));
            }
        }
        fake.set_down(outage);
        for (project, path, direct) in cells {
            self.cells += 1;
            let via = get(&proxy.url(), &path, caller).await;
            let cached = cached.get(&path);
            let problems = if outage {
                let accepted_before = caller.headers == api.warmer().headers;
                check_outage_cell(&direct, &via, cached, accepted_before)
            } else {
                check_cell(&direct, &via, cached)
            };
            if !problems.is_empty() {
                let resource = path.rsplit_once("/packages/").map_or(&*path, |p| p.1);
                self.failures.push(format!(
                    "[{} | {project} | {state} | {} | {resource}] {}",
                    api.label(),
                    caller.name,
                    problems.join("; ")
                ));
            }
        }
        fake.set_down(false);
    }

    fn assert_clean(self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} cells differ from GitLab:\n{}",
            self.failures.len(),
            self.cells,
            self.failures.join("\n")
        );
    }
}

/// Runs every cell of one API: each caller cold and warm on a proxy of its own, so that a
/// failure names exactly one caller, one cache state, one project and one resource; then
/// all callers one after the other on one shared warm proxy, in both orders, so that what
/// one caller leaves behind (an acceptance, a remembered 404) cannot change another's answer.
async fn matrix(api: Api, layout: Layout) {
    let era = match api {
        Api::Go => RubyGemsEra::V19_1,
        Api::RubyGems(era) => era,
    };
    let fake = gitlab(era).await;
    let mut report = Report::default();
    for caller in callers() {
        for temperature in [
            Temperature::Cold,
            Temperature::Warm,
            Temperature::WarmGitLabDown,
        ] {
            let proxy = Tiers::start(&fake, layout).await;
            let cached = match temperature {
                Temperature::Cold => HashMap::new(),
                Temperature::Warm | Temperature::WarmGitLabDown => {
                    warm_up(&fake, &proxy, api).await
                }
            };
            let outage = matches!(temperature, Temperature::WarmGitLabDown);
            let state = format!("{temperature:?}");
            report
                .caller(&fake, &proxy, api, &state, &caller, &cached, outage)
                .await;
            proxy.stop().await;
        }
    }
    let proxy = Tiers::start(&fake, layout).await;
    let cached = warm_up(&fake, &proxy, api).await;
    let all = callers();
    for (state, order) in [
        ("warm, shared, in order", all.iter().collect::<Vec<_>>()),
        ("warm, shared, reversed", all.iter().rev().collect()),
    ] {
        for caller in order {
            report
                .caller(&fake, &proxy, api, state, caller, &cached, false)
                .await;
        }
    }
    proxy.stop().await;
    report.assert_clean();
}

#[tokio::test]
async fn go_proxy_answers_every_caller_as_gitlab_does() {
    matrix(Api::Go, Layout::Single).await;
}

#[tokio::test]
async fn rubygems_before_19_1_answers_every_caller_as_gitlab_does() {
    matrix(Api::RubyGems(RubyGemsEra::Pre19_1), Layout::Single).await;
}

#[tokio::test]
async fn rubygems_19_1_answers_every_caller_as_gitlab_does() {
    matrix(Api::RubyGems(RubyGemsEra::V19_1), Layout::Single).await;
}

/// The same matrix through an office proxy in front of a regional one: each tier keeps what
/// passes through, and the office answers every caller exactly as GitLab does.
#[tokio::test]
async fn an_office_in_front_of_a_regional_proxy_answers_go_callers_as_gitlab_does() {
    matrix(Api::Go, Layout::Chained).await;
}

#[tokio::test]
async fn an_office_in_front_of_a_regional_proxy_answers_gem_callers_as_gitlab_does() {
    matrix(Api::RubyGems(RubyGemsEra::V19_1), Layout::Chained).await;
}

/// The proxy remembers GitLab's acceptance per caller, project *and* API: a credential one
/// API accepts may mean nothing to the other (reference §2.5 and §3.3).
#[tokio::test]
async fn an_acceptance_by_one_api_does_not_open_the_other() {
    let fake = gitlab(RubyGemsEra::V19_1).await;
    let proxy = Tiers::start(&fake, Layout::Single).await;
    let private = &PROJECTS[1];
    let gems_cached = warm_up(&fake, &proxy, Api::RubyGems(RubyGemsEra::V19_1)).await;
    let go_cached = warm_up(&fake, &proxy, Api::Go).await;
    let mut report = Report::default();
    // Accepted by the Go API, ignored by the RubyGems API (so anonymous: 404 there).
    let go_only = caller("Private-Token PAT", &[("private-token", MEMBER_PAT.into())]);
    // Accepted by the RubyGems API, ignored by the Go API (so anonymous: 401 there).
    let gems_only = caller(
        "raw Authorization PAT",
        &[("authorization", MEMBER_PAT.into())],
    );
    for (first, then, label, caller, cached) in [
        (
            Api::Go,
            Api::RubyGems(RubyGemsEra::V19_1),
            "after Go accepted it",
            &go_only,
            &gems_cached,
        ),
        (
            Api::RubyGems(RubyGemsEra::V19_1),
            Api::Go,
            "after RubyGems accepted it",
            &gems_only,
            &go_cached,
        ),
    ] {
        for path in resources(first, private) {
            let r = get(&proxy.url(), &path, caller).await;
            assert_eq!(r.status, 200, "{} {path}: {}", caller.name, r.text());
        }
        report
            .caller(&fake, &proxy, then, label, caller, cached, false)
            .await;
    }
    report.assert_clean();
}

/// Through an office in front of a regional proxy, `x-cache` is the office's outcome and
/// `x-cache-upstream` the regional tier's for an artifact the office fetched from it; a hit
/// at the office carries none.
#[tokio::test]
async fn the_regional_tiers_outcome_shows_as_x_cache_upstream() {
    let fake = gitlab(RubyGemsEra::V19_1).await;
    let tiers = Tiers::start(&fake, Layout::Chained).await;
    let regional = tiers.regional.as_ref().expect("chained");
    let warmer = Api::Go.warmer();
    let [list, _info, module, zip] =
        <[String; 4]>::try_from(resources(Api::Go, &PROJECTS[1])).expect("four Go resources");
    let outcome = |r: &Response| {
        (
            r.status,
            r.header("x-cache").map(str::to_owned),
            r.header("x-cache-upstream").map(str::to_owned),
        )
    };
    let some = |s: &str| Some(s.to_owned());

    // A list is answered from what the office's authorization probe kept: its own outcome.
    let r = get(&tiers.url(), &list, &warmer).await;
    assert_eq!(outcome(&r), (200, some("miss"), None), "{list}");
    let r = get(&tiers.url(), &zip, &warmer).await;
    assert_eq!(outcome(&r), (200, some("miss"), some("miss")), "{zip}");
    // The regional tier had the .mod first.
    let r = get(&regional.url(), &module, &warmer).await;
    assert_eq!(outcome(&r), (200, some("miss"), None), "{module}");
    // Its fill commits just after the client's last byte: until then it would be coalesced.
    let regional_store = regional.state.fills.store().clone();
    let module_key = artifact_key(&module).expect("an artifact");
    eventually("the regional tier stored the .mod", || {
        matches!(regional_store.inner().lookup(&module_key), Ok(Some(_)))
    })
    .await;
    let r = get(&tiers.url(), &module, &warmer).await;
    assert_eq!(outcome(&r), (200, some("miss"), some("hit")), "{module}");

    let office = tiers.office.state.fills.store().clone();
    let key = artifact_key(&zip).expect("an artifact");
    eventually("the office stored the zip", || {
        matches!(office.inner().lookup(&key), Ok(Some(_)))
    })
    .await;
    let r = get(&tiers.url(), &zip, &warmer).await;
    assert_eq!(outcome(&r), (200, some("hit"), None), "{zip}");
    tiers.stop().await;
}
