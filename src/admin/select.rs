//! Which stored artifacts an admin call is about: explicit keys, or a project narrowed to a Go
//! module or a gem, and optionally one version. Keys are read back through the router, so a
//! selection matches exactly what the proxy would store for such a request.

use http::Method;
use serde::{Deserialize, Serialize};

use crate::protocol::goproxy::{case_decode, GoRequest};
use crate::protocol::rubygems::GemRequest;
use crate::route::{Endpoint, PackageRequest, PackageRoute};

/// A selection as sent in an admin request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Selection {
    /// Exact store keys (request paths as the proxy stores them).
    pub keys: Vec<String>,
    /// A project as clients name it in URLs: its id (`42`) or full path (`group/project`).
    pub project: Option<String>,
    /// A Go module path as written in go.mod (`gitlab.example.com/group/BigLib`).
    pub module: Option<String>,
    pub gem: Option<String>,
    /// With `module`: a Go version (`v1.2.3`); with `gem`: a gem version (`1.2.3`).
    pub version: Option<String>,
}

impl Selection {
    /// Refuses selections that could be misread: a module or gem without its project, both at
    /// once, a version without either. `allow_all`: an empty selection means everything.
    pub fn validate(&self, allow_all: bool) -> Result<(), String> {
        if self.module.is_some() && self.gem.is_some() {
            return Err("select a module or a gem, not both".to_owned());
        }
        if (self.module.is_some() || self.gem.is_some()) && self.project.is_none() {
            return Err("a module or gem selection needs its project".to_owned());
        }
        if self.version.is_some() && self.module.is_none() && self.gem.is_none() {
            return Err("a version needs a module or a gem".to_owned());
        }
        if !self.keys.is_empty() && self.project.is_some() {
            return Err("select by keys or by project, not both".to_owned());
        }
        if !allow_all && self.keys.is_empty() && self.project.is_none() {
            return Err("nothing selected: give keys or a project".to_owned());
        }
        Ok(())
    }

    /// Whether the selection names everything (no keys, no project).
    pub fn is_all(&self) -> bool {
        self.keys.is_empty() && self.project.is_none()
    }

    /// Whether the stored `key` belongs to the selection.
    pub fn matches(&self, key: &str) -> bool {
        if !self.keys.is_empty() {
            return self.keys.iter().any(|k| k == key);
        }
        let Some(route) = route_of(key) else {
            return false;
        };
        if let Some(project) = &self.project {
            if !same_project(route.project.as_raw(), project) {
                return false;
            }
        }
        match &route.request {
            PackageRequest::Go { module, request } => {
                if self.gem.is_some() {
                    return false;
                }
                if let Some(wanted) = &self.module {
                    if module.decoded() != wanted {
                        return false;
                    }
                }
                match (&self.version, request) {
                    (None, _) => true,
                    (Some(_), GoRequest::List) => false,
                    (
                        Some(wanted),
                        GoRequest::Info(version)
                        | GoRequest::Mod(version)
                        | GoRequest::Zip(version),
                    ) => case_decode(version.as_str()).as_deref() == Some(wanted.as_str()),
                }
            }
            PackageRequest::Gem(request) => {
                if self.module.is_some() {
                    return false;
                }
                let Some(wanted) = &self.gem else {
                    return true;
                };
                let stem = match request {
                    GemRequest::Gem(file) => file.decoded().strip_suffix(".gem"),
                    GemRequest::Gemspec(file) => file.decoded().strip_suffix(".gemspec.rz"),
                    _ => None,
                };
                stem.is_some_and(|stem| gem_matches(stem, wanted, self.version.as_deref()))
            }
        }
    }
}

/// A stored key read back as the request it answers.
pub fn route_of(key: &str) -> Option<PackageRoute> {
    let uri: http::Uri = key.parse().ok()?;
    match Endpoint::parse(&Method::GET, &uri) {
        Ok(Endpoint::Package(route)) => Some(route),
        _ => None,
    }
}

