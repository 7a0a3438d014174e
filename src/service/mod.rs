//! The request flow: Endpoint → dispatch by cache class → response with `x-cache`, and one
//! access-log event per request. Each class of route has a file of its own.

mod artifact;
mod authorize;
mod dependencies;
mod gems;
mod held_gems;
mod metadata;
mod offline;
mod operations;
mod push;
mod recheck;
mod relay;
mod upload;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::auth::{Caller, DecisionKey};
use crate::body::{self, Body};
use crate::cache::CacheOutcome;
use crate::credentials;
use crate::error::Error;
use crate::route::{CacheClass, Endpoint, PackageRoute};
use crate::state::AppState;
use crate::telemetry::{AccessLog, LoggedBody};
use crate::upstream::forward_headers;

/// A response and how it came to be.
pub struct Handled {
    pub response: Response<Body>,
    pub outcome: CacheOutcome,
    /// Time GitLab took to answer with headers, when GitLab was asked.
    pub upstream: Option<Duration>,
}

impl Handled {
    pub(super) fn new(
        response: Response<Body>,
        outcome: CacheOutcome,
        upstream: Option<Duration>,
    ) -> Handled {
        Handled {
            response,
            outcome,
            upstream,
        }
    }
}

/// Serves one request. Never fails: every error becomes its response here.
pub async fn handle(
    state: Arc<AppState>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let endpoint = Endpoint::parse(&method, request.uri());
    let (route_name, path) = match &endpoint {
        Ok(Endpoint::Package(route)) => (route.name(), route.path().to_owned()),
        Ok(Endpoint::Health) => ("healthz", request.uri().path().to_owned()),
        Ok(Endpoint::Ready) => ("readyz", request.uri().path().to_owned()),
        Ok(Endpoint::Metrics) => ("metrics", request.uri().path().to_owned()),
        Ok(Endpoint::Admin) => ("admin", request.uri().path().to_owned()),
        // The path of an unrouted request is not logged in full: it may be anything.
        Err(_) => ("unrouted", truncate(request.uri().path(), 256)),
    };
    let result = match endpoint {
        Ok(Endpoint::Package(route)) => package(&state, route, request, peer.ip()).await,
        Ok(Endpoint::Health) => Ok(plain(StatusCode::OK, "ok\n".to_owned())),
        Ok(Endpoint::Ready) => Ok(operations::ready(&state).await),
        Ok(Endpoint::Metrics) => Ok(operations::metrics(&state).await),
        Ok(Endpoint::Admin) => Ok(Handled::new(
            Box::pin(crate::admin::handle(&state, request, peer.ip())).await,
            CacheOutcome::Local,
            None,
        )),
        Err(e) => Err(Error::Route(e)),
    };
    let handled = result.unwrap_or_else(|e| {
        let outcome = match e {
            Error::Route(_) | Error::PayloadTooLarge | Error::Unconfirmed(_) => CacheOutcome::Local,
            _ => CacheOutcome::Miss,
        };
        if e.status().is_server_error() {
            tracing::warn!(route = route_name, %path, error = %e, "request failed");
        }
        Handled::new(e.to_response(), outcome, None)
    });
    let Handled {
        response,
        outcome,
        upstream,
    } = handled;
    let (mut parts, body) = response.into_parts();
    parts
        .headers
        .insert(X_CACHE, HeaderValue::from_static(outcome.as_str()));
    let log = AccessLog {
        metrics: state.metrics.clone(),
        method,
        route: route_name,
        path,
        status: parts.status.as_u16(),
        outcome,
        upstream,
        started,
        expected: parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
    };
    Response::from_parts(parts, body::boxed(LoggedBody::new(body, log)))
}

/// Every answer's cache outcome (a name built once: inserting by `&str` parses it each time).
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

pub(super) fn plain(status: StatusCode, text: String) -> Handled {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Handled::new(response, CacheOutcome::Local, None)
}

async fn package(
    state: &Arc<AppState>,
    route: PackageRoute,
    mut request: Request<Incoming>,
    client: IpAddr,
) -> Result<Handled, Error> {
    let caller = Caller::from_request(&state.key, request.headers(), request.uri().query());
    // After the fingerprint: translation changes what GitLab reads, not who is calling. An
    // upstream proxy gets the credentials as sent: it translates them itself, and must know
    // the caller by what the client presented (a Basic header and the raw token it carries
    // are different callers until GitLab has accepted each).
    if !state.config.upstream.chained {
        credentials::translate(route.api(), request.headers_mut());
    }
    let decision = DecisionKey {
        caller: caller.fingerprint,
        project: Arc::from(route.project.as_raw()),
        api: route.api(),
    };
    if let Some(policy) = &state.offline {
        return offline::package(state, policy, &route, &decision, request).await;
    }
    if gems::has_fallback(&route) {
        return gems::with_fallback(state, &route, &decision, request, client).await;
    }
    match route.cache_class() {
        CacheClass::Synthesized => {
            gems::synthesized(state, &route, &decision, request, client).await
        }
        CacheClass::Metadata if dependencies::is_batch(&route) => {
            dependencies::batch(state, &route, &decision, request, client).await
        }
        CacheClass::Metadata => metadata::metadata(state, &route, &decision, request, client).await,
        CacheClass::Artifact => {
            // A sampled hit of a Go `.info`/`.mod` is asked of GitLab again in the background.
            let recheck = state
                .integrity
                .sample_recheck(&route)
                .then(|| forward_headers(request.headers(), client, true));
            let handled = artifact::artifact(state, &route, &decision, request, client).await?;
            if handled.outcome == CacheOutcome::Hit {
                state.metrics.artifact_hit(&route.content_key());
                if let Some(headers) = recheck {
                    recheck::spawn(state, &route, headers);
                }
            }
            Ok(handled)
        }
        CacheClass::PassThrough => relay::relay_route(state, &route, None, request, client).await,
        CacheClass::Upload => Box::pin(upload::upload(state, &route, request, client)).await,
    }
}
