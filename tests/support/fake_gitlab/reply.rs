//! GitLab's answers: the bodies its API helpers render, and the headers its Rack stack adds.

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, ETAG, LOCATION,
    WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use sha2::{Digest, Sha256};

/// Which Grape API answered: it decides the Content-Type of error bodies, which follows the
/// API's negotiated format (JSON for Go, the declared `binary` format for RubyGems).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    Go,
    RubyGems,
    /// An ordinary JSON endpoint of the REST API (the Packages API).
    Rest,
}

impl Api {
    fn error_content_type(self) -> &'static str {
        match self {
            Api::Go | Api::Rest => "application/json",
            Api::RubyGems => "application/octet-stream",
        }
    }
}

/// An answer before the middleware headers are added by [`Reply::finish`].
pub(super) struct Reply {
    status: StatusCode,
    /// In insertion order; a `Vec` keeps `Result<_, Reply>` small.
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

/// rack-oauth2's description for `insufficient_scope`, which GitLab passes through.
const INSUFFICIENT_SCOPE: &str =
    "The request requires higher privileges than provided by the access token.";

impl Reply {
    pub fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            headers: vec![(CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body: body.into(),
        }
    }

    /// Adds a header whose value the fake composed itself from escaped or validated text.
    pub fn with_header(mut self, name: HeaderName, value: &str) -> Reply {
        let value = HeaderValue::from_str(value).expect("header values are escaped text");
        self.headers.push((name, value));
        self
    }

    /// What GitLab's `render_api_error!` produces: `{"message": ...}`.
    pub fn message(api: Api, status: StatusCode, message: &str) -> Reply {
        let body = serde_json::json!({ "message": message }).to_string();
        Reply::new(status, api.error_content_type(), body)
    }

    /// The API's catch-all route: no route matched, so nothing else (not even
    /// authentication) ran.
    pub fn route_not_found() -> Reply {
        Reply::new(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":"404 Not Found"}"#,
        )
    }

    pub fn unauthorized(api: Api) -> Reply {
        Reply::message(api, StatusCode::UNAUTHORIZED, "401 Unauthorized")
    }

    pub fn forbidden(api: Api) -> Reply {
        Reply::message(api, StatusCode::FORBIDDEN, "403 Forbidden")
    }

    /// `not_found!('Project')`.
    pub fn project_not_found(api: Api) -> Reply {
        Reply::message(api, StatusCode::NOT_FOUND, "404 Project Not Found")
    }

    /// `not_found!`.
    pub fn not_found(api: Api) -> Reply {
        Reply::message(api, StatusCode::NOT_FOUND, "404 Not Found")
    }

    /// `ActiveRecord::RecordNotFound` (from `.last!`), rescued with a lower-case "found".
    pub fn record_not_found(api: Api) -> Reply {
        Reply::message(api, StatusCode::NOT_FOUND, "404 Not found")
    }

    /// A Grape parameter validation failure, rendered with `error!` (key `error`).
    pub fn invalid_param(api: Api, param: &str) -> Reply {
        let body = serde_json::json!({ "error": format!("{param} does not have a valid value") });
        Reply::new(
            StatusCode::BAD_REQUEST,
            api.error_content_type(),
            body.to_string(),
        )
    }

    /// rack-oauth2's `invalid_token` error, which GitLab's API guard renders for expired
    /// and revoked access tokens. GitLab builds it outside the middleware, so the realm is
    /// rack-oauth2's default rather than the `'The API'` the middleware is mounted with.
    pub fn invalid_token(description: &str) -> Reply {
        let body =
            serde_json::json!({ "error": "invalid_token", "error_description": description });
        let challenge = format!(
            r#"Bearer realm="Protected by OAuth 2.0", error="invalid_token", error_description="{description}""#
        );
        Reply::new(
            StatusCode::UNAUTHORIZED,
            "application/json",
            body.to_string(),
        )
        .with_header(WWW_AUTHENTICATE, &challenge)
    }

    pub fn token_expired() -> Reply {
        Reply::invalid_token(
            "Token is expired. You can either do re-authorization or token refresh.",
        )
    }

    pub fn token_revoked() -> Reply {
        Reply::invalid_token("Token was revoked. You have to re-authorize from the user.")
    }

