//! Freshness CI can trust: a revoked token is refused within `auth_ttl` while an active one
//! never waits on a probe, probes never fetch artifacts, a push through the proxy is visible
//! at once (and its bytes are kept), one project's answers come from one GitLab moment, and
//! Go lists notice new tags. Time moves with tokio's paused clock; GitLab's hit counters
//! prove who was asked what.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use support::client::{self, Response};
use support::eventually;
use support::fake_gitlab::{
    Access, FakeGitLab, Fault, GemFixture, TokenKind, TokenState, Visibility,
};
use support::fixtures::{go_module_files, minimal_gem};
use support::proxy::TestProxy;
use tokio::sync::Semaphore;

const GO_PROJECT: u64 = 2;
const GEM_PROJECT: u64 = 3;
const TIME: &str = "2024-05-01T10:00:00.000+00:00";
const MODULE: &str = "gitlab.example.com/acme/private";
const GO: &str = "/api/v4/projects/2/packages/go/gitlab.example.com/acme/private/@v";
const GEMS: &str = "/api/v4/projects/3/packages/rubygems";
/// Reporter in both projects.
const READER: &str = "glpat-reader";
/// Another reader, for a second decision.
const SECOND: &str = "glpat-second";
/// Developer in the gem project (may push).
const DEVELOPER: &str = "glpat-developer";
/// Member of no project here.
const STRANGER: &str = "glpat-stranger";

async fn gitlab() -> FakeGitLab {
    let pat = || TokenKind::Personal {
        scopes: vec!["api"],
    };
    let both = [
        (GO_PROJECT, Access::Reporter),
        (GEM_PROJECT, Access::Reporter),
    ];
    FakeGitLab::builder()
        .project(GO_PROJECT, "acme/private", Visibility::Private)
        .project(GEM_PROJECT, "acme/gems", Visibility::Private)
        .go_version(
            GO_PROJECT,
            "",
            "v1.0.0",
            TIME,
            go_module_files(MODULE, "v1.0.0"),
        )
        .gem(
            GEM_PROJECT,
            GemFixture::new("acme", "1.0.0", minimal_gem("acme", "1.0.0")),
        )
        .token(READER, pat(), TokenState::Active, &both)
        .token(SECOND, pat(), TokenState::Active, &both)
        .token(
            DEVELOPER,
            pat(),
            TokenState::Active,
            &[(GEM_PROJECT, Access::Developer)],
        )
        .token(
            STRANGER,
            pat(),
            TokenState::Active,
            &[(99, Access::Developer)],
        )
        .start()
        .await
}

async fn get(proxy: &TestProxy, path: &str, headers: &[(&str, &str)]) -> Response {
    client::get(&format!("{}{path}", proxy.url()), headers).await
}

fn outcome(response: &Response) -> &str {
    response.header("x-cache").unwrap_or("")
}

