//! A minimal plain-HTTP/1.1 test client that sends exactly what the test asks for.
//!
//! It never follows redirects and adds no header of its own except `Host` (plus the framing
//! header hyper derives from a request body), so tests can assert on precisely what a server
//! received and returned. Each call builds its own client: a pooled client kept across calls
//! would outlive the per-test tokio runtime its connections were spawned on.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// What came back, fully buffered.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The value of a header as text, if present and printable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as (lossy) UTF-8, for assertions and failure messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Sends one request and buffers the response; panics if that fails.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
) -> Response {
    match try_request(method, url, headers, body).await {
        Ok(response) => response,
        Err(e) => panic!("{method} {url} failed: {e}"),
    }
}

/// `GET url` with the given headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Response {
    request("GET", url, headers, None).await
}

/// Like [`request`], but connection errors and broken bodies are returned, for tests that
/// expect them (a reset connection, a truncated body).
pub async fn try_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
) -> Result<Response, Error> {
    let mut request = Request::builder()
        .method(Method::from_bytes(method.as_bytes())?)
        .uri(url)
        .body(Full::new(body.unwrap_or_default()))?;
    for (name, value) in headers {
        // `append`, so a test can send a header twice.
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }
    send(request).await
}

/// Sends a request built by the caller (any body, e.g. a streamed one) and reads the answer.
pub async fn send<B>(request: Request<B>) -> Result<Response, Error>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Error>,
{
    let client = Client::builder(TokioExecutor::new()).build_http::<B>();
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Response {
        status,
        headers,
        body,
    })
}
