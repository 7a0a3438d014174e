//! Go module proxy names: validated module paths and versions, `!` case-encoding, endpoint kinds.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

use super::{decode_component, NameError};

/// Longest module path accepted (GitLab paths are far shorter; this bounds keys and logs).
pub const MAX_MODULE_PATH: usize = 1024;

/// GitLab's `MODULE_VERSION_REGEX` (`lib/api/go_proxy.rb`), anchored: lower case and `!` only.
static VERSION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[-.!a-z0-9]+)?(\+[-.!a-z0-9]+)?$")
        .unwrap_or_else(|e| unreachable!("constant regex: {e}"))
});

/// A module path exactly as the client sent it (case-encoded, possibly percent-encoded).
///
/// Construction rejects what no GitLab project could hold: empty or dot segments (traversal),
/// control characters, undecodable percent escapes, a `!` that does not escape a lower-case
/// letter, and over-long input.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ModulePath {
    raw: String,
    decoded: String,
}

impl ModulePath {
    pub fn parse(raw: &str) -> Result<ModulePath, NameError> {
        if raw.is_empty() {
            return Err(NameError::Empty("module path"));
        }
        if raw.len() > MAX_MODULE_PATH {
            return Err(NameError::TooLong("module path", MAX_MODULE_PATH));
        }
        let unescaped = decode_component(raw, "module path")?;
        for segment in unescaped.split('/') {
            match segment {
                "" => return Err(NameError::Invalid("module path", "empty path segment")),
                "." | ".." => return Err(NameError::Invalid("module path", "dot segment")),
                _ => {}
            }
        }
        if unescaped.chars().any(|c| c.is_whitespace()) {
            return Err(NameError::Invalid("module path", "white space"));
        }
        let decoded = case_decode(&unescaped).ok_or(NameError::Invalid(
            "module path",
            "`!` must escape a lower-case letter",
        ))?;
        Ok(ModulePath {
            raw: raw.to_owned(),
            decoded,
        })
    }

    /// As received; this is what goes upstream and into cache keys.
    pub fn as_raw(&self) -> &str {
        &self.raw
    }

    /// Percent- and case-decoded, as GitLab reads it (`!my!lib` → `MyLib`).
    pub fn decoded(&self) -> &str {
        &self.decoded
    }
}

impl fmt::Debug for ModulePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModulePath({})", self.raw)
    }
}

/// A version that GitLab's Go route admits (`v1.2.3`, `v1.0.0-!r!c.1`, pseudo-versions).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ModuleVersion(String);

impl ModuleVersion {
    /// `None` for anything GitLab routes nowhere (branches, upper case, missing `v`).
    pub fn parse(raw: &str) -> Option<ModuleVersion> {
        VERSION.is_match(raw).then(|| ModuleVersion(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ModuleVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModuleVersion({})", self.0)
    }
}

/// What a Go request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GoRequest {
    List,
    Info(ModuleVersion),
    Mod(ModuleVersion),
    Zip(ModuleVersion),
}

impl GoRequest {
    /// Parses the part after `@v/`: `list`, or `<version>.info|.mod|.zip`.
    pub fn parse(file: &str) -> Option<GoRequest> {
        if file == "list" {
            return Some(GoRequest::List);
        }
        let (version, ext) = file.rsplit_once('.')?;
        let version = ModuleVersion::parse(version)?;
        match ext {
            "info" => Some(GoRequest::Info(version)),
            "mod" => Some(GoRequest::Mod(version)),
            "zip" => Some(GoRequest::Zip(version)),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            GoRequest::List => "go_list",
            GoRequest::Info(_) => "go_info",
            GoRequest::Mod(_) => "go_mod",
            GoRequest::Zip(_) => "go_zip",
        }
    }
}

/// Go's module path case-encoding: every upper-case letter becomes `!` + its lower case.
pub fn case_encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Reverses [`case_encode`]; `None` when a `!` is not followed by a lower-case letter.
///
/// Raw upper-case letters pass through unchanged, as GitLab accepts them.
pub fn case_decode(path: &str) -> Option<String> {
    let mut out = String::with_capacity(path.len());
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        if c == '!' {
            match chars.next() {
                Some(l) if l.is_ascii_lowercase() => out.push(l.to_ascii_uppercase()),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn versions_follow_gitlabs_regex() {
        for ok in [
            "v0.0.0",
            "v1.2.3",
            "v10.20.30-rc.1",
            "v1.0.1-!prerelease",
            "v2.0.0+build.5",
            "v0.0.0-20210407130512-0123456789ab",
        ] {
            assert!(ModuleVersion::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "1.2.3",
            "v1.2",
            "v01.2.3",
            "v1.0.1-Prerelease",
            "master",
            "v1.2.3/../x",
            "latest",
            "",
            "v1.2.3\n",
        ] {
            assert!(ModuleVersion::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn module_paths_are_validated() {
        let m = ModulePath::parse("gitlab.example.com/group/!my!lib").unwrap();
        assert_eq!(m.decoded(), "gitlab.example.com/group/MyLib");
        assert_eq!(m.as_raw(), "gitlab.example.com/group/!my!lib");
        let pct = ModulePath::parse("gitlab.example.com%2Fgroup%2Fx").unwrap();
        assert_eq!(pct.decoded(), "gitlab.example.com/group/x");
        for bad in [
            "",
            "a//b",
            "a/../b",
            "a/%2e%2e/b",
            "./a",
            "a/b/",
            "a/!B",
            "a/b!",
            "a/\u{7}b",
            "a/%00",
            "a/%ff",
            "a/%zz",
            "a b",
        ] {
            assert!(ModulePath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ModulePath::parse(&"a".repeat(MAX_MODULE_PATH + 1)).is_err());
    }

    #[test]
    fn requests_parse() {
        assert_eq!(GoRequest::parse("list"), Some(GoRequest::List));
        assert!(
            matches!(GoRequest::parse("v1.0.0.zip"), Some(GoRequest::Zip(v)) if v.as_str() == "v1.0.0")
        );
        assert!(
            matches!(GoRequest::parse("v1.0.0-rc.1.mod"), Some(GoRequest::Mod(v)) if v.as_str() == "v1.0.0-rc.1")
        );
        assert_eq!(GoRequest::parse("v1.0.0.tar"), None);
        assert_eq!(GoRequest::parse("v1.0.0"), None);
        assert_eq!(GoRequest::parse("latest.info"), None);
    }

    proptest! {
        #[test]
        fn case_encoding_round_trips(path in "[a-zA-Z0-9./_~-]{0,64}") {
            let encoded = case_encode(&path);
            prop_assert!(!encoded.chars().any(|c| c.is_ascii_uppercase()));
            prop_assert_eq!(case_decode(&encoded), Some(path));
        }

        #[test]
        fn module_path_parser_never_panics(raw in "\\PC{0,80}|[%!./a-zA-Z0-9]{0,40}") {
            if let Ok(m) = ModulePath::parse(&raw) {
                prop_assert!(!m.decoded().split('/').any(|s| s.is_empty() || s == "." || s == ".."));
                prop_assert!(!m.decoded().chars().any(char::is_control));
            }
        }

        #[test]
        fn version_parser_never_panics(raw in "\\PC{0,40}") {
            if let Some(v) = ModuleVersion::parse(&raw) {
                prop_assert!(v.as_str().starts_with('v'));
            }
        }
    }
}
