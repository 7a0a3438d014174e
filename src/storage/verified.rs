//! Which stored chunks passed their CRC in this process: checked once when first read from
//! disk, then trusted while their fill stays cached, until something finds them damaged.
//!
//! One bitset per fill (a bit per chunk), held in a bounded cache: forgetting a fill only
//! means its chunks are checked again on their next read. Fill ids are never reused, so the
//! marks of a fill that was purged or evicted can never vouch for another fill's bytes; what
//! finds damage (a reader, `admin verify`) revokes the fill's marks, and readers that hold
//! them see the revocation on their next chunk. Revoking also drops the fill's chunks kept
//! mapped for `sendfile` (`storage::mapped`), which only verified chunks enter.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::mapped::MappedChunks;
use super::FillId;

/// Memory the record may use, roughly (bitsets plus a per-fill overhead): 16 MiB covers
/// well over 100 000 artifacts.
const CAPACITY_BYTES: u64 = 16 * 1024 * 1024;
/// What one entry costs besides its bitset, for the bound above.
const ENTRY_OVERHEAD: u32 = 128;

/// Cheap to clone; clones share the record.
#[derive(Clone)]
pub struct VerifiedChunks {
    fills: moka::sync::Cache<FillId, Arc<FillMarks>>,
    mapped: MappedChunks,
}

impl Default for VerifiedChunks {
    fn default() -> Self {
        VerifiedChunks {
            fills: moka::sync::Cache::builder()
                .max_capacity(CAPACITY_BYTES)
                .weigher(|_, marks: &Arc<FillMarks>| marks.weight())
                .build(),
            mapped: MappedChunks::default(),
        }
    }
}

impl VerifiedChunks {
    /// The marks of `fill` (of `chunk_count` chunks), created empty if there are none.
    pub fn marks(&self, fill: FillId, chunk_count: u32) -> Arc<FillMarks> {
        let marks = self
            .fills
            .get_with(fill, || Arc::new(FillMarks::new(chunk_count)));
        if marks.len() >= chunk_count {
            return marks;
        }
        // A record made for fewer chunks (only a confused caller does that): start over.
        let fresh = Arc::new(FillMarks::new(chunk_count));
        self.fills.insert(fill, fresh.clone());
        fresh
    }

    /// Whether chunk `index` of `fill` passed its CRC and is still trusted.
    pub fn is_verified(&self, fill: FillId, index: u32) -> bool {
        self.fills
            .get(&fill)
            .is_some_and(|marks| marks.is_set(index))
    }

    /// Drops every mark of `fill`: its chunks are checked again when next read, including by
    /// readers that already hold the marks.
    /// Its chunks kept mapped go too.
    pub fn revoke(&self, fill: FillId) {
        if let Some(marks) = self.fills.remove(&fill) {
            marks.revoked.store(true, Ordering::Release);
        }
        self.mapped.forget(fill);
    }

    /// Verified chunks kept open and mapped for `sendfile`.
    pub fn mapped(&self) -> &MappedChunks {
        &self.mapped
    }
}

/// The chunks of one fill that passed their CRC.
pub struct FillMarks {
    bits: Box<[AtomicU64]>,
    revoked: AtomicBool,
}

impl FillMarks {
    fn new(chunk_count: u32) -> FillMarks {
        let words = (chunk_count as usize).div_ceil(64);
        FillMarks {
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            revoked: AtomicBool::new(false),
        }
    }

    fn len(&self) -> u32 {
        u32::try_from(self.bits.len() * 64).unwrap_or(u32::MAX)
    }

    fn weight(&self) -> u32 {
        let bytes = u32::try_from(self.bits.len() * 8).unwrap_or(u32::MAX);
        ENTRY_OVERHEAD.saturating_add(bytes)
    }

    /// Whether chunk `index` passed its CRC (false once the fill's marks were revoked).
    pub fn is_set(&self, index: u32) -> bool {
        if self.revoked.load(Ordering::Acquire) {
            return false;
        }
        let (word, bit) = (index as usize / 64, index % 64);
        self.bits
            .get(word)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << bit) != 0)
    }

    /// Records that chunk `index` passed its CRC (ignored once revoked).
    pub fn set(&self, index: u32) {
        if self.revoked.load(Ordering::Acquire) {
            return;
        }
        let (word, bit) = (index as usize / 64, index % 64);
        if let Some(w) = self.bits.get(word) {
            w.fetch_or(1 << bit, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_per_chunk_and_revocable() {
        let verified = VerifiedChunks::default();
        let marks = verified.marks(FillId(7), 130);
        assert!(!verified.is_verified(FillId(7), 129));
        marks.set(129);
        marks.set(0);
        assert!(verified.is_verified(FillId(7), 129));
        assert!(verified.is_verified(FillId(7), 0));
        assert!(!verified.is_verified(FillId(7), 1));
        assert!(!verified.is_verified(FillId(8), 0), "another fill");
        // Out of range: never set, never trusted.
        marks.set(5000);
        assert!(!marks.is_set(5000));

        verified.revoke(FillId(7));
        assert!(!verified.is_verified(FillId(7), 0));
        assert!(
            !marks.is_set(129),
            "a holder of the marks sees the revocation"
        );
        marks.set(3);
        assert!(!marks.is_set(3));
        // A later reader starts from nothing.
        let again = verified.marks(FillId(7), 130);
        assert!(!again.is_set(129));
    }
}
