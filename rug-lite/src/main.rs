//! rug-lite: Akanda's orchestrator for small clouds. See README.md for the design.

mod bootdata;
mod builder;
mod cloud;
mod events;
mod index;
mod neutron;
mod ownership;
mod queue;
mod reconcile;
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
    match cli.command {
        Command::Serve { config } => {
            let settings = settings::Settings::load(Some(&config))
                .with_context(|| format!("settings from {}", config.display()))?;
            anyhow::bail!(
                "serve: settings are valid ({:?}), but the OpenStack and AMQP clients are not built yet (issue #11, next step)",
                settings.admin_socket
            )
        }
        Command::Router { command } => {
            let (config, _id) = match &command {
                RouterCommand::List { config, .. } => (config.clone(), None),
                RouterCommand::Show { config, id, .. } => (config.clone(), Some(id.clone())),
            };
            let socket = settings::Settings::load_admin_socket(config.as_deref())?;
            anyhow::bail!("admin socket {} client not built yet", socket.display())
        }
    }
}
