//! The compute seam: the few OpenStack and appliance operations the reconciler needs, as small
//! traits owned by rug-lite. Production implementations (Keystone-authenticated HTTP against
//! Neutron, Nova and Glance; the agent's API over mutual TLS) sit behind them; the reconciler's
//! logic is tested against [`tests::InMemoryCloud`].
//!
//! Keystone has no trait here: authentication and the service catalog are the HTTP clients'
//! business (one session shared by the three), not the reconciler's.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::time::SystemTime;

use akanda_model::Document;

use crate::neutron::{FloatingIp, Network, Port, Router, Subnet};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CloudError {
    #[error("{service}: {what} not found")]
    NotFound { service: &'static str, what: String },
    #[error("{service}: {what}: {reason}")]
    Failed {
        service: &'static str,
        what: String,
        reason: String,
    },
}

impl CloudError {
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, CloudError::NotFound { .. })
    }
}

pub(crate) type CloudResult<T> = Result<T, CloudError>;

/// Which ports to list. Empty fields do not filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PortFilter {
    pub device_id: Option<String>,
    pub network_ids: Vec<String>,
    /// Ports carrying this tag.
    pub tag: Option<String>,
}

/// A port rug-lite creates for an appliance. Neutron allocates its fixed IPs (Nova refuses a
/// port without one). Port security is off: the appliance answers for the router's addresses,
/// which are not this port's own.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PortSpec {
    pub name: String,
    pub network_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Server {
    pub id: String,
    pub name: String,
    /// Nova's status: BUILD, ACTIVE, ERROR, SHUTOFF, …; DELETED also while a delete is under
    /// way (Nova's task state "deleting").
    pub status: String,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServerSpec {
    pub name: String,
    pub image_id: String,
    pub flavor_id: String,
    /// In NIC order: the management port first (it becomes ge0).
    pub port_ids: Vec<String>,
    /// Nova metadata: values are at most 255 characters, so certificates go in `user_data`.
    pub metadata: BTreeMap<String, String>,
    /// Plain text; the HTTP client base64-encodes it.
    pub user_data: String,
    pub tags: Vec<String>,
}

pub(crate) trait Neutron: Send + Sync {
    fn get_router(&self, id: &str) -> impl Future<Output = CloudResult<Option<Router>>> + Send;
    fn list_routers(&self) -> impl Future<Output = CloudResult<Vec<Router>>> + Send;
    fn list_ports(
        &self,
        filter: &PortFilter,
    ) -> impl Future<Output = CloudResult<Vec<Port>>> + Send;
    fn list_subnets(
        &self,
        network_ids: &[String],
    ) -> impl Future<Output = CloudResult<Vec<Subnet>>> + Send;
    fn list_networks(
        &self,
        ids: &[String],
    ) -> impl Future<Output = CloudResult<Vec<Network>>> + Send;
    fn list_floating_ips(
        &self,
        router_id: &str,
    ) -> impl Future<Output = CloudResult<Vec<FloatingIp>>> + Send;
    fn create_port(&self, spec: &PortSpec) -> impl Future<Output = CloudResult<Port>> + Send;
    /// A second call: Neutron ignores tags in a port-create body.
    fn add_port_tags(
        &self,
        port_id: &str,
        tags: &[String],
    ) -> impl Future<Output = CloudResult<()>> + Send;
    fn delete_port(&self, port_id: &str) -> impl Future<Output = CloudResult<()>> + Send;
}

pub(crate) trait Nova: Send + Sync {
    fn boot_server(&self, spec: &ServerSpec) -> impl Future<Output = CloudResult<Server>> + Send;
    fn list_servers_tagged(
        &self,
        tag: &str,
    ) -> impl Future<Output = CloudResult<Vec<Server>>> + Send;
    fn delete_server(&self, id: &str) -> impl Future<Output = CloudResult<()>> + Send;
    fn attach_port(
        &self,
        server_id: &str,
        port_id: &str,
    ) -> impl Future<Output = CloudResult<()>> + Send;
}

/// Where and who an appliance is: rug-lite verifies exactly this identity (the router id and
/// the management address in the server certificate) when it connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApplianceTarget {
    pub router_id: String,
    pub address: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ApplianceError {
    /// No answer (connection refused, timeout, TLS identity mismatch): booting or dead.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// It answered, with an error (e.g. 422 naming what it refused).
    #[error("refused: {0}")]
    Refused(String),
}

/// The agent's API (Astara v1 paths).
pub(crate) trait Appliance: Send + Sync {
    /// `GET /v1/system/interfaces`: MAC → geN.
    fn interfaces(
        &self,
        target: &ApplianceTarget,
    ) -> impl Future<Output = Result<BTreeMap<String, String>, ApplianceError>> + Send;
    /// `GET /v1/status` `config_hash`: the config in force, None before the first push.
    fn config_hash(
        &self,
        target: &ApplianceTarget,
    ) -> impl Future<Output = Result<Option<String>, ApplianceError>> + Send;
    /// `PUT /v1/system/config`.
    fn put_config(
        &self,
        target: &ApplianceTarget,
        document: &Document,
    ) -> impl Future<Output = Result<(), ApplianceError>> + Send;
    /// The end of validity of the server certificate the appliance presented when it last
    /// answered; None over plain HTTP.
    fn certificate_expiry(&self, target: &ApplianceTarget) -> Option<SystemTime>;
    /// `PUT /v1/system/tls`: replaces the appliance's server certificate, key and client CA
    /// in place (new connections use them). An agent without it answers 404 or 405.
    fn put_tls(
        &self,
        target: &ApplianceTarget,
        material: &TlsMaterial,
    ) -> impl Future<Output = Result<(), ApplianceError>> + Send;
}

/// TLS material for one appliance, issued from `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsMaterial {
    pub ca_cert_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

pub(crate) trait CertificateAuthority: Send + Sync {
    /// A server certificate naming the router and its management address; None when the
    /// appliances are driven over plain HTTP (`[tls] insecure_http`, labs only).
    fn issue(&self, router_id: &str, address: IpAddr) -> Result<Option<TlsMaterial>, String>;
}

/// Everything the reconciler talks to.
pub(crate) trait Cloud: Neutron + Nova + Appliance + CertificateAuthority + 'static {}
impl<T: Neutron + Nova + Appliance + CertificateAuthority + 'static> Cloud for T {}

#[cfg(test)]
pub(crate) mod tests {
    //! `InMemoryCloud`: a test stand-in for Neutron, Nova, the appliances and the CA, with just
    //! enough behaviour (tags, device ids, server status, NICs appearing on attach) to drive the
    //! reconciler, and a log of every mutating call for assertions.

    use super::*;
    use crate::neutron::FixedIp;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    #[derive(Debug, Clone, Default)]
    pub(crate) struct SimAgent {
        pub reachable: bool,
        pub config_hash: Option<String>,
        pub pushes: u32,
        /// What PUT answers next, if not Ok.
        pub refuse_with: Option<String>,
    }

    #[derive(Debug, Default)]
    pub(crate) struct CloudState {
        pub routers: BTreeMap<String, Router>,
        pub networks: BTreeMap<String, Network>,
        pub subnets: BTreeMap<String, Subnet>,
        pub ports: BTreeMap<String, Port>,
        pub floating_ips: BTreeMap<String, FloatingIp>,
        pub servers: BTreeMap<String, (Server, Vec<String>)>, // server, attached port ids
        pub agents: BTreeMap<String, SimAgent>,               // by server id
        /// Servers whose delete is accepted but not finished yet.
        pub deleting: BTreeSet<String>,
        pub calls: Vec<String>,
        pub next_id: u32,
        /// Fail every call whose log line starts with one of these.
        pub fail: Vec<String>,
        /// Hot-plug that the guest never sees: attach binds the port, no NIC appears.
        pub attach_without_nic: bool,
        /// What every appliance's certificate says about its end of validity.
        pub certificate_expiry: Option<SystemTime>,
        /// Agents without `PUT /v1/system/tls` (older images).
        pub no_tls_api: bool,
    }

    #[derive(Default)]
    pub(crate) struct InMemoryCloud {
        pub state: Mutex<CloudState>,
    }

    impl CloudState {
        fn id(&mut self, kind: &str) -> String {
            self.next_id += 1;
            format!("{kind}-{:04}", self.next_id)
        }

        fn call(&mut self, line: String) -> CloudResult<()> {
            let failing = self.fail.iter().any(|f| line.starts_with(f.as_str()));
            self.calls.push(line.clone());
            if failing {
                return Err(CloudError::Failed {
                    service: "test",
                    what: line,
                    reason: "injected failure".into(),
                });
            }
            Ok(())
        }

        /// Allocates the next free address of the network's first subnet.
        fn allocate(&mut self, network_id: &str) -> Vec<FixedIp> {
            let used: BTreeSet<String> = self
                .ports
                .values()
                .flat_map(|p| p.fixed_ips.iter().map(|f| f.ip_address.clone()))
                .collect();
            let mut out = Vec::new();
            for s in self.subnets.values().filter(|s| s.network_id == network_id) {
                let net: ipnet::IpNet = s.cidr.parse().unwrap();
                let ip = net
                    .hosts()
                    .skip(9)
                    .map(|h| h.to_string())
                    .find(|h| !used.contains(h) && Some(h) != s.gateway_ip.as_ref())
                    .unwrap();
                out.push(FixedIp {
                    subnet_id: s.id.clone(),
                    ip_address: ip,
                });
            }
            out
        }

        fn agent_target(&self, target: &ApplianceTarget) -> Result<String, ApplianceError> {
            // The server whose management port holds the target address and whose tags name
            // the router: the identity a real TLS handshake verifies.
            for (id, (server, ports)) in &self.servers {
                let router_ok = crate::ownership::router_of_tags(server.tags.iter()).as_deref()
                    == Some(target.router_id.as_str());
                let addr_ok = ports.iter().any(|p| {
                    self.ports.get(p).is_some_and(|p| {
                        p.fixed_ips
                            .iter()
                            .any(|f| f.ip_address == target.address.to_string())
                    })
                });
                let reachable = self.agents.get(id).is_some_and(|a| a.reachable);
                if router_ok && addr_ok && server.status == "ACTIVE" && reachable {
                    return Ok(id.clone());
                }
            }
            Err(ApplianceError::Unreachable(format!(
                "no agent answers at [{}]:{}",
                target.address, target.port
            )))
        }
    }

    impl InMemoryCloud {
        pub(crate) fn with<R>(&self, f: impl FnOnce(&mut CloudState) -> R) -> R {
            f(&mut self.state.lock().unwrap())
        }

        /// Every server: ACTIVE, with a reachable agent.
        pub(crate) fn activate_all(&self) {
            self.with(|s| {
                let ids: Vec<String> = s.servers.keys().cloned().collect();
                for id in ids {
                    s.servers.get_mut(&id).unwrap().0.status = "ACTIVE".into();
                    s.agents.entry(id).or_default().reachable = true;
                }
            })
        }

        /// Finishes pending server deletes (Nova deletes asynchronously).
        pub(crate) fn finish_deletes(&self) {
            self.with(|s| {
                let gone: Vec<String> = s.deleting.iter().cloned().collect();
                for id in gone {
                    if let Some((_, ports)) = s.servers.remove(&id) {
                        for p in ports {
                            if let Some(port) = s.ports.get_mut(&p) {
                                port.device_id.clear();
                                port.device_owner.clear();
                            }
                        }
                    }
                    s.agents.remove(&id);
                }
                s.deleting.clear();
            })
        }

        pub(crate) fn calls_matching(&self, prefix: &str) -> Vec<String> {
            self.with(|s| {
                s.calls
                    .iter()
                    .filter(|c| c.starts_with(prefix))
                    .cloned()
                    .collect()
            })
        }
    }

    fn matches(p: &Port, f: &PortFilter) -> bool {
        f.device_id.as_ref().is_none_or(|d| &p.device_id == d)
            && (f.network_ids.is_empty() || f.network_ids.contains(&p.network_id))
            && f.tag.as_ref().is_none_or(|t| p.tags.contains(t))
    }

    impl Neutron for InMemoryCloud {
        async fn get_router(&self, id: &str) -> CloudResult<Option<Router>> {
            self.with(|s| {
                s.call(format!("get_router {id}"))?;
                Ok(s.routers.get(id).cloned())
            })
        }
        async fn list_routers(&self) -> CloudResult<Vec<Router>> {
            self.with(|s| {
                s.call("list_routers".into())?;
                Ok(s.routers.values().cloned().collect())
            })
        }
        async fn list_ports(&self, filter: &PortFilter) -> CloudResult<Vec<Port>> {
            self.with(|s| {
                s.call(format!("list_ports {filter:?}"))?;
                Ok(s.ports
                    .values()
                    .filter(|p| matches(p, filter))
                    .cloned()
                    .collect())
            })
        }
        async fn list_subnets(&self, network_ids: &[String]) -> CloudResult<Vec<Subnet>> {
            self.with(|s| {
                s.call("list_subnets".into())?;
                Ok(s.subnets
                    .values()
                    .filter(|x| network_ids.contains(&x.network_id))
                    .cloned()
                    .collect())
            })
        }
        async fn list_networks(&self, ids: &[String]) -> CloudResult<Vec<Network>> {
            self.with(|s| {
                s.call("list_networks".into())?;
                Ok(s.networks
                    .values()
                    .filter(|n| ids.contains(&n.id))
                    .cloned()
                    .collect())
            })
        }
        async fn list_floating_ips(&self, router_id: &str) -> CloudResult<Vec<FloatingIp>> {
            self.with(|s| {
                s.call("list_floating_ips".into())?;
                Ok(s.floating_ips
                    .values()
                    .filter(|f| f.router_id.as_deref() == Some(router_id))
                    .cloned()
                    .collect())
            })
        }
        async fn create_port(&self, spec: &PortSpec) -> CloudResult<Port> {
            self.with(|s| {
                s.call(format!("create_port {} on {}", spec.name, spec.network_id))?;
                let id = s.id("port");
                let n = s.next_id;
                let port = Port {
                    id: id.clone(),
                    name: spec.name.clone(),
                    network_id: spec.network_id.clone(),
                    mac_address: format!("fa:16:3e:00:{:02x}:{:02x}", n >> 8, n & 0xff),
                    fixed_ips: s.allocate(&spec.network_id),
                    port_security_enabled: Some(false),
                    ..Port::default()
                };
                s.ports.insert(id, port.clone());
                Ok(port)
            })
        }
        async fn add_port_tags(&self, port_id: &str, tags: &[String]) -> CloudResult<()> {
            self.with(|s| {
                s.call(format!("add_port_tags {port_id}"))?;
                let p = s.ports.get_mut(port_id).ok_or(CloudError::NotFound {
                    service: "neutron",
                    what: port_id.into(),
                })?;
                p.tags.extend(tags.iter().cloned());
                Ok(())
            })
        }
        async fn delete_port(&self, port_id: &str) -> CloudResult<()> {
            self.with(|s| {
                s.call(format!("delete_port {port_id}"))?;
                let attached = s
                    .servers
                    .values()
                    .any(|(_, ports)| ports.iter().any(|p| p == port_id));
                assert!(
                    !attached || s.deleting.is_empty(),
                    "port {port_id} deleted while its server is being deleted"
                );
                for (_, ports) in s.servers.values_mut() {
                    ports.retain(|p| p != port_id);
                }
                s.ports
                    .remove(port_id)
                    .map(|_| ())
                    .ok_or(CloudError::NotFound {
                        service: "neutron",
                        what: port_id.into(),
                    })
            })
        }
    }

    impl Nova for InMemoryCloud {
        async fn boot_server(&self, spec: &ServerSpec) -> CloudResult<Server> {
            self.with(|s| {
                s.call(format!("boot_server {}", spec.name))?;
                for p in &spec.port_ids {
                    let port = s.ports.get(p).expect("boot with an existing port");
                    assert!(
                        crate::ownership::router_of_tags(port.tags.iter()).is_some(),
                        "port {p} booted before it was tagged"
                    );
                    assert!(!port.fixed_ips.is_empty(), "Nova refuses a port without IP");
                }
                let id = s.id("server");
                let server = Server {
                    id: id.clone(),
                    name: spec.name.clone(),
                    status: "BUILD".into(),
                    tags: spec.tags.clone(),
                };
                for p in &spec.port_ids {
                    let port = s.ports.get_mut(p).unwrap();
                    port.device_id = id.clone();
                    port.device_owner = "compute:nova".into();
                }
                s.servers
                    .insert(id.clone(), (server.clone(), spec.port_ids.clone()));
                s.agents.insert(id, SimAgent::default());
                Ok(server)
            })
        }
        async fn list_servers_tagged(&self, tag: &str) -> CloudResult<Vec<Server>> {
            self.with(|s| {
                s.call(format!("list_servers_tagged {tag}"))?;
                Ok(s.servers
                    .values()
                    .filter(|(srv, _)| srv.tags.iter().any(|t| t == tag))
                    .map(|(srv, _)| srv.clone())
                    .collect())
            })
        }
        async fn delete_server(&self, id: &str) -> CloudResult<()> {
            self.with(|s| {
                s.call(format!("delete_server {id}"))?;
                if !s.servers.contains_key(id) {
                    return Err(CloudError::NotFound {
                        service: "nova",
                        what: id.into(),
                    });
                }
                s.servers.get_mut(id).unwrap().0.status = "DELETED".into();
                s.deleting.insert(id.to_string());
                Ok(())
            })
        }
        async fn attach_port(&self, server_id: &str, port_id: &str) -> CloudResult<()> {
            self.with(|s| {
                s.call(format!("attach_port {server_id} {port_id}"))?;
                let port = s.ports.get_mut(port_id).expect("attach an existing port");
                port.device_id = server_id.into();
                port.device_owner = "compute:nova".into();
                if !s.attach_without_nic {
                    s.servers
                        .get_mut(server_id)
                        .expect("attach to an existing server")
                        .1
                        .push(port_id.into());
                }
                Ok(())
            })
        }
    }

    impl Appliance for InMemoryCloud {
        async fn interfaces(
            &self,
            target: &ApplianceTarget,
        ) -> Result<BTreeMap<String, String>, ApplianceError> {
            self.with(|s| {
                s.calls.push(format!("interfaces {}", target.router_id));
                let id = s.agent_target(target)?;
                let ports = &s.servers[&id].1;
                Ok(ports
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| {
                        s.ports
                            .get(p)
                            .map(|p| (p.mac_address.clone(), format!("ge{i}")))
                    })
                    .collect())
            })
        }
        async fn config_hash(
            &self,
            target: &ApplianceTarget,
        ) -> Result<Option<String>, ApplianceError> {
            self.with(|s| {
                let id = s.agent_target(target)?;
                Ok(s.agents[&id].config_hash.clone())
            })
        }
        async fn put_config(
            &self,
            target: &ApplianceTarget,
            document: &Document,
        ) -> Result<(), ApplianceError> {
            self.with(|s| {
                s.calls.push(format!("put_config {}", target.router_id));
                let id = s.agent_target(target)?;
                let agent = s.agents.get_mut(&id).unwrap();
                if let Some(why) = agent.refuse_with.clone() {
                    return Err(ApplianceError::Refused(why));
                }
                // What the real agent does: validate, then hold it.
                let config = akanda_model::parse(&serde_json::to_vec(document).unwrap())
                    .map_err(|e| ApplianceError::Refused(e.to_string()))?;
                agent.config_hash = Some(config.document.hash());
                agent.pushes += 1;
                Ok(())
            })
        }
        fn certificate_expiry(&self, _target: &ApplianceTarget) -> Option<SystemTime> {
            self.with(|s| s.certificate_expiry)
        }
        async fn put_tls(
            &self,
            target: &ApplianceTarget,
            material: &TlsMaterial,
        ) -> Result<(), ApplianceError> {
            self.with(|s| {
                s.calls.push(format!("put_tls {}", target.router_id));
                s.agent_target(target)?;
                if s.no_tls_api {
                    return Err(ApplianceError::Refused("405 Method Not Allowed".into()));
                }
                assert!(material.server_cert_pem.contains(&target.router_id));
                // What the new certificate says (the test CA's are 30 days).
                s.certificate_expiry =
                    Some(SystemTime::now() + std::time::Duration::from_secs(30 * 86_400));
                Ok(())
            })
        }
    }

    impl CertificateAuthority for InMemoryCloud {
        fn issue(&self, router_id: &str, address: IpAddr) -> Result<Option<TlsMaterial>, String> {
            self.with(|s| {
                s.calls.push(format!("issue {router_id} {address}"));
            });
            Ok(Some(TlsMaterial {
                ca_cert_pem: "TEST CA".into(),
                server_cert_pem: format!("TEST CERT for {router_id} at {address}"),
                server_key_pem: "TEST KEY".into(),
            }))
        }
    }
}
