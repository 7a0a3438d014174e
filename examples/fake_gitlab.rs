//! A stand-in GitLab on a fixed address: the fake from `tests/support`, seeded with demo Go modules and gems, for demos and the load benchmark.
//!
//! ```text
//! cargo run --example fake_gitlab -- --with-proxy # the demo: stand-in GitLab and the proxy
//! cargo run --example fake_gitlab                 # stand-in GitLab alone on 127.0.0.1:8081
//! cargo run --release --example fake_gitlab -- --bench   # plus the load-benchmark artifacts
//! ```
//!
//! The fake binds an ephemeral loopback port of its own; this program listens on `--listen`
//! and relays every request to it, except `GET /-/hits[?prefix=<path>]`, which answers how
//! many requests reached the fake (all of them, or those whose path and query start with
//! `prefix`). Gems need real `.gem` and `.gemspec.rz` files for `gem` and `bundle`: they are
//! built with `gem build` at start when Ruby is installed, and left out (with a notice)
//! when it is not; Go works either way.

#[path = "../tests/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http::header::{self, HeaderName};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use percent_encoding::percent_decode_str;
use support::fake_gitlab::{
    Access, FakeGitLab, FakeGitLabBuilder, GemFixture, TokenKind, TokenState, Visibility,
};
use support::fixtures;
use tokio::net::TcpListener;

/// Commit time of every demo tag.
const TIME: &str = "2024-05-01T10:00:00.000+00:00";

/// Project ids, as they appear in the URLs printed at start.
const HELLO: u64 = 1;
const GREET: u64 = 2;
const GEMS: u64 = 3;
const BENCH: u64 = 20;

#[derive(Debug, Parser)]
#[command(about = "A stand-in GitLab (Go proxy and RubyGems APIs) for demos and benchmarks")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// GitLab host that Go module paths start with.
    #[arg(long, default_value = "gitlab.example.com")]
    host: String,
    /// The demo token: a personal access token with scope `api`, Developer in every project.
    #[arg(long, default_value = "glpat-demo-0123456789abcdef")]
    token: String,
    /// The proxy's URL, as clients reach it (only used in the printed instructions).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    proxy_url: String,
    /// Add the load-benchmark project: a private project (id 20) with a Go module of 20
    /// versions and gems of 1 MB, 20 MB (two: one to keep warm, one for the cold stampede)
    /// and `--bench-large-mb`, all of seeded noise that does not compress.
    #[arg(long)]
    bench: bool,
    /// Size of the large benchmark gem `bench-large` in MB (0: none).
    #[arg(long, default_value_t = 200)]
    bench_large_mb: usize,
    /// Do not print a line per request.
    #[arg(long)]
    quiet: bool,
    /// Also run the proxy in this process, listening where `--proxy-url` points, in front of
    /// this stand-in, with its data in a temporary directory: the one-command demo.
    #[arg(long)]
    with_proxy: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Gems are built before the runtime starts: `gem build` is a blocking child process.
    let demo_gems = match demo_gems() {
        Ok(gems) => gems,
        Err(reason) => {
            eprintln!("fake_gitlab: no demo gems ({reason}); Go modules only");
            Vec::new()
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fake_gitlab: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args, demo_gems))
}

