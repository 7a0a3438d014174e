//! The authorization gate in front of every cached byte: remembered decisions, the cheap
//! probe with the caller's own credentials, and the offline grace while GitLab is down.

use std::time::Duration;

use http::StatusCode;

use super::relay::{fetch, get, relay, Fetched, Forward};
use super::Handled;
use crate::auth::DecisionKey;
use crate::cache::CacheOutcome;
use crate::error::Error;
use crate::metrics::AuthResult;
use crate::route::PackageRoute;
use crate::state::AppState;

/// The answer to "may this caller read this project's packages?"
pub(super) enum Authorized {
    /// Yes; `Some` is how long GitLab took when it had to be asked.
    Yes(Option<Duration>),
    /// No: GitLab's refusal, to be sent as it is.
    No(Handled),
}

/// The gate in front of every cached byte: a remembered acceptance, or GitLab's answer to
/// the route's cheap probe made with the caller's own credentials. While GitLab cannot be
/// asked, only callers it accepted within the offline grace pass (fail closed).
pub(super) async fn authorize(
    state: &AppState,
    route: &PackageRoute,
    decision: &DecisionKey,
    headers: &Forward<'_>,
    head: bool,
) -> Result<Authorized, Error> {
    if state.gate.is_accepted(decision).await {
        state.metrics.auth(AuthResult::Remembered);
        return Ok(Authorized::Yes(None));
    }
    match fetch(
        state,
        get(
            route.probe_path_and_query(),
            headers.headers().clone(),
            false,
        ),
    )
    .await?
    {
        Fetched::Answer(probe, took) if probe.status() == StatusCode::OK => {
            state.metrics.auth(AuthResult::ProbeAccepted);
            state.gate.accept(decision.clone()).await;
            Ok(Authorized::Yes(Some(took)))
        }
        Fetched::Answer(probe, took) => {
            // GitLab authorizes before it looks at the resource, so its refusal of the
            // probe is its refusal of this request: relay it, and nothing from the cache.
            state.metrics.auth(AuthResult::ProbeRefused);
            Ok(Authorized::No(Handled::new(
                relay(probe, head),
                CacheOutcome::Refused,
                Some(took),
            )))
        }
        Fetched::Failed(error) => confirmed_earlier(state, decision, error)
            .await
            .map(|()| Authorized::Yes(None)),
    }
}

/// While GitLab cannot be asked: `Ok` if it accepted this caller for this project within the
/// offline grace, otherwise the 503 that fails closed.
pub(super) async fn confirmed_earlier(
    state: &AppState,
    decision: &DecisionKey,
    error: Error,
) -> Result<(), Error> {
    let grace = state.config.cache.offline_grace;
    if state
        .gate
        .accepted_ago(decision)
        .await
        .is_some_and(|ago| ago < grace)
    {
        state.metrics.auth(AuthResult::Grace);
        Ok(())
    } else {
        state.metrics.auth(AuthResult::Unconfirmed);
        Err(Error::Unconfirmed(error.to_string()))
    }
}
