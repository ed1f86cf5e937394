//! rug-lite: Akanda's orchestrator for small clouds. See README.md for the design.

mod admin;
#[cfg(test)]
mod agent_tls_root_tests;
mod amqp;
mod appliance;
mod bootdata;
mod builder;
mod cloud;
mod events;
mod hostaddr;
#[cfg(test)]
mod hypervisor_stand_in;
mod index;
mod ingest;
mod keystone;
mod neutron;
mod openstack;
mod ownership;
mod queue;
mod reconcile;
mod resync;
mod serve;
mod settings;
mod status;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::cloud::Neutron;

#[derive(Parser)]
#[command(
    name = "rug-lite",
    version,
    about = "Akanda's orchestrator: one Service Instance per Neutron router"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the orchestrator.
    Serve {
        /// The TOML settings file; every key can be overridden by RUG_LITE_<SECTION>_<KEY>.
        #[arg(long)]
        config: PathBuf,
    },
    /// Ask the running `serve` about its routers, over the admin socket.
    Router {
        #[command(subcommand)]
        command: RouterCommand,
    },
}

#[derive(Subcommand)]
enum RouterCommand {
    /// Every router: a JSON array.
    List {
        #[arg(long)]
        json: bool,
        /// Settings file, for [admin] socket.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// One router: a JSON object.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() {
    // Errors as one line of causes; anyhow's Debug would add a backtrace under RUST_BACKTRACE.
    if let Err(e) = run(Cli::parse()) {
        eprintln!("rug-lite: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    match cli.command {
        Command::Serve { config } => {
            let settings = settings::Settings::load(Some(&config))
                .with_context(|| format!("settings from {}", config.display()))?;
            runtime.block_on(serve_command(settings))
        }
        Command::Router { command } => runtime.block_on(router_command(command)),
    }
}

async fn serve_command(settings: settings::Settings) -> anyhow::Result<()> {
    let credentials = keystone::credentials(settings.openstack_cloud.as_deref())?;
    let appliance_timeout = Duration::from_secs(30);
    let mut cert_renew_before = tls::DEFAULT_RENEW_BEFORE;
    let (agent, ca) = match &settings.tls {
        settings::TlsSettings::InsecureHttp => {
            tracing::warn!(
                "[tls] insecure_http: appliances are driven over plain HTTP, unauthenticated; labs only"
            );
            let agent = appliance::AgentClient::plain_http(appliance_timeout)
                .map_err(|e| anyhow::anyhow!("appliance HTTP client: {e}"))?;
            (agent, None)
        }
        settings::TlsSettings::Mutual {
            ca_cert,
            ca_key,
            server_cert_lifetime,
            renew_before,
        } => {
            let ca = tls::Ca::load(ca_cert, ca_key)
                .context("[tls] ca_cert / ca_key")?
                .with_server_lifetime(*server_cert_lifetime);
            let (cert, key) = ca.issue_client()?;
            let identity = tls::ClientIdentity::new(ca.ca_cert_pem(), &cert, &key)?;
            // rug-lite's own certificate (a year) is renewed while it runs, in the same
            // window as the appliances' (`tls.renew_before`).
            let issuer = tls::Ca::load(ca_cert, ca_key).context("[tls] ca_cert / ca_key")?;
            let renew: tls::IssueClient = Box::new(move || {
                let (cert, key) = issuer.issue_client()?;
                tls::ClientIdentity::new(issuer.ca_cert_pem(), &cert, &key)
            });
            cert_renew_before = *renew_before;
            tracing::info!(
                server_cert_lifetime = %humantime::format_duration(*server_cert_lifetime),
                renew_before = %humantime::format_duration(*renew_before),
                "mutual TLS to the appliances"
            );
            (
                appliance::AgentClient::mutual_tls_with_renewal(
                    identity,
                    Some((renew, *renew_before)),
                    appliance_timeout,
                ),
                Some(ca),
            )
        }
    };
    let cloud = Arc::new(openstack::HttpCloud::new(
        credentials,
        Duration::from_secs(60),
        agent,
        ca,
    )?);
    let a = &settings.appliance;
    let image_id = cloud
        .find_image(&a.image)
        .await
        .context("appliance.image")?;
    let flavor_id = cloud
        .find_flavor(&a.flavor)
        .await
        .context("appliance.flavor")?;
    let management = cloud
        .find_network(&a.management_network)
        .await
        .context("appliance.management_network")?;
    let subnets = cloud
        .list_subnets(std::slice::from_ref(&management.id))
        .await
        .context("management subnets")?;
    let prefixes: Vec<ipnet::IpNet> = subnets.iter().filter_map(|s| s.cidr.parse().ok()).collect();
    let host = hostaddr::host_addresses().context("listing this host's addresses")?;
    let orchestrator_address = hostaddr::pick(a.orchestrator_address, &host, &prefixes)?;
    // `orchestrator.host` is a DNS name for the agent (Grammar::DnsName).
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| akanda_model::Grammar::DnsName.matches(h))
        .unwrap_or_else(|| "rug-lite".into());
    tracing::info!(%image_id, %flavor_id, management = %management.id, %orchestrator_address, "resolved");

    let s = &settings.scheduler;
    let config = serve::ServeConfig {
        admin_socket: settings.admin_socket.clone(),
        queue: queue::QueueSettings {
            debounce: s.debounce,
            max_debounce: s.max_debounce,
            concurrency: s.concurrency,
            backoff_base: s.backoff_base,
            backoff_max: s.backoff_max,
            error_threshold: s.error_threshold,
            error_cooldown: s.error_cooldown,
        },
        shutdown_deadline: s.shutdown_deadline,
        resync_period: settings.resync_period,
        startup_spread: settings.startup_spread,
        reconcile: reconcile::ReconcileSettings {
            management_network_id: management.id.clone(),
            image_id,
            flavor_id,
            api_port: a.api_port,
            boot_timeout: a.boot_timeout,
            build: builder::BuildParams {
                management_network_id: management.id.clone(),
                orchestrator_address,
                metadata_port: a.metadata_port,
                orchestrator_host: host_name,
                asn: a.asn,
                neighbor_asn: a.neighbor_asn,
            },
            boot_poll: Duration::from_secs(5),
            hotplug_poll: Duration::from_secs(2),
            hotplug_timeout: a.hotplug_timeout,
            cert_renew_before,
            max_boots: s.max_boots,
            max_pushes: s.max_pushes,
            max_probes: s.max_probes,
        },
    };
    // One shutdown for both: serve stops taking work; intake stops consuming.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (bodies, events) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
    let intake = tokio::spawn(amqp::run(
        settings.amqp.clone(),
        bodies,
        stopped(stop_rx.clone()),
    ));
    serve::run(cloud, config, events, stopped(stop_rx)).await?;
    let _ = intake.await;
    Ok(())
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn router_command(command: RouterCommand) -> anyhow::Result<()> {
    let (config, path, json) = match &command {
        RouterCommand::List { config, json } => (config.clone(), "/v1/routers".to_string(), *json),
        RouterCommand::Show { config, id, json } => {
            (config.clone(), format!("/v1/routers/{id}"), *json)
        }
    };
    let socket = settings::Settings::load_admin_socket(config.as_deref())?;
    let (code, body) = admin::get(&socket, &path).await?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .context("the admin socket answered with something other than JSON")?;
    if code != 200 {
        let why = value["error"].as_str().unwrap_or("error");
        anyhow::bail!("{why}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let rows = match value {
        serde_json::Value::Array(rows) => rows,
        one => vec![one],
    };
    for r in rows {
        let field = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        println!(
            "{}  {:<10}  server {}  mgmt {}  pushed {}{}",
            field("router_id"),
            field("state"),
            field("server_id"),
            field("management_address"),
            field("last_push"),
            r["last_error"]
                .as_str()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default(),
        );
    }
    Ok(())
}
