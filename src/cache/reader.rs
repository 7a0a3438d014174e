//! Reading a stored artifact back for one response: its chunks in order, in socket-sized
//! pieces, through a few buffers the reader reuses.
//!
//! Memory per response is bounded by a small constant, not by the chunk size: a reader holds
//! at most [`BUFFERS`] buffers of [`PIECE`] bytes (192 KiB), and hyper queues at most two
//! pieces before it stops asking for more (the listener's write buffer limit). Pieces are
//! read straight from the page cache on the runtime thread when the OS can promise that the
//! read will not block (`preadv2` with `RWF_NOWAIT` on Linux), and on the blocking pool
//! otherwise; chunks are opened the same way (`openat2` with `RESOLVE_CACHED`).
//!
//! Integrity: verified once, trusted while cached. A chunk not yet verified in this process
//! goes through its CRC as it is read (checked when its last piece is read, before the
//! response can complete) and is marked verified when it passes (`storage::verified`). A
//! verified chunk is read without the CRC, and on a plain HTTP/1.1 connection it is not read
//! by the proxy at all: it is mapped and sent with `sendfile(2)` (see `crate::sendfile`), and
//! the mapping is kept (`storage::mapped`) so that later hits of the chunk send it without
//! opening its file again. Readers that follow a fill in flight keep the read path and its
//! CRC.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::StreamBody;
use tokio::sync::watch;

use super::fill::{Fills, Progress};
use crate::body::{self, Body, BoxError};
use crate::metrics::Metrics;
use crate::sendfile::{FileRegions, OnShort};
use crate::storage::{
    ArtifactMeta, Cached, ChunkReader, FillId, FillMarks, MappedChunk, PinGuard, Store, StoreError,
};

/// Size of the pieces a response is read and sent in.
pub const PIECE: usize = 64 * 1024;
/// Buffers a reader owns at most: one being filled, and the pieces hyper still holds.
pub const BUFFERS: usize = 3;

/// Where a reader's chunks come from.
enum Source {
    /// A committed artifact: chunks `0..total`.
    Committed { total: u32 },
    /// A fill in flight: as many chunks as it has published.
    Following(watch::Receiver<Progress>),
}

/// Reads an artifact's chunks from the store in order, for as long as the response lives.
pub struct Reader {
    store: Store,
    metrics: Arc<Metrics>,
    key: String,
    fill: FillId,
    /// The chunk after the open one.
    next: u32,
    chunk: Option<ChunkReader>,
    source: Source,
    /// Bytes to drop from the front before the first piece is returned.
    skip: u64,
    buffers: Buffers,
    /// The chunks of a committed fill verified in this process.
    marks: Option<Arc<FillMarks>>,
    /// The connection's registry, when verified chunks may be sent with `sendfile`.
    regions: Option<FileRegions>,
    /// What a mapped chunk found shorter than its data does (made on first use).
    on_short: Option<OnShort>,
    _pin: PinGuard,
}

impl Reader {
    /// A reader of a committed artifact.
    pub fn committed(fills: &Fills, key: String, meta: &ArtifactMeta, pin: PinGuard) -> Reader {
        Reader::new(
            fills,
            key,
            meta.fill,
            Source::Committed {
                total: meta.chunk_count,
            },
            pin,
        )
    }

    /// A reader of a committed artifact known by its fill and chunk count.
    pub fn committed_parts(
        fills: &Fills,
        key: String,
        fill: FillId,
        chunk_count: u32,
        pin: PinGuard,
    ) -> Reader {
        let source = Source::Committed { total: chunk_count };
        Reader::new(fills, key, fill, source, pin)
    }

    /// A reader that follows a fill in flight from its first chunk.
    pub fn following(
        fills: &Fills,
        key: String,
        fill: FillId,
        progress: watch::Receiver<Progress>,
        pin: PinGuard,
    ) -> Reader {
        Reader::new(fills, key, fill, Source::Following(progress), pin)
    }

