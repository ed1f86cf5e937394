//! The production cloud: `Neutron` and `Nova` over plain HTTP (reqwest) with a Keystone v3
//! token, re-authenticating once on a 401; the name-or-id lookups done once at start (image,
//! flavor, management network); the appliances through [`AgentClient`].
//!
//! openstack_sdk (the settled choice) needs Rust 1.91, above the workspace's 1.85 floor, so this
//! is the reqwest fallback DECISIONS.md allows; the traits keep the choice local to this file.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use akanda_model::Document;
use base64::Engine;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::appliance::AgentClient;
use crate::cloud::{
    Appliance, ApplianceError, ApplianceTarget, CertificateAuthority, CloudError, CloudResult,
    Neutron, Nova, PortFilter, PortSpec, Server, ServerSpec, TlsMaterial,
};
use akanda_openstack_auth::error_chain;

use crate::keystone::{self, Credentials, Session};
use crate::neutron::{FloatingIp, Network, Port, Router, Subnet};
use crate::tls::Ca;

/// Tags in server create (2.52) and in server listings (2.26).
const NOVA_MICROVERSION: &str = "2.52";

#[derive(Clone, Copy)]
enum Service {
    Network,
    Compute,
    Image,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Network => "neutron",
            Service::Compute => "nova",
            Service::Image => "glance",
        }
    }

    fn base(self, s: &Session) -> &str {
        match self {
            Service::Network => &s.network,
            Service::Compute => &s.compute,
            Service::Image => &s.image,
        }
    }
}

/// The production cloud: OpenStack over HTTP, and the appliances through `agent`.
pub(crate) struct HttpCloud {
    http: reqwest::Client,
    credentials: Credentials,
    session: Mutex<Option<Session>>,
    agent: AgentClient,
    /// None: plain HTTP to the appliances (labs).
    ca: Option<Ca>,
}