    /// rack-oauth2's `insufficient_scope` (a 403 without a challenge header), listing the
    /// scopes the API accepts.
    pub fn insufficient_scope() -> Reply {
        let body = serde_json::json!({
            "error": "insufficient_scope",
            "error_description": INSUFFICIENT_SCOPE,
            "scope": "api read_api",
        });
        Reply::new(StatusCode::FORBIDDEN, "application/json", body.to_string())
    }

    /// The fake's own answer to a request it cannot even parse (GitLab would fail in its
    /// own way somewhere in Rack); never a panic.
    pub fn malformed(reason: &str) -> Reply {
        Reply::new(
            StatusCode::BAD_REQUEST,
            "text/plain",
            format!("malformed request: {reason}"),
        )
    }

    /// A file download served through Workhorse (`present_disk_file!`).
    pub fn attachment(file_name: &str, bytes: Bytes) -> Reply {
        Reply::new(StatusCode::OK, "application/octet-stream", bytes)
            .with_header(CONTENT_DISPOSITION, &content_disposition(file_name))
            .with_header(
                HeaderName::from_static("content-transfer-encoding"),
                "binary",
            )
    }

    /// Grape's `redirect`: `302` for GET, `303` for any other method over HTTP/1.1 (Workhorse
    /// talks HTTP/1.1 to Rails, so a HEAD always gets `303`).
    pub fn redirect(method: &Method, location: &str) -> Reply {
        let (status, body) = if method == Method::GET {
            (
                StatusCode::FOUND,
                format!("This resource has been moved temporarily to {location}."),
            )
        } else {
            (
                StatusCode::SEE_OTHER,
                format!("An alternate resource is located at {location}."),
            )
        };
        Reply::new(status, "text/plain", body).with_header(LOCATION, location)
    }

    /// Adds what every API answer carries on its way out: GitLab's API `before` headers,
    /// then `Rack::ETag` and `Rack::ConditionalGet` as Rails installs them, then HEAD's
    /// empty body (the headers, `Content-Length` included, stay those of the GET).
    pub fn finish(self, method: &Method, if_none_match: Option<&HeaderValue>) -> Response<Bytes> {
        let Reply {
            mut status,
            headers,
            mut body,
        } = self;
        let mut headers: HeaderMap = headers.into_iter().collect();
        headers.insert(
            HeaderName::from_static("x-frame-options"),
            HeaderValue::from_static("SAMEORIGIN"),
        );
        headers.insert(
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        );
        // Rack::ETag digests only 200/201 bodies that are not empty.
        let etag = (matches!(status, StatusCode::OK | StatusCode::CREATED) && !body.is_empty())
            .then(|| weak_etag(&body));
        if !headers.contains_key(CACHE_CONTROL) {
            let cache_control = if etag.is_some() {
                "max-age=0, private, must-revalidate"
            } else {
                "no-cache"
            };
            headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
        }
        let is_read = method == Method::GET || method == Method::HEAD;
        let not_modified = status == StatusCode::OK
            && is_read
            && etag
                .as_ref()
                .is_some_and(|etag| if_none_match == Some(etag));
        if let Some(etag) = etag {
            headers.insert(ETAG, etag);
        }
        if not_modified {
            status = StatusCode::NOT_MODIFIED;
            headers.remove(CONTENT_TYPE);
            body = Bytes::new();
        } else {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            if method == Method::HEAD {
                body = Bytes::new();
            }
        }
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}

/// `W/"<first 32 hex digits of SHA-256(body)>"`, Rack::ETag's weak validator.
fn weak_etag(body: &[u8]) -> HeaderValue {
    let digest = hex::encode(Sha256::digest(body));
    HeaderValue::from_str(&format!("W/\"{}\"", &digest[..32])).expect("hex is a valid header")
}

/// Rails' `ActionDispatch::Http::ContentDisposition.format(disposition: 'attachment', ...)`:
/// a quoted ASCII `filename` and an RFC 5987 `filename*`.
pub(super) fn content_disposition(file_name: &str) -> String {
    // Rails transliterates to ASCII first; non-ASCII characters become `?`.
    let ascii: String = file_name
        .chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect();
    format!(
        "attachment; filename=\"{}\"; filename*=UTF-8''{}",
        percent_escape(&ascii, |c| c == ' ' || is_token_char(c)),
        percent_escape(file_name, |c| c == '&' || is_token_char(c)),
    )
}

/// The characters both of Rails' escaping patterns leave alone.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$+.^_`|~-".contains(c)
}

fn percent_escape(text: &str, keep: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if keep(c) {
            out.push(c);
        } else {
            let mut buf = [0; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    out
}
