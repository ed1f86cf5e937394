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
pub(crate) struct DaemonSpec {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
}

/// What `status()` reports for a daemon.
#[derive(Debug, Clone, Default)]
pub(crate) struct DaemonState {
    pub(crate) running: bool,
    pub(crate) pid: Option<u32>,
    /// Starts that followed an unexpected exit.
    pub(crate) restarts: u64,
    /// Every start, including the first and deliberate restarts.
    pub(crate) starts: u64,
    pub(crate) last_start: Option<SystemTime>,
    pub(crate) last_reload: Option<SystemTime>,
    pub(crate) last_exit: Option<String>,
    pub(crate) last_error: Option<String>,
}

impl DaemonState {
    pub(crate) fn to_json(&self) -> Value {
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
pub(crate) enum SupervisorError {
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
pub(crate) struct Supervisor {
    name: String,
    state: Arc<Mutex<DaemonState>>,
    tx: mpsc::UnboundedSender<Cmd>,
    task: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// Starts the daemon and its supervising task on the current tokio runtime.
    pub(crate) fn start(name: impl Into<String>, spec: DaemonSpec) -> Supervisor {
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

    pub(crate) fn state(&self) -> DaemonState {
        lock(&self.state).clone()
    }

    /// Sends `signal` to the running daemon; records a reload for SIGHUP.
    pub(crate) async fn signal(&self, signal: Signal) -> Result<(), SupervisorError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Cmd::Signal(signal, ack))
            .map_err(|_| SupervisorError::Gone(self.name.clone()))?;
        done.await
            .unwrap_or_else(|_| Err(SupervisorError::Gone(self.name.clone())))
    }

    /// Marks a reload done by other means (bird's control socket).
    pub(crate) fn record_reload(&self) {
        lock(&self.state).last_reload = Some(SystemTime::now());
    }

    /// Stops the daemon and starts it again with `spec` (a deliberate restart: not counted in
    /// `restarts`).
    pub(crate) async fn restart(&self, spec: DaemonSpec) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Cmd::Restart(spec, ack)).is_ok() {
            let _ = done.await;
        }
    }

