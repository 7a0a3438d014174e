//! Immutable artifacts: served from the store, or fetched once by a single-flight fill
//! whose bytes every waiting caller follows.

use std::net::IpAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::StreamBody;
use hyper::body::Incoming;
use tokio::sync::watch;

use super::authorize::{authorize, Authorized};
use super::metadata::{keep_answer, remembered_not_found, version_served};
use super::relay::{fetch, get, relay, relay_route, Fetched, Forward};
use super::Handled;
use crate::auth::DecisionKey;
use crate::body::{self, Body, BoxError};
use crate::cache::artifact_memory::{Kept, Size};
use crate::cache::fill::{Joined, Leader, NotStarted, Progress};
use crate::cache::lease::Claim;
use crate::cache::memory::keep_header;
use crate::cache::reader::Reader;
use crate::cache::CacheOutcome;
use crate::error::Error;
use crate::protocol::goproxy::GoRequest;
use crate::protocol::rubygems::GemRequest;
use crate::route::{PackageRequest, PackageRoute};
use crate::sendfile::FileRegions;
use crate::state::AppState;
use crate::upstream::X_CACHE_UPSTREAM;

/// The connection's file regions for `sendfile`, on plain HTTP/1.x only: an HTTP/2 stream's
/// data goes through the h2 codec, which may copy (read) it.
fn file_regions(parts: &http::request::Parts) -> Option<FileRegions> {
    if parts.version > Version::HTTP_11 {
        return None;
    }
    parts.extensions.get::<FileRegions>().cloned()
}

