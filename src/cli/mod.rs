//! The client subcommands (`warm`, `export`, `import`, `keygen`): thin over the library, talking to a running proxy;
//! none of them opens the store behind the server's back.

pub mod admin;
pub mod bundle;
pub mod warm;

use std::process::ExitCode;

/// Runs `work` on a fresh multi-threaded runtime.
pub(crate) fn block_on<F>(work: F) -> ExitCode
where
    F: std::future::Future<Output = ExitCode>,
{
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(work),
        Err(e) => {
            eprintln!("gitlab-pkg-cache: starting the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The proxy URL without a trailing slash, refused unless it is plain `http(s)://host[:port]`.
pub(crate) fn proxy_base(url: &str) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("--proxy {url}: not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "--proxy {url}: must start with http:// or https://"
            ))
        }
    }
    if uri.authority().is_none_or(|a| a.as_str().contains('@')) {
        return Err("--proxy: give scheme and host, without credentials".to_owned());
    }
    Ok(url.trim_end_matches('/').to_owned())
}
