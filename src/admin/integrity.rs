//! Integrity endpoints: `GET integrity` lists content GitLab changed under a cached version;
//! `POST verify` starts re-reading the store and `GET verify` reports on it.

use std::sync::Arc;

use serde_json::json;

use super::{AdminError, Call, Reply};
use crate::state::AppState;

pub async fn changes(state: &Arc<AppState>, _call: Call) -> Result<Reply, AdminError> {
    let changes = state.integrity.changes().await?;
    let detail = format!("{} integrity changes listed", changes.len());
    let body = json!({ "changes": changes });
    Ok(Reply::json(&body, detail))
}

pub async fn start_verify(state: &Arc<AppState>, _call: Call) -> Result<Reply, AdminError> {
    let started = state.integrity.start_verify();
    let detail = if started {
        "verification started"
    } else {
        "verification already running"
    };
    let body = json!({ "started": started, "report": state.integrity.verify_report() });
    Ok(Reply::json(&body, detail.to_owned()))
}

pub async fn verify_report(state: &Arc<AppState>, _call: Call) -> Result<Reply, AdminError> {
    let report = state.integrity.verify_report();
    let detail = match &report {
        Some(r) if r.running => format!("verification running: {} of {}", r.checked, r.total),
        Some(r) => format!(
            "last verification: {} checked, {} dropped",
            r.checked,
            r.dropped.len()
        ),
        None => "no verification yet".to_owned(),
    };
    Ok(Reply::json(&json!({ "report": report }), detail))
}
