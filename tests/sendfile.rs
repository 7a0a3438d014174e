//! Large artifact hits through sendfile: verified once, then sent from the chunk files on
//! plain HTTP/1.1 (byte-identical, counted), while TLS and HTTP/2 keep the read path; damage
//! found on the first read after a start fails the response as before, damage after
//! verification is caught by `admin verify` (which drops the marks), a chunk file truncated
//! under a response never brings the proxy down, and a client that stalls or leaves takes
//! its mapped chunks with it. Verified chunks stay open and mapped for later hits (sent even
//! after their files were unlinked from outside, the right bytes of that fill) until
//! `admin verify` finds them gone, or a purge deletes the fill.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use gitlab_pkg_cache::storage::{ArtifactMeta, Store};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use support::client;
use support::eventually;
use support::fake_gitlab::{FakeGitLab, GemFixture, Visibility};
use support::fixtures::noise;
use support::pki::{trusting, Pki};
use support::proxy::TestProxy;
use tokio::io::AsyncReadExt;

const GEMS: &str = "/api/v4/projects/1/packages/rubygems/gems";
const ADMIN_TOKEN: &str = "sendfile-admin-token";
const CHUNK: usize = 256 * 1024;
/// Five whole chunks and an odd tail: above the memory tier's entry limit.
const BIG_LEN: usize = 5 * CHUNK + 12_345;
/// Larger than what loopback socket buffers hold, so a stalled client leaves most unsent.
const HUGE_LEN: usize = 24 * 1024 * 1024 + 7;

fn big() -> String {
    format!("{GEMS}/big-1.0.0.gem")
}

fn huge() -> String {
    format!("{GEMS}/huge-1.0.0.gem")
}

async fn gitlab() -> FakeGitLab {
    FakeGitLab::builder()
        .project(1, "group/proj", Visibility::Public)
        .gem(1, GemFixture::new("big", "1.0.0", noise(BIG_LEN, 11)))
        .gem(1, GemFixture::new("huge", "1.0.0", noise(HUGE_LEN, 12)))
        .start()
        .await
}

async fn get(proxy: &TestProxy, path: &str) -> client::Response {
    client::get(&format!("{}{path}", proxy.url()), &[]).await
}

fn stored(store: &Store, key: &str) -> Option<ArtifactMeta> {
    store.inner().lookup(key).ok().flatten()
}

fn chunk_path(proxy: &TestProxy, meta: &ArtifactMeta, index: u32) -> PathBuf {
    proxy
        .data_dir
        .path()
        .join("store")
        .join("chunks")
        .join(format!("{:016x}", meta.fill.0))
        .join(format!("{index:08x}"))
}

/// Flips one byte in the data of chunk `index`, as a bad disk would.
fn damage(path: &PathBuf) {
    let mut bytes = std::fs::read(path).expect("the chunk file");
    let at = bytes.len() - 100;
    bytes[at] ^= 0x5a;
    std::fs::write(path, bytes).expect("write the chunk back");
}

/// Fetches `path` once through the proxy and waits until it is committed: GitLab's bytes.
async fn fill(proxy: &TestProxy, path: &str) -> (Bytes, ArtifactMeta) {
    let first = get(proxy, path).await;
    assert_eq!((first.status, first.header("x-cache")), (200, Some("miss")));
    let store = proxy.state.fills.store().clone();
    eventually("the fill is committed", || stored(&store, path).is_some()).await;
    let meta = stored(&store, path).expect("committed");
    (first.body, meta)
}

fn all_verified(store: &Store, meta: &ArtifactMeta) -> bool {
    (0..meta.chunk_count).all(|i| store.verified().is_verified(meta.fill, i))
}

#[tokio::test]
async fn verified_chunks_go_out_with_sendfile_on_plain_http1() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let metrics = proxy.state.metrics.clone();
    let store = proxy.state.fills.store().clone();
    let (original, meta) = fill(&proxy, &big()).await;
    assert_eq!(original.len(), BIG_LEN);
    assert_eq!(meta.chunk_count, 6);

    // The first hit reads every chunk from disk through its CRC (the first one before the
    // answer starts) and marks each as it passes.
    let first = get(&proxy, &big()).await;
    assert_eq!((first.status, first.header("x-cache")), (200, Some("hit")));
    assert_eq!(first.body, original, "byte-identical");
    assert!(all_verified(&store, &meta), "every chunk marked verified");

    // The next hit sends every byte from the chunk files.
    let before = metrics.sendfile_bytes_total();
    let second = get(&proxy, &big()).await;
    assert_eq!(
        (second.status, second.header("x-cache")),
        (200, Some("hit"))
    );
    assert_eq!(second.body, original, "byte-identical through sendfile");
    assert_eq!(
        metrics.sendfile_bytes_total() - before,
        BIG_LEN as u64,
        "the whole body went out with sendfile"
    );
    let exposed = get(&proxy, "/-/pkg-cache/metrics").await.text();
    assert!(
        exposed.contains("gitlab_pkg_cache_sendfile_bytes_total"),
        "{exposed}"
    );
    eventually("no mapped chunk is left", || metrics.file_regions() == 0).await;
    // HEAD answers without a body and maps nothing.
    let head = client::request("HEAD", &format!("{}{}", proxy.url(), big()), &[], None).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(BIG_LEN.to_string().as_str())
    );
    assert!(head.body.is_empty());
    assert_eq!(fake.hits(&big()), 1);
}

