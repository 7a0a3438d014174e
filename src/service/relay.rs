//! Talking to GitLab for the other handlers: one upstream GET, a pass-through relay, and
//! GitLab's answer streamed back as it arrives.

use std::net::IpAddr;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::Handled;
use crate::auth::DecisionKey;
use crate::body::{self, Body, BodyError};
use crate::cache::CacheOutcome;
use crate::error::Error;
use crate::route::PackageRoute;
use crate::state::AppState;
use crate::upstream::{forward_headers, UpstreamRequest, UpstreamResponse};

/// What GitLab said to a request whose answer may be cached.
pub(super) enum Fetched {
    /// An answer to pass on or keep (any status but a server error).
    Answer(UpstreamResponse, Duration),
    /// GitLab failed: unreachable, timed out, marked down, or a 5xx.
    Failed(Error),
}

pub(super) async fn fetch(state: &AppState, request: UpstreamRequest) -> Result<Fetched, Error> {
    match state.upstream.send(request).await {
        Ok((response, _)) if response.status().is_server_error() => {
            Ok(Fetched::Failed(Error::UpstreamStatus(response.status())))
        }
        Ok((response, took)) => Ok(Fetched::Answer(response, took)),
        Err(e) if e.is_upstream_failure() => Ok(Fetched::Failed(e)),
        Err(e) => Err(e),
    }
}

/// Forwards a read to GitLab as it came and streams the answer back.
pub(super) async fn relay_route(
    state: &AppState,
    route: &PackageRoute,
    decision: Option<&DecisionKey>,
    request: Request<Incoming>,
    client: IpAddr,
) -> Result<Handled, Error> {
    let upstream_request = UpstreamRequest {
        method: request.method().clone(),
        path_and_query: route.path_and_query(),
        headers: forward_headers(request.headers(), client, false),
        body: body::empty(),
        follow_redirects: true,
    };
    let (response, took) = state.upstream.send(upstream_request).await?;
    if let Some(decision) = decision {
        if response.status() == StatusCode::OK {
            state.gate.accept(decision.clone()).await;
        }
    }
    Ok(Handled::new(
        relay(response, false),
        CacheOutcome::Bypass,
        Some(took),
    ))
}

/// The headers a request would be forwarded to GitLab with, built the first time they are
/// needed: a hit that GitLab is not asked about never builds them.
pub(super) struct Forward<'a> {
    incoming: &'a http::HeaderMap,
    client: IpAddr,
    built: std::sync::OnceLock<http::HeaderMap>,
}

impl<'a> Forward<'a> {
    /// For a request whose answer may be cached (conditional headers are not forwarded).
    pub(super) fn new(incoming: &'a http::HeaderMap, client: IpAddr) -> Forward<'a> {
        Forward {
            incoming,
            client,
            built: std::sync::OnceLock::new(),
        }
    }

    pub(super) fn headers(&self) -> &http::HeaderMap {
        self.built
            .get_or_init(|| forward_headers(self.incoming, self.client, true))
    }

    pub(super) fn into_headers(self) -> http::HeaderMap {
        let (incoming, client) = (self.incoming, self.client);
        self.built
            .into_inner()
            .unwrap_or_else(|| forward_headers(incoming, client, true))
    }
}

pub(super) fn get(
    path_and_query: String,
    headers: http::HeaderMap,
    follow_redirects: bool,
) -> UpstreamRequest {
    UpstreamRequest {
        method: Method::GET,
        path_and_query,
        headers,
        body: body::empty(),
        follow_redirects,
    }
}

/// GitLab's answer, streamed back as it arrives (without a body for HEAD requests that were
/// fetched upstream as GET).
pub(super) fn relay<B>(response: Response<B>, strip_body: bool) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    let (parts, incoming) = response.into_parts();
    let body = if strip_body {
        body::empty()
    } else {
        body::boxed(incoming)
    };
    Response::from_parts(parts, body)
}

pub(super) fn body_error(e: BodyError) -> Error {
    match e {
        BodyError::Idle(after) => Error::UpstreamTimeout(after),
        BodyError::Upstream(e) => Error::UpstreamProtocol(e.to_string()),
    }
}
