//! Single flight for metadata misses: while one request for a key is at GitLab, the others
//! for the same key wait for its answer instead of asking GitLab too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

type InFlight = Arc<Mutex<HashMap<String, watch::Receiver<()>>>>;

/// Keys with a GitLab request under way.
#[derive(Clone, Default)]
pub struct Flights {
    inflight: InFlight,
}

/// How a request takes part in the flight for its key.
pub enum Flight {
    /// This request asks GitLab; the others wait until the guard drops.
    Leader(FlightGuard),
    /// Another request is asking GitLab: wait with [`Waiter::landed`], then look again.
    Waiter(Waiter),
}

pub struct FlightGuard {
    key: String,
    inflight: InFlight,
    // Dropping the sender wakes every waiter.
    _done: watch::Sender<()>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

pub struct Waiter(watch::Receiver<()>);

impl Waiter {
    /// Completes when the leader is done, whatever its outcome.
    pub async fn landed(mut self) {
        while self.0.changed().await.is_ok() {}
    }
}

impl Flights {
    pub fn join(&self, key: &str) -> Flight {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = inflight.get(key) {
            return Flight::Waiter(Waiter(rx.clone()));
        }
        let (tx, rx) = watch::channel(());
        inflight.insert(key.to_owned(), rx);
        Flight::Leader(FlightGuard {
            key: key.to_owned(),
            inflight: self.inflight.clone(),
            _done: tx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_when_the_leader_lands() {
        let flights = Flights::default();
        let Flight::Leader(guard) = flights.join("k") else {
            panic!("the first request leads");
        };
        let Flight::Waiter(waiter) = flights.join("k") else {
            panic!("the second request waits");
        };
        let waiting = tokio::spawn(waiter.landed());
        drop(guard);
        waiting.await.unwrap();
        assert!(
            matches!(flights.join("k"), Flight::Leader(_)),
            "the key is free again"
        );
    }
}
