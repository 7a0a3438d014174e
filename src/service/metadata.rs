//! Lists, dependency answers and spec indexes: the memory tier behind the gate, refreshed in
//! the background, standing in for GitLab while it is down; remembered 404s per caller.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::authorize::{authorize, confirmed_earlier, Authorized};
use super::relay::{body_error, fetch, get, relay, Fetched, Forward};
use super::Handled;
use crate::auth::DecisionKey;
use crate::body::{self, collect_limited, Collected, Prefixed};
use crate::cache::flight::Flight;
use crate::cache::memory::{CachedResponse, Lookup};
use crate::cache::CacheOutcome;
use crate::error::Error;
use crate::metrics::AuthResult;
use crate::route::PackageRoute;
use crate::state::AppState;
use crate::upstream::UpstreamResponse;

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
        // A route that is its own probe is simply fetched again for an unknown caller; for
        // a known one, that one lookup was the authorization.
        let own_probe = route.is_own_probe();
        let known = !own_probe || state.gate.is_accepted(decision).await;
        if usable && known {
            let authorized = if own_probe {
                state.metrics.auth(AuthResult::Remembered);
                Authorized::Yes(None)
            } else {
                authorize(state, route, decision, &headers, head).await?
            };
            return match authorized {
                Authorized::Yes(took) => {
                    let outcome = if *age >= cache.metadata_ttl {
                        refresh_in_background(state, route, &key, &headers);
                        CacheOutcome::Stale
                    } else {
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
    let _flight = match state.flights.join(&key) {
        Flight::Leader(guard) => Some(guard),
        Flight::Waiter(waiter) => {
            waiter.landed().await;
            if let Some(Lookup { response, age }) = state.memory.get(&key).await {
                if age < cache.metadata_ttl {
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
    match fetch(
        state,
        get(route.path_and_query(), headers.into_headers(), true),
    )
    .await?
    {
        Fetched::Answer(response, took) => {
            let status = response.status();
            if status == StatusCode::OK {
                state.gate.accept(decision.clone()).await;
            }
            keep_answer(state, decision, key, response, head, took).await
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
    let request = get(route.path_and_query(), headers.headers().clone(), true);
    tokio::spawn(async move {
        match fetch(&state, request).await {
            Ok(Fetched::Answer(response, _)) if response.status() == StatusCode::OK => {
                let (parts, incoming) = response.into_parts();
                let limit = usize::try_from(state.config.cache.memory_entry_max_bytes.as_u64())
                    .unwrap_or(usize::MAX);
                if let Ok(Collected::Complete(bytes)) = collect_limited(incoming, limit).await {
                    let entry = CachedResponse::new(&parts.headers, bytes, state.memory.now_ms());
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
