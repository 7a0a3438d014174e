//! The artifact memory tier: records of stored artifacts, and the whole bytes of small ones
//! (`.info`, `.mod`, `.gemspec.rz` and anything under a size), so that a hit on them touches
//! neither sled nor the blocking pool.
//!
//! It is a cache of the store, never a source of its own: an entry is used only while the
//! store still holds the same fill under the key ([`crate::storage::ArtifactStore::touch_if_current`]),
//! so an artifact evicted, purged, replaced or dropped as corrupt is never served from here,
//! whether or not [`ArtifactMemory::invalidate`] was called. Bytes are kept only after their
//! length and SHA-256 matched the stored record, and are trusted while kept.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

use crate::storage::{ArtifactMeta, FillId};

/// No single artifact takes more than this share of the tier.
const MAX_SHARE: u64 = 16;
/// Weight of an entry beyond its key, headers and bytes.
const OVERHEAD: usize = 96;

/// A stored artifact as the memory tier keeps it.
#[derive(Debug)]
pub struct Kept {
    pub fill: FillId,
    pub len: u64,
    pub chunk_count: u32,
    /// The headers replayed to clients, parsed once.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The whole artifact, for small ones; large ones are read from the store.
    pub body: Option<Bytes>,
}

/// Which artifacts keep their bytes in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// `.info`, `.mod`, `.gemspec.rz`: small by nature, kept whatever their size (up to a
    /// sixteenth of the tier).
    Descriptor,
    /// Anything else: kept up to the configured size.
    Other,
}

/// Cheap to clone; every clone is the same tier.
#[derive(Clone)]
pub struct ArtifactMemory {
    /// `None` when the tier is switched off (a budget of zero).
    cache: Option<moka::sync::Cache<String, Arc<Kept>>>,
    /// Artifacts up to this size keep their bytes.
    entry_max: u64,
    /// Nothing larger is kept, whatever its kind.
    share_max: u64,
}

impl ArtifactMemory {
    /// A tier bounded by `max_bytes` (keys, headers and bytes), keeping the bytes of
    /// artifacts up to `entry_max_bytes`. A budget of zero switches it off.
    pub fn new(max_bytes: u64, entry_max_bytes: u64) -> ArtifactMemory {
        let cache = (max_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &String, kept: &Arc<Kept>| weight(key, kept))
                .build()
        });
        ArtifactMemory {
            cache,
            entry_max: entry_max_bytes,
            share_max: max_bytes / MAX_SHARE,
        }
    }

    /// How many bytes of an artifact of this kind may be kept; zero when none.
    pub fn limit(&self, size: Size) -> u64 {
        match (&self.cache, size) {
            (None, _) => 0,
            (Some(_), Size::Descriptor) => self.share_max,
            (Some(_), Size::Other) => self.entry_max.min(self.share_max),
        }
    }

    /// What is kept for `key`. The caller checks with the store that `fill` is still current.
    pub fn get(&self, key: &str) -> Option<Arc<Kept>> {
        self.cache.as_ref()?.get(key)
    }

    /// Keeps the record of a stored artifact, with its bytes if given. Bytes whose length or
    /// SHA-256 differ from the record are not kept (the record still is).
    pub fn keep(&self, key: &str, meta: &ArtifactMeta, body: Option<Bytes>) -> Arc<Kept> {
        let body = body.filter(|body| {
            let intact =
                body.len() as u64 == meta.len && Sha256::digest(body).as_slice() == meta.sha256;
            if !intact {
                tracing::warn!(
                    key,
                    "artifact bytes differ from their record; not kept in memory"
                );
            }
            intact
        });
        let kept = Arc::new(Kept {
            fill: meta.fill,
            len: meta.len,
            chunk_count: meta.chunk_count,
            headers: meta
                .headers
                .iter()
                .filter_map(|(name, value)| {
                    Some((
                        HeaderName::try_from(name.as_str()).ok()?,
                        HeaderValue::from_str(value).ok()?,
                    ))
                })
                .collect(),
            body,
        });
        if let Some(cache) = &self.cache {
            cache.insert(key.to_owned(), kept.clone());
        }
        kept
    }

    /// Forgets `key` now (purge, removal). Entries of artifacts gone from the store are
    /// never served anyway; this gives their memory back at once.
    pub fn invalidate(&self, key: &str) {
        if let Some(cache) = &self.cache {
            cache.invalidate(key);
        }
    }

    /// Bytes the tier holds now, by its own weighing (settles pending work first).
    pub fn weighted_size(&self) -> u64 {
        self.cache.as_ref().map_or(0, |cache| {
            cache.run_pending_tasks();
            cache.weighted_size()
        })
    }
}

