//! Settings: a TOML file, every key overridable by `RUG_LITE_<SECTION>_<KEY>`, typed and
//! validated once, here. Errors name the key and where its value came from.
//!
//! Every key is listed once in [`KEYS`]; that table drives the environment overrides, the
//! rejection of unknown keys and unknown `RUG_LITE_*` variables (typos), and the docs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

/// The value type of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Integer,
    Bool,
    /// A humantime duration such as `600s` or `2m 30s`.
    Duration,
}

/// `(section, key, kind, default)`; `None` as default means required, or optional where the
/// typed accessor says so.
const KEYS: &[(&str, &str, Kind, Option<&str>)] = &[
    ("openstack", "cloud", Kind::Text, None),
    (
        "amqp",
        "url",
        Kind::Text,
        Some("amqp://guest:guest@127.0.0.1:5672/%2F"),
    ),
    ("amqp", "exchange", Kind::Text, Some("neutron")),
    (
        "amqp",
        "routing_key",
        Kind::Text,
        Some("notifications.info"),
    ),
    ("amqp", "queue", Kind::Text, Some("rug-lite")),
    ("appliance", "image", Kind::Text, None),
    ("appliance", "flavor", Kind::Text, None),
    ("appliance", "management_network", Kind::Text, None),
    ("appliance", "api_port", Kind::Integer, Some("5000")),
    ("appliance", "boot_timeout", Kind::Duration, Some("600s")),
    ("appliance", "hotplug_timeout", Kind::Duration, Some("120s")),
    ("appliance", "orchestrator_address", Kind::Text, None),
    ("appliance", "metadata_port", Kind::Integer, Some("9697")),
    ("appliance", "asn", Kind::Integer, Some("64512")),
    ("appliance", "neighbor_asn", Kind::Integer, Some("64512")),
    ("tls", "ca_cert", Kind::Text, None),
    ("tls", "ca_key", Kind::Text, None),
    ("tls", "insecure_http", Kind::Bool, Some("false")),
    (
        "tls",
        "server_cert_lifetime",
        Kind::Duration,
        Some("30days"),
    ),
    ("tls", "renew_before", Kind::Duration, Some("14days")),
    ("resync", "period", Kind::Duration, Some("60s")),
    ("resync", "startup_spread", Kind::Duration, Some("10s")),
    ("admin", "socket", Kind::Text, Some(DEFAULT_ADMIN_SOCKET)),
    ("scheduler", "concurrency", Kind::Integer, Some("16")),
    ("scheduler", "max_boots", Kind::Integer, Some("4")),
    ("scheduler", "max_pushes", Kind::Integer, Some("8")),
    ("scheduler", "max_probes", Kind::Integer, Some("16")),
    ("scheduler", "debounce", Kind::Duration, Some("1s")),
    ("scheduler", "max_debounce", Kind::Duration, Some("10s")),
    ("scheduler", "backoff_base", Kind::Duration, Some("2s")),
    ("scheduler", "backoff_max", Kind::Duration, Some("5m")),
    ("scheduler", "error_threshold", Kind::Integer, Some("5")),
    ("scheduler", "error_cooldown", Kind::Duration, Some("60s")),
    (
        "scheduler",
        "shutdown_deadline",
        Kind::Duration,
        Some("30s"),
    ),
];

pub(crate) const DEFAULT_ADMIN_SOCKET: &str = "/run/rug-lite/admin.sock";
const ENV_PREFIX: &str = "RUG_LITE_";

