//! `akanda-image build`: elements → root tree → disk image.
//!
//! Steps: preflight (root, host tools, elements, free space) → the agent binary → the base
//! tree (`root.d`, cached by its inputs) → the other phases in order → tidy (logs, caches,
//! machine-id, timestamps) → disk assembly ([`crate::disk`]) → conversion.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::disk::{self, DiskError, Ids};
use crate::elements::{self, Element, ElementError, Where, PHASES};
use crate::progress::Progress;
use crate::tools::{self, cmd, ToolError};

/// The element a default build starts from.
pub const DEFAULT_ELEMENT: &str = "akanda-router";
/// Bumped when the way the base is built changes in the builder itself, so old caches are
/// not reused.
const BASE_CACHE_VERSION: &str = "akanda-image base v1";
/// Free space a build needs in its cache/work directory: the base (~450 MiB), its working
/// copy, the raw disk (sparse, ~400 MiB written) and slack.
const NEEDED_WORK_BYTES: u64 = 2 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
    /// Searched in order, before the default elements directory.
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
    pub element: String,
    pub phase: String,
    pub script: String,
    pub status: String,
    pub tail: String,
    pub log: String,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
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

/// The directory of the elements shipped with this workspace.
pub fn default_elements_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../elements")
}

/// The elements path: `--elements-path` entries first, then `AKANDA_ELEMENTS_PATH`
/// (colon-separated), then the shipped elements.
pub fn elements_path(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = extra.to_vec();
    if let Some(env) = std::env::var_os("AKANDA_ELEMENTS_PATH") {
        out.extend(std::env::split_paths(&env).filter(|p| !p.as_os_str().is_empty()));
    }
    let shipped = default_elements_dir();
    out.push(shipped.canonicalize().unwrap_or(shipped));
    out
}

/// `SOURCE_DATE_EPOCH`, when set and valid.
pub fn source_date_epoch() -> Option<u64> {
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

/// Inputs of the base tree: what `root.d` produces depends on nothing else.
pub fn base_cache_key(
    release: &str,
    mirror: &str,
    packages: &BTreeSet<String>,
    elements: &[Element],
) -> Result<String, BuildError> {
    let mut h = Sha256::new();
    h.update(BASE_CACHE_VERSION.as_bytes());
    for part in [release, mirror] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for p in packages {
        h.update(p.as_bytes());
        h.update([0]);
    }
    for e in elements {
        let mut files = e.scripts("root.d")?;
        files.extend(e.environment()?);
        for f in files {
            h.update(
                f.strip_prefix(&e.dir)
                    .unwrap_or(&f)
                    .as_os_str()
                    .as_encoded_bytes(),
            );
            h.update([0]);
            h.update(fs::read(&f).map_err(io(format!("read {}", f.display())))?);
            h.update([0]);
        }
    }
    Ok(hex::encode(&h.finalize()[..12]))
}

/// Checks that the mirror serves the release, so an unreachable mirror fails in seconds
/// with a clear message rather than deep inside debootstrap.
fn check_mirror(mirror: &str, release: &str) -> Result<(), BuildError> {
    let url = format!("{}/dists/{release}/InRelease", mirror.trim_end_matches('/'));
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| BuildError::MirrorUnreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    match client.head(&url).send() {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(BuildError::MirrorUnreachable {
            url,
            reason: format!(
                "HTTP {} (is {release:?} a release this mirror carries?)",
                r.status()
            ),
        }),
        Err(e) => Err(BuildError::MirrorUnreachable {
            url,
            reason: {
                let mut s = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(inner) = src {
                    s.push_str(": ");
                    s.push_str(&inner.to_string());
                    src = inner.source();
                }
                s
            },
        }),
    }
}

/// The agent binary to put in the image when `--agent-bin` is not given: the `akanda-agent`
/// beside this `akanda-image` executable. That is `target/release/akanda-agent` after
/// `cargo build --release` (the README's main job builds both at once, so the agent is
/// compiled once), or `/usr/bin/akanda-agent` where both are installed.
pub fn default_agent_bin() -> Result<PathBuf, BuildError> {
    let exe = std::env::current_exe()
        .map_err(|e| BuildError::Agent(format!("cannot find akanda-image's own path: {e}")))?;
    let bin = exe
        .parent()
        .map(|dir| dir.join("akanda-agent"))
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

/// Runs a command with stdout and stderr merged: every line goes to the build log, and to
/// the progress line when `show` says so. Returns the exit status and the last 25 lines.
fn stream(
    c: &mut Command,
    progress: &Progress,
    log: &mut File,
    mut show: impl FnMut(&str) -> bool,
) -> Result<(std::process::ExitStatus, String), BuildError> {
    let program = c.get_program().to_string_lossy().into_owned();
    let (reader, writer) = std::io::pipe().map_err(io("create a pipe"))?;
    let writer2 = writer.try_clone().map_err(io("clone a pipe"))?;
    c.stdin(Stdio::null()).stdout(writer).stderr(writer2);
    let mut child = c.spawn().map_err(|source| {
        BuildError::Tool(ToolError::Spawn {
            program: program.clone(),
            source,
        })
    })?;
    // The Command still holds the pipe's write ends: replace them so EOF arrives when the
    // child exits.
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut ring: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(log, "{line}");
        if show(&line) {
            progress.message(&line);
            ring.push_back(line);
            if ring.len() > 25 {
                ring.pop_front();
            }
        }
    }
    let status = child.wait().map_err(io(format!("wait for {program}")))?;
    Ok((status, ring.into_iter().collect::<Vec<_>>().join("\n")))
}

struct Ctx<'a> {
    opts: &'a BuildOptions,
    elements: &'a [Element],
    packages: String,
    agent_bin: PathBuf,
    epoch: Option<u64>,
    log_path: PathBuf,
}

