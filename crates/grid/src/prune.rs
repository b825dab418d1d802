//! `slapos node prune` (slapos.core's `cli/prune.py`): removes the shared
//! parts (`shared_part_list`, its last line) that no software and no
//! instance uses any more.
//!
//! SlapOS's logic: a shared part `<shared root>/<name>/<hash>` is used when
//! its `<hash>` appears in a signature: a software's `.installed.cfg` or
//! one of its `bin/*` scripts (in `software_root` and each
//! `--additional-software-directory`), another shared part's
//! `.buildout-shared.json` or `.*signature` file, or the same of a nested
//! SlapOS found in the instances (a `slapos.cfg` anywhere below
//! `instance_root` naming its own roots, followed recursively once each).
//! Parts found unused are removed; the search runs again without them
//! (a part only they used is unused now) until nothing more goes. With a
//! dry run, nothing is removed and the same passes are logged.
//!
//! Root-safe: everything is read through [`Dir`] (no link followed below
//! the configured roots, FIFOs never block, reads bounded), the walk of the
//! instances is bounded in depth and entries (beyond, nothing is pruned:
//! what was not searched may use any part), and a part is removed with
//! [`Dir::remove_tree`], which never crosses a link. A link in `bin/`
//! counts by its target's path (it is not followed). Software releases are
//! not removed here, as in SlapOS: `node software` removes the ones the
//! master says to destroy, and `--garbage-collect` the ones not supplied.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use slapos_config::Config;

use crate::fsafe::{Dir, Kind, LARGE};

/// Deepest directory looked into below an instance root.
const MAX_DEPTH: usize = 64;
/// Most entries looked at below the instance roots, in all (a nested
/// `slapos.cfg` naming many roots costs from the same budget).
const MAX_ENTRIES: usize = 10_000_000;

/// What `node prune` reads from slapos.cfg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneConfig {
    /// `software_root`.
    pub software_root: PathBuf,
    /// `instance_root`.
    pub instance_root: PathBuf,
    /// The last line of `shared_part_list`: where shared parts are made.
    pub shared_root: Option<PathBuf>,
    /// `pidfile_software`: no prune while `node software` runs (when
    /// set, as SlapOS: no lock without it).
    pub pidfile_software: Option<PathBuf>,
    /// `root_check` (default true).
    pub root_check: bool,
}

/// Why pruning stopped.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// A mandatory option is missing.
    #[error("{0}")]
    Config(String),
    /// A signature could not be read: nothing is removed on a partial view.
    #[error("cannot read {}: {source} (nothing pruned)", .path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A part could not be removed.
    #[error("cannot remove {}: {source}", .path.display())]
    Remove {
        /// The part.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl PruneConfig {
    /// `[slapos]` (else `[slapgrid]`) of slapos.cfg.
    pub fn from_config(config: &Config) -> Result<PruneConfig, PruneError> {
        let get = |k: &str| config.get_first(&["slapos", "slapgrid"], k).map(str::trim).filter(|v| !v.is_empty());
        let need = |k: &str| get(k).map(PathBuf::from).ok_or_else(|| PruneError::Config(format!("Missing mandatory parameters: {k}")));
        let root_check = match get("root_check") {
            None => true,
            Some(v) => {
                slapos_config::parse_bool(v).ok_or_else(|| PruneError::Config(format!("root_check must be True or False, not '{v}'")))?
            }
        };
        Ok(PruneConfig {
            software_root: need("software_root")?,
            instance_root: need("instance_root")?,
            shared_root: get("shared_part_list").and_then(last_line),
            pidfile_software: get("pidfile_software").map(PathBuf::from),
            root_check,
        })
    }
}

fn last_line(list: &str) -> Option<PathBuf> {
    list.lines().map(str::trim).rfind(|l| !l.is_empty()).map(PathBuf::from)
}

/// The hashes looked for, and where each was found.
struct Search {
    wanted: BTreeSet<String>,
    found: BTreeMap<String, PathBuf>,
    /// Entries the instance walk may still look at.
    budget: usize,
}

impl Search {
    fn look(&mut self, source: &Path, text: &[u8]) {
        let text = String::from_utf8_lossy(text);
        let hits: Vec<String> = self.wanted.iter().filter(|h| text.contains(h.as_str())).cloned().collect();
        for h in hits {
            self.wanted.remove(&h);
            self.found.insert(h, source.to_path_buf());
        }
    }

