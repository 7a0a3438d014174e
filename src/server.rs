//! The listener: accepts TCP (and TLS) connections, serves HTTP/1.1 and HTTP/2 with hyper's
//! auto builder, and drains in-flight requests within a bound when asked to stop. Plain TCP
//! connections carry a registry of file regions whose bytes go out with `sendfile(2)`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::sendfile::{FileRegions, SendfileStream};
use crate::service;
use crate::state::AppState;

/// Serves on `listener` until `shutdown` completes, then drains for at most
/// `server.shutdown_grace`.
pub async fn run(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    let maintenance = tokio::spawn(maintain(state.clone()));
    let stopping = serve_listener(listener, state.clone(), shutdown).await;
    finish(&state, stopping, maintenance).await;
}

/// Accepts and serves on `listener` (on the runtime this runs on) until `stop` completes;
/// then stops accepting and drains those connections for at most `server.shutdown_grace`.
/// Returns when it stopped accepting.
pub(crate) async fn serve_listener(
    listener: TcpListener,
    state: Arc<AppState>,
    stop: impl Future<Output = ()>,
) -> tokio::time::Instant {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.server.header_read_timeout)
        // hyper stops asking a body for more once this much waits for the socket: with
        // artifact pieces of this size, a slow client holds at most two (see cache::reader).
        // It also bounds a request head, which 64 KiB leaves ample room for.
        .max_buf_size(crate::cache::reader::PIECE);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                // Reap finished connection tasks so the set stays the size of what is open.
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    // Plain TCP: verified chunk data goes out with sendfile (see crate::sendfile).
                    let regions = FileRegions::new(state.metrics.clone());
                    let sends_files = state.tls.is_none();
                    let service = service_fn({
                        let state = state.clone();
                        let regions = regions.clone();
                        move |mut request: Request<Incoming>| {
                            let state = state.clone();
                            if sends_files {
                                request.extensions_mut().insert(regions.clone());
                            }
                            async move { Ok::<_, Infallible>(service::handle(state, request, peer).await) }
                        }
                    });
                    let served = match &state.tls {
                        Some(acceptor) => {
                            let handshake = tokio::time::timeout(
                                state.config.server.header_read_timeout,
                                acceptor.accept(stream),
                            );
                            match handshake.await {
                                Ok(Ok(tls)) => {
                                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                                    watcher.watch(conn.into_owned()).await
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            }
                        }
                        None => {
                            let stream = SendfileStream::new(stream, regions);
                            let conn = builder.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(conn.into_owned()).await
                        }
                    };
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut stop => break,
        }
    }
    drop(listener);
    let grace = state.config.server.shutdown_grace;
    let stopping = tokio::time::Instant::now();
    tracing::info!(
        ?grace,
        "shutting down: no new connections, draining requests in flight"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over, cutting remaining connections"),
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    stopping
}

/// After every listener drained (from `stopping` on): lets fills finish within what is left
/// of the grace, stops `maintenance`, and flushes the store.
pub(crate) async fn finish(
    state: &AppState,
    stopping: tokio::time::Instant,
    maintenance: JoinHandle<()>,
) {
    let grace = state.config.server.shutdown_grace;
    // Fills may outlive their callers' connections; what is left of the grace lets them
    // commit, and the rest is stopped before it can make anything visible.
    state
        .fills
        .drain(grace.saturating_sub(stopping.elapsed()))
        .await;
    maintenance.abort();
    let _ = maintenance.await;
    if let Err(e) = state.fills.store().flush().await {
        tracing::warn!(error = %e, "flushing the store at shutdown failed");
    }
}

/// How often the store is flushed and checked against its budget.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(30);

/// Background upkeep: persists use times, deletes released chunks, evicts over budget
/// (including the free-space low-water mark, which other processes can move).
pub(crate) async fn maintain(state: Arc<AppState>) {
    let store = state.fills.store().clone();
    let policy = state.config.eviction_policy();
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = store.flush().await {
            tracing::warn!(error = %e, "store flush failed");
        }
        match store.evict(policy).await {
            Ok(report) if report.artifacts > 0 => {
                state.metrics.evicted(report.artifacts, report.bytes);
                tracing::info!(
                    artifacts = report.artifacts,
                    bytes = report.bytes,
                    "evicted"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "eviction failed"),
        }
    }
}

/// A proxy running in the background (tests, examples, benchmarks).
pub struct Running {
    pub addr: SocketAddr,
    scheme: &'static str,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Binds `state.config.listen` (port 0 picks a free port) and serves in a task.
    pub async fn start(state: Arc<AppState>) -> std::io::Result<Running> {
        let listener = TcpListener::bind(state.config.listen).await?;
        let addr = listener.local_addr()?;
        let scheme = if state.tls.is_some() { "https" } else { "http" };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(listener, state, async {
            let _ = stopped.await;
        }));
        Ok(Running {
            addr,
            scheme,
            stop: Some(stop),
            task,
        })
    }

    /// `http://127.0.0.1:PORT` (or https).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Stops accepting, drains, and waits for the server task to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}