/// Immutable artifacts: the memory tier, the store, or one single-flight fill from GitLab.
pub(super) async fn artifact(
    state: &AppState,
    route: &PackageRoute,
    decision: &DecisionKey,
    request: Request<Incoming>,
    client: IpAddr,
) -> Result<Handled, Error> {
    let head = request.method() == Method::HEAD;
    let (parts, body) = request.into_parts();
    let headers = Forward::new(&parts.headers, client);
    let key = route.content_key();
    let store = state.fills.store();
    let size = size_of(route);
    // The memory tier first: used only while the store still holds the same fill.
    if let Some(kept) = state.artifacts.get(&key) {
        if store.touch_if_current(&key, kept.fill) {
            let took = match authorize(state, route, decision, &headers, head).await? {
                Authorized::Yes(took) => took,
                Authorized::No(refusal) => return Ok(refusal),
            };
            match &kept.body {
                Some(bytes) => {
                    let body = if head {
                        body::empty()
                    } else {
                        body::full(bytes.clone())
                    };
                    return Ok(kept_response(&kept, body, took));
                }
                None if head => return Ok(kept_response(&kept, body::empty(), took)),
                None => {
                    if let Some(pin) = store.pin(kept.fill) {
                        // The first chunk is checked before answering, so chunk files that
                        // vanished or were damaged since are fetched again instead of failing
                        // the response part-way.
                        let mut reader = Reader::committed_parts(
                            &state.fills,
                            key.clone(),
                            kept.fill,
                            kept.chunk_count,
                            pin,
                        );
                        reader.send_files_through(file_regions(&parts));
                        match reader.check_first().await {
                            Ok(()) => return Ok(kept_response(&kept, reader.into_body(), took)),
                            Err(e) => {
                                tracing::warn!(%key, error = %e, "stored artifact unreadable; fetching again")
                            }
                        }
                    }
                }
            }
            state.artifacts.invalidate(&key);
        } else {
            state.artifacts.invalidate(&key);
        }
    }
    // A miss here is answered from the shared bucket below (a GET streams its copy, a HEAD
    // reads its reference) rather than after a whole copy into the local tier.
    match store.lookup_pinned_here(&key).await {
        Ok(Some((meta, pin))) => {
            let took = match authorize(state, route, decision, &headers, head).await? {
                Authorized::Yes(took) => took,
                Authorized::No(refusal) => return Ok(refusal),
            };
            store.touch(&key);
            let limit = state.artifacts.limit(size);
            if meta.len <= limit {
                // Small: read whole, checked against its SHA-256, and kept in memory.
                let mut reader = Reader::committed(&state.fills, key.clone(), &meta, pin);
                match read_whole(&mut reader, meta.len).await {
                    Ok(bytes) => {
                        let kept = state.artifacts.keep(&key, &meta, Some(bytes.clone()));
                        let body = if head {
                            body::empty()
                        } else {
                            body::full(bytes)
                        };
                        return Ok(kept_response(&kept, body, took));
                    }
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "stored artifact unreadable; fetching again")
                    }
                }
            } else {
                let kept = state.artifacts.keep(&key, &meta, None);
                if head {
                    return Ok(kept_response(&kept, body::empty(), took));
                }
                let mut reader = Reader::committed(&state.fills, key.clone(), &meta, pin);
                reader.send_files_through(file_regions(&parts));
                // The first chunk is checked before answering, so a damaged artifact found
                // here is fetched again instead of failing the request.
                match reader.check_first().await {
                    Ok(()) => return Ok(kept_response(&kept, reader.into_body(), took)),
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "stored artifact unreadable; fetching again")
                    }
                }
            }
            state.artifacts.invalidate(&key);
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(%key, error = %e, "artifact store lookup failed; fetching from GitLab")
        }
    }
    if head {
        if let Some(handled) = Box::pin(head_from_shared_tier(
            state, route, decision, &headers, &key,
        ))
        .await?
        {
            return Ok(handled);
        }
    } else if let Some(handled) = Box::pin(from_shared_tier(
        state, route, decision, &headers, &key, size,
    ))
    .await?
    {
        return Ok(handled);
    }
    if let Some(not_found) = remembered_not_found(
        state,
        decision,
        &key,
        state.config.cache.negative_ttl,
        head,
        CacheOutcome::Hit,
    )
    .await
    {
        return Ok(not_found);
    }
    if !head {
        // Replicas sharing a bucket: one of them fetches from GitLab, the others wait for it.
        let mut lease = None;
        if let Some(leases) = &state.leases {
            match Box::pin(leases.claim(&key, &state.fills)).await {
                Claim::Lead(guard) => lease = Some(guard),
                Claim::Committed => {
                    if let Ok(Some(_)) = store.lookup(&key).await {
                        // Now in the local tier: served (and authorized) as a hit.
                        drop(headers);
                        let request = Request::from_parts(parts, body);
                        return Box::pin(artifact(state, route, decision, request, client)).await;
                    }
                }
                Claim::Fetch => {}
            }
        }
        // A fill that never starts or breaks for its leader is retried once with this caller
        // leading; after that the caller is served straight from GitLab.
        for _ in 0..2 {
            match state.fills.join(&key) {
                Joined::Leader(leader) => {
                    let leader = leader.keep_in_memory(state.artifacts.limit(size));
                    let handled = Box::pin(lead(
                        state,
                        route,
                        decision,
                        headers.into_headers(),
                        key.clone(),
                        leader,
                    ))
                    .await;
                    if let Some(lease) = lease {
                        lease.hold_until_settled(&state.fills, &key);
                    }
                    return handled;
                }
                Joined::Waiter(progress) => {
                    if let Some(handled) =
                        Box::pin(wait(state, route, decision, &headers, &key, progress)).await?
                    {
                        return Ok(handled);
                    }
                }
            }
        }
    }
    drop(headers);
    Box::pin(relay_route(
        state,
        route,
        Some(decision),
        Request::from_parts(parts, body),
        client,
    ))
    .await
}

/// A local miss that the shared bucket holds: streamed to this caller (a `hit`, after its
/// authorization) while it is copied into the local tier, in memory bounded like any fill.
/// `None`: the bucket does not have it, or a fill of it is under way here (joined below).
async fn from_shared_tier(
    state: &AppState,
    route: &PackageRoute,
    decision: &DecisionKey,
    headers: &Forward<'_>,
    key: &str,
    size: Size,
) -> Result<Option<Handled>, Error> {
    if state.fills.progress(key).is_some() {
        return Ok(None);
    }
    let copy = match state.fills.store().shared_copy(key).await {
        Ok(Some(copy)) => copy,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::warn!(%key, error = %e, "shared tier unreadable; fetching from GitLab");
            return Ok(None);
        }
    };
    let took = match authorize(state, route, decision, headers, false).await? {
        Authorized::Yes(took) => took,
        Authorized::No(refusal) => return Ok(Some(refusal)),
    };
    let leader = match state.fills.join(key) {
        Joined::Leader(leader) => leader,
        // Another caller started a fill meanwhile: follow it instead.
        Joined::Waiter(progress) => {
            return wait(state, route, decision, headers, key, progress).await;
        }
    };
    let leader = leader
        .keep_in_memory(state.artifacts.limit(size))
        .copying_in();
    let frames = copy.body.map_ok(Frame::data);
    let (len, stored_headers) = (copy.len, copy.headers);
    match leader
        .start(stored_headers.clone(), Some(len), StreamBody::new(frames))
        .await
    {
        Ok(body) => Ok(Some(artifact_response(
            &stored_headers,
            Some(len),
            body,
            CacheOutcome::Hit,
            took,
        ))),
        Err(NotStarted { error, body }) => {
            tracing::warn!(%key, error = %error, "local tier unusable; serving the shared copy uncached");
            Ok(Some(artifact_response(
                &stored_headers,
                Some(len),
                body::boxed(body),
                CacheOutcome::Hit,
                took,
            )))
        }
    }
}

