//! Host tools: presence checks that name the Debian package to install, and running a
//! command with its output kept for the error message.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A host program and the Debian package that ships it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

const fn tool(program: &'static str, package: &'static str) -> Tool {
    Tool { program, package }
}

/// What `build` needs on the host.
pub const BUILD_TOOLS: &[Tool] = &[
    tool("debootstrap", "debootstrap"),
    tool("chroot", "coreutils"),
    tool("sfdisk", "fdisk"),
    tool("mkfs.ext4", "e2fsprogs"),
    tool("e2fsck", "e2fsprogs"),
    tool("mkfs.vfat", "dosfstools"),
    tool("mcopy", "mtools"),
    tool("mmd", "mtools"),
    tool("grub-mkimage", "grub-common"),
    tool("qemu-img", "qemu-utils"),
];

/// GRUB's platform files, which are not programs.
pub const BUILD_FILES: &[(&str, &str)] = &[
    ("/usr/lib/grub/i386-pc/boot.img", "grub-pc-bin"),
    ("/usr/lib/grub/i386-pc/biosdisk.mod", "grub-pc-bin"),
    (
        "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        "systemd-boot-efi",
    ),
];

/// What `verify` needs on the host.
pub const VERIFY_TOOLS: &[Tool] = &[
    tool("qemu-system-x86_64", "qemu-system-x86"),
    tool("qemu-img", "qemu-utils"),
    tool("ip", "iproute2"),
    tool("ping", "iputils-ping"),
    tool("mkfs.vfat", "dosfstools"),
    tool("mcopy", "mtools"),
    tool("mmd", "mtools"),
];

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("missing host tools: {programs}. Install them with: apt-get install {packages}")]
    Missing { programs: String, packages: String },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}):\n{tail}")]
    Failed {
        command: String,
        status: String,
        tail: String,
    },
}

/// Looks a program up in PATH, plus the sbin directories (root's tools live there and a
/// non-login shell may not have them in PATH).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Checks every tool and file; the error lists all missing ones with one apt-get line.
pub fn check(tools: &[Tool], files: &[(&str, &str)]) -> Result<(), ToolError> {
    let mut programs = Vec::new();
    let mut packages: Vec<&str> = Vec::new();
    for t in tools {
        if which(t.program).is_none() {
            programs.push(t.program.to_string());
            if !packages.contains(&t.package) {
                packages.push(t.package);
            }
        }
    }
    for (file, package) in files {
        if !Path::new(file).exists() {
            programs.push((*file).to_string());
            if !packages.contains(package) {
                packages.push(package);
            }
        }
    }
    if programs.is_empty() {
        Ok(())
    } else {
        Err(ToolError::Missing {
            programs: programs.join(", "),
            packages: packages.join(" "),
        })
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with stdin closed; on failure the error carries the last 30 lines of its
/// stdout and stderr. Returns stdout.
pub fn run(cmd: &mut Command) -> Result<String, ToolError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    tracing::debug!(command = %describe(cmd), "run");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ToolError::Spawn { program, source })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let both = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    Err(ToolError::Failed {
        command: describe(cmd),
        status: out.status.to_string(),
        tail: tail(&both, 30),
    })
}

/// `Command::new(program).args(args)`, for brevity.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_package() {
        let err = check(
            &[
                tool("sh", "dash"),
                tool("akanda-no-such-tool", "akanda-pkg"),
                tool("akanda-no-such-tool2", "akanda-pkg"),
            ],
            &[("/nonexistent/akanda", "other-pkg")],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing host tools: akanda-no-such-tool, akanda-no-such-tool2, /nonexistent/akanda. \
             Install them with: apt-get install akanda-pkg other-pkg"
        );
    }

    #[test]
    fn failed_command_keeps_the_tail() {
        let err = run(&mut cmd(
            "sh",
            ["-c", "for i in $(seq 1 50); do echo line$i; done; exit 3"],
        ))
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.contains("line50") && text.contains("line21"), "{text}");
        assert!(!text.contains("line20\n"), "{text}");
    }
}
