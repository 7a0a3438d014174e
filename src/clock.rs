//! Wall-clock milliseconds that advance with tokio's clock: comparable across restarts, and
//! movable in tests with tokio's paused time.

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    unix_ms_at_start: u64,
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        let unix_ms_at_start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Clock {
            unix_ms_at_start,
            start: Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch, as this process sees them.
    pub fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.unix_ms_at_start.saturating_add(elapsed)
    }

    /// How long ago `at_ms` was (zero for times in the future).
    pub fn age(&self, at_ms: u64) -> std::time::Duration {
        std::time::Duration::from_millis(self.now_ms().saturating_sub(at_ms))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
