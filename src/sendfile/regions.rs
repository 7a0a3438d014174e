//! One connection's file-backed memory: mapped chunk data handed out as `Bytes`, each
//! mapping registered with the file and offset it shows, so that the socket writer can send
//! those bytes with `sendfile(2)` instead of copying them.
//!
//! A registration is owned by the `Bytes` it is handed out as; when the last of them is
//! dropped (sent, or dropped with the connection), the region is unregistered. The mapping
//! itself is shared (`storage::MappedChunk`, kept for later hits by `storage::mapped`): it is
//! unmapped once neither the kept record nor any registration holds it.

use std::io::IoSlice;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use crate::metrics::Metrics;
use crate::storage::MappedChunk;

/// Called when the file behind a region turns out shorter than when it was mapped.
pub type OnShort = Arc<dyn Fn() + Send + Sync>;

/// The regions of one connection; cheap to clone, clones share them.
#[derive(Clone)]
pub struct FileRegions {
    registry: Arc<Registry>,
}

struct Registry {
    regions: Mutex<Vec<Region>>,
    /// `regions.len()`, readable without the lock (most writes are not file-backed).
    count: AtomicUsize,
    next_id: AtomicUsize,
    metrics: Arc<Metrics>,
}

struct Region {
    id: usize,
    start: usize,
    end: usize,
    chunk: Arc<MappedChunk>,
    on_short: OnShort,
}

/// Bytes of a registered region, as the writer sends them.
pub(super) struct FileSlice {
    /// Holds the file the bytes are sent from.
    pub chunk: Arc<MappedChunk>,
    /// Offset in `file` of the first byte.
    pub offset: u64,
    pub len: usize,
    pub on_short: OnShort,
}

/// How the writer should send the front of a list of buffers.
pub(super) enum Front {
    /// The first non-empty buffer starts in a region.
    File(FileSlice),
    /// This many buffers (from the start) hold no file-backed bytes.
    Plain(usize),
}

impl FileRegions {
    pub fn new(metrics: Arc<Metrics>) -> FileRegions {
        FileRegions {
            registry: Arc::new(Registry {
                regions: Mutex::new(Vec::new()),
                count: AtomicUsize::new(0),
                next_id: AtomicUsize::new(0),
                metrics,
            }),
        }
    }

    /// Regions registered now (mapped bytes not yet released).
    pub fn len(&self) -> usize {
        self.registry.count.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The data of `chunk` as `Bytes` registered with this connection: the writer sends
    /// them from the chunk's file. `on_short` runs if the file turns out shorter than the
    /// mapping when they are sent.
    ///
    /// The bytes are meant for this connection's writer, which never reads the mapping; a
    /// consumer that did read them would get the file's bytes, or `SIGBUS` if the file was
    /// truncated meanwhile (see [`MappedChunk::map`]).
    pub fn register(&self, chunk: Arc<MappedChunk>, on_short: OnShort) -> Bytes {
        let mapping = chunk.mapping();
        let start = mapping.as_ptr() as usize;
        let end = start + mapping.len();
        let id = self.registry.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut regions = self.registry.lock();
            regions.push(Region {
                id,
                start,
                end,
                chunk: chunk.clone(),
                on_short,
            });
            self.registry.count.store(regions.len(), Ordering::Release);
        }
        self.registry.metrics.file_region_opened();
        Bytes::from_owner(Registered {
            chunk,
            registry: self.registry.clone(),
            id,
        })
    }

