//! One typed configuration tree, layered defaults < TOML file < environment < command-line flags.
//!
//! Environment variables and flags are both read by clap (every flag names its
//! `GITLAB_PKG_CACHE_*` variable, and clap lets a flag win over its variable); figment then
//! lays those values over the TOML file, so there is exactly one merge and one parser per
//! setting: a duration or size given on the command line goes through the same serde
//! deserializer as the same setting in the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Settings that are plain counts (everything else is text: durations, sizes, paths).
const COUNT_KEYS: [&str; 5] = [
    "upstream.max_redirects",
    "upstream.pool_max_idle",
    "upstream.failure_threshold",
    "log.queue_lines",
    "integrity.recheck",
];

/// Settings that are switches (true or false).
const BOOL_KEYS: [&str; 3] = ["offline.enabled", "store.s3.path_style", "upstream.chained"];

/// Prefix of every environment variable the proxy reads.
pub const ENV_PREFIX: &str = "GITLAB_PKG_CACHE_";

/// The whole configuration, validated.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// Directory for the artifact store and the proxy's secret key.
    pub data_dir: PathBuf,
    /// File holding the 32-byte key credentials are fingerprinted with. Unset: a key
    /// generated under the data directory. Replicas sharing a bucket should share this key
    /// (a mounted secret) so a fingerprint means the same caller on each of them.
    pub credential_key_file: Option<PathBuf>,
    pub upstream: UpstreamConfig,
    pub tls: TlsConfig,
    pub server: ServerConfig,
    pub cache: CacheConfig,
    pub store: StoreConfig,
    pub integrity: IntegrityConfig,
    pub log: LogConfig,
    /// File holding the admin API token; the admin API is off without it.
    pub admin_token_file: Option<PathBuf>,
    pub offline: OfflineConfig,
}

/// Offline mode: GitLab is never contacted; what is held is served by an explicit policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OfflineConfig {
    pub enabled: bool,
    pub access: crate::airgap::offline::OfflineAccess,
    /// For `access = "tokens"`: lines of `<sha256 hex of a token> <project>…`.
    pub tokens_file: Option<PathBuf>,
}

/// The GitLab instance behind the proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL of GitLab, e.g. `https://gitlab.example.com` (a relative URL root is kept).
    pub url: Option<UpstreamUrl>,
    /// Extra PEM file of CA certificates trusted for GitLab (in-house CAs), on top of the
    /// webpki and system roots.
    pub ca_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for GitLab to answer with response headers.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Longest silence allowed between two pieces of a response body.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Redirects followed for downloads (GitLab sends gems to object storage with a 302).
    pub max_redirects: u8,
    /// Idle pooled connections kept per host.
    pub pool_max_idle: usize,
    /// Consecutive failures (unreachable, timeout, 502/503/504) after which GitLab is marked
    /// down: callers then get stale answers at once instead of waiting for timeouts.
    pub failure_threshold: u32,
    /// How long GitLab stays marked down before one probe request may try it again.
    #[serde(with = "humantime_serde")]
    pub down_backoff: Duration,
    /// The upstream is another gitlab-pkg-cache (office → regional → GitLab): clients'
    /// credentials go to it exactly as they were sent, and it rewrites them for GitLab, so
    /// it knows each caller by the same credential the client presented.
    pub chained: bool,
}

/// TLS for the proxy's own listener; both files or neither.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Limits of the proxy's own listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Time a client has to send its request headers (and finish a TLS handshake).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request body accepted (gem uploads); GitLab's own default limit is 3 GB.
    pub max_upload_bytes: ByteSize,
    /// How long in-flight requests may run after SIGTERM/SIGINT before they are cut.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How connections are served: one shared multi-threaded runtime, or N threads each
    /// with a runtime and a listener of its own (see `crate::workers`).
    pub workers: Workers,
}

/// `server.workers`: `shared` (one multi-threaded runtime; every thread serves every
/// connection), a count N (N threads, each accepting on its own `SO_REUSEPORT` listener and
/// serving those connections on that thread only), or `auto` (one such thread per CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "WorkersValue", into = "String")]
pub enum Workers {
    Shared,
    #[default]
    Auto,
    Count(std::num::NonZeroUsize),
}

/// What a TOML file, a flag or a variable may hold for `server.workers`.
#[derive(Deserialize)]
#[serde(untagged)]
enum WorkersValue {
    Count(u64),
    Text(String),
}

impl Workers {
    /// Threads with a listener each, or `None` for the shared runtime.
    pub fn threads(self) -> Option<usize> {
        match self {
            Workers::Shared => None,
            Workers::Auto => Some(
                std::thread::available_parallelism()
                    .map(std::num::NonZeroUsize::get)
                    .unwrap_or(1),
            ),
            Workers::Count(n) => Some(n.get()),
        }
    }
}

impl TryFrom<WorkersValue> for Workers {
    type Error = String;

    fn try_from(value: WorkersValue) -> Result<Self, Self::Error> {
        let count = match value {
            WorkersValue::Text(text) => match text.trim() {
                "shared" => return Ok(Workers::Shared),
                "auto" => return Ok(Workers::Auto),
                other => other.parse::<u64>().map_err(|_| {
                    format!("server.workers: expected shared, auto or a count, got {other:?}")
                })?,
            },
            WorkersValue::Count(count) => count,
        };
        usize::try_from(count)
            .ok()
            .filter(|&n| n <= 1024)
            .and_then(std::num::NonZeroUsize::new)
            .map(Workers::Count)
            .ok_or_else(|| format!("server.workers: a count from 1 to 1024, got {count}"))
    }
}

