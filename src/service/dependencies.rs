//! Dependency API batches (`api/v1/dependencies?gems=a,b,c`) answered from one cached
//! answer per gem where it is fresh, with one GitLab call for the other names, merged into
//! the answer GitLab gives for the batch (`crate::gems::dependencies`).
//!
//! A gem's entry is the answer to `?gems=<name>`, kept under that request's key: the same
//! entry a single-name request reads and writes (`super::metadata`), obeying the same
//! freshness (its project's moment, versions awaited after a push). Every cached byte is
//! served only after the gate said yes for this caller and project, or with GitLab's own
//! yes: its 200 for the names it was asked.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use super::authorize::{authorize, confirmed_earlier, Authorized};
use super::metadata::{
    is_current, keep_answer, keep_gitlab_answer, remembered_not_found, serve_cached,
};
use super::relay::{body_error, fetch, get, Fetched, Forward};
use super::Handled;
use crate::auth::DecisionKey;
use crate::body::{collect_limited, Collected};
use crate::cache::flight::Flight;
use crate::cache::memory::{CachedResponse, Lookup};
use crate::cache::CacheOutcome;
use crate::error::Error;
use crate::gems::dependencies::{self, Entry};
use crate::protocol::rubygems::{GemList, GemName, GemRequest};
use crate::route::{PackageRequest, PackageRoute};
use crate::state::AppState;

/// Whether `route` asks the dependency API for more than one distinct name.
pub(super) fn is_batch(route: &PackageRoute) -> bool {
    match &route.request {
        PackageRequest::Gem(GemRequest::Dependencies(Some(list))) => {
            list.distinct().names().len() > 1
        }
        _ => false,
    }
}

/// One distinct name of the batch: its own request and what the cache holds for it.
struct Gem {
    name: GemName,
    route: PackageRoute,
    key: String,
    cached: Option<Lookup>,
    /// The cached answer's entries, when they may be served without asking GitLab.
    fresh: Option<Vec<Entry>>,
}

