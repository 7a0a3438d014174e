//! `TieredStore`: the local store as a bounded hot tier in front of the shared bucket.
//!
//! Every fill is written to both: chunks go to the local store (which readers follow while
//! the fill runs) and, streamed as multipart, to a fresh blob in the bucket. The commit checks
//! length and SHA-256 locally first, then completes the blob and commits its reference with a
//! create-only write. The first replica to commit a key wins; a loser keeps its local copy if
//! the bytes agree, and drops it if they differ (counted and logged as an upstream integrity
//! change) so that every replica serves the winner's bytes.
//!
//! A lookup that misses locally follows the bucket's reference and copies the blob into the
//! local store, where the usual commit checks it again; from then on it is a local hit. The
//! artifact service instead asks for the bucket's copy as a stream (`shared_copy`) and
//! copies it in as a local-only fill (`begin_copy`) while its caller reads it, so a large
//! blob's first byte does not wait for the whole copy. The
//! bucket being unreachable never fails a call that the local store can answer: it only
//! turns would-be bucket hits into misses and leaves new artifacts local to this replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;

use super::s3::{BlobRef, BlobUpload, Bucket, RefCommit, Taken};
use super::{
    ArtifactMeta, ArtifactStore, ChunkReader, Commit, EvictionPolicy, EvictionReport, FillId,
    PinGuard, SharedCopy, SharedHead, StoreError, Usage,
};

/// Counters of the shared tier; the metrics endpoint exposes them.
#[derive(Debug, Default)]
pub struct SharedStats {
    /// Artifacts copied from the bucket into the local tier.
    pub bucket_hits: Counter,
    /// Fills whose reference this replica committed.
    pub commits_won: Counter,
    /// Fills that found another replica's reference already committed.
    pub commits_lost: Counter,
    /// Lost commits whose bytes differed from the winner's (GitLab changed an artifact).
    pub integrity_conflicts: Counter,
    /// Bucket requests that failed (the local tier carried on).
    pub errors: Counter,
    /// Fetches that found another replica holding the key's lease and waited for it.
    pub lease_waits: Counter,
    /// Leases taken over from a replica that let them lapse (it died or hung mid-fill).
    pub lease_takeovers: Counter,
}

impl SharedStats {
    pub(crate) fn count(counter: &Counter) {
        counter.inc();
    }
}

/// A fill's bucket side.
struct Upload {
    key: String,
    /// `None` once the bucket failed for this fill: it goes on locally only.
    blob: Option<BlobUpload>,
    chunks: Vec<u32>,
}

