//! Captures tracing events of one target (for example the `audit` log) with their fields as
//! text, on the calling thread (use a current-thread runtime, as `#[tokio::test]` does).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::field::{Field, Visit};
use tracing::subscriber::DefaultGuard;
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// One event: field name → value as text (`message` included).
pub type Fields = BTreeMap<String, String>;

#[derive(Clone, Default)]
pub struct Events {
    target: &'static str,
    entries: Arc<Mutex<Vec<Fields>>>,
}

impl Events {
    /// Starts capturing events of `target` on this thread until the guard drops.
    pub fn capture(target: &'static str) -> (Events, DefaultGuard) {
        let events = Events {
            target,
            entries: Arc::default(),
        };
        let subscriber = tracing_subscriber::registry().with(events.clone());
        (events, tracing::subscriber::set_default(subscriber))
    }

    pub fn take(&self) -> Vec<Fields> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Fields>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S: Subscriber> Layer<S> for Events {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != self.target {
            return;
        }
        let mut fields = Fields::new();
        event.record(&mut Visitor(&mut fields));
        self.lock().push(fields);
    }
}

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}
