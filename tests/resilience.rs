//! GitLab failing in every way the proxy must survive: failures are never cached and never
//! become 404s, known callers keep building from cache (also across a restart), unknown ones
//! are refused, GitLab is marked down and found again; plus metrics, health and a SIGKILL.

mod support;

use support::fixtures::noise;

use support::{eventually, stalled_download};

use std::sync::Arc;
use std::time::Duration;

use gitlab_pkg_cache::config::Config;
use support::client;
use support::fake_gitlab::{Access, FakeGitLab, Fault, TokenKind, TokenState, Visibility};
use support::proxy::TestProxy;
use support::proxy_process::ProxyProcess;

const TIME: &str = "2024-05-01T10:00:00.000+00:00";
const GO: &str = "/api/v4/projects/2/packages/go/gitlab.example.com/group/secret";
const PUBLIC_GO: &str = "/api/v4/projects/1/packages/go/gitlab.example.com/group/proj";
const ALICE: &str = "glpat-alice";
const BOB: &str = "glpat-bob";

fn files(module: &str, payload: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "go.mod".to_owned(),
            format!("module {module}\n\ngo 1.19\n").into_bytes(),
        ),
        ("data.bin".to_owned(), noise(payload, seed)),
    ]
}

/// A public and a private project, each with one module; Alice and Bob may both read the
/// private one, but the proxy has only ever seen Alice.
async fn gitlab() -> FakeGitLab {
    let reader = || TokenKind::Personal {
        scopes: vec!["read_api"],
    };
    FakeGitLab::builder()
        .project(1, "group/proj", Visibility::Public)
        .project(2, "group/secret", Visibility::Private)
        .go_version(
            1,
            "",
            "v1.0.0",
            TIME,
            files("gitlab.example.com/group/proj", 1000, 1),
        )
        .go_version(
            2,
            "",
            "v1.0.0",
            TIME,
            files("gitlab.example.com/group/secret", 200_000, 2),
        )
        .go_version(
            2,
            "",
            "v1.1.0",
            TIME,
            files("gitlab.example.com/group/secret", 200_000, 3),
        )
        .token(
            ALICE,
            reader(),
            TokenState::Active,
            &[(2, Access::Reporter)],
        )
        .token(BOB, reader(), TokenState::Active, &[(2, Access::Reporter)])
        .start()
        .await
}

/// Every answer is stale at once, so every request would ask GitLab if it could.
fn always_revalidate(config: &mut Config) {
    config.cache.metadata_ttl = Duration::from_millis(1);
    config.cache.metadata_max_stale = Duration::from_millis(1);
    config.cache.auth_ttl = Duration::from_millis(1);
    config.cache.negative_ttl = Duration::from_millis(1);
    config.upstream.response_timeout = Duration::from_millis(300);
    config.upstream.body_idle_timeout = Duration::from_millis(300);
}

async fn get(proxy: &TestProxy, path: &str, token: Option<&str>) -> client::Response {
    let headers: Vec<(&str, &str)> = token.map(|t| ("private-token", t)).into_iter().collect();
    client::get(&format!("{}{path}", proxy.url()), &headers).await
}

