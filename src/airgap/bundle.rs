//! The bundle format: a plain tar whose first member is `manifest.json` (everything needed to
//! verify before anything is written), followed by one `blobs/sha256/<hex>` member per blob
//! this bundle ships. Blobs are content-addressed; the manifest lists the full state (every
//! artifact and metadata answer, with SHA-256, size, and for Go the `h1:`), so a delta only
//! omits blobs its base already carried. The bundle id is the SHA-256 of the manifest bytes;
//! a detached Ed25519 signature (`BUNDLE.sig`) signs those bytes.

use std::collections::BTreeSet;

use base64::Engine as _;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Name of the manifest member (always the first).
pub const MANIFEST: &str = "manifest.json";
/// Directory of blob members.
pub const BLOBS: &str = "blobs/sha256/";
pub const FORMAT: &str = "gitlab-pkg-cache-bundle";
pub const FORMAT_VERSION: u32 = 1;

/// One stored artifact (`.info`, `.mod`, `.zip`, `.gem`, `.gemspec.rz`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactEntry {
    /// The proxy's key: the request path.
    pub key: String,
    /// Hex SHA-256 of the content; names the blob.
    pub sha256: String,
    pub size: u64,
    /// Headers replayed with it (content type and the like).
    pub headers: Vec<(String, String)>,
    /// For a Go `.zip`: its `h1:`, recomputed on import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h1: Option<String>,
    /// For a Go `.mod`: its `/go.mod` `h1:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gomod_h1: Option<String>,
}

/// One persisted metadata answer (`@v/list`, dependency answers, spec indexes, …), kept as
/// the proxy stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEntry {
    pub namespace: String,
    pub key: String,
    pub sha256: String,
    pub size: u64,
}

/// The manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub producer: String,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    /// Milliseconds since the Unix epoch (0 in bundles written before it was added): orders
    /// bundles, so an older one never replaces what a newer one brought.
    #[serde(default)]
    pub created_ms: u64,
    /// `sha256:<hex>` of the base bundle's manifest, for a delta.
    pub base: Option<String>,
    pub artifacts: Vec<ArtifactEntry>,
    pub records: Vec<RecordEntry>,
    /// Hex SHA-256 of every blob member this bundle carries, in member order.
    pub blobs: Vec<String>,
}

impl Manifest {
    /// When the bundle was written, in milliseconds (to the second for older bundles).
    pub fn created_ms(&self) -> u64 {
        if self.created_ms == 0 {
            self.created_unix.saturating_mul(1000)
        } else {
            self.created_ms
        }
    }

    /// Every blob the full state needs.
    pub fn needed_blobs(&self) -> BTreeSet<String> {
        self.artifacts
            .iter()
            .map(|a| a.sha256.clone())
            .chain(self.records.iter().map(|r| r.sha256.clone()))
            .collect()
    }

    /// Refuses manifests this version cannot read or that contradict themselves.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "not a bundle of this tool (format {:?})",
                self.format
            ));
        }
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "bundle format version {} is not supported (this proxy reads {FORMAT_VERSION})",
                self.format_version
            ));
        }
        let hex64 = |s: &str| {
            s.len() == 64
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        for sha in self.needed_blobs().iter().chain(self.blobs.iter()) {
            if !hex64(sha) {
                return Err(format!("malformed blob name {sha:?}"));
            }
        }
        let needed = self.needed_blobs();
        if let Some(extra) = self.blobs.iter().find(|b| !needed.contains(*b)) {
            return Err(format!("blob {extra} is shipped but no entry uses it"));
        }
        if self.base.is_none() {
            let shipped: BTreeSet<&String> = self.blobs.iter().collect();
            if let Some(missing) = self.artifacts.iter().find(|a| !shipped.contains(&a.sha256)) {
                return Err(format!("full bundle lacks the blob of {}", missing.key));
            }
        }
        Ok(())
    }
}

/// `sha256:<hex>` of the manifest bytes: the bundle's identity.
pub fn bundle_id(manifest_bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(manifest_bytes)))
}

/// A signing key file: base64 of the PKCS#8 document `keygen` wrote.
pub fn signing_key(text: &str) -> Result<Ed25519KeyPair, String> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| "signing key is not base64".to_owned())?;
    Ed25519KeyPair::from_pkcs8(&der)
        .map_err(|_| "signing key is not an Ed25519 PKCS#8 key".to_owned())
}

/// A new key pair: (private key file text, public key file text).
pub fn generate_key() -> Result<(String, String), String> {
    let rng = ring::rand::SystemRandom::new();
    let document =
        Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "generating a key failed".to_owned())?;
    let pair = Ed25519KeyPair::from_pkcs8(document.as_ref())
        .map_err(|_| "generating a key failed".to_owned())?;
    let engine = base64::engine::general_purpose::STANDARD;
    Ok((
        engine.encode(document.as_ref()) + "\n",
        engine.encode(pair.public_key().as_ref()) + "\n",
    ))
}

/// The detached signature file of `manifest_bytes`: one line, base64 of the 64-byte signature.
pub fn sign(key: &Ed25519KeyPair, manifest_bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.sign(manifest_bytes).as_ref()) + "\n"
}

/// Checks a detached signature against a trusted public key file (base64 of 32 bytes).
pub fn verify(
    trusted_key: &str,
    manifest_bytes: &[u8],
    signature_text: &str,
) -> Result<(), String> {
    let engine = base64::engine::general_purpose::STANDARD;
    let public = engine
        .decode(trusted_key.trim())
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or("trusted key is not a base64 Ed25519 public key")?;
    let signature = engine
        .decode(signature_text.trim())
        .map_err(|_| "signature file is not base64".to_owned())?;
    signature::UnparsedPublicKey::new(&signature::ED25519, public)
        .verify(manifest_bytes, &signature)
        .map_err(|_| "bad signature: the manifest was not signed by the trusted key".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_right_key_and_bytes() {
        let (private, public) = generate_key().unwrap();
        let (_, other_public) = generate_key().unwrap();
        let key = signing_key(&private).unwrap();
        let signature = sign(&key, b"manifest");
        assert!(verify(&public, b"manifest", &signature).is_ok());
        assert!(verify(&public, b"manifesT", &signature).is_err());
        assert!(verify(&other_public, b"manifest", &signature).is_err());
        assert!(verify("junk", b"manifest", &signature).is_err());
    }

    #[test]
    fn manifests_that_contradict_themselves_are_refused() {
        let sha = "a".repeat(64);
        let mut manifest = Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            producer: "test".into(),
            created_unix: 0,
            created_ms: 0,
            base: None,
            artifacts: vec![ArtifactEntry {
                key: "/k".into(),
                sha256: sha.clone(),
                size: 1,
                headers: vec![],
                h1: None,
                gomod_h1: None,
            }],
            records: vec![],
            blobs: vec![sha.clone()],
        };
        assert!(manifest.check().is_ok());
        manifest.blobs.clear();
        assert!(manifest.check().unwrap_err().contains("/k"));
        manifest.base = Some("sha256:x".into());
        assert!(manifest.check().is_ok(), "a delta may rely on its base");
        manifest.blobs.push("b".repeat(64));
        assert!(manifest.check().is_err());
        manifest.format_version = 2;
        assert!(manifest.check().is_err());
    }
}
