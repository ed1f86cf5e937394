//! The single owner of the appliance's state: applies configs as transactions.
//!
//! Apply = preflight (name NICs, check the config's interfaces exist, forwarding sysctls,
//! read the kernel), then the [`Phase`]s in order: links/addresses/routes (and the floating
//! IPs' local routes), the ruleset, conntrack, the services, persist. Persisting starts first,
//! on a blocking thread, and runs while the kernel is written: its fsyncs overlap the kernel
//! work, and the apply answers only once the config is on disk. Each phase records in a journal how to undo itself
//! (before it starts when it can half-happen, after it succeeds when it is atomic). When a
//! phase fails, the journal is unwound in reverse, and the error names the phase, the cause
//! and what the rollback itself achieved. A new phase (VPN, HA) is one more step in
//! [`Appliance::run_phases`] and, if it changes anything, one more [`Undo`].

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use akanda_model::{Problem, RouterConfig};
use futures::FutureExt;
use serde::Serialize;

use crate::desired::{desired_state, DesiredState};
use crate::failpoint;
use crate::firewall::{self, FirewallOptions, Ruleset};
use crate::netlink::{
    format_mac, Netlink, NetlinkError, FLOATING_IP_RULE_PRIORITY, FLOATING_IP_TABLE,
};
use crate::nics::{self, Nic};
use crate::reconcile::{
    execute, floating_ip_routes, plan_floating_ips, plan_links, plan_routes, KernelState,
};
use crate::services::{Services, ServicesOptions};
use crate::store::StateDir;
use crate::sysctl;

/// The phases of an apply that change the box, in order (`Preflight` changes nothing the
/// journal undoes: it names NICs and checks the config fits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Preflight,
    LinksAddressesRoutes,
    Ruleset,
    Conntrack,
    Services,
    Persist,
}

impl Phase {
    /// The phase's name, as in `/v1/status` `last_apply.phases_ms`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::LinksAddressesRoutes => "links_addresses_routes",
            Phase::Ruleset => "ruleset",
            Phase::Conntrack => "conntrack",
            Phase::Services => "services",
            Phase::Persist => "persist",
        }
    }

    /// What failed, in words for an operator.
    pub(crate) fn refusal(self) -> &'static str {
        match self {
            Phase::Preflight => "the apply could not be prepared",
            Phase::LinksAddressesRoutes => "the kernel refused the links, addresses or routes",
            Phase::Ruleset => "the kernel refused the ruleset",
            Phase::Conntrack => "ending the moved floating IPs' sessions failed",
            Phase::Services => "a service could not be configured",
            Phase::Persist => "the config could not be saved",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What unwinding the journal achieved: the phases put back, and those that could not be.
#[derive(Debug, Default, Clone)]
pub struct Rollback {
    /// Phases put back as they were before the apply (last first, as unwound).
    pub(crate) restored: Vec<Phase>,
    /// Phases that could not be put back, with why: the box is then degraded.
    pub(crate) failed: Vec<(Phase, String)>,
    /// What no rollback undoes, said so that the answer stays true (ended sessions).
    pub(crate) notes: Vec<String>,
}

impl Rollback {
    pub(crate) fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }

    /// `{"complete", "restored": [phase], "not_restored": [{"phase", "error"}], "notes"}`.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "complete": self.is_complete(),
            "restored": self.restored.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "not_restored": self.failed.iter().map(|(p, e)| NotRestored {
                phase: p.name(),
                error: e.clone(),
            }).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}

/// A phase a rollback could not put back.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct NotRestored {
    pub(crate) phase: &'static str,
    pub(crate) error: String,
}

/// Why the box is degraded: an apply failed and its rollback failed too, so the box is
/// neither the config in force nor the one refused. Cleared by the next apply that
/// succeeds (an apply reconciles every part of the box from what the kernel, the disk and the
/// daemons actually have).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Degraded {
    pub(crate) since: String,
    /// The config whose apply failed.
    pub(crate) config_hash: String,
    pub(crate) phase: &'static str,
    pub(crate) cause: String,
    pub(crate) restored: Vec<&'static str>,
    pub(crate) not_restored: Vec<NotRestored>,
}

/// Why an apply failed. Every variant but a `Failed` whose rollback is incomplete leaves the
/// previous config in force.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The config names NICs this appliance does not have.
    #[error("the config does not fit this appliance")]
    DoesNotFit(Vec<Problem>),
    /// A phase failed, or panicked (`panicked`: a bug of the agent's); `rollback` says what
    /// was restored.
    #[error("{cause}")]
    Failed {
        phase: Phase,
        cause: String,
        rollback: Rollback,
        panicked: bool,
    },
    /// The appliance could not do its part (netlink socket, state directory, sysctls).
    #[error("{0}")]
    Unavailable(String),
}

/// How to undo one phase of the journal.
enum Undo {
    /// Put the links, addresses and routes the apply touched back as read before it began.
    Kernel,
    /// Reinstall the ruleset that was in the kernel (None: delete the agent's table).
    Ruleset(Option<Arc<Ruleset>>),
    /// Bring the services back to the previous config.
    Services,
    /// Put the previous config back in the state directory (or remove the new one).
    Persist,
}

/// A NIC as it was before the agent first configured it (see `Appliance::leftovers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
struct LinkBefore {
    mtu: u32,
    up: bool,
    addresses: BTreeSet<ipnet::IpNet>,
}

impl LinkBefore {
    fn desired(&self) -> crate::desired::DesiredLink {
        crate::desired::DesiredLink {
            mtu: Some(self.mtu),
            up: self.up,
            addresses: self.addresses.clone(),
            nodad: true,
        }
    }
}

/// `applying.json`: NICs an apply in progress configures beyond the saved config, as they
/// were before, and the boot they belong to.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
struct Intent {
    boot_id: String,
    links: std::collections::BTreeMap<String, LinkBefore>,
}

