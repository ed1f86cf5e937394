//! rug-lite: Akanda's orchestrator for small clouds. See README.md for the design.

// Until the production OpenStack/AMQP clients exist, `serve::run` and everything under it is
// reachable only from the tests (which check dead code normally); the binary's `serve` stops
// after validating its settings.
#![cfg_attr(not(test), allow(dead_code))]

mod admin;
mod bootdata;
mod builder;
mod cloud;
mod events;
mod hostaddr;
mod index;
mod ingest;
mod neutron;
mod ownership;
mod queue;
mod reconcile;
mod resync;
mod serve;
mod settings;
mod status;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
            if settings.tls == settings::TlsSettings::InsecureHttp {
                tracing::warn!("[tls] insecure_http: appliances are driven over plain HTTP, unauthenticated; labs only");
            }
            // The runtime (serve::run) is assembled and tested against the in-memory cloud; it
            // needs the production OpenStack, appliance and AMQP clients to start for real.
            anyhow::bail!(
                "serve: the settings in {} are valid, but this build has no OpenStack/AMQP clients yet (issue #11: next step)",
                config.display()
            )
        }
        Command::Router { command } => runtime.block_on(router_command(command)),
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
