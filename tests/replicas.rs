//! Several proxies sharing one bucket of a real S3 server (SeaweedFS on loopback): one GitLab
//! fetch for a stampede spread over replicas, a replica process SIGKILLed mid-fill and taken
//! over, a fresh replica served from the bucket (streamed while it is copied in), the shared
//! credential key, and start-up refusals.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use gitlab_pkg_cache::auth::{Caller, FingerprintKey};
use gitlab_pkg_cache::config::Config;
use gitlab_pkg_cache::route::Endpoint;
use gitlab_pkg_cache::storage::s3::{Bucket, S3Credentials, S3Settings};
use gitlab_pkg_cache::storage::{
    ArtifactMeta, ArtifactStore, Commit, EvictionPolicy, EvictionReport, FillId, PinGuard,
    SharedCopy, SledStore, StoreError, TieredStore, Usage,
};
use support::client;
use support::fake_gitlab::{FakeGitLab, Fault, Visibility};
use support::fixtures::noise;
use support::proxy::TestProxy;
use support::proxy_process::ProxyProcess;
use support::s3_server;
use support::stalled_download;
use tokio::sync::Semaphore;

const TIME: &str = "2024-05-01T10:00:00.000+00:00";
const GO: &str = "/api/v4/projects/1/packages/go/gitlab.example.com/group/proj/@v";

async fn gitlab(payload: usize) -> FakeGitLab {
    FakeGitLab::builder()
        .project(1, "group/proj", Visibility::Public)
        .go_version(
            1,
            "",
            "v1.0.0",
            TIME,
            vec![
                (
                    "go.mod".to_owned(),
                    b"module gitlab.example.com/group/proj\n\ngo 1.19\n".to_vec(),
                ),
                ("data.bin".to_owned(), noise(payload, 13)),
            ],
        )
        .start()
        .await
}

/// A bucket prefix of its own and a credentials file, for replicas of one test.
struct Shared {
    endpoint: String,
    prefix: String,
    dir: tempfile::TempDir,
}

impl Shared {
    /// `None` when S3 tests are skipped on purpose; panics with instructions when the server
    /// is not installed.
    fn new() -> Option<Shared> {
        let server = s3_server::server()?;
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(
            dir.path().join("s3-credentials"),
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                s3_server::ACCESS_KEY,
                s3_server::SECRET_KEY
            ),
        )
        .expect("credentials file");
        std::fs::write(dir.path().join("credential-hmac.key"), [42u8; 32]).expect("key file");
        Some(Shared {
            endpoint: server.endpoint.clone(),
            prefix: s3_server::unique_prefix(),
            dir,
        })
    }

    fn apply(&self, config: &mut Config) {
        let s3 = &mut config.store.s3;
        s3.endpoint = Some(self.endpoint.clone());
        s3.bucket = Some(s3_server::BUCKET.to_owned());
        s3.prefix = self.prefix.clone();
        s3.path_style = true;
        s3.credentials_file = Some(self.dir.path().join("s3-credentials"));
        s3.lease_ttl = Duration::from_secs(5);
        s3.lease_wait = Duration::from_secs(60);
        config.credential_key_file = Some(self.dir.path().join("credential-hmac.key"));
    }

    /// The bucket as the storage layer opens it.
    fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: self.endpoint.clone(),
            bucket: s3_server::BUCKET.to_owned(),
            region: "us-east-1".to_owned(),
            prefix: self.prefix.clone(),
            path_style: true,
            credentials: S3Credentials {
                access_key_id: s3_server::ACCESS_KEY.to_owned(),
                secret_access_key: s3_server::SECRET_KEY.to_owned(),
                session_token: None,
            },
        }
    }

    async fn replica(&self, upstream: &str) -> TestProxy {
        TestProxy::start_with(upstream, |config| self.apply(config)).await
    }

    /// A replica as a process of its own (the built binary), configured by flags; its
    /// lease lapses 2 s after it stops renewing it.
    async fn process(&self, upstream: &str, data_dir: &std::path::Path) -> ProxyProcess {
        let dir = self.dir.path();
        let args: Vec<std::ffi::OsString> = vec![
            "--s3-endpoint".into(),
            self.endpoint.clone().into(),
            "--s3-bucket".into(),
            s3_server::BUCKET.into(),
            "--s3-prefix".into(),
            self.prefix.clone().into(),
            "--s3-path-style".into(),
            "true".into(),
            "--s3-credentials-file".into(),
            dir.join("s3-credentials").into(),
            "--s3-lease-ttl".into(),
            "2s".into(),
            "--s3-lease-wait".into(),
            "60s".into(),
            "--credential-key-file".into(),
            dir.join("credential-hmac.key").into(),
        ];
        ProxyProcess::spawn(
            env!("CARGO_BIN_EXE_gitlab-pkg-cache"),
            upstream,
            data_dir,
            args,
        )
        .await
    }
}

