//! Prometheus metrics (prometheus-client): what is counted, and its text exposition.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::cache::CacheOutcome;

/// Artifacts whose hits are counted at once; beyond it, those seen once are forgotten.
const MAX_COUNTED_ARTIFACTS: usize = 10_000;

/// What the cache saved since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheTotals {
    /// Requests answered from cache (hit, coalesced, stale).
    pub cached: u64,
    /// Requests of cacheable routes GitLab had to answer.
    pub missed: u64,
    /// Response body bytes served from cache: what GitLab did not have to send.
    pub bytes_from_cache: u64,
    pub bytes_from_gitlab: u64,
}

/// Reads a count kept elsewhere.
type DropSource = Box<dyn Fn() -> u64 + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// How an authorization question was answered.
#[derive(Debug, Clone, Copy)]
pub enum AuthResult {
    /// GitLab's remembered acceptance.
    Remembered,
    /// GitLab asked now: yes.
    ProbeAccepted,
    /// GitLab asked now: no.
    ProbeRefused,
    /// Re-confirmed in the background before expiry: yes.
    ReconfirmedAccepted,
    /// Re-confirmed in the background before expiry: refused, so forgotten.
    ReconfirmedRefused,
    /// GitLab unreachable; accepted earlier within the offline grace.
    Grace,
    /// GitLab unreachable and the caller never confirmed: refused.
    Unconfirmed,
}

impl AuthResult {
    fn as_str(self) -> &'static str {
        match self {
            AuthResult::Remembered => "remembered",
            AuthResult::ProbeAccepted => "probe_accepted",
            AuthResult::ProbeRefused => "probe_refused",
            AuthResult::ReconfirmedAccepted => "reconfirmed_accepted",
            AuthResult::ReconfirmedRefused => "reconfirmed_refused",
            AuthResult::Grace => "grace",
            AuthResult::Unconfirmed => "unconfirmed",
        }
    }
}

impl Metrics {
    /// Registers the shared tier's counters (once, when the proxy runs with a bucket).
    pub fn register_shared_tier(&self, stats: &crate::storage::SharedStats) {
        let mut registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        registry.register(
            "shared_bucket_hits",
            "Artifacts copied from the shared bucket into the local tier",
            stats.bucket_hits.clone(),
        );
        registry.register(
            "shared_commits_won",
            "Fills whose reference this replica committed to the bucket",
            stats.commits_won.clone(),
        );
        registry.register(
            "shared_commits_lost",
            "Fills that found another replica's reference already committed",
            stats.commits_lost.clone(),
        );
        registry.register(
            "shared_integrity_conflicts",
            "Lost commits whose bytes differed from the stored ones (GitLab changed an artifact)",
            stats.integrity_conflicts.clone(),
        );
        registry.register(
            "shared_errors",
            "Requests to the shared bucket that failed (the local tier carried on)",
            stats.errors.clone(),
        );
        registry.register(
            "shared_lease_waits",
            "Fetches that waited for another replica holding the artifact's lease",
            stats.lease_waits.clone(),
        );
        registry.register(
            "shared_lease_takeovers",
            "Leases taken over from a replica that let them lapse (it died or hung mid-fill)",
            stats.lease_takeovers.clone(),
        );
    }
}

