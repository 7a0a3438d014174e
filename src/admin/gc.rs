//! `POST gc`: deletes blobs in the shared bucket that no reference names (left by fills that
//! crashed between completing their upload and committing it), once older than a grace period.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{AdminError, Call, Reply};
use crate::state::AppState;

/// Blobs younger than this are left alone unless the call says otherwise: far longer than
/// any fill takes between completing its blob and committing its reference.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GcRequest {
    /// `humantime` text, e.g. `"6h"`; [`DEFAULT_GRACE`] when absent.
    grace: Option<String>,
}

pub async fn gc(state: &Arc<AppState>, call: Call) -> Result<Reply, AdminError> {
    let request: GcRequest = call.json().await?;
    let grace = match &request.grace {
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| AdminError::BadRequest(format!("grace {text:?}: {e}")))?,
        None => DEFAULT_GRACE,
    };
    let Some(leases) = &state.leases else {
        return Err(AdminError::Refused(
            "no shared bucket is configured (store.s3.endpoint): nothing to collect".to_owned(),
        ));
    };
    let bucket = leases.bucket().clone();
    let report = tokio::task::spawn_blocking(move || bucket.collect_garbage(grace))
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))??;
    let body = serde_json::json!({
        "grace_seconds": grace.as_secs(),
        "blobs": report.blobs,
        "young": report.young,
        "referenced": report.referenced,
        "deleted": report.deleted,
        "deleted_bytes": report.deleted_bytes,
    });
    let detail = format!(
        "deleted {} unreferenced blobs ({} bytes) older than {}; kept {} referenced, {} young",
        report.deleted,
        report.deleted_bytes,
        humantime::format_duration(grace),
        report.referenced,
        report.young
    );
    Ok(Reply::json(&body, detail))
}
