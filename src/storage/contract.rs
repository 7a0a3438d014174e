//! The `ArtifactStore` contract, written once and run against `MemoryStore`, `SledStore` and
//! `TieredStore` (sled in front of a real S3 server; the cases that hold for a hot tier whose
//! bucket keeps what the hot tier evicts, replaces or loses a commit race for).

use std::collections::HashSet;

use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::codec;
use super::engine::{Backend, Engine, Tree};
use super::{
    ArtifactMeta, ArtifactStore, Commit, EvictionPolicy, EvictionReport, FillId, MemoryStore,
    OriginalsPolicy, SledStore, StoreError, TieredStore, Usage, FORMAT_VERSION,
};

/// A store under test, with a way to reach the bytes its local tier keeps.
pub(super) trait Subject: ArtifactStore {
    type Raw: Backend;
    fn raw_backend(&self) -> &Self::Raw;
}

impl<B: Backend> Subject for Engine<B> {
    type Raw = B;
    fn raw_backend(&self) -> &B {
        self.raw()
    }
}

impl<B: Backend> Subject for TieredStore<Engine<B>> {
    type Raw = B;
    fn raw_backend(&self) -> &B {
        self.local().raw()
    }
}

pub(super) fn temp_sled() -> (SledStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("db"), 8 << 20).unwrap();
    (store, dir)
}

pub(super) fn commit_for(data: &[u8]) -> Commit {
    Commit {
        len: data.len() as u64,
        sha256: Sha256::digest(data).into(),
        headers: vec![("content-type".into(), "application/zip".into())],
    }
}

pub(super) fn store_artifact(s: &dyn ArtifactStore, key: &str, chunks: &[&[u8]]) -> ArtifactMeta {
    let fill = s.begin_fill(key).unwrap();
    for (index, chunk) in chunks.iter().enumerate() {
        s.write_chunk(fill, index as u32, chunk).unwrap();
    }
    s.commit_fill(key, fill, commit_for(&chunks.concat()))
        .unwrap()
}

pub(super) fn read_all(s: &dyn ArtifactStore, meta: &ArtifactMeta) -> Vec<u8> {
    (0..meta.chunk_count)
        .flat_map(|index| s.read_chunk(meta.fill, index).unwrap().unwrap())
        .collect()
}

/// Chunks physically present, whether or not the store would still serve them.
pub(super) fn chunks_on_disk<S: Subject>(s: &S, fill: FillId) -> usize {
    let mut count = 0;
    s.raw_backend()
        .scan(Tree::Chunks, &codec::fill_key(fill), &mut |_, _| count += 1)
        .unwrap();
    count
}

macro_rules! contract_tests {
    ($make:expr) => {
        contract_tests!(@cases $make;
            lookup_of_absent_key_is_none,
            committed_artifact_reads_back,
            in_progress_fill_is_readable_but_invisible,
            commit_with_wrong_length_is_rejected,
            commit_with_wrong_sha_is_rejected_and_keeps_old_artifact,
            out_of_order_write_is_rejected,
            abort_leaves_nothing,
            replacement_publishes_new_fill_and_drops_old,
            remove_unpublishes_and_deletes_chunks,
            pin_defers_deletion_on_remove,
            pin_defers_deletion_on_replace,
            pin_defers_deletion_on_evict,
            pin_defers_deletion_on_abort,
            pin_of_deleted_fill_is_none,
            eviction_removes_least_recently_touched_first,
            kept_keys_are_never_evicted,
            usage_tracks_commits_replacements_and_removals,
            records_put_get_remove,
            unknown_format_version_reads_as_absent,
            damaged_chunk_reads_as_corrupt,
            concurrent_commits_keep_disk_and_memory_in_step,
            opened_chunks_read_back_in_pieces,
            damaged_chunk_opened_fails_at_its_end,
            touch_if_current_follows_replacement_removal_and_eviction,
            evicted_artifacts_keep_their_bytes_as_originals,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let (store, _dir) = $make;
                super::$case(&store);
            }
        )*
    };
}

mod memory {
    use super::*;
    contract_tests!((MemoryStore::new(), ()));
}

