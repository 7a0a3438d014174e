//! `export`, `import` and `keygen`: bundles to and from a running proxy's admin API, with the
//! optional detached Ed25519 signature made and checked here, next to the bundle file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::airgap::bundle::{self, Manifest, MANIFEST};
use crate::airgap::client::{admin_headers, HttpClient};
use crate::body;

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The running proxy, e.g. http://pkg-cache.office:8080.
    #[arg(
        long,
        env = "GITLAB_PKG_CACHE_PROXY",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub proxy: String,
    /// Write a delta: only blobs the old bundle did not carry (it stays the base).
    #[arg(long, value_name = "OLD_BUNDLE")]
    pub since: Option<PathBuf>,
    /// Sign the manifest with this key (from `keygen`); writes BUNDLE.sig.
    #[arg(long, value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// Only this project (id or full path).
    #[arg(long, value_name = "ID")]
    pub project: Option<String>,
    /// Only this Go module (with --project).
    #[arg(long, value_name = "PATH")]
    pub module: Option<String>,
    /// Only this gem (with --project).
    #[arg(long, value_name = "NAME")]
    pub gem: Option<String>,
    /// Only this version of the module or gem.
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// The bundle file to write.
    #[arg(short = 'o', long = "output", value_name = "BUNDLE")]
    pub output: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The running proxy, e.g. http://pkg-cache.office:8080.
    #[arg(
        long,
        env = "GITLAB_PKG_CACHE_PROXY",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub proxy: String,
    /// Refuse the bundle unless BUNDLE.sig is a valid signature by this public key.
    #[arg(long, value_name = "FILE")]
    pub trusted_key: Option<PathBuf>,
    /// The bundle file.
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the private key; the public key goes to FILE.pub.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
}

/// The manifest bytes of a bundle file (its first member).
pub fn read_manifest(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{shown}: {e}"))?;
    let mut archive = tar::Archive::new(file);
    let mut entries = archive.entries().map_err(|e| format!("{shown}: {e}"))?;
    let mut first = entries
        .next()
        .ok_or_else(|| format!("{shown}: empty, not a bundle"))?
        .map_err(|e| format!("{shown}: not a bundle: {e}"))?;
    let name = first
        .path()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name != MANIFEST {
        return Err(format!("{shown}: not a bundle (first member {name:?})"));
    }
    let mut bytes = Vec::new();
    first
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{shown}: truncated manifest: {e}"))?;
    Ok(bytes)
}

