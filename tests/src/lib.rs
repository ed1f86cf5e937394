//! End-to-end test harness for Akanda.
//!
//! Tests build small networks out of Linux network namespaces and veth
//! pairs, start the real `akanda-agent` binary inside a "router" namespace
//! and talk to it over HTTP from a "mgmt" namespace, exactly as the
//! orchestrator would over the management network. The namespaces and the
//! HTTP client are [`akanda_netns`]'s (shared with the benchmarks and
//! `akanda-image verify`); this crate wraps them with panicking methods.
//!
//! Design rules, so that tests can run in parallel and be re-run after a
//! crash:
//!
//! * Every namespace is named `akt-<tag>-<pid>-<counter>`: unique within the
//!   process (atomic counter) and across concurrent processes (pid). Interface
//!   names live inside namespaces, so they never collide and stay short.
//! * Every resource (namespace, process, temp dir) is released on `Drop`,
//!   which also runs while a failing test unwinds.
//! * Leftovers of a crashed (SIGKILLed) run are removed by [`cleanup_stale`],
//!   which runs once per process before the first namespace is created: it
//!   only touches namespaces whose owner pid is dead.
//! * Waits are bounded polls, never fixed sleeps.
//!
//! Root-only tests start with `if !require_root() { return; }`.

pub mod bench;
pub mod tls;

use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

/// Prefix of every namespace this harness creates; [`cleanup_stale`] uses it.
pub(crate) const NS_PREFIX: &str = "akt-";

/// Per-process counter that makes ports unique.
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Whether `pid` is a process that has not exited (a zombie has).
pub fn process_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Returns true when the test may run. Root-only tests call
/// `if !require_root() { return; }`.
///
/// Without root this panics (a silently skipped suite looks green), unless
/// `AKANDA_SKIP_ROOT_TESTS=1` is set: then it prints "skipped: needs root"
/// and returns false.
pub fn require_root() -> bool {
    if akanda_netns::is_root() {
        return true;
    }
    if std::env::var("AKANDA_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("skipped: needs root");
        return false;
    }
    panic!(
        "this test needs root (it creates network namespaces); \
         run it as root, or set AKANDA_SKIP_ROOT_TESTS=1 to skip root tests"
    );
}

// ---------------------------------------------------------------------------
// Commands