async fn run(args: Args, demo_gems: Vec<GemFixture>) -> ExitCode {
    let has_gems = !demo_gems.is_empty();
    let fake = Arc::new(seed(&args, demo_gems).start().await);
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("fake_gitlab: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let proxy = if args.with_proxy {
        match start_proxy(&args).await {
            Ok(proxy) => Some(proxy),
            Err(e) => {
                eprintln!("fake_gitlab: cannot start the proxy: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    print_instructions(&args, has_gems);
    let relay = Arc::new(Relay {
        fake: Arc::clone(&fake),
        upstream: fake.url(),
        client: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(512)
            .build_http(),
        quiet: args.quiet,
    });
    tokio::select! {
        () = accept(listener, relay) => {}
        () = shutdown_signal() => {}
    }
    println!(
        "fake_gitlab: stopping; {} requests reached GitLab",
        fake.total_hits()
    );
    if let Some(proxy) = proxy {
        proxy.stop().await;
    }
    ExitCode::SUCCESS
}

/// The proxy in front of this stand-in, on the address of `--proxy-url`, with default
/// settings and a data directory that goes away when the demo stops.
async fn start_proxy(args: &Args) -> Result<support::proxy::TestProxy, String> {
    let authority = args
        .proxy_url
        .parse::<Uri>()
        .ok()
        .filter(|uri| uri.scheme_str() == Some("http"))
        .and_then(|uri| uri.authority().map(|a| a.as_str().to_owned()))
        .ok_or("--proxy-url must be http://HOST:PORT with --with-proxy")?;
    let listen: SocketAddr = authority
        .parse()
        .map_err(|e| format!("--proxy-url {authority}: {e}"))?;
    let upstream = format!("http://{}", args.listen);
    if std::net::TcpListener::bind(listen).is_err() {
        return Err(format!(
            "{listen} is in use (choose another with --proxy-url)"
        ));
    }
    Ok(support::proxy::TestProxy::start_with(&upstream, |config| {
        config.listen = listen;
        // The demo runs with the defaults a user gets, not the tests' short timeouts.
        config.upstream = gitlab_pkg_cache::config::UpstreamConfig {
            url: config.upstream.url.clone(),
            ..Default::default()
        };
    })
    .await)
}

/// The demo data: two Go projects (one in a subgroup), a gem project, the demo token, and
/// the benchmark project when asked for.
fn seed(args: &Args, demo_gems: Vec<GemFixture>) -> FakeGitLabBuilder {
    let host = &args.host;
    let hello = format!("{host}/demo/hello");
    let greet = format!("{host}/demo/tools/greet");
    let mut builder = FakeGitLab::builder()
        .host(host)
        .project(HELLO, "demo/hello", Visibility::Public)
        .project(GREET, "demo/tools/greet", Visibility::Public)
        .project(GEMS, "demo/gems", Visibility::Public)
        .go_version(
            HELLO,
            "",
            "v1.0.0",
            TIME,
            hello_files(&hello, "Hello, world."),
        )
        .go_version(
            HELLO,
            "",
            "v1.1.0",
            "2024-06-01T10:00:00.000+00:00",
            hello_files(&hello, "Hello, proxied world."),
        )
        .go_version(GREET, "", "v0.1.0", TIME, greet_files(&greet, &hello));
    let mut grants = vec![
        (HELLO, Access::Developer),
        (GREET, Access::Developer),
        (GEMS, Access::Developer),
    ];
    for gem in demo_gems {
        builder = builder.gem(GEMS, gem);
    }
    if args.bench {
        builder = bench_project(builder, host, args.bench_large_mb);
        grants.push((BENCH, Access::Developer));
    }
    builder.token(
        &args.token,
        TokenKind::Personal {
            scopes: vec!["api"],
        },
        TokenState::Active,
        &grants,
    )
}

fn hello_files(module: &str, greeting: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "go.mod".to_owned(),
            format!("module {module}\n\ngo 1.19\n").into_bytes(),
        ),
        (
            "hello.go".to_owned(),
            format!(
                "// Package hello greets.\npackage hello\n\n// Greeting is what hello says.\nfunc Greeting() string {{ return {greeting:?} }}\n"
            )
            .into_bytes(),
        ),
    ]
}

/// A module in a subgroup that depends on `hello` (from another project).
fn greet_files(module: &str, hello: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "go.mod".to_owned(),
            format!("module {module}\n\ngo 1.19\n\nrequire {hello} v1.1.0\n").into_bytes(),
        ),
        (
            "greet.go".to_owned(),
            format!(
                "// Package greet greets loudly.\npackage greet\n\nimport (\n\t\"strings\"\n\n\t\"{hello}\"\n)\n\n// Loud shouts the greeting.\nfunc Loud() string {{ return strings.ToUpper(hello.Greeting()) }}\n"
            )
            .into_bytes(),
        ),
    ]
}

