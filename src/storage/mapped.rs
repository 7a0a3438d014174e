//! Verified chunk files kept open and mapped read-only, so that a hit on a verified chunk is
//! sent with `sendfile(2)` without opening, checking, mapping and closing its file again.
//!
//! A [`MappedChunk`] owns the open file and a read-only mapping of the chunk's data; the
//! mapping only gives the data an address (the socket writer recognises it and sends the
//! bytes from the file), nothing reads it, so its pages never count in the proxy's memory.
//! [`MappedChunks`] keeps at most [`MAPPED_CHUNKS`] of them, and no more than a quarter of
//! the open-file limit (open files, and at most 256 KiB of address space each with the
//! default chunk size), keyed by fill and chunk
//! index. Fill ids are never reused, so an entry can only ever show its own fill's bytes;
//! entries go when the fill's marks are revoked (damage found) and when the store deletes
//! the fill's chunks (purge, eviction, replacement), and a response that still holds one
//! keeps it alive until its bytes are sent.

use std::fs::File;
use std::io;
use std::sync::Arc;

use super::FillId;

/// Chunk files kept open and mapped at most: with 256 KiB chunks, 256 MiB of address space
/// (virtual; the proxy never touches the pages) and as many file descriptors.
pub const MAPPED_CHUNKS: u64 = 1024;

/// One chunk's data, mapped read-only, with the file it came from.
pub struct MappedChunk {
    file: File,
    /// Offset in `file` of the first byte of data.
    offset: u64,
    #[cfg(target_os = "linux")]
    map: memmap2::Mmap,
    #[cfg(not(target_os = "linux"))]
    map: Vec<u8>,
}

impl MappedChunk {
    /// `len` bytes of `file` from `offset`, mapped read-only. `Ok(None)` if the file is
    /// shorter than that (damage, for the read path to find and report), if `len` is 0, or if
    /// this platform does not send files.
    ///
    /// The mapping is meant for a socket writer that sends its bytes from the file and never
    /// reads them; a reader of the mapping would get the file's bytes, or `SIGBUS` if the file
    /// was truncated meanwhile. Chunk files are never truncated by the proxy (they are written
    /// once, then unlinked), only by damage from outside.
    pub fn map(file: File, offset: u64, len: u64) -> io::Result<Option<MappedChunk>> {
        if len == 0 || file.metadata()?.len() < offset.saturating_add(len) {
            return Ok(None);
        }
        let Some(map) = map_read_only(&file, offset, len)? else {
            return Ok(None);
        };
        Ok(Some(MappedChunk { file, offset, map }))
    }

    /// The file the data is sent from.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Offset in [`MappedChunk::file`] of the first byte of data.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The mapped data: an address range to hand out, not to read (see [`MappedChunk::map`]).
    pub fn mapping(&self) -> &[u8] {
        &self.map
    }
}

/// The mapped chunks kept for later hits; cheap to clone, clones share them.
#[derive(Clone)]
pub struct MappedChunks {
    chunks: moka::sync::Cache<(FillId, u32), Arc<MappedChunk>>,
}

impl Default for MappedChunks {
    /// [`MAPPED_CHUNKS`], or a quarter of the process's open-file limit if that is less, so
    /// that kept files never crowd out connections.
    fn default() -> Self {
        MappedChunks::with_capacity(capacity_within(open_file_limit()))
    }
}

/// How many chunk files to keep open under an open-file limit of `limit` (`None`: none).
fn capacity_within(limit: Option<u64>) -> u64 {
    limit.map_or(MAPPED_CHUNKS, |limit| (limit / 4).min(MAPPED_CHUNKS))
}

#[cfg(unix)]
fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(not(unix))]
fn open_file_limit() -> Option<u64> {
    None
}

impl MappedChunks {
    pub fn with_capacity(chunks: u64) -> MappedChunks {
        MappedChunks {
            chunks: moka::sync::Cache::builder()
                .max_capacity(chunks)
                .support_invalidation_closures()
                .build(),
        }
    }

