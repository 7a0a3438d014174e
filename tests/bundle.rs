//! `export` and `import` between two proxies through bundle files: a full bundle, signed and
//! checked; a delta on top of it; and the refusals — a flipped byte, a cut-off bundle, a delta
//! without its base, a bad signature — each naming what is wrong and leaving nothing behind.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::client;
use support::commands::{self, Finished, TIMEOUT};
use support::fake_gitlab::{FakeGitLab, GemFixture, Visibility};
use support::fixtures::{self, noise};
use support::proxy::TestProxy;

const LIB: &str = "gitlab.example.com/group/lib";
const GO: &str = "/api/v4/projects/10/packages/go/gitlab.example.com/group/lib/@v";
const GEMS: &str = "/api/v4/projects/20/packages/rubygems";
const TIME: &str = "2024-05-01T10:00:00.000+00:00";
const ADMIN_TOKEN: &str = "bundle-admin-token";

async fn gitlab() -> FakeGitLab {
    FakeGitLab::builder()
        .host("gitlab.example.com")
        .project(10, "group/lib", Visibility::Public)
        .project(20, "group/gems", Visibility::Public)
        .go_version(
            10,
            "",
            "v1.0.0",
            TIME,
            fixtures::go_module_files(LIB, "v1.0.0"),
        )
        .go_version(
            10,
            "",
            "v1.1.0",
            TIME,
            fixtures::go_module_files(LIB, "v1.1.0"),
        )
        .gem(20, GemFixture::new("alpha", "1.0.0", noise(300_000, 1)))
        .gem(20, GemFixture::new("beta", "2.0.0", noise(20_000, 2)))
        .start()
        .await
}

fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("admin-token");
    std::fs::write(&path, ADMIN_TOKEN).unwrap();
    path
}

async fn proxy(upstream: &str, dir: &Path) -> TestProxy {
    let token = token_file(dir);
    TestProxy::start_with(upstream, |c| c.admin_token_file = Some(token)).await
}

