//! `SledStore`: the store's logic over sled trees on disk, with chunk payloads in files.
//!
//! sled 0.34 keeps the values it holds in memory (its cache bound does not page leaf values
//! out: writing 600 MiB of chunks grew the process by 600 MiB), so the chunk bytes live in
//! one file per chunk under `<store>/chunks/<fill>/<index>`, each in the same framed, checked
//! format the engine reads. sled keeps everything small: artifact records, the fills
//! registry, use times and records.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::chunk_reader;
use super::codec;
use super::engine::{Backend, Engine, Tree};
use super::{ChunkReader, FillId, StoreError};

/// The persistent store. Opening it reclaims chunks of fills that a crash left uncommitted and
/// rebuilds usage counters and LRU order from disk.
pub type SledStore = Engine<SledBackend>;

impl SledStore {
    /// Opens (or creates) the store in directory `path`. `cache_capacity_bytes` bounds sled's
    /// page cache, which is otherwise 1 GiB.
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            .open()?;
        let chunks = path.join("chunks");
        std::fs::create_dir_all(&chunks)?;
        let open = |tree: Tree| db.open_tree(tree.name());
        let trees = [
            open(Tree::Artifacts)?,
            open(Tree::Chunks)?,
            open(Tree::Fills)?,
            open(Tree::Access)?,
            open(Tree::Records)?,
        ];
        Engine::load(SledBackend {
            db,
            trees,
            path: path.to_owned(),
            chunks,
        })
    }
}

pub struct SledBackend {
    db: sled::Db,
    /// Indexed by `Tree as usize`, in `Tree::ALL` order.
    trees: [sled::Tree; Tree::ALL.len()],
    path: PathBuf,
    /// Directory of chunk files (the `Chunks` tree).
    chunks: PathBuf,
}

