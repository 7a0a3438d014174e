//! `POST purge`: removes a selection of stored artifacts together with their first-copy
//! fingerprints and kept originals, so the next request fetches from GitLab and keeps what
//! GitLab serves then.

use std::sync::Arc;

use serde_json::json;

use super::select::Selection;
use super::{AdminError, Call, Reply};
use crate::state::AppState;

pub async fn purge(state: &Arc<AppState>, call: Call) -> Result<Reply, AdminError> {
    let selection: Selection = call.json().await?;
    selection.validate(false).map_err(AdminError::BadRequest)?;
    let store = state.fills.store();
    let stored: Vec<String> = store
        .keys("")
        .into_iter()
        .filter(|key| selection.matches(key))
        .collect();
    let mut removed = Vec::new();
    let mut bytes = 0u64;
    for key in &stored {
        let len = store.lookup(key).await?.map_or(0, |meta| meta.len);
        if store.remove(key).await? {
            // The memory copy would never be served again; this frees it at once.
            state.artifacts.invalidate(key);
            bytes += len;
            removed.push(key.clone());
        }
    }
    // First copies kept since eviction go too: the next fill becomes the first copy.
    let mut originals = 0usize;
    let mut original_bytes = 0u64;
    for (key, len) in store.originals("") {
        if selection.matches(&key) && store.remove(&key).await? {
            originals += 1;
            original_bytes += len;
        }
    }
    // Fingerprints outlive eviction: those of evicted versions are forgotten too.
    let mut forgotten = 0usize;
    for key in state.integrity.fingerprinted_keys().await? {
        if selection.matches(&key) && state.integrity.forget(&key).await? {
            forgotten += 1;
        }
    }
    state.metrics.forget_artifacts(&removed);
    let body = json!({
        "purged": removed.len(),
        "bytes": bytes,
        "keys": removed,
        "fingerprints_forgotten": forgotten,
        "originals_dropped": originals,
        "originals_bytes": original_bytes,
    });
    let detail = format!(
        "purged {} artifacts ({bytes} bytes) and {originals} kept originals ({original_bytes} bytes), forgot {forgotten} fingerprints",
        removed.len()
    );
    Ok(Reply::json(&body, detail))
}
