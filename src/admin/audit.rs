//! The audit log: one event per admin call, on the `audit` tracing target, never with a secret.

use std::net::IpAddr;

use http::StatusCode;

/// Target of audit events, so operators can route them apart (`--log audit=info,…`).
pub const TARGET: &str = "audit";

/// One admin call as it is recorded.
pub struct AuditEvent<'a> {
    /// The endpoint's action name (`pins.add`, …), or `unrouted`.
    pub action: &'a str,
    pub peer: IpAddr,
    /// Whether the caller presented the admin token (`false`: refused before anything ran).
    pub authenticated: bool,
    pub status: StatusCode,
    /// What the call did or why it failed, in words safe to log.
    pub detail: &'a str,
}

pub fn record(event: &AuditEvent<'_>) {
    let outcome = if !event.authenticated {
        "denied"
    } else if event.status.is_success() {
        "ok"
    } else {
        "failed"
    };
    tracing::info!(
        target: TARGET,
        action = event.action,
        outcome,
        status = event.status.as_u16(),
        peer = %event.peer,
        detail = event.detail,
        "admin call"
    );
}
