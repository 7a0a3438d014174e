//! The artifact memory tier through the proxy: small artifacts kept on store and on hit and
//! served without the store, large ones kept as records only, nothing served from memory
//! once the store lets go of it, damaged bytes never admitted, and every memory hit still
//! authorized for its caller.

mod support;

use support::eventually;
use support::fixtures::noise;

use gitlab_pkg_cache::storage::Store;
use support::client;
use support::fake_gitlab::{Access, FakeGitLab, GemFixture, TokenKind, TokenState, Visibility};
use support::proxy::TestProxy;

const TIME: &str = "2024-05-01T10:00:00.000+00:00";
const PUBLIC_GO: &str = "/api/v4/projects/1/packages/go/gitlab.example.com/group/proj/@v";
const PRIVATE_GO: &str = "/api/v4/projects/2/packages/go/gitlab.example.com/group/secret/@v";
const GEMS: &str = "/api/v4/projects/1/packages/rubygems/gems";
const READER: &str = "glpat-reader";
const OUTSIDER: &str = "glpat-outsider";

fn module_files(module: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "go.mod".to_owned(),
            format!("module {module}\n\ngo 1.19\n").into_bytes(),
        ),
        ("data.bin".to_owned(), noise(400_000, 3)),
    ]
}

/// A public and a private Go module, a small and a large gem, a reader of the private
/// project and a token that may read nothing of it.
async fn gitlab() -> FakeGitLab {
    FakeGitLab::builder()
        .project(1, "group/proj", Visibility::Public)
        .project(2, "group/secret", Visibility::Private)
        .go_version(
            1,
            "",
            "v1.0.0",
            TIME,
            module_files("gitlab.example.com/group/proj"),
        )
        .go_version(
            2,
            "",
            "v1.0.0",
            TIME,
            module_files("gitlab.example.com/group/secret"),
        )
        .gem(1, GemFixture::new("small", "1.0.0", noise(20_000, 1)))
        .gem(1, GemFixture::new("large", "1.0.0", noise(900_000, 2)))
        .token(
            READER,
            TokenKind::Personal {
                scopes: vec!["read_api"],
            },
            TokenState::Active,
            &[(2, Access::Reporter)],
        )
        .token(
            OUTSIDER,
            TokenKind::Personal {
                scopes: vec!["read_api"],
            },
            TokenState::Active,
            &[],
        )
        .start()
        .await
}

async fn get(proxy: &TestProxy, path: &str, headers: &[(&str, &str)]) -> client::Response {
    client::get(&format!("{}{path}", proxy.url()), headers).await
}

fn is_stored(store: &Store, key: &str) -> bool {
    matches!(store.inner().lookup(key), Ok(Some(_)))
}

/// Deletes every chunk file under the proxy's store: what is served afterwards did not come
/// from disk.
fn delete_chunk_files(proxy: &TestProxy) {
    let chunks = proxy.data_dir.path().join("store").join("chunks");
    for fill in std::fs::read_dir(&chunks).expect("chunk directory") {
        std::fs::remove_dir_all(fill.expect("entry").path()).expect("remove fill");
    }
}

