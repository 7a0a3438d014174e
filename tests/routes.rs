//! Every route of GitLab's Go proxy and RubyGems APIs through the proxy: forwarded verbatim,
//! answered as GitLab answers, cached where it may be (and for no longer than the TTL), and
//! everything GitLab does not route (or no one should send) answered locally.

mod support;

use support::fixtures::same_body;

use support::eventually;

use std::time::Duration;

use bytes::Bytes;
use gitlab_pkg_cache::route::{CacheClass, Endpoint};
use http_body_util::StreamBody;
use hyper::body::Frame;
use support::client::{self, Response};
use support::fake_gitlab::{Access, FakeGitLab, GemFixture, TokenKind, TokenState, Visibility};
use support::proxy::TestProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PUBLIC: u64 = 1;
const MIXED_CASE: u64 = 2;
const PRIVATE: u64 = 3;
const TIME: &str = "2024-05-01T10:00:00.000+00:00";
const DEVELOPER: &str = "glpat-developer";

const GO: &str = "/api/v4/projects/acme%2Fpublic/packages/go/gitlab.example.com/acme/public/@v";
const GO_BY_ID: &str = "/api/v4/projects/1/packages/go/gitlab.example.com/acme/public/@v";
/// `Acme/MixedCase`, as the go command case-encodes it.
const GO_MIXED: &str =
    "/api/v4/projects/Acme%2FMixedCase/packages/go/gitlab.example.com/!acme/!mixed!case/@v";
const GO_PRIVATE: &str = "/api/v4/projects/3/packages/go/gitlab.example.com/acme/private/@v";
const GEMS: &str = "/api/v4/projects/acme%2Fpublic/packages/rubygems";
const PRIVATE_GEMS: &str = "/api/v4/projects/3/packages/rubygems";

const ROUTE_NOT_FOUND: &str = r#"{"error":"404 Not Found"}"#;
const GEM_BYTES: &[u8] = b"foo-1.0.0.gem: \x00\x01\x02 binary gem bytes";
const GEMSPEC_BYTES: &[u8] = b"foo-1.0.0.gemspec.rz: \x78\x9c deflated spec";

fn module(path: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "go.mod".to_owned(),
            format!("module {path}\n\ngo 1.21\n").into_bytes(),
        ),
        ("lib.go".to_owned(), b"package lib\n".to_vec()),
    ]
}

/// A public project with tags of every version shape (plain, `!`-encoded prerelease,
/// `+build`) and gems, a mixed-case project, a private project, and a developer's token.
async fn gitlab(object_store: bool) -> FakeGitLab {
    let mut public_foo = GemFixture::new("foo", "1.0.0", GEM_BYTES);
    public_foo.gemspec_rz = Some(GEMSPEC_BYTES.to_vec());
    public_foo.dependencies = vec![("bar".to_owned(), "~> 2.0".to_owned())];
    let mut private_foo = public_foo.clone();
    private_foo.gem_bytes = b"private foo-1.0.0.gem".to_vec();
    FakeGitLab::builder()
        .object_store_redirects(object_store)
        .project(PUBLIC, "acme/public", Visibility::Public)
        .project(MIXED_CASE, "Acme/MixedCase", Visibility::Public)
        .project(PRIVATE, "acme/private", Visibility::Private)
        .go_version(
            PUBLIC,
            "",
            "v1.0.0",
            TIME,
            module("gitlab.example.com/acme/public"),
        )
        .go_version(
            PUBLIC,
            "",
            "v1.1.0+build.5",
            TIME,
            module("gitlab.example.com/acme/public"),
        )
        .go_version(
            PUBLIC,
            "",
            "v1.2.0-Beta",
            TIME,
            module("gitlab.example.com/acme/public"),
        )
        .go_version(
            MIXED_CASE,
            "",
            "v1.0.0",
            TIME,
            module("gitlab.example.com/Acme/MixedCase"),
        )
        .go_version(
            PRIVATE,
            "",
            "v1.0.0",
            TIME,
            module("gitlab.example.com/acme/private"),
        )
        .gem(PUBLIC, public_foo)
        .gem(PUBLIC, GemFixture::new("bar", "2.0.0", "bar-2.0.0.gem"))
        .gem(
            PUBLIC,
            GemFixture::new("bar", "2.1.0.rc1", "bar-2.1.0.rc1.gem"),
        )
        .gem(PRIVATE, private_foo)
        .token(
            DEVELOPER,
            TokenKind::Personal {
                scopes: vec!["api"],
            },
            TokenState::Active,
            &[
                (PUBLIC, Access::Developer),
                (MIXED_CASE, Access::Developer),
                (PRIVATE, Access::Developer),
            ],
        )
        .start()
        .await
}

/// Request headers, as the support client takes them.
type Headers<'a> = &'a [(&'a str, &'a str)];

async fn send(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
) -> Response {
    client::request(method, &format!("{base}{path}"), headers, body).await
}

async fn get(base: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    send(base, "GET", path, headers, None).await
}

