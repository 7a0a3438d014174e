//! Offline mode's access policy: who may read what the proxy holds when GitLab is never asked —
//! callers GitLab accepted within the offline grace, a local list of token hashes with the
//! projects each may read, or everyone (a closed network). Plus the `@v/list` of held versions.

use std::path::Path;

use base64::Engine as _;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::protocol::goproxy::case_decode;

/// Who may read while offline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OfflineAccess {
    /// Callers GitLab accepted for the project within `cache.offline_grace`.
    #[default]
    Grace,
    /// Tokens listed (as SHA-256 hashes) in `offline.tokens_file`, for the projects listed.
    Tokens,
    /// Everyone: for a closed network only.
    Open,
}

/// What the policy says about one caller and project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// No credentials, or unknown ones: GitLab's 401.
    Unauthorized,
    /// Known credentials without access to this project: GitLab's 404.
    NotFound,
}

/// One line of the tokens file.
struct Grant {
    digest: [u8; 32],
    /// Projects as clients name them (id or full path), compared decoded and lower-cased.
    projects: Vec<String>,
}

/// The offline access policy, built once at start-up.
pub struct OfflinePolicy {
    pub access: OfflineAccess,
    grants: Vec<Grant>,
}

impl std::fmt::Debug for OfflinePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflinePolicy")
            .field("access", &self.access)
            .field("grants", &self.grants.len())
            .finish()
    }
}

fn normalize(project: &str) -> String {
    percent_encoding::percent_decode_str(project)
        .decode_utf8_lossy()
        .to_lowercase()
}

impl OfflinePolicy {
    /// Reads the tokens file when `access` is `tokens`: one grant per line,
    /// `<sha256 hex of the token> <project> [<project>…]`; `#` starts a comment.
    pub fn load(
        access: OfflineAccess,
        tokens_file: Option<&Path>,
    ) -> Result<OfflinePolicy, String> {
        let mut grants = Vec::new();
        if access == OfflineAccess::Tokens {
            let path = tokens_file.ok_or("offline access `tokens` needs offline.tokens_file")?;
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("offline tokens file {}: {e}", path.display()))?;
            for (number, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let mut fields = line.split_whitespace();
                let digest = fields
                    .next()
                    .map(|h| h.strip_prefix("sha256:").unwrap_or(h))
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|d| <[u8; 32]>::try_from(d).ok())
                    .ok_or_else(|| {
                        format!(
                            "offline tokens file {} line {}: expected the SHA-256 of a token in hex",
                            path.display(),
                            number + 1
                        )
                    })?;
                let projects: Vec<String> = fields.map(normalize).collect();
                if projects.is_empty() {
                    return Err(format!(
                        "offline tokens file {} line {}: no project listed",
                        path.display(),
                        number + 1
                    ));
                }
                grants.push(Grant { digest, projects });
            }
        }
        Ok(OfflinePolicy { access, grants })
    }

    /// The verdict for a caller presenting `headers`/`query` on `project`; `accepted_lately`
    /// says whether GitLab accepted this caller for the project within the grace.
    pub fn decide(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        project: &str,
        accepted_lately: bool,
    ) -> Verdict {
        match self.access {
            OfflineAccess::Open => Verdict::Allow,
            OfflineAccess::Grace if accepted_lately => Verdict::Allow,
            OfflineAccess::Grace => Verdict::Unauthorized,
            OfflineAccess::Tokens => {
                let Some(token) = presented_token(headers, query) else {
                    return Verdict::Unauthorized;
                };
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                let mut verdict = Verdict::Unauthorized;
                for grant in &self.grants {
                    if bool::from(grant.digest.ct_eq(&digest)) {
                        if grant.projects.iter().any(|p| *p == normalize(project)) {
                            return Verdict::Allow;
                        }
                        verdict = Verdict::NotFound;
                    }
                }
                verdict
            }
        }
    }
}

/// The token a client sent, in any of the ways GitLab reads one: `Private-Token`,
/// `Job-Token` or `Deploy-Token` headers, `Authorization: Bearer`, the password of HTTP
/// Basic, a raw `Authorization` value, or `private_token=` / `job_token=` in the query.
pub fn presented_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    for name in ["private-token", "job-token", "deploy-token"] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some(value.trim().to_owned());
        }
    }
    if let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        if let Some((scheme, rest)) = value.split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") {
                return Some(rest.trim().to_owned());
            }
            if scheme.eq_ignore_ascii_case("basic") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(rest.trim())
                    .ok()?;
                let text = String::from_utf8(decoded).ok()?;
                return text
                    .split_once(':')
                    .map(|(_, password)| password.to_owned());
            }
        }
        return Some(value.to_owned());
    }
    let query = query?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "private_token" || k == "job_token")
        .map(|(_, v)| v.into_owned())
}

