//! The request flow: Endpoint → authorization gate → cache tier or GitLab → response with
//! `x-cache`, and one access-log event per request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Limited;
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::auth::{Caller, DecisionKey};
use crate::body::{self, collect_limited, Body, BodyError, Collected, Prefixed};
use crate::cache::fill::{Joined, Leader, NotStarted, Progress, Reader};
use crate::cache::flight::Flight;
use crate::cache::memory::{keep_header, CachedResponse, Lookup};
use crate::cache::CacheOutcome;
use crate::error::Error;
use crate::metrics::{AuthResult, Snapshot};
use crate::route::{CacheClass, Endpoint, PackageRoute};
use crate::state::AppState;
use crate::telemetry::{AccessLog, LoggedBody};
use crate::upstream::{forward_headers, UpstreamRequest, UpstreamResponse};

/// A response and how it came to be.
pub struct Handled {
    pub response: Response<Body>,
    pub outcome: CacheOutcome,
    /// Time GitLab took to answer with headers, when GitLab was asked.
    pub upstream: Option<Duration>,
}

impl Handled {
    fn new(response: Response<Body>, outcome: CacheOutcome, upstream: Option<Duration>) -> Handled {
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
        // The path of an unrouted request is not logged in full: it may be anything.
        Err(_) => ("unrouted", truncate(request.uri().path(), 256)),
    };
    let result = match endpoint {
        Ok(Endpoint::Package(route)) => package(&state, route, request, peer.ip()).await,
        Ok(Endpoint::Health) => Ok(plain(StatusCode::OK, "ok\n".to_owned())),
        Ok(Endpoint::Ready) => Ok(ready(&state).await),
        Ok(Endpoint::Metrics) => Ok(metrics(&state)),
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
        .insert("x-cache", HeaderValue::from_static(outcome.as_str()));
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

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn plain(status: StatusCode, text: String) -> Handled {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Handled::new(response, CacheOutcome::Local, None)
}

/// `/-/readyz`: ready when the store answers; GitLab being down is reported, not fatal,
/// since serving from cache during an outage is part of the job.
async fn ready(state: &AppState) -> Handled {
    let store = state.fills.store();
    let probe = store.put_record("health", b"readyz", b"1").await;
    let gitlab = if state.upstream.is_up() {
        "up"
    } else {
        "degraded (marked down)"
    };
    match probe {
        Ok(()) => plain(
            StatusCode::OK,
            format!("ready\nstore: ok\ngitlab: {gitlab}\n"),
        ),
        Err(e) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\nstore: {e}\ngitlab: {gitlab}\n"),
        ),
    }
}

/// `/-/pkg-cache/metrics`: Prometheus text exposition.
fn metrics(state: &AppState) -> Handled {
    let usage = state.fills.store().usage();
    let text = state.metrics.encode(Snapshot {
        fills_in_flight: state.fills.in_flight() as u64,
        fill_waiters: state.fills.waiting() as u64,
        store_bytes: usage.bytes,
        store_artifacts: usage.artifacts,
        memory_bytes: state.memory.weighted_size(),
        upstream_up: state.upstream.is_up(),
    });
    let mut handled = plain(StatusCode::OK, text);
    handled.response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    handled
}

async fn package(
    state: &Arc<AppState>,
    route: PackageRoute,
    request: Request<Incoming>,
    client: IpAddr,
) -> Result<Handled, Error> {
    let caller = Caller::from_request(&state.key, request.headers(), request.uri().query());
    let decision = DecisionKey {
        caller: caller.fingerprint,
        project: Arc::from(route.project.as_raw()),
        api: route.api(),
    };
    match route.cache_class() {
        CacheClass::Metadata => metadata(state, &route, &decision, request, client).await,
        CacheClass::Artifact => artifact(state, &route, &decision, request, client).await,
        CacheClass::PassThrough => relay_route(state, &route, None, request, client).await,
        CacheClass::Upload => upload(state, &route, request, client).await,
    }
}

/// What GitLab said to a request whose answer may be cached.
enum Fetched {
    /// An answer to pass on or keep (any status but a server error).
    Answer(UpstreamResponse, Duration),
    /// GitLab failed: unreachable, timed out, marked down, or a 5xx.
    Failed(Error),
}

async fn fetch(state: &AppState, request: UpstreamRequest) -> Result<Fetched, Error> {
    match state.upstream.send(request).await {
        Ok((response, _)) if response.status().is_server_error() => {
            Ok(Fetched::Failed(Error::UpstreamStatus(response.status())))
        }
        Ok((response, took)) => Ok(Fetched::Answer(response, took)),
        Err(e) if e.is_upstream_failure() => Ok(Fetched::Failed(e)),
        Err(e) => Err(e),
    }
}

/// The answer to "may this caller read this project's packages?"
enum Authorized {
    /// Yes; `Some` is how long GitLab took when it had to be asked.
    Yes(Option<Duration>),
    /// No: GitLab's refusal, to be sent as it is.
    No(Handled),
}

/// The gate in front of every cached byte: a remembered acceptance, or GitLab's answer to
/// the route's cheap probe made with the caller's own credentials. While GitLab cannot be
/// asked, only callers it accepted within the offline grace pass (fail closed).
async fn authorize(
    state: &AppState,
    route: &PackageRoute,
    decision: &DecisionKey,
    headers: &http::HeaderMap,
    head: bool,
) -> Result<Authorized, Error> {
    if state.gate.is_accepted(decision).await {
        state.metrics.auth(AuthResult::Remembered);
        return Ok(Authorized::Yes(None));
    }
    match fetch(
        state,
        get(route.probe_path_and_query(), headers.clone(), false),
    )
    .await?
    {
        Fetched::Answer(probe, took) if probe.status() == StatusCode::OK => {
            state.metrics.auth(AuthResult::ProbeAccepted);
            state.gate.accept(decision.clone()).await;
            Ok(Authorized::Yes(Some(took)))
        }
        Fetched::Answer(probe, took) => {
            // GitLab authorizes before it looks at the resource, so its refusal of the
            // probe is its refusal of this request: relay it, and nothing from the cache.
            state.metrics.auth(AuthResult::ProbeRefused);
            Ok(Authorized::No(Handled::new(
                relay(probe, head),
                CacheOutcome::Refused,
                Some(took),
            )))
        }
        Fetched::Failed(error) => confirmed_earlier(state, decision, error)
            .await
            .map(|()| Authorized::Yes(None)),
    }
}

/// While GitLab cannot be asked: `Ok` if it accepted this caller for this project within the
/// offline grace, otherwise the 503 that fails closed.
async fn confirmed_earlier(
    state: &AppState,
    decision: &DecisionKey,
    error: Error,
) -> Result<(), Error> {
    let grace = state.config.cache.offline_grace;
    if state
        .gate
        .accepted_ago(decision)
        .await
        .is_some_and(|ago| ago < grace)
    {
        state.metrics.auth(AuthResult::Grace);
        Ok(())
    } else {
        state.metrics.auth(AuthResult::Unconfirmed);
        Err(Error::Unconfirmed(error.to_string()))
    }
}

/// Lists, dependency answers and spec indexes: memory tier (written through to the store)
/// behind the authorization gate, refreshed in the background once stale, and standing in
/// for GitLab while it is down.
async fn metadata(
    state: &Arc<AppState>,
    route: &PackageRoute,
    decision: &DecisionKey,
    request: Request<Incoming>,
    client: IpAddr,
) -> Result<Handled, Error> {
    let head = request.method() == Method::HEAD;
    let headers = forward_headers(request.headers(), client, true);
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
        // A route that is its own probe is simply fetched again for an unknown caller.
        let known = !route.is_own_probe() || state.gate.is_accepted(decision).await;
        if usable && known {
            return match authorize(state, route, decision, &headers, head).await? {
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
    match fetch(state, get(route.path_and_query(), headers, true)).await? {
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
async fn remembered_not_found(
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
async fn keep_answer(
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
fn refresh_in_background(
    state: &Arc<AppState>,
    route: &PackageRoute,
    key: &str,
    headers: &http::HeaderMap,
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
    let request = get(route.path_and_query(), headers.clone(), true);
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

/// Immutable artifacts: the store, or one single-flight fill from GitLab.
async fn artifact(
    state: &AppState,
    route: &PackageRoute,
    decision: &DecisionKey,
    request: Request<Incoming>,
    client: IpAddr,
) -> Result<Handled, Error> {
    let head = request.method() == Method::HEAD;
    let headers = forward_headers(request.headers(), client, true);
    let key = route.content_key();
    let store = state.fills.store();
    match store.lookup_pinned(&key).await {
        Ok(Some((meta, pin))) => {
            let took = match authorize(state, route, decision, &headers, head).await? {
                Authorized::Yes(took) => took,
                Authorized::No(refusal) => return Ok(refusal),
            };
            store.touch(&key);
            if head {
                return Ok(artifact_response(
                    &meta.headers,
                    Some(meta.len),
                    body::empty(),
                    CacheOutcome::Hit,
                    took,
                ));
            }
            let mut reader = Reader::committed(&state.fills, key.clone(), &meta, pin);
            // The first chunk is read before answering, so a damaged artifact found here is
            // refetched instead of failing the request.
            match reader.next_chunk().await {
                Ok(first) => {
                    let body = reader.into_body(first);
                    return Ok(artifact_response(
                        &meta.headers,
                        Some(meta.len),
                        body,
                        CacheOutcome::Hit,
                        took,
                    ));
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "stored artifact unreadable; fetching again")
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(%key, error = %e, "artifact store lookup failed; fetching from GitLab")
        }
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
    if head {
        return relay_route(state, route, Some(decision), request, client).await;
    }
    // A fill that never starts or breaks for its leader is retried once with this caller
    // leading; after that the caller is served straight from GitLab.
    for _ in 0..2 {
        match state.fills.join(&key) {
            Joined::Leader(leader) => {
                return lead(state, route, decision, headers, key, leader).await
            }
            Joined::Waiter(progress) => {
                if let Some(handled) =
                    wait(state, route, decision, &headers, &key, progress).await?
                {
                    return Ok(handled);
                }
            }
        }
    }
    relay_route(state, route, Some(decision), request, client).await
}

/// Fetches an artifact for everyone: this caller's response streams from GitLab while the
/// fill stores it.
async fn lead(
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
    match leader.start(kept.clone(), length, incoming).await {
        Ok(body) => Ok(artifact_response(
            &kept,
            length,
            body,
            CacheOutcome::Miss,
            Some(took),
        )),
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

/// Follows another caller's fill once GitLab has answered it, after this caller's own
/// authorization. `None`: the fill did not happen, fetch another way.
async fn wait(
    state: &AppState,
    route: &PackageRoute,
    decision: &DecisionKey,
    headers: &http::HeaderMap,
    key: &str,
    mut progress: watch::Receiver<Progress>,
) -> Result<Option<Handled>, Error> {
    // Waiting for the leader's answer first lets a caller with the same credentials be
    // authorized by it instead of by a probe of its own.
    let waiting = state.fills.waiting_guard();
    let state_now = loop {
        let now = progress.borrow_and_update().clone();
        if !matches!(now, Progress::Starting) {
            break now;
        }
        if progress.changed().await.is_err() {
            break progress.borrow().clone();
        }
    };
    drop(waiting);
    let (fill, length, stored_headers) = match &state_now {
        Progress::Streaming { head, .. } => (head.fill, head.content_length, head.headers.clone()),
        Progress::Done { meta } => (meta.fill, Some(meta.len), meta.headers.clone()),
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
    let body = reader.into_body(None);
    Ok(Some(artifact_response(
        &stored_headers,
        length,
        body,
        CacheOutcome::Coalesced,
        took,
    )))
}

fn artifact_response(
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

/// Forwards a read to GitLab as it came and streams the answer back.
async fn relay_route(
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

/// `gem push`: the body streams to GitLab, bounded, never buffered whole.
async fn upload(
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

fn get(
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
fn relay<B>(response: Response<B>, strip_body: bool) -> Response<Body>
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

fn serve_cached(
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

fn body_error(e: BodyError) -> Error {
    match e {
        BodyError::Idle(after) => Error::UpstreamTimeout(after),
        BodyError::Upstream(e) => Error::UpstreamProtocol(e.to_string()),
    }
}