mod sled_store {
    use super::*;
    contract_tests!(temp_sled());
}

/// Runs the contract against sled in front of a real S3 server (SeaweedFS, started once per
/// test binary), each case under a bucket prefix of its own.
mod tiered {
    use super::*;

    contract_tests!(@cases match temp_tiered() { Some(subject) => subject, None => return };
        lookup_of_absent_key_is_none,
        committed_artifact_reads_back,
        in_progress_fill_is_readable_but_invisible,
        commit_with_wrong_length_is_rejected,
        commit_with_wrong_sha_is_rejected_and_keeps_old_artifact,
        out_of_order_write_is_rejected,
        abort_leaves_nothing,
        remove_unpublishes_and_deletes_chunks,
        pin_defers_deletion_on_remove,
        pin_defers_deletion_on_replace,
        pin_defers_deletion_on_evict,
        pin_defers_deletion_on_abort,
        pin_of_deleted_fill_is_none,
        records_put_get_remove,
        damaged_chunk_reads_as_corrupt,
        concurrent_commits_keep_disk_and_memory_in_step,
    );
}

#[path = "../../tests/support/s3_server.rs"]
pub(super) mod s3_server;

/// Settings for a fresh prefix on the test S3 server; `None` when S3 tests are skipped.
pub(super) fn test_bucket_settings() -> Option<super::s3::S3Settings> {
    let server = s3_server::server()?;
    Some(super::s3::S3Settings {
        endpoint: server.endpoint.clone(),
        bucket: s3_server::BUCKET.to_owned(),
        region: "us-east-1".to_owned(),
        prefix: s3_server::unique_prefix(),
        path_style: true,
        credentials: super::s3::S3Credentials {
            access_key_id: s3_server::ACCESS_KEY.to_owned(),
            secret_access_key: s3_server::SECRET_KEY.to_owned(),
            session_token: None,
        },
    })
}

pub(super) fn temp_tiered_on(
    settings: &super::s3::S3Settings,
) -> (TieredStore<SledStore>, tempfile::TempDir) {
    let (local, dir) = temp_sled();
    let bucket = super::s3::Bucket::open(settings).unwrap();
    let store = TieredStore::new(
        local,
        std::sync::Arc::new(bucket),
        EvictionPolicy::default(),
    );
    (store, dir)
}

pub(super) fn temp_tiered() -> Option<(TieredStore<SledStore>, tempfile::TempDir)> {
    Some(temp_tiered_on(&test_bucket_settings()?))
}

fn lookup_of_absent_key_is_none<S: Subject>(s: &S) {
    assert_eq!(s.lookup("golang.org/x/mod/@v/v0.1.0.zip").unwrap(), None);
    assert!(s.lookup_pinned("absent").unwrap().is_none());
}

fn committed_artifact_reads_back<S: Subject>(s: &S) {
    let meta = store_artifact(s, "k", &[b"hello ", b"world"]);
    assert_eq!(meta.len, 11);
    assert_eq!(meta.chunk_count, 2);
    assert_eq!(
        meta.sha256,
        <[u8; 32]>::from(Sha256::digest(b"hello world"))
    );
    assert_eq!(meta.headers, commit_for(b"").headers);
    assert!(meta.stored_at_unix > 0);

    assert_eq!(s.lookup("k").unwrap(), Some(meta.clone()));
    assert_eq!(read_all(s, &meta), b"hello world");
    assert_eq!(s.read_chunk(meta.fill, 2).unwrap(), None);

    let empty = store_artifact(s, "empty", &[]);
    assert_eq!((empty.len, empty.chunk_count), (0, 0));
    assert_eq!(s.lookup("empty").unwrap(), Some(empty));
}

