//! Immutable artifacts through the proxy: stored once, served across restarts, fetched once
//! under a stampede, never stored broken, evicted by age, and served even when the store fails.

mod support;

use support::fixtures::{noise, zip_entries};

use support::{eventually, stalled_download};

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gitlab_pkg_cache::storage::{
    ArtifactMeta, ArtifactStore, Commit, EvictionPolicy, EvictionReport, FillId, MemoryStore,
    PinGuard, StoreError, Usage,
};
use support::client;
use support::fake_gitlab::{
    Access, FakeGitLab, Fault, GemFixture, TokenKind, TokenState, Visibility,
};
use support::proxy::TestProxy;
use tokio::sync::Semaphore;

const TIME: &str = "2024-05-01T10:00:00.000+00:00";
const PUBLIC_GO: &str = "/api/v4/projects/1/packages/go/gitlab.example.com/group/proj/@v";
const PRIVATE_GO: &str = "/api/v4/projects/2/packages/go/gitlab.example.com/group/secret/@v";
const GEMS: &str = "/api/v4/projects/1/packages/rubygems/gems";
const READER: &str = "glpat-reader";

fn module_files(module: &str, payload: usize) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "go.mod".to_owned(),
            format!("module {module}\n\ngo 1.19\n").into_bytes(),
        ),
        (
            "lib.go".to_owned(),
            b"package lib\n\nconst Answer = 42\n".to_vec(),
        ),
        ("data.bin".to_owned(), noise(payload, 7)),
    ]
}

/// One public and one private Go module, gems of a few sizes, and a reader token for the
/// private project.
async fn gitlab(payload: usize) -> FakeGitLab {
    let mut builder = FakeGitLab::builder()
        .project(1, "group/proj", Visibility::Public)
        .project(2, "group/secret", Visibility::Private)
        .go_version(
            1,
            "",
            "v1.0.0",
            TIME,
            module_files("gitlab.example.com/group/proj", payload),
        )
        .go_version(
            2,
            "",
            "v1.0.0",
            TIME,
            module_files("gitlab.example.com/group/secret", 1000),
        )
        .token(
            READER,
            TokenKind::Personal {
                scopes: vec!["read_api"],
            },
            TokenState::Active,
            &[(2, Access::Reporter)],
        );
    for (i, name) in ["alpha", "beta", "gamma", "delta"].into_iter().enumerate() {
        builder = builder.gem(1, GemFixture::new(name, "1.0.0", noise(100_000, i as u64)));
    }
    builder.start().await
}

async fn get(proxy: &TestProxy, path: &str, headers: &[(&str, &str)]) -> client::Response {
    client::get(&format!("{}{path}", proxy.url()), headers).await
}

