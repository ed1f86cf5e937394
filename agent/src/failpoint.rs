//! Fault injection for the crash-safety tests (`tests/tests/failpoints_root.rs`).
//!
//! Compiled in only with the agent's `failpoints` feature, which only the binary
//! `akanda-agent-failpoints` is built with; in `akanda-agent` (and in the image) [`hit`] is an
//! empty inline function and the names below are never read.
//!
//! A failpoint is a named place in the agent. `AKANDA_FAILPOINTS` arms some of them at start:
//! `NAME=ACTION[@N],...`, where the action happens on the Nth time the place is reached
//! (default: the first), once:
//!
//! | action | what happens |
//! |---|---|
//! | `fail` | [`hit`] returns an error: the phase fails as if the kernel or a daemon refused |
//! | `panic` | the agent panics there |
//! | `kill` | the agent sends itself SIGKILL (a crash: no unwinding, no cleanup) |
//! | `sleep:MS` | the agent sleeps MS milliseconds there (blocking its thread), then carries on |
//!
//! The places (`POINTS`): the end of each apply phase (its work done, nothing after it yet),
//! each daemon config check (`daemon_check`: in the middle of the services phase, some
//! daemons' files written, others not), the config staged but not committed, the config
//! committed but not answered, the bootstrap
//! ruleset's installation at start, and the rollback's reinstallation of the previous ruleset
//! (`rollback_ruleset=fail` makes a rollback fail, for the degraded state).

/// Every failpoint, in the order an apply reaches them (`bootstrap` is at start).
#[cfg(feature = "failpoints")]
const POINTS: &[&str] = &[
    "bootstrap",
    "links_addresses_routes",
    "ruleset",
    "conntrack",
    "services",
    "daemon_check",
    "persist_staged",
    "persist_committed",
    "rollback_ruleset",
];

/// The environment variable that arms failpoints.
#[cfg(feature = "failpoints")]
const ENV: &str = "AKANDA_FAILPOINTS";

/// Reaches failpoint `name`: `Err` when it is armed with `fail` (the message names it).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_name: &str) -> Result<(), String> {
    Ok(())
}

/// Logs, once at start, that this binary carries failpoints.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn announce() {}

#[cfg(feature = "failpoints")]
pub use armed::announce;
#[cfg(feature = "failpoints")]
pub(crate) use armed::hit;

#[cfg(feature = "failpoints")]
mod armed {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Action {
        Fail,
        Panic,
        Kill,
        Sleep(u64),
    }

    #[derive(Debug)]
    struct Armed {
        action: Action,
        /// Fire on this hit (1-based).
        on: u32,
        seen: u32,
    }

    fn table() -> &'static Mutex<HashMap<String, Armed>> {
        static TABLE: OnceLock<Mutex<HashMap<String, Armed>>> = OnceLock::new();
        TABLE.get_or_init(|| {
            let spec = std::env::var(super::ENV).unwrap_or_default();
            match parse(&spec) {
                Ok(map) => Mutex::new(map.into_iter().collect()),
                Err(e) => {
                    // A test that mistypes a failpoint must not pass for the wrong reason.
                    eprintln!("akanda-agent: {}: {e}", super::ENV);
                    std::process::exit(70);
                }
            }
        })
    }

    fn parse(spec: &str) -> Result<Vec<(String, Armed)>, String> {
        let mut out = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, rest) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected NAME=ACTION[@N]"))?;
            if !super::POINTS.contains(&name) {
                return Err(format!(
                    "{name:?} is not a failpoint (they are: {})",
                    super::POINTS.join(", ")
                ));
            }
            let (action, on) = match rest.split_once('@') {
                Some((a, n)) => (
                    a,
                    n.parse::<u32>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| format!("{item:?}: @N must be a positive number"))?,
                ),
                None => (rest, 1),
            };
            let action = match action {
                "fail" => Action::Fail,
                "panic" => Action::Panic,
                "kill" => Action::Kill,
                other => match other.strip_prefix("sleep:").map(str::parse::<u64>) {
                    Some(Ok(ms)) => Action::Sleep(ms),
                    _ => {
                        return Err(format!(
                            "{item:?}: the action is fail, panic, kill or sleep:MS"
                        ))
                    }
                },
            };
            out.push((
                name.to_string(),
                Armed {
                    action,
                    on,
                    seen: 0,
                },
            ));
        }
        Ok(out)
    }

    pub fn announce() {
        let armed: Vec<String> = table()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, a)| format!("{name}={:?}@{}", a.action, a.on))
            .collect();
        tracing::warn!(
            ?armed,
            "this agent is built with failpoints (tests only; never ship it)"
        );
    }

    pub(crate) fn hit(name: &str) -> Result<(), String> {
        let action = {
            let mut table = table().lock().unwrap_or_else(|e| e.into_inner());
            let Some(armed) = table.get_mut(name) else {
                return Ok(());
            };
            armed.seen += 1;
            if armed.seen != armed.on {
                return Ok(());
            }
            armed.action
        };
        tracing::warn!(failpoint = name, ?action, "failpoint reached");
        match action {
            Action::Fail => Err(format!("failpoint {name}: injected failure")),
            Action::Panic => panic!("failpoint {name}: injected panic"),
            Action::Kill => {
                // SAFETY: kill(2) on our own pid; SIGKILL cannot be caught, the process ends here.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                unreachable!("SIGKILL delivered to ourselves")
            }
            Action::Sleep(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(())
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn specs_parse_or_are_refused() {
            let parsed = parse("ruleset=fail, services=kill@2,bootstrap=sleep:50").unwrap();
            let got: Vec<(&str, Action, u32)> = parsed
                .iter()
                .map(|(n, a)| (n.as_str(), a.action, a.on))
                .collect();
            assert_eq!(
                got,
                vec![
                    ("ruleset", Action::Fail, 1),
                    ("services", Action::Kill, 2),
                    ("bootstrap", Action::Sleep(50), 1)
                ]
            );
            assert!(parse("").unwrap().is_empty());
            assert!(parse("nowhere=fail").is_err());
            assert!(parse("ruleset=explode").is_err());
            assert!(parse("ruleset=fail@0").is_err());
            assert!(parse("ruleset").is_err());
        }
    }
}