/// This boot of the kernel (`/proc/sys/kernel/random/boot_id`).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// What `/v1/status` shows of the last apply.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ApplyRecord {
    pub(crate) time: String,
    pub(crate) duration_ms: f64,
    pub(crate) result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    pub(crate) config_hash: String,
    /// Netlink write requests this apply sent (0 for an identical config).
    pub(crate) netlink_writes: u64,
    /// nf_tables batches this apply sent (0 when the ruleset did not change).
    pub(crate) netfilter_batches: u64,
    /// Floating IPs whose sessions were ended because they went away or moved.
    pub(crate) conntrack_flushed: usize,
    /// Milliseconds spent in each phase: where an apply's time went.
    pub(crate) phases_ms: std::collections::BTreeMap<&'static str, f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Counters {
    pub(crate) applies_ok: u64,
    pub(crate) applies_failed: u64,
}

/// State readable without waiting for an apply in progress (liveness and status stay fast).
#[derive(Debug, Default)]
pub struct Shared {
    pub(crate) last_apply: Option<ApplyRecord>,
    pub(crate) counters: Counters,
    /// The config in force as `GET /v1/system/config` shows it: its canonical JSON, secrets
    /// redacted (`Document::shown`), shared with the PUT's answer rather than copied.
    pub(crate) shown_config: Option<Arc<[u8]>>,
    pub(crate) current_hash: Option<String>,
    pub(crate) netlink_writes_total: u64,
    pub(crate) netfilter_batches_total: u64,
    /// The daemons as the last apply left them: `/v1/status` shows this while an apply
    /// holds the appliance.
    pub(crate) services: Option<serde_json::Value>,
    /// Set when a rollback failed; cleared by the next successful apply.
    pub(crate) degraded: Option<Degraded>,
}

/// Locks a mutex even if a panic poisoned it: the data behind these (status, the external
/// NIC's name) is replaced whole, never left half-written.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct Appliance {
    nl: Netlink,
    state: StateDir,
    current: Option<RouterConfig>,
    /// The ruleset last installed in the kernel (None: the agent's table is absent).
    /// Shared with the journal: a 10,000-floating-IP ruleset is not copied per push.
    ruleset: Option<Arc<Ruleset>>,
    /// The floating IPs' local routes as last written (None: unknown, read the kernel). A
    /// no-op apply at 10,000 floating IPs must not dump them.
    floating_ips: Option<BTreeSet<Ipv4Addr>>,
    /// The floating-IP table's policy rule is known to be in place (`Some(true)`) or absent
    /// (`Some(false)`); `None` until the first apply looks. It is there exactly while the
    /// config has IPv4 floating IPs, so a rollback or a restart leaves it as it was.
    floating_ip_rule: Option<bool>,
    /// The config being saved while the kernel work runs.
    persisting: Option<tokio::task::JoinHandle<std::io::Result<crate::store::StagedConfig>>>,
    /// The staged config's commit began in this apply (see `restore_saved_config`).
    persist_committing: bool,
    /// The saved config may differ from the config in force (putting it back failed): the
    /// next apply saves even an unchanged config.
    saved_dirty: bool,
    /// The phase running now: the one a panic is charged to.
    running: Phase,
    /// NICs an earlier apply of this boot configured beyond the saved config and that no
    /// apply has completed since (it was killed, or failed and could not roll back), as they
    /// were before it. The next apply puts those its config does not name back as they were,
    /// so a restart after a crash at any moment of an apply ends in the old config or the
    /// new one, never a mix. Kept in `applying.json`, written (without fsync: a reboot
    /// empties the kernel anyway) before the first kernel write of an apply that adds to it.
    leftovers: std::collections::BTreeMap<String, LinkBefore>,
    firewall: FirewallOptions,
    netfilter_batches: u64,
    /// What the current apply did beyond netlink, for its status record.
    last_conntrack_flushed: usize,
    phases: std::collections::BTreeMap<&'static str, f64>,
    /// dnsmasq, bird, the metadata proxy, GARP and the host name.
    services: Services,
    pub shared: Arc<Mutex<Shared>>,
    /// Held while NICs are named: the API's [`InterfaceReader`] names new NICs too.
    naming: Arc<tokio::sync::Mutex<()>>,
    /// The external NIC of the config in force, for [`InterfaceReader`].
    external_nic: Arc<std::sync::Mutex<Option<String>>>,
    /// The orchestrator's path from the boot configuration: a saved config that would cut it
    /// is not restored.
    management: Option<crate::management::ManagementPath>,
}

/// Reads the NICs and their kernel state for `GET /v1/system/interfaces` without the
/// appliance (see [`Appliance::interface_reader`]). New NICs are named `geN` here as in an
/// apply (a hot-plugged NIC must be listed before the config that uses it is sent).
pub struct InterfaceReader {
    nl: Netlink,
    nics_path: std::path::PathBuf,
    naming: Arc<tokio::sync::Mutex<()>>,
    /// The external NIC of the config in force (set by each successful apply).
    external: Arc<std::sync::Mutex<Option<String>>>,
}

impl InterfaceReader {
    pub(crate) async fn interfaces(&self) -> Result<Vec<InterfaceView>, ApplyError> {
        let nics = {
            let _naming = self.naming.lock().await;
            nics::name_nics(&self.nl, &self.nics_path)
                .await
                .map_err(|e| ApplyError::Unavailable(format!("naming NICs: {e}")))?
        };
        let kernel = KernelState::read(&self.nl)
            .await
            .map_err(|e| ApplyError::Unavailable(e.to_string()))?;
        let mut views = interface_views(&nics, &kernel);
        // Floating IPs are local routes, not addresses; Astara listed them on the external
        // NIC, and so does this view.
        let external = lock(&self.external).clone();
        if let Some(view) = views
            .iter_mut()
            .find(|v| Some(&v.ifname) == external.as_ref())
        {
            let floating = floating_ip_routes(&self.nl)
                .await
                .map_err(|e| ApplyError::Unavailable(e.to_string()))?;
            view.addresses
                .extend(floating.iter().map(|ip| format!("{ip}/32")));
        }
        Ok(views)
    }
}

fn interface_views(nics: &[Nic], kernel: &KernelState) -> Vec<InterfaceView> {
    nics.iter()
        .filter_map(|nic| {
            let link = kernel.links.iter().find(|l| l.index == nic.index)?;
            let addresses = kernel
                .addresses
                .iter()
                .filter(|a| a.index == nic.index)
                .map(|a| a.net.to_string())
                .collect();
            Some(InterfaceView {
                ifname: nic.ifname.clone(),
                lladdr: link.mac.as_ref().map(format_mac).unwrap_or_default(),
                addresses,
                mtu: link.mtu,
                state: if link.up { "up" } else { "down" },
                description: String::new(),
                groups: Vec::new(),
                media: None,
            })
        })
        .collect()
}