#[tokio::test]
async fn artifacts_survive_a_restart_without_gitlab() {
    let fake = gitlab(300_000).await;
    let proxy = TestProxy::start(&fake.url()).await;
    let paths = [
        format!("{PUBLIC_GO}/v1.0.0.info"),
        format!("{PUBLIC_GO}/v1.0.0.mod"),
        format!("{PUBLIC_GO}/v1.0.0.zip"),
        format!("{GEMS}/alpha-1.0.0.gem"),
    ];
    let mut first = Vec::new();
    for path in &paths {
        let r = get(&proxy, path, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.header("x-cache"), Some("miss"), "{path}");
        first.push(r.body);
    }
    let private_zip = format!("{PRIVATE_GO}/v1.0.0.zip");
    let private = get(&proxy, &private_zip, &[("private-token", READER)]).await;
    assert_eq!(private.status, 200);
    let store = proxy.state.fills.store().clone();
    for key in paths.iter().chain([&private_zip]) {
        eventually("every fill is committed", || is_stored(&store, key)).await;
    }
    drop(store);

    // Everything the proxy took from GitLab is on disk: a restart loses none of it, nor
    // GitLab's acceptance of these callers.
    let data_dir = proxy.stop().await;
    fake.reset_hits();
    let proxy = TestProxy::start_in(&fake.url(), data_dir, |_| {}).await;
    for (path, body) in paths.iter().zip(&first) {
        let r = get(&proxy, path, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("x-cache"), Some("hit"), "{path}");
        assert_eq!(&r.body, body, "{path}: stored bytes differ");
    }
    let again = get(&proxy, &private_zip, &[("private-token", READER)]).await;
    assert_eq!((again.status, again.header("x-cache")), (200, Some("hit")));
    assert_eq!(again.body, private.body);
    assert_eq!(
        fake.total_hits(),
        0,
        "restart served from disk without asking GitLab"
    );

    // A caller GitLab never accepted still gets GitLab's refusal, not the stored zip.
    let anonymous = get(&proxy, &private_zip, &[]).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.text(), r#"{"message":"401 Unauthorized"}"#);
    assert_eq!(anonymous.header("x-cache"), Some("refused"));
    let head = client::request("HEAD", &format!("{}{}", proxy.url(), paths[2]), &[], None).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(first[2].len().to_string().as_str())
    );
    assert!(head.body.is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_cold_requests_fetch_once() {
    let fake = gitlab(2_000_000).await;
    let proxy = Arc::new(TestProxy::start(&fake.url()).await);
    let zip = format!("{PUBLIC_GO}/v1.0.0.zip");
    let gate = Arc::new(Semaphore::new(0));
    fake.set_fault(&zip, Fault::Hold(gate.clone()));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let url = format!("{}{zip}", proxy.url());
        tasks.push(tokio::spawn(async move { client::get(&url, &[]).await }));
    }
    // All fifty are in: one is held at GitLab, the others wait on its fill.
    let fills = proxy.state.fills.clone();
    eventually("49 callers wait on the fill held at GitLab", || {
        fills.waiting() == 49 && fake.hits(&zip) == 1
    })
    .await;
    gate.add_permits(1);
    let mut outcomes = Vec::new();
    let mut bodies = Vec::new();
    for task in tasks {
        let r = task.await.expect("request task");
        assert_eq!(r.status, 200);
        outcomes.push(r.header("x-cache").unwrap_or_default().to_owned());
        bodies.push(r.body);
    }
    assert_eq!(fake.hits(&zip), 1, "one upstream fetch for fifty callers");
    assert_eq!(outcomes.iter().filter(|o| *o == "miss").count(), 1);
    assert_eq!(outcomes.iter().filter(|o| *o == "coalesced").count(), 49);
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "all fifty bodies are the same bytes"
    );
    fake.clear_faults();
    let direct = client::get(&format!("{}{zip}", fake.url()), &[]).await;
    assert_eq!(
        zip_entries(&bodies[0]).expect("a zip"),
        zip_entries(&direct.body).expect("a zip"),
        "same content as GitLab's"
    );
    let later = get(&proxy, &zip, &[]).await;
    assert_eq!(
        (later.header("x-cache"), &later.body),
        (Some("hit"), &bodies[0])
    );
}

#[tokio::test]
async fn a_waiter_with_other_credentials_gets_gitlabs_refusal() {
    let fake = gitlab(500_000).await;
    let proxy = TestProxy::start(&fake.url()).await;
    let zip = format!("{PRIVATE_GO}/v1.0.0.zip");
    let gate = Arc::new(Semaphore::new(0));
    fake.set_fault(&zip, Fault::Hold(gate.clone()));
    let leader = tokio::spawn({
        let url = format!("{}{zip}", proxy.url());
        async move { client::get(&url, &[("private-token", READER)]).await }
    });
    eventually("the leader reached GitLab", || fake.hits(&zip) == 1).await;
    let intruder = tokio::spawn({
        let url = format!("{}{zip}", proxy.url());
        async move { client::get(&url, &[("private-token", "glpat-stolen")]).await }
    });
    let fills = proxy.state.fills.clone();
    eventually("the intruder waits on the fill", || fills.waiting() == 1).await;
    gate.add_permits(1);
    let leader = leader.await.expect("leader");
    let intruder = intruder.await.expect("intruder");
    assert_eq!(leader.status, 200);
    assert_eq!(intruder.status, 401, "{}", intruder.text());
    assert_eq!(intruder.header("x-cache"), Some("refused"));
    assert_ne!(intruder.body, leader.body);
}