#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum SettingsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: not valid TOML: {reason}")]
    Syntax { path: String, reason: String },
    #[error("{key} (from {origin}): {reason}")]
    Invalid {
        key: String,
        origin: String,
        reason: String,
    },
    #[error("{key} is required (set it in the [{section}] section or in {env})")]
    Missing {
        key: String,
        section: String,
        env: String,
    },
    #[error("{origin}: {name} is not a setting")]
    Unknown { name: String, origin: String },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    pub openstack_cloud: Option<String>,
    pub amqp: AmqpSettings,
    pub appliance: ApplianceSettings,
    pub tls: TlsSettings,
    pub resync_period: Duration,
    pub startup_spread: Duration,
    pub admin_socket: PathBuf,
    pub scheduler: SchedulerSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AmqpSettings {
    pub url: String,
    pub exchange: String,
    pub routing_key: String,
    pub queue: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApplianceSettings {
    pub image: String,
    pub flavor: String,
    pub management_network: String,
    pub api_port: u16,
    pub boot_timeout: Duration,
    /// A hot-plugged NIC not seen by then gets the server replaced.
    pub hotplug_timeout: Duration,
    /// Overrides the address found among the host's addresses in the management subnet.
    pub orchestrator_address: Option<IpAddr>,
    pub metadata_port: u16,
    pub asn: u32,
    pub neighbor_asn: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TlsSettings {
    Mutual {
        ca_cert: PathBuf,
        ca_key: PathBuf,
        /// Appliance server certificates live this long (Nova admins can read `user_data`).
        server_cert_lifetime: Duration,
        /// An appliance whose certificate has less than this left is replaced.
        renew_before: Duration,
    },
    /// Labs only: plain HTTP to the appliances.
    InsecureHttp,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SchedulerSettings {
    pub concurrency: usize,
    pub max_boots: usize,
    pub max_pushes: usize,
    pub max_probes: usize,
    pub debounce: Duration,
    pub max_debounce: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub error_threshold: u32,
    pub error_cooldown: Duration,
    pub shutdown_deadline: Duration,
}

/// Raw values with where each came from, before typing.
struct Layered {
    values: BTreeMap<(String, String), (Value, String)>,
}

impl Settings {
    /// Reads `path` (if given), then the environment.
    pub(crate) fn load(path: Option<&Path>) -> Result<Settings, SettingsError> {
        let layered = Layered::load(path, std::env::vars())?;
        layered.settings()
    }

    /// Only what the CLI client needs: the admin socket. The rest of the file may be absent or
    /// incomplete.
    pub(crate) fn load_admin_socket(path: Option<&Path>) -> Result<PathBuf, SettingsError> {
        let layered = Layered::load(path, std::env::vars())?;
        Ok(PathBuf::from(
            layered.text("admin", "socket")?.expect("has a default"),
        ))
    }
}

impl Layered {
    fn load(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Layered, SettingsError> {
        let mut values = BTreeMap::new();
        if let Some(path) = path {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| SettingsError::Read {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
            let table: Table =
                text.parse()
                    .map_err(|e: toml::de::Error| SettingsError::Syntax {
                        path: shown.clone(),
                        reason: e.message().to_string(),
                    })?;
            for (section, body) in table {
                let Value::Table(body) = body else {
                    return Err(SettingsError::Unknown {
                        name: section,
                        origin: format!("{shown} (top-level keys must be [sections])"),
                    });
                };
                for (key, value) in body {
                    if find(&section, &key).is_none() {
                        return Err(SettingsError::Unknown {
                            name: format!("{section}.{key}"),
                            origin: shown.clone(),
                        });
                    }
                    values.insert((section.clone(), key), (value, shown.clone()));
                }
            }
        }
        let mut layered = Layered { values };
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some((section, key, kind)) = KEYS
                .iter()
                .find_map(|(s, k, kind, _)| (env_name(s, k) == name).then_some((*s, *k, *kind)))
            else {
                return Err(SettingsError::Unknown {
                    name: rest.to_string(),
                    origin: format!("environment variable {name}"),
                });
            };
            let value = match kind {
                Kind::Integer => raw.trim().parse::<i64>().map(Value::Integer).map_err(|_| {
                    SettingsError::Invalid {
                        key: format!("{section}.{key}"),
                        origin: name.clone(),
                        reason: format!("{raw:?} is not an integer"),
                    }
                })?,
                Kind::Bool => match raw.trim() {
                    "true" | "1" | "yes" => Value::Boolean(true),
                    "false" | "0" | "no" => Value::Boolean(false),
                    _ => {
                        return Err(SettingsError::Invalid {
                            key: format!("{section}.{key}"),
                            origin: name.clone(),
                            reason: format!("{raw:?} is not true or false"),
                        })
                    }
                },
                Kind::Text | Kind::Duration => Value::String(raw),
            };
            layered
                .values
                .insert((section.to_string(), key.to_string()), (value, name));
        }
        Ok(layered)
    }

    /// The value of a key (or its default), with its origin.
    fn raw(&self, section: &str, key: &str) -> Option<(Value, String)> {
        let (_, _, kind, default) = find(section, key).expect("a key of the KEYS table");
        if let Some((v, origin)) = self.values.get(&(section.to_string(), key.to_string())) {
            return Some((v.clone(), origin.clone()));
        }
        default.map(|d| {
            let v = match kind {
                Kind::Integer => Value::Integer(d.parse().expect("default")),
                Kind::Bool => Value::Boolean(d == "true"),
                Kind::Text | Kind::Duration => Value::String(d.to_string()),
            };
            (v, "default".to_string())
        })
    }

    fn invalid(section: &str, key: &str, origin: &str, reason: String) -> SettingsError {
        SettingsError::Invalid {
            key: format!("{section}.{key}"),
            origin: origin.to_string(),
            reason,
        }
    }

    fn text(&self, section: &str, key: &str) -> Result<Option<String>, SettingsError> {
        match self.raw(section, key) {
            None => Ok(None),
            Some((Value::String(s), origin)) => {
                if s.trim().is_empty() {
                    Err(Self::invalid(
                        section,
                        key,
                        &origin,
                        "must not be empty".into(),
                    ))
                } else {
                    Ok(Some(s))
                }
            }
            Some((other, origin)) => Err(Self::invalid(
                section,
                key,
                &origin,
                format!("expected a string, found {}", other.type_str()),
            )),
        }
    }

    fn required_text(&self, section: &str, key: &str) -> Result<String, SettingsError> {
        self.text(section, key)?
            .ok_or_else(|| SettingsError::Missing {
                key: format!("{section}.{key}"),
                section: section.to_string(),
                env: env_name(section, key),
            })
    }

    fn integer(&self, section: &str, key: &str, min: i64, max: i64) -> Result<i64, SettingsError> {
        match self.raw(section, key).expect("integers have defaults") {
            (Value::Integer(i), origin) => {
                if (min..=max).contains(&i) {
                    Ok(i)
                } else {
                    Err(Self::invalid(
                        section,
                        key,
                        &origin,
                        format!("{i} is out of range ({min} to {max})"),
                    ))
                }
            }
            (other, origin) => Err(Self::invalid(
                section,
                key,
                &origin,
                format!("expected an integer, found {}", other.type_str()),
            )),
        }
    }

    fn boolean(&self, section: &str, key: &str) -> Result<bool, SettingsError> {
        match self.raw(section, key).expect("booleans have defaults") {
            (Value::Boolean(b), _) => Ok(b),
            (other, origin) => Err(Self::invalid(
                section,
                key,
                &origin,
                format!("expected true or false, found {}", other.type_str()),
            )),
        }
    }

    fn duration(&self, section: &str, key: &str) -> Result<Duration, SettingsError> {
        match self.raw(section, key).expect("durations have defaults") {
            (Value::String(s), origin) => {
                let d = humantime::parse_duration(&s).map_err(|e| {
                    Self::invalid(
                        section,
                        key,
                        &origin,
                        format!("{s:?} is not a duration such as \"600s\" or \"5m\" ({e})"),
                    )
                })?;
                if d.is_zero() {
                    return Err(Self::invalid(
                        section,
                        key,
                        &origin,
                        "must not be zero".into(),
                    ));
                }
                Ok(d)
            }
            (other, origin) => Err(Self::invalid(
                section,
                key,
                &origin,
                format!(
                    "expected a duration string such as \"600s\", found {}",
                    other.type_str()
                ),
            )),
        }
    }

    fn settings(&self) -> Result<Settings, SettingsError> {
        let orchestrator_address = match self.text("appliance", "orchestrator_address")? {
            None => None,
            Some(s) => Some(s.trim().parse::<IpAddr>().map_err(|_| {
                let (_, origin) = self.raw("appliance", "orchestrator_address").expect("set");
                Self::invalid(
                    "appliance",
                    "orchestrator_address",
                    &origin,
                    format!("{s:?} is not an IP address"),
                )
            })?),
        };
        let tls = if self.boolean("tls", "insecure_http")? {
            TlsSettings::InsecureHttp
        } else {
            let server_cert_lifetime = self.duration("tls", "server_cert_lifetime")?;
            let renew_before = self.duration("tls", "renew_before")?;
            if renew_before >= server_cert_lifetime {
                let (_, origin) = self.raw("tls", "renew_before").expect("has a default");
                return Err(Self::invalid(
                    "tls",
                    "renew_before",
                    &origin,
                    format!(
                        "must be shorter than tls.server_cert_lifetime ({}), or every appliance would be replaced at once",
                        humantime::format_duration(server_cert_lifetime)
                    ),
                ));
            }
            TlsSettings::Mutual {
                ca_cert: self.required_text("tls", "ca_cert")?.into(),
                ca_key: self.required_text("tls", "ca_key")?.into(),
                server_cert_lifetime,
                renew_before,
            }
        };
        let url = self.required_text("amqp", "url")?;
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            let (_, origin) = self.raw("amqp", "url").expect("has a default");
            return Err(Self::invalid(
                "amqp",
                "url",
                &origin,
                "must start with amqp:// or amqps://".into(),
            ));
        }
        let scheduler = SchedulerSettings {
            concurrency: self.integer("scheduler", "concurrency", 1, 10_000)? as usize,
            max_boots: self.integer("scheduler", "max_boots", 1, 10_000)? as usize,
            max_pushes: self.integer("scheduler", "max_pushes", 1, 10_000)? as usize,
            max_probes: self.integer("scheduler", "max_probes", 1, 10_000)? as usize,
            debounce: self.duration("scheduler", "debounce")?,
            max_debounce: self.duration("scheduler", "max_debounce")?,
            backoff_base: self.duration("scheduler", "backoff_base")?,
            backoff_max: self.duration("scheduler", "backoff_max")?,
            error_threshold: self.integer("scheduler", "error_threshold", 1, 1000)? as u32,
            error_cooldown: self.duration("scheduler", "error_cooldown")?,
            shutdown_deadline: self.duration("scheduler", "shutdown_deadline")?,
        };
        if scheduler.max_debounce < scheduler.debounce {
            let (_, origin) = self.raw("scheduler", "max_debounce").expect("default");
            return Err(Self::invalid(
                "scheduler",
                "max_debounce",
                &origin,
                "must not be shorter than scheduler.debounce".into(),
            ));
        }
        if scheduler.backoff_max < scheduler.backoff_base {
            let (_, origin) = self.raw("scheduler", "backoff_max").expect("default");
            return Err(Self::invalid(
                "scheduler",
                "backoff_max",
                &origin,
                "must not be shorter than scheduler.backoff_base".into(),
            ));
        }
        Ok(Settings {
            openstack_cloud: self.text("openstack", "cloud")?,
            amqp: AmqpSettings {
                url,
                exchange: self.required_text("amqp", "exchange")?,
                routing_key: self.required_text("amqp", "routing_key")?,
                queue: self.required_text("amqp", "queue")?,
            },
            appliance: ApplianceSettings {
                image: self.required_text("appliance", "image")?,
                flavor: self.required_text("appliance", "flavor")?,
                management_network: self.required_text("appliance", "management_network")?,
                api_port: self.integer("appliance", "api_port", 1, 65535)? as u16,
                boot_timeout: self.duration("appliance", "boot_timeout")?,
                hotplug_timeout: self.duration("appliance", "hotplug_timeout")?,
                orchestrator_address,
                metadata_port: self.integer("appliance", "metadata_port", 1, 65535)? as u16,
                asn: self.integer("appliance", "asn", 1, u32::MAX as i64)? as u32,
                neighbor_asn: self.integer("appliance", "neighbor_asn", 1, u32::MAX as i64)? as u32,
            },
            tls,
            resync_period: self.duration("resync", "period")?,
            startup_spread: self.duration("resync", "startup_spread")?,
            admin_socket: PathBuf::from(self.required_text("admin", "socket")?),
            scheduler,
        })
    }
}

fn find(
    section: &str,
    key: &str,
) -> Option<&'static (&'static str, &'static str, Kind, Option<&'static str>)> {
    KEYS.iter().find(|(s, k, _, _)| *s == section && *k == key)
}

fn env_name(section: &str, key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}_{}",
        section.to_uppercase(),
        key.to_uppercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[appliance]
image = "akanda-router"
flavor = "akanda.si"
management_network = "mgt"
[tls]
ca_cert = "/etc/rug-lite/ca.pem"
ca_key = "/etc/rug-lite/ca.key"
"#;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rug-lite.toml");
        std::fs::write(&path, toml).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Layered::load(Some(&path), env.chain([("PATH".into(), "/bin".into())]))?.settings()
    }

    #[test]
    fn the_issue_example_with_defaults() {
        let s = load(
            r#"
[openstack]
cloud = "devstack-admin"
[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2F"
[appliance]
image = "akanda-router"
flavor = "akanda.si"
management_network = "mgt"
api_port = 5000
boot_timeout = "600s"
[tls]
ca_cert = "/etc/rug-lite/ca.pem"
ca_key = "/etc/rug-lite/ca.key"
[resync]
period = "60s"
"#,
            &[],
        )
        .unwrap();
        assert_eq!(s.openstack_cloud.as_deref(), Some("devstack-admin"));
        assert_eq!(s.appliance.boot_timeout, Duration::from_secs(600));
        assert_eq!(s.appliance.api_port, 5000);
        assert_eq!(
            s.tls,
            TlsSettings::Mutual {
                ca_cert: "/etc/rug-lite/ca.pem".into(),
                ca_key: "/etc/rug-lite/ca.key".into(),
                server_cert_lifetime: Duration::from_secs(30 * 86_400),
                renew_before: Duration::from_secs(14 * 86_400),
            }
        );
        let err = load(MINIMAL, &[("RUG_LITE_TLS_RENEW_BEFORE", "30days")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tls.renew_before (from RUG_LITE_TLS_RENEW_BEFORE)")
                && err.contains("shorter than tls.server_cert_lifetime"),
            "{err}"
        );
        assert_eq!(s.appliance.orchestrator_address, None);
        assert_eq!(s.resync_period, Duration::from_secs(60));
        assert_eq!(s.admin_socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
        assert_eq!(s.amqp.exchange, "neutron");
        assert_eq!(s.amqp.routing_key, "notifications.info");
        assert_eq!(s.scheduler.backoff_max, Duration::from_secs(300));
        assert!(matches!(s.tls, TlsSettings::Mutual { .. }));
    }

    #[test]
    fn every_key_can_be_overridden_from_the_environment() {
        // A value of the right kind for each key, different from the default.
        let env: Vec<(String, String)> = KEYS
            .iter()
            .map(|(s, k, kind, _)| {
                let v = match (*s, *k, kind) {
                    ("amqp", "url", _) => "amqp://u:p@broker:5672/%2F".to_string(),
                    ("appliance", "orchestrator_address", _) => "fdca:3ba5:a17a:acda::1".into(),
                    ("appliance", "api_port", _) => "5001".into(),
                    ("appliance", "metadata_port", _) => "9698".into(),
                    ("scheduler", "max_debounce", _) => "50s".into(),
                    ("scheduler", "backoff_max", _) => "50m".into(),
                    ("tls", "server_cert_lifetime", _) => "2days".into(),
                    (_, _, Kind::Integer) => "7".into(),
                    (_, _, Kind::Bool) => "true".into(),
                    (_, _, Kind::Duration) => "42s".into(),
                    (_, _, Kind::Text) => format!("env-{k}"),
                };
                (env_name(s, k), v)
            })
            .collect();
        let env_ref: Vec<(&str, &str)> =
            env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let s = load(MINIMAL, &env_ref).unwrap();
        assert_eq!(s.openstack_cloud.as_deref(), Some("env-cloud"));
        assert_eq!(s.amqp.url, "amqp://u:p@broker:5672/%2F");
        assert_eq!(s.amqp.exchange, "env-exchange");
        assert_eq!(s.amqp.routing_key, "env-routing_key");
        assert_eq!(s.amqp.queue, "env-queue");
        assert_eq!(s.appliance.image, "env-image");
        assert_eq!(s.appliance.flavor, "env-flavor");
        assert_eq!(s.appliance.management_network, "env-management_network");
        assert_eq!(s.appliance.api_port, 5001);
        assert_eq!(s.appliance.boot_timeout, Duration::from_secs(42));
        assert_eq!(s.appliance.hotplug_timeout, Duration::from_secs(42));
        assert_eq!(
            s.appliance.orchestrator_address,
            Some("fdca:3ba5:a17a:acda::1".parse().unwrap())
        );
        assert_eq!(s.appliance.metadata_port, 9698);
        assert_eq!((s.appliance.asn, s.appliance.neighbor_asn), (7, 7));
        assert_eq!(
            s.tls,
            TlsSettings::InsecureHttp,
            "RUG_LITE_TLS_INSECURE_HTTP=true"
        );
        assert_eq!(s.resync_period, Duration::from_secs(42));
        assert_eq!(s.startup_spread, Duration::from_secs(42));
        assert_eq!(s.admin_socket, PathBuf::from("env-socket"));
        let sch = &s.scheduler;
        assert_eq!(
            (
                sch.concurrency,
                sch.max_boots,
                sch.max_pushes,
                sch.max_probes,
                sch.error_threshold
            ),
            (7, 7, 7, 7, 7)
        );
        assert_eq!(sch.debounce, Duration::from_secs(42));
        assert_eq!(sch.max_debounce, Duration::from_secs(50));
        assert_eq!(sch.backoff_base, Duration::from_secs(42));
        assert_eq!(sch.backoff_max, Duration::from_secs(3000));
        assert_eq!(sch.error_cooldown, Duration::from_secs(42));
        assert_eq!(sch.shutdown_deadline, Duration::from_secs(42));
        // The CA paths were overridden too, though insecure_http then wins.
        let mut env_ref = env_ref.clone();
        env_ref.retain(|(k, _)| *k != "RUG_LITE_TLS_INSECURE_HTTP");
        let s = load(MINIMAL, &env_ref).unwrap();
        assert_eq!(
            s.tls,
            TlsSettings::Mutual {
                ca_cert: "env-ca_cert".into(),
                ca_key: "env-ca_key".into(),
                server_cert_lifetime: Duration::from_secs(2 * 86_400),
                renew_before: Duration::from_secs(42),
            }
        );
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let s = load(MINIMAL, &[("RUG_LITE_AMQP_URL", "amqps://h/%2F")]).unwrap();
        assert_eq!(s.amqp.url, "amqps://h/%2F");
    }

    #[test]
    fn bad_settings_name_the_key_and_the_origin() {
        // (file, environment, what the error must say)
        type Case = (String, Vec<(&'static str, &'static str)>, &'static str);
        let cases: Vec<Case> = vec![
            (
                format!("{MINIMAL}\n[resync]\nperiod = \"soon\""),
                vec![],
                "resync.period (from ",
            ),
            (
                MINIMAL.to_string(),
                vec![("RUG_LITE_APPLIANCE_BOOT_TIMEOUT", "ten minutes")],
                "appliance.boot_timeout (from RUG_LITE_APPLIANCE_BOOT_TIMEOUT)",
            ),
            (
                MINIMAL.to_string(),
                vec![("RUG_LITE_APPLIANCE_API_PORT", "70000")],
                "appliance.api_port (from RUG_LITE_APPLIANCE_API_PORT): 70000 is out of range",
            ),
            (
                MINIMAL.to_string(),
                vec![("RUG_LITE_APPLIANCE_API_PORT", "http")],
                "appliance.api_port (from RUG_LITE_APPLIANCE_API_PORT): \"http\" is not an integer",
            ),
            (
                format!("{MINIMAL}\n[scheduler]\ndebounce = 5"),
                vec![],
                "scheduler.debounce (from ",
            ),
            (
                MINIMAL.to_string(),
                vec![("RUG_LITE_APPLIANCE_ORCHESTRATOR_ADDRESS", "rug.example")],
                "appliance.orchestrator_address (from RUG_LITE_APPLIANCE_ORCHESTRATOR_ADDRESS)",
            ),
            (
                MINIMAL.to_string(),
                vec![("RUG_LITE_AMQP_URL", "http://x")],
                "amqp.url (from RUG_LITE_AMQP_URL): must start with amqp://",
            ),
            (
                MINIMAL.to_string(),
                vec![("RUG_LITE_AMQP_ULR", "amqp://x")],
                "environment variable RUG_LITE_AMQP_ULR: AMQP_ULR is not a setting",
            ),
            (
                format!("{MINIMAL}\n[resync]\nperiode = \"5s\""),
                vec![],
                "resync.periode is not a setting",
            ),
            (
                MINIMAL.replace("image = \"akanda-router\"\n", ""),
                vec![],
                "appliance.image is required (set it in the [appliance] section or in RUG_LITE_APPLIANCE_IMAGE)",
            ),
            (
                MINIMAL.replace("ca_key = \"/etc/rug-lite/ca.key\"\n", ""),
                vec![],
                "tls.ca_key is required",
            ),
            (
                MINIMAL.to_string(),
                vec![("RUG_LITE_TLS_INSECURE_HTTP", "maybe")],
                "tls.insecure_http (from RUG_LITE_TLS_INSECURE_HTTP)",
            ),
            (
                MINIMAL.to_string(),
                vec![("RUG_LITE_SCHEDULER_MAX_DEBOUNCE", "100ms")],
                "scheduler.max_debounce (from RUG_LITE_SCHEDULER_MAX_DEBOUNCE): must not be shorter",
            ),
            (
                MINIMAL.to_string(),
                vec![("RUG_LITE_RESYNC_PERIOD", "0s")],
                "resync.period (from RUG_LITE_RESYNC_PERIOD): must not be zero",
            ),
        ];
        for (toml, env, want) in cases {
            let err = load(&toml, &env).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn insecure_http_needs_no_ca() {
        let toml = MINIMAL.replace(
            "ca_cert = \"/etc/rug-lite/ca.pem\"\nca_key = \"/etc/rug-lite/ca.key\"\n",
            "insecure_http = true\n",
        );
        assert_eq!(load(&toml, &[]).unwrap().tls, TlsSettings::InsecureHttp);
    }

    #[test]
    fn unreadable_and_malformed_files_are_reported_with_their_path() {
        let err = Layered::load(Some(Path::new("/nonexistent/rug.toml")), std::iter::empty())
            .err()
            .unwrap();
        assert!(err
            .to_string()
            .starts_with("cannot read /nonexistent/rug.toml"));
        let err = load("[appliance\nimage=", &[]).unwrap_err();
        assert!(matches!(err, SettingsError::Syntax { .. }), "{err}");
    }

    #[test]
    fn the_admin_socket_alone_loads_from_a_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial.toml");
        std::fs::write(&path, "[admin]\nsocket = \"/tmp/x.sock\"\n").unwrap();
        let layered = Layered::load(Some(&path), std::iter::empty()).unwrap();
        assert_eq!(
            layered.text("admin", "socket").unwrap().unwrap(),
            "/tmp/x.sock"
        );
        assert!(
            layered.settings().is_err(),
            "the full settings still need the image"
        );
    }
}
