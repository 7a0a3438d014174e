//! Sending verified chunk data from the page cache to plain-TCP clients with `sendfile(2)`,
//! without copying it through the proxy's memory.
//!
//! The reader of a stored artifact (`cache::reader`) maps a chunk it trusts into a read-only
//! `Bytes` registered with the connection's [`FileRegions`]; hyper queues that `Bytes` like
//! any other, and [`SendfileStream`], under hyper, recognises its address and sends the
//! same bytes from the chunk file instead. Nothing reads the mapping, so its pages never
//! count in the proxy's memory. TLS and HTTP/2 connections have no regions and keep the
//! read path.

mod regions;
mod stream;

pub use regions::{FileRegions, OnShort};
pub use stream::SendfileStream;