pub struct TieredStore<L> {
    local: L,
    bucket: Arc<Bucket>,
    /// Bucket side of fills being written, by local fill.
    uploads: Mutex<HashMap<FillId, Upload>>,
    /// One bucket-to-local copy per key at a time; later callers find the local copy.
    copying: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Applied after a copy from the bucket, which grows the local tier like a fill does.
    policy: EvictionPolicy,
    stats: Arc<SharedStats>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<L: ArtifactStore> TieredStore<L> {
    pub fn new(local: L, bucket: Arc<Bucket>, policy: EvictionPolicy) -> TieredStore<L> {
        TieredStore {
            local,
            bucket,
            uploads: Mutex::default(),
            copying: Mutex::default(),
            policy,
            stats: Arc::default(),
        }
    }

    pub fn local(&self) -> &L {
        &self.local
    }

    pub fn bucket(&self) -> &Arc<Bucket> {
        &self.bucket
    }

    pub fn stats(&self) -> &Arc<SharedStats> {
        &self.stats
    }

    fn bucket_failed(&self, what: &str, key: &str, e: &StoreError) {
        SharedStats::count(&self.stats.errors);
        tracing::warn!(key, error = %e, "shared store: {what} failed; carrying on with the local tier");
    }

    fn take_upload(&self, fill: FillId) -> Option<Upload> {
        lock(&self.uploads).remove(&fill)
    }

    /// A reference whose blob is gone (a lifecycle rule, a manual delete) would make every
    /// replica miss forever: drop it so the next fill commits a fresh one.
    fn drop_dangling(&self, key: &str, reference: &BlobRef) {
        tracing::warn!(key, blob = %reference.blob, "shared reference names a missing blob; dropping it");
        if let Err(e) = self.bucket.delete_ref(key) {
            self.bucket_failed("dropping a dangling reference", key, &e);
        }
    }

    /// Copies the artifact `reference` names into the local tier.
    fn copy_from_bucket(
        &self,
        key: &str,
        reference: &BlobRef,
    ) -> Result<Option<ArtifactMeta>, StoreError> {
        let Some(sha256) = hex::decode(&reference.sha256)
            .ok()
            .and_then(|raw| <[u8; 32]>::try_from(raw).ok())
        else {
            tracing::warn!(key, "shared reference with an unreadable checksum ignored");
            return Ok(None);
        };
        let fill = self.local.begin_fill(key)?;
        let mut chunks = reference.chunks.iter().copied();
        let mut next_len = chunks.next();
        let mut pending = BytesMut::new();
        let mut index = 0u32;
        let local = &self.local;
        let mut flush = |pending: &mut BytesMut,
                         next_len: &mut Option<u32>,
                         index: &mut u32|
         -> Result<(), StoreError> {
            while let Some(len) = *next_len {
                let len = len as usize;
                if pending.len() < len {
                    break;
                }
                local.write_chunk(fill, *index, &pending.split_to(len))?;
                *index += 1;
                *next_len = chunks.next();
            }
            Ok(())
        };
        let read = self.bucket.read_blob(reference, &mut |data: Bytes| {
            pending.extend_from_slice(&data);
            flush(&mut pending, &mut next_len, &mut index)
        });
        let found = match read.and_then(|found| {
            flush(&mut pending, &mut next_len, &mut index)?;
            Ok(found)
        }) {
            Ok(found) => found,
            Err(e) => {
                self.local.abort_fill(fill);
                return Err(e);
            }
        };
        if !found {
            self.local.abort_fill(fill);
            self.drop_dangling(key, reference);
            return Ok(None);
        }
        if next_len.is_some() || !pending.is_empty() {
            self.local.abort_fill(fill);
            return Err(StoreError::Corrupt {
                key_or_fill: format!("shared blob {}", reference.blob),
                detail: "length disagrees with its reference".to_owned(),
            });
        }
        let expected = Commit {
            len: reference.len,
            sha256,
            headers: reference.headers.clone(),
        };
        let meta = self.local.commit_fill(key, fill, expected)?;
        SharedStats::count(&self.stats.bucket_hits);
        let over = self
            .policy
            .max_bytes
            .is_some_and(|max| self.local.usage().bytes > max);
        if over {
            if let Err(e) = self.local.evict(&self.policy) {
                tracing::warn!(error = %e, "eviction failed");
            }
        }
        Ok(Some(meta))
    }

    /// The bucket's copy of `key`, brought into the local tier; `None` on a miss or when the
    /// bucket cannot be read.
    fn lookup_shared(&self, key: &str) -> Result<Option<ArtifactMeta>, StoreError> {
        let gate = {
            let mut copying = lock(&self.copying);
            copying.entry(key.to_owned()).or_default().clone()
        };
        let result = {
            let _one_at_a_time = lock(&gate);
            // Another caller may have copied it while this one waited.
            match self.local.lookup(key)? {
                Some(meta) => Ok(Some(meta)),
                None => match self.bucket.get_ref(key) {
                    Ok(None) => Ok(None),
                    Ok(Some(reference)) => match self.copy_from_bucket(key, &reference) {
                        Ok(found) => Ok(found),
                        Err(e) => {
                            self.bucket_failed("copying a blob", key, &e);
                            Ok(None)
                        }
                    },
                    Err(e) => {
                        self.bucket_failed("reading a reference", key, &e);
                        Ok(None)
                    }
                },
            }
        };
        let mut copying = lock(&self.copying);
        if Arc::strong_count(&gate) <= 2 {
            copying.remove(key);
        }
        result
    }

    /// Completes the fill's blob and commits its reference; the local tier already has it.
    fn publish(&self, key: &str, meta: &ArtifactMeta, upload: Upload) {
        let Some(blob) = upload.blob else {
            return;
        };
        let blob = match self.bucket.finish(blob) {
            Ok(blob) => blob,
            Err(e) => {
                self.bucket_failed("completing a blob", key, &e);
                return;
            }
        };
        let reference = BlobRef {
            key: key.to_owned(),
            blob: blob.clone(),
            len: meta.len,
            sha256: hex::encode(meta.sha256),
            chunks: upload.chunks,
            headers: meta.headers.clone(),
            stored_at_unix: meta.stored_at_unix,
        };
        match self.bucket.commit_ref(key, &reference) {
            Ok(RefCommit::Won) => SharedStats::count(&self.stats.commits_won),
            Ok(RefCommit::Lost(theirs)) => {
                SharedStats::count(&self.stats.commits_lost);
                if theirs.blob != blob {
                    if let Err(e) = self.bucket.delete_object(&blob) {
                        self.bucket_failed("deleting a losing blob", key, &e);
                    }
                }
                if theirs.sha256 != reference.sha256 || theirs.len != reference.len {
                    SharedStats::count(&self.stats.integrity_conflicts);
                    tracing::warn!(
                        key,
                        ours_sha256 = %reference.sha256,
                        ours_len = reference.len,
                        theirs_sha256 = %theirs.sha256,
                        theirs_len = theirs.len,
                        "upstream integrity change: GitLab served different bytes for an \
                         artifact another replica already stored; serving the stored ones"
                    );
                    // Only if our fill is still what the local tier holds for the key.
                    if self.local.lookup(key).ok().flatten().map(|m| m.fill) == Some(meta.fill) {
                        if let Err(e) = self.local.remove(key) {
                            tracing::warn!(key, error = %e, "could not drop the losing copy");
                        }
                    }
                }
            }
            Err(e) => {
                self.bucket_failed("committing a reference", key, &e);
                if let Err(e) = self.bucket.delete_object(&blob) {
                    self.bucket_failed("deleting an uncommitted blob", key, &e);
                }
            }
        }
    }

    /// Tries to become the replica that fetches `key` from GitLab, for `ttl`.
    pub fn try_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Taken>, StoreError> {
        self.bucket.try_lease(key, holder, ttl)
    }

    /// True if the bucket has a committed reference for `key` (errors read as false).
    pub fn shared_has(&self, key: &str) -> bool {
        match self.bucket.get_ref(key) {
            Ok(found) => found.is_some(),
            Err(e) => {
                self.bucket_failed("reading a reference", key, &e);
                false
            }
        }
    }
}

impl<L: ArtifactStore> ArtifactStore for TieredStore<L> {
    fn lookup(&self, key: &str) -> Result<Option<ArtifactMeta>, StoreError> {
        match self.local.lookup(key)? {
            Some(meta) => Ok(Some(meta)),
            None => self.lookup_shared(key),
        }
    }

