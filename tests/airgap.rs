//! The air gap end to end with the real clients: proxy A in front of the fake GitLab is filled
//! by `go` and `bundle` and by `warm`, `export` writes a bundle; proxy B, started offline with
//! no GitLab at all, `import`s it, and `go build` and `bundle install` through B succeed with
//! the same bytes. Offline access: a token list, open mode and the default grace; a caller
//! outside them never receives a byte.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use support::client;
use support::commands::{self, Finished, TIMEOUT};
use support::fake_gitlab::{
    Access, FakeGitLab, GemFixture, RubyGemsEra, TokenKind, TokenState, Visibility,
};
use support::fixtures;
use support::proxy::TestProxy;

use gitlab_pkg_cache::airgap::offline::OfflineAccess;

const LIB: &str = "gitlab.example.com/group/MixedLib";
const TOOL: &str = "gitlab.example.com/group/tool";
const TIME: &str = "2024-05-01T10:00:00.000+00:00";
const READER: &str = "glpat-office-reader";
const ADMIN_TOKEN: &str = "airgap-admin-token";
const GEMS: u64 = 20;
/// The offline side's upstream: a closed port, never asked.
const NOWHERE: &str = "http://127.0.0.1:9";

fn gems(dir: &Path) -> Vec<GemFixture> {
    vec![
        fixtures::build_gem(dir, "gpc_leaf", "1.0.0", &[]),
        fixtures::build_gem(dir, "gpc_core", "2.0.0", &[("gpc_leaf", ">= 1.0")]),
    ]
}

async fn gitlab(gems: Vec<GemFixture>) -> FakeGitLab {
    let mut builder = FakeGitLab::builder()
        .host("gitlab.example.com")
        .era(RubyGemsEra::V19_1)
        .project(10, "group/MixedLib", Visibility::Public)
        .project(11, "group/tool", Visibility::Public)
        .project(GEMS, "group/gems", Visibility::Private)
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
        .token(
            READER,
            TokenKind::Personal {
                scopes: vec!["read_api"],
            },
            TokenState::Active,
            &[(GEMS, Access::Reporter)],
        );
    for gem in gems {
        builder = builder.gem(GEMS, gem);
    }
    builder.start().await
}