    /// Reads `rel` of `dir` as a signature; `strict`: an unreadable file
    /// stops the prune (a software's file), else it is skipped.
    fn file(&mut self, dir: &Dir, rel: &Path, strict: bool) -> Result<(), PruneError> {
        let path = dir.path().join(rel);
        match dir.metadata(rel).map(|m| m.kind) {
            Ok(Kind::Symlink) => {
                let target = dir.read_link(rel).map_err(|source| PruneError::Read { path: path.clone(), source })?;
                self.look(&path, target.as_os_str().as_encoded_bytes());
                Ok(())
            }
            Ok(Kind::File) => match dir.read_head_linked(rel, LARGE) {
                Ok(text) => {
                    self.look(&path, &text);
                    Ok(())
                }
                Err(source) if strict => Err(PruneError::Read { path, source }),
                Err(e) => {
                    tracing::debug!("skipped {}: {e}", path.display());
                    Ok(())
                }
            },
            Ok(_) if strict => Err(PruneError::Read { path, source: std::io::Error::other("not a regular file") }),
            _ => Ok(()),
        }
    }

    /// `<root>/*/.installed.cfg` and `<root>/*/bin/*`.
    fn software_root(&mut self, root: &Path) -> Result<(), PruneError> {
        let Ok(dir) = Dir::open(root) else {
            tracing::debug!("no software root at {}", root.display());
            return Ok(());
        };
        let read = |path: &Path, source| PruneError::Read { path: path.to_path_buf(), source };
        for (name, kind) in dir.entries(Path::new(".")).map_err(|e| read(root, e))? {
            if kind != Kind::Dir {
                continue;
            }
            let sd = dir.open_dir(Path::new(&name)).map_err(|e| read(&root.join(&name), e))?;
            if sd.exists(Path::new(".installed.cfg")) {
                self.file(&sd, Path::new(".installed.cfg"), true)?;
            }
            if let Ok(bin) = sd.open_dir(Path::new("bin")) {
                for (script, _) in bin.entries(Path::new(".")).map_err(|e| read(bin.path(), e))? {
                    self.file(&bin, Path::new(&script), false)?;
                }
            }
        }
        Ok(())
    }

    /// The signature files of the parts of `shared_root` not in `ignored`.
    fn shared_root(&mut self, shared_root: &Path, ignored: &BTreeSet<PathBuf>) -> Result<(), PruneError> {
        for (part, pd) in shared_parts(shared_root)? {
            if ignored.contains(&part) {
                continue;
            }
            for (name, _) in pd.entries(Path::new(".")).map_err(|source| PruneError::Read { path: part.clone(), source })? {
                let n = name.to_string_lossy();
                if n == ".buildout-shared.json" || (n.starts_with('.') && n.ends_with("signature")) {
                    self.file(&pd, Path::new(&name), true)?;
                }
            }
        }
        Ok(())
    }

    /// Nested SlapOS below `instance_root`: the roots their `slapos.cfg` name.
    fn instances(&mut self, instance_root: &Path, visited: &mut BTreeSet<PathBuf>) -> Result<(), PruneError> {
        if !visited.insert(instance_root.to_path_buf()) {
            return Ok(());
        }
        let Ok(top) = Dir::open(instance_root) else { return Ok(()) };
        let mut found = Vec::new();
        find_slapos_cfg(&top, 0, &mut self.budget, &mut found);
        if self.budget == 0 {
            // a part used by what was not looked at must not go
            let why = std::io::Error::other(format!(
                "too large to search for nested SlapOS (more than {MAX_ENTRIES} entries or {MAX_DEPTH} levels)"
            ));
            return Err(PruneError::Read { path: instance_root.to_path_buf(), source: why });
        }
        for (dir, path) in found {
            let Ok(text) = dir.read_head_linked(Path::new("slapos.cfg"), crate::fsafe::SMALL) else { continue };
            let Ok(cfg) = Config::parse(&String::from_utf8_lossy(&text)) else {
                tracing::debug!("ignored {}: not a configuration", path.display());
                continue;
            };
            let get = |k: &str| cfg.get("slapos", k).map(str::trim).filter(|v| !v.is_empty()).map(PathBuf::from);
            let (Some(software_root), Some(nested_instances)) = (get("software_root"), get("instance_root")) else { continue };
            tracing::debug!("nested SlapOS at {}", path.display());
            let shared = cfg.get("slapos", "shared_part_list").and_then(last_line).filter(|s| s.is_dir());
            if software_root.is_dir() {
                self.software_root(&software_root)?;
                if let Some(s) = shared {
                    self.shared_root(&s, &BTreeSet::new())?;
                }
            }
            if nested_instances.is_dir() {
                self.instances(&nested_instances, visited)?;
            }
        }
        Ok(())
    }
}

