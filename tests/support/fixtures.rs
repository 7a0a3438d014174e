//! Generated fixtures for the real clients: Go module trees, real `.gem` files built with
//! `gem build` (plus the `gemspec.rz` GitLab stores for them, made by Ruby itself), and a
//! test certificate authority for serving the proxy over HTTPS. Nothing here is committed
//! as a binary: everything is produced at test time, small and deterministic.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::commands::{self, TIMEOUT};
use super::fake_gitlab::GemFixture;

/// The Go package name used for a module's code: its last path element, lower-cased, with
/// anything but ASCII letters and digits dropped (`.../MixedCase` → `mixedcase`).
pub fn go_package_name(module_path: &str) -> String {
    let last = module_path.rsplit('/').next().unwrap_or(module_path);
    let name: String = last
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    match name.chars().next() {
        Some(c) if c.is_ascii_alphabetic() => name,
        _ => format!("m{name}"),
    }
}

/// The files of a module directory at `version`, for `FakeGitLabBuilder::go_version`: a
/// `go.mod` declaring `module_path` and one Go file with `Version` and `Describe()`.
pub fn go_module_files(module_path: &str, version: &str) -> Vec<(String, Vec<u8>)> {
    go_module_files_requiring(module_path, version, &[])
}

/// Like [`go_module_files`], for a module that requires (and imports) other modules:
/// `requires` holds `(module path, version)`, each written to `go.mod` and each module's
/// package imported, so `Describe()` names the versions the build really selected.
pub fn go_module_files_requiring(
    module_path: &str,
    version: &str,
    requires: &[(&str, &str)],
) -> Vec<(String, Vec<u8>)> {
    let package = go_package_name(module_path);
    let mut gomod = format!("module {module_path}\n\ngo 1.19\n");
    if !requires.is_empty() {
        gomod.push_str("\nrequire (\n");
        for (path, version) in requires {
            let _ = writeln!(gomod, "\t{path} {version}");
        }
        gomod.push_str(")\n");
    }
    let mut code =
        format!("// Package {package} is a generated test module.\npackage {package}\n\n");
    if !requires.is_empty() {
        code.push_str("import (\n");
        for (path, _) in requires {
            let _ = writeln!(code, "\t{} \"{path}\"", go_package_name(path));
        }
        code.push_str(")\n\n");
    }
    let _ = write!(
        code,
        "// Version is the version of this module.\nconst Version = \"{version}\"\n\n\
         // Describe names this module and, in brackets, the modules it uses.\n\
         func Describe() string {{\n\treturn \"{module_path}@\" + Version"
    );
    for (path, _) in requires {
        let _ = write!(
            code,
            " + \" [\" + {}.Describe() + \"]\"",
            go_package_name(path)
        );
    }
    code.push_str("\n}\n");
    vec![
        ("go.mod".to_owned(), gomod.into_bytes()),
        (format!("{package}.go"), code.into_bytes()),
    ]
}

/// Builds `<name>-<version>.gem` with `gem build` from a generated gemspec in
/// `dir/<name>-<version>/`, with runtime dependencies `deps` (`(name, requirement)`, where
/// a requirement may list several constraints separated by commas: `">= 1.0, < 2"`).
pub fn build_gem(dir: &Path, name: &str, version: &str, deps: &[(&str, &str)]) -> GemFixture {
    build_gem_with(dir, name, version, deps, &[])
}

/// Like [`build_gem`], with development dependencies as well (GitLab records and serves
/// those in its dependency API too).
///
/// The fixture's `gemspec_rz` is what GitLab stores for the gem, produced by Ruby itself
/// (`Gem::Package.new(path).spec` → `Marshal.dump` → `Gem.deflate`), and its
/// `dependencies` are read back from that spec, so they are exactly what RubyGems sees.
pub fn build_gem_with(
    dir: &Path,
    name: &str,
    version: &str,
    deps: &[(&str, &str)],
    dev_deps: &[(&str, &str)],
) -> GemFixture {
    build(dir, name, version, None, deps, dev_deps)
}

/// Like [`build_gem`], for a platform (`x86_64-linux`, `java`): RubyGems names the file
/// `<name>-<version>-<platform>.gem`, and its `describe` ends in `-<platform>`.
pub fn build_platform_gem(
    dir: &Path,
    name: &str,
    version: &str,
    platform: &str,
    deps: &[(&str, &str)],
) -> GemFixture {
    build(dir, name, version, Some(platform), deps, &[])
}

