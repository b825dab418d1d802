//! `slapos node collect` (slapos.collect of slapos.core 1.26.1), run by
//! cron every minute: samples each partition's processes and the computer
//! into the node's history (`instance_root/var/data-log/collector.db`, the
//! tables of slapos.collect), then writes what slapos.collect writes:
//!
//! * `var/data-log/system_<item>.csv`: today's computer usage;
//! * `var/data-log/<date>.tar.gz` (`<date>/dump_<table>.csv`): each past
//!   day once, after which its rows count as reported;
//! * `var/consumption-report/<date>.xml` for yesterday and the day before,
//!   copied to `var/xml_report/<computer_id>/`, where `node report` sends
//!   it to the master;
//!
//! and deletes reported rows older than `[slapos] collect_cache` days
//! (default 15). Partitions are measured from their cgroup (v2) when they
//! have one ([`crate::cgroup`]; as root, collect puts each partition's
//! processes in one), else from /proc by their user.

use std::path::{Path, PathBuf};
use std::time::Duration;

use slapos_config::Config;

pub mod db;
pub mod reporter;
pub mod snapshot;

/// What collect reads from slapos.cfg.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectConfig {
    /// `[slapos] computer_id`: names the `var/xml_report/<computer_id>` directory.
    pub computer_id: String,
    /// `[slapos] instance_root`: where the partitions and `var/` are.
    pub instance_root: PathBuf,
    /// `[slapos] collect_cache`: days of reported rows kept.
    pub days_to_preserve: u32,
    /// `[slapformat] partition_base_name` (default `slappart`).
    pub partition_base_name: String,
    /// `[collect] report_disk_usage` (default true).
    pub report_disk_usage: bool,
    /// `[collect] disk_snapshot_time_cycle`: seconds between two disk-use
    /// measures of a partition (default 86400).
    pub disk_time_cycle: u64,
    /// Interval over which CPU percentages are measured (slapos.collect: 5 s).
    pub measure_interval: Duration,
}

/// A missing or invalid option.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CollectConfigError(String);

impl CollectConfig {
    /// Reads `[slapos]`, `[slapformat]` and `[collect]`.
    pub fn from_config(c: &Config) -> Result<CollectConfig, CollectConfigError> {
        let need = |k: &str| {
            c.get_nonempty("slapos", k).map(str::trim).ok_or_else(|| CollectConfigError(format!("Missing mandatory parameters: {k}")))
        };
        let int = |section: &str, k: &str, default: i64| -> Result<i64, CollectConfigError> {
            c.get_int(section, k).map(|v| v.unwrap_or(default)).map_err(|e| CollectConfigError(e.to_string()))
        };
        let days = int("slapos", "collect_cache", 15)?;
        let cycle = int("collect", "disk_snapshot_time_cycle", 86400)?;
        Ok(CollectConfig {
            computer_id: need("computer_id")?.to_string(),
            instance_root: PathBuf::from(need("instance_root")?),
            days_to_preserve: u32::try_from(days)
                .map_err(|_| CollectConfigError(format!("option 'collect_cache' must be a number of days, wrong value: '{days}'")))?,
            partition_base_name: c.get_nonempty("slapformat", "partition_base_name").unwrap_or("slappart").trim().to_string(),
            report_disk_usage: c.get_bool("collect", "report_disk_usage").map_err(|e| CollectConfigError(e.to_string()))?.unwrap_or(true),
            disk_time_cycle: cycle.max(0) as u64,
            measure_interval: Duration::from_secs(5),
        })
    }

    /// `instance_root/var/data-log`: the database, CSV files and archives.
    pub fn log_dir(&self) -> PathBuf {
        self.instance_root.join("var/data-log")
    }

    /// `instance_root/var/consumption-report`.
    pub fn consumption_dir(&self) -> PathBuf {
        self.instance_root.join("var/consumption-report")
    }

    /// `instance_root/var/xml_report/<computer_id>`: the computer reports
    /// `node report` sends.
    pub fn xml_report_dir(&self) -> PathBuf {
        self.instance_root.join("var/xml_report").join(&self.computer_id)
    }
}

/// Writes a file through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

fn mkdir_755(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Partitions sampled (rows added to the `partition` table).
    pub partitions: usize,
    /// Processes sampled (rows added to slapos.collect's `user` table).
    pub processes: usize,
    /// Partitions whose disk use was measured in this run.
    pub disk_measured: usize,
    /// Days (`YYYY-MM-DD`) whose consumption report was written (`var/consumption-report/<date>.xml`, copied to `var/xml_report/<computer_id>/`).
    pub reports: Vec<String>,
    /// Past days (`YYYY-MM-DD`) dumped to `var/data-log/<date>/` and marked reported.
    pub dumped: Vec<String>,
    /// Reported rows older than `collect_cache` days deleted, all tables together.
    pub deleted_rows: usize,
}