fn in_progress_fill_is_readable_but_invisible<S: Subject>(s: &S) {
    let fill = s.begin_fill("k").unwrap();
    let _pin = s.pin(fill).unwrap();
    s.write_chunk(fill, 0, b"first").unwrap();
    assert_eq!(s.read_chunk(fill, 0).unwrap().unwrap(), "first");
    assert_eq!(s.read_chunk(fill, 1).unwrap(), None);
    s.write_chunk(fill, 1, b"second").unwrap();
    assert_eq!(s.read_chunk(fill, 1).unwrap().unwrap(), "second");
    assert_eq!(s.lookup("k").unwrap(), None);
    assert_eq!(s.usage(), Usage::default());

    s.commit_fill("k", fill, commit_for(b"firstsecond"))
        .unwrap();
    assert_eq!(s.read_chunk(fill, 1).unwrap().unwrap(), "second");
}

fn commit_with_wrong_length_is_rejected<S: Subject>(s: &S) {
    let fill = s.begin_fill("k").unwrap();
    s.write_chunk(fill, 0, b"truncated").unwrap();
    let err = s
        .commit_fill("k", fill, commit_for(b"truncated body"))
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Integrity {
            expected_len: 14,
            got_len: 9,
            sha256_matches: false
        }
    );
    assert_eq!(s.lookup("k").unwrap(), None);
    assert_eq!(s.usage(), Usage::default());
    assert_eq!(s.read_chunk(fill, 0).unwrap(), None);
    assert_eq!(chunks_on_disk(s, fill), 0);
    assert_eq!(
        s.write_chunk(fill, 1, b"more"),
        Err(StoreError::UnknownFill(fill))
    );
}

fn commit_with_wrong_sha_is_rejected_and_keeps_old_artifact<S: Subject>(s: &S) {
    let old = store_artifact(s, "k", &[b"good"]);
    let fill = s.begin_fill("k").unwrap();
    s.write_chunk(fill, 0, b"evil").unwrap();
    let err = s.commit_fill("k", fill, commit_for(b"good")).unwrap_err();
    assert_eq!(
        err,
        StoreError::Integrity {
            expected_len: 4,
            got_len: 4,
            sha256_matches: false
        }
    );
    assert_eq!(s.lookup("k").unwrap(), Some(old.clone()));
    assert_eq!(read_all(s, &old), b"good");
    assert_eq!(chunks_on_disk(s, fill), 0);
}

fn out_of_order_write_is_rejected<S: Subject>(s: &S) {
    let fill = s.begin_fill("k").unwrap();
    let skipped = StoreError::OutOfOrder {
        fill,
        expected: 0,
        got: 1,
    };
    assert_eq!(s.write_chunk(fill, 1, b"b"), Err(skipped));
    s.write_chunk(fill, 0, b"a").unwrap();
    let repeated = StoreError::OutOfOrder {
        fill,
        expected: 1,
        got: 0,
    };
    assert_eq!(s.write_chunk(fill, 0, b"a"), Err(repeated));
    s.write_chunk(fill, 1, b"b").unwrap();
    let meta = s.commit_fill("k", fill, commit_for(b"ab")).unwrap();
    assert_eq!(read_all(s, &meta), b"ab");
    assert_eq!(
        s.write_chunk(FillId(u64::MAX), 0, b"x"),
        Err(StoreError::UnknownFill(FillId(u64::MAX)))
    );
}

fn abort_leaves_nothing<S: Subject>(s: &S) {
    let fill = s.begin_fill("k").unwrap();
    s.write_chunk(fill, 0, b"partial").unwrap();
    s.abort_fill(fill);
    s.abort_fill(fill);
    assert_eq!(s.read_chunk(fill, 0).unwrap(), None);
    assert_eq!(chunks_on_disk(s, fill), 0);
    assert_eq!(
        s.commit_fill("k", fill, commit_for(b"partial")),
        Err(StoreError::UnknownFill(fill))
    );
    assert_eq!(s.lookup("k").unwrap(), None);
    assert_eq!(s.usage(), Usage::default());

    let committed = store_artifact(s, "kept", &[b"x"]);
    s.abort_fill(committed.fill);
    assert_eq!(read_all(s, &committed), b"x");
}

