//! Runs a daemon's own config check (`dnsmasq --test`, `bird -p`) with a time limit: the
//! check runs while the apply holds the appliance, so a check that hangs must not hold it
//! for long. The check runs in its own process group; on timeout the whole group (the check
//! and anything it started) is killed and reaped, and the apply fails with
//! [`ServicesError::CheckTimedOut`].

use std::process::Stdio;
use std::time::Duration;

use super::ServicesError;

/// The default time a config check may take. `dnsmasq --test` and `bird -p` take
/// milliseconds; a check that takes seconds is stuck.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `command` (stdin null, output captured); `Ok` when it exits 0, `Rejected` with its
/// stderr otherwise, `CheckTimedOut` when it has not exited within `timeout`.
pub(crate) async fn run(
    daemon: &str,
    mut command: tokio::process::Command,
    timeout: Duration,
) -> Result<(), ServicesError> {
    crate::failpoint::hit("daemon_check").map_err(|message| ServicesError::Rejected {
        daemon: daemon.into(),
        message,
    })?;
    let program = command.as_std().get_program().into();
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|source| ServicesError::Spawn { program, source })?;
    let group = child.id().map(|pid| nix::unistd::Pid::from_raw(pid as i32));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(ServicesError::Rejected {
            daemon: daemon.into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }),
        Ok(Err(source)) => Err(ServicesError::Spawn {
            program: command.as_std().get_program().into(),
            source,
        }),
        Err(_) => {
            // The check itself was killed when its future was dropped (kill_on_drop, reaped
            // by tokio); whatever it started goes with its group.
            if let Some(group) = group {
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
            tracing::error!(daemon, ?timeout, "config check timed out: killed");
            Err(ServicesError::CheckTimedOut {
                daemon: daemon.into(),
                timeout,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_that_hangs_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        // A stand-in for a stuck check: it starts a grandchild and waits for it.
        let mut command = tokio::process::Command::new("sh");
        command.args([
            "-c",
            &format!("sleep 60 & echo $! > {}; wait", pid_file.display()),
        ]);
        let started = std::time::Instant::now();
        let err = run("stand-in", command, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, ServicesError::CheckTimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let grandchild: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed with its group (it may linger a moment as a zombie of init).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_string()));
            match state {
                None => break,
                Some(s) if s.starts_with('Z') => break,
                Some(_) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the check's grandchild survived the timeout"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_refusal_carries_stderr() {
        let mut command = tokio::process::Command::new("sh");
        command.args(["-c", "echo 'bad line 3' >&2; exit 1"]);
        match run("stand-in", command, Duration::from_secs(5)).await {
            Err(ServicesError::Rejected { message, .. }) => assert_eq!(message, "bad line 3"),
            other => panic!("{other:?}"),
        }
    }
}
