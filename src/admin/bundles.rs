//! Export and import of bundles (see `airgap::bundle`), streamed in both directions: the tar
//! is written and read on a blocking thread through a bounded channel, never held whole.
//!
//! Import verifies everything before anything becomes visible: the manifest (against the id
//! the client checked the signature of), the base of a delta, every blob's SHA-256 and size
//! while it is staged to disk, the Go `h1:` of every zip and `.mod`. Only then is each
//! artifact committed (each one atomically, through the store's own checked commit) and kept
//! from eviction, and the bundle recorded as imported. A cut-off bundle stages, fails, and
//! leaves the store as it was; importing a bundle twice changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::select::{route_of, Selection};
use super::{AdminError, Call, Reply};
use crate::airgap::bundle::{self, ArtifactEntry, Manifest, RecordEntry, BLOBS, MANIFEST};
use crate::airgap::gosum;
use crate::body;
use crate::cache::memory::persisted_fetched_at;
use crate::integrity::{self, Fingerprint};
use crate::protocol::goproxy::{case_decode, GoRequest};
use crate::route::PackageRequest;
use crate::state::AppState;
use crate::storage::{ArtifactMeta, ArtifactStore, Commit, PinGuard, StoreError};

/// The only record namespace a bundle may carry: metadata answers.
const METADATA: &str = "metadata";
/// Where imported bundle ids are recorded.
const BUNDLES: &str = "bundles";
/// Chunk size for writing imported blobs into the store.
const CHUNK: usize = 256 * 1024;
/// Largest manifest read.
const MAX_MANIFEST: u64 = 256 << 20;
/// Pieces in flight between the network and the tar thread.
const CHANNEL: usize = 8;

/// `POST export` body: a selection (empty = everything) and, for a delta, the base.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportRequest {
    #[serde(flatten)]
    pub selection: Selection,
    pub base: Option<Base>,
}

/// The base of a delta, as the client read it from the old bundle.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// `sha256:` id of the base bundle.
    pub id: String,
    /// Every blob the base's full state lists.
    pub blobs: Vec<String>,
}

/// What the tar writer streams after the manifest.
enum Shipped {
    Artifact(ArtifactMeta, PinGuard),
    Record(Vec<u8>),
}