fn build(
    dir: &Path,
    name: &str,
    version: &str,
    platform: Option<&str>,
    deps: &[(&str, &str)],
    dev_deps: &[(&str, &str)],
) -> GemFixture {
    commands::require_tool("gem");
    commands::require_tool("ruby");
    let full_name = match platform {
        Some(platform) => format!("{name}-{version}-{platform}"),
        None => format!("{name}-{version}"),
    };
    let work = dir.join(&full_name);
    std::fs::create_dir_all(work.join("lib")).expect("gem work directory");
    let mut spec = gemspec(name, version, deps, dev_deps);
    if let Some(platform) = platform {
        spec = spec.replacen(
            "\nend\n",
            &format!("\n  s.platform = {platform:?}\nend\n"),
            1,
        );
    }
    std::fs::write(work.join(format!("{name}.gemspec")), spec).expect("write the gemspec");
    let described = match platform {
        Some(platform) => format!("{version}-{platform}"),
        None => version.to_owned(),
    };
    std::fs::write(
        work.join("lib").join(format!("{name}.rb")),
        gem_library(name, &described, deps),
    )
    .expect("write the gem's library");
    let home = work.join(".home");
    std::fs::create_dir_all(&home).expect("gem build home");
    let mut build = commands::clean("gem");
    build
        .args(["build", &format!("{name}.gemspec")])
        .current_dir(&work)
        .env("HOME", &home)
        .env("GEM_HOME", home.join("gems"))
        .env("GEM_PATH", home.join("gems"))
        // Reproducible: the spec's date and the tar entries' times come from here.
        .env("SOURCE_DATE_EPOCH", "1700000000");
    commands::run(&mut build, TIMEOUT);
    let gem_path = work.join(format!("{full_name}.gem"));
    spec_with_ruby(&gem_path, &home).expect("Ruby reads the gem it built")
}

/// What GitLab's processing makes of a pushed gem, done by Ruby itself: the name, version,
/// platform and dependencies RubyGems reads from it, and the `gemspec.rz` GitLab stores
/// (`Gem::Package.new(path).spec` → `Marshal.dump` → `Gem.deflate`). `None` if Ruby cannot
/// read it. For `Processing::extract` of the fake GitLab.
pub fn extract_with_ruby(gem: &[u8]) -> Option<GemFixture> {
    let dir = tempfile::tempdir().ok()?;
    let path = dir.path().join("pushed.gem");
    std::fs::write(&path, gem).ok()?;
    spec_with_ruby(&path, dir.path())
}

fn spec_with_ruby(gem_path: &Path, home: &Path) -> Option<GemFixture> {
    let gemspec_path = gem_path.with_extension("gemspec.rz");
    let mut spec = commands::clean("ruby");
    spec.arg("-e")
        .arg(
            "require \"rubygems/package\"; \
             spec = Gem::Package.new(ARGV[0]).spec; \
             File.binwrite(ARGV[1], Gem.deflate(Marshal.dump(spec))); \
             puts spec.name, spec.version.to_s, spec.platform.to_s; \
             spec.dependencies.each { |d| puts [d.name, d.requirement.to_s].join(\"\\t\") }",
        )
        .arg(gem_path)
        .arg(&gemspec_path)
        .env("HOME", home);
    let finished = commands::run_unchecked(&mut spec, TIMEOUT);
    if !finished.success() {
        return None;
    }
    let mut lines = finished.stdout.lines();
    let name = lines.next()?.to_owned();
    let version = lines.next()?.to_owned();
    let platform = lines.next().unwrap_or("ruby").to_owned();
    let dependencies = lines
        .filter_map(|line| line.split_once('\t'))
        .map(|(name, requirement)| (name.to_owned(), requirement.to_owned()))
        .collect();
    Some(GemFixture {
        name,
        version,
        platform,
        gem_bytes: std::fs::read(gem_path).ok()?,
        gemspec_rz: Some(std::fs::read(&gemspec_path).ok()?),
        dependencies,
    })
}

