use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use akanda_agent::api::{self, Access, ApiState};
use akanda_agent::appliance::Appliance;
use akanda_agent::management::ManagementPath;
use akanda_agent::server;
use akanda_agent::store::StateDir;
use akanda_agent::tls::{TlsFiles, TlsState};
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

/// The API's connection limits (see docs/agent-api.md, "Connections"); the defaults suit a
/// Service Instance, tests shorten the timeouts.
#[derive(clap::Args)]
struct LimitArgs {
    /// Connections served at once; more wait in the kernel's accept backlog.
    #[arg(long, default_value_t = server::ConnectionLimits::default().max_connections)]
    max_connections: usize,
    /// Time from accept to the end of the first request's headers (TLS handshake included).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    header_read_timeout: std::time::Duration,
    /// A kept-alive connection with nothing in flight is closed after this.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    idle_timeout: std::time::Duration,
    /// A request body must have arrived completely within this (else 408).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    body_timeout: std::time::Duration,
    /// HTTP/2 streams in flight on one connection.
    #[arg(long, default_value_t = server::ConnectionLimits::default().max_http2_streams)]
    max_http2_streams: u32,
}

impl From<LimitArgs> for server::ConnectionLimits {
    fn from(a: LimitArgs) -> Self {
        server::ConnectionLimits {
            max_connections: a.max_connections.max(1),
            header_read_timeout: a.header_read_timeout,
            idle_timeout: a.idle_timeout,
            body_timeout: a.body_timeout,
            max_http2_streams: a.max_http2_streams.max(1),
        }
    }
}

/// The supervised daemons (docs/services.md).
#[derive(clap::Args)]
struct DaemonArgs {
    /// The dnsmasq program (run per tenant network, and for `--test` config checks).
    #[arg(long, value_name = "PROGRAM", default_value = "dnsmasq")]
    dnsmasq: PathBuf,
    /// The bird program (BGP; `-p` config checks).
    #[arg(long, value_name = "PROGRAM", default_value = "bird")]
    bird: PathBuf,
    /// How long a daemon's config check may run; it is then killed (with what it started)
    /// and the apply fails, so a stuck check never holds the apply for long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    daemon_check_timeout: std::time::Duration,
}

impl From<DaemonArgs> for akanda_agent::appliance::Daemons {
    fn from(a: DaemonArgs) -> Self {
        akanda_agent::appliance::Daemons {
            dnsmasq: a.dnsmasq,
            bird: a.bird,
            check_timeout: a.daemon_check_timeout,
        }
    }
}

