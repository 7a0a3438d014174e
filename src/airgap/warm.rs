//! `warm`: what a go.sum (with its go.mod) and a Gemfile.lock need, fetched through a running
//! proxy with the caller's credentials, each answer checked against the lockfile's own hash.

use std::sync::Arc;

use http::StatusCode;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::client::{auth_headers, ApiKind, Credentials, HttpClient};
use super::gosum::{self, SumKind};
use super::lockfile::{self, LockedGem};
use crate::protocol::goproxy::case_encode;

/// What one fetched file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    GoInfo,
    GoMod,
    GoZip,
    Gem,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::GoInfo => "go.info",
            Kind::GoMod => "go.mod",
            Kind::GoZip => "go.zip",
            Kind::Gem => "gem",
        }
    }
}

/// Files fetched together: one module version (`.info`, `.mod`, maybe `.zip`) or one gem.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Unit {
    Go {
        module: String,
        version: String,
        /// go.sum's zip hash; the `.zip` is fetched only when there is one.
        zip_h1: Option<String>,
        /// go.sum's `/go.mod` hash.
        mod_h1: Option<String>,
    },
    Gem(LockedGem),
}

impl Unit {
    fn items(&self) -> usize {
        match self {
            Unit::Go { zip_h1, .. } => 2 + usize::from(zip_h1.is_some()),
            Unit::Gem(_) => 1,
        }
    }
}

/// Everything the given files ask for, in file order, without duplicates.
#[derive(Debug, Default)]
pub struct Plan {
    units: Vec<Unit>,
    /// Entries the proxy cannot serve at all (GIT/PATH gems, gems from other servers).
    pub not_served: Vec<String>,
    /// go.mod requirements go.sum has no hash for (nothing to verify them against).
    pub unverifiable: Vec<String>,
}

impl Plan {
    /// Adds a go.sum and the go.mod beside it (if there is one).
    pub fn add_go_sum(&mut self, go_sum: &str, go_mod: Option<&str>) -> Result<(), String> {
        let lines = gosum::parse_go_sum(go_sum).map_err(|e| e.to_string())?;
        let main = go_mod.map(gosum::parse_go_mod).unwrap_or_default();
        for line in lines {
            if main.module.as_deref() == Some(line.module.as_str()) {
                continue;
            }
            let position = self.units.iter().position(|u| {
                matches!(u, Unit::Go { module, version, .. } if *module == line.module && *version == line.version)
            });
            let index = match position {
                Some(index) => index,
                None => {
                    self.units.push(Unit::Go {
                        module: line.module.clone(),
                        version: line.version.clone(),
                        zip_h1: None,
                        mod_h1: None,
                    });
                    self.units.len() - 1
                }
            };
            if let Unit::Go { zip_h1, mod_h1, .. } = &mut self.units[index] {
                match line.kind {
                    SumKind::Zip => *zip_h1 = Some(line.hash),
                    SumKind::GoMod => *mod_h1 = Some(line.hash),
                }
            }
        }
        for (path, version) in main.requires {
            let known = self.units.iter().any(|u| {
                matches!(u, Unit::Go { module, version: v, .. } if *module == path && *v == version)
            });
            if !known {
                self.unverifiable.push(format!(
                    "{path} {version} (required by go.mod, not in go.sum)"
                ));
            }
        }
        Ok(())
    }

    /// Adds a Gemfile.lock.
    pub fn add_lockfile(&mut self, text: &str) -> Result<(), String> {
        let lock = lockfile::parse_lockfile(text).map_err(|e| e.to_string())?;
        for spec in lock.not_served {
            self.not_served
                .push(format!("gem {spec}: from a git or path source"));
        }
        for gem in lock.gems {
            if project_path(&gem.remote).is_none() {
                self.not_served.push(format!(
                    "gem {}: remote {} is not a GitLab project's RubyGems registry",
                    gem.lock_name(),
                    gem.remote
                ));
                continue;
            }
            if !self
                .units
                .iter()
                .any(|u| matches!(u, Unit::Gem(g) if *g == gem))
            {
                self.units.push(Unit::Gem(gem));
            }
        }
        Ok(())
    }

    /// How many files the plan fetches.
    pub fn items(&self) -> usize {
        self.units.iter().map(Unit::items).sum()
    }
}

/// The path of a GitLab RubyGems remote (`/api/v4/projects/42/packages/rubygems/`).
fn project_path(remote: &str) -> Option<String> {
    let uri: http::Uri = remote.parse().ok()?;
    let path = uri.path();
    let at = path.find("/api/v4/projects/")?;
    let path = &path[at..];
    let path = if path.ends_with('/') {
        path.to_owned()
    } else {
        format!("{path}/")
    };
    path.ends_with("/packages/rubygems/").then_some(path)
}