const LEASE_WAITS: &str = "gitlab_pkg_cache_shared_lease_waits_total";
const LEASE_TAKEOVERS: &str = "gitlab_pkg_cache_shared_lease_takeovers_total";
const COMMITS_WON: &str = "gitlab_pkg_cache_shared_commits_won_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stampede_spread_over_replicas_fetches_once() {
    let Some(shared) = Shared::new() else { return };
    let fake = gitlab(20 << 20).await;
    let replicas = [
        Arc::new(shared.replica(&fake.url()).await),
        Arc::new(shared.replica(&fake.url()).await),
        Arc::new(shared.replica(&fake.url()).await),
    ];
    let zip = format!("{GO}/v1.0.0.zip");
    let gate = Arc::new(Semaphore::new(0));
    fake.set_fault(&zip, Fault::Hold(gate.clone()));
    let mut tasks = Vec::new();
    for i in 0..100 {
        let url = format!("{}{zip}", replicas[i % replicas.len()].url());
        tasks.push(tokio::spawn(async move { client::get(&url, &[]).await }));
    }
    let waiting = |replicas: &[Arc<TestProxy>]| -> usize {
        replicas
            .iter()
            .map(|r| r.state.fills.waiting() + r.state.leases.as_ref().map_or(0, |l| l.waiting()))
            .sum()
    };
    // Bounded wait (the helper's 5 s is short for 100 requests on a busy machine).
    for _ in 0..3000 {
        if fake.hits(&zip) == 1 && waiting(&replicas) == 99 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.hits(&zip), 1, "only one replica asked GitLab");
    assert_eq!(waiting(&replicas), 99, "every other caller waits");
    // Enough permits for any replica that wrongly fetched too, so the test fails rather
    // than hangs.
    gate.add_permits(100);
    let mut bodies = Vec::new();
    for task in tasks {
        let r = task.await.expect("request task");
        assert_eq!(r.status, 200, "{}", r.text());
        bodies.push(r.body);
    }
    assert_eq!(
        fake.hits(&zip),
        1,
        "one GitLab fetch for 100 callers on 3 replicas"
    );
    assert!(bodies[0].len() > 20 << 20);
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "identical bytes from every replica"
    );
    fake.clear_faults();
    let direct = client::get(&format!("{}{zip}", fake.url()), &[]).await;
    assert_eq!(direct.body, bodies[0], "the bytes GitLab serves");
}

