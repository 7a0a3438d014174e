//! `gitlab-pkg-cache warm` against a proxy in front of the fake GitLab: a go.sum written by
//! the real go command and a Gemfile.lock with CHECKSUMS are fetched, verified and pinned; a
//! wrong `h1:` and a wrong gem checksum fail the run and name the item.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::commands::{self, Finished, TIMEOUT};
use support::fake_gitlab::{FakeGitLab, GemFixture, Visibility};
use support::fixtures::{self, noise};
use support::proxy::TestProxy;

const LIB: &str = "gitlab.example.com/group/MixedLib";
const TOOL: &str = "gitlab.example.com/group/tool";
const TIME: &str = "2024-05-01T10:00:00.000+00:00";
const ADMIN_TOKEN: &str = "warm-admin-token";

async fn gitlab() -> FakeGitLab {
    FakeGitLab::builder()
        .host("gitlab.example.com")
        .project(10, "group/MixedLib", Visibility::Public)
        .project(11, "group/tool", Visibility::Public)
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
        .go_version(
            11,
            "",
            "v0.2.0",
            TIME,
            fixtures::go_module_files_requiring(TOOL, "v0.2.0", &[(LIB, "v1.0.0")]),
        )
        .gem(20, GemFixture::new("alpha", "1.0.0", noise(50_000, 1)))
        .gem(20, GemFixture::new("beta", "2.1.0", noise(70_000, 2)))
        .start()
        .await
}

