//! The only place that reads a request's URI: parses it once into a typed [`Endpoint`].
//!
//! Everything GitLab routes for its Go proxy and RubyGems APIs becomes a [`PackageRoute`];
//! the proxy's own operations endpoints live under `/-/`, which GitLab's API never uses for
//! these names. Anything else is answered like GitLab's catch-all and never forwarded.

use std::fmt;

use http::Method;

use crate::protocol::goproxy::{GoRequest, ModulePath};
use crate::protocol::rubygems::{
    CompactFile, GemFileName, GemList, GemName, GemRequest, SpecIndex,
};
use crate::protocol::{decode_component, NameError};

const PROJECTS: &str = "/api/v4/projects/";
/// The proxy's admin API (see `admin`), any method; the admin module reads the rest.
pub const ADMIN_PREFIX: &str = "/-/pkg-cache/admin/";
/// Longest request path accepted.
pub const MAX_PATH: usize = 4096;
/// Longest project reference (id or URL-encoded full path).
pub const MAX_PROJECT: usize = 1024;

/// Which of GitLab's package APIs a route belongs to; authorization is per API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    Go,
    RubyGems,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Go => "go",
            Api::RubyGems => "rubygems",
        }
    }
}

/// A project as named in the URL: a numeric id or a URL-encoded full path (`group%2Fproject`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProjectRef(String);

impl ProjectRef {
    pub fn parse(raw: &str) -> Result<ProjectRef, NameError> {
        if raw.is_empty() {
            return Err(NameError::Empty("project"));
        }
        if raw.len() > MAX_PROJECT {
            return Err(NameError::TooLong("project", MAX_PROJECT));
        }
        let decoded = decode_component(raw, "project")?;
        // Whole or in part, a dot segment would let a path-normalising hop in front of
        // GitLab read another path than the one routed here.
        if decoded
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(NameError::Invalid("project", "empty or dot path segment"));
        }
        if decoded.chars().any(char::is_whitespace) {
            return Err(NameError::Invalid("project", "white space"));
        }
        Ok(ProjectRef(raw.to_owned()))
    }

    /// As in the URL; this is what goes upstream.
    pub fn as_raw(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ProjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProjectRef({})", self.0)
    }
}

/// What a package request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PackageRequest {
    Go {
        module: ModulePath,
        request: GoRequest,
    },
    Gem(GemRequest),
}

/// How the proxy treats a route's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheClass {
    /// Mutable, small: kept in memory with a TTL (lists, dependency answers, spec indexes).
    Metadata,
    /// Immutable once published: kept on disk (`.info`, `.mod`, `.zip`, `.gem`, `.gemspec.rz`).
    Artifact,
    /// Passed through uncached.
    PassThrough,
    /// Written by the proxy from the project's gems (compact index, the source root).
    Synthesized,
    /// A request with a body, streamed to GitLab.
    Upload,
}

/// A request for one of GitLab's package APIs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRoute {
    pub project: ProjectRef,
    pub request: PackageRequest,
    /// The path exactly as received; forwarded byte for byte.
    path: String,
    /// The query exactly as received (may hold `private_token=`: never logged or stored).
    query: Option<String>,
}

/// Every endpoint the proxy answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Package(PackageRoute),
    Health,
    Ready,
    Metrics,
    Admin,
}

/// Why a request was answered locally instead of being routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// GitLab would route this nowhere: its catch-all 404.
    #[error("no such route")]
    NotFound,
    /// A routed request with a malformed name.
    #[error("{0}")]
    BadRequest(NameError),
}

impl From<NameError> for RouteError {
    fn from(e: NameError) -> Self {
        RouteError::BadRequest(e)
    }
}

