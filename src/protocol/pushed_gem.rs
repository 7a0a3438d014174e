//! The name, version and platform of a pushed `.gem`, read from its `metadata.gz`.
//!
//! Only what the proxy needs to know which answers a push changes and where its bytes
//! belong. Reading stops at `metadata.gz` (the first entry `gem build` writes), so memory is
//! bounded by the metadata, never by the gem. The YAML is scanned for three top-level keys;
//! the full reader of a gem's specification (`gems::gem_file`, RubyGems work) can replace
//! [`read`] without changing its callers.

use std::io::Read;

use super::rubygems::GemName;

/// Largest `metadata.gz` looked into once inflated.
const MAX_METADATA_BYTES: u64 = 8 * 1024 * 1024;

/// Who a pushed gem says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedGem {
    pub name: GemName,
    /// As written in the gem (`Gem::Version#to_s`).
    pub version: String,
    /// `ruby` for pure-Ruby gems.
    pub platform: String,
}

impl PushedGem {
    /// The file name GitLab stores it under: `<name>-<version>.gem`, never with a platform
    /// (reference §3.2).
    pub fn file_name(&self) -> String {
        format!("{}-{}.gem", self.name.as_str(), self.version)
    }
}

/// Why a pushed body could not be read as a gem.
#[derive(Debug, thiserror::Error)]
pub enum PushedGemError {
    #[error("reading the gem: {0}")]
    Io(#[from] std::io::Error),
    #[error("the gem has no metadata.gz")]
    NoMetadata,
    #[error("the gem's metadata lacks {0}")]
    Missing(&'static str),
    #[error("the gem's {0} is not valid")]
    Invalid(&'static str),
}

/// Reads a `.gem` (a tar archive) up to its `metadata.gz`.
pub fn read(gem: impl Read) -> Result<PushedGem, PushedGemError> {
    let mut archive = tar::Archive::new(gem);
    for entry in archive.entries()? {
        let entry = entry?;
        if entry.path()?.as_os_str() == "metadata.gz" {
            let mut yaml = String::new();
            flate2::read::GzDecoder::new(entry)
                .take(MAX_METADATA_BYTES)
                .read_to_string(&mut yaml)?;
            return from_yaml(&yaml);
        }
    }
    Err(PushedGemError::NoMetadata)
}

/// The top-level `name`, `version` (a `Gem::Version` whose own `version` key holds the
/// text) and `platform` of a `Gem::Specification` YAML document.
fn from_yaml(yaml: &str) -> Result<PushedGem, PushedGemError> {
    let mut name = None;
    let mut version = None;
    let mut platform = None;
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(value) = line.strip_prefix("name:") {
            name.get_or_insert_with(|| scalar(value));
        } else if let Some(value) = line.strip_prefix("version:") {
            let inline = scalar(value);
            if !inline.is_empty() && !inline.starts_with('!') {
                version.get_or_insert(inline);
                continue;
            }
            // `version: !ruby/object:Gem::Version` then an indented `version: 1.2.0`.
            while let Some(next) = lines.peek() {
                if !next.starts_with(' ') {
                    break;
                }
                if let Some(value) = next.trim_start().strip_prefix("version:") {
                    version.get_or_insert_with(|| scalar(value));
                }
                lines.next();
            }
        } else if let Some(value) = line.strip_prefix("platform:") {
            platform.get_or_insert_with(|| scalar(value));
        }
    }
    let name = name.ok_or(PushedGemError::Missing("a name"))?;
    let name = GemName::parse(&name).map_err(|_| PushedGemError::Invalid("name"))?;
    let version = version.ok_or(PushedGemError::Missing("a version"))?;
    let plausible = |text: &str| {
        !text.is_empty()
            && text.len() <= 128
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if !plausible(&version) {
        return Err(PushedGemError::Invalid("version"));
    }
    let platform = platform.unwrap_or_else(|| "ruby".to_owned());
    if !plausible(&platform) {
        return Err(PushedGemError::Invalid("platform"));
    }
    Ok(PushedGem {
        name,
        version,
        platform,
    })
}

/// A plain or quoted YAML scalar, trimmed.
fn scalar(text: &str) -> String {
    let text = text.trim();
    let unquoted = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .or_else(|| text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')));
    unquoted.unwrap_or(text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const SPEC: &str = "--- !ruby/object:Gem::Specification\nname: acme-util\nversion: !ruby/object:Gem::Version\n  version: 1.2.0\nplatform: ruby\nauthors:\n- A\ndependencies:\n- !ruby/object:Gem::Dependency\n  name: rack\n  requirement: !ruby/object:Gem::Requirement\n    requirements:\n    - - \">=\"\n      - !ruby/object:Gem::Version\n        version: '0'\n";

    fn gem(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn gzip(text: &str) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn reads_name_version_and_platform() {
        let bytes = gem(&[("metadata.gz", &gzip(SPEC)), ("data.tar.gz", b"x")]);
        let pushed = read(bytes.as_slice()).unwrap();
        assert_eq!(pushed.name.as_str(), "acme-util");
        assert_eq!(pushed.version, "1.2.0");
        assert_eq!(pushed.platform, "ruby");
        assert_eq!(pushed.file_name(), "acme-util-1.2.0.gem");
        let native = SPEC.replace("platform: ruby", "platform: x86_64-linux");
        let pushed = read(gem(&[("metadata.gz", &gzip(&native))]).as_slice()).unwrap();
        assert_eq!(pushed.platform, "x86_64-linux");
        assert_eq!(pushed.file_name(), "acme-util-1.2.0.gem");
    }

    #[test]
    fn bad_gems_are_errors() {
        assert!(read(&b"not a tar"[..]).is_err());
        assert!(matches!(
            read(gem(&[("data.tar.gz", b"x")]).as_slice()),
            Err(PushedGemError::NoMetadata)
        ));
        let unnamed = SPEC.replace("name: acme-util\n", "");
        assert!(read(gem(&[("metadata.gz", &gzip(&unnamed))]).as_slice()).is_err());
        let hostile = SPEC.replace("1.2.0", "../../x");
        assert!(read(gem(&[("metadata.gz", &gzip(&hostile))]).as_slice()).is_err());
        assert!(read(gem(&[("metadata.gz", b"not gzip")]).as_slice()).is_err());
    }
}
