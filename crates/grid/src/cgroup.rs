//! Partitions in cgroups of their own (cgroup v2): `<root>/slapos/<partition>`.
//!
//! When a partition's processes are in that cgroup, `node collect` measures
//! the partition from it (CPU time of every process it ever ran, memory
//! with page cache, I/O bytes) and takes its process list from
//! `cgroup.procs`. As root, `node collect` puts the processes of a
//! partition's user there ([`adopt`]); children follow their parent, so the
//! services supervisord starts for the partition stay in it.

use std::path::{Path, PathBuf};

use crate::names::PartitionId;

/// The cgroup v2 hierarchy: `/sys/fs/cgroup` when it is cgroup v2, else the
/// `unified` hierarchy of a hybrid setup; None without cgroup v2.
pub fn unified_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC))
}

/// The cgroup of a partition under `root`.
pub fn partition_cgroup(root: &Path, partition: &PartitionId) -> PathBuf {
    partition.dir(&root.join("slapos"))
}

/// What a cgroup's files say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupUsage {
    /// Its processes (`cgroup.procs`).
    pub pids: Vec<i32>,
    /// CPU seconds of every process that ran in it (`cpu.stat` `usage_usec`).
    pub cpu_time: f64,
    /// Bytes of memory (`memory.current`), when the memory controller is on.
    pub memory: Option<u64>,
    /// Bytes read and written (`io.stat`), when the io controller is on.
    pub io_bytes: Option<u64>,
}

fn keyed(text: &str, keys: &[&str]) -> u64 {
    text.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| keys.contains(k))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// Reads a cgroup; None when it does not exist or holds no process.
pub fn read(dir: &Path) -> Option<CgroupUsage> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    let pids: Vec<i32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
    if pids.is_empty() {
        return None;
    }
    let usec = std::fs::read_to_string(dir.join("cpu.stat"))
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.trim().parse::<u64>().ok())))
        .unwrap_or(0);
    let memory = std::fs::read_to_string(dir.join("memory.current")).ok().and_then(|t| t.trim().parse().ok());
    // io.stat: "8:0 rbytes=1 wbytes=2 rios=3 …" per device
    let io_bytes = std::fs::read_to_string(dir.join("io.stat")).ok().map(|t| keyed(&t, &["rbytes", "wbytes"]));
    Some(CgroupUsage { pids, cpu_time: usec as f64 / 1e6, memory, io_bytes })
}

/// Puts `pids` into the partition's cgroup (made if needed, with the cpu,
/// memory, io and pids controllers the parent can give). Needs root.
/// Returns how many processes were moved (those that exited are skipped).
pub fn adopt(root: &Path, partition: &PartitionId, pids: &[i32]) -> std::io::Result<usize> {
    let slapos = root.join("slapos");
    let dir = partition_cgroup(root, partition);
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir)?;
        // best effort: a hybrid or delegated hierarchy may not give them
        for parent in [root, slapos.as_path()] {
            let available = std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
            for c in available.split_whitespace().filter(|c| ["cpu", "memory", "io", "pids"].contains(c)) {
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), format!("+{c}"));
            }
        }
    }
    let current: Vec<i32> = read(&dir).map(|u| u.pids).unwrap_or_default();
    let mut moved = 0;
    for pid in pids.iter().filter(|p| !current.contains(p)) {
        match std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
            Ok(()) => moved += 1,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_is_read_from_its_files() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()), None, "no cgroup.procs: not a cgroup");
        std::fs::write(d.path().join("cgroup.procs"), "").unwrap();
        assert_eq!(read(d.path()), None, "an empty cgroup is not measured");
        std::fs::write(d.path().join("cgroup.procs"), "12\n34\n").unwrap();
        std::fs::write(d.path().join("cpu.stat"), "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n").unwrap();
        std::fs::write(d.path().join("memory.current"), "4096\n").unwrap();
        std::fs::write(d.path().join("io.stat"), "8:0 rbytes=100 wbytes=20 rios=3 wios=4 dbytes=0 dios=0\n8:16 rbytes=1 wbytes=2\n")
            .unwrap();
        let u = read(d.path()).unwrap();
        assert_eq!(u, CgroupUsage { pids: vec![12, 34], cpu_time: 2.5, memory: Some(4096), io_bytes: Some(123) });
    }

    /// A process of ours moved into a fresh cgroup is measured from it.
    #[test]
    #[ignore = "needs root"]
    fn needs_root_a_child_is_adopted_and_measured() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let root = unified_root().expect("this test needs cgroup v2 (or the unified hierarchy)");
        let id = PartitionId::parse(&format!("slaptestcg{}", std::process::id())).unwrap();
        struct Cleanup(std::process::Child, PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
                let _ = std::fs::remove_dir(&self.1);
                let _ = self.1.parent().map(std::fs::remove_dir);
            }
        }
        let child =
            std::process::Command::new("sh").args(["-c", "i=0; while [ $i -lt 3000000 ]; do i=$((i+1)); done; sleep 30"]).spawn().unwrap();
        let pid = child.id() as i32;
        let guard = Cleanup(child, partition_cgroup(&root, &id));
        assert_eq!(adopt(&root, &id, &[pid]).unwrap(), 1);
        assert_eq!(adopt(&root, &id, &[pid]).unwrap(), 0, "already there");
        std::thread::sleep(std::time::Duration::from_millis(500));
        let u = read(&guard.1).unwrap();
        assert_eq!(u.pids, vec![pid]);
        assert!(u.cpu_time > 0.0, "{u:?}");
    }
}