fn replacement_publishes_new_fill_and_drops_old<S: Subject>(s: &S) {
    let old = store_artifact(s, "k", &[b"old"]);
    let new = store_artifact(s, "k", &[b"newer"]);
    assert_ne!(old.fill, new.fill);
    assert_eq!(s.lookup("k").unwrap(), Some(new.clone()));
    assert_eq!(read_all(s, &new), b"newer");
    assert_eq!(s.read_chunk(old.fill, 0).unwrap(), None);
    assert_eq!(chunks_on_disk(s, old.fill), 0);
    assert_eq!(
        s.usage(),
        Usage {
            artifacts: 1,
            bytes: 5
        }
    );
}

fn remove_unpublishes_and_deletes_chunks<S: Subject>(s: &S) {
    let meta = store_artifact(s, "k", &[b"data"]);
    assert!(s.remove("k").unwrap());
    assert!(!s.remove("k").unwrap());
    assert_eq!(s.lookup("k").unwrap(), None);
    assert_eq!(s.read_chunk(meta.fill, 0).unwrap(), None);
    assert_eq!(chunks_on_disk(s, meta.fill), 0);
    assert_eq!(s.usage(), Usage::default());
}

/// Pins `k`'s fill twice, lets `unpublish` drop the artifact, and checks the chunks outlive
/// the first pin but not the second.
fn assert_pin_defers_deletion<S: Subject>(s: &S, unpublish: impl FnOnce(&S)) {
    let meta = store_artifact(s, "k", &[b"one", b"two"]);
    let first = s.pin(meta.fill).unwrap();
    let second = s.pin(meta.fill).unwrap();
    unpublish(s);
    assert_ne!(s.lookup("k").unwrap().map(|m| m.fill), Some(meta.fill));
    s.flush().unwrap();
    assert_eq!(read_all(s, &meta), b"onetwo");

    drop(first);
    s.flush().unwrap();
    assert_eq!(read_all(s, &meta), b"onetwo");

    drop(second);
    assert_eq!(s.read_chunk(meta.fill, 0).unwrap(), None);
    s.flush().unwrap();
    assert_eq!(chunks_on_disk(s, meta.fill), 0);
}

fn pin_defers_deletion_on_remove<S: Subject>(s: &S) {
    assert_pin_defers_deletion(s, |s| assert!(s.remove("k").unwrap()));
}

fn pin_defers_deletion_on_replace<S: Subject>(s: &S) {
    assert_pin_defers_deletion(s, |s| {
        store_artifact(s, "k", &[b"replacement"]);
    });
}

fn pin_defers_deletion_on_evict<S: Subject>(s: &S) {
    assert_pin_defers_deletion(s, |s| {
        let policy = EvictionPolicy {
            max_bytes: Some(0),
            min_free_bytes: None,
            originals: None,
        };
        let report = s.evict(&policy).unwrap();
        assert_eq!(
            report,
            EvictionReport {
                artifacts: 1,
                bytes: 6,
                ..EvictionReport::default()
            }
        );
    });
}

fn pin_defers_deletion_on_abort<S: Subject>(s: &S) {
    let fill = s.begin_fill("k").unwrap();
    let pin = s.pin(fill).unwrap();
    s.write_chunk(fill, 0, b"partial").unwrap();
    s.abort_fill(fill);
    assert_eq!(s.read_chunk(fill, 0).unwrap().unwrap(), "partial");
    drop(pin);
    assert_eq!(s.read_chunk(fill, 0).unwrap(), None);
    s.flush().unwrap();
    assert_eq!(chunks_on_disk(s, fill), 0);
}

fn pin_of_deleted_fill_is_none<S: Subject>(s: &S) {
    let meta = store_artifact(s, "k", &[b"x"]);
    s.remove("k").unwrap();
    assert!(s.pin(meta.fill).is_none());
    assert!(s.pin(FillId(u64::MAX)).is_none());

    let current = store_artifact(s, "k", &[b"y"]);
    let (found, pin) = s.lookup_pinned("k").unwrap().unwrap();
    assert_eq!((found.fill, pin.fill()), (current.fill, current.fill));
}

