//! `local_software_release_root` (`--local-software-release-root`): software
//! releases given as local paths under the root follow it when it moves. At
//! start, if the configured root differs from the one stored, the new one
//! is stored and, unless one root is under the other, every supplied or
//! requested software release path under the old root is rebased onto the
//! new one (after a copy of the database), as the Python proxy does at its
//! first request. A path is kept when its rebased file does not exist but
//! the old one does. Absent, the root is `/`. On PostgreSQL there is no file
//! to copy: the rebase is one transaction (which checks the stored root
//! again, so two masters starting together rebase once); keep your own
//! dumps (`pg_dump`) as for any change of the site.

use std::path::{Path, PathBuf};

use crate::store::{AnyStore, Store, StoreError, Tx};

/// The setting holding the root the stored paths are relative to.
const SETTING: &str = "local_software_release_root";

/// Lexically normalised absolute path (Python's `os.path.abspath`).
fn abspath(p: &str) -> Vec<String> {
    let joined = if p.starts_with('/') {
        p.to_string()
    } else {
        let cwd = std::env::current_dir().map(|d| d.to_string_lossy().into_owned()).unwrap_or_else(|_| "/".into());
        format!("{cwd}/{p}")
    };
    let mut parts: Vec<String> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other.to_string()),
        }
    }
    parts
}

/// Python's `os.path.relpath(path, start)`.
pub fn relpath(path: &str, start: &str) -> String {
    let (path, start) = (abspath(path), abspath(start));
    let common = path.iter().zip(&start).take_while(|(a, b)| a == b).count();
    let mut rel: Vec<&str> = vec![".."; start.len() - common];
    rel.extend(path[common..].iter().map(String::as_str));
    if rel.is_empty() {
        ".".into()
    } else {
        rel.join("/")
    }
}

/// Python's `os.path.join(a, b)` for a relative `b`.
fn join(a: &str, b: &str) -> String {
    if a.ends_with('/') || a.is_empty() {
        format!("{a}{b}")
    } else {
        format!("{a}/{b}")
    }
}

/// Whether `url` has a URL scheme (Python's `urlparse(url).scheme`).
fn has_scheme(url: &str) -> bool {
    !crate::relay::urlsplit(url).0.is_empty()
}

/// The URL rebased from `old` onto `new`, or None to keep it.
pub fn rebase(url: &str, old: &str, new: &str, is_file: &dyn Fn(&str) -> bool) -> Option<String> {
    if url.is_empty() || has_scheme(url) {
        return None;
    }
    let rel = relpath(url, old);
    if rel.starts_with("../") {
        return None;
    }
    let rebased = join(new, &rel);
    if !is_file(&rebased) && is_file(url) {
        return None;
    }
    Some(rebased).filter(|r| r != url)
}

/// Whether paths must move from `old` to `new` (neither under the other).
pub fn must_rebase(old: &str, new: &str) -> bool {
    let rel = relpath(new, old);
    rel.starts_with("../") && rel.rsplit('/').next() != Some("..")
}

/// Stores `root` (None: `/`) and rebases local software release paths if it
/// moved; returns how many URLs changed.
pub fn apply(store: &AnyStore, root: Option<&Path>) -> Result<usize, StoreError> {
    let new = root.map(|r| r.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into());
    let old = store.read(|tx: &mut dyn Tx| tx.setting(SETTING))?.unwrap_or_else(|| "/".into());
    if old == new {
        return Ok(0);
    }
    let moving = must_rebase(&old, &new);
    if moving {
        let stamp = chrono::Local::now().format("%Y-%m-%dT%H:%M:%S%.6f").to_string();
        match store {
            AnyStore::Sqlite(sqlite) => {
                let backup = sqlite.backup(&stamp)?;
                tracing::info!("local software release root moved from {old} to {new}: database copied to {}", backup.display());
            }
            AnyStore::Postgres(_) => tracing::info!("local software release root moved from {old} to {new}: rebasing in one transaction"),
        }
    } else {
        tracing::info!("local software release root is now {new} (was {old}): nothing to rebase, one is under the other");
    }
    let is_file = |p: &str| PathBuf::from(p).is_file();
    store.transaction(|tx: &mut dyn Tx| -> Result<usize, StoreError> {
        // another master may have moved it meanwhile (PostgreSQL)
        let current = tx.setting(SETTING)?.unwrap_or_else(|| "/".into());
        tx.set_setting(SETTING, &new)?;
        if !moving || current != old {
            return Ok(0);
        }
        let mut urls: Vec<String> = tx.software_releases(None)?.into_iter().map(|s| s.url).collect();
        urls.extend(tx.partitions(None)?.into_iter().filter_map(|p| p.software_release));
        urls.sort();
        urls.dedup();
        let mut n = 0;
        for url in urls {
            if let Some(rebased) = rebase(&url, &old, &new, &is_file) {
                tracing::info!("software release {url} rebased to {rebased}");
                tx.rename_software(&url, &rebased)?;
                n += 1;
            }
        }
        Ok(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relpath_is_pythons() {
        assert_eq!(relpath("/opt/sr", "/srv/sr"), "../../opt/sr");
        assert_eq!(relpath("/srv/sr/a/software.cfg", "/srv/sr"), "a/software.cfg");
        assert_eq!(relpath("/srv", "/srv/sr"), "..");
        assert_eq!(relpath("/srv/sr", "/srv/sr/"), ".");
        assert_eq!(relpath("/a//b/./c/../d", "/"), "a/b/d");
    }

    #[test]
    fn roots_under_one_another_do_not_rebase() {
        assert!(!must_rebase("/", "/srv/sr"), "a subpath");
        assert!(!must_rebase("/srv/sr", "/srv"), "a superpath");
        assert!(!must_rebase("/srv/sr", "/"), "a superpath");
        assert!(must_rebase("/srv/sr", "/opt/sr"));
        assert!(must_rebase("/srv/sr", "/srv/other"));
    }

    #[test]
    fn urls_are_rebased_as_python_does() {
        let none = |_: &str| false;
        assert_eq!(rebase("/srv/sr/a/software.cfg", "/srv/sr", "/opt/sr", &none).as_deref(), Some("/opt/sr/a/software.cfg"));
        assert_eq!(rebase("http://x/software.cfg", "/srv/sr", "/opt/sr", &none), None);
        assert_eq!(rebase("/elsewhere/software.cfg", "/srv/sr", "/opt/sr", &none), None);
        // the old file exists and the new one not: kept
        let old_only = |p: &str| p.starts_with("/srv/");
        assert_eq!(rebase("/srv/sr/a/software.cfg", "/srv/sr", "/opt/sr", &old_only), None);
        // both exist: rebased
        let both = |_: &str| true;
        assert_eq!(rebase("/srv/sr/a/software.cfg", "/srv/sr", "/opt/sr", &both).as_deref(), Some("/opt/sr/a/software.cfg"));
    }
}