/// `POST export`: the bundle as a streamed `application/x-tar` body.
pub async fn export(state: &Arc<AppState>, call: Call) -> Result<Reply, AdminError> {
    let request: ExportRequest = call.json().await?;
    request
        .selection
        .validate(true)
        .map_err(AdminError::BadRequest)?;
    let store = state.fills.store().inner().clone();
    let staging = staging_root(state);
    let built =
        tokio::task::spawn_blocking(move || build_manifest(store.as_ref(), &request, &staging))
            .await
            .map_err(|e| AdminError::Internal(format!("export task: {e}")))??;
    let (manifest_bytes, shipped, manifest) = built;
    let id = bundle::bundle_id(&manifest_bytes);
    let detail = format!(
        "export {id}: {} artifacts, {} records, {} blobs shipped{}",
        manifest.artifacts.len(),
        manifest.records.len(),
        manifest.blobs.len(),
        manifest
            .base
            .as_ref()
            .map(|b| format!(", delta on {b}"))
            .unwrap_or_default()
    );
    let store = state.fills.store().inner().clone();
    let (sender, receiver) = mpsc::channel::<Result<Bytes, io::Error>>(CHANNEL);
    let created = manifest.created_unix;
    tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter {
            sender: sender.clone(),
        };
        if let Err(e) = write_tar(store.as_ref(), writer, &manifest_bytes, shipped, created) {
            tracing::warn!(error = %e, "export stream broken");
            let _ = sender.blocking_send(Err(e));
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|piece| (piece.map(Frame::data), receiver))
    });
    let mut response = Response::new(body::boxed(StreamBody::new(stream)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert("x-bundle-id", value);
    }
    Ok(Reply { response, detail })
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn staging_root(state: &AppState) -> PathBuf {
    state.config.data_dir.join("bundle-staging")
}

type Built = (Vec<u8>, Vec<(String, Shipped)>, Manifest);

/// Lists what the selection holds, pins the fills of what ships, computes Go hashes.
fn build_manifest(
    store: &dyn ArtifactStore,
    request: &ExportRequest,
    staging: &Path,
) -> Result<Built, AdminError> {
    let have: BTreeSet<&String> = request
        .base
        .as_ref()
        .map(|b| b.blobs.iter().collect())
        .unwrap_or_default();
    let mut artifacts = Vec::new();
    let mut shipped: Vec<(String, Shipped)> = Vec::new();
    let mut shipped_names = BTreeSet::new();
    for key in store.keys("") {
        if !request.selection.matches(&key) {
            continue;
        }
        let Some((meta, pin)) = store.lookup_pinned(&key)? else {
            continue;
        };
        let sha = hex::encode(meta.sha256);
        let route = route_of(&key);
        let (mut h1, mut gomod_h1) = (None, None);
        if let Some(PackageRequest::Go {
            module,
            request: go,
        }) = route.as_ref().map(|r| &r.request)
        {
            match go {
                GoRequest::Zip(version) => {
                    let version = case_decode(version.as_str()).unwrap_or_default();
                    h1 = Some(zip_h1(store, &meta, staging, module.decoded(), &version)?);
                }
                GoRequest::Mod(_) => {
                    gomod_h1 = Some(gosum::hash1(vec![("go.mod".to_owned(), meta.sha256)]));
                }
                GoRequest::Info(_) | GoRequest::List => {}
            }
        }
        artifacts.push(ArtifactEntry {
            key: key.clone(),
            sha256: sha.clone(),
            size: meta.len,
            headers: meta.headers.clone(),
            h1,
            gomod_h1,
        });
        if !have.contains(&sha) && shipped_names.insert(sha.clone()) {
            shipped.push((sha, Shipped::Artifact(meta, pin)));
        }
    }
    let mut records = Vec::new();
    for raw in store.record_keys(METADATA)? {
        let Ok(key) = String::from_utf8(raw) else {
            continue;
        };
        if !request.selection.is_all() && !request.selection.matches(&key) {
            continue;
        }
        let Some(value) = store.get_record(METADATA, key.as_bytes())? else {
            continue;
        };
        let sha = hex::encode(Sha256::digest(&value));
        records.push(RecordEntry {
            namespace: METADATA.to_owned(),
            key,
            sha256: sha.clone(),
            size: value.len() as u64,
        });
        if !have.contains(&sha) && shipped_names.insert(sha.clone()) {
            shipped.push((sha, Shipped::Record(value)));
        }
    }
    let created_ms = unix_now_ms();
    let manifest = Manifest {
        format: bundle::FORMAT.to_owned(),
        format_version: bundle::FORMAT_VERSION,
        producer: format!("gitlab-pkg-cache {}", env!("CARGO_PKG_VERSION")),
        created_unix: created_ms / 1000,
        created_ms,
        base: request.base.as_ref().map(|b| b.id.clone()),
        artifacts,
        records,
        blobs: shipped.iter().map(|(sha, _)| sha.clone()).collect(),
    };
    let bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| AdminError::Internal(format!("manifest: {e}")))?;
    Ok((bytes, shipped, manifest))
}

/// Reads a stored artifact chunk by chunk.
struct ArtifactReader<'a> {
    store: &'a dyn ArtifactStore,
    meta: &'a ArtifactMeta,
    next: u32,
    current: Bytes,
}

impl Read for ArtifactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.next >= self.meta.chunk_count {
                return Ok(0);
            }
            self.current = self
                .store
                .read_chunk(self.meta.fill, self.next)
                .map_err(io::Error::other)?
                .ok_or_else(|| io::Error::other("stored artifact vanished while it was read"))?;
            self.next += 1;
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

fn reader<'a>(store: &'a dyn ArtifactStore, meta: &'a ArtifactMeta) -> ArtifactReader<'a> {
    ArtifactReader {
        store,
        meta,
        next: 0,
        current: Bytes::new(),
    }
}

