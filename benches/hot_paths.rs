//! Micro-benchmarks of the proxy's per-request hot paths, and hit throughput through the whole proxy.
//!
//! ```text
//! cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Every request pays for route parsing, the credential fingerprint and the authorization
//! lookup; a metadata hit adds the memory tier, a small artifact's hit the artifact memory
//! tier, a large artifact's hit a store read. The last group
//! puts them together: an in-process proxy in front of the fake GitLab, read by a pooled
//! hyper client over loopback, reported in bytes per second.

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gitlab_pkg_cache::auth::{Caller, DecisionKey, FingerprintKey, Gate};
use gitlab_pkg_cache::cache::artifact_memory::ArtifactMemory;
use gitlab_pkg_cache::cache::fill::CHUNK_SIZE;
use gitlab_pkg_cache::cache::memory::{CachedResponse, MemoryTier};
use gitlab_pkg_cache::cache::reader::PIECE;
use gitlab_pkg_cache::config::StoreConfig;
use gitlab_pkg_cache::route::{Api, Endpoint};
use gitlab_pkg_cache::storage::{ArtifactStore, Cached, Commit, MemoryStore, SledStore, Store};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use support::fake_gitlab::{Access, FakeGitLab, GemFixture, TokenKind, TokenState, Visibility};
use support::proxy::TestProxy;
use tokio::runtime::Runtime;

const MB: usize = 1 << 20;
const TOKEN: &str = "glpat-bench-0123456789abcdef";
const GO_ZIP: &str =
    "/api/v4/projects/bench%2Fprivate/packages/go/gitlab.example.com/bench/private/@v/v1.2.3.zip";
const GEM: &str = "/api/v4/projects/20/packages/rubygems/gems/bench-1mb-1.0.0.gem";
const DEPENDENCIES: &str =
    "/api/v4/projects/20/packages/rubygems/api/v1/dependencies?gems=rails,rack,activesupport,bundler";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The headers a client typically sends, with a credential.
fn request_headers(authorization: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
    headers.insert(
        "user-agent",
        HeaderValue::from_static("bundler/2.3.15 rubygems/3.3.15"),
    );
    headers.insert("accept", HeaderValue::from_static("*/*"));
    headers.insert(
        "accept-encoding",
        HeaderValue::from_static("gzip;q=1.0,deflate;q=0.6"),
    );
    headers.insert("authorization", HeaderValue::from_static(authorization));
    headers
}

fn route_parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_parse");
    for (name, uri) in [
        ("go_zip", GO_ZIP),
        ("gem", GEM),
        ("dependencies", DEPENDENCIES),
    ] {
        let uri: Uri = uri.parse().expect("a valid URI");
        group.bench_function(name, |b| {
            b.iter(|| Endpoint::parse(black_box(&Method::GET), black_box(&uri)))
        });
    }
    group.finish();
}

fn fingerprint(c: &mut Criterion) {
    let key = FingerprintKey::random();
    let mut group = c.benchmark_group("fingerprint");
    let gem = request_headers("glpat-bench-0123456789abcdef");
    group.bench_function("authorization_header", |b| {
        b.iter(|| Caller::from_request(&key, black_box(&gem), None))
    });
    let go = request_headers("Basic ZGVtbzpnbHBhdC1iZW5jaC0wMTIzNDU2Nzg5YWJjZGVm");
    group.bench_function("basic_auth_and_query", |b| {
        b.iter(|| Caller::from_request(&key, black_box(&go), black_box(Some("go-get=1"))))
    });
    group.finish();
}

fn authorization(c: &mut Criterion) {
    let runtime = runtime();
    let gate = Gate::new(
        Duration::from_secs(30),
        Duration::from_secs(20),
        1_000_000,
        None,
    );
    let caller = Caller::from_request(
        &FingerprintKey::random(),
        &request_headers("glpat-bench-0123456789abcdef"),
        None,
    );
    let decision = DecisionKey {
        caller: caller.fingerprint,
        project: Arc::from("20"),
        api: Api::RubyGems,
    };
    runtime.block_on(gate.accept(decision.clone()));
    assert!(runtime.block_on(gate.is_accepted(&decision)));
    c.bench_function("gate_is_accepted_warm", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(gate.is_accepted(black_box(&decision)).await) })
    });
}

