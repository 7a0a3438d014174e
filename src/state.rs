//! Everything a request needs, built once at start-up and shared: config, tiers, gate, client.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::auth::{FingerprintKey, Gate};
use crate::cache::memory::MemoryTier;
use crate::config::Config;
use crate::error::Error;
use crate::tls;
use crate::upstream::Upstream;

/// Most authorization decisions remembered at once (each is ~100 bytes).
const MAX_DECISIONS: u64 = 1_000_000;

pub struct AppState {
    pub config: Config,
    pub key: FingerprintKey,
    pub gate: Gate,
    pub memory: MemoryTier,
    pub upstream: Upstream,
    /// Set when the proxy serves HTTPS.
    pub tls: Option<TlsAcceptor>,
}

impl AppState {
    /// Builds the state: reads (or creates) the fingerprint key under the data directory,
    /// loads TLS material, and sets up the upstream client. Fails on unusable files.
    pub fn build(config: Config) -> Result<Arc<AppState>, Error> {
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
        let upstream = Upstream::new(&config.upstream, config.upstream_url().clone())?;
        Ok(Arc::new(AppState {
            gate: Gate::new(config.cache.auth_ttl, MAX_DECISIONS),
            memory: MemoryTier::new(
                config.cache.metadata_ttl,
                config.cache.memory_max_bytes.as_u64(),
            ),
            key,
            upstream,
            tls,
            config,
        }))
    }
}
