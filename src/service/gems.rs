//! RubyGems answers the proxy writes itself: the compact index (`versions`, `info/<name>`,
//! `names`), the source root that RubyGems probes, and gemspecs and spec indexes where
//! GitLab has none (before 19.1 it answers 404 there; from 19.1 its own bytes pass on).
//!
//! Every answer is for a caller GitLab accepted for the project (the same gate as every
//! cached byte); the bodies come from the project's catalog (`crate::gems::catalog`).

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::artifact::artifact_response;
use super::authorize::{authorize, Authorized};
use super::relay::Forward;
use super::Handled;
use crate::auth::DecisionKey;
use crate::body;
use crate::cache::fill::Joined;
use crate::cache::reader::Reader;
use crate::cache::CacheOutcome;
use crate::error::Error;
use crate::gems::catalog::{synthesized_headers, Built, Catalog, Source};
use crate::gems::compact_index;
use crate::gems::gemspec::IndexKind;
use crate::protocol::rubygems::{CompactFile, GemRequest, SpecIndex};
use crate::route::{CacheClass, PackageRequest, PackageRoute, RouteError};
use crate::state::AppState;

/// Whether the route is a gemspec or spec index, which the proxy writes when GitLab 404s,
/// or a gem, which GitLab 404s under its platform file name.
pub(super) fn has_fallback(route: &PackageRoute) -> bool {
    matches!(
        route.request,
        PackageRequest::Gem(GemRequest::Gemspec(_) | GemRequest::SpecIndex(_) | GemRequest::Gem(_))
    )
}

/// The compact index and the source root.
pub(super) async fn synthesized(
    state: &AppState,
    route: &PackageRoute,
    decision: &DecisionKey,
    request: Request<Incoming>,
    client: IpAddr,
) -> Result<Handled, Error> {
    let head = request.method() == Method::HEAD;
    let headers = Forward::new(request.headers(), client);
    let if_none_match = if_none_match(request.headers());
    let took = match authorize(state, route, decision, &headers, head).await? {
        Authorized::Yes(took) => took,
        Authorized::No(refusal) => return Ok(refusal),
    };
    let PackageRequest::Gem(gem) = &route.request else {
        return Err(Error::Route(RouteError::NotFound));
    };
    let file = match gem {
        GemRequest::Root => {
            // A 200 here tells RubyGems 3.3–3.5 to use `info/` (reference §3.1).
            let body = Bytes::from_static(b"");
            let headers = synthesized_headers("text/plain; charset=utf-8", &body);
            return Ok(answer(headers, body, head, None, CacheOutcome::Local, took));
        }
        GemRequest::CompactIndex(file) => file,
        _ => return Err(Error::Route(RouteError::NotFound)),
    };
    let (catalog, outcome) = catalog(state, route, headers.into_headers()).await?;
    let body = match file {
        CompactFile::Versions => catalog.versions.clone(),
        CompactFile::Names => catalog.names.clone(),
        CompactFile::Info(name) => match catalog.infos.get(name.as_str()) {
            Some(info) => info.clone(),
            None => return Err(Error::Route(RouteError::NotFound)),
        },
    };
    let headers = synthesized_headers("text/plain; charset=utf-8", &body);
    Ok(answer(
        headers,
        body,
        head,
        if_none_match.as_deref(),
        outcome,
        took,
    ))
}

/// A gemspec or spec index: GitLab's (cached as ever) if it has one, else written here.
pub(super) async fn with_fallback(
    state: &Arc<AppState>,
    route: &PackageRoute,
    decision: &DecisionKey,
    request: Request<Incoming>,
    client: IpAddr,
) -> Result<Handled, Error> {
    let head = request.method() == Method::HEAD;
    // Kept for the fallback below; forwarding headers are built only if it runs.
    let incoming = request.headers().clone();
    let gitlab = match route.cache_class() {
        CacheClass::Metadata => {
            super::metadata::metadata(state, route, decision, request, client).await?
        }
        _ => super::artifact::artifact(state, route, decision, request, client).await?,
    };
    if gitlab.response.status() != StatusCode::NOT_FOUND {
        if gitlab.outcome == CacheOutcome::Hit && route.cache_class() == CacheClass::Artifact {
            state.metrics.artifact_hit(&route.content_key());
        }
        return Ok(gitlab);
    }
    // GitLab's 404 is also its refusal of a caller who may not read a private project, so
    // nothing is written before the gate says yes.
    let headers = Forward::new(&incoming, client);
    let took = match authorize(state, route, decision, &headers, head).await? {
        Authorized::Yes(took) => took,
        Authorized::No(refusal) => return Ok(refusal),
    };
    let (catalog, outcome) = catalog(state, route, headers.into_headers()).await?;
    let (body, content_type) = match &route.request {
        PackageRequest::Gem(GemRequest::Gemspec(file)) => {
            let full_name = file
                .decoded()
                .strip_suffix(".gemspec.rz")
                .unwrap_or_default();
            match catalog.gemspec_rz(full_name) {
                Some(bytes) => {
                    let bytes = bytes?;
                    keep_gemspec(state, route, &bytes).await;
                    (bytes, "application/octet-stream")
                }
                None => return Ok(gitlab),
            }
        }
        PackageRequest::Gem(GemRequest::Gem(file)) => {
            let full_name = file.decoded().strip_suffix(".gem").unwrap_or_default();
            let Some((stored, sha256)) = catalog.platform_gem(full_name) else {
                return Ok(gitlab);
            };
            return platform_gem(state, route, &stored, sha256, head, outcome, took)
                .await
                .map(|served| served.unwrap_or(gitlab));
        }
        PackageRequest::Gem(GemRequest::SpecIndex(index)) => {
            let kind = match index {
                SpecIndex::Specs => IndexKind::Specs,
                SpecIndex::LatestSpecs => IndexKind::Latest,
                SpecIndex::PrereleaseSpecs => IndexKind::Prerelease,
            };
            (catalog.spec_index(kind)?, "application/octet-stream")
        }
        _ => return Ok(gitlab),
    };
    let headers = synthesized_headers(content_type, &body);
    Ok(answer(headers, body, head, None, outcome, took))
}

