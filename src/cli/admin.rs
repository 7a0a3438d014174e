//! `admin stats|integrity|purge|verify|gc`: operator calls to a running proxy's admin API,
//! printed for people (or as the API's JSON with `--json`).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use bytesize::ByteSize;
use http::Method;
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::bundle::{admin_token, error_text};
use crate::airgap::client::{admin_headers, HttpClient};
use crate::body;

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Artifacts and bytes per project, hit ratio, bytes saved upstream, top artifacts.
    Stats(Common),
    /// Versions whose content GitLab changed after they were cached.
    Integrity(Common),
    /// Remove artifacts (and their first-copy fingerprints) so they are fetched anew.
    Purge(PurgeArgs),
    /// Re-read every stored artifact, drop damaged ones; waits for the result.
    Verify(Common),
    /// Delete blobs of crashed fills from the shared bucket (none a reference names).
    Gc(GcArgs),
}

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub common: Common,
    /// Only blobs older than this (e.g. 6h) [default: 24h].
    #[arg(long, value_name = "DURATION")]
    pub grace: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct Common {
    /// The running proxy, e.g. http://pkg-cache.example:8080.
    #[arg(
        long,
        env = "GITLAB_PKG_CACHE_PROXY",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub proxy: String,
    /// Print the admin API's JSON answer.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub common: Common,
    /// The project (id or full path) whose artifacts go.
    #[arg(long, value_name = "ID", required_unless_present = "key")]
    pub project: Option<String>,
    /// Only this Go module path (as in go.mod).
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "gem",
        requires = "project"
    )]
    pub module: Option<String>,
    /// Only this gem.
    #[arg(long, value_name = "NAME", requires = "project")]
    pub gem: Option<String>,
    /// Only this version of the module or gem.
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// Exactly this stored key (a request path); repeatable; instead of --project.
    #[arg(long, value_name = "KEY", conflicts_with = "project")]
    pub key: Vec<String>,
}