async fn run(mut command: Command) -> Finished {
    tokio::task::spawn_blocking(move || commands::run_unchecked(&mut command, TIMEOUT))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn tool(dir: &Path, args: &[&str]) -> Command {
    let mut command = commands::clean(env!("CARGO_BIN_EXE_gitlab-pkg-cache"));
    command.args(args).current_dir(dir);
    command
}

fn admin(dir: &Path, proxy: &TestProxy, subcommand: &str, args: &[&str]) -> Command {
    let mut command = tool(dir, &[subcommand, "--proxy", &proxy.url()]);
    command
        .arg("--admin-token-file")
        .arg(token_file(dir))
        .args(args);
    command
}

/// GETs each path and waits until the artifacts' fills have committed.
async fn fetch(proxy: &TestProxy, paths: &[String]) {
    for path in paths {
        let r = client::get(&format!("{}{path}", proxy.url()), &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        if !path.ends_with("/list") {
            support::eventually(&format!("{path} is stored"), || {
                proxy.state.fills.store().keys(path).contains(path)
            })
            .await;
        }
    }
}

fn first_set() -> Vec<String> {
    vec![
        format!("{GO}/list"),
        format!("{GO}/v1.0.0.info"),
        format!("{GO}/v1.0.0.mod"),
        format!("{GO}/v1.0.0.zip"),
        format!("{GEMS}/gems/alpha-1.0.0.gem"),
    ]
}

fn second_set() -> Vec<String> {
    vec![
        format!("{GO}/v1.1.0.info"),
        format!("{GO}/v1.1.0.mod"),
        format!("{GO}/v1.1.0.zip"),
        format!("{GEMS}/gems/beta-2.0.0.gem"),
    ]
}

/// The SHA-256 each proxy holds under `key`.
fn held(proxy: &TestProxy, key: &str) -> Option<[u8; 32]> {
    proxy
        .state
        .fills
        .store()
        .inner()
        .lookup(key)
        .unwrap()
        .map(|m| m.sha256)
}

/// Nothing upstream: the offline side's proxies point at a closed port.
const NOWHERE: &str = "http://127.0.0.1:9";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_then_delta_bundles_carry_identical_bytes_and_import_idempotently() {
    let fake = gitlab().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = proxy(&fake.url(), d).await;
    fetch(&a, &first_set()).await;

    let keygen = run(tool(d, &["keygen", "-o", "signing.key"])).await;
    assert!(keygen.success(), "{}", keygen.report);
    let full = run(admin(
        d,
        &a,
        "export",
        &["--signing-key", "signing.key", "-o", "full.tar"],
    ))
    .await;
    assert!(full.success(), "{}", full.report);
    assert!(
        full.stdout.contains("exported 4 artifacts"),
        "{}",
        full.report
    );
    assert!(d.join("full.tar.sig").exists());

    let b = proxy(NOWHERE, d).await;
    let import = run(admin(
        d,
        &b,
        "import",
        &["--trusted-key", "signing.key.pub", "full.tar"],
    ))
    .await;
    assert!(import.success(), "{}", import.report);
    assert!(import.stdout.contains("4 added"), "{}", import.report);
    for key in first_set().iter().skip(1) {
        assert!(held(&b, key).is_some(), "{key} imported");
        assert_eq!(held(&a, key), held(&b, key), "{key}: identical bytes");
    }
    assert_eq!(
        b.state.fills.store().kept().len(),
        4,
        "imported content is pinned"
    );
    let list_key = format!("{GO}/list");
    assert!(
        b.state
            .fills
            .store()
            .get_record("metadata", list_key.as_bytes())
            .await
            .unwrap()
            .is_some(),
        "the @v/list answer travelled too"
    );

    let again = run(admin(d, &b, "import", &["full.tar"])).await;
    assert!(again.success(), "{}", again.report);
    assert!(
        again.stdout.contains("0 added, 4 already held"),
        "{}",
        again.report
    );
    assert!(again.stdout.contains("imported before"), "{}", again.report);

    // More is fetched on the connected side; the delta ships only what is new.
    fetch(&a, &second_set()).await;
    let delta = run(admin(
        d,
        &a,
        "export",
        &["--since", "full.tar", "-o", "delta.tar"],
    ))
    .await;
    assert!(delta.success(), "{}", delta.report);
    assert!(
        delta.stdout.contains("exported 8 artifacts"),
        "{}",
        delta.report
    );
    assert!(
        delta.stdout.contains("delta on sha256:"),
        "{}",
        delta.report
    );
    assert!(
        std::fs::metadata(d.join("delta.tar")).unwrap().len() < 300_000,
        "the delta does not carry alpha's 300 kB again"
    );

    // A proxy that never saw the base refuses the delta and keeps nothing.
    let c = proxy(NOWHERE, d).await;
    let orphan = run(admin(d, &c, "import", &["delta.tar"])).await;
    assert!(!orphan.success(), "{}", orphan.report);
    assert!(
        orphan.stderr.contains("needs its base sha256:"),
        "{}",
        orphan.report
    );
    assert!(c.state.fills.store().keys("").is_empty());

    let import = run(admin(d, &b, "import", &["delta.tar"])).await;
    assert!(import.success(), "{}", import.report);
    assert!(
        import.stdout.contains("4 added, 4 already held"),
        "{}",
        import.report
    );
    for key in second_set() {
        assert_eq!(held(&a, &key), held(&b, &key), "{key}: identical bytes");
        assert!(held(&b, &key).is_some());
    }
}

/// Where blob `sha`'s bytes start in the tar file.
fn blob_offset(bundle: &Path, wanted: &str) -> u64 {
    let mut archive = tar::Archive::new(std::fs::File::open(bundle).unwrap());
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy().ends_with(wanted) {
            return entry.raw_file_position();
        }
    }
    panic!("no member {wanted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_cut_off_and_badly_signed_bundles_are_refused() {
    let fake = gitlab().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = proxy(&fake.url(), d).await;
    fetch(&a, &first_set()).await;
    assert!(run(tool(d, &["keygen", "-o", "signing.key"]))
        .await
        .success());
    assert!(run(tool(d, &["keygen", "-o", "other.key"])).await.success());
    let export = run(admin(
        d,
        &a,
        "export",
        &["--signing-key", "signing.key", "-o", "good.tar"],
    ))
    .await;
    assert!(export.success(), "{}", export.report);
    let good = std::fs::read(d.join("good.tar")).unwrap();
    let gem_key = format!("{GEMS}/gems/alpha-1.0.0.gem");
    let gem_sha = hex::encode(held(&a, &gem_key).unwrap());
    let zip_key = format!("{GO}/v1.0.0.zip");

    let b = proxy(NOWHERE, d).await;
    let refused = |name: &'static str, needle: String| {
        let command = admin(d, &b, "import", &[name]);
        async move {
            let done = run(command).await;
            assert!(!done.success(), "{name} was accepted\n{}", done.report);
            assert!(
                done.stderr.contains(&needle),
                "{name}: expected {needle:?}\n{}",
                done.report
            );
        }
    };

    // One flipped byte inside the gem's blob.
    let mut flipped = good.clone();
    let at = blob_offset(&d.join("good.tar"), &gem_sha) as usize + 1000;
    flipped[at] ^= 0x01;
    std::fs::write(d.join("flipped.tar"), &flipped).unwrap();
    refused(
        "flipped.tar",
        format!("blob {gem_sha} ({gem_key}) is damaged"),
    )
    .await;

    // Cut off in the middle of the gem's blob.
    let cut = blob_offset(&d.join("good.tar"), &gem_sha) as usize + 5000;
    std::fs::write(d.join("cut.tar"), &good[..cut]).unwrap();
    refused(
        "cut.tar",
        format!("truncated in blob {gem_sha} ({gem_key})"),
    )
    .await;

    // A zip whose bytes still match a rewritten manifest but not its h1: the manifest names
    // an h1 the zip does not hash to.
    let manifest = String::from_utf8(
        gitlab_pkg_cache::cli::bundle::read_manifest(&d.join("good.tar")).unwrap(),
    )
    .unwrap();
    let h1_at = manifest.find("\"h1\": \"h1:").unwrap() + "\"h1\": \"h1:".len();
    let mut wrong_h1 = good.clone();
    let start = blob_offset(&d.join("good.tar"), "manifest.json") as usize;
    wrong_h1[start + h1_at] = if manifest.as_bytes()[h1_at] == b'A' {
        b'B'
    } else {
        b'A'
    };
    std::fs::write(d.join("wrong-h1.tar"), &wrong_h1).unwrap();
    refused("wrong-h1.tar", format!("{zip_key}: Go h1 mismatch")).await;

    // Signed by another key, and a manifest changed after signing.
    std::fs::copy(d.join("good.tar"), d.join("other.tar")).unwrap();
    let other_key = gitlab_pkg_cache::airgap::bundle::signing_key(
        &std::fs::read_to_string(d.join("other.key")).unwrap(),
    )
    .unwrap();
    std::fs::write(
        d.join("other.tar.sig"),
        gitlab_pkg_cache::airgap::bundle::sign(&other_key, manifest.as_bytes()),
    )
    .unwrap();
    let command = admin(
        d,
        &b,
        "import",
        &["--trusted-key", "signing.key.pub", "other.tar"],
    );
    let done = run(command).await;
    assert!(!done.success(), "{}", done.report);
    assert!(
        done.stderr.contains("other.tar: bad signature"),
        "{}",
        done.report
    );
    std::fs::copy(d.join("good.tar.sig"), d.join("wrong-h1.tar.sig")).unwrap();
    let done = run(admin(
        d,
        &b,
        "import",
        &["--trusted-key", "signing.key.pub", "wrong-h1.tar"],
    ))
    .await;
    assert!(!done.success(), "{}", done.report);
    assert!(done.stderr.contains("bad signature"), "{}", done.report);

    // Nothing of any of them became visible or pinned.
    assert!(b.state.fills.store().keys("").is_empty());
    assert!(b.state.fills.store().kept().is_empty());
    let staging = b.data_dir.path().join("bundle-staging");
    let leftovers = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "staging cleaned up");

    // The good one still goes in.
    let done = run(admin(
        d,
        &b,
        "import",
        &["--trusted-key", "signing.key.pub", "good.tar"],
    ))
    .await;
    assert!(done.success(), "{}", done.report);
}