impl Endpoint {
    /// Parses method and URI; never panics, whatever the input.
    pub fn parse(method: &Method, uri: &http::Uri) -> Result<Endpoint, RouteError> {
        let path = uri.path();
        if path.len() > MAX_PATH {
            return Err(RouteError::BadRequest(NameError::TooLong("path", MAX_PATH)));
        }
        let read = method == Method::GET || method == Method::HEAD;
        match path {
            "/-/healthz" if read => return Ok(Endpoint::Health),
            "/-/readyz" if read => return Ok(Endpoint::Ready),
            "/-/pkg-cache/metrics" if read => return Ok(Endpoint::Metrics),
            _ if path.starts_with(ADMIN_PREFIX) => return Ok(Endpoint::Admin),
            _ => {}
        }
        let rest = path.strip_prefix(PROJECTS).ok_or(RouteError::NotFound)?;
        let (project, rest) = rest.split_once('/').ok_or(RouteError::NotFound)?;
        let rest = rest.strip_prefix("packages/").ok_or(RouteError::NotFound)?;
        let mut path = path.to_owned();
        let request = if let Some(go) = rest.strip_prefix("go/") {
            if !read {
                return Err(RouteError::NotFound);
            }
            let (request, file) = parse_go(go)?;
            // The go command percent-encodes the `!` of case-encoded versions (`%21`), which
            // GitLab's version pattern does not match: forward (and key) the `!` form.
            if let Some(file) = file {
                let keep = path.len() - file.raw_len;
                path.truncate(keep);
                path.push_str(&file.canonical);
            }
            request
        } else if let Some(gems) = rest.strip_prefix("rubygems/") {
            PackageRequest::Gem(parse_gem(method, gems, uri.query())?)
        } else {
            return Err(RouteError::NotFound);
        };
        // The project is validated after the shape matched, so junk paths stay plain 404s.
        let project = ProjectRef::parse(project)?;
        Ok(Endpoint::Package(PackageRoute {
            project,
            request,
            path,
            query: uri.query().map(str::to_owned),
        }))
    }
}

/// The `@v/` file segment of a Go route when it arrived percent-encoded.
struct EncodedGoFile {
    /// Length of the segment as received.
    raw_len: usize,
    /// The decoded segment, which GitLab's route pattern matches.
    canonical: String,
}

fn parse_go(rest: &str) -> Result<(PackageRequest, Option<EncodedGoFile>), RouteError> {
    let (module, file) = rest.rsplit_once("/@v/").ok_or(RouteError::NotFound)?;
    if file.contains('/') {
        return Err(RouteError::NotFound);
    }
    let (request, encoded) = if file.contains('%') {
        // Whatever decodes to a valid version file is that file; anything else is not routed.
        let decoded = decode_component(file, "version").map_err(|_| RouteError::NotFound)?;
        let request = GoRequest::parse(&decoded).ok_or(RouteError::NotFound)?;
        let encoded = EncodedGoFile {
            raw_len: file.len(),
            canonical: decoded,
        };
        (request, Some(encoded))
    } else {
        (GoRequest::parse(file).ok_or(RouteError::NotFound)?, None)
    };
    let module = ModulePath::parse(module)?;
    Ok((PackageRequest::Go { module, request }, encoded))
}

fn parse_gem(method: &Method, rest: &str, query: Option<&str>) -> Result<GemRequest, RouteError> {
    let read = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    let request = match rest.split_once('/') {
        None if read && rest.is_empty() => GemRequest::Root,
        None if read && rest == "versions" => GemRequest::CompactIndex(CompactFile::Versions),
        None if read && rest == "names" => GemRequest::CompactIndex(CompactFile::Names),
        Some(("info", name)) if read => {
            let name = decode_component(name, "gem name")?;
            GemRequest::CompactIndex(CompactFile::Info(
                GemName::parse(&name).map_err(|_| RouteError::NotFound)?,
            ))
        }
        None if read && !rest.is_empty() => match SpecIndex::parse(rest) {
            Some(index) => GemRequest::SpecIndex(index),
            // GitLab's `:file_name` route takes any single segment; it decides 400 or 404.
            None => {
                GemName::parse(rest).map_err(|_| RouteError::NotFound)?;
                GemRequest::RootFile
            }
        },
        Some(("quick", rest)) if read => {
            let file = rest
                .strip_prefix("Marshal.4.8/")
                .ok_or(RouteError::NotFound)?;
            if file.contains('/') {
                return Err(RouteError::NotFound);
            }
            // Names that do not match GitLab's gemspec pattern do not route there at all.
            GemRequest::Gemspec(
                GemFileName::parse(file, ".gemspec.rz").map_err(|_| RouteError::NotFound)?,
            )
        }
        Some(("gems", file)) if read => {
            if file.contains('/') || file.is_empty() {
                return Err(RouteError::NotFound);
            }
            GemRequest::Gem(GemFileName::parse(file, ".gem")?)
        }
        Some(("api", "v1/dependencies")) if read => {
            GemRequest::Dependencies(GemList::from_query(query)?)
        }
        Some(("api", "v1/gems")) if post => GemRequest::Upload,
        Some(("api", "v1/gems/authorize")) if post => GemRequest::UploadAuthorize,
        _ => return Err(RouteError::NotFound),
    };
    Ok(request)
}