#[tokio::test]
async fn gitlab_failures_are_never_cached_and_never_a_404() {
    let fake = gitlab().await;
    let proxy = TestProxy::start_with(&fake.url(), |c| {
        always_revalidate(c);
        c.upstream.failure_threshold = 1000;
    })
    .await;
    let list = format!("{PUBLIC_GO}/@v/list");
    let zip = format!("{PUBLIC_GO}/@v/v1.0.0.zip");
    let cases: Vec<(&str, Fault, u16)> = vec![
        ("500", Fault::Status(500), 502),
        ("503", Fault::Status(503), 502),
        ("reset mid-body", Fault::ResetMidBody, 502),
        ("no answer", Fault::Hang, 504),
        ("slow body", Fault::SlowBody(Duration::from_secs(2)), 504),
    ];
    for (what, fault, status) in cases {
        for path in [&list, &zip] {
            fake.set_fault(path, fault.clone());
            match client::try_request("GET", &format!("{}{path}", proxy.url()), &[], None).await {
                Ok(r) => {
                    assert_ne!(r.status, 404, "{what} on {path} became a 404");
                    if path == &list || matches!(fault, Fault::Status(_) | Fault::Hang) {
                        assert_eq!(r.status, status, "{what} on {path}: {}", r.text());
                        assert!(
                            r.text().starts_with("gitlab-pkg-cache: GitLab"),
                            "{what}: {}",
                            r.text()
                        );
                        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
                    } else {
                        // A refill of a version seen before is checked whole before its
                        // first byte: its broken body is then a clean 502, never bytes.
                        assert_eq!(r.status, 502, "{what} on {path}: {}", r.text());
                        assert!(
                            r.text().starts_with("gitlab-pkg-cache: GitLab"),
                            "{what}: {}",
                            r.text()
                        );
                    }
                }
                // A zip that breaks after its headers were sent can only be cut off.
                Err(_) => assert_eq!(path, &zip, "{what} on the list must get an answer"),
            }
            fake.clear_faults();
            let good = get(&proxy, path, None).await;
            assert_eq!(good.status, 200, "{what}: GitLab back");
            assert_eq!(
                good.header("x-cache"),
                Some("miss"),
                "{what}: nothing was cached from the failure"
            );
            let store = proxy.state.fills.store().clone();
            if path == &zip {
                // The fill commits after the client has its last byte: wait for that commit,
                // or the reset below could run first and the next case would find a stored zip.
                eventually("the good zip is stored", || {
                    matches!(store.inner().lookup(&zip), Ok(Some(_)))
                })
                .await;
            }
            store.remove(&zip).await.expect("reset the store");
            proxy.state.memory.remove(&list).await;
        }
    }
    fake.set_down(true);
    let down = get(&proxy, &format!("{PUBLIC_GO}/@v/v1.0.0.info"), None).await;
    assert_eq!(down.status, 502, "{}", down.text());
}

#[tokio::test]
async fn known_callers_keep_building_while_gitlab_is_down() {
    let fake = gitlab().await;
    let proxy = TestProxy::start_with(&fake.url(), |c| {
        always_revalidate(c);
        c.upstream.failure_threshold = 1000;
    })
    .await;
    let list = format!("{GO}/@v/list");
    let zip = format!("{GO}/@v/v1.0.0.zip");
    let fresh_list = get(&proxy, &list, Some(ALICE)).await;
    let fresh_zip = get(&proxy, &zip, Some(ALICE)).await;
    assert_eq!((fresh_list.status, fresh_zip.status), (200, 200));
    let store = proxy.state.fills.store().clone();
    eventually("the zip is stored", || {
        matches!(store.inner().lookup(&zip), Ok(Some(_)))
    })
    .await;

    // Past the 1 ms TTL (ages are counted in whole milliseconds).
    tokio::time::sleep(Duration::from_millis(5)).await;
    fake.set_down(true);
    let stale = get(&proxy, &list, Some(ALICE)).await;
    assert_eq!(
        (stale.status, stale.header("x-cache")),
        (200, Some("stale"))
    );
    assert_eq!(stale.body, fresh_list.body);
    let stored = get(&proxy, &zip, Some(ALICE)).await;
    assert_eq!(
        (stored.status, stored.header("x-cache")),
        (200, Some("hit"))
    );
    assert_eq!(stored.body, fresh_zip.body);

    // Bob may read the project, but GitLab cannot say so now: fail closed.
    for path in [&list, &zip] {
        let bob = get(&proxy, path, Some(BOB)).await;
        assert_eq!(bob.status, 503, "{path}");
        assert!(bob.text().contains("cannot confirm"), "{}", bob.text());
        assert_ne!(bob.body, stored.body);
        let anonymous = get(&proxy, path, None).await;
        assert_eq!(
            anonymous.status, 503,
            "{path}: anonymous must not get cached bytes"
        );
    }

    // Back up: fresh answers again (GitLab confirms the cached list with a 304), and Bob
    // gets in.
    fake.set_down(false);
    let fresh = get(&proxy, &list, Some(BOB)).await;
    assert_eq!(
        (fresh.status, fresh.header("x-cache")),
        (200, Some("revalidated"))
    );
}

