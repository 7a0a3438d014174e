//! How the proxy is served and run: HTTPS with HTTP/1.1 and HTTP/2 (ALPN), h2c on the plain
//! listener, GitLab behind a private CA, graceful shutdown, and the binary's configuration
//! layering (file < environment < flags), help, secrecy and errors.

mod support;

use support::eventually;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::CommandFactory;
use gitlab_pkg_cache::config::{Cli, Config};
use gitlab_pkg_cache::state::AppState;
use gitlab_pkg_cache::storage::MemoryStore;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use support::client;
use support::fake_gitlab::{FakeGitLab, Fault, Visibility};
use support::pki::{trusting, Pki};
use support::proxy::TestProxy;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

const LIST: &str = "/api/v4/projects/1/packages/go/gitlab.example.com/acme/public/@v/list";
const TIME: &str = "2024-05-01T10:00:00.000+00:00";
const BIN: &str = env!("CARGO_BIN_EXE_gitlab-pkg-cache");

async fn gitlab() -> FakeGitLab {
    let module = |version: &str| {
        (
            version.to_owned(),
            vec![(
                "go.mod".to_owned(),
                b"module gitlab.example.com/acme/public\n".to_vec(),
            )],
        )
    };
    let (v1, files1) = module("v1.0.0");
    let (v2, files2) = module("v1.1.0");
    FakeGitLab::builder()
        .project(1, "acme/public", Visibility::Public)
        .go_version(1, "", &v1, TIME, files1)
        .go_version(1, "", &v2, TIME, files2)
        .start()
        .await
}

const LIST_BODY: &str = "v1.0.0\nv1.1.0";

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What came back, and over which HTTP version.
struct Answer {
    version: http::Version,
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn fetch<C>(client: Client<C, Empty<Bytes>>, url: &str) -> Answer
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let request = http::Request::get(url)
        .body(Empty::new())
        .expect("a request");
    let response = client
        .request(request)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    let version = response.version();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a whole body")
        .to_bytes();
    Answer {
        version,
        status,
        headers,
        body,
    }
}

/// GET over HTTPS trusting only `ca`, offering only HTTP/2 (`h2`) or only HTTP/1.1 by ALPN.
async fn https_get(url: &str, ca: &Path, http2: bool) -> Answer {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(trusting(ca))
        .https_only();
    let connector = if http2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    fetch(Client::builder(TokioExecutor::new()).build(connector), url).await
}

