//! `GET stats`: what the store holds per project (adding up to its totals; first copies kept
//! since eviction apart), and what the cache saved since start: hit ratio, bytes not fetched from GitLab, most requested artifacts.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use super::select::route_of;
use super::{AdminError, Call, Reply};
use crate::state::AppState;

/// Most requested artifacts listed.
const TOP: usize = 20;

pub async fn stats(state: &Arc<AppState>, call: Call) -> Result<Reply, AdminError> {
    let top = call
        .query("top")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(TOP);
    let store = state.fills.store().inner().clone();
    // One pass over the records, off the runtime; projects as clients name them in URLs.
    let per_project = tokio::task::spawn_blocking(move || {
        let mut per_project: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for key in store.keys("") {
            let Some(meta) = store.lookup(&key)? else {
                continue;
            };
            let project = route_of(&key).map_or_else(
                || "(other)".to_owned(),
                |route| {
                    percent_encoding::percent_decode_str(route.project.as_raw())
                        .decode_utf8_lossy()
                        .into_owned()
                },
            );
            let entry = per_project.entry(project).or_default();
            entry.0 += 1;
            entry.1 += meta.len;
        }
        Ok::<_, crate::storage::StoreError>(per_project)
    })
    .await
    .map_err(|e| AdminError::Internal(e.to_string()))??;
    let usage = state.fills.store().usage();
    let originals = state.fills.store().originals_usage();
    let totals = state.metrics.cache_totals();
    let answered = totals.cached + totals.missed;
    let hit_ratio = (answered > 0).then(|| totals.cached as f64 / answered as f64);
    let projects: Vec<_> = per_project
        .iter()
        .map(|(project, (artifacts, bytes))| {
            json!({ "project": project, "artifacts": artifacts, "bytes": bytes })
        })
        .collect();
    let top: Vec<_> = state
        .metrics
        .top_artifacts(top)
        .into_iter()
        .map(|(key, hits)| json!({ "key": key, "hits": hits }))
        .collect();
    let body = json!({
        "store": { "artifacts": usage.artifacts, "bytes": usage.bytes },
        "originals": {
            "artifacts": originals.artifacts,
            "bytes": originals.bytes,
            "max_bytes": state.config.originals_max_bytes(),
        },
        "projects": projects,
        "since_start": {
            "requests_from_cache": totals.cached,
            "requests_from_gitlab": totals.missed,
            "hit_ratio": hit_ratio,
            "bytes_saved_upstream": totals.bytes_from_cache,
            "bytes_from_gitlab": totals.bytes_from_gitlab,
        },
        "top_artifacts": top,
    });
    let detail = format!(
        "{} projects, {} artifacts, {} bytes",
        projects.len(),
        usage.artifacts,
        usage.bytes
    );
    Ok(Reply::json(&body, detail))
}
