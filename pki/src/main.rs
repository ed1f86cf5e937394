//! `akanda-pki`: the operator's tool for Akanda's mutual TLS.
//!
//! ```text
//! akanda-pki init [--dir DIR] [--name NAME] [--days 3650]          # DIR/ca.pem, DIR/ca.key (0600)
//! akanda-pki issue-server NAME --san ADDR_OR_DNS... [--dir DIR] [--days 30] [--out PREFIX]
//! akanda-pki issue-client NAME [--dir DIR] [--days 365] [--out PREFIX]
//! akanda-pki show FILE...
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use akanda_pki::{
    describe, write_private, write_public, Ca, San, Validity, CA_CERT, CA_KEY, DEFAULT_CA_DAYS,
    DEFAULT_CLIENT_DAYS, DEFAULT_SERVER_DAYS,
};
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "akanda-pki",
    version,
    about = "Certificates for Akanda's mutual TLS (CA, appliance server certificates, client certificates)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a CA: DIR/ca.pem and DIR/ca.key (mode 0600). Refuses to overwrite one.
    Init {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value = "Akanda CA")]
        name: String,
        #[arg(long, default_value_t = DEFAULT_CA_DAYS)]
        days: i64,
        /// Replace an existing CA (every certificate it issued stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue a server certificate (serverAuth) naming an appliance: PREFIX.pem, PREFIX.key.
    IssueServer {
        /// The certificate's common name, e.g. `akanda router <router id>`.
        name: String,
        /// A subject alternative name: an IP address (the management address) or a DNS name
        /// (`<router id>.router.akanda`). Repeat for several; at least one.
        #[arg(long = "san", required = true)]
        sans: Vec<String>,
        /// The router id: adds the DNS SAN `<router id>.router.akanda` that rug-lite checks.
        #[arg(long)]
        router_id: Option<String>,
        /// The CA's directory (ca.pem, ca.key).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value_t = DEFAULT_SERVER_DAYS)]
        days: i64,
        /// Output prefix; default: the name with unsafe characters replaced.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Issue a client certificate (clientAuth), e.g. for rug-lite: PREFIX.pem, PREFIX.key.
    IssueClient {
        name: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value_t = DEFAULT_CLIENT_DAYS)]
        days: i64,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print subject, issuer, SANs, usages and expiry of each certificate in each file.
    Show {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("akanda-pki: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn prefix(out: Option<PathBuf>, dir: &Path, name: &str) -> PathBuf {
    out.unwrap_or_else(|| {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        dir.join(safe)
    })
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(ext);
    PathBuf::from(s)
}

fn save(prefix: &Path, issued: &akanda_pki::Issued) -> anyhow::Result<()> {
    let (cert, key) = (with_ext(prefix, ".pem"), with_ext(prefix, ".key"));
    write_public(&cert, issued.cert_pem.as_bytes())?;
    write_private(&key, issued.key_pem.as_bytes())?;
    println!("wrote {} and {} (0600)", cert.display(), key.display());
    print!(
        "{}",
        describe(&issued.cert_pem, &cert.display().to_string())?[0]
    );
    println!();
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            dir,
            name,
            days,
            force,
        } => {
            let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
            if !force && (cert.exists() || key.exists()) {
                bail!(
                    "{} already holds a CA: pass --force to replace it",
                    dir.display()
                );
            }
            std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
            let (ca, key_pem) = Ca::generate(&name, Validity::days(days))?;
            write_private(&key, key_pem.as_bytes())?;
            write_public(&cert, ca.cert_pem().as_bytes())?;
            println!("wrote {} and {} (0600)", cert.display(), key.display());
            print!("{}", describe(ca.cert_pem(), "ca")?[0]);
            println!();
        }
        Command::IssueServer {
            name,
            sans,
            router_id,
            dir,
            days,
            out,
        } => {
            let ca = Ca::load(&dir)?;
            let mut sans = sans
                .iter()
                .map(|s| s.parse::<San>())
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(id) = router_id {
                sans.push(San::Dns(akanda_pki::router_dns_name(&id)));
            }
            let issued = ca.issue_server(&name, &sans, Validity::days(days))?;
            save(&prefix(out, &dir, &name), &issued)?;
        }
        Command::IssueClient {
            name,
            dir,
            days,
            out,
        } => {
            let ca = Ca::load(&dir)?;
            let issued = ca.issue_client(&name, Validity::days(days))?;
            save(&prefix(out, &dir, &name), &issued)?;
        }
        Command::Show { files } => {
            for (i, f) in files.iter().enumerate() {
                let text = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
                for (j, info) in describe(&text, &f.display().to_string())?
                    .iter()
                    .enumerate()
                {
                    if i + j > 0 {
                        println!();
                    }
                    println!("{}:", f.display());
                    println!("{info}");
                }
            }
        }
    }
    Ok(())
}
