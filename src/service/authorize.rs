//! The authorization gate in front of every cached byte: remembered decisions, the cheap
//! probe with the caller's own credentials, its re-confirmation ahead of expiry in the
//! background, and the offline grace while GitLab is down.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::relay::{fetch, get, relay, Fetched, Forward};
use super::Handled;
use crate::auth::{Confirming, DecisionKey, Standing};
use crate::cache::CacheOutcome;
use crate::error::Error;
use crate::metrics::AuthResult;
use crate::route::PackageRoute;
use crate::state::AppState;
use crate::upstream::Upstream;

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
    let standing = state.gate.standing(decision).await;
    authorize_as(state, route, decision, standing, headers, head).await
}

/// [`authorize`] for a caller whose standing the handler has just looked up itself, so that
/// a hit costs one lookup of the decision, with the same refresh ahead.
pub(super) async fn authorize_as(
    state: &AppState,
    route: &PackageRoute,
    decision: &DecisionKey,
    standing: Standing,
    headers: &Forward<'_>,
    head: bool,
) -> Result<Authorized, Error> {
    match standing {
        Standing::Trusted => {
            state.metrics.auth(AuthResult::Remembered);
            return Ok(Authorized::Yes(None));
        }
        Standing::RefreshAhead => {
            state.metrics.auth(AuthResult::Remembered);
            confirm_in_background(state, route, decision, headers.headers());
            return Ok(Authorized::Yes(None));
        }
        Standing::Unknown => {}
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
            // An earlier yes no longer holds, not even for the offline grace.
            state.gate.revoke(decision).await;
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

/// Re-confirms a decision late in its life with the same probe and the same credentials,
/// without holding up the request that noticed: a yes renews it, a refusal forgets it (so the
/// caller's next request is refused by GitLab itself), a failure changes nothing.
/// Concurrent uses of one decision start one confirmation.
fn confirm_in_background(
    state: &AppState,
    route: &PackageRoute,
    decision: &DecisionKey,
    headers: &http::HeaderMap,
) {
    let Some(confirming) = state.gate.begin_confirming(decision) else {
        return;
    };
    let upstream = Arc::clone(&state.upstream);
    let gate = state.gate.clone();
    let metrics = state.metrics.clone();
    let probe = get(route.probe_path_and_query(), headers.clone(), false);
    tokio::spawn(async move {
        let confirming: Confirming = confirming;
        let answer = confirm(&upstream, probe).await;
        match answer {
            Some(true) => {
                metrics.auth(AuthResult::ReconfirmedAccepted);
                gate.accept(confirming.key().clone()).await;
            }
            Some(false) => {
                metrics.auth(AuthResult::ReconfirmedRefused);
                gate.revoke(confirming.key()).await;
            }
            None => {}
        }
    });
}

/// GitLab's answer to a probe: `Some(true)` yes, `Some(false)` a refusal (any 4xx), `None`
/// when GitLab could not say.
async fn confirm(upstream: &Upstream, probe: crate::upstream::UpstreamRequest) -> Option<bool> {
    let (response, _) = upstream.send(probe).await.ok()?;
    let status = response.status();
    if status == StatusCode::OK {
        Some(true)
    } else if status.is_client_error() {
        Some(false)
    } else {
        None
    }
}