fn memory_tier(c: &mut Criterion) {
    let runtime = runtime();
    let tier = MemoryTier::new(256 * MB as u64, Duration::from_secs(3600), None);
    let key = "/api/v4/projects/20/packages/go/gitlab.example.com/bench/private/@v/list";
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    let list: String = (0..20).map(|minor| format!("v1.{minor}.0\n")).collect();
    let entry = Arc::new(CachedResponse::new(
        &headers,
        Bytes::from(list),
        tier.now_ms(),
    ));
    runtime.block_on(tier.insert(key.to_owned(), entry));
    c.bench_function("memory_tier_get_hit", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(tier.get(black_box(key)).await.is_some()) })
    });
}

/// The artifact memory tier's hit: the entry, then the store's in-memory check that the
/// same fill is still current (no sled, no blocking pool).
fn artifact_memory(c: &mut Criterion) {
    let store = MemoryStore::new();
    let key = "/api/v4/projects/20/packages/go/gitlab.example.com/bench/private/@v/v1.0.0.info";
    let info = Bytes::from_static(br#"{"Version":"v1.0.0","Time":"2024-05-01T10:00:00Z"}"#);
    let fill = store.begin_fill(key).expect("begin fill");
    store.write_chunk(fill, 0, &info).expect("write chunk");
    let commit = Commit {
        len: info.len() as u64,
        sha256: Sha256::digest(&info).into(),
        headers: vec![("content-type".into(), "application/json".into())],
    };
    let meta = store.commit_fill(key, fill, commit).expect("commit");
    let memory = ArtifactMemory::new(64 * MB as u64, 256 * 1024);
    memory.keep(key, &meta, Some(info));
    c.bench_function("artifact_memory_hit", |b| {
        b.iter(|| {
            let kept = memory.get(black_box(key)).expect("kept");
            assert!(store.touch_if_current(key, kept.fill));
            black_box(kept.body.as_ref().map(Bytes::len))
        })
    });
}

fn store_read(c: &mut Criterion) {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("temporary directory");
    let cache = StoreConfig::default().sled_cache_bytes.as_u64();
    let sled = Arc::new(SledStore::open(&dir.path().join("store"), cache).expect("sled store"));
    let data = support::fixtures::noise(MB, 11);
    let key = "/api/v4/projects/20/packages/rubygems/gems/bench-1mb-1.0.0.gem";
    let fill = sled.begin_fill(key).expect("begin fill");
    for (index, chunk) in data.chunks(CHUNK_SIZE).enumerate() {
        let index = u32::try_from(index).expect("few chunks");
        sled.write_chunk(fill, index, chunk).expect("write chunk");
    }
    let commit = Commit {
        len: data.len() as u64,
        sha256: Sha256::digest(&data).into(),
        headers: vec![("content-type".into(), "application/octet-stream".into())],
    };
    sled.commit_fill(key, fill, commit).expect("commit");
    sled.flush().expect("flush");
    let store = Store::new(sled.clone());

    let mut group = c.benchmark_group("store_read_1mb");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("store_async", |b| {
        b.to_async(&runtime).iter(|| async {
            let (meta, _pin) = store
                .lookup_pinned(key)
                .await
                .expect("lookup")
                .expect("stored");
            let mut read = 0;
            for index in 0..meta.chunk_count {
                let chunk = store
                    .read_chunk(meta.fill, index)
                    .await
                    .expect("read")
                    .expect("chunk present");
                read += chunk.len();
            }
            assert_eq!(read, MB);
        })
    });
    // What a response reads now: each chunk opened once, then 64 KiB pieces into one
    // reused buffer, from the page cache where it can (CRC checked as it goes).
    group.bench_function("pieces", |b| {
        let mut buf = vec![0u8; PIECE];
        b.iter(|| {
            let (meta, _pin) = sled.lookup_pinned(key).expect("lookup").expect("stored");
            let mut read = 0;
            for index in 0..meta.chunk_count {
                let mut chunk = sled
                    .open_chunk(meta.fill, index)
                    .expect("open")
                    .expect("chunk present");
                loop {
                    let n = match chunk.read_cached(&mut buf).expect("read") {
                        Cached::Read(n) => n,
                        Cached::WouldBlock => chunk.read(&mut buf).expect("read"),
                    };
                    if n == 0 {
                        break;
                    }
                    read += n;
                }
            }
            assert_eq!(read, MB);
        })
    });
    group.bench_function("sled_direct", |b| {
        b.iter(|| {
            let (meta, _pin) = sled.lookup_pinned(key).expect("lookup").expect("stored");
            let mut read = 0;
            for index in 0..meta.chunk_count {
                read += sled
                    .read_chunk(meta.fill, index)
                    .expect("read")
                    .expect("chunk present")
                    .len();
            }
            assert_eq!(read, MB);
        })
    });
    group.finish();
}

/// Cache hits through the whole proxy: route, fingerprint, gate, store, hyper, loopback.
fn proxy_hits(c: &mut Criterion) {
    let runtime = runtime();
    // 20 kB: the memory tier; 1 MiB and 20 MiB: the store, read in pieces.
    let sizes = [("20kb", 20_000), ("1mb", MB), ("20mb", 20 * MB)];
    let (fake, proxy) = runtime.block_on(async {
        let mut builder = FakeGitLab::builder().project(20, "bench/private", Visibility::Private);
        for (index, (name, len)) in sizes.iter().enumerate() {
            let gem = GemFixture::new(
                &format!("bench-{name}"),
                "1.0.0",
                support::fixtures::noise(*len, index as u64),
            );
            builder = builder.gem(20, gem);
        }
        let fake = builder
            .token(
                TOKEN,
                TokenKind::Personal {
                    scopes: vec!["read_api"],
                },
                TokenState::Active,
                &[(20, Access::Reporter)],
            )
            .start()
            .await;
        let proxy = TestProxy::start_with(&fake.url(), |config| {
            // Production's page cache, not the tests' small one.
            config.store.sled_cache_bytes = StoreConfig::default().sled_cache_bytes;
        })
        .await;
        (fake, proxy)
    });
    let client: Client<HttpConnector, Empty<Bytes>> = {
        let _entered = runtime.enter();
        Client::builder(TokioExecutor::new()).build_http()
    };
    let get = |url: String| {
        let client = client.clone();
        async move {
            let request = Request::get(url)
                .header("authorization", TOKEN)
                .body(Empty::new())
                .expect("a valid request");
            let response = client.request(request).await.expect("proxy answers");
            assert_eq!(response.status(), 200);
            let cache = response.headers().get("x-cache").cloned();
            let mut body = response.into_body();
            let mut len = 0;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.expect("body").into_data() {
                    len += data.len();
                }
            }
            (len, cache)
        }
    };

    let mut group = c.benchmark_group("proxy_hit");
    for (name, len) in sizes {
        let url = format!(
            "{}/api/v4/projects/20/packages/rubygems/gems/bench-{name}-1.0.0.gem",
            proxy.url()
        );
        // Warm: the first request fills the store; the fill commits just after the last
        // byte reaches the client, so a request right after it may still follow the fill.
        let mut outcome = String::new();
        for _ in 0..100 {
            let (read, cache) = runtime.block_on(get(url.clone()));
            assert_eq!(read, len);
            outcome = cache
                .and_then(|v| v.to_str().ok().map(str::to_owned))
                .unwrap_or_default();
            if outcome == "hit" {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(outcome, "hit", "{name} is not served from the store");
        group.throughput(Throughput::Bytes(len as u64));
        if len > MB {
            group.sample_size(10);
        }
        group.bench_with_input(BenchmarkId::new("gem", name), &url, |b, url| {
            b.to_async(&runtime).iter(|| async {
                let (read, _) = get(url.clone()).await;
                assert_eq!(read, len);
            })
        });
    }
    group.finish();
    let gem_fetches = fake.hits_prefix("/api/v4/projects/20/packages/rubygems/gems/");
    assert_eq!(
        gem_fetches,
        sizes.len() as u64,
        "every measured request was a hit"
    );
    runtime.block_on(async {
        drop(client);
        proxy.stop().await;
        fake.shutdown().await;
    });
}

criterion_group!(
    benches,
    route_parsing,
    fingerprint,
    authorization,
    memory_tier,
    artifact_memory,
    store_read,
    proxy_hits
);
criterion_main!(benches);
