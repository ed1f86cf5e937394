//! `akanda-image build`: elements → root tree → disk image.
//!
//! [`build`] runs a preflight (root, host tools, elements, free space, a work directory), then
//! the `pipeline`: a list of named `Step`s over one `Ctx`. Each step is a few lines that
//! call into the modules doing the work: `locate` (the agent), `base` (the cached `root.d`
//! tree), `phases` (element scripts), `tree` (copy, tidy, manifest), [`crate::disk`].

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::disk::{self, DiskError, Ids};
use crate::elements::{self, Element, ElementError, Where, PHASES};
use crate::phases::{ChrootSetup, ScriptEnv};
use crate::progress::Progress;
use crate::tools::{self, ToolError};
use crate::{base, locate, tree};

/// The element a default build starts from.
pub(crate) const DEFAULT_ELEMENT: &str = "akanda-router";
/// Free space a build needs in its cache/work directory: the base (~450 MiB), its working
/// copy, the raw disk (sparse, ~400 MiB written) and slack.
const NEEDED_WORK_BYTES: u64 = 2 << 30;

/// The output image's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Qcow2,
    Raw,
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub output: PathBuf,
    pub format: Format,
    /// Elements to build, on top of [`DEFAULT_ELEMENT`] unless `no_default` is set.
    pub elements: Vec<String>,
    pub no_default: bool,
    /// Searched in order, before `$AKANDA_ELEMENTS_PATH` and the shipped elements
    /// ([`locate::elements_path`]).
    pub elements_paths: Vec<PathBuf>,
    pub release: String,
    pub mirror: String,
    pub cache_dir: PathBuf,
    /// The agent binary; otherwise the `akanda-agent` beside this executable ([`default_agent_bin`]).
    pub agent_bin: Option<PathBuf>,
    pub min_root_mib: u64,
    pub keep_work: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("akanda-image build must run as root: debootstrap and chroot need it")]
    NotRoot,
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Element(#[from] ElementError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(
        "cannot reach the Debian mirror: {url}: {reason}\n\
         Check the network, or pass --mirror URL with a reachable mirror (or a local apt cache)"
    )]
    MirrorUnreachable { url: String, reason: String },
    #[error(
        "disk full: {dir} has {free_mib} MiB free, a build needs about {need_mib} MiB.\n\
         Free some space, or pass --cache-dir DIR on a larger filesystem"
    )]
    DiskFull {
        dir: String,
        free_mib: u64,
        need_mib: u64,
    },
    #[error("{0}")]
    Script(Box<ScriptFailure>),
    #[error("building the agent (cargo build --release -p akanda-agent) failed:\n{0}")]
    Agent(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// An element script that failed: boxed in [`BuildError`] to keep the error small.
#[derive(Debug, thiserror::Error)]
#[error(
    "element {element}: {phase}/{script} failed ({status}). Last lines of its output:\n\
     {tail}\nFull build log: {log}"
)]
pub struct ScriptFailure {
    pub(crate) element: String,
    pub(crate) phase: String,
    pub(crate) script: String,
    pub(crate) status: String,
    pub(crate) tail: String,
    pub(crate) log: String,
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// What a finished build reports.
#[derive(Debug)]
pub struct BuildReport {
    pub output: PathBuf,
    pub bytes: u64,
    pub manifest: PathBuf,
    pub base_from_cache: bool,
    pub timings: String,
    pub elements: Vec<String>,
}

/// `SOURCE_DATE_EPOCH`, when set and valid.
pub(crate) fn source_date_epoch() -> Option<u64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok()
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

fn check_space(dir: &Path, need: u64) -> Result<(), BuildError> {
    match free_bytes(dir) {
        Some(free) if free < need => Err(BuildError::DiskFull {
            dir: dir.display().to_string(),
            free_mib: free >> 20,
            need_mib: need >> 20,
        }),
        _ => Ok(()),
    }
}

/// Turns a failure into "disk full" when the filesystem is what ran out.
fn explain_space(err: BuildError, dir: &Path) -> BuildError {
    let text = err.to_string();
    let low = free_bytes(dir).is_some_and(|f| f < 64 << 20);
    if low || text.contains("No space left on device") {
        return BuildError::DiskFull {
            dir: dir.display().to_string(),
            free_mib: free_bytes(dir).unwrap_or(0) >> 20,
            need_mib: NEEDED_WORK_BYTES >> 20,
        };
    }
    err
}

/// The agent binary to put in the image when `--agent-bin` is not given: the `akanda-agent`
/// beside this `akanda-image` executable ([`locate::agent_beside`]).
pub(crate) fn default_agent_bin() -> Result<PathBuf, BuildError> {
    let exe = std::env::current_exe()
        .map_err(|e| BuildError::Agent(format!("cannot find akanda-image's own path: {e}")))?;
    let bin = locate::agent_beside(&exe)
        .ok_or_else(|| BuildError::Agent(format!("{} has no directory", exe.display())))?;
    if !bin.is_file() {
        return Err(BuildError::Agent(format!(
            "no agent binary at {}: build it with `cargo build --release` (which builds \
             akanda-image and akanda-agent side by side), or give one with --agent-bin",
            bin.display()
        )));
    }
    Ok(bin)
}

/// What the steps share: the inputs, the build log and progress line, and what earlier steps
/// produced.
struct Ctx<'a> {
    opts: &'a BuildOptions,
    elements: &'a [Element],
    work: &'a Path,
    progress: &'a mut Progress,
    log: &'a mut File,
    /// The elements' script environment; the agent step fills in `agent_bin`.
    env: ScriptEnv<'a>,
    /// The base tree's cache key (hash of its inputs).
    base_key: String,
    base_from_cache: bool,
    /// Bytes the root tree uses, to size the root partition.
    tree_bytes: u64,
    manifest: PathBuf,
    /// The output's size on disk.
    bytes: u64,
}

