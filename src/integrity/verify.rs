//! `verify`: re-reads every stored artifact in the background — each chunk's checksum, then
//! length and SHA-256 of the whole — and drops what is damaged, so it is fetched again (and
//! no longer trusted by the chunks verified earlier in this process).

use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;
use crate::storage::{ArtifactStore, Store, StoreError, VerifiedChunks};

/// Where a verification run stands, or how the last one ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub running: bool,
    pub started_unix: u64,
    pub finished_unix: Option<u64>,
    /// Artifacts in the store when the run started.
    pub total: u64,
    pub checked: u64,
    pub bytes: u64,
    pub dropped: Vec<DroppedArtifact>,
    /// Artifacts that could not be read for another reason than damage (left in place).
    pub errors: Vec<DroppedArtifact>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DroppedArtifact {
    pub key: String,
    pub reason: String,
}

/// One verification at a time; cheap to clone.
#[derive(Clone, Default)]
pub struct Verifier {
    report: Arc<Mutex<Option<VerifyReport>>>,
}

impl Verifier {
    /// Starts a run over every stored artifact unless one is under way; false if one is.
    pub fn start(&self, store: Store, metrics: Arc<Metrics>, now_unix: u64) -> bool {
        let keys = {
            let mut report = self.lock();
            if report.as_ref().is_some_and(|r| r.running) {
                return false;
            }
            let keys = store.inner().keys("");
            *report = Some(VerifyReport {
                running: true,
                started_unix: now_unix,
                total: keys.len() as u64,
                ..VerifyReport::default()
            });
            keys
        };
        let verifier = self.clone();
        tokio::task::spawn_blocking(move || {
            let verified = store.verified().clone();
            let store = store.inner();
            for key in keys {
                let outcome = check(store.as_ref(), &verified, &key);
                let mut report = verifier.lock();
                let Some(report) = report.as_mut() else {
                    return;
                };
                match outcome {
                    Ok(bytes) => {
                        report.checked += 1;
                        report.bytes += bytes;
                    }
                    Err(Problem::Damaged(reason)) => {
                        report.checked += 1;
                        metrics.corrupt_artifact();
                        tracing::warn!(%key, %reason, "verify: damaged artifact dropped");
                        report.dropped.push(DroppedArtifact { key, reason });
                    }
                    Err(Problem::Unreadable(reason)) => {
                        tracing::warn!(%key, %reason, "verify: artifact could not be read");
                        report.errors.push(DroppedArtifact { key, reason });
                    }
                }
            }
            if let Some(report) = verifier.lock().as_mut() {
                report.running = false;
                report.finished_unix = Some(super::unix_now());
                tracing::info!(
                    checked = report.checked,
                    bytes = report.bytes,
                    dropped = report.dropped.len(),
                    "verify finished"
                );
            }
        });
        true
    }

    /// The run under way or the last one; `None` if none ever started.
    pub fn report(&self) -> Option<VerifyReport> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<VerifyReport>> {
        self.report.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

enum Problem {
    /// Dropped from the store.
    Damaged(String),
    /// Not a verdict on the bytes (I/O error): left alone.
    Unreadable(String),
}

/// Reads `key` whole from disk (every chunk through its CRC, whatever was verified before);
/// drops it when it is damaged, and revokes its chunks' marks so that no reader trusts them
/// any longer. The bytes checked (0 if it went meanwhile).
fn check(store: &dyn ArtifactStore, verified: &VerifiedChunks, key: &str) -> Result<u64, Problem> {
    let (meta, _pin) = match store.lookup_pinned(key) {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(0),
        Err(e) => return Err(Problem::Unreadable(e.to_string())),
    };
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut damage = None;
    for index in 0..meta.chunk_count {
        match store.read_chunk(meta.fill, index) {
            Ok(Some(chunk)) => {
                len += chunk.len() as u64;
                hasher.update(&chunk);
            }
            Ok(None) => {
                damage = Some(format!("chunk {index} is missing"));
                break;
            }
            Err(e @ StoreError::Corrupt { .. }) => {
                damage = Some(e.to_string());
                break;
            }
            Err(e) => return Err(Problem::Unreadable(e.to_string())),
        }
    }
    let damage = damage.or_else(|| {
        let sha256: [u8; 32] = hasher.finalize().into();
        if len != meta.len {
            Some(format!("{len} bytes stored, {} recorded", meta.len))
        } else if sha256 != meta.sha256 {
            Some("SHA-256 differs from the one recorded at commit".to_owned())
        } else {
            None
        }
    });
    let Some(reason) = damage else {
        return Ok(len);
    };
    verified.revoke(meta.fill);
    // Only if the key still holds the damaged copy: a fresh fill may have replaced it.
    if matches!(store.lookup(key), Ok(Some(now)) if now.fill == meta.fill) {
        store
            .remove(key)
            .map_err(|e| Problem::Unreadable(format!("{reason}; dropping it failed: {e}")))?;
    }
    Err(Problem::Damaged(reason))
}
