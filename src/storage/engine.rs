//! The store's logic, shared by every backend: fills, pins, deferred deletion, LRU and usage.
//!
//! Fill lifecycle: `Writing`, then `Committed` once its commit passes; a fill that is aborted,
//! fails its commit, or is replaced, removed or evicted becomes unreferenced. An unreferenced
//! fill stays readable while pinned; once unpinned it leaves the in-memory table at once (reads
//! return `None`) and its chunks are deleted by the next call that writes. The `fills` tree lists every fill that may own chunks, so after a crash every
//! fill no valid record references is found and reclaimed on open.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tracing::warn;

use super::codec;
use super::{
    ArtifactMeta, ArtifactStore, ChunkReader, Commit, EvictionPolicy, EvictionReport, FillDeleted,
    FillId, PinGuard, PinOwner, StoreError, Usage,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    /// Artifact key → `ArtifactMeta`; the presence of a record is what publishes an artifact.
    Artifacts,
    /// `(fill, index)` → framed chunk.
    Chunks,
    /// Fill → nothing: every fill that may own chunks.
    Fills,
    /// Artifact key → last-use tick, written lazily.
    Access,
    /// `(namespace, key)` → small record.
    Records,
}

impl Tree {
    pub const ALL: [Tree; 5] = [
        Tree::Artifacts,
        Tree::Chunks,
        Tree::Fills,
        Tree::Access,
        Tree::Records,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tree::Artifacts => "artifacts",
            Tree::Chunks => "chunks",
            Tree::Fills => "fills",
            Tree::Access => "access",
            Tree::Records => "records",
        }
    }
}

/// Ordered key-value storage beneath the engine. It only moves bytes; every invariant lives
/// in `Engine`, which is why the in-memory and sled stores behave identically.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Bytes>, StoreError>;
    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), StoreError>;
    /// True if the key existed.
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<bool, StoreError>;
    /// Visits entries whose key starts with `prefix`, in key order; `visit` must not call back
    /// into the backend. For `Tree::Chunks` a backend may visit keys with empty values: chunk
    /// scans only look for keys.
    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<(), StoreError>;
    /// Opens a chunk for reading piece by piece; `Ok(None)` if absent. The default reads it
    /// whole and checks it at once.
    fn open_chunk(
        &self,
        key: &[u8],
        fill: FillId,
        index: u32,
    ) -> Result<Option<ChunkReader>, StoreError> {
        let Some(raw) = self.get(Tree::Chunks, key)? else {
            return Ok(None);
        };
        let data = codec::decode_chunk(raw).map_err(|detail| StoreError::Corrupt {
            key_or_fill: format!("fill {fill} chunk {index}"),
            detail,
        })?;
        Ok(Some(ChunkReader::checked(data, fill, index)))
    }
    /// `open_chunk` without disk I/O, or `None` when it would need some (see
    /// [`ArtifactStore::open_chunk_cached`]).
    fn open_chunk_cached(
        &self,
        key: &[u8],
        fill: FillId,
        index: u32,
    ) -> Option<Result<Option<ChunkReader>, StoreError>> {
        let _ = (key, fill, index);
        None
    }
    /// Unique across restarts.
    fn generate_id(&self) -> Result<u64, StoreError>;
    fn flush(&self) -> Result<(), StoreError>;
    /// Free bytes on the filesystem holding the data, if there is one.
    fn available_space(&self) -> Result<Option<u64>, StoreError>;
}

/// An [`ArtifactStore`] over any [`Backend`]; see `SledStore` and `MemoryStore`.
pub struct Engine<B: Backend> {
    shared: Arc<Shared<B>>,
}

/// Owned jointly by the engine and every outstanding `PinGuard`.
struct Shared<B> {
    backend: B,
    state: Mutex<State>,
    /// Told of each fill whose chunks were deleted.
    deleted: OnceLock<FillDeleted>,
}

