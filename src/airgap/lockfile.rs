//! Gemfile.lock as `warm` needs it: the gems of each `GEM` section with their remote, and the
//! `CHECKSUMS` section (Bundler 2.5+) that vouches for each `.gem` file's SHA-256.

use std::collections::HashMap;

use base64::Engine as _;

/// One gem the lockfile resolved from a gem server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedGem {
    /// The section's `remote:` as written (ends with `/`).
    pub remote: String,
    pub name: String,
    pub version: String,
    /// `None` for the `ruby` platform.
    pub platform: Option<String>,
    /// From `CHECKSUMS`, when the lockfile has one for this gem.
    pub sha256: Option<[u8; 32]>,
}

impl LockedGem {
    /// `name-version[-platform]`, the stem of the `.gem` file name.
    pub fn full_name(&self) -> String {
        match &self.platform {
            Some(platform) => format!("{}-{}-{}", self.name, self.version, platform),
            None => format!("{}-{}", self.name, self.version),
        }
    }

    /// The spelling of `CHECKSUMS` and spec lines: `name (version[-platform])`.
    pub fn lock_name(&self) -> String {
        match &self.platform {
            Some(platform) => format!("{} ({}-{})", self.name, self.version, platform),
            None => format!("{} ({})", self.name, self.version),
        }
    }
}

/// What a lockfile asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lockfile {
    pub gems: Vec<LockedGem>,
    /// Specs from `GIT`, `PATH` and plugin sources: nothing to fetch from a gem server.
    pub not_served: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct LockfileError {
    pub line: usize,
    pub reason: String,
}

enum Section {
    Gem,
    OtherSource,
    Checksums,
    Other,
}

/// Reads a Gemfile.lock.
pub fn parse_lockfile(text: &str) -> Result<Lockfile, LockfileError> {
    let mut section = Section::Other;
    let mut remote: Option<String> = None;
    let mut specs: Vec<(usize, String, String, String, Option<String>)> = Vec::new();
    let mut checksums: HashMap<String, [u8; 32]> = HashMap::new();
    let mut not_served = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let error = |reason: String| LockfileError {
            line: number,
            reason,
        };
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            section = match line.trim_end() {
                "GEM" => Section::Gem,
                "GIT" | "PATH" | "PLUGIN SOURCE" => Section::OtherSource,
                "CHECKSUMS" => Section::Checksums,
                _ => Section::Other,
            };
            remote = None;
            continue;
        }
        let indent = line.len() - line.trim_start_matches(' ').len();
        let content = line.trim();
        match section {
            Section::Gem => {
                if indent == 2 {
                    if let Some(url) = content.strip_prefix("remote: ") {
                        // Bundler refuses several remotes in one section; the first one is
                        // where its gems come from.
                        remote.get_or_insert_with(|| url.trim().to_owned());
                    }
                } else if indent == 4 {
                    let Some(url) = remote.clone() else {
                        return Err(error("spec before the section's remote:".to_owned()));
                    };
                    let (name, version, platform) = name_version(content)
                        .ok_or_else(|| error(format!("unreadable spec {content:?}")))?;
                    specs.push((number, url, name, version, platform));
                }
            }
            Section::OtherSource => {
                if indent == 4 {
                    not_served.push(content.to_owned());
                }
            }
            Section::Checksums => {
                if indent != 2 {
                    continue;
                }
                let (lock_name, sums) = match content.rsplit_once(") ") {
                    Some((head, sums)) => (format!("{head})"), Some(sums)),
                    None => (content.to_owned(), None),
                };
                for sum in sums.into_iter().flat_map(|s| s.split(',')) {
                    let Some(value) = sum.strip_prefix("sha256=") else {
                        continue;
                    };
                    let digest = decode_sha256(value)
                        .ok_or_else(|| error(format!("malformed sha256 for {lock_name}")))?;
                    checksums.insert(lock_name.clone(), digest);
                }
            }
            Section::Other => {}
        }
    }
    let gems = specs
        .into_iter()
        .map(|(_, remote, name, version, platform)| {
            let mut gem = LockedGem {
                remote,
                name,
                version,
                platform,
                sha256: None,
            };
            gem.sha256 = checksums.get(&gem.lock_name()).copied();
            gem
        })
        .collect();
    Ok(Lockfile { gems, not_served })
}

/// `name (version[-platform])`: the version is everything up to the first `-`.
fn name_version(spec: &str) -> Option<(String, String, Option<String>)> {
    let (name, rest) = spec.split_once(" (")?;
    let inner = rest.strip_suffix(')')?;
    if name.is_empty() || inner.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let (version, platform) = match inner.split_once('-') {
        Some((v, p)) => (v, Some(p.to_owned()).filter(|p| p != "ruby")),
        None => (inner, None),
    };
    Some((name.to_owned(), version.to_owned(), platform))
}

/// 64 hex digits, or 43 characters of URL-safe base64 (Bundler accepts both).
fn decode_sha256(value: &str) -> Option<[u8; 32]> {
    let bytes = if value.len() == 64 {
        hex::decode(value).ok()?
    } else {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('='))
            .ok()?
    };
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = "GIT
  remote: https://example.com/tool.git
  revision: abc
  specs:
    tool (0.1.0)

GEM
  remote: https://gitlab.example.com/api/v4/projects/42/packages/rubygems/
  specs:
    nokogiri (1.16.0-x86_64-linux)
      racc (~> 1.4)
    racc (1.7.3)

PLATFORMS
  ruby
  x86_64-linux

DEPENDENCIES
  nokogiri
  tool!

CHECKSUMS
  nokogiri (1.16.0-x86_64-linux) sha256=0000000000000000000000000000000000000000000000000000000000000001
  racc (1.7.3) sha256=1111111111111111111111111111111111111111111111111111111111111111
  tool (0.1.0)

BUNDLED WITH
   2.6.2
";

    #[test]
    fn gems_remotes_platforms_and_checksums() {
        let lock = parse_lockfile(LOCK).unwrap();
        assert_eq!(lock.not_served, ["tool (0.1.0)"]);
        assert_eq!(lock.gems.len(), 2);
        let nokogiri = &lock.gems[0];
        assert_eq!(nokogiri.full_name(), "nokogiri-1.16.0-x86_64-linux");
        assert_eq!(
            nokogiri.remote,
            "https://gitlab.example.com/api/v4/projects/42/packages/rubygems/"
        );
        assert_eq!(nokogiri.sha256.unwrap()[31], 1);
        assert_eq!(lock.gems[1].full_name(), "racc-1.7.3");
        assert_eq!(lock.gems[1].sha256, Some([0x11; 32]));
    }

    #[test]
    fn lockfile_without_checksums_and_bad_lines() {
        let lock = parse_lockfile("GEM\n  remote: https://x/\n  specs:\n    a (1.0)\n").unwrap();
        assert_eq!(lock.gems[0].sha256, None);
        let err = parse_lockfile("GEM\n  remote: https://x/\n  specs:\n    broken\n").unwrap_err();
        assert_eq!(err.line, 4);
        let err = parse_lockfile("CHECKSUMS\n  a (1.0) sha256=zz\n").unwrap_err();
        assert!(err.reason.contains("a (1.0)"), "{err}");
    }
}