/// One NIC as `GET /v1/system/interfaces` shows it (Astara's Interface shape).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InterfaceView {
    pub(crate) ifname: String,
    pub(crate) lladdr: String,
    pub(crate) addresses: Vec<String>,
    pub(crate) mtu: u32,
    pub(crate) state: &'static str,
    pub(crate) description: String,
    pub(crate) groups: Vec<String>,
    pub(crate) media: Option<String>,
}

/// The daemons' programs and how long their config checks may take (`serve --dnsmasq`,
/// `--bird`, `--daemon-check-timeout`).
#[derive(Debug, Clone)]
pub struct Daemons {
    pub dnsmasq: std::path::PathBuf,
    pub bird: std::path::PathBuf,
    pub check_timeout: std::time::Duration,
}

impl Default for Daemons {
    fn default() -> Self {
        let services = ServicesOptions::default();
        Daemons {
            dnsmasq: services.dnsmasq,
            bird: services.bird,
            check_timeout: services.check_timeout,
        }
    }
}

impl Appliance {
    /// Connects to the kernel, stops the daemons an earlier agent left when it was killed,
    /// and names the NICs. Turns nothing on: [`Appliance::bootstrap`] comes next.
    pub async fn open(state: StateDir, daemons: Daemons) -> Result<Appliance, ApplyError> {
        let nl = Netlink::connect().map_err(|e| ApplyError::Unavailable(e.to_string()))?;
        let state_path = state.path().to_path_buf();
        let services = ServicesOptions {
            dnsmasq: daemons.dnsmasq,
            bird: daemons.bird,
            check_timeout: daemons.check_timeout,
            ..services_options(&state_path)
        };
        let mut appliance = Appliance {
            nl,
            state,
            current: None,
            ruleset: None,
            floating_ips: None,
            floating_ip_rule: None,
            persisting: None,
            persist_committing: false,
            saved_dirty: false,
            running: Phase::Preflight,
            leftovers: Default::default(),
            firewall: FirewallOptions { api_port: 5000 },
            netfilter_batches: 0,
            last_conntrack_flushed: 0,
            phases: Default::default(),
            services: Services::new(services),
            shared: Arc::new(Mutex::new(Shared::default())),
            naming: Arc::new(tokio::sync::Mutex::new(())),
            external_nic: Arc::default(),
            management: None,
        };
        // Daemons an earlier agent left when it was killed: stopped before anything starts.
        let stopped = appliance.services.reap_stale().await;
        if stopped > 0 {
            tracing::warn!(stopped, "daemons left by an earlier agent were stopped");
        }
        appliance.leftovers = appliance.load_leftovers();
        // Not forwarding: that waits for the bootstrap ruleset.
        sysctl::ensure_address_sysctls().map_err(|e| ApplyError::Unavailable(e.to_string()))?;
        appliance.nics().await?;
        Ok(appliance)
    }