fn signature_path(bundle: &Path) -> PathBuf {
    let mut name = bundle.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

pub(super) fn admin_token(file: Option<&Path>) -> Result<String, String> {
    let file = file.ok_or(
        "the admin token is needed: --admin-token-file or GITLAB_PKG_CACHE_ADMIN_TOKEN_FILE",
    )?;
    crate::admin::auth::read_token(file).map_err(|e| format!("admin token file: {e}"))
}

pub fn export(args: ExportArgs, admin_token_file: Option<&Path>) -> ExitCode {
    super::block_on(async move {
        match run_export(&args, admin_token_file).await {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gitlab-pkg-cache export: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn run_export(args: &ExportArgs, admin_token_file: Option<&Path>) -> Result<String, String> {
    let proxy = super::proxy_base(&args.proxy)?;
    let token = admin_token(admin_token_file)?;
    let signing = match &args.signing_key {
        Some(path) => Some(bundle::signing_key(
            &std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
        )?),
        None => None,
    };
    let mut request = json!({});
    for (name, value) in [
        ("project", &args.project),
        ("module", &args.module),
        ("gem", &args.gem),
        ("version", &args.version),
    ] {
        if let Some(value) = value {
            request[name] = json!(value);
        }
    }
    if let Some(old) = &args.since {
        let bytes = read_manifest(old)?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: unreadable manifest: {e}", old.display()))?;
        request["base"] = json!({
            "id": bundle::bundle_id(&bytes),
            "blobs": manifest.needed_blobs(),
        });
    }
    let client = HttpClient::new()?;
    let response = client
        .send(
            http::Method::POST,
            &format!("{proxy}{}export", crate::admin::PREFIX),
            admin_headers(&token)?,
            body::full(request.to_string()),
        )
        .await?;
    if !response.status().is_success() {
        return Err(error_text(response).await);
    }
    let partial = {
        let mut name = args.output.as_os_str().to_owned();
        name.push(".partial");
        PathBuf::from(name)
    };
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    let mut incoming = response.into_body();
    let mut written = 0u64;
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| format!("the bundle stream broke off: {e}"))?;
        if let Ok(data) = frame.into_data() {
            written += data.len() as u64;
            file.write_all(&data)
                .await
                .map_err(|e| format!("{}: {e}", partial.display()))?;
        }
    }
    file.sync_all()
        .await
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    drop(file);
    // Only a bundle that reads back whole gets its final name.
    let manifest_bytes = read_manifest(&partial)?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| format!("unreadable manifest: {e}"))?;
    std::fs::rename(&partial, &args.output)
        .map_err(|e| format!("{}: {e}", args.output.display()))?;
    let id = bundle::bundle_id(&manifest_bytes);
    if let Some(key) = &signing {
        let signature = signature_path(&args.output);
        std::fs::write(&signature, bundle::sign(key, &manifest_bytes))
            .map_err(|e| format!("{}: {e}", signature.display()))?;
    }
    Ok(format!(
        "exported {} artifacts and {} metadata answers ({} blobs, {} bytes) to {}: {id}{}{}",
        manifest.artifacts.len(),
        manifest.records.len(),
        manifest.blobs.len(),
        written,
        args.output.display(),
        manifest
            .base
            .map(|b| format!(", delta on {b}"))
            .unwrap_or_default(),
        if signing.is_some() { ", signed" } else { "" }
    ))
}

pub(super) async fn error_text(response: http::Response<hyper::body::Incoming>) -> String {
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
    format!("the proxy answered {status}: {message}")
}

pub fn import(args: ImportArgs, admin_token_file: Option<&Path>) -> ExitCode {
    super::block_on(async move {
        match run_import(&args, admin_token_file).await {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gitlab-pkg-cache import: {}: {e}", args.bundle.display());
                ExitCode::FAILURE
            }
        }
    })
}

async fn run_import(args: &ImportArgs, admin_token_file: Option<&Path>) -> Result<String, String> {
    let proxy = super::proxy_base(&args.proxy)?;
    let token = admin_token(admin_token_file)?;
    let manifest_bytes = read_manifest(&args.bundle)?;
    let id = bundle::bundle_id(&manifest_bytes);
    if let Some(trusted) = &args.trusted_key {
        let key =
            std::fs::read_to_string(trusted).map_err(|e| format!("{}: {e}", trusted.display()))?;
        let signature_file = signature_path(&args.bundle);
        let signature = std::fs::read_to_string(&signature_file)
            .map_err(|e| format!("no signature {}: {e}", signature_file.display()))?;
        bundle::verify(&key, &manifest_bytes, &signature)?;
    }
    let mut headers = admin_headers(&token)?;
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-tar"),
    );
    headers.insert(
        "x-bundle-id",
        http::HeaderValue::from_str(&id).map_err(|e| e.to_string())?,
    );
    let file = tokio::fs::File::open(&args.bundle)
        .await
        .map_err(|e| e.to_string())?;
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buf))), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let client = HttpClient::new()?;
    let response = client
        .send(
            http::Method::POST,
            &format!("{proxy}{}import", crate::admin::PREFIX),
            headers,
            body::boxed(StreamBody::new(stream)),
        )
        .await?;
    if !response.status().is_success() {
        return Err(error_text(response).await);
    }
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let report: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("unreadable answer: {e}"))?;
    let mut notes = String::new();
    if report["already_imported"] == true {
        notes.push_str(" (imported before)");
    }
    if report["older_than_imported"] == true {
        notes.push_str(&format!(
            "; older than a bundle imported before: {} newer items kept",
            report["kept_newer"]
        ));
    }
    if let Some(held_back) = report["held_back"].as_array().filter(|h| !h.is_empty()) {
        let keys: Vec<&str> = held_back.iter().filter_map(|k| k.as_str()).collect();
        notes.push_str(&format!(
            "; {} held back: their content differs from the first copy held here (see `admin \
             integrity`; purge a version to take the bundle's copy): {}",
            keys.len(),
            keys.join(", ")
        ));
    }
    Ok(format!(
        "imported {id}: {} artifacts ({} added, {} already held), {} metadata answers{notes}",
        report["artifacts"], report["added"], report["already_held"], report["records"],
    ))
}

pub fn keygen(args: KeygenArgs) -> ExitCode {
    let result = (|| -> Result<String, String> {
        let (private, public) = bundle::generate_key()?;
        let public_path = {
            let mut name = args.output.as_os_str().to_owned();
            name.push(".pub");
            PathBuf::from(name)
        };
        write_private(&args.output, &private)?;
        std::fs::write(&public_path, public)
            .map_err(|e| format!("{}: {e}", public_path.display()))?;
        Ok(format!(
            "private key {} (keep it on the connected side), public key {} (give it to importers)",
            args.output.display(),
            public_path.display()
        ))
    })();
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gitlab-pkg-cache keygen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Creates `path` readable by its owner only, refusing to overwrite.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}
