//! The compact index bodies (`versions`, `info/<name>`, `names`) and their validators.
//!
//! Format rules (reference compact-index.md §1): LF only, no blank lines, `---` separator;
//! `versions` lines are `NAME SP VER[,VER…] SP MD5` with the MD5 of the exact `info` body;
//! `info` lines are `VER[-PLAT] SP DEP,… |checksum:SHA256[,ruby:…][,rubygems:…]` with the
//! gem's runtime dependencies only, constraint strings verbatim, sorted as strings and
//! joined with `&`, dependencies sorted by name. Validators: `ETag` = quoted MD5 of the body
//! (what Bundler 2.3/2.4 check), `Repr-Digest` = SHA-256 (what Bundler ≥ 2.5 checks).

use std::fmt::Write as _;

use base64::Engine;
use md5::{Digest as _, Md5};
use sha2::Sha256;

use super::gem_file::{GemSpec, Requirement};
use super::version;

/// One version of a gem as the index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedVersion {
    pub spec: GemSpec,
    /// Lowercase hex SHA-256 of the exact `.gem` bytes served under `gems/`.
    pub sha256: String,
}

/// `a&b` of a requirement's constraints, sorted as strings (compact_index's `join_multiple`).
fn joined(requirement: &Requirement) -> String {
    let mut constraints = requirement.constraints();
    constraints.sort();
    constraints.join("&")
}

/// One `info` line (without the newline).
pub fn info_line(version: &IndexedVersion) -> String {
    let spec = &version.spec;
    let mut line = spec.version.clone();
    if spec.platform != "ruby" {
        line.push('-');
        line.push_str(&spec.platform);
    }
    line.push(' ');
    let mut deps: Vec<_> = spec.runtime_dependencies().collect();
    deps.sort_by(|a, b| a.name.cmp(&b.name));
    let deps: Vec<String> = deps
        .iter()
        .map(|d| {
            let constraints = if d.requirement.0.is_empty() {
                ">= 0".to_owned()
            } else {
                joined(&d.requirement)
            };
            format!("{}:{constraints}", d.name)
        })
        .collect();
    line.push_str(&deps.join(","));
    let _ = write!(line, "|checksum:{}", version.sha256);
    if !spec.required_ruby_version.is_default() {
        let _ = write!(line, ",ruby:{}", joined(&spec.required_ruby_version));
    }
    if !spec.required_rubygems_version.is_default() {
        let _ = write!(
            line,
            ",rubygems:{}",
            joined(&spec.required_rubygems_version)
        );
    }
    line
}

/// The `info/<name>` body: `---` and one line per version, oldest version first.
pub fn info_body(versions: &[IndexedVersion]) -> String {
    let mut sorted: Vec<&IndexedVersion> = versions.iter().collect();
    sorted.sort_by(|a, b| {
        version::compare(&a.spec.version, &b.spec.version)
            .then_with(|| a.spec.platform.cmp(&b.spec.platform))
    });
    let mut body = String::from("---\n");
    for version in sorted {
        body.push_str(&info_line(version));
        body.push('\n');
    }
    body
}

/// One gem's line in `versions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionsEntry {
    pub name: String,
    /// `VER` or `VER-PLAT`, oldest first.
    pub versions: Vec<String>,
    /// MD5 (lowercase hex) of this name's `info` body.
    pub info_md5: String,
}

impl VersionsEntry {
    /// The entry for `name` whose `info` body is `info`.
    pub fn new(name: &str, versions: &[IndexedVersion], info: &str) -> VersionsEntry {
        let mut sorted: Vec<&IndexedVersion> = versions.iter().collect();
        sorted.sort_by(|a, b| version::compare(&a.spec.version, &b.spec.version));
        VersionsEntry {
            name: name.to_owned(),
            versions: sorted
                .iter()
                .map(|v| {
                    if v.spec.platform == "ruby" {
                        v.spec.version.clone()
                    } else {
                        format!("{}-{}", v.spec.version, v.spec.platform)
                    }
                })
                .collect(),
            info_md5: md5_hex(info.as_bytes()),
        }
    }
}

/// The `versions` body: a `created_at` header, `---`, then one line per name, by name.
/// Names without versions are left out (every line needs at least one version).
pub fn versions_body(created_at: &str, entries: &[VersionsEntry]) -> String {
    let mut sorted: Vec<&VersionsEntry> =
        entries.iter().filter(|e| !e.versions.is_empty()).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut body = format!("created_at: {created_at}\n---\n");
    for entry in sorted {
        let _ = writeln!(
            body,
            "{} {} {}",
            entry.name,
            entry.versions.join(","),
            entry.info_md5
        );
    }
    body
}