/// Replicas as separate processes: the one leading a fill is SIGKILLed mid-body; the replica
/// waiting on its lease takes the lapsed lease over and completes the fill; no replica ever
/// serves the cut bytes, and no caller gets a 5xx for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_fill_is_taken_over_and_nothing_truncated_is_served() {
    let Some(shared) = Shared::new() else { return };
    let fake = gitlab(20 << 20).await;
    let zip = format!("{GO}/v1.0.0.zip");
    let dirs = [
        tempfile::tempdir().expect("data dir"),
        tempfile::tempdir().expect("data dir"),
        tempfile::tempdir().expect("data dir"),
    ];
    let mut a = shared.process(&fake.url(), dirs[0].path()).await;
    let b = shared.process(&fake.url(), dirs[1].path()).await;

    // GitLab sends half of the zip to replica A, then nothing: A's fill (and its lease) is
    // caught in the middle.
    fake.set_fault(&zip, Fault::StallMidBody);
    let stalled = stalled_download(a.authority(), &zip).await;
    assert_eq!(fake.hits(&zip), 1);
    fake.clear_faults();

    // A caller of replica B arrives while A holds the lease: B waits for A's reference.
    let url = format!("{}{zip}", b.url);
    let waiting = tokio::spawn(async move { client::get(&url, &[]).await });
    b.wait_for_metric(LEASE_WAITS, 1.0).await;
    assert!(!waiting.is_finished(), "B waits on A's lease");
    assert_eq!(
        fake.hits(&zip),
        1,
        "B did not fetch while A's lease was live"
    );

    a.kill().await;
    drop(stalled);
    let through_b = waiting.await.expect("request task");
    assert_eq!(through_b.status, 200, "{}", through_b.text());
    assert_eq!(
        b.metric(LEASE_TAKEOVERS).await,
        1.0,
        "B took the lapsed lease over"
    );
    assert_eq!(fake.hits(&zip), 2, "A's cut fetch, then B's");
    let direct = client::get(&format!("{}{zip}", fake.url()), &[]).await;
    assert!(direct.body.len() > 20 << 20);
    assert_eq!(through_b.body, direct.body, "B served GitLab's bytes");

    // A restarted on its disk (which holds A's cut fill) and a fresh replica: both serve
    // B's committed copy from the bucket, whole, without asking GitLab.
    b.wait_for_metric(COMMITS_WON, 1.0).await;
    fake.reset_hits();
    let restarted = shared.process(&fake.url(), dirs[0].path()).await;
    let fresh = shared.process(&fake.url(), dirs[2].path()).await;
    for replica in [&restarted, &fresh, &b] {
        let r = client::get(&format!("{}{zip}", replica.url), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-cache"), Some("hit"));
        assert_eq!(r.body, direct.body, "whole, GitLab's bytes");
    }
    assert_eq!(fake.hits(&zip), 0, "served from the bucket");
}

