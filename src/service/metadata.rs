//! Lists, dependency answers and spec indexes: the memory tier behind the gate, refreshed in
//! the background, revalidated when their project moved on, standing in for GitLab while it
//! is down; remembered 404s per caller.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::authorize::{authorize, authorize_as, confirmed_earlier, Authorized};
use super::relay::{body_error, fetch, get, relay, Fetched, Forward};
use super::Handled;
use crate::auth::{DecisionKey, Standing};
use crate::body::{self, collect_limited, Collected, Prefixed};
use crate::cache::flight::Flight;
use crate::cache::memory::{CachedResponse, Lookup};
use crate::cache::CacheOutcome;
use crate::error::Error;
use crate::freshness::{self, shows};
use crate::protocol::goproxy::GoRequest;
use crate::protocol::rubygems::GemRequest;
use crate::route::{PackageRequest, PackageRoute};
use crate::state::AppState;
use crate::upstream::{UpstreamRequest, UpstreamResponse};

/// Lists, dependency answers and spec indexes: memory tier (written through to the store)
/// behind the authorization gate, refreshed in the background once stale, and standing in
/// for GitLab while it is down.
pub(super) async fn metadata(
    state: &Arc<AppState>,
    route: &PackageRoute,
    decision: &DecisionKey,
    request: Request<Incoming>,
    client: IpAddr,
) -> Result<Handled, Error> {
    let head = request.method() == Method::HEAD;
    let headers = Forward::new(request.headers(), client);
    let key = route.content_key();
    let cache = &state.config.cache;
    if let Some(not_found) = remembered_not_found(
        state,
        decision,
        &key,
        cache.negative_ttl,
        head,
        CacheOutcome::Hit,
    )
    .await
    {
        return Ok(not_found);
    }
    let cached = state.memory.get(&key).await;
    if let Some(Lookup { response, age }) = &cached {
        let usable = *age < cache.metadata_max_stale;
        // One lookup of the decision serves both questions below.
        let standing = state.gate.standing(decision).await;
        // A route that is its own probe is simply fetched again for an unknown caller.
        let known = !route.is_own_probe() || standing != Standing::Unknown;
        if usable && known && is_current(state, route, response) {
            return match authorize_as(state, route, decision, standing, &headers, head).await? {
                Authorized::Yes(took) => {
                    let outcome = if *age >= cache.metadata_ttl {
                        refresh_in_background(state, route, &key, &headers);
                        CacheOutcome::Stale
                    } else {
                        // Refreshed ahead in the second half of its life, so answers in
                        // steady use never go stale.
                        if *age >= cache.metadata_ttl / 2 {
                            refresh_in_background(state, route, &key, &headers);
                        }
                        CacheOutcome::Hit
                    };
                    Ok(serve_cached(response, StatusCode::OK, head, outcome, took))
                }
                Authorized::No(refusal) => Ok(refusal),
            };
        }
    }
    // Concurrent misses of one key wait for the first to land, then look again: GitLab's
    // answer is shared by every caller the gate lets through.
    let joined_at = state.memory.now_ms();
    let _flight = match state.flights.join(&key) {
        Flight::Leader(guard) => Some(guard),
        Flight::Waiter(waiter) => {
            waiter.landed().await;
            if let Some(Lookup { response, .. }) = state.memory.get(&key).await {
                // Only what GitLab answered the flight this request waited for.
                if response.fetched_at_ms >= joined_at {
                    return match authorize(state, route, decision, &headers, head).await? {
                        Authorized::Yes(took) => Ok(serve_cached(
                            &response,
                            StatusCode::OK,
                            head,
                            CacheOutcome::Coalesced,
                            took,
                        )),
                        Authorized::No(refusal) => Ok(refusal),
                    };
                }
            }
            None
        }
    };
    let previous = cached.as_ref().map(|c| c.response.clone());
    let request = revalidation(route, headers.into_headers(), previous.as_deref());
    match fetch(state, request).await? {
        Fetched::Answer(response, took) => {
            let status = response.status();
            if status == StatusCode::OK || status == StatusCode::NOT_MODIFIED {
                state.gate.accept(decision.clone()).await;
            }
            match (status, previous) {
                (StatusCode::NOT_MODIFIED, Some(previous)) => {
                    let entry = Arc::new(previous.confirmed(state.memory.now_ms()));
                    state.memory.insert(key, entry.clone()).await;
                    Ok(serve_cached(
                        &entry,
                        StatusCode::OK,
                        head,
                        CacheOutcome::Revalidated,
                        Some(took),
                    ))
                }
                (StatusCode::OK, previous) => {
                    keep_metadata(state, route, key, previous, response, head, took).await
                }
                _ => keep_answer(state, decision, key, response, head, took).await,
            }
        }
        Fetched::Failed(error) => {
            if let Some(Lookup { response, .. }) = cached.filter(|c| c.age < cache.offline_grace) {
                confirmed_earlier(state, decision, error).await?;
                return Ok(serve_cached(
                    &response,
                    StatusCode::OK,
                    head,
                    CacheOutcome::Stale,
                    None,
                ));
            }
            // The go command walks a GOPROXY list on 404s: a remembered "not here" for this
            // caller keeps that walk working during the outage.
            if let Some(not_found) = remembered_not_found(
                state,
                decision,
                &key,
                cache.offline_grace,
                head,
                CacheOutcome::Stale,
            )
            .await
            {
                return Ok(not_found);
            }
            Err(error)
        }
    }
}

