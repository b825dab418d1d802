//! One sample of the node: each partition's processes (from its cgroup when
//! it has one, else from /proc by its user), the machine's load, memory,
//! network and disks; CPU percentages over a measure interval, as
//! slapos.collect measures them with psutil.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::db::{ComputerRow, PartitionRow, SystemRow, UserRow};
use crate::cgroup;
use crate::names::PartitionId;
use crate::procstat::{self, ProcessSample};

/// A partition of the node, as found in the instance root.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    /// Its id: the directory's name (`slappart<N>`).
    pub id: PartitionId,
    /// Its directory, `instance_root/<id>`.
    pub path: PathBuf,
    /// The directory's owner, taken as the partition's user.
    pub uid: u32,
    /// Its user's name (the label of its rows, as slapos.collect), or its id
    /// when the user has no name.
    pub user: String,
    /// Its processes can be told by their user: a user of its own, not root
    /// and not the one running collect (a local node shares one user).
    pub by_uid: bool,
}

/// The directories `<base><number>` of `instance_root` (real directories,
/// not links), in number order, with their owners.
pub fn partitions(instance_root: &Path, base: &str) -> Vec<Partition> {
    let Ok(rd) = std::fs::read_dir(instance_root) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, Partition)> = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix(base).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        let (Ok(id), Ok(meta)) = (PartitionId::parse(&name), std::fs::symlink_metadata(e.path())) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let user = nix::unistd::User::from_uid(meta.uid().into()).ok().flatten().map(|u| u.name).unwrap_or_else(|| name.clone());
        found.push((n, Partition { id, path: e.path(), uid: meta.uid(), user, by_uid: false }));
    }
    found.sort_by_key(|(n, _)| *n);
    let me = nix::unistd::geteuid().as_raw();
    let mut count: BTreeMap<u32, usize> = BTreeMap::new();
    for (_, p) in &found {
        *count.entry(p.uid).or_default() += 1;
    }
    found
        .into_iter()
        .map(|(_, mut p)| {
            p.by_uid = p.uid != 0 && p.uid != me && count[&p.uid] == 1;
            p
        })
        .collect()
}

/// One sample of the node.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// UTC date of the sample, `YYYY-MM-DD` (every row's `date` column).
    pub date: String,
    /// UTC time of the sample, `HH:MM:SS` (every row's `time` column).
    pub time: String,
    /// One `user` row per process of a measured partition.
    pub users: Vec<UserRow>,
    /// One `partition` row per measured partition.
    pub partitions: Vec<PartitionRow>,
    /// The machine's `system` row.
    pub system: SystemRow,
    /// The machine's `computer` row.
    pub computer: ComputerRow,
    /// The mounted block devices (`disk` rows).
    pub disks: Vec<procstat::Disk>,
}

/// Where a partition's processes are.
struct Members<'a> {
    part: &'a Partition,
    cgroup: Option<(PathBuf, cgroup::CgroupUsage)>,
}

fn members<'a>(parts: &'a [Partition], cgroup_root: Option<&Path>) -> Vec<Members<'a>> {
    parts
        .iter()
        .map(|part| {
            let cg = cgroup_root.map(|r| cgroup::partition_cgroup(r, &part.id)).and_then(|d| cgroup::read(&d).map(|u| (d, u)));
            Members { part, cgroup: cg }
        })
        .filter(|m| m.cgroup.is_some() || m.part.by_uid)
        .collect()
}

/// psutil's `cpu_percent()` of a process between two readings.
fn cpu_percent(before: &ProcessSample, wall: f64) -> f64 {
    match procstat::process(before.pid) {
        Some(after) if after.start_time == before.start_time && wall > 0.0 => {
            (100.0 * (after.own_cpu_time - before.own_cpu_time) / wall * 10.0).round() / 10.0
        }
        _ => 0.0,
    }
}

