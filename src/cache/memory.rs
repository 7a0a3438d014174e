//! The in-memory tier: byte-bounded (moka) answers for lists, dependency queries and spec indexes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use tokio::time::Instant;

/// A successful GitLab answer, as kept in memory.
#[derive(Debug)]
pub struct CachedResponse {
    /// The headers worth replaying (content type and the like), see [`keep_header`].
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// When GitLab produced it, on tokio's clock (so tests can move time).
    pub fetched_at: Instant,
}

impl CachedResponse {
    pub fn new(headers: &http::HeaderMap, body: Bytes) -> CachedResponse {
        CachedResponse {
            headers: headers
                .iter()
                .filter(|(name, _)| keep_header(name))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            body,
            fetched_at: Instant::now(),
        }
    }

    fn weight(&self, key: &str) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        u32::try_from(key.len() + headers + self.body.len() + 64).unwrap_or(u32::MAX)
    }
}

/// Response headers that describe the content and may be replayed from cache. Everything
/// else (ETag, Date, Set-Cookie, rate-limit and request-id headers) describes one exchange.
/// GitLab's weak ETags are dropped on purpose: on Workhorse downloads they are one constant
/// for every file (gitlab-org/gitlab#371991), so replaying them invites wrong 304s.
pub fn keep_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-type"
            | "content-disposition"
            | "content-transfer-encoding"
            | "cache-control"
            | "last-modified"
            | "x-content-type-options"
            | "x-frame-options"
    )
}

/// Memory-bounded map from content key to GitLab's last successful answer.
#[derive(Clone)]
pub struct MemoryTier {
    entries: moka::future::Cache<String, Arc<CachedResponse>>,
    ttl: Duration,
}

impl MemoryTier {
    pub fn new(ttl: Duration, max_bytes: u64) -> MemoryTier {
        MemoryTier {
            entries: moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &String, value: &Arc<CachedResponse>| value.weight(key))
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
            ttl,
        }
    }

    /// The cached answer if it is younger than the TTL.
    pub async fn get_fresh(&self, key: &str) -> Option<Arc<CachedResponse>> {
        let entry = self.entries.get(key).await?;
        if entry.fetched_at.elapsed() < self.ttl {
            Some(entry)
        } else {
            self.entries.invalidate(key).await;
            None
        }
    }

    pub async fn insert(&self, key: String, response: Arc<CachedResponse>) {
        self.entries.insert(key, response).await;
    }

    /// Bytes currently held (approximate: moka applies pending work lazily).
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_on_tokio_time() {
        let tier = MemoryTier::new(Duration::from_secs(30), 1 << 20);
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("etag", HeaderValue::from_static("W/\"x\""));
        headers.insert("set-cookie", HeaderValue::from_static("a=b"));
        tier.insert(
            "k".into(),
            Arc::new(CachedResponse::new(&headers, Bytes::from_static(b"v1.0.0"))),
        )
        .await;
        let hit = tier.get_fresh("k").await.unwrap();
        assert_eq!(&hit.body[..], b"v1.0.0");
        assert_eq!(
            hit.headers.len(),
            1,
            "only content headers kept: {:?}",
            hit.headers
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(tier.get_fresh("k").await.is_none());
    }
}