impl PackageRoute {
    pub fn api(&self) -> Api {
        match self.request {
            PackageRequest::Go { .. } => Api::Go,
            PackageRequest::Gem(_) => Api::RubyGems,
        }
    }

    /// A stable label for logs and metrics.
    pub fn name(&self) -> &'static str {
        match &self.request {
            PackageRequest::Go { request, .. } => request.name(),
            PackageRequest::Gem(request) => request.name(),
        }
    }

    pub fn cache_class(&self) -> CacheClass {
        match &self.request {
            PackageRequest::Go { request, .. } => match request {
                GoRequest::List => CacheClass::Metadata,
                GoRequest::Info(_) | GoRequest::Mod(_) | GoRequest::Zip(_) => CacheClass::Artifact,
            },
            PackageRequest::Gem(request) => match request {
                GemRequest::SpecIndex(_) | GemRequest::Dependencies(_) => CacheClass::Metadata,
                GemRequest::Gemspec(_) | GemRequest::Gem(_) => CacheClass::Artifact,
                GemRequest::RootFile => CacheClass::PassThrough,
                GemRequest::Root | GemRequest::CompactIndex(_) => CacheClass::Synthesized,
                GemRequest::Upload | GemRequest::UploadAuthorize => CacheClass::Upload,
            },
        }
    }

    /// The path as received, without the query; safe to log.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Path and query exactly as received: what is forwarded to GitLab.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }

    /// The same dependency request for `gems` instead: the path and every other query
    /// parameter as received (credentials passed in the query go along), `gems=` replaced.
    pub fn with_gems(&self, gems: &GemList) -> PackageRoute {
        let names: Vec<&str> = gems.names().iter().map(GemName::as_str).collect();
        // Validated names need no escaping; the comma is what GitLab splits on.
        let mut query = format!("gems={}", names.join(","));
        if let Some(received) = &self.query {
            let mut others = form_urlencoded::Serializer::new(String::new());
            let mut any = false;
            for (key, value) in form_urlencoded::parse(received.as_bytes()) {
                if key != "gems" {
                    others.append_pair(&key, &value);
                    any = true;
                }
            }
            if any {
                query = format!("{}&{query}", others.finish());
            }
        }
        PackageRoute {
            project: self.project.clone(),
            request: PackageRequest::Gem(GemRequest::Dependencies(Some(gems.clone()))),
            path: self.path.clone(),
            query: Some(query),
        }
    }

    /// The cache key of this route's content. It names the project and the resource and holds
    /// nothing else from the query, so no credential passed as a query parameter ends up in it.
    pub fn content_key(&self) -> String {
        match &self.request {
            PackageRequest::Gem(GemRequest::Dependencies(Some(list))) => {
                format!("{}?gems={}", self.path, list.key())
            }
            _ => self.path.clone(),
        }
    }

    /// The cheap request that asks GitLab whether the caller may read this project's packages.
    ///
    /// GitLab authorizes before it looks at the module or file (reference §2.5, §3.3), so any
    /// route of the same project and API gives the same answer for an unauthorized caller.
    /// A probe never asks for an artifact, so checking a caller never costs an artifact
    /// transfer: for Go, the module's `@v/list` stands in for `.info`, `.mod` and `.zip`;
    /// for RubyGems, the dependency endpoint without `gems` answers three bytes.
    pub fn probe_path_and_query(&self) -> String {
        match &self.request {
            PackageRequest::Go { module, request } => match request {
                GoRequest::List => self.path_and_query(),
                GoRequest::Info(_) | GoRequest::Mod(_) | GoRequest::Zip(_) => {
                    let path = self.go_list_path(module);
                    match &self.query {
                        Some(q) => format!("{path}?{q}"),
                        None => path,
                    }
                }
            },
            PackageRequest::Gem(_) => format!(
                "{PROJECTS}{}/packages/rubygems/api/v1/dependencies",
                self.project.as_raw()
            ),
        }
    }

    fn go_list_path(&self, module: &ModulePath) -> String {
        format!(
            "{PROJECTS}{}/packages/go/{}/@v/list",
            self.project.as_raw(),
            module.as_raw(),
        )
    }

    /// The content key of `gems/<file_name>` in this route's project (`None` for a name
    /// GitLab would not route).
    pub fn gem_file_key(&self, file_name: &str) -> Option<String> {
        GemFileName::parse(file_name, ".gem").ok()?;
        Some(format!(
            "{PROJECTS}{}/packages/rubygems/gems/{file_name}",
            self.project.as_raw()
        ))
    }

    /// For a Go route, the content key of its module's `@v/list`.
    pub fn go_list_key(&self) -> Option<String> {
        match &self.request {
            PackageRequest::Go { module, .. } => Some(self.go_list_path(module)),
            PackageRequest::Gem(_) => None,
        }
    }

    /// Whether this route's own request is the probe (so a 200 answer refreshes the cache).
    pub fn is_own_probe(&self) -> bool {
        match &self.request {
            // Said without building either string: this runs on every metadata hit.
            PackageRequest::Go { request, .. } => matches!(request, GoRequest::List),
            PackageRequest::Gem(_) => self.probe_path_and_query() == self.path_and_query(),
        }
    }

    /// Whether the route's query string carries anything (used to keep it out of logs).
    pub fn has_query(&self) -> bool {
        self.query.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(method: &str, uri: &str) -> Result<Endpoint, RouteError> {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let uri: http::Uri = uri.parse().unwrap();
        Endpoint::parse(&method, &uri)
    }

    fn route(method: &str, uri: &str) -> PackageRoute {
        match parse(method, uri) {
            Ok(Endpoint::Package(r)) => r,
            other => panic!("{uri}: {other:?}"),
        }
    }

    const GO: &str = "/api/v4/projects/42/packages/go/gitlab.example.com/group/proj";
    const GEMS: &str = "/api/v4/projects/group%2Fsub%2Fproj/packages/rubygems";

    #[test]
    fn routing_table() {
        let cases: &[(&str, &str, &str, Option<CacheClass>)] = &[
            ("GET", "/@v/list", "go_list", Some(CacheClass::Metadata)),
            ("HEAD", "/@v/list", "go_list", Some(CacheClass::Metadata)),
            (
                "GET",
                "/@v/v1.2.3.info",
                "go_info",
                Some(CacheClass::Artifact),
            ),
            (
                "GET",
                "/@v/v1.2.3.mod",
                "go_mod",
                Some(CacheClass::Artifact),
            ),
            (
                "GET",
                "/@v/v1.2.3.zip",
                "go_zip",
                Some(CacheClass::Artifact),
            ),
            (
                "GET",
                "/@v/v1.0.1-!prerelease.zip",
                "go_zip",
                Some(CacheClass::Artifact),
            ),
            ("GET", "/@latest", "", None),
            ("GET", "/@v/master.info", "", None),
            ("GET", "/@v/1.2.3.info", "", None),
            ("GET", "/@v/v1.0.1-Prerelease.info", "", None),
            ("GET", "/@v/v1.2.3.tar", "", None),
            ("POST", "/@v/list", "", None),
            ("DELETE", "/@v/v1.2.3.zip", "", None),
        ];
        for (method, suffix, name, class) in cases {
            let uri = format!("{GO}{suffix}");
            match (parse(method, &uri), class) {
                (Ok(Endpoint::Package(r)), Some(class)) => {
                    assert_eq!(r.name(), *name, "{uri}");
                    assert_eq!(r.cache_class(), *class, "{uri}");
                    assert_eq!(r.api(), Api::Go);
                }
                (Err(RouteError::NotFound), None) => {}
                (other, _) => panic!("{method} {uri}: {other:?}"),
            }
        }
        let gem_cases: &[(&str, &str, &str, Option<CacheClass>)] = &[
            (
                "GET",
                "/specs.4.8.gz",
                "gem_spec_index",
                Some(CacheClass::Metadata),
            ),
            (
                "GET",
                "/latest_specs.4.8.gz",
                "gem_spec_index",
                Some(CacheClass::Metadata),
            ),
            (
                "GET",
                "/prerelease_specs.4.8.gz",
                "gem_spec_index",
                Some(CacheClass::Metadata),
            ),
            (
                "GET",
                "/versions",
                "gem_versions",
                Some(CacheClass::Synthesized),
            ),
            (
                "HEAD",
                "/versions",
                "gem_versions",
                Some(CacheClass::Synthesized),
            ),
            ("GET", "/names", "gem_names", Some(CacheClass::Synthesized)),
            ("HEAD", "/", "gem_root", Some(CacheClass::Synthesized)),
            (
                "GET",
                "/info/rack",
                "gem_info",
                Some(CacheClass::Synthesized),
            ),
            (
                "GET",
                "/other",
                "gem_root_file",
                Some(CacheClass::PassThrough),
            ),
            (
                "GET",
                "/quick/Marshal.4.8/rack-3.0.0.gemspec.rz",
                "gem_gemspec",
                Some(CacheClass::Artifact),
            ),
            (
                "GET",
                "/gems/rack-3.0.0.gem",
                "gem_file",
                Some(CacheClass::Artifact),
            ),
            (
                "HEAD",
                "/gems/rack-3.0.0.gem",
                "gem_file",
                Some(CacheClass::Artifact),
            ),
            (
                "GET",
                "/api/v1/dependencies",
                "gem_dependencies",
                Some(CacheClass::Metadata),
            ),
            (
                "GET",
                "/api/v1/dependencies?gems=rack,rails",
                "gem_dependencies",
                Some(CacheClass::Metadata),
            ),
            (
                "POST",
                "/api/v1/gems",
                "gem_upload",
                Some(CacheClass::Upload),
            ),
            (
                "POST",
                "/api/v1/gems/authorize",
                "gem_upload_authorize",
                Some(CacheClass::Upload),
            ),
            ("POST", "/", "", None),
            ("GET", "/info/rack/x", "", None),
            ("GET", "/info/", "", None),
            ("GET", "/api/v1/dependencies.json", "", None),
            ("GET", "/api/v1/gems/rack.json", "", None),
            ("GET", "/quick/Marshal.4.8/rack.txt", "", None),
            ("GET", "/quick/rack-3.0.0.gemspec.rz", "", None),
            ("GET", "/api/v1/gems", "", None),
            ("POST", "/gems/rack-3.0.0.gem", "", None),
            ("PUT", "/api/v1/gems", "", None),
            ("GET", "/gems/a/b.gem", "", None),
        ];
        for (method, suffix, name, class) in gem_cases {
            let uri = format!("{GEMS}{suffix}");
            match (parse(method, &uri), class) {
                (Ok(Endpoint::Package(r)), Some(class)) => {
                    assert_eq!(r.name(), *name, "{uri}");
                    assert_eq!(r.cache_class(), *class, "{uri}");
                    assert_eq!(r.api(), Api::RubyGems);
                    assert_eq!(r.project.as_raw(), "group%2Fsub%2Fproj");
                }
                (Err(RouteError::NotFound), None) => {}
                (other, _) => panic!("{method} {uri}: {other:?}"),
            }
        }
    }

    #[test]
    fn unrelated_paths_are_not_routed() {
        for uri in [
            "/",
            "/api/v4/projects",
            "/api/v4/projects/42",
            "/api/v4/projects/42/repository/files/x",
            "/api/v4/projects/42/packages/npm/x",
            "/api/v4/user",
            "/api/v4/projects/42/packages/go/x/@v/sumdb/sum.golang.org/supported",
            "/api/v4/projects/42/packages/go/sumdb/sum.golang.org/supported",
            "/users/sign_in",
            "/-/metrics",
        ] {
            assert_eq!(parse("GET", uri), Err(RouteError::NotFound), "{uri}");
        }
    }

    #[test]
    fn ops_endpoints() {
        assert_eq!(parse("GET", "/-/healthz"), Ok(Endpoint::Health));
        assert_eq!(parse("GET", "/-/readyz"), Ok(Endpoint::Ready));
        assert_eq!(parse("GET", "/-/pkg-cache/metrics"), Ok(Endpoint::Metrics));
        assert_eq!(parse("POST", "/-/healthz"), Err(RouteError::NotFound));
    }

    #[test]
    fn malformed_names_are_bad_requests() {
        for uri in [
            format!("{GO}/../x/@v/list"),
            format!("{GO}%2F..%2Fx/@v/list"),
            "/api/v4/projects/42/packages/go/a//b/@v/list".to_owned(),
            "/api/v4/projects/42/packages/go/a/!B/@v/list".to_owned(),
            "/api/v4/projects/42/packages/go/a%ff/@v/list".to_owned(),
            "/api/v4/projects/42/packages/go/a%0a/@v/list".to_owned(),
            "/api/v4/projects/a%2F..%2Fb/packages/go/x/@v/list".to_owned(),
            "/api/v4/projects/%zz/packages/go/x/@v/list".to_owned(),
            "/api/v4/projects/../packages/rubygems/specs.4.8.gz".to_owned(),
            "/api/v4/projects/%2e%2E/packages/rubygems/specs.4.8.gz".to_owned(),
            "/api/v4/projects/./packages/go/x/@v/list".to_owned(),
            format!("{GEMS}/gems/..%2Fsecret.gem"),
            format!("{GEMS}/gems/a%00.gem"),
            format!("{GEMS}/api/v1/dependencies?gems=../x"),
        ] {
            assert!(
                matches!(parse("GET", &uri), Err(RouteError::BadRequest(_))),
                "{uri}: {:?}",
                parse("GET", &uri)
            );
        }
        let long = format!(
            "/api/v4/projects/1/packages/go/{}/@v/list",
            "a".repeat(MAX_PATH)
        );
        assert!(matches!(
            parse("GET", &long),
            Err(RouteError::BadRequest(_))
        ));
    }

    #[test]
    fn paths_are_kept_byte_for_byte() {
        let uri = "/api/v4/projects/group%2fproj/packages/go/gitlab.example.com/group/!my!lib/@v/v1.0.0+build.1.info?private_token=x";
        let r = route("GET", uri);
        assert_eq!(r.path_and_query(), uri);
        assert_eq!(
            r.content_key(),
            "/api/v4/projects/group%2fproj/packages/go/gitlab.example.com/group/!my!lib/@v/v1.0.0+build.1.info"
        );
        assert_eq!(
            r.probe_path_and_query(),
            "/api/v4/projects/group%2fproj/packages/go/gitlab.example.com/group/!my!lib/@v/list?private_token=x"
        );
    }

    #[test]
    fn percent_encoded_go_versions_take_the_form_gitlab_routes() {
        let encoded = route("GET", &format!("{GO}/@v/v1.0.1-%21r%21c.1.zip?x=1"));
        let plain = route("GET", &format!("{GO}/@v/v1.0.1-!r!c.1.zip?x=1"));
        assert_eq!(
            encoded.path_and_query(),
            format!("{GO}/@v/v1.0.1-!r!c.1.zip?x=1")
        );
        assert_eq!(encoded.content_key(), plain.content_key());
        assert_eq!(encoded.request, plain.request);
        // The probe is the module's list, whatever the version's spelling.
        assert_eq!(encoded.probe_path_and_query(), format!("{GO}/@v/list?x=1"));
        // The module part is GitLab's to decode; it stays as sent.
        let module = route(
            "GET",
            "/api/v4/projects/1/packages/go/h/%21mixed/@v/v0.1.0-%21x.info",
        );
        assert_eq!(
            module.path(),
            "/api/v4/projects/1/packages/go/h/%21mixed/@v/v0.1.0-!x.info"
        );
        for bad in [
            "/@v/v1.0.0-%21X.info",
            "/@v/v1.0.0%2Finfo",
            "/@v/%zz.info",
            "/@v/v1.0.0%2e.info",
        ] {
            assert_eq!(
                parse("GET", &format!("{GO}{bad}")),
                Err(RouteError::NotFound),
                "{bad}"
            );
        }
    }

    #[test]
    fn probes() {
        // No artifact is ever a probe: every Go artifact is checked with its module's list.
        for file in ["v1.2.3.zip", "v1.2.3.mod", "v1.2.3.info"] {
            let artifact = route("GET", &format!("{GO}/@v/{file}"));
            assert_eq!(artifact.probe_path_and_query(), format!("{GO}/@v/list"));
            assert!(!artifact.is_own_probe());
        }
        let list = route("GET", &format!("{GO}/@v/list"));
        assert!(list.is_own_probe());
        assert_eq!(
            route("GET", &format!("{GO}/@v/v1.2.3.zip")).go_list_key(),
            Some(list.content_key())
        );
        let gem = route("GET", &format!("{GEMS}/gems/rack-3.0.0.gem"));
        assert_eq!(
            gem.probe_path_and_query(),
            format!("{GEMS}/api/v1/dependencies")
        );
        let deps = route("GET", &format!("{GEMS}/api/v1/dependencies"));
        assert!(deps.is_own_probe());
        let push = route("POST", &format!("{GEMS}/api/v1/gems"));
        assert_eq!(
            push.gem_file_key("rack-3.0.0.gem"),
            Some(route("GET", &format!("{GEMS}/gems/rack-3.0.0.gem")).content_key())
        );
        assert_eq!(push.gem_file_key("../x.gem"), None);
    }

    #[test]
    fn dependency_keys_hold_only_gem_names() {
        let r = route(
            "GET",
            &format!("{GEMS}/api/v1/dependencies?gems=rack%2Crails&private_token=secret"),
        );
        assert_eq!(
            r.content_key(),
            format!("{GEMS}/api/v1/dependencies?gems=rack,rails")
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(path in "/api/v4/projects/[^?#]{0,120}", method in "GET|HEAD|POST|PUT") {
            if let Ok(uri) = path.parse::<http::Uri>() {
                let method = Method::from_bytes(method.as_bytes()).unwrap();
                if let Ok(Endpoint::Package(r)) = Endpoint::parse(&method, &uri) {
                    // Only a percent-encoded Go version file is rewritten (to its `!` form).
                    if !uri.path().contains('%') {
                        prop_assert_eq!(r.path_and_query(), uri.to_string());
                    }
                }
            }
        }

        #[test]
        fn go_routes_round_trip(
            module in "[a-z0-9]{1,10}(/[a-zA-Z0-9_~-][a-zA-Z0-9._~-]{0,9}){0,4}",
            version in "v(0|[1-9][0-9]{0,3})\\.(0|[1-9][0-9]{0,3})\\.(0|[1-9][0-9]{0,3})(-[a-z0-9]{1,6})?",
            ext in "info|mod|zip",
        ) {
            let encoded = crate::protocol::goproxy::case_encode(&module);
            let uri = format!("/api/v4/projects/7/packages/go/{encoded}/@v/{version}.{ext}");
            let r = route("GET", &uri);
            prop_assert_eq!(r.path_and_query(), uri);
            match r.request {
                PackageRequest::Go { module: m, request } => {
                    prop_assert_eq!(m.decoded(), module.as_str());
                    prop_assert_eq!(request.name(), format!("go_{ext}"));
                }
                PackageRequest::Gem(_) => prop_assert!(false, "go route parsed as gem"),
            }
        }
    }
}
