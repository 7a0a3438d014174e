//! The client towards GitLab: pooled HTTP/1.1 and HTTP/2 over rustls, header hygiene in both
//! directions, timeouts, and redirects to object storage followed on the caller's behalf.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::body::{self, Body, IdleTimeout};
use crate::clock::Clock;
use crate::config::{UpstreamConfig, UpstreamUrl};
use crate::error::Error;
use crate::metrics::Metrics;

/// Headers that describe one connection and never cross the proxy (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request headers that would make GitLab's answer depend on the client's own cache state
/// or encoding preferences; cached routes fetch the whole, identity-encoded resource.
const CONDITIONAL: [HeaderName; 7] = [
    header::ACCEPT_ENCODING,
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
];

/// Headers carrying credentials; dropped when a redirect leaves GitLab's host.
const CREDENTIALS: [HeaderName; 5] = [
    header::AUTHORIZATION,
    HeaderName::from_static("private-token"),
    HeaderName::from_static("job-token"),
    HeaderName::from_static("deploy-token"),
    header::COOKIE,
];

/// GitLab's answer, with a body that fails if GitLab falls silent.
pub type UpstreamResponse = Response<IdleTimeout<Incoming>>;

/// One request to send to GitLab.
pub struct UpstreamRequest {
    pub method: Method,
    /// Path and query on GitLab, exactly as the client sent them.
    pub path_and_query: String,
    /// Already filtered with [`forward_headers`].
    pub headers: HeaderMap,
    pub body: Body,
    /// Follow redirects of GET and HEAD (GitLab sends downloads to object storage).
    pub follow_redirects: bool,
}

/// A pooled client bound to one GitLab.
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    base: UpstreamUrl,
    response_timeout: Duration,
    body_idle_timeout: Duration,
    max_redirects: u8,
    health: Health,
    metrics: Arc<Metrics>,
}

/// Whether GitLab is worth asking: after `threshold` consecutive failures it is marked down
/// for `backoff`; then one request at a time (the probe) may try it again.
struct Health {
    clock: Clock,
    failures: AtomicU32,
    /// Clock milliseconds until which GitLab is down; 0 while it is up.
    down_until_ms: AtomicU64,
    probing: Arc<AtomicBool>,
    threshold: u32,
    backoff: Duration,
}

/// Admission to send a request; a probe of a down GitLab holds the single probe slot.
struct Admission {
    probe: Option<Arc<AtomicBool>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(slot) = self.probe.take() {
            slot.store(false, Ordering::Release);
        }
    }
}

impl Health {
    fn admit(&self) -> Result<Admission, Error> {
        let until = self.down_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Ok(Admission { probe: None });
        }
        let now = self.clock.now_ms();
        if now < until {
            return Err(Error::UpstreamDown(Duration::from_millis(until - now)));
        }
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Ok(Admission {
                probe: Some(self.probing.clone()),
            });
        }
        // Another request is probing: do not pile onto a GitLab that may still be down.
        Err(Error::UpstreamDown(Duration::ZERO))
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Release);
        if self.down_until_ms.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("GitLab answers again; marked up");
        }
    }

    fn failed(&self, admission: &Admission) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold || admission.probe.is_some() {
            let backoff_ms = u64::try_from(self.backoff.as_millis()).unwrap_or(u64::MAX);
            let until = self.clock.now_ms().saturating_add(backoff_ms).max(1);
            if self.down_until_ms.swap(until, Ordering::AcqRel) == 0 {
                tracing::warn!(failures, backoff = ?self.backoff, "GitLab marked down");
            }
        }
    }

    fn is_up(&self) -> bool {
        self.down_until_ms.load(Ordering::Acquire) == 0
    }
}

impl Upstream {
    pub fn new(
        config: &UpstreamConfig,
        base: UpstreamUrl,
        metrics: Arc<Metrics>,
    ) -> Result<Upstream, Error> {
        let tls = tls_client_config(config.ca_file.as_deref())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(config.pool_max_idle)
            .build(connector);
        Ok(Upstream {
            client,
            base,
            response_timeout: config.response_timeout,
            body_idle_timeout: config.body_idle_timeout,
            max_redirects: config.max_redirects,
            health: Health {
                clock: Clock::new(),
                failures: AtomicU32::new(0),
                down_until_ms: AtomicU64::new(0),
                probing: Arc::new(AtomicBool::new(false)),
                threshold: config.failure_threshold,
                backoff: config.down_backoff,
            },
            metrics,
        })
    }