fn goproxy(base: &str) -> String {
    [10, 11]
        .iter()
        .map(|id| format!("{base}/api/v4/projects/{id}/packages/go"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn run(mut command: Command) -> Finished {
    tokio::task::spawn_blocking(move || commands::run_unchecked(&mut command, TIMEOUT))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// A go.sum as the real go command writes it, for an app needing MixedLib v1.1.0 and tool
/// v0.2.0 (which needs MixedLib v1.0.0: a `/go.mod`-only line), fetched from GitLab itself.
async fn real_go_sum(root: &Path, gitlab: &str) -> PathBuf {
    commands::require_tool("go");
    let app = root.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("go.mod"),
        format!(
            "module example.com/app\n\ngo 1.19\n\nrequire (\n\t{LIB} v1.1.0\n\t{TOOL} v0.2.0\n)\n"
        ),
    )
    .unwrap();
    let lib = fixtures::go_package_name(LIB);
    let tool = fixtures::go_package_name(TOOL);
    std::fs::write(
        app.join("main.go"),
        format!(
            "package main\n\nimport (\n\t\"fmt\"\n\n\t{lib} \"{LIB}\"\n\t{tool} \"{TOOL}\"\n)\n\nfunc main() {{\n\tfmt.Println({lib}.Describe(), {tool}.Describe())\n}}\n"
        ),
    )
    .unwrap();
    let go = |args: &[&str]| {
        let mut go = commands::clean("go");
        go.args(args)
            .current_dir(&app)
            .env("HOME", root.join("home"))
            .env("GOPATH", root.join("gopath"))
            .env("GOMODCACHE", root.join("modcache"))
            .env("GOCACHE", root.join("gocache"))
            .env("GOENV", "off")
            .env("GOPROXY", goproxy(gitlab))
            .env("GONOSUMDB", "gitlab.example.com")
            .env("GOFLAGS", "-mod=mod -modcacherw")
            .env("GOTOOLCHAIN", "local")
            .env("GOVCS", "*:off");
        go
    };
    let done = run(go(&["mod", "tidy"])).await;
    assert!(done.success(), "{}", done.report);
    // Graph pruning keeps MixedLib v1.0.0 out of this go.sum; an app on an older `go`
    // directive would list its go.mod. The go command's own hash for it:
    let lib_v1 = format!("{LIB}@v1.0.0");
    let done = run(go(&["mod", "download", "-json", &lib_v1])).await;
    assert!(done.success(), "{}", done.report);
    let info: Value = serde_json::from_str(&done.stdout).unwrap();
    let gomod_sum = info["GoModSum"].as_str().unwrap();
    let mut go_sum = std::fs::read_to_string(app.join("go.sum")).unwrap();
    go_sum.push_str(&format!("{LIB} v1.0.0/go.mod {gomod_sum}\n"));
    std::fs::write(app.join("go.sum"), go_sum).unwrap();
    app.join("go.sum")
}

fn lockfile(checksums: &[(&str, String)]) -> String {
    let mut text = String::from(
        "GEM\n  remote: https://gitlab.example.com/api/v4/projects/20/packages/rubygems/\n  specs:\n    alpha (1.0.0)\n    beta (2.1.0)\n\nGEM\n  remote: https://rubygems.org/\n  specs:\n    rake (13.0.6)\n\nPLATFORMS\n  ruby\n\nDEPENDENCIES\n  alpha\n  beta\n  rake\n\nCHECKSUMS\n",
    );
    for (name, sum) in checksums {
        text.push_str(&format!("  {name} sha256={sum}\n"));
    }
    text.push_str("\nBUNDLED WITH\n   2.6.2\n");
    text
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn warm(root: &Path, proxy: &TestProxy, extra: &[&str], files: &[&Path]) -> Command {
    let token = root.join("admin-token");
    std::fs::write(&token, ADMIN_TOKEN).unwrap();
    let mut command = commands::clean(env!("CARGO_BIN_EXE_gitlab-pkg-cache"));
    command
        .arg("warm")
        .args(["--proxy", &proxy.url()])
        .args(["--goproxy", &goproxy(&proxy.url())])
        .arg("--admin-token-file")
        .arg(&token)
        .args(extra)
        .args(files);
    command
}

async fn proxy(fake: &FakeGitLab, root: &Path) -> TestProxy {
    let token = root.join("serve-admin-token");
    std::fs::write(&token, ADMIN_TOKEN).unwrap();
    TestProxy::start_with(&fake.url(), |c| c.admin_token_file = Some(token)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_fetches_verifies_and_pins_what_the_lockfiles_need() {
    let fake = gitlab().await;
    let root = tempfile::tempdir().unwrap();
    let go_sum = real_go_sum(root.path(), &fake.url()).await;
    let proxy = proxy(&fake, root.path()).await;
    let gems = root.path().join("Gemfile.lock");
    std::fs::write(
        &gems,
        lockfile(&[
            ("alpha (1.0.0)", sha256_hex(&noise(50_000, 1))),
            ("beta (2.1.0)", sha256_hex(&noise(70_000, 2))),
            ("rake (13.0.6)", "0".repeat(64)),
        ]),
    )
    .unwrap();

    let first = run(warm(root.path(), &proxy, &["--pin"], &[&go_sum, &gems])).await;
    assert!(first.success(), "{}", first.report);
    // Not a terminal: one plain line per file.
    for needle in [
        format!("ok      go.zip  {LIB} v1.1.0  fetched, verified"),
        format!("ok      go.mod  {LIB} v1.0.0  fetched, verified"),
        format!("ok      go.zip  {TOOL} v0.2.0  fetched, verified"),
        "ok      gem     alpha 1.0.0  fetched, verified".to_owned(),
        "ok      gem     beta 2.1.0  fetched, verified".to_owned(),
    ] {
        assert!(first.stdout.contains(&needle), "{needle}\n{}", first.report);
    }
    assert!(
        !first.stdout.contains(&format!("go.zip  {LIB} v1.0.0")),
        "no zip for a /go.mod-only line\n{}",
        first.stdout
    );
    assert!(first.stderr.contains("rake (13.0.6)"), "{}", first.report);
    assert!(
        first.stdout.contains("0 failed, 0 not served"),
        "{}",
        first.report
    );
    // 3 .info + 3 .mod + 2 .zip + 2 gems, every one stored and pinned.
    let store = proxy.state.fills.store();
    let kept = store.kept();
    assert_eq!(kept.len(), 10, "{kept:?}");
    for key in &kept {
        support::eventually(&format!("{key} is stored"), || {
            store.keys(key).contains(key)
        })
        .await;
    }
    assert!(
        kept.iter()
            .any(|k| k.ends_with("/group/%21mixed%21lib/@v/v1.1.0.zip")),
        "{kept:?}"
    );

    fake.reset_hits();
    let second = run(warm(root.path(), &proxy, &["--json"], &[&go_sum, &gems])).await;
    assert!(second.success(), "{}", second.report);
    let lines: Vec<Value> = second
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let summary = lines.last().unwrap();
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["already_cached"], 10, "{summary}");
    assert_eq!(summary["verified"], 7, "{summary}");
    assert_eq!(summary["fetched"], 0);
    assert!(lines
        .iter()
        .filter(|l| l["event"] == "item")
        .all(|l| l["status"] == "cached"));
    assert_eq!(fake.total_hits(), 0, "the second warm never reached GitLab");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_hashes_fail_the_run_and_name_the_item() {
    let fake = gitlab().await;
    let root = tempfile::tempdir().unwrap();
    let go_sum = real_go_sum(root.path(), &fake.url()).await;
    let proxy = proxy(&fake, root.path()).await;

    // One zip hash off by a character, one go.mod hash swapped for another module's.
    let text = std::fs::read_to_string(&go_sum).unwrap();
    let zip_prefix = format!("{LIB} v1.1.0 h1:");
    let mut lines = Vec::new();
    for line in text.lines() {
        if let Some(hash) = line.strip_prefix(&zip_prefix) {
            let flipped = if hash.starts_with('A') { "B" } else { "A" };
            lines.push(format!("{zip_prefix}{flipped}{}", &hash[1..]));
        } else {
            lines.push(line.to_owned());
        }
    }
    std::fs::write(&go_sum, lines.join("\n") + "\n").unwrap();
    let gems = root.path().join("Gemfile.lock");
    std::fs::write(
        &gems,
        lockfile(&[
            ("alpha (1.0.0)", sha256_hex(b"something else")),
            ("beta (2.1.0)", sha256_hex(&noise(70_000, 2))),
        ]),
    )
    .unwrap();

    let done = run(warm(root.path(), &proxy, &["--pin"], &[&go_sum, &gems])).await;
    assert!(!done.success(), "{}", done.report);
    assert!(
        done.stdout.contains(&format!(
            "FAILED  go.zip  {LIB} v1.1.0  zip hash mismatch: go.sum has"
        )),
        "{}",
        done.report
    );
    assert!(
        done.stdout
            .contains("FAILED  gem     alpha 1.0.0  checksum mismatch: Gemfile.lock has sha256="),
        "{}",
        done.report
    );
    assert!(
        done.stdout.contains("ok      gem     beta 2.1.0"),
        "{}",
        done.report
    );
    assert!(done.stdout.contains("2 failed"), "{}", done.report);
    // Only what verified was pinned.
    let kept = proxy.state.fills.store().kept();
    assert!(
        !kept
            .iter()
            .any(|k| k.ends_with("v1.1.0.zip") || k.ends_with("alpha-1.0.0.gem")),
        "{kept:?}"
    );
    assert!(
        kept.iter().any(|k| k.ends_with("beta-2.1.0.gem")),
        "{kept:?}"
    );
}