    /// The leftovers an earlier agent of this boot recorded (see `leftovers`).
    fn load_leftovers(&self) -> std::collections::BTreeMap<String, LinkBefore> {
        let intent = match self.state.load_intent() {
            Ok(Some(bytes)) => serde_json::from_slice::<Intent>(&bytes),
            Ok(None) => return Default::default(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read {}", self.state.intent_path().display());
                return Default::default();
            }
        };
        match intent {
            Ok(intent) if intent.boot_id == boot_id() => {
                tracing::warn!(nics = ?intent.links.keys().collect::<Vec<_>>(),
                    "an earlier agent was stopped during an apply: these NICs go back to how they were unless the config names them");
                intent.links
            }
            Ok(_) => {
                // Another boot: the kernel it described is gone.
                let _ = self.state.remove_intent();
                Default::default()
            }
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable {}", self.state.intent_path().display());
                Default::default()
            }
        }
    }

    /// Installs the bootstrap ruleset (closed but for the agent's API and DHCP client),
    /// replacing whatever table an earlier agent left, and only then turns on forwarding.
    /// Call it before anything listens. An error means the agent must not serve.
    pub fn bootstrap(&mut self) -> Result<(), String> {
        failpoint::hit("bootstrap")?;
        let bootstrap = firewall::ruleset::bootstrap(
            self.firewall,
            self.management.as_ref().map(|m| m.ifname.as_str()),
        );
        // Not trusted: an earlier agent's table, or none.
        self.ruleset = None;
        self.install_ruleset(bootstrap)
            .map_err(|e| format!("installing the bootstrap ruleset: {e}"))?;
        sysctl::ensure_router_sysctls().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// dnsmasq, bird and the metadata proxy, for `/v1/status`.
    pub(crate) fn services_status(&self) -> serde_json::Value {
        self.services.status()
    }

    /// Stops the supervised daemons (on SIGTERM).
    pub async fn shutdown(&mut self) {
        self.services.shutdown().await;
    }

    /// The port the API listens on: the firewall opens it on the management NIC.
    pub fn set_api_port(&mut self, port: u16) {
        self.firewall.api_port = port;
    }

    /// The management path the saved config must keep (`--boot-config`).
    pub fn set_management_path(&mut self, path: Option<crate::management::ManagementPath>) {
        self.management = path;
    }

    /// The orchestrator's path of an agent started with `--listen ADDR` and no boot
    /// configuration: the NIC that holds ADDR, with that address, which a config may then
    /// not take away (the API serves on it). None for a wildcard or loopback address, or an
    /// address no NIC holds.
    pub async fn management_path_of(
        &self,
        listen: std::net::IpAddr,
    ) -> Result<Option<crate::management::ManagementPath>, ApplyError> {
        if listen.is_unspecified() || listen.is_loopback() {
            return Ok(None);
        }
        let nics = self.nics().await?;
        let kernel = KernelState::read(&self.nl)
            .await
            .map_err(|e| ApplyError::Unavailable(e.to_string()))?;
        let Some(address) = kernel.addresses.iter().find(|a| a.net.addr() == listen) else {
            return Ok(None);
        };
        Ok(nics.iter().find(|n| n.index == address.index).map(|nic| {
            crate::management::ManagementPath {
                ifname: nic.ifname.clone(),
                addresses: vec![address.net],
                mtu: None,
                routes: Vec::new(),
            }
        }))
    }

    /// Re-applies the last good config from the state directory (at start, after
    /// [`Appliance::bootstrap`], before serving). Without one, what a killed first apply
    /// left is cleared. Without one, or when it cannot be applied, the router must keep the
    /// bootstrap ruleset ([`Appliance::keep_bootstrap`]) until the first good push.
    pub async fn restore(&mut self) -> Result<bool, String> {
        let result = self.restore_saved().await;
        if matches!(result, Ok(false)) && !self.leftovers.is_empty() {
            self.clear_leftovers().await?;
        }
        result
    }

    /// Makes sure the bootstrap ruleset is in force when no config is (normally a no-op: a
    /// failed apply's rollback puts it back). An error means the agent must not serve.
    pub fn keep_bootstrap(&mut self) -> Result<(), String> {
        let bootstrap = firewall::ruleset::bootstrap(
            self.firewall,
            self.management.as_ref().map(|m| m.ifname.as_str()),
        );
        self.install_ruleset(bootstrap)
            .map_err(|e| format!("installing the bootstrap ruleset: {e}"))
    }

    /// No saved config, but a killed first apply configured NICs: those go back to how
    /// they were, and the agent's routes and floating IPs go.
    async fn clear_leftovers(&mut self) -> Result<(), String> {
        let desired = DesiredState {
            links: self
                .leftovers
                .iter()
                .map(|(name, before)| (name.clone(), before.desired()))
                .collect(),
            ..DesiredState::default()
        };
        let now = self.read_kernel_and_floating_ips().await?;
        // NICs gone since (unplugged) need nothing.
        let present = |name: &String| now.link(name).is_some();
        let desired = DesiredState {
            links: desired
                .links
                .into_iter()
                .filter(|(n, _)| present(n))
                .collect(),
            ..desired
        };
        self.write_state(&desired, &now)
            .await
            .map_err(|e| format!("clearing what a stopped apply left: {e}"))?;
        self.floating_ips = Some(Default::default());
        tracing::info!(nics = ?self.leftovers.keys().collect::<Vec<_>>(), "what a stopped first apply left was cleared");
        self.leftovers.clear();
        self.state.remove_intent().map_err(|e| e.to_string())
    }

    /// The kernel as it is, with the floating IPs' routes dumped too (not taken from what
    /// the agent remembers writing): for undoing what a stopped or failed apply left.
    async fn read_kernel_and_floating_ips(&self) -> Result<KernelState, String> {
        let mut now = KernelState::read(&self.nl)
            .await
            .map_err(|e| e.to_string())?;
        now.floating_ips = floating_ip_routes(&self.nl)
            .await
            .map_err(|e| e.to_string())?;
        Ok(now)
    }

    async fn restore_saved(&mut self) -> Result<bool, String> {
        let bytes = match self.state.load_config() {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(false),
            Err(e) => {
                return Err(format!(
                    "reading {}: {e}",
                    self.state.slot_path(0).display()
                ))
            }
        };
        let config = akanda_model::parse(&bytes).map_err(|e| format!("saved config: {e}"))?;
        if let Some(path) = &self.management {
            let problems = path.check(&config);
            if !problems.is_empty() {
                let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                return Err(format!(
                    "the saved config would cut the orchestrator's path (boot configuration): {}",
                    list.join("; ")
                ));
            }
        }
        self.apply(config).await.map_err(|e| describe_error(&e))?;
        Ok(true)
    }

    async fn nics(&self) -> Result<Vec<Nic>, ApplyError> {
        let _naming = self.naming.lock().await;
        nics::name_nics(&self.nl, &self.state.nics_path())
            .await
            .map_err(|e| ApplyError::Unavailable(format!("naming NICs: {e}")))
    }

    /// A reader of the NICs on its own netlink socket, for the API: it never waits for an
    /// apply (only for the NIC naming at the start of one, a few milliseconds).
    pub fn interface_reader(&self) -> Result<InterfaceReader, ApplyError> {
        Ok(InterfaceReader {
            nl: Netlink::connect().map_err(|e| ApplyError::Unavailable(e.to_string()))?,
            nics_path: self.state.nics_path(),
            naming: self.naming.clone(),
            external: self.external_nic.clone(),
        })
    }

    /// Applies a config completely or not at all.
    pub(crate) async fn apply(&mut self, config: RouterConfig) -> Result<(), ApplyError> {
        let shown = config.document.shown();
        self.apply_shown(config, shown).await
    }

    /// [`Appliance::apply`] with the config already serialised and hashed (by the API, which
    /// logs the hash and sends the JSON back): at 10,000 floating IPs each serialisation or
    /// hash is a millisecond.
    pub(crate) async fn apply_shown(
        &mut self,
        config: RouterConfig,
        shown: akanda_model::Shown,
    ) -> Result<(), ApplyError> {
        let hash = shown.hash;
        let shown_json = shown.json;
        let started = Instant::now();
        let writes_before = self.nl.writes();
        let batches_before = self.netfilter_batches;
        self.last_conntrack_flushed = 0;
        self.phases.clear();
        self.running = Phase::Preflight;
        // A panic inside a phase is caught there and unwound; one outside the phases (while
        // preflight names NICs or reads the kernel) changed nothing the journal undoes.
        let result = match AssertUnwindSafe(
            self.transaction(&config, shown.saved.map(|json| (json, hash.clone()))),
        )
        .catch_unwind()
        .await
        {
            Ok(result) => result,
            Err(payload) => {
                let cause = format!("the agent panicked: {}", panic_message(&*payload));
                tracing::error!(phase = %self.running, %cause, "apply panicked outside its phases");
                Err(ApplyError::Failed {
                    phase: self.running,
                    cause,
                    rollback: Rollback::default(),
                    panicked: true,
                })
            }
        };
        let writes = self.nl.writes() - writes_before;
        let record = ApplyRecord {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            // Microsecond resolution is plenty, and keeps the JSON free of float noise.
            duration_ms: (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            result: if result.is_ok() { "ok" } else { "error" },
            error: result.as_ref().err().map(describe_error),
            config_hash: hash.clone(),
            netlink_writes: writes,
            netfilter_batches: self.netfilter_batches - batches_before,
            conntrack_flushed: self.last_conntrack_flushed,
            phases_ms: std::mem::take(&mut self.phases),
        };
        match &result {
            Ok(()) => tracing::info!(
                hash = %hash,
                duration_ms = record.duration_ms,
                netlink_writes = writes,
                "config applied"
            ),
            Err(e) => tracing::warn!(hash = %hash, error = %describe_error(e), "config rejected"),
        }
        let services = self.services.status();
        let mut shared = lock(&self.shared);
        shared.netlink_writes_total = self.nl.writes();
        shared.netfilter_batches_total = self.netfilter_batches;
        shared.last_apply = Some(record.clone());
        shared.services = Some(services);
        match &result {
            Ok(()) => {
                shared.counters.applies_ok += 1;
                shared.current_hash = Some(hash);
                shared.shown_config = Some(shown_json);
                if let Some(was) = shared.degraded.take() {
                    tracing::info!(since = %was.since, "no longer degraded: a config applied completely");
                }
                *lock(&self.external_nic) = config.external_network().map(|n| n.ifname.clone());
                // Freeing 10,000 floating IPs' worth of the previous config is off the path
                // to the answer.
                if let Some(previous) = self.current.replace(config) {
                    tokio::task::spawn_blocking(move || drop(previous));
                }
            }
            Err(ApplyError::Failed {
                phase,
                cause,
                rollback,
                ..
            }) if !rollback.is_complete() => {
                shared.counters.applies_failed += 1;
                let degraded = Degraded {
                    since: record.time,
                    config_hash: hash,
                    phase: phase.name(),
                    cause: cause.clone(),
                    restored: rollback.restored.iter().map(|p| p.name()).collect(),
                    not_restored: rollback
                        .failed
                        .iter()
                        .map(|(p, e)| NotRestored {
                            phase: p.name(),
                            error: e.clone(),
                        })
                        .collect(),
                };
                tracing::error!(not_restored = ?degraded.not_restored, "DEGRADED: the rollback failed, the box is half-configured until a config applies completely");
                shared.degraded = Some(degraded);
            }
            Err(_) => shared.counters.applies_failed += 1,
        }
        drop(shared);
        result
    }

    /// `saved`: the config's canonical JSON and its SHA-256, when already made.
    async fn transaction(
        &mut self,
        config: &RouterConfig,
        saved: Option<(Arc<[u8]>, String)>,
    ) -> Result<(), ApplyError> {
        let nics = self.nics().await?;
        let missing: Vec<Problem> = config
            .networks
            .iter()
            .enumerate()
            .filter(|(_, n)| !nics.iter().any(|nic| nic.ifname == n.ifname))
            .map(|(i, n)| {
                let present: Vec<&str> = nics.iter().map(|n| n.ifname.as_str()).collect();
                Problem::new(
                    format!("networks[{i}].interface.ifname"),
                    format!(
                        "{} is not a NIC of this appliance (it has: {})",
                        n.ifname,
                        present.join(", ")
                    ),
                )
            })
            .collect();
        if !missing.is_empty() {
            return Err(ApplyError::DoesNotFit(missing));
        }
        if config.document.requests_vpn() {
            tracing::warn!(
                "the config asks for VPN services: VPN is not applied by this agent yet"
            );
        }
        sysctl::ensure_router_sysctls().map_err(|e| ApplyError::Unavailable(e.to_string()))?;
        if let Some(ext) = config.external_network() {
            // The external addresses keep duplicate address detection (it protects the
            // upstream), as optimistic addresses: usable at once, so bird's BGP connection
            // from them does not fail while DAD runs.
            if let Err(e) = sysctl::ensure_optimistic_dad(&ext.ifname) {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        error = %e,
                        "no optimistic DAD: external IPv6 addresses are usable only once DAD \
                         has finished, 1 to 2 s after they are added"
                    )
                });
            }
        }

        let unavailable = |e: NetlinkError| ApplyError::Unavailable(e.to_string());
        // The first phase's time includes reading the kernel.
        let clock = Instant::now();
        let mut before = KernelState::read(&self.nl).await.map_err(unavailable)?;
        // Unknown until this apply succeeds: a failure leaves them to be read again.
        before.floating_ips = match self.floating_ips.take() {
            Some(known) => known,
            None => floating_ip_routes(&self.nl).await.map_err(unavailable)?,
        };
        let mut desired = desired_state(config, self.current.as_ref());
        // What a stopped apply left on NICs this config does not name goes back as it was.
        // On a NIC it names, only an MTU it leaves alone goes back.
        for (name, was) in &self.leftovers {
            if config.networks.iter().any(|n| &n.ifname == name) {
                if let Some(link) = desired.links.get_mut(name) {
                    link.mtu.get_or_insert(was.mtu);
                }
            } else if before.link(name).is_some() {
                desired.links.insert(name.clone(), was.desired());
            }
        }
        let mut journal = Vec::new();
        let leftovers_before = self.leftovers.clone();
        // A panic in a phase unwinds the journal like an error does; the appliance's own
        // records of that phase are then not trusted (see `unwind`).
        let outcome = AssertUnwindSafe(self.run_phases(
            config,
            saved,
            &desired,
            &before,
            &mut journal,
            clock,
        ))
        .catch_unwind()
        .await;
        let (phase, cause, panicked) = match outcome {
            Ok(Ok(())) => {
                self.services.settle();
                if !self.leftovers.is_empty() || self.state.intent_path().exists() {
                    self.leftovers.clear();
                    if let Err(e) = self.state.remove_intent() {
                        tracing::warn!(error = %e, "cannot remove {}", self.state.intent_path().display());
                    }
                }
                return Ok(());
            }
            Ok(Err((phase, cause))) => (phase, cause, false),
            Err(payload) => (
                self.running,
                format!("the agent panicked: {}", panic_message(&*payload)),
                true,
            ),
        };
        if panicked {
            tracing::error!(%phase, %cause, "apply panicked; restoring the previous state");
        } else {
            tracing::warn!(%phase, %cause, "apply failed; restoring the previous state");
        }
        let mut rollback = self.unwind(journal, &desired, &before, panicked).await;
        self.services.settle();
        if rollback.is_complete() && self.leftovers != leftovers_before {
            // The NICs this apply added to the intent are back as they were.
            self.leftovers = leftovers_before;
            if let Err(e) = self.write_leftovers() {
                tracing::warn!(error = %e, "cannot rewrite {}", self.state.intent_path().display());
            }
        }
        if self.last_conntrack_flushed > 0 {
            rollback.notes.push(format!(
                "the connection-tracking sessions of {} floating IPs this config removed or moved were ended; ended sessions are not restored (their clients reconnect)",
                self.last_conntrack_flushed
            ));
        }
        Err(ApplyError::Failed {
            phase,
            cause,
            rollback,
            panicked,
        })
    }

    /// The phases that change the box, each journaling its undo.
    async fn run_phases(
        &mut self,
        config: &RouterConfig,
        saved: Option<(Arc<[u8]>, String)>,
        desired: &DesiredState,
        before: &KernelState,
        journal: &mut Vec<(Phase, Undo)>,
        mut clock: Instant,
    ) -> Result<(), (Phase, String)> {
        let mut lap = |phases: &mut std::collections::BTreeMap<&'static str, f64>,
                       name: &'static str| {
            let now = Instant::now();
            phases.insert(name, ((now - clock).as_secs_f64() * 1e6).round() / 1e3);
            clock = now;
        };
        // Saving starts now and overlaps the kernel work: the new config is written into the
        // slot not in force (`StateDir::stage_config`), and committed (its header, one
        // `fdatasync`) only once the apply succeeded, before the 200. A crash or power cut
        // before that leaves the last good config in force; a failure leaves the staged slot
        // uncommitted.
        let unchanged = !self.saved_dirty
            && self
                .current
                .as_ref()
                .is_some_and(|c| c.document == config.document);
        self.persist_committing = false;
        if !unchanged {
            journal.push((Phase::Persist, Undo::Persist));
            let state = self.state.clone();
            let (json, sha256) = match saved {
                Some((json, sha256)) => (json, Some(sha256)),
                None => (config.document.to_canonical_json().into(), None),
            };
            self.persisting = Some(tokio::task::spawn_blocking(move || {
                state.stage_config(&json, sha256)
            }));
        }

        // Many netlink writes: may half-happen, so the undo is journaled first, and what they
        // change beyond the saved config is on disk before the first of them.
        self.running = Phase::LinksAddressesRoutes;
        journal.push((Phase::LinksAddressesRoutes, Undo::Kernel));
        self.record_intent(config, before)
            .map_err(|e| (Phase::LinksAddressesRoutes, e))?;
        self.write_state(desired, before)
            .await
            .map_err(|e| (Phase::LinksAddressesRoutes, e))?;
        self.floating_ips = Some(desired.floating_ips.clone());
        failpoint::hit("links_addresses_routes").map_err(|e| (Phase::LinksAddressesRoutes, e))?;
        lap(&mut self.phases, Phase::LinksAddressesRoutes.name());

        // One atomic batch. Journaled before it is sent: a refused batch changed nothing (the
        // undo then finds the ruleset unchanged), but a panic between the batch and its
        // record must still be undone.
        self.running = Phase::Ruleset;
        journal.push((Phase::Ruleset, Undo::Ruleset(self.ruleset.clone())));
        let ruleset = firewall::build(config, self.firewall);
        self.install_ruleset(ruleset)
            .map_err(|e| (Phase::Ruleset, e))?;
        failpoint::hit("ruleset").map_err(|e| (Phase::Ruleset, e))?;
        lap(&mut self.phases, Phase::Ruleset.name());

        // Sessions through a floating IP that is gone or now points elsewhere must end
        // (OSSN-0020): the NAT rule is gone but conntrack would keep the session alive. Ended
        // sessions are not undone: their NAT is being rolled back with the ruleset anyway.
        // The ruleset marked each session with its floating IP, so a few floating IPs are a
        // flush by mark each; many at once, one walk of the whole conntrack hash (see
        // `netfilter::conntrack`). It runs on a blocking thread while the services are
        // brought to the config, and the apply waits for it before answering.
        let moved = moved_floating_ips(self.current.as_ref(), config);
        let moved_count = moved.len();
        let sessions = (!moved.is_empty()).then(|| {
            tokio::task::spawn_blocking(move || firewall::netfilter::end_sessions_of(&moved))
        });

        // Several daemons: may half-happen.
        self.running = Phase::Services;
        journal.push((Phase::Services, Undo::Services));
        let services = self.services.apply(config).await;
        lap(&mut self.phases, Phase::Services.name());
        self.running = Phase::Conntrack;
        if let Some(sessions) = sessions {
            sessions
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|e| (Phase::Conntrack, e))?;
            self.last_conntrack_flushed = moved_count;
            lap(&mut self.phases, Phase::Conntrack.name());
        }
        failpoint::hit("conntrack").map_err(|e| (Phase::Conntrack, e))?;
        self.running = Phase::Services;
        services.map_err(|e| (Phase::Services, format!("services: {e}")))?;
        failpoint::hit("services").map_err(|e| (Phase::Services, e))?;
        // Timed apart (`announce` in `phases_ms`), so that `persist` is only the wait for the
        // disk: a packet socket closed per announcement once cost 10 to 15 ms here, and showed
        // as persisting.
        self.announce_new_external_addresses(config, desired, before);
        lap(&mut self.phases, "announce");

        self.running = Phase::Persist;
        if let Some(saving) = self.persisting.take() {
            let path = self.state.path().display().to_string();
            let staged = saving
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|e| (Phase::Persist, format!("saving the config to {path}: {e}")))?;
            // Written, not committed: a crash here leaves the previous config.
            failpoint::hit("persist_staged").map_err(|e| (Phase::Persist, e))?;
            // The commit (the slot's header, one flush) may half-happen: from here a rollback
            // writes the previous config back.
            self.persist_committing = true;
            tokio::task::spawn_blocking(move || staged.commit())
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|e| (Phase::Persist, format!("saving the config to {path}: {e}")))?;
            self.saved_dirty = false;
            // In place, not yet answered: a crash here leaves the new config.
            failpoint::hit("persist_committed").map_err(|e| (Phase::Persist, e))?;
            // Only what the apply still waited for: the write ran alongside the kernel work.
            lap(&mut self.phases, Phase::Persist.name());
        }
        Ok(())
    }

    /// Records in `applying.json`, before the first kernel write, the NICs this apply
    /// configures that the saved config does not (and those whose MTU it sets where the saved
    /// config leaves it alone), as they are now. Nothing is written when there are none.
    fn record_intent(&mut self, config: &RouterConfig, before: &KernelState) -> Result<(), String> {
        let current = self.current.as_ref();
        let named_before =
            |ifname: &str| current.and_then(|c| c.networks.iter().find(|n| n.ifname == ifname));
        let mut links = self.leftovers.clone();
        for net in &config.networks {
            if net.network_type == akanda_model::NetworkType::Management
                || links.contains_key(&net.ifname)
            {
                continue;
            }
            let Some(link) = before.link(&net.ifname) else {
                continue;
            };
            let new_nic = named_before(&net.ifname).is_none();
            let mtu_set = net.mtu.is_some_and(|m| m != link.mtu)
                && named_before(&net.ifname).is_some_and(|n| n.mtu.is_none());
            if new_nic || mtu_set {
                links.insert(
                    net.ifname.clone(),
                    LinkBefore {
                        mtu: link.mtu,
                        up: link.up,
                        addresses: before.addresses_of(link.index),
                    },
                );
            }
        }
        if links == self.leftovers {
            return Ok(());
        }
        self.leftovers = links;
        self.write_leftovers().map_err(|e| {
            format!(
                "recording the apply's intent in {}: {e}",
                self.state.intent_path().display()
            )
        })
    }

    /// `applying.json` as `leftovers` says (removed when empty).
    fn write_leftovers(&self) -> std::io::Result<()> {
        if self.leftovers.is_empty() {
            return self.state.remove_intent();
        }
        let intent = Intent {
            boot_id: boot_id(),
            links: self.leftovers.clone(),
        };
        self.state.save_intent(&serde_json::to_vec(&intent)?)
    }

    /// Undoes the journal in reverse: exactly what ran, last first. After a panic
    /// (`panicked`) the appliance's record of what it installed may lag behind the kernel, so
    /// the ruleset is reinstalled whole rather than diffed. An undo that fails (or panics)
    /// does not stop the others; what it leaves unknown is forgotten, so the next apply
    /// rebuilds it from scratch.
    async fn unwind(
        &mut self,
        journal: Vec<(Phase, Undo)>,
        attempted: &DesiredState,
        before: &KernelState,
        panicked: bool,
    ) -> Rollback {
        let mut outcome = Rollback::default();
        if panicked {
            // Whatever the panic interrupted may have changed the rule without recording it.
            self.floating_ip_rule = None;
        }
        for (phase, undo) in journal.into_iter().rev() {
            let step = AssertUnwindSafe(async {
                match undo {
                    Undo::Services => self.restore_services().await,
                    Undo::Ruleset(previous) => self.restore_ruleset(previous, panicked),
                    Undo::Kernel => self.restore_kernel(attempted, before).await,
                    Undo::Persist => self.restore_saved_config().await,
                }
            })
            .catch_unwind()
            .await;
            let result = step.unwrap_or_else(|payload| {
                Err(format!(
                    "the rollback panicked: {}",
                    panic_message(&*payload)
                ))
            });
            match result {
                Ok(()) => outcome.restored.push(phase),
                Err(e) => {
                    tracing::error!(%phase, error = %e, "rollback failed: the box may be half-configured");
                    match phase {
                        Phase::Ruleset => self.ruleset = None,
                        Phase::LinksAddressesRoutes => {
                            self.floating_ips = None;
                            self.floating_ip_rule = None;
                        }
                        Phase::Persist => self.saved_dirty = true,
                        // The services stay unsettled: the next apply checks their files.
                        _ => {}
                    }
                    outcome.failed.push((phase, e));
                }
            }
        }
        outcome
    }

    /// Installs `ruleset` in one atomic batch, unless the kernel already has exactly it (an
    /// identical config performs no netfilter write). A change of floating IPs only changes
    /// their map elements, and a change of rules rewrites them in the table and base chains
    /// already there ([`firewall::batch::update`]).
    fn install_ruleset(&mut self, ruleset: Ruleset) -> Result<(), String> {
        let table_present =
            || firewall::netfilter::inet_table_exists(firewall::ruleset::TABLE).unwrap_or(false);
        let same = self.ruleset.as_deref() == Some(&ruleset);
        if same && tokio::task::block_in_place(table_present) {
            return Ok(());
        }
        // The same ruleset, but its table is gone (deleted by hand): install it whole.
        let installed = if same { None } else { self.ruleset.as_deref() };
        self.netfilter_batches += 1;
        let update = tokio::task::block_in_place(|| firewall::batch::update(installed, &ruleset))
            .map_err(|e| e.to_string())?;
        tracing::debug!(?update, "ruleset installed");
        self.ruleset = Some(Arc::new(ruleset));
        Ok(())
    }

    /// Puts the services back as the previous config had them; with no previous config
    /// (a router's first config failed), back to none: nothing the failed config started
    /// keeps running.
    async fn restore_services(&mut self) -> Result<(), String> {
        match self.current.clone() {
            Some(previous) => self
                .services
                .apply(&previous)
                .await
                .map_err(|e| format!("restoring the previous services: {e}")),
            None => self
                .services
                .reset()
                .await
                .map_err(|e| format!("stopping the failed config's services: {e}")),
        }
    }

    /// Gratuitous ARP / unsolicited NA for external addresses and floating IPs this apply
    /// added, so upstream neighbours learn them at once. Best effort: a lost announcement
    /// only delays traffic until the next ARP exchange.
    fn announce_new_external_addresses(
        &mut self,
        config: &RouterConfig,
        desired: &DesiredState,
        before: &KernelState,
    ) {
        let Some(ext) = config.external_network() else {
            return;
        };
        let (Some(want), Some(link)) = (desired.links.get(&ext.ifname), before.link(&ext.ifname))
        else {
            return;
        };
        let had = before.addresses_of(link.index);
        let new: Vec<std::net::IpAddr> = want
            .addresses
            .difference(&had)
            .map(|a| a.addr())
            .chain(
                desired
                    .floating_ips
                    .difference(&before.floating_ips)
                    .map(|ip| std::net::IpAddr::V4(*ip)),
            )
            .collect();
        if new.is_empty() {
            return;
        }
        if let Err(e) = self.services.announce(&ext.ifname, &new) {
            tracing::warn!(error = %e, "announcing new external addresses failed");
        }
    }

    /// Puts the previous ruleset back after a later step of the apply failed. `whole`:
    /// what the kernel has is not known for sure (a panic), so the table is replaced whole.
    fn restore_ruleset(
        &mut self,
        previous: Option<Arc<Ruleset>>,
        whole: bool,
    ) -> Result<(), String> {
        if !whole && self.ruleset == previous {
            return Ok(());
        }
        failpoint::hit("rollback_ruleset")?;
        self.netfilter_batches += 1;
        let installed = if whole { None } else { self.ruleset.as_deref() };
        tokio::task::block_in_place(|| match previous.as_deref() {
            Some(rs) => firewall::batch::update(installed, rs).map(|_| ()),
            None => firewall::batch::delete_table(),
        })
        .map_err(|e| format!("restoring the previous ruleset: {e}"))?;
        self.ruleset = previous;
        Ok(())
    }

    /// Brings the kernel to `desired`, starting from `actual`. Returns what failed.
    async fn write_state(
        &mut self,
        desired: &DesiredState,
        actual: &KernelState,
    ) -> Result<(), String> {
        // Floating IPs first: their routes point at lo and need nothing else in place.
        let (add_fips, remove_fips) = plan_floating_ips(desired, actual);
        let want_rule = !desired.floating_ips.is_empty();
        if self.floating_ip_rule != Some(want_rule) {
            if want_rule {
                self.nl
                    .ensure_rule(FLOATING_IP_TABLE, FLOATING_IP_RULE_PRIORITY)
                    .await
                    .map_err(|e| e.to_string())?;
            } else {
                self.nl
                    .delete_rule(FLOATING_IP_TABLE, FLOATING_IP_RULE_PRIORITY)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            self.floating_ip_rule = Some(want_rule);
        }
        tokio::task::block_in_place(|| {
            self.nl
                .write_local_routes(FLOATING_IP_TABLE, &add_fips, &remove_fips)
        })
        .map_err(|e| e.to_string())?;
        let link_ops = plan_links(desired, actual).map_err(|e| e.to_string())?;
        execute(&self.nl, &link_ops)
            .await
            .map_err(|e| e.to_string())?;
        // Address changes add and remove kernel routes: plan routes against what is there now.
        let after_links;
        let actual = if link_ops.is_empty() {
            actual
        } else {
            after_links = KernelState::read(&self.nl)
                .await
                .map_err(|e| e.to_string())?;
            &after_links
        };
        let route_ops = plan_routes(desired, actual).map_err(|e| e.to_string())?;
        execute(&self.nl, &route_ops)
            .await
            .map_err(|e| e.to_string())
    }

    /// Brings the links, addresses and routes the apply touched back to `before`.
    async fn restore_kernel(
        &mut self,
        attempted: &DesiredState,
        before: &KernelState,
    ) -> Result<(), String> {
        let mut previous = before.as_desired(attempted.links.keys().map(String::as_str));
        // The previous config's external addresses went in as optimistic ones (DAD runs):
        // put them back the same way, not with NODAD, or the box differs from before.
        if let Some(ext) = self.current.as_ref().and_then(|c| c.external_network()) {
            if let Some(link) = previous.links.get_mut(&ext.ifname) {
                link.nodad = false;
            }
        }
        let now = self.read_kernel_and_floating_ips().await?;
        self.write_state(&previous, &now).await?;
        self.floating_ips = Some(previous.floating_ips);
        Ok(())
    }

    /// Discards the config this apply staged; if its commit had begun, puts the previous
    /// config back on disk (or removes the file when there was none).
    async fn restore_saved_config(&mut self) -> Result<(), String> {
        if let Some(saving) = self.persisting.take() {
            // Dropping the staged file removes it; a failed write left nothing to undo.
            let _ = saving.await;
        }
        if !std::mem::take(&mut self.persist_committing) {
            return Ok(());
        }
        let previous = self
            .current
            .as_ref()
            .map(|c| c.document.to_canonical_json());
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || match previous {
            Some(bytes) => state.save_config(&bytes),
            None => state.remove_config(),
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("restoring the saved config: {e}"))
    }
}

