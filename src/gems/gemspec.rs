//! Synthesized `quick/Marshal.4.8/<name>-<version>.gemspec.rz` and spec indexes
//! (`specs.4.8.gz` and friends) for GitLab versions that only answer 404 there.
//!
//! A gemspec.rz is zlib-deflated `Marshal.dump(spec)`: `u:Gem::Specification` holding the
//! string `Specification#_dump` returns, the Marshal of a 19-field Array (RubyGems
//! `specification.rb`; reference compact-index.md §5.3). Only classes, ivars and symbols
//! RubyGems' `SafeMarshal` permits are written, so every RubyGems version loads it.

use std::io::Write;

use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::{Compression, GzBuilder};

use super::gem_file::{GemSpec, Requirement};
use super::marshal::{self, MarshalError, Value};
use super::version;

/// `Gem::Specification::CURRENT_SPECIFICATION_VERSION`.
const SPECIFICATION_VERSION: i32 = 4;
/// What the spec says built it when the gem does not say.
const DEFAULT_RUBYGEMS_VERSION: &str = "3.3.15";

/// `Gem::Requirement`: `marshal_dump` is `[[[op, Gem::Version], …]]`.
fn requirement(requirement: &Requirement) -> Value {
    let pairs: Vec<Value> = if requirement.0.is_empty() {
        vec![Value::Array(vec![
            Value::str(">="),
            Value::gem_version("0"),
        ])]
    } else {
        requirement
            .0
            .iter()
            .map(|(op, v)| Value::Array(vec![Value::str(op), Value::gem_version(v)]))
            .collect()
    };
    Value::UserMarshal {
        class: "Gem::Requirement".to_owned(),
        data: Box::new(Value::Array(vec![Value::Array(pairs)])),
    }
}

fn text_or_nil(text: &Option<String>) -> Value {
    text.as_ref().map_or(Value::Nil, Value::str)
}

fn texts(items: &[String]) -> Value {
    Value::Array(items.iter().map(Value::str).collect())
}

/// The Array `Gem::Specification#_dump` marshals.
fn dump_fields(spec: &GemSpec) -> Value {
    let dependencies = spec
        .dependencies
        .iter()
        .map(|d| Value::Object {
            class: "Gem::Dependency".to_owned(),
            ivars: vec![
                ("@name".to_owned(), Value::str(&d.name)),
                ("@requirement".to_owned(), requirement(&d.requirement)),
                (
                    "@type".to_owned(),
                    Value::sym(if d.runtime { "runtime" } else { "development" }),
                ),
                (
                    "@prerelease".to_owned(),
                    Value::Bool(
                        d.requirement
                            .0
                            .iter()
                            .any(|(_, v)| version::is_prerelease(v)),
                    ),
                ),
            ],
        })
        .collect();
    let email = match spec.email.as_slice() {
        [] => Value::Nil,
        [one] => Value::str(one),
        many => texts(many),
    };
    Value::Array(vec![
        Value::str(
            spec.rubygems_version
                .as_deref()
                .unwrap_or(DEFAULT_RUBYGEMS_VERSION),
        ),
        Value::Int(SPECIFICATION_VERSION),
        Value::str(&spec.name),
        Value::gem_version(&spec.version),
        // `date=` accepts a `YYYY-MM-DD` String.
        Value::str(spec.date.as_deref().unwrap_or("1980-01-02")),
        Value::str(spec.summary.as_deref().unwrap_or("")),
        requirement(&spec.required_ruby_version),
        requirement(&spec.required_rubygems_version),
        Value::str(&spec.platform),
        Value::Array(dependencies),
        Value::str(""),
        email,
        texts(&spec.authors),
        text_or_nil(&spec.description),
        text_or_nil(&spec.homepage),
        Value::Bool(true),
        Value::str(&spec.platform),
        texts(&spec.licenses),
        Value::Hash(
            spec.metadata
                .iter()
                .map(|(k, v)| (Value::str(k), Value::str(v)))
                .collect(),
        ),
    ])
}

/// `Marshal.dump(spec)` of the gem's specification.
pub fn marshal_spec(spec: &GemSpec) -> Result<Vec<u8>, MarshalError> {
    let inner = marshal::dump(&dump_fields(spec))?;
    marshal::dump(&Value::UserDefined {
        class: "Gem::Specification".to_owned(),
        data: inner,
    })
}