/// The `h1:` of a stored zip (copied to a temporary file: the zip reader seeks).
fn zip_h1(
    store: &dyn ArtifactStore,
    meta: &ArtifactMeta,
    staging: &Path,
    module: &str,
    version: &str,
) -> Result<String, AdminError> {
    std::fs::create_dir_all(staging).map_err(|e| AdminError::Internal(format!("staging: {e}")))?;
    let mut temp = tempfile::tempfile_in(staging)
        .map_err(|e| AdminError::Internal(format!("staging: {e}")))?;
    io::copy(&mut reader(store, meta), &mut temp)
        .map_err(|e| AdminError::Internal(format!("reading a stored zip: {e}")))?;
    gosum::hash_zip(io::BufReader::new(temp), module, version)
        .map_err(|e| AdminError::Internal(format!("{module}@{version}: {e}")))
}

/// Sends what the tar builder writes down the channel, in pieces, blocking when it is full.
struct ChannelWriter {
    sender: mpsc::Sender<Result<Bytes, io::Error>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sender
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn write_tar(
    store: &dyn ArtifactStore,
    writer: ChannelWriter,
    manifest: &[u8],
    shipped: Vec<(String, Shipped)>,
    mtime: u64,
) -> io::Result<()> {
    // A buffer in front of the channel so pieces are large.
    let mut builder = tar::Builder::new(io::BufWriter::with_capacity(CHUNK, writer));
    let header = |size: u64| {
        let mut header = tar::Header::new_ustar();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        header
    };
    builder.append_data(&mut header(manifest.len() as u64), MANIFEST, manifest)?;
    for (sha, item) in shipped {
        let path = format!("{BLOBS}{sha}");
        match item {
            Shipped::Artifact(meta, _pin) => {
                builder.append_data(&mut header(meta.len), &path, reader(store, &meta))?;
            }
            Shipped::Record(value) => {
                builder.append_data(&mut header(value.len() as u64), &path, value.as_slice())?;
            }
        }
    }
    builder.into_inner()?.flush()
}

/// Hands the request body to the tar thread, piece by piece.
struct ChannelReader {
    receiver: mpsc::Receiver<Result<Bytes, io::Error>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(Ok(piece)) => self.current = piece,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// `POST import`: the body is a bundle; `x-bundle-id`, when sent, is the id whose signature
/// the client checked, and the manifest must hash to it.
pub async fn import(state: &Arc<AppState>, call: Call) -> Result<Reply, AdminError> {
    let expected = call
        .parts
        .headers
        .get("x-bundle-id")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| AdminError::BadRequest("x-bundle-id is not text".to_owned()))?;
    let (sender, receiver) = mpsc::channel::<Result<Bytes, io::Error>>(CHANNEL);
    let mut incoming = call.body;
    // Reads the whole body even after a refusal, so the client always gets the answer.
    let pump = tokio::spawn(async move {
        let mut open = true;
        while let Some(frame) = incoming.frame().await {
            match frame {
                Ok(frame) => {
                    if let (true, Ok(data)) = (open, frame.into_data()) {
                        open = sender.send(Ok(data)).await.is_ok();
                    }
                }
                Err(e) => {
                    let _ = sender.send(Err(io::Error::other(e))).await;
                    return;
                }
            }
        }
    });
    let store = state.fills.store().inner().clone();
    let staging = staging_root(state);
    let result = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            receiver,
            current: Bytes::new(),
        };
        import_blocking(store.as_ref(), reader, &staging, expected.as_deref())
    })
    .await
    .map_err(|e| AdminError::Internal(format!("import task: {e}")))?;
    let _ = pump.await;
    let Imported {
        report,
        records_written,
        artifacts_replaced,
        held_back,
    } = result?;
    for (key, first, seen) in held_back {
        state
            .integrity
            .report_seen(&key, first, seen, "bundle")
            .await;
    }
    // What changed behind the memory tiers is read from the store again.
    for key in &records_written {
        state.memory.forget(key).await;
    }
    for key in &artifacts_replaced {
        state.artifacts.invalidate(key);
    }
    state.held_gems.forget();
    let detail = format!(
        "import {}: {} artifacts added ({} replaced), {} already held, {} records, {} newer items kept, {} held back (integrity)",
        report["id"].as_str().unwrap_or(""),
        report["added"],
        report["replaced"],
        report["already_held"],
        report["records"],
        report["kept_newer"],
        report["held_back"].as_array().map_or(0, Vec::len)
    );
    Ok(Reply {
        response: super::json_response(StatusCode::OK, report.to_string()),
        detail,
    })
}

