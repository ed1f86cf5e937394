//! `rug-lite serve`, assembled: the admin socket, the work queue driving the reconcilers, the
//! startup resync (retried until it succeeds, before any event is read), the periodic resync,
//! and event intake from a channel of raw AMQP bodies (fed by the AMQP consumer).
//!
//! Shutdown (SIGTERM at the binary's edge): stop intake and resync, let running reconciles
//! finish up to the deadline, close the admin socket.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::admin;
use crate::cloud::Cloud;
use crate::index::TopologyIndex;
use crate::ingest;
use crate::queue::{self, Outcome, QueueHandle, QueueSettings, WorkQueue};
use crate::reconcile::{ReconcileSettings, Reconciler};
use crate::resync;
use crate::status::{RouterState, StatusTable};

#[derive(Debug, Clone)]
pub(crate) struct ServeConfig {
    pub admin_socket: PathBuf,
    pub queue: QueueSettings,
    pub shutdown_deadline: Duration,
    pub resync_period: Duration,
    pub startup_spread: Duration,
    pub reconcile: ReconcileSettings,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    #[error("admin socket {path}: {source}")]
    AdminSocket {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub(crate) async fn run<C: Cloud>(
    cloud: Arc<C>,
    config: ServeConfig,
    mut events: mpsc::Receiver<Vec<u8>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let status = StatusTable::default();
    let index = Arc::new(TopologyIndex::new(&config.reconcile.management_network_id));
    let listener = admin::bind(&config.admin_socket).map_err(|source| ServeError::AdminSocket {
        path: config.admin_socket.clone(),
        source,
    })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin_task = tokio::spawn(admin::serve(
        listener,
        status.clone(),
        stopped(stop_rx.clone()),
    ));

    let reconciler = Arc::new(Reconciler::new(
        Arc::clone(&cloud),
        config.reconcile.clone(),
        status.clone(),
        Arc::clone(&index),
    ));
    let (handle, marks) = QueueHandle::channel();
    let failures = status.clone();
    let driver = tokio::spawn(queue::run(
        WorkQueue::new(config.queue.clone(), fastrand::Rng::new()),
        reconciler,
        marks,
        stopped(stop_rx),
        config.shutdown_deadline,
        move |job, outcome, queue| {
            let (count, in_error) = queue.failures(&job.router_id);
            match outcome {
                Outcome::Failed { error } => failures.update(&job.router_id, |s| {
                    s.state = RouterState::Error;
                    s.last_error = Some(error.clone());
                    s.failures = count;
                    s.in_error = in_error;
                }),
                // A deleted router's record is gone; do not bring it back.
                Outcome::Deleted => {}
                Outcome::Done { .. } => failures.update(&job.router_id, |s| {
                    s.failures = count;
                    s.in_error = in_error;
                }),
            }
        },
    ));

    tokio::pin!(shutdown);
    let stopping = startup_resync(&*cloud, &handle, &index, &status, &config, &mut shutdown).await;
    if !stopping {
        serve_events(
            &*cloud,
            &handle,
            &index,
            &status,
            &config,
            &mut events,
            &mut shutdown,
        )
        .await;
    }

    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    if let Err(e) = driver.await {
        tracing::error!(error = %e, "queue driver failed");
    }
    let _ = admin_task.await;
    let _ = std::fs::remove_file(&config.admin_socket);
    Ok(())
}

/// The first complete resync, retried with backoff. Returns true if shutdown came first.
async fn startup_resync<C: Cloud>(
    cloud: &C,
    handle: &QueueHandle,
    index: &TopologyIndex,
    status: &StatusTable,
    config: &ServeConfig,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let mut rng = fastrand::Rng::new();
    let mut retry = Duration::from_secs(1);
    loop {
        let attempt = resync::resync(
            cloud,
            handle,
            index,
            status,
            Some((config.startup_spread, &mut rng)),
        );
        let result = tokio::select! {
            r = attempt => r,
            () = shutdown.as_mut() => return true,
        };
        match result {
            Ok(n) => {
                tracing::info!(routers = n, "startup resync done");
                return false;
            }
            Err(e) => tracing::warn!(error = %e, retry_in = ?retry, "startup resync failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = shutdown.as_mut() => return true,
        }
        retry = (retry * 2).min(Duration::from_secs(60));
    }
}

async fn serve_events<C: Cloud>(
    cloud: &C,
    handle: &QueueHandle,
    index: &TopologyIndex,
    status: &StatusTable,
    config: &ServeConfig,
    events: &mut mpsc::Receiver<Vec<u8>>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) {
    let start = tokio::time::Instant::now() + config.resync_period;
    let mut ticker = tokio::time::interval_at(start, config.resync_period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events_open = true;
    loop {
        tokio::select! {
            () = shutdown.as_mut() => return,
            body = events.recv(), if events_open => match body {
                Some(body) => {
                    if let Err(e) = ingest::dispatch(&body, index, handle) {
                        tracing::warn!(error = %e, "notification dropped");
                    }
                }
                None => {
                    tracing::warn!("event intake closed; relying on the periodic resync");
                    events_open = false;
                }
            },
            _ = ticker.tick() => {
                if let Err(e) = resync::resync(cloud, handle, index, status, None).await {
                    tracing::warn!(error = %e, "periodic resync failed");
                }
            }
        }
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::tests::InMemoryCloud;
    use crate::reconcile::tests::{settings, world, R};

    fn config(socket: PathBuf) -> ServeConfig {
        ServeConfig {
            admin_socket: socket,
            queue: QueueSettings {
                debounce: Duration::from_secs(1),
                max_debounce: Duration::from_secs(10),
                concurrency: 4,
                backoff_base: Duration::from_secs(2),
                backoff_max: Duration::from_secs(60),
                error_threshold: 5,
                error_cooldown: Duration::from_secs(60),
            },
            shutdown_deadline: Duration::from_secs(30),
            resync_period: Duration::from_secs(60),
            startup_spread: Duration::from_secs(10),
            reconcile: settings(),
        }
    }

    async fn routers(socket: &std::path::Path) -> serde_json::Value {
        let (code, body) = admin::get(socket, "/v1/routers").await.unwrap();
        assert_eq!(code, 200);
        serde_json::from_slice(&body).unwrap()
    }

    /// From startup to a configured router, then an event-driven delete, observed through the
    /// admin socket as `rug-lite router list` sees it.
    #[tokio::test(start_paused = true)]
    async fn serve_resyncs_reconciles_takes_events_and_stops() {
        let cloud: Arc<InMemoryCloud> = world();
        // A leftover of a router deleted while rug-lite was down.
        cloud.with(|s| {
            s.ports.insert(
                "orphan-port".into(),
                crate::neutron::Port {
                    id: "orphan-port".into(),
                    network_id: "mgt-net".into(),
                    tags: crate::ownership::tags_for("long-gone").to_vec(),
                    ..Default::default()
                },
            );
        });
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let (events_tx, events_rx) = mpsc::channel(16);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(
            Arc::clone(&cloud),
            config(socket.clone()),
            events_rx,
            async {
                let _ = stop_rx.await;
            },
        ));

        tokio::time::sleep(Duration::from_secs(20)).await;
        let list = routers(&socket).await;
        assert_eq!(list[0]["router_id"], R);
        assert_eq!(list[0]["state"], "booting");
        assert!(
            !cloud.with(|s| s.ports.contains_key("orphan-port")),
            "orphan cleaned up"
        );

        cloud.activate_all();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let list = routers(&socket).await;
        assert_eq!(list[0]["state"], "configured");
        assert!(list[0]["last_push"].is_string());
        assert!(list[0]["config_hash"].is_string());

        // The router is deleted in Neutron and the event arrives (legacy envelope).
        cloud.with(|s| s.routers.remove(R));
        let event = serde_json::json!({"event_type": "router.delete.end",
            "payload": {"router_id": R}});
        events_tx
            .send(event.to_string().into_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(routers(&socket).await[0]["state"], "deleting");
        cloud.finish_deletes();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(routers(&socket).await, serde_json::json!([]));
        assert!(cloud.with(|s| s.servers.is_empty()));

        stop_tx.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(!socket.exists(), "socket removed on exit");
    }

    /// A router whose reconciles fail shows it in `router list`: state, last_error, the
    /// queue's failure count and, from `error_threshold` on, in_error; a success clears them.
    #[tokio::test(start_paused = true)]
    async fn failures_show_in_the_router_list_until_a_success() {
        let cloud: Arc<InMemoryCloud> = world();
        cloud.with(|s| s.fail.push("boot_server".into()));
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let (_events_tx, events_rx) = mpsc::channel(16);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut config = config(socket.clone());
        config.queue.error_threshold = 3;
        let server = tokio::spawn(run(Arc::clone(&cloud), config, events_rx, async {
            let _ = stop_rx.await;
        }));
        // Each failure shows as it happens (startup spread 10 s, backoffs 1-2 s, 2-4 s).
        let mut seen = Vec::new();
        for _ in 0..400 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let list = routers(&socket).await;
            let Some(r) = list.get(0) else { continue };
            let failures = r["failures"].as_u64().unwrap();
            if failures == 0 {
                continue;
            }
            assert_eq!(r["state"], "error", "{r}");
            assert!(
                r["last_error"].as_str().unwrap().contains("boot_server"),
                "{r}"
            );
            assert_eq!(r["in_error"], failures >= 3, "{r}");
            if seen.last() != Some(&failures) {
                seen.push(failures);
            }
        }
        assert_eq!(seen, [1, 2, 3], "one failure at a time, then the cooldown");
        // Nova works again: after the cooldown the boot succeeds and the record is clean.
        cloud.with(|s| s.fail.clear());
        tokio::time::sleep(Duration::from_secs(61)).await;
        let r = &routers(&socket).await[0];
        assert_eq!(r["state"], "booting", "{r}");
        assert_eq!(r["failures"], 0, "{r}");
        assert_eq!(r["in_error"], false, "{r}");
        stop_tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_startup_listing_is_retried_before_events_are_read() {
        let cloud: Arc<InMemoryCloud> = world();
        cloud.with(|s| s.fail.push("list_routers".into()));
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let (events_tx, events_rx) = mpsc::channel(16);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(
            Arc::clone(&cloud),
            config(socket.clone()),
            events_rx,
            async {
                let _ = stop_rx.await;
            },
        ));
        let event = serde_json::json!({"event_type": "router.update.end",
            "payload": {"router": {"id": R}}});
        events_tx
            .send(event.to_string().into_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(cloud.calls_matching("list_routers").len() >= 3, "retried");
        assert!(
            cloud.calls_matching("get_router").is_empty(),
            "no event served before the resync"
        );
        assert_eq!(routers(&socket).await, serde_json::json!([]));

        cloud.with(|s| s.fail.clear());
        tokio::time::sleep(Duration::from_secs(80)).await;
        assert_eq!(routers(&socket).await[0]["state"], "booting");
        stop_tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