// Parsed once at start: the size of `Serve` costs nothing.
#[allow(clippy::large_enum_variant)]
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
        /// Allow plain HTTP when no TLS material is given (labs only; a warning is logged at
        /// every start). Without it the agent serves only mutual TLS, and with --boot-config
        /// and no TLS material it refuses config changes unless the config drive's
        /// `meta.akanda_insecure_http` is "true". See docs/tls.md.
        #[arg(long)]
        insecure_http: bool,
        /// The server certificate (PEM, with its chain). With --tls-key and --client-ca: serve
        /// mutual TLS only. The three files are re-read on SIGHUP and when they change.
        #[arg(long, requires_all = ["tls_key", "client_ca"], value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// The server certificate's private key (PEM).
        #[arg(long, requires_all = ["tls_cert", "client_ca"], value_name = "FILE")]
        tls_key: Option<PathBuf>,
        /// The CA(s) client certificates must chain to (PEM); clients also need the
        /// clientAuth usage and a current validity.
        #[arg(long, requires_all = ["tls_cert", "tls_key"], value_name = "FILE")]
        client_ca: Option<PathBuf>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        daemons: DaemonArgs,
    },
    /// Check a config file; prints every problem. Exit 0 valid, 1 invalid, 2 unreadable.
    Validate { file: PathBuf },
    /// Print the last good config of a state directory (the one a restart re-applies). Exit 0
    /// printed, 1 none saved, 2 unreadable.
    SavedConfig {
        #[arg(long, default_value = "/var/lib/akanda-agent")]
        state_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Validate { file } => validate(&file),
        Command::SavedConfig { state_dir } => saved_config(state_dir),
        Command::Serve {
            listen,
            boot_config,
            state_dir,
            insecure_http,
            tls_cert,
            tls_key,
            client_ca,
            limits,
            daemons,
        } => {
            let tls = match (tls_cert, tls_key, client_ca) {
                (Some(cert), Some(key), Some(client_ca)) => Some(TlsFiles {
                    cert,
                    key,
                    client_ca,
                }),
                _ => None,
            };
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
            match runtime.block_on(serve(
                listen,
                boot_config,
                state_dir,
                insecure_http,
                tls,
                limits.into(),
                daemons.into(),
            )) {
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

fn saved_config(state_dir: PathBuf) -> ExitCode {
    match akanda_agent::store::StateDir::existing(state_dir.clone()).load_config() {
        Ok(Some(bytes)) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            match out.write_all(&bytes).and_then(|()| out.write_all(b"\n")) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::from(2),
            }
        }
        Ok(None) => {
            eprintln!("{}: no config saved", state_dir.display());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{}: {e}", state_dir.display());
            ExitCode::from(2)
        }
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
    tls: Option<TlsFiles>,
    limits: server::ConnectionLimits,
    daemons: akanda_agent::appliance::Daemons,
) -> anyhow::Result<()> {
    if tls.is_none() && boot_config.is_none() && !insecure_http {
        anyhow::bail!(
            "no TLS material: give --tls-cert, --tls-key and --client-ca, or --insecure-http to serve plain HTTP (labs only)"
        );
    }
    let state = StateDir::open(&state_dir)
        .with_context(|| format!("state directory {}", state_dir.display()))?;
    akanda_agent::failpoint::announce();
    // The agent lives in one network namespace: one nfnetlink socket for all its batches.
    akanda_agent::firewall::netfilter::keep_one_socket();
    // Names the NICs and stops the daemons an earlier agent left when it was killed; turns
    // nothing on.
    let mut appliance = Appliance::open(state, daemons)
        .await
        .context("opening the appliance")?;
    // The boot configuration is read now (it gives the API's port), and applied once the
    // bootstrap ruleset is in place.
    let wanted = match &boot_config {
        Some(source) => Some(read_boot_config(source).await?),
        None => None,
    };
    let api_port = match (listen, &wanted) {
        (Some(listen), _) => listen.port(),
        (None, Some(wanted)) => wanted.port,
        (None, None) => unreachable!("clap requires --listen or --boot-config"),
    };
    appliance.set_api_port(api_port);
    // Bootstrap first, on every start path: the ruleset is in place before any socket
    // listens (the API, the metadata proxies) and before forwarding is turned on. Without it
    // the agent does not serve.
    appliance
        .bootstrap()
        .map_err(anyhow::Error::msg)
        .context("the bootstrap ruleset could not be installed: not serving")?;
    // After the NICs are named (a rename would set the link down and drop its addresses),
    // before the saved config is restored.
    let boot = match wanted {
        Some(wanted) => Some((
            configure_boot_network(&wanted, listen.is_none()).await?,
            wanted,
        )),
        None => None,
    };
    // Who may use the API: the command line's TLS files, else the config drive's, else plain
    // HTTP where the operator allowed it, else nobody may change the config.
    let (tls, access) = match (tls, boot.as_ref()) {
        (Some(files), _) => (Some(files), Access::MutualTls),
        (None, Some((_, wanted))) if wanted.user_data.as_ref().is_some_and(|u| u.tls.is_some()) => {
            let material = wanted
                .user_data
                .as_ref()
                .and_then(|u| u.tls.as_ref())
                .expect("checked");
            let files = tls_from_boot(&state_dir, material)
                .context("writing the config drive's TLS material to the state directory")?;
            (Some(files), Access::MutualTls)
        }
        (None, boot) => {
            let meta_allows = boot.is_some_and(|(_, w)| w.insecure_http);
            if insecure_http || meta_allows {
                let by = if insecure_http {
                    "--insecure-http"
                } else {
                    "meta.akanda_insecure_http=true"
                };
                tracing::warn!(
                    allowed_by = by,
                    "serving PLAIN HTTP: anyone on the management network can reconfigure this router (labs only; see docs/tls.md)"
                );
                (None, Access::PlainHttp)
            } else {
                let why = "the config drive carries no TLS material".to_string();
                tracing::error!(
                    "no TLS material and plain HTTP not allowed (meta.akanda_insecure_http or --insecure-http): serving plain HTTP READ-ONLY, config changes are refused"
                );
                (None, Access::ReadOnly { why })
            }
        }
    };
    let tls_state = match tls {
        Some(files) => {
            let state = TlsState::load(files.clone())
                .with_context(|| format!("loading the TLS material ({})", files.cert.display()))?;
            state.watch(std::time::Duration::from_secs(1));
            Some(state)
        }
        None => None,
    };
    let management = match (boot.as_ref(), listen) {
        (Some((network, wanted)), _) => Some(ManagementPath {
            ifname: network.ifname.clone(),
            addresses: wanted.addresses.clone(),
            mtu: wanted.mtu,
            routes: wanted.routes.iter().map(|(dst, _)| *dst).collect(),
        }),
        // Without a boot configuration, the address the API serves on is the path to keep.
        (None, Some(listen)) => appliance
            .management_path_of(listen.ip())
            .await
            .with_context(|| format!("finding the NIC of {listen}"))?,
        (None, None) => None,
    };
    if let Some(path) = &management {
        tracing::info!(nic = %path.ifname, addresses = ?path.addresses, "the orchestrator's path a config may not cut");
    }
    appliance.set_management_path(management.clone());
    let boot = boot.map(|(network, _)| network);
    // The last good config is back in the kernel before the API answers.
    let restored = appliance.restore().await;
    match &restored {
        Ok(true) => tracing::info!("last good config re-applied"),
        Ok(false) => tracing::info!("no saved config: waiting for the first push"),
        Err(e) => tracing::error!(error = %e, "the saved config could not be re-applied"),
    }
    if !matches!(restored, Ok(true)) {
        appliance
            .keep_bootstrap()
            .map_err(anyhow::Error::msg)
            .context("the bootstrap ruleset could not be kept in force: not serving")?;
    }
    let shared = appliance.shared.clone();
    let interfaces = appliance
        .interface_reader()
        .context("opening the interface reader")?;
    let appliance = Arc::new(tokio::sync::Mutex::new(appliance));
    let scheme = if tls_state.is_some() { "https" } else { "http" };
    let routes = api::routes(Arc::new(
        ApiState::new(appliance.clone(), shared, interfaces, access)
            .with_tls(tls_state.clone())
            .with_body_timeout(limits.body_timeout)
            .with_management(management),
    ));
    match (listen, boot) {
        // With --boot-config too, `_boot` keeps the DHCP client (if any) running.
        (Some(listen), _boot) => {
            let listener =
                server::bind(listen).with_context(|| format!("listening on {listen}"))?;
            tracing::info!(%listen, scheme, version = env!("CARGO_PKG_VERSION"), "serving the API");
            server::serve(listener, routes, shutdown_signal(), tls_state, limits).await;
        }
        (None, Some(mut boot)) => {
            tracing::info!(listen = ?boot.listen, scheme, version = env!("CARGO_PKG_VERSION"), "serving the API");
            // One accept loop per management address; a signal stops them all.
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = stop.send(true);
            });
            let loops = boot.listeners.drain(..).map(|listener| {
                let mut stopped = stopped.clone();
                server::serve(
                    listener,
                    routes.clone(),
                    async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    },
                    tls_state.clone(),
                    limits,
                )
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

/// Writes the config drive's TLS material to `STATE_DIR/tls/` (directory 0700, files 0600)
/// and returns the files to serve from. The files are rewritten only when the drive's
/// material differs from what was last written from it, so a certificate rotated in place
/// (new files + SIGHUP) survives a reboot.
fn tls_from_boot(
    state_dir: &std::path::Path,
    material: &akanda_agent::bootconfig::BootTls,
) -> anyhow::Result<TlsFiles> {
    use sha2::Digest;
    use std::os::unix::fs::DirBuilderExt;
    let dir = state_dir.join("tls");
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| dir.display().to_string())?;
    }
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: dir.join("client-ca.pem"),
    };
    let mut h = sha2::Sha256::new();
    for part in [
        &material.server_cert,
        &material.server_key,
        &material.ca_cert,
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let drive_hash = hex::encode(h.finalize());
    let marker = dir.join("from-config-drive.sha256");
    let unchanged = std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == drive_hash)
        && [&files.cert, &files.key, &files.client_ca]
            .iter()
            .all(|f| f.exists());
    if unchanged {
        tracing::info!(dir = %dir.display(), "TLS material: the config drive's is unchanged, serving the files in the state directory");
    } else {
        // The marker last: present only when the three files before it are whole.
        akanda_agent::store::write_all_then(
            &[
                (&files.cert, material.server_cert.as_bytes()),
                (&files.key, material.server_key.as_bytes()),
                (&files.client_ca, material.ca_cert.as_bytes()),
            ],
            (&marker, drive_hash.as_bytes()),
            0o600,
        )
        .with_context(|| format!("writing the TLS material to {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), "TLS material from the config drive written (0600)");
    }
    Ok(files)
}

/// Reads the boot configuration (`--boot-config`): nothing is configured yet.
async fn read_boot_config(
    source: &akanda_agent::bootconfig::Source,
) -> anyhow::Result<akanda_agent::bootconfig::Management> {
    let source = source.clone();
    // Probing block devices and mounting are blocking calls.
    let wanted = tokio::task::spawn_blocking(move || {
        akanda_agent::bootconfig::read_source(&source, std::time::Duration::from_secs(20))
    })
    .await
    .context("reading the boot configuration")??;
    Ok(wanted)
}

/// Configures the management NIC from the boot configuration, and opens the API's
/// listeners unless `--listen` was given.
async fn configure_boot_network(
    wanted: &akanda_agent::bootconfig::Management,
    listen: bool,
) -> anyhow::Result<akanda_agent::bootconfig::BootNetwork> {
    let nl = akanda_agent::netlink::Netlink::connect().context("netlink")?;
    akanda_agent::bootconfig::configure(&nl, wanted, listen)
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
