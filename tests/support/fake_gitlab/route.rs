//! Matches a request to one of GitLab's Go proxy or RubyGems routes, as Grape would.

use std::sync::LazyLock;

use http::Method;
use percent_encoding::percent_decode_str;
use regex::Regex;

use super::RubyGemsEra;

pub(super) enum Route {
    Go {
        /// The `:id` parameter, percent-decoded.
        project: String,
        /// The `*module_name` glob exactly as it appeared in the path.
        module: String,
        endpoint: GoEndpoint,
    },
    RubyGems {
        project: String,
        endpoint: RubyGemsEndpoint,
    },
    /// `GET /projects/:id/packages`: the Packages API (`lib/api/project_packages.rb`).
    Packages { project: String },
}

pub(super) enum GoEndpoint {
    List,
    Version {
        /// As it appeared in the path (still case-encoded).
        version: String,
        file: GoFile,
    },
}

pub(super) enum GoFile {
    Info,
    Mod,
    Zip,
}

pub(super) enum RubyGemsEndpoint {
    /// `GET :file_name`, one path segment, percent-decoded.
    SpecIndex(String),
    /// `GET quick/Marshal.4.8/:file_name`.
    Gemspec(String),
    /// `GET gems/:file_name`.
    Gem(String),
    /// `GET api/v1/dependencies`.
    Dependencies,
    /// `POST api/v1/gems`.
    Upload,
}

/// `MODULE_VERSION_REGEX` (go_proxy.rb): semver with case-encoded (`!x`) letters only.
static MODULE_VERSION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[-.!a-z0-9]+)?(\+[-.!a-z0-9]+)?$",
    )
    .expect("valid regex")
});

/// What GitLab 19.1 requires of a gemspec file name (`<name>-<version>.gemspec.rz`).
/// Names that do not match do not route, so they reach the catch-all.
static GEMSPEC_FILE_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^.+-.+\.gemspec\.rz$").expect("valid regex"));

/// Path parameters arrive percent-decoded, as Grape's router hands them over; a parameter
/// that does not decode to UTF-8 is an error.
pub(super) struct BadParam;

/// `Ok(None)` when no route matches: GitLab's catch-all then answers before anything else
/// (authentication included) runs.
pub(super) fn parse(
    method: &Method,
    path: &str,
    era: RubyGemsEra,
) -> Result<Option<Route>, BadParam> {
    let Some(rest) = path.strip_prefix("/api/v4/projects/") else {
        return Ok(None);
    };
    let Some((id, rest)) = rest.split_once('/') else {
        return Ok(None);
    };
    if id.is_empty() {
        return Ok(None);
    }
    let is_read = method == Method::GET || method == Method::HEAD;
    if rest == "packages" && is_read {
        return Ok(Some(Route::Packages {
            project: decode(id)?,
        }));
    }
    if let Some(go) = rest.strip_prefix("packages/go/") {
        if !is_read {
            return Ok(None);
        }
        let Some((module, endpoint)) = parse_go(go) else {
            return Ok(None);
        };
        return Ok(Some(Route::Go {
            project: decode(id)?,
            module: module.to_owned(),
            endpoint,
        }));
    }
    let Some(rubygems) = rest.strip_prefix("packages/rubygems/") else {
        return Ok(None);
    };
    let endpoint = if method == Method::POST {
        // Every POST under `packages/rubygems/` goes through Workhorse's body uploader,
        // which first asks Rails to pre-authorize at `<path>/authorize`. Only
        // `api/v1/gems` has such a route; for any other path, including
        // `api/v1/gems/authorize` itself, the pre-authorization hits the catch-all and
        // Workhorse hands that 404 back.
        if rubygems != "api/v1/gems" {
            return Ok(None);
        }
        RubyGemsEndpoint::Upload
    } else if !is_read {
        return Ok(None);
    } else if rubygems == "api/v1/dependencies" {
        RubyGemsEndpoint::Dependencies
    } else if let Some(file) = single_segment(rubygems.strip_prefix("gems/")) {
        RubyGemsEndpoint::Gem(decode(file)?)
    } else if let Some(file) = single_segment(rubygems.strip_prefix("quick/Marshal.4.8/")) {
        let file = decode(file)?;
        // Before 19.1 the (stub) route took any single segment.
        if era == RubyGemsEra::V19_1 && !GEMSPEC_FILE_NAME.is_match(&file) {
            return Ok(None);
        }
        RubyGemsEndpoint::Gemspec(file)
    } else if let Some(file) = single_segment(Some(rubygems)) {
        RubyGemsEndpoint::SpecIndex(decode(file)?)
    } else {
        return Ok(None);
    };
    Ok(Some(Route::RubyGems {
        project: decode(id)?,
        endpoint,
    }))
}

/// `*module_name/@v/list` or `*module_name/@v/<version>.{info,mod,zip}`; the glob is greedy,
/// so the last `/@v/` splits module from file.
fn parse_go(path: &str) -> Option<(&str, GoEndpoint)> {
    let split = path.rfind("/@v/")?;
    let (module, file) = (&path[..split], &path[split + "/@v/".len()..]);
    if file == "list" {
        return Some((module, GoEndpoint::List));
    }
    let (version, extension) = file.rsplit_once('.')?;
    if !MODULE_VERSION.is_match(version) {
        return None;
    }
    let file = match extension {
        "info" => GoFile::Info,
        "mod" => GoFile::Mod,
        "zip" => GoFile::Zip,
        _ => return None,
    };
    let version = version.to_owned();
    Some((module, GoEndpoint::Version { version, file }))
}

fn single_segment(segment: Option<&str>) -> Option<&str> {
    segment.filter(|s| !s.is_empty() && !s.contains('/'))
}

pub(super) fn decode(raw: &str) -> Result<String, BadParam> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| BadParam)
}

/// A parsed query string, as Rack parses one: `&`-separated `key=value` pairs, `+` for
/// space, percent-decoded; a repeated key keeps its last value.
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Result<Query, BadParam> {
        let mut pairs = Vec::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            pairs.push((form_decode(key)?, form_decode(value)?));
        }
        Ok(Query(pairs))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `application/x-www-form-urlencoded` decoding (Ruby's `CGI.unescape` does the same).
pub(super) fn form_decode(raw: &str) -> Result<String, BadParam> {
    decode(&raw.replace('+', " "))
}