/// The bytes of `quick/Marshal.4.8/<full name>.gemspec.rz` (`Gem.deflate`: zlib).
pub fn gemspec_rz(spec: &GemSpec) -> Result<Vec<u8>, MarshalError> {
    let marshalled = marshal_spec(spec)?;
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    // Writing to memory cannot fail; keep whatever the encoder produced either way.
    let _ = encoder.write_all(&marshalled);
    Ok(encoder.finish().unwrap_or_default())
}

/// Which spec index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    /// Every released version.
    Specs,
    /// The newest released version of each name.
    Latest,
    /// Every prerelease version.
    Prerelease,
}

/// A spec index entry: `(name, version, platform)`.
pub type Tuple = (String, String, String);

/// `specs.4.8.gz` and friends, as GitLab 19.1 builds them: gzip (mtime 0) of the Marshal of
/// `[[name, Gem::Version, platform], …]` sorted by name, version and platform.
pub fn spec_index(kind: IndexKind, tuples: &[Tuple]) -> Result<Vec<u8>, MarshalError> {
    let mut selected: Vec<&Tuple> = tuples
        .iter()
        .filter(|(_, v, _)| version::is_prerelease(v) == (kind == IndexKind::Prerelease))
        .collect();
    selected.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| version::compare(&a.1, &b.1))
            .then_with(|| a.2.cmp(&b.2))
    });
    selected.dedup();
    if kind == IndexKind::Latest {
        let mut latest: Vec<&Tuple> = Vec::new();
        for tuple in selected {
            match latest.last_mut() {
                Some(last) if last.0 == tuple.0 => *last = tuple,
                _ => latest.push(tuple),
            }
        }
        selected = latest;
    }
    let entries = selected
        .into_iter()
        .map(|(name, version, platform)| {
            Value::Array(vec![
                Value::str(name),
                Value::gem_version(version),
                Value::str(platform),
            ])
        })
        .collect();
    let marshalled = marshal::dump(&Value::Array(entries))?;
    let mut encoder: GzEncoder<Vec<u8>> = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    let _ = encoder.write_all(&marshalled);
    Ok(encoder.finish().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gems::gem_file::Dependency;

    pub fn sample() -> GemSpec {
        GemSpec {
            name: "gpc_core".to_owned(),
            version: "2.0.0".to_owned(),
            platform: "ruby".to_owned(),
            dependencies: vec![Dependency {
                name: "gpc_leaf".to_owned(),
                requirement: Requirement(vec![
                    ("<".to_owned(), "2".to_owned()),
                    (">=".to_owned(), "1.0".to_owned()),
                ]),
                runtime: true,
            }],
            required_ruby_version: Requirement(vec![(">=".to_owned(), "2.5".to_owned())]),
            authors: vec!["tests".to_owned()],
            ..GemSpec::default()
        }
    }

    #[test]
    fn gemspec_is_deflated_marshal_of_a_user_defined_spec() {
        let rz = gemspec_rz(&sample()).unwrap();
        let mut inflated = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::ZlibDecoder::new(rz.as_slice()),
            &mut inflated,
        )
        .unwrap();
        let Value::UserDefined { class, data } = marshal::load(&inflated).unwrap() else {
            panic!("not a _dump object");
        };
        assert_eq!(class, "Gem::Specification");
        let Value::Array(fields) = marshal::load(&data).unwrap() else {
            panic!("not an array");
        };
        assert_eq!(fields.len(), 19);
        assert_eq!(fields[2], Value::str("gpc_core"));
        assert_eq!(fields[3], Value::gem_version("2.0.0"));
    }

    #[test]
    fn latest_keeps_the_newest_release_of_each_name() {
        let t = |n: &str, v: &str| (n.to_owned(), v.to_owned(), "ruby".to_owned());
        let tuples = [
            t("b", "1.10"),
            t("b", "1.9"),
            t("a", "2.0.rc1"),
            t("a", "1.0"),
        ];
        let read = |kind| {
            let gz = spec_index(kind, &tuples).unwrap();
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut raw)
                .unwrap();
            marshal::load(&raw).unwrap()
        };
        let entry = |n: &str, v: &str| {
            Value::Array(vec![
                Value::str(n),
                Value::gem_version(v),
                Value::str("ruby"),
            ])
        };
        assert_eq!(
            read(IndexKind::Specs),
            Value::Array(vec![
                entry("a", "1.0"),
                entry("b", "1.9"),
                entry("b", "1.10")
            ])
        );
        assert_eq!(
            read(IndexKind::Latest),
            Value::Array(vec![entry("a", "1.0"), entry("b", "1.10")])
        );
        assert_eq!(
            read(IndexKind::Prerelease),
            Value::Array(vec![entry("a", "2.0.rc1")])
        );
    }
}
