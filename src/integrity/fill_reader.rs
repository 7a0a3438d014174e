//! Blocking `Read + Seek` over the chunks of one fill, so a stored zip can be opened in place.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::Bytes;

use crate::storage::{ArtifactStore, FillId};

/// Reads a fill written in chunks of `chunk_size` bytes (the last one shorter). The caller
/// keeps the fill readable (a pin, or a fill still being written) while this lives; it runs
/// on a blocking thread.
pub struct FillReader {
    store: Arc<dyn ArtifactStore>,
    fill: FillId,
    len: u64,
    chunk_size: u64,
    pos: u64,
    /// The chunk read last: zip readers go back and forth within small regions.
    current: Option<(u32, Bytes)>,
}

impl FillReader {
    pub fn new(store: Arc<dyn ArtifactStore>, fill: FillId, len: u64, chunk_size: usize) -> Self {
        FillReader {
            store,
            fill,
            len,
            chunk_size: chunk_size.max(1) as u64,
            pos: 0,
            current: None,
        }
    }

    fn chunk(&mut self, index: u32) -> io::Result<Bytes> {
        if let Some((at, data)) = &self.current {
            if *at == index {
                return Ok(data.clone());
            }
        }
        let data = self
            .store
            .read_chunk(self.fill, index)
            .map_err(io::Error::other)?
            .ok_or_else(|| {
                io::Error::other(format!("chunk {index} of fill {} is gone", self.fill))
            })?;
        let start = u64::from(index) * self.chunk_size;
        let expected = (self.len - start).min(self.chunk_size);
        if data.len() as u64 != expected {
            // Written by something that chunks differently: offsets cannot be computed.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("chunk {index} of fill {} has an unexpected size", self.fill),
            ));
        }
        self.current = Some((index, data.clone()));
        Ok(data)
    }
}

impl Read for FillReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let index = u32::try_from(self.pos / self.chunk_size)
            .map_err(|_| io::Error::other("offset beyond the last chunk"))?;
        let data = self.chunk(index)?;
        let offset = (self.pos % self.chunk_size) as usize;
        let available = &data[offset..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for FillReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        let target = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.pos = target;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::storage::{Commit, MemoryStore};

    #[test]
    fn reads_and_seeks_across_chunks() {
        let store: Arc<dyn ArtifactStore> = Arc::new(MemoryStore::new());
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let fill = store.begin_fill("k").unwrap();
        for (index, chunk) in data.chunks(64).enumerate() {
            store.write_chunk(fill, index as u32, chunk).unwrap();
        }
        let mut reader = FillReader::new(store.clone(), fill, data.len() as u64, 64);
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        assert_eq!(all, data);

        reader.seek(SeekFrom::End(-10)).unwrap();
        let mut tail = Vec::new();
        reader.read_to_end(&mut tail).unwrap();
        assert_eq!(tail, &data[990..]);
        reader.seek(SeekFrom::Start(60)).unwrap();
        let mut across = [0u8; 10];
        reader.read_exact(&mut across).unwrap();
        assert_eq!(across, data[60..70]);

        let commit = Commit {
            len: data.len() as u64,
            sha256: Sha256::digest(&data).into(),
            headers: Vec::new(),
        };
        store.commit_fill("k", fill, commit).unwrap();
        let mut wrong = FillReader::new(store, fill, data.len() as u64, 100);
        assert!(wrong.read_to_end(&mut Vec::new()).is_err());
    }
}