#[tokio::test]
async fn small_artifacts_are_kept_on_store_and_served_from_memory() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let store = proxy.state.fills.store().clone();
    let small = [
        format!("{PUBLIC_GO}/v1.0.0.info"),
        format!("{PUBLIC_GO}/v1.0.0.mod"),
        format!("{GEMS}/small-1.0.0.gem"),
    ];
    let mut first = Vec::new();
    for path in &small {
        let r = get(&proxy, path, &[]).await;
        assert_eq!(
            (r.status, r.header("x-cache")),
            (200, Some("miss")),
            "{path}"
        );
        eventually("the fill is committed", || is_stored(&store, path)).await;
        first.push(r);
    }
    let zip = format!("{PUBLIC_GO}/v1.0.0.zip");
    assert_eq!(get(&proxy, &zip, &[]).await.status, 200);
    eventually("the zip is committed", || is_stored(&store, &zip)).await;
    // Kept as the fill commits, just after its last byte went out.
    let artifacts = proxy.state.artifacts.clone();
    eventually("every fill is kept in memory", || {
        small
            .iter()
            .chain([&zip])
            .all(|path| artifacts.get(path).is_some())
    })
    .await;
    for path in &small {
        let kept = artifacts.get(path).expect("kept on store");
        assert!(kept.body.is_some(), "{path}: bytes kept");
    }
    let zip_kept = artifacts.get(&zip).expect("record kept");
    assert!(
        zip_kept.body.is_none(),
        "a 400 kB zip keeps only its record"
    );

    // Without their chunk files, the small ones are still hits with the same bytes and
    // headers: they came from memory. The zip is not: its chunks are gone.
    delete_chunk_files(&proxy);
    fake.reset_hits();
    for (path, before) in small.iter().zip(&first) {
        let r = get(&proxy, path, &[]).await;
        assert_eq!(
            (r.status, r.header("x-cache")),
            (200, Some("hit")),
            "{path}"
        );
        assert_eq!(r.body, before.body, "{path}");
        assert_eq!(r.header("content-type"), before.header("content-type"));
        let length = before.body.len().to_string();
        assert_eq!(r.header("content-length"), Some(length.as_str()));
    }
    let head = client::request("HEAD", &format!("{}{}", proxy.url(), small[0]), &[], None).await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(fake.total_hits(), 0, "GitLab was not asked");
    let zip_again = get(&proxy, &zip, &[]).await;
    assert_eq!(zip_again.status, 200);
    assert_eq!(
        zip_again.header("x-cache"),
        Some("miss"),
        "a zip whose chunks vanished is fetched again"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn small_artifacts_are_kept_on_their_first_hit_after_a_restart() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let info = format!("{PUBLIC_GO}/v1.0.0.info");
    let miss = get(&proxy, &info, &[]).await;
    let store = proxy.state.fills.store().clone();
    eventually("the fill is committed", || is_stored(&store, &info)).await;
    drop(store);
    let data_dir = proxy.stop().await;

    let proxy = TestProxy::start_in(&fake.url(), data_dir, |_| {}).await;
    assert!(
        proxy.state.artifacts.get(&info).is_none(),
        "memory starts empty"
    );
    let hit = get(&proxy, &info, &[]).await;
    assert_eq!(
        (hit.header("x-cache"), &hit.body),
        (Some("hit"), &miss.body)
    );
    let kept = proxy.state.artifacts.get(&info).expect("kept on hit");
    assert_eq!(kept.body.as_deref(), Some(&miss.body[..]));
    proxy.stop().await;
}

#[tokio::test]
async fn the_size_settings_decide_what_keeps_its_bytes() {
    let fake = gitlab().await;
    // 16 KiB for artifacts at large, a sixteenth of 512 KiB (32 KiB) for descriptors.
    let proxy = TestProxy::start_with(&fake.url(), |c| {
        c.cache.artifact_memory_max_bytes = bytesize::ByteSize::kib(512);
        c.cache.artifact_memory_entry_max_bytes = bytesize::ByteSize::kib(16);
    })
    .await;
    let gem = format!("{GEMS}/small-1.0.0.gem");
    let info = format!("{PUBLIC_GO}/v1.0.0.info");
    let artifacts = proxy.state.artifacts.clone();
    for path in [&gem, &info] {
        assert_eq!(get(&proxy, path, &[]).await.status, 200);
        eventually("the fill is kept", || artifacts.get(path).is_some()).await;
    }
    let gem_kept = proxy.state.artifacts.get(&gem).expect("record kept");
    assert!(gem_kept.body.is_none(), "20 kB is over the 16 KiB setting");
    assert!(proxy.state.artifacts.get(&info).unwrap().body.is_some());
    // Served from the store, correctly, all the same.
    let hit = get(&proxy, &gem, &[]).await;
    assert_eq!(
        (hit.header("x-cache"), hit.body.len()),
        (Some("hit"), 20_000)
    );
    assert!(proxy.state.artifacts.weighted_size() <= 512 * 1024);

    let off = TestProxy::start_with(&fake.url(), |c| {
        c.cache.artifact_memory_max_bytes = bytesize::ByteSize::b(0);
    })
    .await;
    let store = off.state.fills.store().clone();
    assert_eq!(get(&off, &info, &[]).await.status, 200);
    eventually("the fill is committed", || is_stored(&store, &info)).await;
    assert!(
        off.state.artifacts.get(&info).is_none(),
        "a zero budget keeps nothing"
    );
    assert_eq!(get(&off, &info, &[]).await.header("x-cache"), Some("hit"));
    proxy.stop().await;
    off.stop().await;
}

