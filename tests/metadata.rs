//! Metadata through the proxy: concurrent cold misses of one list reach GitLab once, and a
//! stale list is served at once while one background request refreshes it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::client;
use support::fake_gitlab::{FakeGitLab, Fault, Visibility};
use support::proxy::TestProxy;
use tokio::sync::Semaphore;

const LIST: &str = "/api/v4/projects/1/packages/go/gitlab.example.com/group/proj/@v/list";

async fn gitlab() -> FakeGitLab {
    let go_mod = b"module gitlab.example.com/group/proj\n".to_vec();
    FakeGitLab::builder()
        .project(1, "group/proj", Visibility::Public)
        .go_version(
            1,
            "",
            "v1.0.0",
            "2024-05-01T10:00:00.000+00:00",
            vec![("go.mod".to_owned(), go_mod.clone())],
        )
        .go_version(
            1,
            "",
            "v1.1.0",
            "2024-05-02T10:00:00.000+00:00",
            vec![("go.mod".to_owned(), go_mod)],
        )
        .start()
        .await
}

#[tokio::test]
async fn concurrent_cold_misses_of_a_list_reach_gitlab_once() {
    let fake = gitlab().await;
    let proxy = Arc::new(TestProxy::start(&fake.url()).await);
    let gate = Arc::new(Semaphore::new(0));
    fake.set_fault(LIST, Fault::Hold(gate.clone()));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = format!("{}{LIST}", proxy.url());
            tokio::spawn(async move { client::get(&url, &[]).await })
        })
        .collect();
    for _ in 0..500 {
        if fake.hits(LIST) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Give the other nineteen time to arrive while the first is held at GitLab; enough
    // permits for all of them, so only coalescing keeps GitLab at one request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    gate.add_permits(20);
    let mut outcomes = Vec::new();
    for task in tasks {
        let r = task.await.expect("request");
        assert_eq!((r.status, r.text().as_str()), (200, "v1.0.0\nv1.1.0"));
        outcomes.push(r.header("x-cache").unwrap_or_default().to_owned());
    }
    assert_eq!(
        fake.hits(LIST),
        1,
        "one GitLab request for twenty callers: {outcomes:?}"
    );
    assert_eq!(outcomes.iter().filter(|o| *o == "miss").count(), 1);
}

#[tokio::test]
async fn a_stale_list_is_served_at_once_and_refreshed_once() {
    let fake = gitlab().await;
    let proxy = TestProxy::start_with(&fake.url(), |c| {
        c.cache.metadata_ttl = Duration::from_millis(1);
        c.cache.metadata_max_stale = Duration::from_secs(600);
    })
    .await;
    assert_eq!(
        client::get(&format!("{}{LIST}", proxy.url()), &[])
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    // GitLab is now slow: stale answers must not wait for it.
    let gate = Arc::new(Semaphore::new(0));
    fake.set_fault(LIST, Fault::Hold(gate.clone()));
    for _ in 0..5 {
        let r = client::get(&format!("{}{LIST}", proxy.url()), &[]).await;
        assert_eq!((r.status, r.header("x-cache")), (200, Some("stale")));
    }
    assert_eq!(
        fake.hits(LIST),
        2,
        "one background refresh for five stale hits"
    );
    gate.add_permits(1);
}