pub fn main(args: AdminArgs, admin_token_file: Option<&Path>) -> ExitCode {
    super::block_on(async move {
        match run(args, admin_token_file).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("gitlab-pkg-cache admin: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// One admin call: the proxy's JSON answer, or why there is none.
struct Api {
    client: HttpClient,
    proxy: String,
    token: String,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{}{endpoint}", self.proxy, crate::admin::PREFIX);
        let body = body.map_or_else(body::empty, |b| body::full(b.to_string()));
        let response = self
            .client
            .send(method, &url, admin_headers(&self.token)?, body)
            .await?;
        if !response.status().is_success() {
            return Err(error_text(response).await);
        }
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| format!("unreadable answer: {e}"))
    }
}

async fn run(args: AdminArgs, admin_token_file: Option<&Path>) -> Result<ExitCode, String> {
    let common = match &args.command {
        AdminCommand::Stats(c) | AdminCommand::Integrity(c) | AdminCommand::Verify(c) => c,
        AdminCommand::Purge(p) => &p.common,
        AdminCommand::Gc(g) => &g.common,
    };
    let api = Api {
        client: HttpClient::new()?,
        proxy: super::proxy_base(&common.proxy)?,
        token: admin_token(admin_token_file)?,
    };
    let as_json = common.json;
    let (answer, code) = match &args.command {
        AdminCommand::Stats(_) => {
            let answer = api.call(Method::GET, "stats", None).await?;
            (answer, ExitCode::SUCCESS)
        }
        AdminCommand::Integrity(_) => {
            let answer = api.call(Method::GET, "integrity", None).await?;
            (answer, ExitCode::SUCCESS)
        }
        AdminCommand::Purge(purge) => {
            let selection = if purge.key.is_empty() {
                json!({
                    "project": purge.project,
                    "module": purge.module,
                    "gem": purge.gem,
                    "version": purge.version,
                })
            } else {
                json!({ "keys": purge.key })
            };
            let answer = api.call(Method::POST, "purge", Some(selection)).await?;
            (answer, ExitCode::SUCCESS)
        }
        AdminCommand::Gc(gc) => {
            let answer = api
                .call(Method::POST, "gc", Some(json!({ "grace": gc.grace })))
                .await?;
            (answer, ExitCode::SUCCESS)
        }
        AdminCommand::Verify(_) => {
            api.call(Method::POST, "verify", None).await?;
            let report = loop {
                let answer = api.call(Method::GET, "verify", None).await?;
                if answer["report"]["running"] != json!(true) {
                    break answer;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            let damaged = report["report"]["dropped"]
                .as_array()
                .is_some_and(|d| !d.is_empty());
            let code = if damaged {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
            (report, code)
        }
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", render(&args.command, &answer));
    }
    Ok(code)
}

fn size(value: &Value) -> String {
    ByteSize::b(value.as_u64().unwrap_or(0)).to_string()
}

fn when(value: &Value) -> String {
    value.as_u64().map_or_else(
        || "-".to_owned(),
        |secs| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
        },
    )
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// The answer as lines for a person.
fn render(command: &AdminCommand, answer: &Value) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    match command {
        AdminCommand::Stats(_) => {
            let store = &answer["store"];
            line(format!(
                "store: {} artifacts, {}",
                store["artifacts"],
                size(&store["bytes"])
            ));
            let originals = &answer["originals"];
            line(format!(
                "first copies kept since eviction: {} artifacts, {} of {} set aside",
                originals["artifacts"],
                size(&originals["bytes"]),
                size(&originals["max_bytes"])
            ));
            for project in answer["projects"].as_array().into_iter().flatten() {
                line(format!(
                    "  project {}: {} artifacts, {}",
                    text(&project["project"]),
                    project["artifacts"],
                    size(&project["bytes"])
                ));
            }
            let since = &answer["since_start"];
            let ratio = since["hit_ratio"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0));
            line(format!(
                "since start: {} requests from cache, {} from GitLab (hit ratio {ratio}), {} saved upstream",
                since["requests_from_cache"],
                since["requests_from_gitlab"],
                size(&since["bytes_saved_upstream"])
            ));
            let top = answer["top_artifacts"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !top.is_empty() {
                line("most requested from cache:".to_owned());
                for item in top {
                    line(format!("  {:>8}  {}", item["hits"], text(&item["key"])));
                }
            }
        }
        AdminCommand::Integrity(_) => {
            let changes = answer["changes"].as_array().cloned().unwrap_or_default();
            if changes.is_empty() {
                line("no integrity changes: GitLab has served the same content for every cached version".to_owned());
            }
            for change in changes {
                line(format!(
                    "project {}  {}  {} {}  ({} seen {}x, first {}, last {})",
                    text(&change["project"]),
                    text(&change["kind"]),
                    text(&change["name"]),
                    text(&change["version"]),
                    text(&change["how"]),
                    change["times"],
                    when(&change["first_seen_unix"]),
                    when(&change["last_seen_unix"]),
                ));
                for (label, print) in [("kept  ", &change["pinned"]), ("GitLab", &change["seen"])] {
                    let h1 = print["h1"]
                        .as_str()
                        .map(|h| format!("{h}  "))
                        .unwrap_or_default();
                    line(format!(
                        "    {label}: {h1}sha256:{} ({})",
                        text(&print["sha256"]),
                        size(&print["len"])
                    ));
                }
                line(format!("    key: {}", text(&change["key"])));
            }
        }
        AdminCommand::Purge(_) => {
            line(format!(
                "purged {} artifacts ({}) and {} kept originals ({}), forgot {} first-copy fingerprints",
                answer["purged"],
                size(&answer["bytes"]),
                answer["originals_dropped"],
                size(&answer["originals_bytes"]),
                answer["fingerprints_forgotten"]
            ));
            for key in answer["keys"].as_array().into_iter().flatten() {
                line(format!("  {}", text(key)));
            }
        }
        AdminCommand::Gc(_) => {
            line(format!(
                "deleted {} unreferenced blobs ({}) older than {} s; kept {} referenced and {} younger ones",
                answer["deleted"],
                size(&answer["deleted_bytes"]),
                answer["grace_seconds"],
                answer["referenced"],
                answer["young"],
            ));
        }
        AdminCommand::Verify(_) => {
            let report = &answer["report"];
            line(format!(
                "verified {} of {} artifacts ({}): {} damaged and dropped, {} unreadable",
                report["checked"],
                report["total"],
                size(&report["bytes"]),
                report["dropped"].as_array().map_or(0, Vec::len),
                report["errors"].as_array().map_or(0, Vec::len),
            ));
            for (label, list) in [
                ("dropped", &report["dropped"]),
                ("unreadable", &report["errors"]),
            ] {
                for item in list.as_array().into_iter().flatten() {
                    line(format!(
                        "  {label}: {}: {}",
                        text(&item["key"]),
                        text(&item["reason"])
                    ));
                }
            }
        }
    }
    out
}