/// The Ruby module name of a gem: `gpc_leaf` → `GpcLeaf`.
pub fn gem_module_name(name: &str) -> String {
    name.split(['_', '-'])
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

fn requirement_args(requirement: &str) -> String {
    requirement
        .split(',')
        .map(|part| format!("{:?}", part.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn gemspec(name: &str, version: &str, deps: &[(&str, &str)], dev_deps: &[(&str, &str)]) -> String {
    let mut spec = format!(
        "Gem::Specification.new do |s|\n\
         \x20 s.name = {name:?}\n\
         \x20 s.version = {version:?}\n\
         \x20 s.summary = \"Generated by the gitlab-pkg-cache tests\"\n\
         \x20 s.authors = [\"gitlab-pkg-cache tests\"]\n\
         \x20 s.license = \"MIT\"\n\
         \x20 s.homepage = \"https://gitlab.example.com/group/gems\"\n\
         \x20 s.required_ruby_version = \">= 2.5\"\n\
         \x20 s.files = [\"lib/{name}.rb\"]\n"
    );
    for (dep, requirement) in deps {
        let _ = writeln!(
            spec,
            "  s.add_runtime_dependency {dep:?}, {}",
            requirement_args(requirement)
        );
    }
    for (dep, requirement) in dev_deps {
        let _ = writeln!(
            spec,
            "  s.add_development_dependency {dep:?}, {}",
            requirement_args(requirement)
        );
    }
    spec.push_str("end\n");
    spec
}

/// `require`s its runtime dependencies and offers `describe`: `name-version` followed by
/// what its dependencies describe, so a loaded program shows which versions were installed.
fn gem_library(name: &str, version: &str, deps: &[(&str, &str)]) -> String {
    let module = gem_module_name(name);
    let mut code = String::new();
    for (dep, _) in deps {
        let _ = writeln!(code, "require {dep:?}");
    }
    let _ = write!(
        code,
        "\nmodule {module}\n  VERSION = {version:?}\n\n  def self.describe\n    \"{name}-#{{VERSION}}\""
    );
    for (dep, _) in deps {
        let _ = write!(
            code,
            " + \" [\" + {}.describe + \"]\"",
            gem_module_name(dep)
        );
    }
    code.push_str("\n  end\nend\n");
    code
}

/// A certificate authority made for one test and a server certificate it signed for
/// `127.0.0.1` and `localhost`, written as PEM files.
pub struct TestCa {
    /// The CA certificate: what clients trust (`SSL_CERT_FILE`).
    pub ca_file: PathBuf,
    /// The server's certificate chain and key: what the proxy serves with.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCa {
    /// Creates the three files in `dir`.
    pub fn create(dir: &Path) -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "gitlab-pkg-cache test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");

        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server certificate parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "gitlab-pkg-cache test proxy");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .expect("server certificate");

        let files = TestCa {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("proxy-cert.pem"),
            key_file: dir.join("proxy-key.pem"),
        };
        std::fs::write(&files.ca_file, ca.pem()).expect("write ca.pem");
        std::fs::write(&files.cert_file, cert.pem()).expect("write the certificate");
        std::fs::write(&files.key_file, key.serialize_pem()).expect("write the key");
        files
    }
}

/// Seeded pseudo-random bytes (splitmix64): incompressible, so a zip or gem of them is as
/// large as they are, and the same for the same seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Names and contents of a zip's entries, sorted; `None` if the bytes are not a zip.
/// GitLab builds zips anew on every request, so two zips of one version are compared by
/// what they hold.
pub fn zip_entries(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    use std::io::Read;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).ok()?;
    let mut entries = Vec::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).ok()?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).ok()?;
        entries.push((file.name().to_owned(), data));
    }
    entries.sort();
    Some(entries)
}

/// Equal bytes, or zips with equal entries.
pub fn same_body(a: &[u8], b: &[u8]) -> bool {
    a == b || matches!((zip_entries(a), zip_entries(b)), (Some(x), Some(y)) if x == y)
}

/// A `.gem` as `gem build` lays it out, as far as readers of its metadata look: a tar with
/// `metadata.gz` (the YAML specification) first, then `data.tar.gz`. Not installable; for
/// tests of what a push changes without Ruby.
pub fn minimal_gem(name: &str, version: &str) -> Vec<u8> {
    use std::io::Write;
    let yaml = format!(
        "--- !ruby/object:Gem::Specification\nname: {name}\nversion: !ruby/object:Gem::Version\n  version: {version}\nplatform: ruby\nauthors:\n- Test\ndependencies: []\nsummary: test gem\n"
    );
    let mut metadata = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    metadata.write_all(yaml.as_bytes()).expect("gzip to memory");
    let metadata = metadata.finish().expect("gzip to memory");
    let mut archive = tar::Builder::new(Vec::new());
    for (path, data) in [("metadata.gz", metadata), ("data.tar.gz", noise(2048, 7))] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o444);
        header.set_cksum();
        archive
            .append_data(&mut header, path, data.as_slice())
            .expect("tar to memory");
    }
    archive.into_inner().expect("tar to memory")
}
