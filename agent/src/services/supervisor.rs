//! Supervises one long-running daemon (dnsmasq, bird): starts it in the foreground, logs its
//! output through `tracing`, restarts it when it dies (first after 0.5 s, backing off to at most
//! 4 s while it keeps dying young, so a crashed daemon is back within 5 s), forwards reload
//! signals, and stops it with SIGTERM, then SIGKILL after a grace period.
//!
//! The child inherits the network namespace of the thread that calls [`Supervisor::start`] (the
//! agent's, in production), so it must be called from the tokio runtime that runs the agent.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// First restart delay after a crash.
const RESTART_DELAY_MIN: Duration = Duration::from_millis(500);
/// Longest restart delay (keeps "back within 5 s" true even for a crash loop).
const RESTART_DELAY_MAX: Duration = Duration::from_secs(4);
/// A daemon that ran this long before dying gets the shortest delay again.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// How long SIGTERM gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The command line of a daemon. It must stay in the foreground.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// What `status()` reports for a daemon.
#[derive(Debug, Clone, Default)]
pub struct DaemonState {
    pub running: bool,
    pub pid: Option<u32>,
    /// Starts that followed an unexpected exit.
    pub restarts: u64,
    /// Every start, including the first and deliberate restarts.
    pub starts: u64,
    pub last_start: Option<SystemTime>,
    pub last_reload: Option<SystemTime>,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
}

impl DaemonState {
    pub fn to_json(&self) -> Value {
        json!({
            "running": self.running,
            "pid": self.pid,
            "restarts": self.restarts,
            "starts": self.starts,
            "last_start": self.last_start.map(rfc3339),
            "last_reload": self.last_reload.map(rfc3339),
            "last_exit": self.last_exit,
            "last_error": self.last_error,
        })
    }
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{0} is not running")]
    NotRunning(String),
    #[error("cannot signal {name}: {source}")]
    Signal { name: String, source: nix::Error },
    #[error("the supervisor of {0} has stopped")]
    Gone(String),
}

enum Cmd {
    /// Send a signal to the running child.
    Signal(Signal, oneshot::Sender<Result<(), SupervisorError>>),
    /// Stop the child (SIGTERM, grace, SIGKILL) and start it again with a new spec.
    Restart(DaemonSpec, oneshot::Sender<()>),
    /// Stop the child and end the supervisor.
    Stop(oneshot::Sender<()>),
}

/// One supervised daemon. Dropping it kills the child (tokio `kill_on_drop`); call
/// [`Supervisor::stop`] for a clean stop.
pub struct Supervisor {
    name: String,
    state: Arc<Mutex<DaemonState>>,
    tx: mpsc::UnboundedSender<Cmd>,
    task: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// Starts the daemon and its supervising task on the current tokio runtime.
    pub fn start(name: impl Into<String>, spec: DaemonSpec) -> Supervisor {
        let name = name.into();
        let state = Arc::new(Mutex::new(DaemonState::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        // The first start happens here, so the pid is known when this returns.
        let first = launch(&name, &spec, &state, false);
        let task = tokio::spawn(run(name.clone(), spec, state.clone(), rx, first));
        Supervisor {
            name,
            state,
            tx,
            task: Some(task),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> DaemonState {
        lock(&self.state).clone()
    }

    /// Sends `signal` to the running daemon; records a reload for SIGHUP.
    pub async fn signal(&self, signal: Signal) -> Result<(), SupervisorError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Cmd::Signal(signal, ack))
            .map_err(|_| SupervisorError::Gone(self.name.clone()))?;
        done.await
            .unwrap_or_else(|_| Err(SupervisorError::Gone(self.name.clone())))
    }

    /// Marks a reload done by other means (bird's control socket).
    pub fn record_reload(&self) {
        lock(&self.state).last_reload = Some(SystemTime::now());
    }

    /// Stops the daemon and starts it again with `spec` (a deliberate restart: not counted in
    /// `restarts`).
    pub async fn restart(&self, spec: DaemonSpec) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Cmd::Restart(spec, ack)).is_ok() {
            let _ = done.await;
        }
    }

    /// Stops the daemon cleanly: SIGTERM, up to 5 s, then SIGKILL.
    pub async fn stop(mut self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Cmd::Stop(ack)).is_ok() {
            let _ = done.await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Dropping the task drops the Child, which kill_on_drop kills.
            task.abort();
        }
    }
}

fn lock(state: &Mutex<DaemonState>) -> std::sync::MutexGuard<'_, DaemonState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn describe_exit(status: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(sig) => format!("killed by {sig}"),
                Err(_) => format!("killed by signal {sig}"),
            },
            _ => "exited".to_owned(),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}

fn spawn_child(name: &str, spec: &DaemonSpec) -> std::io::Result<Child> {
    let mut child = Command::new(&spec.program)
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(log_lines(name.to_owned(), out));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(log_lines(name.to_owned(), err));
    }
    Ok(child)
}

async fn log_lines(daemon: String, stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(daemon = %daemon, "{line}");
    }
}

/// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL and reap.
async fn terminate(name: &str, child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(_) => return,
            Err(_) => tracing::warn!(daemon = %name, pid, "did not stop on SIGTERM; killing it"),
        }
    }
    let _ = child.kill().await;
}