#[derive(Default)]
struct State {
    /// Fills whose chunks may be read: being written, committed, or unreferenced but pinned.
    fills: HashMap<FillId, FillEntry>,
    /// Committed artifacts by key.
    entries: HashMap<String, Entry>,
    usage: Usage,
    /// Logical clock for LRU; persisted ticks keep the order across restarts.
    clock: u64,
    /// Keys whose tick changed since the last flush.
    dirty_access: HashSet<String>,
    /// Unreferenced, unpinned fills whose chunks are still on disk.
    garbage: Vec<FillId>,
    /// Keys an operator kept from eviction (persisted as records in [`KEPT`]); a key may be
    /// kept before anything is stored under it.
    kept: HashSet<String>,
    /// Evicted artifacts whose bytes are kept as originals (persisted as records in
    /// [`ORIGINALS`] holding their artifact record); never served until restored.
    originals: HashMap<String, Entry>,
    originals_usage: Usage,
}

/// Record namespace of the keys kept from eviction.
const KEPT: &str = "kept";
/// Record namespace of originals: the artifact record an evicted artifact had, verbatim.
const ORIGINALS: &str = "originals";

struct FillEntry {
    stage: Stage,
    pins: usize,
}

enum Stage {
    Writing(Arc<Mutex<Progress>>),
    Committed,
    Unreferenced,
}

/// Behind its own lock so that hashing a chunk never holds up other fills or readers.
#[derive(Default)]
struct Progress {
    next: u32,
    len: u64,
    hasher: Sha256,
    /// Set by whichever of commit or abort settles the fill; no chunk lands after it.
    closed: bool,
}

struct Entry {
    fill: FillId,
    len: u64,
    last_used: u64,
}

/// Marks `entry`'s fill committed and files the entry under `key` in `map`, counted in
/// `usage`; returns the entry it displaced, no longer counted (its fill is the caller's to
/// unreference).
fn file_under(
    fills: &mut HashMap<FillId, FillEntry>,
    map: &mut HashMap<String, Entry>,
    usage: &mut Usage,
    key: String,
    entry: Entry,
) -> Option<Entry> {
    fills
        .entry(entry.fill)
        .or_insert(FillEntry {
            stage: Stage::Committed,
            pins: 0,
        })
        .stage = Stage::Committed;
    usage.artifacts += 1;
    usage.bytes += entry.len;
    let old = map.insert(key, entry)?;
    usage.artifacts -= 1;
    usage.bytes -= old.len;
    Some(old)
}

/// The least recently used of `entries` whose lengths add up to at least `excess` bytes.
fn oldest<'a>(
    entries: impl Iterator<Item = (&'a String, &'a Entry)>,
    mut excess: u64,
) -> Vec<(String, FillId)> {
    if excess == 0 {
        return Vec::new();
    }
    let mut by_age: Vec<(&String, &Entry)> = entries.collect();
    by_age.sort_unstable_by_key(|(_, entry)| entry.last_used);
    let mut victims = Vec::new();
    for (key, entry) in by_age {
        if excess == 0 {
            break;
        }
        excess = excess.saturating_sub(entry.len);
        victims.push((key.clone(), entry.fill));
    }
    victims
}

