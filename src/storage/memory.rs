//! `MemoryStore`: the store's logic over in-process maps, for tests and ephemeral caches.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use super::engine::{Backend, Engine, Tree};
use super::StoreError;

/// Same semantics as `SledStore` (the logic is shared); nothing survives the process.
pub type MemoryStore = Engine<MemoryBackend>;

impl MemoryStore {
    pub fn new() -> Self {
        Engine::empty(MemoryBackend::default())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Default)]
pub struct MemoryBackend {
    trees: [Mutex<BTreeMap<Vec<u8>, Bytes>>; Tree::ALL.len()],
    next_id: AtomicU64,
}

impl MemoryBackend {
    fn tree(&self, tree: Tree) -> MutexGuard<'_, BTreeMap<Vec<u8>, Bytes>> {
        // A map holds no invariant a panicking caller could have broken half-way.
        self.trees[tree as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backend for MemoryBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        Ok(self.tree(tree).get(key).cloned())
    }

    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.tree(tree).insert(key.to_vec(), Bytes::from(value));
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.tree(tree).remove(key).is_some())
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<(), StoreError> {
        let map = self.tree(tree);
        for (key, value) in map.range(prefix.to_vec()..) {
            if !key.starts_with(prefix) {
                break;
            }
            visit(key, value);
        }
        Ok(())
    }

    fn generate_id(&self) -> Result<u64, StoreError> {
        Ok(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn available_space(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
}