/// Spawns the child and records it in `state`; `None` (and `last_error`) if it cannot start.
fn launch(
    name: &str,
    spec: &DaemonSpec,
    state: &Mutex<DaemonState>,
    after_crash: bool,
) -> Option<Child> {
    match spawn_child(name, spec) {
        Ok(child) => {
            let mut st = lock(state);
            st.running = true;
            st.pid = child.id();
            st.starts += 1;
            if after_crash {
                st.restarts += 1;
            }
            st.last_start = Some(SystemTime::now());
            st.last_error = None;
            tracing::info!(daemon = %name, pid = ?st.pid, restarts = st.restarts, "started");
            Some(child)
        }
        Err(e) => {
            tracing::error!(daemon = %name, program = %spec.program.display(), "cannot start: {e}");
            let mut st = lock(state);
            st.running = false;
            st.pid = None;
            st.last_error = Some(format!("cannot start {}: {e}", spec.program.display()));
            None
        }
    }
}

async fn run(
    name: String,
    mut spec: DaemonSpec,
    state: Arc<Mutex<DaemonState>>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    first: Option<Child>,
) {
    let mut initial = Some(first);
    let mut restart_ack: Option<oneshot::Sender<()>> = None;
    let mut delay = RESTART_DELAY_MIN;
    let mut crashed = false;
    loop {
        // Start (or restart) the child.
        let started = Instant::now();
        let mut child = match initial.take() {
            Some(child) => child,
            None => launch(&name, &spec, &state, crashed),
        };
        if let Some(ack) = restart_ack.take() {
            let _ = ack.send(());
        }

        // Supervise it until it exits or we are told to stop / restart.
        let mut restart_now = false;
        if let Some(child) = child.as_mut() {
            loop {
                tokio::select! {
                    status = child.wait() => {
                        let how = describe_exit(status);
                        tracing::warn!(daemon = %name, "exited unexpectedly ({how}); restarting");
                        let mut st = lock(&state);
                        st.running = false;
                        st.pid = None;
                        st.last_exit = Some(how);
                        break;
                    }
                    cmd = rx.recv() => match cmd {
                        Some(Cmd::Signal(sig, ack)) => {
                            let result = match child.id() {
                                Some(pid) => kill(Pid::from_raw(pid as i32), sig).map_err(|source| {
                                    SupervisorError::Signal { name: name.clone(), source }
                                }),
                                None => Err(SupervisorError::NotRunning(name.clone())),
                            };
                            if result.is_ok() && sig == Signal::SIGHUP {
                                lock(&state).last_reload = Some(SystemTime::now());
                            }
                            let _ = ack.send(result);
                        }
                        Some(Cmd::Restart(new_spec, ack)) => {
                            terminate(&name, child).await;
                            spec = new_spec;
                            let mut st = lock(&state);
                            st.running = false;
                            st.pid = None;
                            st.last_exit = Some("restarted for a new configuration".into());
                            drop(st);
                            restart_ack = Some(ack);
                            restart_now = true;
                            break;
                        }
                        Some(Cmd::Stop(ack)) => {
                            terminate(&name, child).await;
                            let mut st = lock(&state);
                            st.running = false;
                            st.pid = None;
                            st.last_exit = Some("stopped".into());
                            tracing::info!(daemon = %name, "stopped");
                            drop(st);
                            let _ = ack.send(());
                            return;
                        }
                        None => {
                            terminate(&name, child).await;
                            return;
                        }
                    }
                }
            }
        }
        if restart_now {
            crashed = false;
            delay = RESTART_DELAY_MIN;
            continue;
        }
        crashed = true;
        if started.elapsed() >= HEALTHY_RUN {
            delay = RESTART_DELAY_MIN;
        }
        // Wait before restarting, still answering commands.
        let wake = tokio::time::sleep(delay);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = &mut wake => break,
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Signal(_, ack)) => {
                        let _ = ack.send(Err(SupervisorError::NotRunning(name.clone())));
                    }
                    Some(Cmd::Restart(new_spec, ack)) => {
                        spec = new_spec;
                        restart_ack = Some(ack);
                        crashed = false;
                        break;
                    }
                    Some(Cmd::Stop(ack)) => {
                        lock(&state).last_exit = Some("stopped".into());
                        let _ = ack.send(());
                        return;
                    }
                    None => return,
                }
            }
        }
        delay = if crashed {
            (delay * 2).min(RESTART_DELAY_MAX)
        } else {
            RESTART_DELAY_MIN
        };
    }
}

/// Stops a daemon left over by an earlier agent (one that crashed without stopping its
/// children): the pid in `pid_file`, if that process's command line mentions `marker` (our
/// config file), so a recycled pid is never hit. SIGTERM, then SIGKILL after 2 s.
pub async fn kill_stale(pid_file: &std::path::Path, marker: &str) {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    if pid <= 1 || pid == std::process::id() as i32 {
        return;
    }
    let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(marker))
        .unwrap_or(false);
    if !ours {
        return;
    }
    tracing::warn!(
        pid,
        marker,
        "stopping a daemon left over by an earlier agent"
    );
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    while kill(pid, None).is_ok() {
        if Instant::now() > deadline {
            let _ = kill(pid, Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