#[tokio::test]
async fn broken_fills_store_nothing_and_are_fetched_again() {
    let fake = gitlab(1_000_000).await;
    let proxy = TestProxy::start_with(&fake.url(), |c| {
        c.upstream.body_idle_timeout = Duration::from_millis(300);
    })
    .await;
    let zip = format!("{PUBLIC_GO}/v1.0.0.zip");
    let url = format!("{}{zip}", proxy.url());
    for fault in [
        Fault::ResetMidBody,
        Fault::WrongContentLength,
        Fault::SlowBody(Duration::from_secs(3)),
    ] {
        fake.reset_hits();
        fake.set_fault(&zip, fault.clone());
        // The client must see a failed transfer, never a short body that looks complete. A
        // refill of a version seen before (every round after the first) is checked whole
        // before its first byte, so its break is a clean 502 instead of a cut transfer.
        match client::try_request("GET", &url, &[], None).await {
            Err(_) => {}
            Ok(r) if r.status == 502 && r.text().starts_with("gitlab-pkg-cache: GitLab") => {}
            Ok(r) => panic!(
                "{fault:?}: a broken fill answered {} with {} bytes",
                r.status,
                r.body.len()
            ),
        }
        fake.clear_faults();
        let retry = client::get(&url, &[]).await;
        assert_eq!(retry.status, 200, "{fault:?}");
        assert_eq!(
            retry.header("x-cache"),
            Some("miss"),
            "{fault:?}: nothing was stored"
        );
        assert_eq!(fake.hits(&zip), 2, "{fault:?}");
        let store = proxy.state.fills.store().clone();
        eventually("the good fill is stored", || is_stored(&store, &zip)).await;
        let stored = store.lookup(&zip).await.expect("lookup").expect("stored");
        assert_eq!(stored.len, retry.body.len() as u64);
        // Forget it, so the next fault starts cold.
        proxy
            .state
            .fills
            .store()
            .remove(&zip)
            .await
            .expect("remove");
    }
}

#[tokio::test]
async fn a_corrupt_chunk_on_disk_is_dropped_and_fetched_again() {
    let fake = gitlab(600_000).await;
    let proxy = TestProxy::start(&fake.url()).await;
    let zip = format!("{PUBLIC_GO}/v1.0.0.zip");
    let original = get(&proxy, &zip, &[]).await;
    assert_eq!(original.status, 200);
    let data_dir = proxy.stop().await;
    {
        // Flip one byte of the first stored chunk, as a bad disk would.
        let chunks = data_dir.path().join("store").join("chunks");
        let fill = std::fs::read_dir(&chunks)
            .expect("chunk directory")
            .next()
            .expect("one fill")
            .expect("readable entry")
            .path();
        let first = fill.join(format!("{:08x}", 0));
        let mut damaged = std::fs::read(&first).expect("first chunk");
        let last = damaged.len() - 1;
        damaged[last] ^= 0x55;
        std::fs::write(&first, damaged).expect("write back");
    }
    fake.reset_hits();
    let proxy = TestProxy::start_in(&fake.url(), data_dir, |_| {}).await;
    let served = get(&proxy, &zip, &[]).await;
    assert_eq!(served.status, 200);
    assert_eq!(
        served.header("x-cache"),
        Some("miss"),
        "the damaged copy was not served"
    );
    assert_eq!(fake.hits(&zip), 1, "refetched from GitLab");
    assert_eq!(
        zip_entries(&served.body).expect("a zip"),
        zip_entries(&original.body).expect("a zip")
    );
    let store = proxy.state.fills.store().clone();
    eventually("the refetched zip is stored", || is_stored(&store, &zip)).await;
    let again = get(&proxy, &zip, &[]).await;
    assert_eq!(
        (again.header("x-cache"), &again.body),
        (Some("hit"), &served.body)
    );
}

