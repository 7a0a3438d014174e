//! Runs the real clients (`go`, `ruby`, `gem`, `bundle`) as child processes: each with a
//! cleared environment, no standard input and a timeout, and a failure report that shows
//! the command, its directory and environment, and what it printed.

use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What one external command is allowed to take, unless a test says otherwise.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// How a command ended and what it printed.
#[derive(Debug, Clone)]
pub struct Finished {
    /// `None` when it was killed for running out of time.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    /// Everything needed to understand a failure: command, directory, environment, output.
    pub report: String,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Fails the test unless `tool` is on `PATH`: the suite drives the real clients and must not
/// pass silently without them.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| is_executable(&dir.join(tool))));
    assert!(
        found,
        "`{tool}` is not installed: these tests drive the real go, ruby, gem and bundle \
         clients; `.ci/run` installs them (Debian: golang-go ruby ruby-bundler)"
    );
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A command with an empty environment except `PATH` and a UTF-8 locale, so nothing from
/// the machine (proxies, GOFLAGS, BUNDLE_*, GEM_*, credentials) leaks into a client.
pub fn clean(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command.env("LANG", "C.UTF-8").env("LC_ALL", "C.UTF-8");
    command
}

/// Runs `command` to its end (or kills it, with every process it started, after
/// `timeout`) and panics with the full report unless it exited with status 0.
pub fn run(command: &mut Command, timeout: Duration) -> Finished {
    let finished = run_unchecked(command, timeout);
    if !finished.success() {
        panic!("command failed\n{}", finished.report);
    }
    finished
}

/// Like [`run`] without the panic, for commands whose failure a test expects or inspects.
pub fn run_unchecked(command: &mut Command, timeout: Duration) -> Finished {
    let described = describe(command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout also ends the processes it started
        // (the go command runs compilers, gem runs ruby extensions, ...).
        .process_group(0);
    let started = Instant::now();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => panic!("could not start the command: {e}\n{described}"),
    };
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait(&mut child, timeout);
    let stdout = join(stdout);
    let stderr = join(stderr);
    let elapsed = started.elapsed();
    let mut report = described;
    let outcome = match status {
        Some(status) => format!("{status}"),
        None => format!("killed after the {timeout:?} timeout"),
    };
    let _ = write!(
        report,
        "outcome: {outcome} after {elapsed:.1?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- end ---"
    );
    Finished {
        status,
        stdout,
        stderr,
        report,
    }
}

/// Waits for the child; on timeout kills its whole process group and returns `None`.
fn wait(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) | Err(_) => break,
        }
    }
    // The group id is the child's pid (`process_group(0)`): only what this test started.
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn join(reader: JoinHandle<String>) -> String {
    reader
        .join()
        .unwrap_or_else(|_| "<output reader panicked>".to_owned())
}

/// `$ cd DIR && ENV=... program args...`, one variable per line.
pub fn describe(command: &Command) -> String {
    let mut text = String::from("$ ");
    if let Some(dir) = command.get_current_dir() {
        let _ = write!(text, "cd {} && ", dir.display());
    }
    text.push_str(&command.get_program().to_string_lossy());
    for arg in command.get_args() {
        let _ = write!(text, " {}", arg.to_string_lossy());
    }
    text.push_str("\nenvironment (cleared, then):\n");
    for (name, value) in command.get_envs() {
        let value = value.map_or_else(|| "<removed>".into(), |v| v.to_string_lossy());
        let _ = writeln!(text, "  {}={value}", name.to_string_lossy());
    }
    text
}