fn eviction_removes_least_recently_touched_first<S: Subject>(s: &S) {
    let ten = [0u8; 10];
    for key in ["a", "b", "c"] {
        store_artifact(s, key, &[&ten]);
    }
    s.touch("a");
    let budget = |max_bytes| EvictionPolicy {
        max_bytes: Some(max_bytes),
        min_free_bytes: None,
        originals: None,
    };
    let present = |s: &S| -> Vec<&str> {
        ["a", "b", "c", "d"]
            .into_iter()
            .filter(|key| s.lookup(key).unwrap().is_some())
            .collect()
    };

    let report = s.evict(&budget(20)).unwrap();
    assert_eq!(
        report,
        EvictionReport {
            artifacts: 1,
            bytes: 10,
            ..EvictionReport::default()
        }
    );
    assert_eq!(present(s), ["a", "c"]);

    assert_eq!(s.evict(&budget(20)).unwrap(), EvictionReport::default());
    assert_eq!(s.evict(&EvictionPolicy::default()).unwrap().artifacts, 0);

    store_artifact(s, "d", &[&ten]);
    assert_eq!(s.evict(&budget(10)).unwrap().artifacts, 2);
    assert_eq!(present(s), ["d"]);
    assert_eq!(
        s.usage(),
        Usage {
            artifacts: 1,
            bytes: 10
        }
    );
}

fn kept_keys_are_never_evicted<S: Subject>(s: &S) {
    let ten = [0u8; 10];
    // Kept before it is stored, as `warm --pin` may do.
    assert!(s.set_kept("old", true).unwrap());
    assert!(
        !s.set_kept("old", true).unwrap(),
        "keeping twice changes nothing"
    );
    for key in ["old", "mid", "new"] {
        store_artifact(s, key, &[&ten]);
    }
    assert_eq!(s.keys(""), ["mid", "new", "old"]);
    assert_eq!(s.keys("n"), ["new"]);
    assert_eq!(s.kept(), ["old"]);
    assert_eq!(
        s.kept_usage(),
        Usage {
            artifacts: 1,
            bytes: 10
        }
    );

    let nothing = EvictionPolicy {
        max_bytes: Some(0),
        min_free_bytes: None,
        originals: None,
    };
    let report = s.evict(&nothing).unwrap();
    assert_eq!(report.artifacts, 2, "everything but the kept key goes");
    assert!(s.lookup("old").unwrap().is_some());
    assert_eq!(s.keys(""), ["old"]);

    assert!(s.set_kept("old", false).unwrap());
    assert_eq!(s.kept_usage(), Usage::default());
    assert_eq!(s.evict(&nothing).unwrap().artifacts, 1);
    assert!(s.kept().is_empty());
    assert!(
        s.record_keys("kept").unwrap().is_empty(),
        "kept keys are records"
    );
}

fn usage_tracks_commits_replacements_and_removals<S: Subject>(s: &S) {
    assert_eq!(s.usage(), Usage::default());
    store_artifact(s, "a", &[b"12345"]);
    store_artifact(s, "b", &[b"123", b"45678"]);
    assert_eq!(
        s.usage(),
        Usage {
            artifacts: 2,
            bytes: 13
        }
    );
    store_artifact(s, "a", &[b"1"]);
    assert_eq!(
        s.usage(),
        Usage {
            artifacts: 2,
            bytes: 9
        }
    );
    let fill = s.begin_fill("c").unwrap();
    s.write_chunk(fill, 0, b"in progress").unwrap();
    assert_eq!(s.usage().bytes, 9);
    s.remove("b").unwrap();
    assert_eq!(
        s.usage(),
        Usage {
            artifacts: 1,
            bytes: 1
        }
    );
}

