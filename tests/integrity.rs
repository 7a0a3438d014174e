//! Integrity pinning: a moved Git tag or a re-pushed gem is noticed when GitLab's bytes for a
//! version the proxy already cached come back different; it is reported, and the proxy never
//! adopts the new content on its own.

mod support;

use gitlab_pkg_cache::airgap::gosum;
use gitlab_pkg_cache::integrity::{Change, OnChange};
use gitlab_pkg_cache::storage::EvictionPolicy;
use support::client;
use support::fake_gitlab::{FakeGitLab, GemFixture, Visibility};
use support::fixtures::noise;
use support::proxy::TestProxy;

const TIME: &str = "2024-05-01T10:00:00.000+00:00";
const MOVED: &str = "2024-06-02T08:30:00.000+00:00";
const MODULE: &str = "gitlab.example.com/group/proj";
const GO: &str = "/api/v4/projects/1/packages/go/gitlab.example.com/group/proj/@v";
const OTHER_GO: &str = "/api/v4/projects/2/packages/go/gitlab.example.com/group/other/@v";
const GEMS: &str = "/api/v4/projects/1/packages/rubygems/gems";

fn module_files(module: &str, code: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "go.mod".to_owned(),
            format!("module {module}\n\ngo 1.19\n").into_bytes(),
        ),
        ("lib.go".to_owned(), code.as_bytes().to_vec()),
        ("data.bin".to_owned(), noise(300_000, 3)),
    ]
}

async fn gitlab() -> FakeGitLab {
    FakeGitLab::builder()
        .project(1, "group/proj", Visibility::Public)
        .project(2, "group/other", Visibility::Public)
        .go_version(
            1,
            "",
            "v1.0.0",
            TIME,
            module_files(MODULE, "package lib\n\nconst Answer = 42\n"),
        )
        .go_version(
            2,
            "",
            "v1.0.0",
            TIME,
            module_files("gitlab.example.com/group/other", "package other\n"),
        )
        .gem(1, GemFixture::new("rack", "3.0.0", noise(50_000, 1)))
        .start()
        .await
}

async fn get(proxy: &TestProxy, path: &str) -> client::Response {
    client::get(&format!("{}{path}", proxy.url()), &[]).await
}

fn is_stored(proxy: &TestProxy, key: &str) -> bool {
    matches!(proxy.state.fills.store().inner().lookup(key), Ok(Some(_)))
}

async fn evict_everything(proxy: &TestProxy) {
    let report = proxy
        .state
        .fills
        .store()
        .evict(EvictionPolicy {
            max_bytes: Some(0),
            min_free_bytes: None,
            originals: None,
        })
        .await
        .expect("eviction");
    assert!(report.artifacts > 0, "something was evicted");
}

async fn metrics(proxy: &TestProxy) -> String {
    get(proxy, "/-/pkg-cache/metrics").await.text()
}