#[tokio::test]
async fn a_gitlab_marked_down_is_not_waited_for_and_is_found_again() {
    let fake = gitlab().await;
    let proxy = TestProxy::start_with(&fake.url(), |c| {
        always_revalidate(c);
        c.upstream.failure_threshold = 2;
        c.upstream.down_backoff = Duration::from_millis(400);
    })
    .await;
    let list = format!("{GO}/@v/list");
    assert_eq!(get(&proxy, &list, Some(ALICE)).await.status, 200);
    // Past the 1 ms TTL (ages are counted in whole milliseconds).
    tokio::time::sleep(Duration::from_millis(5)).await;
    fake.set_fault(&list, Fault::Hang);
    for _ in 0..2 {
        // Each waits for the response timeout, then gets the stale list.
        let r = get(&proxy, &list, Some(ALICE)).await;
        assert_eq!((r.status, r.header("x-cache")), (200, Some("stale")));
    }
    assert!(
        !proxy.state.upstream.is_up(),
        "two failures mark GitLab down"
    );
    let before = fake.hits(&list);
    let started = std::time::Instant::now();
    let r = get(&proxy, &list, Some(ALICE)).await;
    assert_eq!((r.status, r.header("x-cache")), (200, Some("stale")));
    assert_eq!(
        fake.hits(&list),
        before,
        "GitLab is not asked while marked down"
    );
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "no timeout was waited for"
    );
    let metrics = client::get(&format!("{}/-/pkg-cache/metrics", proxy.url()), &[]).await;
    assert!(metrics.text().contains("gitlab_pkg_cache_upstream_up 0"));
    let ready = client::get(&format!("{}/-/readyz", proxy.url()), &[]).await;
    assert_eq!(ready.status, 200, "GitLab down does not fail readiness");
    assert!(
        ready.text().contains("gitlab: degraded"),
        "{}",
        ready.text()
    );

    // After the backoff one probe goes through; GitLab answers, and it is up again.
    fake.clear_faults();
    let proxy = Arc::new(proxy);
    eventually("GitLab is found again", || {
        proxy.state.upstream.is_up() || {
            let proxy = proxy.clone();
            let list = list.clone();
            tokio::spawn(async move { get(&proxy, &list, Some(ALICE)).await });
            false
        }
    })
    .await;
    let r = get(&proxy, &list, Some(ALICE)).await;
    assert_eq!((r.status, r.header("x-cache")), (200, Some("revalidated")));
}

#[tokio::test]
async fn not_found_is_remembered_per_credential_and_during_outages() {
    let fake = gitlab().await;
    let proxy = TestProxy::start_with(&fake.url(), |c| {
        c.cache.negative_ttl = Duration::from_secs(60);
        c.upstream.failure_threshold = 1000;
    })
    .await;
    // A module path outside the project: GitLab's 404 (the go command's "try the next").
    let missing =
        "/api/v4/projects/2/packages/go/gitlab.example.com/group/elsewhere/@v/list".to_owned();
    let first = get(&proxy, &missing, Some(ALICE)).await;
    assert_eq!((first.status, first.header("x-cache")), (404, Some("miss")));
    let again = get(&proxy, &missing, Some(ALICE)).await;
    assert_eq!((again.status, again.header("x-cache")), (404, Some("hit")));
    assert_eq!(again.body, first.body);
    assert_eq!(fake.hits(&missing), 1, "Alice's 404 is remembered");
    let bob = get(&proxy, &missing, Some(BOB)).await;
    assert_eq!((bob.status, bob.header("x-cache")), (404, Some("miss")));
    assert_eq!(
        fake.hits(&missing),
        2,
        "never replayed to another credential"
    );
    let anonymous = get(&proxy, &missing, None).await;
    assert_eq!(anonymous.status, 401, "anonymous gets GitLab's own answer");
    proxy.stop().await;

    // During an outage, remembered 404s still answer (past their TTL), per credential.
    let proxy = TestProxy::start_with(&fake.url(), |c| {
        c.cache.negative_ttl = Duration::from_millis(1);
        c.upstream.failure_threshold = 1000;
    })
    .await;
    assert_eq!(get(&proxy, &missing, Some(ALICE)).await.status, 404);
    fake.set_down(true);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let remembered = get(&proxy, &missing, Some(ALICE)).await;
    assert_eq!(
        (remembered.status, remembered.header("x-cache")),
        (404, Some("stale"))
    );
    let bob = get(&proxy, &missing, Some(BOB)).await;
    assert_eq!(
        bob.status, 502,
        "Bob has no remembered answer: GitLab's failure, not a 404"
    );
}

