//! Reads a `.gem`'s own metadata: tar → `metadata.gz` → the YAML `Gem::Specification`.
//!
//! The gem is read as a stream and reading stops at `metadata.gz` (the first entry `gem
//! build` writes), so memory is bounded by the metadata, never by the gem. The YAML is
//! parsed with saphyr (reference compact-index.md §5.2) keeping every scalar as the text
//! that was written, so versions are never read as numbers. Tags (`!ruby/object:…`) are
//! ignored: field names say what a node is, and RubyGems itself reads old gems whose tags
//! differ (`Gem::Version::Requirement`, `! '>='`).

use std::io::Read;

use saphyr::{ScalarStyle, Yaml, YamlLoader};

/// Largest `metadata.gz` accepted once inflated (the biggest gems' file lists are far smaller).
pub const MAX_METADATA_BYTES: u64 = 8 * 1024 * 1024;

/// One requirement list: `(operator, version)` pairs as the gem wrote them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Requirement(pub Vec<(String, String)>);

impl Requirement {
    /// `Gem::Requirement#to_s` of each pair: `">= 1.0"`.
    pub fn constraints(&self) -> Vec<String> {
        self.0.iter().map(|(op, v)| format!("{op} {v}")).collect()
    }

    /// True for no requirement or exactly `>= 0` (RubyGems' default).
    pub fn is_default(&self) -> bool {
        self.0.is_empty() || (self.0.len() == 1 && self.0[0].0 == ">=" && self.0[0].1 == "0")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub name: String,
    pub requirement: Requirement,
    /// `Gem::Dependency#runtime?`: type `:runtime`, or no type at all.
    pub runtime: bool,
}

/// What the indexes and gemspecs need from a gem's specification.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GemSpec {
    pub name: String,
    pub version: String,
    /// `ruby` for pure-Ruby gems.
    pub platform: String,
    pub dependencies: Vec<Dependency>,
    pub required_ruby_version: Requirement,
    pub required_rubygems_version: Requirement,
    pub summary: Option<String>,
    pub description: Option<String>,
    pub homepage: Option<String>,
    pub email: Vec<String>,
    pub authors: Vec<String>,
    pub licenses: Vec<String>,
    pub metadata: Vec<(String, String)>,
    /// `YYYY-MM-DD`.
    pub date: Option<String>,
    pub rubygems_version: Option<String>,
}

impl GemSpec {
    pub fn runtime_dependencies(&self) -> impl Iterator<Item = &Dependency> {
        self.dependencies.iter().filter(|d| d.runtime)
    }

    /// `name-version`, plus `-platform` unless it is `ruby`.
    pub fn full_name(&self) -> String {
        if self.platform == "ruby" {
            format!("{}-{}", self.name, self.version)
        } else {
            format!("{}-{}-{}", self.name, self.version, self.platform)
        }
    }
}

/// Why a `.gem` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GemFileError {
    #[error("reading the gem: {0}")]
    Io(#[from] std::io::Error),
    #[error("the gem has no metadata.gz")]
    NoMetadata,
    #[error("metadata.gz is larger than {MAX_METADATA_BYTES} bytes")]
    MetadataTooLarge,
    #[error("metadata.gz is not UTF-8")]
    NotUtf8,
    #[error("metadata YAML: {0}")]
    Yaml(String),
    #[error("metadata lacks {0}")]
    Missing(&'static str),
    #[error("metadata field {0} is malformed")]
    Malformed(&'static str),
}

/// Reads the specification of the `.gem` that `reader` yields, stopping at `metadata.gz`.
pub fn read_spec(reader: impl Read) -> Result<GemSpec, GemFileError> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let entry = entry?;
        if entry.path_bytes().as_ref() != b"metadata.gz" {
            continue;
        }
        let mut yaml = Vec::new();
        flate2::read::GzDecoder::new(entry)
            .take(MAX_METADATA_BYTES + 1)
            .read_to_end(&mut yaml)?;
        if yaml.len() as u64 > MAX_METADATA_BYTES {
            return Err(GemFileError::MetadataTooLarge);
        }
        let yaml = String::from_utf8(yaml).map_err(|_| GemFileError::NotUtf8)?;
        return parse_spec_yaml(&yaml);
    }
    Err(GemFileError::NoMetadata)
}