/// A directory removed (with whatever was staged in it) when dropped.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn refused(message: impl Into<String>) -> AdminError {
    AdminError::Refused(message.into())
}

/// What an import did.
struct Imported {
    /// The JSON report for the client.
    report: serde_json::Value,
    /// Metadata answers written (their memory copies are stale).
    records_written: Vec<String>,
    /// Artifacts whose held content was replaced by a newer bundle's.
    artifacts_replaced: Vec<String>,
    /// Artifacts whose bundle content differs from the first copy recorded here: not
    /// imported; (key, first copy, bundle's copy).
    held_back: Vec<(String, Fingerprint, Fingerprint)>,
}

/// When the newest bundle imported here was written (milliseconds; 0 if none was).
fn newest_imported(store: &dyn ArtifactStore) -> Result<u64, AdminError> {
    let mut newest = 0u64;
    for id in store.record_keys(BUNDLES)? {
        let Some(note) = store.get_record(BUNDLES, &id)? else {
            continue;
        };
        let note: serde_json::Value = serde_json::from_slice(&note).unwrap_or_default();
        let created_ms = note["created_ms"]
            .as_u64()
            .or_else(|| {
                note["created_unix"]
                    .as_u64()
                    .map(|s| s.saturating_mul(1000))
            })
            .unwrap_or(0);
        newest = newest.max(created_ms);
    }
    Ok(newest)
}