/// Service paths under the agent's state directory (so several agents, one per test
/// namespace, never share files). The host name is only managed when the agent runs in the
/// machine's own network namespace, as in the Service Instance: under `ip netns exec` the
/// UTS namespace is still the host's.
fn services_options(state: &std::path::Path) -> ServicesOptions {
    let base = if in_initial_network_namespace() {
        ServicesOptions::service_instance()
    } else {
        ServicesOptions::default()
    };
    ServicesOptions {
        run_dir: state.join("run"),
        state_dir: state.join("services"),
        ..base
    }
}

fn in_initial_network_namespace() -> bool {
    let ns = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    matches!((ns("/proc/self/ns/net"), ns("/proc/1/ns/net")), (Ok(a), Ok(b)) if a == b)
}

/// Floating IPs of `previous` that `next` removes or points at another fixed IP.
fn moved_floating_ips(
    previous: Option<&RouterConfig>,
    next: &RouterConfig,
) -> std::collections::BTreeSet<std::net::Ipv4Addr> {
    let Some(previous) = previous else {
        return Default::default();
    };
    if previous.floating_ips == next.floating_ips {
        return Default::default();
    }
    // A set, not `Vec::contains`: quadratic at 10,000 floating IPs was 100 ms per apply.
    let kept: std::collections::HashSet<&akanda_model::FloatingIp> =
        next.floating_ips.iter().collect();
    previous
        .floating_ips
        .iter()
        .filter(|f| !kept.contains(f))
        .filter_map(|f| match f.floating_ip {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        })
        .collect()
}

fn describe_error(e: &ApplyError) -> String {
    match e {
        ApplyError::DoesNotFit(problems) => problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}