    /// Stops the daemon cleanly: SIGTERM, up to 5 s, then SIGKILL.
    pub(crate) async fn stop(mut self) {
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

/// Stops every process an earlier agent left running (it was killed without stopping its
/// children) that `ours` recognises by its pid and command line (`argv`, `argv[0]` first): the
/// config files it names under the agent's own directories, never a pid file, so neither a
/// recycled pid nor a daemon killed before it wrote its pid file can mislead it. Each is
/// pinned with a pidfd before it is signalled, and its command line read again through
/// that pin, so the signal reaches the process that was recognised or none. SIGTERM, then
/// SIGKILL after 2 s. Zombies and the agent itself are skipped. Returns how many it stopped.
pub(crate) async fn kill_stale(ours: impl Fn(i32, &[String]) -> bool) -> usize {
    let me = std::process::id() as i32;
    let mut pinned = Vec::new();
    for pid in proc_pids() {
        if pid == me || !process_matches(pid, &ours) {
            continue;
        }
        let Some(fd) = Pidfd::open(pid) else {
            continue;
        };
        // Read again through the pin: a pid recycled meanwhile no longer matches.
        if !process_matches(pid, &ours) {
            continue;
        }
        tracing::warn!(pid, argv = ?cmdline(pid), "stopping a daemon left by an earlier agent");
        let _ = fd.signal(libc::SIGTERM);
        pinned.push((pid, fd));
    }
    let stopped = pinned.len();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pinned.is_empty() {
        pinned.retain(|(_, fd)| fd.alive());
        if pinned.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for (pid, fd) in &pinned {
                tracing::warn!(pid, "did not stop on SIGTERM; killing it");
                let _ = fd.signal(libc::SIGKILL);
            }
            // SIGKILL is not refused; give the kernel a moment to release its sockets.
            let until = Instant::now() + Duration::from_secs(2);
            while pinned.iter().any(|(_, fd)| fd.alive()) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stopped
}

/// `argv` of `pid` (empty when it is gone or a kernel thread).
pub(crate) fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn process_matches(pid: i32, ours: &impl Fn(i32, &[String]) -> bool) -> bool {
    // A zombie is only waiting for its parent: nothing to stop.
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| {
            st.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    if zombie {
        return false;
    }
    let argv = cmdline(pid);
    !argv.is_empty() && ours(pid, &argv)
}

/// Whether `pid` is in the caller's network namespace.
pub(crate) fn in_our_network_namespace(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ns = |p: String| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    matches!((ns(format!("/proc/{pid}/ns/net")), ns("/proc/thread-self/ns/net".into())), (Ok(a), Ok(b)) if a == b)
}

fn proc_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A pidfd: a handle on one process that a recycled pid cannot be confused with.
struct Pidfd(std::os::fd::OwnedFd);

impl Pidfd {
    fn open(pid: i32) -> Option<Pidfd> {
        // SAFETY: pidfd_open(2) takes a pid and flags, and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the descriptor was just returned to us and is owned by nothing else.
        Some(Pidfd(unsafe {
            std::os::fd::FromRawFd::from_raw_fd(fd as i32)
        }))
    }

    fn signal(&self, sig: i32) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal(2) on a pidfd we own, no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Not yet exited: a pidfd becomes readable when its process exits (a zombie has).
    fn alive(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut poll = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own, no waiting.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready == 0
    }
}

/// Whether `argv` is a daemon of an agent whose generated files live under `run_dir`:
/// `argv[0]` is one of `programs` (by file name), and an argument is a file under `run_dir`
/// (`--conf-file=FILE` or `FILE`).
pub(crate) fn is_daemon_of(argv: &[String], programs: &[&str], run_dir: &std::path::Path) -> bool {
    let file_name = |p: &str| {
        std::path::Path::new(p)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let Some(program) = argv.first() else {
        return false;
    };
    let program = file_name(program);
    if !programs.iter().any(|p| file_name(p) == program) {
        return false;
    }
    let prefix = format!("{}/", run_dir.display());
    argv[1..].iter().any(|a| {
        let path = a.strip_prefix("--conf-file=").unwrap_or(a);
        path.starts_with(&prefix) && !path.contains("/../")
    })
}

#[cfg(test)]
mod stale_tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn daemons_are_recognised_by_program_and_a_file_under_the_run_dir() {
        let run = std::path::Path::new("/var/lib/akanda-agent/run");
        let programs = ["dnsmasq", "/usr/sbin/bird"];
        for yes in [
            "dnsmasq --keep-in-foreground --conf-file=/var/lib/akanda-agent/run/dnsmasq/ge2/dnsmasq.conf",
            "/usr/sbin/dnsmasq --keep-in-foreground --conf-file=/var/lib/akanda-agent/run/dnsmasq/ge9/dnsmasq.conf",
            "bird -f -c /var/lib/akanda-agent/run/bird/bird.conf -s /var/lib/akanda-agent/run/bird/bird.ctl",
        ] {
            assert!(is_daemon_of(&argv(yes), &programs, run), "{yes}");
        }
        for no in [
            // Another agent's (another state directory), a prefix that is not a directory.
            "dnsmasq --conf-file=/tmp/other/run/dnsmasq/ge2/dnsmasq.conf",
            "dnsmasq --conf-file=/var/lib/akanda-agent/run2/dnsmasq/ge2/dnsmasq.conf",
            // Another program naming our files, or ours naming none.
            "cat /var/lib/akanda-agent/run/dnsmasq/ge2/dnsmasq.conf",
            "dnsmasq --keep-in-foreground",
            "bird -c /var/lib/akanda-agent/run/../../../etc/bird.conf",
        ] {
            assert!(!is_daemon_of(&argv(no), &programs, run), "{no}");
        }
    }

    #[tokio::test]
    async fn a_stale_process_is_stopped_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("run/x.conf").display().to_string();
        // The marker is sh's $0, so it is in sh's command line; sh waits on its stdin (a
        // builtin: no child of its own).
        let spawn = |name: &str| {
            std::process::Command::new("sh")
                .args(["-c", "read x", name])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut ours = spawn(&marker);
        let mut other = spawn("unrelated");
        let run = dir.path().join("run");
        let started = std::time::Instant::now();
        let stopped = kill_stale(|_, argv| is_daemon_of(argv, &["sh"], &run)).await;
        assert_eq!(stopped, 1);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "it waited for a zombie"
        );
        assert!(ours.wait().unwrap().signal().is_some());
        assert!(
            other.try_wait().unwrap().is_none(),
            "the unrelated process was hit"
        );
        other.kill().unwrap();
        other.wait().unwrap();
    }
}
