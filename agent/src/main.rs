use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use akanda_agent::api::{self, ApiState};
use akanda_agent::appliance::Appliance;
use akanda_agent::server;
use akanda_agent::store::StateDir;
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "akanda-agent",
    version,
    about = "Akanda Service Instance agent"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Re-apply the last good config, then serve the API.
    Serve {
        /// Address and port to listen on, e.g. `[fdca:3ba5:a17a:acda::5]:5000`. Optional with
        /// --boot-config, which then gives the listen addresses.
        #[arg(long, required_unless_present = "boot_config")]
        listen: Option<SocketAddr>,
        /// Configure the management NIC at start from the OpenStack config drive: `auto` finds
        /// the drive labelled config-2 (DHCP on the first NIC without one); a directory is
        /// read as an extracted config drive. See docs/image.md.
        #[arg(long, value_name = "auto|DIR")]
        boot_config: Option<akanda_agent::bootconfig::Source>,
        /// Where the last good config and the NIC names are kept.
        #[arg(long, default_value = "/var/lib/akanda-agent")]
        state_dir: PathBuf,
        /// Serve plain HTTP (no TLS). Required once TLS exists; accepted now.
        #[arg(long)]
        insecure_http: bool,
    },
    /// Check a config file; prints every problem. Exit 0 valid, 1 invalid, 2 unreadable.
    Validate { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Serve {
            listen,
            boot_config,
            state_dir,
            insecure_http,
        } => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("akanda-agent: cannot start the runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            match runtime.block_on(serve(listen, boot_config, state_dir, insecure_http)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("akanda-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn validate(file: &PathBuf) -> ExitCode {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match akanda_model::parse(&bytes) {
        Ok(config) => {
            println!(
                "valid: {} (sha256 {})",
                file.display(),
                config.document.hash()
            );
            ExitCode::SUCCESS
        }
        Err(akanda_model::ConfigError::Syntax(msg)) => {
            println!("malformed JSON: {msg}");
            ExitCode::FAILURE
        }
        Err(akanda_model::ConfigError::Invalid(problems)) => {
            for p in problems {
                println!("{p}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    listen: Option<SocketAddr>,
    boot_config: Option<akanda_agent::bootconfig::Source>,
    state_dir: PathBuf,
    insecure_http: bool,
) -> anyhow::Result<()> {
    if !insecure_http {
        tracing::warn!(
            "TLS is not implemented yet: serving plain HTTP (pass --insecure-http to acknowledge)"
        );
    }
    let state = StateDir::open(&state_dir)
        .with_context(|| format!("state directory {}", state_dir.display()))?;
    let mut appliance = Appliance::open(state)
        .await
        .context("opening the appliance")?;
    // After the NICs are named (a rename would set the link down and drop its addresses),
    // before the saved config is restored.
    let boot = match &boot_config {
        Some(source) => Some(boot_network(source, listen.is_none()).await?),
        None => None,
    };
    let api_port = match (listen, &boot) {
        (Some(listen), _) => listen.port(),
        (None, Some(boot)) => boot.port,
        (None, None) => unreachable!("clap requires --listen or --boot-config"),
    };
    appliance.set_api_port(api_port);
    // The last good config is back in the kernel before the API answers.
    match appliance.restore().await {
        Ok(true) => tracing::info!("last good config re-applied"),
        Ok(false) => tracing::info!("no saved config: waiting for the first push"),
        Err(e) => tracing::error!(error = %e, "the saved config could not be re-applied"),
    }
    let shared = appliance.shared.clone();
    let appliance = Arc::new(tokio::sync::Mutex::new(appliance));
    let routes = api::routes(Arc::new(ApiState::new(appliance.clone(), shared)));
    match (listen, boot) {
        // With --boot-config too, `_boot` keeps the DHCP client (if any) running.
        (Some(listen), _boot) => {
            let listener =
                server::bind(listen).with_context(|| format!("listening on {listen}"))?;
            tracing::info!(%listen, version = env!("CARGO_PKG_VERSION"), "serving the API");
            server::serve(listener, routes, shutdown_signal()).await;
        }
        (None, Some(mut boot)) => {
            tracing::info!(listen = ?boot.listen, version = env!("CARGO_PKG_VERSION"), "serving the API");
            // One accept loop per management address; a signal stops them all.
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = stop.send(true);
            });
            let loops = boot.listeners.drain(..).map(|listener| {
                let mut stopped = stopped.clone();
                server::serve(listener, routes.clone(), async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
            });
            futures::future::join_all(loops).await;
        }
        (None, None) => unreachable!("clap requires --listen or --boot-config"),
    }
    // Let an apply in progress finish before exiting.
    appliance.lock().await.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Reads the boot configuration and configures the management NIC (`--boot-config`).
async fn boot_network(
    source: &akanda_agent::bootconfig::Source,
    listen: bool,
) -> anyhow::Result<akanda_agent::bootconfig::BootNetwork> {
    use akanda_agent::bootconfig;
    let wanted = {
        let source = source.clone();
        // Probing block devices and mounting are blocking calls.
        tokio::task::spawn_blocking(move || {
            bootconfig::read_source(&source, std::time::Duration::from_secs(20))
        })
        .await
        .context("reading the boot configuration")??
    };
    let nl = akanda_agent::netlink::Netlink::connect().context("netlink")?;
    bootconfig::configure(&nl, &wanted, listen)
        .await
        .context("configuring the management NIC from the boot configuration")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
