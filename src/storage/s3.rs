//! The shared artifact tier on an S3-compatible bucket: write-once blobs, create-only
//! references that commit them, and lease objects for cross-replica single flight.
//!
//! Layout under the configured prefix (`<p>`), with `<h>` the hex SHA-256 of a content key:
//!
//! - `<p>/blobs/<h>/<fill-id>`: an artifact's bytes, streamed as a multipart upload by exactly
//!   one fill under a key no other fill uses, so a half-written blob is never visible.
//! - `<p>/refs/<h>`: a small JSON [`BlobRef`] naming the blob, its length and SHA-256. It is
//!   written with `If-None-Match: *`, which makes it the commit point: the first replica to
//!   write it wins, and readers only ever follow a reference.
//! - `<p>/leases/<h>`: who is fetching the key from GitLab now ([`Lease`]).
//!
//! The store is synchronous like every [`ArtifactStore`](super::ArtifactStore): calls run
//! their requests on a small runtime of the bucket's own and wait for them, so they work from
//! `spawn_blocking` threads and from plain threads alike.

use std::fmt;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{
    HttpClient, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody, HttpResponse,
    HttpResponseBody, HttpService,
};
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion, WriteMultipart,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StoreError;

/// Size of the parts a blob is uploaded in (S3's minimum for all but the last part is 5 MiB).
pub const PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts of one blob in flight at once; with `PART_SIZE` this bounds a fill's upload buffers.
const PARTS_IN_FLIGHT: usize = 2;