/// Runs a command on the host (outside any test namespace) and returns its stdout; panics
/// with stdout and stderr if it fails.
#[track_caller]
pub fn run_host(argv: &[&str]) -> String {
    akanda_netns::run_in_host(argv).unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------
// Namespaces

/// A named network namespace (`akt-<tag>-<pid>-<n>`), deleted with every process in it on
/// drop: [`akanda_netns::Netns`], with methods that panic with everything a failed command
/// printed, as a test wants.
#[derive(Debug)]
pub struct Netns {
    inner: akanda_netns::Netns,
}

impl Netns {
    /// Creates `akt-<tag>-<pid>-<n>` and brings its `lo` up. `tag` is reduced
    /// to `[A-Za-z0-9_-]` and 32 characters; use it to tell tests apart in
    /// `ip netns list`. The first one in a process removes the leftovers of
    /// crashed runs ([`cleanup_stale`]).
    #[track_caller]
    pub fn new(tag: &str) -> Netns {
        Netns {
            inner: akanda_netns::Netns::new(NS_PREFIX, tag).unwrap_or_else(|e| panic!("{e}")),
        }
    }

    /// The namespace name, as used by `ip netns exec NAME` / `ip -n NAME`.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// A `Command` for `ip netns exec NAME args...`, for callers that need
    /// their own stdio or environment.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        assert!(!args.is_empty(), "empty command");
        self.inner.command(args)
    }

    /// Runs a command inside the namespace; returns its output, success or not.
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> Output {
        self.inner.run(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs a command inside the namespace and returns stdout; panics with
    /// stdout and stderr if it fails.
    #[track_caller]
    pub fn exec(&self, args: &[&str]) -> String {
        self.inner.exec(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `sh -c SCRIPT` inside the namespace and returns stdout; panics
    /// with stdout and stderr if it fails.
    #[track_caller]
    pub fn sh(&self, script: &str) -> String {
        self.exec(&["sh", "-c", script])
    }

    /// `ip -n NAME ARGS` (ARGS split on whitespace), e.g.
    /// `ns.ip("addr add 10.0.0.1/24 dev eth0")`. Returns stdout, panics on
    /// failure. Faster than `exec(["ip", ...])`: no mount namespace is made.
    #[track_caller]
    pub fn ip(&self, args: &str) -> String {
        let args: Vec<&str> = args.split_whitespace().collect();
        self.inner.ip(&args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `ip -n NAME -j ARGS` parsed as JSON.
    #[track_caller]
    pub fn ip_json(&self, args: &str) -> Value {
        let out = self.ip(&format!("-j {args}"));
        match serde_json::from_str(&out) {
            Ok(v) => v,
            Err(e) => panic!("ip -j {args}: bad JSON ({e}): {out}"),
        }
    }

    /// Sets a sysctl inside the namespace (`net.*` keys are per namespace).
    #[track_caller]
    pub fn sysctl(&self, key: &str, value: &str) {
        self.inner
            .sysctl(key, value)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts a command inside the namespace: stdin is null, stdout and
    /// stderr are piped (collect them with `wait_with_output`). It is killed
    /// when the namespace is dropped at the latest.
    pub fn spawn(&self, args: &[&str]) -> Child {
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {args:?} in {}: {e}", self.name()));
        self.wait_entered(&mut child);
        child
    }

    /// Waits (bounded) until a child started with [`Netns::command`] has
    /// switched into this namespace, or has exited. Until then it is
    /// invisible to [`Netns::pids`], so Drop could miss it.
    pub(crate) fn wait_entered(&self, child: &mut Child) {
        self.inner.wait_entered(child);
    }

    /// Pids of all processes currently in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        self.inner.pids()
    }
}

/// Names of all named namespaces (`ip netns list`).
pub fn list_netns() -> Vec<String> {
    akanda_netns::list()
}

/// Deletes namespaces named `PREFIX...-<pid>-<n>` whose pid is not alive
/// (leftovers of a run that was killed before its Drops ran), killing any
/// process still inside. Returns how many were deleted. Namespaces of live
/// processes, and names not in the harness format, are left alone.
pub fn cleanup_stale(prefix: &str) -> usize {
    akanda_netns::cleanup_stale(prefix)
}

/// Creates a veth pair with one end directly in each namespace (so the
/// names never exist in the root namespace and cannot collide there), with
/// the given MAC addresses, and brings both ends up.
#[track_caller]
pub fn veth(a: &Netns, a_if: &str, a_mac: &str, b: &Netns, b_if: &str, b_mac: &str) {
    akanda_netns::veth(&a.inner, a_if, a_mac, &b.inner, b_if, b_mac)
        .unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------
// Ping

/// One `ping -c 1 -W 1` from `from` to `target` (IPv4 or IPv6 literal).
/// Ok(()) on a reply, Err(ping's output) otherwise.
pub(crate) fn ping_once(from: &Netns, target: &str) -> Result<(), String> {
    let family = if target.contains(':') { "-6" } else { "-4" };
    let out = from.run(&["ping", family, "-n", "-c", "1", "-W", "1", target]);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Pings until a reply arrives or about 5 s have passed (neighbour
/// discovery and freshly configured routes may need a moment).
/// Err carries the last attempt's output.
pub(crate) fn ping_ok(from: &Netns, target: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let err = match ping_once(from, target) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(err);
        }
        // Errors like "Network is unreachable" return at once: don't spin.
        sleep(Duration::from_millis(200));
    }
}

/// Panics unless `from` can ping `target`, showing ping's output and the
/// source namespace's addresses and routes.
#[track_caller]
pub fn assert_pings(from: &Netns, target: &str) {
    if let Err(out) = ping_ok(from, target) {
        panic!(
            "{} cannot ping {target}:\n{out}\n--- addresses and routes in {0} ---\n{}",
            from.name(),
            net_summary(from)
        );
    }
}

/// Panics if `from` gets a reply from `target` (one attempt, 1 s).
#[track_caller]
pub fn assert_no_ping(from: &Netns, target: &str) {
    if ping_once(from, target).is_ok() {
        panic!("{} unexpectedly pings {target}", from.name());
    }
}

/// Brief addresses and routes of a namespace, for failure messages.
pub(crate) fn net_summary(ns: &Netns) -> String {
    let out = ns.run(&[
        "sh",
        "-c",
        "ip -br link; ip -br addr; ip route; ip -6 route",
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// State dump

/// `valid_life_time`/`preferred_life_time` of a permanent address.
const LIFETIME_FOREVER: u64 = u32::MAX as u64;

/// Links, addresses and routes (all tables, v4 then v6) of a namespace as
/// pretty JSON, with volatile fields removed so that two dumps of an
/// unchanged namespace are byte-identical and can be compared with
/// `assert_eq!` (e.g. to prove that re-applying a config changes nothing).
///
/// Removed: `stats`/`stats64` counters, remaining lifetimes of non-permanent
/// addresses, route `expires`. Before dumping it waits (at most 5 s) for
/// IPv6 duplicate address detection to finish: a link-local address stays
/// `tentative`, without its local route, for a second or two after link-up,
/// and that would differ between dumps. Everything else, operstate
/// included, is kept: it does not change in an unchanged namespace.
pub fn dump_state(ns: &Netns) -> String {
    wait_dad_settled(ns, Duration::from_secs(5));
    let mut out = String::new();
    for args in [
        "-d link show",
        "addr show",
        "-4 route show table all",
        "-6 route show table all",
    ] {
        let mut v = ns.ip_json(args);
        strip_volatile(&mut v);
        let pretty = serde_json::to_string_pretty(&v).expect("JSON value serialises");
        let _ = writeln!(out, "## ip -j {args}\n{pretty}");
    }
    out
}

fn strip_volatile(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for key in ["stats", "stats64", "expires"] {
                m.remove(key);
            }
            for key in ["valid_life_time", "preferred_life_time"] {
                if m.get(key)
                    .is_some_and(|t| t.as_u64() != Some(LIFETIME_FOREVER))
                {
                    m.remove(key);
                }
            }
            m.values_mut().for_each(strip_volatile);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_volatile),
        _ => {}
    }
}

/// Polls until no address is `tentative` (ignoring `dadfailed` ones, which
/// stay so), or until `timeout`.
fn wait_dad_settled(ns: &Netns, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let addrs = ns.ip_json("addr show");
        let tentative = addrs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|link| link["addr_info"].as_array())
            .flatten()
            .any(|a| a["tentative"] == true && a["dadfailed"] != true);
        if !tentative || Instant::now() >= deadline {
            return;
        }
        sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// Files

/// Path of a conformance file in `tests/fixtures/` (copies of the shared conformance
/// samples, kept identical by `tests/tests/fixtures.rs`). Panics if it does not exist.
pub fn conformance_path(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    path.canonicalize()
        .unwrap_or_else(|e| panic!("conformance file {} not found ({e})", path.display()))
}

/// A conformance file parsed as JSON.
pub fn conformance_json(name: &str) -> Value {
    let path = conformance_path(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// The `akanda-agent` binary: `$AKANDA_AGENT_BIN` if set, else
/// `target/<profile>/akanda-agent` beside the running test executable
/// (`target/<profile>/deps/<test>-<hash>`). Cargo does not build another
/// package's binaries for this crate's tests, hence the panic message.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AKANDA_AGENT_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "AKANDA_AGENT_BIN={} is not a file",
            p.display()
        );
        return p;
    }
    workspace_bin("akanda-agent")
}

/// The agent built with failpoints (`agent/src/failpoint.rs`), for the crash tests:
/// `$AKANDA_FAILPOINT_AGENT_BIN` if set, else `target/<profile>/akanda-agent-failpoints`,
/// which `cargo build -p akanda-agent --features failpoints --bin akanda-agent-failpoints`
/// builds (as `scripts/test` does) without touching `akanda-agent`.
pub fn failpoint_agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AKANDA_FAILPOINT_AGENT_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "AKANDA_FAILPOINT_AGENT_BIN={} is not a file",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test executable has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    let bin = dir.join("akanda-agent-failpoints");
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build -p akanda-agent --features failpoints --bin akanda-agent-failpoints` first",
        bin.display()
    );
    bin
}

/// A binary of this workspace, `target/<profile>/NAME`, beside the running test or bench
/// executable (which lives in `target/<profile>/deps`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test executable has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// `target/release/NAME`: the optimised binary that goes into the image (built by
/// `cargo build --release -p akanda-agent`, which `scripts/test` runs).
pub fn release_bin(name: &str) -> PathBuf {
    let debug = workspace_bin("akanda-image");
    let target = debug
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/ has a parent");
    let bin = target.join("release").join(name);
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build --release -p {name}` first",
        bin.display()
    );
    bin
}

/// A port in 20000..40000 that differs between processes (pid) and between
/// calls in one process (counter). Namespaces isolate ports anyway; this
/// only keeps logs and `ss` output unambiguous across parallel tests.
pub fn unique_port() -> u16 {
    let mix = u64::from(std::process::id()) * 7 + u64::from(next_id());
    20000 + (mix % 20000) as u16
}

// ---------------------------------------------------------------------------
// Agent

/// A running `akanda-agent serve` inside a namespace. Its stdout and stderr
/// go to a log file, printed to stderr if the test panics. Drop kills it.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    exited: Option<ExitStatus>,
    listen: SocketAddr,
    state_dir: PathBuf,
    log_path: PathBuf,
    _tmp: TempDir,
}

impl Agent {
    /// Starts `akanda-agent serve --listen LISTEN --state-dir DIR
    /// --insecure-http` in `ns`. With `state_dir: None` a fresh one is made
    /// in the agent's temp dir; pass one to restart on existing state.
    pub fn spawn(ns: &Netns, listen: SocketAddr, state_dir: Option<&Path>) -> Agent {
        Agent::spawn_with_args(ns, listen, state_dir, &[])
    }

    /// Like [`Agent::spawn`], with extra arguments appended to `serve`.
    pub fn spawn_with_args(
        ns: &Netns,
        listen: SocketAddr,
        state_dir: Option<&Path>,
        extra_args: &[&str],
    ) -> Agent {
        Agent::spawn_program(&agent_bin(), ns, listen, state_dir, extra_args)
    }

    /// Like [`Agent::spawn_with_args`] with another executable standing in
    /// for `akanda-agent` (the harness self-tests use a shell script).
    pub fn spawn_program(
        bin: &Path,
        ns: &Netns,
        listen: SocketAddr,
        state_dir: Option<&Path>,
        extra_args: &[&str],
    ) -> Agent {
        Agent::spawn_inner(bin, ns, listen, state_dir, true, extra_args, &[], true)
    }

    /// [`Agent::spawn_program`] with environment variables (e.g. `AKANDA_FAILPOINTS`) and,
    /// when `pass_listen` is false, without `--listen` (the agent then listens where its
    /// `--boot-config` says; `listen` is only where the tests reach it).
    pub fn spawn_program_env(
        bin: &Path,
        ns: &Netns,
        listen: SocketAddr,
        state_dir: Option<&Path>,
        extra_args: &[&str],
        env: &[(&str, &str)],
        pass_listen: bool,
    ) -> Agent {
        Agent::spawn_inner(
            bin,
            ns,
            listen,
            state_dir,
            true,
            extra_args,
            env,
            pass_listen,
        )
    }

    /// Starts `akanda-agent serve --listen LISTEN --state-dir DIR` with mutual TLS (no
    /// `--insecure-http`): `tls_args` are `--tls-cert F --tls-key F --client-ca F`
    /// ([`tls::Pki::server_args`]) plus any others.
    pub fn spawn_tls(
        ns: &Netns,
        listen: SocketAddr,
        state_dir: Option<&Path>,
        tls_args: &[&str],
    ) -> Agent {
        Agent::spawn_tls_program(&agent_bin(), ns, listen, state_dir, tls_args)
    }

    /// [`Agent::spawn_tls`] with another executable (e.g. the release build).
    pub fn spawn_tls_program(
        bin: &Path,
        ns: &Netns,
        listen: SocketAddr,
        state_dir: Option<&Path>,
        tls_args: &[&str],
    ) -> Agent {
        Agent::spawn_inner(bin, ns, listen, state_dir, false, tls_args, &[], true)
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_inner(
        bin: &Path,
        ns: &Netns,
        listen: SocketAddr,
        state_dir: Option<&Path>,
        plain_http: bool,
        extra_args: &[&str],
        env: &[(&str, &str)],
        pass_listen: bool,
    ) -> Agent {
        let tmp = tempfile::Builder::new()
            .prefix("akanda-agent-")
            .tempdir()
            .expect("temp dir");
        let state_dir = match state_dir {
            Some(d) => d.to_path_buf(),
            None => {
                let d = tmp.path().join("state");
                std::fs::create_dir(&d).expect("create state dir");
                d
            }
        };
        let log_path = tmp.path().join("agent.log");
        let log = File::create(&log_path).expect("create agent log");
        let log2 = log.try_clone().expect("clone log fd");
        let bin_s = bin.to_string_lossy();
        let listen_s = listen.to_string();
        let state_s = state_dir.to_string_lossy();
        let mut args = vec![&*bin_s, "serve"];
        if pass_listen {
            args.extend(["--listen", &listen_s]);
        }
        args.extend(["--state-dir", &state_s]);
        if plain_http {
            args.push("--insecure-http");
        }
        args.extend_from_slice(extra_args);
        let mut child = ns
            .command(&args)
            .envs(env.iter().copied())
            // Plain text in the log file, not terminal colours.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        ns.wait_entered(&mut child);
        Agent {
            child,
            exited: None,
            listen,
            state_dir,
            log_path,
            _tmp: tmp,
        }
    }

    /// `http://ADDR:PORT` (IPv6 in brackets).
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// An HTTP client that sends its requests from `client`.
    pub(crate) fn http(&self, client: &Netns) -> Http {
        Http::new(client, self.base_url())
    }

    /// The state directory the agent was started with.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Everything the agent printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Process id (that of the agent itself: `ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the agent has exited, without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            // An error here (never expected) must not panic inside Drop.
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Polls `GET /v1/base/` from `client` until it answers 200. Panics
    /// with the agent's log if the agent exits or `timeout` passes.
    #[track_caller]
    pub fn wait_ready(&mut self, client: &Netns, timeout: Duration) {
        let http = self.http(client).with_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "akanda-agent exited ({status}) before it was ready\n--- agent log ---\n{}",
                    self.log()
                );
            }
            let last = match http.request("GET", "/v1/base/", None) {
                Ok(r) if r.status == 200 => return,
                Ok(r) => format!("HTTP {}: {}", r.status, r.body),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                panic!(
                    "akanda-agent not ready at {} after {timeout:?}: {last}\n--- agent log ---\n{}",
                    self.base_url(),
                    self.log()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL (a crash, no cleanup by the agent), then reap it.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(s) = self.try_wait() {
            return s;
        }
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("wait for agent: {e}"));
        self.exited = Some(status);
        status
    }

    /// SIGTERM (graceful shutdown) and wait up to 10 s for the exit; panics,
    /// after a SIGKILL, if the agent ignores it.
    #[track_caller]
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(s) = self.try_wait() {
            return s;
        }
        // SAFETY: plain syscall on our own, not yet reaped, child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait() {
                return s;
            }
            sleep(Duration::from_millis(20));
        }
        self.kill();
        panic!(
            "akanda-agent did not exit within 10 s of SIGTERM\n--- agent log ---\n{}",
            self.log()
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- akanda-agent log ({}) ----\n{}---- end of agent log ----",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in order (of the final response).
    pub(crate) headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The body parsed as JSON; panics with the body if it is not JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        match serde_json::from_str(&self.body) {
            Ok(v) => v,
            Err(e) => panic!(
                "HTTP {} body is not JSON ({e}):\n{}",
                self.status, self.body
            ),
        }
    }

    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `base` + `path` (a full `http://` URL is used as is).
fn join_url(base: &str, path: &str) -> String {
    if path.starts_with("http://") || path.starts_with("https://") {
        path.to_owned()
    } else if path.starts_with('/') {
        format!("{base}{path}")
    } else {
        format!("{base}/{path}")
    }
}

#[track_caller]
fn http_client(netns: &str, options: &akanda_netns::HttpOptions) -> akanda_netns::HttpClient {
    akanda_netns::HttpClient::new(netns, options).unwrap_or_else(|e| panic!("{e}"))
}

/// HTTP client whose requests originate inside a namespace, since the agent is
/// only reachable on the management network: [`akanda_netns::HttpClient`]
/// (reqwest), one connection per request, no proxy, no redirects followed.
#[derive(Debug, Clone)]
pub struct Http {
    ns: String,
    base: String,
    timeout: Duration,
    client: akanda_netns::HttpClient,
}

impl Http {
    /// A client in `ns` for `base_url` (e.g. `http://[fdca::1]:20000`).
    pub fn new(ns: &Netns, base_url: impl Into<String>) -> Http {
        Http::with_options(ns, base_url, &akanda_netns::HttpOptions::default())
    }

    /// A client in `ns` for `base_url` with the given TLS and connection options.
    pub(crate) fn with_options(
        ns: &Netns,
        base_url: impl Into<String>,
        options: &akanda_netns::HttpOptions,
    ) -> Http {
        Http {
            ns: ns.name().to_owned(),
            base: base_url.into().trim_end_matches('/').to_owned(),
            timeout: Duration::from_secs(30),
            client: http_client(ns.name(), options),
        }
    }

    /// Same client speaking mutual TLS: trusts the CA in the PEM file `ca`, presents
    /// `cert`/`key`.
    pub fn with_tls(mut self, ca: &Path, cert: &Path, key: &Path) -> Http {
        let read = |p: &Path| {
            std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let config = akanda_pki::tls::client_config(&read(ca), Some((&read(cert), &read(key))))
            .unwrap_or_else(|e| panic!("TLS client set-up: {e}"));
        let options = akanda_netns::HttpOptions {
            tls: Some(Arc::new(config)),
            ..Default::default()
        };
        self.client = http_client(&self.ns, &options);
        self
    }

    /// Same client with another per-request time limit (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Http {
        self.timeout = timeout;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Base URL + `path` (a full `http://` URL is used as is).
    pub(crate) fn url(&self, path: &str) -> String {
        join_url(&self.base, path)
    }

    /// Sends one request; `body` is `(content_type, bytes)`. Err only when
    /// no HTTP response was received (connection refused, timeout...).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> anyhow::Result<Response> {
        let r = self
            .client
            .request(method, &self.url(path), body, self.timeout)?;
        Ok(Response {
            status: r.status,
            body: r.text(),
            headers: r.headers,
        })
    }

    #[track_caller]
    fn must(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Response {
        match self.request(method, path, body) {
            Ok(r) => r,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// GET; panics if no response.
    #[track_caller]
    pub fn get(&self, path: &str) -> Response {
        self.must("GET", path, None)
    }

    /// PUT a JSON document; panics if no response.
    #[track_caller]
    pub fn put_json(&self, path: &str, json: &Value) -> Response {
        self.put_raw(path, "application/json", json.to_string().as_bytes())
    }

    /// POST a JSON document; panics if no response.
    #[track_caller]
    pub fn post_json(&self, path: &str, json: &Value) -> Response {
        self.must(
            "POST",
            path,
            Some(("application/json", json.to_string().as_bytes())),
        )
    }

    /// PUT arbitrary bytes with any content type (for malformed-input
    /// tests); panics if no response.
    #[track_caller]
    pub fn put_raw(&self, path: &str, content_type: &str, body: &[u8]) -> Response {
        self.must("PUT", path, Some((content_type, body)))
    }
}

// ---------------------------------------------------------------------------
// The standard router topology

/// The standard agent topology, matching `astara-router-basic.json`:
///
/// ```text
///   mgmt ──eth0┐                ┌eth2── t1  192.168.0.2, 2001:db8:100::2
///              router (agent)
///   ext  ──eth1┘                └eth3── t2  192.168.1.2
/// ```
///
/// The router side is named `eth0..eth3` with MACs `fa:16:3e:00:00:01..04`
/// (the agent renames them `geN`); every peer side is named `eth0`
/// ([`RouterLab::HOST_IF`]). Only the management address is configured on
/// the router (as the VM's boot config would); the rest is the agent's job.
/// The ext host routes 192.168.0.0/16 and 2001:db8:100::/48 via the router,
/// so internal hosts are reachable from outside without NAT.
#[derive(Debug)]
pub struct RouterLab {
    router: Netns,
    mgmt: Netns,
    ext: Netns,
    t1: Netns,
    t2: Netns,
    port: u16,
    // Last: removed after the namespaces (and the agent in them) are gone.
    state: TempDir,
}

impl RouterLab {
    /// Conformance config this topology is built from.
    pub const CONFORMANCE: &'static str = "astara-router-basic.json";
    /// Router-side MACs of eth0 (mgmt), eth1 (ext), eth2 (t1), eth3 (t2).
    pub const ROUTER_MACS: [&'static str; 4] = [
        "fa:16:3e:00:00:01",
        "fa:16:3e:00:00:02",
        "fa:16:3e:00:00:03",
        "fa:16:3e:00:00:04",
    ];
    /// Interface name on the host side of every link.
    pub(crate) const HOST_IF: &'static str = "eth0";
    /// The router's management address (the agent listens here).
    pub const MGMT_ADDR: &'static str = "fdca:3ba5:a17a:acda:f816:3eff:fee0:e1b0";
    /// The orchestrator's address in the mgmt namespace.
    pub const MGMT_PEER_ADDR: &'static str = "fdca:3ba5:a17a:acda::1";
    /// External gateway (ext host).
    pub const EXT_GW_V4: &'static str = "172.16.77.1";
    pub const EXT_GW_V6: &'static str = "2001:db8:77::1";
    /// The router's external addresses in the conformance config.
    pub const EXT_ROUTER_V4: &'static str = "172.16.77.2";
    pub const EXT_ROUTER_V6: &'static str = "2001:db8:77::2";
    /// Internal host t1 (its MAC is the conformance allocation's).
    pub const T1_V4: &'static str = "192.168.0.2";
    pub const T1_V6: &'static str = "2001:db8:100::2";
    pub const T1_MAC: &'static str = "fa:16:3e:aa:bb:01";
    /// Internal host t2 (second internal network, not in the conformance file).
    pub const T2_V4: &'static str = "192.168.1.2";

    /// Gives the router's management link `MGMT_ADDR` and the orchestrator's side
    /// `MGMT_PEER_ADDR` (both /64, no DAD): what the VM's boot config and the management
    /// network provide.
    pub fn address_management(router: &Netns, router_if: &str, mgmt: &Netns, mgmt_if: &str) {
        router.ip(&format!(
            "addr add {}/64 dev {router_if} nodad",
            Self::MGMT_ADDR
        ));
        mgmt.ip(&format!(
            "addr add {}/64 dev {mgmt_if} nodad",
            Self::MGMT_PEER_ADDR
        ));
    }

    /// Builds the topology. Namespaces are `akt-<tag>-<role>-<pid>-<n>`.
    pub fn new(tag: &str) -> RouterLab {
        let ns = |role: &str| Netns::new(&format!("{tag}-{role}"));
        let (router, mgmt, ext, t1, t2) = (ns("rt"), ns("mgmt"), ns("ext"), ns("t1"), ns("t2"));
        let [mac0, mac1, mac2, mac3] = Self::ROUTER_MACS;
        let h = Self::HOST_IF;
        veth(&router, "eth0", mac0, &mgmt, h, "fa:16:3e:00:10:00");
        veth(&router, "eth1", mac1, &ext, h, "fa:16:3e:00:10:01");
        veth(&router, "eth2", mac2, &t1, h, Self::T1_MAC);
        veth(&router, "eth3", mac3, &t2, h, "fa:16:3e:00:10:03");

        Self::address_management(&router, "eth0", &mgmt, h);

        ext.ip(&format!("addr add {}/24 dev {h}", Self::EXT_GW_V4));
        ext.ip(&format!("addr add {}/64 dev {h} nodad", Self::EXT_GW_V6));
        ext.ip(&format!(
            "route add 192.168.0.0/16 via {}",
            Self::EXT_ROUTER_V4
        ));
        ext.ip(&format!(
            "route add 2001:db8:100::/48 via {}",
            Self::EXT_ROUTER_V6
        ));

        t1.ip(&format!("addr add {}/24 dev {h}", Self::T1_V4));
        t1.ip("route add default via 192.168.0.1");
        t1.ip(&format!("addr add {}/64 dev {h} nodad", Self::T1_V6));
        t1.ip("-6 route add default via 2001:db8:100::1");

        t2.ip(&format!("addr add {}/24 dev {h}", Self::T2_V4));
        t2.ip("route add default via 192.168.1.1");

        let state = tempfile::Builder::new()
            .prefix("akanda-lab-state-")
            .tempdir()
            .expect("temp dir");
        RouterLab {
            router,
            mgmt,
            ext,
            t1,
            t2,
            port: unique_port(),
            state,
        }
    }

    pub fn router(&self) -> &Netns {
        &self.router
    }
    pub fn mgmt(&self) -> &Netns {
        &self.mgmt
    }
    pub fn ext(&self) -> &Netns {
        &self.ext
    }
    /// t1 asks for a DHCPv4 lease on eth0 (its address flushed first) with a real dhclient,
    /// which is stopped again; the lease as dhclient's hook saw it (`new_ip_address=...` lines).
    pub fn t1_dhcp_lease(&self) -> String {
        let t1 = self.t1();
        t1.ip("addr flush dev eth0");
        let dir = tempfile::tempdir().expect("temporary directory");
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("hook"),
            format!("#!/bin/sh\nenv > {d}/$reason.env\n"),
        )
        .expect("dhclient hook");
        t1.sh(&format!("chmod +x {d}/hook"));
        t1.sh(&format!(
            "timeout 20 dhclient -4 -1 -sf {d}/hook -lf {d}/leases -pf {d}/pid eth0"
        ));
        let env = std::fs::read_to_string(dir.path().join("BOUND.env"));
        t1.sh(&format!("kill $(cat {d}/pid) 2>/dev/null || true"));
        env.expect("a DHCP lease")
    }

    pub fn t1(&self) -> &Netns {
        &self.t1
    }
    pub fn t2(&self) -> &Netns {
        &self.t2
    }

    /// Router-side MACs, indexed by creation order (eth0..eth3).
    pub fn router_macs(&self) -> [&'static str; 4] {
        Self::ROUTER_MACS
    }

    /// The agent's port: fixed for the lab, so a restarted agent is found
    /// at the same URL.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `[MGMT_ADDR]:port`.
    pub fn listen_addr(&self) -> SocketAddr {
        let ip: Ipv6Addr = Self::MGMT_ADDR.parse().expect("valid constant");
        SocketAddr::V6(SocketAddrV6::new(ip, self.port, 0, 0))
    }

    /// `http://[MGMT_ADDR]:port`.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.listen_addr())
    }

    /// HTTP client in the mgmt namespace for the agent's URL.
    pub fn http(&self) -> Http {
        Http::new(&self.mgmt, self.base_url())
    }

    /// The lab's agent state dir. It outlives agents, so an agent started
    /// again after `kill()`/`stop()` sees its predecessor's state.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Starts the agent in the router namespace on the lab's address, port
    /// and state dir, without waiting for it.
    pub fn spawn_agent(&self) -> Agent {
        Agent::spawn(&self.router, self.listen_addr(), Some(self.state_dir()))
    }

    /// [`RouterLab::spawn_agent`], then waits (up to 15 s) until it answers
    /// from the mgmt namespace.
    #[track_caller]
    pub fn start_agent(&self) -> Agent {
        let mut agent = self.spawn_agent();
        agent.wait_ready(&self.mgmt, Duration::from_secs(15));
        agent
    }

    /// The conformance config (ifnames `geN` as in the file).
    pub fn config(&self) -> Value {
        conformance_json(Self::CONFORMANCE)
    }

    /// The geN the running agent gave the NIC with `mac` (from `GET /v1/system/interfaces`,
    /// as an orchestrator maps them).
    pub fn ifname_for(&self, mac: &str) -> String {
        self.ifname_for_with(&self.http(), mac)
    }

    /// [`RouterLab::ifname_for`] through a given client (e.g. a mutual TLS one).
    pub(crate) fn ifname_for_with(&self, http: &Http, mac: &str) -> String {
        let resp = http.get("/v1/system/interfaces");
        assert_eq!(resp.status, 200, "{}", resp.body);
        resp.json()["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["lladdr"] == mac)
            .unwrap_or_else(|| panic!("no interface with MAC {mac} in {}", resp.body))["ifname"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The conformance config fitted to this lab (needs the agent running): its management,
    /// external and internal networks on the lab's NICs, plus t2's network 192.168.1.0/24.
    /// An extracted config drive for `--boot-config DIR`: the management NIC by MAC
    /// (`ROUTER_MACS[0]`), its static address `MGMT_ADDR`, MTU 1500, the lab's port, plain HTTP
    /// allowed.
    pub fn boot_config_drive(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temporary directory");
        let latest = dir.path().join("openstack/latest");
        std::fs::create_dir_all(&latest).expect("config drive directory");
        let mac = RouterLab::ROUTER_MACS[0];
        let nd = json!({
            "links": [{"id": "tap0", "type": "tap", "ethernet_mac_address": mac, "mtu": 1500}],
            "networks": [{"id": "network0", "link": "tap0", "type": "ipv6",
                          "ip_address": RouterLab::MGMT_ADDR, "netmask": "ffff:ffff:ffff:ffff::",
                          "routes": [], "network_id": "43dc2fad-f6f9-4668-9695-fed50f7768aa"}]
        });
        let meta = json!({"uuid": "u", "meta": {"akanda_mgmt_mac": mac,
            "akanda_api_port": self.port().to_string(), "akanda_insecure_http": "true"}});
        std::fs::write(latest.join("network_data.json"), nd.to_string())
            .expect("network_data.json");
        std::fs::write(latest.join("meta_data.json"), meta.to_string()).expect("meta_data.json");
        dir
    }

    pub fn fitted_config(&self) -> Value {
        self.fitted_config_with(&self.http())
    }

    /// [`RouterLab::fitted_config`] through a given client (e.g. a mutual TLS one).
    pub fn fitted_config_with(&self, http: &Http) -> Value {
        let mut config = self.config();
        let macs = Self::ROUTER_MACS;
        for (i, mac) in macs.iter().take(3).enumerate() {
            config["networks"][i]["interface"]["ifname"] = json!(self.ifname_for_with(http, mac));
        }
        config["networks"].as_array_mut().unwrap().push(json!({
            "network_id": "5f0c1d2e-0000-4000-8000-000000000002",
            "network_type": "internal",
            "v4_conf_service": "static",
            "v6_conf_service": "static",
            "interface": {"ifname": self.ifname_for_with(http, macs[3]), "addresses": ["192.168.1.1/24"]},
            "subnets": [{"id": "t2-subnet", "cidr": "192.168.1.0/24", "gateway_ip": "192.168.1.1",
                         "dhcp_enabled": true, "dns_nameservers": [], "host_routes": []}],
            "allocations": []
        }));
        config
    }

    /// [`dump_state`] of the router namespace.
    pub fn dump_router_state(&self) -> String {
        dump_state(&self.router)
    }

    /// Names of the lab's namespaces (router, mgmt, ext, t1, t2).
    pub fn namespace_names(&self) -> [&str; 5] {
        [
            self.router.name(),
            self.mgmt.name(),
            self.ext.name(),
            self.t1.name(),
            self.t2.name(),
        ]
    }
}

/// The basic conformance config grown to `n` floating IPs
/// ([`akanda_model::testing::with_floating_ips`]): floating IP 172.16.A.B ↦ fixed IP 10.0.A.B.
pub fn config_with_floating_ips(n: u32) -> Value {
    akanda_model::testing::with_floating_ips(conformance_json("astara-router-basic.json"), n)
}

/// The last good config saved in `state_dir` (`None` when none is saved), read from the
/// documented format (agent/src/store.rs, docs/architecture.md "Persisting"): of the slots
/// `config.0` and `config.1`, the one whose header line is valid and whose JSON matches the
/// header's SHA-256, of the higher generation; without one, an older agent's `config.json`.
/// Read here, in the harness, rather than by running `akanda-agent saved-config`
/// (tests/tests/cli.rs checks that both agree): the mutation test reads it twice per config.
pub fn saved_config(state_dir: &Path) -> Option<Vec<u8>> {
    use sha2::{Digest, Sha256};
    let slots: Vec<Vec<u8>> = (0..2)
        .filter_map(|i| std::fs::read(state_dir.join(format!("config.{i}"))).ok())
        .collect();
    // (generation, the config or None for "no config saved")
    let whole = |bytes: &[u8]| -> Option<(u64, Option<Vec<u8>>)> {
        let header = bytes.get(..512)?;
        let line = std::str::from_utf8(header.split(|b| *b == 0).next()?).ok()?;
        let line = line.split('\n').next()?;
        // CHECK: the first 16 hex digits of the SHA-256 of the line before it.
        let (body, check) = line.rsplit_once(' ')?;
        let digest = hex::encode(Sha256::digest(format!("{body} ").as_bytes()));
        if digest.get(..16) != Some(check) {
            return None;
        }
        match body.split_whitespace().collect::<Vec<_>>()[..] {
            ["akanda-config", "1", generation, "-", "-"] => Some((generation.parse().ok()?, None)),
            ["akanda-config", "1", generation, length, sha] => {
                let config = bytes.get(512..512 + length.parse::<usize>().ok()?)?;
                (hex::encode(Sha256::digest(config)) == sha).then_some(())?;
                Some((generation.parse().ok()?, Some(config.to_vec())))
            }
            _ => None,
        }
    };
    match slots
        .iter()
        .filter_map(|s| whole(s))
        .max_by_key(|(g, _)| *g)
    {
        Some((_, config)) => config,
        // No slot, or none whole (a first config never committed): an older agent's file.
        None => std::fs::read(state_dir.join("config.json")).ok(),
    }
}

/// Whether `path` is one of the files that keep the saved config (its two slots): which slot
/// holds it, and what the other slot holds (a config staged by an
/// apply that failed), is not the box's state; [`saved_config`] is.
pub fn is_saved_config_file(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| ["config.0", "config.1"].iter().any(|f| n == *f))
}

/// The permission bits of every file that keeps the saved config (`config.*`) in `state_dir`.
pub fn saved_config_modes(state_dir: &Path) -> Vec<(String, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut modes: Vec<(String, u32)> = std::fs::read_dir(state_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", state_dir.display()))
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let mode = e.metadata().ok()?.permissions().mode() & 0o777;
            name.starts_with("config.").then_some((name, mode))
        })
        .collect();
    modes.sort();
    assert!(
        !modes.is_empty(),
        "no saved config in {}",
        state_dir.display()
    );
    modes
}

/// The i-th floating IP of [`config_with_floating_ips`] (i < 62,500).
pub use akanda_model::testing::floating_ip;

/// Runs `f` on a fresh thread that has entered the network namespace `ns` (setns affects only
/// the calling thread; threads and sockets created inside `f` stay in that namespace).
#[track_caller]
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    ns.inner.enter(f).unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_volatile_keeps_permanent_lifetimes() {
        let mut v = serde_json::json!([{"stats64": {}, "addr_info": [
            {"local": "a", "valid_life_time": 4294967295u64, "preferred_life_time": 4294967295u64},
            {"local": "b", "valid_life_time": 300, "preferred_life_time": 100}
        ]}]);
        strip_volatile(&mut v);
        assert_eq!(
            v,
            serde_json::json!([{"addr_info": [
                {"local": "a", "valid_life_time": 4294967295u64, "preferred_life_time": 4294967295u64},
                {"local": "b"}
            ]}])
        );
    }

    #[test]
    fn http_url_joins_paths() {
        let base = "http://[fdca::1]:20000";
        assert_eq!(
            join_url(base, "/v1/status"),
            "http://[fdca::1]:20000/v1/status"
        );
        assert_eq!(
            join_url(base, "v1/status"),
            "http://[fdca::1]:20000/v1/status"
        );
        assert_eq!(join_url(base, "https://x/y"), "https://x/y");
    }
}
