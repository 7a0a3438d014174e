//! Cross-replica single flight: a lease object in the shared bucket names the one replica that
//! fetches an artifact from GitLab; the others wait for its committed reference.
//!
//! The lease only saves GitLab work; correctness comes from the create-only reference commit,
//! so every lease problem degrades to "fetch anyway", never to an error for the caller. The
//! holder renews its lease every third of the TTL while the fill runs; a lease whose holder
//! died lapses after the TTL and is taken over by the next replica that asks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::cache::fill::{Fills, Progress};
use crate::storage::s3::{random_id, Bucket, LeaseVersion, Taken};
use crate::storage::{ArtifactStore, SharedStats, TieredStore};

/// First pause between two looks for another replica's reference; it doubles up to `MAX_POLL`.
const FIRST_POLL: Duration = Duration::from_millis(100);
const MAX_POLL: Duration = Duration::from_secs(1);

/// The shared tier's coordination for one replica.
pub struct Leases {
    bucket: Arc<Bucket>,
    stats: Arc<SharedStats>,
    /// Names this replica in the leases it writes.
    holder: String,
    ttl: Duration,
    wait: Duration,
    /// Answers "is it committed yet?" for waiters.
    has_ref: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    /// Callers now waiting for another replica's fetch.
    waiting: Arc<AtomicUsize>,
}

/// What a replica about to fetch `key` from GitLab should do.
pub enum Claim {
    /// This replica holds the lease: fetch, and keep the guard until the fill is committed.
    Lead(LeaseGuard),
    /// Another replica committed the artifact meanwhile: look it up again.
    Committed,
    /// No lease could be had in time (or the bucket failed), or a fill of the key is under
    /// way on this replica: go on as without a shared tier (join it, or fetch).
    Fetch,
}

impl Leases {
    pub fn new<L: ArtifactStore>(
        store: &Arc<TieredStore<L>>,
        ttl: Duration,
        wait: Duration,
    ) -> Leases {
        let lookup = Arc::clone(store);
        Leases {
            bucket: store.bucket().clone(),
            stats: store.stats().clone(),
            holder: random_id(),
            ttl,
            wait,
            has_ref: Arc::new(move |key: &str| lookup.shared_has(key)),
            waiting: Arc::default(),
        }
    }

    pub fn stats(&self) -> &Arc<SharedStats> {
        &self.stats
    }

    /// The shared bucket the leases (and the artifacts) live in.
    pub fn bucket(&self) -> &Arc<Bucket> {
        &self.bucket
    }

    /// Callers now waiting for another replica's fetch of what they asked for.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Takes the lease of `key`, or waits (up to the configured bound) for the replica that
    /// holds it to commit the artifact. A fill of `key` under way here ends the wait at once:
    /// its readers stream it from this replica's own store.
    pub async fn claim(&self, key: &str, fills: &Fills) -> Claim {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _counted = Counted(&self.waiting);
        self.claim_counted(key, fills).await
    }

    async fn claim_counted(&self, key: &str, fills: &Fills) -> Claim {
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut pause = FIRST_POLL;
        let mut waited = false;
        loop {
            if fills.progress(key).is_some() {
                return Claim::Fetch;
            }
            match self.try_take(key).await {
                Ok(Some(Taken { version, took_over })) => {
                    if took_over {
                        SharedStats::count(&self.stats.lease_takeovers);
                        tracing::warn!(
                            key,
                            "took over the lease of a replica that let it lapse mid-fill; \
                             fetching from GitLab"
                        );
                    }
                    let guard = self.guard(key, version);
                    // The previous holder commits before it releases: a reference there now
                    // is final, and fetching again would be the duplicate the lease prevents.
                    if self.committed(key).await {
                        return Claim::Committed;
                    }
                    return Claim::Lead(guard);
                }
                Ok(None) if !waited => {
                    waited = true;
                    SharedStats::count(&self.stats.lease_waits);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(key, error = %e, "shared store: lease unavailable; fetching from GitLab");
                    return Claim::Fetch;
                }
            }
            if self.committed(key).await {
                return Claim::Committed;
            }
            if tokio::time::Instant::now() + pause > deadline {
                tracing::info!(
                    key,
                    "another replica's fetch did not finish in time; fetching too"
                );
                return Claim::Fetch;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_POLL);
        }
    }

    async fn try_take(&self, key: &str) -> Result<Option<Taken>, String> {
        let bucket = self.bucket.clone();
        let (key, holder, ttl) = (key.to_owned(), self.holder.clone(), self.ttl);
        match tokio::task::spawn_blocking(move || bucket.try_lease(&key, &holder, ttl)).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn committed(&self, key: &str) -> bool {
        let has_ref = self.has_ref.clone();
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || has_ref(&key))
            .await
            .unwrap_or(false)
    }

    fn guard(&self, key: &str, version: LeaseVersion) -> LeaseGuard {
        let bucket = self.bucket.clone();
        let (key, holder, ttl) = (key.to_owned(), self.holder.clone(), self.ttl);
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut version = version;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    () = tokio::time::sleep(ttl / 3) => {}
                }
                match bucket.renew_lease(&key, &holder, &version, ttl).await {
                    Ok(Some(renewed)) => version = renewed,
                    Ok(None) => {
                        tracing::warn!(
                            key,
                            "lease taken over by another replica; this fill goes on"
                        );
                        return;
                    }
                    Err(e) => tracing::warn!(key, error = %e, "lease renewal failed; retrying"),
                }
            }
            bucket.release_lease(&key, &version).await;
        });
        LeaseGuard { _stop: stop }
    }
}

/// Takes one off a count when dropped, however the wait ends (a caller may go away).
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Holds a lease while it lives, renewing it; dropping it releases the lease.
pub struct LeaseGuard {
    _stop: oneshot::Sender<()>,
}

impl LeaseGuard {
    /// Keeps the lease until the fill of `key` in flight here settles (committed or failed),
    /// so other replicas go on waiting for its reference rather than fetching too.
    pub fn hold_until_settled(self, fills: &Fills, key: &str) {
        let Some(mut progress) = fills.progress(key) else {
            return;
        };
        tokio::spawn(async move {
            loop {
                let settled = !matches!(
                    *progress.borrow_and_update(),
                    Progress::Starting | Progress::Streaming { .. }
                );
                if settled || progress.changed().await.is_err() {
                    break;
                }
            }
            drop(self);
        });
    }
}
