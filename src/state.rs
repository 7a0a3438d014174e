//! Everything a request needs, built once at start-up and shared: config, tiers, gate, client.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio_rustls::TlsAcceptor;

use crate::admin::AdminToken;
use crate::airgap::offline::OfflinePolicy;
use crate::auth::{FingerprintKey, Gate};
use crate::cache::artifact_memory::ArtifactMemory;
use crate::cache::fill::{Fills, CHUNK_SIZE};
use crate::cache::flight::Flights;
use crate::cache::lease::Leases;
use crate::cache::memory::MemoryTier;
use crate::config::{Config, S3Config};
use crate::error::Error;
use crate::freshness::Freshness;
use crate::gems::catalog::Catalogs;
use crate::gems::held::HeldCatalogs;
use crate::integrity::Integrity;
use crate::metrics::Metrics;
use crate::storage::s3::{Bucket, S3Credentials, S3Settings};
use crate::storage::{ArtifactStore, SledStore, Store, TieredStore};
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
    /// Per-project moments and versions pushed but not yet shown by GitLab.
    pub freshness: Freshness,
    /// Metadata misses at GitLab now, so concurrent ones for a key wait for the first.
    pub flights: Flights,
    /// Content keys whose background refresh is under way (one at a time per key).
    pub refreshing: Mutex<HashSet<String>>,
    pub metrics: Arc<Metrics>,
    /// Artifact fills in flight, and the store they write to.
    pub fills: Fills,
    /// First-copy fingerprints and the changes GitLab's content went through since.
    pub integrity: Integrity,
    /// Shared with background work (re-confirmations, refreshes).
    pub upstream: Arc<Upstream>,
    /// Per-project RubyGems catalogs (compact index, gemspecs, spec indexes).
    pub catalogs: Catalogs,
    /// Catalogs of the gems held in the store (offline mode's name source).
    pub held_gems: HeldCatalogs,
    /// Set when the proxy serves HTTPS.
    pub tls: Option<TlsAcceptor>,
    /// Set when replicas share a bucket: who fetches an artifact from GitLab.
    pub leases: Option<Leases>,
    /// Set when the admin API is enabled.
    pub admin: Option<AdminToken>,
    /// Set in offline mode: GitLab is never asked; this decides who reads what is held.
    pub offline: Option<OfflinePolicy>,
}

impl AppState {
    /// Builds the state with the sled store under the data directory, in front of the shared
    /// bucket when `store.s3.endpoint` is set.
    pub fn build(config: Config) -> Result<Arc<AppState>, Error> {
        let store = SledStore::open(&config.store_path(), config.store.sled_cache_bytes.as_u64())
            .map_err(|e| {
            Error::Internal(format!(
                "opening the store at {}: {e}",
                config.store_path().display()
            ))
        })?;
        if config.store.s3.endpoint.is_none() {
            return AppState::build_with_store(config, Arc::new(store));
        }
        let bucket = open_bucket(&config.store.s3)?;
        let tiered = Arc::new(TieredStore::new(
            store,
            Arc::new(bucket),
            config.eviction_policy(),
        ));
        let leases = Leases::new(
            &tiered,
            config.store.s3.lease_ttl,
            config.store.s3.lease_wait,
        );
        let state = AppState::assemble(config, tiered, Some(leases))?;
        Ok(state)
    }

    /// Builds the state around a given store: reads (or creates) the fingerprint key under
    /// the data directory, loads TLS material, and sets up the upstream client.
    pub fn build_with_store(
        config: Config,
        store: Arc<dyn ArtifactStore>,
    ) -> Result<Arc<AppState>, Error> {
        AppState::assemble(config, store, None)
    }