/// The ways clients spell one Go path: the go command sends `!` as `%21`, other clients as
/// `!`; the store keys whatever was asked. The key as given comes first.
pub fn spellings(key: &str) -> Vec<String> {
    let mut all = vec![key.to_owned()];
    for other in [key.replace("%21", "!"), key.replace('!', "%21")] {
        if !all.contains(&other) {
            all.push(other);
        }
    }
    all
}

/// The `@v/list` body for the versions held: every stored `.info` under `prefix` (the list
/// path without `list`), one version per line, sorted as semantic versions roughly are.
pub fn held_versions(keys: &[String], prefix: &str) -> String {
    let mut versions: Vec<String> = keys
        .iter()
        .filter_map(|key| {
            spellings(key).iter().find_map(|k| {
                Some(
                    k.strip_prefix(prefix)?
                        .strip_suffix(".info")?
                        .replace("%21", "!"),
                )
            })
        })
        .filter(|v| !v.contains('/'))
        .filter_map(|v| case_decode(&v))
        .collect();
    versions.sort();
    versions.dedup();
    let mut body = String::new();
    for version in versions {
        body.push_str(&version);
        body.push('\n');
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn tokens_file_grants_listed_projects_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        let digest = hex::encode(Sha256::digest(b"glpat-office"));
        std::fs::write(&file, format!("# office readers\n{digest} 10 group/Gems\n")).unwrap();
        let policy = OfflinePolicy::load(OfflineAccess::Tokens, Some(&file)).unwrap();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("__token__:glpat-office")
        );
        for shape in [
            headers(&[("private-token", "glpat-office")]),
            headers(&[("authorization", "glpat-office")]),
            headers(&[("authorization", &basic)]),
        ] {
            assert_eq!(policy.decide(&shape, None, "10", false), Verdict::Allow);
            assert_eq!(
                policy.decide(&shape, None, "group%2Fgems", false),
                Verdict::Allow
            );
            assert_eq!(policy.decide(&shape, None, "11", false), Verdict::NotFound);
        }
        let stranger = headers(&[("private-token", "glpat-other")]);
        assert_eq!(
            policy.decide(&stranger, None, "10", false),
            Verdict::Unauthorized
        );
        assert_eq!(
            policy.decide(&HeaderMap::new(), None, "10", true),
            Verdict::Unauthorized
        );
        assert_eq!(
            policy.decide(
                &HeaderMap::new(),
                Some("private_token=glpat-office"),
                "10",
                false
            ),
            Verdict::Allow
        );
        assert!(OfflinePolicy::load(OfflineAccess::Tokens, None).is_err());
        std::fs::write(&file, "nothex 10\n").unwrap();
        assert!(OfflinePolicy::load(OfflineAccess::Tokens, Some(&file)).is_err());
    }

    #[test]
    fn grace_and_open() {
        let grace = OfflinePolicy::load(OfflineAccess::Grace, None).unwrap();
        assert_eq!(
            grace.decide(&HeaderMap::new(), None, "1", true),
            Verdict::Allow
        );
        assert_eq!(
            grace.decide(&HeaderMap::new(), None, "1", false),
            Verdict::Unauthorized
        );
        let open = OfflinePolicy::load(OfflineAccess::Open, None).unwrap();
        assert_eq!(
            open.decide(&HeaderMap::new(), None, "1", false),
            Verdict::Allow
        );
    }

    #[test]
    fn held_versions_are_listed_from_info_keys() {
        let p = "/api/v4/projects/1/packages/go/x/!big/@v/";
        let keys = vec![
            format!("{p}v1.1.0.info"),
            format!("{p}v1.1.0.zip"),
            format!("{p}v1.0.0-!r!c.1.info"),
            format!("{p}list"),
            "/api/v4/projects/1/packages/go/x/!big/sub/@v/v9.0.0.info".to_owned(),
        ];
        assert_eq!(held_versions(&keys, p), "v1.0.0-RC.1\nv1.1.0\n");
        let encoded: Vec<String> = keys.iter().map(|k| k.replace('!', "%21")).collect();
        assert_eq!(held_versions(&encoded, p), "v1.0.0-RC.1\nv1.1.0\n");
        assert_eq!(spellings("/a/%21b"), ["/a/%21b", "/a/!b"]);
    }
}