#[tokio::test]
async fn least_recently_used_artifacts_are_evicted_over_budget() {
    let fake = gitlab(1000).await;
    // Room for two of the 100 kB gems, not three.
    let proxy = TestProxy::start_with(&fake.url(), |c| {
        c.store.max_bytes = bytesize::ByteSize::kb(250);
    })
    .await;
    let store = proxy.state.fills.store().clone();
    for name in ["alpha", "beta", "gamma"] {
        let r = get(&proxy, &format!("{GEMS}/{name}-1.0.0.gem"), &[]).await;
        assert_eq!(
            (r.status, r.header("x-cache")),
            (200, Some("miss")),
            "{name}"
        );
        // Commits (and evictions) finish just after the body: wait for each before the next.
        eventually("the gem is stored", || {
            is_stored(&store, &format!("{GEMS}/{name}-1.0.0.gem"))
        })
        .await;
    }
    eventually("usage is back under budget", || {
        store.usage().bytes <= 250_000
    })
    .await;
    fake.reset_hits();
    let newest = get(&proxy, &format!("{GEMS}/gamma-1.0.0.gem"), &[]).await;
    assert_eq!(newest.header("x-cache"), Some("hit"));
    let oldest = get(&proxy, &format!("{GEMS}/alpha-1.0.0.gem"), &[]).await;
    assert_eq!(oldest.status, 200);
    assert_eq!(
        oldest.header("x-cache"),
        Some("miss"),
        "the oldest was evicted"
    );
    assert_eq!(fake.hits(&format!("{GEMS}/alpha-1.0.0.gem")), 1);
    assert_eq!(fake.hits(&format!("{GEMS}/gamma-1.0.0.gem")), 0);
}

/// Whether `key` is committed, checked on the blocking store directly (the condition runs
/// inside a synchronous closure).
fn is_stored(store: &gitlab_pkg_cache::storage::Store, key: &str) -> bool {
    matches!(store.inner().lookup(key), Ok(Some(_)))
}

/// A store whose disk "fills up" on demand: writes fail with `Full` after `fail_after` chunks.
struct FullDisk {
    inner: MemoryStore,
    broken: AtomicBool,
    fail_after: AtomicU32,
}

impl ArtifactStore for FullDisk {
    fn lookup(&self, key: &str) -> Result<Option<ArtifactMeta>, StoreError> {
        self.inner.lookup(key)
    }
    fn begin_fill(&self, key: &str) -> Result<FillId, StoreError> {
        if self.broken.load(Ordering::SeqCst) && self.fail_after.load(Ordering::SeqCst) == 0 {
            return Err(StoreError::Full);
        }
        self.inner.begin_fill(key)
    }
    fn write_chunk(&self, fill: FillId, index: u32, data: &[u8]) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) && index >= self.fail_after.load(Ordering::SeqCst) {
            return Err(StoreError::Full);
        }
        self.inner.write_chunk(fill, index, data)
    }
    fn commit_fill(
        &self,
        key: &str,
        fill: FillId,
        expected: Commit,
    ) -> Result<ArtifactMeta, StoreError> {
        self.inner.commit_fill(key, fill, expected)
    }
    fn abort_fill(&self, fill: FillId) {
        self.inner.abort_fill(fill)
    }
    fn read_chunk(&self, fill: FillId, index: u32) -> Result<Option<Bytes>, StoreError> {
        self.inner.read_chunk(fill, index)
    }
    fn remove(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.remove(key)
    }
    fn pin(&self, fill: FillId) -> Option<PinGuard> {
        self.inner.pin(fill)
    }
    fn touch(&self, key: &str) {
        self.inner.touch(key)
    }
    fn usage(&self) -> Usage {
        self.inner.usage()
    }
    fn keys(&self, prefix: &str) -> Vec<String> {
        self.inner.keys(prefix)
    }
    fn set_kept(&self, key: &str, kept: bool) -> Result<bool, StoreError> {
        self.inner.set_kept(key, kept)
    }
    fn kept(&self) -> Vec<String> {
        self.inner.kept()
    }
    fn kept_usage(&self) -> Usage {
        self.inner.kept_usage()
    }
    fn evict(&self, policy: &EvictionPolicy) -> Result<EvictionReport, StoreError> {
        self.inner.evict(policy)
    }
    fn put_record(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.inner.put_record(namespace, key, value)
    }
    fn get_record(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get_record(namespace, key)
    }
    fn record_keys(&self, namespace: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.record_keys(namespace)
    }
    fn remove_record(&self, namespace: &str, key: &[u8]) -> Result<bool, StoreError> {
        self.inner.remove_record(namespace, key)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}