impl From<Workers> for String {
    fn from(workers: Workers) -> String {
        match workers {
            Workers::Shared => "shared".to_owned(),
            Workers::Auto => "auto".to_owned(),
            Workers::Count(n) => n.to_string(),
        }
    }
}

/// Freshness and size of the in-memory tier and of authorization decisions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// How long `@v/list`, dependency answers and spec indexes are served without asking GitLab.
    #[serde(with = "humantime_serde")]
    pub metadata_ttl: Duration,
    /// Past the TTL and up to this age, a cached answer is served at once while one
    /// background request refreshes it; older answers wait for GitLab.
    #[serde(with = "humantime_serde")]
    pub metadata_max_stale: Duration,
    /// While GitLab is unreachable, metadata and artifacts are served to callers GitLab
    /// accepted for the project within this period (answers up to this age).
    #[serde(with = "humantime_serde")]
    pub offline_grace: Duration,
    /// How long GitLab's 404 is replayed to the same credential without asking again.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// How long GitLab's acceptance of a caller for a project is trusted: the longest a
    /// revoked credential can still read through the proxy.
    #[serde(with = "humantime_serde")]
    pub auth_ttl: Duration,
    /// A decision used within this last part of its `auth_ttl` is re-confirmed with GitLab in
    /// the background, so callers who keep coming never wait for a probe.
    #[serde(with = "humantime_serde")]
    pub auth_refresh_window: Duration,
    /// After a `gem push` through the proxy, the project's RubyGems answers are asked of
    /// GitLab again (never served from cache) until GitLab's answer shows the pushed version,
    /// for at most this long (GitLab processes uploads in the background).
    #[serde(with = "humantime_serde")]
    pub push_window: Duration,
    /// Bound of the in-memory tier (bodies plus headers).
    pub memory_max_bytes: ByteSize,
    /// Larger metadata answers are passed through without being kept in memory.
    pub memory_entry_max_bytes: ByteSize,
    /// Bound of the artifact memory tier: records of stored artifacts and the bytes of
    /// small ones; zero switches it off.
    pub artifact_memory_max_bytes: ByteSize,
    /// Artifacts up to this size are kept whole in memory (`.info`, `.mod` and
    /// `.gemspec.rz` files are, whatever this says).
    pub artifact_memory_entry_max_bytes: ByteSize,
}

/// The on-disk artifact store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Disk budget for stored artifacts; least recently used ones are evicted beyond it.
    pub max_bytes: ByteSize,
    /// Evict until at least this much space is free on the store's filesystem.
    pub min_free_bytes: ByteSize,
    /// sled's page cache.
    pub sled_cache_bytes: ByteSize,
    /// The shared S3-compatible tier behind the local store (off unless an endpoint is set).
    pub s3: S3Config,
}

/// Where the shared artifact tier lives. Credentials come from `AWS_ACCESS_KEY_ID` /
/// `AWS_SECRET_ACCESS_KEY` or from `credentials_file`, never from this file itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// `http(s)://host[:port]` of the S3 API; unset means no shared tier.
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub region: String,
    /// Prefix of every object key the proxy writes.
    pub prefix: String,
    /// Path-style URLs (`endpoint/bucket/key`), as most self-hosted S3 servers want;
    /// false for virtual-hosted style (`bucket.endpoint/key`).
    pub path_style: bool,
    /// AWS shared-credentials style file (`aws_access_key_id`, `aws_secret_access_key`);
    /// used when the AWS environment variables are not set.
    pub credentials_file: Option<PathBuf>,
    /// How long a replica's claim to fetch an artifact from GitLab holds without renewal.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Longest a replica waits for another replica's fetch before fetching itself.
    #[serde(with = "humantime_serde")]
    pub lease_wait: Duration,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            bucket: None,
            region: "us-east-1".to_owned(),
            prefix: "gitlab-pkg-cache".to_owned(),
            path_style: true,
            credentials_file: None,
            lease_ttl: Duration::from_secs(30),
            lease_wait: Duration::from_secs(60),
        }
    }
}