    fn lookup_here(&self, key: &str) -> Result<Option<ArtifactMeta>, StoreError> {
        self.local.lookup(key)
    }

    /// The bucket's copy of `key`, streaming; the caller copies it in with `begin_copy`.
    /// Bucket errors read as "not there" (counted and logged), as in `lookup`.
    fn shared_head(&self, key: &str) -> Result<Option<SharedHead>, StoreError> {
        match self.bucket.get_ref(key) {
            Ok(Some(reference)) => Ok(Some(SharedHead {
                len: reference.len,
                headers: reference.headers,
            })),
            Ok(None) => Ok(None),
            Err(e) => {
                self.bucket_failed("reading a reference", key, &e);
                Ok(None)
            }
        }
    }

    fn shared_copy(&self, key: &str) -> Result<Option<SharedCopy>, StoreError> {
        let reference = match self.bucket.get_ref(key) {
            Ok(Some(reference)) => reference,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.bucket_failed("reading a reference", key, &e);
                return Ok(None);
            }
        };
        match self.bucket.open_blob(&reference) {
            Ok(Some(body)) => {
                SharedStats::count(&self.stats.bucket_hits);
                Ok(Some(SharedCopy {
                    len: reference.len,
                    headers: reference.headers,
                    body,
                }))
            }
            Ok(None) => {
                self.drop_dangling(key, &reference);
                Ok(None)
            }
            Err(e) => {
                self.bucket_failed("reading a blob", key, &e);
                Ok(None)
            }
        }
    }

    /// A copy from the bucket is committed locally only: no upload, no reference.
    fn begin_copy(&self, key: &str) -> Result<FillId, StoreError> {
        self.local.begin_fill(key)
    }

    fn begin_fill(&self, key: &str) -> Result<FillId, StoreError> {
        let fill = self.local.begin_fill(key)?;
        let blob = match self.bucket.start_blob(key) {
            Ok(blob) => Some(blob),
            Err(e) => {
                self.bucket_failed("starting a blob upload", key, &e);
                None
            }
        };
        lock(&self.uploads).insert(
            fill,
            Upload {
                key: key.to_owned(),
                blob,
                chunks: Vec::new(),
            },
        );
        Ok(fill)
    }

    fn write_chunk(&self, fill: FillId, index: u32, data: &[u8]) -> Result<(), StoreError> {
        // Local first: it checks the order, and readers follow the fill there.
        self.local.write_chunk(fill, index, data)?;
        let Some(mut upload) = self.take_upload(fill) else {
            return Ok(());
        };
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        if let Some(mut blob) = upload.blob.take() {
            match self.bucket.append(&mut blob, Bytes::copy_from_slice(data)) {
                Ok(()) => {
                    upload.blob = Some(blob);
                    upload.chunks.push(len);
                }
                Err(e) => {
                    self.bucket_failed("uploading a part", &upload.key, &e);
                    self.bucket.abort(blob);
                }
            }
        }
        lock(&self.uploads).insert(fill, upload);
        Ok(())
    }

