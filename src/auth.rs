//! Caller credentials: their keyed fingerprint, and GitLab's cached decisions per caller and project.
//!
//! The proxy never judges a credential itself: GitLab does, on the first request of a caller
//! for a project, and the proxy remembers only that GitLab said yes, keyed by an HMAC of
//! everything in the request that GitLab could read as a credential. Tokens themselves are
//! never kept, logged or written anywhere.

use std::collections::HashSet;
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use rand::RngCore;
use ring::hmac;

use crate::clock::Clock;
use crate::route::Api;
use crate::storage::Store;

/// Headers GitLab reads credentials from (any API, any era).
/// (Names built once: a lookup by `&str` parses the name again on every request.)
const CREDENTIAL_HEADERS: [HeaderName; 5] = [
    http::header::AUTHORIZATION,
    HeaderName::from_static("private-token"),
    HeaderName::from_static("job-token"),
    HeaderName::from_static("deploy-token"),
    http::header::COOKIE,
];
/// Query parameters GitLab reads credentials from.
const CREDENTIAL_PARAMS: [&str; 3] = ["private_token", "job_token", "access_token"];

/// The secret the proxy fingerprints credentials with.
#[derive(Clone)]
pub struct FingerprintKey {
    bytes: Arc<[u8; 32]>,
    /// HMAC-SHA-256 already keyed with `bytes` (ring's, with the key's pads hashed once):
    /// every request is fingerprinted, so this is on the path of every hit.
    keyed: hmac::Key,
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintKey(<redacted>)")
    }
}

impl FingerprintKey {
    /// A fresh random key (tests, or a proxy that persists nothing).
    pub fn random() -> FingerprintKey {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        FingerprintKey::from_bytes(key)
    }

    fn from_bytes(bytes: [u8; 32]) -> FingerprintKey {
        let keyed = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
        FingerprintKey {
            bytes: Arc::new(bytes),
            keyed,
        }
    }

    /// Loads the key from `path`, creating it (mode 0600) on first start, so fingerprints
    /// stay comparable across restarts.
    pub fn load_or_create(path: &Path) -> std::io::Result<FingerprintKey> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} must hold exactly 32 bytes", path.display()),
                    )
                })?;
                Ok(FingerprintKey::from_bytes(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = FingerprintKey::random();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(path)?;
                file.write_all(key.bytes.as_slice())?;
                file.sync_all()?;
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }
}

/// A keyed digest of a caller's credentials; equal for equal credentials, useless without the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short form for logs: enough to correlate requests, useless to an attacker.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.short())
    }
}

/// Who is calling, as far as the cache needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub fingerprint: Fingerprint,
    /// True when the request carried nothing GitLab could read as a credential.
    pub anonymous: bool,
}

impl Caller {
    /// Fingerprints every credential-bearing header and query parameter of a request.
    ///
    /// Each API reads a different subset (the gems API ignores `Private-Token`, the Go API
    /// ignores a raw `Authorization`), but fingerprinting all of them is never wrong: two
    /// requests share a decision only if GitLab saw the very same credentials in both.
    pub fn from_request(key: &FingerprintKey, headers: &HeaderMap, query: Option<&str>) -> Caller {
        let mut mac = hmac::Context::with_key(&key.keyed);
        let mut anonymous = true;
        for name in &CREDENTIAL_HEADERS {
            for value in headers.get_all(name) {
                anonymous = false;
                feed(&mut mac, b"h", name.as_str().as_bytes(), value.as_bytes());
            }
        }
        if let Some(query) = query {
            for (name, value) in form_urlencoded::parse(query.as_bytes()) {
                if CREDENTIAL_PARAMS.contains(&name.as_ref()) {
                    anonymous = false;
                    feed(&mut mac, b"q", name.as_bytes(), value.as_bytes());
                }
            }
        }
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(mac.sign().as_ref());
        Caller {
            fingerprint: Fingerprint(fingerprint),
            anonymous,
        }
    }
}

