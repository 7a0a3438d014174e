//! Operator control through the admin API and the `admin` commands: stats that add up, purge
//! that touches only what was selected (and lets a moved tag in), verify that drops damage,
//! the integrity list; nothing without the token, and every call audited.

mod support;

use bytes::Bytes;
use serde_json::{json, Value};
use support::client;
use support::events::Events;
use support::fake_gitlab::{FakeGitLab, GemFixture, Visibility};
use support::fixtures::noise;
use support::proxy::TestProxy;

const BIN: &str = env!("CARGO_BIN_EXE_gitlab-pkg-cache");
const ADMIN: &str = "/-/pkg-cache/admin";
const TOKEN: &str = "ops-admin-token";
const TIME: &str = "2024-05-01T10:00:00.000+00:00";
const MOVED: &str = "2024-06-02T08:30:00.000+00:00";
const MODULE: &str = "gitlab.example.com/group/proj";
const GO: &str = "/api/v4/projects/1/packages/go/gitlab.example.com/group/proj/@v";
const GEMS_1: &str = "/api/v4/projects/1/packages/rubygems/gems";
const GEMS_2: &str = "/api/v4/projects/2/packages/rubygems/gems";
const PURGE_MODULE_V1: [&str; 7] = [
    "purge",
    "--project",
    "1",
    "--module",
    MODULE,
    "--version",
    "v1.0.0",
];
const PURGE_RACK_3_0_0: [&str; 7] = [
    "purge",
    "--project",
    "1",
    "--gem",
    "rack",
    "--version",
    "3.0.0",
];

fn module_files(code: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "go.mod".to_owned(),
            format!("module {MODULE}\n\ngo 1.19\n").into_bytes(),
        ),
        ("lib.go".to_owned(), code.as_bytes().to_vec()),
        ("data.bin".to_owned(), noise(200_000, 9)),
    ]
}

async fn gitlab() -> FakeGitLab {
    FakeGitLab::builder()
        .project(1, "group/proj", Visibility::Public)
        .project(2, "group/other", Visibility::Public)
        .go_version(1, "", "v1.0.0", TIME, module_files("package lib\n"))
        .gem(1, GemFixture::new("rack", "3.0.0", noise(40_000, 1)))
        .gem(1, GemFixture::new("rack", "3.1.0", noise(40_000, 2)))
        .gem(2, GemFixture::new("thor", "1.0.0", noise(30_000, 3)))
        .start()
        .await
}

struct Admin {
    proxy: TestProxy,
    token_dir: tempfile::TempDir,
}

impl Admin {
    async fn start(fake: &FakeGitLab) -> Admin {
        Admin::start_with(fake, |_| {}).await
    }

