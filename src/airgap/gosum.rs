//! Go checksums: the `h1:` dirhash of a module zip and of a go.mod exactly as cmd/go computes
//! them (x/mod `sumdb/dirhash`), and the go.sum and go.mod files `warm` reads.

use std::collections::BTreeSet;
use std::io::{Read, Seek};

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Largest module zip and largest total uncompressed size the go command accepts (x/mod `zip`).
pub const MAX_ZIP: u64 = 500 << 20;

/// Why a module zip has no `h1:`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ZipHashError {
    #[error("not a readable zip: {0}")]
    Zip(String),
    #[error("zip has unexpected file {0} (every file must start with {1})")]
    Outside(String, String),
    #[error("zip has a file name that is not UTF-8 or holds a newline")]
    BadName,
    #[error("zip has file {0} twice")]
    Duplicate(String),
    #[error("zip is larger than 500 MiB uncompressed")]
    TooLarge,
}

/// `Hash1` over `(name, sha256 of content)` pairs: sorted by name, one
/// `"<hex>  <name>\n"` line each, SHA-256 of that summary, standard base64, `h1:` in front.
pub fn hash1(mut files: Vec<(String, [u8; 32])>) -> String {
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut summary = Sha256::new();
    for (name, digest) in &files {
        summary.update(format!("{}  {}\n", hex::encode(digest), name).as_bytes());
    }
    format!(
        "h1:{}",
        base64::engine::general_purpose::STANDARD.encode(summary.finalize())
    )
}

/// The `/go.mod` hash: a one-file tree whose file is named `go.mod`.
pub fn hash_go_mod(content: &[u8]) -> String {
    hash1(vec![("go.mod".to_owned(), Sha256::digest(content).into())])
}

/// The `h1:` of a module zip for `module@version` (real path and version, not `!`-escaped):
/// every entry by its raw name (which must start with `module@version/`), content
/// decompressed and CRC-checked; directory entries count as empty files, as Go's reader
/// opens them. Blocking: run it off the async runtime.
pub fn hash_zip<R: Read + Seek>(
    reader: R,
    module: &str,
    version: &str,
) -> Result<String, ZipHashError> {
    let prefix = format!("{module}@{version}/");
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| ZipHashError::Zip(e.to_string()))?;
    let mut files = Vec::with_capacity(archive.len());
    let mut seen = BTreeSet::new();
    let mut total = 0u64;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|e| ZipHashError::Zip(e.to_string()))?;
        let name = std::str::from_utf8(entry.name_raw())
            .map_err(|_| ZipHashError::BadName)?
            .to_owned();
        if name.contains('\n') {
            return Err(ZipHashError::BadName);
        }
        if !name.starts_with(&prefix) {
            return Err(ZipHashError::Outside(name, prefix));
        }
        if !seen.insert(name.clone()) {
            return Err(ZipHashError::Duplicate(name));
        }
        total = total.saturating_add(entry.size());
        if total > MAX_ZIP {
            return Err(ZipHashError::TooLarge);
        }
        let mut hasher = Sha256::new();
        std::io::copy(
            &mut (&mut entry).take(MAX_ZIP + 1),
            &mut HashWriter(&mut hasher),
        )
        .map_err(|e| ZipHashError::Zip(format!("{name}: {e}")))?;
        files.push((name, hasher.finalize().into()));
    }
    Ok(hash1(files))
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a go.sum line vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SumKind {
    /// `path version h1:…`: the module zip.
    Zip,
    /// `path version/go.mod h1:…`: the module's go.mod.
    GoMod,
}

/// One go.sum line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumLine {
    pub module: String,
    pub version: String,
    pub kind: SumKind,
    pub hash: String,
}

/// A go.sum line that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct GoSumError {
    pub line: usize,
    pub reason: String,
}

/// Reads go.sum: three space-separated fields per line, blank lines ignored.
pub fn parse_go_sum(text: &str) -> Result<Vec<SumLine>, GoSumError> {
    let mut lines = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let error = |reason: &str| GoSumError {
            line: number + 1,
            reason: reason.to_owned(),
        };
        let [module, version, hash] = fields[..] else {
            return Err(error("expected `module version hash`"));
        };
        if !hash.starts_with("h1:") {
            // Other hash schemes are unknown to the go command too; it ignores them.
            continue;
        }
        let (version, kind) = match version.strip_suffix("/go.mod") {
            Some(version) => (version, SumKind::GoMod),
            None => (version, SumKind::Zip),
        };
        if !version.starts_with('v') {
            return Err(error("version does not start with v"));
        }
        lines.push(SumLine {
            module: module.to_owned(),
            version: version.to_owned(),
            kind,
            hash: hash.to_owned(),
        });
    }
    Ok(lines)
}

/// What `warm` needs from the go.mod next to a go.sum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoMod {
    /// The main module's own path (it is never fetched).
    pub module: Option<String>,
    /// `require`d `(path, version)` pairs.
    pub requires: Vec<(String, String)>,
}

