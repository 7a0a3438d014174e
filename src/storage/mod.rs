//! Durable artifact storage: the `ArtifactStore` contract, its value types and its implementations.
//!
//! An artifact is written as a *fill*: numbered chunks streamed in order, then a commit that
//! checks length and SHA-256 and only then publishes the record that makes the artifact visible
//! under its key. Readers pin a fill while they stream it, so replacement, removal and eviction
//! never pull chunks out from under them.

mod chunk_reader;
mod codec;
mod engine;
mod error;
mod facade;
mod mapped;
mod memory;
pub mod s3;
mod sled_store;
mod tiered;
mod verified;

#[cfg(test)]
mod contract;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use chunk_reader::{Cached, ChunkReader};
pub use error::StoreError;
pub use facade::Store;
pub use mapped::{MappedChunk, MappedChunks, MAPPED_CHUNKS};
pub use memory::MemoryStore;
pub use sled_store::SledStore;
pub use tiered::{SharedStats, TieredStore};
pub use verified::{FillMarks, VerifiedChunks};

/// Version byte that starts every value the store writes; values with another version are
/// treated as absent so that a format change never turns into request errors.
pub const FORMAT_VERSION: u8 = 1;

/// Told of each fill whose chunks a store deleted (see [`ArtifactStore::on_fill_deleted`]).
pub type FillDeleted = Arc<dyn Fn(FillId) + Send + Sync>;

/// Identifies one fill (one attempt at writing an artifact); never reused, even across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FillId(pub u64);

impl fmt::Display for FillId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A committed artifact: where its chunks are and what to replay to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactMeta {
    pub fill: FillId,
    pub len: u64,
    pub sha256: [u8; 32],
    /// Chunks are numbered `0..chunk_count`; their sizes are whatever the writer chose.
    pub chunk_count: u32,
    pub headers: Vec<(String, String)>,
    pub stored_at_unix: u64,
}

/// What the writer claims it streamed; the commit fails unless the store received exactly this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub len: u64,
    pub sha256: [u8; 32],
    pub headers: Vec<(String, String)>,
}

/// An artifact another tier holds, being read from there: what to answer with, and its bytes
/// in order. The stream ends with an error, never silently short, if the bytes do not match
/// the length and SHA-256 that tier recorded.
pub struct SharedCopy {
    pub len: u64,
    pub headers: Vec<(String, String)>,
    pub body: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, StoreError>>,
}

/// What another tier records of an artifact, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedHead {
    pub len: u64,
    pub headers: Vec<(String, String)>,
}

impl fmt::Debug for SharedCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCopy")
            .field("len", &self.len)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// Committed artifacts and the sum of their lengths (chunk framing and in-progress fills excluded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub artifacts: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct EvictionPolicy {
    /// Budget for everything stored: served artifacts and kept originals together.
    pub max_bytes: Option<u64>,
    /// Free space to keep on the filesystem holding the store; ignored by `MemoryStore`.
    pub min_free_bytes: Option<u64>,
    /// Evicted artifacts whose bytes are kept as originals rather than deleted.
    pub originals: Option<OriginalsPolicy>,
}

/// Which evicted artifacts keep their bytes as originals, and how many bytes of
/// [`EvictionPolicy::max_bytes`] are set aside for them. An original is not served (a lookup
/// misses), but it can be restored in place ([`ArtifactStore::restore_original`]); the oldest
/// go first when their share is full, and before anything else when the disk runs short.
#[derive(Debug, Clone, Copy)]
pub struct OriginalsPolicy {
    pub max_bytes: u64,
    /// Whether the evicted artifact under this key keeps its bytes.
    pub applies_to: fn(&str) -> bool,
}

impl EvictionPolicy {
    /// The share of `max_bytes` set aside for originals (none when they are not kept).
    fn originals_room(&self) -> u64 {
        self.originals.map_or(0, |originals| originals.max_bytes)
    }

    /// Whether `served` and `originals` together call for an eviction (free space aside).
    pub fn exceeded(&self, served: Usage, originals: Usage) -> bool {
        let Some(max) = self.max_bytes else {
            return false;
        };
        served.bytes + originals.bytes > max
            || served.bytes > max.saturating_sub(self.originals_room())
            || originals.bytes > self.originals_room()
    }
}

/// What one `evict` call removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvictionReport {
    /// Artifacts no longer served (deleted, or kept as originals), and their bytes.
    pub artifacts: u64,
    pub bytes: u64,
    /// Of those, the ones kept as originals.
    pub kept_as_originals: u64,
    /// Originals deleted, and their bytes.
    pub originals_dropped: u64,
    pub originals_dropped_bytes: u64,
}

