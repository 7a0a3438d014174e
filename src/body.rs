//! HTTP body plumbing: the proxy's boxed body type, an idle timeout for upstream bodies,
//! and bounded collection of small bodies.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the proxy sends or forwards.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Why reading an upstream body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("GitLab sent nothing for {0:?} in the middle of a response body")]
    Idle(Duration),
    #[error("reading the response body from GitLab failed: {0}")]
    Upstream(#[source] BoxError),
}

pin_project_lite::pin_project! {
    /// Fails a body that stays silent longer than `idle` between two frames, so a stalled
    /// GitLab cannot hold a fill (or a client) forever.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        // Boxed so that the body stays `Unpin` when `B` is.
        sleep: Pin<Box<Sleep>>,
        idle: Duration,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            sleep: Box::pin(tokio::time::sleep(idle)),
            idle,
        }
    }
}

impl<B> http_body::Body for IdleTimeout<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                let idle = *this.idle;
                this.sleep.as_mut().reset(Instant::now() + idle);
                Poll::Ready(frame.map(|f| f.map_err(|e| BodyError::Upstream(e.into()))))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Idle(*this.idle)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The outcome of reading a body with a size limit.
pub enum Collected<B> {
    Complete(Bytes),
    /// The body is larger than the limit: what was read so far, and the rest, unread.
    TooLarge {
        prefix: Bytes,
        rest: B,
    },
}

/// Reads `body` whole if it is at most `limit` bytes; otherwise hands back what was read
/// and the remainder so the caller can still stream it on.
pub async fn collect_limited<B>(mut body: B, limit: usize) -> Result<Collected<B>, B::Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    if body.size_hint().lower() > limit as u64 {
        return Ok(Collected::TooLarge {
            prefix: Bytes::new(),
            rest: body,
        });
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                return Ok(Collected::TooLarge {
                    prefix: buf.freeze(),
                    rest: body,
                });
            }
        }
    }
    Ok(Collected::Complete(buf.freeze()))
}

pin_project_lite::pin_project! {
    /// Sends `prefix` first, then the rest of `inner`: the tail of a body that
    /// [`collect_limited`] found too large to keep.
    pub struct Prefixed<B> {
        prefix: Option<Bytes>,
        #[pin]
        inner: B,
    }
}

impl<B> Prefixed<B> {
    pub fn new(prefix: Bytes, inner: B) -> Self {
        Prefixed {
            prefix: (!prefix.is_empty()).then_some(prefix),
            inner,
        }
    }
}

impl<B> http_body::Body for Prefixed<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        this.inner.poll_frame(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::StreamBody;

    fn chunks(
        parts: &[&'static str],
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Unpin> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(stream::iter(frames))
    }

    #[tokio::test]
    async fn collects_small_bodies_and_hands_back_large_ones() {
        match collect_limited(chunks(&["ab", "cd"]), 4).await.unwrap() {
            Collected::Complete(b) => assert_eq!(&b[..], b"abcd"),
            Collected::TooLarge { .. } => panic!("4 bytes fit in 4"),
        }
        match collect_limited(chunks(&["ab", "cd", "ef"]), 3)
            .await
            .unwrap()
        {
            Collected::Complete(_) => panic!("6 bytes do not fit in 3"),
            Collected::TooLarge { prefix, rest } => {
                let tail = Prefixed::new(prefix, rest)
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes();
                assert_eq!(&tail[..], b"abcdef", "nothing lost");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_bodies_fail() {
        let silent = StreamBody::new(stream::pending::<Result<Frame<Bytes>, BoxError>>());
        let mut body = IdleTimeout::new(silent, Duration::from_secs(5));
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(err, BodyError::Idle(_)), "{err}");
    }
}