    fn commit_fill(
        &self,
        key: &str,
        fill: FillId,
        expected: Commit,
    ) -> Result<ArtifactMeta, StoreError> {
        let upload = self.take_upload(fill);
        match self.local.commit_fill(key, fill, expected) {
            Ok(meta) => {
                if let Some(upload) = upload {
                    self.publish(key, &meta, upload);
                }
                Ok(meta)
            }
            Err(e) => {
                if let Some(blob) = upload.and_then(|u| u.blob) {
                    self.bucket.abort(blob);
                }
                Err(e)
            }
        }
    }

    fn abort_fill(&self, fill: FillId) {
        self.local.abort_fill(fill);
        if let Some(blob) = self.take_upload(fill).and_then(|u| u.blob) {
            self.bucket.abort(blob);
        }
    }

    fn read_chunk(&self, fill: FillId, index: u32) -> Result<Option<Bytes>, StoreError> {
        self.local.read_chunk(fill, index)
    }

    fn open_chunk(&self, fill: FillId, index: u32) -> Result<Option<ChunkReader>, StoreError> {
        self.local.open_chunk(fill, index)
    }

    fn open_chunk_cached(
        &self,
        fill: FillId,
        index: u32,
    ) -> Option<Result<Option<ChunkReader>, StoreError>> {
        self.local.open_chunk_cached(fill, index)
    }

    /// Readers always read the hot tier, so its fill is the one a memory copy must match.
    fn touch_if_current(&self, key: &str, fill: FillId) -> bool {
        self.local.touch_if_current(key, fill)
    }

    fn on_fill_deleted(&self, deleted: super::FillDeleted) {
        self.local.on_fill_deleted(deleted);
    }

    /// Unpublishes `key` in both tiers, so the next request fetches it again.
    fn remove(&self, key: &str) -> Result<bool, StoreError> {
        let local = self.local.remove(key)?;
        let shared = match self.bucket.delete_ref(key) {
            Ok(existed) => existed,
            Err(e) => {
                self.bucket_failed("removing a reference", key, &e);
                false
            }
        };
        Ok(local || shared)
    }

    fn pin(&self, fill: FillId) -> Option<PinGuard> {
        self.local.pin(fill)
    }

    fn touch(&self, key: &str) {
        self.local.touch(key);
    }

    fn usage(&self) -> Usage {
        self.local.usage()
    }

    /// Keys held in this replica's hot tier (the bucket may hold more).
    fn keys(&self, prefix: &str) -> Vec<String> {
        self.local.keys(prefix)
    }

    /// Kept (pinned) keys belong to this replica's hot tier: the bucket never evicts.
    fn set_kept(&self, key: &str, kept: bool) -> Result<bool, StoreError> {
        self.local.set_kept(key, kept)
    }

    fn kept(&self) -> Vec<String> {
        self.local.kept()
    }

    fn kept_usage(&self) -> Usage {
        self.local.kept_usage()
    }

    /// Evicts from the local tier only: the bucket keeps every artifact.
    fn evict(&self, policy: &EvictionPolicy) -> Result<EvictionReport, StoreError> {
        self.local.evict(policy)
    }

    fn restore_original(&self, key: &str) -> Result<Option<ArtifactMeta>, StoreError> {
        self.local.restore_original(key)
    }

    fn originals(&self, prefix: &str) -> Vec<(String, u64)> {
        self.local.originals(prefix)
    }

    fn originals_usage(&self) -> Usage {
        self.local.originals_usage()
    }

    fn put_record(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.local.put_record(namespace, key, value)
    }

    fn get_record(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.local.get_record(namespace, key)
    }

    fn record_keys(&self, namespace: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        self.local.record_keys(namespace)
    }