/// Integrity pinning (see the `integrity` module).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntegrityConfig {
    /// Re-ask GitLab in the background for one in this many cache hits of Go `.info` and
    /// `.mod` files (with the caller's credentials), to notice moved tags early; 0: never.
    pub recheck: u32,
    /// What callers get when a refill of an evicted version brings other content than its
    /// first copy: `hold` (the first copy, if its bytes were kept since eviction, else a
    /// refusal until an operator purges) or `relay` (GitLab's bytes).
    pub on_change: crate::integrity::OnChange,
    /// Share of `store.max_bytes` set aside for first copies of evicted Go versions and gems,
    /// kept so that a changed refill can be answered with them (`hold` only; 0: keep none).
    /// Unset: a tenth of `store.max_bytes`. Ignored with a shared bucket, which keeps every
    /// first copy anyway.
    pub originals_max_bytes: Option<ByteSize>,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `gitlab_pkg_cache=debug`.
    pub filter: String,
    /// Log lines queued for the writer thread; beyond it lines are dropped (and counted)
    /// rather than making requests wait for a slow log consumer.
    pub queue_lines: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("gitlab-pkg-cache-data"),
            credential_key_file: None,
            upstream: UpstreamConfig::default(),
            tls: TlsConfig::default(),
            server: ServerConfig::default(),
            cache: CacheConfig::default(),
            store: StoreConfig::default(),
            integrity: IntegrityConfig::default(),
            log: LogConfig::default(),
            admin_token_file: None,
            offline: OfflineConfig::default(),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(30),
            max_redirects: 5,
            pool_max_idle: 32,
            failure_threshold: 3,
            down_backoff: Duration::from_secs(10),
            chained: false,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_read_timeout: Duration::from_secs(10),
            max_upload_bytes: ByteSize::gib(3),
            shutdown_grace: Duration::from_secs(30),
            workers: Workers::Auto,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            metadata_ttl: Duration::from_secs(30),
            metadata_max_stale: Duration::from_secs(600),
            offline_grace: Duration::from_secs(7 * 24 * 3600),
            negative_ttl: Duration::from_secs(30),
            auth_ttl: Duration::from_secs(30),
            auth_refresh_window: Duration::from_secs(10),
            push_window: Duration::from_secs(600),
            memory_max_bytes: ByteSize::mib(256),
            memory_entry_max_bytes: ByteSize::mib(16),
            artifact_memory_max_bytes: ByteSize::mib(64),
            artifact_memory_entry_max_bytes: ByteSize::kib(256),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_bytes: ByteSize::gib(20),
            min_free_bytes: ByteSize::gib(1),
            sled_cache_bytes: ByteSize::mib(64),
            s3: S3Config::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".to_owned(),
            queue_lines: 65_536,
        }
    }
}

/// GitLab's base URL: `http` or `https`, a host, an optional path prefix, nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UpstreamUrl {
    uri: http::Uri,
}

impl UpstreamUrl {
    pub fn scheme(&self) -> &str {
        self.uri.scheme_str().unwrap_or("http")
    }

    pub fn authority(&self) -> &http::uri::Authority {
        // Validated in `TryFrom`: an upstream URL always has an authority.
        self.uri
            .authority()
            .unwrap_or_else(|| unreachable!("validated upstream URL has an authority"))
    }

    /// The relative URL root (`""` or `/gitlab`), without a trailing slash.
    pub fn path_prefix(&self) -> &str {
        self.uri.path().trim_end_matches('/')
    }

    /// The full URL of `path_and_query` (which starts with `/`) on GitLab.
    pub fn join(&self, path_and_query: &str) -> Result<http::Uri, http::Error> {
        http::Uri::builder()
            .scheme(self.scheme())
            .authority(self.authority().as_str())
            .path_and_query(format!("{}{}", self.path_prefix(), path_and_query))
            .build()
    }
}

impl TryFrom<String> for UpstreamUrl {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let uri: http::Uri = value
            .parse()
            .map_err(|e| format!("the upstream URL is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err("the upstream URL must start with http:// or https://".to_owned()),
        }
        let Some(authority) = uri.authority() else {
            return Err("the upstream URL has no host".to_owned());
        };
        if authority.as_str().contains('@') {
            // Credentials in the URL would be used for every caller: GitLab must see the
            // caller's own credentials, so this is refused outright.
            return Err("upstream URL must not contain credentials".to_owned());
        }
        if uri.query().is_some() {
            return Err("the upstream URL must not have a query".to_owned());
        }
        Ok(UpstreamUrl { uri })
    }
}

