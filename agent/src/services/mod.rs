//! The Service Instance's services: dnsmasq (DHCPv4, DHCPv6, RA, DNS forwarding) per tenant
//! network, bird (BGP to the external gateway), the metadata proxy, gratuitous ARP /
//! unsolicited NA, and the host name. See `docs/services.md`.
//!
//! [`Services`] is the facade the appliance calls: [`Services::apply`] after links, addresses
//! and routes (and the firewall) are in place, [`Services::announce`] for addresses that just
//! appeared, [`Services::status`] for `GET /v1/status`, [`Services::shutdown`] on exit.
//!
//! Config files are rendered by pure functions (`dnsmasq::render`, `bird::render`,
//! `hostname::render_*`, `metadata::desired`, `garp::*_frame`); the rest is a thin I/O layer.

pub mod bird;
pub(crate) mod check;
pub mod dnsmasq;
pub(crate) mod garp;
pub mod hostname;
pub mod metadata;
pub(crate) mod supervisor;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use akanda_model::config::RouterConfig;
use serde_json::{json, Value};

/// Errors of the services layer.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot run {program}: {source}")]
    Spawn { program: PathBuf, source: io::Error },
    #[error("{daemon} rejected its configuration: {message}")]
    Rejected { daemon: String, message: String },
    #[error("{daemon}'s config check did not finish within {timeout:?}: killed")]
    CheckTimedOut { daemon: String, timeout: Duration },
    #[error("bird control socket {path}: {source}")]
    Control { path: PathBuf, source: io::Error },
    #[error("metadata listener on {ifname} port {port}: {source}")]
    Bind {
        ifname: String,
        port: u16,
        source: io::Error,
    },
    #[error("cannot set the host name: {0}")]
    Hostname(nix::Error),
    #[error("cannot announce addresses on {ifname}: {source}")]
    Announce { ifname: String, source: io::Error },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Several(Vec<ServicesError>),
}

/// Where files go and which binaries run.
#[derive(Debug, Clone)]
pub struct ServicesOptions {
    /// Generated files and control sockets (`RUN_DIR/dnsmasq/geN/`, `RUN_DIR/bird/`).
    pub run_dir: PathBuf,
    /// Persistent data: DHCP leases (`STATE_DIR/dnsmasq/geN.leases`).
    pub state_dir: PathBuf,
    pub dnsmasq: PathBuf,
    pub bird: PathBuf,
    /// How long the orchestrator gets to answer a metadata request (then 504).
    pub metadata_timeout: Duration,
    /// How long a daemon's config check (`dnsmasq --test`, `bird -p`) may take; it is then
    /// killed and the apply fails.
    pub check_timeout: Duration,
    /// Call `sethostname(2)`. Off in tests that share the host's UTS namespace.
    pub set_hostname: bool,
    /// Write the host name here (`/etc/hostname` in the image); `None` writes nothing.
    pub hostname_file: Option<PathBuf>,
    /// Write the hosts file here (`/etc/hosts` in the image); `None` writes nothing.
    pub hosts_file: Option<PathBuf>,
}

impl Default for ServicesOptions {
    /// Safe defaults for any host: the Service Instance's paths and ports, but the host name
    /// is left alone (a test running the agent under `ip netns exec` shares the host's UTS
    /// namespace). See [`ServicesOptions::service_instance`].
    fn default() -> Self {
        ServicesOptions {
            run_dir: PathBuf::from("/run/akanda"),
            state_dir: PathBuf::from("/var/lib/akanda-agent/services"),
            dnsmasq: PathBuf::from("dnsmasq"),
            bird: PathBuf::from("bird"),
            metadata_timeout: Duration::from_secs(30),
            check_timeout: check::DEFAULT_TIMEOUT,
            set_hostname: false,
            hostname_file: None,
            hosts_file: None,
        }
    }
}

impl ServicesOptions {
    /// Inside the Service Instance: also `sethostname(2)`, `/etc/hostname` and `/etc/hosts`.
    pub(crate) fn service_instance() -> Self {
        ServicesOptions {
            set_hostname: true,
            hostname_file: Some(PathBuf::from("/etc/hostname")),
            hosts_file: Some(PathBuf::from("/etc/hosts")),
            ..ServicesOptions::default()
        }
    }
}

/// Owns the supervised daemons and the metadata listeners.
pub struct Services {
    opts: ServicesOptions,
    dnsmasq: dnsmasq::DnsmasqSet,
    bird: bird::Bird,
    metadata: metadata::MetadataProxy,
    hostname: Option<String>,
    /// Sends gratuitous ARP; opened at the first announcement.
    announcer: Option<garp::Announcer>,
    /// An apply began and did not complete (an error, or a panic part-way): what the
    /// daemons were last given is then not trusted, and the next apply (the rollback's)
    /// compares every file on disk with what it wants.
    unsettled: bool,
}

impl Services {
    pub fn new(opts: ServicesOptions) -> Services {
        Services {
            dnsmasq: dnsmasq::DnsmasqSet::new(
                opts.dnsmasq.clone(),
                opts.run_dir.clone(),
                opts.state_dir.clone(),
                opts.check_timeout,
            ),
            bird: bird::Bird::new(opts.bird.clone(), &opts.run_dir, opts.check_timeout),
            metadata: metadata::MetadataProxy::new(opts.metadata_timeout),
            hostname: None,
            announcer: None,
            unsettled: false,
            opts,
        }
    }