/// Parses the YAML of a `Gem::Specification` (what `metadata.gz` holds).
pub fn parse_spec_yaml(text: &str) -> Result<GemSpec, GemFileError> {
    let mut loader: YamlLoader<'_, Yaml<'_>> = YamlLoader::default();
    loader.early_parse(false);
    // Old gems repeat keys now and then; RubyGems keeps the last, and so does this.
    loader.allow_duplicate_keys(true);
    loader.alias_limit(100_000);
    let mut parser = saphyr_parser::Parser::new_from_str(text);
    parser
        .load(&mut loader, false)
        .map_err(|e| GemFileError::Yaml(e.to_string()))?;
    if let Some(e) = loader.error() {
        return Err(GemFileError::Yaml(e.to_string()));
    }
    let docs = loader.into_documents();
    let root = docs
        .first()
        .ok_or(GemFileError::Missing("a YAML document"))?;
    let root = untag(root);
    if !root.is_mapping() {
        return Err(GemFileError::Malformed("specification"));
    }
    let name = get(root, "name")
        .and_then(text_of)
        .ok_or(GemFileError::Missing("name"))?;
    let version = get(root, "version")
        .and_then(version_of)
        .ok_or(GemFileError::Missing("version"))?;
    let platform = get(root, "platform")
        .and_then(text_of)
        .unwrap_or_else(|| "ruby".to_owned());
    let dependencies = match get(root, "dependencies").map(untag) {
        None => Vec::new(),
        Some(node) if is_null(node) => Vec::new(),
        Some(Yaml::Sequence(items)) => items
            .iter()
            .map(dependency_of)
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(GemFileError::Malformed("dependencies")),
    };
    Ok(GemSpec {
        name,
        version,
        platform,
        dependencies,
        required_ruby_version: requirement_field(root, "required_ruby_version")?,
        required_rubygems_version: requirement_field(root, "required_rubygems_version")?,
        summary: get(root, "summary").and_then(text_of),
        description: get(root, "description").and_then(text_of),
        homepage: get(root, "homepage").and_then(text_of),
        email: get(root, "email").map(texts_of).unwrap_or_default(),
        authors: get(root, "authors").map(texts_of).unwrap_or_default(),
        licenses: get(root, "licenses").map(texts_of).unwrap_or_default(),
        metadata: get(root, "metadata")
            .map(untag)
            .and_then(Yaml::as_mapping)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((text_of(k)?, text_of(v)?)))
                    .collect()
            })
            .unwrap_or_default(),
        date: get(root, "date")
            .and_then(text_of)
            .and_then(|d| d.get(..10).map(str::to_owned))
            .filter(|d| {
                d.bytes().enumerate().all(|(i, b)| {
                    if i == 4 || i == 7 {
                        b == b'-'
                    } else {
                        b.is_ascii_digit()
                    }
                })
            }),
        rubygems_version: get(root, "rubygems_version").and_then(text_of),
    })
}

fn untag<'a, 'b>(node: &'a Yaml<'b>) -> &'a Yaml<'b> {
    match node {
        Yaml::Tagged(_, inner) => untag(inner),
        other => other,
    }
}

fn is_null(node: &Yaml<'_>) -> bool {
    match untag(node) {
        Yaml::Representation(text, ScalarStyle::Plain, _) => {
            matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL")
        }
        _ => false,
    }
}

/// A scalar's text as written (quotes removed by the parser); `None` for null or non-scalars.
fn text_of(node: &Yaml<'_>) -> Option<String> {
    if is_null(node) {
        return None;
    }
    match untag(node) {
        Yaml::Representation(text, _, _) => Some(text.to_string()),
        _ => None,
    }
}

/// A string or a list of strings, as a list.
fn texts_of(node: &Yaml<'_>) -> Vec<String> {
    match untag(node) {
        Yaml::Sequence(items) => items.iter().filter_map(text_of).collect(),
        other => text_of(other).into_iter().collect(),
    }
}