#[tokio::test]
async fn what_the_store_lets_go_of_is_not_served_from_memory() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let store = proxy.state.fills.store().clone();
    let gem = format!("{GEMS}/small-1.0.0.gem");
    let info = format!("{PUBLIC_GO}/v1.0.0.info");
    let artifacts = proxy.state.artifacts.clone();
    for path in [&gem, &info] {
        assert_eq!(get(&proxy, path, &[]).await.status, 200);
        eventually("the fill is kept", || artifacts.get(path).is_some()).await;
    }
    // Removed from the store behind the memory tier's back (as eviction or a purge does):
    // the kept copy is not served, GitLab is asked again.
    assert!(store.remove(&gem).await.expect("remove"));
    fake.reset_hits();
    let again = get(&proxy, &gem, &[]).await;
    assert_eq!((again.status, again.header("x-cache")), (200, Some("miss")));
    assert_eq!(fake.hits(&gem), 1);

    // The invalidation call drops the entry at once.
    proxy.state.artifacts.invalidate(&info);
    assert!(proxy.state.artifacts.get(&info).is_none());
    let hit = get(&proxy, &info, &[]).await;
    assert_eq!(hit.header("x-cache"), Some("hit"), "still in the store");
    assert!(
        proxy.state.artifacts.get(&info).is_some(),
        "kept again on hit"
    );

    // Eviction over the disk budget: the evicted artifact leaves memory's service too.
    let evicted = store
        .evict(gitlab_pkg_cache::storage::EvictionPolicy {
            max_bytes: Some(0),
            min_free_bytes: None,
            originals: None,
        })
        .await
        .expect("evict");
    // The refetched gem may still be committing; the `.info` is certainly gone.
    assert!(evicted.artifacts >= 1);
    assert!(!is_stored(&store, &info));
    fake.reset_hits();
    let after = get(&proxy, &info, &[]).await;
    assert_eq!((after.status, after.header("x-cache")), (200, Some("miss")));
    assert_eq!(fake.hits(&info), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn damaged_bytes_on_disk_never_reach_memory() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let gem = format!("{GEMS}/small-1.0.0.gem");
    let original = get(&proxy, &gem, &[]).await;
    let store = proxy.state.fills.store().clone();
    eventually("the fill is committed", || is_stored(&store, &gem)).await;
    drop(store);
    let data_dir = proxy.stop().await;
    {
        // One flipped byte in the only chunk, as a bad disk would.
        let chunks = data_dir.path().join("store").join("chunks");
        let fill = std::fs::read_dir(&chunks)
            .expect("chunk directory")
            .next()
            .expect("one fill")
            .expect("entry")
            .path();
        let chunk = fill.join(format!("{:08x}", 0));
        let mut damaged = std::fs::read(&chunk).expect("chunk");
        damaged[100] ^= 0x01;
        std::fs::write(&chunk, damaged).expect("write back");
    }
    fake.reset_hits();
    let proxy = TestProxy::start_in(&fake.url(), data_dir, |_| {}).await;
    let served = get(&proxy, &gem, &[]).await;
    assert_eq!(
        (served.status, served.header("x-cache")),
        (200, Some("miss"))
    );
    assert_eq!(
        served.body, original.body,
        "GitLab's bytes, not the damaged ones"
    );
    assert_eq!(fake.hits(&gem), 1);
    let artifacts = proxy.state.artifacts.clone();
    eventually("the refetched gem is kept", || {
        artifacts.get(&gem).is_some()
    })
    .await;
    let kept = artifacts.get(&gem).expect("kept");
    assert_eq!(kept.body.as_deref(), Some(&original.body[..]));
    proxy.stop().await;
}

#[tokio::test]
async fn a_memory_hit_is_authorized_for_its_caller() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let info = format!("{PRIVATE_GO}/v1.0.0.info");
    let reader = get(&proxy, &info, &[("private-token", READER)]).await;
    assert_eq!(reader.status, 200);
    let artifacts = proxy.state.artifacts.clone();
    eventually("the fill is kept", || artifacts.get(&info).is_some()).await;
    assert!(artifacts.get(&info).unwrap().body.is_some());

    fake.reset_hits();
    let again = get(&proxy, &info, &[("private-token", READER)]).await;
    assert_eq!((again.status, again.header("x-cache")), (200, Some("hit")));
    assert_eq!(fake.total_hits(), 0, "a remembered decision, from memory");

    // Callers GitLab refuses get GitLab's refusal, never the kept bytes.
    let anonymous = get(&proxy, &info, &[]).await;
    assert_eq!(
        (anonymous.status, anonymous.header("x-cache")),
        (401, Some("refused"))
    );
    assert_ne!(anonymous.body, reader.body);
    let outsider = get(&proxy, &info, &[("private-token", OUTSIDER)]).await;
    assert_eq!(outsider.header("x-cache"), Some("refused"));
    assert_eq!(
        outsider.status, 404,
        "GitLab hides the project from non-members"
    );
    assert_eq!(
        fake.hits(&format!("{PRIVATE_GO}/list")),
        2,
        "each stranger was asked about at GitLab, with the module's list"
    );
    assert_eq!(
        fake.hits(&info),
        0,
        "no stranger's check fetched the artifact"
    );
    proxy.stop().await;
}