/// Every `slapos.cfg` below `dir` (links not followed, bounded).
fn find_slapos_cfg(dir: &Dir, depth: usize, budget: &mut usize, out: &mut Vec<(Dir, PathBuf)>) {
    let Ok(entries) = dir.entries(Path::new(".")) else { return };
    let mut subdirs = Vec::new();
    for (name, kind) in entries {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        match kind {
            Kind::File if name == "slapos.cfg" => {
                if let Ok(d) = dir.open_dir(Path::new(".")) {
                    out.push((d, dir.path().join("slapos.cfg")));
                }
            }
            Kind::Dir => subdirs.push(name),
            _ => {}
        }
    }
    if depth >= MAX_DEPTH {
        if !subdirs.is_empty() {
            // deeper than searched: counts as too large (nothing pruned)
            *budget = 0;
        }
        return;
    }
    for name in subdirs {
        if let Ok(sub) = dir.open_dir(Path::new(&name)) {
            find_slapos_cfg(&sub, depth + 1, budget, out);
        }
    }
}

/// The parts of a shared root: `<root>/<name>/<hash>` directories.
fn shared_parts(shared_root: &Path) -> Result<Vec<(PathBuf, Dir)>, PruneError> {
    let read = |path: &Path, source| PruneError::Read { path: path.to_path_buf(), source };
    let root = Dir::open(shared_root).map_err(|e| read(shared_root, e))?;
    let mut parts = Vec::new();
    for (name, kind) in root.entries(Path::new(".")).map_err(|e| read(shared_root, e))? {
        if kind != Kind::Dir {
            continue;
        }
        let nd = root.open_dir(Path::new(&name)).map_err(|e| read(&shared_root.join(&name), e))?;
        for (hash, kind) in nd.entries(Path::new(".")).map_err(|e| read(nd.path(), e))? {
            if kind == Kind::Dir {
                let pd = nd.open_dir(Path::new(&hash)).map_err(|e| read(&nd.path().join(&hash), e))?;
                parts.push((shared_root.join(&name).join(&hash), pd));
            }
        }
    }
    Ok(parts)
}

/// One pass: the parts of `shared_root` (not in `ignored`) whose hash no
/// signature holds, removed unless `dry_run`.
fn prune_pass(
    cfg: &PruneConfig,
    shared_root: &Path,
    extra: &[PathBuf],
    ignored: &BTreeSet<PathBuf>,
    dry_run: bool,
) -> Result<Vec<PathBuf>, PruneError> {
    let parts: Vec<PathBuf> = shared_parts(shared_root)?.into_iter().map(|(p, _)| p).filter(|p| !ignored.contains(p)).collect();
    let hash = |p: &Path| p.file_name().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let mut search = Search { wanted: parts.iter().map(|p| hash(p)).collect(), found: BTreeMap::new(), budget: MAX_ENTRIES };
    search.software_root(&cfg.software_root)?;
    search.shared_root(shared_root, ignored)?;
    for d in extra {
        if d.is_dir() {
            search.software_root(d)?;
        } else {
            tracing::warn!("Additional software directory does not exist: {}", d.display());
        }
    }
    search.instances(&cfg.instance_root, &mut BTreeSet::new())?;
    let mut pruned = Vec::new();
    for part in parts {
        if let Some(user) = search.found.get(&hash(&part)) {
            tracing::debug!("{} is used in {}", part.display(), user.display());
            continue;
        }
        if !dry_run {
            remove_part(shared_root, &part).map_err(|source| PruneError::Remove { path: part.clone(), source })?;
        }
        tracing::warn!("Unused shared parts at {}{}", part.display(), if dry_run { "" } else { " ... removed" });
        pruned.push(part);
    }
    Ok(pruned)
}

fn remove_part(shared_root: &Path, part: &Path) -> std::io::Result<()> {
    let rel = part.strip_prefix(shared_root).map_err(std::io::Error::other)?;
    let (Some(name), Some(hash)) = (rel.parent(), rel.file_name()) else { return Err(std::io::Error::other("not a part")) };
    Dir::open(shared_root)?.open_dir(name)?.remove_tree(Path::new(hash))
}

/// `node prune`: passes until none finds an unused part; the parts found
/// (removed unless `dry_run`).
pub fn run(cfg: &PruneConfig, additional_software_directories: &[PathBuf], dry_run: bool) -> Result<Vec<PathBuf>, PruneError> {
    let shared_root =
        cfg.shared_root.as_deref().ok_or_else(|| PruneError::Config("No shared_part_list options in slapos config".into()))?;
    tracing::warn!("Pruning shared directories at {}", shared_root.display());
    let mut ignored = BTreeSet::new();
    loop {
        let pruned = prune_pass(cfg, shared_root, additional_software_directories, &ignored, dry_run)?;
        if pruned.is_empty() {
            return Ok(ignored.into_iter().collect());
        }
        ignored.extend(pruned);
    }
}

#[cfg(test)]
mod tests;