/// Poisoning is ignored: every critical section leaves the state consistent at each step, and
/// refusing all further storage calls after an unrelated panic would be worse.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl State {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn touch(&mut self, key: &str) {
        let tick = self.tick();
        if let Some(entry) = self.entries.get_mut(key) {
            entry.last_used = tick;
            if !self.dirty_access.contains(key) {
                self.dirty_access.insert(key.to_owned());
            }
        }
    }

    /// Publishes `fill` under `key` in memory, unreferencing whatever it replaces.
    fn install(&mut self, key: String, fill: FillId, len: u64, last_used: u64) {
        let entry = Entry {
            fill,
            len,
            last_used,
        };
        if let Some(old) = file_under(
            &mut self.fills,
            &mut self.entries,
            &mut self.usage,
            key,
            entry,
        ) {
            self.unreference(old.fill);
        }
    }

    /// Holds `fill` as the original of `key` (committed, not served), unreferencing the
    /// original it replaces.
    fn keep_original(&mut self, key: String, fill: FillId, len: u64, last_used: u64) {
        let entry = Entry {
            fill,
            len,
            last_used,
        };
        let (fills, originals, usage) = (
            &mut self.fills,
            &mut self.originals,
            &mut self.originals_usage,
        );
        if let Some(old) = file_under(fills, originals, usage, key, entry) {
            self.unreference(old.fill);
        }
    }

    fn forget(&mut self, key: &str) -> Option<Entry> {
        let old = self.take_served(key)?;
        self.unreference(old.fill);
        Some(old)
    }

    /// Stops serving `key` in memory; its fill stays referenced (the caller's to settle).
    fn take_served(&mut self, key: &str) -> Option<Entry> {
        let old = self.entries.remove(key)?;
        self.usage.artifacts -= 1;
        self.usage.bytes -= old.len;
        self.dirty_access.remove(key);
        Some(old)
    }

    /// Forgets the original kept for `key`, if any; its fill goes when no pin holds it.
    fn forget_original(&mut self, key: &str) -> Option<Entry> {
        let old = self.take_original(key)?;
        self.unreference(old.fill);
        Some(old)
    }

    /// Stops holding the original of `key`; its fill stays referenced (the caller's to settle).
    fn take_original(&mut self, key: &str) -> Option<Entry> {
        let old = self.originals.remove(key)?;
        self.originals_usage.artifacts -= 1;
        self.originals_usage.bytes -= old.len;
        Some(old)
    }

    /// The oldest originals whose lengths add up to at least `excess` bytes.
    fn oldest_originals(&self, excess: u64) -> Vec<(String, FillId)> {
        oldest(self.originals.iter(), excess)
    }

    /// The oldest artifacts whose lengths add up to at least `excess` bytes.
    fn least_recently_used(&self, excess: u64) -> Vec<(String, FillId)> {
        let evictable = self
            .entries
            .iter()
            .filter(|(key, _)| !self.kept.contains(*key));
        oldest(evictable, excess)
    }

    fn unreference(&mut self, fill: FillId) {
        match self.fills.get_mut(&fill) {
            Some(entry) if entry.pins > 0 => entry.stage = Stage::Unreferenced,
            Some(_) => {
                self.fills.remove(&fill);
                self.garbage.push(fill);
            }
            None => {}
        }
    }

    fn unpin(&mut self, fill: FillId) {
        let Some(entry) = self.fills.get_mut(&fill) else {
            return;
        };
        entry.pins = entry.pins.saturating_sub(1);
        if entry.pins == 0 && matches!(entry.stage, Stage::Unreferenced) {
            self.fills.remove(&fill);
            self.garbage.push(fill);
        }
    }
}

impl<B: Backend> PinOwner for Shared<B> {
    fn unpin(&self, fill: FillId) {
        // Only queued: the guard may drop on an async worker, where deleting chunks would
        // block. The next writing call (or flush) deletes them.
        lock(&self.state).unpin(fill);
    }
}

impl<B: Backend> Engine<B> {
    pub(super) fn empty(backend: B) -> Self {
        Engine {
            shared: Arc::new(Shared {
                backend,
                state: Mutex::new(State::default()),
                deleted: OnceLock::new(),
            }),
        }
    }