    fn assemble(
        config: Config,
        store: Arc<dyn ArtifactStore>,
        leases: Option<Leases>,
    ) -> Result<Arc<AppState>, Error> {
        if let Some(path) = &config.credential_key_file {
            // A configured key is a shared secret: generating one here would silently give
            // this replica a key of its own.
            if !path.exists() {
                return Err(Error::Internal(format!(
                    "credential key file {} does not exist (create 32 random bytes, e.g. \
                     head -c 32 /dev/urandom, and give every replica the same file)",
                    path.display()
                )));
            }
        }
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
        let admin = match &config.admin_token_file {
            Some(path) => Some(
                AdminToken::from_file(path)
                    .map_err(|e| Error::Internal(format!("admin token file: {e}")))?,
            ),
            None => None,
        };
        let offline = if config.offline.enabled {
            Some(
                OfflinePolicy::load(config.offline.access, config.offline.tokens_file.as_deref())
                    .map_err(Error::Internal)?,
            )
        } else {
            None
        };
        let metrics = Arc::new(Metrics::new());
        if let Some(leases) = &leases {
            metrics.register_shared_tier(leases.stats());
        }
        let upstream = Arc::new(Upstream::new(
            &config.upstream,
            config.upstream_url().clone(),
            metrics.clone(),
        )?);
        let store = Store::new(store);
        let integrity = Integrity::new(store.clone(), metrics.clone(), CHUNK_SIZE)
            .with_recheck(config.integrity.recheck)
            .with_on_change(config.integrity.on_change);
        let artifacts = ArtifactMemory::new(
            config.cache.artifact_memory_max_bytes.as_u64(),
            config.cache.artifact_memory_entry_max_bytes.as_u64(),
        );
        let fills = Fills::new(store.clone(), config.eviction_policy(), metrics.clone())
            .with_integrity(integrity.clone())
            .with_memory(artifacts.clone());
        let memory = MemoryTier::new(
            config.cache.memory_max_bytes.as_u64(),
            config
                .cache
                .offline_grace
                .max(config.cache.metadata_max_stale),
            Some(store.clone()),
        );
        Ok(Arc::new(AppState {
            fills,
            freshness: Freshness::new(memory.clock()),
            catalogs: Catalogs::new(config.cache.metadata_ttl, config.cache.offline_grace),
            held_gems: HeldCatalogs::new(),
            integrity,
            artifacts,
            gate: Gate::new(
                config.cache.auth_ttl,
                config
                    .cache
                    .auth_ttl
                    .saturating_sub(config.cache.auth_refresh_window),
                MAX_DECISIONS,
                Some(store.clone()),
            ),
            memory,
            flights: Flights::default(),
            refreshing: Mutex::default(),
            metrics,
            key,
            upstream,
            tls,
            leases,
            admin,
            offline,
            config,
        }))
    }
}

/// Connects to the shared bucket and checks that it enforces create-only writes.
fn open_bucket(s3: &S3Config) -> Result<Bucket, Error> {
    let credentials =
        match S3Credentials::from_env() {
            Some(credentials) => credentials,
            None => match &s3.credentials_file {
                Some(file) => S3Credentials::from_file(file).map_err(Error::Internal)?,
                None => return Err(Error::Internal(
                    "store.s3.endpoint is set but no credentials are: set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, or store.s3.credentials_file"
                        .to_owned(),
                )),
            },
        };
    let settings = S3Settings {
        endpoint: s3.endpoint.clone().unwrap_or_default(),
        bucket: s3.bucket.clone().unwrap_or_default(),
        region: s3.region.clone(),
        prefix: s3.prefix.clone(),
        path_style: s3.path_style,
        credentials,
    };
    let bucket = Bucket::open(&settings)
        .map_err(|e| Error::Internal(format!("shared store {}: {e}", settings.endpoint)))?;
    bucket.probe_conditional_writes().map_err(|e| {
        Error::Internal(format!(
            "shared store {} bucket {}: {e}",
            settings.endpoint, settings.bucket
        ))
    })?;
    tracing::info!(endpoint = %settings.endpoint, bucket = %settings.bucket, prefix = %settings.prefix, "shared artifact tier on");
    Ok(bucket)
}
