//! `gem push`: the upload streams to GitLab, bounded, never buffered whole; what an accepted
//! push changes is [`super::push`]'s business.

use std::net::IpAddr;

use http::header;
use http::{Request, StatusCode};
use http_body_util::Limited;
use hyper::body::Incoming;

use super::relay::relay;
use super::{push, Handled};
use crate::body;
use crate::cache::CacheOutcome;
use crate::error::Error;
use crate::protocol::rubygems::GemRequest;
use crate::route::{PackageRequest, PackageRoute};
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
    let method = request.method().clone();
    let upload = Limited::new(request.into_body(), limit);
    let pushing = matches!(route.request, PackageRequest::Gem(GemRequest::Upload));
    let (body, copy) = if pushing {
        push::tee(state, upload).await
    } else {
        (body::boxed(upload), None)
    };
    let upstream_request = UpstreamRequest {
        method,
        path_and_query: route.path_and_query(),
        headers,
        body,
        follow_redirects: false,
    };
    let (response, took) = state.upstream.send(upstream_request).await?;
    if pushing && response.status() == StatusCode::CREATED {
        // Before the client hears of it, so its next request already sees the push.
        push::accepted(state, route, copy).await;
    } else if let Some(copy) = copy {
        push::discard(copy).await;
    }
    Ok(Handled::new(
        relay(response, false),
        CacheOutcome::Bypass,
        Some(took),
    ))
}
