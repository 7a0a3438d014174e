//! The real clients through the proxy: the go command (HTTPS, `.netrc`, a GOPROXY list across
//! projects), bundler and gem (install, push). Each runs twice with fresh client caches; the
//! second run gets every immutable artifact (`.info`, `.mod`, `.zip`, `.gem`, `.gemspec.rz`)
//! from the proxy's store without asking GitLab.
//!
//! Every client gets a temporary HOME and cache directories and a cleared environment, and
//! points only at the proxy (or, for the Go reference run, at a fake GitLab directly): there
//! is no network here but loopback, and nothing may try the internet. What the clients
//! requested and what reached GitLab are printed (`cargo test --test real_clients --
//! --nocapture` shows them) and the interesting parts asserted. The last section runs go and
//! bundler through an office proxy in front of a regional one.

mod support;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gitlab_pkg_cache::config::Config;
use support::access_log::{Access, AccessLog};
use support::client;
use support::commands::{self, Finished, TIMEOUT};
use support::fake_gitlab::{
    Access as Role, FakeGitLab, GemFixture, Processing, RubyGemsEra, TokenKind, TokenState,
    Visibility,
};
use support::fixtures::{self, TestCa};
use support::proxy::TestProxy;
use support::recorder::{Exchange, Recorder};
use tracing::subscriber::DefaultGuard;

const ALPHA: &str = "gitlab.example.com/group/alpha";
/// A nested module in the alpha project's `util/` directory (excluded from alpha's zip).
const UTIL: &str = "gitlab.example.com/group/alpha/util";
/// A project in a subgroup.
const BETA: &str = "gitlab.example.com/group/sub/beta";
/// Upper-case letters: the go command asks for `group/!mixed!case` (as `%21mixed%21case`).
const MIXED: &str = "gitlab.example.com/group/MixedCase";
/// The projects the Go modules live in, in GOPROXY order: alpha (private), beta (private),
/// MixedCase (public).
const GO_PROJECTS: [u64; 3] = [10, 11, 12];
const GO_READER: &str = "glpat-go-reader";
/// Reads the same projects; the proxy sees it only once everything is stored.
const GO_COLLEAGUE: &str = "glpat-go-colleague";
/// Valid in GitLab, member of none of these projects.
const GO_STRANGER: &str = "glpat-go-stranger";
/// A token GitLab does not know.
const UNKNOWN_TOKEN: &str = "glpat-nobody-knows-me";

const GEM_PROJECT: u64 = 20;
const GEM_READER: &str = "glpat-gem-reader";
const GEM_WRITER: &str = "glpat-gem-writer";
/// Reads the gem project; the proxy sees it only once everything is stored.
const GEM_COLLEAGUE: &str = "glpat-gem-colleague";
/// Valid in GitLab, member of no project here.
const GEM_STRANGER: &str = "glpat-gem-stranger";
/// A deploy token: the RubyGems API takes it, the Packages API does not.
const GEM_DEPLOY: &str = "gldt-gem-deploy";

/// The fake GitLab, a recorder between it and the proxy listing what went upstream, the
/// proxy, and the proxy's access log listing what the clients asked.
struct Stack {
    fake: FakeGitLab,
    recorder: Recorder,
    proxy: TestProxy,
    clients: AccessLog,
    _capture: DefaultGuard,
}

impl Stack {
    /// `tls`: serve the proxy over HTTPS with that CA's server certificate.
    async fn start(fake: FakeGitLab, tls: Option<&TestCa>) -> Stack {
        Stack::start_with(fake, tls, |_| {}).await
    }

    /// Like [`Stack::start`], with `adjust` applied to the configuration last.
    async fn start_with(
        fake: FakeGitLab,
        tls: Option<&TestCa>,
        adjust: impl FnOnce(&mut Config),
    ) -> Stack {
        let (clients, capture) = AccessLog::capture();
        let recorder = Recorder::start(&fake.url()).await;
        let proxy = TestProxy::start_with(&recorder.url(), |config| {
            // Both runs fit well within these however slow the machine, so what the second
            // run still asks GitLab is only what the proxy never keeps: artifacts are kept by
            // design, metadata and authorization decisions for these TTLs.
            config.cache.metadata_ttl = Duration::from_secs(600);
            config.cache.auth_ttl = Duration::from_secs(600);
            if let Some(ca) = tls {
                config.tls.cert_file = Some(ca.cert_file.clone());
                config.tls.key_file = Some(ca.key_file.clone());
            }
            adjust(config);
        })
        .await;
        Stack {
            fake,
            recorder,
            proxy,
            clients,
            _capture: capture,
        }
    }

    /// What the clients asked and what reached GitLab since the last call; forgets both,
    /// and the fake's counters, so the next run is counted on its own.
    fn end_run(&self, label: &str) -> Run {
        let run = Run {
            clients: self.clients.take(),
            upstream: self.recorder.take(),
        };
        eprintln!("{}", run.summary(label));
        self.fake.reset_hits();
        run
    }
}

/// One client run as seen on the wire.
struct Run {
    clients: Vec<Access>,
    upstream: Vec<Exchange>,
}

impl Run {
    fn summary(&self, label: &str) -> String {
        let mut text = format!(
            "===== {label}: {} client requests to the proxy =====\n",
            self.clients.len()
        );
        for access in &self.clients {
            let _ = writeln!(text, "  {access}");
        }
        let _ = writeln!(
            text,
            "----- {label}: {} requests reached GitLab -----",
            self.upstream.len()
        );
        for exchange in &self.upstream {
            let _ = writeln!(text, "  {exchange}");
        }
        text
    }

    /// Paths the clients got with `200` whose route is an immutable artifact.
    fn artifacts_served(&self) -> BTreeSet<String> {
        self.clients
            .iter()
            .filter(|a| a.status == 200 && is_artifact(&a.path))
            .map(|a| a.path.clone())
            .collect()
    }

    fn requested(&self, method: &str, path: &str) -> Vec<&Access> {
        self.clients
            .iter()
            .filter(|a| a.method == method && a.path == path)
            .collect()
    }
}

fn is_artifact(path: &str) -> bool {
    let go = path.contains("/packages/go/")
        && [".info", ".mod", ".zip"].iter().any(|e| path.ends_with(e));
    let gem = path.contains("/packages/rubygems/")
        && (path.contains("/gems/") && path.ends_with(".gem")
            || path.contains("/quick/Marshal.4.8/") && path.ends_with(".gemspec.rz"));
    go || gem
}

/// Asserts that the second run got every artifact from the proxy's store: GitLab saw no
/// request for any of them, and the proxy answered each from its store without asking
/// GitLab anything.
fn assert_artifacts_from_store(fake: &FakeGitLab, first: &Run, second: &Run) {
    assert_artifacts_from_store_for(fake, first, second, Caller::Known);
}

/// Whether the proxy has seen a run's caller before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// Its decisions are cached: a hit asks GitLab nothing.
    Known,
    /// Its first request of a project waits for an authorization probe, which is never an
    /// artifact.
    New,
}

/// [`assert_artifacts_from_store`], for a caller that may be new to the proxy.
fn assert_artifacts_from_store_for(fake: &FakeGitLab, first: &Run, second: &Run, caller: Caller) {
    let artifacts = first.artifacts_served();
    assert!(!artifacts.is_empty(), "the first run fetched no artifact");
    for path in &artifacts {
        assert_eq!(
            fake.hits(path),
            0,
            "second run asked GitLab for the artifact {path}\n{}",
            second.summary("second run")
        );
    }
    for access in second
        .clients
        .iter()
        .filter(|a| artifacts.contains(&a.path))
    {
        assert_eq!(
            (access.status, access.cache.as_str()),
            (200, "hit"),
            "second run: {access}"
        );
        if caller == Caller::Known {
            assert!(!access.upstream, "second run: {access}");
        }
    }
    let fetched: Vec<&Exchange> = second
        .upstream
        .iter()
        .filter(|e| e.status == 200 && is_artifact(e.path_and_query.as_str()))
        .collect();
    assert!(
        fetched.is_empty(),
        "second run fetched artifacts from GitLab: {fetched:?}"
    );
}

/// Asserts that a run by a caller GitLab refuses cost GitLab no stored artifact: the
/// clients asked for some of `stored`, each was refused by the proxy (after a probe that is
/// never an artifact) or, in a project the caller may read, served from the store, and
/// none of them reached GitLab.
fn assert_refused_without_artifact_fetches(stored: &BTreeSet<String>, run: &Run, label: &str) {
    let asked: Vec<&Exchange> = run
        .upstream
        .iter()
        .filter(|e| stored.contains(e.path_and_query.as_str()))
        .collect();
    assert!(
        asked.is_empty(),
        "{label}: stored artifacts were asked of GitLab: {asked:?}\n{}",
        run.summary(label)
    );
    let mut refused = 0;
    for access in run.clients.iter().filter(|a| stored.contains(&a.path)) {
        match (access.status, access.cache.as_str()) {
            (400.., "refused") => refused += 1,
            (200, "hit") => {}
            _ => panic!("{label}: {access}"),
        }
    }
    assert!(
        refused > 0,
        "{label}: no stored artifact was refused\n{}",
        run.summary(label)
    );
}

/// An `Authorization: Basic` value, as gem and bundler send for `user:password@` URLs.
fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Runs a client command that is expected to fail, off the runtime thread.
async fn run_failing(mut command: Command) -> Finished {
    let finished =
        tokio::task::spawn_blocking(move || commands::run_unchecked(&mut command, TIMEOUT))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert!(
        !finished.success(),
        "expected a failure\n{}",
        finished.report
    );
    finished
}