    fn remove_record(&self, namespace: &str, key: &[u8]) -> Result<bool, StoreError> {
        self.local.remove_record(namespace, key)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.local.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract::{
        commit_for, read_all, store_artifact, temp_tiered_on, test_bucket_settings,
    };
    use super::super::s3::{Bucket, S3Settings};
    use super::super::{ArtifactStore, EvictionPolicy};

    fn settings() -> Option<S3Settings> {
        test_bucket_settings()
    }

    #[test]
    fn an_empty_hot_tier_serves_what_another_replica_stored() {
        let Some(settings) = settings() else { return };
        let (a, _a_dir) = temp_tiered_on(&settings);
        let (b, _b_dir) = temp_tiered_on(&settings);
        let stored = store_artifact(&a, "go/m/@v/v1.zip", &[b"hello ", b"shared ", b"world"]);

        let found = b.lookup("go/m/@v/v1.zip").unwrap().unwrap();
        assert_eq!(read_all(&b, &found), b"hello shared world");
        assert_eq!(found.chunk_count, 3, "the writer's chunking is kept");
        assert_eq!((found.len, found.sha256), (stored.len, stored.sha256));
        assert_eq!(found.headers, stored.headers);
        assert_eq!(b.stats().bucket_hits.get(), 1);

        // Now local: no second copy.
        assert_eq!(b.lookup("go/m/@v/v1.zip").unwrap(), Some(found));
        assert_eq!(b.stats().bucket_hits.get(), 1);
        assert_eq!(b.usage().artifacts, 1);
    }

    #[test]
    fn the_first_commit_wins_and_a_different_loser_serves_the_winners_bytes() {
        let Some(settings) = settings() else { return };
        let (a, _a_dir) = temp_tiered_on(&settings);
        let (b, _b_dir) = temp_tiered_on(&settings);
        let (c, _c_dir) = temp_tiered_on(&settings);
        store_artifact(&a, "k", &[b"original"]);
        assert_eq!(a.stats().commits_won.get(), 1);

        // Same bytes: the loser keeps its local copy.
        let same = store_artifact(&c, "k", &[b"origi", b"nal"]);
        assert_eq!(c.stats().commits_lost.get(), 1);
        assert_eq!(c.stats().integrity_conflicts.get(), 0);
        assert_eq!(c.lookup("k").unwrap(), Some(same));

        // Different bytes: reported, and the loser drops its copy for the stored one.
        store_artifact(&b, "k", &[b"tampered"]);
        assert_eq!(b.stats().integrity_conflicts.get(), 1);
        let served = b.lookup("k").unwrap().unwrap();
        assert_eq!(read_all(&b, &served), b"original");
    }

    #[test]
    fn eviction_empties_the_hot_tier_only() {
        let Some(settings) = settings() else { return };
        let (a, _dir) = temp_tiered_on(&settings);
        let first = store_artifact(&a, "k", &[&[7u8; 100]]);
        let everything = EvictionPolicy {
            max_bytes: Some(0),
            min_free_bytes: None,
            originals: None,
        };
        assert_eq!(a.evict(&everything).unwrap().artifacts, 1);
        assert_eq!(a.usage().artifacts, 0);
        let again = a.lookup("k").unwrap().unwrap();
        assert_ne!(again.fill, first.fill);
        assert_eq!(read_all(&a, &again), [7u8; 100]);
    }

    #[test]
    fn a_fill_that_never_commits_leaves_nothing_visible() {
        let Some(settings) = settings() else { return };
        let (a, _a_dir) = temp_tiered_on(&settings);
        let (b, _b_dir) = temp_tiered_on(&settings);
        // More than one part, so the bucket really holds uploaded bytes of it.
        let part = vec![3u8; super::super::s3::PART_SIZE + 1];
        let fill = a.begin_fill("k").unwrap();
        a.write_chunk(fill, 0, &part).unwrap();
        a.write_chunk(fill, 1, &part).unwrap();
        // The replica dies here: nothing commits.
        drop(a);
        assert_eq!(b.lookup("k").unwrap(), None);

        // A commit that fails its integrity check publishes nothing either.
        let fill = b.begin_fill("k").unwrap();
        b.write_chunk(fill, 0, b"short").unwrap();
        assert!(b.commit_fill("k", fill, commit_for(b"longer")).is_err());
        let (c, _c_dir) = temp_tiered_on(&settings);
        assert_eq!(c.lookup("k").unwrap(), None);
    }

    #[test]
    fn an_unreachable_bucket_leaves_the_local_tier_working() {
        let Some(mut settings) = settings() else {
            return;
        };
        // Nothing listens on port 1 of loopback.
        settings.endpoint = "http://127.0.0.1:1".to_owned();
        let (local, _dir) = super::super::contract::temp_sled();
        let bucket = Bucket::open(&settings).unwrap();
        assert!(bucket.probe_conditional_writes().is_err());
        let store = super::TieredStore::new(
            local,
            std::sync::Arc::new(bucket),
            EvictionPolicy::default(),
        );
        let meta = store_artifact(&store, "k", &[b"offline"]);
        assert_eq!(store.lookup("k").unwrap(), Some(meta.clone()));
        assert_eq!(read_all(&store, &meta), b"offline");
        assert_eq!(store.lookup("absent").unwrap(), None);
        assert!(store.stats().errors.get() >= 2);
    }
}
