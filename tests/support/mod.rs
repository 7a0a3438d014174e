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