/// Where the shared tier is and how to sign requests to it.
#[derive(Clone)]
pub struct S3Settings {
    /// `http(s)://host[:port]` of the S3 API.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    /// Key prefix for everything this proxy writes (no leading or trailing `/` needed).
    pub prefix: String,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key`.
    pub path_style: bool,
    pub credentials: S3Credentials,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// An access key pair; its `Debug` shows the key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl S3Credentials {
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) if both are set.
    pub fn from_env() -> Option<S3Credentials> {
        let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Some(S3Credentials {
            access_key_id: get("AWS_ACCESS_KEY_ID")?,
            secret_access_key: get("AWS_SECRET_ACCESS_KEY")?,
            session_token: get("AWS_SESSION_TOKEN"),
        })
    }

    /// Reads an AWS shared-credentials style file: `key = value` lines
    /// (`aws_access_key_id`, `aws_secret_access_key`, optional `aws_session_token`) of the
    /// `[default]` profile, or of a file without profiles. Errors never quote the file.
    pub fn from_file(path: &FsPath) -> Result<S3Credentials, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("S3 credentials file {}: {e}", path.display()))?;
        let mut profile: Option<String> = None;
        let (mut id, mut secret, mut token) = (None, None, None);
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                profile = Some(name.trim().to_owned());
                continue;
            }
            if profile.as_deref().is_some_and(|p| p != "default") {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            let value = Some(value.trim().to_owned()).filter(|v| !v.is_empty());
            match name.trim().to_ascii_lowercase().as_str() {
                "aws_access_key_id" => id = value,
                "aws_secret_access_key" => secret = value,
                "aws_session_token" => token = value,
                _ => {}
            }
        }
        match (id, secret) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(S3Credentials {
                access_key_id,
                secret_access_key,
                session_token: token,
            }),
            _ => Err(format!(
                "S3 credentials file {} has no aws_access_key_id and aws_secret_access_key \
                 (in [default] or outside any profile)",
                path.display()
            )),
        }
    }
}

/// What a committed reference says about its artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// The content key, kept to detect hash collisions and for operators reading the bucket.
    pub key: String,
    /// Object key of the blob, relative to the bucket.
    pub blob: String,
    pub len: u64,
    /// Hex SHA-256 of the blob's bytes.
    pub sha256: String,
    /// Lengths of the chunks the writer stored, so every replica stores the same chunking.
    pub chunks: Vec<u32>,
    pub headers: Vec<(String, String)>,
    pub stored_at_unix: u64,
}

/// A lease body: which replica fetches the key from GitLab, and until when it counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    pub expires_unix_ms: u64,
}

/// How a create-only reference write ended.
#[derive(Debug)]
pub enum RefCommit {
    Won,
    /// Another fill committed first; this is its reference.
    Lost(BlobRef),
}

/// An upload in progress; dropped without `finish`, the bucket keeps an incomplete multipart
/// upload that lifecycle rules (AbortIncompleteMultipartUpload) reclaim.
pub struct BlobUpload {
    pub blob: String,
    writer: Option<WriteMultipart>,
}

impl fmt::Debug for BlobUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobUpload")
            .field("blob", &self.blob)
            .finish()
    }
}

/// The bucket, reached through object_store's S3 client over the proxy's own hyper client.
pub struct Bucket {
    store: Arc<AmazonS3>,
    prefix: String,
    io: IoRuntime,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn io_error(e: impl fmt::Display) -> StoreError {
    StoreError::Io(format!("shared store: {e}"))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A fresh, unguessable id for blob keys, probe keys and lease holders.
pub fn random_id() -> String {
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    hex::encode(id)
}

fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Bucket {
    /// Connects (lazily: no request is made here) to the bucket `settings` describe.
    pub fn open(settings: &S3Settings) -> Result<Bucket, StoreError> {
        let io = IoRuntime::new()?;
        let service = HyperService::new()?;
        let credentials = &settings.credentials;
        let mut builder = AmazonS3Builder::new()
            .with_endpoint(settings.endpoint.trim_end_matches('/'))
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(&credentials.secret_access_key)
            .with_virtual_hosted_style_request(!settings.path_style)
            .with_http_connector(Connector(service))
            .with_client_options(ClientOptions::new().with_allow_http(true))
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            });
        if let Some(token) = &credentials.session_token {
            builder = builder.with_token(token);
        }
        let store = builder.build().map_err(io_error)?;
        Ok(Bucket {
            store: Arc::new(store),
            prefix: settings.prefix.trim_matches('/').to_owned(),
            io,
        })
    }

    fn path(&self, rest: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rest)
        } else {
            Path::from(format!("{}/{rest}", self.prefix))
        }
    }

    fn ref_path(&self, key: &str) -> Path {
        self.path(&format!("refs/{}", key_hash(key)))
    }

    fn lease_path(&self, key: &str) -> Path {
        self.path(&format!("leases/{}", key_hash(key)))
    }

    /// Runs `future` on the bucket's runtime and waits for it.
    fn run<T, F>(&self, future: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.io.run(future)
    }

    /// Checks that the bucket is reachable and refuses a second create-only write of one
    /// key; a store that silently accepts it would let two replicas both "win" a commit.
    pub fn probe_conditional_writes(&self) -> Result<(), String> {
        let store = self.store.clone();
        let path = self.path(&format!("probe/{}", random_id()));
        let outcome = self.run(async move {
            let create = || PutOptions::from(PutMode::Create);
            store
                .put_opts(&path, PutPayload::from_static(b"1"), create())
                .await
                .map_err(|e| io_error(format!("writing a probe object: {e}")))?;
            let second = store
                .put_opts(&path, PutPayload::from_static(b"2"), create())
                .await;
            let _ = store.delete(&path).await;
            Ok(second)
        });
        match outcome {
            Err(e) => Err(format!("the S3 store is not usable: {e}")),
            Ok(Err(object_store::Error::AlreadyExists { .. }))
            | Ok(Err(object_store::Error::Precondition { .. })) => Ok(()),
            Ok(Ok(_)) => Err(
                "the S3 store ignores conditional writes (If-None-Match: *): a second \
                 create-only PUT of one key succeeded; replicas could not agree on what is \
                 stored, so the shared tier is refused"
                    .to_owned(),
            ),
            Ok(Err(e)) => Err(format!(
                "the S3 store answered a conditional write with an error: {e}"
            )),
        }
    }

    /// Starts the multipart upload of a new blob for `key`.
    pub fn start_blob(&self, key: &str) -> Result<BlobUpload, StoreError> {
        let blob = self.path(&format!("blobs/{}/{}", key_hash(key), random_id()));
        let store = self.store.clone();
        let name = blob.to_string();
        let upload = self.run(async move {
            let upload = store.put_multipart(&blob).await.map_err(io_error)?;
            Ok(WriteMultipart::new_with_chunk_size(upload, PART_SIZE))
        })?;
        Ok(BlobUpload {
            blob: name,
            writer: Some(upload),
        })
    }

    /// Appends `data`, waiting while `PARTS_IN_FLIGHT` parts are still uploading.
    pub fn append(&self, upload: &mut BlobUpload, data: Bytes) -> Result<(), StoreError> {
        let mut writer = upload
            .writer
            .take()
            .ok_or_else(|| io_error("upload already settled"))?;
        let writer = self.run(async move {
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(io_error)?;
            writer.put(data);
            Ok(writer)
        })?;
        upload.writer = Some(writer);
        Ok(())
    }

    /// Completes the upload; the blob is then complete but still referenced by nothing.
    pub fn finish(&self, mut upload: BlobUpload) -> Result<String, StoreError> {
        let writer = upload
            .writer
            .take()
            .ok_or_else(|| io_error("upload already settled"))?;
        self.run(async move { writer.finish().await.map_err(io_error) })?;
        Ok(upload.blob)
    }

    /// Gives the upload up (best effort).
    pub fn abort(&self, mut upload: BlobUpload) {
        if let Some(writer) = upload.writer.take() {
            let blob = upload.blob;
            if let Err(e) = self.run(async move { writer.abort().await.map_err(io_error) }) {
                tracing::debug!(%blob, error = %e, "aborting a blob upload failed; lifecycle rules reclaim it");
            }
        }
    }

    /// Commits `reference` for `key` unless a reference is already there.
    pub fn commit_ref(&self, key: &str, reference: &BlobRef) -> Result<RefCommit, StoreError> {
        let body = serde_json::to_vec(reference).map_err(io_error)?;
        let store = self.store.clone();
        let path = self.ref_path(key);
        let created = self.run(async move {
            match store
                .put_opts(&path, body.into(), PutOptions::from(PutMode::Create))
                .await
            {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => Ok(false),
                Err(e) => Err(io_error(e)),
            }
        })?;
        if created {
            return Ok(RefCommit::Won);
        }
        match self.get_ref(key)? {
            Some(theirs) => Ok(RefCommit::Lost(theirs)),
            None => Err(io_error(
                "a reference refused as existing could not be read",
            )),
        }
    }

    /// The committed reference for `key`, if any. An unreadable one (another format, or a
    /// hash collision) reads as absent.
    pub fn get_ref(&self, key: &str) -> Result<Option<BlobRef>, StoreError> {
        let store = self.store.clone();
        let path = self.ref_path(key);
        let raw = self.run(async move {
            match store.get(&path).await {
                Ok(result) => Ok(Some(result.bytes().await.map_err(io_error)?)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(io_error(e)),
            }
        })?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        match serde_json::from_slice::<BlobRef>(&raw) {
            Ok(reference) if reference.key == key => Ok(Some(reference)),
            _ => {
                tracing::warn!(key, "ignoring an unreadable shared reference");
                Ok(None)
            }
        }
    }

    /// Deletes the reference of `key`; true if one was there.
    pub fn delete_ref(&self, key: &str) -> Result<bool, StoreError> {
        let existed = self.get_ref(key)?.is_some();
        let store = self.store.clone();
        let path = self.ref_path(key);
        self.run(async move { store.delete(&path).await.map_err(io_error) })?;
        Ok(existed)
    }

    /// Deletes an object by its full key (best effort callers log the error).
    pub fn delete_object(&self, object: &str) -> Result<(), StoreError> {
        let store = self.store.clone();
        let path = Path::from(object);
        self.run(async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(io_error(e)),
            }
        })
    }

    /// Starts downloading the blob `reference` names; pieces arrive on the receiver.
    /// Bounded: a slow reader holds the download back instead of buffering the blob.
    fn spawn_read(&self, reference: &BlobRef) -> tokio::sync::mpsc::Receiver<Piece> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(4);
        let store = self.store.clone();
        let path = Path::from(reference.blob.as_str());
        self.io.spawn(async move {
            let result = match store.get_opts(&path, GetOptions::default()).await {
                Ok(result) => result,
                Err(object_store::Error::NotFound { .. }) => {
                    let _ = tx.send(Piece::Missing).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Piece::Failed(io_error(e))).await;
                    return;
                }
            };
            let mut stream = result.into_stream();
            while let Some(piece) = stream.next().await {
                let piece = match piece {
                    Ok(data) => Piece::Data(data),
                    Err(e) => Piece::Failed(io_error(e)),
                };
                let failed = matches!(piece, Piece::Failed(_));
                if tx.send(piece).await.is_err() || failed {
                    return;
                }
            }
            let _ = tx.send(Piece::Done).await;
        });
        rx
    }

    /// Streams the blob `reference` names, calling `sink` with each piece in order.
    /// `Ok(false)` if the blob is gone.
    pub fn read_blob(
        &self,
        reference: &BlobRef,
        sink: &mut dyn FnMut(Bytes) -> Result<(), StoreError>,
    ) -> Result<bool, StoreError> {
        let mut rx = self.spawn_read(reference);
        loop {
            match rx.blocking_recv() {
                Some(Piece::Data(data)) => sink(data)?,
                Some(Piece::Done) => return Ok(true),
                Some(Piece::Missing) => return Ok(false),
                Some(Piece::Failed(e)) => return Err(e),
                None => return Err(io_error("blob download ended early")),
            }
        }
    }

    /// Opens the blob `reference` names as a stream, once its first bytes (or its end) came:
    /// `Ok(None)` if the blob is gone. The stream checks the bytes against the reference's
    /// length and SHA-256 and ends with an error instead of its end if they differ. Call it
    /// from a blocking thread (it waits for the first piece).
    pub fn open_blob(
        &self,
        reference: &BlobRef,
    ) -> Result<Option<BoxStream<'static, Result<Bytes, StoreError>>>, StoreError> {
        let mut rx = self.spawn_read(reference);
        let first = match rx.blocking_recv() {
            Some(Piece::Missing) => return Ok(None),
            Some(Piece::Failed(e)) => return Err(e),
            None => return Err(io_error("blob download ended early")),
            Some(first) => first,
        };
        let check = BlobCheck {
            blob: reference.blob.clone(),
            len: reference.len,
            sha256: reference.sha256.clone(),
            seen: 0,
            hasher: Sha256::new(),
        };
        let state = (Some(first), rx, Some(check));
        let stream = futures_util::stream::unfold(state, |(first, mut rx, check)| async move {
            let mut check = check?;
            let piece = match first {
                Some(piece) => piece,
                None => rx
                    .recv()
                    .await
                    .unwrap_or_else(|| Piece::Failed(io_error("blob download ended early"))),
            };
            match piece {
                Piece::Data(data) => {
                    check.seen += data.len() as u64;
                    check.hasher.update(&data);
                    if check.seen > check.len {
                        return Some((Err(check.mismatch()), (None, rx, None)));
                    }
                    Some((Ok(data), (None, rx, Some(check))))
                }
                Piece::Done => {
                    let sha256 = hex::encode(check.hasher.finalize_reset());
                    if check.seen != check.len || sha256 != check.sha256 {
                        return Some((Err(check.mismatch()), (None, rx, None)));
                    }
                    None
                }
                Piece::Missing => {
                    Some((Err(io_error("blob vanished while read")), (None, rx, None)))
                }
                Piece::Failed(e) => Some((Err(e), (None, rx, None))),
            }
        });
        Ok(Some(stream.boxed()))
    }

    /// Deletes blobs that no reference names and that were written more than `grace` ago:
    /// what fills left that crashed after completing their upload and before committing.
    /// A blob its key's reference names is never deleted, nor any blob of a key whose
    /// reference cannot be read (another format). `grace` must exceed the longest fill, since
    /// a blob is completed just before its reference is committed.
    pub fn collect_garbage(&self, grace: Duration) -> Result<GcReport, StoreError> {
        let store = self.store.clone();
        let blobs = self.path("blobs");
        let listed: Vec<object_store::ObjectMeta> = self.run(async move {
            futures_util::TryStreamExt::try_collect(store.list(Some(&blobs)))
                .await
                .map_err(io_error)
        })?;
        let blobs_prefix = format!("{}/", self.path("blobs").as_ref());
        let cutoff_ms = i64::try_from(unix_ms().saturating_sub(duration_ms(grace))).unwrap_or(0);
        let mut report = GcReport::default();
        // Old blobs by the hash of their key.
        let mut candidates: std::collections::BTreeMap<String, Vec<(String, u64)>> =
            std::collections::BTreeMap::new();
        for meta in listed {
            report.blobs += 1;
            let location = meta.location.as_ref().to_owned();
            let Some((hash, _)) = location
                .strip_prefix(&blobs_prefix)
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            if meta.last_modified.timestamp_millis() > cutoff_ms {
                report.young += 1;
                continue;
            }
            candidates
                .entry(hash.to_owned())
                .or_default()
                .push((location, meta.size));
        }
        for (hash, blobs) in candidates {
            let store = self.store.clone();
            let path = self.path(&format!("refs/{hash}"));
            let raw = self.run(async move {
                match store.get(&path).await {
                    Ok(result) => Ok(Some(result.bytes().await.map_err(io_error)?)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(io_error(e)),
                }
            })?;
            let named = match raw {
                None => None,
                Some(raw) => match serde_json::from_slice::<BlobRef>(&raw) {
                    Ok(reference) => Some(reference.blob),
                    Err(_) => {
                        report.referenced += blobs.len() as u64;
                        continue;
                    }
                },
            };
            for (blob, size) in blobs {
                if named.as_deref() == Some(blob.as_str()) {
                    report.referenced += 1;
                    continue;
                }
                self.delete_object(&blob)?;
                report.deleted += 1;
                report.deleted_bytes += size;
            }
        }
        Ok(report)
    }

    /// Takes the lease of `key` for `ttl` if nobody holds it or its holder let it lapse.
    /// Returns the lease's version to renew or release it with.
    pub fn try_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Taken>, StoreError> {
        let store = self.store.clone();
        let path = self.lease_path(key);
        let lease = Lease {
            holder: holder.to_owned(),
            expires_unix_ms: unix_ms().saturating_add(duration_ms(ttl)),
        };
        let body = serde_json::to_vec(&lease).map_err(io_error)?;
        self.run(async move {
            let created = store
                .put_opts(
                    &path,
                    body.clone().into(),
                    PutOptions::from(PutMode::Create),
                )
                .await;
            match created {
                Ok(put) => {
                    return Ok(Some(Taken {
                        version: LeaseVersion::from(put),
                        took_over: false,
                    }))
                }
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {}
                Err(e) => return Err(io_error(e)),
            }
            // Someone holds it: take it over only if it lapsed, by a write conditional on
            // the version read, so two replicas cannot both take it over.
            let current = match store.get(&path).await {
                Ok(current) => current,
                // Released in between: the next attempt creates it.
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(io_error(e)),
            };
            let version = UpdateVersion {
                e_tag: current.meta.e_tag.clone(),
                version: current.meta.version.clone(),
            };
            let raw = current.bytes().await.map_err(io_error)?;
            let lapsed = serde_json::from_slice::<Lease>(&raw)
                .map_or(true, |held| held.expires_unix_ms < unix_ms());
            if !lapsed || version.e_tag.is_none() {
                return Ok(None);
            }
            match store
                .put_opts(
                    &path,
                    body.into(),
                    PutOptions::from(PutMode::Update(version)),
                )
                .await
            {
                Ok(put) => Ok(Some(Taken {
                    version: LeaseVersion::from(put),
                    took_over: true,
                })),
                Err(object_store::Error::Precondition { .. })
                | Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(io_error(e)),
            }
        })
    }

    /// Extends a held lease; `Ok(None)` if another replica took it over meanwhile.
    pub async fn renew_lease(
        &self,
        key: &str,
        holder: &str,
        version: &LeaseVersion,
        ttl: Duration,
    ) -> Result<Option<LeaseVersion>, StoreError> {
        let store = self.store.clone();
        let path = self.lease_path(key);
        let lease = Lease {
            holder: holder.to_owned(),
            expires_unix_ms: unix_ms().saturating_add(duration_ms(ttl)),
        };
        let body = serde_json::to_vec(&lease).map_err(io_error)?;
        let version = UpdateVersion {
            e_tag: version.e_tag.clone(),
            version: version.version.clone(),
        };
        let fut = async move {
            match store
                .put_opts(
                    &path,
                    body.into(),
                    PutOptions::from(PutMode::Update(version)),
                )
                .await
            {
                Ok(put) => Ok(Some(LeaseVersion::from(put))),
                Err(object_store::Error::Precondition { .. })
                | Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(io_error(e)),
            }
        };
        self.io.run_async(fut).await
    }

    /// Gives the lease up if this holder still has it (best effort: it lapses anyway).
    pub async fn release_lease(&self, key: &str, version: &LeaseVersion) {
        let store = self.store.clone();
        let path = self.lease_path(key);
        let e_tag = version.e_tag.clone();
        let fut = async move {
            // object_store has no conditional delete; check the version first so that a
            // lease another replica took over is left alone (a narrow race only shortens
            // that replica's lease, which it renews or re-takes).
            let current = store.head(&path).await.map_err(io_error)?;
            if current.e_tag == e_tag {
                store.delete(&path).await.map_err(io_error)?;
            }
            Ok(())
        };
        if let Err(e) = self.io.run_async(fut).await {
            tracing::debug!(error = %e, "releasing a lease failed; it lapses");
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What the download task hands the reading thread.
enum Piece {
    Data(Bytes),
    Done,
    Missing,
    Failed(StoreError),
}

/// A lease this replica just took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub version: LeaseVersion,
    /// The lease was held by another replica that let it lapse (it died or hung mid-fill).
    pub took_over: bool,
}

/// What a garbage collection of the bucket's blobs found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Blobs listed.
    pub blobs: u64,
    /// Blobs within the grace period, left alone.
    pub young: u64,
    /// Older blobs that a reference names (or might: an unreadable reference), kept.
    pub referenced: u64,
    /// Blobs no reference names, deleted.
    pub deleted: u64,
    pub deleted_bytes: u64,
}

/// What a streamed blob must add up to.
struct BlobCheck {
    blob: String,
    len: u64,
    sha256: String,
    seen: u64,
    hasher: Sha256,
}

impl BlobCheck {
    fn mismatch(&self) -> StoreError {
        StoreError::Corrupt {
            key_or_fill: format!("shared blob {}", self.blob),
            detail: "length or SHA-256 disagrees with its reference".to_owned(),
        }
    }
}

/// The version of a lease object this replica wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseVersion {
    e_tag: Option<String>,
    version: Option<String>,
}

impl From<object_store::PutResult> for LeaseVersion {
    fn from(put: object_store::PutResult) -> Self {
        LeaseVersion {
            e_tag: put.e_tag,
            version: put.version,
        }
    }
}

/// A small runtime of the bucket's own, so synchronous store calls can wait for requests
/// from any thread without borrowing (or blocking) the server's runtime.
struct IoRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl IoRuntime {
    fn new() -> Result<IoRuntime, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-io")
            .enable_all()
            .build()
            .map_err(io_error)?;
        Ok(IoRuntime {
            runtime: Some(runtime),
        })
    }

    fn handle(&self) -> Result<&tokio::runtime::Handle, StoreError> {
        self.runtime
            .as_ref()
            .map(tokio::runtime::Runtime::handle)
            .ok_or_else(|| io_error("runtime stopped"))
    }

    fn spawn(&self, future: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Ok(handle) = self.handle() {
            handle.spawn(future);
        }
    }

    fn run<T, F>(&self, future: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle()?.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(io_error("request task ended without an answer")))
    }

    /// For async callers: the request runs on the bucket's runtime, the caller awaits it.
    async fn run_async<T, F>(&self, future: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        match self.handle()?.spawn(future).await {
            Ok(result) => result,
            Err(e) => Err(io_error(e)),
        }
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        // Dropping a runtime from async code panics; letting it go in the background does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// object_store's HTTP client interface over hyper, with the proxy's TLS set-up (ring).
#[derive(Debug, Clone)]
struct HyperService {
    client: Client<HttpsConnector<HttpConnector>, HttpRequestBody>,
}

impl HyperService {
    fn new() -> Result<HyperService, StoreError> {
        let tls = crate::upstream::tls_client_config(None).map_err(io_error)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(HyperService { client })
    }
}

#[async_trait::async_trait]
impl HttpService for HyperService {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let response = self.client.request(request).await.map_err(|e| {
            let kind = if e.is_connect() {
                HttpErrorKind::Connect
            } else {
                HttpErrorKind::Request
            };
            HttpError::new(kind, e)
        })?;
        let (parts, body) = response.into_parts();
        let body =
            HttpResponseBody::new(body.map_err(|e| HttpError::new(HttpErrorKind::Request, e)));
        Ok(HttpResponse::from_parts(parts, body))
    }
}

#[derive(Debug)]
struct Connector(HyperService);

impl object_store::client::HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract::test_bucket_settings;
    use super::*;

    #[test]
    fn credentials_never_show_in_debug_output() {
        let credentials = S3Credentials {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: "very-secret-key".to_owned(),
            session_token: Some("session-secret".to_owned()),
        };
        let settings = S3Settings {
            endpoint: "http://127.0.0.1:9000".to_owned(),
            bucket: "b".to_owned(),
            region: "r".to_owned(),
            prefix: "p".to_owned(),
            path_style: true,
            credentials,
        };
        let shown = format!("{settings:?}");
        assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(!shown.contains("very-secret-key"), "{shown}");
        assert!(!shown.contains("session-secret"), "{shown}");
    }

    #[test]
    fn credentials_file_reads_the_default_profile() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "[other]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n\
             [default]\naws_access_key_id = AKID\naws_secret_access_key = s3cr3t=with=equals\n",
        )
        .unwrap();
        let read = S3Credentials::from_file(&file).unwrap();
        assert_eq!(read.access_key_id, "AKID");
        assert_eq!(read.secret_access_key, "s3cr3t=with=equals");

        std::fs::write(&file, "aws_access_key_id = only-the-id\n").unwrap();
        let err = S3Credentials::from_file(&file).unwrap_err();
        assert!(!err.contains("only-the-id"), "{err}");
        assert!(S3Credentials::from_file(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn the_test_server_enforces_conditional_writes() {
        let Some(settings) = test_bucket_settings() else {
            return;
        };
        let bucket = Bucket::open(&settings).unwrap();
        bucket.probe_conditional_writes().unwrap();
    }

    #[test]
    fn wrong_credentials_are_refused_at_the_probe() {
        let Some(mut settings) = test_bucket_settings() else {
            return;
        };
        settings.credentials.secret_access_key = "not-the-secret".to_owned();
        let bucket = Bucket::open(&settings).unwrap();
        let err = bucket.probe_conditional_writes().unwrap_err();
        assert!(!err.contains("not-the-secret"), "{err}");
    }

    #[test]
    fn one_lease_holder_at_a_time_and_a_lapsed_lease_is_taken_over() {
        let Some(settings) = test_bucket_settings() else {
            return;
        };
        let bucket = Bucket::open(&settings).unwrap();
        let long = Duration::from_secs(60);
        let first = bucket.try_lease("k", "replica-a", long).unwrap();
        assert!(first.is_some());
        assert_eq!(bucket.try_lease("k", "replica-b", long).unwrap(), None);

        // A lease that has already lapsed is taken over, and its former holder cannot renew.
        let lapsed = bucket
            .try_lease("other", "replica-a", Duration::ZERO)
            .unwrap();
        let lapsed = lapsed.unwrap();
        assert!(!lapsed.took_over);
        let lapsed = lapsed.version;
        std::thread::sleep(Duration::from_millis(5));
        let taken = bucket.try_lease("other", "replica-b", long).unwrap();
        assert!(taken.as_ref().is_some_and(|t| t.took_over));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let renewed = runtime
            .block_on(bucket.renew_lease("other", "replica-a", &lapsed, long))
            .unwrap();
        assert_eq!(renewed, None);
        let taken = taken.unwrap().version;
        let renewed = runtime
            .block_on(bucket.renew_lease("other", "replica-b", &taken, long))
            .unwrap();
        assert!(renewed.is_some());

        // Released, it can be taken at once.
        runtime.block_on(bucket.release_lease("other", &renewed.unwrap()));
        assert!(bucket
            .try_lease("other", "replica-c", long)
            .unwrap()
            .is_some());
    }
}