#[tokio::test]
async fn a_restart_during_an_outage_keeps_known_callers_building() {
    let fake = gitlab().await;
    let proxy = TestProxy::start_with(&fake.url(), always_revalidate).await;
    let list = format!("{GO}/@v/list");
    let zip = format!("{GO}/@v/v1.1.0.zip");
    let list_body = get(&proxy, &list, Some(ALICE)).await.body;
    let zip_body = get(&proxy, &zip, Some(ALICE)).await.body;
    let store = proxy.state.fills.store().clone();
    eventually("the zip is stored", || {
        matches!(store.inner().lookup(&zip), Ok(Some(_)))
    })
    .await;
    drop(store);
    let data_dir = proxy.stop().await;

    fake.set_down(true);
    fake.reset_hits();
    let proxy = TestProxy::start_in(&fake.url(), data_dir, always_revalidate).await;
    let r = get(&proxy, &list, Some(ALICE)).await;
    assert_eq!(
        (r.status, r.header("x-cache"), &r.body),
        (200, Some("stale"), &list_body)
    );
    let r = get(&proxy, &zip, Some(ALICE)).await;
    assert_eq!(
        (r.status, r.header("x-cache"), &r.body),
        (200, Some("hit"), &zip_body)
    );
    for path in [&list, &zip] {
        let bob = get(&proxy, path, Some(BOB)).await;
        assert_eq!(
            bob.status, 503,
            "{path}: a caller never seen is refused while GitLab is down"
        );
    }
    assert_eq!(fake.total_hits(), 0);
}

