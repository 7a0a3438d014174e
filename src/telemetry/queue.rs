//! The log queue: lines from every thread gathered in one bounded buffer that a writer thread
//! empties in batches, so that logging never waits for the output and never wakes a thread
//! per line.
//!
//! A request thread appends its line under a short lock and goes on; the writer thread wakes
//! every [`INTERVAL`] (or at once when the queue is half full) and writes everything queued
//! with one `write`. A consumer that stops reading blocks only the writer thread: the queue
//! fills to its bound, and lines beyond it are dropped and counted.

use std::io::{self, Write};
use std::mem;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the queue before the writer thread writes it out.
pub const INTERVAL: Duration = Duration::from_millis(50);
/// How long dropping the guard waits for the last lines to be written.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The producer side: cheap to clone, one per layer.
#[derive(Clone)]
pub struct LogQueue {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    dropped: AtomicU64,
    limit: usize,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    lines: usize,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a buffer of whole lines: keep using it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps the writer thread running; dropping it writes out what is queued (waiting at most a
/// second for a stalled output).
pub struct QueueGuard {
    shared: Arc<Shared>,
    finished: Option<mpsc::Receiver<()>>,
}

impl LogQueue {
    /// Starts the writer thread over `out`, queueing at most `limit` lines.
    pub fn start(out: Box<dyn Write + Send>, limit: usize) -> io::Result<(LogQueue, QueueGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            limit: limit.max(1),
        });
        let (finished_tx, finished) = mpsc::channel();
        let writer = shared.clone();
        thread::Builder::new()
            .name("gitlab-pkg-cache-log".to_owned())
            .spawn(move || {
                write_batches(&writer, out);
                let _ = finished_tx.send(());
            })?;
        let guard = QueueGuard {
            shared: shared.clone(),
            finished: Some(finished),
        };
        Ok((LogQueue { shared }, guard))
    }

    /// Queues one or more whole lines, or drops them (counted) if the queue is full.
    pub fn push(&self, line: &[u8]) {
        let shared = &self.shared;
        let mut state = shared.lock();
        if state.lines >= shared.limit {
            drop(state);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        state.buf.extend_from_slice(line);
        state.lines += 1;
        let half_full = state.lines == shared.limit.div_ceil(2);
        drop(state);
        if half_full {
            shared.wake.notify_one();
        }
    }

    /// Lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

fn write_batches(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let mut batch = Vec::new();
    loop {
        let mut state = shared.lock();
        // One interval between batches, whether lines are waiting or not (that is what makes
        // them batches), unless the queue is half full or closing.
        if !state.closed && state.lines < shared.limit.div_ceil(2) {
            state = shared
                .wake
                .wait_timeout(state, INTERVAL)
                .map(|(state, _)| state)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let closed = state.closed;
        mem::swap(&mut state.buf, &mut batch);
        state.lines = 0;
        drop(state);
        if !batch.is_empty() {
            // Nowhere to report a failing log output but the log itself: the lines are lost,
            // requests are not affected.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
            // Do not keep a burst's capacity for ever.
            batch.shrink_to(64 * 1024);
        }
        if closed && shared.lock().buf.is_empty() {
            return;
        }
    }
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(finished) = self.finished.take() {
            let _ = finished.recv_timeout(CLOSE_WAIT);
        }
    }
}

/// What a layer writes one event through.
pub struct QueueWriter<'q>(&'q LogQueue);

impl Write for QueueWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'q> MakeWriter<'q> for LogQueue {
    type Writer = QueueWriter<'q>;

    fn make_writer(&'q self) -> QueueWriter<'q> {
        QueueWriter(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An output that records what reaches it, and can be made to block.
    #[derive(Clone, Default)]
    struct Output {
        written: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicU64>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _open = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.written
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn text(output: &Output) -> String {
        let bytes = output.written.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_default()
    }

    #[test]
    fn lines_arrive_in_order_in_few_writes_and_all_by_the_guards_drop() {
        let output = Output::default();
        let (queue, guard) = LogQueue::start(Box::new(output.clone()), 10_000).expect("thread");
        for i in 0..1000 {
            queue.push(format!("line {i}\n").as_bytes());
        }
        drop(guard);
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text(&output), expected);
        assert!(output.writes.load(Ordering::Relaxed) < 100);
        assert_eq!(queue.dropped(), 0);
    }

    #[test]
    fn a_line_waits_at_most_about_one_interval() {
        let output = Output::default();
        let (queue, _guard) = LogQueue::start(Box::new(output.clone()), 100).expect("thread");
        queue.push(b"hello\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        while text(&output).is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(text(&output), "hello\n");
    }

    #[test]
    fn a_stalled_output_costs_dropped_lines_not_a_blocked_producer() {
        let output = Output::default();
        let stall = output.gate.lock().expect("gate");
        let (queue, guard) = LogQueue::start(Box::new(output.clone()), 8).expect("thread");
        // The writer takes what is queued and blocks on the output; the queue then fills.
        for i in 0..1000 {
            queue.push(format!("line {i}\n").as_bytes());
        }
        assert!(
            queue.dropped() >= 1000 - 2 * 8,
            "dropped {}",
            queue.dropped()
        );
        drop(stall);
        drop(guard);
        let written = text(&output);
        assert!(written.starts_with("line 0\n"), "{written}");
        assert!(written.lines().count() <= 16);
    }
}