/// Takes one sample; CPU percentages are measured over `interval`.
pub fn take(parts: &[Partition], interval: Duration, cgroup_root: Option<&Path>) -> Sample {
    let now = chrono::Utc::now();
    let ms = members(parts, cgroup_root);
    let uids: BTreeSet<u32> = ms.iter().filter(|m| m.part.by_uid).map(|m| m.part.uid).collect();
    let pids: BTreeSet<i32> = ms.iter().filter_map(|m| m.cgroup.as_ref()).flat_map(|(_, u)| u.pids.iter().copied()).collect();
    let (ticks0, start) = (procstat::cpu_ticks(), Instant::now());
    let procs = procstat::processes(&uids, &pids);
    std::thread::sleep(interval);
    let wall = start.elapsed().as_secs_f64();
    let ticks1 = procstat::cpu_ticks();
    let (mem_total, mem_available) = procstat::memory();
    let mut sample = Sample { date: now.format("%Y-%m-%d").to_string(), time: now.format("%H:%M:%S").to_string(), ..Default::default() };
    for m in &ms {
        let cg_pids: BTreeSet<i32> = m.cgroup.as_ref().map(|(_, u)| u.pids.iter().copied().collect()).unwrap_or_default();
        let mine: Vec<&ProcessSample> =
            procs.iter().filter(|p| cg_pids.contains(&p.pid) || (m.part.by_uid && p.uid == m.part.uid)).collect();
        let mut row = PartitionRow {
            partition: m.part.id.as_str().to_string(),
            user: m.part.user.clone(),
            source: "proc",
            cpu_time: 0.0,
            cpu_percent: 0.0,
            memory: 0,
            process_count: mine.len(),
            io_bytes: 0,
        };
        for p in &mine {
            let pct = cpu_percent(p, wall);
            sample.users.push(UserRow {
                partition: m.part.user.clone(),
                pid: p.pid,
                process: format!("{}-{}", p.pid, slap::marshal::python_float_repr(p.start_time)),
                cpu_percent: pct,
                cpu_time: p.cpu_time,
                cpu_num_threads: p.threads,
                memory_percent: if mem_total > 0 { 100.0 * p.rss as f64 / mem_total as f64 } else { 0.0 },
                memory_rss: p.rss,
                io_rw_counter: p.io_bytes,
                io_cycles_counter: p.io_calls,
            });
            row.cpu_time += p.cpu_time;
            row.cpu_percent += pct;
            row.memory += p.rss;
            row.io_bytes += p.io_bytes;
        }
        if let Some((dir, before)) = &m.cgroup {
            let after = cgroup::read(dir).unwrap_or_else(|| before.clone());
            row.source = "cgroup";
            row.cpu_time = after.cpu_time;
            row.cpu_percent = if wall > 0.0 { (100.0 * (after.cpu_time - before.cpu_time) / wall * 10.0).round() / 10.0 } else { 0.0 };
            row.memory = after.memory.unwrap_or(row.memory);
            row.io_bytes = after.io_bytes.unwrap_or(row.io_bytes);
        }
        sample.partitions.push(row);
    }
    sample.system = SystemRow {
        loadavg: procstat::load_one(),
        cpu_percent: procstat::busy_percent(ticks0, ticks1),
        memory_used: mem_total.saturating_sub(mem_available),
        memory_free: mem_available,
        net: procstat::net_counters(),
    };
    sample.disks = procstat::disks();
    sample.computer = ComputerRow {
        cpu_num_core: std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1),
        memory_size: mem_total,
        partition_list: sample.disks.iter().map(|d| format!("{}={}", d.device, d.total)).collect::<Vec<_>>().join(";"),
    };
    sample
}

/// The disk use of a directory in KiB, as `du -s` counts it (allocated
/// blocks, hard links once, links not followed), plus the extra disks
/// linked in its `DATA/` directory by root (a link its user made is not
/// followed: it could point anywhere).
pub fn disk_use_kib(dir: &Path) -> u64 {
    let mut seen = BTreeSet::new();
    let mut total = walk_blocks(dir, &mut seen);
    if let Ok(rd) = std::fs::read_dir(dir.join("DATA")) {
        for e in rd.flatten() {
            let link = e.path();
            let root_link = std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink() && m.uid() == 0);
            if root_link && link.is_dir() {
                total += walk_blocks(&link.join(""), &mut seen);
            }
        }
    }
    total.div_ceil(2)
}

/// 512-byte blocks under `dir` (itself included), never following links.
fn walk_blocks(dir: &Path, seen: &mut BTreeSet<(u64, u64)>) -> u64 {
    let mut blocks = 0;
    let mut stack = vec![dir.to_path_buf()];
    let mut first = true;
    while let Some(path) = stack.pop() {
        // the root may be reached through a link (DATA/<disk>/); nothing else is
        let meta = if first { std::fs::metadata(&path) } else { std::fs::symlink_metadata(&path) };
        first = false;
        let Ok(meta) = meta else { continue };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        blocks += meta.blocks();
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&path) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    blocks
}