impl Ctx<'_> {
    fn root(&self) -> PathBuf {
        self.work.join("rootfs")
    }

    fn raw_disk(&self) -> PathBuf {
        self.work.join("disk.raw")
    }
}

/// One named step of the build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Find the agent binary that goes into the image.
    Agent,
    /// The `root.d` tree (debootstrap): from the cache, else built and cached.
    Base,
    /// A working copy of the base, with the elements' files under `/tmp/in_target.d`.
    CopyBase,
    /// One element phase after `root.d`, in [`PHASES`] order.
    Phase(&'static str, Where),
    /// Per-build leftovers removed, the manifest written, times clamped.
    TidyAndManifest,
    /// GPT, ext4, ESP and GRUB into a raw disk ([`crate::disk`]).
    Disk,
    /// The output file, in its format.
    Convert,
}

/// The build after preflight, in order.
pub(crate) fn pipeline() -> Vec<Step> {
    let mut steps = vec![Step::Agent, Step::Base, Step::CopyBase];
    // root.d is the base's; the other phases run on its copy.
    steps.extend(
        PHASES
            .iter()
            .filter(|(phase, _)| *phase != "root.d")
            .map(|&(phase, place)| Step::Phase(phase, place)),
    );
    steps.extend([Step::TidyAndManifest, Step::Disk, Step::Convert]);
    steps
}

impl Step {
    /// The name on the progress line and in the timings.
    fn label(self, ctx: &Ctx) -> String {
        match self {
            Step::Agent => "agent".into(),
            Step::Base if base::is_cached(&ctx.opts.cache_dir, &ctx.base_key) => {
                "base (cached)".into()
            }
            Step::Base => "base (root.d: debootstrap)".into(),
            Step::CopyBase => "copy base".into(),
            Step::Phase(phase, _) => phase.trim_end_matches(".d").into(),
            Step::TidyAndManifest => "tidy + manifest".into(),
            Step::Disk => "disk (GPT, ext4, ESP, GRUB)".into(),
            Step::Convert => match ctx.opts.format {
                Format::Qcow2 => "qcow2 (compress)".into(),
                Format::Raw => "raw".into(),
            },
        }
    }

