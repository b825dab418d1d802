//! Snapshots of a directory tree, to check that something outside the
//! places a node may write has not changed.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Every entry under `root` (links not followed) but under `skip`: kind,
/// size, mode, owner, mtime and content of files.
pub fn snapshot(root: &Path, skip: &[PathBuf]) -> BTreeMap<PathBuf, String> {
    fn walk(p: &Path, skip: &[PathBuf], out: &mut BTreeMap<PathBuf, String>) {
        if skip.iter().any(|s| p.starts_with(s)) {
            return;
        }
        let Ok(m) = std::fs::symlink_metadata(p) else { return };
        let content = if m.is_file() { std::fs::read(p).unwrap_or_default() } else { Vec::new() };
        // (a directory's size and times change with its entries, which are listed)
        let (len, mtime) = if m.is_dir() { (0, 0) } else { (m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000) };
        let kind = m.file_type();
        out.insert(
            p.to_path_buf(),
            format!("{kind:?} {len} {:o} {}:{} {mtime} {}", m.mode(), m.uid(), m.gid(), String::from_utf8_lossy(&content)),
        );
        if m.is_dir() {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                walk(&e.path(), skip, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, skip, &mut out);
    out
}

/// The paths that differ between two snapshots, each with what happened.
pub fn differences(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let keys: BTreeSet<&PathBuf> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| {
            let what = match (before.get(k), after.get(k)) {
                (None, _) => "created".to_string(),
                (_, None) => "removed".to_string(),
                (Some(a), Some(b)) => format!("changed: {a:.80} -> {b:.80}"),
            };
            format!("{} ({what})", k.display())
        })
        .collect()
}