impl HttpCloud {
    pub(crate) fn new(
        credentials: Credentials,
        timeout: Duration,
        agent: AgentClient,
        ca: Option<Ca>,
    ) -> CloudResult<Self> {
        // No idle connections kept: Nova's API server closes a kept-alive connection right
        // after answering, and the next request on it fails ("connection closed before message
        // completed", seen on the rig). A POST cannot simply be retried, so do not reuse.
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| CloudError::Failed {
                service: "keystone",
                what: "HTTP client".into(),
                reason: e.to_string(),
            })?;
        Ok(HttpCloud {
            http,
            credentials,
            session: Mutex::new(None),
            agent,
            ca,
        })
    }

    async fn session(&self, renew: bool) -> CloudResult<Session> {
        let mut guard = self.session.lock().await;
        if renew || guard.is_none() {
            let s = keystone::authenticate(&self.http, &self.credentials)
                .await
                .map_err(|e| CloudError::Failed {
                    service: "keystone",
                    what: "authentication".into(),
                    reason: e.to_string(),
                })?;
            *guard = Some(s);
        }
        Ok(guard.clone().expect("just set"))
    }

    /// One API call. `Ok(None)` for a 404; the JSON body (or Null) otherwise.
    async fn call(
        &self,
        service: Service,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> CloudResult<Option<Value>> {
        let what = format!("{method} {path}");
        let failed = |reason: String| CloudError::Failed {
            service: service.name(),
            what: what.clone(),
            reason,
        };
        for attempt in 0..2 {
            let session = self.session(attempt > 0).await?;
            let url = format!("{}{path}", service.base(&session));
            let mut request = self
                .http
                .request(method.clone(), &url)
                .header("X-Auth-Token", &session.token)
                .query(query);
            if let Service::Compute = service {
                request = request
                    .header(
                        "OpenStack-API-Version",
                        format!("compute {NOVA_MICROVERSION}"),
                    )
                    .header("X-OpenStack-Nova-API-Version", NOVA_MICROVERSION);
            }
            if let Some(b) = body {
                request = request.json(b);
            }
            let response = request.send().await.map_err(|e| failed(error_chain(&e)))?;
            let status = response.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                continue; // the token expired: authenticate again, once
            }
            if status == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let text = response.text().await.map_err(|e| failed(e.to_string()))?;
            if !status.is_success() {
                let mut shown: String = text.chars().take(300).collect();
                if shown.is_empty() {
                    shown = "(no body)".into();
                }
                return Err(failed(format!("{status}: {shown}")));
            }
            if text.trim().is_empty() {
                return Ok(Some(Value::Null));
            }
            return serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| failed(format!("answer is not JSON: {e}")));
        }
        Err(failed("401 Unauthorized after a new token".into()))
    }

    async fn list<T: DeserializeOwned>(
        &self,
        service: Service,
        path: &str,
        key: &str,
        query: &[(&str, String)],
    ) -> CloudResult<Vec<T>> {
        let body = self
            .call(service, Method::GET, path, query, None)
            .await?
            .ok_or_else(|| CloudError::NotFound {
                service: service.name(),
                what: path.into(),
            })?;
        decode(service, path, &body[key])
    }

    async fn not_found_is_error(
        &self,
        service: Service,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> CloudResult<Value> {
        self.call(service, method, path, &[], body)
            .await?
            .ok_or_else(|| CloudError::NotFound {
                service: service.name(),
                what: path.into(),
            })
    }

    /// Glance image id for a name or id.
    pub(crate) async fn find_image(&self, name_or_id: &str) -> CloudResult<String> {
        if let Some(v) = self
            .call(
                Service::Image,
                Method::GET,
                &format!("/v2/images/{name_or_id}"),
                &[],
                None,
            )
            .await?
        {
            return id_of(Service::Image, &v);
        }
        let images: Vec<Value> = self
            .list(
                Service::Image,
                "/v2/images",
                "images",
                &[("name", name_or_id.into())],
            )
            .await?;
        one(Service::Image, name_or_id, images)
    }

    /// Nova flavor id for a name or id.
    pub(crate) async fn find_flavor(&self, name_or_id: &str) -> CloudResult<String> {
        if let Some(v) = self
            .call(
                Service::Compute,
                Method::GET,
                &format!("/flavors/{name_or_id}"),
                &[],
                None,
            )
            .await?
        {
            return id_of(Service::Compute, &v["flavor"]);
        }
        let flavors: Vec<Value> = self
            .list(
                Service::Compute,
                "/flavors",
                "flavors",
                &[("is_public", "None".into())],
            )
            .await?;
        let named: Vec<Value> = flavors
            .into_iter()
            .filter(|f| f["name"] == name_or_id)
            .collect();
        one(Service::Compute, name_or_id, named)
    }

    /// A Neutron network by name or id.
    pub(crate) async fn find_network(&self, name_or_id: &str) -> CloudResult<Network> {
        if let Some(v) = self
            .call(
                Service::Network,
                Method::GET,
                &format!("/networks/{name_or_id}"),
                &[],
                None,
            )
            .await?
        {
            return decode(Service::Network, "network", &v["network"]);
        }
        let mut nets: Vec<Network> = self
            .list(
                Service::Network,
                "/networks",
                "networks",
                &[("name", name_or_id.into())],
            )
            .await?;
        match nets.len() {
            1 => Ok(nets.remove(0)),
            0 => Err(CloudError::NotFound {
                service: "neutron",
                what: format!("network {name_or_id}"),
            }),
            n => Err(CloudError::Failed {
                service: "neutron",
                what: format!("network {name_or_id}"),
                reason: format!("{n} networks have that name; give the id"),
            }),
        }
    }
}

fn decode<T: DeserializeOwned>(service: Service, what: &str, v: &Value) -> CloudResult<T> {
    T::deserialize(v).map_err(|e| CloudError::Failed {
        service: service.name(),
        what: what.into(),
        reason: format!("unexpected answer: {e}"),
    })
}

fn id_of(service: Service, v: &Value) -> CloudResult<String> {
    v["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| CloudError::Failed {
            service: service.name(),
            what: "lookup".into(),
            reason: "no id in the answer".into(),
        })
}

