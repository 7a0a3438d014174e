//! Whether one of GitLab's RubyGems answers lists a given gem version: the dependency API's
//! Marshal array of hashes, or a gzipped spec index of `[name, Gem::Version, platform]`.

use std::io::Read;

use crate::gems::marshal::{self, Value};
use crate::protocol::rubygems::GemRequest;

/// Largest inflated spec index looked into.
const MAX_INDEX_BYTES: u64 = 256 * 1024 * 1024;

/// The `(name, version)` pairs an answer to `request` lists; `None` when it cannot be read.
pub fn listed(request: &GemRequest, body: &[u8]) -> Option<Vec<(String, String)>> {
    match request {
        GemRequest::Dependencies(_) => dependencies(&marshal::load(body).ok()?),
        GemRequest::SpecIndex(_) => {
            let mut inflated = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(MAX_INDEX_BYTES)
                .read_to_end(&mut inflated)
                .ok()?;
            spec_index(&marshal::load(&inflated).ok()?)
        }
        GemRequest::RootFile
        | GemRequest::Root
        | GemRequest::CompactIndex(_)
        | GemRequest::Gemspec(_)
        | GemRequest::Gem(_)
        | GemRequest::Upload
        | GemRequest::UploadAuthorize => None,
    }
}

/// Whether `listed` holds `name` at `version` (compared as `Gem::Version` spells them).
pub fn lists(listed: &[(String, String)], name: &str, version: &str) -> bool {
    let version = normalize(version);
    listed
        .iter()
        .any(|(n, v)| n == name && normalize(v) == version)
}

/// What `Gem::Version.new` keeps: the text stripped, `-` spelled `.pre.`.
fn normalize(version: &str) -> String {
    version.trim().replace('-', ".pre.")
}

fn text(value: &Value) -> Option<String> {
    value.as_text().map(str::to_owned)
}

/// `[{name:, number:, platform:, dependencies:}, ...]`.
fn dependencies(value: &Value) -> Option<Vec<(String, String)>> {
    let Value::Array(entries) = value else {
        return None;
    };
    entries
        .iter()
        .map(|entry| {
            let Value::Hash(pairs) = entry else {
                return None;
            };
            let field = |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| matches!(k, Value::Symbol(s) if s == key))
                    .and_then(|(_, v)| text(v))
            };
            Some((field("name")?, field("number")?))
        })
        .collect()
}

/// `[[name, Gem::Version, platform], ...]`.
fn spec_index(value: &Value) -> Option<Vec<(String, String)>> {
    let Value::Array(entries) = value else {
        return None;
    };
    entries
        .iter()
        .map(|entry| match entry {
            Value::Array(fields) => {
                let name = text(fields.first()?)?;
                let version = match fields.get(1)? {
                    Value::UserMarshal { class, data } if class == "Gem::Version" => {
                        match data.as_ref() {
                            Value::Array(parts) => text(parts.first()?)?,
                            _ => return None,
                        }
                    }
                    _ => return None,
                };
                Some((name, version))
            }
            _ => None,
        })
        .collect()
}