    /// Rebuilds the in-memory state from `backend` and reclaims fills left over by a crash.
    pub(super) fn load(backend: B) -> Result<Self, StoreError> {
        let mut registered = HashSet::new();
        backend.scan(Tree::Fills, &[], &mut |key, _| {
            registered.extend(codec::parse_fill_key(key));
        })?;

        let mut records = Vec::new();
        backend.scan(Tree::Artifacts, &[], &mut |key, value| {
            records.push((key.to_vec(), codec::decode_meta(value)));
        })?;
        let mut state = State::default();
        for (raw_key, meta) in records {
            let key = String::from_utf8(raw_key.clone()).ok();
            match (key, meta) {
                // A record whose fill is unregistered (its chunks may be gone) or already
                // claimed by another record can only come from damage: drop it too.
                (Some(key), Some(meta))
                    if registered.contains(&meta.fill) && !state.fills.contains_key(&meta.fill) =>
                {
                    state.install(key, meta.fill, meta.len, 0);
                }
                _ => {
                    warn!(key = %String::from_utf8_lossy(&raw_key), "dropping unreadable artifact record");
                    backend.remove(Tree::Artifacts, &raw_key)?;
                }
            }
        }
        let prefix = codec::record_key(ORIGINALS, b"")?;
        let mut originals = Vec::new();
        backend.scan(Tree::Records, &prefix, &mut |key, value| {
            originals.push((key.to_vec(), codec::decode_meta(value)));
        })?;
        for (raw_key, meta) in originals {
            let key = std::str::from_utf8(&raw_key[prefix.len()..]).ok();
            match (key, meta) {
                // An original of a key served again is redundant (a crash between the
                // publish and the original's removal): it goes like a damaged one.
                (Some(key), Some(meta))
                    if registered.contains(&meta.fill)
                        && !state.fills.contains_key(&meta.fill)
                        && !state.entries.contains_key(key) =>
                {
                    state.keep_original(key.to_owned(), meta.fill, meta.len, 0);
                }
                _ => {
                    backend.remove(Tree::Records, &raw_key)?;
                }
            }
        }
        state.garbage = registered
            .into_iter()
            .filter(|fill| !state.fills.contains_key(fill))
            .collect();

        let prefix = codec::record_key(KEPT, b"")?;
        backend.scan(Tree::Records, &prefix, &mut |key, _| {
            if let Ok(key) = std::str::from_utf8(&key[prefix.len()..]) {
                state.kept.insert(key.to_owned());
            }
        })?;

        let mut ticks = Vec::new();
        backend.scan(Tree::Access, &[], &mut |key, value| {
            ticks.push((key.to_vec(), codec::decode_tick(value)));
        })?;
        for (raw_key, tick) in ticks {
            let entry = std::str::from_utf8(&raw_key)
                .ok()
                .and_then(|key| state.entries.get_mut(key));
            match (entry, tick) {
                (Some(entry), Some(tick)) => {
                    entry.last_used = tick;
                    state.clock = state.clock.max(tick);
                }
                _ => {
                    backend.remove(Tree::Access, &raw_key)?;
                }
            }
        }

        let engine = Engine {
            shared: Arc::new(Shared {
                backend,
                state: Mutex::new(state),
                deleted: OnceLock::new(),
            }),
        };
        engine.collect_garbage();
        Ok(engine)
    }