pub(super) async fn batch(
    state: &Arc<AppState>,
    route: &PackageRoute,
    decision: &DecisionKey,
    request: Request<Incoming>,
    client: IpAddr,
) -> Result<Handled, Error> {
    let PackageRequest::Gem(GemRequest::Dependencies(Some(list))) = &route.request else {
        return super::metadata::metadata(state, route, decision, request, client).await;
    };
    let head = request.method() == Method::HEAD;
    let headers = Forward::new(request.headers(), client);
    let batch_key = route.content_key();
    let cache = &state.config.cache;
    if let Some(not_found) = remembered_not_found(
        state,
        decision,
        &batch_key,
        cache.negative_ttl,
        head,
        CacheOutcome::Hit,
    )
    .await
    {
        return Ok(not_found);
    }
    let distinct = list.distinct();
    let mut gems = look_up(state, route, &distinct).await;
    let missing = missing(&distinct, &gems);
    if missing.names().is_empty() {
        return match authorize(state, route, decision, &headers, head).await? {
            Authorized::Yes(took) => merged(list, &gems, head, CacheOutcome::Hit, took),
            Authorized::No(refusal) => Ok(refusal),
        };
    }
    // One GitLab call for the names not fresh here; callers missing the same names wait
    // for the first and then look again.
    let _flight = match state.flights.join(&route.with_gems(&missing).content_key()) {
        Flight::Leader(guard) => Some(guard),
        Flight::Waiter(waiter) => {
            waiter.landed().await;
            gems = look_up(state, route, &distinct).await;
            None
        }
    };
    let missing = self::missing(&distinct, &gems);
    if missing.names().is_empty() {
        return match authorize(state, route, decision, &headers, head).await? {
            Authorized::Yes(took) => merged(list, &gems, head, CacheOutcome::Coalesced, took),
            Authorized::No(refusal) => Ok(refusal),
        };
    }
    let asked = route.with_gems(&missing);
    let upstream = get(asked.path_and_query(), headers.into_headers(), true);
    match fetch(state, upstream).await? {
        Fetched::Answer(response, took) if response.status() == StatusCode::OK => {
            // GitLab read the project's packages for this caller: the gate may say yes.
            state.gate.accept(decision.clone()).await;
            let (parts, incoming) = response.into_parts();
            let limit =
                usize::try_from(cache.memory_entry_max_bytes.as_u64()).unwrap_or(usize::MAX);
            let bytes = match collect_limited(incoming, limit).await.map_err(body_error)? {
                Collected::Complete(bytes) => bytes,
                Collected::TooLarge { .. } => {
                    return Err(Error::UpstreamProtocol(
                        "a dependency answer is larger than the proxy keeps".to_owned(),
                    ))
                }
            };
            let Some(groups) = dependencies::parse(&bytes)
                .ok()
                .and_then(dependencies::split)
                .filter(|groups| answers(groups, &missing))
            else {
                return Err(Error::UpstreamProtocol(
                    "GitLab's dependency answer is not one package list per gem".to_owned(),
                ));
            };
            for (name, entries) in groups {
                let Some(gem) = gems.iter_mut().find(|g| g.name.as_str() == name) else {
                    continue;
                };
                let body = Bytes::from(render(&[(name.as_str(), entries.as_slice())])?);
                let previous = gem.cached.as_ref().map(|c| c.response.clone());
                saw(state, &gem.route, &entries).await;
                let (route, key) = (&gem.route, gem.key.clone());
                let entry = keep_gitlab_answer(
                    state,
                    route,
                    key,
                    previous.as_deref(),
                    &parts.headers,
                    body,
                )
                .await;
                gem.cached = Some(Lookup {
                    response: entry,
                    age: std::time::Duration::ZERO,
                });
                gem.fresh = Some(entries);
            }
            merged(list, &gems, head, CacheOutcome::Miss, Some(took))
        }
        // GitLab's refusal, or its 404 for a name it does not hold (the first unknown
        // name of the batch is among those asked: the cached ones are known).
        Fetched::Answer(response, took) => {
            keep_answer(state, decision, batch_key, response, head, took).await
        }
        Fetched::Failed(error) => {
            // While GitLab fails, entries within the offline grace stand in, for callers
            // GitLab accepted lately (as for every cached answer).
            let grace = cache.offline_grace;
            for gem in &mut gems {
                if gem.fresh.is_none() {
                    gem.fresh = gem
                        .cached
                        .as_ref()
                        .filter(|c| c.age < grace)
                        .and_then(|c| dependencies::parse(&c.response.body).ok());
                }
            }
            if gems.iter().all(|gem| gem.fresh.is_some()) {
                confirmed_earlier(state, decision, error).await?;
                return merged(list, &gems, head, CacheOutcome::Stale, None);
            }
            if let Some(not_found) = remembered_not_found(
                state,
                decision,
                &batch_key,
                grace,
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

/// Each distinct name's request and cached answer.
async fn look_up(state: &AppState, route: &PackageRoute, distinct: &GemList) -> Vec<Gem> {
    let mut gems = Vec::with_capacity(distinct.names().len());
    for name in distinct.names() {
        let single = route.with_gems(&GemList::single(name.clone()));
        let key = single.content_key();
        let cached = state.memory.get(&key).await;
        let fresh = cached
            .as_ref()
            .filter(|c| c.age < state.config.cache.metadata_ttl)
            .filter(|c| is_current(state, &single, &c.response))
            .and_then(|c| dependencies::parse(&c.response.body).ok());
        gems.push(Gem {
            name: name.clone(),
            route: single,
            key,
            cached,
            fresh,
        });
    }
    gems
}

/// The names whose entries must be asked of GitLab, in the batch's order.
fn missing(distinct: &GemList, gems: &[Gem]) -> GemList {
    distinct.filtered(|name| gems.iter().any(|g| g.name == *name && g.fresh.is_none()))
}

/// Whether GitLab's groups are exactly the names it was asked, in order.
fn answers(groups: &[(String, Vec<Entry>)], asked: &GemList) -> bool {
    groups.len() == asked.names().len()
        && groups
            .iter()
            .zip(asked.names())
            .all(|((name, _), asked)| name == asked.as_str())
}

fn render(groups: &[(&str, &[Entry])]) -> Result<Vec<u8>, Error> {
    dependencies::render(groups)
        .map_err(|e| Error::Internal(format!("writing a dependency answer: {e}")))
}

/// The batch's answer, in the order (and with the repeats) it was asked.
fn merged(
    list: &GemList,
    gems: &[Gem],
    head: bool,
    outcome: CacheOutcome,
    took: Option<std::time::Duration>,
) -> Result<Handled, Error> {
    let mut groups = Vec::with_capacity(list.names().len());
    for name in list.names() {
        let entries = gems
            .iter()
            .find(|g| g.name == *name)
            .and_then(|g| g.fresh.as_ref());
        let Some(entries) = entries else {
            return Err(Error::Internal(format!(
                "no dependency entries for {}",
                name.as_str()
            )));
        };
        groups.push((name.as_str(), entries.as_slice()));
    }
    let body = Bytes::from(render(&groups)?);
    let headers = gems
        .iter()
        .find_map(|g| g.cached.as_ref())
        .map(|c| c.response.headers.clone())
        .unwrap_or_default();
    let entry = CachedResponse {
        headers,
        body,
        fetched_at_ms: 0,
        validator: None,
    };
    Ok(serve_cached(&entry, StatusCode::OK, head, outcome, took))
}

/// Tells the catalogs which versions the project's dependency API showed.
pub(super) async fn saw(state: &AppState, route: &PackageRoute, entries: &[Entry]) {
    state
        .catalogs
        .saw(
            route.project.as_raw(),
            entries.iter().map(|e| (e.name.as_str(), e.number.as_str())),
        )
        .await;
}

/// [`saw`] for GitLab's whole answer to a dependency request (other routes: nothing).
pub(super) async fn saw_answer(state: &AppState, route: &PackageRoute, body: &[u8]) {
    if let PackageRequest::Gem(GemRequest::Dependencies(Some(_))) = &route.request {
        if let Ok(entries) = dependencies::parse(body) {
            saw(state, route, &entries).await;
        }
    }
}
