//! A computer partition as every node command sees it: the gate of the
//! partitions from the master ([`select_partitions`]), the partition's
//! owner (ownership decides, not names) and the chown of what root made in
//! it. Shared by `instance`, `promise` and `report`, which otherwise do not
//! import each other.

use std::path::Path;

use slap::model::ComputerPartition;

use crate::fsafe::Dir;
use crate::names;
use crate::node::{Node, NodeError};

/// The partition's owner, from the directory (ownership decides, not
/// names).
#[derive(Debug, Clone)]
pub struct Owner {
    /// The owner's uid.
    pub uid: u32,
    /// The owner's gid.
    pub gid: u32,
    /// The owner's user name (the uid as text when it has none).
    pub name: String,
    /// The owner's home (the partition directory when it has none).
    pub home: String,
}

impl Owner {
    /// The owner of the directory `path` (not followed when it is a link).
    pub fn of(path: &Path) -> std::io::Result<Owner> {
        let m = Dir::open_nofollow(path)?.own_metadata()?;
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(m.uid)).ok().flatten();
        Ok(Owner {
            uid: m.uid,
            gid: m.gid,
            name: user.as_ref().map(|u| u.name.clone()).unwrap_or_else(|| m.uid.to_string()),
            home: user.map(|u| u.dir.display().to_string()).unwrap_or_else(|| path.display().to_string()),
        })
    }

    /// The `(uid, gid)` to give what root creates in the partition: `None`
    /// unless we are root (a user keeps its own files).
    pub fn give_to(&self) -> Option<(u32, u32)> {
        nix::unistd::geteuid().is_root().then_some((self.uid, self.gid))
    }
}

/// Gives the tree `rel` of the partition `pp` to `uid:gid` (as root; only
/// what differs is changed; links and hard-linked files are never
/// followed, see [`Dir::chown_tree`]). Failures are logged.
pub(crate) fn chown_tree(pp: &Path, rel: &str, uid: u32, gid: u32) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    if let Err(e) = Dir::open_nofollow(pp).and_then(|pd| pd.chown_tree(Path::new(rel), uid, gid)) {
        tracing::warn!("{e}");
    }
}

/// A line of a program's output (buildout, promises) run for partition
/// `id`: prefixed with the partition on the console, where several
/// partitions run at once.
pub(crate) fn output(id: &str, line: &str) {
    tracing::info!("[{id}] {line}");
}

/// The partitions `node instance`, `report` and `promise` work on: unknown
/// `--only-cp` ids are an error; partitions with an invalid id or software
/// URL are refused (reported when `report_missing` and their id is valid);
/// missing directories are reported; free partitions are cleaned and
/// skipped.
pub fn select_partitions<'a>(
    node: &Node,
    partitions: &'a [ComputerPartition],
    only: &[String],
    report_missing: bool,
) -> Result<Vec<&'a ComputerPartition>, NodeError> {
    if let Some(o) = only.iter().find(|o| !partitions.iter().any(|p| &p.partition_id == *o)) {
        return Err(NodeError::UnknownPartition { id: o.clone(), computer_id: node.cfg.computer_id.clone() });
    }
    let report = |id: &str, msg: &str| {
        tracing::error!("{msg}");
        if report_missing {
            let _ = node.client.partition_error(&node.cfg.computer_id, id, msg, None);
        }
    };
    let mut out = Vec::new();
    for p in partitions.iter().filter(|p| only.is_empty() || only.contains(&p.partition_id)) {
        // the gate: nothing is done with a partition whose names are invalid
        let pp = match names::check_partition(p) {
            Ok(id) => id.dir(&node.cfg.instance_root),
            Err(r) => {
                let msg = format!("Computer Partition refused: {r}");
                match &r.id {
                    Some(id) => report(id.as_str(), &msg),
                    None => tracing::error!("{msg}"),
                }
                continue;
            }
        };
        if !pp.is_dir() {
            report(&p.partition_id, &format!("Partition directory {} does not exist.", pp.display()));
            continue;
        }
        if p.is_free() {
            clean_free(&pp, &p.partition_id);
            continue;
        }
        out.push(p);
    }
    Ok(out)
}

/// A free partition: its `.slapgrid` and `.timestamp` go, what else is left
/// is logged.
fn clean_free(pp: &Path, id: &str) {
    let Ok(pd) = Dir::open_nofollow(pp) else { return };
    let _ = pd.remove_tree(Path::new(".slapgrid"));
    let _ = pd.remove_file(Path::new(".timestamp"));
    let left: Vec<String> = pd
        .entries(Path::new("."))
        .map(|es| es.into_iter().map(|(n, _)| n.to_string_lossy().into_owned()).filter(|n| n != ".slapos-resource").collect())
        .unwrap_or_default();
    if !left.is_empty() {
        tracing::warn!("Free partition {id} contains files: {}", left.join(", "));
    }
}
