//! The access-log line: each request event written by hand as one logfmt or JSON line, instead
//! of through the general formatter, because it runs once per request on the hit path.
//!
//! The line has the shape of every other log line (timestamp, level, target, message, then the
//! fields), so one parser reads both. Text values are written bare unless they hold a space,
//! a quote, `=` or a control character, in which case they are quoted and escaped.

use std::cell::RefCell;
use std::fmt;
use std::io::Write as _;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};

/// The target of the access event, and the only events this layer writes.
pub const TARGET: &str = "gitlab_pkg_cache::access";

/// Writes access events to `writer`, one line each.
pub struct AccessLines<W> {
    writer: W,
    json: bool,
}

impl<W> AccessLines<W> {
    pub fn new(writer: W, json: bool) -> Self {
        AccessLines { writer, json }
    }
}

thread_local! {
    /// The line being built, reused across requests on this thread.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl<S, W> Layer<S> for AccessLines<W>
where
    S: Subscriber,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        LINE.with(|line| {
            // Re-entered only if writing the line logs something itself: skip, never panic.
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            line.clear();
            render(&mut line, event, self.json, SystemTime::now());
            // The writer is the non-blocking queue: a full queue drops the line and counts it.
            let _ = self.writer.make_writer().write_all(&line);
        });
    }
}

/// One access line for `event`, ending in a newline.
fn render(line: &mut Vec<u8>, event: &Event<'_>, json: bool, now: SystemTime) {
    let timestamp = humantime::format_rfc3339_micros(now);
    let level = event.metadata().level();
    if json {
        let _ = write!(
            line,
            r#"{{"timestamp":"{timestamp}","level":"{level}","message":"request""#
        );
        event.record(&mut Fields { line, json });
        let _ = writeln!(line, r#","target":"{TARGET}"}}"#);
    } else {
        let _ = write!(line, "{timestamp} {level:>5} {TARGET}: request");
        event.record(&mut Fields { line, json });
        line.push(b'\n');
    }
}

/// Appends each field as ` key=value` (text) or `,"key":value` (JSON).
struct Fields<'a> {
    line: &'a mut Vec<u8>,
    json: bool,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        // Field names are the event's own identifiers: nothing to escape.
        if self.json {
            self.line.extend_from_slice(b",\"");
            self.line.extend_from_slice(field.name().as_bytes());
            self.line.extend_from_slice(b"\":");
        } else {
            self.line.push(b' ');
            self.line.extend_from_slice(field.name().as_bytes());
            self.line.push(b'=');
        }
    }

    fn integer(&mut self, value: impl itoa::Integer) {
        self.line
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn text(&mut self, value: &str) {
        if self.json {
            let _ = serde_json::to_writer(&mut *self.line, value);
        } else if value.is_empty()
            || value
                .bytes()
                .any(|b| b <= b' ' || b == b'"' || b == b'=' || b == b'\\' || b == 0x7f)
        {
            let _ = write!(self.line, "{value:?}");
        } else {
            self.line.extend_from_slice(value.as_bytes());
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            return;
        }
        self.key(field);
        self.text(value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.integer(value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.integer(value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            self.line
                .extend_from_slice(ryu::Buffer::new().format_finite(value).as_bytes());
        } else if self.json {
            self.line.extend_from_slice(b"null");
        } else {
            let _ = write!(self.line, "{value}");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // The message ("request") is written with the line's head.
        if field.name() == "message" {
            return;
        }
        self.key(field);
        let rendered = format!("{value:?}");
        self.text(&rendered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Collects what the layer writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut out) = self.0.lock() {
                out.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Sink {
        type Writer = Sink;
        fn make_writer(&'w self) -> Sink {
            self.clone()
        }
    }

    fn lines(json: bool, emit: impl FnOnce()) -> String {
        let sink = Sink::default();
        let subscriber = tracing_subscriber::registry().with(AccessLines::new(sink.clone(), json));
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = sink.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_default()
    }

    fn sample() {
        let upstream_ms: Option<f64> = None;
        tracing::info!(
            target: "gitlab_pkg_cache::access",
            method = "GET",
            route = "go_info",
            path = "/api/v4/projects/1/packages/go/x/@v/v1.0.0.info",
            status = 200u16,
            cache = "hit",
            upstream_ms,
            bytes = 42u64,
            complete = true,
            duration_ms = 0.25f64,
            "request"
        );
    }

    #[test]
    fn text_lines_are_logfmt_after_the_usual_head() {
        let out = lines(false, sample);
        let (head, fields) = out.split_once(": request ").unwrap_or(("", ""));
        assert!(head.ends_with("  INFO gitlab_pkg_cache::access"), "{out}");
        assert_eq!(
            fields,
            "method=GET route=go_info path=/api/v4/projects/1/packages/go/x/@v/v1.0.0.info \
             status=200 cache=hit bytes=42 complete=true duration_ms=0.25\n"
        );
    }

    #[test]
    fn json_lines_parse_with_every_field() {
        let out = lines(true, sample);
        let value: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap_or_default();
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["message"], "request");
        assert_eq!(value["target"], TARGET);
        assert_eq!(value["route"], "go_info");
        assert_eq!(value["status"], 200);
        assert_eq!(value["bytes"], 42);
        assert_eq!(value["complete"], true);
        assert_eq!(value["duration_ms"], 0.25);
        assert!(value.get("upstream_ms").is_none(), "{out}");
        assert!(value["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn odd_values_are_quoted_and_escaped() {
        let out = lines(false, || {
            tracing::info!(
                target: "gitlab_pkg_cache::access",
                path = "/a b\"c=d\n",
                "request"
            )
        });
        assert!(out.contains(r#" path="/a b\"c=d\n""#), "{out}");
        assert_eq!(out.lines().count(), 1);
        let json = lines(
            true,
            || tracing::info!(target: "gitlab_pkg_cache::access", path = "/a\"\n", "request"),
        );
        let value: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap_or_default();
        assert_eq!(value["path"], "/a\"\n");
    }
}