/// Point-in-time values read from the proxy's state when metrics are scraped.
#[derive(Debug, Default, Clone, Copy)]
pub struct Snapshot {
    pub fills_in_flight: u64,
    pub fill_waiters: u64,
    pub store_bytes: u64,
    pub store_artifacts: u64,
    /// The store's budget (`store.max_bytes`).
    pub store_max_bytes: u64,
    /// The free-space floor (`store.min_free_bytes`).
    pub store_min_free_bytes: u64,
    /// Free space on the store's file system.
    pub store_free_bytes: u64,
    pub memory_bytes: u64,
    pub upstream_up: bool,
    /// First copies kept since their eviction (see `integrity.originals_max_bytes`).
    pub originals_bytes: u64,
    pub originals_artifacts: u64,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    bytes: Family<SourceLabels, Counter>,
    upstream_latency: Histogram,
    upstream_errors: Family<KindLabels, Counter>,
    auth: Family<ResultLabels, Counter>,
    evicted_artifacts: Counter,
    evicted_bytes: Counter,
    corrupt: Counter,
    sendfile_bytes: Counter,
    file_regions: Gauge,
    integrity_changes: Family<KindLabels, Counter>,
    originals_restored: Counter,
    originals_bytes: Gauge,
    originals_artifacts: Gauge,
    log_lines_dropped: Counter,
    /// Reads the log writer's dropped-line count, and the value last copied into the counter.
    log_drops: Mutex<Option<(DropSource, u64)>>,
    /// Since start, for `admin stats`: requests answered from cache, requests GitLab answered
    /// for a cacheable route, and body bytes by source.
    cached_requests: AtomicU64,
    missed_requests: AtomicU64,
    bytes_from_cache: AtomicU64,
    bytes_from_gitlab: AtomicU64,
    /// Cache hits per artifact key, bounded by [`MAX_COUNTED_ARTIFACTS`].
    artifact_hits: Mutex<HashMap<String, u64>>,
    fills_in_flight: Gauge,
    fill_waiters: Gauge,
    store_bytes: Gauge,
    store_artifacts: Gauge,
    store_max_bytes: Gauge,
    store_min_free_bytes: Gauge,
    store_free_bytes: Gauge,
    memory_bytes: Gauge,
    upstream_up: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gitlab_pkg_cache");
        let metrics = Metrics {
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            bytes: Family::default(),
            // 1 ms … ~33 s
            upstream_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            upstream_errors: Family::default(),
            auth: Family::default(),
            evicted_artifacts: Counter::default(),
            evicted_bytes: Counter::default(),
            corrupt: Counter::default(),
            sendfile_bytes: Counter::default(),
            file_regions: Gauge::default(),
            integrity_changes: Family::default(),
            originals_restored: Counter::default(),
            originals_bytes: Gauge::default(),
            originals_artifacts: Gauge::default(),
            log_lines_dropped: Counter::default(),
            log_drops: Mutex::new(None),
            cached_requests: AtomicU64::new(0),
            missed_requests: AtomicU64::new(0),
            bytes_from_cache: AtomicU64::new(0),
            bytes_from_gitlab: AtomicU64::new(0),
            artifact_hits: Mutex::default(),
            fills_in_flight: Gauge::default(),
            fill_waiters: Gauge::default(),
            store_bytes: Gauge::default(),
            store_artifacts: Gauge::default(),
            store_max_bytes: Gauge::default(),
            store_min_free_bytes: Gauge::default(),
            store_free_bytes: Gauge::default(),
            memory_bytes: Gauge::default(),
            upstream_up: Gauge::default(),
        };
        registry.register(
            "requests",
            "Requests served, by route, status and cache outcome",
            metrics.requests.clone(),
        );
        registry.register(
            "response_bytes",
            "Response body bytes sent, by source (cache or gitlab)",
            metrics.bytes.clone(),
        );
        registry.register(
            "upstream_response_seconds",
            "Time GitLab took to answer with response headers",
            metrics.upstream_latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed exchanges with GitLab, by kind",
            metrics.upstream_errors.clone(),
        );
        registry.register(
            "auth_decisions",
            "Authorization decisions, by how they were made",
            metrics.auth.clone(),
        );
        registry.register(
            "evicted_artifacts",
            "Artifacts evicted from the store",
            metrics.evicted_artifacts.clone(),
        );
        registry.register(
            "evicted_bytes",
            "Bytes evicted from the store",
            metrics.evicted_bytes.clone(),
        );
        registry.register(
            "corrupt_artifacts",
            "Stored artifacts found damaged, dropped and fetched again",
            metrics.corrupt.clone(),
        );
        registry.register(
            "sendfile_bytes",
            "Artifact bytes sent from chunk files with sendfile(2), never copied through the proxy",
            metrics.sendfile_bytes.clone(),
        );
        registry.register(
            "file_regions",
            "Chunk data mapped for sendfile and not yet released by its connection",
            metrics.file_regions.clone(),
        );
        registry.register(
            "integrity_changes",
            "GitLab content seen for a cached version that differs from the first copy, by artifact kind",
            metrics.integrity_changes.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log consumer did not keep up (requests never wait for it)",
            metrics.log_lines_dropped.clone(),
        );
        registry.register(
            "fills_in_flight",
            "Artifact fills from GitLab under way",
            metrics.fills_in_flight.clone(),
        );
        registry.register(
            "fill_waiters",
            "Callers waiting on another caller's fill",
            metrics.fill_waiters.clone(),
        );
        registry.register(
            "store_bytes",
            "Bytes of artifacts in the store",
            metrics.store_bytes.clone(),
        );
        registry.register(
            "store_artifacts",
            "Artifacts in the store",
            metrics.store_artifacts.clone(),
        );
        registry.register(
            "store_max_bytes",
            "The store's budget (store.max_bytes); least recently used artifacts are evicted beyond it",
            metrics.store_max_bytes.clone(),
        );
        registry.register(
            "store_min_free_bytes",
            "Free space the proxy keeps on the store's file system (store.min_free_bytes)",
            metrics.store_min_free_bytes.clone(),
        );
        registry.register(
            "store_free_bytes",
            "Free space on the store's file system",
            metrics.store_free_bytes.clone(),
        );
        registry.register(
            "memory_tier_bytes",
            "Bytes held by the in-memory metadata tier",
            metrics.memory_bytes.clone(),
        );
        registry.register(
            "integrity_originals_bytes",
            "Bytes of first copies kept since their eviction, served again if GitLab's content changes",
            metrics.originals_bytes.clone(),
        );
        registry.register(
            "integrity_originals",
            "First copies kept since their eviction",
            metrics.originals_artifacts.clone(),
        );
        registry.register(
            "integrity_originals_restored",
            "Refills whose content had changed, answered with the first copy kept since eviction",
            metrics.originals_restored.clone(),
        );
        registry.register(
            "upstream_up",
            "1 while GitLab is considered reachable, 0 while it is marked down",
            metrics.upstream_up.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            ..metrics
        }
    }

    /// Exposes the log writer's count of dropped lines (read at each scrape).
    pub fn count_dropped_log_lines(&self, source: impl Fn() -> u64 + Send + Sync + 'static) {
        *self
            .log_drops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Box::new(source), 0));
    }

    /// One finished request, with the bytes its body carried.
    pub fn request(&self, route: &'static str, status: u16, outcome: CacheOutcome, bytes: u64) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                status,
                cache: outcome.as_str(),
            })
            .inc();
        let source = match outcome {
            CacheOutcome::Hit
            | CacheOutcome::Coalesced
            | CacheOutcome::Stale
            | CacheOutcome::Revalidated => {
                self.cached_requests.fetch_add(1, Ordering::Relaxed);
                self.bytes_from_cache.fetch_add(bytes, Ordering::Relaxed);
                "cache"
            }
            CacheOutcome::Miss | CacheOutcome::Bypass | CacheOutcome::Refused => {
                if outcome == CacheOutcome::Miss {
                    self.missed_requests.fetch_add(1, Ordering::Relaxed);
                }
                self.bytes_from_gitlab.fetch_add(bytes, Ordering::Relaxed);
                "gitlab"
            }
            CacheOutcome::Local => "local",
        };
        self.bytes
            .get_or_create(&SourceLabels { source })
            .inc_by(bytes);
    }

    /// Requests and bytes since start, as `admin stats` reports them.
    pub fn cache_totals(&self) -> CacheTotals {
        CacheTotals {
            cached: self.cached_requests.load(Ordering::Relaxed),
            missed: self.missed_requests.load(Ordering::Relaxed),
            bytes_from_cache: self.bytes_from_cache.load(Ordering::Relaxed),
            bytes_from_gitlab: self.bytes_from_gitlab.load(Ordering::Relaxed),
        }
    }

    /// One request for the stored artifact `key` answered from cache.
    pub fn artifact_hit(&self, key: &str) {
        let mut hits = self
            .artifact_hits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = hits.get_mut(key) {
            *count += 1;
            return;
        }
        if hits.len() >= MAX_COUNTED_ARTIFACTS {
            hits.retain(|_, count| *count > 1);
            if hits.len() >= MAX_COUNTED_ARTIFACTS {
                return;
            }
        }
        hits.insert(key.to_owned(), 1);
    }

    /// The `n` artifacts most often answered from cache since start, most first.
    pub fn top_artifacts(&self, n: usize) -> Vec<(String, u64)> {
        let hits = self
            .artifact_hits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut top: Vec<(String, u64)> = hits.iter().map(|(k, v)| (k.clone(), *v)).collect();
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(n);
        top
    }

    /// Forgets the hit counts of artifacts that were purged.
    pub fn forget_artifacts(&self, keys: &[String]) {
        let mut hits = self
            .artifact_hits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for key in keys {
            hits.remove(key);
        }
    }

    pub fn upstream_answered(&self, took: Duration) {
        self.upstream_latency.observe(took.as_secs_f64());
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub fn auth(&self, result: AuthResult) {
        self.auth
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
    }

    pub fn evicted(&self, artifacts: u64, bytes: u64) {
        self.evicted_artifacts.inc_by(artifacts);
        self.evicted_bytes.inc_by(bytes);
    }

    /// A changed refill was answered with the first copy kept since eviction.
    pub fn original_restored(&self) {
        self.originals_restored.inc();
    }

    pub fn corrupt_artifact(&self) {
        self.corrupt.inc();
    }

    pub fn sendfile_bytes(&self, bytes: u64) {
        self.sendfile_bytes.inc_by(bytes);
    }

    /// Bytes sent with sendfile since start.
    pub fn sendfile_bytes_total(&self) -> u64 {
        self.sendfile_bytes.get()
    }

    pub fn file_region_opened(&self) {
        self.file_regions.inc();
    }

    pub fn file_region_closed(&self) {
        self.file_regions.dec();
    }

    /// Mapped chunk regions alive now, over every connection.
    pub fn file_regions(&self) -> i64 {
        self.file_regions.get()
    }

    pub fn integrity_change(&self, kind: &str) {
        // Kinds are route names; anything else is folded so labels stay a fixed set.
        let kind = match kind {
            "go_info" => "go_info",
            "go_mod" => "go_mod",
            "go_zip" => "go_zip",
            "gem_file" => "gem_file",
            "gem_gemspec" => "gem_gemspec",
            _ => "other",
        };
        self.integrity_changes
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// The text exposition, with the gauges set from `snapshot`.
    pub fn encode(&self, snapshot: Snapshot) -> String {
        let as_gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.fills_in_flight.set(as_gauge(snapshot.fills_in_flight));
        self.fill_waiters.set(as_gauge(snapshot.fill_waiters));
        self.store_bytes.set(as_gauge(snapshot.store_bytes));
        self.store_artifacts.set(as_gauge(snapshot.store_artifacts));
        self.store_max_bytes.set(as_gauge(snapshot.store_max_bytes));
        self.store_min_free_bytes
            .set(as_gauge(snapshot.store_min_free_bytes));
        self.store_free_bytes
            .set(as_gauge(snapshot.store_free_bytes));
        self.memory_bytes.set(as_gauge(snapshot.memory_bytes));
        self.originals_bytes.set(as_gauge(snapshot.originals_bytes));
        self.originals_artifacts
            .set(as_gauge(snapshot.originals_artifacts));
        self.upstream_up.set(i64::from(snapshot.upstream_up));
        if let Some((source, copied)) = self
            .log_drops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            let now = source();
            self.log_lines_dropped.inc_by(now.saturating_sub(*copied));
            *copied = now.max(*copied);
        }
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_the_exposition() {
        let m = Metrics::new();
        m.request("go_list", 200, CacheOutcome::Hit, 10);
        m.request("go_zip", 200, CacheOutcome::Miss, 1000);
        m.auth(AuthResult::ProbeRefused);
        m.evicted(2, 300);
        let text = m.encode(Snapshot {
            store_bytes: 42,
            upstream_up: true,
            ..Snapshot::default()
        });
        for needle in [
            r#"gitlab_pkg_cache_requests_total{route="go_list",status="200",cache="hit"} 1"#,
            r#"gitlab_pkg_cache_response_bytes_total{source="cache"} 10"#,
            r#"gitlab_pkg_cache_response_bytes_total{source="gitlab"} 1000"#,
            r#"gitlab_pkg_cache_auth_decisions_total{result="probe_refused"} 1"#,
            "gitlab_pkg_cache_evicted_bytes_total 300",
            "gitlab_pkg_cache_store_bytes 42",
            "gitlab_pkg_cache_upstream_up 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
