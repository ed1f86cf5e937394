//! The per-router reconciler: level-triggered, it reads Neutron and Nova afresh each time,
//! decides from what it sees, takes one step, and says when to look again.
//!
//! ```text
//! router gone ──▶ delete servers ──(wait until Nova has them gone)──▶ delete ports ──▶ Deleted
//! no server ───▶ create+tag management and data ports ──▶ issue TLS ──▶ boot ──▶ wait
//! BUILD ───────▶ wait (replace after boot_timeout)
//! ERROR/other ─▶ delete (the next pass boots a new one)
//! ACTIVE ──────▶ GET interfaces (unanswered past boot_timeout → replace)
//!                ├─ create+tag missing data ports, attach unattached ones (a NIC unseen after
//!                │  hotplug_timeout → replace the server); delete stale ones
//!                ├─ build the config, compare its hash with the appliance's
//!                └─ PUT when they differ ──▶ configured (or wait for hot-plugged NICs)
//! ```
//!
//! Ordering rules: each port is created and tagged before a server uses it; a server is deleted
//! (and gone) before its ports. Nothing here deletes anything that does not carry this router's
//! rug-lite tags.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::bootdata;
use crate::builder::{self, ApplianceView, BuildParams, Listing, Omission, RouterSnapshot};
use crate::cloud::{
    ApplianceError, ApplianceTarget, Cloud, CloudError, PortFilter, PortSpec, Server, ServerSpec,
};
use crate::index::TopologyIndex;
use crate::neutron::{owner, Port, Router};
use crate::ownership;
use crate::queue::{Job, Outcome, Reconcile};
use crate::status::{rfc3339, RouterState, StatusTable};

