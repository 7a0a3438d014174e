//! The metadata tier: lists, dependency answers and spec indexes in memory (moka, byte-bounded),
//! written through to the store so they outlive a restart during a GitLab outage; plus the
//! per-credential memory of GitLab's 404s.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::auth::Fingerprint;
use crate::clock::Clock;
use crate::storage::Store;

/// Record namespace of persisted metadata answers.
const METADATA: &str = "metadata";
/// Version of the persisted metadata encoding (1: without a validator, still read).
const ENCODING: u8 = 2;

/// A GitLab answer worth replaying: a success (shared by every authorized caller) or a 404
/// (kept only for the credential it was given to).
#[derive(Debug)]
pub struct CachedResponse {
    /// The headers worth replaying (content type and the like), see [`keep_header`].
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// When GitLab produced (or last confirmed) it, in [`Clock`] milliseconds.
    pub fetched_at_ms: u64,
    /// GitLab's `ETag`, kept to revalidate with (never replayed to clients).
    pub validator: Option<HeaderValue>,
}

impl CachedResponse {
    pub fn new(headers: &http::HeaderMap, body: Bytes, fetched_at_ms: u64) -> CachedResponse {
        CachedResponse {
            headers: headers
                .iter()
                .filter(|(name, _)| keep_header(name))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            body,
            fetched_at_ms,
            validator: None,
        }
    }

    /// The same answer, confirmed by GitLab at `now_ms` (a `304`).
    pub fn confirmed(&self, now_ms: u64) -> CachedResponse {
        CachedResponse {
            headers: self.headers.clone(),
            body: self.body.clone(),
            fetched_at_ms: now_ms,
            validator: self.validator.clone(),
        }
    }

    fn weight(&self, key_len: usize) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        u32::try_from(key_len + headers + self.body.len() + 64).unwrap_or(u32::MAX)
    }

    /// `[version][fetched_at u64][validator len u16][validator][header count u16]([name len u16][name][value len u32][value])*[body]`
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.body.len());
        out.push(ENCODING);
        out.extend_from_slice(&self.fetched_at_ms.to_be_bytes());
        let validator = self
            .validator
            .as_ref()
            .map(HeaderValue::as_bytes)
            .filter(|v| v.len() <= usize::from(u16::MAX))
            .unwrap_or_default();
        out.extend_from_slice(&u16::try_from(validator.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(validator);
        let count = u16::try_from(self.headers.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for (name, value) in self.headers.iter().take(usize::from(count)) {
            let name = name.as_str().as_bytes();
            out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// `None` for anything that is not a well-formed record of this version.
    fn decode(bytes: &[u8]) -> Option<CachedResponse> {
        let mut rest = bytes;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, tail) = rest.split_at_checked(n)?;
            rest = tail;
            Some(head)
        };
        let version = take(1)?[0];
        if version != 1 && version != ENCODING {
            return None;
        }
        let fetched_at_ms = u64::from_be_bytes(take(8)?.try_into().ok()?);
        let validator = if version == ENCODING {
            let len = u16::from_be_bytes(take(2)?.try_into().ok()?);
            let bytes = take(usize::from(len))?;
            (!bytes.is_empty())
                .then(|| HeaderValue::from_bytes(bytes).ok())
                .flatten()
        } else {
            None
        };
        let count = u16::from_be_bytes(take(2)?.try_into().ok()?);
        let mut headers = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let len = u16::from_be_bytes(take(2)?.try_into().ok()?);
            let name = HeaderName::from_bytes(take(usize::from(len))?).ok()?;
            let len = u32::from_be_bytes(take(4)?.try_into().ok()?);
            let value = HeaderValue::from_bytes(take(usize::try_from(len).ok()?)?).ok()?;
            headers.push((name, value));
        }
        Some(CachedResponse {
            headers,
            body: Bytes::copy_from_slice(rest),
            fetched_at_ms,
            validator,
        })
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
            | "x-error-message"
    )
}

/// When GitLab produced the persisted answer `record` (bytes as the tier writes them to the
/// store), or `None` if the bytes are not such an answer.
pub fn persisted_fetched_at(record: &[u8]) -> Option<u64> {
    CachedResponse::decode(record).map(|r| r.fetched_at_ms)
}

/// A cached answer and its age.
pub struct Lookup {
    pub response: Arc<CachedResponse>,
    pub age: Duration,
}

/// Memory-bounded map from content key to GitLab's last successful answer, written through
/// to the store.
#[derive(Clone)]
pub struct MemoryTier {
    entries: moka::future::Cache<String, Arc<CachedResponse>>,
    negative: moka::future::Cache<(Fingerprint, String), Arc<CachedResponse>>,
    store: Option<Store>,
    clock: Clock,
}

