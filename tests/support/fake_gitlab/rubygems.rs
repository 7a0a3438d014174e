//! The RubyGems API: spec indexes, gemspecs, gems, the dependency API and uploads (§3).

use std::cmp::Ordering;
use std::io::{Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use flate2::{Compression, GzBuilder};
use http::StatusCode;
use http_body_util::BodyExt;

use super::super::marshal;
use super::auth::{self, Call, Caller};
use super::model::{GemPackage, Project, StoredFile};
use super::reply::{Api, Reply};
use super::route::RubyGemsEndpoint;
use super::{lock, GemFixture, RubyGemsEra, Shared};

const SPEC_INDEX_FILE_NAMES: [&str; 3] = [
    "specs.4.8.gz",
    "latest_specs.4.8.gz",
    "prerelease_specs.4.8.gz",
];

/// Runs GitLab's pipeline for a matched RubyGems route: `authenticate_non_get!` (uploads
/// need a caller), parameter validation, the project and read access (in `after_validation`),
/// then the endpoint. There is no `authenticate_non_public` here: a private project is
/// "not found" to anonymous callers.
pub(super) async fn answer(
    shared: &Arc<Shared>,
    era: RubyGemsEra,
    call: &Call<'_>,
    project_id: &str,
    endpoint: RubyGemsEndpoint,
    body: hyper::body::Incoming,
) -> Reply {
    let instance = shared.instance();
    let instance = &*instance;
    let caller = auth::rubygems_caller(instance, era, call);
    let is_upload = matches!(endpoint, RubyGemsEndpoint::Upload);
    if is_upload && caller.as_ref().is_ok_and(Caller::is_anonymous) {
        return Reply::unauthorized(Api::RubyGems);
    }
    if let RubyGemsEndpoint::SpecIndex(file) = &endpoint {
        if era == RubyGemsEra::V19_1 && !SPEC_INDEX_FILE_NAMES.contains(&file.as_str()) {
            return Reply::invalid_param(Api::RubyGems, "file_name");
        }
    }
    let caller = match caller {
        Ok(caller) => caller,
        Err(reply) => return reply,
    };
    let project = match auth::project_for_read(instance, &caller, project_id, Api::RubyGems) {
        Ok(project) => project,
        Err(reply) => return reply,
    };
    let object_store = shared.object_store.as_deref();
    let present = |file: &StoredFile| match object_store {
        Some(store) => Reply::redirect(call.method, &store.presigned_url(file)),
        None => Reply::attachment(&file.name, file.bytes.clone()),
    };
    match endpoint {
        // Before 19.1 both routes were stubs that only said "not found".
        RubyGemsEndpoint::SpecIndex(_) | RubyGemsEndpoint::Gemspec(_)
            if era == RubyGemsEra::Pre19_1 =>
        {
            Reply::not_found(Api::RubyGems)
        }
        RubyGemsEndpoint::SpecIndex(name) => {
            let file = project.spec_indexes.iter().find(|f| f.name == name);
            file.map_or_else(|| Reply::not_found(Api::RubyGems), present)
        }
        RubyGemsEndpoint::Gemspec(name) => {
            let file = latest_package_file(project, |p| p.gemspec_file.as_ref(), &name);
            file.map_or_else(|| Reply::record_not_found(Api::RubyGems), present)
        }
        RubyGemsEndpoint::Gem(name) => {
            let file = latest_package_file(project, |p| Some(&p.gem_file), &name);
            file.map_or_else(|| Reply::record_not_found(Api::RubyGems), present)
        }
        RubyGemsEndpoint::Dependencies => dependencies(project, call),
        RubyGemsEndpoint::Upload => upload(shared, &caller, project, body).await,
    }
}

/// `for_rubygem_with_file_name(...).installable.last!`: the most recent upload wins.
fn latest_package_file<'a>(
    project: &'a Project,
    file: impl Fn(&'a GemPackage) -> Option<&'a StoredFile>,
    name: &str,
) -> Option<&'a StoredFile> {
    project
        .packages
        .iter()
        .rev()
        .filter_map(file)
        .find(|f| f.name == name)
}

/// The dependency API. Without gem names it is only a liveness probe answering the text
/// `200`; otherwise every version of every named gem, or 404 if one name is unknown.
fn dependencies(project: &Project, call: &Call<'_>) -> Reply {
    let names = call
        .query
        .get("gems")
        .map(ruby_comma_split)
        .unwrap_or_default();
    if names.is_empty() {
        return Reply::new(StatusCode::OK, "application/octet-stream", "200");
    }
    let mut versions = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let packages: Vec<&GemPackage> = project
            .packages
            .iter()
            .filter(|p| p.gem.name == *name)
            .collect();
        if packages.is_empty() {
            return Reply::message(
                Api::RubyGems,
                StatusCode::NOT_FOUND,
                &format!("{name} not found"),
            );
        }
        versions.extend(
            packages
                .into_iter()
                .map(|package| dependency_entry(name, index, package)),
        );
    }
    let body = marshal::dump(&marshal::Value::Array(versions));
    Reply::new(StatusCode::OK, "application/octet-stream", body)
}