    /// False while GitLab is marked down after repeated failures.
    pub fn is_up(&self) -> bool {
        self.health.is_up()
    }

    /// Sends `request`; returns GitLab's response once its headers arrived, plus the time it
    /// took. Failures of GitLab itself (unreachable, timeout, 502/503/504) count towards
    /// marking it down; while it is down, this fails at once with [`Error::UpstreamDown`].
    pub async fn send(
        &self,
        request: UpstreamRequest,
    ) -> Result<(UpstreamResponse, Duration), Error> {
        let admission = self.health.admit()?;
        let result = self.exchange(request).await;
        match &result {
            Ok((response, took)) => {
                self.metrics.upstream_answered(*took);
                if matches!(response.status().as_u16(), 502..=504) {
                    self.metrics.upstream_error("status");
                    self.health.failed(&admission);
                } else {
                    self.health.succeeded();
                }
            }
            Err(e) => {
                let kind = match e {
                    Error::UpstreamConnect(_) => "connect",
                    Error::UpstreamTimeout(_) => "timeout",
                    Error::UpstreamProtocol(_) => "protocol",
                    _ => "other",
                };
                self.metrics.upstream_error(kind);
                if e.is_upstream_failure() {
                    self.health.failed(&admission);
                }
            }
        }
        result
    }