fn records_put_get_remove<S: Subject>(s: &S) {
    assert_eq!(s.get_record("lists", b"mod").unwrap(), None);
    s.put_record("lists", b"mod", b"v1\nv2\n").unwrap();
    s.put_record("auth", b"mod", b"allow").unwrap();
    assert_eq!(s.get_record("lists", b"mod").unwrap().unwrap(), b"v1\nv2\n");
    assert_eq!(s.get_record("auth", b"mod").unwrap().unwrap(), b"allow");
    s.put_record("lists", b"a", b"").unwrap();
    assert_eq!(
        s.record_keys("lists").unwrap(),
        [b"a".to_vec(), b"mod".to_vec()]
    );
    assert_eq!(s.record_keys("auth").unwrap(), [b"mod".to_vec()]);
    assert!(s.remove_record("lists", b"a").unwrap());

    s.put_record("lists", b"mod", b"").unwrap();
    assert_eq!(s.get_record("lists", b"mod").unwrap().unwrap(), b"");

    assert!(s.remove_record("lists", b"mod").unwrap());
    assert!(!s.remove_record("lists", b"mod").unwrap());
    assert_eq!(s.get_record("lists", b"mod").unwrap(), None);
    assert!(s.get_record("auth", b"mod").unwrap().is_some());

    let long = "n".repeat(256);
    assert_eq!(
        s.put_record(&long, b"k", b"v"),
        Err(StoreError::NamespaceTooLong)
    );
}

fn unknown_format_version_reads_as_absent<S: Subject>(s: &S) {
    let meta = store_artifact(s, "k", &[b"data"]);
    let mut future = codec::encode_meta(&meta).unwrap();
    future[0] = FORMAT_VERSION + 1;
    s.raw_backend()
        .insert(Tree::Artifacts, b"k", future)
        .unwrap();
    assert_eq!(s.lookup("k").unwrap(), None);
    assert_eq!(s.raw_backend().get(Tree::Artifacts, b"k").unwrap(), None);
    assert_eq!(s.usage(), Usage::default());
    assert_eq!(chunks_on_disk(s, meta.fill), 0);

    s.raw_backend()
        .insert(Tree::Artifacts, b"garbled", vec![FORMAT_VERSION, b'{'])
        .unwrap();
    assert_eq!(s.lookup("garbled").unwrap(), None);

    let key = codec::record_key("lists", b"r").unwrap();
    s.raw_backend()
        .insert(Tree::Records, &key, vec![FORMAT_VERSION + 1, 1, 2])
        .unwrap();
    assert_eq!(s.get_record("lists", b"r").unwrap(), None);
    assert_eq!(s.raw_backend().get(Tree::Records, &key).unwrap(), None);
}

fn damaged_chunk_reads_as_corrupt<S: Subject>(s: &S) {
    let meta = store_artifact(s, "k", &[b"intact", b"damaged"]);
    let key = codec::chunk_key(meta.fill, 1);
    let mut raw = s
        .raw_backend()
        .get(Tree::Chunks, &key)
        .unwrap()
        .unwrap()
        .to_vec();
    *raw.last_mut().unwrap() ^= 0x01;
    s.raw_backend().insert(Tree::Chunks, &key, raw).unwrap();

    assert_eq!(s.read_chunk(meta.fill, 0).unwrap().unwrap(), "intact");
    assert!(matches!(
        s.read_chunk(meta.fill, 1),
        Err(StoreError::Corrupt { .. })
    ));
    // What the proxy does on detection: drop the artifact so the next request refetches it.
    assert!(s.remove("k").unwrap());
    assert_eq!(chunks_on_disk(s, meta.fill), 0);
}