fn one(service: Service, name: &str, found: Vec<Value>) -> CloudResult<String> {
    match found.as_slice() {
        [v] => id_of(service, v),
        [] => Err(CloudError::NotFound {
            service: service.name(),
            what: name.into(),
        }),
        many => Err(CloudError::Failed {
            service: service.name(),
            what: name.into(),
            reason: format!("{} match that name; give the id", many.len()),
        }),
    }
}

fn server_from(v: &Value) -> CloudResult<Server> {
    // A server being deleted keeps its status (ACTIVE…) until it is gone; its task state says
    // it is going, which is what the reconciler needs (no second delete, no use).
    let status = if v["OS-EXT-STS:task_state"] == "deleting" {
        "DELETED"
    } else {
        v["status"].as_str().unwrap_or_default()
    };
    Ok(Server {
        id: id_of(Service::Compute, v)?,
        name: v["name"].as_str().unwrap_or_default().to_string(),
        status: status.to_string(),
        tags: v["tags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn repeated(key: &'static str, values: &[String]) -> Vec<(&'static str, String)> {
    values.iter().map(|v| (key, v.clone())).collect()
}

impl Neutron for HttpCloud {
    async fn get_router(&self, id: &str) -> CloudResult<Option<Router>> {
        match self
            .call(
                Service::Network,
                Method::GET,
                &format!("/routers/{id}"),
                &[],
                None,
            )
            .await?
        {
            None => Ok(None),
            Some(v) => decode(Service::Network, "router", &v["router"]).map(Some),
        }
    }

    async fn list_routers(&self) -> CloudResult<Vec<Router>> {
        self.list(Service::Network, "/routers", "routers", &[])
            .await
    }

    async fn list_ports(&self, filter: &PortFilter) -> CloudResult<Vec<Port>> {
        let mut q = repeated("network_id", &filter.network_ids);
        if let Some(d) = &filter.device_id {
            q.push(("device_id", d.clone()));
        }
        if let Some(t) = &filter.tag {
            q.push(("tags", t.clone()));
        }
        self.list(Service::Network, "/ports", "ports", &q).await
    }

    async fn list_subnets(&self, network_ids: &[String]) -> CloudResult<Vec<Subnet>> {
        if network_ids.is_empty() {
            return Ok(Vec::new());
        }
        let q = repeated("network_id", network_ids);
        self.list(Service::Network, "/subnets", "subnets", &q).await
    }

    async fn list_networks(&self, ids: &[String]) -> CloudResult<Vec<Network>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let q = repeated("id", ids);
        self.list(Service::Network, "/networks", "networks", &q)
            .await
    }

    async fn list_floating_ips(&self, router_id: &str) -> CloudResult<Vec<FloatingIp>> {
        let q = [("router_id", router_id.to_string())];
        self.list(Service::Network, "/floatingips", "floatingips", &q)
            .await
    }

    async fn create_port(&self, spec: &PortSpec) -> CloudResult<Port> {
        // No fixed_ips: Neutron allocates (Nova refuses a port without one). Port security off,
        // hence no security groups: the appliance answers for addresses that are not its own.
        let body = json!({"port": {
            "name": spec.name,
            "network_id": spec.network_id,
            "admin_state_up": true,
            "port_security_enabled": false,
            "security_groups": [],
        }});
        let v = self
            .not_found_is_error(Service::Network, Method::POST, "/ports", Some(&body))
            .await?;
        decode(Service::Network, "port", &v["port"])
    }

    async fn add_port_tags(&self, port_id: &str, tags: &[String]) -> CloudResult<()> {
        let body = json!({ "tags": tags });
        self.not_found_is_error(
            Service::Network,
            Method::PUT,
            &format!("/ports/{port_id}/tags"),
            Some(&body),
        )
        .await
        .map(|_| ())
    }

    async fn delete_port(&self, port_id: &str) -> CloudResult<()> {
        self.not_found_is_error(
            Service::Network,
            Method::DELETE,
            &format!("/ports/{port_id}"),
            None,
        )
        .await
        .map(|_| ())
    }
}

impl Nova for HttpCloud {
    async fn boot_server(&self, spec: &ServerSpec) -> CloudResult<Server> {
        let networks: Vec<Value> = spec.port_ids.iter().map(|p| json!({"port": p})).collect();
        let body = json!({"server": {
            "name": spec.name,
            "imageRef": spec.image_id,
            "flavorRef": spec.flavor_id,
            "networks": networks,
            "config_drive": true,
            "metadata": spec.metadata,
            "user_data": base64::engine::general_purpose::STANDARD.encode(&spec.user_data),
            "tags": spec.tags,
        }});
        let v = self
            .not_found_is_error(Service::Compute, Method::POST, "/servers", Some(&body))
            .await?;
        // The create answer has only the id; the status is BUILD until Nova says otherwise.
        Ok(Server {
            id: id_of(Service::Compute, &v["server"])?,
            name: spec.name.clone(),
            status: "BUILD".into(),
            tags: spec.tags.clone(),
        })
    }

    async fn list_servers_tagged(&self, tag: &str) -> CloudResult<Vec<Server>> {
        let servers: Vec<Value> = self
            .list(
                Service::Compute,
                "/servers/detail",
                "servers",
                &[("tags", tag.into())],
            )
            .await?;
        servers.iter().map(server_from).collect()
    }

    async fn delete_server(&self, id: &str) -> CloudResult<()> {
        self.not_found_is_error(
            Service::Compute,
            Method::DELETE,
            &format!("/servers/{id}"),
            None,
        )
        .await
        .map(|_| ())
    }

    async fn attach_port(&self, server_id: &str, port_id: &str) -> CloudResult<()> {
        let body = json!({"interfaceAttachment": {"port_id": port_id}});
        self.not_found_is_error(
            Service::Compute,
            Method::POST,
            &format!("/servers/{server_id}/os-interface"),
            Some(&body),
        )
        .await
        .map(|_| ())
    }
}

impl Appliance for HttpCloud {
    async fn interfaces(
        &self,
        target: &ApplianceTarget,
    ) -> Result<BTreeMap<String, String>, ApplianceError> {
        self.agent.interfaces(target).await
    }

    async fn config_hash(
        &self,
        target: &ApplianceTarget,
    ) -> Result<Option<String>, ApplianceError> {
        self.agent.config_hash(target).await
    }

    async fn put_config(
        &self,
        target: &ApplianceTarget,
        document: &Document,
    ) -> Result<(), ApplianceError> {
        self.agent.put_config(target, document).await
    }
    fn certificate_expiry(&self, target: &ApplianceTarget) -> Option<std::time::SystemTime> {
        self.agent.certificate_expiry(target)
    }
    async fn put_tls(
        &self,
        target: &ApplianceTarget,
        material: &TlsMaterial,
    ) -> Result<(), ApplianceError> {
        self.agent.put_tls(target, material).await
    }
}

/// The CA from `[tls]`; with plain HTTP (`insecure_http`) no TLS material is issued.
impl CertificateAuthority for HttpCloud {
    fn issue(&self, router_id: &str, address: IpAddr) -> Result<Option<TlsMaterial>, String> {
        match &self.ca {
            Some(ca) => ca.issue(router_id, address),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_being_deleted_reads_as_deleted() {
        let going = json!({"id": "s", "name": "n", "status": "ACTIVE",
            "OS-EXT-STS:task_state": "deleting", "tags": ["rug-lite"]});
        assert_eq!(server_from(&going).unwrap().status, "DELETED");
        let up = json!({"id": "s", "name": "n", "status": "ACTIVE",
            "OS-EXT-STS:task_state": null, "tags": []});
        let up = server_from(&up).unwrap();
        assert_eq!((up.status.as_str(), up.tags.len()), ("ACTIVE", 0));
    }
}

#[cfg(test)]
#[path = "openstack_rig_tests.rs"]
mod rig_tests;
#[cfg(test)]
#[path = "serve_rig_tests.rs"]
mod serve_rig_tests;
#[cfg(test)]
#[path = "openstack_stand_in.rs"]
mod stand_in;
