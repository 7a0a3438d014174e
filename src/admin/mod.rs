//! The authenticated admin API under [`PREFIX`]: token check, one dispatcher with one function
//! per endpoint, and one audit event per call.
//!
//! Enabled only when an admin token file is configured; otherwise the prefix answers like any
//! unrouted path. Every call is checked against the token (401 before anything runs, so an
//! unauthenticated caller learns nothing about the endpoints) and then audited, whatever its
//! outcome. To add an endpoint: a variant of [`Action`], its line in [`Action::parse`] and
//! [`Action::name`], an arm in [`dispatch`], and the function in a module of its own.

pub mod audit;
pub mod auth;
mod bundles;
mod gc;
mod integrity;
mod pins;
mod purge;
pub mod select;
mod stats;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use crate::body::{self, collect_limited, Body, Collected};
use crate::error::Error;
use crate::route::RouteError;
use crate::state::AppState;
use crate::storage::StoreError;

pub use auth::AdminToken;

/// Where the admin API lives: under the proxy's own `/-/` space, which GitLab's API never uses.
pub const PREFIX: &str = crate::route::ADMIN_PREFIX;

/// Largest JSON request body an admin endpoint reads.
const MAX_JSON_BODY: usize = 16 << 20;

/// Every admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `GET pins`: what is kept from eviction and how much that is.
    PinsStats,
    /// `POST pin`: keep a selection from eviction.
    Pin,
    /// `POST unpin`: let a selection be evicted again.
    Unpin,
    /// `POST export`: a bundle of a selection (or everything), streamed.
    Export,
    /// `POST import`: a bundle, streamed in, verified, then published and pinned.
    Import,
    /// `GET stats`: per-project usage, hit ratio, bytes saved, most requested artifacts.
    Stats,
    /// `GET integrity`: content GitLab changed under a cached version.
    Integrity,
    /// `POST purge`: remove a selection and its first-copy fingerprints.
    Purge,
    /// `POST verify`: re-read the whole store in the background, dropping damage.
    VerifyStart,
    /// `GET verify`: the verification under way or the last one.
    VerifyReport,
    /// `POST gc`: delete unreferenced blobs of crashed fills from the shared bucket.
    Gc,
}

impl Action {
    /// The endpoint for `method` and `path` (which starts with [`PREFIX`]).
    pub fn parse(method: &Method, path: &str) -> Option<Action> {
        let rest = path.strip_prefix(PREFIX)?;
        let action = match (method.as_str(), rest) {
            ("GET", "pins") => Action::PinsStats,
            ("POST", "pin") => Action::Pin,
            ("POST", "unpin") => Action::Unpin,
            ("POST", "export") => Action::Export,
            ("POST", "import") => Action::Import,
            ("GET", "stats") => Action::Stats,
            ("GET", "integrity") => Action::Integrity,
            ("POST", "purge") => Action::Purge,
            ("POST", "verify") => Action::VerifyStart,
            ("GET", "verify") => Action::VerifyReport,
            ("POST", "gc") => Action::Gc,
            _ => return None,
        };
        Some(action)
    }

    /// The name audited and logged.
    pub fn name(self) -> &'static str {
        match self {
            Action::PinsStats => "pins.stats",
            Action::Pin => "pin",
            Action::Unpin => "unpin",
            Action::Export => "export",
            Action::Import => "import",
            Action::Stats => "stats",
            Action::Integrity => "integrity",
            Action::Purge => "purge",
            Action::VerifyStart => "verify.start",
            Action::VerifyReport => "verify.report",
            Action::Gc => "gc",
        }
    }
}

/// One authenticated admin request, handed to its endpoint function.
pub struct Call {
    pub parts: http::request::Parts,
    pub body: Incoming,
    pub peer: IpAddr,
}

impl Call {
    /// The body as JSON of type `T` (at most [`MAX_JSON_BODY`]); an empty body is `{}`.
    pub async fn json<T: DeserializeOwned>(self) -> Result<T, AdminError> {
        let bytes = match collect_limited(self.body, MAX_JSON_BODY).await {
            Ok(Collected::Complete(bytes)) => bytes,
            Ok(Collected::TooLarge { .. }) => {
                return Err(AdminError::BadRequest(format!(
                    "request body larger than {MAX_JSON_BODY} bytes"
                )))
            }
            Err(e) => {
                return Err(AdminError::BadRequest(format!(
                    "reading the request body: {e}"
                )))
            }
        };
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
            Bytes::from_static(b"{}")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| AdminError::BadRequest(format!("request body: {e}")))
    }

    /// A query parameter, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.parts.uri.query()?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// What an endpoint answered, and a short account of it for the audit log.
