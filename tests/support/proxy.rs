//! Starts the proxy in-process on 127.0.0.1:0 in front of a given upstream, with a temporary data directory.

use std::sync::Arc;

use gitlab_pkg_cache::config::Config;
use gitlab_pkg_cache::server::Running;
use gitlab_pkg_cache::state::AppState;
use gitlab_pkg_cache::storage::ArtifactStore;

/// A proxy running in the test's runtime.
pub struct TestProxy {
    running: Running,
    pub state: Arc<AppState>,
    pub data_dir: tempfile::TempDir,
}

impl TestProxy {
    /// A proxy with the test defaults in front of `upstream`.
    pub async fn start(upstream: &str) -> TestProxy {
        TestProxy::start_with(upstream, |_| {}).await
    }

    /// A proxy whose configuration `adjust` may change first.
    pub async fn start_with(upstream: &str, adjust: impl FnOnce(&mut Config)) -> TestProxy {
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        TestProxy::start_in(upstream, data_dir, adjust).await
    }

    /// A proxy on an existing data directory (restart tests).
    pub async fn start_in(
        upstream: &str,
        data_dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut Config),
    ) -> TestProxy {
        let mut config = Config::for_tests(upstream, data_dir.path()).expect("test config");
        adjust(&mut config);
        // sled lets go of its lock file from a background thread shortly after the previous
        // proxy on this directory is dropped.
        let mut attempts = 0;
        let state = loop {
            match AppState::build(config.clone()) {
                Ok(state) => break state,
                Err(e) if attempts < 200 && e.to_string().contains("acquire lock") => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => panic!("proxy state: {e}"),
            }
        };
        TestProxy::run(state, data_dir).await
    }

    /// A proxy around a given artifact store (fault injection).
    pub async fn start_with_store(
        upstream: &str,
        store: Arc<dyn ArtifactStore>,
        adjust: impl FnOnce(&mut Config),
    ) -> TestProxy {
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        let mut config = Config::for_tests(upstream, data_dir.path()).expect("test config");
        adjust(&mut config);
        let state = AppState::build_with_store(config, store).expect("proxy state");
        TestProxy::run(state, data_dir).await
    }

    async fn run(state: Arc<AppState>, data_dir: tempfile::TempDir) -> TestProxy {
        let running = Running::start(state.clone()).await.expect("proxy listener");
        TestProxy {
            running,
            state,
            data_dir,
        }
    }

    /// Whether the first copy of `key` has its integrity fingerprint recorded (read from the
    /// blocking store, so that it can run in `support::eventually`'s condition).
    #[allow(dead_code)]
    pub fn fingerprinted(&self, key: &str) -> bool {
        matches!(
            self.state
                .fills
                .store()
                .inner()
                .get_record("integrity", key.as_bytes()),
            Ok(Some(_))
        )
    }

    pub fn url(&self) -> String {
        self.running.url()
    }

    /// Stops the proxy and hands back its data directory once nothing holds the store
    /// open any more (connection and fill tasks end just after the server does).
    pub async fn stop(self) -> tempfile::TempDir {
        self.running.stop().await;
        for _ in 0..500 {
            if Arc::strong_count(&self.state) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            Arc::strong_count(&self.state),
            1,
            "proxy state still in use after stop"
        );
        self.data_dir
    }
}
