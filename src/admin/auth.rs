//! The admin token: read once from its file, held only as a SHA-256 digest, compared in constant time.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest admin token file read (a token is a line of text).
const MAX_TOKEN_FILE: u64 = 4096;

/// The digest of the configured admin token; the token itself is never kept.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Why the token file cannot be used. Never carries the file's content.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is empty")]
    Empty { path: String },
    #[error("{path} is larger than {MAX_TOKEN_FILE} bytes")]
    TooLarge { path: String },
}

impl AdminToken {
    /// Reads the token from `path`: its content without surrounding white space.
    pub fn from_file(path: &Path) -> Result<AdminToken, TokenFileError> {
        read_token(path).map(|token| AdminToken::from_secret(&token))
    }

    pub fn from_secret(token: &str) -> AdminToken {
        AdminToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether `presented` is the token. Both sides are digests of equal length, so the
    /// comparison takes the same time wherever they differ.
    pub fn verify(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// The token in `path` (trimmed), for clients that send it; errors never include the content.
pub fn read_token(path: &Path) -> Result<String, TokenFileError> {
    let shown = path.display().to_string();
    let metadata = std::fs::metadata(path).map_err(|source| TokenFileError::Read {
        path: shown.clone(),
        source,
    })?;
    if metadata.len() > MAX_TOKEN_FILE {
        return Err(TokenFileError::TooLarge { path: shown });
    }
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: shown.clone(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty { path: shown });
    }
    Ok(token.to_owned())
}

/// The bearer token of an `Authorization` header, if that is what it holds.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configured_token_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        std::fs::write(&path, "s3cret-admin\n").unwrap();
        let token = AdminToken::from_file(&path).unwrap();
        assert!(token.verify("s3cret-admin"));
        assert!(!token.verify("s3cret-admin "));
        assert!(!token.verify(""));
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn unusable_files_are_refused_without_echoing_them() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        assert!(matches!(
            AdminToken::from_file(&empty),
            Err(TokenFileError::Empty { .. })
        ));
        let missing = dir.path().join("missing");
        assert!(AdminToken::from_file(&missing).is_err());
    }

    #[test]
    fn bearer_header_is_read() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
