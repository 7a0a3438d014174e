//! Operating the proxy: a log consumer that stops reading never holds requests up, and the
//! shipped dashboard and alert rules only use metrics the proxy exposes.

mod support;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use regex::Regex;
use support::client;
use support::fake_gitlab::{FakeGitLab, Visibility};
use support::proxy::TestProxy;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_gitlab-pkg-cache");

/// Metric families the exposition declares (`# TYPE <name> <type>`), with their types.
fn declared_families(exposition: &str) -> Vec<(String, String)> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let (name, kind) = rest.split_once(' ')?;
            Some((name.to_owned(), kind.to_owned()))
        })
        .collect()
}

/// Whether a series name in a query belongs to a declared family (counters are queried as
/// `_total`, histograms as `_bucket`, `_sum` and `_count`).
fn exposed(name: &str, families: &[(String, String)]) -> bool {
    families.iter().any(|(family, kind)| {
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        suffixes
            .iter()
            .any(|suffix| name == format!("{family}{suffix}"))
    })
}

fn metric_names(text: &str) -> BTreeSet<String> {
    let pattern = Regex::new(r"gitlab_pkg_cache_[a-z0-9_]+").expect("pattern");
    pattern
        .find_iter(text)
        .map(|m| m.as_str().to_owned())
        .collect()
}

#[tokio::test]
async fn dashboard_and_alert_rules_use_only_exposed_metrics() {
    let fake = FakeGitLab::builder()
        .project(1, "group/proj", Visibility::Public)
        .start()
        .await;
    let proxy = TestProxy::start(&fake.url()).await;
    let response = client::get(&format!("{}/-/pkg-cache/metrics", proxy.url()), &[]).await;
    assert_eq!(response.status, 200);
    let families = declared_families(&response.text());
    assert!(families.len() > 10, "{families:?}");

    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard = std::fs::read_to_string(format!("{root}/deploy/grafana/gitlab-pkg-cache.json"))
        .expect("the dashboard");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
    let rules = std::fs::read_to_string(format!(
        "{root}/deploy/prometheus/gitlab-pkg-cache.rules.yml"
    ))
    .expect("the alert rules");
    for (file, text) in [("dashboard", &dashboard), ("alert rules", &rules)] {
        let names = metric_names(text);
        assert!(names.len() >= 5, "{file}: {names:?}");
        let missing: Vec<&String> = names.iter().filter(|n| !exposed(n, &families)).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics the proxy does not expose: {missing:?}"
        );
    }
    // What the issue asks the alerts to cover.
    for needed in [
        "gitlab_pkg_cache_requests_total",
        "gitlab_pkg_cache_upstream_errors_total",
        "gitlab_pkg_cache_upstream_up",
        "gitlab_pkg_cache_store_free_bytes",
        "gitlab_pkg_cache_integrity_changes_total",
        "gitlab_pkg_cache_fill_waiters",
    ] {
        assert!(rules.contains(needed), "no alert uses {needed}");
        assert!(dashboard.contains(needed), "no panel shows {needed}");
    }
}

/// The binary with its standard output on a pipe that nobody reads once the start-up line is
/// in: every request still gets its answer, and the lines that did not fit are counted.
#[tokio::test]
async fn a_stalled_log_consumer_does_not_stall_requests() {
    let fake = FakeGitLab::builder()
        .project(1, "group/proj", Visibility::Public)
        .start()
        .await;
    let data = tempfile::tempdir().expect("a data directory");
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &fake.url(),
            "--data-dir",
            data.path().to_str().expect("UTF-8"),
            "--log-format",
            "text",
            "--log-queue-lines",
            "64",
        ])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut startup = Vec::new();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read the log") {
            startup.push(line.clone());
            if let Some(rest) = line.split("listen=").nth(1) {
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("the binary logs its address")
    .expect("a listen address in the start-up line");
    // Not a terminal: no colour codes.
    assert!(
        startup.iter().all(|line| !line.contains('\u{1b}')),
        "escape sequences in a piped log: {startup:?}"
    );

    // From here on nobody reads the pipe (it stays open): once its buffer is full, the log
    // writer is stuck. Far more lines than the pipe and the queue hold are produced.
    let base = format!("http://{addr}");
    let requests = 3000;
    let served = tokio::time::timeout(Duration::from_secs(120), async {
        let mut ok = 0;
        for _ in 0..requests {
            let r = client::get(&format!("{base}/-/healthz"), &[]).await;
            if r.status == 200 {
                ok += 1;
            }
        }
        ok
    })
    .await
    .expect("requests keep being answered while the log consumer is stalled");
    assert_eq!(served, requests);

    let metrics = client::get(&format!("{base}/-/pkg-cache/metrics"), &[]).await;
    let dropped: u64 = metrics
        .text()
        .lines()
        .find_map(|line| line.strip_prefix("gitlab_pkg_cache_log_lines_dropped_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("the dropped-lines counter");
    assert!(
        dropped > 0,
        "lines beyond the queue are dropped and counted"
    );
    drop(lines);
    let _ = child.kill().await;
}