/// `CommaSeparatedToArray`: Ruby's `split(',')` (which drops trailing empty fields), each
/// field stripped.
fn ruby_comma_split(value: &str) -> Vec<String> {
    let mut fields: Vec<String> = value.split(',').map(str::to_owned).collect();
    while fields.last().is_some_and(String::is_empty) {
        fields.pop();
    }
    fields.iter().map(|f| f.trim().to_owned()).collect()
}

/// `{name:, number:, platform: "ruby", dependencies: [[name, requirement], ...]}`, with the
/// objects GitLab shares: the requested name (the `index`th of the query, one String for
/// all its entries) and the platform (the frozen `DEFAULT_PLATFORM`, one for the answer).
fn dependency_entry(requested_name: &str, index: usize, package: &GemPackage) -> marshal::Value {
    use marshal::Value;
    let dependencies = package
        .gem
        .dependencies
        .iter()
        .map(|(name, requirement)| Value::Array(vec![Value::str(name), Value::str(requirement)]))
        .collect();
    Value::Hash(vec![
        (
            Value::sym("name"),
            Value::shared(
                u32::try_from(index).unwrap_or(u32::MAX).saturating_add(1),
                Value::str(requested_name),
            ),
        ),
        (Value::sym("number"), Value::str(&package.gem.version)),
        (Value::sym("platform"), Value::shared(0, Value::str("ruby"))),
        (Value::sym("dependencies"), Value::Array(dependencies)),
    ])
}

/// `POST api/v1/gems`: Workhorse has already stored the body; Rails checks write access and
/// answers 201. The gem is only recorded, not served: GitLab keeps a new upload as a
/// temporary package until a background job processes it.
async fn upload(
    shared: &Arc<Shared>,
    caller: &Caller<'_>,
    project: &Project,
    body: hyper::body::Incoming,
) -> Reply {
    if !caller.can_create_package(project) {
        return Reply::forbidden(Api::RubyGems);
    }
    let Ok(body) = body.collect().await else {
        return Reply::malformed("the request body could not be read");
    };
    let body = body.to_bytes();
    lock(&shared.uploads)
        .entry(project.id)
        .or_default()
        .push(body.clone());
    process_in_background(Arc::clone(shared), project.id, body);
    Reply::message(Api::RubyGems, StatusCode::CREATED, "201 Created")
}

/// What GitLab does after answering 201: `ProcessGemService` makes the package installable
/// (the dependency API and downloads see it), then `CreateSpecFilesWorker` rebuilds the
/// project's spec indexes. Both run later, in the background.
fn process_in_background(shared: Arc<Shared>, project_id: u64, body: Bytes) {
    tokio::spawn(async move {
        let processing = shared.processing.clone();
        tokio::time::sleep(processing.package_after).await;
        // Extraction may run Ruby: keep it off the runtime the servers share.
        let extract = Arc::clone(&processing.extract);
        let Ok(Some(gem)) = tokio::task::spawn_blocking(move || extract(&body)).await else {
            return;
        };
        let package = GemPackage::new(gem);
        if let Some(store) = &shared.object_store {
            store.put(&package.gem_file);
            if let Some(gemspec) = &package.gemspec_file {
                store.put(gemspec);
            }
        }
        shared.change_instance(|instance| {
            if let Some(project) = instance.projects.iter_mut().find(|p| p.id == project_id) {
                project.packages.push(package);
            }
        });
        tokio::time::sleep(processing.indexes_after).await;
        shared.change_instance(|instance| {
            if let Some(project) = instance.projects.iter_mut().find(|p| p.id == project_id) {
                project.spec_indexes = spec_indexes(&project.packages);
                if let Some(store) = &shared.object_store {
                    for file in &project.spec_indexes {
                        store.put(file);
                    }
                }
            }
        });
    });
}

/// Reads a `.gem` as GitLab's extraction does, as far as the fake needs: the tar's
/// `metadata.gz`, inflated, and from its YAML the name, the version and the platform.
pub fn extract_metadata(gem: &[u8]) -> Option<GemFixture> {
    let mut archive = tar::Archive::new(gem);
    let mut yaml = String::new();
    for entry in archive.entries().ok()? {
        let entry = entry.ok()?;
        if entry.path().ok()?.to_str() == Some("metadata.gz") {
            flate2::read::GzDecoder::new(entry)
                .read_to_string(&mut yaml)
                .ok()?;
            break;
        }
    }
    let unquote = |v: &str| v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned();
    let mut lines = yaml.lines();
    let (mut name, mut version, mut platform) = (None, None, "ruby".to_owned());
    while let Some(line) = lines.next() {
        if let Some(value) = line.strip_prefix("name: ") {
            name.get_or_insert_with(|| unquote(value));
        } else if line.starts_with("version: ") {
            let next = lines.next()?;
            version = Some(unquote(next.trim_start().strip_prefix("version: ")?));
        } else if let Some(value) = line.strip_prefix("platform: ") {
            platform = unquote(value);
        }
    }
    let mut gem_fixture = GemFixture::new(&name?, &version?, gem.to_vec());
    gem_fixture.platform = platform;
    Some(gem_fixture)
}

