//! Running the elements' phase scripts: outside with `TARGET_ROOT`, or inside the tree with
//! `chroot`, each with the environment diskimage-builder gives its scripts, every output line
//! to the build log and the progress line.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::{io, BuildError, BuildOptions, ScriptFailure};
use crate::elements::{Element, Where};
use crate::progress::Progress;
use crate::tools;

/// Lines of a failed script's output shown in the error (all of it is in the build log).
const SCRIPT_TAIL_LINES: usize = 25;
/// Where the elements' files are inside the tree during the chroot phases.
const IN_TARGET_ELEMENTS: &str = "/tmp/in_target.d/elements";
/// `bash -c` program: source every environment.d file given after the script (as
/// diskimage-builder does), then run the script.
const SOURCE_THEN_EXEC: &str = r#"set -e; s=$1; shift; for f in "$@"; do . "$f"; done; exec "$s""#;

/// What every script's environment is made of.
pub(crate) struct ScriptEnv<'a> {
    pub(crate) opts: &'a BuildOptions,
    pub(crate) elements: &'a [Element],
    /// Space-separated, for `AKANDA_PACKAGES`.
    pub(crate) packages: String,
    pub(crate) agent_bin: PathBuf,
    pub(crate) epoch: Option<u64>,
    pub(crate) log_path: PathBuf,
}

impl ScriptEnv<'_> {
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
    pub(crate) fn run_phase(
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
                    Where::Outside => self.outside_command(e, &script, &env_files, root),
                    Where::Chroot => self.chroot_command(e, &script, &env_files, root),
                };
                let done = tools::stream(&mut c, SCRIPT_TAIL_LINES, |line| {
                    let _ = writeln!(log, "{line}");
                    progress.message(line);
                })?;
                if !done.status.success() {
                    return Err(BuildError::Script(Box::new(ScriptFailure {
                        element: e.name.clone(),
                        phase: phase.into(),
                        script: name,
                        status: done.status.to_string(),
                        tail: done.tail,
                        log: self.log_path.display().to_string(),
                    })));
                }
                count += 1;
            }
        }
        Ok(count)
    }

    /// `bash` on the host, with the tree in `TARGET_ROOT`.
    fn outside_command(
        &self,
        e: &Element,
        script: &Path,
        env_files: &[(String, PathBuf)],
        root: &Path,
    ) -> Command {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(SOURCE_THEN_EXEC)
            .arg("bash")
            .arg(script)
            .args(env_files.iter().map(|(_, f)| f));
        c.envs(self.common_env())
            .env("TARGET_ROOT", root)
            .env("TMP_HOOKS_PATH", root.join("tmp/in_target.d"))
            .env("ELEMENT_DIR", &e.dir)
            .env("AKANDA_BUILD_LOG", &self.log_path);
        c
    }

    /// `bash` in `chroot root`, from a clean environment, with the element files at their
    /// copies under `/tmp/in_target.d/elements`.
    fn chroot_command(
        &self,
        e: &Element,
        script: &Path,
        env_files: &[(String, PathBuf)],
        root: &Path,
    ) -> Command {
        let inside = |el: &str, f: &Path| {
            let owner = self.elements.iter().find(|x| x.name == el).expect("known");
            Path::new(IN_TARGET_ELEMENTS)
                .join(el)
                .join(f.strip_prefix(&owner.dir).unwrap_or(f))
        };
        let mut c = Command::new("chroot");
        c.arg(root)
            .arg("/usr/bin/env")
            .arg("-i")
            .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .arg("HOME=/root");
        for (k, v) in self.common_env() {
            c.arg(format!("{k}={v}"));
        }
        c.arg(format!("ELEMENT_DIR={IN_TARGET_ELEMENTS}/{}", e.name));
        c.arg("/bin/bash")
            .arg("-c")
            .arg(SOURCE_THEN_EXEC)
            .arg("bash")
            .arg(inside(&e.name, script))
            .args(env_files.iter().map(|(el, f)| inside(el, f)));
        c
    }
}