/// Length-prefixes each part so that no two different credential sets digest alike.
fn feed(mac: &mut hmac::Context, kind: &[u8], name: &[u8], value: &[u8]) {
    mac.update(kind);
    for part in [name, value] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
}

/// What an authorization decision is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DecisionKey {
    pub caller: Fingerprint,
    /// The project as named in the URL (an id and a path name the same project but are
    /// kept apart: the proxy cannot know they are the same without asking GitLab).
    pub project: Arc<str>,
    pub api: Api,
}

/// GitLab's "yes" to (caller, project, API), remembered for `ttl`, in memory and (when a
/// store is given) on disk, so that a restarted proxy still knows whom GitLab accepted.
///
/// Only acceptance is remembered: a refusal is answered from GitLab every time, so it is
/// always exactly what GitLab says and never reaches another caller. What is written to disk
/// is the fingerprint and a time, never a credential.
///
/// A decision is trusted for `ttl`; once it is `refresh_after` old it is still trusted, but
/// its next use should have it re-confirmed in the background ([`Standing::RefreshAhead`]),
/// so that callers who keep coming never wait for GitLab and a revoked credential is refused
/// at most `ttl` after GitLab last said yes.
#[derive(Clone)]
pub struct Gate {
    accepted: moka::future::Cache<DecisionKey, u64>,
    store: Option<Store>,
    clock: Clock,
    ttl: Duration,
    refresh_after: Duration,
    /// Decisions whose background re-confirmation is under way (one at a time per decision).
    confirming: Arc<Mutex<HashSet<DecisionKey>>>,
}

/// How far a remembered decision can be trusted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// GitLab said yes recently: trust it.
    Trusted,
    /// GitLab said yes, and the decision is in the last part of its life: trust it, and
    /// re-confirm it in the background.
    RefreshAhead,
    /// Never accepted, or not within the TTL: GitLab must be asked before serving.
    Unknown,
}

/// Held while one background re-confirmation of a decision runs; dropping it lets the next
/// one start.
pub struct Confirming {
    key: DecisionKey,
    confirming: Arc<Mutex<HashSet<DecisionKey>>>,
}

impl Confirming {
    pub fn key(&self) -> &DecisionKey {
        &self.key
    }
}