/// Reads `module` and `require` directives (single and block form); comments are dropped.
pub fn parse_go_mod(text: &str) -> GoMod {
    let mut parsed = GoMod::default();
    let mut in_require = false;
    for raw in text.lines() {
        let line = raw.split("//").next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if in_require {
            if line == ")" {
                in_require = false;
            } else if let Some(pair) = require_pair(line) {
                parsed.requires.push(pair);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("module ") {
            parsed.module = Some(unquote(rest.trim()).to_owned());
        } else if let Some(rest) = line.strip_prefix("require") {
            let rest = rest.trim();
            if rest == "(" {
                in_require = true;
            } else if let Some(pair) = require_pair(rest) {
                parsed.requires.push(pair);
            }
        }
    }
    parsed
}

fn require_pair(line: &str) -> Option<(String, String)> {
    let mut fields = line.split_whitespace();
    let path = unquote(fields.next()?);
    let version = unquote(fields.next()?);
    Some((path.to_owned(), version.to_owned()))
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use super::*;

    #[test]
    fn go_mod_hashes_match_cmd_go() {
        // cmd/go's emptyGoModHash.
        assert_eq!(
            hash_go_mod(b""),
            "h1:G7mAYYxgmS0lVkHyy2hEOLQCFB0DlQFTMLWggykrydY="
        );
        // The /go.mod hash of every github.com/docker/docker +incompatible version.
        assert_eq!(
            hash_go_mod(b"module github.com/docker/docker\n"),
            "h1:eEKB0N0r5NX/I1kEveEz05bcu8tLC/8azJZsviup8Sk="
        );
    }

    #[test]
    fn hash1_sorts_names_bytewise() {
        let digest = |s: &[u8]| -> [u8; 32] { Sha256::digest(s).into() };
        let ordered = hash1(vec![
            ("abc".into(), digest(b"1")),
            ("xyz".into(), digest(b"2")),
        ]);
        let reversed = hash1(vec![
            ("xyz".into(), digest(b"2")),
            ("abc".into(), digest(b"1")),
        ]);
        assert_eq!(ordered, reversed);
        let summary = format!(
            "{}  abc\n{}  xyz\n",
            hex::encode(digest(b"1")),
            hex::encode(digest(b"2"))
        );
        let expected = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(summary));
        assert_eq!(ordered, format!("h1:{expected}"));
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            out.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            out.write_all(data).unwrap();
        }
        out.finish().unwrap().into_inner()
    }

    #[test]
    fn zip_hash_ignores_order_and_compression_but_not_content() {
        let a = zip_of(&[
            ("m@v1.0.0/go.mod", b"module m\n"),
            ("m@v1.0.0/a.go", b"package a\n"),
        ]);
        let b = zip_of(&[
            ("m@v1.0.0/a.go", b"package a\n"),
            ("m@v1.0.0/go.mod", b"module m\n"),
        ]);
        let c = zip_of(&[
            ("m@v1.0.0/a.go", b"package b\n"),
            ("m@v1.0.0/go.mod", b"module m\n"),
        ]);
        let ha = hash_zip(Cursor::new(a), "m", "v1.0.0").unwrap();
        assert_eq!(ha, hash_zip(Cursor::new(b), "m", "v1.0.0").unwrap());
        assert_ne!(ha, hash_zip(Cursor::new(c), "m", "v1.0.0").unwrap());
        let digest = |s: &[u8]| -> [u8; 32] { Sha256::digest(s).into() };
        assert_eq!(
            ha,
            hash1(vec![
                ("m@v1.0.0/go.mod".into(), digest(b"module m\n")),
                ("m@v1.0.0/a.go".into(), digest(b"package a\n")),
            ])
        );
    }

    #[test]
    fn zip_with_foreign_or_duplicate_files_has_no_hash() {
        let outside = zip_of(&[("m@v1.0.0/go.mod", b""), ("other/x.go", b"")]);
        assert!(matches!(
            hash_zip(Cursor::new(outside), "m", "v1.0.0"),
            Err(ZipHashError::Outside(name, _)) if name == "other/x.go"
        ));
        assert!(matches!(
            hash_zip(Cursor::new(b"not a zip".to_vec()), "m", "v1.0.0"),
            Err(ZipHashError::Zip(_))
        ));
    }

    #[test]
    fn go_sum_lines_are_read() {
        let text = "example.com/a v1.0.0 h1:AAA=\nexample.com/a v1.0.0/go.mod h1:BBB=\n\n\
                    github.com/docker/docker v28.0.1+incompatible/go.mod h1:eEKB0=\n";
        let lines = parse_go_sum(text).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].kind, SumKind::Zip);
        assert_eq!(lines[1].kind, SumKind::GoMod);
        assert_eq!(lines[1].version, "v1.0.0");
        assert_eq!(lines[2].version, "v28.0.1+incompatible");
        let err = parse_go_sum("a v1\n").unwrap_err();
        assert_eq!(err.line, 1);
    }

    #[test]
    fn go_mod_module_and_requires() {
        let parsed = parse_go_mod(
            "module example.com/app // main\n\ngo 1.21\n\nrequire example.com/one v1.0.0\nrequire (\n\texample.com/two v0.2.0 // indirect\n\t\"example.com/three\" v3.0.0\n)\n",
        );
        assert_eq!(parsed.module.as_deref(), Some("example.com/app"));
        assert_eq!(
            parsed.requires,
            [
                ("example.com/one".into(), "v1.0.0".into()),
                ("example.com/two".into(), "v0.2.0".into()),
                ("example.com/three".into(), "v3.0.0".into()),
            ]
        );
    }
}
