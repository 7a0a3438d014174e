//! The HTTP client the air-gap commands use to talk to a running proxy (plain or TLS), with
//! credentials sent the way the real clients send them.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::{self, Body};

/// A pooled client; cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Body>,
}

/// How a command authenticates to the proxy on behalf of its user.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    None,
    /// A GitLab token: Go gets it as HTTP Basic (what `.netrc` produces), RubyGems as the raw
    /// `Authorization` header (what `gem` sends from its credentials file).
    Token(String),
    /// `login` and `password` from `.netrc`, sent as HTTP Basic everywhere.
    Basic(String, String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::None => "Credentials::None",
            Credentials::Token(_) => "Credentials::Token(<redacted>)",
            Credentials::Basic(..) => "Credentials::Basic(<redacted>)",
        })
    }
}

/// Which package API a request is for (they want credentials in different shapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    Go,
    RubyGems,
}

impl Credentials {
    /// The `Authorization` header for `api`, if any.
    pub fn header(&self, api: ApiKind) -> Option<HeaderValue> {
        let basic = |user: &str, password: &str| {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            HeaderValue::from_str(&format!("Basic {encoded}")).ok()
        };
        let mut value = match (self, api) {
            (Credentials::None, _) => None,
            (Credentials::Token(token), ApiKind::Go) => basic("gitlab-pkg-cache", token),
            (Credentials::Token(token), ApiKind::RubyGems) => HeaderValue::from_str(token).ok(),
            (Credentials::Basic(user, password), _) => basic(user, password),
        }?;
        value.set_sensitive(true);
        Some(value)
    }

    /// A token from `token_file`, else `$GITLAB_TOKEN` (passed in as `env_token`), else the
    /// `.netrc` entry (`$NETRC` or `~/.netrc`) for `host`.
    pub fn discover(
        token_file: Option<&Path>,
        env_token: Option<String>,
        netrc: Option<&Path>,
        host: &str,
    ) -> Result<Credentials, String> {
        if let Some(path) = token_file {
            let token =
                crate::admin::auth::read_token(path).map_err(|e| format!("token file: {e}"))?;
            return Ok(Credentials::Token(token));
        }
        if let Some(token) = env_token.filter(|t| !t.trim().is_empty()) {
            return Ok(Credentials::Token(token.trim().to_owned()));
        }
        if let Some(path) = netrc {
            if let Ok(text) = std::fs::read_to_string(path) {
                if let Some((login, password)) = netrc_entry(&text, host) {
                    return Ok(Credentials::Basic(login, password));
                }
            }
        }
        Ok(Credentials::None)
    }
}

/// `login` and `password` of the `machine` entry for `host` (else the `default` entry) in a
/// netrc text.
pub fn netrc_entry(text: &str, host: &str) -> Option<(String, String)> {
    // (machine name or None for `default`, login, password)
    let mut entries: Vec<(Option<String>, Option<String>, Option<String>)> = Vec::new();
    let mut tokens = text.split_whitespace();
    while let Some(token) = tokens.next() {
        match token {
            "machine" => entries.push((tokens.next().map(str::to_owned), None, None)),
            "default" => entries.push((None, None, None)),
            "login" => {
                if let Some(entry) = entries.last_mut() {
                    entry.1 = tokens.next().map(str::to_owned);
                }
            }
            "password" => {
                if let Some(entry) = entries.last_mut() {
                    entry.2 = tokens.next().map(str::to_owned);
                }
            }
            _ => {}
        }
    }
    let pick = |wanted: Option<&str>| {
        entries.iter().find_map(|(machine, login, password)| {
            (machine.as_deref() == wanted)
                .then(|| Some((login.clone()?, password.clone()?)))
                .flatten()
        })
    };
    pick(Some(host)).or_else(|| pick(None))
}

impl HttpClient {
    pub fn new() -> Result<HttpClient, String> {
        let tls = crate::upstream::tls_client_config(None).map_err(|e| e.to_string())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(HttpClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Sends a request; the answer's body streams.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Body,
    ) -> Result<Response<Incoming>, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(url)
            .body(body)
            .map_err(|e| format!("bad URL {}: {e}", redact(url)))?;
        *request.headers_mut() = headers;
        self.client
            .request(request)
            .await
            .map_err(|e| format!("{}: {}", redact(url), error_chain(&e)))
    }

    pub async fn get(&self, url: &str, headers: HeaderMap) -> Result<Response<Incoming>, String> {
        self.send(Method::GET, url, headers, body::empty()).await
    }
}

/// One header map with an `Authorization` value, if given.
pub fn auth_headers(value: Option<HeaderValue>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(value) = value {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    headers
}

/// Headers for an admin call: the admin token as a bearer token.
pub fn admin_headers(token: &str) -> Result<HeaderMap, String> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the admin token holds characters a header cannot carry".to_owned())?;
    value.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    headers.insert(
        HeaderName::from_static("content-type"),
        HeaderValue::from_static("application/json"),
    );
    Ok(headers)
}

/// A URL without its user information, for messages.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host))
                if !rest.split('/').next().unwrap_or("").is_empty()
                    && rest.find('@') < rest.find('/') =>
            {
                format!("{scheme}://{host}")
            }
            _ => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netrc_finds_the_machine() {
        let text = "machine other login a password b\nmachine proxy.local login me password tok\n";
        assert_eq!(
            netrc_entry(text, "proxy.local"),
            Some(("me".into(), "tok".into()))
        );
        assert_eq!(netrc_entry(text, "nowhere"), None);
        assert_eq!(
            netrc_entry("default login d password p", "x"),
            Some(("d".into(), "p".into()))
        );
    }

    #[test]
    fn credentials_take_the_clients_shapes() {
        let token = Credentials::Token("glpat-x".into());
        assert_eq!(token.header(ApiKind::RubyGems).unwrap(), "glpat-x");
        let go = token.header(ApiKind::Go).unwrap();
        assert!(go.to_str().unwrap().starts_with("Basic "));
        assert!(!format!("{token:?}").contains("glpat"));
        assert_eq!(redact("https://u:p@host/x"), "https://host/x");
        assert_eq!(redact("https://host/x@y"), "https://host/x@y");
    }
}
