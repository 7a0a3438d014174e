//! Health, readiness and metrics endpoints of the proxy itself.

use http::header::{self, HeaderValue};
use http::StatusCode;

use super::{plain, Handled};
use crate::metrics::Snapshot;
use crate::state::AppState;

/// `/-/readyz`: ready when the store answers; GitLab being down is reported, not fatal,
/// since serving from cache during an outage is part of the job.
pub(super) async fn ready(state: &AppState) -> Handled {
    let store = state.fills.store();
    let probe = store.put_record("health", b"readyz", b"1").await;
    let gitlab = if state.upstream.is_up() {
        "up"
    } else {
        "degraded (marked down)"
    };
    match probe {
        Ok(()) => plain(
            StatusCode::OK,
            format!("ready\nstore: ok\ngitlab: {gitlab}\n"),
        ),
        Err(e) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\nstore: {e}\ngitlab: {gitlab}\n"),
        ),
    }
}

/// `/-/pkg-cache/metrics`: Prometheus text exposition.
pub(super) async fn metrics(state: &AppState) -> Handled {
    let usage = state.fills.store().usage();
    let originals = state.fills.store().originals_usage();
    let store_path = state.config.store_path();
    // One statvfs call, off the runtime like any file-system call; 0 if it fails (the
    // headroom alert then fires rather than staying silent).
    let free = tokio::task::spawn_blocking(move || fs4::available_space(&store_path))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let text = state.metrics.encode(Snapshot {
        store_max_bytes: state.config.store.max_bytes.as_u64(),
        store_min_free_bytes: state.config.store.min_free_bytes.as_u64(),
        store_free_bytes: free,
        fills_in_flight: state.fills.in_flight() as u64,
        fill_waiters: state.fills.waiting() as u64,
        store_bytes: usage.bytes,
        store_artifacts: usage.artifacts,
        memory_bytes: state.memory.weighted_size(),
        upstream_up: state.upstream.is_up(),
        originals_bytes: originals.bytes,
        originals_artifacts: originals.artifacts,
    });
    let mut handled = plain(StatusCode::OK, text);
    handled.response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    handled
}