#[tokio::test]
async fn a_moved_tag_is_held_back_on_refill_until_purged() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let zip = format!("{GO}/v1.0.0.zip");
    let first = get(&proxy, &zip).await;
    assert_eq!((first.status, first.header("x-cache")), (200, Some("miss")));
    support::eventually("the first copy is fingerprinted", || {
        proxy.fingerprinted(&zip)
    })
    .await;
    fake.move_tag(
        1,
        "v1.0.0",
        MOVED,
        module_files(MODULE, "package lib\n\nconst Answer = 43\n"),
    );
    let moved = client::get(&format!("{}{zip}", fake.url()), &[]).await;
    evict_everything(&proxy).await;

    // The refill is read whole and compared before any byte leaves: no moved byte reaches
    // the caller, who is told why (and never a 404, which the go command would skip past).
    let refill = get(&proxy, &zip).await;
    assert_eq!(refill.status, 502, "{}", refill.text());
    assert!(refill.text().contains("held back"), "{}", refill.text());
    assert!(refill.text().contains("v1.0.0.zip"), "names the version");
    assert_eq!(refill.header("x-cache"), Some("miss"));
    let changes = changes_until(&proxy, "the change is listed", |c| c.len() == 1).await;
    assert_eq!(changes[0].how, "refill");
    assert_eq!(changes[0].subject.version, "v1.0.0");
    assert!(!is_stored(&proxy, &zip), "the moved content is not kept");

    // Concurrent callers all get the refusal, and GitLab is asked once for them.
    let before = fake.hits(&zip);
    let answers = futures_util::future::join_all((0..8).map(|_| get(&proxy, &zip))).await;
    for answer in &answers {
        assert_eq!(answer.status, 502, "{}", answer.text());
        assert!(answer.text().contains("held back"), "{}", answer.text());
    }
    assert!(
        fake.hits(&zip) - before <= 8,
        "no retry loop towards GitLab"
    );
    support::eventually("the refills are over", || {
        proxy.state.fills.in_flight() == 0
    })
    .await;

    // The operator's purge (what it does to the fingerprint) lets GitLab's content in.
    assert!(proxy.state.integrity.forget(&zip).await.unwrap());
    let adopted = get(&proxy, &zip).await;
    assert_eq!(
        (adopted.status, adopted.header("x-cache")),
        (200, Some("miss"))
    );
    assert_eq!(adopted.body, moved.body);
    support::eventually("the new copy is stored", || is_stored(&proxy, &zip)).await;
    let hit = get(&proxy, &zip).await;
    assert_eq!(hit.header("x-cache"), Some("hit"));
    assert_eq!(hit.body, moved.body);
}

#[tokio::test]
async fn relayed_moved_tags_are_detected_on_refill_and_never_adopted() {
    let fake = gitlab().await;
    let proxy = TestProxy::start_with(&fake.url(), |c| {
        c.integrity.on_change = OnChange::Relay;
    })
    .await;
    let zip = format!("{GO}/v1.0.0.zip");
    let first = get(&proxy, &zip).await;
    assert_eq!((first.status, first.header("x-cache")), (200, Some("miss")));
    support::eventually("the first copy is fingerprinted", || {
        proxy.fingerprinted(&zip)
    })
    .await;
    let pinned = proxy
        .state
        .integrity
        .first_copy(&zip)
        .await
        .unwrap()
        .unwrap();
    let first_h1 =
        gosum::hash_zip(std::io::Cursor::new(first.body.clone()), MODULE, "v1.0.0").unwrap();
    assert_eq!(pinned.h1.as_deref(), Some(first_h1.as_str()));

    // The tag is force-pushed to another commit; the proxy's copy is then evicted, so the
    // next request fetches the version from GitLab again.
    fake.move_tag(
        1,
        "v1.0.0",
        MOVED,
        module_files(MODULE, "package lib\n\nconst Answer = 43\n"),
    );
    evict_everything(&proxy).await;
    let refill = get(&proxy, &zip).await;
    assert_eq!(refill.status, 200, "GitLab's answer is relayed");
    assert_ne!(refill.body, first.body);
    let moved_h1 =
        gosum::hash_zip(std::io::Cursor::new(refill.body.clone()), MODULE, "v1.0.0").unwrap();

    changes_until(&proxy, "the change is listed", |c| c.len() == 1).await;
    let changes = proxy.state.integrity.changes().await.unwrap();
    let change = &changes[0];
    assert_eq!(change.key, zip);
    assert_eq!(change.subject.project, "1");
    assert_eq!(change.subject.kind, "go_zip");
    assert_eq!(change.subject.name, MODULE);
    assert_eq!(change.subject.version, "v1.0.0");
    assert_eq!(change.how, "refill");
    assert_eq!(change.pinned.h1.as_deref(), Some(first_h1.as_str()));
    assert_eq!(change.seen.h1.as_deref(), Some(moved_h1.as_str()));
    assert!(
        metrics(&proxy)
            .await
            .contains(r#"gitlab_pkg_cache_integrity_changes_total{kind="go_zip"} 1"#),
        "counted"
    );

    // The moved content is not kept: it never becomes the cached copy, and the first
    // copy's fingerprint still stands.
    assert!(!is_stored(&proxy, &zip));
    let again = get(&proxy, &zip).await;
    assert_eq!(again.header("x-cache"), Some("miss"));
    changes_until(
        &proxy,
        "the same change is counted again, not listed twice",
        |c| c.len() == 1 && c[0].times == 2,
    )
    .await;
    assert_eq!(
        proxy.state.integrity.first_copy(&zip).await.unwrap(),
        Some(pinned)
    );

    // A request arriving while that fill is still settling would follow it (uncached).
    support::eventually("the refill is over", || proxy.state.fills.in_flight() == 0).await;

    // Forgetting the first copy (what a purge does) lets GitLab's current content in.
    assert!(proxy.state.integrity.forget(&zip).await.unwrap());
    assert!(proxy.state.integrity.changes().await.unwrap().is_empty());
    let adopted = get(&proxy, &zip).await;
    assert_eq!(adopted.header("x-cache"), Some("miss"));
    support::eventually("the new copy is stored", || is_stored(&proxy, &zip)).await;
    let hit = get(&proxy, &zip).await;
    assert_eq!(hit.header("x-cache"), Some("hit"));
    assert_eq!(
        gosum::hash_zip(std::io::Cursor::new(hit.body), MODULE, "v1.0.0").unwrap(),
        moved_h1
    );
}

#[tokio::test]
async fn same_content_refilled_is_not_a_change() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let paths = [
        format!("{GO}/v1.0.0.info"),
        format!("{GO}/v1.0.0.mod"),
        format!("{GO}/v1.0.0.zip"),
        format!("{OTHER_GO}/v1.0.0.zip"),
        format!("{GEMS}/rack-3.0.0.gem"),
    ];
    for path in &paths {
        assert_eq!(get(&proxy, path).await.status, 200, "{path}");
        support::eventually("fingerprinted", || proxy.fingerprinted(path)).await;
    }
    evict_everything(&proxy).await;
    for path in &paths {
        assert_eq!(get(&proxy, path).await.status, 200, "{path}");
        support::eventually("stored again", || is_stored(&proxy, path)).await;
    }
    assert!(proxy.state.integrity.changes().await.unwrap().is_empty());
    assert!(!metrics(&proxy).await.contains("integrity_changes_total{"));
}