/// Whether the proxy has stored the answer to `path`, or never stores it (memory-tier and
/// pass-through routes): artifacts are committed just after their body ends.
fn is_stored_or_not_an_artifact(proxy: &TestProxy, path: &str) -> bool {
    let uri: http::Uri = path.parse().expect("a valid path");
    match Endpoint::parse(&http::Method::GET, &uri) {
        Ok(Endpoint::Package(route)) if route.cache_class() == CacheClass::Artifact => matches!(
            proxy
                .state
                .fills
                .store()
                .inner()
                .lookup(&route.content_key()),
            Ok(Some(_))
        ),
        _ => true,
    }
}

/// One route of §2.1 or §3.1, and whether the proxy keeps its answers.
struct RouteCase {
    name: &'static str,
    method: &'static str,
    path: String,
    body: Option<Bytes>,
    cached: bool,
}

fn route(name: &'static str, path: impl Into<String>, cached: bool) -> RouteCase {
    RouteCase {
        name,
        method: "GET",
        path: path.into(),
        body: None,
        cached,
    }
}

/// Every route GitLab has, with the encodings clients really send: `%2F` in project paths,
/// `!` case-encoding in module paths and versions, `+build` versions, bundler's `%2C`.
fn every_route() -> Vec<RouteCase> {
    let post = |name, path: String, body: &'static [u8]| RouteCase {
        name,
        method: "POST",
        path,
        body: Some(Bytes::from_static(body)),
        cached: false,
    };
    vec![
        route("go list", format!("{GO}/list"), true),
        route("go info", format!("{GO}/v1.0.0.info"), true),
        route("go mod", format!("{GO}/v1.0.0.mod"), true),
        route("go zip", format!("{GO}/v1.0.0.zip"), true),
        route("go list, project by id", format!("{GO_BY_ID}/list"), true),
        route(
            "go +build info",
            format!("{GO_BY_ID}/v1.1.0+build.5.info"),
            true,
        ),
        route(
            "go +build mod",
            format!("{GO_BY_ID}/v1.1.0+build.5.mod"),
            true,
        ),
        route(
            "go +build zip",
            format!("{GO_BY_ID}/v1.1.0+build.5.zip"),
            true,
        ),
        route(
            "go !-encoded version",
            format!("{GO}/v1.2.0-!beta.info"),
            true,
        ),
        route("go !-encoded module list", format!("{GO_MIXED}/list"), true),
        route(
            "go !-encoded module zip",
            format!("{GO_MIXED}/v1.0.0.zip"),
            true,
        ),
        route("gem specs index", format!("{GEMS}/specs.4.8.gz"), true),
        route(
            "gem latest specs index",
            format!("{GEMS}/latest_specs.4.8.gz"),
            true,
        ),
        route(
            "gem prerelease specs index",
            format!("{GEMS}/prerelease_specs.4.8.gz"),
            true,
        ),
        route(
            "gemspec",
            format!("{GEMS}/quick/Marshal.4.8/foo-1.0.0.gemspec.rz"),
            true,
        ),
        route("gem", format!("{GEMS}/gems/foo-1.0.0.gem"), true),
        route(
            "dependency probe",
            format!("{GEMS}/api/v1/dependencies"),
            true,
        ),
        route(
            "dependencies, bundler's escaped comma",
            format!("{GEMS}/api/v1/dependencies?gems=bar%2Cfoo"),
            true,
        ),
        route(
            "dependencies, plain comma",
            format!("{GEMS}/api/v1/dependencies?gems=foo,bar"),
            true,
        ),
        post(
            "gem push",
            format!("{GEMS}/api/v1/gems"),
            b"a .gem \x00 pushed",
        ),
        post(
            "gem push pre-authorization",
            format!("{GEMS}/api/v1/gems/authorize"),
            b"",
        ),
    ]
}

/// Headers that describe the client's connection, never to be forwarded; `x-hop-secret` is
/// hop-by-hop because `Connection` names it.
const HOP_BY_HOP: [(&str, &str); 5] = [
    ("connection", "keep-alive, x-hop-secret"),
    ("x-hop-secret", "connection-scoped"),
    ("keep-alive", "timeout=5"),
    ("te", "trailers"),
    ("proxy-authorization", "Basic cHJveHk6c2VjcmV0"),
];

/// Credentials in every place GitLab reads them from; all are valid or ignored, so every
/// route answers with success.
const CREDENTIALS: [(&str, &str); 4] = [
    ("private-token", DEVELOPER),
    ("authorization", DEVELOPER),
    ("job-token", "glcbt-not-looked-at"),
    ("cookie", "_gitlab_session=abc123"),
];

/// Conditional and encoding headers, dropped for cached routes so GitLab sends the whole
/// resource (§1.3: never revalidate GitLab downloads with If-None-Match).
const CONDITIONAL: [(&str, &str); 3] = [
    ("if-none-match", "W/\"12ae32cb1ec02d01eda3581b127c1fee\""),
    ("accept-encoding", "gzip"),
    ("range", "bytes=0-"),
];

