//! Reading one stored chunk piece by piece into the caller's buffer, from the page cache
//! without blocking where the OS allows it, with the chunk's CRC checked as its last piece
//! is read.
//!
//! A whole chunk is 256 KiB; a reader that hands hyper pieces of a socket-sized buffer keeps
//! per-connection memory at a few such buffers whatever the chunk size. Every byte read from
//! disk goes through the CRC unless the chunk is trusted (it passed its CRC earlier in this
//! process, see `storage::verified`): a damaged chunk fails at its end, before the reader
//! reports it complete, so a response carrying it never completes.

use std::fs::File;
use std::io;

use bytes::Bytes;

use super::{FillId, StoreError};

/// One chunk opened for reading.
pub struct ChunkReader {
    source: Source,
    /// Bytes of chunk data read so far.
    pos: u64,
    len: u64,
    label: (FillId, u32),
    /// Passed its CRC before: read without checking it again.
    trusted: bool,
    /// The CRC of the whole chunk was computed here and matched.
    crc_ok: bool,
}

enum Source {
    /// A chunk file: data starts at `offset`; its CRC is checked as it is read.
    File {
        file: File,
        offset: u64,
        expected_crc: u32,
        crc: crc32fast::Hasher,
    },
    /// Data already checked by whoever produced it.
    Checked(Bytes),
}

/// What a read that must not block found.
pub enum Cached {
    /// This many bytes were read.
    Read(usize),
    /// The data is not in the page cache (or the OS cannot tell): read it with
    /// [`ChunkReader::read`] on a thread that may block.
    WouldBlock,
}

impl ChunkReader {
    /// A reader over a chunk file whose data (`len` bytes with CRC `expected_crc`) starts at
    /// `offset`.
    pub fn file(
        file: File,
        offset: u64,
        len: u64,
        expected_crc: u32,
        fill: FillId,
        index: u32,
    ) -> ChunkReader {
        ChunkReader {
            source: Source::File {
                file,
                offset,
                expected_crc,
                crc: crc32fast::Hasher::new(),
            },
            pos: 0,
            len,
            label: (fill, index),
            trusted: false,
            crc_ok: false,
        }
    }

    /// A reader over chunk data already checked in memory.
    pub fn checked(data: Bytes, fill: FillId, index: u32) -> ChunkReader {
        ChunkReader {
            pos: 0,
            len: data.len() as u64,
            source: Source::Checked(data),
            label: (fill, index),
            trusted: false,
            crc_ok: false,
        }
    }

    /// Reads from now on skip the CRC: the caller knows this chunk passed it before.
    pub fn trust(&mut self) {
        self.trusted = true;
    }

    /// Whether this reader computed the chunk's CRC over every byte and found it matching.
    pub fn crc_confirmed(&self) -> bool {
        self.crc_ok
    }

    /// The chunk file and the offset of the chunk's data in it (`None` for data in memory).
    pub fn file_data(&self) -> Option<(&File, u64)> {
        match &self.source {
            Source::File { file, offset, .. } => Some((file, *offset)),
            Source::Checked(_) => None,
        }
    }

    /// Bytes of chunk data in total.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    /// Fills the front of `buf` (up to its length) with the next piece, blocking on the disk
    /// if need be. `Ok(0)` at the end; `Corrupt` if the data read does not match its CRC.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, StoreError> {
        self.read_with(buf, false).map(|read| match read {
            Cached::Read(n) => n,
            // Only a non-blocking read reports this.
            Cached::WouldBlock => 0,
        })
    }

    /// Like [`ChunkReader::read`], but only from the page cache: never waits for the disk.
    pub fn read_cached(&mut self, buf: &mut [u8]) -> Result<Cached, StoreError> {
        self.read_with(buf, true)
    }

    /// Reads the rest of the chunk to check its CRC, without keeping the bytes; then reads
    /// start from the beginning again, trusting what was just checked.
    pub fn verify(&mut self) -> Result<(), StoreError> {
        let mut scratch = [0u8; 16 * 1024];
        while self.read(&mut scratch)? > 0 {}
        self.pos = 0;
        if let Source::File { crc, .. } = &mut self.source {
            *crc = crc32fast::Hasher::new();
        }
        self.trusted = true;
        Ok(())
    }

    fn read_with(&mut self, buf: &mut [u8], cached_only: bool) -> Result<Cached, StoreError> {
        let want = usize::try_from(self.remaining())
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let label = self.label;
        let n = match &mut self.source {
            Source::Checked(data) => {
                let start = usize::try_from(self.pos).unwrap_or(usize::MAX);
                buf[..want].copy_from_slice(&data[start..start + want]);
                want
            }
            Source::File {
                file,
                offset,
                expected_crc,
                crc,
            } => {
                if want == 0 {
                    return Ok(Cached::Read(0));
                }
                let at = *offset + self.pos;
                let read = if cached_only {
                    match read_at_nowait(file, &mut buf[..want], at) {
                        Some(read) => read,
                        None => return Ok(Cached::WouldBlock),
                    }
                } else {
                    read_at(file, &mut buf[..want], at)
                };
                let n = read.map_err(StoreError::from)?;
                if n == 0 {
                    return Err(corrupt(
                        label,
                        "chunk file shorter than its data".to_owned(),
                    ));
                }
                if !self.trusted {
                    crc.update(&buf[..n]);
                    if self.pos + n as u64 == self.len {
                        let computed = crc.clone().finalize();
                        if computed != *expected_crc {
                            return Err(corrupt(
                                label,
                                format!(
                                    "crc32 mismatch (stored {expected_crc:08x}, computed {computed:08x})"
                                ),
                            ));
                        }
                        self.crc_ok = true;
                    }
                }
                n
            }
        };
        self.pos += n as u64;
        Ok(Cached::Read(n))
    }
}