async fn fetch<C>(client: Client<C, Empty<Bytes>>, url: &str) -> (http::Version, u16, Bytes)
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let request = http::Request::get(url)
        .body(Empty::<Bytes>::new())
        .expect("a request");
    let response = client
        .request(request)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    let (version, status) = (response.version(), response.status().as_u16());
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a whole body")
        .to_bytes();
    (version, status, body)
}

#[tokio::test]
async fn tls_and_http2_serve_the_same_bytes_without_sendfile() {
    let fake = gitlab().await;
    let pki = Pki::new();
    let tls = TestProxy::start_with(&fake.url(), |config| {
        config.tls.cert_file = Some(pki.cert());
        config.tls.key_file = Some(pki.key());
    })
    .await;
    let url = format!("{}{}", tls.url(), big());
    let https = |http2: bool| {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(trusting(&pki.ca()))
            .https_only();
        let connector = if http2 {
            builder.enable_http2().build()
        } else {
            builder.enable_http1().build()
        };
        Client::builder(TokioExecutor::new()).build(connector)
    };
    let (_, status, original) = fetch(https(false), &url).await;
    assert_eq!(status, 200);
    assert_eq!(original.len(), BIG_LEN);
    let store = tls.state.fills.store().clone();
    eventually("the fill is committed", || stored(&store, &big()).is_some()).await;
    for round in 0..2 {
        for http2 in [false, true] {
            let (version, status, body) = fetch(https(http2), &url).await;
            let expected = if http2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            };
            assert_eq!((version, status), (expected, 200), "round {round}");
            assert!(
                body == original,
                "TLS {version:?} round {round}: byte-identical"
            );
        }
    }
    assert_eq!(
        tls.state.metrics.sendfile_bytes_total(),
        0,
        "TLS never sends files"
    );
    assert_eq!(tls.state.metrics.file_regions(), 0);

    // h2c on the plain listener: the h2 codec gets read bytes, not mapped ones.
    let plain = TestProxy::start(&fake.url()).await;
    let (original, _) = fill(&plain, &big()).await;
    let h2c = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    for round in 0..2 {
        let (version, status, body) =
            fetch(h2c.clone(), &format!("{}{}", plain.url(), big())).await;
        assert_eq!((version, status), (http::Version::HTTP_2, 200));
        assert!(body == original, "h2c round {round}: byte-identical");
    }
    assert_eq!(plain.state.metrics.sendfile_bytes_total(), 0);
    assert_eq!(fake.hits(&big()), 2, "one fill per proxy");
}

#[tokio::test]
async fn damage_before_the_first_read_after_a_start_fails_the_response() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let (original, meta) = fill(&proxy, &big()).await;
    // Verified in this process…
    assert_eq!(get(&proxy, &big()).await.body, original);
    let damaged = chunk_path(&proxy, &meta, 2);
    let data_dir = proxy.stop().await;
    // …but marks do not survive a restart: the damage is found on the first read.
    let proxy = TestProxy::start_in(&fake.url(), data_dir, |_| {}).await;
    damage(&damaged);
    let store = proxy.state.fills.store().clone();
    let metrics = proxy.state.metrics.clone();
    let url = format!("{}{}", proxy.url(), big());
    let served = client::try_request("GET", &url, &[], None).await;
    assert!(
        served.is_err(),
        "the damaged response does not complete as good"
    );
    let exposed = get(&proxy, "/-/pkg-cache/metrics").await.text();
    assert!(
        exposed.contains("gitlab_pkg_cache_corrupt_artifacts_total 1"),
        "{exposed}"
    );
    assert!(
        stored(&store, &big()).is_none(),
        "the damaged copy is dropped"
    );
    assert!(!store.verified().is_verified(meta.fill, 0), "its marks too");
    let again = get(&proxy, &big()).await;
    assert_eq!((again.status, again.header("x-cache")), (200, Some("miss")));
    assert_eq!(again.body, original, "GitLab's bytes again");
    assert!(
        metrics.sendfile_bytes_total() < BIG_LEN as u64,
        "the damaged chunk was never sent with sendfile"
    );
}