    fn new(fills: &Fills, key: String, fill: FillId, source: Source, pin: PinGuard) -> Reader {
        let marks = match &source {
            Source::Committed { total } => Some(fills.store().verified().marks(fill, *total)),
            Source::Following(_) => None,
        };
        Reader {
            marks,
            regions: None,
            on_short: None,
            store: fills.store().clone(),
            metrics: fills.metrics().clone(),
            key,
            fill,
            next: 0,
            chunk: None,
            source,
            skip: 0,
            buffers: Buffers::default(),
            _pin: pin,
        }
    }

    /// Sends verified chunks through the connection's `regions` (plain HTTP/1.1 only: other
    /// connections have none) instead of reading them.
    pub fn send_files_through(&mut self, regions: Option<FileRegions>) {
        self.regions = regions;
    }

    /// Starts reading at byte `offset` of the artifact (chunks hold `chunk_size` bytes).
    /// The skipped bytes of the first chunk are still read: its CRC covers them.
    pub fn start_at(&mut self, offset: u64, chunk_size: u64) {
        self.next = u32::try_from(offset / chunk_size).unwrap_or(u32::MAX);
        self.skip = offset % chunk_size;
        self.chunk = None;
    }

    /// Opens the first chunk and reads it through once to check its CRC, so that a damaged
    /// artifact is found before a response is promised (and can be fetched again).
    pub async fn check_first(&mut self) -> Result<(), BoxError> {
        if self.kept_mapping(self.next).is_some() {
            // Verified, and its file is held open and mapped for this fill.
            return Ok(());
        }
        if !self.open_next().await? {
            return Ok(());
        }
        let Some(mut chunk) = self.chunk.take() else {
            return Ok(());
        };
        if self.is_verified(self.next - 1) {
            // Opened (so it is still there), and checked before.
            self.chunk = Some(chunk);
            return Ok(());
        }
        let result = tokio::task::spawn_blocking(move || chunk.verify().map(|()| chunk)).await;
        match result {
            Ok(Ok(chunk)) => {
                self.mark_verified(self.next - 1);
                self.chunk = Some(chunk);
                Ok(())
            }
            Ok(Err(e)) => Err(self.failed(e).await),
            Err(e) => Err(e.into()),
        }
    }

    /// The next piece of the artifact, `Ok(None)` at the end.
    pub async fn next_piece(&mut self) -> Result<Option<Bytes>, BoxError> {
        loop {
            let Some(chunk) = self.chunk.as_mut() else {
                if let Some(kept) = self.kept_mapping(self.next) {
                    let index = self.next;
                    self.next += 1;
                    let registered = self.register(kept, index);
                    let Some(piece) = self.after_skip(registered) else {
                        continue;
                    };
                    return Ok(Some(piece));
                }
                if !self.open_next().await? {
                    return Ok(None);
                }
                continue;
            };
            if chunk.remaining() == 0 {
                self.chunk = None;
                continue;
            }
            if let Some(mapped) = self.map_verified() {
                let Some(piece) = self.after_skip(mapped) else {
                    continue;
                };
                return Ok(Some(piece));
            }
            let Some(chunk) = self.chunk.as_mut() else {
                continue;
            };
            let mut buf = self.buffers.take();
            let read = match chunk.read_cached(&mut buf) {
                Ok(Cached::Read(n)) => Ok(n),
                Ok(Cached::WouldBlock) => self.read_blocking(&mut buf).await,
                Err(e) => Err(e),
            };
            let n = match read {
                Ok(n) => n,
                Err(e) => return Err(self.failed(e).await),
            };
            // Marked as its last piece passes: hyper may not ask again after the last byte.
            if self.chunk.as_ref().is_some_and(ChunkReader::crc_confirmed) {
                self.mark_verified(self.next - 1);
            }
            buf.truncate(n);
            let piece = buf.freeze();
            self.buffers.lend(piece.clone());
            let Some(piece) = self.after_skip(piece) else {
                continue;
            };
            return Ok(Some(piece));
        }
    }

    /// `piece` without the bytes still to be skipped; `None` if nothing is left of it.
    fn after_skip(&mut self, piece: Bytes) -> Option<Bytes> {
        if self.skip == 0 {
            return Some(piece);
        }
        let dropped = usize::try_from(self.skip)
            .unwrap_or(usize::MAX)
            .min(piece.len());
        self.skip -= dropped as u64;
        let piece = piece.slice(dropped..);
        (!piece.is_empty()).then_some(piece)
    }

