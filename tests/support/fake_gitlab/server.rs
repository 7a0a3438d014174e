//! Serving connections (HTTP/1.1 and h2c), and what happens around every API request: the
//! request log, being down, scripted faults, routing, and GitLab's response middleware.

use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, IF_NONE_MATCH};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::auth::Call;
use super::reply::Reply;
use super::route::{self, Query, Route};
use super::{go, lock, packages, rubygems, Fault, Shared};

pub(super) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// What a handler returns to make hyper drop the connection (or, over h2, reset the
/// stream) without answering.
#[derive(Debug)]
pub(super) struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dropped by the fake GitLab")
    }
}

impl std::error::Error for Dropped {}

pub(super) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Accepts connections until the returned task is aborted, which also aborts every open
/// connection. A connection accepted while `refuse()` is true is closed at once.
pub(super) fn serve<H, F>(
    listener: TcpListener,
    refuse: impl Fn() -> bool + Send + 'static,
    handler: H,
) -> JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Dropped>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors or similar: the client sees a refused
                    // connection; try again shortly rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            // Forget finished connections so a long benchmark does not accumulate them.
            while connections.try_join_next().is_some() {}
            if refuse() {
                continue;
            }
            // Small responses should not wait for Nagle's algorithm.
            let _ = stream.set_nodelay(true);
            let service = service_fn(handler.clone());
            connections.spawn(async move {
                // An error here ends this connection only: the client went away, or a
                // handler or fault dropped it on purpose.
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Every API request: logged first (faulted ones too), then faults, then GitLab.
pub(super) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Dropped> {
    if shared.down.load(Ordering::SeqCst) {
        return Err(Dropped);
    }
    shared.record(&request);
    let fault = shared.fault_for(request.uri().path());
    match &fault {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(*code).expect("checked by set_fault");
            let response = Response::builder()
                .status(status)
                .header(CONTENT_TYPE, "text/plain")
                .body(full(format!("fault injected by the fake GitLab: {code}")))
                .expect("a valid response");
            return Ok(response);
        }
        Some(Fault::Hang) => {
            shared.until_shutdown().await;
            return Err(Dropped);
        }
        Some(Fault::Hold(semaphore)) => {
            tokio::select! {
                permit = semaphore.acquire() => {
                    // Taken for good: each permit a test adds releases one request. A
                    // closed semaphore releases everyone.
                    if let Ok(permit) = permit {
                        permit.forget();
                    }
                }
                () = shared.until_shutdown() => return Err(Dropped),
            }
        }
        _ => {}
    }
    let response = respond(&shared, request).await;
    Ok(deliver(response, fault.as_ref()))
}

async fn respond(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Bytes> {
    let (parts, body) = request.into_parts();
    let era = *lock(&shared.era);
    let reply = match route::parse(&parts.method, parts.uri.path(), era) {
        Err(_) => Reply::malformed("a path parameter is not valid UTF-8"),
        Ok(None) => Reply::route_not_found(),
        Ok(Some(route)) => match Query::parse(parts.uri.query()) {
            Err(_) => Reply::malformed("the query string is not valid UTF-8"),
            Ok(query) => {
                let call = Call {
                    method: &parts.method,
                    headers: &parts.headers,
                    query: &query,
                };
                match route {
                    Route::Go {
                        project,
                        module,
                        endpoint,
                    } => go::answer(&shared.instance(), &call, &project, &module, &endpoint),
                    Route::RubyGems { project, endpoint } => {
                        rubygems::answer(shared, era, &call, &project, endpoint, body).await
                    }
                    Route::Packages { project } => {
                        packages::answer(&shared.instance(), &call, &project)
                    }
                }
            }
        },
    };
    reply.finish(&parts.method, parts.headers.get(IF_NONE_MATCH))
}

/// Sends the response as the fault (if any) says.
fn deliver(response: Response<Bytes>, fault: Option<&Fault>) -> Response<Body> {
    let (mut parts, bytes) = response.into_parts();
    let body = match fault {
        Some(Fault::ResetMidBody) => {
            let half = bytes.slice(..bytes.len() / 2);
            let reset = io::Error::new(io::ErrorKind::ConnectionReset, "fault: reset mid-body");
            paced(Duration::ZERO, vec![Ok(Frame::data(half)), Err(reset)])
        }
        Some(Fault::StallMidBody) => {
            // Half the body with its real length declared, then silence until shutdown: a
            // transfer caught in the middle, for crash and shutdown tests.
            let half: Result<Frame<Bytes>, io::Error> =
                Ok(Frame::data(bytes.slice(..bytes.len() / 2)));
            let stall = stream::once(std::future::pending());
            StreamBody::new(stream::StreamExt::chain(stream::iter([half]), stall)).boxed_unsync()
        }
        Some(Fault::WrongContentLength) => {
            // A streamed body has no length of its own, so hyper trusts the header, and
            // closes the connection when the body ends short of it.
            let declared = bytes.len() + 100;
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(declared));
            paced(Duration::ZERO, vec![Ok(Frame::data(bytes))])
        }
        Some(Fault::SlowBody(delay)) => {
            const PIECE: usize = 256;
            let pieces = (0..bytes.len())
                .step_by(PIECE)
                .map(|start| {
                    Ok(Frame::data(
                        bytes.slice(start..bytes.len().min(start + PIECE)),
                    ))
                })
                .collect();
            paced(*delay, pieces)
        }
        _ => full(bytes),
    };
    Response::from_parts(parts, body)
}

/// Streams `frames`, the first after `delay`. Before each frame, and before the end, the
/// stream pauses once so that hyper writes out what it holds: a fault's error or early end
/// then comes after the bytes it truncates instead of discarding them from hyper's buffer,
/// and slow pieces leave one by one.
fn paced(delay: Duration, frames: Vec<Result<Frame<Bytes>, io::Error>>) -> Body {
    let body = stream::unfold(
        (delay, frames.into_iter()),
        |(delay, mut frames)| async move {
            tokio::time::sleep(delay).await;
            tokio::task::yield_now().await;
            frames.next().map(|frame| (frame, (Duration::ZERO, frames)))
        },
    );
    StreamBody::new(body).boxed_unsync()
}

impl Shared {
    fn record(&self, request: &Request<Incoming>) {
        let uri = request.uri();
        let key = uri
            .path_and_query()
            .map_or_else(|| uri.to_string(), |pq| pq.as_str().to_owned());
        let mut log = lock(&self.log);
        *log.hits.entry(key).or_default() += 1;
        log.last_headers
            .insert(uri.path().to_owned(), request.headers().clone());
    }

    /// The fault of the longest prefix that `path` starts with.
    fn fault_for(&self, path: &str) -> Option<Fault> {
        lock(&self.faults)
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, fault)| fault.clone())
    }

    /// Resolves when the fake shuts down (or is dropped).
    async fn until_shutdown(&self) {
        let mut signal = self.shutdown.clone();
        // An error means the sender is gone, which is a shutdown as well.
        let _ = signal.wait_for(|stopped| *stopped).await;
    }
}