impl SledBackend {
    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[tree as usize]
    }

    /// `<chunks>/<fill as 16 hex>/<index as 8 hex>` for a 12-byte chunk key.
    fn chunk_path(&self, key: &[u8]) -> Result<PathBuf, StoreError> {
        let (fill, index) = split_chunk_key(key)?;
        Ok(self.chunks.join(fill).join(index))
    }

    /// Every chunk file whose key starts with `prefix`, as (key, path), in key order.
    fn chunk_files(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, PathBuf)>, StoreError> {
        let mut found = Vec::new();
        let fills = match std::fs::read_dir(&self.chunks) {
            Ok(fills) => fills,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(e.into()),
        };
        for fill in fills {
            let fill = fill?;
            let Some(fill_key) = hex_name(&fill.file_name(), 8) else {
                continue;
            };
            let shared = prefix.len().min(8);
            if fill_key[..shared] != prefix[..shared] {
                continue;
            }
            for chunk in std::fs::read_dir(fill.path())? {
                let chunk = chunk?;
                let Some(index) = hex_name(&chunk.file_name(), 4) else {
                    continue;
                };
                let key = [fill_key.as_slice(), index.as_slice()].concat();
                if key.starts_with(prefix) {
                    found.push((key, chunk.path()));
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

fn split_chunk_key(key: &[u8]) -> Result<(String, String), StoreError> {
    if key.len() != 12 {
        return Err(StoreError::Io(format!("chunk key of {} bytes", key.len())));
    }
    Ok((hex::encode(&key[..8]), hex::encode(&key[8..])))
}

/// The bytes a file name spells in hex, if it is exactly `len` bytes' worth.
fn hex_name(name: &std::ffi::OsStr, len: usize) -> Option<Vec<u8>> {
    let bytes = hex::decode(name.to_str()?).ok()?;
    (bytes.len() == len).then_some(bytes)
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(e) => e.into(),
            sled::Error::Corruption { .. } => StoreError::Corrupt {
                key_or_fill: "sled log".to_owned(),
                detail: e.to_string(),
            },
            other => StoreError::Io(other.to_string()),
        }
    }
}

impl Backend for SledBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        if tree == Tree::Chunks {
            return match std::fs::read(self.chunk_path(key)?) {
                Ok(bytes) => Ok(Some(Bytes::from(bytes))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
        Ok(self
            .tree(tree)
            .get(key)?
            .map(|value| Bytes::copy_from_slice(&value)))
    }

    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        if tree == Tree::Chunks {
            let path = self.chunk_path(key)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, value)?;
            return Ok(());
        }
        self.tree(tree).insert(key, value)?;
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<bool, StoreError> {
        if tree == Tree::Chunks {
            let path = self.chunk_path(key)?;
            let existed = match std::fs::remove_file(&path) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(e.into()),
            };
            if let Some(dir) = path.parent() {
                // Succeeds only once the fill's last chunk is gone.
                let _ = std::fs::remove_dir(dir);
            }
            return Ok(existed);
        }
        Ok(self.tree(tree).remove(key)?.is_some())
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<(), StoreError> {
        if tree == Tree::Chunks {
            // Chunk scans are for finding keys (to delete or count): chunk bodies are large
            // and not read here, so the value visited is empty.
            for (key, _) in self.chunk_files(prefix)? {
                visit(&key, &[]);
            }
            return Ok(());
        }
        for entry in self.tree(tree).scan_prefix(prefix) {
            let (key, value) = entry?;
            visit(&key, &value);
        }
        Ok(())
    }

    fn open_chunk(
        &self,
        key: &[u8],
        fill: FillId,
        index: u32,
    ) -> Result<Option<ChunkReader>, StoreError> {
        let file = match std::fs::File::open(self.chunk_path(key)?) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match chunk_from_file(file, fill, index, false) {
            Some(opened) => opened.map(Some),
            None => Err(StoreError::Io("chunk header unreadable".to_owned())),
        }
    }

    /// `openat2(RESOLVE_CACHED)`: the path is resolved from the dentry cache only, and the
    /// header is read only from the page cache; anything that would wait for the disk (or a
    /// kernel without `RESOLVE_CACHED`) answers `None`.
    #[cfg(target_os = "linux")]
    fn open_chunk_cached(
        &self,
        key: &[u8],
        fill: FillId,
        index: u32,
    ) -> Option<Result<Option<ChunkReader>, StoreError>> {
        use rustix::fs::{openat2, Mode, OFlags, ResolveFlags, CWD};
        use rustix::io::Errno;
        let path = match self.chunk_path(key) {
            Ok(path) => path,
            Err(e) => return Some(Err(e)),
        };
        let fd = match openat2(
            CWD,
            &path,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::CACHED,
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Some(Ok(None)),
            // AGAIN: resolving needs I/O; NOSYS/INVAL: no `RESOLVE_CACHED` here.
            Err(_) => return None,
        };
        chunk_from_file(std::fs::File::from(fd), fill, index, true).map(|opened| opened.map(Some))
    }

    fn generate_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn available_space(&self) -> Result<Option<u64>, StoreError> {
        Ok(Some(fs4::available_space(&self.path)?))
    }
}

/// A chunk reader over an opened chunk file, after its framed header. With `cached_only`,
/// `None` if the header is not in the page cache; otherwise always `Some`.
fn chunk_from_file(
    file: std::fs::File,
    fill: FillId,
    index: u32,
    cached_only: bool,
) -> Option<Result<ChunkReader, StoreError>> {
    let corrupt = |detail: String| StoreError::Corrupt {
        key_or_fill: format!("fill {fill} chunk {index}"),
        detail,
    };
    let size = match file.metadata() {
        Ok(metadata) => metadata.len(),
        Err(e) => return Some(Err(e.into())),
    };
    let mut header = [0; codec::CHUNK_HEADER_LEN];
    if size < header.len() as u64 {
        return Some(Err(corrupt(format!("chunk too short ({size} bytes)"))));
    }
    let mut filled = 0;
    while filled < header.len() {
        let read = if cached_only {
            chunk_reader::read_at_nowait(&file, &mut header[filled..], filled as u64)?
        } else {
            chunk_reader::read_at(&file, &mut header[filled..], filled as u64)
        };
        match read {
            Ok(0) => return Some(Err(corrupt("chunk header cut short".to_owned()))),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Err(e.into())),
        }
    }
    let crc = match codec::decode_chunk_header(&header) {
        Ok(crc) => crc,
        Err(detail) => return Some(Err(corrupt(detail))),
    };
    let offset = header.len() as u64;
    Some(Ok(ChunkReader::file(
        file,
        offset,
        size - offset,
        crc,
        fill,
        index,
    )))
}

#[cfg(test)]
mod tests {
    use super::super::contract::{chunks_on_disk, commit_for, read_all, store_artifact, temp_sled};
    use super::super::{ArtifactStore, EvictionPolicy, StoreError, Usage};
    use super::*;

    const CACHE: u64 = 8 << 20;

    fn db_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("db")
    }

    /// Opens the store in `dir` again after the test dropped it. sled's background flusher
    /// may still hold the directory's lock for a moment after the last handle is dropped, so
    /// a refused lock is retried for a bounded time (a process restart has no such wait).
    fn reopen(dir: &tempfile::TempDir) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open(&db_path(dir), CACHE) {
                Ok(store) => return store,
                Err(e)
                    if e.to_string().contains("acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopening the store: {e}"),
            }
        }
    }

    #[test]
    fn reopen_keeps_artifacts_usage_and_lru_order() {
        let (store, dir) = temp_sled();
        let a = store_artifact(&store, "a", &[b"aaaa"]);
        store_artifact(&store, "b", &[b"bb", b"bb"]);
        store.touch("a");
        store.put_record("lists", b"mod", b"v1").unwrap();
        store.flush().unwrap();
        drop(store);

        let store = reopen(&dir);
        assert_eq!(store.lookup("a").unwrap(), Some(a.clone()));
        assert_eq!(read_all(&store, &a), b"aaaa");
        assert_eq!(
            store.usage(),
            Usage {
                artifacts: 2,
                bytes: 8
            }
        );
        assert_eq!(store.get_record("lists", b"mod").unwrap().unwrap(), b"v1");

        let newer = store_artifact(&store, "c", &[b"c"]);
        assert!(newer.fill > a.fill, "fill ids must not repeat after reopen");
        let policy = EvictionPolicy {
            max_bytes: Some(5),
            min_free_bytes: None,
            originals: None,
        };
        store.evict(&policy).unwrap();
        assert!(
            store.lookup("b").unwrap().is_none(),
            "b was used least recently"
        );
        assert!(store.lookup("a").unwrap().is_some());
        assert!(store.lookup("c").unwrap().is_some());
    }

    #[test]
    fn originals_survive_reopen() {
        let (store, dir) = temp_sled();
        let kept = store_artifact(&store, "v/kept", &[b"kkkk", b"kk"]);
        store_artifact(&store, "v/served", &[b"ssss"]);
        store.touch("v/served");
        let report = store
            .evict(&super::super::contract::keeping_originals(100, 95))
            .unwrap();
        assert_eq!(report.kept_as_originals, 1);
        store.flush().unwrap();
        drop(store);

        let store = reopen(&dir);
        assert_eq!(store.originals(""), [("v/kept".to_owned(), 6)]);
        assert!(store.lookup("v/kept").unwrap().is_none());
        assert_eq!(store.usage().bytes, 4);
        assert_eq!(chunks_on_disk(&store, kept.fill), 2);
        let restored = store.restore_original("v/kept").unwrap().expect("restored");
        assert_eq!(read_all(&store, &restored), b"kkkkkk");
        drop(store);

        let store = reopen(&dir);
        assert_eq!(store.lookup("v/kept").unwrap(), Some(kept));
        assert_eq!(store.originals(""), []);
    }

    #[test]
    fn kept_keys_survive_reopen() {
        let (store, dir) = temp_sled();
        store_artifact(&store, "kept", &[b"kkkk"]);
        store_artifact(&store, "loose", &[b"llll"]);
        store.set_kept("kept", true).unwrap();
        store.set_kept("not-yet-stored", true).unwrap();
        store.flush().unwrap();
        drop(store);

        let store = reopen(&dir);
        assert_eq!(store.kept(), ["kept", "not-yet-stored"]);
        let nothing = EvictionPolicy {
            max_bytes: Some(0),
            min_free_bytes: None,
            originals: None,
        };
        assert_eq!(store.evict(&nothing).unwrap().artifacts, 1);
        assert!(store.lookup("kept").unwrap().is_some());
    }

    #[test]
    fn uncommitted_fill_is_reclaimed_on_reopen() {
        let (store, dir) = temp_sled();
        let fill = store.begin_fill("k").unwrap();
        store.write_chunk(fill, 0, b"never committed").unwrap();
        // Persisted, so that the chunk is really on disk when the "crash" comes.
        store.flush().unwrap();
        assert_eq!(chunks_on_disk(&store, fill), 1);
        drop(store);

        let store = reopen(&dir);
        assert_eq!(store.lookup("k").unwrap(), None);
        assert_eq!(store.read_chunk(fill, 0).unwrap(), None);
        assert_eq!(chunks_on_disk(&store, fill), 0);
        assert_eq!(store.usage(), Usage::default());
    }

    #[test]
    fn chunks_awaiting_deletion_at_crash_are_reclaimed_on_reopen() {
        let (store, dir) = temp_sled();
        let meta = store_artifact(&store, "k", &[b"one", b"two"]);
        let pin = store.pin(meta.fill).unwrap();
        store.remove("k").unwrap();
        // The last pin drops, but no writing call follows to delete the chunks.
        drop(pin);
        store.raw().flush().unwrap();
        assert_eq!(chunks_on_disk(&store, meta.fill), 2);
        drop(store);

        let store = reopen(&dir);
        assert_eq!(chunks_on_disk(&store, meta.fill), 0);
    }

    #[test]
    fn chunk_damaged_on_disk_reads_as_corrupt() {
        let (store, dir) = temp_sled();
        let meta = store_artifact(&store, "k", &[b"intact", b"damaged"]);
        store.flush().unwrap();
        drop(store);

        {
            let key = codec::chunk_key(meta.fill, 1);
            let path = db_path(&dir)
                .join("chunks")
                .join(hex::encode(&key[..8]))
                .join(hex::encode(&key[8..]));
            let mut value = std::fs::read(&path).unwrap();
            value[7] ^= 0x20;
            std::fs::write(&path, value).unwrap();
        }

        let store = reopen(&dir);
        assert_eq!(store.lookup("k").unwrap(), Some(meta.clone()));
        assert_eq!(store.read_chunk(meta.fill, 0).unwrap().unwrap(), "intact");
        let err = store.read_chunk(meta.fill, 1).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { detail, .. } if detail.contains("crc32")),
            "{err}"
        );
    }

    #[test]
    fn eviction_honours_min_free_space() {
        let (store, _dir) = temp_sled();
        store_artifact(&store, "a", &[b"aaaa"]);
        store_artifact(&store, "b", &[b"bb"]);
        let modest = EvictionPolicy {
            max_bytes: None,
            min_free_bytes: Some(1),
            originals: None,
        };
        assert_eq!(store.evict(&modest).unwrap().artifacts, 0);

        let impossible = EvictionPolicy {
            max_bytes: None,
            min_free_bytes: Some(u64::MAX),
            originals: None,
        };
        let report = store.evict(&impossible).unwrap();
        assert_eq!((report.artifacts, report.bytes), (2, 6));
        assert_eq!(store.usage(), Usage::default());
    }

    #[test]
    fn failed_commit_before_crash_leaves_nothing_after_reopen() {
        let (store, dir) = temp_sled();
        let fill = store.begin_fill("k").unwrap();
        store.write_chunk(fill, 0, b"short").unwrap();
        assert!(store.commit_fill("k", fill, commit_for(b"longer")).is_err());
        store.flush().unwrap();
        drop(store);

        let store = reopen(&dir);
        assert_eq!(store.lookup("k").unwrap(), None);
        assert_eq!(chunks_on_disk(&store, fill), 0);
    }
}