#[tokio::test]
async fn a_re_pushed_gem_is_detected_and_the_tag_move_shows_in_info_and_mod() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let gem = format!("{GEMS}/rack-3.0.0.gem");
    let info = format!("{GO}/v1.0.0.info");
    let module = format!("{GO}/v1.0.0.mod");
    for path in [&gem, &info, &module] {
        assert_eq!(get(&proxy, path).await.status, 200);
        support::eventually("fingerprinted", || proxy.fingerprinted(path)).await;
    }
    fake.push_gem(1, GemFixture::new("rack", "3.0.0", noise(50_000, 2)));
    let mut files = module_files(MODULE, "package lib\n");
    files[0].1 = format!("module {MODULE}\n\ngo 1.22\n").into_bytes();
    fake.move_tag(1, "v1.0.0", MOVED, files);
    evict_everything(&proxy).await;
    for path in [&gem, &info, &module] {
        let held = get(&proxy, path).await;
        assert_eq!(held.status, 502, "{path}: {}", held.text());
        assert!(held.text().contains("held back"), "{path}: {}", held.text());
    }
    let changes = changes_until(&proxy, "three changes are listed", |c| c.len() == 3).await;
    let kinds: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| (c.subject.kind.as_str(), c.subject.name.as_str()))
        .collect();
    assert!(kinds.contains(&("gem_file", "rack")), "{kinds:?}");
    assert!(kinds.contains(&("go_info", MODULE)), "{kinds:?}");
    assert!(kinds.contains(&("go_mod", MODULE)), "{kinds:?}");
    let go_mod = changes.iter().find(|c| c.subject.kind == "go_mod").unwrap();
    assert_eq!(
        go_mod.pinned.h1.as_deref(),
        Some(gosum::hash_go_mod(format!("module {MODULE}\n\ngo 1.19\n").as_bytes()).as_str()),
        "the /go.mod hash as go.sum holds it"
    );
    for path in [&gem, &info, &module] {
        assert!(!is_stored(&proxy, path), "{path} not adopted");
    }
}