    /// Chunk `index` of `fill`, if it is kept mapped.
    pub fn get(&self, fill: FillId, index: u32) -> Option<Arc<MappedChunk>> {
        self.chunks.get(&(fill, index))
    }

    /// Keeps `chunk` for later hits. Only for chunks that passed their CRC.
    pub fn insert(&self, fill: FillId, index: u32, chunk: Arc<MappedChunk>) {
        self.chunks.insert((fill, index), chunk);
    }

    /// Drops every kept chunk of `fill`; responses holding one keep theirs until sent.
    pub fn forget(&self, fill: FillId) {
        // Only fails without `support_invalidation_closures`, which the builder sets.
        if let Err(e) = self
            .chunks
            .invalidate_entries_if(move |(kept, _), _| *kept == fill)
        {
            tracing::warn!(%fill, error = %e, "could not drop mapped chunks");
        }
    }

    /// Chunks kept now (after pending maintenance).
    pub fn len(&self) -> u64 {
        self.chunks.run_pending_tasks();
        self.chunks.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(target_os = "linux")]
fn map_read_only(file: &File, offset: u64, len: u64) -> io::Result<Option<memmap2::Mmap>> {
    let Ok(len) = usize::try_from(len) else {
        return Ok(None);
    };
    // SAFETY: the mapping is read-only and private to this process. Its bytes go to the
    // socket with sendfile from the file itself, never read through the mapping; the proxy
    // never writes or truncates a chunk file once committed (it only unlinks it, which leaves
    // the mapping valid). The length was checked against the file's size just before mapping.
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
    fn kept_files_stay_within_a_quarter_of_the_open_file_limit() {
        assert_eq!(capacity_within(Some(1024)), 256);
        assert_eq!(capacity_within(Some(1 << 20)), MAPPED_CHUNKS);
        assert_eq!(capacity_within(None), MAPPED_CHUNKS);
        assert_eq!(capacity_within(Some(3)), 0);
    }

    fn chunk_file(data: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(data).unwrap();
        file
    }

    #[test]
    fn a_file_shorter_than_the_range_is_not_mapped() {
        assert!(MappedChunk::map(chunk_file(b"short"), 2, 10)
            .unwrap()
            .is_none());
        assert!(MappedChunk::map(chunk_file(b"short"), 0, 0)
            .unwrap()
            .is_none());
        let mapped = MappedChunk::map(chunk_file(b"hdrDATA"), 3, 4)
            .unwrap()
            .expect("mapped");
        assert_eq!((mapped.offset(), mapped.mapping().len()), (3, 4));
    }

    #[test]
    fn kept_chunks_are_dropped_per_fill_and_held_by_their_users() {
        let kept = MappedChunks::with_capacity(8);
        let map =
            |data: &[u8]| Arc::new(MappedChunk::map(chunk_file(data), 0, 4).unwrap().unwrap());
        kept.insert(FillId(1), 0, map(b"AAAA"));
        kept.insert(FillId(1), 1, map(b"BBBB"));
        kept.insert(FillId(2), 0, map(b"CCCC"));
        let held = kept.get(FillId(1), 1).expect("kept");
        assert_eq!(kept.len(), 3);

        kept.forget(FillId(1));
        assert!(kept.get(FillId(1), 0).is_none());
        assert!(kept.get(FillId(1), 1).is_none());
        assert!(kept.get(FillId(2), 0).is_some(), "another fill stays");
        assert_eq!(kept.len(), 1);
        // A response that took the chunk before keeps a valid mapping and file.
        assert_eq!(held.mapping().len(), 4);
        assert_eq!(held.file().metadata().unwrap().len(), 4);
    }

    #[test]
    fn the_number_of_kept_chunks_is_bounded() {
        let kept = MappedChunks::with_capacity(4);
        for index in 0..64 {
            let file = chunk_file(b"DATA");
            kept.insert(
                FillId(9),
                index,
                Arc::new(MappedChunk::map(file, 0, 4).unwrap().unwrap()),
            );
        }
        assert!(kept.len() <= 4, "{} kept", kept.len());
    }
}