/// An offline proxy (open reads) that only imports.
async fn offline(dir: &Path) -> TestProxy {
    let token = token_file(dir);
    TestProxy::start_with(NOWHERE, |c| {
        c.admin_token_file = Some(token);
        c.offline.enabled = true;
        c.offline.access = gitlab_pkg_cache::airgap::offline::OfflineAccess::Open;
    })
    .await
}

/// The persisted metadata answer a proxy holds under `key`.
async fn record(proxy: &TestProxy, key: &str) -> Option<Vec<u8>> {
    proxy
        .state
        .fills
        .store()
        .get_record("metadata", key.as_bytes())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_bundles_and_late_deltas_roll_nothing_back() {
    let fake = gitlab().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let list = format!("{GO}/list");
    let alpha = format!("{GEMS}/gems/alpha-1.0.0.gem");
    let beta = format!("{GEMS}/gems/beta-2.0.0.gem");

    // Connected side, early: a full bundle, then a delta on it with beta.
    let early = proxy(&fake.url(), d).await;
    fetch(&early, &first_set()).await;
    let old = run(admin(d, &early, "export", &["-o", "old.tar"])).await;
    assert!(old.success(), "{}", old.report);
    fetch(&early, std::slice::from_ref(&beta)).await;
    let delta = run(admin(
        d,
        &early,
        "export",
        &["--since", "old.tar", "-o", "delta.tar"],
    ))
    .await;
    assert!(delta.success(), "{}", delta.report);

    // GitLab moves on: a new tag, and alpha 1.0.0 pushed again with other bytes. A later
    // full bundle carries the new list, v1.2.0 and the new alpha.
    fake.create_tag(
        10,
        "",
        "v1.2.0",
        TIME,
        fixtures::go_module_files(LIB, "v1.2.0"),
    );
    fake.push_gem(20, GemFixture::new("alpha", "1.0.0", noise(300_000, 9)));
    let late = proxy(&fake.url(), d).await;
    let mut newer_set = first_set();
    newer_set.extend([
        format!("{GO}/v1.2.0.info"),
        format!("{GO}/v1.2.0.mod"),
        format!("{GO}/v1.2.0.zip"),
    ]);
    fetch(&late, &newer_set).await;
    let new = run(admin(d, &late, "export", &["-o", "new.tar"])).await;
    assert!(new.success(), "{}", new.report);
    let newest_list = record(&late, &list).await.expect("the newer list is held");
    assert_ne!(record(&early, &list).await, Some(newest_list.clone()));
    assert_ne!(held(&early, &alpha), held(&late, &alpha));

    // Offline side: the newer full bundle first, then the older ones arrive.
    let b = offline(d).await;
    let imported = run(admin(d, &b, "import", &["old.tar"])).await;
    assert!(imported.success(), "{}", imported.report);
    let imported = run(admin(d, &b, "import", &["new.tar"])).await;
    assert!(imported.success(), "{}", imported.report);
    // alpha 1.0.0 was pushed again with other bytes: the newer bundle's copy is held back
    // like a refill from GitLab would be, and listed; the first copy stays.
    assert!(
        imported.stdout.contains("1 held back") && imported.stdout.contains(&alpha),
        "{}",
        imported.report
    );
    assert_eq!(
        held(&b, &alpha),
        held(&early, &alpha),
        "the first copy stays"
    );
    let changes = run(tool(
        d,
        &[
            "admin",
            "integrity",
            "--proxy",
            &b.url(),
            "--admin-token-file",
            token_file(d).to_str().unwrap(),
            "--json",
        ],
    ))
    .await;
    assert!(changes.success(), "{}", changes.report);
    let listed: serde_json::Value = serde_json::from_str(&changes.stdout).unwrap();
    let listed = listed["changes"].as_array().cloned().unwrap_or_default();
    assert!(
        listed
            .iter()
            .any(|c| c["key"] == alpha.as_str() && c["how"] == "bundle"),
        "{}",
        changes.stdout
    );
    // The operator takes the new copy: purge the version, import again.
    let purged = run(tool(
        d,
        &[
            "admin",
            "purge",
            "--proxy",
            &b.url(),
            "--admin-token-file",
            token_file(d).to_str().unwrap(),
            "--project",
            "20",
            "--gem",
            "alpha",
            "--version",
            "1.0.0",
        ],
    ))
    .await;
    assert!(purged.success(), "{}", purged.report);
    let imported = run(admin(d, &b, "import", &["new.tar"])).await;
    assert!(imported.success(), "{}", imported.report);
    assert_eq!(
        held(&b, &alpha),
        held(&late, &alpha),
        "after the purge, the newer content is taken"
    );
    let served_list = |b: &TestProxy| {
        let url = format!("{}{list}", b.url());
        async move { client::get(&url, &[]).await.text() }
    };
    assert_eq!(served_list(&b).await, "v1.0.0\nv1.2.0\n");

    for late_arrival in ["delta.tar", "old.tar"] {
        let done = run(admin(d, &b, "import", &[late_arrival])).await;
        assert!(done.success(), "{late_arrival}: {}", done.report);
        assert!(
            done.stdout.contains("older than a bundle imported before"),
            "{late_arrival}: {}",
            done.report
        );
        assert_eq!(
            served_list(&b).await,
            "v1.0.0\nv1.2.0\n",
            "{late_arrival}: no version lost"
        );
        assert_eq!(
            record(&b, &list).await.as_deref(),
            Some(newest_list.as_slice()),
            "{late_arrival}: the newer @v/list answer stays"
        );
        assert_eq!(
            held(&b, &alpha),
            held(&late, &alpha),
            "{late_arrival}: the newer gem stays"
        );
        let gem = client::get(&format!("{}{alpha}", b.url()), &[]).await;
        assert_eq!(
            Some(<[u8; 32]>::from(<sha2::Sha256 as sha2::Digest>::digest(
                &gem.body
            ))),
            held(&late, &alpha),
            "{late_arrival}: the newer gem is served"
        );
    }
    // What only the late delta had is added.
    assert_eq!(held(&b, &beta), held(&early, &beta));
    assert!(held(&b, &beta).is_some());
}