/// The three spec indexes of a project, as `CreateSpecFilesService` builds them: gzip
/// (mtime 0) of a Marshal array of `[name, Gem::Version, platform]`, sorted by name,
/// version and platform. `latest_specs` holds the last released entry of each name.
///
/// GitLab builds them after processing a gem, so a project without gems has none yet and
/// its index requests get 404. (GitLab would then build empty ones in the background; the
/// fake has no background and keeps answering 404.)
pub(super) fn spec_indexes(packages: &[GemPackage]) -> Vec<StoredFile> {
    if packages.is_empty() {
        return Vec::new();
    }
    let mut released = Vec::new();
    let mut prerelease = Vec::new();
    for package in packages {
        let version = normalize_version(&package.gem.version);
        let spec = (
            package.gem.name.as_str(),
            version,
            package.gem.platform.as_str(),
        );
        if spec.1.bytes().any(|b| b.is_ascii_alphabetic()) {
            prerelease.push(spec);
        } else {
            released.push(spec);
        }
    }
    let order = |a: &Spec<'_>, b: &Spec<'_>| {
        a.0.cmp(b.0)
            .then_with(|| compare_versions(&a.1, &b.1))
            .then_with(|| a.2.cmp(b.2))
    };
    released.sort_by(order);
    prerelease.sort_by(order);
    let mut latest: Vec<Spec<'_>> = Vec::new();
    for spec in &released {
        match latest.last_mut() {
            Some(last) if last.0 == spec.0 => *last = spec.clone(),
            _ => latest.push(spec.clone()),
        }
    }
    [released, latest, prerelease]
        .iter()
        .zip(SPEC_INDEX_FILE_NAMES)
        .map(|(specs, name)| StoredFile::new(name.to_owned(), gzip(&spec_index(specs))))
        .collect()
}

/// `(name, normalized version, platform)`.
type Spec<'a> = (&'a str, String, &'a str);

fn spec_index(specs: &[Spec<'_>]) -> Vec<u8> {
    use marshal::Value;
    let entries = specs
        .iter()
        .map(|(name, version, platform)| {
            Value::Array(vec![
                Value::str(*name),
                Value::gem_version(version),
                Value::str(*platform),
            ])
        })
        .collect();
    marshal::dump(&Value::Array(entries))
}

/// Ruby's `Zlib::GzipWriter` with `mtime = 0`, so the bytes depend on the content only.
fn gzip(data: &[u8]) -> Bytes {
    const UNIX: u8 = 3;
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .operating_system(UNIX)
        .write(Vec::new(), Compression::default());
    encoder
        .write_all(data)
        .expect("writing to memory cannot fail");
    Bytes::from(encoder.finish().expect("writing to memory cannot fail"))
}

/// What `Gem::Version.new` keeps: the string stripped, `-` spelled `.pre.`.
fn normalize_version(version: &str) -> String {
    version.trim().replace('-', ".pre.")
}

#[derive(PartialEq, Eq)]
enum Segment {
    Number(u128),
    Text(String),
}

/// `Gem::Version#<=>` on normalized versions: segments are runs of digits or of letters;
/// trailing zeros of the numeric part and of the text part do not count; a missing
/// segment is 0; text sorts before numbers (so `1.0.a` < `1.0`).
fn compare_versions(a: &str, b: &str) -> Ordering {
    let (a, b) = (canonical_segments(a), canonical_segments(b));
    let zero = Segment::Number(0);
    for i in 0..a.len().max(b.len()) {
        let (left, right) = (a.get(i).unwrap_or(&zero), b.get(i).unwrap_or(&zero));
        let ordering = match (left, right) {
            (Segment::Number(l), Segment::Number(r)) => l.cmp(r),
            (Segment::Text(l), Segment::Text(r)) => l.cmp(r),
            (Segment::Text(_), Segment::Number(_)) => Ordering::Less,
            (Segment::Number(_), Segment::Text(_)) => Ordering::Greater,
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    Ordering::Equal
}

fn canonical_segments(version: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut chars = version.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_digit() || c.is_ascii_alphabetic() {
            let digits = c.is_ascii_digit();
            let mut run = String::new();
            while let Some(&c) = chars.peek() {
                if (digits && c.is_ascii_digit()) || (!digits && c.is_ascii_alphabetic()) {
                    run.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            segments.push(if digits {
                Segment::Number(run.parse().unwrap_or(u128::MAX))
            } else {
                Segment::Text(run)
            });
        } else {
            chars.next();
        }
    }
    let text_start = segments
        .iter()
        .position(|s| matches!(s, Segment::Text(_)))
        .unwrap_or(segments.len());
    let text = segments.split_off(text_start);
    let mut canonical = drop_trailing_zeros(segments);
    canonical.extend(drop_trailing_zeros(text));
    canonical
}

fn drop_trailing_zeros(mut segments: Vec<Segment>) -> Vec<Segment> {
    while segments.last() == Some(&Segment::Number(0)) {
        segments.pop();
    }
    segments
}
