//! `gitlab-pkg-cache warm`: arguments, progress display (bars on a terminal, one line per file
//! otherwise, NDJSON with `--json`), `--pin`, the summary and the exit status.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tokio::sync::mpsc;

use crate::airgap::client::{admin_headers, Credentials, HttpClient};
use crate::airgap::warm::{self, Event, Options, Outcome, Plan, Status, Summary};
use crate::body;

#[derive(Debug, clap::Args)]
pub struct WarmArgs {
    /// The running proxy, e.g. http://pkg-cache.office:8080.
    #[arg(
        long,
        env = "GITLAB_PKG_CACHE_PROXY",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub proxy: String,
    /// Go proxy list as in GOPROXY (the proxy's per-project URLs; `,` = next on 404)
    /// [default: $GOPROXY].
    #[arg(long, value_name = "LIST")]
    pub goproxy: Option<String>,
    /// File holding the GitLab token to fetch with [default: $GITLAB_TOKEN, then .netrc].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Keep everything warmed from eviction (needs the admin token: --admin-token-file).
    #[arg(long)]
    pub pin: bool,
    /// One JSON object per line on stdout, for machines.
    #[arg(long)]
    pub json: bool,
    /// Files fetched at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,
    /// Modules and gems that no proxy serves are reported but do not fail the run.
    #[arg(long)]
    pub skip_unserved: bool,
    /// go.sum (with the go.mod beside it), go.mod (with its go.sum), or Gemfile.lock files.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// Runs `warm`; `admin_token_file` comes from the global `--admin-token-file`.
pub fn main(args: WarmArgs, admin_token_file: Option<&Path>) -> ExitCode {
    match prepare(&args, admin_token_file) {
        Ok((plan, options, admin_token)) => super::block_on(run(args, plan, options, admin_token)),
        Err(e) => {
            eprintln!("gitlab-pkg-cache warm: {e}");
            ExitCode::from(2)
        }
    }
}

fn prepare(
    args: &WarmArgs,
    admin_token_file: Option<&Path>,
) -> Result<(Plan, Options, Option<String>), String> {
    let proxy = super::proxy_base(&args.proxy)?;
    let mut plan = Plan::default();
    let mut go_sums = Vec::new();
    for file in &args.files {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
        };
        match name {
            "go.sum" | "go.mod" => {
                let dir = file.parent().unwrap_or(Path::new("."));
                let sum = dir.join("go.sum");
                if go_sums.contains(&sum) {
                    continue;
                }
                let go_mod = dir.join("go.mod");
                let go_mod = go_mod.exists().then(|| read(&go_mod)).transpose()?;
                plan.add_go_sum(&read(&sum)?, go_mod.as_deref())
                    .map_err(|e| format!("{}: {e}", sum.display()))?;
                go_sums.push(sum);
            }
            _ if name.ends_with(".lock") => {
                plan.add_lockfile(&read(file)?)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
            }
            _ => {
                return Err(format!(
                    "{}: not a go.sum, go.mod or Gemfile.lock",
                    file.display()
                ))
            }
        }
    }
    let goproxy = args
        .goproxy
        .clone()
        .or_else(|| std::env::var("GOPROXY").ok())
        .unwrap_or_default();
    let goproxy = warm::parse_goproxy(&goproxy);
    if !go_sums.is_empty() && goproxy.is_empty() {
        return Err(
            "no Go proxy: pass --goproxy or set GOPROXY to the proxy's project URLs".into(),
        );
    }
    let host = proxy
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
        .unwrap_or_default();
    let netrc = std::env::var_os("NETRC")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".netrc")));
    let credentials = Credentials::discover(
        args.token_file.as_deref(),
        std::env::var("GITLAB_TOKEN").ok(),
        netrc.as_deref(),
        &host,
    )?;
    let admin_token = if args.pin {
        let path = admin_token_file.ok_or(
            "--pin needs the admin token: --admin-token-file or GITLAB_PKG_CACHE_ADMIN_TOKEN_FILE",
        )?;
        Some(crate::admin::auth::read_token(path).map_err(|e| format!("admin token file: {e}"))?)
    } else {
        None
    };
    let options = Options {
        proxy,
        goproxy,
        credentials,
        jobs: args.jobs.clamp(1, 64),
    };
    Ok((plan, options, admin_token))
}

/// How progress is shown.
enum Display {
    Json,
    Bars {
        multi: MultiProgress,
        items: ProgressBar,
        bytes: ProgressBar,
    },
    Lines,
}

