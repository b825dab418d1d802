//! What the kernel says about processes and the machine, read from /proc
//! through the `procfs` crate: the one reader of `node report` (usage of a
//! partition's user) and `node collect` (per-process snapshots, the system's
//! CPU, memory, network and load).

use std::collections::BTreeSet;

use procfs::{Current, CurrentSI};

/// One process, as slapos.collect's `ProcessSnapshot` sees it (psutil's
/// values, computed from the same /proc files).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSample {
    /// Process id.
    pub pid: i32,
    /// Real user id (psutil's `uids().real`).
    pub uid: u32,
    /// Start time, seconds since the epoch (psutil's `create_time()`).
    pub start_time: f64,
    /// user + system + children's user + children's system + I/O wait
    /// seconds (the sum of psutil's `cpu_times()`).
    pub cpu_time: f64,
    /// user + system seconds (what psutil's `cpu_percent()` measures).
    pub own_cpu_time: f64,
    /// Number of threads (psutil's `num_threads()`).
    pub threads: i64,
    /// Resident set size in bytes.
    pub rss: u64,
    /// Bytes read and written from storage (`read_bytes + write_bytes`);
    /// 0 when `/proc/<pid>/io` is not readable.
    pub io_bytes: u64,
    /// Read and write system calls (`syscr + syscw`).
    pub io_calls: u64,
}

fn sample(p: &procfs::process::Process, boot: f64, ticks: f64, page: u64) -> Option<ProcessSample> {
    let uid = p.uid().ok()?;
    let st = p.stat().ok()?;
    let io = p.io().ok();
    let own = (st.utime + st.stime) as f64 / ticks;
    let children = (st.cutime.max(0) + st.cstime.max(0)) as f64 / ticks;
    let iowait = st.delayacct_blkio_ticks.unwrap_or(0) as f64 / ticks;
    Some(ProcessSample {
        pid: st.pid,
        uid,
        start_time: boot + st.starttime as f64 / ticks,
        cpu_time: own + children + iowait,
        own_cpu_time: own,
        threads: st.num_threads,
        rss: st.rss * page,
        io_bytes: io.as_ref().map(|i| i.read_bytes + i.write_bytes).unwrap_or(0),
        io_calls: io.as_ref().map(|i| i.syscr + i.syscw).unwrap_or(0),
    })
}

/// The live processes whose real uid is in `uids`, or whose pid is in
/// `pids` (processes that vanish while read are skipped).
pub fn processes(uids: &BTreeSet<u32>, pids: &BTreeSet<i32>) -> Vec<ProcessSample> {
    let boot = procfs::boot_time_secs().unwrap_or(0) as f64;
    let ticks = procfs::ticks_per_second() as f64;
    let page = procfs::page_size();
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.flatten()
        .filter(|p| pids.contains(&p.pid) || p.uid().is_ok_and(|u| uids.contains(&u)))
        .filter_map(|p| sample(&p, boot, ticks, page))
        .collect()
}

/// One process by pid.
pub fn process(pid: i32) -> Option<ProcessSample> {
    let p = procfs::process::Process::new(pid).ok()?;
    sample(&p, procfs::boot_time_secs().unwrap_or(0) as f64, procfs::ticks_per_second() as f64, procfs::page_size())
}

/// What a partition used, summed over its user's processes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU seconds (user + system) of the live processes.
    pub cpu_seconds: f64,
    /// Resident memory in MiB.
    pub memory_mib: f64,
    /// Live processes.
    pub processes: u32,
}

/// Sums /proc for the processes of `uid`.
pub fn usage_of_uid(uid: u32) -> Usage {
    let mut u = Usage::default();
    for p in processes(&BTreeSet::from([uid]), &BTreeSet::new()) {
        u.cpu_seconds += p.own_cpu_time;
        u.memory_mib += p.rss as f64 / (1024.0 * 1024.0);
        u.processes += 1;
    }
    u
}

/// The machine's CPU counters (`/proc/stat`, in ticks): idle and the
/// total psutil counts (guest time is already in user and nice).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTicks {
    /// Idle ticks since boot, all CPUs.
    pub idle: u64,
    /// user + nice + system + idle + iowait + irq + softirq + steal ticks since boot, all CPUs.
    pub total: u64,
}

/// The machine's CPU counters now.
pub fn cpu_ticks() -> CpuTicks {
    let Ok(ks) = procfs::KernelStats::current() else {
        return CpuTicks::default();
    };
    let t = ks.total;
    let total = t.user + t.nice + t.system + t.idle + [t.iowait, t.irq, t.softirq, t.steal].iter().map(|v| v.unwrap_or(0)).sum::<u64>();
    CpuTicks { idle: t.idle, total }
}

