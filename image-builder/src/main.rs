use std::path::PathBuf;
use std::process::ExitCode;

use akanda_image_builder::build::{self, BuildOptions, Format};
use akanda_image_builder::{elements, locate, upload, verify};
use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "akanda-image",
    version,
    about = "Build, verify and upload the Akanda Service Instance image"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the router image (Debian by debootstrap, the agent from this workspace).
    Build {
        /// Output file.
        #[arg(short, long, default_value = "akanda-router.qcow2")]
        output: PathBuf,
        #[arg(long, value_enum, default_value_t = FormatArg::Qcow2)]
        format: FormatArg,
        /// Extra element to include (repeatable), on top of `akanda-router`.
        #[arg(long = "element")]
        elements: Vec<String>,
        /// Build only the given --element list, without the default `akanda-router`.
        #[arg(long)]
        no_default: bool,
        /// Directory of elements, searched first (repeatable). Then come $AKANDA_ELEMENTS_PATH
        /// (colon-separated) and the shipped elements: PREFIX/share/akanda-image/elements for
        /// PREFIX/bin/akanda-image, or the checkout's elements/ for target/PROFILE/akanda-image.
        #[arg(long = "elements-path")]
        elements_paths: Vec<PathBuf>,
        /// Debian release.
        #[arg(long, default_value = "bookworm")]
        release: String,
        /// Debian mirror.
        #[arg(long, default_value = "http://deb.debian.org/debian")]
        mirror: String,
        /// Cache of debootstrap bases and .deb files; work directories go here too.
        #[arg(long, default_value = "/var/cache/akanda-image")]
        cache_dir: PathBuf,
        /// The agent binary to install. Default: the akanda-agent beside this akanda-image
        /// (target/release/ after `cargo build --release`, or the install prefix).
        #[arg(long)]
        agent_bin: Option<PathBuf>,
        /// Minimum size of the root filesystem, MiB.
        #[arg(long, default_value_t = 1024)]
        root_size: u64,
        /// Keep the work directory (root tree, raw disk, build log) after a successful build.
        #[arg(long)]
        keep_work: bool,
    },
    /// List the elements found, with their dependencies and description.
    ListElements {
        /// Directory of elements, searched before the shipped ones (repeatable).
        #[arg(long = "elements-path")]
        elements_paths: Vec<PathBuf>,
    },
    /// Boot the image under QEMU (TCG) with its NICs in network namespaces and check that the
    /// agent answers, applies a config and routes. Exit 0 if it works, 1 if not.
    Verify(verify::VerifyOptions),
    /// Upload the image to Glance (Keystone auth from clouds.yaml or OS_* variables).
    Upload(upload::UploadOptions),
}

/// `--format`: clap's side of [`Format`], which the library keeps free of CLI types.
#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Qcow2,
    Raw,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Qcow2 => Format::Qcow2,
            FormatArg::Raw => Format::Raw,
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build {
            output,
            format,
            elements,
            no_default,
            elements_paths,
            release,
            mirror,
            cache_dir,
            agent_bin,
            root_size,
            keep_work,
        } => run_build(BuildOptions {
            output,
            format: format.into(),
            elements,
            no_default,
            elements_paths,
            release,
            mirror,
            cache_dir,
            agent_bin,
            min_root_mib: root_size,
            keep_work,
        }),
        Command::ListElements { elements_paths } => list_elements(&elements_paths),
        Command::Verify(opts) => match verify::verify(&opts) {
            Ok(report) => {
                println!("{report}");
                Ok(())
            }
            Err(e) => Err(anyhow::Error::new(e)),
        },
        Command::Upload(opts) => upload::upload(&opts)
            .map(|image| println!("{image}"))
            .map_err(anyhow::Error::new),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("akanda-image: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_build(opts: BuildOptions) -> anyhow::Result<()> {
    let report = build::build(&opts)?;
    eprint!("{}", report.timings);
    println!(
        "built {} ({:.1} MiB, {} base) from elements: {}\nmanifest: {}",
        report.output.display(),
        report.bytes as f64 / (1 << 20) as f64,
        if report.base_from_cache {
            "cached"
        } else {
            "fresh"
        },
        report.elements.join(" "),
        report.manifest.display()
    );
    Ok(())
}

fn list_elements(extra: &[PathBuf]) -> anyhow::Result<()> {
    let paths = locate::elements_path(extra);
    let all = elements::discover(&paths).context("reading the elements path")?;
    for e in all.values() {
        let deps = if e.deps.is_empty() {
            "-".to_string()
        } else {
            e.deps.join(",")
        };
        println!("{:<18} deps: {:<40} {}", e.name, deps, e.description);
        println!("{:<18} from {}", "", e.dir.display());
    }
    Ok(())
}
