//! Host tools: presence checks that name the Debian package to install, and the one runner
//! every subprocess of the builder goes through ([`run`], [`run_with_input`], [`stream`]): stdin
//! closed unless fed, output kept so a failure can show its last lines.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// A host program and the Debian package that ships it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tool {
    pub(crate) program: &'static str,
    pub(crate) package: &'static str,
}

const fn tool(program: &'static str, package: &'static str) -> Tool {
    Tool { program, package }
}

/// What `build` needs on the host.
pub(crate) const BUILD_TOOLS: &[Tool] = &[
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
pub(crate) const BUILD_FILES: &[(&str, &str)] = &[
    ("/usr/lib/grub/i386-pc/boot.img", "grub-pc-bin"),
    ("/usr/lib/grub/i386-pc/biosdisk.mod", "grub-pc-bin"),
    (
        "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        "systemd-boot-efi",
    ),
];

/// What `verify` needs on the host.
pub(crate) const VERIFY_TOOLS: &[Tool] = &[
    tool("qemu-system-x86_64", "qemu-system-x86"),
    tool("qemu-img", "qemu-utils"),
    tool("ip", "iproute2"),
    tool("ping", "iputils-ping"),
    tool("mkfs.vfat", "dosfstools"),
    tool("mcopy", "mtools"),
    tool("mmd", "mtools"),
];

pub(crate) const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub(crate) const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

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
    #[error("{program}: cannot {what}: {source}")]
    Io {
        program: String,
        what: &'static str,
        source: std::io::Error,
    },
}

/// Looks a program up in PATH, plus the sbin directories (root's tools live there and a
/// non-login shell may not have them in PATH).
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Checks every tool and file; the error lists all missing ones with one apt-get line.
pub(crate) fn check(tools: &[Tool], files: &[(&str, &str)]) -> Result<(), ToolError> {
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
pub(crate) fn tail(text: &str, n: usize) -> String {
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

/// Lines of output a failure shows.
const FAILURE_TAIL_LINES: usize = 30;

/// Runs a command with stdin closed; on failure the error carries the last 30 lines of its
/// stdout and stderr. Returns stdout.
pub(crate) fn run(cmd: &mut Command) -> Result<String, ToolError> {
    let done = execute(cmd, None, None)?;
    done.stdout_if_success(cmd)
}

/// [`run`], with `input` written to the command's stdin (sfdisk reads its script there).
pub(crate) fn run_with_input(cmd: &mut Command, input: &[u8]) -> Result<String, ToolError> {
    let done = execute(cmd, Some(input), None)?;
    done.stdout_if_success(cmd)
}

/// A streamed command's end: its status and the last lines it printed.
#[derive(Debug)]
pub(crate) struct Streamed {
    pub(crate) status: ExitStatus,
    pub(crate) tail: String,
}

/// Runs a command with stdin closed and stdout and stderr merged into one stream, handing each
/// line to `on_line` as it arrives (build log, progress line). A failing status is not an
/// error here: the caller knows what the command was for, and says so.
pub(crate) fn stream(
    cmd: &mut Command,
    tail_lines: usize,
    mut on_line: impl FnMut(&str),
) -> Result<Streamed, ToolError> {
    let mut ring = std::collections::VecDeque::with_capacity(tail_lines + 1);
    let mut each = |line: &str| {
        on_line(line);
        ring.push_back(line.to_string());
        if ring.len() > tail_lines {
            ring.pop_front();
        }
    };
    let done = execute(cmd, None, Some(&mut each))?;
    Ok(Streamed {
        status: done.status,
        tail: ring.into_iter().collect::<Vec<_>>().join("\n"),
    })
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn stdout_if_success(self, cmd: &Command) -> Result<String, ToolError> {
        if self.status.success() {
            return Ok(self.stdout);
        }
        Err(ToolError::Failed {
            command: describe(cmd),
            status: self.status.to_string(),
            tail: tail(
                &format!("{}{}", self.stdout, self.stderr),
                FAILURE_TAIL_LINES,
            ),
        })
    }
}

/// The runner: spawns `cmd`, feeds `stdin` (or closes it), and either collects stdout and
/// stderr apart or, with `on_line`, reads them merged line by line.
fn execute(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    on_line: Option<&mut dyn FnMut(&str)>,
) -> Result<Finished, ToolError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    tracing::debug!(command = %describe(cmd), "run");
    let failed = |what: &'static str| {
        let program = program.clone();
        move |source| ToolError::Io {
            program,
            what,
            source,
        }
    };
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let Some(on_line) = on_line else {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ToolError::Spawn {
                program: program.clone(),
                source,
            })?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(input).map_err(failed("write its input"))?;
            // Dropped here: the command sees the end of its input.
        }
        let out = child.wait_with_output().map_err(failed("wait for it"))?;
        return Ok(Finished {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    };
    let (reader, writer) = std::io::pipe().map_err(failed("create a pipe"))?;
    let writer2 = writer.try_clone().map_err(failed("clone a pipe"))?;
    let spawned = cmd.stdout(writer).stderr(writer2).spawn();
    // The Command still holds the pipe's write ends: replace them so EOF arrives when the
    // child exits.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = spawned.map_err(|source| ToolError::Spawn {
        program: program.clone(),
        source,
    })?;
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        on_line(&line);
    }
    let status = child.wait().map_err(failed("wait for it"))?;
    Ok(Finished {
        status,
        stdout: String::new(),
        stderr: String::new(),
    })
}

/// `Command::new(program).args(args)`, for brevity.
pub(crate) fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Makes a long-running child (QEMU, dnsmasq) die with this process, even when this process
/// is killed and its destructors never run: nothing is left running after a killed verify.
pub(crate) fn die_with_parent(c: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, and only calls prctl(2),
    // which is async-signal-safe and touches no memory of the parent.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
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

    #[test]
    fn input_reaches_stdin() {
        let out = run_with_input(&mut cmd("tr", ["a-z", "A-Z"]), b"sfdisk script\n").unwrap();
        assert_eq!(out, "SFDISK SCRIPT\n");
        let err = run_with_input(&mut cmd("sh", ["-c", "cat; exit 2"]), b"echoed\n").unwrap_err();
        assert!(err.to_string().contains("echoed"), "{err}");
    }

    #[test]
    fn stream_merges_output_in_order_and_keeps_the_tail() {
        let mut seen = Vec::new();
        let done = stream(
            &mut cmd("sh", ["-c", "echo out1; echo err1 >&2; echo out2; exit 4"]),
            2,
            |l| seen.push(l.to_string()),
        )
        .unwrap();
        assert_eq!(seen, ["out1", "err1", "out2"]);
        assert_eq!(done.tail, "err1\nout2");
        assert_eq!(done.status.code(), Some(4));
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = stream(&mut cmd("akanda-no-such-program", ["x"]), 5, |_| {}).unwrap_err();
        assert!(matches!(err, ToolError::Spawn { .. }), "{err}");
    }
}
