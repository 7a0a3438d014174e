//! The plain-TCP socket under hyper: writes file-backed bytes (see `regions`) with
//! `sendfile(2)` from their file, and everything else as it is.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::regions::{FileRegions, FileSlice, Front};

/// An accepted connection whose writes of registered regions go through `sendfile`.
pub struct SendfileStream {
    stream: TcpStream,
    regions: FileRegions,
}

impl SendfileStream {
    pub fn new(stream: TcpStream, regions: FileRegions) -> SendfileStream {
        SendfileStream { stream, regions }
    }

    /// Writes the front of `bufs`: a file-backed buffer alone (with `sendfile`), or the plain
    /// buffers before the first file-backed one (with `writev`).
    fn write_front(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.regions.front(bufs) {
            Front::Plain(n) => Pin::new(&mut self.stream).poll_write_vectored(cx, &bufs[..n]),
            Front::File(slice) => self.send_file(cx, slice),
        }
    }

    #[cfg(target_os = "linux")]
    fn send_file(&mut self, cx: &mut Context<'_>, slice: FileSlice) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            let sent = self.stream.try_io(tokio::io::Interest::WRITABLE, || {
                let mut offset = slice.offset;
                rustix::fs::sendfile(
                    &self.stream,
                    slice.chunk.file(),
                    Some(&mut offset),
                    slice.len,
                )
                .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    // The file ended before the region did: it was truncated after mapping.
                    // The mapping is never read in its place (that would fault), the region's
                    // owner is told, and the response fails.
                    (slice.on_short)();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "chunk file shorter than when it was mapped",
                    )));
                }
                Ok(n) => {
                    self.regions.metrics().sendfile_bytes(n as u64);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn send_file(&mut self, _: &mut Context<'_>, _: FileSlice) -> Poll<io::Result<usize>> {
        // Nothing is mapped where sendfile is not used (see `MappedChunk::map`).
        Poll::Ready(Err(io::Error::other("sendfile is not supported here")))
    }
}

impl AsyncRead for SendfileStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_front(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_front(cx, bufs)
    }

    /// Vectored, so that hyper queues body `Bytes` as they are instead of copying them into
    /// its own buffer (which would read mapped bytes).
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