/// psutil's `100 - cpu_times_percent(interval).idle` between two readings
/// (the idle share rounded to one decimal, as psutil does).
pub fn busy_percent(before: CpuTicks, after: CpuTicks) -> f64 {
    let all = after.total.saturating_sub(before.total);
    if all == 0 {
        return 0.0;
    }
    let idle = (100.0 * after.idle.saturating_sub(before.idle) as f64 / all as f64).clamp(0.0, 100.0);
    100.0 - (idle * 10.0).round() / 10.0
}

/// Total and available memory in bytes (`MemTotal`, `MemAvailable`).
pub fn memory() -> (u64, u64) {
    match procfs::Meminfo::current() {
        Ok(m) => (m.mem_total, m.mem_available.unwrap_or(m.mem_free)),
        Err(_) => (0, 0),
    }
}

/// The one-minute load average, as `os.getloadavg()[0]`.
pub fn load_one() -> f64 {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|t| t.split_whitespace().next()?.parse().ok()).unwrap_or(0.0)
}

/// Network counters summed over every interface (psutil's
/// `net_io_counters()`): bytes, errors and drops, in then out.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NetCounters {
    /// Bytes received since boot (`net_in_bytes` column).
    pub in_bytes: u64,
    /// Receive errors since boot (`net_in_errors` column).
    pub in_errors: u64,
    /// Incoming packets dropped since boot (`net_in_dropped` column).
    pub in_dropped: u64,
    /// Bytes sent since boot (`net_out_bytes` column).
    pub out_bytes: u64,
    /// Send errors since boot (`net_out_errors` column).
    pub out_errors: u64,
    /// Outgoing packets dropped since boot (`net_out_dropped` column).
    pub out_dropped: u64,
}

/// The network counters now.
pub fn net_counters() -> NetCounters {
    let mut n = NetCounters::default();
    for d in procfs::net::dev_status().unwrap_or_default().values() {
        n.in_bytes += d.recv_bytes;
        n.in_errors += d.recv_errs;
        n.in_dropped += d.recv_drop;
        n.out_bytes += d.sent_bytes;
        n.out_errors += d.sent_errs;
        n.out_dropped += d.sent_drop;
    }
    n
}

/// A mounted block device (psutil's `disk_partitions()`: file systems that
/// are not `nodev` in `/proc/filesystems`, one mount per device).
#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    /// The mount source, e.g. `/dev/sda1` (`disk.partition` column).
    pub device: String,
    /// Where it is mounted (`disk.mountpoint` column).
    pub mountpoint: std::path::PathBuf,
    /// Size in bytes (`f_blocks`).
    pub total: u64,
    /// Used bytes, `f_blocks - f_bfree` (`disk.used` column).
    pub used: u64,
    /// Bytes free to users, `f_bavail` (`disk.free` column).
    pub free: u64,
}

/// The mounted block devices and their usage.
pub fn disks() -> Vec<Disk> {
    let physical: BTreeSet<String> = std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with("nodev"))
        .map(|l| l.trim().to_string())
        .chain(["zfs".to_string()])
        .collect();
    let Ok(mounts) = procfs::process::Process::myself().and_then(|p| p.mountinfo()) else {
        return Vec::new();
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for m in mounts.into_iter().filter(|m| physical.contains(&m.fs_type)) {
        let device = m.mount_source.clone().unwrap_or_else(|| "none".into());
        if !seen.insert(device.clone()) {
            continue;
        }
        let Ok(s) = nix::sys::statvfs::statvfs(&m.mount_point) else {
            continue;
        };
        let f = s.fragment_size();
        out.push(Disk {
            device,
            mountpoint: m.mount_point.clone(),
            total: s.blocks() * f,
            used: s.blocks().saturating_sub(s.blocks_free()) * f,
            free: s.blocks_available() * f,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_processes_are_counted() {
        let u = usage_of_uid(nix::unistd::getuid().as_raw());
        assert!(u.processes >= 1 && u.memory_mib > 0.0, "{u:?}");
        let me = process(std::process::id() as i32).unwrap();
        assert!(me.threads >= 1 && me.rss > 0 && me.start_time > 1.0e9, "{me:?}");
    }

    #[test]
    fn busy_is_the_complement_of_idle_rounded_as_psutil() {
        assert_eq!(busy_percent(CpuTicks { idle: 0, total: 0 }, CpuTicks { idle: 100, total: 300 }), 66.7);
        assert_eq!(busy_percent(CpuTicks { idle: 5, total: 10 }, CpuTicks { idle: 5, total: 10 }), 0.0);
        assert_eq!(busy_percent(CpuTicks { idle: 0, total: 0 }, CpuTicks { idle: 0, total: 50 }), 100.0);
    }

    #[test]
    fn the_machine_is_read() {
        let (total, avail) = memory();
        assert!(total > 0 && avail <= total);
        assert!(cpu_ticks().total > 0);
        assert!(load_one() >= 0.0);
    }
}
