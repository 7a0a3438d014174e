//! Offline mode: every package request is answered from what the proxy holds, after the
//! offline access policy (never GitLab) decided for the caller and project. `@v/list` lists
//! the versions held; RubyGems indexes are written from the gems held (`held_gems`);
//! anything not held is a 404, so clients walking a GOPROXY list go on.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::artifact::artifact_response;
use super::held_gems::{answer_held, not_held};
use super::metadata::serve_cached;
use super::Handled;
use crate::airgap::offline::{held_versions, spellings, OfflinePolicy, Verdict};
use crate::auth::DecisionKey;
use crate::body;
use crate::cache::reader::Reader;
use crate::cache::CacheOutcome;
use crate::error::Error;
use crate::protocol::goproxy::GoRequest;
use crate::route::{CacheClass, PackageRequest, PackageRoute};
use crate::state::AppState;

fn json(status: StatusCode, text: &'static str, outcome: CacheOutcome) -> Handled {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Handled::new(response, outcome, None)
}

pub(super) async fn package(
    state: &Arc<AppState>,
    policy: &OfflinePolicy,
    route: &PackageRoute,
    decision: &DecisionKey,
    request: Request<Incoming>,
) -> Result<Handled, Error> {
    let class = route.cache_class();
    if class == CacheClass::Upload {
        return Ok(super::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "gitlab-pkg-cache: offline mode: uploads need GitLab\n".to_owned(),
        ));
    }
    let accepted_lately = state
        .gate
        .accepted_ago(decision)
        .await
        .is_some_and(|ago| ago < state.config.cache.offline_grace);
    match policy.decide(
        request.headers(),
        request.uri().query(),
        route.project.as_raw(),
        accepted_lately,
    ) {
        Verdict::Allow => {}
        Verdict::Unauthorized => {
            return Ok(json(
                StatusCode::UNAUTHORIZED,
                r#"{"message":"401 Unauthorized"}"#,
                CacheOutcome::Refused,
            ))
        }
        Verdict::NotFound => {
            return Ok(json(
                StatusCode::NOT_FOUND,
                r#"{"message":"404 Project Not Found"}"#,
                CacheOutcome::Refused,
            ))
        }
    }
    let head = request.method() == Method::HEAD;
    if let Some(handled) = answer_held(state, route, request.headers(), head).await? {
        return Ok(handled);
    }
    let key = route.content_key();
    match (&route.request, class) {
        (
            PackageRequest::Go {
                request: GoRequest::List,
                ..
            },
            _,
        ) => {
            let prefix = key.strip_suffix("list").unwrap_or(&key);
            let store = state.fills.store();
            let keys: Vec<String> = spellings(prefix)
                .iter()
                .flat_map(|p| store.keys(p))
                .collect();
            let versions = held_versions(&keys, prefix);
            if versions.is_empty() {
                return Ok(not_held());
            }
            let length = versions.len();
            let mut response = Response::new(if head {
                body::empty()
            } else {
                body::full(versions)
            });
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            Ok(Handled::new(response, CacheOutcome::Hit, None))
        }
        (_, CacheClass::Metadata) => match state.memory.get(&key).await {
            Some(lookup) => Ok(serve_cached(
                &lookup.response,
                StatusCode::OK,
                head,
                CacheOutcome::Hit,
                None,
            )),
            None => Ok(not_held()),
        },
        (_, CacheClass::Artifact) => {
            let store = state.fills.store();
            let mut found = None;
            for spelling in spellings(&key) {
                found = store
                    .lookup_pinned(&spelling)
                    .await
                    .map_err(|e| Error::Internal(format!("store lookup of {key}: {e}")))?
                    .map(|held| (spelling, held));
                if found.is_some() {
                    break;
                }
            }
            let Some((key, (meta, pin))) = found else {
                return Ok(not_held());
            };
            store.touch(&key);
            let body = if head {
                body::empty()
            } else {
                Reader::committed(&state.fills, key, &meta, pin).into_body()
            };
            Ok(artifact_response(
                &meta.headers,
                Some(meta.len),
                body,
                CacheOutcome::Hit,
                None,
            ))
        }
        // Everything written from held gems was answered above.
        (_, CacheClass::PassThrough | CacheClass::Upload | CacheClass::Synthesized) => {
            Ok(not_held())
        }
    }
}