pub struct Reply {
    pub response: Response<Body>,
    pub detail: String,
}

impl Reply {
    /// A `200` with a JSON document.
    pub fn json(value: &serde_json::Value, detail: String) -> Reply {
        Reply {
            response: json_response(StatusCode::OK, value.to_string()),
            detail,
        }
    }
}

/// Why an admin call failed; the one status map for the admin API is [`AdminError::status`].
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("missing or wrong admin token")]
    Unauthorized,
    #[error("no such admin endpoint")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    /// The request is well-formed but cannot be carried out (a bundle that does not verify,
    /// a delta whose base is missing).
    #[error("{0}")]
    Refused(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AdminError {
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::NotFound => StatusCode::NOT_FOUND,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AdminError::Store(StoreError::Full) => StatusCode::INSUFFICIENT_STORAGE,
            AdminError::Store(_) | AdminError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn to_response(&self) -> Response<Body> {
        let mut response = json_response(
            self.status(),
            serde_json::json!({ "error": self.to_string() }).to_string(),
        );
        if matches!(self, AdminError::Unauthorized) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"gitlab-pkg-cache admin\""),
            );
        }
        response
    }
}

fn json_response(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Serves one request under [`PREFIX`]. Never fails: every error becomes its response, and
/// every call (when the API is enabled) becomes one audit event.
pub async fn handle(
    state: &Arc<AppState>,
    request: Request<Incoming>,
    peer: IpAddr,
) -> Response<Body> {
    let Some(token) = &state.admin else {
        return Error::Route(RouteError::NotFound).to_response();
    };
    let action = Action::parse(request.method(), request.uri().path());
    let authenticated = auth::bearer(request.headers()).is_some_and(|t| token.verify(t));
    let name = action.map_or("unrouted", Action::name);
    let result = match (authenticated, action) {
        (false, _) => Err(AdminError::Unauthorized),
        (true, None) => Err(AdminError::NotFound),
        (true, Some(action)) => {
            let (parts, body) = request.into_parts();
            dispatch(state, action, Call { parts, body, peer }).await
        }
    };
    let (response, detail) = match result {
        Ok(reply) => (reply.response, reply.detail),
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(action = name, error = %e, "admin call failed");
            }
            (e.to_response(), e.to_string())
        }
    };
    audit::record(&audit::AuditEvent {
        action: name,
        peer,
        authenticated,
        status: response.status(),
        detail: &detail,
    });
    response
}

async fn dispatch(state: &Arc<AppState>, action: Action, call: Call) -> Result<Reply, AdminError> {
    match action {
        Action::PinsStats => pins::stats(state, call).await,
        Action::Pin => pins::pin(state, call).await,
        Action::Unpin => pins::unpin(state, call).await,
        Action::Export => bundles::export(state, call).await,
        Action::Import => bundles::import(state, call).await,
        Action::Stats => stats::stats(state, call).await,
        Action::Integrity => integrity::changes(state, call).await,
        Action::Purge => purge::purge(state, call).await,
        Action::VerifyStart => integrity::start_verify(state, call).await,
        Action::VerifyReport => integrity::verify_report(state, call).await,
        Action::Gc => gc::gc(state, call).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_only_under_the_prefix() {
        assert_eq!(
            Action::parse(&Method::GET, "/-/pkg-cache/admin/pins"),
            Some(Action::PinsStats)
        );
        assert_eq!(
            Action::parse(&Method::POST, "/-/pkg-cache/admin/pin"),
            Some(Action::Pin)
        );
        assert_eq!(Action::parse(&Method::GET, "/-/pkg-cache/admin/pin"), None);
        assert_eq!(Action::parse(&Method::GET, "/pins"), None);
    }

    #[test]
    fn every_error_has_its_status() {
        assert_eq!(AdminError::Unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            AdminError::Store(StoreError::Full).status(),
            StatusCode::INSUFFICIENT_STORAGE
        );
        let response = AdminError::Unauthorized.to_response();
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
