//! The hypervisor stand-in driven by the real Nova and Neutron APIs (rig tests, MODE=full:
//! Nova's fake driver runs no guest). [`stand_in_boot`] builds one server's config drive the
//! way Nova's compute host would; [`StandInCompute`] watches Nova and does that for every
//! server of rug-lite's, as a compute host and its L2 agent would. See `hypervisor_stand_in`.

use super::*;
use crate::hypervisor_stand_in::{self as hv, Fabric, Guest};
use crate::ownership;
use std::sync::{Arc, Mutex as StdMutex};

/// Boots the stand-in guest for this server on `fabric`, from the real APIs: the server's
/// metadata and user_data from Nova's API, its ports (management first: `akanda_mgmt_mac`),
/// their subnets and networks' MTUs from Neutron.
pub(super) async fn stand_in_boot(
    cloud: &HttpCloud,
    server_id: &str,
    fabric: Arc<Fabric>,
) -> Guest {
    let server = cloud
        .call(
            Service::Compute,
            Method::GET,
            &format!("/servers/{server_id}"),
            &[],
            None,
        )
        .await
        .unwrap()
        .expect("server exists");
    let server = &server["server"];
    let user_data = base64::engine::general_purpose::STANDARD
        .decode(
            server["OS-EXT-SRV-ATTR:user_data"]
                .as_str()
                .expect("user_data (admin, microversion >= 2.3)"),
        )
        .unwrap();
    let metadata: BTreeMap<String, String> =
        serde_json::from_value(server["metadata"].clone()).unwrap();
    let mut ports = cloud
        .list_ports(&PortFilter {
            device_id: Some(server_id.to_string()),
            ..PortFilter::default()
        })
        .await
        .unwrap();
    let mgmt_mac = metadata["akanda_mgmt_mac"].to_ascii_lowercase();
    ports.sort_by_key(|p| (p.mac_address.to_ascii_lowercase() != mgmt_mac, p.id.clone()));
    let networks: Vec<String> = ports.iter().map(|p| p.network_id.clone()).collect();
    let subnets = cloud.list_subnets(&networks).await.unwrap();
    let nets = cloud.list_networks(&networks).await.unwrap();
    let mtus: Vec<Option<u64>> = ports
        .iter()
        .map(|p| {
            nets.iter()
                .find(|n| n.id == p.network_id)
                .and_then(|n| n.mtu)
        })
        .collect();
    let network_data = hv::network_data(&ports, &subnets, &mtus);
    let nics: Vec<(String, Option<String>)> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| (p.mac_address.clone(), (i > 0).then(|| p.network_id.clone())))
        .collect();
    let name = server["name"].as_str().unwrap_or("server").to_string();
    Guest::boot_on(fabric, &nics, |dir| {
        hv::write_config_drive(
            dir,
            server_id,
            &name,
            &metadata,
            &network_data,
            std::str::from_utf8(&user_data).unwrap(),
        )
    })
}

/// Plays the compute host for every server of rug-lite's on one management network: every
/// second it lists them in Nova, boots a guest for each new ACTIVE one, hot-plugs the ports
/// Nova attached since, and stops the guest of a server that is gone. Servers on another
/// management network (another test's, a crashed run's) are not its own. Drop stops it and
/// every guest.
pub(crate) struct StandInCompute {
    guests: Arc<StdMutex<Guests>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the stand-in knows of each server: its guest, or None when it is not on this
/// management network.
type Guests = BTreeMap<String, Option<Guest>>;

impl StandInCompute {
    pub(crate) fn start(
        cloud: Arc<HttpCloud>,
        fabric: Arc<Fabric>,
        management_network: &str,
    ) -> StandInCompute {
        let guests: Arc<StdMutex<Guests>> = Arc::default();
        let task = tokio::spawn({
            let guests = Arc::clone(&guests);
            let mgmt = management_network.to_string();
            async move {
                loop {
                    if let Err(e) = Self::pass(&cloud, &fabric, &mgmt, &guests).await {
                        eprintln!("stand-in compute: {e}");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
        StandInCompute { guests, task }
    }

    async fn pass(
        cloud: &HttpCloud,
        fabric: &Arc<Fabric>,
        mgmt: &str,
        guests: &StdMutex<Guests>,
    ) -> CloudResult<()> {
        let servers = cloud.list_servers_tagged(ownership::OWNER_TAG).await?;
        let gone: Vec<Option<Guest>> = {
            let mut g = guests.lock().unwrap();
            let ids: Vec<String> = g
                .keys()
                .filter(|id| {
                    !servers
                        .iter()
                        .any(|s| &s.id == *id && s.status != "DELETED")
                })
                .cloned()
                .collect();
            ids.iter().filter_map(|id| g.remove(id)).collect()
        };
        drop(gone); // stops those agents, outside the lock
        for server in servers.iter().filter(|s| s.status == "ACTIVE") {
            let known = guests.lock().unwrap().get(&server.id).map(Option::is_some);
            let attached = cloud
                .list_ports(&PortFilter {
                    device_id: Some(server.id.clone()),
                    ..PortFilter::default()
                })
                .await?;
            match known {
                Some(false) => {}
                None => {
                    let ours = attached.iter().any(|p| p.network_id == mgmt);
                    let guest = if ours {
                        Some(stand_in_boot(cloud, &server.id, Arc::clone(fabric)).await)
                    } else {
                        None
                    };
                    guests.lock().unwrap().insert(server.id.clone(), guest);
                }
                Some(true) => {
                    let mut g = guests.lock().unwrap();
                    if let Some(Some(guest)) = g.get_mut(&server.id) {
                        for p in attached {
                            if !guest.has_nic(&p.mac_address) {
                                guest.hotplug_on(&p.mac_address, &p.network_id);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs `f` on the guest of this server, if it was booted.
    pub(crate) fn with_guest<R>(
        &self,
        server_id: &str,
        f: impl FnOnce(&mut Guest) -> R,
    ) -> Option<R> {
        self.guests
            .lock()
            .unwrap()
            .get_mut(server_id)
            .and_then(Option::as_mut)
            .map(f)
    }
}

impl Drop for StandInCompute {
    fn drop(&mut self) {
        self.task.abort();
        let all = std::mem::take(&mut *self.guests.lock().unwrap());
        drop(all);
    }
}