/// Moves tokio's clock while no request is under way: with real sockets in use, a paused
/// clock would advance by itself and fire the proxy's timeouts.
async fn let_time_pass(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// Asks until the answer satisfies `done` (bounded: 5 s), checking every answer on the way.
async fn ask_until(
    proxy: &TestProxy,
    path: &str,
    headers: &[(&str, &str)],
    mut each: impl FnMut(&Response),
    done: impl Fn(&Response) -> bool,
) -> Response {
    for _ in 0..500 {
        let response = get(proxy, path, headers).await;
        each(&response);
        if done(&response) {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{path} never gave the expected answer");
}

/// Fetches `path` until it is served from the store.
async fn warm(proxy: &TestProxy, path: &str, headers: &[(&str, &str)]) -> Response {
    ask_until(
        proxy,
        path,
        headers,
        |r| assert_eq!(r.status, 200, "{path}"),
        |r| outcome(r) == "hit",
    )
    .await
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a gzip body");
    out
}

fn mentions(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// A token revoked in GitLab: `artifact` (stored, probed at `probe`) is refused within
/// `auth_ttl`, `header` carrying the token.
async fn revoked_is_refused_within_the_auth_ttl(artifact: &str, probe: &str, header: &str) {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let ttl = proxy.state.config.cache.auth_ttl;
    let window = proxy.state.config.cache.auth_refresh_window;
    assert_eq!(ttl, Duration::from_secs(30), "the default bound");
    let reader = [(header, READER)];
    warm(&proxy, artifact, &reader).await;
    let probes = fake.hits(probe);

    // A caller in steady use: revoked in GitLab, its decision is re-confirmed in the
    // background the first time it is used late in its life, and then it is refused.
    fake.set_token_state(READER, TokenState::Revoked);
    let_time_pass(ttl - window + Duration::from_secs(1)).await;
    let served = get(&proxy, artifact, &reader).await;
    assert_eq!((served.status, outcome(&served)), (200, "hit"));
    let refused = ask_until(&proxy, artifact, &reader, |_| {}, |r| r.status != 200).await;
    assert_eq!(
        refused.status,
        401,
        "GitLab's own refusal: {}",
        refused.text()
    );
    assert_eq!(outcome(&refused), "refused");
    assert!(fake.hits(probe) > probes, "the probe was {probe}");
    assert_eq!(
        fake.hits(artifact),
        1,
        "no artifact was fetched to check the caller"
    );

    // A caller not seen since: its decision simply runs out.
    let second = [(header, SECOND)];
    assert_eq!(get(&proxy, artifact, &second).await.status, 200);
    fake.set_token_state(SECOND, TokenState::Revoked);
    let_time_pass(ttl).await;
    let refused = get(&proxy, artifact, &second).await;
    assert_eq!((refused.status, outcome(&refused)), (401, "refused"));
    assert_eq!(fake.hits(artifact), 1);
}

#[tokio::test]
async fn a_revoked_token_is_refused_within_the_auth_ttl() {
    revoked_is_refused_within_the_auth_ttl(
        &format!("{GO}/v1.0.0.mod"),
        &format!("{GO}/list"),
        "private-token",
    )
    .await;
}

/// The same for a stored `.gem`, whose probe is the dependency endpoint without `gems`.
#[tokio::test]
async fn a_revoked_token_reading_gems_is_refused_within_the_auth_ttl() {
    revoked_is_refused_within_the_auth_ttl(
        &format!("{GEMS}/gems/acme-1.0.0.gem"),
        &format!("{GEMS}/api/v1/dependencies"),
        "authorization",
    )
    .await;
}

/// A caller in steady use of `module` (stored, probed at `list`, token in `header`) is
/// served from the store while its decision is re-confirmed in the background.
async fn active_never_waits_on_a_probe(module: &str, list: &str, header: &str) {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let ttl = proxy.state.config.cache.auth_ttl;
    let window = proxy.state.config.cache.auth_refresh_window;
    let reader = [(header, READER)];
    warm(&proxy, module, &reader).await;
    let probes = fake.hits(list);

    // GitLab holds every probe until the test lets it go.
    let gate = Arc::new(Semaphore::new(0));
    fake.set_fault(list, Fault::Hold(gate.clone()));
    let_time_pass(ttl - window + Duration::from_secs(1)).await;
    for _ in 0..20 {
        let served = get(&proxy, module, &reader).await;
        assert_eq!((served.status, outcome(&served)), (200, "hit"));
    }
    eventually("the re-confirmation reached GitLab", || {
        fake.hits(list) == probes + 1
    })
    .await;
    assert_eq!(
        gate.available_permits(),
        0,
        "the probe is still held: nobody waited for it"
    );
    assert_eq!(fake.hits(list), probes + 1, "one probe for twenty uses");
    gate.add_permits(1);
    fake.clear_faults();
    eventually("the decision was renewed", || {
        let text = proxy.state.metrics.encode(Default::default());
        text.contains("reconfirmed_accepted")
    })
    .await;

    // Past the first decision's life, the renewed one still serves without a probe.
    let_time_pass(window + Duration::from_secs(1)).await;
    let served = get(&proxy, module, &reader).await;
    assert_eq!((served.status, outcome(&served)), (200, "hit"));
    assert_eq!(fake.hits(list), probes + 1);
    assert_eq!(fake.hits(module), 1);
}

#[tokio::test]
async fn an_active_token_never_waits_on_a_probe() {
    active_never_waits_on_a_probe(
        &format!("{GO}/v1.0.0.mod"),
        &format!("{GO}/list"),
        "private-token",
    )
    .await;
}

/// The same for a stored `.gem`.
#[tokio::test]
async fn an_active_token_reading_gems_never_waits_on_a_probe() {
    active_never_waits_on_a_probe(
        &format!("{GEMS}/gems/acme-1.0.0.gem"),
        &format!("{GEMS}/api/v1/dependencies"),
        "authorization",
    )
    .await;
}

#[tokio::test]
async fn refused_and_unknown_callers_cost_no_artifact_transfer() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let reader = [("private-token", READER)];
    let artifacts = ["v1.0.0.info", "v1.0.0.mod", "v1.0.0.zip"].map(|f| format!("{GO}/{f}"));
    for path in &artifacts {
        warm(&proxy, path, &reader).await;
    }
    let before: Vec<u64> = artifacts.iter().map(|p| fake.hits(p)).collect();
    let callers: [&[(&str, &str)]; 4] = [
        &[],
        &[("private-token", STRANGER)],
        &[("private-token", "glpat-unknown")],
        &[("private-token", SECOND)],
    ];
    for caller in callers {
        for path in &artifacts {
            let direct = client::get(&format!("{}{path}", fake.url()), caller).await;
            let proxied = get(&proxy, path, caller).await;
            assert_eq!(proxied.status, direct.status, "{path} {caller:?}");
        }
    }
    let after: Vec<u64> = artifacts.iter().map(|p| fake.hits(p)).collect();
    let direct_asks = callers.len() as u64;
    for ((path, before), after) in artifacts.iter().zip(before).zip(after) {
        assert_eq!(
            after - before,
            direct_asks,
            "{path}: only the test's own direct requests reached GitLab"
        );
    }

    // The same for a stored gem (RubyGems reads the token from `Authorization`).
    let gem = format!("{GEMS}/gems/acme-1.0.0.gem");
    warm(&proxy, &gem, &[("authorization", READER)]).await;
    let before = fake.hits(&gem);
    let callers: [&[(&str, &str)]; 4] = [
        &[],
        &[("authorization", STRANGER)],
        &[("authorization", "glpat-unknown")],
        &[("authorization", SECOND)],
    ];
    for caller in callers {
        let direct = client::get(&format!("{}{gem}", fake.url()), caller).await;
        let proxied = get(&proxy, &gem, caller).await;
        assert_eq!(proxied.status, direct.status, "{caller:?}");
        if proxied.status == 200 {
            assert_eq!(proxied.body, direct.body);
        }
    }
    assert_eq!(
        fake.hits(&gem) - before,
        callers.len() as u64,
        "only the test's own direct requests reached GitLab"
    );
}

#[tokio::test]
async fn a_push_is_visible_at_once_and_its_bytes_are_kept() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let developer = [("authorization", DEVELOPER)];
    let deps = format!("{GEMS}/api/v1/dependencies?gems=acme");
    let specs = format!("{GEMS}/specs.4.8.gz");
    for path in [&deps, &specs] {
        assert_eq!(outcome(&get(&proxy, path, &developer).await), "miss");
        assert_eq!(outcome(&get(&proxy, path, &developer).await), "hit");
    }
    let gem = Bytes::from(minimal_gem("acme", "1.1.0"));
    let pushed = client::request(
        "POST",
        &format!("{}{GEMS}/api/v1/gems", proxy.url()),
        &developer,
        Some(gem.clone()),
    )
    .await;
    assert_eq!(pushed.status, 201, "{}", pushed.text());

    // Never the pre-push answer: every answer comes from GitLab until GitLab shows the
    // version (GitLab processes the upload in the background).
    let not_from_cache = |r: &Response| {
        assert_eq!(r.status, 200);
        if !mentions(&r.body, "1.1.0") {
            assert_ne!(outcome(r), "hit", "the pre-push answer was served");
        }
    };
    ask_until(&proxy, &deps, &developer, not_from_cache, |r| {
        mentions(&r.body, "1.1.0")
    })
    .await;
    let specs_shown = |r: &Response| mentions(&gunzip(&r.body), "1.1.0");
    ask_until(
        &proxy,
        &specs,
        &developer,
        |r| {
            if !specs_shown(r) {
                assert_ne!(outcome(r), "hit", "the pre-push index was served");
            }
        },
        specs_shown,
    )
    .await;
    // Once shown, the answers are cached again (after at most one revalidation: the index
    // showing the version later moved the project on once more).
    for path in [&deps, &specs] {
        let first = get(&proxy, path, &developer).await;
        assert!(matches!(outcome(&first), "hit" | "revalidated"), "{path}");
        assert_eq!(
            outcome(&get(&proxy, path, &developer).await),
            "hit",
            "{path}"
        );
    }
    assert!(fake
        .gem_versions(GEM_PROJECT, "acme")
        .contains(&"1.1.0".to_owned()));

    // The pushed bytes are the stored gem: the first download costs GitLab nothing.
    let file = format!("{GEMS}/gems/acme-1.1.0.gem");
    let download = ask_until(&proxy, &file, &developer, |_| {}, |r| outcome(r) == "hit").await;
    assert_eq!(download.body, gem);
    assert_eq!(fake.hits(&file), 0, "the download reached GitLab");
    let uploads = std::fs::read_dir(proxy.data_dir.path().join("uploads"))
        .map(|dir| dir.count())
        .unwrap_or(0);
    assert_eq!(uploads, 0, "the upload's copy was cleaned up");
}

#[tokio::test]
async fn a_change_seen_in_one_answer_revalidates_the_project() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let ttl = proxy.state.config.cache.metadata_ttl;
    let developer = [("authorization", DEVELOPER)];
    let deps = format!("{GEMS}/api/v1/dependencies?gems=acme");
    let specs = format!("{GEMS}/specs.4.8.gz");
    for path in [&deps, &specs] {
        get(&proxy, path, &developer).await;
    }
    // A push straight to GitLab: the proxy learns of it only from GitLab's answers.
    let pushed = client::request(
        "POST",
        &format!("{}{GEMS}/api/v1/gems", fake.url()),
        &developer,
        Some(Bytes::from(minimal_gem("acme", "1.1.0"))),
    )
    .await;
    assert_eq!(pushed.status, 201);
    for _ in 0..500 {
        let direct = client::get(&format!("{}{specs}", fake.url()), &developer).await;
        if mentions(&gunzip(&direct.body), "1.1.0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The dependency answer is refreshed ahead in the second half of its life, and shows
    // the new version; the spec index, fetched at the same moment, is no longer current.
    let_time_pass(ttl / 2 + Duration::from_secs(1)).await;
    let hits = fake.hits(&deps);
    assert_eq!(outcome(&get(&proxy, &deps, &developer).await), "hit");
    eventually("the dependency answer was refreshed", || {
        fake.hits(&deps) == hits + 1
    })
    .await;
    let refreshed = ask_until(
        &proxy,
        &deps,
        &developer,
        |_| {},
        |r| mentions(&r.body, "1.1.0"),
    )
    .await;
    assert!(mentions(&refreshed.body, "1.1.0"));
    // A request that arrives while the refresh moves the project on may ask GitLab itself;
    // once the refreshed answer is in, it is of the current moment and served from cache.
    let again = get(&proxy, &deps, &developer).await;
    assert_eq!(outcome(&again), "hit");
    assert!(mentions(&again.body, "1.1.0"));
    let index = get(&proxy, &specs, &developer).await;
    assert_ne!(
        outcome(&index),
        "hit",
        "an answer of an older moment was served"
    );
    assert!(mentions(&gunzip(&index.body), "1.1.0"));
}

#[tokio::test]
async fn go_lists_notice_new_tags() {
    let fake = gitlab().await;
    // Decisions outlive the test: their re-confirmation probes the same @v/list and would
    // add to the refresh counts below.
    let proxy = TestProxy::start_with(&fake.url(), |c| {
        c.cache.auth_ttl = Duration::from_secs(3600);
    })
    .await;
    let ttl = proxy.state.config.cache.metadata_ttl;
    assert_eq!(ttl, Duration::from_secs(30), "the default bound");
    let reader = [("private-token", READER)];
    let list = format!("{GO}/list");
    assert_eq!(get(&proxy, &list, &reader).await.text(), "v1.0.0");

    // A version the cached list lacks that GitLab serves: the list is asked for at once.
    fake.create_tag(
        GO_PROJECT,
        "",
        "v1.1.0",
        TIME,
        go_module_files(MODULE, "v1.1.0"),
    );
    assert_eq!(outcome(&get(&proxy, &list, &reader).await), "hit");
    let info = get(&proxy, &format!("{GO}/v1.1.0.info"), &reader).await;
    assert_eq!(info.status, 200);
    let fresh = get(&proxy, &list, &reader).await;
    assert_eq!(fresh.text(), "v1.0.0\nv1.1.0");
    assert_ne!(outcome(&fresh), "hit");

    // Without such a request: a list in use is refreshed ahead, so the tag shows within
    // the TTL, and a refresh that finds nothing new costs a 304, not the body.
    fake.create_tag(
        GO_PROJECT,
        "",
        "v1.2.0",
        TIME,
        go_module_files(MODULE, "v1.2.0"),
    );
    let_time_pass(ttl / 2 + Duration::from_secs(1)).await;
    let hits = fake.hits(&list);
    assert_eq!(outcome(&get(&proxy, &list, &reader).await), "hit");
    let shown = ask_until(
        &proxy,
        &list,
        &reader,
        |_| {},
        |r| r.text().contains("v1.2.0"),
    )
    .await;
    assert_eq!(outcome(&shown), "hit");
    assert_eq!(fake.hits(&list), hits + 1, "one refresh");
    let validator = fake
        .last_request_headers(&list)
        .and_then(|h| h.get("if-none-match").cloned());
    assert!(validator.is_some(), "the refresh was conditional");

    let_time_pass(ttl / 2 + Duration::from_secs(1)).await;
    get(&proxy, &list, &reader).await;
    eventually("the list was revalidated", || fake.hits(&list) == hits + 2).await;
    let again = get(&proxy, &list, &reader).await;
    assert_eq!(again.text(), "v1.0.0\nv1.1.0\nv1.2.0");
    assert_eq!(
        outcome(&again),
        "hit",
        "a 304 keeps the answer and renews it"
    );
}