async fn run(mut command: Command) -> Finished {
    tokio::task::spawn_blocking(move || commands::run(&mut command, TIMEOUT))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn write(path: &Path, text: impl AsRef<[u8]>) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

fn goproxy(base: &str) -> String {
    [10, 11]
        .iter()
        .map(|id| format!("{base}/api/v4/projects/{id}/packages/go"))
        .collect::<Vec<_>>()
        .join(",")
}

fn go(root: &Path, proxy: &str, args: &[&str]) -> Command {
    let mut command = commands::clean("go");
    command
        .args(args)
        .current_dir(root.join("app"))
        .env("HOME", root.join("home"))
        .env("GOPATH", root.join("gopath"))
        .env("GOMODCACHE", root.join("modcache"))
        .env("GOCACHE", root.join("gocache"))
        .env("GOENV", "off")
        .env("GOPROXY", goproxy(proxy))
        .env("GONOSUMDB", "gitlab.example.com")
        .env("GOFLAGS", "-modcacherw")
        .env("GOTOOLCHAIN", "local")
        .env("GOVCS", "*:off")
        .env("CGO_ENABLED", "0");
    command
}

fn go_app(root: &Path) {
    let lib = fixtures::go_package_name(LIB);
    let tool = fixtures::go_package_name(TOOL);
    write(
        &root.join("app/go.mod"),
        format!(
            "module example.com/app\n\ngo 1.19\n\nrequire (\n\t{LIB} v1.1.0\n\t{TOOL} v0.2.0\n)\n"
        ),
    );
    write(
        &root.join("app/main.go"),
        format!("package main\n\nimport (\n\t\"fmt\"\n\n\t{lib} \"{LIB}\"\n\t{tool} \"{TOOL}\"\n)\n\nfunc main() {{\n\tfmt.Println({lib}.Describe(), {tool}.Describe())\n}}\n"),
    );
}

fn rubygems(proxy: &str) -> String {
    format!("{proxy}/api/v4/projects/{GEMS}/packages/rubygems")
}

fn bundle(root: &Path, args: &[&str]) -> Command {
    let home = root.join("home");
    let mut command = commands::clean("bundle");
    command
        .args(args)
        .current_dir(root.join("app"))
        .env("HOME", &home)
        .env("GEM_HOME", root.join("gem-home"))
        .env("GEM_PATH", root.join("gem-home"))
        .env("GEM_SPEC_CACHE", home.join(".gem/specs"))
        .env("BUNDLE_USER_HOME", home.join(".bundle"))
        .env("BUNDLE_USER_CACHE", home.join(".bundle/cache"))
        .env("BUNDLE_USER_CONFIG", home.join(".bundle/config"))
        .env("BUNDLE_APP_CONFIG", root.join("app/.bundle"))
        .env("BUNDLE_GEMFILE", root.join("app/Gemfile"))
        .env("BUNDLE_PATH", root.join("bundle"))
        .env("BUNDLE_SILENCE_ROOT_WARNING", "true")
        .env("BUNDLE_RETRY", "0")
        .env("BUNDLE_JOBS", "1");
    command
}

/// `bundle install` of gpc_core from `proxy` in a fresh world under `root` (with `lockfile`,
/// if given, its remote pointed at `proxy`); the lockfile it leaves.
async fn bundle_install(root: &Path, proxy: &str, lockfile: Option<&str>) -> String {
    let source = rubygems(proxy);
    write(
        &root.join("app/Gemfile"),
        format!("source {source:?}\n\ngem \"gpc_core\"\n"),
    );
    if let Some(lockfile) = lockfile {
        write(&root.join("app/Gemfile.lock"), lockfile);
    }
    std::fs::create_dir_all(root.join("home")).unwrap();
    run(bundle(
        root,
        &[
            "config",
            "set",
            "--global",
            &source,
            &format!("__token__:{READER}"),
        ],
    ))
    .await;
    run(bundle(root, &["install"])).await;
    std::fs::read_to_string(root.join("app/Gemfile.lock")).unwrap()
}

/// The `.gem` files bundler kept, by file name, as SHA-256.
fn installed_gems(root: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut stack = vec![root.join("bundle")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "gem") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                found.push((
                    name,
                    hex::encode(Sha256::digest(std::fs::read(&path).unwrap())),
                ));
            }
        }
    }
    found.sort();
    found
}

fn admin_command(dir: &Path, subcommand: &str, proxy: &TestProxy, args: &[&str]) -> Command {
    let token = dir.join("admin-token");
    write(&token, ADMIN_TOKEN);
    let mut command = commands::clean(env!("CARGO_BIN_EXE_gitlab-pkg-cache"));
    command
        .current_dir(dir)
        .arg(subcommand)
        .args(["--proxy", &proxy.url()])
        .arg("--admin-token-file")
        .arg(&token)
        .args(args);
    command
}

async fn offline_proxy(dir: &Path, access: OfflineAccess, tokens: Option<PathBuf>) -> TestProxy {
    let token = dir.join("admin-token");
    write(&token, ADMIN_TOKEN);
    TestProxy::start_with(NOWHERE, |c| {
        c.admin_token_file = Some(token);
        c.offline.enabled = true;
        c.offline.access = access;
        c.offline.tokens_file = tokens;
    })
    .await
}

