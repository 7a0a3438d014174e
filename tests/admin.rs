//! The admin API: off without a token file, 401 and no change without the token, pins that
//! survive eviction, and one audit event per call that never carries the token.

mod support;

use bytes::Bytes;
use serde_json::{json, Value};
use support::client;
use support::events::Events;
use support::fake_gitlab::{FakeGitLab, GemFixture, Visibility};
use support::fixtures::noise;
use support::proxy::TestProxy;

const GEMS: &str = "/api/v4/projects/1/packages/rubygems/gems";
const ADMIN: &str = "/-/pkg-cache/admin";
const TOKEN: &str = "admin-s3cret-token";

async fn gitlab() -> FakeGitLab {
    let mut builder = FakeGitLab::builder().project(1, "group/gems", Visibility::Public);
    for (i, name) in ["alpha", "beta", "gamma", "delta"].into_iter().enumerate() {
        builder = builder.gem(1, GemFixture::new(name, "1.0.0", noise(100_000, i as u64)));
    }
    builder.start().await
}

/// A proxy with the admin token in a file and a 250 kB store budget (two of the gems).
async fn proxy(fake: &FakeGitLab) -> TestProxy {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let proxy = TestProxy::start_with(&fake.url(), |c| {
        c.admin_token_file = Some(token_file.clone());
        c.store.max_bytes = bytesize::ByteSize::kb(250);
    })
    .await;
    // The token was read at start-up; the file is no longer needed.
    drop(dir);
    proxy
}

async fn admin(
    proxy: &TestProxy,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> client::Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    client::request(
        method,
        &format!("{}{ADMIN}{path}", proxy.url()),
        &headers,
        body.map(|b| Bytes::from(b.to_string())),
    )
    .await
}

fn json_of(r: &client::Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

#[tokio::test]
async fn admin_api_is_off_without_a_token_file() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let r = admin(&proxy, "GET", "/pins", Some(TOKEN), None).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(fake.total_hits(), 0, "admin paths are never forwarded");
}

#[tokio::test]
async fn without_the_token_nothing_changes_and_the_attempt_is_audited() {
    let fake = gitlab().await;
    let proxy = proxy(&fake).await;
    let (audit, _guard) = Events::capture("audit");
    let alpha = format!("{GEMS}/alpha-1.0.0.gem");
    assert_eq!(
        client::get(&format!("{}{alpha}", proxy.url()), &[])
            .await
            .status,
        200
    );

    let pin = json!({ "keys": [alpha] });
    for token in [None, Some("wrong"), Some("")] {
        let r = admin(&proxy, "POST", "/pin", token, Some(pin.clone())).await;
        assert_eq!(r.status, 401, "{token:?}: {}", r.text());
        assert!(r.header("www-authenticate").is_some());
    }
    // Unknown endpoints are not revealed to callers without the token either.
    assert_eq!(
        admin(&proxy, "GET", "/nothing", None, None).await.status,
        401
    );
    assert!(proxy.state.fills.store().kept().is_empty());

    let events = audit.take();
    assert_eq!(events.len(), 4, "{events:?}");
    for event in &events {
        assert_eq!(event["outcome"], "denied", "{event:?}");
        assert_eq!(event["status"], "401");
        assert!(!format!("{event:?}").contains(TOKEN));
    }
    assert_eq!(events[0]["action"], "pin");
    assert_eq!(events[3]["action"], "unrouted");
}

#[tokio::test]
async fn pinned_artifacts_are_never_evicted() {
    let fake = gitlab().await;
    let proxy = proxy(&fake).await;
    let (audit, _guard) = Events::capture("audit");
    let path = |name: &str| format!("{GEMS}/{name}-1.0.0.gem");
    let fetch = |name: &'static str| {
        let url = format!("{}{}", proxy.url(), path(name));
        async move { client::get(&url, &[]).await }
    };

    // Pinned before it is stored (what `warm --pin` does), by key.
    let r = admin(
        &proxy,
        "POST",
        "/pin",
        Some(TOKEN),
        Some(json!({ "keys": [path("alpha")] })),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json_of(&r)["changed"], 1);
    let alpha = fetch("alpha").await;
    assert_eq!(alpha.status, 200);

    for name in ["beta", "gamma", "delta"] {
        assert_eq!(fetch(name).await.status, 200);
    }
    // Eviction runs after each commit, which comes just after the client's last byte.
    support::eventually("beta is evicted", || {
        !proxy.state.fills.store().keys("").contains(&path("beta"))
    })
    .await;
    fake.reset_hits();
    let again = fetch("alpha").await;
    assert_eq!(
        again.header("x-cache"),
        Some("hit"),
        "the pinned gem stayed"
    );
    assert_eq!(again.body, alpha.body);
    assert_eq!(fake.hits(&path("alpha")), 0);
    assert_eq!(
        fetch("beta").await.header("x-cache"),
        Some("miss"),
        "beta was evicted"
    );
    // Its refill commits just after its body, and the eviction it makes runs after the
    // commit: wait for both, so the store holds still for the stats.
    let beta = path("beta");
    let store = proxy.state.fills.store().clone();
    support::eventually("beta is stored again and the budget kept", || {
        store.keys("").contains(&beta) && store.usage().bytes <= 250_000
    })
    .await;

    let stats = json_of(&admin(&proxy, "GET", "/pins", Some(TOKEN), None).await);
    assert_eq!(stats["pinned"]["artifacts"], 1);
    assert_eq!(stats["pinned"]["bytes"], 100_000);
    assert_eq!(stats["keys"], json!([path("alpha")]));
    let store = proxy.state.fills.store().usage();
    assert_eq!(stats["store"]["bytes"], store.bytes);

    // By project and gem: what is stored now.
    let r = admin(
        &proxy,
        "POST",
        "/pin",
        Some(TOKEN),
        Some(json!({ "project": "1", "gem": "beta" })),
    )
    .await;
    assert_eq!(
        json_of(&r)["keys"],
        json!([path("beta")]),
        "{} stored: {:?}",
        r.text(),
        proxy.state.fills.store().keys("")
    );

    let r = admin(
        &proxy,
        "POST",
        "/unpin",
        Some(TOKEN),
        Some(json!({ "project": "1" })),
    )
    .await;
    assert_eq!(json_of(&r)["changed"], 2, "{}", r.text());
    assert!(proxy.state.fills.store().kept().is_empty());

    let bad = admin(
        &proxy,
        "POST",
        "/pin",
        Some(TOKEN),
        Some(json!({ "gem": "alpha" })),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    let junk = admin(
        &proxy,
        "POST",
        "/pin",
        Some(TOKEN),
        Some(json!({ "keys": ["/etc/passwd"] })),
    )
    .await;
    assert_eq!(junk.status, 400, "{}", junk.text());

    let events = audit.take();
    let actions: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["action"].as_str(), e["outcome"].as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("pin", "ok"),
            ("pins.stats", "ok"),
            ("pin", "ok"),
            ("unpin", "ok"),
            ("pin", "failed"),
            ("pin", "failed"),
        ]
    );
    assert!(events.iter().all(|e| !format!("{e:?}").contains(TOKEN)));
}
