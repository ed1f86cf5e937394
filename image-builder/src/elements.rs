//! diskimage-builder-style elements: discovery, dependencies, phases and package lists.
//!
//! An element is a directory named after the element, found in one of the elements paths.
//! It may hold:
//! - phase directories (`root.d`, `extra-data.d`, `pre-install.d`, `install.d`,
//!   `post-install.d`, `post-root.d`, `finalise.d`, `cleanup.d`) with executable scripts;
//! - `element-deps`: element names, one per line (`#` comments);
//! - `element-provides`: virtual names this element provides (e.g. `operating-system`);
//! - `environment.d/`: shell snippets sourced before every script;
//! - `package-installs.yaml`: Debian packages to install;
//! - `README.md`: its first non-heading line is the element's one-line description.
//!
//! Everything here is pure file reading and ordering, so it is unit tested against temporary
//! element trees.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Where a phase's scripts run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Where {
    /// On the build host, with `TARGET_ROOT` pointing at the image's root tree.
    Outside,
    /// Inside the image tree with `chroot`.
    Chroot,
}

/// The phases, in the order they run. `block-device.d` is not here: disk assembly is the
/// builder's own (no loop devices), and an element that ships one gets an error, not silence.
pub(crate) const PHASES: &[(&str, Where)] = &[
    ("root.d", Where::Outside),
    ("extra-data.d", Where::Outside),
    ("pre-install.d", Where::Chroot),
    ("install.d", Where::Chroot),
    ("post-install.d", Where::Chroot),
    ("post-root.d", Where::Outside),
    ("finalise.d", Where::Chroot),
    ("cleanup.d", Where::Outside),
];

#[derive(Debug, thiserror::Error)]
pub enum ElementError {
    #[error("element {0:?} not found in the elements path ({1})")]
    NotFound(String, String),
    #[error(
        "element {element:?} depends on {dep:?}, which is not found in the elements path ({path})"
    )]
    MissingDep {
        element: String,
        dep: String,
        path: String,
    },
    #[error("element dependency cycle: {0}")]
    Cycle(String),
    #[error("{0} and {1} both provide {2:?}: pick one")]
    Conflict(String, String, String),
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ElementError + '_ {
    move |source| ElementError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One element as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub dir: PathBuf,
    pub deps: Vec<String>,
    pub(crate) provides: Vec<String>,
    pub description: String,
}

impl Element {
    /// Executable scripts of one phase, in lexical order. Files without an execute bit are
    /// skipped, as diskimage-builder does (READMEs and data files live next to scripts).
    pub(crate) fn scripts(&self, phase: &str) -> Result<Vec<PathBuf>, ElementError> {
        executables(&self.dir.join(phase))
    }

    /// Environment snippets (`environment.d/*`), in lexical order.
    pub(crate) fn environment(&self) -> Result<Vec<PathBuf>, ElementError> {
        files(&self.dir.join("environment.d"))
    }