/// The 404 GitLab gave this caller for `key`, replayed if younger than `max_age`.
pub(super) async fn remembered_not_found(
    state: &AppState,
    decision: &DecisionKey,
    key: &str,
    max_age: Duration,
    head: bool,
    outcome: CacheOutcome,
) -> Option<Handled> {
    let not_found = state.memory.get_negative(decision.caller, key).await?;
    (not_found.age < max_age).then(|| {
        serve_cached(
            &not_found.response,
            StatusCode::NOT_FOUND,
            head,
            outcome,
            None,
        )
    })
}

/// Keeps GitLab's answer where it may be kept (a 200 for everyone GitLab accepts, a 404 for
/// this caller only) and passes it on.
pub(super) async fn keep_answer(
    state: &AppState,
    decision: &DecisionKey,
    key: String,
    response: UpstreamResponse,
    head: bool,
    took: Duration,
) -> Result<Handled, Error> {
    let status = response.status();
    if status != StatusCode::OK && status != StatusCode::NOT_FOUND {
        return Ok(Handled::new(
            relay(response, head),
            CacheOutcome::Miss,
            Some(took),
        ));
    }
    let (parts, incoming) = response.into_parts();
    let limit =
        usize::try_from(state.config.cache.memory_entry_max_bytes.as_u64()).unwrap_or(usize::MAX);
    match collect_limited(incoming, limit).await.map_err(body_error)? {
        Collected::Complete(bytes) => {
            let entry = Arc::new(CachedResponse::new(
                &parts.headers,
                bytes,
                state.memory.now_ms(),
            ));
            if status == StatusCode::OK {
                state.memory.insert(key, entry.clone()).await;
            } else {
                state
                    .memory
                    .insert_negative(decision.caller, key, entry.clone())
                    .await;
            }
            Ok(serve_cached(
                &entry,
                status,
                head,
                CacheOutcome::Miss,
                Some(took),
            ))
        }
        Collected::TooLarge { prefix, rest } => {
            let response = Response::from_parts(parts, Prefixed::new(prefix, rest));
            Ok(Handled::new(
                relay(response, head),
                CacheOutcome::Bypass,
                Some(took),
            ))
        }
    }
}

