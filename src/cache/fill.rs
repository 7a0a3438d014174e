//! Single-flight fills of immutable artifacts: one GitLab fetch per key, written to the store
//! in chunks while its first caller and any number of waiters read it as it grows.
//!
//! The caller that starts a fill (the leader) gets GitLab's bytes as they arrive through a
//! small bounded channel; waiters read the chunks back from the store as the fill publishes
//! its progress, so memory stays flat however large the artifact and however many readers.
//! If the store fails mid-way, the leader still gets every byte (its request succeeds) and
//! waiters are cut. An artifact becomes visible only when its length and SHA-256 check out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use super::artifact_memory::ArtifactMemory;
use super::reader::Reader;
use crate::body::{self, Body, BoxError};
use crate::integrity::{Integrity, Verdict};
use crate::metrics::Metrics;
use crate::storage::{ArtifactMeta, Commit, EvictionPolicy, FillId, Store, StoreError};

/// Size of the chunks artifacts are stored in.
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Frames buffered between the fill and a slow leader before the fill waits for it.
const LEADER_BUFFER: usize = 16;

/// What a fill's readers need before the first byte: GitLab's headers and length.
#[derive(Debug)]
pub struct Head {
    pub fill: FillId,
    pub headers: Vec<(String, String)>,
    pub content_length: Option<u64>,
}

/// A fill's state, published to its waiters.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The leader is waiting for GitLab's answer.
    Starting,
    /// Chunks `0..written` are in the store.
    Streaming { head: Arc<Head>, written: u32 },
    /// Committed and visible.
    Done { meta: Arc<ArtifactMeta> },
    /// Broke after it started: upstream cut, integrity mismatch, or store failure.
    Failed,
    /// Complete, but GitLab's content differs from the version's first copy and is held back
    /// (see [`crate::integrity::OnChange::Hold`]): the reason, for the callers.
    Held { reason: Arc<str> },
    /// Never started: GitLab refused the leader, or the store could not begin a fill.
    NotFilled,
}

/// How a caller takes part in the fill of a key.
// One per request, matched at once: boxing the leader would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Joined {
    Leader(Leader),
    Waiter(watch::Receiver<Progress>),
}

type Inflight = Arc<Mutex<HashMap<String, watch::Receiver<Progress>>>>;

/// Fills in flight, by content key.
#[derive(Clone)]
pub struct Fills {
    store: Store,
    inflight: Inflight,
    policy: EvictionPolicy,
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    tasks: Arc<Mutex<tokio::task::JoinSet<()>>>,
    /// Checks complete fills against the first copy of their key before they are published.
    integrity: Option<Integrity>,
    /// Where committed fills leave their record (and small ones their bytes).
    memory: ArtifactMemory,
}