/// What the chroot phases need around them: the host's resolver (for an element that
/// downloads) and a policy-rc.d that keeps package scripts from starting services.
pub(crate) struct ChrootSetup {
    root: PathBuf,
    resolv_backup: Option<Vec<u8>>,
    resolv_was_link: Option<PathBuf>,
}

impl ChrootSetup {
    pub(crate) fn enter(root: &Path) -> Result<ChrootSetup, BuildError> {
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

    pub(crate) fn leave(self) -> Result<(), BuildError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::Format;

    fn options() -> BuildOptions {
        BuildOptions {
            output: "out.qcow2".into(),
            format: Format::Qcow2,
            elements: vec![],
            no_default: false,
            elements_paths: vec![],
            release: "bookworm".into(),
            mirror: "http://m".into(),
            cache_dir: "/cache".into(),
            agent_bin: None,
            min_root_mib: 1,
            keep_work: false,
        }
    }

    fn element(name: &str) -> Element {
        Element {
            name: name.into(),
            dir: PathBuf::from("/els").join(name),
            deps: vec![],
            provides: vec![],
            description: String::new(),
        }
    }

    fn args(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn chroot_scripts_see_their_element_copies_and_a_clean_environment() {
        let opts = options();
        let elements = [element("os"), element("router")];
        let env = ScriptEnv {
            opts: &opts,
            elements: &elements,
            packages: "a b".into(),
            agent_bin: "/bin/agent".into(),
            epoch: Some(7),
            log_path: "/cache/build.log".into(),
        };
        let env_files = [(
            "os".to_string(),
            PathBuf::from("/els/os/environment.d/10-x"),
        )];
        let c = env.chroot_command(
            &elements[1],
            Path::new("/els/router/install.d/50-y"),
            &env_files,
            Path::new("/work/rootfs"),
        );
        assert_eq!(c.get_program(), "chroot");
        let a = args(&c);
        assert_eq!(a[..3], ["/work/rootfs", "/usr/bin/env", "-i"]);
        for want in [
            "IMAGE_ELEMENT=os router",
            "AKANDA_PACKAGES=a b",
            "AKANDA_AGENT_BIN=/bin/agent",
            "SOURCE_DATE_EPOCH=7",
            "DIB_DEBOOTSTRAP_CACHE=/cache/debs",
            "ELEMENT_DIR=/tmp/in_target.d/elements/router",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} not in {a:?}");
        }
        assert_eq!(
            a[a.len() - 2..],
            [
                "/tmp/in_target.d/elements/router/install.d/50-y",
                "/tmp/in_target.d/elements/os/environment.d/10-x"
            ]
        );
    }

    #[test]
    fn outside_scripts_get_the_tree_in_target_root() {
        let opts = options();
        let elements = [element("os")];
        let env = ScriptEnv {
            opts: &opts,
            elements: &elements,
            packages: String::new(),
            agent_bin: "/bin/agent".into(),
            epoch: None,
            log_path: "/cache/build.log".into(),
        };
        let c = env.outside_command(
            &elements[0],
            Path::new("/els/os/root.d/10-boot"),
            &[],
            Path::new("/base/rootfs"),
        );
        assert_eq!(c.get_program(), "bash");
        assert_eq!(args(&c)[2..], ["bash", "/els/os/root.d/10-boot"]);
        let envs: Vec<(String, String)> = c
            .get_envs()
            .filter_map(|(k, v)| {
                Some((
                    k.to_string_lossy().into_owned(),
                    v?.to_string_lossy().into_owned(),
                ))
            })
            .collect();
        for (k, v) in [
            ("TARGET_ROOT", "/base/rootfs"),
            ("TMP_HOOKS_PATH", "/base/rootfs/tmp/in_target.d"),
            ("ELEMENT_DIR", "/els/os"),
            ("AKANDA_BUILD_LOG", "/cache/build.log"),
        ] {
            assert!(envs.contains(&(k.into(), v.into())), "{k} in {envs:?}");
        }
    }
}