#[tokio::test]
async fn metrics_move_with_requests() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let scrape = || async {
        let r = client::get(&format!("{}/-/pkg-cache/metrics", proxy.url()), &[]).await;
        assert_eq!(r.status, 200);
        r.text()
    };
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    let before = scrape().await;
    let list = format!("{GO}/@v/list");
    let zip = format!("{GO}/@v/v1.0.0.zip");
    assert_eq!(get(&proxy, &list, Some(ALICE)).await.status, 200);
    assert_eq!(get(&proxy, &list, Some(ALICE)).await.status, 200);
    let zip_len = get(&proxy, &zip, Some(ALICE)).await.body.len() as f64;
    assert_eq!(get(&proxy, &list, Some(BOB)).await.status, 200);
    assert_eq!(get(&proxy, &list, Some("glpat-nobody")).await.status, 401);
    let store = proxy.state.fills.store().clone();
    eventually("the zip is stored", || {
        matches!(store.inner().lookup(&zip), Ok(Some(_)))
    })
    .await;
    assert_eq!(get(&proxy, &zip, Some(ALICE)).await.status, 200);
    let after = scrape().await;
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        moved(r#"gitlab_pkg_cache_requests_total{route="go_list",status="200",cache="miss"}"#),
        1.0
    );
    // Bob is asked about with the list itself, conditionally: GitLab's 304 keeps the body.
    assert_eq!(
        moved(
            r#"gitlab_pkg_cache_requests_total{route="go_list",status="200",cache="revalidated"}"#
        ),
        1.0
    );
    assert_eq!(
        moved(r#"gitlab_pkg_cache_requests_total{route="go_list",status="200",cache="hit"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"gitlab_pkg_cache_requests_total{route="go_zip",status="200",cache="hit"}"#),
        1.0
    );
    assert!(moved(r#"gitlab_pkg_cache_response_bytes_total{source="cache"}"#) >= zip_len);
    assert!(moved(r#"gitlab_pkg_cache_response_bytes_total{source="gitlab"}"#) >= zip_len);
    assert!(moved("gitlab_pkg_cache_upstream_response_seconds_count") >= 4.0);
    assert!(moved(r#"gitlab_pkg_cache_auth_decisions_total{result="remembered"}"#) >= 1.0);
    assert!(value(&after, "gitlab_pkg_cache_store_bytes") >= zip_len);
    assert_eq!(value(&after, "gitlab_pkg_cache_store_artifacts"), 1.0);
    assert_eq!(value(&after, "gitlab_pkg_cache_upstream_up"), 1.0);
    let health = client::get(&format!("{}/-/healthz", proxy.url()), &[]).await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
}

/// Starts the real binary on a free port in front of `upstream`; returns it and its address.
async fn spawn_binary(
    upstream: &str,
    data_dir: &std::path::Path,
) -> (tokio::process::Child, String) {
    let no_flags: [&str; 0] = [];
    let ProxyProcess { child, url } = ProxyProcess::spawn(
        env!("CARGO_BIN_EXE_gitlab-pkg-cache"),
        upstream,
        data_dir,
        no_flags,
    )
    .await;
    (child, url)
}

const VERSIONS: [&str; 3] = ["v1.0.0", "v1.1.0", "v1.2.0"];

/// A public project with three large zips, large enough that a fill outlasts every buffer
/// between the proxy and a client that stops reading.
async fn large_zips() -> FakeGitLab {
    let mut builder = FakeGitLab::builder().project(1, "group/proj", Visibility::Public);
    for (i, v) in VERSIONS.iter().enumerate() {
        let module = files("gitlab.example.com/group/proj", 12_000_000, i as u64 + 10);
        builder = builder.go_version(1, "", v, TIME, module);
    }
    builder.start().await
}

#[tokio::test]
async fn sigkill_during_fills_leaves_no_truncated_artifact() {
    let fake = large_zips().await;
    // GitLab sends half of each zip and then nothing: the fills are caught in the middle.
    fake.set_fault(&format!("{PUBLIC_GO}/@v/"), Fault::StallMidBody);
    let data_dir = tempfile::tempdir().expect("data dir");
    let (mut child, url) = spawn_binary(&fake.url(), data_dir.path()).await;
    let authority = url.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for v in VERSIONS {
        stalled.push(stalled_download(&authority, &format!("{PUBLIC_GO}/@v/{v}.zip")).await);
    }
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("the proxy died");
    drop(stalled);
    fake.clear_faults();

    fake.reset_hits();
    let (_child, url) = spawn_binary(&fake.url(), data_dir.path()).await;
    for v in VERSIONS {
        let path = format!("{PUBLIC_GO}/@v/{v}.zip");
        let through = client::get(&format!("{url}{path}"), &[]).await;
        let direct = client::get(&format!("{}{path}", fake.url()), &[]).await;
        assert_eq!(through.status, 200, "{v}");
        assert_eq!(
            through.body, direct.body,
            "{v}: served byte-equal to GitLab's"
        );
        assert_eq!(
            through.header("x-cache"),
            Some("miss"),
            "{v}: the cut fill was not kept"
        );
    }
}

#[tokio::test]
async fn a_fill_cut_by_shutdown_leaves_nothing_visible() {
    let fake = large_zips().await;
    let proxy = TestProxy::start_with(&fake.url(), |c| {
        c.server.shutdown_grace = Duration::from_millis(200);
    })
    .await;
    let zip = format!("{PUBLIC_GO}/@v/v1.0.0.zip");
    fake.set_fault(&zip, Fault::StallMidBody);
    let authority = proxy.url().trim_start_matches("http://").to_owned();
    let stream = stalled_download(&authority, &zip).await;
    // The client stops reading; the proxy is asked to stop and cuts it after the grace.
    let data_dir = proxy.stop().await;
    drop(stream);
    fake.clear_faults();
    let proxy = TestProxy::start_in(&fake.url(), data_dir, |_| {}).await;
    let after = get(&proxy, &zip, None).await;
    assert_eq!((after.status, after.header("x-cache")), (200, Some("miss")));
}
