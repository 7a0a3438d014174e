//! RubyGems names: validated gem file names and dependency-query gem lists, endpoint kinds.

use std::fmt;

use super::{decode_component, NameError};

/// Longest file name accepted under `gems/` or `quick/Marshal.4.8/`.
pub const MAX_FILE_NAME: usize = 255;
/// Most names accepted in one `api/v1/dependencies?gems=` query (bundler sends 50 at a time).
pub const MAX_GEMS_PER_QUERY: usize = 500;

/// The spec index files that GitLab 19.1 serves at the root of the RubyGems API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecIndex {
    Specs,
    LatestSpecs,
    PrereleaseSpecs,
}

impl SpecIndex {
    pub fn parse(name: &str) -> Option<SpecIndex> {
        match name {
            "specs.4.8.gz" => Some(SpecIndex::Specs),
            "latest_specs.4.8.gz" => Some(SpecIndex::LatestSpecs),
            "prerelease_specs.4.8.gz" => Some(SpecIndex::PrereleaseSpecs),
            _ => None,
        }
    }

    pub fn file_name(self) -> &'static str {
        match self {
            SpecIndex::Specs => "specs.4.8.gz",
            SpecIndex::LatestSpecs => "latest_specs.4.8.gz",
            SpecIndex::PrereleaseSpecs => "prerelease_specs.4.8.gz",
        }
    }
}

/// A gem name: the characters RubyGems allows (`[A-Za-z0-9._-]`), not starting with a dot.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct GemName(String);

impl GemName {
    pub fn parse(name: &str) -> Result<GemName, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty("gem name"));
        }
        if name.len() > MAX_FILE_NAME {
            return Err(NameError::TooLong("gem name", MAX_FILE_NAME));
        }
        if name.starts_with('.')
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(NameError::Invalid(
                "gem name",
                "only letters, digits, `.`, `_` and `-`",
            ));
        }
        Ok(GemName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for GemName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GemName({})", self.0)
    }
}

/// A stored file name under `gems/` (`rails-7.1.0.gem`) or `quick/Marshal.4.8/`
/// (`rails-7.1.0.gemspec.rz`): one path segment, no traversal, no control characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct GemFileName {
    raw: String,
    decoded: String,
}

impl GemFileName {
    /// Parses a raw path segment that must end with `suffix`.
    pub fn parse(raw: &str, suffix: &'static str) -> Result<GemFileName, NameError> {
        if raw.len() > MAX_FILE_NAME * 3 {
            return Err(NameError::TooLong("file name", MAX_FILE_NAME));
        }
        let decoded = decode_component(raw, "file name")?;
        if decoded.len() > MAX_FILE_NAME {
            return Err(NameError::TooLong("file name", MAX_FILE_NAME));
        }
        let stem = decoded
            .strip_suffix(suffix)
            .ok_or(NameError::Invalid("file name", "unexpected extension"))?;
        if stem.is_empty()
            || stem.starts_with('.')
            || !stem
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'~'))
        {
            return Err(NameError::Invalid(
                "file name",
                "only letters, digits and `._-+~`",
            ));
        }
        Ok(GemFileName {
            raw: raw.to_owned(),
            decoded,
        })
    }

    pub fn as_raw(&self) -> &str {
        &self.raw
    }

    pub fn decoded(&self) -> &str {
        &self.decoded
    }
}

impl fmt::Debug for GemFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GemFileName({})", self.raw)
    }
}

/// The `gems=` parameter of `api/v1/dependencies`: names in request order (GitLab answers
/// in that order, so it is kept), duplicates kept.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct GemList(Vec<GemName>);

impl GemList {
    /// `Ok(None)` when the query has no (or a blank) `gems` parameter: GitLab's liveness answer.
    pub fn from_query(query: Option<&str>) -> Result<Option<GemList>, NameError> {
        let Some(query) = query else {
            return Ok(None);
        };
        let mut value = None;
        for (key, v) in form_urlencoded::parse(query.as_bytes()) {
            if key == "gems" {
                value = Some(v.into_owned());
            }
        }
        let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
            return Ok(None);
        };
        let names = value
            .split(',')
            .map(|n| GemName::parse(n.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        if names.len() > MAX_GEMS_PER_QUERY {
            return Err(NameError::TooLong("gems list", MAX_GEMS_PER_QUERY));
        }
        Ok(Some(GemList(names)))
    }

    pub fn names(&self) -> &[GemName] {
        &self.0
    }

    /// A list of one name.
    pub fn single(name: GemName) -> GemList {
        GemList(vec![name])
    }

    /// The names, each once, in the order first asked for.
    pub fn distinct(&self) -> GemList {
        let mut names: Vec<GemName> = Vec::with_capacity(self.0.len());
        for name in &self.0 {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        GemList(names)
    }

    /// The names of `self` for which `keep` holds, in order.
    pub fn filtered(&self, keep: impl Fn(&GemName) -> bool) -> GemList {
        GemList(self.0.iter().filter(|n| keep(n)).cloned().collect())
    }

    /// A canonical spelling for cache keys (never includes anything but the names).
    pub fn key(&self) -> String {
        let names: Vec<&str> = self.0.iter().map(GemName::as_str).collect();
        names.join(",")
    }
}

impl fmt::Debug for GemList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GemList({})", self.key())
    }
}

