//! gitlab-pkg-cache: a caching reverse proxy for GitLab's Go module proxy and RubyGems APIs.
//!
//! It serves the same paths as GitLab, authenticates every caller the way GitLab does by
//! asking GitLab (the policy engine), and keeps what it may: lists and dependency answers in
//! memory, immutable artifacts on disk.
//!
//! # Layout
//!
//! Data flows one way: listener → service → route → auth → cache → (storage | upstream).
//!
//! - [`config`]: one typed tree, TOML < environment < flags.
//! - [`telemetry`]: log set-up, the access-log event and its hand-written line, and the
//!   log queue a writer thread empties in batches (logging never waits for the output).
//! - [`server`]: accept loop, TLS, HTTP/1.1 + HTTP/2, graceful drain; [`workers`]: the
//!   same on one single-threaded runtime per worker thread, each with its own
//!   `SO_REUSEPORT` listener (`server.workers`).
//! - [`state`]: everything built once at start-up.
//! - [`service`]: the request flow and `x-cache`; a dispatcher over one file per class of
//!   route (metadata, dependency batches, artifacts, uploads, pass-through) plus the
//!   authorization gate.
//! - [`route`]: the only reader of request URIs; [`protocol`] holds the validated names.
//! - [`auth`]: credential fingerprints and GitLab's remembered decisions; [`credentials`]
//!   moves client credentials to where GitLab reads them.
//! - [`cache`]: the metadata memory tier, the artifact memory tier, single-flight fills
//!   (within a replica, and across replicas through leases in the shared bucket), the
//!   piecewise reader of stored artifacts, and cache outcomes.
//! - [`gems`]: RubyGems formats the proxy writes itself (compact index, gemspecs, spec
//!   indexes, offline dependency answers) from the gems' own metadata, with the gems GitLab
//!   lists or, offline, the gems held as the name source; dependency answers split per gem
//!   and merged back; the gem names each project's dependency API has shown.
//! - [`integrity`]: first-copy fingerprints (SHA-256, Go `h1:`) and the changes seen since.
//! - [`freshness`]: when cached metadata stops being current (per-project moments, pushed
//!   versions awaited from GitLab).
//! - [`sendfile`]: verified chunk data sent to plain-TCP clients with `sendfile(2)`: the
//!   per-connection registry of mapped chunks and the socket writer that recognises them.
//! - [`storage`]: the artifact store (sled, or memory for tests) behind one trait, optionally
//!   as the hot tier in front of a shared S3-compatible bucket (`storage::s3`, `TieredStore`),
//!   the record of chunks verified in this process (`storage::verified`) and the verified
//!   chunks kept open and mapped for `sendfile` (`storage::mapped`).
//! - [`upstream`]: the pooled client towards GitLab (or an upstream gitlab-pkg-cache).
//! - [`metrics`]: Prometheus counters; [`clock`]: restart-proof time that follows tokio's.
//! - [`admin`]: the token-protected admin API under `/-/pkg-cache/admin/` (pins, bundles,
//!   stats, integrity, purge, verify, gc of the shared bucket), audited.
//! - [`airgap`]: `warm` from go.sum / Gemfile.lock with hash verification, and its client.
//! - [`cli`]: the client subcommands (`warm`, `export`, `import`, `admin …`), thin over the
//!   library and the admin API.
//! - [`error`]: one error type and its one status map; [`body`]: body plumbing; [`tls`].

pub mod admin;
pub mod airgap;
pub mod auth;
pub mod body;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod error;
pub mod freshness;
pub mod gems;
pub mod integrity;
pub mod metrics;
pub mod protocol;
pub mod route;
pub mod sendfile;
pub mod server;
pub mod service;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod workers;