fn weight(key: &str, kept: &Kept) -> u32 {
    let headers: usize = kept
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    let body = kept.body.as_ref().map_or(0, Bytes::len);
    u32::try_from(key.len() + headers + body + OVERHEAD).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(fill: u64, body: &[u8]) -> ArtifactMeta {
        ArtifactMeta {
            fill: FillId(fill),
            len: body.len() as u64,
            sha256: Sha256::digest(body).into(),
            chunk_count: 1,
            headers: vec![("content-type".into(), "application/json".into())],
            stored_at_unix: 0,
        }
    }

    #[test]
    fn keeps_checked_bytes_and_parsed_headers() {
        let memory = ArtifactMemory::new(1 << 20, 1024);
        let body = Bytes::from_static(b"{\"Version\":\"v1.0.0\"}");
        memory.keep("k", &meta(1, &body), Some(body.clone()));
        let kept = memory.get("k").unwrap();
        assert_eq!((kept.fill, kept.body.as_ref()), (FillId(1), Some(&body)));
        assert_eq!(kept.headers[0].0, http::header::CONTENT_TYPE);
    }

    #[test]
    fn bytes_that_do_not_match_their_record_are_not_kept() {
        let memory = ArtifactMemory::new(1 << 20, 1024);
        let record = meta(1, b"the stored bytes");
        memory.keep("k", &record, Some(Bytes::from_static(b"the stored bytez")));
        let kept = memory.get("k").unwrap();
        assert!(kept.body.is_none(), "only the record is kept");
        memory.keep("short", &record, Some(Bytes::from_static(b"the stored")));
        assert!(memory.get("short").unwrap().body.is_none());
    }

    #[test]
    fn the_budget_bounds_what_is_kept() {
        let memory = ArtifactMemory::new(64 * 1024, 4096);
        let body = Bytes::from(vec![7u8; 3000]);
        for i in 0..100 {
            memory.keep(&format!("k{i}"), &meta(i, &body), Some(body.clone()));
        }
        let held = memory.weighted_size();
        assert!(held <= 64 * 1024, "{held} bytes held");
        assert!(held > 32 * 1024, "the tier is used: {held} bytes");
    }

    #[test]
    fn limits_follow_kind_budget_and_setting() {
        let memory = ArtifactMemory::new(16 << 20, 256 << 10);
        assert_eq!(memory.limit(Size::Other), 256 << 10);
        assert_eq!(memory.limit(Size::Descriptor), 1 << 20);
        let tiny = ArtifactMemory::new(1 << 20, 256 << 10);
        assert_eq!(tiny.limit(Size::Other), 64 << 10, "a sixteenth of the tier");
        let off = ArtifactMemory::new(0, 256 << 10);
        assert_eq!(off.limit(Size::Descriptor), 0);
        off.keep("k", &meta(1, b"x"), Some(Bytes::from_static(b"x")));
        assert!(off.get("k").is_none());
    }

    #[test]
    fn invalidate_forgets_at_once() {
        let memory = ArtifactMemory::new(1 << 20, 1024);
        memory.keep("k", &meta(1, b"x"), Some(Bytes::from_static(b"x")));
        memory.invalidate("k");
        assert!(memory.get("k").is_none());
    }
}