/// A compact index file, which no GitLab serves and the proxy writes itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CompactFile {
    Versions,
    Names,
    Info(GemName),
}

/// What a RubyGems request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GemRequest {
    /// The source root (`<src>/`), which RubyGems 3.3–3.5 probe with HEAD to choose the
    /// compact index.
    Root,
    /// `versions`, `names`, `info/<name>`.
    CompactIndex(CompactFile),
    /// `specs.4.8.gz` and friends.
    SpecIndex(SpecIndex),
    /// Any other single segment at the API root: GitLab 19.1 answers 400 and older
    /// versions 404, so it is passed through, uncached.
    RootFile,
    /// `quick/Marshal.4.8/<name>-<version>.gemspec.rz`.
    Gemspec(GemFileName),
    /// `gems/<name>-<version>.gem`.
    Gem(GemFileName),
    /// `api/v1/dependencies[?gems=…]`.
    Dependencies(Option<GemList>),
    /// `POST api/v1/gems`: gem push.
    Upload,
    /// `POST api/v1/gems/authorize`: Workhorse's pre-authorization, passed through.
    UploadAuthorize,
}

impl GemRequest {
    pub fn name(&self) -> &'static str {
        match self {
            GemRequest::Root => "gem_root",
            GemRequest::CompactIndex(CompactFile::Versions) => "gem_versions",
            GemRequest::CompactIndex(CompactFile::Names) => "gem_names",
            GemRequest::CompactIndex(CompactFile::Info(_)) => "gem_info",
            GemRequest::SpecIndex(_) => "gem_spec_index",
            GemRequest::RootFile => "gem_root_file",
            GemRequest::Gemspec(_) => "gem_gemspec",
            GemRequest::Gem(_) => "gem_file",
            GemRequest::Dependencies(_) => "gem_dependencies",
            GemRequest::Upload => "gem_upload",
            GemRequest::UploadAuthorize => "gem_upload_authorize",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn file_names() {
        let f = GemFileName::parse("rails-7.1.0.gem", ".gem").unwrap();
        assert_eq!(f.decoded(), "rails-7.1.0.gem");
        assert!(GemFileName::parse("nokogiri-1.16.0-x86_64-linux.gem", ".gem").is_ok());
        assert!(GemFileName::parse("a%2Db-1.0.gem", ".gem").is_ok());
        for bad in [
            ".gem",
            "..gem",
            "../x.gem",
            "%2e%2e%2fx.gem",
            "a%2Fb.gem",
            "a.tar",
            "a\u{0}.gem",
            "a b.gem",
            "%ff.gem",
        ] {
            assert!(GemFileName::parse(bad, ".gem").is_err(), "{bad:?}");
        }
        assert!(GemFileName::parse(&format!("{}.gem", "a".repeat(300)), ".gem").is_err());
    }

    #[test]
    fn gem_lists() {
        assert_eq!(GemList::from_query(None).unwrap(), None);
        assert_eq!(GemList::from_query(Some("gems=")).unwrap(), None);
        assert_eq!(GemList::from_query(Some("other=1")).unwrap(), None);
        let list = GemList::from_query(Some("gems=rack%2Crails,%20json"))
            .unwrap()
            .unwrap();
        assert_eq!(list.key(), "rack,rails,json");
        assert!(GemList::from_query(Some("gems=a,,b")).is_err());
        assert!(GemList::from_query(Some("gems=a/b")).is_err());
        let many = vec!["a"; MAX_GEMS_PER_QUERY + 1].join(",");
        assert!(GemList::from_query(Some(&format!("gems={many}"))).is_err());
    }

    #[test]
    fn spec_indexes() {
        for name in [
            "specs.4.8.gz",
            "latest_specs.4.8.gz",
            "prerelease_specs.4.8.gz",
        ] {
            assert_eq!(SpecIndex::parse(name).map(SpecIndex::file_name), Some(name));
        }
        assert_eq!(SpecIndex::parse("versions"), None);
    }

    proptest! {
        #[test]
        fn file_name_parser_never_panics(raw in "\\PC{0,80}|[%./a-z0-9-]{0,40}\\.gem") {
            if let Ok(f) = GemFileName::parse(&raw, ".gem") {
                prop_assert!(!f.decoded().contains('/'));
                prop_assert!(!f.decoded().starts_with('.'));
            }
        }

        #[test]
        fn gem_list_parser_never_panics(raw in "\\PC{0,120}") {
            let _ = GemList::from_query(Some(&raw));
        }
    }
}