#[tokio::test]
async fn every_route_is_forwarded_verbatim_and_answered_as_gitlab_does() {
    let fake = gitlab(false).await;
    let proxy = TestProxy::start(&fake.url()).await;
    let fake_authority = fake.url().trim_start_matches("http://").to_owned();
    let mut failures = Vec::new();
    for case in every_route() {
        let mut headers: Vec<(&str, &str)> = vec![
            ("x-forwarded-for", "10.9.8.7"),
            ("content-type", "application/octet-stream"),
            ("user-agent", "gem/3.6.0 ruby/3.3.0"),
        ];
        headers.extend(CREDENTIALS);
        headers.extend(HOP_BY_HOP);
        headers.extend(CONDITIONAL);
        fake.reset_hits();
        let via = send(
            &proxy.url(),
            case.method,
            &case.path,
            &headers,
            case.body.clone(),
        )
        .await;
        let mut problems = Vec::new();
        let path_only = case.path.split('?').next().unwrap_or_default();
        // A dependency batch is answered from per-gem entries: GitLab is asked at most once,
        // on the same endpoint, for the names not held yet (the plain-comma batch follows
        // the escaped one with the same names, so it is answered without GitLab).
        let batch = case.path.contains("/dependencies?gems=")
            && (case.path.contains(',') || case.path.contains("%2C"));
        if batch {
            if fake.total_hits() > 1 || fake.total_hits() != fake.hits_prefix(path_only) {
                problems.push(format!(
                    "{} hits on the endpoint, {} in all (expected at most 1, there)",
                    fake.hits_prefix(path_only),
                    fake.total_hits()
                ));
            }
        } else if fake.hits(&case.path) != 1 || fake.total_hits() != 1 {
            // Exactly one upstream request, on exactly the path and query the client sent.
            problems.push(format!(
                "{} hits on the path, {} in all (expected 1 and 1)",
                fake.hits(&case.path),
                fake.total_hits()
            ));
        }
        match fake.last_request_headers(path_only) {
            None if batch && fake.total_hits() == 0 => {}
            None => problems.push("GitLab saw no request on this path".to_owned()),
            Some(seen) => {
                let seen_value = |name: &str| seen.get(name).and_then(|v| v.to_str().ok());
                for (name, value) in CREDENTIALS {
                    if seen_value(name) != Some(value) {
                        problems.push(format!("{name} arrived as {:?}", seen_value(name)));
                    }
                }
                for (name, _) in HOP_BY_HOP {
                    if seen.contains_key(name) {
                        problems.push(format!("hop-by-hop {name} was forwarded"));
                    }
                }
                for (name, value) in CONDITIONAL {
                    let forwarded = seen_value(name) == Some(value);
                    if case.cached && forwarded {
                        problems.push(format!("{name} forwarded on a cached route"));
                    }
                }
                if seen_value("x-forwarded-for") != Some("10.9.8.7, 127.0.0.1") {
                    problems.push(format!(
                        "x-forwarded-for {:?}",
                        seen_value("x-forwarded-for")
                    ));
                }
                if seen_value("host") != Some(fake_authority.as_str()) {
                    problems.push(format!("host {:?}", seen_value("host")));
                }
                if seen_value("user-agent") != Some("gem/3.6.0 ruby/3.3.0") {
                    problems.push("user-agent not forwarded".to_owned());
                }
            }
        }
        let direct = send(
            &fake.url(),
            case.method,
            &case.path,
            &headers,
            case.body.clone(),
        )
        .await;
        if via.status != direct.status {
            problems.push(format!(
                "status {} where GitLab says {}",
                via.status, direct.status
            ));
        }
        if via.header("content-type") != direct.header("content-type") {
            problems.push(format!(
                "content-type {:?} where GitLab says {:?}",
                via.header("content-type"),
                direct.header("content-type")
            ));
        }
        if !same_body(&via.body, &direct.body) {
            problems.push(format!(
                "body {:?} where GitLab says {:?}",
                via.text(),
                direct.text()
            ));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{} ({} {}): {}",
                case.name,
                case.method,
                case.path,
                problems.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // The uploads went through whole, and the direct ones too.
    assert_eq!(
        fake.uploads(PUBLIC),
        vec![Bytes::from_static(b"a .gem \x00 pushed"); 2]
    );
}

#[tokio::test]
async fn x_forwarded_for_is_added_when_the_client_sent_none() {
    let fake = gitlab(false).await;
    let proxy = TestProxy::start(&fake.url()).await;
    let path = format!("{GO}/list");
    let r = get(&proxy.url(), &path, &[]).await;
    assert_eq!(r.status, 200);
    let seen = fake.last_request_headers(&path).expect("GitLab saw it");
    assert_eq!(
        seen.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
        Some("127.0.0.1")
    );
    for name in ["private-token", "authorization", "job-token", "cookie"] {
        assert!(!seen.contains_key(name), "{name} appeared from nowhere");
    }
}

#[tokio::test]
async fn cached_answers_are_served_without_gitlab() {
    let fake = gitlab(false).await;
    let proxy = TestProxy::start(&fake.url()).await;
    let token = [("authorization", DEVELOPER)];
    let cases: Vec<(&str, String, Headers)> = vec![
        ("go list", format!("{GO}/list"), &[]),
        (
            "dependency answer",
            format!("{GEMS}/api/v1/dependencies?gems=foo"),
            &[],
        ),
        (
            "dependency probe",
            format!("{GEMS}/api/v1/dependencies"),
            &[],
        ),
        ("spec index", format!("{GEMS}/specs.4.8.gz"), &[]),
        (
            "latest spec index",
            format!("{GEMS}/latest_specs.4.8.gz"),
            &[],
        ),
        (
            "private go list",
            format!("{GO_PRIVATE}/list"),
            &[("private-token", DEVELOPER)],
        ),
        (
            "private spec index",
            format!("{PRIVATE_GEMS}/specs.4.8.gz"),
            &token,
        ),
        ("go info", format!("{GO}/v1.0.0.info"), &[]),
        ("go zip", format!("{GO}/v1.0.0.zip"), &[]),
        ("gem", format!("{GEMS}/gems/foo-1.0.0.gem"), &[]),
        (
            "gemspec",
            format!("{GEMS}/quick/Marshal.4.8/foo-1.0.0.gemspec.rz"),
            &[],
        ),
        (
            "private gem",
            format!("{PRIVATE_GEMS}/gems/foo-1.0.0.gem"),
            &token,
        ),
    ];
    for (name, path, headers) in cases {
        fake.reset_hits();
        let first = get(&proxy.url(), &path, headers).await;
        assert_eq!(
            (first.status, first.header("x-cache")),
            (200, Some("miss")),
            "{name}: {}",
            first.text()
        );
        assert_eq!(fake.total_hits(), 1, "{name}");
        eventually("the artifact is committed", || {
            is_stored_or_not_an_artifact(&proxy, &path)
        })
        .await;
        let second = get(&proxy.url(), &path, headers).await;
        assert_eq!(
            (second.status, second.header("x-cache")),
            (200, Some("hit")),
            "{name}"
        );
        assert_eq!(second.body, first.body, "{name}");
        assert_eq!(
            second.header("content-type"),
            first.header("content-type"),
            "{name}"
        );
        assert_eq!(
            fake.total_hits(),
            1,
            "{name}: the second GET reached GitLab"
        );
    }
}

/// Moves tokio's clock while no request is under way: with real sockets in use, a paused
/// clock would advance by itself and fire the proxy's timeouts.
async fn let_time_pass(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// Past `cache.metadata_ttl`, GitLab is asked again: in the background while the answer is
/// younger than `cache.metadata_max_stale` (the caller is served at once), in the request's
/// own time beyond that.
#[tokio::test]
async fn cached_metadata_is_asked_for_again_after_the_ttl() {
    let fake = gitlab(false).await;
    let ttl = Duration::from_secs(30);
    let max_stale = Duration::from_secs(120);
    let proxy = TestProxy::start_with(&fake.url(), |config| {
        config.cache.metadata_ttl = ttl;
        config.cache.metadata_max_stale = max_stale;
        // Only the answers' age matters here, not whether GitLab still accepts the caller.
        config.cache.auth_ttl = Duration::from_secs(3600);
    })
    .await;
    let paths = [
        format!("{GO}/list"),
        format!("{GEMS}/api/v1/dependencies?gems=foo"),
        format!("{GEMS}/specs.4.8.gz"),
    ];
    let outcome = |r: &Response| r.header("x-cache").map(str::to_owned);
    for path in &paths {
        let r = get(&proxy.url(), path, &[]).await;
        assert_eq!(outcome(&r).as_deref(), Some("miss"), "{path}");
    }

    let_time_pass(ttl / 2 - Duration::from_secs(1)).await;
    for path in &paths {
        let r = get(&proxy.url(), path, &[]).await;
        assert_eq!(
            outcome(&r).as_deref(),
            Some("hit"),
            "{path} in the first half of the TTL"
        );
        assert_eq!(fake.hits(path), 1, "{path} in the first half of the TTL");
    }

    // In use in the second half of its life: answered from the cache at once, refreshed
    // once in the background; past the TTL the same, marked stale.
    let_time_pass(Duration::from_secs(2)).await;
    for path in &paths {
        let r = get(&proxy.url(), path, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            outcome(&r).as_deref(),
            Some("hit"),
            "{path} refreshed ahead"
        );
        eventually("GitLab is asked again", || fake.hits(path) == 2).await;
    }
    // GitLab counts the request before the refresh has read and kept the answer.
    let refreshed = || proxy.state.refreshing.lock().is_ok_and(|r| r.is_empty());
    eventually("the background refreshes are kept", refreshed).await;
    let_time_pass(ttl + Duration::from_secs(1)).await;
    for path in &paths {
        let r = get(&proxy.url(), path, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(outcome(&r).as_deref(), Some("stale"), "{path} past the TTL");
        eventually("GitLab is asked again", || fake.hits(path) == 3).await;
    }
    eventually("the background refreshes are kept", refreshed).await;
    for path in &paths {
        // The refreshed answer is fresh again: nobody asks GitLab for it.
        let r = get(&proxy.url(), path, &[]).await;
        assert_eq!(
            outcome(&r).as_deref(),
            Some("hit"),
            "{path} after the refresh"
        );
        assert_eq!(fake.hits(path), 3, "{path} after the refresh");
    }

    // Too old to stand in: the request waits for GitLab, which confirms the cached list and
    // dependency answer with a 304 (spec indexes have no validator GitLab gets right).
    let_time_pass(max_stale + Duration::from_secs(1)).await;
    for (path, expected) in paths.iter().zip(["revalidated", "revalidated", "miss"]) {
        let r = get(&proxy.url(), path, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            outcome(&r).as_deref(),
            Some(expected),
            "{path} past max stale"
        );
        assert_eq!(fake.hits(path), 4, "{path} past max stale");
    }
}

#[tokio::test]
async fn without_a_stale_window_an_expired_list_waits_for_gitlab() {
    let fake = gitlab(false).await;
    let ttl = Duration::from_secs(30);
    let proxy = TestProxy::start_with(&fake.url(), |config| {
        config.cache.metadata_ttl = ttl;
        config.cache.metadata_max_stale = ttl;
    })
    .await;
    let path = format!("{GO}/list");
    assert_eq!(
        get(&proxy.url(), &path, &[]).await.header("x-cache"),
        Some("miss")
    );
    assert_eq!(
        get(&proxy.url(), &path, &[]).await.header("x-cache"),
        Some("hit")
    );
    assert_eq!(fake.hits(&path), 1);
    let_time_pass(ttl + Duration::from_secs(1)).await;
    let r = get(&proxy.url(), &path, &[]).await;
    assert_eq!((r.status, r.header("x-cache")), (200, Some("revalidated")));
    assert_eq!(fake.hits(&path), 2, "GitLab asked again after the TTL");
    assert_eq!(
        get(&proxy.url(), &path, &[]).await.header("x-cache"),
        Some("hit")
    );
    assert_eq!(fake.hits(&path), 2);
}

#[tokio::test]
async fn head_requests_on_cached_and_uncached_routes() {
    let fake = gitlab(false).await;
    let proxy = TestProxy::start(&fake.url()).await;
    let paths = [
        format!("{GO}/list"),
        format!("{GO}/v1.0.0.info"),
        format!("{GO}/v1.0.0.zip"),
        format!("{GEMS}/api/v1/dependencies?gems=foo"),
        format!("{GEMS}/specs.4.8.gz"),
        format!("{GEMS}/gems/foo-1.0.0.gem"),
    ];
    for path in &paths {
        let gitlab_head = send(&fake.url(), "HEAD", path, &[], None).await;
        let gitlab_get = get(&fake.url(), path, &[]).await;

        // Uncached: GitLab is asked (a list with GET, to be cached; an artifact with HEAD).
        fake.reset_hits();
        let cold = send(&proxy.url(), "HEAD", path, &[], None).await;
        assert_eq!(cold.status, 200, "{path}");
        assert!(cold.body.is_empty(), "{path}: HEAD answered with a body");
        assert_eq!(fake.total_hits(), 1, "{path}");
        assert_eq!(
            cold.header("content-type"),
            gitlab_head.header("content-type"),
            "{path}"
        );
        if !path.ends_with(".zip") {
            // (GitLab's zips differ in length from one build to the next.)
            assert_eq!(
                cold.header("content-length"),
                gitlab_head.header("content-length"),
                "{path}: uncached HEAD"
            );
        }

        // Cached: a GET fills, then HEAD is answered from the cache with the stored length.
        let full = get(&proxy.url(), path, &[]).await;
        assert_eq!(full.status, 200, "{path}");
        assert!(same_body(&full.body, &gitlab_get.body), "{path}");
        eventually("the artifact is committed", || {
            is_stored_or_not_an_artifact(&proxy, path)
        })
        .await;
        fake.reset_hits();
        let warm = send(&proxy.url(), "HEAD", path, &[], None).await;
        assert_eq!(
            (warm.status, warm.header("x-cache")),
            (200, Some("hit")),
            "{path}"
        );
        assert!(warm.body.is_empty(), "{path}");
        assert_eq!(fake.total_hits(), 0, "{path}: cached HEAD reached GitLab");
        let full_length = full.body.len().to_string();
        assert_eq!(
            warm.header("content-length"),
            Some(full_length.as_str()),
            "{path}: cached HEAD"
        );
    }
    // A refusal to HEAD is GitLab's refusal, without a body.
    let private = format!("{GO_PRIVATE}/list");
    let refused = send(&proxy.url(), "HEAD", &private, &[], None).await;
    let gitlab_refused = send(&fake.url(), "HEAD", &private, &[], None).await;
    assert_eq!((refused.status, gitlab_refused.status), (401, 401));
    assert!(refused.body.is_empty());
}

#[tokio::test]
async fn gem_push_reaches_gitlab_whole() {
    let fake = gitlab(false).await;
    let proxy = TestProxy::start(&fake.url()).await;
    let push = format!("{GEMS}/api/v1/gems");
    let gem: Bytes = (0..=255u8)
        .cycle()
        .take(64 * 1024)
        .collect::<Vec<_>>()
        .into();
    let r = send(
        &proxy.url(),
        "POST",
        &push,
        &[
            ("authorization", DEVELOPER),
            ("content-type", "application/octet-stream"),
        ],
        Some(gem.clone()),
    )
    .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (201, r#"{"message":"201 Created"}"#)
    );
    assert_eq!(r.header("x-cache"), Some("bypass"));
    assert_eq!(fake.uploads(PUBLIC), vec![gem.clone()]);

    // Streamed without a length: still whole.
    let streamed = post_streamed(
        &format!("{}{push}", proxy.url()),
        &[("authorization", DEVELOPER)],
        gem.chunks(5000).map(Bytes::copy_from_slice).collect(),
    )
    .await
    .expect("a streamed push");
    assert_eq!(streamed.status, 201, "{}", streamed.text());
    assert_eq!(fake.uploads(PUBLIC), vec![gem.clone(), gem.clone()]);

    // Anonymous: GitLab's 401, nothing stored.
    let anonymous = send(&proxy.url(), "POST", &push, &[], Some(gem.clone())).await;
    let direct = send(&fake.url(), "POST", &push, &[], Some(gem)).await;
    assert_eq!(
        (anonymous.status, anonymous.text()),
        (direct.status, direct.text())
    );
    assert_eq!(anonymous.status, 401);
    assert_eq!(fake.uploads(PUBLIC).len(), 2);
}

/// POSTs `chunks` with chunked transfer encoding (no `Content-Length`).
async fn post_streamed(
    url: &str,
    headers: &[(&str, &str)],
    chunks: Vec<Bytes>,
) -> Result<Response, client::Error> {
    let frames = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|chunk| Ok::<_, std::convert::Infallible>(Frame::data(chunk))),
    );
    let mut request = http::Request::post(url).body(StreamBody::new(frames))?;
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes())?,
            http::HeaderValue::from_str(value)?,
        );
    }
    support::client::send(request).await
}