#[tokio::test]
async fn a_new_replica_with_an_empty_disk_serves_from_the_bucket() {
    let Some(shared) = Shared::new() else { return };
    let fake = gitlab(1 << 20).await;
    let first = shared.replica(&fake.url()).await;
    let paths = [
        format!("{GO}/v1.0.0.info"),
        format!("{GO}/v1.0.0.mod"),
        format!("{GO}/v1.0.0.zip"),
    ];
    let mut bodies = Vec::new();
    for path in &paths {
        let r = client::get(&format!("{}{path}", first.url()), &[]).await;
        assert_eq!(
            (r.status, r.header("x-cache")),
            (200, Some("miss")),
            "{path}"
        );
        bodies.push(r.body);
    }
    // Fills commit (and publish to the bucket) just after the responses end.
    let stats = first
        .state
        .leases
        .as_ref()
        .expect("shared tier on")
        .stats()
        .clone();
    support::eventually("every fill is committed to the bucket", || {
        stats.commits_won.get() == 3
    })
    .await;
    first.stop().await;

    fake.reset_hits();
    let fresh = shared.replica(&fake.url()).await;
    assert_eq!(
        fresh.state.fills.store().usage().artifacts,
        0,
        "an empty disk"
    );
    // A HEAD is answered from the bucket's reference: no byte read, nothing copied in.
    let r = client::request("HEAD", &format!("{}{}", fresh.url(), paths[2]), &[], None).await;
    assert_eq!((r.status, r.header("x-cache")), (200, Some("hit")));
    let length = bodies[2].len().to_string();
    assert_eq!(r.header("content-length"), Some(length.as_str()));
    assert!(r.body.is_empty());
    assert_eq!(fresh.state.fills.store().usage().artifacts, 0, "not copied");
    let fresh_stats = fresh.state.leases.as_ref().expect("shared tier").stats();
    assert_eq!(fresh_stats.bucket_hits.get(), 0, "the blob was not opened");

    // The zip first: its authorization asks GitLab for the version's `.info` (a decision per
    // replica), never for the zip's bytes.
    for (path, body) in paths.iter().zip(&bodies).rev() {
        let r = client::get(&format!("{}{path}", fresh.url()), &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("x-cache"), Some("hit"), "{path}");
        assert_eq!(&r.body, body, "{path}");
    }
    assert_eq!(fake.hits(&paths[2]), 0, "GitLab was not asked for the zip");
    assert_eq!(fake.hits(&paths[1]), 0, "nor for the .mod");
    // Copied in as they streamed; each copy commits just after its last byte.
    let store = fresh.state.fills.store().clone();
    support::eventually("all three are now in the hot tier", || {
        store.usage().artifacts == 3
    })
    .await;

    // GitLab down: the replica that saw GitLab accept this caller serves from its tiers; a
    // replica that never did fails closed, since decisions are not shared between replicas.
    fake.set_down(true);
    let r = client::get(&format!("{}{}", fresh.url(), paths[2]), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, bodies[2]);
    let third = shared.replica(&fake.url()).await;
    let r = client::get(&format!("{}{}", third.url(), paths[2]), &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
}

#[tokio::test]
async fn replicas_fingerprint_credentials_with_the_shared_key() {
    let Some(shared) = Shared::new() else { return };
    let fake = gitlab(1000).await;
    let a = shared.replica(&fake.url()).await;
    let b = shared.replica(&fake.url()).await;
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "private-token",
        http::HeaderValue::from_static("glpat-token"),
    );
    let fingerprint = |key| Caller::from_request(key, &headers, None).fingerprint;
    assert_eq!(
        fingerprint(&a.state.key),
        fingerprint(&b.state.key),
        "one credential, one fingerprint on every replica"
    );
    let own = tempfile::tempdir().expect("directory");
    let other = FingerprintKey::load_or_create(&own.path().join("k")).expect("a key");
    assert_ne!(fingerprint(&a.state.key), fingerprint(&other));
    assert!(
        !a.data_dir.path().join("credential-hmac.key").exists(),
        "no key of its own"
    );
}

#[tokio::test]
async fn shared_mode_is_refused_at_start_up_with_a_clear_error() {
    let Some(shared) = Shared::new() else { return };
    let fake = gitlab(1000).await;
    let data_dir = tempfile::tempdir().expect("data directory");

    let mut unreachable = Config::for_tests(&fake.url(), data_dir.path()).expect("config");
    shared.apply(&mut unreachable);
    unreachable.store.s3.endpoint = Some("http://127.0.0.1:1".to_owned());
    let err = gitlab_pkg_cache::state::AppState::build(unreachable)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("127.0.0.1:1"), "{err}");

    let mut missing_key = Config::for_tests(&fake.url(), data_dir.path()).expect("config");
    shared.apply(&mut missing_key);
    missing_key.credential_key_file = Some(data_dir.path().join("absent.key"));
    let err = gitlab_pkg_cache::state::AppState::build(missing_key)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("absent.key") && err.contains("does not exist"),
        "{err}"
    );
}

/// A replica's store whose bucket stream is held after `hold_at` bytes until `gate` gives a
/// permit, so a test can see what the caller has while the copy is under way.
struct HeldBucket {
    inner: TieredStore<SledStore>,
    gate: Arc<Semaphore>,
    hold_at: u64,
}

