//! Named network namespaces made with `ip netns`, as an operator would.
//!
//! Rules, so that users can run in parallel and be re-run after a crash:
//! - a name is `<prefix><tag>-<pid>-<n>`: unique within the process (an atomic counter) and
//!   across processes (the pid); interface names live inside namespaces and never collide;
//! - a [`Netns`] is removed on drop (which also runs while a failing test unwinds), after
//!   every process in it is killed;
//! - leftovers of a killed process are removed by [`cleanup_stale`], which touches only
//!   namespaces of the prefix whose owner pid is dead.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
    #[error("entering network namespace {path}: {reason}")]
    Enter { path: String, reason: String },
}

/// Per-process counter that makes names unique.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Serialises `ip netns add`: the first one in a process may create the shared `/run/netns`
/// mount, and two racing creations can stack mounts and hide each other's namespace files.
static NETNS_ADD: Mutex<()> = Mutex::new(());

/// The prefixes whose stale namespaces this process has already removed.
static CLEANED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// True when the process runs as root (namespaces need CAP_SYS_ADMIN).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command to completion with stdin closed; its output whatever its status.
fn output_of(cmd: &mut Command) -> Result<Output, NetnsError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: describe(cmd),
            source,
        })
}

/// Stdout of a command that must succeed.
fn stdout_of(cmd: &mut Command) -> Result<String, NetnsError> {
    let out = output_of(cmd)?;
    if !out.status.success() {
        return Err(NetnsError::Failed {
            command: describe(cmd),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `argv` in the host namespace (outside any of these) and returns its stdout, or an
/// error with everything it printed.
pub fn run_in_host(argv: &[&str]) -> Result<String, NetnsError> {
    let (program, args) = argv.split_first().ok_or_else(|| NetnsError::Spawn {
        command: String::new(),
        source: std::io::Error::other("empty command"),
    })?;
    stdout_of(Command::new(program).args(args))
}

fn ip_host(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

/// A named network namespace, deleted (with every process in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix><tag>-<pid>-<n>` and brings its `lo` up. `tag` is reduced to
    /// `[A-Za-z0-9_-]` and 32 characters. The first call for a prefix removes the prefix's
    /// namespaces left by dead processes.
    pub fn new(prefix: &str, tag: &str) -> Result<Netns, NetnsError> {
        let first = CLEANED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(HashSet::new)
            .insert(prefix.to_string());
        if first {
            cleanup_stale(prefix);
        }
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(32)
            .collect();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}{tag}-{}-{n}", std::process::id());
        {
            let _guard = NETNS_ADD.lock().unwrap_or_else(|e| e.into_inner());
            let out = output_of(&mut ip_host(&["netns", "add", &name]))?;
            if !out.status.success() {
                if String::from_utf8_lossy(&out.stderr).contains("exists") {
                    // Our pid and a counter value we never used: the only owner can be a
                    // crashed earlier process that had the same pid.
                    remove(&name)?;
                }
                stdout_of(&mut ip_host(&["netns", "add", &name]))?;
            }
        }
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The name, as in `ip netns exec NAME` and `ip -n NAME`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the file [`Netns::enter`] opens.
    pub(crate) fn path(&self) -> PathBuf {
        Netns::path_of(&self.name)
    }

    /// A `Command` for `ip netns exec NAME args...`, for callers that set their own stdio or
    /// environment (and [`Netns::wait_entered`] after spawning it).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs a command inside the namespace; its output, success or not.
    pub fn run(&self, args: &[&str]) -> Result<Output, NetnsError> {
        output_of(&mut self.command(args))
    }

    /// Runs a command inside the namespace; its stdout, or an error with everything it
    /// printed.
    pub fn exec(&self, args: &[&str]) -> Result<String, NetnsError> {
        stdout_of(&mut self.command(args))
    }

    /// `ip -n NAME ARGS` (no mount namespace is made, unlike `exec(["ip", ...])`).
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut cmd = ip_host(&["-n", &self.name]);
        cmd.args(args);
        stdout_of(&mut cmd)
    }

    /// Sets a sysctl inside the namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Moves a link of the host namespace (a TAP QEMU opened, say) in and brings it up.
    pub fn adopt_link(&self, link: &str) -> Result<(), NetnsError> {
        stdout_of(&mut ip_host(&["link", "set", link, "netns", &self.name]))?;
        self.ip(&["link", "set", link, "up"]).map(drop)
    }

    /// Waits (bounded) until a child started with [`Netns::command`] has switched into this
    /// namespace, or has exited. Until then it is invisible to [`Netns::pids`], so drop could
    /// miss it.
    pub fn wait_entered(&self, child: &mut Child) {
        let Ok(target) = std::fs::metadata(self.path()) else {
            return;
        };
        let proc_ns = format!("/proc/{}/ns/net", child.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(m) = std::fs::metadata(&proc_ns) {
                if (m.dev(), m.ino()) == (target.dev(), target.ino()) {
                    return;
                }
            }
            if !matches!(child.try_wait(), Ok(None)) {
                return; // exited (e.g. command not found): nothing to track
            }
            sleep(Duration::from_millis(2));
        }
    }

    /// Pids of the processes in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        pids(&self.name)
    }

    /// Runs `f` on a fresh thread that has entered the namespace: sockets it opens, and
    /// threads it starts, live there (setns changes only the calling thread).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        enter(&self.path(), f)
    }

    /// `/run/netns/NAME` of the namespace named `name`.
    pub(crate) fn path_of(name: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(name)
    }
}

/// Runs `f` on a fresh thread that has entered the namespace whose file is `path`.
pub(crate) fn enter<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let failed = |reason: String| NetnsError::Enter {
        path: path.display().to_string(),
        reason,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(path).map_err(|e| failed(e.to_string()))?;
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| failed(e.to_string()))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = remove(&self.name) {
            eprintln!("warning: {e}");
        }
    }
}