    fn backend(&self) -> &B {
        &self.shared.backend
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    fn progress(&self, fill: FillId) -> Option<Arc<Mutex<Progress>>> {
        match &self.state().fills.get(&fill)?.stage {
            Stage::Writing(progress) => Some(Arc::clone(progress)),
            Stage::Committed | Stage::Unreferenced => None,
        }
    }

    /// Deletes the chunks of every queued fill. Failures only leak space until the next open,
    /// which finds the fill still registered, so they are logged rather than returned.
    fn collect_garbage(&self) {
        let garbage = std::mem::take(&mut self.state().garbage);
        for fill in garbage {
            if let Err(e) = self.delete_fill(fill) {
                warn!(%fill, error = %e, "could not delete fill chunks; retrying on next open");
            }
            // Unreadable through the store from now on, deleted or not.
            if let Some(deleted) = self.shared.deleted.get() {
                deleted(fill);
            }
        }
    }

    fn delete_fill(&self, fill: FillId) -> Result<(), StoreError> {
        let prefix = codec::fill_key(fill);
        let mut keys = Vec::new();
        self.backend().scan(Tree::Chunks, &prefix, &mut |key, _| {
            keys.push(key.to_vec());
        })?;
        for key in keys {
            self.backend().remove(Tree::Chunks, &key)?;
        }
        // Last, so that a crash part-way leaves the fill registered and reclaimed on open.
        self.backend().remove(Tree::Fills, &prefix)?;
        Ok(())
    }

    /// Unpublishes `key` (only if it still holds `only_fill`, when given). Returns whether
    /// anything was removed and the bytes that no longer count towards usage.
    fn unpublish(&self, key: &str, only_fill: Option<FillId>) -> Result<(bool, u64), StoreError> {
        let (on_disk, entry) = {
            let mut state = self.state();
            if only_fill.is_some() && state.entries.get(key).map(|e| e.fill) != only_fill {
                return Ok((false, 0));
            }
            // Under the state lock so a concurrent commit of the same key cannot interleave
            // between the disk and memory updates.
            let on_disk = self.backend().remove(Tree::Artifacts, key.as_bytes())?;
            (on_disk, state.forget(key))
        };
        self.backend().remove(Tree::Access, key.as_bytes())?;
        Ok((on_disk || entry.is_some(), entry.map_or(0, |e| e.len)))
    }

    /// Writes the record that makes `meta` visible, then mirrors it in memory.
    fn publish(&self, key: &str, meta: &ArtifactMeta) -> Result<(), StoreError> {
        let record = codec::encode_meta(meta)?;
        let mut state = self.state();
        // Under the state lock so that disk and memory agree on which of two racing commits
        // for one key won.
        self.backend()
            .insert(Tree::Artifacts, key.as_bytes(), record)?;
        let tick = state.tick();
        state.install(key.to_owned(), meta.fill, meta.len, tick);
        state.dirty_access.insert(key.to_owned());
        // What is served under the key now makes an original of it redundant (the same
        // content refilled) or obsolete (an operator let new content in).
        if state.originals.contains_key(key) {
            self.backend().remove(
                Tree::Records,
                &codec::record_key(ORIGINALS, key.as_bytes())?,
            )?;
            state.forget_original(key);
        }
        Ok(())
    }

    /// Keeps the artifact under `key` (if it still holds `only_fill`) as an original: no
    /// longer served, its bytes kept. Returns whether it moved and its length.
    fn demote(&self, key: &str, only_fill: FillId) -> Result<(bool, u64), StoreError> {
        let mut state = self.state();
        if state.entries.get(key).map(|entry| entry.fill) != Some(only_fill) {
            return Ok((false, 0));
        }
        let Some(record) = self.backend().get(Tree::Artifacts, key.as_bytes())? else {
            return Ok((false, 0));
        };
        // The original's record first, so a crash between the two leaves both (the
        // original is dropped on open) rather than neither.
        self.backend().insert(
            Tree::Records,
            &codec::record_key(ORIGINALS, key.as_bytes())?,
            record.to_vec(),
        )?;
        self.backend().remove(Tree::Artifacts, key.as_bytes())?;
        let Some(entry) = state.take_served(key) else {
            return Ok((false, 0));
        };
        let len = entry.len;
        state.keep_original(key.to_owned(), entry.fill, len, entry.last_used);
        drop(state);
        self.backend().remove(Tree::Access, key.as_bytes())?;
        Ok((true, len))
    }

    /// Deletes the original kept for `key` (if it still holds `only_fill`, when given).
    /// Returns whether one was dropped and its length.
    fn drop_original(
        &self,
        key: &str,
        only_fill: Option<FillId>,
    ) -> Result<(bool, u64), StoreError> {
        let mut state = self.state();
        let Some(entry) = state.originals.get(key) else {
            return Ok((false, 0));
        };
        if only_fill.is_some_and(|fill| fill != entry.fill) {
            return Ok((false, 0));
        }
        self.backend().remove(
            Tree::Records,
            &codec::record_key(ORIGINALS, key.as_bytes())?,
        )?;
        Ok((true, state.forget_original(key).map_or(0, |e| e.len)))
    }

    fn persist_access_times(&self) -> Result<(), StoreError> {
        let dirty: Vec<(String, u64)> = {
            let mut state = self.state();
            let keys = std::mem::take(&mut state.dirty_access);
            keys.into_iter()
                .filter_map(|key| {
                    let tick = state.entries.get(&key)?.last_used;
                    Some((key, tick))
                })
                .collect()
        };
        for (key, tick) in dirty {
            self.backend()
                .insert(Tree::Access, key.as_bytes(), codec::encode_tick(tick))?;
        }
        Ok(())
    }

    /// Direct access to the backend, for tests that damage or inspect stored bytes.
    #[cfg(test)]
    pub(super) fn raw(&self) -> &B {
        self.backend()
    }
}

impl<B: Backend> ArtifactStore for Engine<B> {
    fn lookup(&self, key: &str) -> Result<Option<ArtifactMeta>, StoreError> {
        let Some(raw) = self.backend().get(Tree::Artifacts, key.as_bytes())? else {
            return Ok(None);
        };
        match codec::decode_meta(&raw) {
            Some(meta) => Ok(Some(meta)),
            None => {
                // A record of another format version (or a damaged one) is a cache miss: the
                // artifact is fetched again rather than failing the request.
                warn!(key, "dropping unreadable artifact record");
                self.remove(key)?;
                Ok(None)
            }
        }
    }