impl From<UpstreamUrl> for String {
    fn from(value: UpstreamUrl) -> Self {
        value.uri.to_string().trim_end_matches('/').to_owned()
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("{}", describe(.0))]
    Figment(#[from] Box<figment::Error>),
}

/// One line per problem, naming the setting as the TOML file spells it, without the
/// source-code locations figment adds.
fn describe(error: &figment::Error) -> String {
    let lines: Vec<String> = error
        .clone()
        .into_iter()
        .map(|e| {
            let path: Vec<&str> = e
                .path
                .iter()
                .map(String::as_str)
                .filter(|p| *p != "global" && *p != "default")
                .collect();
            let key = path.join(".");
            match (path.is_empty(), origin_of(&key)) {
                (true, _) => e.kind.to_string(),
                (false, Some(origin)) => format!("setting {key} ({origin}): {}", e.kind),
                (false, None) => format!("setting {key}: {}", e.kind),
            }
        })
        .collect();
    lines.join("; ")
}

impl Config {
    /// Layers the file named by `--config` (if any) under the environment and flags.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = &overrides.config {
            if !file.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        for (key, value) in overrides.pairs() {
            // Counts come in as text from flags and the environment; the TOML file and the
            // defaults hold them as numbers, so they are handed over as numbers too.
            if BOOL_KEYS.contains(&key) {
                let switch = value.parse::<bool>().map_err(|_| {
                    ConfigError::Invalid(format!("setting {key}: expected true or false"))
                })?;
                figment = figment.merge(Serialized::global(key, switch));
                continue;
            }
            figment = match value.parse::<u64>() {
                Ok(number) if COUNT_KEYS.contains(&key) => {
                    figment.merge(Serialized::global(key, number))
                }
                _ => figment.merge(Serialized::global(key, value)),
            };
        }
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document on top of the defaults (used by tests and `config check`).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.upstream.url.is_none() {
            return Err(ConfigError::Invalid(
                "no upstream: set --upstream, GITLAB_PKG_CACHE_UPSTREAM or upstream.url".to_owned(),
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(ConfigError::Invalid(
                "tls.cert_file and tls.key_file must be given together".to_owned(),
            ));
        }
        if self.cache.metadata_max_stale < self.cache.metadata_ttl {
            return Err(ConfigError::Invalid(
                "cache.metadata_max_stale must be at least cache.metadata_ttl".to_owned(),
            ));
        }
        if self.log.queue_lines == 0 {
            return Err(ConfigError::Invalid(
                "log.queue_lines must be at least 1".to_owned(),
            ));
        }
        if self.cache.auth_refresh_window > self.cache.auth_ttl {
            return Err(ConfigError::Invalid(
                "cache.auth_refresh_window must not exceed cache.auth_ttl".to_owned(),
            ));
        }
        if self.upstream.failure_threshold == 0 {
            return Err(ConfigError::Invalid(
                "upstream.failure_threshold must be at least 1".to_owned(),
            ));
        }
        if let Some(endpoint) = &self.store.s3.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(ConfigError::Invalid(
                    "store.s3.endpoint must start with http:// or https://".to_owned(),
                ));
            }
            if endpoint.contains('@') {
                return Err(ConfigError::Invalid(
                    "store.s3.endpoint must not contain credentials".to_owned(),
                ));
            }
            if self.store.s3.bucket.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::Invalid(
                    "store.s3.endpoint is set but store.s3.bucket is not".to_owned(),
                ));
            }
        }
        if self
            .integrity
            .originals_max_bytes
            .is_some_and(|max| max >= self.store.max_bytes && max.as_u64() > 0)
        {
            return Err(ConfigError::Invalid(
                "integrity.originals_max_bytes must be less than store.max_bytes (it is a share of it)"
                    .to_owned(),
            ));
        }
        if self.cache.memory_entry_max_bytes > self.cache.memory_max_bytes {
            return Err(ConfigError::Invalid(
                "cache.memory_entry_max_bytes exceeds cache.memory_max_bytes".to_owned(),
            ));
        }
        Ok(())
    }

    /// The upstream URL; `validate` guarantees it is set.
    pub fn upstream_url(&self) -> &UpstreamUrl {
        self.upstream
            .url
            .as_ref()
            .unwrap_or_else(|| unreachable!("validated config has an upstream URL"))
    }

    /// Where the artifact store lives.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// The store's eviction budget.
    pub fn eviction_policy(&self) -> crate::storage::EvictionPolicy {
        crate::storage::EvictionPolicy {
            max_bytes: Some(self.store.max_bytes.as_u64()),
            min_free_bytes: Some(self.store.min_free_bytes.as_u64()).filter(|&b| b > 0),
            originals: Some(crate::storage::OriginalsPolicy {
                max_bytes: self.originals_max_bytes(),
                applies_to: crate::integrity::keeps_original,
            })
            .filter(|originals| originals.max_bytes > 0),
        }
    }

    /// Bytes of the store set aside for first copies of evicted versions (0: none kept).
    pub fn originals_max_bytes(&self) -> u64 {
        let holds = self.integrity.on_change == crate::integrity::OnChange::Hold;
        if !holds || self.store.s3.endpoint.is_some() {
            return 0;
        }
        match self.integrity.originals_max_bytes {
            Some(max) => max.as_u64(),
            None => self.store.max_bytes.as_u64() / 10,
        }
    }

    /// Where the proxy keeps the key it fingerprints credentials with.
    pub fn key_path(&self) -> PathBuf {
        self.credential_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("credential-hmac.key"))
    }

    /// A configuration for tests: loopback listener, the given upstream and data directory.
    pub fn for_tests(upstream: &str, data_dir: &Path) -> Result<Config, ConfigError> {
        let url = UpstreamUrl::try_from(upstream.to_owned()).map_err(ConfigError::Invalid)?;
        let config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.to_owned(),
            upstream: UpstreamConfig {
                url: Some(url),
                connect_timeout: Duration::from_secs(2),
                response_timeout: Duration::from_secs(10),
                body_idle_timeout: Duration::from_secs(5),
                ..UpstreamConfig::default()
            },
            store: StoreConfig {
                // Tests set their own budgets; the free space of the machine must not matter.
                min_free_bytes: ByteSize::b(0),
                sled_cache_bytes: ByteSize::mib(8),
                ..StoreConfig::default()
            },
            ..Config::default()
        };
        config.validate()?;
        Ok(config)
    }
}

/// Command line of the `gitlab-pkg-cache` binary.
#[derive(Debug, Parser)]
#[command(name = "gitlab-pkg-cache", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Serve,
    /// Print the effective configuration as TOML and exit.
    Config,
    /// Fetch and verify what go.sum / Gemfile.lock files need, through a running proxy.
    Warm(crate::cli::warm::WarmArgs),
    /// Write a bundle of what a running proxy holds (for carrying across an air gap).
    Export(crate::cli::bundle::ExportArgs),
    /// Verify a bundle and load it into a running proxy (pinned).
    Import(crate::cli::bundle::ImportArgs),
    /// Create an Ed25519 key pair for signing bundles.
    Keygen(crate::cli::bundle::KeygenArgs),
    /// Operator calls to a running proxy: stats, integrity, purge, verify.
    Admin(crate::cli::admin::AdminArgs),
}

