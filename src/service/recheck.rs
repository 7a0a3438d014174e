//! Sampled revalidation of stored Go `.info`/`.mod` (`integrity.recheck`): GitLab is asked
//! again in the background, with the credentials of the caller whose hit was sampled (held
//! only for that request), and its answer is compared with the first copy.

use std::sync::Arc;

use http::StatusCode;

use super::relay::{fetch, get, Fetched};
use crate::body::{collect_limited, Collected};
use crate::route::PackageRoute;
use crate::state::AppState;

pub(super) fn spawn(state: &Arc<AppState>, route: &PackageRoute, headers: http::HeaderMap) {
    let state = Arc::clone(state);
    let key = route.content_key();
    let request = get(route.path_and_query(), headers, true);
    tokio::spawn(async move {
        // Failures and refusals say nothing about the content: the next sample tries again.
        let Ok(Fetched::Answer(response, _)) = fetch(&state, request).await else {
            return;
        };
        if response.status() != StatusCode::OK {
            return;
        }
        let limit = usize::try_from(state.config.cache.memory_entry_max_bytes.as_u64())
            .unwrap_or(usize::MAX);
        if let Ok(Collected::Complete(bytes)) = collect_limited(response.into_body(), limit).await {
            state.integrity.observe(&key, &bytes).await;
        }
    });
}