    fn begin_fill(&self, _key: &str) -> Result<FillId, StoreError> {
        let fill = FillId(self.backend().generate_id()?);
        // Registered before any chunk exists, so a crash mid-fill leaves it findable on open.
        self.backend()
            .insert(Tree::Fills, &codec::fill_key(fill), codec::envelope(&[]))?;
        let progress = Arc::new(Mutex::new(Progress::default()));
        self.state().fills.insert(
            fill,
            FillEntry {
                stage: Stage::Writing(progress),
                pins: 0,
            },
        );
        Ok(fill)
    }

    fn write_chunk(&self, fill: FillId, index: u32, data: &[u8]) -> Result<(), StoreError> {
        let progress = self.progress(fill).ok_or(StoreError::UnknownFill(fill))?;
        let mut progress = lock(&progress);
        if progress.closed {
            return Err(StoreError::UnknownFill(fill));
        }
        if index != progress.next {
            return Err(StoreError::OutOfOrder {
                fill,
                expected: progress.next,
                got: index,
            });
        }
        self.backend().insert(
            Tree::Chunks,
            &codec::chunk_key(fill, index),
            codec::encode_chunk(data),
        )?;
        progress.hasher.update(data);
        progress.len += data.len() as u64;
        progress.next += 1;
        Ok(())
    }

    fn commit_fill(
        &self,
        key: &str,
        fill: FillId,
        expected: Commit,
    ) -> Result<ArtifactMeta, StoreError> {
        let progress = self.progress(fill).ok_or(StoreError::UnknownFill(fill))?;
        let (len, sha256, chunk_count) = {
            let mut progress = lock(&progress);
            if progress.closed {
                return Err(StoreError::UnknownFill(fill));
            }
            progress.closed = true;
            let sha256: [u8; 32] = std::mem::take(&mut progress.hasher).finalize().into();
            (progress.len, sha256, progress.next)
        };

        let result = if len == expected.len && sha256 == expected.sha256 {
            let meta = ArtifactMeta {
                fill,
                len,
                sha256,
                chunk_count,
                headers: expected.headers,
                stored_at_unix: unix_now(),
            };
            self.publish(key, &meta).map(|()| meta)
        } else {
            Err(StoreError::Integrity {
                expected_len: expected.len,
                got_len: len,
                sha256_matches: sha256 == expected.sha256,
            })
        };
        if result.is_err() {
            self.state().unreference(fill);
        }
        self.collect_garbage();
        result
    }

    fn abort_fill(&self, fill: FillId) {
        let Some(progress) = self.progress(fill) else {
            return;
        };
        {
            let mut progress = lock(&progress);
            if progress.closed {
                // A commit got there first and now owns the fill.
                return;
            }
            progress.closed = true;
        }
        self.state().unreference(fill);
        self.collect_garbage();
    }

    fn read_chunk(&self, fill: FillId, index: u32) -> Result<Option<Bytes>, StoreError> {
        // Unreferenced, unpinned fills may still have chunks on disk awaiting deletion; they
        // must read as gone.
        if !self.state().fills.contains_key(&fill) {
            return Ok(None);
        }
        let Some(raw) = self
            .backend()
            .get(Tree::Chunks, &codec::chunk_key(fill, index))?
        else {
            return Ok(None);
        };
        codec::decode_chunk(raw)
            .map(Some)
            .map_err(|detail| StoreError::Corrupt {
                key_or_fill: format!("fill {fill} chunk {index}"),
                detail,
            })
    }

