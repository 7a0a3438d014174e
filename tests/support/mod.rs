//! Test support shared by the integration tests, examples and benchmarks: a fake GitLab
//! upstream, a Ruby Marshal writer and a plain HTTP client.
#![allow(dead_code)]

pub mod access_log;
pub mod client;
pub mod commands;
pub mod events;
pub mod fake_gitlab;
pub mod fixtures;
pub mod marshal;
pub mod pki;
pub mod proxy;
pub mod proxy_process;
pub mod recorder;
pub mod s3_server;

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

/// Starts downloading `path` and stops reading after the first bytes, with a tiny receive
/// window, so the proxy's fill stalls behind this client.
pub async fn stalled_download(authority: &str, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncReadExt;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    let addr: std::net::SocketAddr = authority.parse().expect("proxy address");
    let mut stream = socket.connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .expect("send");
    let mut some = vec![0u8; 16 * 1024];
    stream
        .read_exact(&mut some)
        .await
        .expect("first bytes arrive");
    stream
}