impl Ctx<'_> {
    fn common_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "IMAGE_ELEMENT".into(),
                self.elements
                    .iter()
                    .map(|e| e.name.clone())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            ("DIB_RELEASE".into(), self.opts.release.clone()),
            ("DIB_DISTRIBUTION_MIRROR".into(), self.opts.mirror.clone()),
            ("AKANDA_PACKAGES".into(), self.packages.clone()),
            (
                "AKANDA_AGENT_BIN".into(),
                self.agent_bin.display().to_string(),
            ),
            (
                "DIB_DEBOOTSTRAP_CACHE".into(),
                self.opts.cache_dir.join("debs").display().to_string(),
            ),
            ("DEBIAN_FRONTEND".into(), "noninteractive".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ];
        if let Some(e) = self.epoch {
            env.push(("SOURCE_DATE_EPOCH".into(), e.to_string()));
        }
        // Element settings come from the builder's environment (DIB_* as in
        // diskimage-builder, AKANDA_* for ours); the chroot otherwise starts from `env -i`.
        for (k, v) in std::env::vars() {
            let ours = env.iter().any(|(e, _)| *e == k);
            if !ours && (k.starts_with("DIB_") || k.starts_with("AKANDA_")) {
                env.push((k, v));
            }
        }
        env
    }

    /// Runs every script of `phase`, element by element in dependency order, scripts in
    /// lexical order. `root` is the tree the phase works on.
    fn run_phase(
        &self,
        phase: &str,
        place: Where,
        root: &Path,
        progress: &Progress,
        log: &mut File,
    ) -> Result<usize, BuildError> {
        let mut count = 0;
        // environment.d snippets of every element, sourced before each script (as in
        // diskimage-builder).
        let mut env_files: Vec<(String, PathBuf)> = Vec::new();
        for e in self.elements {
            for f in e.environment()? {
                env_files.push((e.name.clone(), f));
            }
        }
        for e in self.elements {
            for script in e.scripts(phase)? {
                let name = script
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                progress.message(&format!("{}/{phase}/{name}", e.name));
                let _ = writeln!(log, "==> {}/{phase}/{name}", e.name);
                let mut c = match place {
                    Where::Outside => {
                        let mut c = Command::new("bash");
                        c.arg("-c")
                            .arg(
                                r#"set -e; s=$1; shift; for f in "$@"; do . "$f"; done; exec "$s""#,
                            )
                            .arg("bash")
                            .arg(&script)
                            .args(env_files.iter().map(|(_, f)| f));
                        c.envs(self.common_env())
                            .env("TARGET_ROOT", root)
                            .env("TMP_HOOKS_PATH", root.join("tmp/in_target.d"))
                            .env("ELEMENT_DIR", &e.dir)
                            .env("AKANDA_BUILD_LOG", &self.log_path);
                        c
                    }
                    Where::Chroot => {
                        let inside = |el: &str, f: &Path| {
                            let owner = self.elements.iter().find(|x| x.name == el).expect("known");
                            Path::new("/tmp/in_target.d/elements")
                                .join(el)
                                .join(f.strip_prefix(&owner.dir).unwrap_or(f))
                        };
                        let mut c = Command::new("chroot");
                        c.arg(root)
                            .arg("/usr/bin/env")
                            .arg("-i")
                            .arg(
                                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                            )
                            .arg("HOME=/root");
                        for (k, v) in self.common_env() {
                            c.arg(format!("{k}={v}"));
                        }
                        c.arg(format!("ELEMENT_DIR=/tmp/in_target.d/elements/{}", e.name));
                        c.arg("/bin/bash")
                            .arg("-c")
                            .arg(
                                r#"set -e; s=$1; shift; for f in "$@"; do . "$f"; done; exec "$s""#,
                            )
                            .arg("bash")
                            .arg(inside(&e.name, &script))
                            .args(env_files.iter().map(|(el, f)| inside(el, f)));
                        c
                    }
                };
                let (status, tail) = stream(&mut c, progress, log, |_| true)?;
                if !status.success() {
                    return Err(BuildError::Script(Box::new(ScriptFailure {
                        element: e.name.clone(),
                        phase: phase.into(),
                        script: name,
                        status: status.to_string(),
                        tail,
                        log: self.log_path.display().to_string(),
                    })));
                }
                count += 1;
            }
        }
        Ok(count)
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), BuildError> {
    // cp -a keeps ownership, modes, hard links, device nodes and xattrs.
    tools::run(cmd("cp", ["-a"]).arg(from).arg(to))?;
    Ok(())
}

