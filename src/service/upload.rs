//! `gem push`: the upload streams to GitLab, bounded, never buffered whole.

use std::net::IpAddr;

use http::header;
use http::Request;
use http_body_util::Limited;
use hyper::body::Incoming;

use super::relay::relay;
use super::Handled;
use crate::body;
use crate::cache::CacheOutcome;
use crate::error::Error;
use crate::route::PackageRoute;
use crate::state::AppState;
use crate::upstream::{forward_headers, UpstreamRequest};

/// `gem push`: the body streams to GitLab, bounded, never buffered whole.
pub(super) async fn upload(
    state: &AppState,
    route: &PackageRoute,
    request: Request<Incoming>,
    client: IpAddr,
) -> Result<Handled, Error> {
    let limit = state.config.server.max_upload_bytes.as_u64();
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(Error::PayloadTooLarge);
    }
    let headers = forward_headers(request.headers(), client, false);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let upstream_request = UpstreamRequest {
        method: request.method().clone(),
        path_and_query: route.path_and_query(),
        headers,
        body: body::boxed(Limited::new(request.into_body(), limit)),
        follow_redirects: false,
    };
    let (response, took) = state.upstream.send(upstream_request).await?;
    Ok(Handled::new(
        relay(response, false),
        CacheOutcome::Bypass,
        Some(took),
    ))
}