    /// Whether the first non-empty buffer of `bufs` is file-backed, or how many are not.
    pub(super) fn front(&self, bufs: &[IoSlice<'_>]) -> Front {
        if self.is_empty() {
            return Front::Plain(bufs.len());
        }
        let regions = self.registry.lock();
        let find = |buf: &IoSlice<'_>| {
            let at = buf.as_ptr() as usize;
            regions
                .iter()
                .find(|r| r.start <= at && at < r.end)
                .map(|r| (r, at))
        };
        let mut seen_data = false;
        for (i, buf) in bufs.iter().enumerate() {
            if buf.is_empty() {
                continue;
            }
            if let Some((region, at)) = find(buf) {
                if seen_data {
                    return Front::Plain(i);
                }
                return Front::File(FileSlice {
                    chunk: region.chunk.clone(),
                    offset: region.chunk.offset() + (at - region.start) as u64,
                    len: buf.len().min(region.end - at),
                    on_short: region.on_short.clone(),
                });
            }
            seen_data = true;
        }
        Front::Plain(bufs.len())
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.registry.metrics
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Vec<Region>> {
        self.regions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The owner of a registration handed out as `Bytes`.
struct Registered {
    chunk: Arc<MappedChunk>,
    registry: Arc<Registry>,
    id: usize,
}

impl AsRef<[u8]> for Registered {
    fn as_ref(&self) -> &[u8] {
        self.chunk.mapping()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        // Unregistered before the chunk is released (and perhaps unmapped), so no address in
        // the registry ever outlives its mapping.
        let mut regions = self.registry.lock();
        regions.retain(|r| r.id != self.id);
        self.registry.count.store(regions.len(), Ordering::Release);
        drop(regions);
        self.registry.metrics.file_region_closed();
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::Write;

    use super::*;

    fn chunk(data: &[u8], offset: u64) -> Arc<MappedChunk> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(data).unwrap();
        let len = data.len() as u64 - offset;
        Arc::new(
            MappedChunk::map(file, offset, len)
                .unwrap()
                .expect("mapped"),
        )
    }

    #[test]
    fn mapped_bytes_are_registered_until_released() {
        let regions = FileRegions::new(Arc::new(Metrics::default()));
        let bytes = regions.register(chunk(b"headerDATA-DATA-DATA", 6), Arc::new(|| {}));
        assert_eq!(&bytes[..], b"DATA-DATA-DATA");
        assert_eq!(regions.len(), 1);

        let tail = bytes.slice(5..);
        let plain = b"chunk-size\r\n";
        let bufs = [IoSlice::new(&tail), IoSlice::new(plain)];
        match regions.front(&bufs) {
            Front::File(slice) => assert_eq!((slice.offset, slice.len), (11, 9)),
            Front::Plain(_) => panic!("file-backed front not found"),
        }
        let bufs = [IoSlice::new(&[]), IoSlice::new(plain), IoSlice::new(&tail)];
        assert!(matches!(regions.front(&bufs), Front::Plain(2)));

        drop(bytes);
        assert_eq!(regions.len(), 1, "a slice still holds the mapping");
        drop(tail);
        assert_eq!(regions.len(), 0);
        let copy = b"DATA".to_vec();
        let bufs = [IoSlice::new(plain), IoSlice::new(&copy)];
        assert!(matches!(regions.front(&bufs), Front::Plain(2)));
    }

    #[test]
    fn one_kept_mapping_serves_many_registrations() {
        let shared = chunk(b"hdrSHARED", 3);
        let (one, two) = (
            FileRegions::new(Arc::new(Metrics::default())),
            FileRegions::new(Arc::new(Metrics::default())),
        );
        let first = one.register(shared.clone(), Arc::new(|| {}));
        let again = one.register(shared.clone(), Arc::new(|| {}));
        let other = two.register(shared.clone(), Arc::new(|| {}));
        assert_eq!(
            first.as_ptr(),
            other.as_ptr(),
            "the same mapping, not a new one"
        );
        assert_eq!((one.len(), two.len()), (2, 1));
        drop((first, other));
        assert_eq!((one.len(), two.len()), (1, 0));
        match one.front(&[IoSlice::new(&again[1..])]) {
            Front::File(slice) => assert_eq!((slice.offset, slice.len), (4, 5)),
            Front::Plain(_) => panic!("the registration still held is found"),
        }
        drop(again);
        assert!(one.is_empty());
        assert_eq!(
            Arc::strong_count(&shared),
            1,
            "registrations released the mapping"
        );
    }
}
