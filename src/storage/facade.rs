//! `Store`: the async face of an `ArtifactStore`, moving blocking calls off the runtime.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use super::{
    ArtifactMeta, ArtifactStore, Commit, EvictionPolicy, EvictionReport, FillId, PinGuard,
    SharedCopy, SharedHead, StoreError, Usage, VerifiedChunks,
};

/// Cheap to clone. Calls that may touch the disk run on `spawn_blocking`; `pin`, `touch`,
/// `touch_if_current` and `usage` only touch memory and are plain calls. Clones share the
/// record of chunks verified in this process.
#[derive(Clone)]
pub struct Store(Arc<dyn ArtifactStore>, VerifiedChunks);

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    pub fn new(inner: Arc<dyn ArtifactStore>) -> Self {
        let verified = VerifiedChunks::default();
        // A deleted fill's marks and mapped chunks can never serve again: let them go with it.
        let record = verified.clone();
        inner.on_fill_deleted(Arc::new(move |fill| record.revoke(fill)));
        Store(inner, verified)
    }

    /// The chunks whose CRC passed since start (see [`VerifiedChunks`]).
    pub fn verified(&self) -> &VerifiedChunks {
        &self.1
    }

    /// For code already on a blocking thread.
    pub fn inner(&self) -> &Arc<dyn ArtifactStore> {
        &self.0
    }

    async fn blocking<T, F>(&self, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn ArtifactStore) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.0);
        match tokio::task::spawn_blocking(move || call(inner.as_ref())).await {
            Ok(result) => result,
            // A panic in the store is a bug; surface it as a direct call would.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::Io("storage task cancelled".to_owned())),
        }
    }

    pub async fn lookup(&self, key: &str) -> Result<Option<ArtifactMeta>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |s| s.lookup(&key)).await
    }

    pub async fn lookup_pinned(
        &self,
        key: &str,
    ) -> Result<Option<(ArtifactMeta, PinGuard)>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |s| s.lookup_pinned(&key)).await
    }

    pub async fn lookup_pinned_here(
        &self,
        key: &str,
    ) -> Result<Option<(ArtifactMeta, PinGuard)>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |s| s.lookup_pinned_here(&key)).await
    }

    pub async fn shared_copy(&self, key: &str) -> Result<Option<SharedCopy>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |s| s.shared_copy(&key)).await
    }

    pub async fn shared_head(&self, key: &str) -> Result<Option<SharedHead>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |s| s.shared_head(&key)).await
    }

    pub async fn begin_copy(&self, key: &str) -> Result<FillId, StoreError> {
        let key = key.to_owned();
        self.blocking(move |s| s.begin_copy(&key)).await
    }

    pub async fn begin_fill(&self, key: &str) -> Result<FillId, StoreError> {
        let key = key.to_owned();
        self.blocking(move |s| s.begin_fill(&key)).await
    }

    pub async fn write_chunk(
        &self,
        fill: FillId,
        index: u32,
        data: Bytes,
    ) -> Result<(), StoreError> {
        self.blocking(move |s| s.write_chunk(fill, index, &data))
            .await
    }

    pub async fn commit_fill(
        &self,
        key: &str,
        fill: FillId,
        expected: Commit,
    ) -> Result<ArtifactMeta, StoreError> {
        let key = key.to_owned();
        self.blocking(move |s| s.commit_fill(&key, fill, expected))
            .await
    }

    pub async fn abort_fill(&self, fill: FillId) {
        // Only fails if the runtime is shutting down, when the fill is reclaimed on next open.
        let _ = self
            .blocking(move |s| {
                s.abort_fill(fill);
                Ok(())
            })
            .await;
    }

    pub async fn read_chunk(&self, fill: FillId, index: u32) -> Result<Option<Bytes>, StoreError> {
        self.blocking(move |s| s.read_chunk(fill, index)).await
    }

    pub async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.blocking(move |s| s.remove(&key)).await
    }

    pub fn pin(&self, fill: FillId) -> Option<PinGuard> {
        self.0.pin(fill)
    }

    pub fn touch(&self, key: &str) {
        self.0.touch(key);
    }

    pub fn touch_if_current(&self, key: &str, fill: FillId) -> bool {
        self.0.touch_if_current(key, fill)
    }

    pub fn usage(&self) -> Usage {
        self.0.usage()
    }

    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.0.keys(prefix)
    }

    pub async fn set_kept(&self, key: &str, kept: bool) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.blocking(move |s| s.set_kept(&key, kept)).await
    }

    pub fn kept(&self) -> Vec<String> {
        self.0.kept()
    }

    pub fn kept_usage(&self) -> Usage {
        self.0.kept_usage()
    }

    pub async fn evict(&self, policy: EvictionPolicy) -> Result<EvictionReport, StoreError> {
        self.blocking(move |s| s.evict(&policy)).await
    }

    pub async fn restore_original(&self, key: &str) -> Result<Option<ArtifactMeta>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |s| s.restore_original(&key)).await
    }

    pub fn originals(&self, prefix: &str) -> Vec<(String, u64)> {
        self.0.originals(prefix)
    }

    pub fn originals_usage(&self) -> Usage {
        self.0.originals_usage()
    }

    /// Whether what is stored calls for an eviction under `policy` (free space aside).
    pub fn exceeds(&self, policy: &EvictionPolicy) -> bool {
        policy.exceeded(self.0.usage(), self.0.originals_usage())
    }

    pub async fn put_record(
        &self,
        namespace: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StoreError> {
        let (namespace, key, value) = (namespace.to_owned(), key.to_vec(), value.to_vec());
        self.blocking(move |s| s.put_record(&namespace, &key, &value))
            .await
    }

    pub async fn get_record(
        &self,
        namespace: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (namespace, key) = (namespace.to_owned(), key.to_vec());
        self.blocking(move |s| s.get_record(&namespace, &key)).await
    }

    pub async fn remove_record(&self, namespace: &str, key: &[u8]) -> Result<bool, StoreError> {
        let (namespace, key) = (namespace.to_owned(), key.to_vec());
        self.blocking(move |s| s.remove_record(&namespace, &key))
            .await
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.blocking(|s| s.flush()).await
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::super::MemoryStore;
    use super::*;

    #[tokio::test]
    async fn round_trip_through_the_async_facade() {
        let store = Store::new(Arc::new(MemoryStore::new()));
        let fill = store.begin_fill("k").await.unwrap();
        store
            .write_chunk(fill, 0, Bytes::from_static(b"abc"))
            .await
            .unwrap();
        let expected = Commit {
            len: 3,
            sha256: Sha256::digest(b"abc").into(),
            headers: vec![("content-type".into(), "text/plain".into())],
        };
        store.commit_fill("k", fill, expected).await.unwrap();

        let (meta, pin) = store.lookup_pinned("k").await.unwrap().unwrap();
        assert_eq!(pin.fill(), meta.fill);
        assert_eq!(
            store.read_chunk(meta.fill, 0).await.unwrap().unwrap(),
            "abc"
        );
        assert_eq!(
            store.usage(),
            Usage {
                artifacts: 1,
                bytes: 3
            }
        );
        store.put_record("ns", b"r", b"v").await.unwrap();
        assert_eq!(store.get_record("ns", b"r").await.unwrap().unwrap(), b"v");
        store.flush().await.unwrap();
    }
}