/// One `GOPROXY` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoProxy {
    pub url: String,
    /// After `|`: the next entry is tried on any error, not only on 404/410.
    pub on_any_error: bool,
}

/// Reads a `GOPROXY` list: `,` falls through on 404/410, `|` on any error; `direct` and
/// `off` end the list (this command only talks to proxies).
pub fn parse_goproxy(list: &str) -> Vec<GoProxy> {
    let mut proxies = Vec::new();
    let mut rest = list;
    while !rest.is_empty() {
        let cut = rest.find([',', '|']);
        let (entry, separator, tail) = match cut {
            Some(i) => (&rest[..i], rest.as_bytes()[i], &rest[i + 1..]),
            None => (rest, b',', ""),
        };
        let entry = entry.trim();
        if entry == "direct" || entry == "off" {
            break;
        }
        if !entry.is_empty() {
            proxies.push(GoProxy {
                url: entry.trim_end_matches('/').to_owned(),
                on_any_error: separator == b'|',
            });
        }
        rest = tail;
    }
    proxies
}

/// How to reach the proxy.
#[derive(Debug, Clone)]
pub struct Options {
    /// The proxy's base URL (scheme, host, port), without a trailing slash.
    pub proxy: String,
    pub goproxy: Vec<GoProxy>,
    pub credentials: Credentials,
    /// Files fetched at once.
    pub jobs: usize,
}

/// How one file went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Fetched; `cached`: the proxy already held it; `verified`: its hash matched the
    /// lockfile's (false when the lockfile has none for it).
    Fetched {
        cached: bool,
        bytes: u64,
        verified: bool,
    },
    /// Fetched but wrong, or not fetched because of an error.
    Failed(String),
    /// No proxy in the list has it.
    NotServed(String),
}

/// One file's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub kind: Kind,
    /// Module path or gem name.
    pub name: String,
    /// Module version, or the gem's `version[-platform]`.
    pub version: String,
    /// The proxy's key for it (the request path), when it was fetched.
    pub key: Option<String>,
    pub status: Status,
}

/// What `run` reports while it works.
#[derive(Debug)]
pub enum Event {
    /// File `kind` of `name version` is being fetched.
    Started {
        kind: Kind,
        name: String,
        version: String,
    },
    /// More body bytes arrived.
    Bytes(u64),
    Done(Outcome),
}

struct Context {
    client: HttpClient,
    options: Options,
    events: mpsc::UnboundedSender<Event>,
}

impl Context {
    fn emit(&self, event: Event) {
        // The receiver only goes away when the command is exiting anyway.
        let _ = self.events.send(event);
    }
}

/// Fetches every file of `plan`, `options.jobs` at a time, reporting each as an [`Event`].
pub async fn run(
    plan: Plan,
    options: Options,
    events: mpsc::UnboundedSender<Event>,
) -> Result<(), String> {
    let client = HttpClient::new()?;
    let permits = Arc::new(Semaphore::new(options.jobs.max(1)));
    let context = Arc::new(Context {
        client,
        options,
        events,
    });
    let mut tasks = JoinSet::new();
    for unit in plan.units {
        let context = context.clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            match unit {
                Unit::Go {
                    module,
                    version,
                    zip_h1,
                    mod_h1,
                } => go_unit(&context, &module, &version, zip_h1, mod_h1).await,
                Unit::Gem(gem) => gem_unit(&context, &gem).await,
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            return Err(format!("a fetch task failed: {e}"));
        }
    }
    Ok(())
}

/// One downloaded body.
struct Downloaded {
    status: StatusCode,
    cached: bool,
    bytes: u64,
    sha256: [u8; 32],
}

/// GETs `url`, hashing the body as it streams (and writing it to `file`, if given).
async fn download(
    context: &Context,
    url: &str,
    api: ApiKind,
    mut file: Option<&mut tokio::fs::File>,
) -> Result<Downloaded, String> {
    let headers = auth_headers(context.options.credentials.header(api));
    let response = context.client.get(url, headers).await?;
    let status = response.status();
    let cached = response
        .headers()
        .get("x-cache")
        .is_some_and(|v| v.as_bytes() == b"hit");
    let mut body = response.into_body();
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the answer: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if status == StatusCode::OK {
            hasher.update(&data);
            bytes += data.len() as u64;
            context.emit(Event::Bytes(data.len() as u64));
            if let Some(file) = file.as_deref_mut() {
                file.write_all(&data)
                    .await
                    .map_err(|e| format!("writing a temporary file: {e}"))?;
            }
        }
    }
    if let Some(file) = file {
        file.flush()
            .await
            .map_err(|e| format!("writing a temporary file: {e}"))?;
    }
    Ok(Downloaded {
        status,
        cached,
        bytes,
        sha256: hasher.finalize().into(),
    })
}