    fn open_chunk(&self, fill: FillId, index: u32) -> Result<Option<ChunkReader>, StoreError> {
        // As in `read_chunk`: chunks of fills no longer readable read as gone.
        if !self.state().fills.contains_key(&fill) {
            return Ok(None);
        }
        self.backend()
            .open_chunk(&codec::chunk_key(fill, index), fill, index)
    }

    fn open_chunk_cached(
        &self,
        fill: FillId,
        index: u32,
    ) -> Option<Result<Option<ChunkReader>, StoreError>> {
        if !self.state().fills.contains_key(&fill) {
            return Some(Ok(None));
        }
        self.backend()
            .open_chunk_cached(&codec::chunk_key(fill, index), fill, index)
    }

    fn touch_if_current(&self, key: &str, fill: FillId) -> bool {
        let mut state = self.state();
        if state.entries.get(key).map(|entry| entry.fill) != Some(fill) {
            return false;
        }
        state.touch(key);
        true
    }

    fn remove(&self, key: &str) -> Result<bool, StoreError> {
        let (removed, _) = self.unpublish(key, None)?;
        let (dropped, _) = self.drop_original(key, None)?;
        self.collect_garbage();
        Ok(removed || dropped)
    }

    fn on_fill_deleted(&self, deleted: FillDeleted) {
        if self.shared.deleted.set(deleted).is_err() {
            warn!("a second listener for deleted fills was ignored");
        }
    }

    fn pin(&self, fill: FillId) -> Option<PinGuard> {
        self.state().fills.get_mut(&fill)?.pins += 1;
        Some(PinGuard {
            fill,
            owner: Arc::clone(&self.shared) as Arc<dyn PinOwner>,
        })
    }

    fn touch(&self, key: &str) {
        self.state().touch(key);
    }

    fn usage(&self) -> Usage {
        self.state().usage
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        let state = self.state();
        let mut keys: Vec<String> = state
            .entries
            .keys()
            .filter(|key| key.starts_with(prefix))
            .cloned()
            .collect();
        keys.sort_unstable();
        keys
    }

    fn set_kept(&self, key: &str, kept: bool) -> Result<bool, StoreError> {
        // Under the state lock so that the record and the in-memory set never disagree.
        let mut state = self.state();
        if state.kept.contains(key) == kept {
            return Ok(false);
        }
        if kept {
            self.backend().insert(
                Tree::Records,
                &codec::record_key(KEPT, key.as_bytes())?,
                codec::envelope(&[]),
            )?;
            state.kept.insert(key.to_owned());
        } else {
            self.backend()
                .remove(Tree::Records, &codec::record_key(KEPT, key.as_bytes())?)?;
            state.kept.remove(key);
        }
        Ok(true)
    }

    fn kept(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.state().kept.iter().cloned().collect();
        keys.sort_unstable();
        keys
    }

    fn kept_usage(&self) -> Usage {
        let state = self.state();
        let mut usage = Usage::default();
        for key in &state.kept {
            if let Some(entry) = state.entries.get(key) {
                usage.artifacts += 1;
                usage.bytes += entry.len;
            }
        }
        usage
    }