/// The `names` body: `---` and the names, alphabetically.
pub fn names_body<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let mut names: Vec<&str> = names.into_iter().collect();
    names.sort_unstable();
    names.dedup();
    let mut body = String::from("---\n");
    for name in names {
        body.push_str(name);
        body.push('\n');
    }
    body
}

pub fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// `"<md5>"`: the ETag Bundler 2.3/2.4 compare with the MD5 of what they hold.
pub fn etag(body: &[u8]) -> String {
    format!("\"{}\"", md5_hex(body))
}

/// `sha-256=:<base64>:` (RFC 9530), which Bundler ≥ 2.5 verifies.
pub fn repr_digest(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Whether an `If-None-Match` value matches `etag` (weak prefix and quotes ignored, `*`, lists).
pub fn if_none_match(header: &str, etag: &str) -> bool {
    let bare = etag.trim_matches('"');
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*"
            || candidate
                .strip_prefix("W/")
                .unwrap_or(candidate)
                .trim_matches('"')
                == bare
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gems::gem_file::Dependency;

    /// `(name, constraints, runtime?)`.
    type Dep<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);

    fn version(v: &str, deps: &[Dep<'_>], ruby: &[(&str, &str)]) -> IndexedVersion {
        let req = |pairs: &[(&str, &str)]| {
            Requirement(
                pairs
                    .iter()
                    .map(|(o, v)| ((*o).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        IndexedVersion {
            spec: GemSpec {
                name: "gpc_core".to_owned(),
                version: v.to_owned(),
                platform: "ruby".to_owned(),
                dependencies: deps
                    .iter()
                    .map(|(name, pairs, runtime)| Dependency {
                        name: (*name).to_owned(),
                        requirement: req(pairs),
                        runtime: *runtime,
                    })
                    .collect(),
                required_ruby_version: req(ruby),
                required_rubygems_version: req(&[(">=", "0")]),
                ..GemSpec::default()
            },
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn info_lines_follow_the_format() {
        let v = version(
            "2.0.0",
            &[
                ("zeta", &[(">=", "1.0"), ("<", "3")], true),
                ("devtool", &[("~>", "0.1")], false),
                ("alpha", &[], true),
            ],
            &[(">=", "2.5")],
        );
        assert_eq!(
            info_line(&v),
            format!(
                "2.0.0 alpha:>= 0,zeta:< 3&>= 1.0|checksum:{},ruby:>= 2.5",
                "ab".repeat(32)
            )
        );
        let bare = version("1.0", &[], &[]);
        assert_eq!(
            info_line(&bare),
            format!("1.0 |checksum:{}", "ab".repeat(32))
        );
        let mut platform = bare.clone();
        platform.spec.platform = "x86_64-linux".to_owned();
        assert!(info_line(&platform).starts_with("1.0-x86_64-linux |"));
    }

    #[test]
    fn bodies_are_ordered_and_checksummed() {
        let versions = [version("1.10", &[], &[]), version("1.9", &[], &[])];
        let info = info_body(&versions);
        let lines: Vec<&str> = info.lines().collect();
        assert_eq!(lines[0], "---");
        assert!(lines[1].starts_with("1.9 ") && lines[2].starts_with("1.10 "));
        let entry = VersionsEntry::new("gpc_core", &versions, &info);
        assert_eq!(entry.versions, ["1.9", "1.10"]);
        let other = VersionsEntry {
            name: "aaa".to_owned(),
            versions: vec!["0.1".to_owned()],
            info_md5: md5_hex(b"x"),
        };
        let empty = VersionsEntry {
            name: "nothing".to_owned(),
            versions: vec![],
            info_md5: md5_hex(b""),
        };
        let body = versions_body("2024-01-01T00:00:00Z", &[entry, other, empty]);
        assert_eq!(
            body,
            format!(
                "created_at: 2024-01-01T00:00:00Z\n---\naaa 0.1 {}\ngpc_core 1.9,1.10 {}\n",
                md5_hex(b"x"),
                md5_hex(info.as_bytes())
            )
        );
        assert!(!body.contains("\n\n") && !body.contains('\r'));
        assert_eq!(names_body(["b", "a", "b"]), "---\na\nb\n");
    }

    #[test]
    fn validators() {
        let body = b"---\n";
        let tag = etag(body);
        assert_eq!(tag, format!("\"{}\"", md5_hex(body)));
        assert!(if_none_match(&tag, &tag));
        assert!(if_none_match(&format!("W/{tag}"), &tag));
        assert!(if_none_match(&md5_hex(body), &tag));
        assert!(if_none_match(&format!("\"x\", {tag}"), &tag));
        assert!(!if_none_match("\"x\"", &tag));
        assert!(
            repr_digest(b"").starts_with("sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:")
        );
    }
}