impl MemoryTier {
    /// `keep` is how long anything is kept at all (the offline grace); freshness is the
    /// caller's business, judged from [`Lookup::age`].
    pub fn new(max_bytes: u64, keep: Duration, store: Option<Store>) -> MemoryTier {
        let keep = keep.max(Duration::from_millis(1));
        MemoryTier {
            entries: moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &String, value: &Arc<CachedResponse>| value.weight(key.len()))
                .time_to_live(keep)
                .build(),
            negative: moka::future::Cache::builder()
                .max_capacity((max_bytes / 16).max(1 << 20))
                .weigher(|key: &(Fingerprint, String), value: &Arc<CachedResponse>| {
                    value.weight(key.1.len() + 32)
                })
                .time_to_live(keep)
                .build(),
            store,
            clock: Clock::new(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The clock answers are stamped with.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The last successful answer for `key`, from memory or, after a restart, from the store.
    pub async fn get(&self, key: &str) -> Option<Lookup> {
        let response = match self.entries.get(key).await {
            Some(response) => response,
            None => {
                let store = self.store.as_ref()?;
                let bytes = match store.get_record(METADATA, key.as_bytes()).await {
                    Ok(bytes) => bytes?,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading persisted metadata failed");
                        return None;
                    }
                };
                let response = Arc::new(CachedResponse::decode(&bytes)?);
                self.entries.insert(key.to_owned(), response.clone()).await;
                response
            }
        };
        Some(Lookup {
            age: self.clock.age(response.fetched_at_ms),
            response,
        })
    }

    pub async fn insert(&self, key: String, response: Arc<CachedResponse>) {
        if let Some(store) = &self.store {
            if let Err(e) = store
                .put_record(METADATA, key.as_bytes(), &response.encode())
                .await
            {
                tracing::warn!(error = %e, "persisting metadata failed; kept in memory only");
            }
        }
        self.entries.insert(key, response).await;
    }

    /// Forgets `key` (GitLab no longer answers it with a success).
    pub async fn remove(&self, key: &str) {
        self.entries.invalidate(key).await;
        if let Some(store) = &self.store {
            if let Err(e) = store.remove_record(METADATA, key.as_bytes()).await {
                tracing::warn!(error = %e, "removing persisted metadata failed");
            }
        }
    }

    /// Drops the memory copy of `key`, whose persisted answer was replaced in the store
    /// (an import); the next read takes the stored one.
    pub async fn forget(&self, key: &str) {
        self.entries.invalidate(key).await;
    }

    /// The 404 GitLab gave this caller for `key`, if remembered.
    pub async fn get_negative(&self, caller: Fingerprint, key: &str) -> Option<Lookup> {
        let response = self.negative.get(&(caller, key.to_owned())).await?;
        Some(Lookup {
            age: self.clock.age(response.fetched_at_ms),
            response,
        })
    }

    /// Remembers GitLab's 404 for this caller only.
    pub async fn insert_negative(
        &self,
        caller: Fingerprint,
        key: String,
        response: Arc<CachedResponse>,
    ) {
        self.negative.insert((caller, key), response).await;
    }

    /// Bytes currently held (approximate: moka applies pending work lazily).
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size() + self.negative.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    fn response(tier: &MemoryTier, body: &'static [u8]) -> Arc<CachedResponse> {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("etag", HeaderValue::from_static("W/\"x\""));
        headers.insert("set-cookie", HeaderValue::from_static("a=b"));
        Arc::new(CachedResponse::new(
            &headers,
            Bytes::from_static(body),
            tier.now_ms(),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn ages_follow_tokio_time() {
        let tier = MemoryTier::new(1 << 20, Duration::from_secs(3600), None);
        tier.insert("k".into(), response(&tier, b"v1.0.0")).await;
        let hit = tier.get("k").await.unwrap();
        assert_eq!(&hit.response.body[..], b"v1.0.0");
        assert_eq!(hit.response.headers.len(), 1, "only content headers kept");
        assert!(hit.age < Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(tier.get("k").await.unwrap().age >= Duration::from_secs(31));
    }

    #[tokio::test]
    async fn answers_survive_a_restart_through_the_store() {
        let store = Store::new(Arc::new(MemoryStore::new()));
        let tier = MemoryTier::new(1 << 20, Duration::from_secs(3600), Some(store.clone()));
        tier.insert("list".into(), response(&tier, b"v1.0.0\nv1.1.0"))
            .await;
        let mut with_validator = CachedResponse::new(
            &http::HeaderMap::new(),
            Bytes::from_static(b"200"),
            tier.now_ms(),
        );
        with_validator.validator = Some(HeaderValue::from_static("W/\"abc\""));
        tier.insert("deps".into(), Arc::new(with_validator)).await;
        let restarted = MemoryTier::new(1 << 20, Duration::from_secs(3600), Some(store.clone()));
        let hit = restarted.get("list").await.unwrap();
        assert_eq!(&hit.response.body[..], b"v1.0.0\nv1.1.0");
        assert!(hit.response.validator.is_none());
        let deps = restarted.get("deps").await.unwrap();
        assert_eq!(deps.response.validator.as_ref().unwrap(), "W/\"abc\"");
        assert_eq!(hit.response.headers[0].1, "text/plain");
        restarted.remove("list").await;
        let again = MemoryTier::new(1 << 20, Duration::from_secs(3600), Some(store));
        assert!(again.get("list").await.is_none());
    }

    #[test]
    fn damaged_records_decode_to_nothing() {
        let tier = MemoryTier::new(1 << 20, Duration::from_secs(1), None);
        let encoded = response(&tier, b"body").encode();
        assert!(CachedResponse::decode(&encoded).is_some());
        for cut in 0..14 {
            assert!(CachedResponse::decode(&encoded[..cut]).is_none(), "{cut}");
        }
        let mut other_version = encoded.clone();
        other_version[0] = 9;
        assert!(CachedResponse::decode(&other_version).is_none());
    }

    #[tokio::test]
    async fn negative_answers_are_per_caller() {
        let tier = MemoryTier::new(1 << 20, Duration::from_secs(3600), None);
        let key = crate::auth::FingerprintKey::random();
        let a = crate::auth::Caller::from_request(
            &key,
            &http::HeaderMap::new(),
            Some("private_token=a"),
        )
        .fingerprint;
        let b = crate::auth::Caller::from_request(
            &key,
            &http::HeaderMap::new(),
            Some("private_token=b"),
        )
        .fingerprint;
        tier.insert_negative(a, "k".into(), response(&tier, b"404"))
            .await;
        assert!(tier.get_negative(a, "k").await.is_some());
        assert!(tier.get_negative(b, "k").await.is_none());
    }
}