impl Drop for Confirming {
    fn drop(&mut self) {
        self.confirming
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// Record namespace of persisted decisions.
const DECISIONS: &str = "auth-decisions";

impl DecisionKey {
    fn record_key(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(33 + self.project.len());
        key.extend_from_slice(self.caller.as_bytes());
        key.push(match self.api {
            Api::Go => b'g',
            Api::RubyGems => b'r',
        });
        key.extend_from_slice(self.project.as_bytes());
        key
    }
}

impl Gate {
    /// `refresh_after` is clamped to `ttl` (equal: no refresh ahead).
    pub fn new(
        ttl: Duration,
        refresh_after: Duration,
        max_decisions: u64,
        store: Option<Store>,
    ) -> Gate {
        Gate {
            // moka only bounds the table; freshness is judged by `Clock` below.
            accepted: moka::future::Cache::builder()
                .max_capacity(max_decisions)
                .build(),
            store,
            clock: Clock::new(),
            ttl,
            refresh_after: refresh_after.min(ttl),
            confirming: Arc::default(),
        }
    }

    /// How long ago GitLab last accepted this caller for this project, if it ever did.
    pub async fn accepted_ago(&self, key: &DecisionKey) -> Option<Duration> {
        let at = match self.accepted.get(key).await {
            Some(at) => at,
            None => {
                let store = self.store.as_ref()?;
                let record = match store.get_record(DECISIONS, &key.record_key()).await {
                    Ok(record) => record?,
                    Err(e) => {
                        // Unknown is the safe answer: GitLab gets asked.
                        tracing::warn!(error = %e, "reading a persisted decision failed");
                        return None;
                    }
                };
                let at = u64::from_be_bytes(record.as_slice().try_into().ok()?);
                self.accepted.insert(key.clone(), at).await;
                at
            }
        };
        Some(Duration::from_millis(
            self.clock.now_ms().saturating_sub(at),
        ))
    }

    /// Whether GitLab accepted this caller for this project within the TTL.
    pub async fn is_accepted(&self, key: &DecisionKey) -> bool {
        self.standing(key).await != Standing::Unknown
    }

    /// How far the decision about this caller and project can be trusted now.
    pub async fn standing(&self, key: &DecisionKey) -> Standing {
        match self.accepted_ago(key).await {
            Some(ago) if ago < self.refresh_after => Standing::Trusted,
            Some(ago) if ago < self.ttl => Standing::RefreshAhead,
            _ => Standing::Unknown,
        }
    }

    /// Claims the background re-confirmation of `key`; `None` while another one runs.
    pub fn begin_confirming(&self, key: &DecisionKey) -> Option<Confirming> {
        let mut confirming = self
            .confirming
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        confirming.insert(key.clone()).then(|| Confirming {
            key: key.clone(),
            confirming: self.confirming.clone(),
        })
    }

    /// Forgets GitLab's earlier yes: GitLab has just refused this caller for this project,
    /// so neither the cache nor the offline grace may serve it any more.
    pub async fn revoke(&self, key: &DecisionKey) {
        self.accepted.invalidate(key).await;
        if let Some(store) = &self.store {
            if let Err(e) = store.remove_record(DECISIONS, &key.record_key()).await {
                tracing::warn!(error = %e, "removing a persisted decision failed");
            }
        }
    }

    /// Records that GitLab just answered this caller successfully for this project.
    pub async fn accept(&self, key: DecisionKey) {
        let now = self.clock.now_ms();
        if let Some(store) = &self.store {
            if let Err(e) = store
                .put_record(DECISIONS, &key.record_key(), &now.to_be_bytes())
                .await
            {
                tracing::warn!(error = %e, "persisting a decision failed; it is kept in memory");
            }
        }
        self.accepted.insert(key, now).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn caller(
        key: &FingerprintKey,
        headers: &[(&'static str, &'static str)],
        query: Option<&str>,
    ) -> Caller {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_static(value));
        }
        Caller::from_request(key, &map, query)
    }

    #[test]
    fn fingerprints_separate_credentials() {
        let key = FingerprintKey::random();
        let anon = caller(&key, &[], None);
        assert!(anon.anonymous);
        assert_eq!(anon, caller(&key, &[("accept", "*/*")], Some("gems=rack")));
        let pat = caller(&key, &[("private-token", "glpat-a")], None);
        assert!(!pat.anonymous);
        assert_ne!(pat.fingerprint, anon.fingerprint);
        assert_ne!(
            pat.fingerprint,
            caller(&key, &[("private-token", "glpat-b")], None).fingerprint
        );
        assert_ne!(
            pat.fingerprint,
            caller(&key, &[("job-token", "glpat-a")], None).fingerprint
        );
        assert_ne!(
            pat.fingerprint,
            caller(&key, &[], Some("private_token=glpat-a")).fingerprint
        );
        assert_eq!(
            caller(&key, &[], Some("private_token=glpat-a&x=1")).fingerprint,
            caller(&key, &[], Some("x=2&private_token=glpat-a")).fingerprint
        );
        // Same token, another key: another fingerprint, so a stolen store reveals nothing.
        let other = FingerprintKey::random();
        assert_ne!(
            pat.fingerprint,
            caller(&other, &[("private-token", "glpat-a")], None).fingerprint
        );
        assert!(!format!("{pat:?}").contains("glpat"));
        assert!(!format!("{key:?}").contains(&hex::encode(key.bytes.as_slice())));
    }

    #[test]
    fn fingerprints_are_hmac_sha256_of_the_length_prefixed_credentials() {
        // Computed independently (Python's hmac module): decisions persisted by earlier
        // versions stay valid only while the construction stays exactly this.
        let key = FingerprintKey::from_bytes(std::array::from_fn(|i| i as u8));
        let fingerprint = caller(&key, &[("private-token", "glpat-a")], None).fingerprint;
        assert_eq!(
            hex::encode(fingerprint.as_bytes()),
            "90393ee93af8c7071cec73d9a42630d09bd15f87020a47a33f05b2832a763272"
        );
    }

    #[test]
    fn key_file_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let a = FingerprintKey::load_or_create(&path).unwrap();
        let b = FingerprintKey::load_or_create(&path).unwrap();
        assert_eq!(a.bytes, b.bytes);
        let token = [("private-token", "glpat-a")];
        assert_eq!(
            caller(&a, &token, None),
            caller(&b, &token, None),
            "a reloaded key fingerprints alike"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        }
        std::fs::write(&path, b"short").unwrap();
        assert!(FingerprintKey::load_or_create(&path).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn decisions_expire_on_tokio_time() {
        let gate = Gate::new(Duration::from_secs(60), Duration::from_secs(60), 100, None);
        let key = DecisionKey {
            caller: caller(&FingerprintKey::random(), &[], None).fingerprint,
            project: Arc::from("42"),
            api: Api::Go,
        };
        assert!(!gate.is_accepted(&key).await);
        gate.accept(key.clone()).await;
        assert!(gate.is_accepted(&key).await);
        let other_api = DecisionKey {
            api: Api::RubyGems,
            ..key.clone()
        };
        assert!(!gate.is_accepted(&other_api).await);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!gate.is_accepted(&key).await);
    }

    #[tokio::test(start_paused = true)]
    async fn decisions_ask_for_refresh_ahead_then_expire() {
        let store = Store::new(Arc::new(crate::storage::MemoryStore::new()));
        let gate = Gate::new(
            Duration::from_secs(30),
            Duration::from_secs(20),
            100,
            Some(store.clone()),
        );
        let key = DecisionKey {
            caller: caller(&FingerprintKey::random(), &[("private-token", "t")], None).fingerprint,
            project: Arc::from("7"),
            api: Api::Go,
        };
        assert_eq!(gate.standing(&key).await, Standing::Unknown);
        gate.accept(key.clone()).await;
        assert_eq!(gate.standing(&key).await, Standing::Trusted);
        tokio::time::advance(Duration::from_secs(21)).await;
        assert_eq!(gate.standing(&key).await, Standing::RefreshAhead);
        let first = gate.begin_confirming(&key).expect("nobody confirms yet");
        assert!(
            gate.begin_confirming(&key).is_none(),
            "one confirmation at a time"
        );
        drop(first);
        assert!(gate.begin_confirming(&key).is_some());
        // A confirmation renews the decision's life.
        gate.accept(key.clone()).await;
        assert_eq!(gate.standing(&key).await, Standing::Trusted);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(gate.standing(&key).await, Standing::Unknown);
        // A refusal forgets it, on disk too: no grace for a revoked credential.
        gate.accept(key.clone()).await;
        gate.revoke(&key).await;
        assert_eq!(gate.standing(&key).await, Standing::Unknown);
        assert!(gate.accepted_ago(&key).await.is_none());
        let restarted = Gate::new(
            Duration::from_secs(30),
            Duration::from_secs(20),
            100,
            Some(store),
        );
        assert!(restarted.accepted_ago(&key).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn decisions_survive_a_restart_through_the_store() {
        let store = Store::new(Arc::new(crate::storage::MemoryStore::new()));
        let key = DecisionKey {
            caller: caller(&FingerprintKey::random(), &[("private-token", "t")], None).fingerprint,
            project: Arc::from("group%2Fproj"),
            api: Api::RubyGems,
        };
        Gate::new(
            Duration::from_secs(60),
            Duration::from_secs(60),
            100,
            Some(store.clone()),
        )
        .accept(key.clone())
        .await;
        let restarted = Gate::new(
            Duration::from_secs(60),
            Duration::from_secs(60),
            100,
            Some(store.clone()),
        );
        let other = Gate::new(
            Duration::from_secs(60),
            Duration::from_secs(60),
            100,
            Some(store),
        );
        assert!(restarted.is_accepted(&key).await);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(
            !other.is_accepted(&key).await,
            "a restarted proxy lets it expire too"
        );
        assert!(other.accepted_ago(&key).await.is_some());
    }
}