#[tokio::test]
async fn a_full_disk_degrades_to_pass_through() {
    let fake = gitlab(1_500_000).await;
    let disk = Arc::new(FullDisk {
        inner: MemoryStore::new(),
        broken: AtomicBool::new(true),
        fail_after: AtomicU32::new(0),
    });
    let proxy = TestProxy::start_with_store(&fake.url(), disk.clone(), |_| {}).await;
    let zip = format!("{PUBLIC_GO}/v1.0.0.zip");
    let direct = client::get(&format!("{}{zip}", fake.url()), &[]).await;

    // The disk refuses the fill outright: the caller is served straight from GitLab.
    let r = get(&proxy, &zip, &[]).await;
    assert_eq!((r.status, r.header("x-cache")), (200, Some("bypass")));
    assert_eq!(
        zip_entries(&r.body).expect("a zip"),
        zip_entries(&direct.body).expect("a zip")
    );

    // The disk fills up half way: the caller still gets every byte.
    disk.fail_after.store(2, Ordering::SeqCst);
    let r = get(&proxy, &zip, &[]).await;
    assert_eq!((r.status, r.header("x-cache")), (200, Some("miss")));
    assert_eq!(
        zip_entries(&r.body).expect("a zip"),
        zip_entries(&direct.body).expect("a zip")
    );
    assert!(
        disk.lookup(&zip).expect("lookup").is_none(),
        "nothing half-written is visible"
    );

    // Space again: the next request stores it.
    disk.broken.store(false, Ordering::SeqCst);
    let r = get(&proxy, &zip, &[]).await;
    assert_eq!((r.status, r.header("x-cache")), (200, Some("miss")));
    eventually("stored once the disk has room", || {
        matches!(disk.lookup(&zip), Ok(Some(_)))
    })
    .await;
    let hit = get(&proxy, &zip, &[]).await;
    assert_eq!((hit.header("x-cache"), &hit.body), (Some("hit"), &r.body));
}

#[tokio::test]
async fn a_slow_leader_does_not_hold_back_its_waiters() {
    let fake = gitlab(12_000_000).await;
    let proxy = TestProxy::start(&fake.url()).await;
    let zip = format!("{PUBLIC_GO}/v1.0.0.zip");
    let authority = proxy.url().trim_start_matches("http://").to_owned();
    // The first caller leads the fill, then stops reading.
    let stalled = stalled_download(&authority, &zip).await;
    let waiter = tokio::time::timeout(Duration::from_secs(60), get(&proxy, &zip, &[]))
        .await
        .expect("the waiter is not held back by the stalled leader");
    assert_eq!(
        (waiter.status, waiter.header("x-cache")),
        (200, Some("coalesced"))
    );
    let direct = client::get(&format!("{}{zip}", fake.url()), &[]).await;
    assert_eq!(waiter.body, direct.body);
    let store = proxy.state.fills.store().clone();
    eventually("the fill finished while its leader stalls", || {
        is_stored(&store, &zip)
    })
    .await;
    assert_eq!(fake.hits(&zip), 2, "one fill, plus the direct fetch above");
    drop(stalled);
}