fn import_blocking(
    store: &dyn ArtifactStore,
    input: ChannelReader,
    staging_root: &Path,
    expected_id: Option<&str>,
) -> Result<Imported, AdminError> {
    let mut archive = tar::Archive::new(input);
    let mut entries = archive
        .entries()
        .map_err(|e| refused(format!("not a bundle: {e}")))?;

    // 1. The manifest, first.
    let mut first = entries
        .next()
        .ok_or_else(|| refused("empty bundle: no manifest"))?
        .map_err(|e| refused(format!("not a bundle: {e}")))?;
    let path = first
        .path()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if path != MANIFEST {
        return Err(refused(format!(
            "the first member is {path:?}, not {MANIFEST}"
        )));
    }
    if first.size() > MAX_MANIFEST {
        return Err(refused("manifest too large"));
    }
    let mut manifest_bytes = Vec::new();
    first
        .read_to_end(&mut manifest_bytes)
        .map_err(|e| refused(format!("bundle is truncated in its manifest: {e}")))?;
    drop(first);
    let id = bundle::bundle_id(&manifest_bytes);
    if let Some(expected) = expected_id {
        if expected != id {
            return Err(refused(format!(
                "the manifest ({id}) is not the one whose signature was checked ({expected})"
            )));
        }
    }
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| refused(format!("manifest is unreadable: {e}")))?;
    manifest.check().map_err(refused)?;
    for artifact in &manifest.artifacts {
        if route_of(&artifact.key).is_none() {
            return Err(refused(format!("{}: not a package path", artifact.key)));
        }
    }
    if let Some(record) = manifest.records.iter().find(|r| r.namespace != METADATA) {
        return Err(refused(format!(
            "record {} in namespace {:?}: bundles carry metadata answers only",
            record.key, record.namespace
        )));
    }
    if let Some(base) = &manifest.base {
        if store.get_record(BUNDLES, base.as_bytes())?.is_none() {
            return Err(refused(format!(
                "delta bundle {id} needs its base {base}, which was never imported here"
            )));
        }
    }
    // A bundle written before one already imported (an old full bundle, a delta carried
    // late) only adds what is missing: it never replaces newer content or answers.
    let older = manifest.created_ms() < newest_imported(store)?;

    // 2. Blobs, staged and hashed as they stream.
    let names: HashMap<&str, &str> = manifest
        .records
        .iter()
        .map(|r| (r.sha256.as_str(), r.key.as_str()))
        .chain(
            manifest
                .artifacts
                .iter()
                .map(|a| (a.sha256.as_str(), a.key.as_str())),
        )
        .collect();
    let sizes: HashMap<&str, u64> = manifest
        .artifacts
        .iter()
        .map(|a| (a.sha256.as_str(), a.size))
        .chain(manifest.records.iter().map(|r| (r.sha256.as_str(), r.size)))
        .collect();
    let expected_blobs: BTreeSet<&str> = manifest.blobs.iter().map(String::as_str).collect();
    std::fs::create_dir_all(staging_root)
        .map_err(|e| AdminError::Internal(format!("staging: {e}")))?;
    let staging = Staging(
        tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(staging_root)
            .map_err(|e| AdminError::Internal(format!("staging: {e}")))?
            .keep(),
    );
    let mut staged: BTreeMap<String, PathBuf> = BTreeMap::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            refused(format!(
                "bundle is truncated or damaged after {} of {} blobs: {e}",
                staged.len(),
                expected_blobs.len()
            ))
        })?;
        let path = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sha = path
            .strip_prefix(BLOBS)
            .filter(|sha| expected_blobs.contains(sha) && !staged.contains_key(*sha))
            .ok_or_else(|| refused(format!("unexpected member {path:?}")))?
            .to_owned();
        let name = names.get(sha.as_str()).copied().unwrap_or("?");
        if entry.header().entry_type() != tar::EntryType::Regular
            || Some(entry.size()) != sizes.get(sha.as_str()).copied()
        {
            return Err(refused(format!("blob {sha} ({name}): wrong type or size")));
        }
        let file = staging.0.join(&sha);
        let mut out = std::fs::File::create(&file)
            .map_err(|e| AdminError::Internal(format!("staging: {e}")))?;
        let declared = entry.size();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| refused(format!("bundle is truncated in blob {sha} ({name}): {e}")))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| AdminError::Internal(format!("staging: {e}")))?;
        }
        if total != declared {
            return Err(refused(format!(
                "bundle is truncated in blob {sha} ({name}): {total} of {declared} bytes"
            )));
        }
        let got = hex::encode(hasher.finalize());
        if got != sha {
            return Err(refused(format!(
                "blob {sha} ({name}) is damaged: its content hashes to {got}"
            )));
        }
        staged.insert(sha, file);
    }
    if let Some(missing) = expected_blobs.iter().find(|b| !staged.contains_key(**b)) {
        let name = names.get(missing).copied().unwrap_or("?");
        return Err(refused(format!(
            "bundle is truncated: blob {missing} ({name}) is missing"
        )));
    }

    // 3. Every artifact has its bytes here or in the store; Go hashes recomputed.
    // Blobs are content-addressed: one held under another key serves as well.
    let mut held = BTreeSet::new();
    // Held with other content that an older bundle must not replace.
    let mut kept_newer = BTreeSet::new();
    let mut twins: HashMap<&str, &str> = HashMap::new();
    for artifact in &manifest.artifacts {
        match store.lookup(&artifact.key)? {
            Some(meta) if hex::encode(meta.sha256) == artifact.sha256 => {
                held.insert(artifact.key.clone());
                twins.entry(&artifact.sha256).or_insert(&artifact.key);
            }
            Some(_) if older => {
                kept_newer.insert(artifact.key.clone());
            }
            _ => {}
        }
    }
    // Other content than the first copy recorded here (a moved tag or a re-pushed gem, as the
    // exporting side saw it): held back as a refill from GitLab would be, and listed as an
    // integrity change, until an operator purges the version here.
    let mut held_back = Vec::new();
    for artifact in &manifest.artifacts {
        if held.contains(&artifact.key) || kept_newer.contains(&artifact.key) {
            continue;
        }
        if let Some(first) = integrity::first_copy_in(store, &artifact.key)? {
            let seen = fingerprint_of(artifact);
            if !first.same_content(&seen) {
                held_back.push((artifact.key.clone(), first, seen));
            }
        }
    }
    let held_back_keys: BTreeSet<&str> = held_back.iter().map(|(key, _, _)| key.as_str()).collect();
    let skipped = |key: &str| kept_newer.contains(key) || held_back_keys.contains(key);
    for artifact in &manifest.artifacts {
        if skipped(&artifact.key) {
            continue;
        }
        if !held.contains(&artifact.key)
            && !staged.contains_key(&artifact.sha256)
            && !twins.contains_key(artifact.sha256.as_str())
        {
            return Err(refused(format!(
                "{}: its blob {} is neither in this bundle nor held here",
                artifact.key, artifact.sha256
            )));
        }
        if let (Some(h1), Some(file)) = (&artifact.h1, staged.get(&artifact.sha256)) {
            let route = route_of(&artifact.key);
            let Some(PackageRequest::Go {
                module,
                request: GoRequest::Zip(version),
            }) = route.as_ref().map(|r| &r.request)
            else {
                return Err(refused(format!(
                    "{}: an h1 for something not a Go zip",
                    artifact.key
                )));
            };
            let version = case_decode(version.as_str()).unwrap_or_default();
            let opened = std::fs::File::open(file)
                .map_err(|e| AdminError::Internal(format!("staging: {e}")))?;
            let computed = gosum::hash_zip(io::BufReader::new(opened), module.decoded(), &version)
                .map_err(|e| refused(format!("{}: {e}", artifact.key)))?;
            if &computed != h1 {
                return Err(refused(format!(
                    "{}: Go h1 mismatch: the manifest says {h1}, the zip hashes to {computed}",
                    artifact.key
                )));
            }
        }
        if let Some(gomod_h1) = &artifact.gomod_h1 {
            let digest = hex::decode(&artifact.sha256)
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| refused(format!("{}: malformed sha256", artifact.key)))?;
            let computed = gosum::hash1(vec![("go.mod".to_owned(), digest)]);
            if &computed != gomod_h1 {
                return Err(refused(format!(
                    "{}: go.mod h1 mismatch: the manifest says {gomod_h1}, its content hashes to {computed}",
                    artifact.key
                )));
            }
        }
    }
    // Each record's answer, when it was GitLab's, and whether it is newer than the one held.
    let mut newer_records: Vec<(&RecordEntry, &PathBuf)> = Vec::new();
    let mut records_kept = 0u64;
    for record in &manifest.records {
        let existing = store.get_record(&record.namespace, record.key.as_bytes())?;
        let Some(file) = staged.get(&record.sha256) else {
            let same = existing
                .as_ref()
                .is_some_and(|v| hex::encode(Sha256::digest(v)) == record.sha256);
            if !same && older && existing.is_some() {
                // The base's answer, since replaced by a newer bundle's.
                records_kept += 1;
            } else if !same {
                return Err(refused(format!(
                    "record {}: its blob {} is neither in this bundle nor held here",
                    record.key, record.sha256
                )));
            }
            continue;
        };
        let value =
            std::fs::read(file).map_err(|e| AdminError::Internal(format!("staging: {e}")))?;
        let incoming = persisted_fetched_at(&value).ok_or_else(|| {
            refused(format!(
                "record {}: not a metadata answer this proxy can read",
                record.key
            ))
        })?;
        let held_at = existing.as_deref().and_then(persisted_fetched_at);
        if held_at.is_some_and(|held_at| held_at > incoming) {
            records_kept += 1;
        } else {
            newer_records.push((record, file));
        }
    }

    // 4. Everything verified: publish, pin, record the bundle.
    let mut added = 0u64;
    let mut artifacts_replaced = Vec::new();
    for artifact in &manifest.artifacts {
        if skipped(&artifact.key) {
            continue;
        }
        if !held.contains(&artifact.key) {
            if store.lookup(&artifact.key)?.is_some() {
                artifacts_replaced.push(artifact.key.clone());
            }
            if let Some(file) = staged.get(&artifact.sha256) {
                let input = std::fs::File::open(file)
                    .map_err(|e| AdminError::Internal(format!("staging: {e}")))?;
                commit_from(store, artifact, input)?;
                added += 1;
            } else if let Some(twin) = twins.get(artifact.sha256.as_str()) {
                let Some((meta, _pin)) = store.lookup_pinned(twin)? else {
                    return Err(refused(format!("{twin} vanished during the import")));
                };
                commit_from(store, artifact, reader(store, &meta))?;
                added += 1;
            }
        }
        store.set_kept(&artifact.key, true)?;
        // What arrived first is the first copy here, as a fill's would be.
        integrity::record_first_in(store, &artifact.key, fingerprint_of(artifact))?;
    }
    let mut records_written = Vec::new();
    for (record, file) in newer_records {
        let value =
            std::fs::read(file).map_err(|e| AdminError::Internal(format!("staging: {e}")))?;
        store.put_record(&record.namespace, record.key.as_bytes(), &value)?;
        records_written.push(record.key.clone());
    }
    let note = json!({
        "base": manifest.base,
        "created_unix": manifest.created_unix,
        "created_ms": manifest.created_ms(),
    })
    .to_string();
    let again = store.get_record(BUNDLES, id.as_bytes())?.is_some();
    store.put_record(BUNDLES, id.as_bytes(), note.as_bytes())?;
    store.flush()?;
    let report = json!({
        "id": id,
        "base": manifest.base,
        "already_imported": again,
        "older_than_imported": older,
        "artifacts": manifest.artifacts.len(),
        "added": added,
        "replaced": artifacts_replaced.len(),
        "already_held": held.len(),
        "kept_newer": kept_newer.len() as u64 + records_kept,
        "held_back": held_back.iter().map(|(key, _, _)| key.as_str()).collect::<Vec<_>>(),
        "records": manifest.records.len(),
        "blobs_received": staged.len(),
    });
    Ok(Imported {
        report,
        records_written,
        artifacts_replaced,
        held_back,
    })
}