/// Every setting that can come from a flag or its environment variable.
///
/// Values stay strings here: they are handed to the same deserializer as the TOML file.
#[derive(Debug, Default, Args)]
pub struct Overrides {
    /// TOML configuration file (lowest precedence, under environment and flags).
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_LISTEN",
        value_name = "ADDR"
    )]
    pub listen: Option<String>,
    /// GitLab base URL, e.g. https://gitlab.example.com (required).
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_UPSTREAM",
        value_name = "URL"
    )]
    pub upstream: Option<String>,
    /// Data directory (artifact store, key) [default: ./gitlab-pkg-cache-data].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_DATA_DIR",
        value_name = "DIR"
    )]
    pub data_dir: Option<String>,
    /// Extra PEM CA bundle trusted for GitLab's certificate.
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_UPSTREAM_CA_FILE",
        value_name = "FILE"
    )]
    pub upstream_ca_file: Option<String>,
    /// Connect timeout towards GitLab [default: 5s].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_UPSTREAM_CONNECT_TIMEOUT",
        value_name = "DURATION"
    )]
    pub upstream_connect_timeout: Option<String>,
    /// Time GitLab has to send response headers [default: 60s].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_UPSTREAM_RESPONSE_TIMEOUT",
        value_name = "DURATION"
    )]
    pub upstream_response_timeout: Option<String>,
    /// Longest pause inside a response body from GitLab [default: 30s].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_UPSTREAM_BODY_IDLE_TIMEOUT",
        value_name = "DURATION"
    )]
    pub upstream_body_idle_timeout: Option<String>,
    /// Redirects followed for downloads (object storage) [default: 5].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_UPSTREAM_MAX_REDIRECTS",
        value_name = "N"
    )]
    pub upstream_max_redirects: Option<String>,
    /// Idle pooled connections kept to GitLab [default: 32].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_UPSTREAM_POOL_MAX_IDLE",
        value_name = "N"
    )]
    pub upstream_pool_max_idle: Option<String>,
    /// Consecutive GitLab failures that mark it down [default: 3].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_UPSTREAM_FAILURE_THRESHOLD",
        value_name = "N"
    )]
    pub upstream_failure_threshold: Option<String>,
    /// How long GitLab stays marked down before one probe [default: 10s].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_UPSTREAM_DOWN_BACKOFF",
        value_name = "DURATION"
    )]
    pub upstream_down_backoff: Option<String>,
    /// The upstream is another gitlab-pkg-cache: pass credentials on as clients sent them
    /// (`--upstream-chained` alone means true) [default: false].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_UPSTREAM_CHAINED",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub upstream_chained: Option<String>,
    /// Certificate chain (PEM) to serve HTTPS with.
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_TLS_CERT",
        value_name = "FILE"
    )]
    pub tls_cert: Option<String>,
    /// Private key (PEM) to serve HTTPS with.
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_TLS_KEY",
        value_name = "FILE"
    )]
    pub tls_key: Option<String>,
    /// Time a client has to send its request headers [default: 10s].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_HEADER_READ_TIMEOUT",
        value_name = "DURATION"
    )]
    pub header_read_timeout: Option<String>,
    /// Largest accepted upload body [default: 3 GiB].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_MAX_UPLOAD_BYTES",
        value_name = "SIZE"
    )]
    pub max_upload_bytes: Option<String>,
    /// Drain time for in-flight requests at shutdown [default: 30s].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_SHUTDOWN_GRACE",
        value_name = "DURATION"
    )]
    pub shutdown_grace: Option<String>,
    /// `auto` (a runtime and listener per CPU), a count, or `shared` [default: auto].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_SERVER_WORKERS",
        value_name = "WORKERS"
    )]
    pub server_workers: Option<String>,
    /// Freshness of cached lists, dependency answers and spec indexes [default: 30s].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_METADATA_TTL",
        value_name = "DURATION"
    )]
    pub metadata_ttl: Option<String>,
    /// Age up to which a cached list is served while it is refreshed in the background [default: 10m].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_METADATA_MAX_STALE",
        value_name = "DURATION"
    )]
    pub metadata_max_stale: Option<String>,
    /// How long cached answers keep serving known callers while GitLab is down [default: 7days].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_OFFLINE_GRACE",
        value_name = "DURATION"
    )]
    pub offline_grace: Option<String>,
    /// How long GitLab's 404 is replayed to the same credential [default: 30s].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_NEGATIVE_TTL",
        value_name = "DURATION"
    )]
    pub negative_ttl: Option<String>,
    /// How long GitLab's acceptance of a caller for a project is trusted [default: 30s].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_AUTH_TTL",
        value_name = "DURATION"
    )]
    pub auth_ttl: Option<String>,
    /// Last part of a decision's life in which a use re-confirms it in the background [default: 10s].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_AUTH_REFRESH_WINDOW",
        value_name = "DURATION"
    )]
    pub auth_refresh_window: Option<String>,
    /// How long after a gem push its project's RubyGems answers wait for GitLab to show it [default: 10m].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_PUSH_WINDOW",
        value_name = "DURATION"
    )]
    pub push_window: Option<String>,
    /// Memory bound of the metadata tier [default: 256 MiB].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_MEMORY_MAX_BYTES",
        value_name = "SIZE"
    )]
    pub memory_max_bytes: Option<String>,
    /// Metadata answers larger than this pass through uncached [default: 16 MiB].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_MEMORY_ENTRY_MAX_BYTES",
        value_name = "SIZE"
    )]
    pub memory_entry_max_bytes: Option<String>,
    /// Memory bound of the artifact memory tier; 0 switches it off [default: 64 MiB].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_ARTIFACT_MEMORY_MAX_BYTES",
        value_name = "SIZE"
    )]
    pub artifact_memory_max_bytes: Option<String>,
    /// Artifacts up to this size are served from memory [default: 256 KiB].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_ARTIFACT_MEMORY_ENTRY_MAX_BYTES",
        value_name = "SIZE"
    )]
    pub artifact_memory_entry_max_bytes: Option<String>,
    /// sled's page cache [default: 64 MiB].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_SLED_CACHE_BYTES",
        value_name = "SIZE"
    )]
    pub sled_cache_bytes: Option<String>,
    /// Disk budget for stored artifacts [default: 20 GiB].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_CACHE_MAX_BYTES",
        value_name = "SIZE"
    )]
    pub cache_max_bytes: Option<String>,
    /// Keep at least this much disk free, evicting artifacts [default: 1 GiB].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_MIN_FREE_BYTES",
        value_name = "SIZE"
    )]
    pub min_free_bytes: Option<String>,
    /// S3 API endpoint of the shared artifact tier, e.g. http://minio:9000 (unset: none).
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_S3_ENDPOINT",
        value_name = "URL"
    )]
    pub s3_endpoint: Option<String>,
    /// Bucket of the shared tier.
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_S3_BUCKET",
        value_name = "NAME"
    )]
    pub s3_bucket: Option<String>,
    /// Region the bucket's requests are signed for [default: us-east-1].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_S3_REGION",
        value_name = "REGION"
    )]
    pub s3_region: Option<String>,
    /// Prefix of the proxy's object keys [default: gitlab-pkg-cache].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_S3_PREFIX",
        value_name = "PREFIX"
    )]
    pub s3_prefix: Option<String>,
    /// Path-style bucket URLs (true) or virtual-hosted style (false) [default: true].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_S3_PATH_STYLE",
        value_name = "BOOL"
    )]
    pub s3_path_style: Option<String>,
    /// AWS-style credentials file for the bucket, if AWS_ACCESS_KEY_ID is not set.
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_S3_CREDENTIALS_FILE",
        value_name = "FILE"
    )]
    pub s3_credentials_file: Option<String>,
    /// How long a replica's claim to fetch an artifact holds unrenewed [default: 30s].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_S3_LEASE_TTL",
        value_name = "DURATION"
    )]
    pub s3_lease_ttl: Option<String>,
    /// Longest wait for another replica's fetch before fetching anyway [default: 60s].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_S3_LEASE_WAIT",
        value_name = "DURATION"
    )]
    pub s3_lease_wait: Option<String>,
    /// File with the 32-byte credential fingerprint key (share it between replicas).
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_CREDENTIAL_KEY_FILE",
        value_name = "FILE"
    )]
    pub credential_key_file: Option<String>,
    /// Log format.
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_LOG_FORMAT",
        value_enum
    )]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `gitlab_pkg_cache=debug` [default: info].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_LOG",
        value_name = "FILTER"
    )]
    pub log: Option<String>,
    /// File holding the admin API token (serve: enables the API; clients: sends it).
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_ADMIN_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub admin_token_file: Option<String>,
    /// Offline mode: never contact GitLab; serve what is held (`--offline` alone means true).
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_OFFLINE",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub offline: Option<String>,
    /// Who may read offline [default: grace].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_OFFLINE_ACCESS",
        value_enum
    )]
    pub offline_access: Option<crate::airgap::offline::OfflineAccess>,
    /// Token hashes and the projects each may read offline (with --offline-access tokens).
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_OFFLINE_TOKENS_FILE",
        value_name = "FILE"
    )]
    pub offline_tokens_file: Option<String>,
    /// Log lines queued before new ones are dropped [default: 65536].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_LOG_QUEUE_LINES",
        value_name = "N"
    )]
    pub log_queue_lines: Option<String>,
    /// Re-ask GitLab for one in N hits of Go .info/.mod to notice moved tags; 0: never [default: 0].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_INTEGRITY_RECHECK",
        value_name = "N"
    )]
    pub integrity_recheck: Option<String>,
    /// Refills whose content changed since the first copy: hold them back or relay them [default: hold].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_INTEGRITY_ON_CHANGE",
        value_enum
    )]
    pub integrity_on_change: Option<crate::integrity::OnChange>,
    /// Share of the store kept for first copies of evicted versions [default: a tenth of store.max_bytes].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        env = "GITLAB_PKG_CACHE_INTEGRITY_ORIGINALS_MAX_BYTES",
        value_name = "SIZE"
    )]
    pub integrity_originals_max_bytes: Option<String>,
}