    async fn exchange(
        &self,
        request: UpstreamRequest,
    ) -> Result<(UpstreamResponse, Duration), Error> {
        let started = Instant::now();
        let mut uri = self
            .base
            .join(&request.path_and_query)
            .map_err(|e| Error::Internal(format!("building the upstream URL: {e}")))?;
        let mut headers = request.headers;
        let mut body = Some(request.body);
        let mut hops = 0u8;
        loop {
            let mut req = Request::new(body.take().unwrap_or_else(body::empty));
            *req.method_mut() = request.method.clone();
            *req.uri_mut() = uri.clone();
            *req.headers_mut() = headers.clone();
            let response = tokio::time::timeout(self.response_timeout, self.client.request(req))
                .await
                .map_err(|_| Error::UpstreamTimeout(self.response_timeout))?
                .map_err(classify)?;
            let redirect = request.follow_redirects
                && (request.method == Method::GET || request.method == Method::HEAD)
                && is_redirect(response.status());
            if !redirect {
                let (parts, incoming) = response.into_parts();
                let mut parts = parts;
                strip_hop_by_hop(&mut parts.headers);
                name_upstream_cache_status(&mut parts.headers);
                let body = IdleTimeout::new(incoming, self.body_idle_timeout);
                return Ok((Response::from_parts(parts, body), started.elapsed()));
            }
            hops += 1;
            if hops > self.max_redirects {
                return Err(Error::UpstreamProtocol(format!(
                    "more than {} redirects",
                    self.max_redirects
                )));
            }
            let next = redirect_target(&uri, response.headers())?;
            if next.authority() != uri.authority() || next.scheme() != uri.scheme() {
                // A pre-signed object-store URL carries its own authorization; GitLab's
                // credentials must not leak to another host.
                for name in &CREDENTIALS {
                    headers.remove(name);
                }
            }
            tracing::debug!(target: "gitlab_pkg_cache::upstream", hop = hops, host = ?next.host(), "following redirect");
            uri = next;
        }
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

fn redirect_target(current: &Uri, headers: &HeaderMap) -> Result<Uri, Error> {
    let location = headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::UpstreamProtocol("redirect without a usable Location".to_owned()))?;
    let target: Uri = location
        .parse()
        .map_err(|_| Error::UpstreamProtocol("redirect to an invalid Location".to_owned()))?;
    if target.scheme().is_some() {
        match target.scheme_str() {
            Some("http") | Some("https") => return Ok(target),
            _ => {
                return Err(Error::UpstreamProtocol(
                    "redirect to a non-HTTP URL".to_owned(),
                ))
            }
        }
    }
    if !location.starts_with('/') {
        return Err(Error::UpstreamProtocol(
            "relative redirect without a leading /".to_owned(),
        ));
    }
    let mut parts = current.clone().into_parts();
    parts.path_and_query = target.path_and_query().cloned();
    Uri::from_parts(parts)
        .map_err(|_| Error::UpstreamProtocol("redirect to an invalid Location".to_owned()))
}

fn classify(e: hyper_util::client::legacy::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(cause) = source {
        // The client's body was cut by the proxy's own upload limit.
        if cause.is::<http_body_util::LengthLimitError>() {
            return Error::PayloadTooLarge;
        }
        source = cause.source();
    }
    if e.is_connect() {
        Error::UpstreamConnect(error_chain(&e))
    } else {
        Error::UpstreamProtocol(error_chain(&e))
    }
}

/// The error and its causes on one line (hyper's top-level messages alone say little).
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

/// Root certificates: webpki's, the system's, and an optional extra PEM file.
pub(crate) fn tls_client_config(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, Error> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // Individual unparsable system certificates are skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| Error::Internal(format!("reading CA file {}: {e}", path.display())))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Internal(format!("parsing CA file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(Error::Internal(format!(
                "CA file {} holds no certificate",
                path.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| Error::Internal(format!("CA file {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The upstream's own `x-cache` (another gitlab-pkg-cache in a chain, or a CDN in front of
/// GitLab) travels on as `x-cache-upstream`, so the `x-cache` a client sees is always this
/// proxy's and the inner tier's stays visible for debugging. Never stored with an answer.
pub const X_CACHE_UPSTREAM: &str = "x-cache-upstream";

fn name_upstream_cache_status(headers: &mut HeaderMap) {
    let inner: Vec<HeaderValue> = headers.get_all("x-cache").iter().cloned().collect();
    if inner.is_empty() {
        return;
    }
    headers.remove("x-cache");
    headers.remove(X_CACHE_UPSTREAM);
    for value in inner {
        headers.append(X_CACHE_UPSTREAM, value);
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The headers to send GitLab for a client's request: end-to-end headers as received
/// (credentials included), minus `Host` (set from the upstream URL), plus the client's
/// address in `X-Forwarded-For`. `for_cache` also drops conditional and encoding headers,
/// so that what GitLab returns is the whole resource, fit to be cached and served to others.
pub fn forward_headers(incoming: &HeaderMap, client: IpAddr, for_cache: bool) -> HeaderMap {
    let mut headers = incoming.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::EXPECT);
    if for_cache {
        for name in &CONDITIONAL {
            headers.remove(name);
        }
        headers.remove(header::CONTENT_LENGTH);
    }
    let forwarded = match incoming
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(previous) => format!("{previous}, {client}"),
        None => client.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert("x-forwarded-for", value);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("host", HeaderValue::from_static("proxy.local"));
        h.insert("private-token", HeaderValue::from_static("t"));
        h.insert("if-none-match", HeaderValue::from_static("W/\"x\""));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let out = forward_headers(&h, "127.0.0.1".parse().unwrap(), true);
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "transfer-encoding",
            "host",
            "if-none-match",
        ] {
            assert!(!out.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(out["private-token"], "t");
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        let pass = forward_headers(&h, "127.0.0.1".parse().unwrap(), false);
        assert_eq!(
            pass["if-none-match"], "W/\"x\"",
            "pass-through keeps conditionals"
        );
    }

    #[test]
    fn redirects_resolve() {
        let current: Uri = "https://gitlab.example/api/v4/x".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("location", HeaderValue::from_static("/other?a=1"));
        assert_eq!(
            redirect_target(&current, &h).unwrap().to_string(),
            "https://gitlab.example/other?a=1"
        );
        h.insert(
            "location",
            HeaderValue::from_static("https://store.example/b/k?sig=1"),
        );
        assert_eq!(
            redirect_target(&current, &h).unwrap().host(),
            Some("store.example")
        );
        h.insert("location", HeaderValue::from_static("ftp://x/y"));
        assert!(redirect_target(&current, &h).is_err());
        h.remove("location");
        assert!(redirect_target(&current, &h).is_err());
    }
}