    /// Packages from `package-installs.yaml`.
    pub(crate) fn packages(&self) -> Result<Vec<String>, ElementError> {
        let path = self.dir.join("package-installs.yaml");
        match fs::read_to_string(&path) {
            Ok(text) => parse_package_installs(&text).map_err(|message| ElementError::Invalid {
                path: path.display().to_string(),
                message,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

fn files(dir: &Path) -> Result<Vec<PathBuf>, ElementError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        if path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn executables(dir: &Path) -> Result<Vec<PathBuf>, ElementError> {
    let mut out = Vec::new();
    for path in files(dir)? {
        let mode = fs::metadata(&path)
            .map_err(io_err(&path))?
            .permissions()
            .mode();
        if mode & 0o111 != 0 {
            out.push(path);
        }
    }
    Ok(out)
}

/// `package-installs.yaml`: a map from Debian package name to nothing, or to a map of options.
/// Only `phase` is accepted (and ignored: every package goes into the cached base, which is
/// what makes rebuilds fast); other diskimage-builder keys (`uninstall`, `when`, `arch`, ...)
/// are refused by name so an element never silently does less than it says.
pub(crate) fn parse_package_installs(text: &str) -> Result<Vec<String>, String> {
    let value: serde_norway::Value =
        serde_norway::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    let map = match value {
        serde_norway::Value::Null => return Ok(Vec::new()),
        serde_norway::Value::Mapping(m) => m,
        _ => return Err("expected a map of package names".into()),
    };
    let mut out = Vec::new();
    for (key, options) in map {
        let name = key
            .as_str()
            .ok_or_else(|| format!("package name {key:?} is not a string"))?
            .to_string();
        if !valid_package_name(&name) {
            return Err(format!("{name:?} is not a Debian package name"));
        }
        match options {
            serde_norway::Value::Null => {}
            serde_norway::Value::Mapping(m) => {
                for (k, _) in m {
                    let k = k.as_str().unwrap_or("?");
                    if k != "phase" {
                        return Err(format!(
                            "{name}: option {k:?} is not supported by akanda-image (only \"phase\")"
                        ));
                    }
                }
            }
            other => return Err(format!("{name}: expected nothing or a map, got {other:?}")),
        }
        out.push(name);
    }
    Ok(out)
}

/// Debian policy 5.6.1: lower case letters, digits, `+ - .`, at least two characters, starting
/// with an alphanumeric. Checked because the names end up on debootstrap's command line.
fn valid_package_name(name: &str) -> bool {
    name.len() >= 2
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

fn read_list(path: &Path) -> Result<Vec<String>, ElementError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// First line of README.md that is not a heading or blank.
fn description(dir: &Path) -> String {
    fs::read_to_string(dir.join("README.md"))
        .ok()
        .and_then(|t| {
            t.lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// All elements in the given paths. An element in an earlier path hides one of the same name
/// in a later path, so operators can override a default element.
pub fn discover(paths: &[PathBuf]) -> Result<BTreeMap<String, Element>, ElementError> {
    let mut out = BTreeMap::new();
    for base in paths {
        let entries = fs::read_dir(base).map_err(io_err(base))?;
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for dir in dirs {
            let name = match dir.file_name().and_then(|n| n.to_str()) {
                Some(n) if !n.starts_with('.') => n.to_string(),
                _ => continue,
            };
            if out.contains_key(&name) {
                continue;
            }
            if dir.join("block-device.d").is_dir() {
                return Err(ElementError::Invalid {
                    path: dir.join("block-device.d").display().to_string(),
                    message: "block-device.d is not supported: akanda-image assembles the disk \
                              itself, without loop devices"
                        .into(),
                });
            }
            let element = Element {
                deps: read_list(&dir.join("element-deps"))?,
                provides: read_list(&dir.join("element-provides"))?,
                description: description(&dir),
                name: name.clone(),
                dir,
            };
            out.insert(name, element);
        }
    }
    Ok(out)
}

/// The requested elements plus everything they depend on, dependencies first. Among elements
/// that do not depend on each other the order is by name, so it is stable across runs.
pub(crate) fn resolve(
    all: &BTreeMap<String, Element>,
    requested: &[String],
    paths: &[PathBuf],
) -> Result<Vec<Element>, ElementError> {
    let path_text = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    // Virtual names (element-provides) resolve to the element that provides them, when that
    // element is itself part of the build.
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut stack: Vec<(Option<String>, String)> =
        requested.iter().map(|r| (None, r.clone())).collect();
    while let Some((from, name)) = stack.pop() {
        if wanted.contains(&name) {
            continue;
        }
        let Some(element) = all.get(&name) else {
            // A dependency on a virtual name is satisfied by any element providing it.
            if all.values().any(|e| e.provides.contains(&name)) {
                continue;
            }
            return Err(match from {
                None => ElementError::NotFound(name, path_text),
                Some(element) => ElementError::MissingDep {
                    element,
                    dep: name,
                    path: path_text,
                },
            });
        };
        wanted.insert(name.clone());
        for dep in &element.deps {
            stack.push((Some(name.clone()), dep.clone()));
        }
    }
    let mut provided: BTreeMap<&str, &str> = BTreeMap::new();
    for name in &wanted {
        for p in &all[name].provides {
            if let Some(other) = provided.insert(p, name) {
                return Err(ElementError::Conflict(
                    other.into(),
                    name.clone(),
                    p.clone(),
                ));
            }
        }
    }
    // A virtual dependency that nothing in the build provides is an error.
    let real_dep = |dep: &str| -> Result<Option<String>, ElementError> {
        if wanted.contains(dep) {
            Ok(Some(dep.to_string()))
        } else if let Some(p) = provided.get(dep) {
            Ok(Some((*p).to_string()))
        } else {
            Ok(None)
        }
    };
    // Kahn's algorithm over the wanted set, smallest name first.
    let mut deps_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in &wanted {
        let mut set = BTreeSet::new();
        for dep in &all[name].deps {
            match real_dep(dep)? {
                Some(d) if d != *name => {
                    set.insert(d);
                }
                Some(_) => {}
                None => {
                    return Err(ElementError::MissingDep {
                        element: name.clone(),
                        dep: dep.clone(),
                        path: path_text.clone(),
                    })
                }
            }
        }
        deps_of.insert(name.clone(), set);
    }
    let mut order = Vec::new();
    while !deps_of.is_empty() {
        let ready = deps_of
            .iter()
            .find(|(_, deps)| deps.is_empty())
            .map(|(n, _)| n.clone());
        let Some(ready) = ready else {
            let left: Vec<&String> = deps_of.keys().collect();
            return Err(ElementError::Cycle(format!(
                "{left:?} depend on each other"
            )));
        };
        deps_of.remove(&ready);
        for deps in deps_of.values_mut() {
            deps.remove(&ready);
        }
        order.push(all[&ready].clone());
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(root: &Path, name: &str, deps: &[&str], provides: &[&str], readme: &str) {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("element-deps"), deps.join("\n")).unwrap();
        if !provides.is_empty() {
            fs::write(dir.join("element-provides"), provides.join("\n")).unwrap();
        }
        fs::write(dir.join("README.md"), readme).unwrap();
    }

    fn names(v: &[Element]) -> Vec<&str> {
        v.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn dependencies_come_first_and_virtual_names_resolve() {
        let d = tempfile::tempdir().unwrap();
        element(
            d.path(),
            "os",
            &[],
            &["operating-system"],
            "# os\n\nThe OS.\n",
        );
        element(d.path(), "agent", &["operating-system"], &[], "Agent.");
        element(d.path(), "router", &["agent", "services"], &[], "");
        element(d.path(), "services", &["os"], &[], "");
        element(d.path(), "unused", &[], &[], "");
        let paths = vec![d.path().to_path_buf()];
        let all = discover(&paths).unwrap();
        assert_eq!(all["os"].description, "The OS.");
        let order = resolve(&all, &["router".into()], &paths).unwrap();
        assert_eq!(names(&order), ["os", "agent", "services", "router"]);
    }

    #[test]
    fn earlier_path_overrides_later() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        element(a.path(), "x", &[], &[], "from a");
        element(b.path(), "x", &[], &[], "from b");
        let all = discover(&[a.path().into(), b.path().into()]).unwrap();
        assert_eq!(all["x"].description, "from a");
    }

    #[test]
    fn missing_dependency_and_cycle_are_named() {
        let d = tempfile::tempdir().unwrap();
        element(d.path(), "a", &["b"], &[], "");
        element(d.path(), "b", &["a"], &[], "");
        element(d.path(), "c", &["nope"], &[], "");
        let paths = vec![d.path().to_path_buf()];
        let all = discover(&paths).unwrap();
        let e = resolve(&all, &["a".into()], &paths).unwrap_err();
        assert!(e.to_string().contains("cycle"), "{e}");
        let e = resolve(&all, &["c".into()], &paths).unwrap_err();
        assert!(
            e.to_string().contains("element \"c\" depends on \"nope\""),
            "{e}"
        );
        let e = resolve(&all, &["zzz".into()], &paths).unwrap_err();
        assert!(e.to_string().contains("element \"zzz\" not found"), "{e}");
    }

    #[test]
    fn two_providers_conflict() {
        let d = tempfile::tempdir().unwrap();
        element(d.path(), "deb", &[], &["operating-system"], "");
        element(d.path(), "ubu", &[], &["operating-system"], "");
        let paths = vec![d.path().to_path_buf()];
        let all = discover(&paths).unwrap();
        let e = resolve(&all, &["deb".into(), "ubu".into()], &paths).unwrap_err();
        assert!(e.to_string().contains("both provide"), "{e}");
    }

    #[test]
    fn only_executable_scripts_in_lexical_order() {
        let d = tempfile::tempdir().unwrap();
        element(d.path(), "e", &[], &[], "");
        let phase = d.path().join("e/install.d");
        fs::create_dir_all(&phase).unwrap();
        for (name, mode) in [("20-b", 0o755), ("10-a", 0o755), ("15-data", 0o644)] {
            fs::write(phase.join(name), "#!/bin/sh\n").unwrap();
            fs::set_permissions(phase.join(name), fs::Permissions::from_mode(mode)).unwrap();
        }
        let all = discover(&[d.path().into()]).unwrap();
        let scripts = all["e"].scripts("install.d").unwrap();
        let names: Vec<_> = scripts
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["10-a", "20-b"]);
    }

    #[test]
    fn block_device_d_is_refused() {
        let d = tempfile::tempdir().unwrap();
        element(d.path(), "e", &[], &[], "");
        fs::create_dir_all(d.path().join("e/block-device.d")).unwrap();
        let e = discover(&[d.path().into()]).unwrap_err();
        assert!(e.to_string().contains("without loop devices"), "{e}");
    }

    #[test]
    fn package_installs() {
        assert_eq!(
            parse_package_installs("dnsmasq-base:\nbird2:\n  phase: install.d\n").unwrap(),
            ["dnsmasq-base", "bird2"]
        );
        assert_eq!(parse_package_installs("").unwrap(), Vec::<String>::new());
        let e = parse_package_installs("vim:\n  uninstall: true\n").unwrap_err();
        assert!(e.contains("\"uninstall\" is not supported"), "{e}");
        let e = parse_package_installs("Bad_Name:\n").unwrap_err();
        assert!(e.contains("not a Debian package name"), "{e}");
        assert!(parse_package_installs("- a\n- b\n").is_err());
    }
}