    fn is_verified(&self, index: u32) -> bool {
        self.marks.as_ref().is_some_and(|marks| marks.is_set(index))
    }

    fn mark_verified(&self, index: u32) {
        if let Some(marks) = &self.marks {
            marks.set(index);
        }
    }

    /// Chunk `index` of a committed fill, verified and kept mapped, when this response has
    /// a connection to send files on: sent without opening the chunk again.
    fn kept_mapping(&self, index: u32) -> Option<Arc<MappedChunk>> {
        self.regions.as_ref()?;
        match self.source {
            Source::Committed { total } if index < total => {}
            _ => return None,
        }
        // Checked on the reader's own marks: a revocation since they were taken shows here.
        if !self.is_verified(index) {
            return None;
        }
        self.store.verified().mapped().get(self.fill, index)
    }

    /// `chunk` registered with the connection, as the bytes to send.
    fn register(&mut self, chunk: Arc<MappedChunk>, index: u32) -> Bytes {
        let on_short = self
            .on_short
            .get_or_insert_with(|| {
                let (verified, fill, key) =
                    (self.store.verified().clone(), self.fill, self.key.clone());
                Arc::new(move || {
                    tracing::warn!(%key, %fill, "chunk file shrank after it was verified; checking it again on its next read");
                    verified.revoke(fill);
                })
            })
            .clone();
        let Some(regions) = self.regions.as_ref() else {
            // Only called with regions; keep the bytes' meaning regardless.
            tracing::debug!(key = %self.key, chunk = index, "no connection to send a mapped chunk on");
            return Bytes::copy_from_slice(chunk.mapping());
        };
        regions.register(chunk, on_short)
    }