/// The private benchmark project: `@v/list` of 20 versions and small `.info` files, and gems
/// of noise (the fake answers gems with the stored bytes, where a Go `.zip` is rebuilt and
/// deflated on every request, so large artifacts are gems).
fn bench_project(builder: FakeGitLabBuilder, host: &str, large_mb: usize) -> FakeGitLabBuilder {
    const MB: usize = 1 << 20;
    let module = format!("{host}/bench/private");
    let mut builder = builder.project(BENCH, "bench/private", Visibility::Private);
    for minor in 0..20 {
        builder = builder.go_version(
            BENCH,
            "",
            &format!("v1.{minor}.0"),
            TIME,
            vec![
                (
                    "go.mod".to_owned(),
                    format!("module {module}\n\ngo 1.19\n").into_bytes(),
                ),
                (
                    "bench.go".to_owned(),
                    format!("package bench\n\nconst Minor = {minor}\n").into_bytes(),
                ),
            ],
        );
    }
    let mut gems = vec![
        ("bench-1mb", MB, 1),
        ("bench-20mb", 20 * MB, 2),
        ("bench-stampede", 20 * MB, 3),
    ];
    if large_mb > 0 {
        gems.push(("bench-large", large_mb * MB, 4));
    }
    for (name, len, seed) in gems {
        builder = builder.gem(
            BENCH,
            GemFixture::new(name, "1.0.0", support::fixtures::noise(len, seed)),
        );
    }
    builder
}

/// `(gem, requirement)` pairs.
type Dependencies = &'static [(&'static str, &'static str)];

/// The demo gems: name, version, runtime dependencies.
const DEMO_GEMS: [(&str, &str, Dependencies); 3] = [
    ("demo-core", "1.0.0", &[]),
    ("demo-core", "1.1.0", &[]),
    ("demo-cli", "0.1.0", &[("demo-core", "~> 1.0")]),
];