/// Counts a caller as waiting on another's fill for as long as it lives.
pub struct WaitingGuard(Arc<AtomicUsize>);

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Fills {
    pub fn new(store: Store, policy: EvictionPolicy, metrics: Arc<Metrics>) -> Fills {
        Fills {
            store,
            inflight: Arc::default(),
            policy,
            waiting: Arc::default(),
            metrics,
            tasks: Arc::default(),
            integrity: None,
            memory: ArtifactMemory::new(0, 0),
        }
    }

    /// Fills check their content against the first copy of their key: a fill whose content
    /// differs is served to its readers but never published (see [`crate::integrity`]).
    pub fn with_integrity(mut self, integrity: Integrity) -> Fills {
        self.integrity = Some(integrity);
        self
    }

    /// Committed fills are kept in `memory` (their record; small ones their bytes too).
    pub fn with_memory(mut self, memory: ArtifactMemory) -> Fills {
        self.memory = memory;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether changed content found at the end of a fill is held back from its callers.
    fn holds_changes(&self) -> bool {
        self.integrity
            .as_ref()
            .is_some_and(|integrity| integrity.on_change() == crate::integrity::OnChange::Hold)
    }

    /// Becomes the leader of a new fill of `key`, or a waiter on the one in flight.
    pub fn join(&self, key: &str) -> Joined {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(progress) = inflight.get(key) {
            return Joined::Waiter(progress.clone());
        }
        let (tx, rx) = watch::channel(Progress::Starting);
        inflight.insert(key.to_owned(), rx);
        Joined::Leader(Leader {
            key: key.to_owned(),
            tx: Some(tx),
            fills: self.clone(),
            keep_up_to: 0,
            copy: false,
        })
    }

    /// Marks the caller as waiting on a fill until the guard drops.
    pub fn waiting_guard(&self) -> WaitingGuard {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        WaitingGuard(self.waiting.clone())
    }

    /// Callers now waiting for a fill's first answer or following one.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// At shutdown: lets fills in flight finish for up to `within`, then stops the rest,
    /// whose artifacts never become visible.
    pub async fn drain(&self, within: std::time::Duration) {
        let mut tasks =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let finished =
            tokio::time::timeout(within, async { while tasks.join_next().await.is_some() {} })
                .await;
        if finished.is_err() {
            tracing::warn!(
                fills = tasks.len(),
                "fills cut by shutdown; nothing of them is kept"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The progress of the fill of `key` in flight here, if there is one.
    pub fn progress(&self, key: &str) -> Option<watch::Receiver<Progress>> {
        self.inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Fills in flight now (for metrics).
    pub fn in_flight(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn finish(&self, key: &str, tx: &watch::Sender<Progress>, outcome: Progress) {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if inflight
            .get(key)
            .is_some_and(|rx| rx.same_channel(&tx.subscribe()))
        {
            inflight.remove(key);
        }
        drop(inflight);
        tx.send_replace(outcome);
    }
}

/// The caller that fetches from GitLab for everyone. Dropping it without [`Leader::start`]
/// tells the waiters to fetch on their own.
pub struct Leader {
    key: String,
    tx: Option<watch::Sender<Progress>>,
    fills: Fills,
    /// Artifacts up to this size keep their bytes in the memory tier once committed.
    keep_up_to: u64,
    /// The bytes come from another tier of the store (the shared bucket), not from GitLab.
    copy: bool,
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.fills.finish(&self.key, &tx, Progress::NotFilled);
        }
    }
}

/// Why a leader could not start a fill; the body is handed back to be relayed uncached.
pub struct NotStarted<B> {
    pub error: StoreError,
    pub body: B,
}

impl Leader {
    /// Once committed, the artifact keeps its bytes in the memory tier if it is no larger
    /// than `limit` (the fill holds at most that much meanwhile).
    pub fn keep_in_memory(mut self, limit: u64) -> Leader {
        self.keep_up_to = limit;
        self
    }

    /// The bytes this fill stores come from another tier of the store (see
    /// [`crate::storage::ArtifactStore::begin_copy`]), so they are committed here only.
    pub fn copying_in(mut self) -> Leader {
        self.copy = true;
        self
    }

    /// Starts storing GitLab's 200 answer; returns the leader's own response body.
    pub async fn start<B>(
        mut self,
        headers: Vec<(String, String)>,
        content_length: Option<u64>,
        upstream: B,
    ) -> Result<Body, NotStarted<B>>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let mut task = match self.task(headers, content_length, true).await {
            Ok(task) => task,
            Err(error) => {
                return Err(NotStarted {
                    error,
                    body: upstream,
                })
            }
        };
        task.tx.send_replace(Progress::Streaming {
            head: task.head.clone(),
            written: 0,
        });
        let (leader_tx, leader_rx) = mpsc::channel(LEADER_BUFFER);
        let (switch_tx, switch_rx) = oneshot::channel();
        // The leader may fall back on the store only if it can hold the fill's chunks.
        let fill = task.head.fill;
        let fallback = self.fills.store.pin(fill).map(|pin| {
            Reader::following(
                &self.fills,
                task.key.clone(),
                fill,
                task.tx.subscribe(),
                pin,
            )
        });
        task.switch = fallback.is_some().then_some(switch_tx);
        task.leader = Some(leader_tx);
        self.fills.spawn(task.run(upstream));
        Ok(leader_body(leader_rx, switch_rx, fallback))
    }

    /// Stores GitLab's 200 answer without letting anyone read it before it is complete and
    /// compared with the version's first copy: for refills of versions seen before, when
    /// changed content is held back. The returned progress ends `Done` (read it from the
    /// store), `Held`, or `Failed`.
    pub async fn start_checked<B>(
        mut self,
        headers: Vec<(String, String)>,
        content_length: Option<u64>,
        upstream: B,
    ) -> Result<watch::Receiver<Progress>, NotStarted<B>>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError> + Send,
    {
        match self.task(headers, content_length, false).await {
            Ok(task) => {
                let progress = task.tx.subscribe();
                self.fills.spawn(task.run(upstream));
                Ok(progress)
            }
            Err(error) => Err(NotStarted {
                error,
                body: upstream,
            }),
        }
    }

    /// Begins the fill in the store and hands this leader's progress sender to its task,
    /// which has no reader relayed to yet.
    async fn task(
        &mut self,
        headers: Vec<(String, String)>,
        content_length: Option<u64>,
        publish_chunks: bool,
    ) -> Result<FillTask, StoreError> {
        let store = self.fills.store.clone();
        let fill = if self.copy {
            store.begin_copy(&self.key).await?
        } else {
            store.begin_fill(&self.key).await?
        };
        let Some(tx) = self.tx.take() else {
            // Starting consumes the leader, so the sender is always still there.
            store.abort_fill(fill).await;
            return Err(StoreError::UnknownFill(fill));
        };
        let keep = (self.keep_up_to > 0
            && content_length.is_none_or(|length| length <= self.keep_up_to))
        .then(|| {
            let expected = content_length.unwrap_or(self.keep_up_to);
            BytesMut::with_capacity(usize::try_from(expected).unwrap_or(0))
        });
        Ok(FillTask {
            key: std::mem::take(&mut self.key),
            keep,
            keep_up_to: self.keep_up_to,
            head: Arc::new(Head {
                fill,
                headers,
                content_length,
            }),
            publish_chunks,
            tx,
            fills: self.fills.clone(),
            storing: true,
            switch: None,
            leader: None,
            leader_sent: 0,
        })
    }
}

/// Where the leader's body comes from.
enum LeaderSource {
    /// GitLab's frames as the fill relays them; then, if the fill said the leader fell
    /// behind, the store from that offset on.
    Relayed {
        rx: mpsc::Receiver<Result<Bytes, BoxError>>,
        switch: oneshot::Receiver<u64>,
        fallback: Option<Reader>,
    },
    /// The store, from the offset the leader had reached.
    Store { reader: Reader },
}

/// The leader's body. A leader slower than GitLab is switched to reading the store like a
/// waiter, so one slow client never slows a fill that others are waiting on.
fn leader_body(
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
    switch: oneshot::Receiver<u64>,
    fallback: Option<Reader>,
) -> Body {
    let start = LeaderSource::Relayed {
        rx,
        switch,
        fallback,
    };
    let frames = futures_util::stream::unfold(Some(start), |source| async move {
        let mut source = source?;
        loop {
            match source {
                LeaderSource::Relayed {
                    mut rx,
                    mut switch,
                    fallback,
                } => match rx.recv().await {
                    Some(Ok(data)) => {
                        let next = LeaderSource::Relayed {
                            rx,
                            switch,
                            fallback,
                        };
                        return Some((Ok(Frame::data(data)), Some(next)));
                    }
                    Some(Err(e)) => return Some((Err(e), None)),
                    None => match (switch.try_recv(), fallback) {
                        (Ok(offset), Some(mut reader)) => {
                            reader.start_at(offset, CHUNK_SIZE as u64);
                            source = LeaderSource::Store { reader };
                        }
                        // The relay ended without a switch: the body is complete.
                        _ => return None,
                    },
                },
                LeaderSource::Store { mut reader } => {
                    return match reader.next_piece().await {
                        Ok(Some(piece)) => {
                            let next = LeaderSource::Store { reader };
                            Some((Ok(Frame::data(piece)), Some(next)))
                        }
                        Ok(None) => None,
                        Err(e) => Some((Err(e), None)),
                    };
                }
            }
        }
    });
    body::boxed(StreamBody::new(frames))
}

struct FillTask {
    key: String,
    head: Arc<Head>,
    /// Whether waiters may follow the chunks as they are written; false for a checked fill,
    /// whose bytes become readable only once compared with the first copy.
    publish_chunks: bool,
    tx: watch::Sender<Progress>,
    fills: Fills,
    /// False once the store failed: the leader alone is served from then on.
    storing: bool,
    /// Tells the leader from which offset to read the store when it falls behind.
    switch: Option<oneshot::Sender<u64>>,
    leader: Option<mpsc::Sender<Result<Bytes, BoxError>>>,
    /// Bytes relayed to the leader so far.
    leader_sent: u64,
    /// The whole body so far, while it may still end up in the memory tier.
    keep: Option<BytesMut>,
    keep_up_to: u64,
}

impl FillTask {
    async fn run<B>(mut self, mut upstream: B)
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let store = self.fills.store.clone();
        let fill = self.head.fill;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        let mut pending = BytesMut::with_capacity(CHUNK_SIZE);
        let mut written = 0u32;
        let read = loop {
            match upstream.frame().await {
                None => break Ok(()),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(frame)) => {
                    // Trailers carry nothing a package client needs.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    len += data.len() as u64;
                    hasher.update(&data);
                    if len > self.keep_up_to {
                        self.keep = None;
                    } else if let Some(keep) = &mut self.keep {
                        keep.extend_from_slice(&data);
                    }
                    self.send_to_leader(Ok(data.clone())).await;
                    if self.storing {
                        pending.extend_from_slice(&data);
                        while pending.len() >= CHUNK_SIZE {
                            let chunk = pending.split_to(CHUNK_SIZE).freeze();
                            if let Err(e) = store.write_chunk(fill, written, chunk).await {
                                self.store_failed(&e).await;
                                break;
                            }
                            written += 1;
                            if self.publish_chunks {
                                self.tx.send_replace(Progress::Streaming {
                                    head: self.head.clone(),
                                    written,
                                });
                            }
                        }
                    }
                    if !self.storing && self.leader.is_none() {
                        // Nobody is left to read what GitLab sends.
                        return;
                    }
                }
            }
        };
        if let Err(e) = read {
            tracing::warn!(key = %self.key, error = %e, bytes = len, "artifact fill broke; nothing stored");
            if self.storing {
                store.abort_fill(fill).await;
                self.fills.finish(&self.key, &self.tx, Progress::Failed);
            }
            self.send_to_leader(Err(e)).await;
            return;
        }
        if !self.storing {
            return;
        }
        if !pending.is_empty() {
            if let Err(e) = store.write_chunk(fill, written, pending.freeze()).await {
                self.store_failed(&e).await;
                return;
            }
            written += 1;
        }
        if let Some(declared) = self.head.content_length.filter(|&declared| declared != len) {
            tracing::warn!(key = %self.key, declared, received = len, "length mismatch; nothing stored");
            store.abort_fill(fill).await;
            self.fills.finish(&self.key, &self.tx, Progress::Failed);
            self.send_to_leader(Err("GitLab sent a body of the wrong length".into()))
                .await;
            return;
        }
        let sha256: [u8; 32] = hasher.finalize().into();
        let verdict = match &self.fills.integrity {
            Some(integrity) => integrity.check_fill(&self.key, fill, len, sha256).await,
            None => Verdict::Unknown,
        };
        if verdict == Verdict::Changed && self.fills.holds_changes() {
            // GitLab now answers other content than the first copy had: nobody gets it until
            // an operator decides (a streamed fill's readers are cut short).
            store.abort_fill(fill).await;
            match store.restore_original(&self.key).await {
                Ok(Some(original)) => {
                    // The first copy's bytes were kept at eviction: it is served again.
                    tracing::warn!(key = %self.key, "GitLab's content changed; serving the first copy kept since eviction");
                    self.fills.metrics.original_restored();
                    self.fills.finish(
                        &self.key,
                        &self.tx,
                        Progress::Done {
                            meta: Arc::new(original),
                        },
                    );
                    if let Some(integrity) = &self.fills.integrity {
                        integrity.keep_restored(&self.key).await;
                    }
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, "the first copy kept since eviction cannot be restored");
                }
            }
            let reason = format!(
                "GitLab now serves other content for {} than the copy this proxy first cached; \
                 it is held back until an operator purges this version \
                 (gitlab-pkg-cache admin integrity lists the change)",
                self.key
            );
            self.fills.finish(
                &self.key,
                &self.tx,
                Progress::Held {
                    reason: reason.into(),
                },
            );
            self.send_to_leader(Err("GitLab's content changed; held back".into()))
                .await;
            return;
        }
        if verdict == Verdict::Changed {
            // GitLab now answers other content than the first copy had: this fill's readers
            // get it (it is GitLab's answer), but it is not kept; the first copy stays pinned.
            let meta = ArtifactMeta {
                fill,
                len,
                sha256,
                chunk_count: written,
                headers: self.head.headers.clone(),
                stored_at_unix: 0,
            };
            store.abort_fill(fill).await;
            self.fills.finish(
                &self.key,
                &self.tx,
                Progress::Done {
                    meta: Arc::new(meta),
                },
            );
            return;
        }
        let commit = Commit {
            len,
            sha256,
            headers: self.head.headers.clone(),
        };
        match store.commit_fill(&self.key, fill, commit).await {
            Ok(meta) => {
                tracing::debug!(key = %self.key, bytes = len, "artifact stored");
                let body = self.keep.take().map(BytesMut::freeze);
                self.fills.memory.keep(&self.key, &meta, body);
                self.fills.finish(
                    &self.key,
                    &self.tx,
                    Progress::Done {
                        meta: Arc::new(meta),
                    },
                );
                if let (Verdict::First, Some(integrity)) = (&verdict, &self.fills.integrity) {
                    integrity.pin_first(&self.key, fill, len, sha256).await;
                }
                self.evict_if_over_budget(&store).await;
            }
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "artifact commit failed; nothing stored");
                self.fills.finish(&self.key, &self.tx, Progress::Failed);
            }
        }
    }

    async fn send_to_leader(&mut self, item: Result<Bytes, BoxError>) {
        let Some(leader) = &self.leader else {
            return;
        };
        let len = item.as_ref().map_or(0, |data| data.len() as u64);
        if item.is_ok() && self.storing && self.switch.is_some() {
            match leader.try_send(item) {
                Ok(()) => self.leader_sent += len,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // The leader's client is slower than GitLab: it goes on from the store
                    // (this piece included) and the fill goes on at GitLab's pace.
                    if let Some(switch) = self.switch.take() {
                        let _ = switch.send(self.leader_sent);
                    }
                    self.leader = None;
                }
                // The leader's client went away; the fill goes on for the others.
                Err(mpsc::error::TrySendError::Closed(_)) => self.leader = None,
            }
            return;
        }
        if leader.send(item).await.is_ok() {
            self.leader_sent += len;
        } else {
            self.leader = None;
        }
    }

    async fn store_failed(&mut self, e: &StoreError) {
        self.storing = false;
        tracing::warn!(key = %self.key, error = %e, "artifact store failed; serving uncached");
        self.fills.store.abort_fill(self.head.fill).await;
        self.fills.finish(&self.key, &self.tx, Progress::Failed);
    }

    async fn evict_if_over_budget(&self, store: &Store) {
        if store.exceeds(&self.fills.policy) {
            match store.evict(self.fills.policy).await {
                Ok(report) => tracing::info!(
                    artifacts = report.artifacts,
                    bytes = report.bytes,
                    "evicted"
                ),
                Err(e) => tracing::warn!(error = %e, "eviction failed"),
            }
        }
    }
}
