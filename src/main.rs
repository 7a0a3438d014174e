//! The `gitlab-pkg-cache` binary: CLI → config → logging → state → server, until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gitlab_pkg_cache::config::{Cli, Command, Config, Overrides};
use gitlab_pkg_cache::state::AppState;
use gitlab_pkg_cache::{cli, server, telemetry, workers};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let admin_token_file = cli.overrides.admin_token_file.clone().map(PathBuf::from);
    match cli.command.unwrap_or(Command::Serve) {
        // Client commands talk to a running proxy and need none of its settings.
        Command::Warm(args) => cli::warm::main(args, admin_token_file.as_deref()),
        Command::Export(args) => cli::bundle::export(args, admin_token_file.as_deref()),
        Command::Import(args) => cli::bundle::import(args, admin_token_file.as_deref()),
        Command::Keygen(args) => cli::bundle::keygen(args),
        Command::Admin(args) => cli::admin::main(args, admin_token_file.as_deref()),
        Command::Config => with_config(&cli.overrides, print_config),
        Command::Serve => with_config(&cli.overrides, serve),
    }
}

fn with_config(overrides: &Overrides, run: impl FnOnce(Config) -> ExitCode) -> ExitCode {
    match Config::load(overrides) {
        Ok(config) => run(config),
        Err(e) => {
            eprintln!("gitlab-pkg-cache: configuration: {e}");
            ExitCode::from(2)
        }
    }
}

fn print_config(config: Config) -> ExitCode {
    match toml::to_string_pretty(&config) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gitlab-pkg-cache: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> ExitCode {
    let log = match telemetry::init(&config.log) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("gitlab-pkg-cache: {e}");
            return ExitCode::from(2);
        }
    };
    raise_open_file_limit();
    let workers = config.server.workers.threads();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if workers.is_some() {
        // Connections are served on the workers' own runtimes; this one keeps the signal
        // wait, the store's upkeep and the shutdown sequence.
        builder.worker_threads(1);
    }
    let runtime = match builder.enable_all().build() {
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
        state.metrics.count_dropped_log_lines(log.dropped_lines());
        if let Some(count) = workers {
            let listeners = match workers::bind(listen, count) {
                Ok(listeners) => listeners,
                Err(e) => {
                    tracing::error!(%listen, error = %e, "cannot listen");
                    return ExitCode::FAILURE;
                }
            };
            let bound = listeners.first().and_then(|l| l.local_addr().ok());
            serving(&state, bound.unwrap_or(listen));
            workers::run(listeners, state, shutdown_signal()).await;
            return ExitCode::SUCCESS;
        }
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(%listen, error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        serving(&state, listener.local_addr().unwrap_or(listen));
        server::run(listener, state, shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

fn serving(state: &AppState, listen: std::net::SocketAddr) {
    tracing::info!(
        %listen,
        upstream = %String::from(state.config.upstream_url().clone()),
        tls = state.tls.is_some(),
        workers = %String::from(state.config.server.workers),
        "gitlab-pkg-cache serving"
    );
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

/// Lifts the soft limit on open files to the hard one, as the Go runtime does for its
/// programs: connections and the chunk files kept open for hits share it, and the soft
/// default of many systems (1024) is meant for programs that open few files.
#[cfg(unix)]
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    /// What "no hard limit" is lifted to (Linux refuses an infinite open-file limit).
    const UNLIMITED: u64 = 1 << 20;
    let limit = getrlimit(Resource::Nofile);
    let target = limit.maximum.unwrap_or(UNLIMITED);
    if limit.current.is_some_and(|current| current < target) {
        let raised = Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open-file limit; fewer chunk files are kept open");
        }
    }
}

#[cfg(not(unix))]
fn raise_open_file_limit() {}