/// Builds the demo gems with `gem build` (`tests/support/fixtures.rs`), with the
/// `.gemspec.rz` GitLab stores for each. Ruby missing or failing leaves the demo without gems.
fn demo_gems() -> Result<Vec<GemFixture>, String> {
    for tool in ["gem", "ruby"] {
        if !on_path(tool) {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    // The fixture builder panics with a full report when a command fails; here that only
    // means a demo without gems.
    std::panic::catch_unwind(|| {
        DEMO_GEMS
            .iter()
            .map(|(name, version, deps)| fixtures::build_gem(dir.path(), name, version, deps))
            .collect()
    })
    .map_err(|_| "building them failed (see above)".to_owned())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

fn print_instructions(args: &Args, has_gems: bool) {
    let Args {
        listen,
        host,
        token,
        proxy_url,
        ..
    } = args;
    let proxy = proxy_url.trim_end_matches('/');
    let proxy_host = proxy
        .parse::<Uri>()
        .ok()
        .and_then(|uri| uri.host().map(str::to_owned))
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let go = |id: u64| format!("{proxy}/api/v4/projects/{id}/packages/go");
    println!(
        "Fake GitLab listening on http://{listen} (Go module host {host})\n\
         Demo token (personal, scope api, Developer in every project): {token}\n\
         \n\
         {proxy_line}\n\
         \n\
         Go: {host}/demo/hello (project {HELLO}, public: v1.0.0, v1.1.0) and\n\
         \x20   {host}/demo/tools/greet (project {GREET}, public, in a subgroup: v0.1.0, needs hello)\n\
         \x20 export GOPROXY={go_hello},{go_greet},off\n\
         \x20 export GONOSUMDB={host} GOFLAGS=-mod=mod\n\
         \x20 cd \"$(mktemp -d)\" && go mod init example.com/try && go get {host}/demo/tools/greet@v0.1.0\n\
         \x20 (Go sends credentials only over HTTPS: for private projects serve the proxy with\n\
         \x20  --tls-cert/--tls-key and put `machine {proxy_host} login demo password {token}` in ~/.netrc)",
        proxy_line = if args.with_proxy {
            format!("The proxy runs in front of it on {proxy} (data in a temporary directory).")
        } else {
            format!(
                "Put the proxy in front of it:\n  gitlab-pkg-cache --upstream http://{listen} --listen {}",
                proxy.split("://").nth(1).unwrap_or(proxy)
            )
        },
        go_hello = go(HELLO),
        go_greet = go(GREET),
    );
    let gems = format!("{proxy}/api/v4/projects/{GEMS}/packages/rubygems/");
    if has_gems {
        println!(
            "\n\
             RubyGems: demo-core 1.0.0 and 1.1.0, demo-cli 0.1.0 (needs demo-core ~> 1.0), project {GEMS}, public\n\
             \x20 gem install demo-cli --clear-sources --source {gems} --install-dir \"$(mktemp -d)\"\n\
             \x20 cd \"$(mktemp -d)\" && printf 'source \"{gems}\"\\ngem \"demo-cli\"\\n' > Gemfile && bundle lock\n\
             \x20 (private projects: put the token in the source, http://demo:{token}@...)"
        );
    } else {
        println!("\nRubyGems: no demo gems (Ruby's `gem` was not found at start).");
    }
    if args.bench {
        let gems = format!("{proxy}/api/v4/projects/{BENCH}/packages/rubygems/gems");
        println!(
            "\n\
             Benchmark project {BENCH} (private; send `Authorization: {token}` for gems,\n\
             \x20 Basic demo:{token} or `Private-Token: {token}` for Go):\n\
             \x20 {}/{host}/bench/private/@v/list  and  .../@v/v1.0.0.info\n\
             \x20 {gems}/bench-1mb-1.0.0.gem, bench-20mb-1.0.0.gem, bench-stampede-1.0.0.gem{}",
            go(BENCH),
            if args.bench_large_mb > 0 {
                format!(", bench-large-1.0.0.gem ({} MB)", args.bench_large_mb)
            } else {
                String::new()
            },
        );
    }
    println!(
        "\nRequests that reached this GitLab: GET http://{listen}/-/hits[?prefix=/api/v4/...]\n"
    );
}

type Body = BoxBody<Bytes, hyper::Error>;

/// Forwards requests to the fake's own listener and answers `/-/hits` itself.
struct Relay {
    fake: Arc<FakeGitLab>,
    upstream: String,
    client: Client<HttpConnector, Incoming>,
    quiet: bool,
}

async fn accept(listener: TcpListener, relay: Arc<Relay>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("fake_gitlab: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let relay = Arc::clone(&relay);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let relay = Arc::clone(&relay);
                async move { Ok::<_, Infallible>(relay.handle(request).await) }
            });
            // A connection error ends that connection only (the client went away).
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Relay {
    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        if request.uri().path() == "/-/hits" {
            return self.hits(request.uri().query());
        }
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let response = self.forward(request).await;
        if !self.quiet {
            // The path only: a query may carry a `private_token`.
            println!("{method} {path} -> {}", response.status().as_u16());
        }
        response
    }

    fn hits(&self, query: Option<&str>) -> Response<Body> {
        let prefix = query
            .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("prefix=")))
            .map(|raw| percent_decode_str(raw).decode_utf8_lossy().into_owned());
        let count = match prefix {
            Some(prefix) => self.fake.hits_prefix(&prefix),
            None => self.fake.total_hits(),
        };
        text(StatusCode::OK, format!("{count}\n"))
    }

    async fn forward(&self, request: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        parts.uri = match format!("{}{path_and_query}", self.upstream).parse() {
            Ok(uri) => uri,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad request URI: {e}\n")),
        };
        strip_hop_by_hop(&mut parts.headers);
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.boxed())
            }
            Err(e) => text(StatusCode::BAD_GATEWAY, format!("fake GitLab: {e}\n")),
        }
    }
}

/// Connection-level headers belong to one hop (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    const HOP_BY_HOP: [HeaderName; 5] = [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ];
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = interrupt.await;
        }
    }
}