#[tokio::test]
async fn an_upload_over_the_limit_is_refused_with_413() {
    let fake = gitlab(false).await;
    let proxy = TestProxy::start_with(&fake.url(), |config| {
        config.server.max_upload_bytes = bytesize::ByteSize::kib(16);
    })
    .await;
    let push = format!("{GEMS}/api/v1/gems");
    let token = [("authorization", DEVELOPER)];
    let too_big = Bytes::from(vec![7u8; 16 * 1024 + 1]);

    // Declared too large: refused before GitLab hears of it.
    let r = send(&proxy.url(), "POST", &push, &token, Some(too_big.clone())).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(
        fake.total_hits(),
        0,
        "a declared oversize upload reached GitLab"
    );
    assert!(fake.uploads(PUBLIC).is_empty());

    // Undeclared (chunked): the request head reaches GitLab (the size is only known once
    // the body passes the limit), then the body is cut there, so GitLab never accepts a
    // partial gem, and the client gets the 413.
    let chunks = too_big.chunks(4096).map(Bytes::copy_from_slice).collect();
    let r = post_streamed(&format!("{}{push}", proxy.url()), &token, chunks)
        .await
        .expect("an answer to a streamed oversize upload");
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        fake.uploads(PUBLIC).is_empty(),
        "a cut upload was stored by GitLab"
    );

    // At the limit exactly: accepted.
    let at_limit = Bytes::from(vec![7u8; 16 * 1024]);
    let r = send(&proxy.url(), "POST", &push, &token, Some(at_limit.clone())).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(fake.uploads(PUBLIC), vec![at_limit]);
}