/// Keeps the three most recently used bases; older ones are removed.
fn prune_bases(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    let mut bases: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("base-"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    bases.sort();
    bases.reverse();
    for (_, old) in bases.into_iter().skip(3) {
        tracing::info!(path = %old.display(), "removing an old cached base");
        let _ = fs::remove_dir_all(old);
    }
}

pub fn build(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let mut progress = Progress::new();
    progress.phase("preflight");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BuildError::NotRoot);
    }
    tools::check(tools::BUILD_TOOLS, tools::BUILD_FILES)?;
    let paths = elements_path(&opts.elements_paths);
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
    let mut log = File::create(&log_path).map_err(io("create the build log"))?;
    progress.println(&format!(
        "elements: {}",
        elements
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let result = build_in(
        opts,
        &elements,
        &packages,
        work.path(),
        &log_path,
        &mut log,
        &mut progress,
    )
    .map_err(|e| explain_space(e, &opts.cache_dir));
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
    let (output, bytes, manifest, base_from_cache) = result?;
    Ok(BuildReport {
        output,
        bytes,
        manifest,
        base_from_cache,
        timings: progress.summary(),
        elements: elements.iter().map(|e| e.name.clone()).collect(),
    })
}

#[allow(clippy::too_many_arguments)]
fn build_in(
    opts: &BuildOptions,
    elements: &[Element],
    packages: &BTreeSet<String>,
    work: &Path,
    log_path: &Path,
    log: &mut File,
    progress: &mut Progress,
) -> Result<(PathBuf, u64, PathBuf, bool), BuildError> {
    let epoch = source_date_epoch();
    progress.phase("agent");
    let agent_bin = match &opts.agent_bin {
        Some(p) => {
            if !p.is_file() {
                return Err(BuildError::Agent(format!("{} is not a file", p.display())));
            }
            p.clone()
        }
        None => default_agent_bin()?,
    };
    progress.println(&format!("agent: {}", agent_bin.display()));
    let ctx = Ctx {
        opts,
        elements,
        packages: packages.iter().cloned().collect::<Vec<_>>().join(" "),
        agent_bin,
        epoch,
        log_path: log_path.to_path_buf(),
    };

    // The base: root.d output, cached by its inputs.
    let key = base_cache_key(&opts.release, &opts.mirror, packages, elements)?;
    let base = opts.cache_dir.join(format!("base-{key}"));
    let base_from_cache = base.join("rootfs").is_dir();
    if base_from_cache {
        progress.phase("base (cached)");
        progress.println(&format!("base {key}: from the cache"));
        // Touch it so pruning keeps the bases in use.
        let _ = File::open(&base).and_then(|f| f.set_modified(std::time::SystemTime::now()));
    } else {
        progress.phase("base (root.d: debootstrap)");
        check_mirror(&opts.mirror, &opts.release)?;
        let staging = opts
            .cache_dir
            .join(format!("base-{key}.partial-{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        let rootfs = staging.join("rootfs");
        fs::create_dir_all(&rootfs).map_err(io("create the base directory"))?;
        let ran = ctx.run_phase("root.d", Where::Outside, &rootfs, progress, log);
        match ran {
            Ok(0) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(BuildError::Element(ElementError::Invalid {
                    path: "root.d".into(),
                    message: "no element has a root.d script: nothing creates the root \
                              filesystem (add an operating-system element such as debian-minimal)"
                        .into(),
                }));
            }
            Ok(_) => {}
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        }
        if base.join("rootfs").is_dir() {
            // A concurrent build with the same inputs stored it first: use theirs.
            let _ = fs::remove_dir_all(&staging);
        } else {
            fs::rename(&staging, &base).map_err(io("store the base in the cache"))?;
        }
        prune_bases(&opts.cache_dir);
    }
    progress.phase("copy base");
    let root = work.join("rootfs");
    copy_tree(&base.join("rootfs"), &root)?;

    // Element files are reachable inside the chroot under /tmp/in_target.d/elements.
    let hooks = root.join("tmp/in_target.d/elements");
    fs::create_dir_all(&hooks).map_err(io("create in_target.d"))?;
    for e in elements {
        copy_tree(&e.dir, &hooks.join(&e.name))?;
    }
    for (phase, place) in PHASES.iter().skip(1) {
        if *phase == "cleanup.d" {
            // Build-time files leave the tree before cleanup.d, as in diskimage-builder.
            let _ = fs::remove_dir_all(root.join("tmp/in_target.d"));
        }
        progress.phase(phase.trim_end_matches(".d"));
        let guard = if *place == Where::Chroot {
            Some(ChrootSetup::enter(&root)?)
        } else {
            None
        };
        let ran = ctx.run_phase(phase, *place, &root, progress, log);
        if let Some(g) = guard {
            g.leave()?;
        }
        ran?;
    }

    progress.phase("tidy + manifest");
    tidy(&root)?;
    let manifest_path = PathBuf::from(format!("{}.manifest", opts.output.display()));
    let tree_bytes = write_manifest(&root, &manifest_path)?;
    if let Some(epoch) = epoch {
        // After the manifest, which reads every file and so moves access times.
        clamp_mtimes(&root, epoch as i64)?;
    }

    progress.phase("disk (GPT, ext4, ESP, GRUB)");
    let ids = match epoch {
        Some(e) => Ids::derived(&format!("{e} {key} {}", ctx.packages)),
        None => Ids::random(),
    };
    let raw = work.join("disk.raw");
    let root_mib = disk::root_mib(tree_bytes, opts.min_root_mib);
    disk::assemble(&root, &raw, work, &ids, root_mib, epoch)?;
    // The tree is no longer needed: free its space before the conversion writes the output.
    let _ = fs::remove_dir_all(&root);

    progress.phase(match opts.format {
        Format::Qcow2 => "qcow2 (compress)",
        Format::Raw => "raw",
    });
    match opts.format {
        Format::Qcow2 => disk::convert(&raw, &opts.output, true)?,
        Format::Raw => {
            if fs::rename(&raw, &opts.output).is_err() {
                disk::convert(&raw, &opts.output, false)?;
            }
        }
    }
    let bytes = fs::metadata(&opts.output)
        .map_err(io(format!("stat {}", opts.output.display())))?
        .blocks()
        * 512;
    Ok((opts.output.clone(), bytes, manifest_path, base_from_cache))
}

/// What the chroot phases need around them: the host's resolver (for an element that
/// downloads) and a policy-rc.d that keeps package scripts from starting services.
struct ChrootSetup {
    root: PathBuf,
    resolv_backup: Option<Vec<u8>>,
    resolv_was_link: Option<PathBuf>,
}

impl ChrootSetup {
    fn enter(root: &Path) -> Result<ChrootSetup, BuildError> {
        let resolv = root.join("etc/resolv.conf");
        let resolv_was_link = fs::read_link(&resolv).ok();
        let resolv_backup = if resolv_was_link.is_none() {
            fs::read(&resolv).ok()
        } else {
            None
        };
        let _ = fs::remove_file(&resolv);
        if let Ok(host) = fs::read("/etc/resolv.conf") {
            fs::write(&resolv, host).map_err(io("write resolv.conf in the tree"))?;
        }
        let policy = root.join("usr/sbin/policy-rc.d");
        fs::write(&policy, "#!/bin/sh\nexit 101\n").map_err(io("write policy-rc.d"))?;
        fs::set_permissions(&policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io("chmod policy-rc.d"))?;
        Ok(ChrootSetup {
            root: root.to_path_buf(),
            resolv_backup,
            resolv_was_link,
        })
    }

    fn leave(self) -> Result<(), BuildError> {
        let resolv = self.root.join("etc/resolv.conf");
        let _ = fs::remove_file(&resolv);
        if let Some(target) = &self.resolv_was_link {
            std::os::unix::fs::symlink(target, &resolv).map_err(io("restore resolv.conf"))?;
        } else if let Some(bytes) = &self.resolv_backup {
            fs::write(&resolv, bytes).map_err(io("restore resolv.conf"))?;
        }
        let _ = fs::remove_file(self.root.join("usr/sbin/policy-rc.d"));
        Ok(())
    }
}

/// Removes what differs from build to build without being part of the system (logs, caches,
/// the machine id).
fn tidy(root: &Path) -> Result<(), BuildError> {
    let remove_children = |dir: &str, keep: &[&str]| {
        if let Ok(entries) = fs::read_dir(root.join(dir)) {
            for e in entries.flatten() {
                let name = e.file_name();
                if keep.iter().any(|k| name == *k) {
                    continue;
                }
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    let _ = fs::remove_dir_all(&p);
                } else {
                    let _ = fs::remove_file(&p);
                }
            }
        }
    };
    remove_children("tmp", &[]);
    remove_children("var/tmp", &[]);
    remove_children("var/cache/apt", &["archives"]);
    remove_children("var/cache/apt/archives", &["partial"]);
    remove_children("var/lib/apt/lists", &["partial"]);
    remove_children(
        "var/cache/debconf",
        &["config.dat", "templates.dat", "passwords.dat"],
    );
    for f in [
        "var/cache/ldconfig/aux-cache",
        "var/lib/dbus/machine-id",
        "etc/hostid",
        "var/lib/systemd/random-seed",
        "var/log/bootstrap.log",
        "var/log/dpkg.log",
        "var/log/alternatives.log",
        "var/log/apt/history.log",
        "var/log/apt/term.log",
        "var/log/apt/eipp.log.xz",
    ] {
        let _ = fs::remove_file(root.join(f));
    }
    // An empty machine-id: systemd generates one at first boot, so every VM has its own.
    fs::write(root.join("etc/machine-id"), "").map_err(io("empty /etc/machine-id"))?;
    Ok(())
}

fn clamp_mtimes(dir: &Path, epoch: i64) -> Result<(), BuildError> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(io(format!("read {}", d.display())))?;
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p.clone());
            }
            if meta.mtime() > epoch || meta.atime() > epoch {
                let t = TimeSpec::new(epoch.min(meta.mtime()), 0);
                let _ = utimensat(
                    nix::fcntl::AT_FDCWD,
                    &p,
                    &t,
                    &t,
                    UtimensatFlags::NoFollowSymlink,
                );
            }
        }
    }
    // Directories last touched by the removals above.
    let t = TimeSpec::new(epoch, 0);
    let _ = utimensat(
        nix::fcntl::AT_FDCWD,
        dir,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    );
    Ok(())
}