/// A HEAD for an artifact only the shared bucket holds: answered from its reference (length
/// and headers) after the caller's authorization, without reading or copying its bytes.
async fn head_from_shared_tier(
    state: &AppState,
    route: &PackageRoute,
    decision: &DecisionKey,
    headers: &Forward<'_>,
    key: &str,
) -> Result<Option<Handled>, Error> {
    let shared = match state.fills.store().shared_head(key).await {
        Ok(Some(shared)) => shared,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::warn!(%key, error = %e, "shared tier unreadable; asking GitLab");
            return Ok(None);
        }
    };
    let took = match authorize(state, route, decision, headers, true).await? {
        Authorized::Yes(took) => took,
        Authorized::No(refusal) => return Ok(Some(refusal)),
    };
    Ok(Some(artifact_response(
        &shared.headers,
        Some(shared.len),
        body::empty(),
        CacheOutcome::Hit,
        took,
    )))
}

/// Which memory limit applies to a route's artifacts.
fn size_of(route: &PackageRoute) -> Size {
    match &route.request {
        PackageRequest::Go {
            request: GoRequest::Info(_) | GoRequest::Mod(_),
            ..
        }
        | PackageRequest::Gem(GemRequest::Gemspec(_)) => Size::Descriptor,
        _ => Size::Other,
    }
}

/// A small artifact read whole; its SHA-256 is checked when it is kept.
async fn read_whole(reader: &mut Reader, len: u64) -> Result<Bytes, BoxError> {
    let mut whole = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
    while let Some(piece) = reader.next_piece().await? {
        if whole.len() + piece.len() > whole.capacity() {
            return Err("stored artifact longer than its record".into());
        }
        whole.extend_from_slice(&piece);
    }
    Ok(whole.freeze())
}

fn kept_response(kept: &Kept, body: Body, upstream: Option<Duration>) -> Handled {
    let mut response = Response::new(body);
    let map = response.headers_mut();
    for (name, value) in &kept.headers {
        map.append(name.clone(), value.clone());
    }
    map.insert(header::CONTENT_LENGTH, HeaderValue::from(kept.len));
    Handled::new(response, CacheOutcome::Hit, upstream)
}

/// Fetches an artifact for everyone: this caller's response streams from GitLab while the
/// fill stores it.
///
/// (This and the other paths a hit does not take are boxed where `artifact` awaits them, so
/// that the future of every artifact request, which hyper moves into place, stays small.)
pub(super) async fn lead(
    state: &AppState,
    route: &PackageRoute,
    decision: &DecisionKey,
    headers: http::HeaderMap,
    key: String,
    leader: Leader,
) -> Result<Handled, Error> {
    let (response, took) = match fetch(state, get(route.path_and_query(), headers, true)).await? {
        Fetched::Answer(response, took) => (response, took),
        Fetched::Failed(error) => {
            if let Some(not_found) = remembered_not_found(
                state,
                decision,
                &key,
                state.config.cache.offline_grace,
                false,
                CacheOutcome::Stale,
            )
            .await
            {
                return Ok(not_found);
            }
            return Err(error);
        }
    };
    if response.status() != StatusCode::OK {
        // Dropping the leader tells waiters to ask GitLab themselves: this answer was for
        // this caller's credentials only.
        drop(leader);
        return keep_answer(state, decision, key, response, false, took).await;
    }
    state.gate.accept(decision.clone()).await;
    version_served(state, route).await;
    let (parts, incoming) = response.into_parts();
    let kept: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(name, _)| keep_header(name))
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if state.integrity.holds_refill_of(&key).await {
        // A version seen before: its bytes leave only once they match the first copy.
        return match leader.start_checked(kept.clone(), length, incoming).await {
            Ok(progress) => checked(state, &key, &kept, progress, took).await,
            Err(NotStarted { error, .. }) => Err(Error::Internal(format!(
                "the store cannot take the refill to compare it with its first copy: {error}"
            ))),
        };
    }
    let inner_cache = parts.headers.get(X_CACHE_UPSTREAM).cloned();
    match leader.start(kept.clone(), length, incoming).await {
        Ok(body) => {
            let mut handled =
                artifact_response(&kept, length, body, CacheOutcome::Miss, Some(took));
            if let Some(inner) = inner_cache {
                handled
                    .response
                    .headers_mut()
                    .insert(X_CACHE_UPSTREAM, inner);
            }
            Ok(handled)
        }
        Err(NotStarted { error, body }) => {
            tracing::warn!(route = route.name(), error = %error, "artifact store unusable; serving uncached");
            let response = Response::from_parts(parts, body);
            Ok(Handled::new(
                relay(response, false),
                CacheOutcome::Bypass,
                Some(took),
            ))
        }
    }
}