    /// The whole open chunk as mapped bytes for `sendfile`, when it is verified, not yet
    /// read from and this response has a connection to send files on. The chunk is done
    /// with once mapped, and its mapping is kept for later hits. `None` keeps the read path,
    /// which also finds and reports a chunk file shorter than its data.
    fn map_verified(&mut self) -> Option<Bytes> {
        self.regions.as_ref()?;
        let chunk = self.chunk.as_ref()?;
        let index = self.next - 1;
        if chunk.remaining() != chunk.len() || !self.is_verified(index) {
            return None;
        }
        let (file, offset) = chunk.file_data()?;
        // Once per chunk while it stays kept: the mapping owns its own descriptor.
        let mapped = match file
            .try_clone()
            .and_then(|file| MappedChunk::map(file, offset, chunk.len()))
        {
            Ok(Some(mapped)) => Arc::new(mapped),
            // Shorter than its data: the read path finds and reports it.
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(key = %self.key, chunk = index, error = %e, "mapping a chunk failed; reading it");
                return None;
            }
        };
        self.chunk = None;
        self.store
            .verified()
            .mapped()
            .insert(self.fill, index, mapped.clone());
        Some(self.register(mapped, index))
    }

    /// Reads the next piece of the open chunk on the blocking pool.
    async fn read_blocking(&mut self, buf: &mut BytesMut) -> Result<usize, StoreError> {
        let Some(mut chunk) = self.chunk.take() else {
            return Err(StoreError::Io("no chunk open".to_owned()));
        };
        let mut owned = std::mem::take(buf);
        let joined = tokio::task::spawn_blocking(move || {
            let read = chunk.read(&mut owned);
            (chunk, owned, read)
        })
        .await;
        match joined {
            Ok((chunk, owned, read)) => {
                self.chunk = Some(chunk);
                *buf = owned;
                read
            }
            Err(e) => Err(StoreError::Io(format!("chunk read task failed: {e}"))),
        }
    }

    /// Opens the next chunk once it exists; false at the end of the artifact.
    async fn open_next(&mut self) -> Result<bool, BoxError> {
        loop {
            match &mut self.source {
                Source::Committed { total } => {
                    if self.next >= *total {
                        return Ok(false);
                    }
                    break;
                }
                Source::Following(progress) => {
                    let state = progress.borrow_and_update().clone();
                    match state {
                        Progress::Streaming { written, .. } if self.next < written => break,
                        Progress::Done { meta } => {
                            self.source = Source::Committed {
                                total: meta.chunk_count,
                            };
                        }
                        Progress::Starting | Progress::Streaming { .. } => {
                            if progress.changed().await.is_err() {
                                return Err("artifact fill ended without finishing".into());
                            }
                        }
                        Progress::Failed | Progress::NotFilled | Progress::Held { .. } => {
                            return Err("artifact fill broke; response aborted".into());
                        }
                    }
                }
            }
        }
        let index = self.next;
        // From the kernel's caches on this thread when that cannot block, as pieces are read.
        let opened = match self.store.inner().open_chunk_cached(self.fill, index) {
            Some(opened) => opened,
            None => {
                let (store, fill) = (self.store.clone(), self.fill);
                tokio::task::spawn_blocking(move || store.inner().open_chunk(fill, index)).await?
            }
        };
        match opened {
            Ok(Some(mut chunk)) => {
                if self.is_verified(index) {
                    chunk.trust();
                }
                self.chunk = Some(chunk);
                self.next += 1;
                Ok(true)
            }
            Ok(None) => Err(format!("chunk {index} of {} vanished", self.key).into()),
            Err(e) => Err(self.failed(e).await),
        }
    }

    /// A read failed: a corrupt artifact is dropped from the store, so the next request
    /// fetches it again.
    async fn failed(&mut self, e: StoreError) -> BoxError {
        self.chunk = None;
        if matches!(e, StoreError::Corrupt { .. }) {
            self.store.verified().revoke(self.fill);
            self.metrics.corrupt_artifact();
            tracing::warn!(key = %self.key, chunk = self.next.saturating_sub(1), error = %e, "corrupt artifact dropped");
            if let Err(e) = self.store.remove(&self.key).await {
                tracing::warn!(key = %self.key, error = %e, "could not drop corrupt artifact");
            }
        }
        e.into()
    }

    /// The rest of the artifact as a response body.
    pub fn into_body(self) -> Body {
        // The state is `None` once the stream ended or failed, so nothing is read after an error.
        let frames = futures_util::stream::unfold(Some(self), |state| async move {
            let mut reader = state?;
            match reader.next_piece().await {
                Ok(Some(piece)) => Some((Ok(Frame::data(piece)), Some(reader))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        body::boxed(StreamBody::new(frames))
    }
}

/// The reader's buffers: pieces lent to hyper are taken back once hyper has dropped them.
#[derive(Default)]
struct Buffers {
    lent: VecDeque<Bytes>,
}

impl Buffers {
    /// A buffer of [`PIECE`] initialized bytes: a lent one hyper is done with, or a new one.
    fn take(&mut self) -> BytesMut {
        for _ in 0..self.lent.len() {
            let Some(piece) = self.lent.pop_front() else {
                break;
            };
            match piece.try_into_mut() {
                Ok(mut buf) if buf.capacity() >= PIECE => {
                    // Only the tail beyond the last piece's length is written here.
                    buf.resize(PIECE, 0);
                    return buf;
                }
                Ok(_) => {}
                Err(piece) => self.lent.push_back(piece),
            }
        }
        if self.lent.len() >= BUFFERS {
            // Still held by hyper: forget the oldest, which frees itself when hyper drops it.
            self.lent.pop_front();
        }
        BytesMut::zeroed(PIECE)
    }

    fn lend(&mut self, piece: Bytes) {
        self.lent.push_back(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_once_released() {
        let mut buffers = Buffers::default();
        let mut first = buffers.take();
        first[0] = 7;
        first.truncate(10);
        let piece = first.freeze();
        let address = piece.as_ptr();
        buffers.lend(piece.clone());
        // Still held (as hyper would): a second buffer is allocated.
        let second = buffers.take();
        assert_ne!(second.as_ptr(), address);
        drop(piece);
        // Released: the first allocation comes back, at full length.
        let again = buffers.take();
        assert_eq!(again.as_ptr(), address);
        assert_eq!(again.len(), PIECE);
    }

    #[test]
    fn at_most_a_few_buffers_are_tracked() {
        let mut buffers = Buffers::default();
        let mut held = Vec::new();
        for _ in 0..10 {
            let piece = buffers.take().freeze();
            buffers.lend(piece.clone());
            held.push(piece);
        }
        assert!(buffers.lent.len() <= BUFFERS);
    }
}
