//! Several proxies sharing one bucket of a real S3 server (SeaweedFS on loopback): one GitLab
//! fetch for a stampede spread over replicas, a fresh replica served from the bucket, the
//! shared credential key, and start-up refusals.

mod support;

use std::sync::Arc;
use std::time::Duration;

use gitlab_pkg_cache::auth::{Caller, FingerprintKey};
use gitlab_pkg_cache::config::Config;
use support::client;
use support::fake_gitlab::{FakeGitLab, Fault, Visibility};
use support::fixtures::noise;
use support::proxy::TestProxy;
use support::s3_server;
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

    async fn replica(&self, upstream: &str) -> TestProxy {
        TestProxy::start_with(upstream, |config| self.apply(config)).await
    }
}

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
    assert_eq!(
        fresh.state.fills.store().usage().artifacts,
        3,
        "now in the hot tier"
    );

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
