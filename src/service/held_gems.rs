//! Offline RubyGems answers GitLab would give, written from the gems the store holds for the
//! project (`crate::gems::held`): the source root, the compact index, spec indexes, gemspecs
//! that were never stored, and dependency answers. A project holding no gems falls back to
//! GitLab's answers kept earlier (spec indexes, dependency answers), else 404.
//!
//! Called only after the offline access policy allowed the caller for the project.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use super::gems::answer;
use super::metadata::serve_cached;
use super::Handled;
use crate::body;
use crate::cache::CacheOutcome;
use crate::error::Error;
use crate::gems::catalog::synthesized_headers;
use crate::gems::gemspec::IndexKind;
use crate::gems::held::dependency_answer;
use crate::protocol::rubygems::{CompactFile, GemRequest, SpecIndex};
use crate::route::{PackageRequest, PackageRoute};
use crate::state::AppState;

const TEXT: &str = "text/plain; charset=utf-8";
const BINARY: &str = "application/octet-stream";

/// The answer for `route` if it is one written from held gems; `None` for everything else
/// (stored artifacts, Go), which the caller serves as it always does.
pub(super) async fn answer_held(
    state: &AppState,
    route: &PackageRoute,
    request_headers: &HeaderMap,
    head: bool,
) -> Result<Option<Handled>, Error> {
    let PackageRequest::Gem(gem) = &route.request else {
        return Ok(None);
    };
    let if_none_match = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    let key = route.content_key();
    let written = |content_type: &'static str, body: Bytes| {
        let headers = synthesized_headers(content_type, &body);
        Some(answer(
            headers,
            body,
            head,
            if_none_match,
            CacheOutcome::Hit,
            None,
        ))
    };
    let handled = match gem {
        // A 200 here tells RubyGems 3.3–3.5 to use `info/`.
        GemRequest::Root => written(TEXT, Bytes::new()),
        GemRequest::CompactIndex(file) => {
            let catalog = state.held_gems.get(&state.fills, &route.project).await?;
            if catalog.infos.is_empty() {
                Some(not_held())
            } else {
                match file {
                    CompactFile::Versions => written(TEXT, catalog.versions.clone()),
                    CompactFile::Names => written(TEXT, catalog.names.clone()),
                    CompactFile::Info(name) => match catalog.infos.get(name.as_str()) {
                        Some(info) => written(TEXT, info.clone()),
                        None => Some(not_held()),
                    },
                }
            }
        }
        GemRequest::SpecIndex(index) => {
            let catalog = state.held_gems.get(&state.fills, &route.project).await?;
            if catalog.tuples.is_empty() {
                Some(kept_answer(state, &key, head).await)
            } else {
                let kind = match index {
                    SpecIndex::Specs => IndexKind::Specs,
                    SpecIndex::LatestSpecs => IndexKind::Latest,
                    SpecIndex::PrereleaseSpecs => IndexKind::Prerelease,
                };
                written(BINARY, catalog.spec_index(kind)?)
            }
        }
        GemRequest::Gemspec(file) => {
            let store = state.fills.store();
            let stored = store
                .lookup(&key)
                .await
                .map_err(|e| Error::Internal(format!("store lookup of {key}: {e}")))?;
            if stored.is_some() {
                // GitLab's own (or one written earlier): served as the artifact it is.
                None
            } else {
                let catalog = state.held_gems.get(&state.fills, &route.project).await?;
                let full_name = file
                    .decoded()
                    .strip_suffix(".gemspec.rz")
                    .unwrap_or_default();
                match catalog.gemspec_rz(full_name) {
                    Some(bytes) => written(BINARY, bytes?),
                    None => Some(not_held()),
                }
            }
        }
        GemRequest::Dependencies(names) => {
            let catalog = state.held_gems.get(&state.fills, &route.project).await?;
            if catalog.specs.is_empty() {
                Some(kept_answer(state, &key, head).await)
            } else {
                match names {
                    // GitLab's liveness answer.
                    None => Some(plain_answer(BINARY, Bytes::from_static(b"200"), head)),
                    Some(list) => {
                        let names: Vec<&str> = list.names().iter().map(|n| n.as_str()).collect();
                        // GitLab answers 404 when one name is unknown.
                        if names.iter().any(|n| !catalog.infos.contains_key(*n)) {
                            Some(not_held())
                        } else {
                            let body = dependency_answer(&catalog, names).map_err(|e| {
                                Error::Internal(format!("writing a dependency answer: {e}"))
                            })?;
                            Some(plain_answer(BINARY, Bytes::from(body), head))
                        }
                    }
                }
            }
        }
        GemRequest::Gem(_)
        | GemRequest::RootFile
        | GemRequest::Upload
        | GemRequest::UploadAuthorize => None,
    };
    Ok(handled)
}

/// GitLab's answer kept for `key` (imported or cached earlier), else 404.
async fn kept_answer(state: &AppState, key: &str, head: bool) -> Handled {
    match state.memory.get(key).await {
        Some(lookup) => serve_cached(
            &lookup.response,
            StatusCode::OK,
            head,
            CacheOutcome::Hit,
            None,
        ),
        None => not_held(),
    }
}

/// A body without validators (GitLab sends none on these either).
fn plain_answer(content_type: &'static str, body: Bytes, head: bool) -> Handled {
    let length = body.len();
    let mut response = Response::new(if head {
        body::empty()
    } else {
        body::full(body)
    });
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Handled::new(response, CacheOutcome::Hit, None)
}

/// What GitLab says about a package it does not have.
pub(super) fn not_held() -> Handled {
    let mut response = Response::new(body::full(r#"{"message":"404 Not Found"}"#));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Handled::new(response, CacheOutcome::Local, None)
}