async fn admin(proxy: &TestProxy, method: &str, endpoint: &str) -> Value {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let url = format!("{}/-/pkg-cache/admin/{endpoint}", proxy.url());
    let response = client::request(method, &url, &[("authorization", &auth)], None).await;
    assert!(
        (200..300).contains(&response.status),
        "{method} {endpoint}: {} {}",
        response.status,
        response.text()
    );
    serde_json::from_slice(&response.body).unwrap_or(Value::Null)
}

/// A proxy in front of `fake` whose admin API takes [`ADMIN_TOKEN`] (the directory holds the
/// token file).
async fn with_admin_token(fake: &FakeGitLab) -> (TestProxy, tempfile::TempDir) {
    let token_dir = tempfile::tempdir().expect("a directory for the token");
    let token_file = token_dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).expect("token file");
    let proxy = TestProxy::start_with(&fake.url(), |c| {
        c.admin_token_file = Some(token_file.clone());
    })
    .await;
    (proxy, token_dir)
}

#[tokio::test]
async fn admin_verify_catches_damage_after_verification_and_drops_the_marks() {
    let fake = gitlab().await;
    let (proxy, _token_dir) = with_admin_token(&fake).await;
    let store = proxy.state.fills.store().clone();
    let (original, meta) = fill(&proxy, &big()).await;
    assert_eq!(get(&proxy, &big()).await.body, original);
    assert!(all_verified(&store, &meta));

    damage(&chunk_path(&proxy, &meta, 2));
    admin(&proxy, "POST", "verify").await;
    let mut report = Value::Null;
    for _ in 0..500 {
        report = admin(&proxy, "GET", "verify").await["report"].clone();
        if report["running"] == Value::Bool(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(report["running"], Value::Bool(false), "{report}");
    let dropped = report["dropped"].as_array().expect("dropped list");
    assert_eq!(dropped.len(), 1, "{report}");
    assert_eq!(dropped[0]["key"], Value::String(big()), "{report}");
    assert!(
        (0..meta.chunk_count).all(|i| !store.verified().is_verified(meta.fill, i)),
        "no mark of the damaged fill survives verify"
    );
    assert!(stored(&store, &big()).is_none());
    let again = get(&proxy, &big()).await;
    assert_eq!((again.status, again.header("x-cache")), (200, Some("miss")));
    assert_eq!(again.body, original);
}

async fn verify_report(proxy: &TestProxy) -> Value {
    admin(proxy, "POST", "verify").await;
    let mut report = Value::Null;
    for _ in 0..500 {
        report = admin(proxy, "GET", "verify").await["report"].clone();
        if report["running"] == Value::Bool(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(report["running"], Value::Bool(false), "{report}");
    report
}

fn kept_of(store: &Store, meta: &ArtifactMeta) -> u32 {
    (0..meta.chunk_count)
        .filter(|&i| store.verified().mapped().get(meta.fill, i).is_some())
        .count() as u32
}

#[tokio::test]
async fn verified_chunks_stay_mapped_until_verify_or_purge_lets_them_go() {
    let fake = gitlab().await;
    let (proxy, _token_dir) = with_admin_token(&fake).await;
    let metrics = proxy.state.metrics.clone();
    let store = proxy.state.fills.store().clone();
    let (original, meta) = fill(&proxy, &big()).await;
    // The first hit checks chunk 0 before answering, then sends it mapped; the rest are
    // read through their CRC. The second hit maps them all.
    assert_eq!(get(&proxy, &big()).await.body, original, "verified");
    assert_eq!(
        kept_of(&store, &meta),
        1,
        "chunk 0, verified before the answer"
    );
    assert_eq!(get(&proxy, &big()).await.body, original, "mapped");
    assert_eq!(kept_of(&store, &meta), meta.chunk_count, "every chunk kept");

    // Unlinked from outside: the open files still hold this fill's bytes, and later hits
    // send them without opening anything.
    let fill_dir = chunk_path(&proxy, &meta, 0)
        .parent()
        .expect("fill directory")
        .to_owned();
    std::fs::remove_dir_all(&fill_dir).expect("remove the chunk files");
    let before = metrics.sendfile_bytes_total();
    let kept = get(&proxy, &big()).await;
    assert_eq!((kept.status, kept.header("x-cache")), (200, Some("hit")));
    assert_eq!(kept.body, original, "the kept files' bytes");
    assert_eq!(metrics.sendfile_bytes_total() - before, BIG_LEN as u64);
    assert_eq!(fake.hits(&big()), 1);

    // `admin verify` reads from the store's files, finds them missing, and drops the
    // artifact with its marks and kept chunks: the next request fetches it again.
    let report = verify_report(&proxy).await;
    assert_eq!(
        report["dropped"][0]["key"],
        Value::String(big()),
        "{report}"
    );
    assert_eq!(kept_of(&store, &meta), 0, "no kept chunk survives verify");
    let again = get(&proxy, &big()).await;
    assert_eq!((again.status, again.header("x-cache")), (200, Some("miss")));
    assert_eq!(again.body, original);
    assert_eq!(fake.hits(&big()), 2);

    // A purge deletes the new fill, and its kept chunks (open files) go with it.
    eventually("the fill is committed", || stored(&store, &big()).is_some()).await;
    let meta = stored(&store, &big()).expect("committed");
    get(&proxy, &big()).await;
    assert_eq!(get(&proxy, &big()).await.body, original);
    assert_eq!(kept_of(&store, &meta), meta.chunk_count);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let purged = client::request(
        "POST",
        &format!("{}/-/pkg-cache/admin/purge", proxy.url()),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        Some(Bytes::from(r#"{"project": "1"}"#)),
    )
    .await;
    assert_eq!(purged.status, 200, "{}", purged.text());
    eventually("the purged fill's kept chunks are dropped", || {
        kept_of(&store, &meta) == 0
    })
    .await;
    let after = get(&proxy, &big()).await;
    assert_eq!((after.status, after.header("x-cache")), (200, Some("miss")));
    assert_eq!(after.body, original);
}

/// Starts a GET of `path` and reads only its first bytes, with a tiny receive window.
async fn stalled(proxy: &TestProxy, path: &str) -> tokio::net::TcpStream {
    let authority = proxy.url().trim_start_matches("http://").to_owned();
    support::stalled_download(&authority, path).await
}

#[tokio::test]
async fn a_client_that_stalls_or_leaves_takes_its_mapped_chunks_with_it() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let metrics = proxy.state.metrics.clone();
    let (original, _) = fill(&proxy, &huge()).await;
    assert_eq!(get(&proxy, &huge()).await.body, original, "verified");

    // A slow reader: gets every byte, and the mappings go with the response.
    let mut slow = stalled(&proxy, &huge()).await;
    eventually("a chunk is mapped for the stalled client", || {
        metrics.file_regions() > 0
    })
    .await;
    let mut rest = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = slow.read(&mut buf).await.expect("read");
        rest.extend_from_slice(&buf[..n]);
        if n == 0 || rest.ends_with(&original[original.len() - 64..]) {
            break;
        }
    }
    assert!(
        rest.ends_with(&original[original.len() - 64..]),
        "the whole body arrived"
    );
    eventually("nothing stays mapped after the response", || {
        metrics.file_regions() == 0
    })
    .await;

    // A client that leaves mid-body.
    let gone = stalled(&proxy, &huge()).await;
    eventually("a chunk is mapped for the stalled client", || {
        metrics.file_regions() > 0
    })
    .await;
    drop(gone);
    eventually("the connection's mapped chunks are released", || {
        metrics.file_regions() == 0
    })
    .await;
    assert_eq!(get(&proxy, &huge()).await.body, original, "still served");
}

#[tokio::test]
async fn a_chunk_file_truncated_under_a_response_never_brings_the_proxy_down() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let metrics = proxy.state.metrics.clone();
    let store = proxy.state.fills.store().clone();
    let (original, meta) = fill(&proxy, &huge()).await;
    assert_eq!(get(&proxy, &huge()).await.body, original);
    assert!(all_verified(&store, &meta));

    let mut slow = stalled(&proxy, &huge()).await;
    eventually("a chunk is mapped for the stalled client", || {
        metrics.file_regions() > 0
    })
    .await;
    // Every chunk file loses its second half while mapped or about to be.
    for index in 0..meta.chunk_count {
        let path = chunk_path(&proxy, &meta, index);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("the chunk file");
        let len = file.metadata().expect("metadata").len();
        file.set_len(len / 2).expect("truncate");
    }
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match slow.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    assert!(received < HUGE_LEN, "the response did not complete");
    assert!(
        !store.verified().is_verified(meta.fill, 0),
        "the shrunken fill is no longer trusted"
    );
    eventually("nothing stays mapped", || metrics.file_regions() == 0).await;

    // The proxy is still up, and the damage is found and repaired on the next requests.
    let mut repaired = false;
    for _ in 0..3 {
        let url = format!("{}{}", proxy.url(), huge());
        if let Ok(again) = client::try_request("GET", &url, &[], None).await {
            if again.status == 200 && again.body == original {
                repaired = true;
                break;
            }
        }
    }
    assert!(repaired, "GitLab's bytes are served again");
    assert!(fake.hits(&huge()) >= 2, "fetched again");
}
