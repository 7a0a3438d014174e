//! The data the fake serves: projects with their Git tags and gem packages, and tokens.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use rand::RngCore;

use super::{Access, GemFixture, Visibility};

#[derive(Clone)]
pub(super) struct Instance {
    /// GitLab's configured host, the required start of every Go module path.
    pub host: String,
    pub projects: Vec<Project>,
    pub tokens: HashMap<String, Token>,
}

impl Instance {
    /// GitLab's `find_project(params[:id])`: all digits is an id, anything containing a `/`
    /// is a full path (matched case-insensitively, like GitLab's route lookup), anything
    /// else finds nothing.
    pub fn find_project(&self, id: &str) -> Option<&Project> {
        if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
            let id: u64 = id.parse().ok()?;
            self.projects.iter().find(|p| p.id == id)
        } else if id.contains('/') {
            self.projects
                .iter()
                .find(|p| p.full_path.eq_ignore_ascii_case(id))
        } else {
            None
        }
    }
}

#[derive(Clone)]
pub(super) struct Project {
    pub id: u64,
    pub full_path: String,
    pub visibility: Visibility,
    /// Repository tags in the order Gitaly would list them (here: declaration order).
    pub tags: Vec<Tag>,
    /// RubyGems packages in database order (declaration order).
    pub packages: Vec<GemPackage>,
    /// `specs.4.8.gz`, `latest_specs.4.8.gz`, `prerelease_specs.4.8.gz`, built at start.
    pub spec_indexes: Vec<StoredFile>,
}

impl Project {
    pub fn is_public(&self) -> bool {
        self.visibility == Visibility::Public
    }
}

/// A Git tag: its commit time and the whole tree at that commit.
#[derive(Clone)]
pub(super) struct Tag {
    pub name: String,
    pub time: String,
    /// Repository path -> contents, sorted as `git ls-tree -r` lists them.
    pub files: BTreeMap<String, Bytes>,
}

/// A processed gem: the fixture plus the package files GitLab stores for it.
#[derive(Clone)]
pub(super) struct GemPackage {
    pub gem: GemFixture,
    pub gem_file: StoredFile,
    pub gemspec_file: Option<StoredFile>,
}

impl GemPackage {
    pub fn new(gem: GemFixture) -> GemPackage {
        let full_name = format!("{}-{}", gem.name, gem.version);
        GemPackage {
            gem_file: StoredFile::new(format!("{full_name}.gem"), gem.gem_bytes.clone()),
            gemspec_file: gem
                .gemspec_rz
                .clone()
                .map(|bytes| StoredFile::new(format!("{full_name}.gemspec.rz"), bytes)),
            gem,
        }
    }
}

/// A package file as stored by GitLab, which may also live in the object store.
#[derive(Clone)]
pub(super) struct StoredFile {
    pub name: String,
    pub bytes: Bytes,
    /// The random part of its object-store path, fixed for the file's lifetime like a real
    /// object key (only the signature of a pre-signed URL changes from one redirect to the next).
    pub object_key: String,
}

impl StoredFile {
    pub fn new(name: String, bytes: impl Into<Bytes>) -> StoredFile {
        StoredFile {
            name,
            bytes: bytes.into(),
            object_key: random_hex(16),
        }
    }
}

pub(super) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

#[derive(Clone)]
pub(super) struct Token {
    pub credential: Credential,
    /// The projects the token's user belongs to (for deploy tokens: the token's projects).
    pub grants: Vec<(u64, Access)>,
}

/// What a token is, with only the states that kind of token can be in.
#[derive(Clone)]
pub(super) enum Credential {
    Personal {
        scopes: Vec<&'static str>,
        state: PatState,
    },
    Job {
        running: bool,
    },
    Deploy {
        scopes: Vec<&'static str>,
        active: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum PatState {
    Active,
    Expired,
    Revoked,
}
