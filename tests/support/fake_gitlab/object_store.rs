//! The object store that GitLab's download redirects point at: another listener, so another
//! authority, serving package files at pre-signed URLs and noting who sent credentials.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::net::TcpListener;

use super::model::{random_hex, Instance, StoredFile};
use super::route::Query;
use super::server::{full, Body};

/// Characters kept as they are in a URL path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'-').remove(b'_');

/// Headers that would carry GitLab credentials; a client must not send them to the store.
const CREDENTIAL_HEADERS: [&str; 4] = [
    "authorization",
    "private-token",
    "job-token",
    "deploy-token",
];

pub(super) struct ObjectStore {
    base_url: String,
    /// Request path -> contents.
    objects: Mutex<HashMap<String, Bytes>>,
    hits: AtomicU64,
    saw_credentials: AtomicBool,
}

impl ObjectStore {
    /// Holds every package file of the instance, at the paths [`Self::presigned_url`] names.
    pub fn new(listener: &TcpListener, instance: &Instance) -> ObjectStore {
        let objects = instance
            .projects
            .iter()
            .flat_map(|project| {
                let package_files = project.packages.iter().flat_map(|package| {
                    std::iter::once(&package.gem_file).chain(package.gemspec_file.as_ref())
                });
                package_files.chain(&project.spec_indexes)
            })
            .map(|file| (object_path(file), file.bytes.clone()))
            .collect();
        let objects = Mutex::new(objects);
        ObjectStore {
            base_url: format!("http://{}", super::local_addr(listener)),
            objects,
            hits: AtomicU64::new(0),
            saw_credentials: AtomicBool::new(false),
        }
    }

    /// A URL in the style of an S3 pre-signed URL: a fixed object path and a signature that
    /// differs on every redirect.
    pub fn presigned_url(&self, file: &StoredFile) -> String {
        format!(
            "{}{}?X-Amz-Signature={}",
            self.base_url,
            object_path(file),
            random_hex(32)
        )
    }

    pub fn answer(&self, request: &Request<Incoming>) -> Response<Body> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        if CREDENTIAL_HEADERS
            .iter()
            .any(|name| request.headers().contains_key(*name))
        {
            self.saw_credentials.store(true, Ordering::SeqCst);
        }
        let method = request.method();
        if method != Method::GET && method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed");
        }
        let signed = Query::parse(request.uri().query())
            .ok()
            .and_then(|query| query.get("X-Amz-Signature").map(|s| !s.is_empty()))
            .unwrap_or(false);
        if !signed {
            return text(StatusCode::FORBIDDEN, "AccessDenied");
        }
        let Some(bytes) = super::lock(&self.objects)
            .get(request.uri().path())
            .cloned()
        else {
            return text(StatusCode::NOT_FOUND, "NoSuchKey");
        };
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            bytes.clone()
        };
        Response::builder()
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, bytes.len())
            .body(full(body))
            .expect("a valid response")
    }

    /// Stores a package file GitLab created after start (a processed upload, a rebuilt index).
    pub fn put(&self, file: &StoredFile) {
        super::lock(&self.objects).insert(object_path(file), file.bytes.clone());
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn saw_credentials(&self) -> bool {
        self.saw_credentials.load(Ordering::SeqCst)
    }

    pub fn reset(&self) {
        self.hits.store(0, Ordering::SeqCst);
        self.saw_credentials.store(false, Ordering::SeqCst);
    }
}

fn object_path(file: &StoredFile) -> String {
    format!(
        "/bucket/{}/{}",
        file.object_key,
        utf8_percent_encode(&file.name, SEGMENT)
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain")
        .body(full(body))
        .expect("a valid response")
}
