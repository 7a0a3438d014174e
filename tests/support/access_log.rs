//! Captures the proxy's access-log events (target `gitlab_pkg_cache::access`), so a test can
//! see every request a real client made to the proxy: method, path, status and `x-cache`.
//!
//! The capture is the calling thread's default subscriber, so it sees the proxy only when
//! the proxy runs on that thread: use it from a current-thread runtime (`#[tokio::test]`'s
//! default) and run blocking client commands on other threads.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::field::{Field, Visit};
use tracing::subscriber::DefaultGuard;
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

const TARGET: &str = "gitlab_pkg_cache::access";

/// One request the proxy answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub method: String,
    /// The route label (`go_zip`, `gem_spec_index`, `unrouted`, ...).
    pub route: String,
    /// The path, without the query (the proxy never logs queries).
    pub path: String,
    pub status: u16,
    /// The `x-cache` outcome: `hit`, `miss`, `bypass`, `local`, ...
    pub cache: String,
    /// Whether GitLab was asked while answering it.
    pub upstream: bool,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} {}{}",
            self.method,
            self.path,
            self.status,
            self.cache,
            if self.upstream { " (asked GitLab)" } else { "" }
        )
    }
}

/// The requests captured so far on this thread.
#[derive(Clone, Default)]
pub struct AccessLog {
    entries: Arc<Mutex<Vec<Access>>>,
}

impl AccessLog {
    /// Starts capturing on the current thread until the guard is dropped.
    pub fn capture() -> (AccessLog, DefaultGuard) {
        let log = AccessLog::default();
        let subscriber = tracing_subscriber::registry().with(Capture { log: log.clone() });
        let guard = tracing::subscriber::set_default(subscriber);
        (log, guard)
    }

    /// Everything captured so far, oldest first, leaving the log empty.
    pub fn take(&self) -> Vec<Access> {
        std::mem::take(&mut *self.lock())
    }

    pub fn snapshot(&self) -> Vec<Access> {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Access>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Capture {
    log: AccessLog,
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut access = Access::default();
        event.record(&mut Fields(&mut access));
        self.log.lock().push(access);
    }
}

struct Fields<'a>(&'a mut Access);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "route" => self.0.route = value.to_owned(),
            "cache" => self.0.cache = value.to_owned(),
            "method" => self.0.method = value.to_owned(),
            "path" => self.0.path = value.to_owned(),
            _ => {}
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "status" {
            self.0.status = u16::try_from(value).unwrap_or(u16::MAX);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "status" {
            self.0.status = u16::try_from(value).unwrap_or(u16::MAX);
        }
    }

    fn record_f64(&mut self, field: &Field, _value: f64) {
        if field.name() == "upstream_ms" {
            self.0.upstream = true;
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%` fields (method, path) arrive here, formatted with Display.
        let text = format!("{value:?}");
        self.record_str(field, &text);
    }
}
