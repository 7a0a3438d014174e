//! One connection's file-backed memory: chunk data mapped read-only, each mapping registered
//! with the file and offset it shows, so that the socket writer can send those bytes with
//! `sendfile(2)` instead of copying them.
//!
//! A mapping is owned by the `Bytes` it is handed out as; when the last of them is dropped
//! (sent, or dropped with the connection), the region is unregistered and then unmapped.

use std::fs::File;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use crate::metrics::Metrics;

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
    file: Arc<File>,
    offset: u64,
    on_short: OnShort,
}

/// Bytes of a registered region, as the writer sends them.
pub(super) struct FileSlice {
    pub file: Arc<File>,
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

    /// `len` bytes of `file` from `offset`, mapped read-only and registered. `Ok(None)` if the
    /// file is shorter than that (damage, for the read path to find and report) or if this
    /// platform cannot send files. `on_short` runs if the file shrinks while mapped.
    ///
    /// The bytes are meant for this connection's writer, which sends them from the file and
    /// never reads the mapping; a consumer that did read them would get the file's bytes, or
    /// `SIGBUS` if the file was truncated meanwhile. Chunk files are never truncated by the
    /// proxy (they are written once, then unlinked), only by damage from outside.
    pub fn map(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        on_short: OnShort,
    ) -> io::Result<Option<Bytes>> {
        if len == 0 || file.metadata()?.len() < offset.saturating_add(len) {
            return Ok(None);
        }
        let Some(map) = map_read_only(file, offset, len)? else {
            return Ok(None);
        };
        let start = map.as_ptr() as usize;
        let id = self.registry.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut regions = self.registry.lock();
            regions.push(Region {
                id,
                start,
                end: start + map.len(),
                file: Arc::new(file.try_clone()?),
                offset,
                on_short,
            });
            self.registry.count.store(regions.len(), Ordering::Release);
        }
        self.registry.metrics.file_region_opened();
        Ok(Some(Bytes::from_owner(Mapped {
            map,
            registry: self.registry.clone(),
            id,
        })))
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
                    file: region.file.clone(),
                    offset: region.offset + (at - region.start) as u64,
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

/// The owner of a mapping handed out as `Bytes`.
struct Mapped {
    #[cfg(target_os = "linux")]
    map: memmap2::Mmap,
    #[cfg(not(target_os = "linux"))]
    map: Vec<u8>,
    registry: Arc<Registry>,
    id: usize,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // Unregistered before the fields drop (and the memory is unmapped), so no address in
        // the registry ever outlives its mapping.
        let mut regions = self.registry.lock();
        regions.retain(|r| r.id != self.id);
        self.registry.count.store(regions.len(), Ordering::Release);
        drop(regions);
        self.registry.metrics.file_region_closed();
    }
}

#[cfg(target_os = "linux")]
fn map_read_only(file: &File, offset: u64, len: u64) -> io::Result<Option<memmap2::Mmap>> {
    let Ok(len) = usize::try_from(len) else {
        return Ok(None);
    };
    // SAFETY: the mapping is read-only and private to this process. Its bytes go to the
    // socket with sendfile from the file itself; the proxy never writes or truncates a chunk
    // file once committed (it only unlinks it, which leaves the mapping valid). The length
    // was checked against the file's size just before mapping.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map(file)?
    };
    Ok(Some(map))
}

#[cfg(not(target_os = "linux"))]
fn map_read_only(_: &File, _: u64, _: u64) -> io::Result<Option<Vec<u8>>> {
    Ok(None)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn mapped_bytes_are_registered_until_released() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"headerDATA-DATA-DATA").unwrap();
        let regions = FileRegions::new(Arc::new(Metrics::default()));
        let bytes = regions
            .map(&file, 6, 14, Arc::new(|| {}))
            .unwrap()
            .expect("mapped");
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
    fn a_file_shorter_than_the_range_is_not_mapped() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"short").unwrap();
        let regions = FileRegions::new(Arc::new(Metrics::default()));
        assert!(regions
            .map(&file, 2, 10, Arc::new(|| {}))
            .unwrap()
            .is_none());
        assert!(regions.map(&file, 0, 0, Arc::new(|| {})).unwrap().is_none());
        assert!(regions.is_empty());
    }
}