fn path_of(url: &str) -> Option<String> {
    url.parse::<http::Uri>().ok().map(|u| u.path().to_owned())
}

async fn go_unit(
    context: &Context,
    module: &str,
    version: &str,
    zip_h1: Option<String>,
    mod_h1: Option<String>,
) {
    let done = |kind: Kind, key: Option<String>, status: Status| {
        context.emit(Event::Done(Outcome {
            kind,
            name: module.to_owned(),
            version: version.to_owned(),
            key,
            status,
        }));
    };
    let kinds: Vec<Kind> = [Kind::GoInfo, Kind::GoMod]
        .into_iter()
        .chain(zip_h1.is_some().then_some(Kind::GoZip))
        .collect();
    let fail_all = |from: usize, status: Status| {
        for kind in &kinds[from..] {
            done(*kind, None, status.clone());
        }
    };
    // Spelled as the go command spells it (`!` as `%21`), so warm fills the same keys.
    let file = format!("{}/@v/{}", case_encode(module), case_encode(version)).replace('!', "%21");

    // `.info` finds the proxy entry that serves the module, as the go command does.
    context.emit(Event::Started {
        kind: Kind::GoInfo,
        name: module.to_owned(),
        version: version.to_owned(),
    });
    let mut base = None;
    let mut last = "GOPROXY lists no proxy".to_owned();
    for proxy in &context.options.goproxy {
        let url = format!("{}/{file}.info", proxy.url);
        match download(context, &url, ApiKind::Go, None).await {
            Ok(got) if got.status == StatusCode::OK => {
                done(
                    Kind::GoInfo,
                    path_of(&url),
                    Status::Fetched {
                        cached: got.cached,
                        bytes: got.bytes,
                        verified: false,
                    },
                );
                base = Some(proxy.url.clone());
                break;
            }
            Ok(got) if matches!(got.status.as_u16(), 404 | 410) => {
                last = format!("not found at {}", super::client::redact(&proxy.url));
            }
            Ok(got) if proxy.on_any_error => {
                last = format!(
                    "{} answered {}",
                    super::client::redact(&proxy.url),
                    got.status
                );
            }
            Err(e) if proxy.on_any_error => last = e,
            Ok(got) => {
                return fail_all(
                    0,
                    Status::Failed(format!("the proxy answered {}", got.status)),
                );
            }
            Err(e) => return fail_all(0, Status::Failed(e)),
        }
    }
    let Some(base) = base else {
        return fail_all(0, Status::NotServed(last));
    };

    context.emit(Event::Started {
        kind: Kind::GoMod,
        name: module.to_owned(),
        version: version.to_owned(),
    });
    let url = format!("{base}/{file}.mod");
    match download(context, &url, ApiKind::Go, None).await {
        Ok(got) if got.status == StatusCode::OK => {
            let computed = gosum::hash1(vec![("go.mod".to_owned(), got.sha256)]);
            let status = match &mod_h1 {
                Some(expected) if *expected != computed => Status::Failed(format!(
                    "go.mod hash mismatch: go.sum has {expected}, the proxy served {computed}"
                )),
                _ => Status::Fetched {
                    cached: got.cached,
                    bytes: got.bytes,
                    verified: mod_h1.is_some(),
                },
            };
            done(Kind::GoMod, path_of(&url), status);
        }
        Ok(got) => done(
            Kind::GoMod,
            None,
            Status::Failed(format!("the proxy answered {}", got.status)),
        ),
        Err(e) => done(Kind::GoMod, None, Status::Failed(e)),
    }

    let Some(expected) = zip_h1 else {
        return;
    };
    context.emit(Event::Started {
        kind: Kind::GoZip,
        name: module.to_owned(),
        version: version.to_owned(),
    });
    let url = format!("{base}/{file}.zip");
    let status = match zip_status(context, &url, module, version, &expected).await {
        Ok(status) => status,
        Err(e) => Status::Failed(e),
    };
    let key = matches!(status, Status::Fetched { .. })
        .then(|| path_of(&url))
        .flatten();
    done(Kind::GoZip, key, status);
}