impl Display {
    fn new(json: bool, total: usize) -> Display {
        if json {
            return Display::Json;
        }
        let target = ProgressDrawTarget::stderr();
        if !std::io::stderr().is_terminal() || target.is_hidden() {
            return Display::Lines;
        }
        let multi = MultiProgress::with_draw_target(target);
        let items = multi.add(ProgressBar::new(total as u64));
        items.set_style(
            ProgressStyle::with_template(
                "{spinner:.green} warming {pos}/{len} files [{wide_bar:.cyan/blue}] {elapsed_precise}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let bytes = multi.add(ProgressBar::no_length());
        bytes.set_style(
            ProgressStyle::with_template(
                "  {binary_bytes} received at {binary_bytes_per_sec}  {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        items.enable_steady_tick(Duration::from_millis(120));
        Display::Bars {
            multi,
            items,
            bytes,
        }
    }

    fn event(&self, event: &Event) {
        match (self, event) {
            (Display::Bars { bytes, .. }, Event::Bytes(n)) => bytes.inc(*n),
            (
                Display::Bars { bytes, .. },
                Event::Started {
                    kind,
                    name,
                    version,
                },
            ) => bytes.set_message(format!("{} {name} {version}", kind.as_str())),
            (Display::Bars { multi, items, .. }, Event::Done(outcome)) => {
                items.inc(1);
                if !matches!(outcome.status, Status::Fetched { .. }) {
                    let _ = multi.println(line(outcome));
                }
            }
            (Display::Lines, Event::Done(outcome)) => println!("{}", line(outcome)),
            (Display::Json, Event::Done(outcome)) => println!("{}", json_line(outcome)),
            _ => {}
        }
    }

    fn finish(&self) {
        if let Display::Bars { items, bytes, .. } = self {
            items.finish();
            bytes.finish_with_message("done");
        }
    }
}

/// `ok      go.zip  gitlab.example.com/g/p v1.0.0  fetched, verified, 1.2 KiB`
fn line(outcome: &Outcome) -> String {
    let (word, detail) = match &outcome.status {
        Status::Fetched {
            cached,
            bytes,
            verified,
        } => (
            "ok",
            format!(
                "{}, {}, {}",
                if *cached { "already cached" } else { "fetched" },
                if *verified {
                    "verified"
                } else {
                    "no hash to check"
                },
                indicatif::BinaryBytes(*bytes)
            ),
        ),
        Status::Failed(reason) => ("FAILED", reason.clone()),
        Status::NotServed(reason) => ("missing", reason.clone()),
    };
    format!(
        "{word:<8}{:<8}{} {}  {detail}",
        outcome.kind.as_str(),
        outcome.name,
        outcome.version
    )
}

fn json_line(outcome: &Outcome) -> serde_json::Value {
    let mut value = json!({
        "event": "item",
        "kind": outcome.kind.as_str(),
        "name": outcome.name,
        "version": outcome.version,
    });
    match &outcome.status {
        Status::Fetched {
            cached,
            bytes,
            verified,
        } => {
            value["status"] = json!(if *cached { "cached" } else { "fetched" });
            value["verified"] = json!(verified);
            value["bytes"] = json!(bytes);
        }
        Status::Failed(reason) => {
            value["status"] = json!("failed");
            value["error"] = json!(reason);
        }
        Status::NotServed(reason) => {
            value["status"] = json!("not_served");
            value["error"] = json!(reason);
        }
    }
    value
}

async fn run(
    args: WarmArgs,
    plan: Plan,
    options: Options,
    admin_token: Option<String>,
) -> ExitCode {
    let display = Display::new(args.json, plan.items());
    let notes: Vec<String> = plan
        .not_served
        .iter()
        .chain(plan.unverifiable.iter())
        .cloned()
        .collect();
    let proxy = options.proxy.clone();
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let work = tokio::spawn(warm::run(plan, options, sender));
    let mut summary = Summary::default();
    let mut keys = Vec::new();
    while let Some(event) = receiver.recv().await {
        if let Event::Done(outcome) = &event {
            summary.add(outcome);
            if let (Status::Fetched { .. }, Some(key)) = (&outcome.status, &outcome.key) {
                keys.push(key.clone());
            }
        }
        display.event(&event);
    }
    display.finish();
    let failed_to_run = match work.await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(e) => Some(e.to_string()),
    };
    let mut pin_error = None;
    let mut pinned = 0;
    if let Some(token) = admin_token {
        match pin(&proxy, &token, &keys).await {
            Ok(n) => pinned = n,
            Err(e) => pin_error = Some(e),
        }
    }
    let unserved_fails = !args.skip_unserved && summary.not_served > 0;
    let ok =
        summary.failed == 0 && !unserved_fails && failed_to_run.is_none() && pin_error.is_none();
    if args.json {
        for note in &notes {
            println!("{}", json!({ "event": "note", "message": note }));
        }
        let mut value = json!({ "event": "summary", "ok": ok });
        if let serde_json::Value::Object(fields) = json!(summary) {
            for (k, v) in fields {
                value[k] = v;
            }
        }
        if args.pin {
            value["pinned"] = json!(pinned);
        }
        if let Some(e) = failed_to_run.as_ref().or(pin_error.as_ref()) {
            value["error"] = json!(e);
        }
        println!("{value}");
    } else {
        for note in &notes {
            eprintln!("note: {note}");
        }
        if let Some(e) = &failed_to_run {
            eprintln!("gitlab-pkg-cache warm: {e}");
        }
        if let Some(e) = &pin_error {
            eprintln!("gitlab-pkg-cache warm: pinning failed: {e}");
        }
        println!(
            "warm: {} fetched, {} already cached, {} verified, {} failed, {} not served ({}){}",
            summary.fetched,
            summary.already_cached,
            summary.verified,
            summary.failed,
            summary.not_served,
            indicatif::BinaryBytes(summary.bytes),
            if args.pin {
                format!(", {pinned} newly pinned")
            } else {
                String::new()
            }
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Asks the proxy's admin API to pin `keys`; the number newly pinned.
async fn pin(proxy: &str, token: &str, keys: &[String]) -> Result<u64, String> {
    let client = HttpClient::new()?;
    let headers = admin_headers(token)?;
    let body = json!({ "keys": keys }).to_string();
    let response = client
        .send(
            http::Method::POST,
            &format!("{proxy}{}pin", crate::admin::PREFIX),
            headers,
            body::full(body),
        )
        .await?;
    let status = response.status();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "the proxy answered {status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("unreadable answer: {e}"))?;
    Ok(value["changed"].as_u64().unwrap_or(0))
}