/// The value of `key` in a mapping.
fn get<'a, 'b>(node: &'a Yaml<'b>, key: &str) -> Option<&'a Yaml<'b>> {
    untag(node)
        .as_mapping()?
        .iter()
        .find(|(k, _)| text_of(k).as_deref() == Some(key))
        .map(|(_, v)| v)
}

/// A `Gem::Version` node (`{version: '1.0'}`), or a bare version string.
fn version_of(node: &Yaml<'_>) -> Option<String> {
    match untag(node) {
        Yaml::Mapping(_) => get(node, "version").and_then(text_of),
        other => text_of(other),
    }
}

fn requirement_field(root: &Yaml<'_>, key: &'static str) -> Result<Requirement, GemFileError> {
    match get(root, key) {
        None => Ok(Requirement::default()),
        Some(node) if is_null(node) => Ok(Requirement::default()),
        Some(node) => requirement_of(node).ok_or(GemFileError::Malformed(key)),
    }
}

/// A `Gem::Requirement` node: `{requirements: [[op, Gem::Version], …]}`.
fn requirement_of(node: &Yaml<'_>) -> Option<Requirement> {
    let list = get(node, "requirements")?;
    let Yaml::Sequence(pairs) = untag(list) else {
        return None;
    };
    let mut out = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let Yaml::Sequence(parts) = untag(pair) else {
            return None;
        };
        let [op, version] = parts.as_slice() else {
            return None;
        };
        out.push((text_of(op)?, version_of(version)?));
    }
    Some(Requirement(out))
}