impl Overrides {
    /// The settings given, as `(dotted key, value)` pairs for figment.
    fn pairs(&self) -> Vec<(&'static str, String)> {
        self.table()
            .into_iter()
            .filter_map(|(key, _, value)| value.map(|v| (key, v)))
            .collect()
    }

    /// Every setting a flag can carry: (TOML key, clap argument id, value given).
    fn table(&self) -> Vec<(&'static str, &'static str, Option<String>)> {
        macro_rules! settings {
            ($($key:literal => $field:ident),* $(,)?) => {
                vec![$(($key, stringify!($field), self.$field.clone())),*]
            };
        }
        let mut table = settings![
            "listen" => listen,
            "upstream.url" => upstream,
            "data_dir" => data_dir,
            "upstream.ca_file" => upstream_ca_file,
            "upstream.connect_timeout" => upstream_connect_timeout,
            "upstream.response_timeout" => upstream_response_timeout,
            "upstream.body_idle_timeout" => upstream_body_idle_timeout,
            "upstream.max_redirects" => upstream_max_redirects,
            "upstream.pool_max_idle" => upstream_pool_max_idle,
            "upstream.failure_threshold" => upstream_failure_threshold,
            "upstream.down_backoff" => upstream_down_backoff,
            "upstream.chained" => upstream_chained,
            "tls.cert_file" => tls_cert,
            "tls.key_file" => tls_key,
            "server.header_read_timeout" => header_read_timeout,
            "server.max_upload_bytes" => max_upload_bytes,
            "server.shutdown_grace" => shutdown_grace,
            "server.workers" => server_workers,
            "cache.metadata_ttl" => metadata_ttl,
            "cache.metadata_max_stale" => metadata_max_stale,
            "cache.offline_grace" => offline_grace,
            "cache.negative_ttl" => negative_ttl,
            "cache.auth_ttl" => auth_ttl,
            "cache.auth_refresh_window" => auth_refresh_window,
            "cache.push_window" => push_window,
            "cache.memory_max_bytes" => memory_max_bytes,
            "cache.memory_entry_max_bytes" => memory_entry_max_bytes,
            "cache.artifact_memory_max_bytes" => artifact_memory_max_bytes,
            "cache.artifact_memory_entry_max_bytes" => artifact_memory_entry_max_bytes,
            "store.sled_cache_bytes" => sled_cache_bytes,
            "store.max_bytes" => cache_max_bytes,
            "store.min_free_bytes" => min_free_bytes,
            "store.s3.endpoint" => s3_endpoint,
            "store.s3.bucket" => s3_bucket,
            "store.s3.region" => s3_region,
            "store.s3.prefix" => s3_prefix,
            "store.s3.path_style" => s3_path_style,
            "store.s3.credentials_file" => s3_credentials_file,
            "store.s3.lease_ttl" => s3_lease_ttl,
            "store.s3.lease_wait" => s3_lease_wait,
            "credential_key_file" => credential_key_file,
            "log.filter" => log,
            "admin_token_file" => admin_token_file,
            "offline.enabled" => offline,
            "offline.tokens_file" => offline_tokens_file,
            "log.queue_lines" => log_queue_lines,
            "integrity.recheck" => integrity_recheck,
            "integrity.originals_max_bytes" => integrity_originals_max_bytes,
        ];
        let format = self.log_format.map(|format| match format {
            LogFormat::Text => "text".to_owned(),
            LogFormat::Json => "json".to_owned(),
        });
        table.push(("log.format", "log_format", format));
        let access = self.offline_access.map(|access| {
            match access {
                crate::airgap::offline::OfflineAccess::Grace => "grace",
                crate::airgap::offline::OfflineAccess::Tokens => "tokens",
                crate::airgap::offline::OfflineAccess::Open => "open",
            }
            .to_owned()
        });
        table.push(("offline.access", "offline_access", access));
        let on_change = self.integrity_on_change.map(|on_change| {
            match on_change {
                crate::integrity::OnChange::Hold => "hold",
                crate::integrity::OnChange::Relay => "relay",
            }
            .to_owned()
        });
        table.push(("integrity.on_change", "integrity_on_change", on_change));
        table
    }
}