fn corrupt((fill, index): (FillId, u32), detail: String) -> StoreError {
    StoreError::Corrupt {
        key_or_fill: format!("fill {fill} chunk {index}"),
        detail,
    }
}

#[cfg(unix)]
pub(super) fn read_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, at)
}

#[cfg(not(unix))]
pub(super) fn read_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, at)
}

/// `preadv2(RWF_NOWAIT)`: the read happens only if the data is in the page cache. `None`
/// when it is not, or when the kernel or filesystem cannot promise not to block.
#[cfg(target_os = "linux")]
pub(super) fn read_at_nowait(file: &File, buf: &mut [u8], at: u64) -> Option<io::Result<usize>> {
    use rustix::io::{preadv2, Errno, ReadWriteFlags};
    match preadv2(
        file,
        &mut [io::IoSliceMut::new(buf)],
        at,
        ReadWriteFlags::NOWAIT,
    ) {
        // Zero from a non-blocking read may also mean "nothing cached at this offset".
        Ok(0) => None,
        Ok(n) => Some(Ok(n)),
        Err(Errno::AGAIN | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL) => None,
        Err(e) => Some(Err(e.into())),
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn read_at_nowait(_: &File, _: &mut [u8], _: u64) -> Option<io::Result<usize>> {
    None
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn chunk_file(data: &[u8], crc: u32) -> (tempfile::NamedTempFile, ChunkReader) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"hdr").unwrap();
        file.write_all(data).unwrap();
        file.flush().unwrap();
        let reader = ChunkReader::file(
            file.reopen().unwrap(),
            3,
            data.len() as u64,
            crc,
            FillId(1),
            0,
        );
        (file, reader)
    }

    fn read_all(reader: &mut ChunkReader, piece: usize) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        let mut buf = vec![0; piece];
        loop {
            let n = match reader.read_cached(&mut buf)? {
                Cached::Read(n) => n,
                Cached::WouldBlock => reader.read(&mut buf)?,
            };
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn reads_in_pieces_and_checks_the_crc_at_the_end() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (_file, mut reader) = chunk_file(&data, crc32fast::hash(&data));
        assert_eq!(read_all(&mut reader, 4096).unwrap(), data);

        let (_file, mut damaged) = chunk_file(&data, crc32fast::hash(&data) ^ 1);
        let err = read_all(&mut damaged, 4096).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { detail, .. } if detail.contains("crc32")),
            "{err}"
        );
    }

    #[test]
    fn verify_checks_then_rewinds() {
        let data = b"verified once, then served".to_vec();
        let (_file, mut reader) = chunk_file(&data, crc32fast::hash(&data));
        reader.verify().unwrap();
        assert_eq!(read_all(&mut reader, 5).unwrap(), data);

        let (_file, mut damaged) = chunk_file(&data, 0);
        assert!(matches!(damaged.verify(), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn a_trusted_chunk_is_read_without_its_crc() {
        let data = b"checked earlier in this process".to_vec();
        let (_file, mut checked) = chunk_file(&data, crc32fast::hash(&data));
        assert_eq!(read_all(&mut checked, 7).unwrap(), data);
        assert!(checked.crc_confirmed());
        // A wrong stored CRC goes unnoticed once trusted: trust is only given to chunks
        // that passed before.
        let (_file, mut trusted) = chunk_file(&data, 0);
        trusted.trust();
        assert_eq!(read_all(&mut trusted, 7).unwrap(), data);
        assert!(!trusted.crc_confirmed());
    }

    #[test]
    fn a_truncated_file_is_corrupt_not_short() {
        let data = b"0123456789".to_vec();
        let (_file, mut reader) = chunk_file(&data, crc32fast::hash(&data));
        // Claims more data than the file holds.
        reader.len = 20;
        assert!(matches!(
            read_all(&mut reader, 64),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn checked_data_reads_back() {
        let mut reader = ChunkReader::checked(Bytes::from_static(b"abcdef"), FillId(2), 3);
        assert_eq!(read_all(&mut reader, 4).unwrap(), b"abcdef");
        assert_eq!(reader.remaining(), 0);
    }
}