fn dependency_of(node: &Yaml<'_>) -> Result<Dependency, GemFileError> {
    let name = get(node, "name")
        .and_then(text_of)
        .ok_or(GemFileError::Missing("dependency name"))?;
    // `Gem::Dependency#requirement` falls back to the legacy field names.
    let requirement = ["requirement", "version_requirements", "version_requirement"]
        .iter()
        .filter_map(|key| get(node, key))
        .find(|n| !is_null(n))
        .map(|n| requirement_of(n).ok_or(GemFileError::Malformed("dependency requirement")))
        .transpose()?
        .unwrap_or_default();
    let kind = get(node, "type").and_then(text_of);
    let runtime = match kind.as_deref() {
        None | Some(":runtime") | Some("runtime") => true,
        Some(_) => false,
    };
    Ok(Dependency {
        name,
        requirement,
        runtime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape `gem build` (RubyGems 3.x, Psych) writes.
    const MODERN: &str = r#"--- !ruby/object:Gem::Specification
name: gpc_core
version: !ruby/object:Gem::Version
  version: 2.0.0
platform: ruby
authors:
- gitlab-pkg-cache tests
autorequire:
bindir: bin
cert_chain: []
date: 2023-11-14 00:00:00.000000000 Z
dependencies:
- !ruby/object:Gem::Dependency
  name: gpc_leaf
  requirement: !ruby/object:Gem::Requirement
    requirements:
    - - "<"
      - !ruby/object:Gem::Version
        version: '2'
    - - ">="
      - !ruby/object:Gem::Version
        version: '1.0'
  type: :runtime
  prerelease: false
  version_requirements: !ruby/object:Gem::Requirement
    requirements:
    - - "<"
      - !ruby/object:Gem::Version
        version: '2'
- !ruby/object:Gem::Dependency
  name: gpc_devtool
  requirement: !ruby/object:Gem::Requirement
    requirements:
    - - "~>"
      - !ruby/object:Gem::Version
        version: '0.1'
  type: :development
  prerelease: false
description:
email:
executables: []
extensions: []
extra_rdoc_files: []
files:
- lib/gpc_core.rb
homepage: https://gitlab.example.com/group/gems
licenses:
- MIT
metadata: {}
post_install_message:
rdoc_options: []
require_paths:
- lib
required_ruby_version: !ruby/object:Gem::Requirement
  requirements:
  - - ">="
    - !ruby/object:Gem::Version
      version: '2.5'
required_rubygems_version: !ruby/object:Gem::Requirement
  requirements:
  - - ">="
    - !ruby/object:Gem::Version
      version: '0'
requirements: []
rubygems_version: 3.3.15
signing_key:
specification_version: 4
summary: Generated by the gitlab-pkg-cache tests
test_files: []
"#;

    /// The 2011 shape: anchors, aliases, the `! '>='` tag, no `type` on one dependency.
    const OLD: &str = r#"--- !ruby/object:Gem::Specification
name: oldgem
version: !ruby/object:Gem::Version
  version: 0.1.0
  prerelease:
platform: x86-mingw32
date: 2011-05-01 00:00:00.000000000Z
dependencies:
- !ruby/object:Gem::Dependency
  name: rack
  requirement: &12795560 !ruby/object:Gem::Requirement
    none: false
    requirements:
    - - ! '>='
      - !ruby/object:Gem::Version
        version: 1.10.0
  version_requirements: *12795560
- !ruby/object:Gem::Dependency
  name: json
  type: :development
  version_requirements: !ruby/object:Gem::Requirement
    requirements:
    - - "~>"
      - !ruby/object:Gem::Version
        version: '1.5'
- !ruby/object:Gem::Dependency
  name: untyped
  version_requirements: !ruby/object:Gem::Requirement
    requirements:
    - - "="
      - !ruby/object:Gem::Version
        version: 1.0
"#;

    #[test]
    fn reads_what_gem_build_writes() {
        let spec = parse_spec_yaml(MODERN).unwrap();
        assert_eq!(spec.name, "gpc_core");
        assert_eq!(spec.version, "2.0.0");
        assert_eq!(spec.platform, "ruby");
        assert_eq!(spec.full_name(), "gpc_core-2.0.0");
        let runtime: Vec<_> = spec.runtime_dependencies().collect();
        assert_eq!(runtime.len(), 1);
        assert_eq!(runtime[0].name, "gpc_leaf");
        assert_eq!(runtime[0].requirement.constraints(), ["< 2", ">= 1.0"]);
        assert!(!spec.dependencies[1].runtime);
        assert_eq!(spec.required_ruby_version.constraints(), [">= 2.5"]);
        assert!(spec.required_rubygems_version.is_default());
        assert_eq!(spec.date.as_deref(), Some("2023-11-14"));
        assert_eq!(spec.licenses, ["MIT"]);
        assert_eq!(spec.description, None);
        assert_eq!(spec.email, Vec::<String>::new());
        assert_eq!(spec.rubygems_version.as_deref(), Some("3.3.15"));
    }

    #[test]
    fn reads_old_gems() {
        let spec = parse_spec_yaml(OLD).unwrap();
        assert_eq!(spec.platform, "x86-mingw32");
        assert_eq!(spec.full_name(), "oldgem-0.1.0-x86-mingw32");
        let deps: Vec<_> = spec
            .dependencies
            .iter()
            .map(|d| (d.name.as_str(), d.requirement.constraints(), d.runtime))
            .collect();
        assert_eq!(
            deps,
            [
                ("rack", vec![">= 1.10.0".to_owned()], true),
                ("json", vec!["~> 1.5".to_owned()], false),
                ("untyped", vec!["= 1.0".to_owned()], true),
            ]
        );
        assert!(spec.required_ruby_version.is_default());
    }

    #[test]
    fn bad_metadata_is_an_error() {
        for yaml in [
            "",
            "[1, 2]",
            "name: x",
            "version: 1.0",
            "name: x\nversion: 1.0\ndependencies: 3",
            "name: x\nversion: 1.0\ndependencies:\n- name: y\n  requirement: 5",
            "name: [x\n",
            "a: &a [*a]",
        ] {
            assert!(parse_spec_yaml(yaml).is_err(), "{yaml:?}");
        }
        assert!(matches!(
            read_spec(&b"not a tar"[..]),
            Err(GemFileError::Io(_) | GemFileError::NoMetadata)
        ));
    }

    #[test]
    fn reads_a_gem_archive() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(MODERN.as_bytes()).unwrap();
        let metadata = gz.finish().unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(metadata.len() as u64);
        header.set_mode(0o444);
        header.set_cksum();
        builder
            .append_data(&mut header, "metadata.gz", metadata.as_slice())
            .unwrap();
        let gem = builder.into_inner().unwrap();
        assert_eq!(read_spec(gem.as_slice()).unwrap().name, "gpc_core");
    }
}
