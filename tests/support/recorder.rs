//! A recording relay to put between the proxy and the fake GitLab: it forwards every
//! request as it is (method, path, query, headers, streamed body) and notes method, path
//! and query, and status, so a test can list exactly what went upstream, which the fake's
//! per-path counters cannot enumerate.

use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// One request relayed upstream and the status that came back (`0`: no answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub method: String,
    /// Path and query as sent.
    pub path_and_query: String,
    pub status: u16,
}

impl fmt::Display for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {}",
            self.method, self.path_and_query, self.status
        )
    }
}

/// A running relay on `127.0.0.1:0`; dropping it stops it.
pub struct Recorder {
    url: String,
    log: Arc<Mutex<Vec<Exchange>>>,
    task: JoinHandle<()>,
}

impl Recorder {
    /// Relays to `upstream` (`http://host:port`, no path).
    pub async fn start(upstream: &str) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the recorder");
        let url = format!(
            "http://{}",
            listener
                .local_addr()
                .expect("a bound listener has an address")
        );
        let log: Arc<Mutex<Vec<Exchange>>> = Arc::default();
        let upstream = upstream.trim_end_matches('/').to_owned();
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build_http();
        let task = tokio::spawn({
            let log = Arc::clone(&log);
            async move {
                let mut connections = JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    while connections.try_join_next().is_some() {}
                    let (log, client, upstream) =
                        (Arc::clone(&log), client.clone(), upstream.clone());
                    let service = service_fn(move |request| {
                        relay(Arc::clone(&log), client.clone(), upstream.clone(), request)
                    });
                    connections.spawn(async move {
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        Recorder { url, log, task }
    }

    /// The base URL to configure as the proxy's upstream.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// What was relayed so far, oldest first, leaving the log empty.
    pub fn take(&self) -> Vec<Exchange> {
        std::mem::take(&mut *lock(&self.log))
    }

    pub fn snapshot(&self) -> Vec<Exchange> {
        lock(&self.log).clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    log: Arc<Mutex<Vec<Exchange>>>,
    client: Client<HttpConnector, Incoming>,
    upstream: String,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = request.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    let method = parts.method.to_string();
    let uri = format!("{upstream}{path_and_query}");
    parts.uri = match uri.parse() {
        Ok(uri) => uri,
        Err(e) => return Ok(failure(&log, method, path_and_query, e.to_string())),
    };
    parts.headers.remove(http::header::HOST);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            lock(&log).push(Exchange {
                method,
                path_and_query,
                status: response.status().as_u16(),
            });
            let (parts, body) = response.into_parts();
            Ok(Response::from_parts(
                parts,
                body.map_err(|e| Box::new(e) as _).boxed_unsync(),
            ))
        }
        Err(e) => Ok(failure(&log, method, path_and_query, e.to_string())),
    }
}

fn failure(
    log: &Mutex<Vec<Exchange>>,
    method: String,
    path_and_query: String,
    error: String,
) -> Response<Body> {
    lock(log).push(Exchange {
        method,
        path_and_query,
        status: 0,
    });
    let mut response = Response::new(
        Full::new(Bytes::from(format!("recorder: {error}")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