/// A platform gem GitLab keeps under its plain `<name>-<version>.gem`: the stored bytes the
/// catalog indexed (so the `checksum:` the client was given holds), or `None` if the store
/// no longer holds those bytes.
async fn platform_gem(
    state: &AppState,
    route: &PackageRoute,
    stored: &str,
    sha256: &str,
    head: bool,
    outcome: CacheOutcome,
    took: Option<std::time::Duration>,
) -> Result<Option<Handled>, Error> {
    let Some(key) = route.gem_file_key(stored) else {
        return Ok(None);
    };
    let store = state.fills.store();
    let held = store
        .lookup_pinned(&key)
        .await
        .map_err(|e| Error::Internal(format!("store lookup of {key}: {e}")))?;
    let Some((meta, pin)) = held.filter(|(meta, _)| hex::encode(meta.sha256) == sha256) else {
        return Ok(None);
    };
    store.touch(&key);
    let body = if head {
        body::empty()
    } else {
        Reader::committed(&state.fills, key, &meta, pin).into_body()
    };
    Ok(Some(artifact_response(
        &meta.headers,
        Some(meta.len),
        body,
        outcome,
        took,
    )))
}

/// Stores a written gemspec like GitLab's would be, so later requests are store hits.
/// (Written from the gem's own bytes, it is as immutable as the gem.)
async fn keep_gemspec(state: &AppState, route: &PackageRoute, bytes: &Bytes) {
    let key = route.content_key();
    if let Joined::Leader(leader) = state.fills.join(&key) {
        let headers = vec![(
            "content-type".to_owned(),
            "application/octet-stream".to_owned(),
        )];
        let body = Full::new(bytes.clone());
        // The fill stores the bytes for everyone; nobody reads the leader's copy.
        if let Err(not_started) = leader.start(headers, Some(bytes.len() as u64), body).await {
            tracing::warn!(%key, error = %not_started.error, "a written gemspec was not stored");
        }
    }
}

/// The project's catalog, and whether it was cached (`hit`) or built now (`miss`).
async fn catalog(
    state: &AppState,
    route: &PackageRoute,
    headers: HeaderMap,
) -> Result<(Arc<Catalog>, CacheOutcome), Error> {
    let source = Source {
        upstream: &state.upstream,
        fills: &state.fills,
        project: &route.project,
        headers,
        pushed: state.freshness.pushed(route.project.as_raw()),
    };
    let (catalog, built) = state
        .catalogs
        .get(source)
        .await
        .map_err(|e| clone_error(&e))?;
    let outcome = match built {
        Built::Now => CacheOutcome::Miss,
        Built::Cached => CacheOutcome::Hit,
        Built::Stale => CacheOutcome::Stale,
    };
    Ok((catalog, outcome))
}

/// The catalog's error for this request (a shared build failure is reported to each waiter).
fn clone_error(e: &Error) -> Error {
    match e {
        Error::UpstreamConnect(m) => Error::UpstreamConnect(m.clone()),
        Error::UpstreamTimeout(d) => Error::UpstreamTimeout(*d),
        Error::UpstreamStatus(s) => Error::UpstreamStatus(*s),
        Error::UpstreamDown(d) => Error::UpstreamDown(*d),
        Error::UpstreamProtocol(m) => Error::UpstreamProtocol(m.clone()),
        other => Error::Internal(other.to_string()),
    }
}

fn if_none_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// 304 when the client's validator matches, else the whole body (a `Range` is ignored, as
/// the reference advises: Bundler then takes the full 200).
pub(super) fn answer(
    headers: HeaderMap,
    body: Bytes,
    head: bool,
    if_none_match: Option<&str>,
    outcome: CacheOutcome,
    took: Option<std::time::Duration>,
) -> Handled {
    let etag = compact_index::etag(&body);
    let not_modified = if_none_match.is_some_and(|v| compact_index::if_none_match(v, &etag));
    let length = body.len();
    let mut response = if head || not_modified {
        Response::new(body::empty())
    } else {
        Response::new(body::full(body))
    };
    if not_modified {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
    }
    *response.headers_mut() = headers;
    if !not_modified {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    Handled::new(response, outcome, took)
}