/// The fingerprint a bundle declares for an artifact (its Go hashes checked on import where
/// its bytes came with it).
fn fingerprint_of(artifact: &ArtifactEntry) -> Fingerprint {
    Fingerprint {
        sha256: artifact.sha256.clone(),
        len: artifact.size,
        h1: artifact.h1.clone().or_else(|| artifact.gomod_h1.clone()),
    }
}

/// Writes a verified blob into the store under the artifact's key; the store's commit checks
/// length and SHA-256 once more.
fn commit_from(
    store: &dyn ArtifactStore,
    artifact: &ArtifactEntry,
    mut input: impl Read,
) -> Result<(), AdminError> {
    let sha256 = hex::decode(&artifact.sha256)
        .ok()
        .and_then(|d| <[u8; 32]>::try_from(d).ok())
        .ok_or_else(|| refused(format!("{}: malformed sha256", artifact.key)))?;
    let fill = store.begin_fill(&artifact.key)?;
    let written = (|| -> Result<(), AdminError> {
        let mut buf = vec![0u8; CHUNK];
        let mut index = 0u32;
        loop {
            let n = read_full(&mut input, &mut buf)
                .map_err(|e| AdminError::Internal(format!("staging: {e}")))?;
            if n == 0 {
                return Ok(());
            }
            store.write_chunk(fill, index, &buf[..n])?;
            index += 1;
        }
    })();
    if let Err(e) = written {
        store.abort_fill(fill);
        return Err(e);
    }
    store
        .commit_fill(
            &artifact.key,
            fill,
            Commit {
                len: artifact.size,
                sha256,
                headers: artifact.headers.clone(),
            },
        )
        .map_err(|e| match e {
            StoreError::Integrity { .. } => refused(format!("{}: {e}", artifact.key)),
            other => AdminError::Store(other),
        })?;
    Ok(())
}

/// Reads until `buf` is full or the input ends.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