#[tokio::test]
async fn a_sampled_recheck_finds_a_moved_tag_while_the_first_copy_is_served() {
    let fake = gitlab().await;
    let proxy = TestProxy::start_with(&fake.url(), |c| c.integrity.recheck = 1).await;
    let info = format!("{GO}/v1.0.0.info");
    let zip = format!("{GO}/v1.0.0.zip");
    let first_info = get(&proxy, &info).await;
    let first_zip = get(&proxy, &zip).await;
    for path in [&info, &zip] {
        support::eventually("fingerprinted", || proxy.fingerprinted(path)).await;
    }

    fake.move_tag(
        1,
        "v1.0.0",
        MOVED,
        module_files(MODULE, "package lib\n\nconst Answer = 43\n"),
    );
    // The hit is answered from the first copy at once; GitLab is asked again behind it.
    let hit = get(&proxy, &info).await;
    assert_eq!(hit.header("x-cache"), Some("hit"));
    assert_eq!(hit.body, first_info.body);
    let changes = changes_until(&proxy, "the recheck reports the moved tag", |c| {
        c.len() == 1
    })
    .await;
    assert_eq!(changes[0].how, "recheck");
    assert_eq!(changes[0].subject.kind, "go_info");
    assert_eq!(changes[0].subject.version, "v1.0.0");
    assert!(fake.hits(&info) >= 2, "GitLab was asked again");

    // The first copies keep being served, the zip included, until an operator acts.
    for (path, body) in [(&info, &first_info.body), (&zip, &first_zip.body)] {
        let again = get(&proxy, path).await;
        assert_eq!(again.header("x-cache"), Some("hit"), "{path}");
        assert_eq!(&again.body, body, "{path}");
    }

    // The version whose change was seen is now the only good copy of the old content: its
    // stored artifacts, the zip included (not rechecked itself), are pinned, survive an
    // eviction of everything and are still served; GitLab is not asked for the zip.
    support::eventually("the changed version is pinned", || {
        let kept = proxy.state.fills.store().kept();
        kept.contains(&info) && kept.contains(&zip)
    })
    .await;
    let zip_hits = fake.hits(&zip);
    let other = format!("{OTHER_GO}/v1.0.0.zip");
    assert_eq!(get(&proxy, &other).await.status, 200);
    support::eventually("another project's zip is stored", || {
        is_stored(&proxy, &other)
    })
    .await;
    evict_everything(&proxy).await;
    assert!(!is_stored(&proxy, &other), "what is not pinned is evicted");
    for (path, body) in [(&info, &first_info.body), (&zip, &first_zip.body)] {
        assert!(is_stored(&proxy, path), "{path}");
        let kept = get(&proxy, path).await;
        assert_eq!(
            (kept.header("x-cache"), &kept.body),
            (Some("hit"), body),
            "{path}"
        );
    }
    assert_eq!(
        fake.hits(&zip),
        zip_hits,
        "the zip was served from the pinned copy"
    );

    // Purging lifts the version's pins with the fingerprint.
    assert!(proxy.state.integrity.forget(&info).await.unwrap());
    let kept = proxy.state.fills.store().kept();
    assert!(!kept.contains(&info) && !kept.contains(&zip), "{kept:?}");
}

/// The listed changes once `condition` holds for them (bounded wait: they are recorded just
/// after the response body ends).
async fn changes_until(
    proxy: &TestProxy,
    what: &str,
    condition: impl Fn(&[Change]) -> bool,
) -> Vec<Change> {
    for _ in 0..500 {
        let changes = proxy.state.integrity.changes().await.expect("change list");
        if condition(&changes) {
            return changes;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}
