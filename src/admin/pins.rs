//! Pin endpoints: keep selected artifacts from eviction, let them go, and say how much is kept.

use std::sync::Arc;

use serde_json::json;

use super::select::{route_of, Selection};
use super::{AdminError, Call, Reply};
use crate::state::AppState;

/// `GET pins`: kept keys and the bytes they hold, next to the store's totals. With
/// `?keys=false` the key list is left out.
pub async fn stats(state: &Arc<AppState>, call: Call) -> Result<Reply, AdminError> {
    let store = state.fills.store();
    let kept = store.kept();
    let usage = store.kept_usage();
    let total = store.usage();
    let with_keys = call.query("keys").as_deref() != Some("false");
    let mut body = json!({
        "pinned": { "keys": kept.len(), "artifacts": usage.artifacts, "bytes": usage.bytes },
        "store": { "artifacts": total.artifacts, "bytes": total.bytes },
    });
    if with_keys {
        body["keys"] = json!(kept);
    }
    let detail = format!(
        "{} keys pinned, {} artifacts, {} bytes",
        kept.len(),
        usage.artifacts,
        usage.bytes
    );
    Ok(Reply::json(&body, detail))
}

/// `POST pin` with a [`Selection`]: explicit keys are kept even if nothing is stored under
/// them yet (warm pins before it fetches); a project selection keeps what is stored now.
pub async fn pin(state: &Arc<AppState>, call: Call) -> Result<Reply, AdminError> {
    let selection: Selection = call.json().await?;
    selection.validate(false).map_err(AdminError::BadRequest)?;
    let keys = if selection.keys.is_empty() {
        let store = state.fills.store();
        store
            .keys("")
            .into_iter()
            .filter(|key| selection.matches(key))
            .collect()
    } else {
        for key in &selection.keys {
            if route_of(key).is_none() {
                return Err(AdminError::BadRequest(format!(
                    "not a package path the proxy stores: {key}"
                )));
            }
        }
        selection.keys.clone()
    };
    set(state, keys, true, "pinned").await
}

/// `POST unpin` with a [`Selection`], matched against the kept keys.
pub async fn unpin(state: &Arc<AppState>, call: Call) -> Result<Reply, AdminError> {
    let selection: Selection = call.json().await?;
    selection.validate(false).map_err(AdminError::BadRequest)?;
    let keys = state
        .fills
        .store()
        .kept()
        .into_iter()
        .filter(|key| selection.matches(key))
        .collect();
    set(state, keys, false, "unpinned").await
}

async fn set(
    state: &Arc<AppState>,
    keys: Vec<String>,
    kept: bool,
    verb: &str,
) -> Result<Reply, AdminError> {
    let store = state.fills.store();
    let mut changed = 0usize;
    for key in &keys {
        if store.set_kept(key, kept).await? {
            changed += 1;
        }
    }
    let usage = store.kept_usage();
    let body = json!({
        "matched": keys.len(),
        "changed": changed,
        "keys": keys,
        "pinned": { "keys": store.kept().len(), "artifacts": usage.artifacts, "bytes": usage.bytes },
    });
    let detail = format!("{verb} {changed} of {} matched keys", keys.len());
    Ok(Reply::json(&body, detail))
}