/// Measures each partition's disk use once per cycle, as slapos.collect
/// (a partition under 1 MiB is not recorded).
fn disk_use(
    cfg: &CollectConfig,
    conn: &rusqlite::Connection,
    parts: &[snapshot::Partition],
    date: &str,
    time: &str,
) -> anyhow::Result<usize> {
    let now = chrono::Utc::now().naive_utc();
    let mut measured = 0;
    for p in parts {
        if let Some((d, t)) = db::last_folder_sample(conn, &p.user)? {
            let last = chrono::NaiveDateTime::parse_from_str(&format!("{d} {t}"), "%Y-%m-%d %H:%M:%S").ok();
            if last.is_some_and(|l| (now - l).num_seconds() < cfg.disk_time_cycle as i64) {
                continue;
            }
        }
        let kib = snapshot::disk_use_kib(&p.path);
        measured += 1;
        if kib > 1024 {
            db::insert_folder(conn, &p.user, kib, date, time)?;
        }
    }
    Ok(measured)
}

/// One run of `slapos node collect`.
pub fn run(cfg: &CollectConfig) -> anyhow::Result<Outcome> {
    let log_dir = cfg.log_dir();
    for d in [log_dir.clone(), cfg.consumption_dir(), cfg.xml_report_dir()] {
        mkdir_755(&d).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", d.display()))?;
    }
    let parts = snapshot::partitions(&cfg.instance_root, &cfg.partition_base_name);
    let cg_root = crate::cgroup::unified_root();
    if let (Some(root), true) = (&cg_root, nix::unistd::geteuid().is_root()) {
        adopt_all(root, &parts);
    }
    let sample = snapshot::take(&parts, cfg.measure_interval, cg_root.as_deref());
    let mut database = db::Database::open(&log_dir)?;
    let mut out = Outcome { partitions: sample.partitions.len(), processes: sample.users.len(), ..Default::default() };
    let (date, time) = (sample.date.clone(), sample.time.clone());
    database.transaction(|tx| {
        db::insert_computer(tx, &sample.computer, &date, &time)?;
        db::insert_system(tx, &sample.system, &date, &time)?;
        for d in &sample.disks {
            db::insert_disk(tx, d, &date, &time)?;
        }
        for u in &sample.users {
            db::insert_user(tx, u, &date, &time)?;
        }
        for p in &sample.partitions {
            db::insert_partition(tx, p, &date, &time)?;
        }
        Ok(())
    })?;
    if cfg.report_disk_usage {
        out.disk_measured = disk_use(cfg, database.conn(), &parts, &date, &time)?;
    }
    let conn = database.conn();
    reporter::system_csv(conn, &log_dir, &date)?;
    out.dumped = reporter::dump_past_days(conn, &log_dir, &date)?;
    let today = chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d")?;
    let users: Vec<String> = parts.iter().map(|p| p.user.clone()).collect();
    out.reports = reporter::daily_reports(conn, &cfg.computer_id, &users, &cfg.consumption_dir(), &cfg.xml_report_dir(), today)?;
    reporter::compress_days(&log_dir)?;
    out.deleted_rows = db::garbage_collect(&database, cfg.days_to_preserve, today)?;
    Ok(out)
}

/// Puts each partition's processes in its cgroup (partitions with a user
/// of their own only); failures are logged, not fatal.
fn adopt_all(root: &Path, parts: &[snapshot::Partition]) {
    for p in parts.iter().filter(|p| p.by_uid) {
        let pids: Vec<i32> = crate::procstat::processes(&[p.uid].into(), &Default::default()).iter().map(|s| s.pid).collect();
        if pids.is_empty() {
            continue;
        }
        match crate::cgroup::adopt(root, &p.id, &pids) {
            Ok(0) => {}
            Ok(n) => tracing::info!("{}: {n} process(es) moved into its cgroup", p.id.as_str()),
            Err(e) => tracing::warn!("{}: cannot put its processes in a cgroup: {e}", p.id.as_str()),
        }
    }
}

/// `slapos node collect --export-csv DIR`: the whole history as
/// `DIR/<date>/dump_<table>.csv`; returns the dates written.
pub fn export_csv(cfg: &CollectConfig, dir: &Path) -> anyhow::Result<Vec<String>> {
    let path = cfg.log_dir().join(db::FILE_NAME);
    if !path.is_file() {
        anyhow::bail!("no history to export: {} does not exist (run slapos node collect first)", path.display());
    }
    let database = db::Database::open(&cfg.log_dir())?;
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    Ok(reporter::export_csv(database.conn(), dir)?)
}

#[cfg(test)]
mod tests;