#[derive(Debug, Clone)]
pub(crate) struct ReconcileSettings {
    pub management_network_id: String,
    pub image_id: String,
    pub flavor_id: String,
    pub api_port: u16,
    pub boot_timeout: Duration,
    pub build: BuildParams,
    /// How soon to look again while a server boots or is deleted.
    pub boot_poll: Duration,
    /// How soon to look again while hot-plugged NICs appear.
    pub hotplug_poll: Duration,
    /// A hot-plugged NIC not seen by then: the server is replaced (it boots with every port).
    pub hotplug_timeout: Duration,
    /// An appliance whose certificate has less than this left is replaced (the new server is
    /// booted with a new certificate).
    pub cert_renew_before: Duration,
    pub max_boots: usize,
    pub max_pushes: usize,
    pub max_probes: usize,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReconcileError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error("appliance: {0}")]
    Appliance(#[from] ApplianceError),
    #[error("config: {0}")]
    Build(#[from] builder::BuildError),
    /// The builder produced a document the model refuses: a rug-lite bug, never pushed.
    #[error("built config is invalid (a rug-lite bug): {0}")]
    InvalidConfig(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the management port {0} has no address")]
    NoManagementAddress(String),
    #[error("server {server} did not answer within {timeout:?}; deleted to be replaced")]
    Unanswered { server: String, timeout: Duration },
    #[error("server {server} did not show its hot-plugged NICs within {timeout:?}; deleted to be replaced")]
    HotplugTimeout { server: String, timeout: Duration },
    #[error("server {server} is {status}; deleted to be replaced")]
    ServerFailed { server: String, status: String },
}

/// What a successful pass leads to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    Converged,
    /// Progressing; look again after this.
    Wait(Duration),
    Deleted,
}

pub(crate) struct Reconciler<C: Cloud> {
    cloud: Arc<C>,
    settings: ReconcileSettings,
    status: StatusTable,
    index: Arc<TopologyIndex>,
    boots: Semaphore,
    pushes: Semaphore,
    probes: Semaphore,
    /// Server id → since when its agent has not answered (boot or hang).
    unanswered_since: Mutex<HashMap<String, Instant>>,
    /// Server id → since when a hot-plugged NIC has been awaited.
    hotplug_since: Mutex<HashMap<String, Instant>>,
}

impl<C: Cloud> Reconcile for Reconciler<C> {
    async fn reconcile(&self, job: Job) -> Outcome {
        match self.reconcile_router(&job.router_id).await {
            Ok(Step::Converged) => Outcome::Done {
                requeue_after: None,
            },
            Ok(Step::Wait(after)) => Outcome::Done {
                requeue_after: Some(after),
            },
            Ok(Step::Deleted) => Outcome::Deleted,
            Err(e) => {
                tracing::warn!(router = %job.router_id, error = %e, "reconcile failed");
                Outcome::Failed {
                    error: e.to_string(),
                }
            }
        }
    }
}

impl<C: Cloud> Reconciler<C> {
    pub(crate) fn new(
        cloud: Arc<C>,
        settings: ReconcileSettings,
        status: StatusTable,
        index: Arc<TopologyIndex>,
    ) -> Self {
        Reconciler {
            boots: Semaphore::new(settings.max_boots),
            pushes: Semaphore::new(settings.max_pushes),
            probes: Semaphore::new(settings.max_probes),
            cloud,
            settings,
            status,
            index,
            unanswered_since: Mutex::new(HashMap::new()),
            hotplug_since: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) async fn reconcile_router(&self, router_id: &str) -> Result<Step, ReconcileError> {
        let tag = ownership::router_tag(router_id);
        let router = self.cloud.get_router(router_id).await?;
        let servers = self.cloud.list_servers_tagged(&tag).await?;
        let own_ports = self
            .cloud
            .list_ports(&PortFilter {
                tag: Some(tag),
                ..PortFilter::default()
            })
            .await?;
        // Tags can be added by anyone; only ports carrying both of ours are ours.
        let own_ports: Vec<Port> = own_ports
            .into_iter()
            .filter(|p| ownership::router_of_tags(p.tags.iter()).as_deref() == Some(router_id))
            .collect();
        let Some(router) = router else {
            return self.teardown(router_id, &servers, &own_ports).await;
        };

        let snapshot = self.read_snapshot(router).await?;
        self.index.record(&snapshot, &own_ports);
        // One server per router: keep the lowest id (so every pass keeps the same one) and
        // delete extra ones (a crash between boot and the next look can leave two).
        let mut live: Vec<&Server> = servers.iter().filter(|s| s.status != "DELETED").collect();
        live.sort_by(|a, b| a.id.cmp(&b.id));
        for extra in live.iter().skip(1) {
            tracing::warn!(router = %router_id, server = %extra.id, "deleting an extra server");
            self.delete_server(&extra.id).await?;
        }
        let server = live.first().copied();
        // One port of ours per network, chosen the same way on every pass.
        let (own_ports, extra_ports) =
            one_port_per_network(own_ports, server.map(|s| s.id.as_str()));
        for p in &extra_ports {
            tracing::warn!(router = %router_id, port = %p.id, network = %p.network_id, "deleting an extra port");
            ignore_not_found(self.cloud.delete_port(&p.id).await)?;
        }

        let mgmt_net = self.settings.management_network_id.clone();
        let management_port = match own_ports.iter().find(|p| p.network_id == mgmt_net) {
            Some(p) => p.clone(),
            None => {
                self.create_owned_port(
                    router_id,
                    &ownership::management_port_name(router_id),
                    &mgmt_net,
                )
                .await?
            }
        };
        let address = management_address(&management_port)?;
        self.status.update(router_id, |s| {
            s.management_address = Some(address.to_string());
        });
        let required = builder::required_networks(&snapshot);

        let Some(server) = server else {
            if servers.iter().any(|s| s.status == "DELETED") {
                // A replaced server is still going away; its ports stay ours to reuse.
                return Ok(Step::Wait(self.settings.boot_poll));
            }
            let data_ports = self
                .ensure_data_ports(router_id, &required, &own_ports)
                .await?;
            return self
                .boot(router_id, &management_port, &data_ports, address)
                .await;
        };
        self.status
            .update(router_id, |s| s.server_id = Some(server.id.clone()));

        match server.status.as_str() {
            "ACTIVE" => {}
            "BUILD" => return self.still_booting(router_id, &server.id).await,
            other => {
                self.delete_server(&server.id).await?;
                return Err(ReconcileError::ServerFailed {
                    server: server.id.clone(),
                    status: other.to_string(),
                });
            }
        }

        let target = ApplianceTarget {
            router_id: router_id.to_string(),
            address,
            port: self.settings.api_port,
        };
        let nics = {
            let _permit = self.probes.acquire().await.expect("never closed");
            self.cloud.interfaces(&target).await
        };
        let nics = match nics {
            Ok(n) => n,
            Err(ApplianceError::Unreachable(why)) => {
                tracing::debug!(router = %router_id, %why, "agent does not answer");
                return self.still_booting(router_id, &server.id).await;
            }
            Err(e) => return Err(e.into()),
        };
        self.unanswered_since
            .lock()
            .expect("lock")
            .remove(&server.id);
        // A certificate about to expire: a new one, pushed in place (`PUT /v1/system/tls`);
        // an agent without that API is replaced (the new server boots with a new one).
        if let Some(not_after) = self.cloud.certificate_expiry(&target) {
            let left = not_after
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            if left < self.settings.cert_renew_before {
                let material = self
                    .cloud
                    .issue(router_id, address)
                    .map_err(ReconcileError::Tls)?;
                let pushed = match &material {
                    Some(m) => self.cloud.put_tls(&target, m).await,
                    None => Err(ApplianceError::Refused("no CA".into())),
                };
                match pushed {
                    Ok(()) => {
                        tracing::info!(
                            router = %router_id,
                            server = %server.id,
                            old_not_after = %rfc3339(not_after),
                            "the appliance's certificate renewed in place"
                        );
                        return Ok(Step::Wait(self.settings.hotplug_poll));
                    }
                    Err(ApplianceError::Refused(why))
                        if why.starts_with("404") || why.starts_with("405") => {}
                    Err(e) => return Err(e.into()),
                }
                tracing::warn!(
                    router = %router_id,
                    server = %server.id,
                    not_after = %rfc3339(not_after),
                    "the appliance's certificate expires within renew_before and its agent cannot take a new one: replacing the server (it boots with a new certificate)"
                );
                self.delete_server(&server.id).await?;
                self.status.update(router_id, |s| {
                    s.state = RouterState::Booting;
                    s.last_error = Some(format!(
                        "certificate of server {} expires at {}: replaced",
                        server.id,
                        rfc3339(not_after)
                    ));
                });
                return Ok(Step::Wait(self.settings.boot_poll));
            }
        }
        let nics: BTreeMap<String, String> = nics
            .into_iter()
            .map(|(mac, name)| (normalise_mac(&mac), name))
            .collect();

        // Hot-plug: every required network needs a port of ours attached to the server.
        let data_ports = self
            .ensure_data_ports(router_id, &required, &own_ports)
            .await?;
        let mut hotplug_pending = false;
        for p in &data_ports {
            if !nics.contains_key(&normalise_mac(&p.mac_address)) {
                hotplug_pending = true;
                if p.device_id != server.id {
                    tracing::info!(router = %router_id, port = %p.id, network = %p.network_id, "hot-plugging");
                    self.cloud.attach_port(&server.id, &p.id).await?;
                }
            }
        }
        if hotplug_pending {
            let since = *self
                .hotplug_since
                .lock()
                .expect("lock")
                .entry(server.id.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() >= self.settings.hotplug_timeout {
                self.delete_server(&server.id).await?;
                return Err(ReconcileError::HotplugTimeout {
                    server: server.id.clone(),
                    timeout: self.settings.hotplug_timeout,
                });
            }
        } else {
            self.hotplug_since.lock().expect("lock").remove(&server.id);
        }
        // Ports on networks the router left: deleting the port detaches it.
        for p in &own_ports {
            if p.network_id != mgmt_net && !required.contains(&p.network_id) {
                tracing::info!(router = %router_id, port = %p.id, "deleting a port the router no longer needs");
                ignore_not_found(self.cloud.delete_port(&p.id).await)?;
            }
        }

        let view = ApplianceView {
            management_port: management_port.clone(),
            data_ports,
            nics,
        };
        let built =
            builder::build(&snapshot, &view, &self.settings.build).map_err(|e| match e {
                builder::BuildError::Invalid(e) => ReconcileError::InvalidConfig(e.to_string()),
                e => ReconcileError::Build(e),
            })?;
        for o in &built.omissions {
            tracing::debug!(router = %router_id, omission = ?o, "left out of the config");
        }
        let desired = built.hash.clone();
        let held = {
            let _permit = self.probes.acquire().await.expect("never closed");
            self.cloud.config_hash(&target).await?
        };
        let held = if held.as_deref() == Some(desired.as_str()) {
            held
        } else {
            let _permit = self.pushes.acquire().await.expect("never closed");
            self.cloud.put_config(&target, &built.document).await?;
            tracing::info!(router = %router_id, hash = %desired, "config pushed");
            self.status.update(router_id, |s| {
                s.last_push = Some(rfc3339(SystemTime::now()))
            });
            Some(desired.clone())
        };
        let complete = !built
            .omissions
            .iter()
            .any(|o| matches!(o, Omission::NotPlugged { .. }));
        self.status.update(router_id, |s| {
            s.config_hash = held;
            s.state = if complete {
                RouterState::Configured
            } else {
                RouterState::Up
            };
            s.last_error = None;
        });
        if hotplug_pending {
            Ok(Step::Wait(self.settings.hotplug_poll))
        } else {
            Ok(Step::Converged)
        }
    }

    /// Reads one router's share of Neutron.
    async fn read_snapshot(&self, router: Router) -> Result<RouterSnapshot, ReconcileError> {
        let router_ports = self
            .cloud
            .list_ports(&PortFilter {
                device_id: Some(router.id.clone()),
                ..PortFilter::default()
            })
            .await?;
        let internal: Vec<String> = router_ports
            .iter()
            .filter(|p| owner::is_router_interface(&p.device_owner))
            .map(|p| p.network_id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut used: BTreeSet<String> = internal.iter().cloned().collect();
        used.insert(self.settings.management_network_id.clone());
        if let Some(gw) = &router.external_gateway_info {
            used.insert(gw.network_id.clone());
        }
        let used: Vec<String> = used.into_iter().collect();
        let networks = self.cloud.list_networks(&used).await?;
        let subnets = self.cloud.list_subnets(&used).await?;
        let network_ports = if internal.is_empty() {
            Vec::new()
        } else {
            self.cloud
                .list_ports(&PortFilter {
                    network_ids: internal,
                    ..PortFilter::default()
                })
                .await?
        };
        let floating_ips = self.cloud.list_floating_ips(&router.id).await?;
        // Router interface ports come in both lists: keep one of each.
        let mut ports: BTreeMap<String, Port> = BTreeMap::new();
        for p in router_ports.into_iter().chain(network_ports) {
            ports.insert(p.id.clone(), p);
        }
        let listing = Listing {
            ports: ports.into_values().collect(),
            subnets,
            networks,
            floating_ips,
        };
        Ok(builder::snapshot_from(
            router,
            &listing,
            &self.settings.management_network_id,
        ))
    }

    /// Creates a port and tags it ours; a port that cannot be tagged is deleted again, since
    /// nothing would ever find it.
    async fn create_owned_port(
        &self,
        router_id: &str,
        name: &str,
        network_id: &str,
    ) -> Result<Port, ReconcileError> {
        let mut port = self
            .cloud
            .create_port(&PortSpec {
                name: name.to_string(),
                network_id: network_id.to_string(),
            })
            .await?;
        let tags = ownership::tags_for(router_id).to_vec();
        if let Err(e) = self.cloud.add_port_tags(&port.id, &tags).await {
            if let Err(del) = self.cloud.delete_port(&port.id).await {
                tracing::error!(port = %port.id, error = %del, "untagged port left behind");
            }
            return Err(e.into());
        }
        port.tags.extend(tags);
        tracing::info!(router = %router_id, port = %port.id, network = %network_id, "port created");
        Ok(port)
    }

    /// The data ports for the required networks, creating (and tagging) missing ones.
    async fn ensure_data_ports(
        &self,
        router_id: &str,
        required: &BTreeSet<String>,
        own_ports: &[Port],
    ) -> Result<Vec<Port>, ReconcileError> {
        let mut out = Vec::new();
        for network_id in required {
            match own_ports.iter().find(|p| &p.network_id == network_id) {
                Some(p) => out.push(p.clone()),
                None => out.push(
                    self.create_owned_port(
                        router_id,
                        &ownership::data_port_name(router_id),
                        network_id,
                    )
                    .await?,
                ),
            }
        }
        Ok(out)
    }

    async fn boot(
        &self,
        router_id: &str,
        management_port: &Port,
        data_ports: &[Port],
        address: IpAddr,
    ) -> Result<Step, ReconcileError> {
        let tls = self
            .cloud
            .issue(router_id, address)
            .map_err(ReconcileError::Tls)?;
        let spec = ServerSpec {
            name: ownership::server_name(router_id),
            image_id: self.settings.image_id.clone(),
            flavor_id: self.settings.flavor_id.clone(),
            port_ids: std::iter::once(&management_port.id)
                .chain(data_ports.iter().map(|p| &p.id))
                .cloned()
                .collect(),
            metadata: bootdata::metadata(
                &normalise_mac(&management_port.mac_address),
                self.settings.api_port,
                tls.is_none(),
            ),
            user_data: bootdata::user_data(router_id, address, tls.as_ref()),
            tags: ownership::tags_for(router_id).to_vec(),
        };
        let server = {
            let _permit = self.boots.acquire().await.expect("never closed");
            self.cloud.boot_server(&spec).await?
        };
        tracing::info!(router = %router_id, server = %server.id, "server booting");
        self.unanswered_since
            .lock()
            .expect("lock")
            .insert(server.id.clone(), Instant::now());
        self.status.update(router_id, |s| {
            s.state = RouterState::Booting;
            s.server_id = Some(server.id.clone());
            s.config_hash = None;
        });
        Ok(Step::Wait(self.settings.boot_poll))
    }

    /// The server is building or its agent does not answer: wait, up to boot_timeout since it
    /// was first seen so, then replace it.
    async fn still_booting(
        &self,
        router_id: &str,
        server_id: &str,
    ) -> Result<Step, ReconcileError> {
        let since = *self
            .unanswered_since
            .lock()
            .expect("lock")
            .entry(server_id.to_string())
            .or_insert_with(Instant::now);
        if since.elapsed() < self.settings.boot_timeout {
            self.status
                .update(router_id, |s| s.state = RouterState::Booting);
            return Ok(Step::Wait(self.settings.boot_poll));
        }
        self.delete_server(server_id).await?;
        Err(ReconcileError::Unanswered {
            server: server_id.to_string(),
            timeout: self.settings.boot_timeout,
        })
    }

    async fn delete_server(&self, server_id: &str) -> Result<(), ReconcileError> {
        self.unanswered_since
            .lock()
            .expect("lock")
            .remove(server_id);
        self.hotplug_since.lock().expect("lock").remove(server_id);
        ignore_not_found(self.cloud.delete_server(server_id).await)?;
        Ok(())
    }

    /// The router is gone: servers first, and only once Nova has them gone, the ports.
    async fn teardown(
        &self,
        router_id: &str,
        servers: &[Server],
        own_ports: &[Port],
    ) -> Result<Step, ReconcileError> {
        self.status
            .update(router_id, |s| s.state = RouterState::Deleting);
        if !servers.is_empty() {
            for s in servers.iter().filter(|s| s.status != "DELETED") {
                tracing::info!(router = %router_id, server = %s.id, "deleting server of a deleted router");
                self.delete_server(&s.id).await?;
            }
            return Ok(Step::Wait(self.settings.boot_poll));
        }
        for p in own_ports {
            tracing::info!(router = %router_id, port = %p.id, "deleting port of a deleted router");
            ignore_not_found(self.cloud.delete_port(&p.id).await)?;
        }
        self.index.forget(router_id);
        self.status.remove(router_id);
        Ok(Step::Deleted)
    }
}

/// Keeps one port per network: the one the server uses, else the lowest id. Returns (kept,
/// extras).
fn one_port_per_network(mut ports: Vec<Port>, server_id: Option<&str>) -> (Vec<Port>, Vec<Port>) {
    ports.sort_by(|a, b| {
        let unused = |p: &Port| Some(p.device_id.as_str()) != server_id;
        (unused(a), &a.id).cmp(&(unused(b), &b.id))
    });
    let mut seen = BTreeSet::new();
    ports
        .into_iter()
        .partition(|p| seen.insert(p.network_id.clone()))
}

fn ignore_not_found(r: Result<(), CloudError>) -> Result<(), CloudError> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

/// The appliance's management address: the management port's first address.
fn management_address(port: &Port) -> Result<IpAddr, ReconcileError> {
    port.fixed_ips
        .iter()
        .find_map(|f| f.ip_address.parse().ok())
        .ok_or_else(|| ReconcileError::NoManagementAddress(port.id.clone()))
}

fn normalise_mac(mac: &str) -> String {
    akanda_model::normalise_mac(mac).unwrap_or_else(|| mac.to_ascii_lowercase())
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
pub(crate) mod tests;