/// Keeps a fill's chunks on disk while it lives; dropping the last pin of a fill that was
/// replaced, removed, evicted or aborted lets the store delete its chunks.
pub struct PinGuard {
    fill: FillId,
    owner: Arc<dyn PinOwner>,
}

impl PinGuard {
    pub fn fill(&self) -> FillId {
        self.fill
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.owner.unpin(self.fill);
    }
}

impl fmt::Debug for PinGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinGuard")
            .field("fill", &self.fill)
            .finish()
    }
}

/// The store-side half of a pin, so a guard can outlive the borrow it was created from.
trait PinOwner: Send + Sync {
    fn unpin(&self, fill: FillId);
}

/// Synchronous artifact storage. Methods that may touch the disk block; from async code go
/// through [`Store`]. `pin`, `touch`, `touch_if_current` and `usage` only touch memory and
/// never block on I/O.
pub trait ArtifactStore: Send + Sync + 'static {
    /// The committed artifact under `key`. Absent (or unreadable, which is dropped) is `Ok(None)`.
    fn lookup(&self, key: &str) -> Result<Option<ArtifactMeta>, StoreError>;

    /// Starts a fill destined for `key`; nothing becomes visible until `commit_fill`.
    fn begin_fill(&self, key: &str) -> Result<FillId, StoreError>;

    /// Appends chunk `index`, which must be exactly the next one (0, 1, 2, …).
    fn write_chunk(&self, fill: FillId, index: u32, data: &[u8]) -> Result<(), StoreError>;

    /// Publishes the fill under `key` if what was written matches `expected`; otherwise aborts
    /// the fill and returns `Integrity`. Replaces any artifact previously under `key`.
    fn commit_fill(
        &self,
        key: &str,
        fill: FillId,
        expected: Commit,
    ) -> Result<ArtifactMeta, StoreError>;

    /// Gives up a fill still being written; a no-op for committed or unknown fills.
    fn abort_fill(&self, fill: FillId);

    /// Chunk `index` of a committed or in-progress fill; `Ok(None)` if it is not (or no longer)
    /// there. Damaged chunks are `Corrupt`, never returned as data.
    fn read_chunk(&self, fill: FillId, index: u32) -> Result<Option<bytes::Bytes>, StoreError>;

    /// Chunk `index` opened for reading piece by piece, its CRC checked as it is read (see
    /// [`ChunkReader`]); `Ok(None)` as for `read_chunk`. The default reads the chunk whole.
    fn open_chunk(&self, fill: FillId, index: u32) -> Result<Option<ChunkReader>, StoreError> {
        Ok(self
            .read_chunk(fill, index)?
            .map(|data| ChunkReader::checked(data, fill, index)))
    }

    /// [`ArtifactStore::open_chunk`] only if it needs no disk I/O (the chunk's name and header
    /// are in the kernel's caches), so that it may run on an async thread; `None` when it
    /// would block or the store cannot tell: then `open_chunk`, where blocking is allowed.
    fn open_chunk_cached(
        &self,
        fill: FillId,
        index: u32,
    ) -> Option<Result<Option<ChunkReader>, StoreError>> {
        let _ = (fill, index);
        None
    }

    /// Records a use of `key` if it is still committed as `fill`: false once it was removed,
    /// evicted or replaced. Only touches memory. This is how copies kept outside the store
    /// (the artifact memory tier) learn that theirs is gone; a store that cannot tell
    /// answers false, which only keeps its artifacts out of that tier.
    fn touch_if_current(&self, key: &str, fill: FillId) -> bool {
        let _ = (key, fill);
        false
    }

    /// Unpublishes `key` at once; its chunks go when no pin holds them. True if it existed.
    fn remove(&self, key: &str) -> Result<bool, StoreError>;

    /// From now on, calls `deleted` with each fill whose chunks this store deletes (removed,
    /// evicted or replaced, once no pin holds it), so that what is kept outside the store for
    /// that fill (chunk files kept open and mapped) goes with it. The default ignores it.
    fn on_fill_deleted(&self, deleted: FillDeleted) {
        let _ = deleted;
    }

    /// Keeps `fill`'s chunks readable until the guard drops. `None` if the fill's chunks are
    /// already gone (or the fill never existed): look the key up again.
    fn pin(&self, fill: FillId) -> Option<PinGuard>;

    /// Records a use of `key` for least-recently-used eviction.
    fn touch(&self, key: &str);

    fn usage(&self) -> Usage;

    /// Keys of committed artifacts starting with `prefix`, sorted. Memory only.
    fn keys(&self, prefix: &str) -> Vec<String>;

    /// Keeps `key` from eviction (`kept`) or lets it go again; persisted, and allowed before
    /// anything is stored under `key`. True if that changed anything. Removal still removes.
    fn set_kept(&self, key: &str, kept: bool) -> Result<bool, StoreError>;

    /// Every key kept from eviction, sorted. Memory only.
    fn kept(&self) -> Vec<String>;

    /// Committed artifacts among the kept keys. Memory only.
    fn kept_usage(&self) -> Usage;

    /// Removes least-recently-used artifacts until `policy` is met; kept keys are never
    /// removed, even when that leaves the policy unmet. Removed artifacts the policy names
    /// keep their bytes as originals (see [`OriginalsPolicy`]).
    fn evict(&self, policy: &EvictionPolicy) -> Result<EvictionReport, StoreError>;

    /// Serves the original kept for `key` since its eviction again, as its artifact.
    /// `Ok(None)` if none is kept, or if another artifact was published under `key` since.
    fn restore_original(&self, key: &str) -> Result<Option<ArtifactMeta>, StoreError> {
        let _ = key;
        Ok(None)
    }

    /// Keys of originals kept since eviction starting with `prefix`, with their lengths,
    /// sorted. Memory only.
    fn originals(&self, prefix: &str) -> Vec<(String, u64)> {
        let _ = prefix;
        Vec::new()
    }

    /// Originals kept since eviction. Memory only.
    fn originals_usage(&self) -> Usage {
        Usage::default()
    }

    /// Small persisted metadata, kept apart from artifacts and never evicted.
    fn put_record(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError>;

    fn get_record(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Keys of every record in `namespace`, in key order.
    fn record_keys(&self, namespace: &str) -> Result<Vec<Vec<u8>>, StoreError>;

    /// True if the record existed.
    fn remove_record(&self, namespace: &str, key: &[u8]) -> Result<bool, StoreError>;

    /// Persists pending state (including use times for LRU) and deletes chunks whose last pin
    /// dropped since the previous write. Call it periodically and at shutdown.
    fn flush(&self) -> Result<(), StoreError>;

    /// The committed artifact under `key` in this store itself, never copied in from another
    /// tier. The default is [`ArtifactStore::lookup`].
    fn lookup_here(&self, key: &str) -> Result<Option<ArtifactMeta>, StoreError> {
        self.lookup(key)
    }

    /// The artifact under `key` that another tier (the shared bucket) holds, opened for
    /// streaming, so a caller can be served while it is copied in with
    /// [`ArtifactStore::begin_copy`]. `Ok(None)` when no other tier has it (the default).
    fn shared_copy(&self, key: &str) -> Result<Option<SharedCopy>, StoreError> {
        let _ = key;
        Ok(None)
    }

    /// What another tier (the shared bucket) records of `key`, its length and headers, without
    /// opening its bytes: enough to answer a HEAD. `Ok(None)` when no other tier has it (the
    /// default).
    fn shared_head(&self, key: &str) -> Result<Option<SharedHead>, StoreError> {
        let _ = key;
        Ok(None)
    }

    /// Starts a fill that copies `key` in from another tier: committed in this store only,
    /// never written back to where it came from. The default is a plain fill.
    fn begin_copy(&self, key: &str) -> Result<FillId, StoreError> {
        self.begin_fill(key)
    }

    /// `lookup` then `pin`, so the returned artifact's chunks stay readable for the guard's life.
    fn lookup_pinned(&self, key: &str) -> Result<Option<(ArtifactMeta, PinGuard)>, StoreError> {
        pin_found(self, key, &|key| self.lookup(key))
    }

    /// `lookup_here` then `pin`.
    fn lookup_pinned_here(
        &self,
        key: &str,
    ) -> Result<Option<(ArtifactMeta, PinGuard)>, StoreError> {
        pin_found(self, key, &|key| self.lookup_here(key))
    }
}

/// Pins what `lookup` finds for `key` in `store`.
fn pin_found<S: ArtifactStore + ?Sized>(
    store: &S,
    key: &str,
    lookup: &dyn Fn(&str) -> Result<Option<ArtifactMeta>, StoreError>,
) -> Result<Option<(ArtifactMeta, PinGuard)>, StoreError> {
    // A replacement can land between the lookup and the pin; looking again finds the new
    // record. The bound only guards against a pathological replacement storm.
    for _ in 0..3 {
        let Some(meta) = lookup(key)? else {
            return Ok(None);
        };
        if let Some(pin) = store.pin(meta.fill) {
            return Ok(Some((meta, pin)));
        }
    }
    Ok(None)
}