/// The fill's first progress that `reached` accepts, or its last one if the fill went away.
async fn first_progress(
    progress: &mut watch::Receiver<Progress>,
    reached: impl Fn(&Progress) -> bool,
) -> Progress {
    loop {
        let now = progress.borrow_and_update().clone();
        if reached(&now) {
            return now;
        }
        if progress.changed().await.is_err() {
            return progress.borrow().clone();
        }
    }
}

/// The answer to a checked refill once it is settled: the stored copy, or why not.
async fn checked(
    state: &AppState,
    key: &str,
    headers: &[(String, String)],
    mut progress: watch::Receiver<Progress>,
    took: Duration,
) -> Result<Handled, Error> {
    let settled = first_progress(&mut progress, |now| {
        !matches!(now, Progress::Starting | Progress::Streaming { .. })
    })
    .await;
    match settled {
        Progress::Done { meta } => {
            let Some(pin) = state.fills.store().pin(meta.fill) else {
                return Err(Error::Internal(format!("{key} left the store at once")));
            };
            let reader = Reader::committed(&state.fills, key.to_owned(), &meta, pin);
            Ok(artifact_response(
                headers,
                Some(meta.len),
                reader.into_body(),
                CacheOutcome::Miss,
                Some(took),
            ))
        }
        Progress::Held { reason } => Err(Error::IntegrityHold(reason.to_string())),
        _ => Err(Error::UpstreamProtocol(
            "GitLab's answer broke before it could be checked".to_owned(),
        )),
    }
}

/// Follows another caller's fill once GitLab has answered it, after this caller's own
/// authorization. `None`: the fill did not happen, fetch another way.
pub(super) async fn wait(
    state: &AppState,
    route: &PackageRoute,
    decision: &DecisionKey,
    headers: &Forward<'_>,
    key: &str,
    mut progress: watch::Receiver<Progress>,
) -> Result<Option<Handled>, Error> {
    // Waiting for the leader's answer first lets a caller with the same credentials be
    // authorized by it instead of by a probe of its own.
    let waiting = state.fills.waiting_guard();
    let state_now = first_progress(&mut progress, |now| !matches!(now, Progress::Starting)).await;
    drop(waiting);
    let (fill, length, stored_headers) = match &state_now {
        Progress::Streaming { head, .. } => (head.fill, head.content_length, head.headers.clone()),
        Progress::Done { meta } => (meta.fill, Some(meta.len), meta.headers.clone()),
        Progress::Held { reason } => {
            return match authorize(state, route, decision, headers, false).await? {
                Authorized::Yes(_) => Err(Error::IntegrityHold(reason.to_string())),
                Authorized::No(refusal) => Ok(Some(refusal)),
            };
        }
        Progress::Starting | Progress::Failed | Progress::NotFilled => return Ok(None),
    };
    let took = match authorize(state, route, decision, headers, false).await? {
        Authorized::Yes(took) => took,
        Authorized::No(refusal) => return Ok(Some(refusal)),
    };
    let Some(pin) = state.fills.store().pin(fill) else {
        return Ok(None);
    };
    let reader = match &state_now {
        Progress::Done { meta } => Reader::committed(&state.fills, key.to_owned(), meta, pin),
        _ => Reader::following(&state.fills, key.to_owned(), fill, progress, pin),
    };
    let body = reader.into_body();
    Ok(Some(artifact_response(
        &stored_headers,
        length,
        body,
        CacheOutcome::Coalesced,
        took,
    )))
}

pub(super) fn artifact_response(
    headers: &[(String, String)],
    length: Option<u64>,
    body: Body,
    outcome: CacheOutcome,
    upstream: Option<Duration>,
) -> Handled {
    let mut response = Response::new(body);
    let map = response.headers_mut();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    if let Some(length) = length {
        map.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    Handled::new(response, outcome, upstream)
}