    fn evict(&self, policy: &EvictionPolicy) -> Result<EvictionReport, StoreError> {
        // Deleting records does not hand space back to the filesystem at once (sled reclaims
        // it lazily), so the free-space shortfall becomes a byte target up front instead of
        // being measured again after each removal.
        let shortfall = match policy.min_free_bytes {
            Some(min_free) => self
                .backend()
                .available_space()?
                .map_or(0, |free| min_free.saturating_sub(free)),
            None => 0,
        };
        // Everything stored must fit `target`; served artifacts leave the originals' room.
        let room = policy.originals_room();
        let budget = policy.max_bytes.unwrap_or(u64::MAX);
        let (target, victims) = {
            let state = self.state();
            let total = state.usage.bytes + state.originals_usage.bytes;
            let target = total.saturating_sub(shortfall).min(budget);
            let served_target = target.min(budget.saturating_sub(room));
            let victims =
                state.least_recently_used(state.usage.bytes.saturating_sub(served_target));
            (target, victims)
        };

        let mut report = EvictionReport::default();
        for (key, fill) in victims {
            // A victim replaced since the snapshot above is fresh again and is left alone.
            let keeps = policy
                .originals
                .is_some_and(|originals| originals.max_bytes > 0 && (originals.applies_to)(&key));
            let (gone, bytes) = if keeps {
                let (moved, bytes) = self.demote(&key, fill)?;
                report.kept_as_originals += u64::from(moved);
                (moved, bytes)
            } else {
                self.unpublish(&key, Some(fill))?
            };
            if gone {
                report.artifacts += 1;
                report.bytes += bytes;
            }
        }
        let excess = {
            let state = self.state();
            let budget = room.min(target.saturating_sub(state.usage.bytes));
            state.originals_usage.bytes.saturating_sub(budget)
        };
        let dropped = self.state().oldest_originals(excess);
        for (key, fill) in dropped {
            let (dropped, bytes) = self.drop_original(&key, Some(fill))?;
            if dropped {
                report.originals_dropped += 1;
                report.originals_dropped_bytes += bytes;
            }
        }
        self.collect_garbage();
        Ok(report)
    }

    fn restore_original(&self, key: &str) -> Result<Option<ArtifactMeta>, StoreError> {
        let restored = {
            let mut state = self.state();
            if state.entries.contains_key(key) || !state.originals.contains_key(key) {
                return Ok(None);
            }
            let record_key = codec::record_key(ORIGINALS, key.as_bytes())?;
            let Some(record) = self.backend().get(Tree::Records, &record_key)? else {
                return Ok(None);
            };
            let Some(meta) = codec::decode_meta(&record) else {
                warn!(key, "dropping unreadable original record");
                self.backend().remove(Tree::Records, &record_key)?;
                state.forget_original(key);
                drop(state);
                self.collect_garbage();
                return Ok(None);
            };
            // Served again first, so a crash between the two leaves both (the original is
            // dropped on open) rather than neither.
            self.backend()
                .insert(Tree::Artifacts, key.as_bytes(), record.to_vec())?;
            self.backend().remove(Tree::Records, &record_key)?;
            state.take_original(key);
            let tick = state.tick();
            state.install(key.to_owned(), meta.fill, meta.len, tick);
            state.dirty_access.insert(key.to_owned());
            meta
        };
        Ok(Some(restored))
    }

    fn originals(&self, prefix: &str) -> Vec<(String, u64)> {
        let state = self.state();
        let mut found: Vec<(String, u64)> = state
            .originals
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(key, entry)| (key.clone(), entry.len))
            .collect();
        found.sort_unstable();
        found
    }

    fn originals_usage(&self) -> Usage {
        self.state().originals_usage
    }

    fn put_record(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.backend().insert(
            Tree::Records,
            &codec::record_key(namespace, key)?,
            codec::envelope(value),
        )
    }

    fn get_record(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = codec::record_key(namespace, key)?;
        let Some(raw) = self.backend().get(Tree::Records, &key)? else {
            return Ok(None);
        };
        match codec::open_envelope(&raw) {
            Some(value) => Ok(Some(value.to_vec())),
            None => {
                warn!(namespace, "dropping record of unknown format version");
                self.backend().remove(Tree::Records, &key)?;
                Ok(None)
            }
        }
    }

    fn record_keys(&self, namespace: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = codec::record_key(namespace, b"")?;
        let mut keys = Vec::new();
        self.backend().scan(Tree::Records, &prefix, &mut |key, _| {
            keys.push(key[prefix.len()..].to_vec());
        })?;
        Ok(keys)
    }

    fn remove_record(&self, namespace: &str, key: &[u8]) -> Result<bool, StoreError> {
        self.backend()
            .remove(Tree::Records, &codec::record_key(namespace, key)?)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.collect_garbage();
        self.persist_access_times()?;
        self.backend().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::Tree;

    #[test]
    fn tree_discriminants_index_tree_all() {
        for (index, tree) in Tree::ALL.into_iter().enumerate() {
            assert_eq!(tree as usize, index, "{}", tree.name());
        }
    }
}