impl ArtifactStore for HeldBucket {
    fn lookup(&self, key: &str) -> Result<Option<ArtifactMeta>, StoreError> {
        self.inner.lookup(key)
    }
    fn lookup_here(&self, key: &str) -> Result<Option<ArtifactMeta>, StoreError> {
        self.inner.lookup_here(key)
    }
    fn shared_copy(&self, key: &str) -> Result<Option<SharedCopy>, StoreError> {
        let Some(mut copy) = self.inner.shared_copy(key)? else {
            return Ok(None);
        };
        let (gate, hold_at) = (Some(self.gate.clone()), self.hold_at);
        copy.body = futures_util::stream::unfold(
            (copy.body, 0u64, gate),
            move |(mut body, seen, mut gate)| async move {
                if seen >= hold_at {
                    if let Some(gate) = gate.take() {
                        gate.acquire().await.expect("gate open").forget();
                    }
                }
                let item = body.next().await?;
                let seen = seen + item.as_ref().map_or(0, |b| b.len() as u64);
                Some((item, (body, seen, gate)))
            },
        )
        .boxed();
        Ok(Some(copy))
    }
    fn begin_copy(&self, key: &str) -> Result<FillId, StoreError> {
        self.inner.begin_copy(key)
    }
    fn begin_fill(&self, key: &str) -> Result<FillId, StoreError> {
        self.inner.begin_fill(key)
    }
    fn write_chunk(&self, fill: FillId, index: u32, data: &[u8]) -> Result<(), StoreError> {
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

/// An empty hot tier serves a bucket hit as a stream: the caller has the first bytes while
/// the copy into the local tier is still under way (held half-way here), the copy then
/// commits locally only, and GitLab is never asked for the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_hit_streams_to_the_caller_while_it_is_copied_into_the_hot_tier() {
    let Some(shared) = Shared::new() else { return };
    let fake = gitlab(20 << 20).await;
    let zip = format!("{GO}/v1.0.0.zip");
    let first = shared.replica(&fake.url()).await;
    let stored = client::get(&format!("{}{zip}", first.url()), &[]).await;
    assert_eq!(stored.status, 200);
    let stats = first
        .state
        .leases
        .as_ref()
        .expect("shared tier")
        .stats()
        .clone();
    support::eventually("the zip is committed to the bucket", || {
        stats.commits_won.get() == 1
    })
    .await;

    let settings = shared.settings();
    let disk = tempfile::tempdir().expect("hot tier");
    let local = SledStore::open(disk.path(), 8 << 20).expect("sled");
    let bucket = Arc::new(Bucket::open(&settings).expect("bucket"));
    let gate = Arc::new(Semaphore::new(0));
    let store = Arc::new(HeldBucket {
        inner: TieredStore::new(local, bucket, EvictionPolicy::default()),
        gate: gate.clone(),
        hold_at: 4 << 20,
    });
    let fresh = TestProxy::start_with_store(&fake.url(), store.clone(), |_| {}).await;
    fake.reset_hits();

    let authority = fresh.url().trim_start_matches("http://").to_owned();
    let early = stalled_download(&authority, &zip).await;
    assert_eq!(
        store.usage().artifacts,
        0,
        "the first bytes came before the copy into the hot tier was complete"
    );
    drop(early);
    gate.add_permits(1);
    support::eventually("the copy is committed in the hot tier", || {
        store.usage().artifacts == 1
    })
    .await;
    let r = client::get(&format!("{}{zip}", fresh.url()), &[]).await;
    assert_eq!((r.status, r.header("x-cache")), (200, Some("hit")));
    assert_eq!(r.body, stored.body, "the stored bytes, whole");
    assert_eq!(fake.hits(&zip), 0, "GitLab was not asked for the zip");
    let shared_stats = store.inner.stats();
    assert_eq!(shared_stats.bucket_hits.get(), 1);
    assert_eq!(
        shared_stats.commits_won.get() + shared_stats.commits_lost.get(),
        0,
        "a copy is not written back to the bucket"
    );
}

/// `admin gc` deletes blobs that crashed fills completed but never committed, once older than
/// the grace period; a blob a reference names is never deleted; the call needs the admin token.
#[tokio::test]
async fn gc_deletes_the_blobs_no_reference_names() {
    let Some(shared) = Shared::new() else { return };
    let fake = gitlab(1 << 20).await;
    let token_file = shared.dir.path().join("admin-token");
    std::fs::write(&token_file, "gc-admin-token\n").expect("token file");
    let replica = TestProxy::start_with(&fake.url(), |config| {
        shared.apply(config);
        config.admin_token_file = Some(token_file.clone());
    })
    .await;
    let zip = format!("{GO}/v1.0.0.zip");
    let stored = client::get(&format!("{}{zip}", replica.url()), &[]).await;
    assert_eq!(stored.status, 200);
    let stats = replica
        .state
        .leases
        .as_ref()
        .expect("shared tier")
        .stats()
        .clone();
    support::eventually("the zip is committed", || stats.commits_won.get() == 1).await;

    // Two fills that died after completing their blob, before committing a reference: one of
    // the stored zip's key, one of a key never committed.
    let bucket = Bucket::open(&shared.settings()).expect("bucket");
    let key = match Endpoint::parse(&http::Method::GET, &zip.parse().expect("a path")) {
        Ok(Endpoint::Package(route)) => route.content_key(),
        other => panic!("{other:?}"),
    };
    for key in [key.as_str(), "go/never/committed.zip"] {
        let mut blob = bucket.start_blob(key).expect("upload");
        bucket
            .append(&mut blob, Bytes::from(vec![7u8; 1000]))
            .expect("part");
        bucket.finish(blob).expect("completed");
    }

    let gc = |token: &'static str, body: &'static str| {
        let url = format!("{}/-/pkg-cache/admin/gc", replica.url());
        async move {
            let auth = format!("Bearer {token}");
            client::request(
                "POST",
                &url,
                &[("authorization", &auth)],
                Some(Bytes::from(body)),
            )
            .await
        }
    };
    let refused = gc("wrong-token", "{}").await;
    assert_eq!(refused.status, 401);
    // Within the default grace (a day): nothing goes.
    let young = gc("gc-admin-token", "{}").await;
    assert_eq!(young.status, 200, "{}", young.text());
    let young: serde_json::Value = serde_json::from_slice(&young.body).expect("json");
    assert_eq!(
        (young["blobs"].as_u64(), young["young"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(young["deleted"].as_u64(), Some(0));
    // Without grace: both orphans go, the committed blob stays.
    let swept = gc("gc-admin-token", r#"{"grace":"0s"}"#).await;
    assert_eq!(swept.status, 200, "{}", swept.text());
    let swept: serde_json::Value = serde_json::from_slice(&swept.body).expect("json");
    assert_eq!(swept["deleted"].as_u64(), Some(2), "{swept}");
    assert_eq!(swept["deleted_bytes"].as_u64(), Some(2000), "{swept}");
    assert_eq!(swept["referenced"].as_u64(), Some(1), "{swept}");
    let again: serde_json::Value =
        serde_json::from_slice(&gc("gc-admin-token", r#"{"grace":"0s"}"#).await.body)
            .expect("json");
    assert_eq!(
        (again["blobs"].as_u64(), again["deleted"].as_u64()),
        (Some(1), Some(0))
    );

    // What the reference names is still whole in the bucket: a fresh replica serves it.
    fake.reset_hits();
    let fresh = shared.replica(&fake.url()).await;
    let r = client::get(&format!("{}{zip}", fresh.url()), &[]).await;
    assert_eq!((r.status, r.header("x-cache")), (200, Some("hit")));
    assert_eq!(r.body, stored.body);
    assert_eq!(fake.hits(&zip), 0);
}