/// Downloads the zip to a temporary file and checks its `h1:` against go.sum's.
async fn zip_status(
    context: &Context,
    url: &str,
    module: &str,
    version: &str,
    expected: &str,
) -> Result<Status, String> {
    let temp = tempfile::NamedTempFile::new().map_err(|e| format!("temporary file: {e}"))?;
    let std_file = temp.reopen().map_err(|e| format!("temporary file: {e}"))?;
    let mut file = tokio::fs::File::from_std(std_file);
    let got = download(context, url, ApiKind::Go, Some(&mut file)).await?;
    drop(file);
    if got.status != StatusCode::OK {
        return Ok(Status::Failed(format!("the proxy answered {}", got.status)));
    }
    let (module_owned, version_owned) = (module.to_owned(), version.to_owned());
    let computed = tokio::task::spawn_blocking(move || {
        let file = temp.reopen().map_err(|e| format!("temporary file: {e}"))?;
        gosum::hash_zip(std::io::BufReader::new(file), &module_owned, &version_owned)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("hashing task: {e}"))??;
    if computed != expected {
        return Ok(Status::Failed(format!(
            "zip hash mismatch: go.sum has {expected}, the proxy served {computed}"
        )));
    }
    Ok(Status::Fetched {
        cached: got.cached,
        bytes: got.bytes,
        verified: true,
    })
}

async fn gem_unit(context: &Context, gem: &LockedGem) {
    let version = match &gem.platform {
        Some(platform) => format!("{}-{platform}", gem.version),
        None => gem.version.clone(),
    };
    context.emit(Event::Started {
        kind: Kind::Gem,
        name: gem.name.clone(),
        version: version.clone(),
    });
    let path = project_path(&gem.remote).unwrap_or_default();
    let url = format!(
        "{}{path}gems/{}.gem",
        context.options.proxy,
        gem.full_name()
    );
    let (key, status) = match download(context, &url, ApiKind::RubyGems, None).await {
        Ok(got) if got.status == StatusCode::OK => match gem.sha256 {
            Some(expected) if expected != got.sha256 => (
                None,
                Status::Failed(format!(
                    "checksum mismatch: Gemfile.lock has sha256={}, the proxy served sha256={}",
                    hex::encode(expected),
                    hex::encode(got.sha256)
                )),
            ),
            _ => (
                path_of(&url),
                Status::Fetched {
                    cached: got.cached,
                    bytes: got.bytes,
                    verified: gem.sha256.is_some(),
                },
            ),
        },
        Ok(got) if got.status == StatusCode::NOT_FOUND && gem.platform.is_some() => (
            None,
            Status::NotServed(
                "not found: GitLab stores gems without their platform in the file name".to_owned(),
            ),
        ),
        Ok(got) => (
            None,
            Status::Failed(format!("the proxy answered {}", got.status)),
        ),
        Err(e) => (None, Status::Failed(e)),
    };
    context.emit(Event::Done(Outcome {
        kind: Kind::Gem,
        name: gem.name.clone(),
        version,
        key,
        status,
    }));
}

/// Totals for the summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub fetched: u64,
    pub already_cached: u64,
    pub verified: u64,
    pub failed: u64,
    pub not_served: u64,
    pub bytes: u64,
}

impl Summary {
    pub fn add(&mut self, outcome: &Outcome) {
        match &outcome.status {
            Status::Fetched {
                cached,
                bytes,
                verified,
            } => {
                if *cached {
                    self.already_cached += 1;
                } else {
                    self.fetched += 1;
                }
                self.verified += u64::from(*verified);
                self.bytes += bytes;
            }
            Status::Failed(_) => self.failed += 1,
            Status::NotServed(_) => self.not_served += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goproxy_lists() {
        assert_eq!(
            parse_goproxy("http://a/x/,http://b|http://c,direct"),
            [
                GoProxy {
                    url: "http://a/x".into(),
                    on_any_error: false
                },
                GoProxy {
                    url: "http://b".into(),
                    on_any_error: true
                },
                GoProxy {
                    url: "http://c".into(),
                    on_any_error: false
                },
            ]
        );
        assert!(parse_goproxy("off").is_empty());
    }

    #[test]
    fn plans_merge_go_sum_lines_and_skip_what_cannot_be_served() {
        let mut plan = Plan::default();
        plan.add_go_sum(
            "example.com/a v1.0.0 h1:Z=\nexample.com/a v1.0.0/go.mod h1:M=\nexample.com/b v0.1.0/go.mod h1:B=\nexample.com/app v0.0.0/go.mod h1:X=\n",
            Some("module example.com/app\nrequire example.com/a v1.0.0\nrequire example.com/c v1.0.0\n"),
        )
        .unwrap();
        assert_eq!(plan.items(), 3 + 2);
        assert_eq!(plan.unverifiable.len(), 1, "{:?}", plan.unverifiable);
        plan.add_lockfile(
            "GEM\n  remote: https://gitlab.example.com/api/v4/projects/7/packages/rubygems/\n  specs:\n    a (1.0)\n\nGEM\n  remote: https://rubygems.org/\n  specs:\n    rake (13.0)\n",
        )
        .unwrap();
        assert_eq!(plan.items(), 6);
        assert_eq!(plan.not_served.len(), 1);
        assert!(plan.not_served[0].contains("rake (13.0)"));
    }
}