fn concurrent_commits_keep_disk_and_memory_in_step<S: Subject>(s: &S) {
    let fills: Vec<FillId> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4u8)
            .map(|worker| {
                scope.spawn(move || {
                    let mut fills = Vec::new();
                    for round in 0..10u8 {
                        let body = [worker, round, 0, 1, 2];
                        fills.push(store_artifact(s, "shared", &[&body[..2], &body[2..]]).fill);
                        let own = store_artifact(s, &format!("own-{worker}"), &[&body]);
                        fills.push(own.fill);
                        if let Some((meta, _pin)) = s.lookup_pinned("shared").unwrap() {
                            assert_eq!(read_all(s, &meta).len(), 5);
                        }
                    }
                    fills
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    s.flush().unwrap();

    let live: HashSet<FillId> = ["shared", "own-0", "own-1", "own-2", "own-3"]
        .into_iter()
        .map(|key| s.lookup(key).unwrap().unwrap().fill)
        .collect();
    assert_eq!(
        s.usage(),
        Usage {
            artifacts: 5,
            bytes: 25
        }
    );
    for fill in fills {
        let on_disk = chunks_on_disk(s, fill);
        assert_eq!(
            on_disk > 0,
            live.contains(&fill),
            "fill {fill}: {on_disk} chunks"
        );
    }
}

proptest! {
    #[test]
    fn any_chunking_round_trips(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16)
    ) {
        let store = MemoryStore::new();
        let slices: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let meta = store_artifact(&store, "k", &slices);
        prop_assert_eq!(read_all(&store, &meta), chunks.concat());
        prop_assert_eq!(meta.chunk_count as usize, chunks.len());
    }
}

/// Reads every chunk of `meta` through `open_chunk` in pieces of `piece` bytes.
fn read_in_pieces(s: &dyn ArtifactStore, meta: &ArtifactMeta, piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0; piece];
    for index in 0..meta.chunk_count {
        let mut chunk = s.open_chunk(meta.fill, index).unwrap().unwrap();
        loop {
            let n = match chunk.read_cached(&mut buf).unwrap() {
                super::Cached::Read(n) => n,
                super::Cached::WouldBlock => chunk.read(&mut buf).unwrap(),
            };
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }
    out
}

fn opened_chunks_read_back_in_pieces<B: Backend>(s: &Engine<B>) {
    let meta = store_artifact(s, "k", &[b"hello ", b"world", b"!"]);
    for piece in [1, 4, 64] {
        assert_eq!(read_in_pieces(s, &meta, piece), b"hello world!");
    }
    assert!(s.open_chunk(meta.fill, 3).unwrap().is_none());
    // Like `read_chunk`: gone once unreferenced and unpinned.
    s.remove("k").unwrap();
    assert!(s.open_chunk(meta.fill, 0).unwrap().is_none());
}

fn damaged_chunk_opened_fails_at_its_end<B: Backend>(s: &Engine<B>) {
    let meta = store_artifact(s, "k", &[b"damaged chunk"]);
    let key = codec::chunk_key(meta.fill, 0);
    let mut raw = s.raw().get(Tree::Chunks, &key).unwrap().unwrap().to_vec();
    *raw.last_mut().unwrap() ^= 0x01;
    s.raw().insert(Tree::Chunks, &key, raw).unwrap();
    // Either at opening (a store that checks whole chunks) or by the last piece.
    let failed = match s.open_chunk(meta.fill, 0) {
        Err(e) => Some(e),
        Ok(chunk) => {
            let mut chunk = chunk.unwrap();
            let mut buf = [0; 4];
            loop {
                match chunk.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(_) => {}
                    Err(e) => break Some(e),
                }
            }
        }
    };
    assert!(
        matches!(failed, Some(StoreError::Corrupt { .. })),
        "{failed:?}"
    );
}

fn touch_if_current_follows_replacement_removal_and_eviction<B: Backend>(s: &Engine<B>) {
    let first = store_artifact(s, "k", &[b"one"]);
    assert!(s.touch_if_current("k", first.fill));
    assert!(!s.touch_if_current("other", first.fill));
    let second = store_artifact(s, "k", &[b"two"]);
    assert!(!s.touch_if_current("k", first.fill), "replaced");
    assert!(s.touch_if_current("k", second.fill));
    s.remove("k").unwrap();
    assert!(!s.touch_if_current("k", second.fill), "removed");

    // A use recorded through it counts for eviction like `touch`.
    let old = store_artifact(s, "old", &[b"aaaa"]);
    let new = store_artifact(s, "new", &[b"bbbb"]);
    assert!(s.touch_if_current("old", old.fill));
    s.evict(&EvictionPolicy {
        max_bytes: Some(4),
        min_free_bytes: None,
        originals: None,
    })
    .unwrap();
    assert!(!s.touch_if_current("new", new.fill), "evicted");
    assert!(s.touch_if_current("old", old.fill), "used last, kept");
}

/// Keys under `v/` keep their bytes when evicted (as versioned artifacts do).
pub(super) fn versioned(key: &str) -> bool {
    key.starts_with("v/")
}

pub(super) fn keeping_originals(max_bytes: u64, room: u64) -> EvictionPolicy {
    EvictionPolicy {
        max_bytes: Some(max_bytes),
        min_free_bytes: None,
        originals: Some(OriginalsPolicy {
            max_bytes: room,
            applies_to: versioned,
        }),
    }
}

fn evicted_artifacts_keep_their_bytes_as_originals<B: Backend>(s: &Engine<B>) {
    let ten = [7u8; 10];
    let a = store_artifact(s, "v/a", &[&ten]);
    let b = store_artifact(s, "v/b", &[&ten]);
    store_artifact(s, "other", &[&ten]);

    // 30 bytes stored, 40 allowed, 20 set aside for originals: the served 30 come down to
    // 20 and the least recently used goes, its bytes kept.
    let report = s.evict(&keeping_originals(40, 20)).unwrap();
    assert_eq!(
        report,
        EvictionReport {
            artifacts: 1,
            bytes: 10,
            kept_as_originals: 1,
            ..EvictionReport::default()
        }
    );
    assert!(s.lookup("v/a").unwrap().is_none(), "no longer served");
    assert!(!s.touch_if_current("v/a", a.fill));
    assert_eq!(s.keys(""), ["other", "v/b"]);
    assert_eq!(s.originals(""), [("v/a".to_owned(), 10)]);
    assert_eq!(s.originals("x"), []);
    assert_eq!(
        (s.usage(), s.originals_usage()),
        (
            Usage {
                artifacts: 2,
                bytes: 20
            },
            Usage {
                artifacts: 1,
                bytes: 10
            }
        )
    );
    assert_eq!(chunks_on_disk(s, a.fill), 1, "the bytes are kept");

    // Restored in place: the same fill, served again.
    let restored = s.restore_original("v/a").unwrap().expect("restored");
    assert_eq!(restored, a);
    assert_eq!(s.lookup("v/a").unwrap(), Some(a.clone()));
    assert_eq!(read_all(s, &a), ten);
    assert_eq!(s.originals(""), []);
    assert_eq!(s.usage().bytes, 30);
    assert!(
        s.restore_original("v/a").unwrap().is_none(),
        "nothing kept now"
    );

    // A new artifact under a key makes its original go.
    s.evict(&keeping_originals(40, 20)).unwrap();
    assert_eq!(s.originals(""), [("v/b".to_owned(), 10)]);
    let b2 = store_artifact(s, "v/b", &[b"newer"]);
    assert_eq!(s.originals(""), []);
    assert_eq!(
        chunks_on_disk(s, b.fill),
        0,
        "the replaced original's bytes are gone"
    );
    assert!(s.restore_original("v/b").unwrap().is_none());
    assert_eq!(s.lookup("v/b").unwrap(), Some(b2));

    // Everything served must go: versioned keys are kept, others deleted.
    let report = s.evict(&keeping_originals(30, 30)).unwrap();
    assert_eq!((report.artifacts, report.kept_as_originals), (3, 2));
    assert_eq!(
        s.originals(""),
        [("v/a".to_owned(), 10), ("v/b".to_owned(), 5)]
    );
    assert_eq!(s.usage(), Usage::default());

    // Originals beyond their share go, oldest first.
    let report = s.evict(&keeping_originals(30, 6)).unwrap();
    assert_eq!(
        (report.originals_dropped, report.originals_dropped_bytes),
        (1, 10)
    );
    assert_eq!(s.originals(""), [("v/b".to_owned(), 5)]);
    assert_eq!(chunks_on_disk(s, a.fill), 0);

    // Without a share for them, eviction deletes them; removal does too.
    assert!(
        s.remove("v/b").unwrap(),
        "removing an original is a removal"
    );
    assert_eq!(s.originals_usage(), Usage::default());
    store_artifact(s, "v/c", &[&ten]);
    s.evict(&keeping_originals(0, 0)).unwrap();
    assert_eq!(s.originals(""), []);
    assert_eq!(s.usage(), Usage::default());
}
