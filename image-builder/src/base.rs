//! The base tree: what the `root.d` scripts (debootstrap) produce, cached in the cache
//! directory by a hash of everything it depends on, so only the first build on a machine pays
//! for debootstrap.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::build::{io, BuildError, BuildOptions};
use crate::elements::{Element, ElementError, Where};
use crate::phases::ScriptEnv;
use crate::progress::Progress;

/// Bumped when the way the base is built changes in the builder itself, so old caches are
/// not reused.
const BASE_CACHE_VERSION: &str = "akanda-image base v1";

/// Inputs of the base tree: what `root.d` produces depends on nothing else.
pub(crate) fn base_cache_key(
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

/// Where the base of `key` is cached.
pub(crate) fn dir(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join(format!("base-{key}"))
}

/// Whether the base of `key` is already cached.
pub(crate) fn is_cached(cache_dir: &Path, key: &str) -> bool {
    dir(cache_dir, key).join("rootfs").is_dir()
}

/// Makes sure the base of `key` is in the cache: touches it when it is (so pruning keeps it),
/// else runs `root.d` into a staging directory and stores that. Returns whether it was cached.
pub(crate) fn ensure(
    env: &ScriptEnv,
    opts: &BuildOptions,
    key: &str,
    progress: &Progress,
    log: &mut File,
) -> Result<bool, BuildError> {
    let base = dir(&opts.cache_dir, key);
    if is_cached(&opts.cache_dir, key) {
        progress.println(&format!("base {key}: from the cache"));
        let _ = File::open(&base).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        return Ok(true);
    }
    check_mirror(&opts.mirror, &opts.release)?;
    let staging = opts
        .cache_dir
        .join(format!("base-{key}.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let rootfs = staging.join("rootfs");
    fs::create_dir_all(&rootfs).map_err(io("create the base directory"))?;
    let ran = env.run_phase("root.d", Where::Outside, &rootfs, progress, log);
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
    prune(&opts.cache_dir);
    Ok(false)
}

/// Keeps the three most recently used bases; older ones are removed.
fn prune(cache: &Path) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elements;

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
    fn unreachable_mirror_is_explained() {
        // Port 9 on localhost: nothing listens, so the connection is refused at once.
        let e = check_mirror("http://127.0.0.1:9/debian", "bookworm").unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("cannot reach the Debian mirror"), "{text}");
        assert!(text.contains("--mirror"), "{text}");
    }
}