    fn run(self, ctx: &mut Ctx) -> Result<(), BuildError> {
        match self {
            Step::Agent => {
                ctx.env.agent_bin = match &ctx.opts.agent_bin {
                    Some(p) if !p.is_file() => {
                        return Err(BuildError::Agent(format!("{} is not a file", p.display())))
                    }
                    Some(p) => p.clone(),
                    None => default_agent_bin()?,
                };
                ctx.progress
                    .println(&format!("agent: {}", ctx.env.agent_bin.display()));
            }
            Step::Base => {
                ctx.base_from_cache =
                    base::ensure(&ctx.env, ctx.opts, &ctx.base_key, ctx.progress, ctx.log)?;
            }
            Step::CopyBase => {
                let root = ctx.root();
                let cached = base::dir(&ctx.opts.cache_dir, &ctx.base_key);
                tree::copy_tree(&cached.join("rootfs"), &root)?;
                // Element files are reachable inside the chroot under
                // /tmp/in_target.d/elements.
                let hooks = root.join("tmp/in_target.d/elements");
                fs::create_dir_all(&hooks).map_err(io("create in_target.d"))?;
                for e in ctx.elements {
                    tree::copy_tree(&e.dir, &hooks.join(&e.name))?;
                }
            }
            Step::Phase(phase, place) => {
                let root = ctx.root();
                if phase == "cleanup.d" {
                    // Build-time files leave the tree before cleanup.d, as in
                    // diskimage-builder.
                    let _ = fs::remove_dir_all(root.join("tmp/in_target.d"));
                }
                let guard = match place {
                    Where::Chroot => Some(ChrootSetup::enter(&root)?),
                    Where::Outside => None,
                };
                let ran = ctx
                    .env
                    .run_phase(phase, place, &root, ctx.progress, ctx.log);
                if let Some(g) = guard {
                    g.leave()?;
                }
                ran?;
            }
            Step::TidyAndManifest => {
                let root = ctx.root();
                tree::tidy(&root)?;
                ctx.manifest = PathBuf::from(format!("{}.manifest", ctx.opts.output.display()));
                ctx.tree_bytes = tree::write_manifest(&root, &ctx.manifest)?;
                if let Some(epoch) = ctx.env.epoch {
                    // After the manifest, which reads every file and so moves access times.
                    tree::clamp_mtimes(&root, epoch as i64)?;
                }
            }
            Step::Disk => {
                let ids = match ctx.env.epoch {
                    Some(e) => Ids::derived(&format!("{e} {} {}", ctx.base_key, ctx.env.packages)),
                    None => Ids::random(),
                };
                let root = ctx.root();
                let root_mib = disk::root_mib(ctx.tree_bytes, ctx.opts.min_root_mib);
                disk::assemble(
                    &root,
                    &ctx.raw_disk(),
                    ctx.work,
                    &ids,
                    root_mib,
                    ctx.env.epoch,
                )?;
                // The tree is no longer needed: free its space before the conversion writes
                // the output.
                let _ = fs::remove_dir_all(&root);
            }
            Step::Convert => {
                let (raw, output) = (ctx.raw_disk(), &ctx.opts.output);
                match ctx.opts.format {
                    Format::Qcow2 => disk::convert(&raw, output, true)?,
                    Format::Raw => {
                        if fs::rename(&raw, output).is_err() {
                            disk::convert(&raw, output, false)?;
                        }
                    }
                }
                ctx.bytes = fs::metadata(output)
                    .map_err(io(format!("stat {}", output.display())))?
                    .blocks()
                    * 512;
            }
        }
        Ok(())
    }
}

/// What preflight settles before any step runs.
struct Preflight {
    elements: Vec<Element>,
    packages: BTreeSet<String>,
    work: tempfile::TempDir,
    log_path: PathBuf,
}

