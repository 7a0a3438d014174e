//! Test support shared by the integration tests, examples and benchmarks: a fake GitLab
//! upstream, a Ruby Marshal writer and a plain HTTP client.
#![allow(dead_code)]

pub mod client;
pub mod fake_gitlab;
pub mod marshal;
pub mod proxy;
