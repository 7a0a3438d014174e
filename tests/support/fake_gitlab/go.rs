//! The Go module proxy: `list`, `.info`, `.mod` and `.zip` for a project's modules (§2).

use std::io::{Cursor, Write};
use std::sync::LazyLock;

use bytes::Bytes;
use http::header::CONTENT_DISPOSITION;
use http::{HeaderName, StatusCode};
use regex::Regex;
use serde::Serialize;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::auth::{self, Call};
use super::model::{Instance, Project, Tag};
use super::reply::{content_disposition, Api, Reply};
use super::route::{decode, form_decode, GoEndpoint, GoFile};

/// `Packages::SemVer.match?(name, prefixed: true)`: the tags `list` considers.
static PREFIXED_SEMVER: LazyLock<Regex> = LazyLock::new(|| {
    let identifier = "(?:[0-9]*[a-zA-Z-][0-9a-zA-Z-]*|[1-9][0-9]*|0)";
    Regex::new(&format!(
        r"^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(?:-{identifier}(?:\.{identifier})*)?(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?$"
    ))
    .expect("valid regex")
});

/// A module path ending in a major-version suffix, as `Packages::Go::Module#path_valid?`
/// looks for it.
static MAJOR_SUFFIX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)/v([0-9]+)$").expect("valid regex"));

/// A module found in a project: its (decoded, cleaned) path and its directory in the
/// repository ("" for the root).
struct Module {
    name: String,
    dir: String,
}

/// Authentication and project access come first, so every module path of a project gets
/// the same 401/403/404 (§2.5); only then is the module looked up.
pub(super) fn answer(
    instance: &Instance,
    call: &Call<'_>,
    project_id: &str,
    module: &str,
    endpoint: &GoEndpoint,
) -> Reply {
    let caller = match auth::go_caller(instance, call) {
        Ok(caller) => caller,
        Err(reply) => return reply,
    };
    let project = match auth::project_for_read(instance, &caller, project_id, Api::Go) {
        Ok(project) => project,
        Err(reply) => return reply,
    };
    // Grape's router decodes the path parameter, then the route's `CGI.unescape`
    // coercion decodes it once more.
    let Ok(name) = decode(module).and_then(|once| form_decode(&once)) else {
        return Reply::malformed("the module path is not UTF-8");
    };
    let name = case_decode(&name);
    if name.trim().is_empty() {
        return Reply::message(
            Api::Go,
            StatusCode::BAD_REQUEST,
            "400 Bad request - \"Module Name\" not given",
        );
    }
    let Some(module) = find_module(&instance.host, project, &name) else {
        return Reply::not_found(Api::Go);
    };
    let (version, file) = match endpoint {
        GoEndpoint::List => return list(project, &module),
        GoEndpoint::Version { version, file } => (version, file),
    };
    let Some(tag) = find_version(project, &module, version) else {
        return Reply::not_found(Api::Go);
    };
    match file {
        GoFile::Info => info(tag),
        GoFile::Mod => Reply::new(StatusCode::OK, "text/plain", gomod(&module, tag)),
        GoFile::Zip => zip(&module, tag),
    }
}

/// `case_decode`: `!x` stands for `X` (Go's case encoding); other text is kept as is.
fn case_decode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match chars.peek() {
            Some(&next) if c == '!' && next.is_alphabetic() => {
                out.extend(next.to_uppercase());
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// `Packages::Go::ModuleFinder`: after `Pathname#cleanpath`, the name must be the GitLab
/// host, then the project's full path segment by segment (case-sensitive), then the module
/// directory.
fn find_module(host: &str, project: &Project, name: &str) -> Option<Module> {
    let name = cleanpath(name);
    let rest = name.strip_prefix(host)?.strip_prefix('/')?;
    let segments: Vec<&str> = rest.split('/').collect();
    let project_segments: Vec<&str> = project.full_path.split('/').collect();
    if !segments.starts_with(&project_segments) {
        return None;
    }
    let dir = segments[project_segments.len()..].join("/");
    Some(Module { name, dir })
}

/// Ruby's `Pathname#cleanpath`: drops empty and `.` components and resolves `..` lexically.
fn cleanpath(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut names: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if names.last().is_some_and(|last| *last != "..") => {
                names.pop();
            }
            // `..` above the root of an absolute path stays at the root.
            ".." if absolute => {}
            name => names.push(name),
        }
    }
    let joined = names.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// Tags with a `v`-prefixed SemVer name that are valid for the module, in tag order. A
/// directory of the project with no such tag is still a module: its list is empty.
fn list(project: &Project, module: &Module) -> Reply {
    let versions: Vec<&str> = project
        .tags
        .iter()
        .filter(|tag| is_valid(module, tag))
        .map(|tag| tag.name.as_str())
        .collect();
    Reply::new(StatusCode::OK, "text/plain", versions.join("\n"))
}

/// The tag named by the (case-encoded) version, if it is valid for the module. Pseudo-
/// versions are not modelled: the fake has no commits outside tags, so they are unknown.
fn find_version<'a>(project: &'a Project, module: &Module, version: &str) -> Option<&'a Tag> {
    let version = case_decode(version);
    project
        .tags
        .iter()
        .find(|tag| tag.name == version)
        .filter(|tag| is_valid(module, tag))
}