#[tokio::test]
async fn https_serves_http1_and_http2_by_alpn() {
    let fake = gitlab().await;
    let pki = Pki::new();
    let proxy = TestProxy::start_with(&fake.url(), |config| {
        config.tls.cert_file = Some(pki.cert());
        config.tls.key_file = Some(pki.key());
    })
    .await;
    assert!(
        proxy.url().starts_with("https://127.0.0.1:"),
        "{}",
        proxy.url()
    );
    let url = format!("{}{LIST}", proxy.url());

    let h1 = https_get(&url, &pki.ca(), false).await;
    assert_eq!(h1.version, http::Version::HTTP_11);
    assert_eq!((h1.status, h1.text().as_str()), (200, LIST_BODY));
    assert_eq!(
        h1.headers.get("x-cache").map(|v| v.as_bytes()),
        Some(&b"miss"[..])
    );

    let h2 = https_get(&url, &pki.ca(), true).await;
    assert_eq!(h2.version, http::Version::HTTP_2);
    assert_eq!((h2.status, h2.text().as_str()), (200, LIST_BODY));
    assert_eq!(
        h2.headers.get("x-cache").map(|v| v.as_bytes()),
        Some(&b"hit"[..])
    );

    // A routing error over h2 is still GitLab's catch-all, with x-cache.
    let missing = https_get(&format!("{}/api/v4/user", proxy.url()), &pki.ca(), true).await;
    assert_eq!(
        (missing.status, missing.text().as_str()),
        (404, r#"{"error":"404 Not Found"}"#)
    );
    assert_eq!(fake.hits(LIST), 1);
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_gets_nothing() {
    let fake = gitlab().await;
    let pki = Pki::new();
    let stranger = Pki::new();
    let proxy = TestProxy::start_with(&fake.url(), |config| {
        config.tls.cert_file = Some(pki.cert());
        config.tls.key_file = Some(pki.key());
    })
    .await;
    let client = Client::builder(TokioExecutor::new()).build(
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(trusting(&stranger.ca()))
            .https_only()
            .enable_http1()
            .build(),
    );
    let request = http::Request::get(format!("{}{LIST}", proxy.url()))
        .body(Empty::<Bytes>::new())
        .expect("a request");
    assert!(client.request(request).await.is_err());
    // Plain HTTP on the TLS port gets no HTTP answer either.
    assert!(client::try_request(
        "GET",
        &format!("http://{}{LIST}", proxy_addr(&proxy)),
        &[],
        None
    )
    .await
    .is_err());
    assert_eq!(fake.total_hits(), 0);
    // And the listener is still fine for a client that trusts it.
    let ok = https_get(&format!("{}{LIST}", proxy.url()), &pki.ca(), false).await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn h2c_with_prior_knowledge_on_the_plain_listener() {
    let fake = gitlab().await;
    let proxy = TestProxy::start(&fake.url()).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let first = fetch(client.clone(), &format!("{}{LIST}", proxy.url())).await;
    assert_eq!(first.version, http::Version::HTTP_2);
    assert_eq!((first.status, first.text().as_str()), (200, LIST_BODY));
    // Two requests on the one multiplexed connection.
    let second = fetch(client, &format!("{}{LIST}", proxy.url())).await;
    assert_eq!(
        second.headers.get("x-cache").map(|v| v.as_bytes()),
        Some(&b"hit"[..])
    );
}

fn proxy_addr(proxy: &TestProxy) -> String {
    proxy
        .url()
        .split("://")
        .nth(1)
        .expect("scheme://address")
        .to_owned()
}

/// A TLS front for the fake GitLab: terminates TLS with `pki`'s certificate (offering the
/// given ALPN protocols) and relays the bytes to the fake's plain listener.
async fn tls_front(fake: &FakeGitLab, pki: &Pki, alpn: &[&[u8]]) -> String {
    let certs = CertificateDer::pem_file_iter(pki.cert())
        .expect("cert file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(pki.key()).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let backend = fake.url().trim_start_matches("http://").to_owned();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let backend = backend.clone();
            tokio::spawn(async move {
                // A failed handshake is what the wrong-CA cases are about: just close.
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(&backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    format!("https://{addr}")
}

#[tokio::test]
async fn gitlab_over_https_with_a_private_ca() {
    let fake = gitlab().await;
    let pki = Pki::new();
    for (label, alpn) in [
        ("HTTP/1.1", &[&b"http/1.1"[..]][..]),
        ("HTTP/2", &[&b"h2"[..], &b"http/1.1"[..]][..]),
    ] {
        let upstream = tls_front(&fake, &pki, alpn).await;
        let ca = pki.ca();
        let proxy = TestProxy::start_with(&upstream, |config| {
            config.upstream.ca_file = Some(ca);
        })
        .await;
        fake.reset_hits();
        let r = client::get(&format!("{}{LIST}", proxy.url()), &[]).await;
        assert_eq!((r.status, r.text().as_str()), (200, LIST_BODY), "{label}");
        assert_eq!(fake.hits(LIST), 1, "{label}: the path arrived as sent");
        let private = client::get(
            &format!(
                "{}/api/v4/projects/9/packages/go/gitlab.example.com/x/@v/list",
                proxy.url()
            ),
            &[],
        )
        .await;
        assert_eq!(private.status, 401, "{label}: GitLab's refusal relayed");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn an_untrusted_gitlab_certificate_is_a_502_never_a_404() {
    let fake = gitlab().await;
    let pki = Pki::new();
    let other = Pki::new();
    let upstream = tls_front(&fake, &pki, &[b"http/1.1"]).await;
    let paths = [
        LIST.to_owned(),
        LIST.replace("list", "v1.0.0.zip"),
        "/api/v4/projects/1/packages/rubygems/gems/foo-1.0.0.gem".to_owned(),
        "/api/v4/projects/1/packages/rubygems/api/v1/dependencies?gems=foo".to_owned(),
    ];
    for (label, ca_file) in [("another CA", Some(other.ca())), ("no CA file", None)] {
        let proxy = TestProxy::start_with(&upstream, |config| {
            config.upstream.ca_file = ca_file;
        })
        .await;
        for (i, path) in paths.iter().enumerate() {
            let r = client::get(&format!("{}{path}", proxy.url()), &[]).await;
            // The first failure is a 502; after `upstream.failure_threshold` of them GitLab
            // is marked down and the proxy answers 503 at once. Never a 404.
            let text = r.text();
            let unreachable =
                r.status == 502 && text.starts_with("gitlab-pkg-cache: GitLab is unreachable");
            let marked_down =
                r.status == 503 && text.starts_with("gitlab-pkg-cache: GitLab is marked down");
            assert!(
                unreachable || (i > 0 && marked_down),
                "{label} {path}: {} {text}",
                r.status
            );
            assert_eq!(
                r.header("content-type"),
                Some("text/plain; charset=utf-8"),
                "{label} {path}"
            );
        }
        proxy.stop().await;
    }
    assert_eq!(fake.total_hits(), 0, "no request got past the handshake");
}

#[tokio::test]
async fn an_unusable_ca_file_stops_the_proxy_from_starting() {
    let dir = tempfile::tempdir().expect("a directory");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let missing = dir.path().join("missing.pem");
    for (file, expected) in [
        (&missing, "reading CA file"),
        (&empty, "holds no certificate"),
        (&garbage, "CA file"),
    ] {
        let mut config =
            Config::for_tests("https://127.0.0.1:1", dir.path()).expect("a test config");
        config.upstream.ca_file = Some(file.clone());
        match AppState::build_with_store(config, Arc::new(MemoryStore::new())) {
            Ok(_) => panic!("{}: the proxy started", file.display()),
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains(expected), "{}: {text}", file.display());
                assert!(
                    text.contains(&file.display().to_string()),
                    "the error names the file: {text}"
                );
            }
        }
    }
}

/// Polls (bounded) until nothing accepts connections at `addr` any more.
async fn until_refused(addr: &str) {
    for _ in 0..500 {
        if TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} still accepts connections");
}

/// Starts a GET of `url` in the background, to be held by the fake.
fn in_flight(url: String) -> tokio::task::JoinHandle<Result<client::Response, client::Error>> {
    tokio::spawn(async move { client::try_request("GET", &url, &[], None).await })
}

#[tokio::test]
async fn stop_drains_a_request_in_flight_and_refuses_new_connections() {
    let fake = gitlab().await;
    let gate = Arc::new(Semaphore::new(0));
    fake.set_fault(LIST, Fault::Hold(gate.clone()));
    let proxy = TestProxy::start(&fake.url()).await;
    let addr = proxy_addr(&proxy);
    let request = in_flight(format!("{}{LIST}", proxy.url()));
    eventually("the request reached GitLab", || fake.hits(LIST) == 1).await;

    let stopping = tokio::spawn(proxy.stop());
    until_refused(&addr).await;
    assert!(!request.is_finished(), "the held request ended early");
    assert!(!stopping.is_finished(), "stop did not wait for the request");

    gate.add_permits(1);
    let answer = request
        .await
        .expect("the request task")
        .expect("the held request completes after stop() was called");
    assert_eq!((answer.status, answer.text().as_str()), (200, LIST_BODY));
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("stop() returns once drained")
        .expect("the stop task");
    assert!(
        TcpStream::connect(&addr).await.is_err(),
        "accepting after stop"
    );
}

#[tokio::test]
async fn stop_cuts_what_is_still_running_after_the_grace_period() {
    let fake = gitlab().await;
    let gate = Arc::new(Semaphore::new(0));
    fake.set_fault(LIST, Fault::Hold(gate.clone()));
    let proxy = TestProxy::start_with(&fake.url(), |config| {
        config.server.shutdown_grace = Duration::from_millis(300);
    })
    .await;
    let request = in_flight(format!("{}{LIST}", proxy.url()));
    eventually("the request reached GitLab", || fake.hits(LIST) == 1).await;
    // TestProxy::stop also waits for every task holding the proxy's state to end.
    tokio::time::timeout(Duration::from_secs(10), proxy.stop())
        .await
        .expect("stop() returns within the grace period and a little");
    let cut = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .expect("the held request ends with the proxy")
        .expect("the request task");
    assert!(cut.is_err(), "a cut request cannot have a complete answer");
    gate.close();
}

// ---------------------------------------------------------------------------------------
// The binary.

/// Arguments of one run of the binary.
type Args<'a> = Vec<&'a str>;
/// The whole environment of one run of the binary.
type Env<'a> = Vec<(&'a str, &'a str)>;

/// Runs the binary with exactly `env` as its environment (the test's own is never touched
/// nor inherited) and returns what it printed; bounded, killed if it hangs.
async fn run_binary(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("gitlab-pkg-cache {args:?} did not exit"))
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The configuration `gitlab-pkg-cache config` printed, read back with the crate's parser.
fn printed_config(output: &Output) -> Config {
    assert!(
        output.status.success(),
        "config failed: {}{}",
        stdout(output),
        stderr(output)
    );
    Config::from_toml(&stdout(output))
        .unwrap_or_else(|e| panic!("printed config does not parse: {e}\n{}", stdout(output)))
}

const FILE: &str = r#"
listen = "127.0.0.1:9000"
data_dir = "/var/lib/from-file"

[upstream]
url = "https://file.example"
connect_timeout = "7s"

[server]
shutdown_grace = "11s"
max_upload_bytes = "1 MiB"

[cache]
metadata_ttl = "2m"
auth_ttl = "1m"

[log]
filter = "warn"
"#;

#[tokio::test]
async fn configuration_layers_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("gitlab-pkg-cache.toml");
    std::fs::write(&file, FILE).expect("write the config file");
    let file = file.to_str().expect("a UTF-8 path");
    let env = [
        ("GITLAB_PKG_CACHE_UPSTREAM", "https://env.example"),
        ("GITLAB_PKG_CACHE_METADATA_TTL", "3m"),
        ("GITLAB_PKG_CACHE_AUTH_TTL", "90s"),
        ("GITLAB_PKG_CACHE_MAX_UPLOAD_BYTES", "2 MiB"),
        ("GITLAB_PKG_CACHE_LOG_FORMAT", "json"),
    ];
    let flags = [
        "--upstream",
        "https://flag.example/gitlab/",
        "--metadata-ttl",
        "4m",
        "--header-read-timeout",
        "3s",
    ];
    // Flags before and after the subcommand; the file by flag and by environment.
    let mut before: Vec<&str> = vec!["--config", file];
    before.extend(flags);
    before.push("config");
    let mut after: Vec<&str> = vec!["config", "--config", file];
    after.extend(flags);
    let mut file_by_env = env.to_vec();
    file_by_env.push(("GITLAB_PKG_CACHE_CONFIG", file));
    let mut by_env_args = vec!["config"];
    by_env_args.extend(flags);
    for (label, args, env) in [
        ("flags before the subcommand", before, env.to_vec()),
        ("flags after the subcommand", after, env.to_vec()),
        ("file named by the environment", by_env_args, file_by_env),
    ] {
        let config = printed_config(&run_binary(&args, &env).await);
        let url = config.upstream_url();
        // Set in all three layers: the flag wins.
        assert_eq!(url.authority().as_str(), "flag.example", "{label}");
        assert_eq!(url.path_prefix(), "/gitlab", "{label}");
        assert_eq!(
            config.cache.metadata_ttl,
            Duration::from_secs(240),
            "{label}"
        );
        // File and environment: the environment wins.
        assert_eq!(config.cache.auth_ttl, Duration::from_secs(90), "{label}");
        assert_eq!(
            config.server.max_upload_bytes,
            bytesize::ByteSize::mib(2),
            "{label}"
        );
        // Only in the file.
        assert_eq!(
            config.listen,
            "127.0.0.1:9000".parse::<SocketAddr>().unwrap(),
            "{label}"
        );
        assert_eq!(
            config.data_dir,
            PathBuf::from("/var/lib/from-file"),
            "{label}"
        );
        assert_eq!(
            config.upstream.connect_timeout,
            Duration::from_secs(7),
            "{label}"
        );
        assert_eq!(
            config.server.shutdown_grace,
            Duration::from_secs(11),
            "{label}"
        );
        assert_eq!(config.log.filter, "warn", "{label}");
        // Only in the environment, only as a flag, and nowhere.
        assert_eq!(
            config.log.format,
            gitlab_pkg_cache::config::LogFormat::Json,
            "{label}"
        );
        assert_eq!(
            config.server.header_read_timeout,
            Duration::from_secs(3),
            "{label}"
        );
        assert_eq!(
            config.upstream.response_timeout,
            Duration::from_secs(60),
            "{label}"
        );
    }

    // Without a file: defaults under the environment.
    let config = printed_config(&run_binary(&["config"], &env).await);
    assert_eq!(config.upstream_url().authority().as_str(), "env.example");
    assert_eq!(config.listen.port(), 8080);
    assert_eq!(config.cache.metadata_ttl, Duration::from_secs(180));
}

#[tokio::test]
async fn help_lists_every_flag_and_its_variable() {
    let output = run_binary(&["--help"], &[]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let help = stdout(&output);
    let command = Cli::command();
    let mut flags = 0;
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        flags += 1;
        assert!(
            help.contains(&format!("--{long}")),
            "--{long} missing from --help:\n{help}"
        );
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            assert!(
                help.contains(env.as_ref()),
                "{env} missing from --help:\n{help}"
            );
        }
    }
    // The settings documented in config.rs, so the loop above is not vacuous.
    assert!(flags >= 20, "only {flags} flags found");
    for flag in [
        "--config",
        "--listen",
        "--upstream",
        "--data-dir",
        "--upstream-ca-file",
        "--upstream-connect-timeout",
        "--upstream-response-timeout",
        "--upstream-body-idle-timeout",
        "--tls-cert",
        "--tls-key",
        "--header-read-timeout",
        "--max-upload-bytes",
        "--shutdown-grace",
        "--metadata-ttl",
        "--auth-ttl",
        "--memory-max-bytes",
        "--cache-max-bytes",
        "--min-free-bytes",
        "--log-format",
        "--log",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    for subcommand in ["serve", "config"] {
        assert!(
            help.contains(subcommand),
            "{subcommand} missing from --help"
        );
    }
}

const SECRET: &str = "glpat-Zx9SECRETvalue123";

/// Where a token could be given by mistake; none of it may be echoed.
#[tokio::test]
async fn a_token_in_the_upstream_url_is_refused_without_being_echoed() {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("c.toml");
    let with_userinfo = format!("https://oauth2:{SECRET}@gitlab.example.com");
    std::fs::write(&file, format!("[upstream]\nurl = \"{with_userinfo}\"\n")).expect("write");
    let file = file.to_str().expect("a UTF-8 path");
    let cases: Vec<(&str, Args, Env)> = vec![
        ("flag", vec!["config", "--upstream", &with_userinfo], vec![]),
        (
            "environment",
            vec!["config"],
            vec![("GITLAB_PKG_CACHE_UPSTREAM", &with_userinfo)],
        ),
        ("file", vec!["config", "--config", file], vec![]),
        ("serve", vec!["serve", "--upstream", &with_userinfo], vec![]),
    ];
    for (label, args, env) in cases {
        let output = run_binary(&args, &env).await;
        assert_eq!(output.status.code(), Some(2), "{label}");
        let printed = format!("{}{}", stdout(&output), stderr(&output));
        assert!(
            printed.contains("must not contain credentials"),
            "{label}: {printed}"
        );
        assert!(
            !printed.contains(SECRET),
            "{label}: the token was echoed: {printed}"
        );
    }
}

#[tokio::test]
async fn a_token_elsewhere_in_the_upstream_url_is_not_echoed_either() {
    let with_query = format!("https://gitlab.example.com/?private_token={SECRET}");
    let unparsable = format!("https://{SECRET}@gitlab example.com");
    let cases: Vec<(&str, Args, Env)> = vec![
        ("query", vec!["config", "--upstream", &with_query], vec![]),
        (
            "not a URL",
            vec!["config", "--upstream", &unparsable],
            vec![],
        ),
        (
            "--help with the variable set",
            vec!["--help"],
            vec![("GITLAB_PKG_CACHE_UPSTREAM", &with_query)],
        ),
    ];
    let mut leaks = Vec::new();
    for (label, args, env) in cases {
        let output = run_binary(&args, &env).await;
        let printed = format!("{}{}", stdout(&output), stderr(&output));
        if printed.contains(SECRET) {
            leaks.push(format!("{label}: {printed}"));
        }
    }
    assert!(leaks.is_empty(), "\n{}", leaks.join("\n"));
}

#[tokio::test]
async fn bad_values_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("a directory");
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(
        &unknown,
        "[upstream]\nurl = \"https://x.example\"\ncolour = \"blue\"\n",
    )
    .expect("write");
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[upstream\nurl = ").expect("write");
    let missing = dir.path().join("missing.toml");
    let unknown = unknown.to_str().expect("UTF-8");
    let broken = broken.to_str().expect("UTF-8");
    let missing = missing.to_str().expect("UTF-8");
    let up = "https://gitlab.example.com";
    #[rustfmt::skip]
    let cases: Vec<(&str, Args, Env, &str)> = vec![
        ("duration flag", vec!["config", "--upstream", up, "--metadata-ttl", "soon"], vec![], "metadata_ttl"),
        ("duration variable", vec!["config", "--upstream", up], vec![("GITLAB_PKG_CACHE_AUTH_TTL", "forever")], "auth_ttl"),
        ("size flag", vec!["config", "--upstream", up, "--max-upload-bytes", "lots"], vec![], "max_upload_bytes"),
        ("address flag", vec!["config", "--upstream", up, "--listen", "nowhere"], vec![], "listen"),
        ("URL scheme", vec!["config", "--upstream", "ftp://gitlab.example.com"], vec![], "http:// or https://"),
        ("no upstream", vec!["config"], vec![], "no upstream"),
        ("half of TLS", vec!["config", "--upstream", up, "--tls-cert", "/x.pem"], vec![], "together"),
        ("unknown key in the file", vec!["config", "--config", unknown], vec![], "colour"),
        ("file that is not TOML", vec!["config", "--config", broken], vec![], "TOML"),
        ("missing file", vec!["config", "--config", missing], vec![], "does not exist"),
        ("unknown log format", vec!["config", "--upstream", up, "--log-format", "xml"], vec![], "xml"),
        ("unknown flag", vec!["config", "--upstrem", up], vec![], "--upstrem"),
        ("bad value when serving", vec!["serve", "--upstream", up, "--shutdown-grace", "a while"], vec![], "shutdown_grace"),
    ];
    let mut failures = Vec::new();
    for (label, args, env, needle) in cases {
        let output = run_binary(&args, &env).await;
        let message = stderr(&output);
        if output.status.code() != Some(2) {
            failures.push(format!(
                "{label}: exit {:?}: {message}",
                output.status.code()
            ));
        }
        if !message.contains(needle) {
            failures.push(format!("{label}: {needle:?} not in {message:?}"));
        }
        if !stdout(&output).is_empty() {
            failures.push(format!(
                "{label}: printed a configuration: {}",
                stdout(&output)
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn bad_value_messages_speak_the_users_language() {
    let up = "https://gitlab.example.com";
    #[rustfmt::skip]
    let cases: Vec<(Args, Env, &str)> = vec![
        (vec!["config", "--upstream", up, "--metadata-ttl", "soon"], vec![], "--metadata-ttl"),
        (vec!["config", "--upstream", up], vec![("GITLAB_PKG_CACHE_AUTH_TTL", "forever")], "GITLAB_PKG_CACHE_AUTH_TTL"),
        (vec!["config", "--upstream", up, "--listen", "nowhere"], vec![], "--listen"),
    ];
    let mut failures = Vec::new();
    for (args, env, origin) in cases {
        let message = stderr(&run_binary(&args, &env).await);
        if !message.contains(origin)
            || ["src/", "alloc::", "global."]
                .iter()
                .any(|internal| message.contains(internal))
        {
            failures.push(message);
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// A running `gitlab-pkg-cache serve` and the address it listens on.
struct Served {
    child: tokio::process::Child,
    addr: String,
    log: Arc<std::sync::Mutex<String>>,
}

/// Starts the binary on a free port and reads the address from its JSON start-up log.
async fn serve(upstream: &str, data_dir: &Path, extra: &[&str]) -> Served {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--data-dir",
            data_dir.to_str().expect("UTF-8"),
            "--log-format",
            "json",
            "--log",
            "gitlab_pkg_cache=trace,info",
        ])
        .args(extra)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("the binary starts");
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let stdout_log = log.clone();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                if event["message"] == "gitlab-pkg-cache serving" {
                    if let (Some(tx), Some(listen)) = (tx.take(), event["listen"].as_str()) {
                        let _ = tx.send(listen.to_owned());
                    }
                }
            }
            let mut log = stdout_log.lock().unwrap_or_else(|p| p.into_inner());
            log.push_str(&line);
            log.push('\n');
        }
    });
    let mut errors = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let stderr_log = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = errors.next_line().await {
            let mut log = stderr_log.lock().unwrap_or_else(|p| p.into_inner());
            log.push_str(&line);
            log.push('\n');
        }
    });
    let addr = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("the binary logs its address")
        .expect("the binary logs its address");
    Served { child, addr, log }
}

/// Holds `path` at GitLab behind `gate`, sends SIGTERM while the request is in flight, and
/// checks that new connections are refused, the request still completes, and the process
/// exits 0.
async fn sigterm_while_in_flight(
    fake: &FakeGitLab,
    served: &mut Served,
    base: &str,
    path: &str,
    gate: Arc<Semaphore>,
) {
    fake.set_fault(path, Fault::Hold(gate.clone()));
    let request = in_flight(format!("{base}{path}"));
    eventually("the request reached GitLab", || fake.hits(path) == 1).await;
    served.terminate();
    until_refused(&served.addr).await;
    assert!(!request.is_finished());
    gate.add_permits(1);
    let answer = request
        .await
        .expect("the request task")
        .expect("the held request completes after SIGTERM");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(served.exit_code(Duration::from_secs(20)).await, Some(0));
}

impl Served {
    fn terminate(&self) {
        let pid = self.child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the binary exits")
            .expect("wait for the binary")
            .code()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[tokio::test]
async fn the_binary_drains_on_sigterm_and_never_logs_credentials() {
    let fake = gitlab().await;
    let data = tempfile::tempdir().expect("a data directory");
    let mut served = serve(&fake.url(), data.path(), &[]).await;
    let base = format!("http://{}", served.addr);

    // Credentials in every place a client puts them, on answered, refused and unrouted requests.
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("me:{SECRET}")
        )
    );
    for (path, headers) in [
        (LIST.to_owned(), vec![("private-token", SECRET)]),
        (format!("{LIST}?private_token={SECRET}"), vec![]),
        (LIST.to_owned(), vec![("authorization", basic.as_str())]),
        (
            "/api/v4/projects/1/packages/rubygems/api/v1/dependencies?gems=foo".to_owned(),
            vec![("authorization", SECRET)],
        ),
        (
            format!("/api/v4/user?private_token={SECRET}"),
            vec![("job-token", SECRET)],
        ),
    ] {
        let r = client::get(&format!("{base}{path}"), &headers).await;
        assert!(r.header("x-cache").is_some(), "{path}");
    }

    // A request in flight when SIGTERM arrives completes; new connections are refused.
    let gate = Arc::new(Semaphore::new(0));
    let held = LIST.replace("list", "v1.0.0.info");
    sigterm_while_in_flight(&fake, &mut served, &base, &held, gate).await;

    let log = served.log();
    assert!(log.contains("gitlab-pkg-cache serving"), "{log}");
    assert!(
        !log.contains(SECRET),
        "a credential reached the log:\n{log}"
    );
    assert!(
        !log.contains("private_token"),
        "a query string reached the log:\n{log}"
    );
}

#[tokio::test]
async fn the_binary_with_two_workers_serves_fills_and_drains_on_sigterm() {
    let fake = gitlab().await;
    let data = tempfile::tempdir().expect("a data directory");
    let mut served = serve(&fake.url(), data.path(), &["--server-workers", "2"]).await;
    let base = format!("http://{}", served.addr);
    let zip = LIST.replace("list", "v1.0.0.zip");
    let info = LIST.replace("list", "v1.0.0.info");

    // Every request on a connection of its own: the kernel spreads them over both listeners.
    let first = client::get(&format!("{base}{zip}"), &[]).await;
    assert_eq!((first.status, first.header("x-cache")), (200, Some("miss")));
    for _ in 0..20 {
        let list = client::get(&format!("{base}{LIST}"), &[]).await;
        assert_eq!((list.status, list.text().as_str()), (200, LIST_BODY));
    }
    let mut hit = false;
    for _ in 0..50 {
        let again = client::get(&format!("{base}{zip}"), &[]).await;
        assert_eq!((again.status, &again.body), (200, &first.body));
        if again.header("x-cache") == Some("hit") {
            hit = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        hit,
        "the fill committed on its worker and is served from the store"
    );
    assert_eq!(fake.hits(&zip), 1);

    // In flight at SIGTERM: completes, and its fill is committed before the process exits.
    sigterm_while_in_flight(
        &fake,
        &mut served,
        &base,
        &info,
        Arc::new(Semaphore::new(0)),
    )
    .await;
    let log = served.log();
    assert!(log.contains("one runtime per worker"), "{log}");
    assert!(log.contains("\"workers\":2"), "{log}");

    // The same data directory again (shared runtime this time): both were stored.
    let served = serve(&fake.url(), data.path(), &[]).await;
    let base = format!("http://{}", served.addr);
    for path in [&zip, &info] {
        let r = client::get(&format!("{base}{path}"), &[]).await;
        assert_eq!(
            (r.status, r.header("x-cache")),
            (200, Some("hit")),
            "{path}"
        );
    }
    served.terminate();
}

#[tokio::test]
async fn the_binary_exits_after_the_grace_period_even_if_a_request_hangs() {
    let fake = gitlab().await;
    fake.set_fault(LIST, Fault::Hang);
    let data = tempfile::tempdir().expect("a data directory");
    let mut served = serve(&fake.url(), data.path(), &["--shutdown-grace", "500ms"]).await;
    let request = in_flight(format!("http://{}{LIST}", served.addr));
    eventually("the request reached GitLab", || fake.hits(LIST) == 1).await;
    served.terminate();
    assert_eq!(served.exit_code(Duration::from_secs(20)).await, Some(0));
    let cut = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("the hanging request ends with the process")
        .expect("the request task");
    assert!(cut.is_err(), "a cut request cannot have a complete answer");
}

#[tokio::test]
async fn the_binary_refuses_to_start_with_an_unusable_ca_file() {
    let data = tempfile::tempdir().expect("a data directory");
    let missing = data.path().join("no-such-ca.pem");
    let output = run_binary(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "https://127.0.0.1:1",
            "--data-dir",
            data.path().to_str().expect("UTF-8"),
            "--upstream-ca-file",
            missing.to_str().expect("UTF-8"),
        ],
        &[],
    )
    .await;
    assert!(!output.status.success());
    let printed = format!("{}{}", stdout(&output), stderr(&output));
    assert!(printed.contains("no-such-ca.pem"), "{printed}");
}
