//! Test support shared by the integration tests, examples and benchmarks: a fake GitLab
//! upstream, a Ruby Marshal writer and a plain HTTP client.
#![allow(dead_code)]

pub mod access_log;
pub mod client;
pub mod commands;
pub mod fake_gitlab;
pub mod fixtures;
pub mod marshal;
pub mod proxy;
pub mod recorder;

/// Waits, bounded (5 s), for a condition that background work makes true; panics naming
/// `what` if it never does.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}