#[tokio::test]
async fn routes_gitlab_does_not_have_are_404_locally() {
    let fake = gitlab(false).await;
    let proxy = TestProxy::start(&fake.url()).await;
    let module = "/api/v4/projects/1/packages/go/gitlab.example.com/acme/public";
    #[rustfmt::skip]
    let cases: Vec<(&str, String)> = vec![
        ("GET", format!("{module}/@latest")),
        ("HEAD", format!("{module}/@latest")),
        ("GET", "/api/v4/projects/1/packages/go/sumdb/sum.golang.org/supported".to_owned()),
        ("GET", "/api/v4/projects/1/packages/go/sumdb/sum.golang.org/lookup/x@v1.0.0".to_owned()),
        ("GET", format!("{module}/@v/main.info")),
        ("GET", format!("{module}/@v/1.0.0.info")),
        ("GET", format!("{module}/@v/v1.2.0-Beta.info")),
        ("GET", format!("{module}/@v/v1.0.0.tar.gz")),
        ("GET", format!("{module}/@v/")),
        ("GET", format!("{GEMS}/api/v1/dependencies.json")),
        ("GET", format!("{GEMS}/api/v1/gems/foo.json")),
        ("GET", format!("{GEMS}/gems/")),
        ("GET", "/".to_owned()),
        ("GET", "/api/v4/user".to_owned()),
        ("GET", "/api/v4/projects/1".to_owned()),
        ("GET", "/api/v4/projects/1/packages/npm/foo".to_owned()),
        ("GET", "/-/metrics-that-do-not-exist".to_owned()),
        // Wrong methods.
        ("POST", format!("{module}/@v/list")),
        ("DELETE", format!("{module}/@v/v1.0.0.zip")),
        ("OPTIONS", format!("{module}/@v/list")),
        ("PUT", format!("{GEMS}/gems/foo-1.0.0.gem")),
        ("DELETE", format!("{GEMS}/gems/foo-1.0.0.gem")),
        ("POST", format!("{GEMS}/api/v1/dependencies")),
        ("PATCH", format!("{GEMS}/specs.4.8.gz")),
        ("GET", format!("{GEMS}/api/v1/gems")),
        ("PUT", format!("{GEMS}/api/v1/gems")),
    ];
    let mut failures = Vec::new();
    let mut answers = Vec::new();
    for (method, path) in &cases {
        let r = send(
            &proxy.url(),
            method,
            path,
            &[("private-token", DEVELOPER)],
            None,
        )
        .await;
        let expected_body = if *method == "HEAD" {
            ""
        } else {
            ROUTE_NOT_FOUND
        };
        if (r.status, r.text().as_str(), r.header("x-cache")) != (404, expected_body, Some("local"))
        {
            failures.push(format!(
                "{method} {path}: {} {:?} x-cache {:?}",
                r.status,
                r.text(),
                r.header("x-cache")
            ));
        }
        if r.header("content-type") != Some("application/json") {
            failures.push(format!(
                "{method} {path}: content-type {:?}",
                r.header("content-type")
            ));
        }
        answers.push(r);
    }
    assert_eq!(fake.total_hits(), 0, "unrouted requests reached GitLab");
    // GitLab's catch-all says the same.
    for ((method, path), via) in cases.iter().zip(&answers) {
        let direct = send(
            &fake.url(),
            method,
            path,
            &[("private-token", DEVELOPER)],
            None,
        )
        .await;
        if (direct.status, direct.text()) != (via.status, via.text()) {
            failures.push(format!(
                "{method} {path}: GitLab says {} {:?}",
                direct.status,
                direct.text()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Sends raw bytes (for request targets no URI type would build) and returns the status code.
async fn raw_status(addr: &str, request: &[u8]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    stream.write_all(request).await.expect("send");
    let mut head = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to a raw request");
    let line = String::from_utf8_lossy(&head).into_owned();
    line.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {line:?}"))
}

#[tokio::test]
async fn malformed_input_gets_a_clear_4xx_without_reaching_gitlab() {
    let fake = gitlab(false).await;
    let proxy = TestProxy::start(&fake.url()).await;
    let go = "/api/v4/projects/1/packages/go";
    let long_module = format!("gitlab.example.com/acme/public/{}", "a".repeat(5000));
    let long_gem = format!("{}-1.0.0.gem", "a".repeat(300));
    #[rustfmt::skip]
    let cases: Vec<(&str, String)> = vec![
        ("traversal in a module path", format!("{go}/gitlab.example.com/acme/public/../private/@v/list")),
        ("encoded traversal in a module path", format!("{go}/gitlab.example.com/acme/public/%2e%2e/private/@v/list")),
        ("encoded traversal and slash", format!("{go}/gitlab.example.com/acme/public/%2E%2E%2Fprivate/@v/list")),
        ("empty module segment", format!("{go}/gitlab.example.com//acme/@v/list")),
        ("traversal in a project path", "/api/v4/projects/acme%2F..%2Fprivate/packages/go/gitlab.example.com/acme/private/@v/list".to_owned()),
        ("traversal in a gem file", format!("{GEMS}/gems/..%2F..%2Fetc%2Fpasswd.gem")),
        ("dot-dot gem file", format!("{GEMS}/gems/%2e%2e.gem")),
        ("traversal in a gemspec", format!("{GEMS}/quick/Marshal.4.8/..%2Ffoo-1.0.0.gemspec.rz")),
        ("NUL in a module path", format!("{go}/gitlab.example.com/acme/pub%00lic/@v/list")),
        ("newline in a module path", format!("{go}/gitlab.example.com/acme/public%0a/@v/list")),
        ("DEL in a module path", format!("{go}/gitlab.example.com/acme/public%7f/@v/list")),
        ("CRLF in a gem file", format!("{GEMS}/gems/foo%0d%0a-1.0.0.gem")),
        ("NUL in a project", "/api/v4/projects/1%00/packages/go/gitlab.example.com/acme/public/@v/list".to_owned()),
        ("bad escape in a module path", format!("{go}/gitlab.example.com/acme/p%zzublic/@v/list")),
        ("truncated escape in a module path", format!("{go}/gitlab.example.com/acme/public%2/@v/list")),
        ("bad escape in a gem file", format!("{GEMS}/gems/foo%g1-1.0.0.gem")),
        ("bad escape in a project", "/api/v4/projects/acme%2xpublic/packages/rubygems/specs.4.8.gz".to_owned()),
        ("non-UTF-8 module path", format!("{go}/gitlab.example.com/acme/%ff/@v/list")),
        ("non-UTF-8 gem file", format!("{GEMS}/gems/%ff%fe-1.0.0.gem")),
        ("`!` before an upper-case letter", format!("{go}/gitlab.example.com/acme/!Public/@v/list")),
        ("over-long path", format!("{go}/{long_module}/@v/list")),
        ("over-long gem file name", format!("{GEMS}/gems/{long_gem}")),
        ("gem file with a space", format!("{GEMS}/gems/foo%20bar-1.0.0.gem")),
        ("hidden gem file", format!("{GEMS}/gems/.foo-1.0.0.gem")),
        ("gem name with a slash", format!("{GEMS}/api/v1/dependencies?gems=foo%2Fbar")),
        ("gem name with traversal", format!("{GEMS}/api/v1/dependencies?gems=..%2Fetc")),
        ("empty gem name in a list", format!("{GEMS}/api/v1/dependencies?gems=foo,,bar")),
        ("gem name with a control character", format!("{GEMS}/api/v1/dependencies?gems=foo%00")),
        ("too many gem names", format!("{GEMS}/api/v1/dependencies?gems={}", vec!["a"; 501].join(","))),
    ];
    let mut failures = Vec::new();
    for (name, path) in &cases {
        match client::try_request("GET", &format!("{}{path}", proxy.url()), &[], None).await {
            Ok(r) => {
                let clear = match r.status {
                    400 => r.text().starts_with(r#"{"message":"400 Bad request - "#),
                    404 => r.text() == ROUTE_NOT_FOUND,
                    _ => false,
                };
                if !clear || r.header("x-cache") != Some("local") {
                    failures.push(format!(
                        "{name}: {} {:?} x-cache {:?}",
                        r.status,
                        r.text(),
                        r.header("x-cache")
                    ));
                }
            }
            Err(e) => failures.push(format!("{name}: no answer ({e})")),
        }
    }
    // What no URI type lets a client build: raw control characters and a huge target.
    let addr = proxy.url().trim_start_matches("http://").to_owned();
    let huge = format!("{go}/{}/@v/list", "a".repeat(70_000));
    #[rustfmt::skip]
    let raw: Vec<(&str, Vec<u8>)> = vec![
        ("raw control character", format!("GET {go}/gitlab.example.com/acme/pub\x01lic/@v/list HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()),
        ("raw space", format!("GET {go}/gitlab.example.com/acme/pub lic/@v/list HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()),
        ("raw non-ASCII byte", [format!("GET {go}/gitlab.example.com/acme/pub").as_bytes(), b"\xff", b"lic/@v/list HTTP/1.1\r\nHost: x\r\n\r\n"].concat()),
        ("70 kB request target", format!("GET {huge} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()),
    ];
    for (name, request) in &raw {
        let status = raw_status(&addr, request).await;
        if !(400..500).contains(&status) {
            failures.push(format!("{name}: status {status}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert_eq!(fake.total_hits(), 0, "malformed requests reached GitLab");

    // The proxy is still there and still right.
    let health = get(&proxy.url(), "/-/healthz", &[]).await;
    assert_eq!(health.status, 200);
    let list = get(&proxy.url(), &format!("{GO}/list"), &[]).await;
    assert_eq!(
        (list.status, list.text().as_str()),
        (200, "v1.0.0\nv1.1.0+build.5\nv1.2.0-Beta")
    );
}

/// A project reference that is only dots names no project, and a front end that normalizes
/// dot segments would read `/api/v4/projects/../packages/…` as another path altogether.
#[tokio::test]
async fn a_project_reference_of_dots_is_refused_locally() {
    let fake = gitlab(false).await;
    let proxy = TestProxy::start(&fake.url()).await;
    let mut failures = Vec::new();
    for project in ["..", ".", "%2e%2e", "%2E", ".%2e"] {
        for rest in [
            "packages/rubygems/specs.4.8.gz",
            "packages/go/gitlab.example.com/acme/public/@v/list",
        ] {
            let path = format!("/api/v4/projects/{project}/{rest}");
            fake.reset_hits();
            let r = get(&proxy.url(), &path, &[]).await;
            if !(400..500).contains(&r.status)
                || r.header("x-cache") != Some("local")
                || fake.total_hits() != 0
            {
                failures.push(format!(
                    "{path}: {} {:?} x-cache {:?}, {} upstream hits",
                    r.status,
                    r.text(),
                    r.header("x-cache"),
                    fake.total_hits()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn object_store_downloads_are_followed_without_credentials() {
    let fake = gitlab(true).await;
    let proxy = TestProxy::start(&fake.url()).await;
    // Every credential GitLab could read; the private project needs one of them.
    let credentials = [
        ("authorization", DEVELOPER),
        ("private-token", DEVELOPER),
        ("job-token", "glcbt-whatever"),
    ];
    let cases = [
        (
            format!("{PRIVATE_GEMS}/gems/foo-1.0.0.gem"),
            Some(&b"private foo-1.0.0.gem"[..]),
        ),
        (
            format!("{PRIVATE_GEMS}/quick/Marshal.4.8/foo-1.0.0.gemspec.rz"),
            Some(GEMSPEC_BYTES),
        ),
        (format!("{PRIVATE_GEMS}/specs.4.8.gz"), None),
        (format!("{PRIVATE_GEMS}/latest_specs.4.8.gz"), None),
        (format!("{GEMS}/gems/foo-1.0.0.gem"), Some(GEM_BYTES)),
    ];
    for (path, expected) in &cases {
        // GitLab itself answers with a redirect to a pre-signed URL.
        let direct = get(&fake.url(), path, &credentials).await;
        assert_eq!(direct.status, 302, "{path}");
        let location = direct.header("location").expect("a Location").to_owned();
        let stored = client::get(&location, &[]).await;
        assert_eq!(stored.status, 200, "{path}");

        fake.reset_hits();
        let r = get(&proxy.url(), path, &credentials).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.header("location"), None, "{path}");
        assert_eq!(r.body, stored.body, "{path}");
        if let Some(expected) = expected {
            assert_eq!(&r.body[..], *expected, "{path}");
        }
        assert!(!r.body.is_empty(), "{path}");
        assert_eq!(fake.object_store_hits(), 1, "{path}");
        assert!(
            !fake.object_store_saw_credentials(),
            "{path}: GitLab credentials were sent to the object store"
        );
    }
    // HEAD through a redirect (Grape answers 303 to HEAD): followed too, still anonymous.
    fake.reset_hits();
    let head = send(
        &proxy.url(),
        "HEAD",
        &format!("{GEMS}/gems/bar-2.0.0.gem"),
        &credentials,
        None,
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(!fake.object_store_saw_credentials());
}