/// Proxy A fills from the real clients and `warm` (Go first, exported as a full bundle; then
/// the gems, exported as a delta); offline proxy B imports both in order, and `go build` and
/// `bundle install` run through B alone, GitLab unreachable, with GitLab's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_build_and_bundle_install_through_an_offline_proxy_filled_from_bundles() {
    commands::require_tool("go");
    commands::require_tool("bundle");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fixtures_dir = d.join("gems");
    std::fs::create_dir_all(&fixtures_dir).unwrap();
    let fixtures = gems(&fixtures_dir);
    let mut gitlab_gems: Vec<(String, String)> = fixtures
        .iter()
        .map(|g| {
            (
                format!("{}-{}.gem", g.name, g.version),
                hex::encode(Sha256::digest(&g.gem_bytes)),
            )
        })
        .collect();
    gitlab_gems.sort();
    let fake = gitlab(fixtures).await;
    let token = d.join("admin-token");
    write(&token, ADMIN_TOKEN);
    let a = TestProxy::start_with(&fake.url(), |c| c.admin_token_file = Some(token.clone())).await;
    write(&d.join("read-token"), READER);
    let warm = |files: &[&Path]| {
        let mut warm = admin_command(d, "warm", &a, &["--pin", "--token-file", "read-token"]);
        warm.args(["--goproxy", &goproxy(&a.url())]).args(files);
        async move {
            let warmed = run(warm).await;
            assert!(
                warmed.stdout.contains("0 failed, 0 not served"),
                "{}",
                warmed.report
            );
        }
    };

    // Connected side, first the Go project: its own client through A, `warm`, a full bundle.
    let go_a = d.join("go-a");
    go_app(&go_a);
    run(go(&go_a, &a.url(), &["mod", "tidy"])).await;
    let go_sum = go_a.join("app/go.sum");
    warm(&[&go_sum]).await;
    let full = run(admin_command(d, "export", &a, &["-o", "office-1.tar"])).await;
    assert!(full.stdout.contains("exported"), "{}", full.report);

    // Then the Ruby project, and a delta with what the full bundle lacks.
    let lockfile = bundle_install(&d.join("ruby-a1"), &a.url(), None).await;
    // Bundler asks differently once a lockfile exists; that is what the office will run.
    bundle_install(&d.join("ruby-a2"), &a.url(), Some(&lockfile)).await;
    warm(&[&d.join("ruby-a1/app/Gemfile.lock")]).await;
    let delta = run(admin_command(
        d,
        "export",
        &a,
        &["--since", "office-1.tar", "-o", "office-2.tar"],
    ))
    .await;
    assert!(
        delta.stdout.contains("delta on sha256:"),
        "{}",
        delta.report
    );

    // Offline side: no GitLab at all, a closed network (go 1.19 sends no credentials over
    // plain HTTP; the token list is tested on its own below). Both bundles, in order.
    let b = offline_proxy(d, OfflineAccess::Open, None).await;
    for bundle in ["office-1.tar", "office-2.tar"] {
        let imported = run(admin_command(d, "import", &b, &[bundle])).await;
        assert!(
            imported.stdout.contains("imported sha256:"),
            "{bundle}: {}",
            imported.report
        );
    }
    fake.reset_hits();

    let go_b = d.join("go-b");
    go_app(&go_b);
    std::fs::copy(&go_sum, go_b.join("app/go.sum")).unwrap();
    run(go(&go_b, &b.url(), &["mod", "download"])).await;
    run(go(&go_b, &b.url(), &["build", "-o", "app-bin", "."])).await;
    let mut built = commands::clean(go_b.join("app/app-bin").to_str().unwrap());
    built.current_dir(go_b.join("app"));
    let printed = run(built).await;
    assert!(
        printed.stdout.contains(&format!("{LIB}@v1.1.0")),
        "{}",
        printed.report
    );
    let zip =
        "/api/v4/projects/10/packages/go/gitlab.example.com/group/%21mixed%21lib/@v/v1.1.0.zip";
    let from_b = client::get(&format!("{}{zip}", b.url()), &[]).await;
    let held_a = a.state.fills.store().inner().lookup(zip).unwrap().unwrap();
    assert_eq!(
        <[u8; 32]>::from(Sha256::digest(&from_b.body)),
        held_a.sha256,
        "same zip bytes"
    );

    let ruby_b = d.join("ruby-b");
    let lockfile_b = lockfile.replace(&a.url(), &b.url());
    bundle_install(&ruby_b, &b.url(), Some(&lockfile_b)).await;
    let installed = installed_gems(&ruby_b);
    assert_eq!(installed.len(), 2, "{installed:?}");
    assert_eq!(
        installed,
        installed_gems(&d.join("ruby-a2")),
        "same gem bytes"
    );
    assert_eq!(installed, gitlab_gems, "GitLab's gem bytes");
    assert_eq!(fake.total_hits(), 0, "GitLab was never contacted by B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_access_is_explicit_and_strangers_get_no_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fixtures_dir = d.join("gems");
    std::fs::create_dir_all(&fixtures_dir).unwrap();
    let fake = gitlab(gems(&fixtures_dir)).await;
    let token = d.join("admin-token");
    write(&token, ADMIN_TOKEN);
    let a = TestProxy::start_with(&fake.url(), |c| c.admin_token_file = Some(token.clone())).await;
    let info = "/api/v4/projects/10/packages/go/gitlab.example.com/group/!mixed!lib/@v/v1.0.0.info";
    let list = "/api/v4/projects/10/packages/go/gitlab.example.com/group/!mixed!lib/@v/list";
    let gem = "/api/v4/projects/20/packages/rubygems/gems/gpc_leaf-1.0.0.gem";
    let versions = "/api/v4/projects/20/packages/rubygems/versions";
    let gem_info = "/api/v4/projects/20/packages/rubygems/info/gpc_leaf";
    for (path, headers) in [(info, &[][..]), (gem, &[("authorization", READER)][..])] {
        assert_eq!(
            client::get(&format!("{}{path}", a.url()), headers)
                .await
                .status,
            200
        );
        support::eventually("the artifact is stored", || {
            a.state.fills.store().keys(path).iter().any(|k| k == path)
        })
        .await;
    }
    run(admin_command(d, "export", &a, &["-o", "b.tar"])).await;

    let tokens = d.join("tokens");
    write(
        &tokens,
        format!(
            "{} 11 {GEMS}\n",
            hex::encode(Sha256::digest(READER.as_bytes()))
        ),
    );
    for (access, file) in [
        (OfflineAccess::Tokens, Some(tokens.clone())),
        (OfflineAccess::Open, None),
        (OfflineAccess::Grace, None),
    ] {
        let b = offline_proxy(d, access, file).await;
        run(admin_command(d, "import", &b, &["b.tar"])).await;
        let get = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
            let url = format!("{}{path}", b.url());
            async move { client::get(&url, headers).await }
        };
        let anonymous = get(info, &[]).await;
        let stranger = get(info, &[("private-token", "glpat-stranger")]).await;
        let reader = get(info, &[("private-token", READER)]).await;
        match access {
            OfflineAccess::Open => {
                assert_eq!(anonymous.status, 200);
                let listed = get(list, &[]).await;
                assert_eq!(listed.text(), "v1.0.0\n", "the versions held");
            }
            OfflineAccess::Tokens => {
                assert_eq!(anonymous.status, 401);
                assert_eq!(stranger.status, 401);
                // Known, but not for project 10.
                assert_eq!(reader.status, 404, "{}", reader.text());
            }
            OfflineAccess::Grace => {
                // Nobody was accepted by GitLab on this side.
                assert_eq!(anonymous.status, 401);
                assert_eq!(reader.status, 401);
            }
        }
        for refused in [&anonymous, &stranger, &reader] {
            if refused.status != 200 {
                assert!(
                    !refused.text().contains("v1.0.0"),
                    "no cached bytes: {}",
                    refused.text()
                );
            }
        }

        // The compact index written from the held gem passes the same gate.
        for path in [versions, gem_info, gem] {
            let anonymous = get(path, &[]).await;
            let stranger = get(path, &[("authorization", "glpat-stranger")]).await;
            let reader = get(path, &[("authorization", READER)]).await;
            let expected = match access {
                OfflineAccess::Open => [200, 200, 200],
                OfflineAccess::Tokens => [401, 401, 200],
                OfflineAccess::Grace => [401, 401, 401],
            };
            assert_eq!(
                [anonymous.status, stranger.status, reader.status],
                expected,
                "{access:?} {path}"
            );
            for answer in [&anonymous, &stranger, &reader] {
                if answer.status == 200 {
                    if path != gem {
                        assert!(answer.text().contains("1.0.0"), "{}", answer.text());
                    }
                } else {
                    assert!(
                        !answer.text().contains("gpc_leaf") && !answer.text().contains("1.0.0"),
                        "no held bytes: {}",
                        answer.text()
                    );
                }
            }
        }
    }
}