/// Writes one line per file of the tree (sorted): type, mode, owner, size, SHA-256 or link
/// target, path. Two builds from the same inputs can be compared with `diff`. Returns the
/// tree's size in bytes (blocks actually used).
pub fn write_manifest(root: &Path, out: &Path) -> Result<u64, BuildError> {
    let mut lines = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    let mut seen_inodes = BTreeSet::new();
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(io(format!("read {}", d.display())))?;
        for e in entries.flatten() {
            let p = e.path();
            let meta = fs::symlink_metadata(&p).map_err(io(format!("stat {}", p.display())))?;
            if seen_inodes.insert((meta.dev(), meta.ino())) {
                total += meta.blocks() * 512;
            }
            let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
            let ft = meta.file_type();
            let (kind, what) = if ft.is_dir() {
                stack.push(p.clone());
                ("d", "-".to_string())
            } else if ft.is_symlink() {
                (
                    "l",
                    fs::read_link(&p)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default(),
                )
            } else if ft.is_file() {
                let mut h = Sha256::new();
                let mut f = File::open(&p).map_err(io(format!("open {}", p.display())))?;
                std::io::copy(&mut f, &mut h).map_err(io(format!("read {}", p.display())))?;
                ("f", hex::encode(h.finalize()))
            } else {
                ("o", format!("rdev {}", meta.rdev()))
            };
            lines.push(format!(
                "/{rel} {kind} {:o} {}:{} {} {what}",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid(),
                if ft.is_file() { meta.len() } else { 0 },
            ));
        }
    }
    lines.sort();
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(out, text).map_err(io(format!("write {}", out.display())))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_follows_inputs() {
        let d = tempfile::tempdir().unwrap();
        let el = d.path().join("os");
        fs::create_dir_all(el.join("root.d")).unwrap();
        fs::write(el.join("root.d/10-boot"), "debootstrap one").unwrap();
        fs::set_permissions(
            el.join("root.d/10-boot"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let paths = vec![d.path().to_path_buf()];
        let all = elements::discover(&paths).unwrap();
        let els = elements::resolve(&all, &["os".into()], &paths).unwrap();
        let pk: BTreeSet<String> = ["a".to_string()].into();
        let k1 = base_cache_key("bookworm", "http://m", &pk, &els).unwrap();
        assert_eq!(
            k1,
            base_cache_key("bookworm", "http://m", &pk, &els).unwrap()
        );
        assert_ne!(k1, base_cache_key("trixie", "http://m", &pk, &els).unwrap());
        assert_ne!(
            k1,
            base_cache_key("bookworm", "http://n", &pk, &els).unwrap()
        );
        let pk2: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        assert_ne!(
            k1,
            base_cache_key("bookworm", "http://m", &pk2, &els).unwrap()
        );
        fs::write(el.join("root.d/10-boot"), "debootstrap two").unwrap();
        assert_ne!(
            k1,
            base_cache_key("bookworm", "http://m", &pk, &els).unwrap()
        );
    }

    #[test]
    fn manifest_lists_content_hashes_sorted() {
        let d = tempfile::tempdir().unwrap();
        let o = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(d.path().join("etc/b"), "hello").unwrap();
        std::os::unix::fs::symlink("b", d.path().join("etc/a")).unwrap();
        let out = o.path().join("manifest");
        write_manifest(d.path(), &out).unwrap();
        let text = fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("/etc d 755"), "{text}");
        assert!(
            lines[1].starts_with("/etc/a l ") && lines[1].ends_with(" b"),
            "{text}"
        );
        assert!(
            lines[2]
                .ends_with("5 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"),
            "{text}"
        );
    }

    #[test]
    fn unreachable_mirror_is_explained() {
        // Port 9 on localhost: nothing listens, so the connection is refused at once.
        let e = check_mirror("http://127.0.0.1:9/debian", "bookworm").unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("cannot reach the Debian mirror"), "{text}");
        assert!(text.contains("--mirror"), "{text}");
    }
}