/// `42` = `42`; `group%2Fproject` = `group/project`, compared without regard to case as
/// GitLab resolves full paths.
fn same_project(raw: &str, wanted: &str) -> bool {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .to_lowercase()
    };
    decode(raw) == decode(wanted)
}

/// `stem` is `name-version[-platform]`; versions start with a digit, so `foo` never matches
/// `foo-bar-1.0`.
fn gem_matches(stem: &str, name: &str, version: Option<&str>) -> bool {
    let Some(rest) = stem.strip_prefix(name).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    if !rest.starts_with(|c: char| c.is_ascii_digit()) {
        return false;
    }
    match version {
        None => true,
        Some(v) => rest == v || rest.strip_prefix(v).is_some_and(|p| p.starts_with('-')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GO: &str = "/api/v4/projects/42/packages/go/gitlab.example.com/g/!big!lib/@v/";
    const GEMS: &str = "/api/v4/projects/group%2Fgems/packages/rubygems/";

    fn sel(
        project: &str,
        module: Option<&str>,
        gem: Option<&str>,
        version: Option<&str>,
    ) -> Selection {
        Selection {
            project: Some(project.to_owned()),
            module: module.map(str::to_owned),
            gem: gem.map(str::to_owned),
            version: version.map(str::to_owned),
            ..Selection::default()
        }
    }

    #[test]
    fn selection_table() {
        let zip = format!("{GO}v1.0.0-!r!c.1.zip");
        let list = format!("{GO}list");
        let gem = format!("{GEMS}gems/foo-1.2.0.gem");
        let platform_gem = format!("{GEMS}gems/foo-1.2.0-x86_64-linux.gem");
        let other_gem = format!("{GEMS}gems/foo-bar-1.2.0.gem");
        let spec = format!("{GEMS}quick/Marshal.4.8/foo-1.2.0.gemspec.rz");
        let module = Some("gitlab.example.com/g/BigLib");
        let cases: &[(Selection, &str, bool)] = &[
            (sel("42", None, None, None), &zip, true),
            (sel("43", None, None, None), &zip, false),
            (sel("42", module, None, None), &zip, true),
            (sel("42", module, None, None), &list, true),
            (sel("42", module, None, Some("v1.0.0-RC.1")), &zip, true),
            (sel("42", module, None, Some("v1.0.0")), &zip, false),
            (sel("42", module, None, Some("v1.0.0")), &list, false),
            (
                sel("42", Some("gitlab.example.com/g/biglib"), None, None),
                &zip,
                false,
            ),
            (sel("group/gems", None, Some("foo"), None), &gem, true),
            (sel("GROUP%2Fgems", None, Some("foo"), None), &gem, true),
            (
                sel("group/gems", None, Some("foo"), None),
                &other_gem,
                false,
            ),
            (
                sel("group/gems", None, Some("foo-bar"), None),
                &other_gem,
                true,
            ),
            (
                sel("group/gems", None, Some("foo"), Some("1.2.0")),
                &platform_gem,
                true,
            ),
            (
                sel("group/gems", None, Some("foo"), Some("1.2")),
                &gem,
                false,
            ),
            (sel("group/gems", None, Some("foo"), None), &spec, true),
            (sel("group/gems", module, None, None), &gem, false),
            (sel("42", None, Some("foo"), None), &zip, false),
        ];
        for (selection, key, expected) in cases {
            assert_eq!(selection.matches(key), *expected, "{selection:?} {key}");
        }
        let keys = Selection {
            keys: vec![zip.clone()],
            ..Selection::default()
        };
        assert!(keys.matches(&zip));
        assert!(!keys.matches(&list));
    }

    #[test]
    fn ambiguous_selections_are_refused() {
        let mut both = sel("1", Some("m"), Some("g"), None);
        assert!(both.validate(false).is_err());
        both.gem = None;
        assert!(both.validate(false).is_ok());
        assert!(Selection::default().validate(false).is_err());
        assert!(Selection::default().validate(true).is_ok());
        let orphan = Selection {
            version: Some("v1".into()),
            project: Some("1".into()),
            ..Selection::default()
        };
        assert!(orphan.validate(false).is_err());
    }
}
