//! The `gitlab-pkg-cache` binary: CLI → config → logging → state → server, until a signal.

use std::process::ExitCode;

use clap::Parser;
use gitlab_pkg_cache::config::{Cli, Command, Config};
use gitlab_pkg_cache::state::AppState;
use gitlab_pkg_cache::{server, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gitlab-pkg-cache: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => match toml::to_string_pretty(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gitlab-pkg-cache: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve => serve(config),
    }
}

fn serve(config: Config) -> ExitCode {
    if let Err(e) = telemetry::init(&config.log) {
        eprintln!("gitlab-pkg-cache: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("gitlab-pkg-cache: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listen = config.listen;
        let state = match AppState::build(config) {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(%listen, error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            listen = %listener.local_addr().unwrap_or(listen),
            upstream = %String::from(state.config.upstream_url().clone()),
            tls = state.tls.is_some(),
            "gitlab-pkg-cache serving"
        );
        server::run(listener, state, shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the proxy");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
