//! Logging: tracing-subscriber set up as text or JSON over the batched log queue, and the one
//! access-log event per request.

mod access_line;
mod queue;

use std::io::{IsTerminal, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body::{Frame, SizeHint};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use self::access_line::{AccessLines, TARGET as ACCESS_TARGET};
use self::queue::{LogQueue, QueueGuard};

use crate::cache::CacheOutcome;
use crate::config::{LogConfig, LogFormat};
use crate::metrics::Metrics;

/// Keeps the log writer thread running; dropping it writes out what is still queued. Hold
/// it for the life of the process.
pub struct LogGuard {
    _worker: QueueGuard,
    queue: LogQueue,
}

impl LogGuard {
    /// Lines dropped so far because the queue to the writer thread was full.
    pub fn dropped_lines(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let queue = self.queue.clone();
        move || queue.dropped()
    }
}

/// Installs the global subscriber, writing to standard output from a thread of its own
/// through a queue of `queue_lines` ([`queue`]): a consumer that stops reading (a full pipe,
/// a stuck collector) costs dropped lines, never a stalled request. Colours only on a
/// terminal. Access events are written by
/// [`AccessLines`], everything else by tracing-subscriber's formatter. Fails if the filter does
/// not parse.
pub fn init(config: &LogConfig) -> Result<LogGuard, String> {
    let filter = EnvFilter::try_new(&config.filter)
        .map_err(|e| format!("log filter {:?}: {e}", config.filter))?;
    let ansi = std::io::stdout().is_terminal();
    let (writer, worker) = LogQueue::start(stdout(), config.queue_lines)
        .map_err(|e| format!("starting the log writer thread: {e}"))?;
    let general = tracing_subscriber::fmt::layer()
        .with_target(true)
        .with_ansi(ansi)
        .with_writer(writer.clone());
    let general = match config.format {
        LogFormat::Text => general.boxed(),
        LogFormat::Json => general.json().flatten_event(true).boxed(),
    };
    let access = AccessLines::new(writer.clone(), config.format == LogFormat::Json);
    tracing_subscriber::registry()
        .with(filter)
        .with(general.with_filter(filter_fn(|meta| meta.target() != ACCESS_TARGET)))
        .with(access.with_filter(filter_fn(|meta| meta.target() == ACCESS_TARGET)))
        .try_init()
        .map_err(|e| format!("installing the logger: {e}"))?;
    Ok(LogGuard {
        _worker: worker,
        queue: writer,
    })
}

/// Standard output as a plain file, so that a batch of lines is one `write` (`Stdout` itself
/// writes at every newline).
fn stdout() -> Box<dyn Write + Send> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        if let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned() {
            return Box::new(std::fs::File::from(fd));
        }
    }
    Box::new(std::io::stdout())
}

/// What the access log says about one request. It never holds a query string or a header:
/// those are where credentials travel.
#[derive(Debug)]
pub struct AccessLog {
    pub metrics: Arc<Metrics>,
    pub method: Method,
    pub route: &'static str,
    pub path: String,
    pub status: u16,
    pub outcome: CacheOutcome,
    pub upstream: Option<Duration>,
    pub started: Instant,
    /// The response's `Content-Length`: hyper stops polling a body once that many bytes are
    /// out, so reaching it is what "complete" means for such bodies.
    pub expected: Option<u64>,
}

pin_project_lite::pin_project! {
    /// Counts the bytes of a response body and writes the access-log event when the body is
    /// finished or dropped, so `bytes` is what was really sent and `complete` tells a client
    /// that went away (or a fill that broke) from a full answer.
    pub struct LoggedBody<B> {
        #[pin]
        inner: B,
        log: Option<AccessLog>,
        bytes: u64,
        complete: bool,
    }

    impl<B> PinnedDrop for LoggedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(log) = this.log.take() {
                let complete = *this.complete || log.expected == Some(*this.bytes);
                emit(&log, *this.bytes, complete);
            }
        }
    }
}

impl<B: http_body::Body> LoggedBody<B> {
    pub fn new(inner: B, log: AccessLog) -> Self {
        LoggedBody {
            // An empty body that hyper never polls is complete from the start.
            complete: inner.is_end_stream(),
            inner,
            log: Some(log),
            bytes: 0,
        }
    }
}

impl<B> http_body::Body for LoggedBody<B>
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
        let mut inner = this.inner;
        let polled = inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
                // hyper does not poll a body that says it has ended (a whole answer in one
                // frame) again, so `None` never comes.
                if inner.is_end_stream() {
                    *this.complete = true;
                }
            }
            Poll::Ready(None) => *this.complete = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn emit(log: &AccessLog, bytes: u64, complete: bool) {
    log.metrics
        .request(log.route, log.status, log.outcome, bytes);
    let upstream_ms = log.upstream.map(|d| d.as_secs_f64() * 1000.0);
    tracing::info!(
        target: "gitlab_pkg_cache::access",
        method = log.method.as_str(),
        route = log.route,
        path = log.path.as_str(),
        status = log.status,
        cache = log.outcome.as_str(),
        upstream_ms,
        bytes,
        complete,
        duration_ms = log.started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
}