    async fn start_with(
        fake: &FakeGitLab,
        adjust: impl FnOnce(&mut gitlab_pkg_cache::config::Config),
    ) -> Admin {
        let token_dir = tempfile::tempdir().unwrap();
        let token_file = token_dir.path().join("admin-token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let proxy = TestProxy::start_with(&fake.url(), |c| {
            c.admin_token_file = Some(token_file.clone());
            adjust(c);
        })
        .await;
        Admin { proxy, token_dir }
    }

    async fn get(&self, path: &str) -> client::Response {
        client::get(&format!("{}{path}", self.proxy.url()), &[]).await
    }

    async fn call(
        &self,
        method: &str,
        endpoint: &str,
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
            &format!("{}{ADMIN}/{endpoint}", self.proxy.url()),
            &headers,
            body.map(|b| Bytes::from(b.to_string())),
        )
        .await
    }

    async fn json(&self, method: &str, endpoint: &str, body: Option<Value>) -> Value {
        let r = self.call(method, endpoint, Some(TOKEN), body).await;
        assert_eq!(r.status, 200, "{endpoint}: {}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }

    fn stored(&self, key: &str) -> bool {
        matches!(
            self.proxy.state.fills.store().inner().lookup(key),
            Ok(Some(_))
        )
    }

    /// Runs `gitlab-pkg-cache admin …` against this proxy; (exit code, stdout, stderr).
    async fn command(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let token_file = self.token_dir.path().join("admin-token");
        let output = tokio::process::Command::new(BIN)
            .arg("admin")
            .args(args)
            .args(["--proxy", &self.proxy.url()])
            .arg("--admin-token-file")
            .arg(&token_file)
            .env_clear()
            .kill_on_drop(true)
            .output()
            .await
            .expect("the binary runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

/// Fetches everything once (each a miss, then stored) and once more (each a hit).
async fn fill(admin: &Admin) -> Vec<String> {
    let keys = vec![
        format!("{GO}/v1.0.0.info"),
        format!("{GO}/v1.0.0.mod"),
        format!("{GO}/v1.0.0.zip"),
        format!("{GEMS_1}/rack-3.0.0.gem"),
        format!("{GEMS_1}/rack-3.1.0.gem"),
        format!("{GEMS_2}/thor-1.0.0.gem"),
    ];
    for key in &keys {
        assert_eq!(admin.get(key).await.status, 200, "{key}");
        support::eventually("stored", || admin.stored(key)).await;
    }
    for key in &keys {
        assert_eq!(admin.get(key).await.header("x-cache"), Some("hit"), "{key}");
    }
    keys
}

#[tokio::test]
async fn without_the_token_nothing_is_told_or_changed_and_every_call_is_audited() {
    let fake = gitlab().await;
    let admin = Admin::start(&fake).await;
    let keys = fill(&admin).await;
    let (audit, _guard) = Events::capture("audit");
    let calls: [(&str, &str, Option<Value>); 5] = [
        ("GET", "stats", None),
        ("GET", "integrity", None),
        ("POST", "purge", Some(json!({ "project": "1" }))),
        ("POST", "verify", None),
        ("GET", "verify", None),
    ];
    for (method, endpoint, body) in &calls {
        for token in [None, Some("wrong-token")] {
            let r = admin.call(method, endpoint, token, body.clone()).await;
            assert_eq!(r.status, 401, "{method} {endpoint} {token:?}");
            assert!(
                !r.text().contains("artifacts"),
                "nothing told: {}",
                r.text()
            );
        }
    }
    for key in &keys {
        assert!(admin.stored(key), "{key} survived the refused purge");
    }
    assert!(
        admin.proxy.state.integrity.verify_report().is_none(),
        "no verify ran"
    );
    let denied = audit.take();
    assert_eq!(denied.len(), 10, "{denied:?}");
    assert!(denied.iter().all(|e| e["outcome"] == "denied"));
    assert!(!format!("{denied:?}").contains(TOKEN));

    // With the token each call is audited once, under its own name.
    for (method, endpoint, body) in &calls {
        let body = if *endpoint == "purge" {
            Some(json!({ "keys": ["/api/v4/projects/9/packages/rubygems/gems/none-1.0.0.gem"] }))
        } else {
            body.clone()
        };
        admin.json(method, endpoint, body).await;
    }
    let allowed = audit.take();
    let actions: Vec<&str> = allowed.iter().map(|e| e["action"].as_str()).collect();
    assert_eq!(
        actions,
        [
            "stats",
            "integrity",
            "purge",
            "verify.start",
            "verify.report"
        ]
    );
    assert!(allowed.iter().all(|e| e["outcome"] == "ok"), "{allowed:?}");
}

#[tokio::test]
async fn stats_add_up_and_purging_a_project_leaves_the_others() {
    let fake = gitlab().await;
    let admin = Admin::start(&fake).await;
    let keys = fill(&admin).await;

    // Requests are counted as their bodies end, just after the client has read them.
    let mut stats = admin.json("GET", "stats", None).await;
    for _ in 0..500 {
        if stats["since_start"]["requests_from_cache"] == 6 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        stats = admin.json("GET", "stats", None).await;
    }
    let usage = admin.proxy.state.fills.store().usage();
    assert_eq!(stats["store"]["artifacts"], usage.artifacts);
    assert_eq!(stats["store"]["bytes"], usage.bytes);
    let projects = stats["projects"].as_array().unwrap();
    assert_eq!(projects.len(), 2, "{projects:?}");
    let sum = |field: &str| {
        projects
            .iter()
            .map(|p| p[field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(sum("artifacts"), usage.artifacts);
    assert_eq!(sum("bytes"), usage.bytes);
    let since = &stats["since_start"];
    assert_eq!(since["requests_from_cache"], 6);
    assert_eq!(since["requests_from_gitlab"], 6);
    assert_eq!(since["hit_ratio"], 0.5);
    assert_eq!(
        since["bytes_saved_upstream"], usage.bytes,
        "each artifact served once from cache"
    );
    assert_eq!(stats["top_artifacts"].as_array().unwrap().len(), 6);

    // The command prints the same.
    let (code, out, err) = admin.command(&["stats"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("project 1: 5 artifacts"), "{out}");
    assert!(out.contains("project 2: 1 artifacts"), "{out}");
    assert!(out.contains("hit ratio 50.0%"), "{out}");

    // One gem version of project 1, then the rest of project 1; project 2 is never touched.
    let (code, out, err) = admin.command(&PURGE_RACK_3_0_0).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("purged 1 artifacts"), "{out}");
    assert!(!admin.stored(&keys[3]));
    assert!(admin.stored(&keys[4]), "rack 3.1.0 stays");
    let purged = admin
        .json("POST", "purge", Some(json!({ "project": "1" })))
        .await;
    assert_eq!(purged["purged"], 4, "{purged}");
    for key in &keys[..5] {
        assert!(!admin.stored(key), "{key}");
    }
    assert!(admin.stored(&keys[5]), "the other project is intact");
    let after = admin.json("GET", "stats", None).await;
    assert_eq!(after["projects"].as_array().unwrap().len(), 1);
    assert_eq!(after["store"]["artifacts"], 1);
    assert_eq!(admin.get(&keys[5]).await.header("x-cache"), Some("hit"));
}

#[tokio::test]
async fn purge_lets_a_moved_tag_in_and_integrity_lists_it_until_then() {
    let fake = gitlab().await;
    let admin = Admin::start(&fake).await;
    let zip = format!("{GO}/v1.0.0.zip");
    let first = admin.get(&zip).await;
    support::eventually("fingerprinted", || admin.proxy.fingerprinted(&zip)).await;
    fake.move_tag(1, "v1.0.0", MOVED, module_files("package lib // moved\n"));
    admin
        .proxy
        .state
        .fills
        .store()
        .evict(gitlab_pkg_cache::storage::EvictionPolicy {
            max_bytes: Some(0),
            min_free_bytes: None,
            originals: None,
        })
        .await
        .unwrap();
    // The refill is compared with the first copy before any byte leaves: held back.
    let refill = admin.get(&zip).await;
    assert_eq!(refill.status, 502, "{}", refill.text());
    assert!(refill.text().contains("held back"), "{}", refill.text());
    let moved = client::get(&format!("{}{zip}", fake.url()), &[]).await;
    assert_ne!(moved.body, first.body);
    let mut listed = Value::Null;
    for _ in 0..500 {
        listed = admin.json("GET", "integrity", None).await;
        if listed["changes"].as_array().is_some_and(|c| !c.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let change = &listed["changes"][0];
    assert_eq!(change["project"], "1");
    assert_eq!(change["name"], MODULE);
    assert_eq!(change["version"], "v1.0.0");
    let (code, out, err) = admin.command(&["integrity"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("go_zip  {MODULE} v1.0.0")), "{out}");
    assert!(!admin.stored(&zip), "the moved content was not kept");

    support::eventually("the refill is over", || {
        admin.proxy.state.fills.in_flight() == 0
    })
    .await;
    let (code, out, err) = admin.command(&PURGE_MODULE_V1).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("forgot 1 first-copy fingerprints"), "{out}");
    let listed = admin.json("GET", "integrity", None).await;
    assert_eq!(listed["changes"], json!([]));
    let fetched = admin.get(&zip).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body, moved.body, "GitLab's current content");
    support::eventually("the new content is kept", || admin.stored(&zip)).await;
    let hit = admin.get(&zip).await;
    assert_eq!(hit.header("x-cache"), Some("hit"));
    assert_eq!(hit.body, moved.body, "and served from now on");
}

#[tokio::test]
async fn after_eviction_a_moved_tag_and_a_re_pushed_gem_get_the_kept_first_copy_until_purged() {
    let fake = FakeGitLab::builder()
        .project(1, "group/proj", Visibility::Public)
        .project(2, "group/other", Visibility::Public)
        .go_version(1, "", "v1.0.0", TIME, module_files("package lib\n"))
        .gem(1, GemFixture::new("rack", "3.0.0", noise(40_000, 1)))
        .gem(2, GemFixture::new("filler", "1.0.0", noise(900_000, 4)))
        .start()
        .await;
    // 2 MiB of store, half of it set aside for first copies of evicted versions: the
    // filler gem pushes the rest out of the served half.
    let admin = Admin::start_with(&fake, |c| {
        c.store.max_bytes = bytesize::ByteSize::mib(2);
        c.integrity.originals_max_bytes = Some(bytesize::ByteSize::mib(1));
    })
    .await;
    let gem = format!("{GEMS_1}/rack-3.0.0.gem");
    let zip = format!("{GO}/v1.0.0.zip");
    let first_gem = admin.get(&gem).await;
    let first_zip = admin.get(&zip).await;
    for key in [&gem, &zip] {
        support::eventually("fingerprinted", || admin.proxy.fingerprinted(key)).await;
    }

    // The tag is force-pushed and the gem re-uploaded under the same version.
    fake.move_tag(1, "v1.0.0", MOVED, module_files("package lib // moved\n"));
    fake.push_gem(1, GemFixture::new("rack", "3.0.0", noise(40_000, 5)));
    let moved_zip = client::get(&format!("{}{zip}", fake.url()), &[]).await;
    let pushed_gem = client::get(&format!("{}{gem}", fake.url()), &[]).await;
    assert_ne!(moved_zip.body, first_zip.body);
    assert_ne!(pushed_gem.body, first_gem.body);

    // Eviction, by the store's own budget: both leave what is served, their bytes kept.
    let filler = format!("{GEMS_2}/filler-1.0.0.gem");
    assert_eq!(admin.get(&filler).await.status, 200);
    let store = admin.proxy.state.fills.store().clone();
    support::eventually("both evicted, kept as originals", || {
        !admin.stored(&gem) && !admin.stored(&zip) && store.originals("").len() == 2
    })
    .await;
    let stats = admin.json("GET", "stats", None).await;
    assert_eq!(stats["originals"]["artifacts"], 2, "{stats}");
    assert_eq!(
        stats["originals"]["bytes"],
        (first_gem.body.len() + first_zip.body.len()) as u64,
        "{stats}"
    );
    let projects = stats["projects"].as_array().unwrap();
    let summed: u64 = projects.iter().map(|p| p["bytes"].as_u64().unwrap()).sum();
    assert_eq!(summed, stats["store"]["bytes"].as_u64().unwrap(), "{stats}");

    // The refills bring other content: the change is found and listed, and callers get
    // the first copy, from now on as a hit.
    let refill_zip = admin.get(&zip).await;
    let refill_gem = admin.get(&gem).await;
    assert_eq!(refill_zip.status, 200, "{}", refill_zip.text());
    assert_eq!(refill_gem.status, 200, "{}", refill_gem.text());
    assert!(
        refill_zip.body == first_zip.body,
        "the first zip, not the moved one"
    );
    assert!(
        refill_gem.body == first_gem.body,
        "the first gem, not the re-pushed one"
    );
    let listed = admin.json("GET", "integrity", None).await;
    let mut kinds: Vec<&str> = listed["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["gem_file", "go_zip"], "{listed}");
    let metrics = admin.get("/-/pkg-cache/metrics").await.text();
    assert!(
        metrics.contains("gitlab_pkg_cache_integrity_originals_restored_total 2"),
        "{metrics}"
    );
    assert!(store.originals("").is_empty(), "both are served again");
    support::eventually("the restored first copies are pinned from eviction", || {
        let kept = store.kept();
        kept.contains(&zip) && kept.contains(&gem)
    })
    .await;
    for (key, first) in [(&zip, &first_zip), (&gem, &first_gem)] {
        let hit = admin.get(key).await;
        assert_eq!(hit.header("x-cache"), Some("hit"), "{key}");
        assert!(hit.body == first.body, "{key}: still the first copy");
    }

    // The operator's purge lets GitLab's current content in, version by version.
    let (code, out, err) = admin.command(&PURGE_MODULE_V1).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("purged 1 artifacts"), "{out}");
    let fetched = admin.get(&zip).await;
    assert!(fetched.body == moved_zip.body, "the moved tag's content");
    let (code, out, err) = admin.command(&PURGE_RACK_3_0_0).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("purged 1 artifacts"), "{out}");
    let fetched = admin.get(&gem).await;
    assert!(fetched.body == pushed_gem.body, "the re-pushed gem");
    assert!(store.kept().is_empty(), "the purges lifted the pins");
    for (key, now) in [(&zip, &moved_zip), (&gem, &pushed_gem)] {
        support::eventually("the new content is kept", || admin.stored(key)).await;
        let hit = admin.get(key).await;
        assert_eq!(hit.header("x-cache"), Some("hit"), "{key}");
        assert!(hit.body == now.body, "{key}: GitLab's content from now on");
    }
}

#[tokio::test]
async fn verify_drops_a_damaged_artifact_and_keeps_the_rest() {
    let fake = gitlab().await;
    let admin = Admin::start(&fake).await;
    let keys = fill(&admin).await;
    let (code, out, err) = admin.command(&["verify"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("verified 6 of 6 artifacts"), "{out}");
    assert!(out.contains("0 damaged"), "{out}");

    // Flip one byte of the stored gem's first chunk, as a bad disk would.
    let gem = &keys[3];
    let meta = admin
        .proxy
        .state
        .fills
        .store()
        .lookup(gem)
        .await
        .unwrap()
        .unwrap();
    let chunk = admin
        .proxy
        .data_dir
        .path()
        .join("store")
        .join("chunks")
        .join(format!("{:016x}", meta.fill.0))
        .join(format!("{:08x}", 0));
    let mut damaged = std::fs::read(&chunk).expect("the chunk file");
    let last = damaged.len() - 1;
    damaged[last] ^= 0x55;
    std::fs::write(&chunk, damaged).unwrap();

    let (code, out, _) = admin.command(&["verify"]).await;
    assert_eq!(code, Some(1), "damage found: {out}");
    assert!(out.contains("1 damaged and dropped"), "{out}");
    assert!(out.contains(gem.as_str()), "{out}");
    assert!(!admin.stored(gem));
    for key in keys.iter().filter(|k| *k != gem) {
        assert!(admin.stored(key), "{key} kept");
    }
    assert!(admin
        .get("/-/pkg-cache/metrics")
        .await
        .text()
        .contains("gitlab_pkg_cache_corrupt_artifacts_total 1"));
    let again = admin.get(gem).await;
    assert_eq!((again.status, again.header("x-cache")), (200, Some("miss")));
}