/// The flag and environment variable that set a TOML key, as `--flag / VARIABLE`.
fn origin_of(key: &str) -> Option<String> {
    use clap::CommandFactory;
    let (_, id, _) = Overrides::default()
        .table()
        .into_iter()
        .find(|(k, _, _)| *k == key)?;
    let command = Cli::command();
    let arg = command.get_arguments().find(|a| a.get_id() == id)?;
    let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
    Some(format!("--{} / {env}", arg.get_long()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Overrides {
        let mut argv = vec!["gitlab-pkg-cache"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.overrides,
            Err(e) => panic!("arguments rejected: {e}"),
        }
    }

    #[test]
    fn workers_are_shared_auto_or_a_count() {
        let load = |args: &[&str]| {
            let mut all = vec!["--upstream", "https://gitlab.example"];
            all.extend_from_slice(args);
            Config::load(&parse(&all)).map(|c| c.server.workers)
        };
        assert_eq!(load(&[]).unwrap(), Workers::Auto);
        assert_eq!(
            load(&["--server-workers", "shared"]).unwrap(),
            Workers::Shared
        );
        let two = load(&["--server-workers", "2"]).unwrap();
        assert_eq!(two.threads(), Some(2));
        assert!(Workers::Auto.threads().is_some_and(|n| n >= 1));
        assert_eq!(Workers::Shared.threads(), None);
        for bad in ["0", "many", "100000"] {
            let err = load(&["--server-workers", bad]).unwrap_err().to_string();
            assert!(err.contains("server.workers"), "{bad}: {err}");
        }
        let file = Config::from_toml(
            "[upstream]\nurl = \"https://gitlab.example\"\n[server]\nworkers = 3\n",
        )
        .unwrap();
        assert_eq!(file.server.workers.threads(), Some(3));
        // Printed as the file would hold it, and read back.
        let printed = toml::to_string(&file).unwrap();
        assert!(printed.contains("workers = \"3\""), "{printed}");
        assert_eq!(
            Config::from_toml(&printed).unwrap().server.workers,
            file.server.workers
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\n[upstream]\nurl = \"https://file.example\"\n[cache]\nmetadata_ttl = \"2m\"\n",
        )
        .unwrap();
        let overrides = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--upstream",
            "https://flag.example/gitlab/",
            "--auth-ttl",
            "90s",
            "--max-upload-bytes",
            "10 MiB",
            "--upstream-failure-threshold",
            "7",
            "--upstream-down-backoff",
            "2m",
        ]);
        let config = Config::load(&overrides).unwrap();
        assert_eq!(
            config.listen.port(),
            9000,
            "file value kept where no flag is given"
        );
        assert_eq!(config.cache.metadata_ttl, Duration::from_secs(120));
        assert_eq!(config.cache.auth_ttl, Duration::from_secs(90));
        assert_eq!(config.server.max_upload_bytes, ByteSize::mib(10));
        assert_eq!(config.upstream.failure_threshold, 7);
        assert_eq!(config.upstream.down_backoff, Duration::from_secs(120));
        let url = config.upstream_url();
        assert_eq!(url.authority().as_str(), "flag.example");
        assert_eq!(url.path_prefix(), "/gitlab");
        assert_eq!(
            url.join("/api/v4/projects/a%2Fb/packages/go/x/@v/list")
                .unwrap()
                .to_string(),
            "https://flag.example/gitlab/api/v4/projects/a%2Fb/packages/go/x/@v/list"
        );
    }

    #[test]
    fn bad_values_are_reported() {
        for (toml, needle) in [
            ("", "no upstream"),
            ("[upstream]\nurl = \"ftp://x\"", "http:// or https://"),
            (
                "[upstream]\nurl = \"https://user:secret@x\"",
                "must not contain credentials",
            ),
            (
                "[upstream]\nurl = \"https://x\"\n[cache]\nauth_ttl = \"soon\"",
                "auth_ttl",
            ),
            (
                "[upstream]\nurl = \"https://x\"\nlisten = \"nowhere\"",
                "listen",
            ),
            (
                "[upstream]\nurl = \"https://x\"\n[tls]\ncert_file = \"a.pem\"",
                "together",
            ),
            ("[upstream]\nurl = \"https://x\"\nunknown = 1", "unknown"),
        ] {
            let err = Config::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(needle), "{toml:?}: {err}");
            assert!(!err.contains("secret"), "secret echoed: {err}");
        }
    }

    #[test]
    fn every_flag_setting_names_its_flag_and_variable() {
        for (key, _, _) in Overrides::default().table() {
            let origin = origin_of(key).unwrap_or_else(|| panic!("{key} has no flag"));
            assert!(origin.contains(ENV_PREFIX), "{key}: {origin}");
        }
    }

    #[test]
    fn shared_tier_settings_come_from_flags_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[upstream]\nurl = \"https://gitlab.example\"\n[store.s3]\nendpoint = \"http://s3.local:9000\"\nbucket = \"from-file\"\nprefix = \"office\"\n",
        )
        .unwrap();
        let overrides = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--s3-bucket",
            "from-flag",
            "--s3-path-style",
            "false",
            "--s3-region",
            "eu-central-1",
            "--s3-lease-ttl",
            "45s",
            "--credential-key-file",
            "/run/secrets/key",
        ]);
        let config = Config::load(&overrides).unwrap();
        let s3 = &config.store.s3;
        assert_eq!(s3.endpoint.as_deref(), Some("http://s3.local:9000"));
        assert_eq!(s3.bucket.as_deref(), Some("from-flag"));
        assert_eq!(s3.prefix, "office");
        assert_eq!(s3.region, "eu-central-1");
        assert!(!s3.path_style);
        assert_eq!(s3.lease_ttl, Duration::from_secs(45));
        assert_eq!(config.key_path(), PathBuf::from("/run/secrets/key"));

        let plain = Config::from_toml("[upstream]\nurl = \"https://x\"").unwrap();
        assert_eq!(
            plain.store.s3.endpoint, None,
            "no shared tier unless asked for"
        );
        assert!(plain.store.s3.path_style);
        assert_eq!(plain.key_path(), plain.data_dir.join("credential-hmac.key"));

        for (toml, needle) in [
            ("[store.s3]\nendpoint = \"http://s3\"", "bucket"),
            (
                "[store.s3]\nendpoint = \"s3.local\"\nbucket = \"b\"",
                "http://",
            ),
            (
                "[store.s3]\nendpoint = \"http://key:secret@s3\"\nbucket = \"b\"",
                "credentials",
            ),
            ("[store.s3]\naccess_key = \"x\"", "unknown"),
        ] {
            let toml = format!("[upstream]\nurl = \"https://x\"\n{toml}");
            let err = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(err.contains(needle), "{toml:?}: {err}");
            assert!(!err.contains("secret"), "secret echoed: {err}");
        }
    }

    #[test]
    fn defaults_are_sane() {
        let config = Config::from_toml("[upstream]\nurl = \"http://127.0.0.1:1\"").unwrap();
        assert_eq!(config.listen.port(), 8080);
        assert_eq!(config.log.format, LogFormat::Text);
        assert!(config.cache.memory_entry_max_bytes <= config.cache.memory_max_bytes);
        assert_eq!(config.cache.auth_ttl, Duration::from_secs(30));
        assert!(config.cache.auth_refresh_window < config.cache.auth_ttl);
        assert_eq!(config.cache.metadata_ttl, Duration::from_secs(30));
        assert!(Config::from_toml(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[cache]\nauth_ttl = \"5s\"\nauth_refresh_window = \"6s\""
        )
        .is_err());
    }
}
