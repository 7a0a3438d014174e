//! Everything a request needs, built once at start-up and shared: config, tiers, gate, client.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio_rustls::TlsAcceptor;

use crate::auth::{FingerprintKey, Gate};
use crate::cache::artifact_memory::ArtifactMemory;
use crate::cache::fill::Fills;
use crate::cache::flight::Flights;
use crate::cache::memory::MemoryTier;
use crate::config::Config;
use crate::error::Error;
use crate::gems::catalog::Catalogs;
use crate::metrics::Metrics;
use crate::storage::{ArtifactStore, SledStore, Store};
use crate::tls;
use crate::upstream::Upstream;

/// Most authorization decisions remembered at once (each is ~100 bytes).
const MAX_DECISIONS: u64 = 1_000_000;

pub struct AppState {
    pub config: Config,
    pub key: FingerprintKey,
    pub gate: Gate,
    pub memory: MemoryTier,
    /// Records of stored artifacts and the bytes of small ones.
    pub artifacts: ArtifactMemory,
    /// Metadata misses at GitLab now, so concurrent ones for a key wait for the first.
    pub flights: Flights,
    /// Content keys whose background refresh is under way (one at a time per key).
    pub refreshing: Mutex<HashSet<String>>,
    pub metrics: Arc<Metrics>,
    /// Artifact fills in flight, and the store they write to.
    pub fills: Fills,
    pub upstream: Upstream,
    /// Per-project RubyGems catalogs (compact index, gemspecs, spec indexes).
    pub catalogs: Catalogs,
    /// Set when the proxy serves HTTPS.
    pub tls: Option<TlsAcceptor>,
}

impl AppState {
    /// Builds the state with the sled store under the data directory.
    pub fn build(config: Config) -> Result<Arc<AppState>, Error> {
        let store = SledStore::open(&config.store_path(), config.store.sled_cache_bytes.as_u64())
            .map_err(|e| {
            Error::Internal(format!(
                "opening the store at {}: {e}",
                config.store_path().display()
            ))
        })?;
        AppState::build_with_store(config, Arc::new(store))
    }

    /// Builds the state around a given store: reads (or creates) the fingerprint key under
    /// the data directory, loads TLS material, and sets up the upstream client.
    pub fn build_with_store(
        config: Config,
        store: Arc<dyn ArtifactStore>,
    ) -> Result<Arc<AppState>, Error> {
        let key = FingerprintKey::load_or_create(&config.key_path()).map_err(|e| {
            Error::Internal(format!(
                "fingerprint key {}: {e}",
                config.key_path().display()
            ))
        })?;
        let tls = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            _ => None,
        };
        let metrics = Arc::new(Metrics::new());
        let upstream = Upstream::new(
            &config.upstream,
            config.upstream_url().clone(),
            metrics.clone(),
        )?;
        let store = Store::new(store);
        let artifacts = ArtifactMemory::new(
            config.cache.artifact_memory_max_bytes.as_u64(),
            config.cache.artifact_memory_entry_max_bytes.as_u64(),
        );
        let fills = Fills::new(store.clone(), config.eviction_policy(), metrics.clone())
            .with_memory(artifacts.clone());
        Ok(Arc::new(AppState {
            fills,
            catalogs: Catalogs::new(config.cache.metadata_ttl),
            artifacts,
            gate: Gate::new(config.cache.auth_ttl, MAX_DECISIONS, Some(store.clone())),
            memory: MemoryTier::new(
                config.cache.memory_max_bytes.as_u64(),
                config
                    .cache
                    .offline_grace
                    .max(config.cache.metadata_max_stale),
                Some(store),
            ),
            flights: Flights::default(),
            refreshing: Mutex::default(),
            metrics,
            key,
            upstream,
            tls,
            config,
        }))
    }
}