/// Runs a blocking client command off the runtime thread (the proxy runs on that thread),
/// panicking with the command's report if it fails.
async fn run(mut command: Command) -> Finished {
    tokio::task::spawn_blocking(move || commands::run(&mut command, TIMEOUT))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn mkdir(path: PathBuf) -> PathBuf {
    std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    path
}

fn write(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `127.0.0.1:PORT` of a URL.
fn authority(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

// ---------------------------------------------------------------------------------------
// Go
// ---------------------------------------------------------------------------------------

const GO_TIMES: [&str; 3] = [
    "2024-01-10T09:00:00.000+00:00",
    "2024-02-20T15:30:00.000+00:00",
    "2024-03-05T08:15:00.000-06:00",
];

/// Three projects: alpha (root module v1.0.0 and v1.1.0, nested module `util` in v1.1.0),
/// beta in a subgroup (v1.1.0 and v1.2.0, both requiring alpha v1.0.0), MixedCase (public;
/// v0.3.0 and v0.4.0). Alpha and beta are `private` or public; one token reads them.
async fn go_gitlab(private: bool) -> FakeGitLab {
    let visibility = if private {
        Visibility::Private
    } else {
        Visibility::Public
    };
    let mut alpha_v11 = fixtures::go_module_files(ALPHA, "v1.1.0");
    alpha_v11.extend(
        fixtures::go_module_files(UTIL, "v1.1.0")
            .into_iter()
            .map(|(path, contents)| (format!("util/{path}"), contents)),
    );
    let beta = |version| fixtures::go_module_files_requiring(BETA, version, &[(ALPHA, "v1.0.0")]);
    FakeGitLab::builder()
        .host("gitlab.example.com")
        .project(10, "group/alpha", visibility)
        .project(11, "group/sub/beta", visibility)
        .project(12, "group/MixedCase", Visibility::Public)
        .go_version(
            10,
            "",
            "v1.0.0",
            GO_TIMES[0],
            fixtures::go_module_files(ALPHA, "v1.0.0"),
        )
        .go_version(10, "", "v1.1.0", GO_TIMES[1], alpha_v11)
        .go_version(11, "", "v1.1.0", GO_TIMES[0], beta("v1.1.0"))
        .go_version(11, "", "v1.2.0", GO_TIMES[1], beta("v1.2.0"))
        .go_version(
            12,
            "",
            "v0.3.0",
            GO_TIMES[1],
            fixtures::go_module_files(MIXED, "v0.3.0"),
        )
        .go_version(
            12,
            "",
            "v0.4.0",
            GO_TIMES[2],
            fixtures::go_module_files(MIXED, "v0.4.0"),
        )
        .token(
            GO_READER,
            TokenKind::Personal {
                scopes: vec!["read_api"],
            },
            TokenState::Active,
            &[(10, Role::Reporter), (11, Role::Reporter)],
        )
        .token(
            GO_COLLEAGUE,
            TokenKind::Personal {
                scopes: vec!["read_api"],
            },
            TokenState::Active,
            &[(10, Role::Reporter), (11, Role::Reporter)],
        )
        .token(
            GO_STRANGER,
            TokenKind::Personal {
                scopes: vec!["read_api"],
            },
            TokenState::Active,
            &[(99, Role::Reporter)],
        )
        .start()
        .await
}

/// The throwaway module that requires the fixtures and prints what it was built with.
fn write_consumer(app: &Path) {
    let modules = [ALPHA, UTIL, BETA, MIXED];
    let versions = ["v1.1.0", "v1.1.0", "v1.2.0", "v0.3.0"];
    let mut gomod = String::from("module example.com/consumer\n\ngo 1.19\n\nrequire (\n");
    for (module, version) in modules.iter().zip(versions) {
        let _ = writeln!(gomod, "\t{module} {version}");
    }
    gomod.push_str(")\n");
    let mut main = String::from("package main\n\nimport (\n\t\"fmt\"\n\n");
    for module in modules {
        let _ = writeln!(main, "\t{} \"{module}\"", fixtures::go_package_name(module));
    }
    main.push_str(")\n\nfunc main() {\n");
    for module in modules {
        let _ = writeln!(
            main,
            "\tfmt.Println({}.Describe())",
            fixtures::go_package_name(module)
        );
    }
    main.push_str("}\n");
    write(&app.join("go.mod"), gomod);
    write(&app.join("main.go"), main);
}

const CONSUMER_OUTPUT: &str = "gitlab.example.com/group/alpha@v1.1.0\n\
    gitlab.example.com/group/alpha/util@v1.1.0\n\
    gitlab.example.com/group/sub/beta@v1.2.0 [gitlab.example.com/group/alpha@v1.1.0]\n\
    gitlab.example.com/group/MixedCase@v0.3.0\n";

/// What one go run produced.
struct GoRun {
    go_sum: String,
}

/// `GOPROXY` for the Go projects under `base`, in order: a module a project does not hold
/// gets `404` there, and the go command moves on to the next entry.
fn goproxy(base: &str) -> String {
    GO_PROJECTS
        .iter()
        .map(|id| format!("{base}/api/v4/projects/{id}/packages/go"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A go command in a fresh world under `root`: HOME (with `netrc`, if given), GOPATH,
/// GOMODCACHE, GOCACHE; trusting only `ca`; no VCS, no checksum database, no toolchain
/// download, only `proxy`.
fn go(root: &Path, proxy: &str, ca: &Path, args: &[&str]) -> Command {
    let mut command = commands::clean("go");
    command
        .args(args)
        .current_dir(root.join("app"))
        .env("HOME", root.join("home"))
        .env("GOPATH", root.join("gopath"))
        .env("GOMODCACHE", root.join("modcache"))
        .env("GOCACHE", root.join("gocache"))
        .env("GOENV", "off")
        .env("GOPROXY", proxy)
        .env("GONOSUMDB", "gitlab.example.com")
        .env("GONOPROXY", "")
        .env("GOPRIVATE", "")
        .env("GOINSECURE", "")
        .env("GOFLAGS", "-mod=mod -modcacherw")
        .env("GO111MODULE", "on")
        .env("GOWORK", "off")
        .env("GOVCS", "*:off")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("SSL_CERT_FILE", ca)
        .env("SSL_CERT_DIR", root.join("no-cert-dir"));
    command
}

async fn go_run(root: &Path, proxy: &str, ca: &Path, netrc: Option<&str>) -> GoRun {
    let home = mkdir(root.join("home"));
    if let Some(netrc) = netrc {
        write(&home.join(".netrc"), netrc);
    }
    let app = mkdir(root.join("app"));
    write_consumer(&app);
    run(go(root, proxy, ca, &["mod", "download"])).await;
    run(go(root, proxy, ca, &["build", "-o", "consumer", "."])).await;
    let mut consumer = commands::clean(app.join("consumer").to_str().expect("UTF-8 path"));
    consumer.current_dir(&app).env("HOME", &home);
    let printed = run(consumer).await;
    assert_eq!(printed.stdout, CONSUMER_OUTPUT, "{}", printed.report);
    // A query: `list` of a module whose path needs case-encoding.
    let versions = run(go(root, proxy, ca, &["list", "-m", "-versions", MIXED])).await;
    assert_eq!(
        versions.stdout.trim(),
        format!("{MIXED} v0.3.0 v0.4.0"),
        "{}",
        versions.report
    );
    let go_sum = read(&app.join("go.sum"));
    GoRun { go_sum }
}

#[tokio::test]
async fn go_mod_download_and_build_through_the_proxy_over_https() {
    commands::require_tool("go");
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = TestCa::create(dir.path());
    // The reference: the same build made directly against a fake GitLab. The fake speaks
    // plain HTTP, and go 1.19 sends no credentials there (it skips .netrc for http and
    // refuses URLs with userinfo: "refusing to pass credentials to insecure URL"), so the
    // direct run uses a twin of the fake with the same module contents, all public.
    let twin = go_gitlab(false).await;
    let direct = go_run(
        &dir.path().join("direct"),
        &goproxy(&twin.url()),
        &ca.ca_file,
        None,
    )
    .await;
    drop(twin);

    let stack = Stack::start(go_gitlab(true).await, Some(&ca)).await;
    let proxy = stack.proxy.url();
    assert!(proxy.starts_with("https://127.0.0.1:"), "{proxy}");

    // Through the proxy, twice, each time with a new HOME, module cache and build cache.
    // go 1.19 sends .netrc credentials over https only; the machine is the proxy's host.
    let netrc = format!("machine 127.0.0.1 login __token__ password {GO_READER}\n");
    let first = go_run(
        &dir.path().join("first"),
        &goproxy(&proxy),
        &ca.ca_file,
        Some(&netrc),
    )
    .await;
    let first_wire = stack.end_run("go, first run through the proxy");
    let second = go_run(
        &dir.path().join("second"),
        &goproxy(&proxy),
        &ca.ca_file,
        Some(&netrc),
    )
    .await;
    let second_wire = stack.end_run("go, second run through the proxy");

    // Without .netrc the go command asks anonymously: the proxy does not hand out what it
    // stored, it relays GitLab's 401 for the private project, which ends the GOPROXY walk.
    let root = dir.path().join("anonymous");
    mkdir(root.join("home"));
    write_consumer(&mkdir(root.join("app")));
    let mut anonymous = go(&root, &goproxy(&proxy), &ca.ca_file, &["mod", "download"]);
    let anonymous =
        tokio::task::spawn_blocking(move || commands::run_unchecked(&mut anonymous, TIMEOUT))
            .await
            .expect("go without credentials");
    let anonymous_wire = stack.end_run("go without credentials");
    assert!(
        !anonymous.success() && anonymous.stderr.contains("401 Unauthorized"),
        "{}",
        anonymous.report
    );
    let stored = first_wire.artifacts_served();
    for access in &anonymous_wire.clients {
        let expected = if stored.contains(&access.path) {
            "refused"
        } else {
            "miss"
        };
        assert_eq!(
            (access.status, access.cache.as_str()),
            (401, expected),
            "{access}"
        );
    }
    assert_refused_without_artifact_fetches(&stored, &anonymous_wire, "go without credentials");

    // A warm office: a colleague whose token the proxy has never seen gets every stored
    // artifact from the store (authorizing it asked GitLab for lists only); a token GitLab
    // does not know and one without access are refused, and finding that out cost GitLab
    // no stored artifact either.
    let colleague_netrc = format!("machine 127.0.0.1 login __token__ password {GO_COLLEAGUE}\n");
    let colleague = go_run(
        &dir.path().join("colleague"),
        &goproxy(&proxy),
        &ca.ca_file,
        Some(&colleague_netrc),
    )
    .await;
    let colleague_wire = stack.end_run("go, a colleague the proxy has not seen yet");
    assert_eq!(colleague.go_sum, direct.go_sum);
    assert_artifacts_from_store_for(&stack.fake, &first_wire, &colleague_wire, Caller::New);
    for (label, token) in [
        ("go with an unknown token", UNKNOWN_TOKEN),
        ("go with a token without access", GO_STRANGER),
    ] {
        let root = dir.path().join(token);
        write(
            &mkdir(root.join("home")).join(".netrc"),
            format!("machine 127.0.0.1 login __token__ password {token}\n"),
        );
        write_consumer(&mkdir(root.join("app")));
        run_failing(go(
            &root,
            &goproxy(&proxy),
            &ca.ca_file,
            &["mod", "download"],
        ))
        .await;
        let wire = stack.end_run(label);
        assert_refused_without_artifact_fetches(&stored, &wire, label);
    }

    // go.sum: the same hashes as the direct run, every time.
    assert!(
        direct.go_sum.contains(&format!("{MIXED} v0.3.0 h1:")),
        "go.sum of the direct run:\n{}",
        direct.go_sum
    );
    for module in [ALPHA, UTIL, BETA, MIXED] {
        assert!(
            direct.go_sum.contains(&format!("{module} ")),
            "{module} in go.sum"
        );
    }
    assert_eq!(first.go_sum, direct.go_sum, "go.sum through the proxy");
    assert_eq!(second.go_sum, direct.go_sum, "go.sum of the second run");

    // On the wire: the module with upper-case letters is asked for case-encoded, and a
    // project that does not hold a module answers 404, after which the next one is asked.
    // go 1.19 also percent-encodes the `!`: `group/!mixed!case` goes out as `%21mixed%21case`.
    let mixed_zip = "/packages/go/gitlab.example.com/group/%21mixed%21case/@v/v0.3.0.zip";
    for (project, status) in [(10, 404), (11, 404), (12, 200)] {
        let path = format!("/api/v4/projects/{project}{mixed_zip}");
        let asked = first_wire.requested("GET", &path);
        assert!(
            !asked.is_empty() && asked.iter().all(|a| a.status == status),
            "{path}: expected {status}, got {asked:?}"
        );
    }
    let beta_mod =
        "/api/v4/projects/11/packages/go/gitlab.example.com/group/sub/beta/@v/v1.2.0.mod";
    assert!(
        first_wire
            .requested("GET", beta_mod)
            .iter()
            .any(|a| a.status == 200),
        "{beta_mod}"
    );
    for access in &first_wire.clients {
        assert!(
            access.status == 200 || access.status == 404,
            "only 200s and fallback 404s expected: {access}"
        );
    }

    // The second run took every .info, .mod and .zip from the proxy's store.
    assert_artifacts_from_store(&stack.fake, &first_wire, &second_wire);
    let second_upstream_ok: Vec<&Exchange> = second_wire
        .upstream
        .iter()
        .filter(|e| e.status == 200)
        .collect();
    assert!(
        second_upstream_ok.is_empty(),
        "the second run got nothing but 404s from GitLab: {second_upstream_ok:?}"
    );
}

/// A CI job's module: a private project read with `CI_JOB_TOKEN` from `.netrc` (user
/// `gitlab-ci-token`, which GitLab's Go API does not read from Basic auth: the proxy sends it
/// as `Job-Token`), at a version with upper-case letters (which the go command sends as
/// `%21r%21c1`, a form GitLab's route does not match: the proxy forwards `!r!c1`).
#[tokio::test]
async fn go_mod_download_with_a_ci_job_token_and_an_upper_case_version() {
    commands::require_tool("go");
    const JOBMOD: &str = "gitlab.example.com/group/jobmod";
    const JOB_TOKEN: &str = "glcbt-job-42";
    const VERSION: &str = "v1.0.0-RC1";
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = TestCa::create(dir.path());
    let fake_with = |visibility| {
        FakeGitLab::builder()
            .project(40, "group/jobmod", visibility)
            .go_version(
                40,
                "",
                VERSION,
                GO_TIMES[0],
                fixtures::go_module_files(JOBMOD, VERSION),
            )
            .token(
                JOB_TOKEN,
                TokenKind::Job,
                TokenState::Active,
                &[(40, Role::Reporter)],
            )
            .start()
    };
    let write_app = |root: &Path| {
        mkdir(root.join("home"));
        let app = mkdir(root.join("app"));
        write(
            &app.join("go.mod"),
            format!("module example.com/jobapp\n\ngo 1.19\n\nrequire {JOBMOD} {VERSION}\n"),
        );
        write(
            &app.join("main.go"),
            format!(
                "package main\n\nimport (\n\t\"fmt\"\n\n\tjobmod \"{JOBMOD}\"\n)\n\n\
                 func main() {{ fmt.Println(jobmod.Describe()) }}\n"
            ),
        );
    };
    let proxy_for = |base: &str| format!("{base}/api/v4/projects/40/packages/go");

    // Directly against GitLab (a public twin; go 1.19 sends no credentials over http), the
    // escaped version does not route: the download fails.
    let twin = fake_with(Visibility::Public).await;
    let root = dir.path().join("direct");
    write_app(&root);
    let mut direct = go(
        &root,
        &proxy_for(&twin.url()),
        &ca.ca_file,
        &["mod", "download"],
    );
    let direct = tokio::task::spawn_blocking(move || commands::run_unchecked(&mut direct, TIMEOUT))
        .await
        .expect("go against GitLab directly");
    assert!(!direct.success(), "{}", direct.report);
    assert!(
        twin.hits_prefix(&format!(
            "/api/v4/projects/40/packages/go/{JOBMOD}/@v/v1.0.0-%21r%21c1."
        )) > 0,
        "the go command sends the escaped version"
    );
    drop(twin);

    let stack = Stack::start(fake_with(Visibility::Private).await, Some(&ca)).await;
    let netrc = format!("machine 127.0.0.1 login gitlab-ci-token password {JOB_TOKEN}\n");
    let mut runs = Vec::new();
    for run_name in ["first", "second"] {
        let root = dir.path().join(run_name);
        write_app(&root);
        write(&root.join("home/.netrc"), &netrc);
        let proxy = proxy_for(&stack.proxy.url());
        run(go(&root, &proxy, &ca.ca_file, &["mod", "download"])).await;
        run(go(
            &root,
            &proxy,
            &ca.ca_file,
            &["build", "-o", "jobapp", "."],
        ))
        .await;
        let mut app = commands::clean(root.join("app/jobapp").to_str().expect("UTF-8 path"));
        app.current_dir(root.join("app"));
        let printed = run(app).await;
        assert_eq!(
            printed.stdout,
            format!("{JOBMOD}@{VERSION}\n"),
            "{}",
            printed.report
        );
        if run_name == "first" {
            // GitLab's Go API got the job token where it reads one.
            let path = format!("/api/v4/projects/40/packages/go/{JOBMOD}/@v/v1.0.0-!r!c1.info");
            let headers = stack
                .fake
                .last_request_headers(&path)
                .expect("GitLab saw the job");
            assert_eq!(headers["job-token"], JOB_TOKEN);
            assert!(!headers.contains_key("authorization"));
        }
        runs.push(stack.end_run(&format!("go with a CI job token, {run_name} run")));
    }
    let encoded = format!("/api/v4/projects/40/packages/go/{JOBMOD}/@v/v1.0.0-!r!c1");
    for ext in ["info", "mod", "zip"] {
        let asked = runs[0].requested("GET", &format!("{encoded}.{ext}"));
        assert!(
            !asked.is_empty() && asked.iter().all(|a| a.status == 200),
            "{ext}: {asked:?}"
        );
        // Stored once, under the one key; the second run never asked GitLab for it.
        assert!(
            runs[0]
                .upstream
                .iter()
                .any(|e| e.path_and_query == format!("{encoded}.{ext}")),
            "GitLab was asked for the `!` form of {ext}"
        );
    }
    assert_artifacts_from_store(&stack.fake, &runs[0], &runs[1]);
}

// ---------------------------------------------------------------------------------------
// RubyGems
// ---------------------------------------------------------------------------------------

/// `gpc_web` → `gpc_core` → `gpc_leaf`; `gpc_core` has a development dependency on
/// `gpc_devtool`, which GitLab's dependency API reports as if it were a runtime one.
fn build_gems(dir: &Path) -> Vec<GemFixture> {
    vec![
        fixtures::build_gem(dir, "gpc_leaf", "1.0.0", &[]),
        fixtures::build_gem(dir, "gpc_leaf", "1.1.0", &[]),
        fixtures::build_gem(dir, "gpc_devtool", "0.1.0", &[]),
        fixtures::build_gem_with(
            dir,
            "gpc_core",
            "2.0.0",
            &[("gpc_leaf", ">= 1.0, < 2")],
            &[("gpc_devtool", "~> 0.1")],
        ),
        fixtures::build_gem(
            dir,
            "gpc_web",
            "0.5.0",
            &[("gpc_core", "~> 2.0"), ("gpc_leaf", ">= 1.1")],
        ),
    ]
}

const WEB_DESCRIBED: &str = "gpc_web-0.5.0 [gpc_core-2.0.0 [gpc_leaf-1.1.0]] [gpc_leaf-1.1.0]";

/// A project (GitLab 19.1 RubyGems API unless `era` says otherwise) holding the gems, a
/// reader and a writer.
async fn gem_gitlab(gems: Vec<GemFixture>) -> FakeGitLab {
    gem_gitlab_in(RubyGemsEra::V19_1, Visibility::Private, gems).await
}

async fn gem_gitlab_in(
    era: RubyGemsEra,
    visibility: Visibility,
    gems: Vec<GemFixture>,
) -> FakeGitLab {
    let mut builder = FakeGitLab::builder()
        .era(era)
        .project(GEM_PROJECT, "group/gems", visibility)
        .token(
            GEM_READER,
            TokenKind::Personal {
                scopes: vec!["read_api"],
            },
            TokenState::Active,
            &[(GEM_PROJECT, Role::Reporter)],
        )
        .token(
            GEM_WRITER,
            TokenKind::Personal {
                scopes: vec!["api"],
            },
            TokenState::Active,
            &[(GEM_PROJECT, Role::Developer)],
        )
        .token(
            GEM_COLLEAGUE,
            TokenKind::Personal {
                scopes: vec!["read_api"],
            },
            TokenState::Active,
            &[(GEM_PROJECT, Role::Reporter)],
        )
        .token(
            GEM_STRANGER,
            TokenKind::Personal {
                scopes: vec!["api"],
            },
            TokenState::Active,
            &[(99, Role::Developer)],
        )
        .token(
            GEM_DEPLOY,
            TokenKind::Deploy {
                scopes: vec!["read_package_registry"],
            },
            TokenState::Active,
            &[(GEM_PROJECT, Role::Reporter)],
        );
    for gem in gems {
        builder = builder.gem(GEM_PROJECT, gem);
    }
    builder.start().await
}

fn rubygems_url(proxy: &str) -> String {
    format!("{proxy}/api/v4/projects/{GEM_PROJECT}/packages/rubygems")
}

/// A Ruby tool (`ruby`, `gem`, `bundle`) in a fresh world under `root`: HOME, GEM_HOME,
/// spec cache, bundler's user, cache and config directories, bundle path and app config.
fn ruby_tool(program: &str, root: &Path, args: &[&str]) -> Command {
    let home = root.join("home");
    let mut command = commands::clean(program);
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

fn fresh_ruby_world(root: &Path) {
    mkdir(root.join("home"));
    mkdir(root.join("app"));
    mkdir(root.join("gem-home"));
}

struct BundleRun {
    lockfile: String,
    /// What each Gemfile gem's `describe` printed under `bundle exec`, one line each.
    described: String,
}

/// How a bundle run authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GemCredentials {
    /// `bundle config set --global <source> __token__:<token>`.
    ConfigUserToken,
    /// `bundle config set --global <source> <token>` (Bundler sends `<token>:`).
    ConfigBareToken,
    /// `https://__token__:<token>@host/...` as the Gemfile's source.
    UrlUserinfo,
    /// `bundle config set --global <source> __token__:<token>` with another token.
    ConfigOtherToken(&'static str),
    /// `bundle config set --global <source> deployer:<deploy token>`.
    ConfigDeployToken,
    Anonymous,
}

/// `bundle lock`, `bundle install` and `bundle exec` of `gems` from `source` in a fresh
/// world under `root`; `bundle exec` loads every gem and prints its `describe`.
async fn bundle_run(
    root: &Path,
    source: &str,
    gems: &[&str],
    credentials: GemCredentials,
) -> BundleRun {
    let finished = bundle_commands(root, source, gems, credentials, true).await;
    let described = finished.expect("bundle succeeded").stdout;
    BundleRun {
        lockfile: read(&root.join("app/Gemfile.lock")),
        described,
    }
}

/// The bundle commands; with `must_pass` false, the first failure is returned as `Err`.
async fn bundle_commands(
    root: &Path,
    source: &str,
    gems: &[&str],
    credentials: GemCredentials,
    must_pass: bool,
) -> Result<Finished, Finished> {
    fresh_ruby_world(root);
    let mut gemfile_source = source.to_owned();
    match credentials {
        GemCredentials::ConfigUserToken | GemCredentials::ConfigBareToken => {
            let value = if credentials == GemCredentials::ConfigUserToken {
                format!("__token__:{GEM_READER}")
            } else {
                GEM_READER.to_owned()
            };
            run(ruby_tool(
                "bundle",
                root,
                &["config", "set", "--global", source, &value],
            ))
            .await;
        }
        GemCredentials::ConfigOtherToken(token) => {
            run(ruby_tool(
                "bundle",
                root,
                &[
                    "config",
                    "set",
                    "--global",
                    source,
                    &format!("__token__:{token}"),
                ],
            ))
            .await;
        }
        GemCredentials::UrlUserinfo => {
            gemfile_source = source.replacen("://", &format!("://__token__:{GEM_READER}@"), 1);
        }
        GemCredentials::ConfigDeployToken => {
            let value = format!("deployer:{GEM_DEPLOY}");
            run(ruby_tool(
                "bundle",
                root,
                &["config", "set", "--global", source, &value],
            ))
            .await;
        }
        GemCredentials::Anonymous => {}
    }
    let mut gemfile = format!("source {gemfile_source:?}\n\n");
    for gem in gems {
        let _ = writeln!(gemfile, "gem {gem:?}");
    }
    write(&root.join("app/Gemfile"), gemfile);
    let mut exec = vec![
        "exec",
        "ruby",
        "-e",
        "ARGV.each { |g| require g; \
         puts Object.const_get(g.split(\"_\").map(&:capitalize).join).describe }",
    ];
    exec.extend_from_slice(gems);
    let mut last = None;
    for args in [vec!["lock"], vec!["install"], exec] {
        let mut command = ruby_tool("bundle", root, &args);
        let finished = if must_pass {
            run(command).await
        } else {
            let finished =
                tokio::task::spawn_blocking(move || commands::run_unchecked(&mut command, TIMEOUT))
                    .await
                    .expect("bundle");
            if !finished.success() {
                return Err(finished);
            }
            finished
        };
        last = Some(finished);
    }
    Ok(last.expect("three commands ran"))
}

/// Runs the bundle commands twice (cold, then warm with a fresh client) against a proxy in
/// front of a project holding `gems`, with `credentials` for each run; checks what both
/// runs have in common and hands back the two runs.
async fn bundle_twice(
    label: &str,
    fake: FakeGitLab,
    gemfile: &[&str],
    described: &str,
    credentials: [GemCredentials; 2],
) -> (Stack, BundleRun, Run, Run) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let stack = Stack::start(fake, None).await;
    let source = rubygems_url(&stack.proxy.url());
    let first = bundle_run(&dir.path().join("first"), &source, gemfile, credentials[0]).await;
    let first_wire = stack.end_run(&format!("{label}, first run"));
    let second = bundle_run(&dir.path().join("second"), &source, gemfile, credentials[1]).await;
    let second_wire = stack.end_run(&format!("{label}, second run"));

    assert_eq!(first.described, described, "{}", first.lockfile);
    assert!(
        first.lockfile.contains(&format!("remote: {source}/")),
        "{}",
        first.lockfile
    );
    assert!(
        !first.lockfile.contains(GEM_READER),
        "credentials stay out of Gemfile.lock"
    );
    assert_eq!(second.lockfile, first.lockfile);
    assert_eq!(second.described, first.described);

    // Bundler takes the compact index the proxy writes, and nothing else of the index.
    let base = format!("/api/v4/projects/{GEM_PROJECT}/packages/rubygems");
    for wire in [&first_wire, &second_wire] {
        // Bundler 2.3 reads `versions` again before installing: 304 then.
        let versions = wire.requested("GET", &format!("{base}/versions"));
        assert!(
            versions.first().is_some_and(|a| a.status == 200)
                && versions.iter().all(|a| a.status == 200 || a.status == 304),
            "compact index: {versions:?}"
        );
        for access in &wire.clients {
            assert!(access.status < 400, "no error expected: {access}");
            assert!(
                !access.path.contains("/api/v1/dependencies") && !access.path.ends_with(".4.8.gz"),
                "the compact index is enough: {access}"
            );
        }
    }
    let infos = first_wire
        .clients
        .iter()
        .filter(|a| a.path.starts_with(&format!("{base}/info/")))
        .count();
    assert!(infos > 0, "bundler read info files");
    assert_artifacts_from_store(&stack.fake, &first_wire, &second_wire);
    (stack, first, first_wire, second_wire)
}

fn downloaded_gems(wire: &Run) -> BTreeSet<String> {
    let prefix = format!("/api/v4/projects/{GEM_PROJECT}/packages/rubygems/gems/");
    wire.clients
        .iter()
        .filter(|a| a.status == 200)
        .filter_map(|a| a.path.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
}

fn names(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

const ALL_RUNTIME: [&str; 4] = [
    "gpc_core-2.0.0.gem",
    "gpc_leaf-1.1.0.gem",
    "gpc_tool-1.0.0.gem",
    "gpc_web-0.5.0.gem",
];

/// The gems plus `gpc_tool`, whose development dependency (`rake`) the project does not
/// host: GitLab's dependency API answers 404 for it, the compact index (runtime dependencies
/// only) does not care.
fn build_gems_with_tool(dir: &Path) -> Vec<GemFixture> {
    let mut gems = build_gems(dir);
    gems.push(fixtures::build_gem_with(
        dir,
        "gpc_tool",
        "1.0.0",
        &[("gpc_leaf", "~> 1.0")],
        &[("rake", ">= 13")],
    ));
    gems
}

const TOOL_GEMFILE: [&str; 2] = ["gpc_web", "gpc_tool"];

fn tool_described() -> String {
    format!("{WEB_DESCRIBED}\ngpc_tool-1.0.0 [gpc_leaf-1.1.0]\n")
}

/// GitLab before 19.1, a private and a public project. Directly, bundler fails on both
/// (Basic credentials are an invalid token; the dependency API needs gemspecs GitLab 404s).
/// Through the proxy it works, cold and warm, with each way of giving credentials.
#[tokio::test]
async fn bundle_on_old_gitlab_through_the_proxy() {
    for tool in ["ruby", "gem", "bundle"] {
        commands::require_tool(tool);
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let gems = build_gems_with_tool(&mkdir(dir.path().join("gems")));
    for (visibility, credentials) in [
        (Visibility::Private, GemCredentials::ConfigUserToken),
        (Visibility::Public, GemCredentials::Anonymous),
    ] {
        let fake = gem_gitlab_in(RubyGemsEra::Pre19_1, visibility, gems.clone()).await;
        let root = dir.path().join(format!("direct-{visibility:?}"));
        let direct = bundle_commands(
            &root,
            &rubygems_url(&fake.url()),
            &TOOL_GEMFILE,
            credentials,
            false,
        )
        .await;
        let direct = direct.expect_err("bundle against GitLab < 19.1 directly fails");
        eprintln!(
            "directly against GitLab ({visibility:?}):\n{}",
            direct.report
        );
    }

    let fake = gem_gitlab_in(RubyGemsEra::Pre19_1, Visibility::Private, gems.clone()).await;
    let (stack, first, first_wire, _) = bundle_twice(
        "bundler, old GitLab, private project",
        fake,
        &TOOL_GEMFILE,
        &tool_described(),
        [
            GemCredentials::ConfigUserToken,
            GemCredentials::ConfigBareToken,
        ],
    )
    .await;
    assert_eq!(downloaded_gems(&first_wire), names(&ALL_RUNTIME));
    assert!(
        !first.lockfile.contains("gpc_devtool") && !first.lockfile.contains("rake"),
        "{}",
        first.lockfile
    );
    // Credentials in the source URL work too.
    let userinfo = bundle_run(
        &dir.path().join("userinfo"),
        &rubygems_url(&stack.proxy.url()),
        &TOOL_GEMFILE,
        GemCredentials::UrlUserinfo,
    )
    .await;
    assert_eq!(userinfo.described, tool_described());
    drop(stack);

    let fake = gem_gitlab_in(RubyGemsEra::Pre19_1, Visibility::Public, gems).await;
    bundle_twice(
        "bundler, old GitLab, public project",
        fake,
        &TOOL_GEMFILE,
        &tool_described(),
        [GemCredentials::Anonymous, GemCredentials::Anonymous],
    )
    .await;
}

/// A deploy token on GitLab before 19.1: it may not call the Packages API and there are no
/// spec indexes, so GitLab names no gem to it and the compact index starts empty. Once the
/// project's dependency API has shown the names (to any caller it let read them), they are
/// listed, and `bundle` works with the deploy token.
#[tokio::test]
async fn bundle_with_a_deploy_token_on_old_gitlab_once_names_were_seen() {
    use base64::Engine as _;
    for tool in ["ruby", "gem", "bundle"] {
        commands::require_tool(tool);
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let gems = build_gems_with_tool(&mkdir(dir.path().join("gems")));
    let fake = gem_gitlab_in(RubyGemsEra::Pre19_1, Visibility::Private, gems).await;
    let stack = Stack::start(fake, None).await;
    let source = rubygems_url(&stack.proxy.url());
    let deploy = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("deployer:{GEM_DEPLOY}"))
    );
    let auth = [("authorization", deploy.as_str())];
    let versions = support::client::get(&format!("{source}/versions"), &auth).await;
    assert_eq!(versions.status, 200);
    assert!(
        !versions.text().contains("gpc_"),
        "nothing is named to a deploy token yet:\n{}",
        versions.text()
    );
    let before = bundle_commands(
        &dir.path().join("before"),
        &source,
        &TOOL_GEMFILE,
        GemCredentials::ConfigDeployToken,
        false,
    )
    .await;
    assert!(before.is_err(), "bundle found gems nobody named");
    stack.end_run("deploy token, before the names were seen");

    // An older client's dependency query shows the names (and their versions).
    let shown = support::client::get(
        &format!("{source}/api/v1/dependencies?gems=gpc_web%2Cgpc_core%2Cgpc_leaf%2Cgpc_tool"),
        &auth,
    )
    .await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    let run = bundle_run(
        &dir.path().join("after"),
        &source,
        &TOOL_GEMFILE,
        GemCredentials::ConfigDeployToken,
    )
    .await;
    assert_eq!(run.described, tool_described(), "{}", run.lockfile);
    let wire = stack.end_run("deploy token, after the names were seen");
    assert_eq!(downloaded_gems(&wire), names(&ALL_RUNTIME));
}

/// Platform gems on GitLab before 19.1, which stores every gem as `<name>-<version>.gem`:
/// the compact index lists them as `<version>-<platform>`, Bundler picks the build for this
/// machine's platform over the `ruby` one and one for another platform, and downloads it
/// under its platform file name, which the proxy serves from the gem it indexed.
#[tokio::test]
async fn bundle_installs_the_platform_gem_for_this_machine() {
    for tool in ["ruby", "gem", "bundle"] {
        commands::require_tool(tool);
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let gems_dir = mkdir(dir.path().join("gems"));
    let gems = vec![
        fixtures::build_gem(&gems_dir, "gpc_native", "1.0.0", &[]),
        fixtures::build_platform_gem(&gems_dir, "gpc_native", "1.1.0", "x86_64-linux", &[]),
        fixtures::build_platform_gem(&gems_dir, "gpc_native", "1.2.0", "java", &[]),
    ];
    let native = gems[1].gem_bytes.clone();
    let fake = gem_gitlab_in(RubyGemsEra::Pre19_1, Visibility::Private, gems).await;
    let stack = Stack::start(fake, None).await;
    let source = rubygems_url(&stack.proxy.url());
    let reader = [("authorization", GEM_READER)];
    let info = support::client::get(&format!("{source}/info/gpc_native"), &reader).await;
    let info = info.text();
    for line in ["\n1.0.0 |", "\n1.1.0-x86_64-linux |", "\n1.2.0-java |"] {
        assert!(info.contains(line), "{line:?} in\n{info}");
    }
    let run = bundle_run(
        &dir.path().join("bundle"),
        &source,
        &["gpc_native"],
        GemCredentials::ConfigUserToken,
    )
    .await;
    assert_eq!(
        run.described, "gpc_native-1.1.0-x86_64-linux\n",
        "{}",
        run.lockfile
    );
    assert!(
        run.lockfile.contains("gpc_native (1.1.0-x86_64-linux)"),
        "{}",
        run.lockfile
    );
    let wire = stack.end_run("bundler, platform gems");
    assert_eq!(
        downloaded_gems(&wire),
        names(&["gpc_native-1.1.0-x86_64-linux.gem"])
    );
    let file = support::client::get(
        &format!("{source}/gems/gpc_native-1.1.0-x86_64-linux.gem"),
        &reader,
    )
    .await;
    assert_eq!(
        file.body, native,
        "the bytes GitLab stores as gpc_native-1.1.0.gem"
    );
    assert_eq!(
        support::client::get(&format!("{source}/gems/gpc_native-1.0.0-java.gem"), &reader)
            .await
            .status,
        404,
        "no such build"
    );
}

/// GitLab 19.1: the same through the proxy, which adds the compact index GitLab lacks.
#[tokio::test]
async fn bundle_on_gitlab_19_1_through_the_proxy() {
    for tool in ["ruby", "gem", "bundle"] {
        commands::require_tool(tool);
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let gems = build_gems_with_tool(&mkdir(dir.path().join("gems")));
    let (stack, first, first_wire, _) = bundle_twice(
        "bundler, GitLab 19.1, private project",
        gem_gitlab(gems).await,
        &TOOL_GEMFILE,
        &tool_described(),
        [
            GemCredentials::ConfigUserToken,
            GemCredentials::ConfigBareToken,
        ],
    )
    .await;
    assert_eq!(downloaded_gems(&first_wire), names(&ALL_RUNTIME));

    // A warm office: a colleague the proxy has not seen installs from the store; an unknown
    // token and one without access are refused (at the index, before any artifact), and
    // GitLab sent no stored artifact for any of them.
    let source = rubygems_url(&stack.proxy.url());
    let colleague = bundle_run(
        &dir.path().join("colleague"),
        &source,
        &TOOL_GEMFILE,
        GemCredentials::ConfigOtherToken(GEM_COLLEAGUE),
    )
    .await;
    assert_eq!(colleague.lockfile, first.lockfile);
    let colleague_wire = stack.end_run("bundler, a colleague the proxy has not seen yet");
    assert_artifacts_from_store_for(&stack.fake, &first_wire, &colleague_wire, Caller::New);
    let stored = first_wire.artifacts_served();
    for (label, token) in [
        ("bundler with an unknown token", UNKNOWN_TOKEN),
        ("bundler with a token without access", GEM_STRANGER),
    ] {
        let refused = bundle_commands(
            &dir.path().join(token),
            &source,
            &TOOL_GEMFILE,
            GemCredentials::ConfigOtherToken(token),
            false,
        )
        .await;
        refused.expect_err("bundler with a refused token fails");
        let wire = stack.end_run(label);
        let fetched: Vec<&Exchange> = wire
            .upstream
            .iter()
            .filter(|e| stored.contains(e.path_and_query.as_str()))
            .collect();
        assert!(fetched.is_empty(), "{label}: {fetched:?}");
        assert!(
            wire.clients.iter().any(|a| a.cache == "refused"),
            "{}",
            wire.summary(label)
        );
    }
}

struct GemInstallRun {
    installed: String,
}

async fn gem_install_run(root: &Path, source_with_credentials: &str) -> GemInstallRun {
    fresh_ruby_world(root);
    run(ruby_tool(
        "gem",
        root,
        &[
            "install",
            "gpc_web",
            "--clear-sources",
            "--source",
            source_with_credentials,
            "--no-document",
        ],
    ))
    .await;
    let described = run(ruby_tool(
        "ruby",
        root,
        &["-e", "require \"gpc_web\"; puts GpcWeb.describe"],
    ))
    .await;
    assert_eq!(
        described.stdout.trim(),
        WEB_DESCRIBED,
        "{}",
        described.report
    );
    let installed = run(ruby_tool("gem", root, &["list", "--local", "gpc_"])).await;
    GemInstallRun {
        installed: installed.stdout,
    }
}

#[tokio::test]
async fn gem_install_and_push_through_the_proxy() {
    for tool in ["ruby", "gem"] {
        commands::require_tool(tool);
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let gems_dir = mkdir(dir.path().join("gems"));
    let gems = build_gems(&gems_dir);
    let pushed = fixtures::build_gem(&gems_dir, "gpc_pushed", "0.1.0", &[("gpc_leaf", "~> 1.0")]);
    let stack = Stack::start(gem_gitlab(gems).await, None).await;
    let proxy = stack.proxy.url();
    let host_url = rubygems_url(&proxy);
    // Credentials in the source URL; gem sends them as Basic auth on every request.
    let source = format!(
        "{}/",
        rubygems_url(&format!(
            "http://__token__:{GEM_READER}@{}",
            authority(&proxy)
        ))
    );

    let first = gem_install_run(&dir.path().join("first"), &source).await;
    let first_wire = stack.end_run("gem install, first run");
    let second = gem_install_run(&dir.path().join("second"), &source).await;
    let second_wire = stack.end_run("gem install, second run");

    for installed in ["gpc_web (0.5.0)", "gpc_core (2.0.0)", "gpc_leaf (1.1.0)"] {
        assert!(first.installed.contains(installed), "{}", first.installed);
    }
    assert!(
        !first.installed.contains("gpc_devtool"),
        "gem reads real gemspecs and skips development dependencies:\n{}",
        first.installed
    );
    assert_eq!(second.installed, first.installed);

    // gem 3.3 probes the source root with HEAD (GitLab has no route there; the proxy
    // answers 200), then uses the compact index and the gemspecs.
    let base = format!("/api/v4/projects/{GEM_PROJECT}/packages/rubygems");
    for (method, path, status) in [
        ("HEAD", format!("{base}/"), 200),
        ("GET", format!("{base}/info/gpc_web"), 200),
        (
            "GET",
            format!("{base}/quick/Marshal.4.8/gpc_web-0.5.0.gemspec.rz"),
            200,
        ),
        ("GET", format!("{base}/gems/gpc_web-0.5.0.gem"), 200),
    ] {
        let asked = first_wire.requested(method, &path);
        assert!(
            !asked.is_empty() && asked.iter().all(|a| a.status == status),
            "{method} {path}: expected {status}, got {asked:?}"
        );
    }
    assert_artifacts_from_store(&stack.fake, &first_wire, &second_wire);

    // A warm office: a colleague the proxy has not seen installs from the store; an unknown
    // token and one without access are refused without GitLab sending any stored artifact.
    let source_for = |token: &str| {
        format!(
            "{}/",
            rubygems_url(&format!("http://__token__:{token}@{}", authority(&proxy)))
        )
    };
    let colleague =
        gem_install_run(&dir.path().join("colleague"), &source_for(GEM_COLLEAGUE)).await;
    assert_eq!(colleague.installed, first.installed);
    let colleague_wire = stack.end_run("gem install, a colleague the proxy has not seen yet");
    assert_artifacts_from_store_for(&stack.fake, &first_wire, &colleague_wire, Caller::New);
    let stored = first_wire.artifacts_served();
    for (label, token) in [
        ("gem install with an unknown token", UNKNOWN_TOKEN),
        ("gem install with a token without access", GEM_STRANGER),
    ] {
        let root = dir.path().join(token);
        fresh_ruby_world(&root);
        let source = source_for(token);
        run_failing(ruby_tool(
            "gem",
            &root,
            &[
                "install",
                "gpc_web",
                "--clear-sources",
                "--source",
                &source,
                "--no-document",
            ],
        ))
        .await;
        // gem stops at the refused index, before any artifact: ask for each stored one as
        // gem would (Basic credentials from the source URL) had it known their names.
        let credentials = basic_auth("__token__", token);
        for path in &stored {
            let response = support::client::get(
                &format!("{proxy}{path}"),
                &[("authorization", credentials.as_str())],
            )
            .await;
            assert!(
                response.status >= 400,
                "{label}: {path} {}",
                response.status
            );
        }
        let wire = stack.end_run(label);
        assert_refused_without_artifact_fetches(&stored, &wire, label);
    }

    // gem push, twice: first with ~/.gem/credentials holding the key under the --host URL
    // (the default `:rubygems_api_key:` is a wrong token, to show which one is used), then
    // with GEM_HOST_API_KEY. Uploads always go to GitLab.
    let gem_file = dir.path().join("gpc_pushed-0.1.0.gem");
    write(&gem_file, &pushed.gem_bytes);
    let gem_file = gem_file.to_str().expect("UTF-8 path").to_owned();
    let root = dir.path().join("push-credentials");
    fresh_ruby_world(&root);
    let credentials = root.join("home/.gem/credentials");
    mkdir(root.join("home/.gem"));
    write(
        &credentials,
        format!("---\n:rubygems_api_key: glpat-not-this-one\n{host_url}: {GEM_WRITER}\n"),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600))
            .expect("chmod 600 credentials");
    }
    run(ruby_tool(
        "gem",
        &root,
        &["push", &gem_file, "--host", &host_url],
    ))
    .await;
    assert_eq!(
        stack.fake.uploads(GEM_PROJECT),
        vec![pushed.gem_bytes.clone()]
    );

    let root = dir.path().join("push-env");
    fresh_ruby_world(&root);
    let mut push = ruby_tool("gem", &root, &["push", &gem_file, "--host", &host_url]);
    push.env("GEM_HOST_API_KEY", GEM_WRITER);
    run(push).await;
    assert_eq!(
        stack.fake.uploads(GEM_PROJECT),
        vec![pushed.gem_bytes.clone(), pushed.gem_bytes.clone()]
    );
    let push_wire = stack.end_run("gem push, twice");
    let upload = format!("{base}/api/v1/gems");
    let posts = push_wire.requested("POST", &upload);
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert!(posts.iter().all(|a| a.status == 201 && a.cache == "bypass"));
    assert_eq!(
        push_wire
            .upstream
            .iter()
            .filter(|e| e.method == "POST" && e.path_and_query == upload && e.status == 201)
            .count(),
        2
    );
}

/// `gem fetch` of `gpc_core` (full index: `latest_specs`, gemspec, gem) from `source`:
/// the fetched file, or the run's report. (gem 3.3 exits 0 when it finds nothing.)
async fn gem_fetch(root: &Path, source: &str) -> Result<Vec<u8>, String> {
    fresh_ruby_world(root);
    let mut command = ruby_tool(
        "gem",
        root,
        &["fetch", "gpc_core", "--clear-sources", "--source", source],
    );
    let finished =
        tokio::task::spawn_blocking(move || commands::run_unchecked(&mut command, TIMEOUT))
            .await
            .expect("gem fetch");
    match std::fs::read(root.join("app/gpc_core-2.0.0.gem")) {
        Ok(bytes) if finished.success() => Ok(bytes),
        _ => Err(finished.report),
    }
}

/// GitLab before 19.1 has no index and no gemspecs, and reads no Basic credentials, so
/// `gem install` and `gem fetch` fail against it directly; through the proxy both work,
/// cold and warm.
#[tokio::test]
async fn gem_install_and_fetch_on_old_gitlab_through_the_proxy() {
    for tool in ["ruby", "gem"] {
        commands::require_tool(tool);
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let gems = build_gems(&mkdir(dir.path().join("gems")));
    let expected = fixtures_gem_bytes(&gems, "gpc_core");
    let with_credentials = |url: &str| {
        format!(
            "{}/",
            rubygems_url(&format!("http://__token__:{GEM_READER}@{}", authority(url)))
        )
    };
    let fake = gem_gitlab_in(RubyGemsEra::Pre19_1, Visibility::Private, gems.clone()).await;
    let source = with_credentials(&fake.url());
    let root = dir.path().join("direct-install");
    fresh_ruby_world(&root);
    let mut install = ruby_tool(
        "gem",
        &root,
        &[
            "install",
            "gpc_web",
            "--clear-sources",
            "--source",
            &source,
            "--no-document",
        ],
    );
    let install =
        tokio::task::spawn_blocking(move || commands::run_unchecked(&mut install, TIMEOUT))
            .await
            .expect("gem install");
    assert!(!install.success(), "{}", install.report);
    gem_fetch(&dir.path().join("direct-fetch"), &source)
        .await
        .expect_err("gem fetch against GitLab < 19.1 directly fails");
    drop(fake);

    let stack = Stack::start(
        gem_gitlab_in(RubyGemsEra::Pre19_1, Visibility::Private, gems).await,
        None,
    )
    .await;
    let source = with_credentials(&stack.proxy.url());
    let mut runs = Vec::new();
    for run_name in ["first", "second"] {
        let install =
            gem_install_run(&dir.path().join(format!("{run_name}-install")), &source).await;
        assert!(
            install.installed.contains("gpc_web (0.5.0)"),
            "{}",
            install.installed
        );
        assert!(
            !install.installed.contains("gpc_devtool"),
            "{}",
            install.installed
        );
        let root = dir.path().join(format!("{run_name}-fetch"));
        let file = gem_fetch(&root, &source)
            .await
            .unwrap_or_else(|report| panic!("{report}"));
        assert_eq!(file, expected);
        runs.push(stack.end_run(&format!(
            "gem install and fetch, old GitLab, {run_name} run"
        )));
    }
    let base = format!("/api/v4/projects/{GEM_PROJECT}/packages/rubygems");
    for (method, path) in [
        ("HEAD", format!("{base}/")),
        ("GET", format!("{base}/info/gpc_web")),
        (
            "GET",
            format!("{base}/quick/Marshal.4.8/gpc_web-0.5.0.gemspec.rz"),
        ),
        (
            "GET",
            format!("{base}/quick/Marshal.4.8/gpc_core-2.0.0.gemspec.rz"),
        ),
        ("GET", format!("{base}/latest_specs.4.8.gz")),
        ("GET", format!("{base}/gems/gpc_core-2.0.0.gem")),
    ] {
        let asked = runs[0].requested(method, &path);
        assert!(
            !asked.is_empty() && asked.iter().all(|a| a.status == 200),
            "{method} {path}: {asked:?}"
        );
    }
    for access in runs.iter().flat_map(|r| &r.clients) {
        assert!(access.status < 400, "{access}");
    }
    assert_artifacts_from_store(&stack.fake, &runs[0], &runs[1]);
}

fn fixtures_gem_bytes(gems: &[GemFixture], name: &str) -> Vec<u8> {
    gems.iter()
        .find(|g| g.name == name)
        .map(|g| g.gem_bytes.clone())
        .expect("the gem is among the fixtures")
}

/// `gem install <name> -v <version>` from `source` in a fresh world under `root`.
async fn gem_install_version(root: &Path, source: &str, name: &str, version: &str) -> Finished {
    fresh_ruby_world(root);
    run(ruby_tool(
        "gem",
        root,
        &[
            "install",
            name,
            "-v",
            version,
            "--clear-sources",
            "--source",
            source,
            "--no-document",
        ],
    ))
    .await
}

/// A CI story on GitLab 19.1: a job installs a gem, the next pushes a new version through
/// the proxy, and the one after installs exactly that version at once, without waiting for
/// GitLab's background processing. The proxy holds the project's index from before the push;
/// it must not serve it after the push.
#[tokio::test]
async fn gem_push_then_install_of_the_new_version_through_the_proxy() {
    for tool in ["ruby", "gem"] {
        commands::require_tool(tool);
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let gems_dir = mkdir(dir.path().join("gems"));
    let old = fixtures::build_gem(&gems_dir, "gpc_fresh", "1.0.0", &[]);
    let new = fixtures::build_gem(&gems_dir, "gpc_fresh", "1.1.0", &[]);
    let processing = Processing {
        extract: std::sync::Arc::new(fixtures::extract_with_ruby),
        ..Processing::default()
    };
    let fake = FakeGitLab::builder()
        .era(RubyGemsEra::V19_1)
        .project(GEM_PROJECT, "group/gems", Visibility::Private)
        .token(
            GEM_WRITER,
            TokenKind::Personal {
                scopes: vec!["api"],
            },
            TokenState::Active,
            &[(GEM_PROJECT, Role::Developer)],
        )
        .gem(GEM_PROJECT, old)
        .processing(processing)
        .start()
        .await;
    let stack = Stack::start(fake, None).await;
    let proxy = stack.proxy.url();
    let host_url = rubygems_url(&proxy);
    let source = format!(
        "{}/",
        rubygems_url(&format!(
            "http://__token__:{GEM_WRITER}@{}",
            authority(&proxy)
        ))
    );
    gem_install_version(&dir.path().join("before"), &source, "gpc_fresh", "1.0.0").await;
    stack.end_run("gem install 1.0.0");

    let gem_file = dir.path().join("gpc_fresh-1.1.0.gem");
    write(&gem_file, &new.gem_bytes);
    let root = dir.path().join("push");
    fresh_ruby_world(&root);
    let mut push = ruby_tool(
        "gem",
        &root,
        &[
            "push",
            gem_file.to_str().expect("UTF-8 path"),
            "--host",
            &host_url,
        ],
    );
    push.env("GEM_HOST_API_KEY", GEM_WRITER);
    run(push).await;
    // At once: GitLab may still be processing the upload in the background.
    let processed = stack.fake.gem_versions(GEM_PROJECT, "gpc_fresh").len() == 2;
    eprintln!("GitLab had processed the upload before the install: {processed}");

    let installed =
        gem_install_version(&dir.path().join("after"), &source, "gpc_fresh", "1.1.0").await;
    assert!(installed.success(), "{}", installed.report);
    let wire = stack.end_run("gem install 1.1.0 after the push");
    let base = format!("/api/v4/projects/{GEM_PROJECT}/packages/rubygems");
    let gem = format!("{base}/gems/gpc_fresh-1.1.0.gem");
    assert!(
        wire.upstream.iter().all(|e| e.path_and_query != gem),
        "the pushed gem was downloaded from GitLab again"
    );
}

// ---------------------------------------------------------------------------------------
// Freshness: what the next CI job sees after a change
// ---------------------------------------------------------------------------------------

/// A CI story on both GitLab eras: a job bundles `gpc_fresh` 1.0.0 (so the proxy holds the
/// project's answers from before the push), the next job pushes 1.1.0 with `gem push`
/// through the proxy, and the job after that runs `bundle lock` and `bundle install` at
/// once — no waiting for GitLab's background extraction — and gets 1.1.0, its bytes from
/// the proxy's store.
#[tokio::test]
async fn bundle_right_after_a_gem_push_through_the_proxy_gets_the_new_version() {
    for tool in ["ruby", "gem", "bundle"] {
        commands::require_tool(tool);
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let gems_dir = mkdir(dir.path().join("gems"));
    let old = fixtures::build_gem(&gems_dir, "gpc_fresh", "1.0.0", &[]);
    let new = fixtures::build_gem(&gems_dir, "gpc_fresh", "1.1.0", &[]);
    let gem_file = dir.path().join("gpc_fresh-1.1.0.gem");
    write(&gem_file, &new.gem_bytes);
    let gem_file = gem_file.to_str().expect("UTF-8 path").to_owned();
    for era in [RubyGemsEra::Pre19_1, RubyGemsEra::V19_1] {
        let fake = gem_gitlab_in(era, Visibility::Private, vec![old.clone()]).await;
        let stack = Stack::start(fake, None).await;
        let source = rubygems_url(&stack.proxy.url());
        let root = dir.path().join(format!("{era:?}"));
        let before = bundle_run(
            &root.join("before"),
            &source,
            &["gpc_fresh"],
            GemCredentials::ConfigUserToken,
        )
        .await;
        assert_eq!(before.described, "gpc_fresh-1.0.0\n", "{}", before.lockfile);
        stack.end_run(&format!("{era:?}: bundle before the push"));

        let push_root = root.join("push");
        fresh_ruby_world(&push_root);
        let mut push = ruby_tool("gem", &push_root, &["push", &gem_file, "--host", &source]);
        push.env("GEM_HOST_API_KEY", GEM_WRITER);
        run(push).await;
        let processed = stack.fake.gem_versions(GEM_PROJECT, "gpc_fresh").len() == 2;

        let after = bundle_run(
            &root.join("after"),
            &source,
            &["gpc_fresh"],
            GemCredentials::ConfigUserToken,
        )
        .await;
        let wire = stack.end_run(&format!("{era:?}: bundle right after the push"));
        assert!(
            after.lockfile.contains("gpc_fresh (1.1.0)"),
            "{era:?}: bundle lock resolved an older version:\n{}",
            after.lockfile
        );
        assert_eq!(after.described, "gpc_fresh-1.1.0\n", "{era:?}");
        let base = format!("/api/v4/projects/{GEM_PROJECT}/packages/rubygems");
        let gem = format!("{base}/gems/gpc_fresh-1.1.0.gem");
        let served = wire.requested("GET", &gem);
        assert!(
            !served.is_empty() && served.iter().all(|a| a.status == 200),
            "{era:?}: {served:?}"
        );
        assert!(
            wire.upstream.iter().all(|e| e.path_and_query != gem),
            "{era:?}: the pushed gem was downloaded from GitLab again"
        );
        eprintln!("{era:?}: GitLab had processed the upload before the bundle: {processed}");
    }
}

/// A developer tags v1.1.0; `go get module@latest` through the proxy, asked again and again
/// as CI jobs would, resolves it once the cached `@v/list` is refreshed: within
/// `metadata_ttl` (2 s here, so the test need not wait the default 30 s that
/// tests/freshness.rs proves on tokio's paused clock). A tag asked for by name, which the
/// cached list lacks, shows in `go list -m -versions` at once, with a long TTL.
#[tokio::test]
async fn go_get_latest_through_the_proxy_sees_a_new_tag() {
    commands::require_tool("go");
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = TestCa::create(dir.path());
    let netrc = format!("machine 127.0.0.1 login __token__ password {GO_READER}\n");
    let fake = || {
        FakeGitLab::builder()
            .project(10, "group/alpha", Visibility::Private)
            .go_version(
                10,
                "",
                "v1.0.0",
                GO_TIMES[0],
                fixtures::go_module_files(ALPHA, "v1.0.0"),
            )
            .token(
                GO_READER,
                TokenKind::Personal {
                    scopes: vec!["read_api"],
                },
                TokenState::Active,
                &[(10, Role::Reporter)],
            )
            .start()
    };
    // Each job in a fresh world: its own HOME, module cache and an empty module.
    let mut jobs = 0;
    let mut job = |proxy: &str, args: &[&str]| {
        jobs += 1;
        let root = dir.path().join(format!("job-{jobs}"));
        write(&mkdir(root.join("home")).join(".netrc"), &netrc);
        write(
            &mkdir(root.join("app")).join("go.mod"),
            "module example.com/latest\n\ngo 1.19\n",
        );
        let proxy = format!("{proxy}/api/v4/projects/10/packages/go");
        let command = go(&root, &proxy, &ca.ca_file, args);
        let gomod = root.join("app/go.mod");
        async move {
            let finished = run(command).await;
            (finished, read(&gomod))
        }
    };
    let requires = |gomod: &str, version: &str| gomod.contains(&format!("{ALPHA} {version}"));
    let get_latest = format!("{ALPHA}@latest");

    // With a short list TTL: the new tag shows to CI jobs that keep asking.
    const TTL: Duration = Duration::from_secs(2);
    let stack = Stack::start_with(fake().await, Some(&ca), |config| {
        config.cache.metadata_ttl = TTL;
    })
    .await;
    let proxy = stack.proxy.url();
    let (_, gomod) = job(&proxy, &["get", &get_latest]).await;
    assert!(requires(&gomod, "v1.0.0"), "{gomod}");
    stack.fake.create_tag(
        10,
        "",
        "v1.1.0",
        GO_TIMES[1],
        fixtures::go_module_files(ALPHA, "v1.1.0"),
    );
    let tagged = std::time::Instant::now();
    let bound = TTL + Duration::from_secs(60);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (_, gomod) = job(&proxy, &["get", &get_latest]).await;
        if requires(&gomod, "v1.1.0") {
            break;
        }
        assert!(requires(&gomod, "v1.0.0"), "{gomod}");
        assert!(
            tagged.elapsed() < bound,
            "go get @latest still resolves v1.0.0 {:?} after the tag",
            tagged.elapsed()
        );
    }
    eprintln!(
        "go get @latest resolved the new tag on attempt {attempts}, {:?} after it",
        tagged.elapsed()
    );
    let list = "/api/v4/projects/10/packages/go/gitlab.example.com/group/alpha/@v/list";
    let wire = stack.end_run("go get @latest after a new tag");
    assert!(
        wire.upstream
            .iter()
            .any(|e| e.path_and_query == list && e.status == 200),
        "the list was asked of GitLab again"
    );
    drop(stack);

    // With the long TTL of the other tests: asking for the new tag by name moves the list
    // on, so the next query agrees with the build.
    let stack = Stack::start(fake().await, Some(&ca)).await;
    let proxy = stack.proxy.url();
    let (_, gomod) = job(&proxy, &["get", &get_latest]).await;
    assert!(requires(&gomod, "v1.0.0"), "{gomod}");
    stack.fake.create_tag(
        10,
        "",
        "v1.2.0",
        GO_TIMES[2],
        fixtures::go_module_files(ALPHA, "v1.2.0"),
    );
    let (_, gomod) = job(&proxy, &["get", &format!("{ALPHA}@v1.2.0")]).await;
    assert!(requires(&gomod, "v1.2.0"), "{gomod}");
    let (versions, _) = job(&proxy, &["list", "-m", "-versions", ALPHA]).await;
    assert_eq!(
        versions.stdout.trim(),
        format!("{ALPHA} v1.0.0 v1.2.0"),
        "{}",
        versions.report
    );
    let (_, gomod) = job(&proxy, &["get", &get_latest]).await;
    assert!(requires(&gomod, "v1.2.0"), "{gomod}");
}

// ---------------------------------------------------------------------------------------
// Chained proxies: office → regional → GitLab
// ---------------------------------------------------------------------------------------

/// An office proxy whose upstream is a regional proxy in front of GitLab. The office keeps
/// nothing fresh (every list and every decision is asked of the regional tier again), so
/// credentials must pass through on every request, and what it serves with the regional
/// tier stopped is its offline grace.
async fn office_in_front_of(regional: &TestProxy, tls: Option<&TestCa>) -> TestProxy {
    TestProxy::start_with(&regional.url(), |config| {
        config.upstream.chained = true;
        config.cache.metadata_ttl = Duration::from_millis(1);
        config.cache.metadata_max_stale = Duration::from_millis(1);
        config.cache.auth_ttl = Duration::from_millis(1);
        config.cache.auth_refresh_window = Duration::ZERO;
        if let Some(ca) = tls {
            config.tls.cert_file = Some(ca.cert_file.clone());
            config.tls.key_file = Some(ca.key_file.clone());
        }
    })
    .await
}

/// `go mod download` and `go build` through an office (HTTPS, where go sends `.netrc`) in
/// front of a regional proxy: the same go.sum as directly; the second office asks the
/// regional tier, which answers every artifact from its store; an anonymous go command gets
/// GitLab's 401 at the office; with the regional tier stopped, the office builds again from
/// its own cache.
#[tokio::test]
async fn go_builds_through_an_office_proxy_in_front_of_a_regional_one() {
    commands::require_tool("go");
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = TestCa::create(dir.path());
    let twin = go_gitlab(false).await;
    let direct = go_run(
        &dir.path().join("direct"),
        &goproxy(&twin.url()),
        &ca.ca_file,
        None,
    )
    .await;
    drop(twin);

    let fake = go_gitlab(true).await;
    let regional = TestProxy::start(&fake.url()).await;
    let office = office_in_front_of(&regional, Some(&ca)).await;
    let netrc = format!("machine 127.0.0.1 login __token__ password {GO_READER}\n");
    let first = go_run(
        &dir.path().join("first"),
        &goproxy(&office.url()),
        &ca.ca_file,
        Some(&netrc),
    )
    .await;
    assert_eq!(first.go_sum, direct.go_sum, "go.sum through two tiers");
    let alpha = "/api/v4/projects/10/packages/go/gitlab.example.com/group/alpha/@v/v1.1.0";
    assert_eq!(
        fake.hits(&format!("{alpha}.zip")),
        1,
        "GitLab built the zip once"
    );

    // A second office in front of the same regional tier: every artifact comes from the
    // regional store.
    fake.reset_hits();
    let other_office = office_in_front_of(&regional, Some(&ca)).await;
    let second = go_run(
        &dir.path().join("second"),
        &goproxy(&other_office.url()),
        &ca.ca_file,
        Some(&netrc),
    )
    .await;
    assert_eq!(second.go_sum, direct.go_sum);
    for ext in ["info", "mod", "zip"] {
        assert_eq!(
            fake.hits(&format!("{alpha}.{ext}")),
            0,
            "the regional tier had the .{ext}"
        );
    }

    // Without credentials: GitLab's 401 reaches the go command through both tiers.
    let root = dir.path().join("anonymous");
    mkdir(root.join("home"));
    write_consumer(&mkdir(root.join("app")));
    let mut anonymous = go(
        &root,
        &goproxy(&office.url()),
        &ca.ca_file,
        &["mod", "download"],
    );
    let anonymous =
        tokio::task::spawn_blocking(move || commands::run_unchecked(&mut anonymous, TIMEOUT))
            .await
            .expect("go without credentials");
    assert!(
        !anonymous.success() && anonymous.stderr.contains("401 Unauthorized"),
        "{}",
        anonymous.report
    );

    // The regional tier goes away: the office serves the caller it saw accepted.
    fake.reset_hits();
    regional.stop().await;
    let offline = go_run(
        &dir.path().join("offline"),
        &goproxy(&office.url()),
        &ca.ca_file,
        Some(&netrc),
    )
    .await;
    assert_eq!(
        offline.go_sum, direct.go_sum,
        "built from the office's cache"
    );
    assert_eq!(fake.total_hits(), 0);
}

/// `bundle install` through an office in front of a regional proxy (GitLab 19.1, private
/// project): the office's compact index is the regional tier's, byte for byte; a caller
/// GitLab refuses gets GitLab's answer at the office and never a cached gem; with the
/// regional tier stopped, the office installs the same bundle from its cache.
#[tokio::test]
async fn bundle_installs_through_an_office_proxy_in_front_of_a_regional_one() {
    for tool in ["ruby", "gem", "bundle"] {
        commands::require_tool(tool);
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let gems = build_gems_with_tool(&mkdir(dir.path().join("gems")));
    let fake = gem_gitlab(gems).await;
    let regional = TestProxy::start(&fake.url()).await;
    let office = office_in_front_of(&regional, None).await;
    let source = rubygems_url(&office.url());
    let first = bundle_run(
        &dir.path().join("first"),
        &source,
        &TOOL_GEMFILE,
        GemCredentials::ConfigUserToken,
    )
    .await;
    assert_eq!(first.described, tool_described(), "{}", first.lockfile);

    let reader = [("authorization", GEM_READER)];
    for file in ["versions", "info/gpc_web", "info/gpc_core", "names"] {
        let at_office = client::get(&format!("{source}/{file}"), &reader).await;
        let at_regional = client::get(
            &format!("{}/{file}", rubygems_url(&regional.url())),
            &reader,
        )
        .await;
        assert_eq!(at_office.status, 200, "{file}: {}", at_office.text());
        assert_eq!(
            at_office.body, at_regional.body,
            "{file}: the same index at both tiers"
        );
        assert_eq!(
            at_office.header("etag"),
            at_regional.header("etag"),
            "{file}"
        );
    }

    // A refused caller: GitLab's answer, at the office as at GitLab, and no gem bytes.
    let gem = "gems/gpc_web-0.5.0.gem";
    let stored = client::get(&format!("{source}/{gem}"), &reader).await;
    assert_eq!(
        (stored.status, stored.header("x-cache")),
        (200, Some("hit"))
    );
    for refused in [vec![("authorization", "glpat-not-a-token")], Vec::new()] {
        let at_gitlab =
            client::get(&format!("{}/{gem}", rubygems_url(&fake.url())), &refused).await;
        let at_office = client::get(&format!("{source}/{gem}"), &refused).await;
        assert_ne!(at_gitlab.status, 200);
        assert_eq!(
            at_office.status,
            at_gitlab.status,
            "{refused:?}: {}",
            at_office.text()
        );
        assert_ne!(at_office.body, stored.body);
    }

    // The regional tier goes away: the office serves the caller it saw accepted.
    fake.reset_hits();
    regional.stop().await;
    let offline = bundle_run(
        &dir.path().join("offline"),
        &source,
        &TOOL_GEMFILE,
        GemCredentials::ConfigUserToken,
    )
    .await;
    assert_eq!(offline.described, tool_described());
    assert_eq!(offline.lockfile, first.lockfile);
    assert_eq!(fake.total_hits(), 0);
}
