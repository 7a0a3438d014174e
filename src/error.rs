//! The proxy's one error type, tagged by source, and the one place that maps errors to responses.
//!
//! The protocol rule lives here: the go command reads 404 and 410 as "not in this proxy,
//! try the next one", so no failure of GitLab or of the proxy may ever become a 404.
//! Clients get a short text saying what happened (the go command prints it); the detail
//! goes to the log.

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{self, Body};
use crate::route::RouteError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request names nothing GitLab routes, or names it badly.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// A request body over `server.max_upload_bytes`.
    #[error("request body is larger than this proxy accepts (server.max_upload_bytes)")]
    PayloadTooLarge,
    /// GitLab could not be reached (DNS, refused connection, TLS handshake).
    #[error("GitLab is unreachable: {0}")]
    UpstreamConnect(String),
    /// GitLab did not answer in time.
    #[error("GitLab did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    /// GitLab answered with a server error.
    #[error("GitLab answered {0}")]
    UpstreamStatus(http::StatusCode),
    /// GitLab failed repeatedly and is not asked again until its backoff ends.
    #[error("GitLab is marked down after repeated failures; retrying in {0:?}")]
    UpstreamDown(std::time::Duration),
    /// GitLab cannot be asked, and this caller was never accepted before: fail closed.
    #[error("GitLab is unavailable and cannot confirm this caller's access to the project ({0})")]
    Unconfirmed(String),
    /// GitLab answered something that is not a usable HTTP response.
    #[error("GitLab sent a bad answer: {0}")]
    UpstreamProtocol(String),
    /// GitLab's content for a version differs from the copy first cached, and is held back
    /// until an operator decides (`integrity.on_change = "hold"`).
    #[error("{0}")]
    IntegrityHold(String),
    /// Something inside the proxy failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether GitLab itself failed (as opposed to the request or the proxy): the cases in
    /// which stale answers may stand in.
    pub fn is_upstream_failure(&self) -> bool {
        match self {
            Error::UpstreamConnect(_)
            | Error::UpstreamTimeout(_)
            | Error::UpstreamProtocol(_)
            | Error::UpstreamStatus(_)
            | Error::UpstreamDown(_) => true,
            Error::Route(_)
            | Error::PayloadTooLarge
            | Error::Unconfirmed(_)
            | Error::IntegrityHold(_)
            | Error::Internal(_) => false,
        }
    }

    /// The one status map: exhaustive on purpose, so a new variant must choose its status.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Route(RouteError::NotFound) => StatusCode::NOT_FOUND,
            Error::Route(RouteError::BadRequest(_)) => StatusCode::BAD_REQUEST,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UpstreamConnect(_)
            | Error::UpstreamProtocol(_)
            | Error::UpstreamStatus(_)
            | Error::IntegrityHold(_) => StatusCode::BAD_GATEWAY,
            Error::UpstreamDown(_) | Error::Unconfirmed(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response a client sees.
    ///
    /// Routing errors look exactly like GitLab's (its catch-all, its `400 Bad request - …`
    /// JSON); the proxy's own failures are short `text/plain`, which the go command shows.
    pub fn to_response(&self) -> Response<Body> {
        let (content_type, text) = match self {
            Error::Route(RouteError::NotFound) => (
                "application/json",
                r#"{"error":"404 Not Found"}"#.to_owned(),
            ),
            Error::Route(RouteError::BadRequest(reason)) => (
                "application/json",
                serde_json::json!({ "message": format!("400 Bad request - {reason}") }).to_string(),
            ),
            Error::PayloadTooLarge
            | Error::UpstreamConnect(_)
            | Error::UpstreamTimeout(_)
            | Error::UpstreamStatus(_)
            | Error::UpstreamDown(_)
            | Error::Unconfirmed(_)
            | Error::IntegrityHold(_)
            | Error::UpstreamProtocol(_) => (
                "text/plain; charset=utf-8",
                format!("gitlab-pkg-cache: {self}\n"),
            ),
            // The detail may name internal paths; it is logged, not sent.
            Error::Internal(_) => (
                "text/plain; charset=utf-8",
                "gitlab-pkg-cache: internal error, see the proxy's log\n".to_owned(),
            ),
        };
        let mut response = Response::new(body::full(text));
        *response.status_mut() = self.status();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::NameError;
    use http_body_util::BodyExt;

    async fn body_of(e: Error) -> (StatusCode, String) {
        let r = e.to_response();
        let status = r.status();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn upstream_failures_never_look_like_not_found() {
        for e in [
            Error::UpstreamConnect("connection refused".into()),
            Error::UpstreamTimeout(std::time::Duration::from_secs(3)),
            Error::UpstreamProtocol("reset".into()),
            Error::UpstreamStatus(StatusCode::INTERNAL_SERVER_ERROR),
            Error::UpstreamDown(std::time::Duration::from_secs(4)),
        ] {
            let (status, text) = body_of(e).await;
            assert!(
                status.is_server_error() && status != StatusCode::INTERNAL_SERVER_ERROR,
                "{status}"
            );
            assert!(text.starts_with("gitlab-pkg-cache: GitLab"), "{text}");
        }
    }

    #[tokio::test]
    async fn routing_errors_look_like_gitlab() {
        assert_eq!(
            body_of(Error::Route(RouteError::NotFound)).await,
            (
                StatusCode::NOT_FOUND,
                r#"{"error":"404 Not Found"}"#.to_owned()
            )
        );
        let (status, text) = body_of(Error::Route(RouteError::BadRequest(NameError::Empty(
            "gem name",
        ))))
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(text, r#"{"message":"400 Bad request - gem name is empty"}"#);
        let (status, text) = body_of(Error::Internal("/secret/path".into())).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!text.contains("/secret/path"));
    }
}