/// Refreshes a stale answer once, in the background, with the credentials of the caller who
/// found it stale (held only for the refresh). Concurrent refreshes of one key coalesce.
pub(super) fn refresh_in_background(
    state: &Arc<AppState>,
    route: &PackageRoute,
    key: &str,
    headers: &Forward<'_>,
) {
    {
        let mut refreshing = state
            .refreshing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !refreshing.insert(key.to_owned()) {
            return;
        }
    }
    let state = state.clone();
    let key = key.to_owned();
    let route = route.clone();
    let headers = headers.headers().clone();
    tokio::spawn(async move {
        let previous = state.memory.get(&key).await.map(|c| c.response);
        let request = revalidation(&route, headers, previous.as_deref());
        match fetch(&state, request).await {
            Ok(Fetched::Answer(response, _)) if response.status() == StatusCode::OK => {
                let (parts, incoming) = response.into_parts();
                let limit = usize::try_from(state.config.cache.memory_entry_max_bytes.as_u64())
                    .unwrap_or(usize::MAX);
                if let Ok(Collected::Complete(bytes)) = collect_limited(incoming, limit).await {
                    super::dependencies::saw_answer(&state, &route, &bytes).await;
                    let previous = previous.as_deref();
                    keep_gitlab_answer(
                        &state,
                        &route,
                        key.clone(),
                        previous,
                        &parts.headers,
                        bytes,
                    )
                    .await;
                }
            }
            Ok(Fetched::Answer(response, _)) if response.status() == StatusCode::NOT_MODIFIED => {
                if let Some(previous) = previous {
                    let entry = previous.confirmed(state.memory.now_ms());
                    state.memory.insert(key.clone(), Arc::new(entry)).await;
                }
            }
            // GitLab no longer serves it (to this caller at least): stop serving it from cache.
            Ok(Fetched::Answer(response, _)) if response.status().is_client_error() => {
                state.memory.remove(&key).await;
            }
            Ok(_) | Err(_) => {}
        }
        state
            .refreshing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
    });
}

/// Whether a cached answer may be served without asking GitLab: it belongs to its project's
/// current moment, and no version pushed through the proxy is still awaited in it.
pub(super) fn is_current(state: &AppState, route: &PackageRoute, cached: &CachedResponse) -> bool {
    let project = route.project.as_raw();
    if !state.freshness.is_current(project, cached.fetched_at_ms) {
        return false;
    }
    match &route.request {
        PackageRequest::Gem(request) => state.freshness.awaited_by(project, request).is_empty(),
        PackageRequest::Go { .. } => true,
    }
}

/// The GET that asks GitLab for `route` again: conditional on the cached answer's validator
/// where GitLab's validator for the route can be trusted (reference §1.3: the `ETag` Rack
/// computes over a rendered body; never the constant one of Workhorse downloads, so spec
/// indexes revalidate with `If-Modified-Since` instead).
fn revalidation(
    route: &PackageRoute,
    mut headers: http::HeaderMap,
    cached: Option<&CachedResponse>,
) -> UpstreamRequest {
    if let Some(cached) = cached {
        let rendered = matches!(
            route.request,
            PackageRequest::Go {
                request: GoRequest::List,
                ..
            } | PackageRequest::Gem(GemRequest::Dependencies(_))
        );
        if rendered {
            if let Some(etag) = &cached.validator {
                headers.insert(header::IF_NONE_MATCH, etag.clone());
            }
        } else if let Some((_, modified)) = cached
            .headers
            .iter()
            .find(|(name, _)| name == header::LAST_MODIFIED)
        {
            headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
        }
    }
    get(route.path_and_query(), headers, true)
}

/// Keeps GitLab's new answer for `key` (see [`took_in`]); a project whose answers changed
/// moves on to the new answer's stamp only once that answer is in place, so no request in
/// between finds the old answer out of date with nothing newer yet to serve.
pub(super) async fn keep_gitlab_answer(
    state: &AppState,
    route: &PackageRoute,
    key: String,
    previous: Option<&CachedResponse>,
    headers: &http::HeaderMap,
    body: Bytes,
) -> Arc<CachedResponse> {
    let moved = took_in(state, route, previous, &body);
    let entry = Arc::new(answer_entry(state, headers, body));
    state.memory.insert(key, entry.clone()).await;
    if moved {
        state
            .freshness
            .bump_at(route.project.as_raw(), entry.fetched_at_ms);
    }
    entry
}