/// Root, host tools, the elements and their packages, free space, and a work directory with
/// its build log.
fn preflight(opts: &BuildOptions, progress: &Progress) -> Result<Preflight, BuildError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BuildError::NotRoot);
    }
    tools::check(tools::BUILD_TOOLS, tools::BUILD_FILES)?;
    let paths = locate::elements_path(&opts.elements_paths);
    let all = elements::discover(&paths)?;
    let mut requested = Vec::new();
    if !opts.no_default {
        requested.push(DEFAULT_ELEMENT.to_string());
    }
    requested.extend(opts.elements.iter().cloned());
    let elements = elements::resolve(&all, &requested, &paths)?;
    let mut packages = BTreeSet::new();
    for e in &elements {
        packages.extend(e.packages()?);
    }
    fs::create_dir_all(&opts.cache_dir)
        .map_err(io(format!("create {}", opts.cache_dir.display())))?;
    fs::create_dir_all(opts.cache_dir.join("debs")).map_err(io("create the .deb cache"))?;
    check_space(&opts.cache_dir, NEEDED_WORK_BYTES)?;
    let out_dir = match opts.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    check_space(&out_dir, 256 << 20)?;
    let work = tempfile::Builder::new()
        .prefix("work-")
        .tempdir_in(&opts.cache_dir)
        .map_err(io("create the work directory"))?;
    let log_path = work.path().join("build.log");
    progress.println(&format!(
        "elements: {}",
        elements
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    Ok(Preflight {
        elements,
        packages,
        work,
        log_path,
    })
}

pub fn build(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let mut progress = Progress::new();
    progress.phase("preflight");
    let pre = preflight(opts, &progress)?;
    let mut log = File::create(&pre.log_path).map_err(io("create the build log"))?;
    let result = run_pipeline(opts, &pre, &mut log, &mut progress)
        .map_err(|e| explain_space(e, &opts.cache_dir));
    let work = pre.work;
    if opts.keep_work {
        let kept = work.keep();
        progress.println(&format!("work directory kept: {}", kept.display()));
    } else if result.is_err() {
        // Keep the build log for a post-mortem, not the tree and disk (hundreds of MiB).
        for big in ["rootfs", "disk.raw"] {
            let p = work.path().join(big);
            let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
        }
        let _ = work.keep();
    }
    let (bytes, manifest, base_from_cache) = result?;
    Ok(BuildReport {
        output: opts.output.clone(),
        bytes,
        manifest,
        base_from_cache,
        timings: progress.summary(),
        elements: pre.elements.iter().map(|e| e.name.clone()).collect(),
    })
}

/// Runs every step of [`pipeline`]; returns the output's size, the manifest and whether the
/// base came from the cache.
fn run_pipeline(
    opts: &BuildOptions,
    pre: &Preflight,
    log: &mut File,
    progress: &mut Progress,
) -> Result<(u64, PathBuf, bool), BuildError> {
    let mut ctx = Ctx {
        opts,
        elements: &pre.elements,
        work: pre.work.path(),
        progress,
        log,
        env: ScriptEnv {
            opts,
            elements: &pre.elements,
            packages: pre.packages.iter().cloned().collect::<Vec<_>>().join(" "),
            agent_bin: PathBuf::new(),
            epoch: source_date_epoch(),
            log_path: pre.log_path.clone(),
        },
        base_key: base::base_cache_key(&opts.release, &opts.mirror, &pre.packages, &pre.elements)?,
        base_from_cache: false,
        tree_bytes: 0,
        manifest: PathBuf::new(),
        bytes: 0,
    };
    for step in pipeline() {
        let label = step.label(&ctx);
        ctx.progress.phase(&label);
        tracing::debug!(?step, "build step");
        step.run(&mut ctx)?;
    }
    Ok((ctx.bytes, ctx.manifest, ctx.base_from_cache))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_runs_the_phases_after_root_d_in_order() {
        let steps = pipeline();
        assert_eq!(steps[..3], [Step::Agent, Step::Base, Step::CopyBase]);
        let phases: Vec<&str> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Phase(p, _) => Some(*p),
                _ => None,
            })
            .collect();
        assert_eq!(
            phases,
            [
                "extra-data.d",
                "pre-install.d",
                "install.d",
                "post-install.d",
                "post-root.d",
                "finalise.d",
                "cleanup.d"
            ]
        );
        assert_eq!(
            steps[steps.len() - 3..],
            [Step::TidyAndManifest, Step::Disk, Step::Convert]
        );
    }
}
