//! Starts the built proxy binary as a process of its own (SIGKILL and multi-process tests).

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// A proxy process; killed when dropped.
pub struct ProxyProcess {
    pub child: tokio::process::Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

impl ProxyProcess {
    /// Runs `binary serve` (pass `env!("CARGO_BIN_EXE_gitlab-pkg-cache")`, which only test
    /// crates know) on a loopback port in front of `upstream`, with `args` added, and waits
    /// until it listens.
    pub async fn spawn<I, S>(binary: &str, upstream: &str, data_dir: &Path, args: I) -> ProxyProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = tokio::process::Command::new(binary)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--upstream",
                upstream,
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the proxy binary");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("read the log") {
                let event: serde_json::Value = match serde_json::from_str(&line) {
                    Ok(event) => event,
                    Err(_) => continue,
                };
                if let Some(listen) = event.get("listen").and_then(|v| v.as_str()) {
                    return listen.to_owned();
                }
            }
            panic!("the proxy exited before listening");
        })
        .await
        .expect("the proxy starts within 30 s");
        // Keep draining the log so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ProxyProcess {
            child,
            url: format!("http://{addr}"),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn authority(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("the proxy died");
    }

    /// The value of one counter or gauge on the metrics endpoint (0 if absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let r = super::client::get(&format!("{}/-/pkg-cache/metrics", self.url), &[]).await;
        r.text()
            .lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                (series == name).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// Waits, bounded (30 s), until a metric reaches `at_least`; panics naming it if not.
    pub async fn wait_for_metric(&self, name: &str, at_least: f64) {
        for _ in 0..600 {
            if self.metric(name).await >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting until {name} >= {at_least}");
    }
}