fn pids(name: &str) -> Vec<i32> {
    let Ok(out) = output_of(&mut ip_host(&["netns", "pids", name])) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kills every process in the namespace, waits (bounded) for them to be gone, then deletes
/// it. Deleting the last reference also destroys its interfaces, and with them the veth peers
/// in other namespaces.
fn remove(name: &str) -> Result<(), NetnsError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = pids(name);
        if pids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("warning: processes {pids:?} survive SIGKILL in netns {name}");
            break;
        }
        for pid in pids {
            // A pid that is already gone only yields ESRCH.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        sleep(Duration::from_millis(20));
    }
    stdout_of(&mut ip_host(&["netns", "del", name])).map(drop)
}

/// Names of all named namespaces (`ip netns list`).
pub fn list() -> Vec<String> {
    let Ok(out) = output_of(&mut ip_host(&["netns", "list"])) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The pid in a namespace name (`...-<pid>-<counter>`).
fn owner_pid(name: &str) -> Option<i32> {
    let mut fields = name.rsplit('-');
    fields.next()?.parse::<u32>().ok()?;
    fields.next()?.parse().ok()
}

fn alive(pid: i32) -> bool {
    // Signal 0 only checks that the pid exists; EPERM means it does (another user's).
    matches!(kill(Pid::from_raw(pid), None), Ok(()) | Err(Errno::EPERM))
}

/// Deletes namespaces named `PREFIX...-<pid>-<n>` whose pid is not alive (leftovers of a run
/// that was killed before its drops ran), killing any process still inside. Returns how many
/// were deleted. Namespaces of live processes, and names not in this format, stay.
pub fn cleanup_stale(prefix: &str) -> usize {
    let mut removed = 0;
    for name in list() {
        if !name.starts_with(prefix) {
            continue;
        }
        match owner_pid(&name) {
            Some(pid) if !alive(pid) => match remove(&name) {
                Ok(()) => removed += 1,
                Err(e) => eprintln!("warning: stale namespace: {e}"),
            },
            _ => {}
        }
    }
    removed
}

/// A veth pair with one end directly in each namespace (so the names never exist in the host
/// namespace and cannot collide there), with the given MAC addresses, both ends up.
pub fn veth(
    a: &Netns,
    a_if: &str,
    a_mac: &str,
    b: &Netns,
    b_if: &str,
    b_mac: &str,
) -> Result<(), NetnsError> {
    stdout_of(&mut ip_host(&[
        "link", "add", a_if, "netns", &a.name, "address", a_mac, "type", "veth", "peer", "name",
        b_if, "netns", &b.name, "address", b_mac,
    ]))?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_from_the_right() {
        assert_eq!(owner_pid("akt-a-b-rt-1234-7"), Some(1234));
        assert_eq!(owner_pid("akt-1234"), None);
        assert_eq!(owner_pid("akt-x-abc-7"), None);
    }

    /// A crashed earlier process with our pid left the very name we are about to use: it is
    /// replaced, not an error.
    #[test]
    fn leftover_with_our_pid_is_replaced() {
        if !is_root() {
            assert_eq!(
                std::env::var("AKANDA_SKIP_ROOT_TESTS").as_deref(),
                Ok("1"),
                "this test needs root; set AKANDA_SKIP_ROOT_TESTS=1 to skip root tests"
            );
            return;
        }
        let next = COUNTER.load(Ordering::Relaxed);
        let name = format!("aknt-reuse-{}-{next}", std::process::id());
        stdout_of(&mut ip_host(&["netns", "add", &name])).unwrap();
        let ns = Netns::new("aknt-", "reuse").unwrap();
        assert_eq!(ns.name(), name);
        drop(ns);
        assert!(!list().contains(&name));
    }

    #[test]
    fn a_failing_command_reports_its_output() {
        let err = stdout_of(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`sh -c echo out; echo err >&2; exit 3` failed")
                && err.contains("out")
                && err.contains("err"),
            "{err}"
        );
    }
}
