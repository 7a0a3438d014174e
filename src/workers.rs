//! One runtime per core (nginx's model, `server.workers`): N threads, each running a
//! single-threaded tokio runtime with a listener of its own on the same address
//! (`SO_REUSEPORT`), accepting connections and serving them on that thread only.
//!
//! A request never hops between threads, so a hit needs no cross-thread wake-up. What a
//! request starts (fills, refreshes) runs on its worker's runtime, next to it; the store's
//! upkeep and the signal wait run on the main runtime. The kernel spreads new connections
//! over the listeners by a hash of their addresses, so a handful of clients may land
//! unevenly. Shutdown: every worker stops accepting and drains its connections within
//! `server.shutdown_grace`; then fills get what is left of the grace, with every worker
//! still running so that they can finish; then the workers stop and the store is flushed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{oneshot, watch};

use crate::server;
use crate::state::AppState;

/// Backlog of each listener (what `std` and tokio use for theirs).
const BACKLOG: i32 = 1024;

/// Binds `count` listeners to `addr` with `SO_REUSEPORT`. With port 0, the first picks the
/// port and the others join it.
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind_one(addr)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(bind_one(addr)?);
    }
    Ok(listeners)
}

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Serves on `listeners`, one worker thread each, until `shutdown` completes; then drains
/// as described in the module documentation. Runs on the main runtime.
pub async fn run(
    listeners: Vec<std::net::TcpListener>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let maintenance = tokio::spawn(server::maintain(state.clone()));
    let (stop, stop_rx) = watch::channel(false);
    let (exit, exit_rx) = watch::channel(false);
    let mut drained = Vec::new();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let (done, done_rx) = oneshot::channel();
        drained.push(done_rx);
        let worker = Worker {
            listener,
            state: state.clone(),
            stop: stop_rx.clone(),
            exit: exit_rx.clone(),
            done,
        };
        match std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || worker.run())
        {
            Ok(thread) => threads.push(thread),
            // Its `done` was dropped with it: the drain below does not wait for it.
            Err(e) => tracing::error!(worker = index, error = %e, "cannot start a worker thread"),
        }
    }
    drop((stop_rx, exit_rx));
    tracing::info!(
        workers = threads.len(),
        "serving with one runtime per worker"
    );
    shutdown.await;
    let stopping = tokio::time::Instant::now();
    let _ = stop.send(true);
    for done in drained {
        // An error only means that worker ended early; there is nothing left to wait for.
        let _ = done.await;
    }
    // The workers still run: fills started on them finish there.
    server::finish(&state, stopping, maintenance).await;
    let _ = exit.send(true);
    let joined = tokio::task::spawn_blocking(move || {
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    })
    .await;
    if let Err(e) = joined {
        tracing::error!(error = %e, "waiting for the worker threads failed");
    }
}

/// One worker thread's share: its listener and the signals it follows.
struct Worker {
    listener: std::net::TcpListener,
    state: Arc<AppState>,
    /// Becomes true when accepting must stop.
    stop: watch::Receiver<bool>,
    /// Becomes true when the runtime may end (fills drained).
    exit: watch::Receiver<bool>,
    /// Sent once this worker's connections are drained.
    done: oneshot::Sender<()>,
}

impl Worker {
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a worker runtime");
                return;
            }
        };
        let Worker {
            listener,
            state,
            stop,
            exit,
            done,
        } = self;
        runtime.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    server::serve_listener(listener, state, became_true(stop)).await;
                }
                Err(e) => tracing::error!(error = %e, "a worker cannot use its listener"),
            }
            let _ = done.send(());
            // Kept running until the fills started here were given their time.
            became_true(exit).await;
        });
    }
}

/// Completes once `flag` holds true, or its sender is gone.
async fn became_true(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_share_one_address() {
        let listeners = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        assert_ne!(addrs[0].port(), 0);
        assert!(addrs.iter().all(|a| *a == addrs[0]), "{addrs:?}");
    }
}