/// `ModuleVersion#valid?`: the major version fits the module path (`v0`/`v1` without a
/// `/vN` suffix, `vN` with exactly `/vN`) and the module's `go.mod` declares exactly this
/// module on its first line.
fn is_valid(module: &Module, tag: &Tag) -> bool {
    let Some(semver) = PREFIXED_SEMVER.captures(&tag.name) else {
        return false;
    };
    let major = &semver[1];
    let suffix = MAJOR_SUFFIX.captures(&module.name).map(|m| m[1].to_owned());
    let path_valid = match major {
        "0" | "1" => suffix.is_none(),
        _ => suffix.is_some_and(|suffix| suffix.trim_start_matches('0') == major),
    };
    let declaration = format!("module {}", module.name);
    let gomod = gomod(module, tag);
    let first_line = gomod.split(|&b| b == b'\n').next();
    path_valid && first_line == Some(declaration.as_bytes())
}

fn gomod(module: &Module, tag: &Tag) -> Bytes {
    let path = if module.dir.is_empty() {
        "go.mod".to_owned()
    } else {
        format!("{}/go.mod", module.dir)
    };
    tag.files.get(&path).cloned().unwrap_or_default()
}

fn info(tag: &Tag) -> Reply {
    #[derive(Serialize)]
    struct Info<'a> {
        #[serde(rename = "Version")]
        version: &'a str,
        #[serde(rename = "Time")]
        time: &'a str,
    }
    let body = serde_json::to_string(&Info {
        version: &tag.name,
        time: &tag.time,
    })
    .expect("two strings serialize");
    Reply::new(StatusCode::OK, "application/json", body)
}

/// `ModuleVersion#archive`: every file under the module directory except those of nested
/// modules (directories with their own go.mod), named `<module>@<version>/<relative path>`.
/// GitLab builds it anew on every request.
fn zip(module: &Module, tag: &Tag) -> Reply {
    let prefix = if module.dir.is_empty() {
        String::new()
    } else {
        format!("{}/", module.dir)
    };
    // GitLab compares with `path + '/go.mod'` even for the root module, where that is
    // "/go.mod" and so never excludes the root's own go.mod.
    let own_gomod = format!("{}/go.mod", module.dir);
    let files: Vec<(&String, &Bytes)> = tag
        .files
        .iter()
        .filter(|(path, _)| path.starts_with(&prefix))
        .collect();
    let nested: Vec<&str> = files
        .iter()
        .map(|(path, _)| path.as_str())
        .filter(|path| path.ends_with("/go.mod") && *path != own_gomod)
        .filter_map(|path| path.strip_suffix("go.mod"))
        .collect();
    let entries = files
        .into_iter()
        .filter(|(path, _)| !nested.iter().any(|dir| path.starts_with(dir)))
        .map(|(path, contents)| {
            let name = format!("{}@{}/{}", module.name, tag.name, &path[prefix.len()..]);
            (name, contents)
        });
    match write_zip(entries) {
        Ok(archive) => Reply::new(StatusCode::OK, "application/zip", archive)
            .with_header(
                CONTENT_DISPOSITION,
                &content_disposition(&format!("{}.zip", tag.name)),
            )
            .with_header(
                HeaderName::from_static("content-transfer-encoding"),
                "binary",
            ),
        Err(e) => Reply::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("could not build the zip: {e}"),
        ),
    }
}

fn write_zip<'a>(
    entries: impl Iterator<Item = (String, &'a Bytes)>,
) -> zip::result::ZipResult<Vec<u8>> {
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, contents) in entries {
        writer.start_file(name, options)?;
        writer.write_all(contents)?;
    }
    Ok(writer.finish()?.into_inner())
}