    /// Brings every service to what `config` asks. Must run on the agent's tokio runtime, in
    /// the router's network namespace, after the NICs have their addresses. Each service is
    /// brought as far as it can go even when another fails; the error lists every failure.
    /// An identical config changes nothing (no file written, no signal sent).
    pub async fn apply(&mut self, config: &RouterConfig) -> Result<(), ServicesError> {
        // Set until this apply completes: a panic part-way leaves it set.
        let verify = std::mem::replace(&mut self.unsettled, true);
        let mut errors = Vec::new();
        match hostname::apply(
            config,
            self.opts.set_hostname,
            self.opts.hostname_file.as_deref(),
            self.opts.hosts_file.as_deref(),
        ) {
            Ok(_) => self.hostname = Some(config.hostname.clone()),
            Err(e) => errors.push(e),
        }
        errors.extend(self.dnsmasq.apply(config, verify).await);
        if let Err(e) = self.bird.apply(config, verify).await {
            errors.push(e);
        }
        errors.extend(self.metadata.apply(config));
        self.settled_unless(errors)
    }

    /// Back to no service at all (the rollback of a router's first config): every daemon
    /// stopped, every listener closed, the generated files and the lease files this
    /// transaction created removed. The host name is left as it is.
    pub(crate) async fn reset(&mut self) -> Result<(), ServicesError> {
        self.metadata.shutdown();
        self.dnsmasq.reset().await;
        self.bird.shutdown().await;
        let mut errors = Vec::new();
        for dir in [
            self.opts.run_dir.join("dnsmasq"),
            self.opts.run_dir.join("bird"),
        ] {
            match fs::remove_dir_all(&dir) {
                Err(source) if source.kind() != io::ErrorKind::NotFound => {
                    errors.push(ServicesError::Write { path: dir, source })
                }
                _ => {}
            }
        }
        self.hostname = None;
        self.settled_unless(errors)
    }

    /// The outcome of a step over every service: `Ok` (and nothing left unsettled) when no
    /// service failed, else the one error, or all of them.
    fn settled_unless(&mut self, mut errors: Vec<ServicesError>) -> Result<(), ServicesError> {
        match errors.len() {
            0 => {
                self.unsettled = false;
                Ok(())
            }
            1 => Err(errors.remove(0)),
            _ => Err(ServicesError::Several(errors)),
        }
    }

    /// The transaction that called [`Services::apply`] (and perhaps its rollback) is over:
    /// lease files created by it are now kept like any other.
    pub(crate) fn settle(&mut self) {
        self.dnsmasq.settle();
    }

    /// Stops daemons left by an earlier agent that was killed (SIGKILL, a crash) without
    /// stopping its children, and removes the files generated for them: the agent starts
    /// from no daemon and no generated file, and its first apply starts what the config
    /// needs. Returns how many it stopped. Run at start, before anything is applied.
    pub async fn reap_stale(&mut self) -> usize {
        let run_dir = self.opts.run_dir.clone();
        let (dnsmasq, bird) = (
            self.opts.dnsmasq.display().to_string(),
            self.opts.bird.display().to_string(),
        );
        let programs = [dnsmasq.as_str(), bird.as_str(), "dnsmasq", "bird"];
        let stopped =
            supervisor::kill_stale(|_, argv| supervisor::is_daemon_of(argv, &programs, &run_dir))
                .await;
        let dnsmasq_dir = run_dir.join("dnsmasq");
        for dir in [dnsmasq_dir, self.opts.run_dir.join("bird")] {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {
                    tracing::debug!(dir = %dir.display(), "generated files of an earlier agent removed")
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an earlier agent's files")
                }
            }
        }
        stopped
    }

    /// Gratuitous ARP (IPv4) and unsolicited neighbour advertisements (IPv6) for `addrs` out of
    /// `ifname`, from a raw packet socket opened at the first announcement in the calling
    /// thread's network namespace and kept (see [`garp::Announcer`]).
    pub fn announce(&mut self, ifname: &str, addrs: &[IpAddr]) -> Result<(), ServicesError> {
        if addrs.is_empty() {
            return Ok(());
        }
        let failed = |source| ServicesError::Announce {
            ifname: ifname.to_owned(),
            source,
        };
        let announcer = match &self.announcer {
            Some(a) => a,
            None => self
                .announcer
                .insert(garp::Announcer::open().map_err(failed)?),
        };
        announcer.send(ifname, addrs).map_err(failed)
    }

    /// `{"dnsmasq": {"geN": daemon}, "bird": daemon|null, "metadata": {"geN": listener},
    /// "hostname": name|null}` where a daemon is `{running, pid, restarts, starts, last_start,
    /// last_reload, last_exit, last_error}`.
    pub fn status(&self) -> Value {
        json!({
            "dnsmasq": self.dnsmasq.status(),
            "bird": self.bird.status(),
            "metadata": self.metadata.status(),
            "hostname": self.hostname,
        })
    }

    /// The pid of `ifname`'s dnsmasq, if it runs.
    pub fn dnsmasq_pid(&self, ifname: &str) -> Option<u32> {
        self.dnsmasq.pid(ifname)
    }

    /// The pid of bird, if it runs.
    pub fn bird_pid(&self) -> Option<u32> {
        self.bird.pid()
    }

    /// Stops every daemon (SIGTERM, then SIGKILL after 5 s) and closes the listeners.
    pub async fn shutdown(&mut self) {
        self.metadata.shutdown();
        self.dnsmasq.shutdown().await;
        self.bird.shutdown().await;
    }
}

/// Creates `dir` (and parents) and sets its mode.
pub(crate) fn create_dir(dir: &Path, mode: u32) -> Result<(), ServicesError> {
    let err = |source| ServicesError::Write {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(err)
}

/// Writes `path` atomically with `mode` (see [`crate::store::write_atomic_mode`]).
pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ServicesError> {
    crate::store::write_atomic_mode(path, bytes, mode).map_err(|source| ServicesError::Write {
        path: path.to_path_buf(),
        source,
    })
}