/// Takes GitLab's new answer in: versions awaited after a push that it shows are no longer
/// awaited there. True if the project's answers changed, so that it must move on to a new
/// moment and its other cached answers be revalidated before they are served again.
fn took_in(
    state: &AppState,
    route: &PackageRoute,
    previous: Option<&CachedResponse>,
    body: &Bytes,
) -> bool {
    let project = route.project.as_raw();
    let mut moved = previous.is_some_and(|p| p.body != *body);
    if let PackageRequest::Gem(request) = &route.request {
        let awaited = state.freshness.awaited_by(project, request);
        let surface = freshness::surface_of(request);
        if let (false, Some(surface)) = (awaited.is_empty(), surface) {
            if let Some(listed) = shows::listed(request, body) {
                for version in awaited {
                    if shows::lists(&listed, &version.name, &version.version) {
                        moved |= state.freshness.shown(project, surface, &version);
                    }
                }
            }
        }
    }
    moved
}

/// A cached answer from GitLab's headers and body, stamped now (after any [`took_in`]).
pub(super) fn answer_entry(
    state: &AppState,
    headers: &http::HeaderMap,
    body: Bytes,
) -> CachedResponse {
    let mut entry = CachedResponse::new(headers, body, state.memory.now_ms());
    entry.validator = headers.get(header::ETAG).cloned();
    entry
}

/// Keeps GitLab's `200` for a metadata route, after taking it in, and passes it on.
async fn keep_metadata(
    state: &AppState,
    route: &PackageRoute,
    key: String,
    previous: Option<Arc<CachedResponse>>,
    response: UpstreamResponse,
    head: bool,
    took: Duration,
) -> Result<Handled, Error> {
    let (parts, incoming) = response.into_parts();
    let limit =
        usize::try_from(state.config.cache.memory_entry_max_bytes.as_u64()).unwrap_or(usize::MAX);
    match collect_limited(incoming, limit).await.map_err(body_error)? {
        Collected::Complete(bytes) => {
            super::dependencies::saw_answer(state, route, &bytes).await;
            let entry = keep_gitlab_answer(
                state,
                route,
                key,
                previous.as_deref(),
                &parts.headers,
                bytes,
            )
            .await;
            Ok(serve_cached(
                &entry,
                StatusCode::OK,
                head,
                CacheOutcome::Miss,
                Some(took),
            ))
        }
        Collected::TooLarge { prefix, rest } => {
            let response = Response::from_parts(parts, Prefixed::new(prefix, rest));
            Ok(Handled::new(
                relay(response, head),
                CacheOutcome::Bypass,
                Some(took),
            ))
        }
    }
}

/// A Go version GitLab just served for the first time: if the module's cached `@v/list`
/// lacks it, a tag was pushed since, and the project moves on, so the list (and everything
/// else cached of the project) is asked for again before it is served next.
pub(super) async fn version_served(state: &AppState, route: &PackageRoute) {
    let PackageRequest::Go { request, .. } = &route.request else {
        return;
    };
    let version = match request {
        GoRequest::Info(v) | GoRequest::Mod(v) | GoRequest::Zip(v) => v.as_str(),
        GoRequest::List => return,
    };
    let Some(list_key) = route.go_list_key() else {
        return;
    };
    if let Some(cached) = state.memory.get(&list_key).await {
        let listed = String::from_utf8_lossy(&cached.response.body)
            .lines()
            .any(|line| line.trim() == version);
        if !listed {
            state.freshness.bump(route.project.as_raw());
        }
    }
}

pub(super) fn serve_cached(
    entry: &CachedResponse,
    status: StatusCode,
    head: bool,
    outcome: CacheOutcome,
    upstream: Option<Duration>,
) -> Handled {
    let mut response = Response::new(if head {
        body::empty()
    } else {
        body::full(entry.body.clone())
    });
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in &entry.headers {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
    Handled::new(response, outcome, upstream)
}
