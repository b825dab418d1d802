//! `collector.db`: the node's usage history, with slapos.collect's tables
//! and columns (`user`, `folder`, `computer`, `system`, `disk`,
//! `temperature`, `heating`; dates and times in UTC text; a `reported`
//! flag) so that SlapOS's tools read it, plus our `partition` table: one
//! row per partition and sample, measured from its cgroup when it has one.

use std::path::Path;

use rusqlite::{params, Connection};

/// slapos.collect's schema, then ours.
const SCHEMA: &str = "
create table if not exists user (partition text, pid real, process text, cpu_percent real, cpu_time real, cpu_num_threads real, memory_percent real, memory_rss real, io_rw_counter real, io_cycles_counter real, date text, time text, reported integer NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS user_partition_date_time ON user (partition, date, time);
create table if not exists folder (partition text, disk_used real, date text, time text, reported integer NULL DEFAULT 0);
create table if not exists computer (cpu_num_core real, cpu_frequency real, cpu_type text, memory_size real, memory_type text, partition_list text, date text, time text, reported integer NULL DEFAULT 0);
create table if not exists system (loadavg real, cpu_percent real, memory_used real, memory_free real, net_in_bytes real, net_in_errors real, net_in_dropped real, net_out_bytes real, net_out_errors real, net_out_dropped real, date text, time text, reported integer NULL DEFAULT 0);
create table if not exists disk (partition text, used text, free text, mountpoint text, date text, time text, reported integer NULL DEFAULT 0);
create table if not exists temperature (sensor_id name, temperature real, alarm integer, date text, time text, reported integer NULL DEFAULT 0);
create table if not exists heating (model_id name, sensor_id name, initial_temperature real, final_temperature real, delta_time real, zero_emission_ratio real, date text, time text, reported integer NULL DEFAULT 0);
create table if not exists partition (partition text, user text, source text, cpu_time real, cpu_percent real, memory real, process_count integer, io_bytes real, date text, time text, reported integer NULL DEFAULT 0);
";

/// The tables slapos.collect never deletes from.
const PRESERVED: &[&str] = &["heating"];

/// The database file name, in `instance_root/var/data-log/`.
pub const FILE_NAME: &str = "collector.db";

/// One `user` row: a process of a partition's user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    /// The partition's user name (slapos.collect's `partition` column).
    pub partition: String,
    /// Process id (`pid` column).
    pub pid: i32,
    /// `<pid>-<start time>`: the process, without its command line.
    pub process: String,
    /// CPU use in percent of one core over the measure interval, user+system (psutil's `cpu_percent()`).
    pub cpu_percent: f64,
    /// CPU time in seconds: user+system+children's+I/O wait, the sum of psutil's `cpu_times()`.
    pub cpu_time: f64,
    /// Number of threads (`cpu_num_threads` column).
    pub cpu_num_threads: i64,
    /// Resident memory in percent of the machine's total memory (psutil's `memory_percent()`).
    pub memory_percent: f64,
    /// Resident memory in bytes (psutil's `memory_info().rss`).
    pub memory_rss: u64,
    /// Bytes read and written from storage since the process started (`read_bytes + write_bytes`).
    pub io_rw_counter: u64,
    /// Read and write system calls since the process started (`syscr + syscw`).
    pub io_cycles_counter: u64,
}

/// One `system` row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SystemRow {
    /// One-minute load average (`loadavg` column).
    pub loadavg: f64,
    /// Machine CPU busy in percent of all cores over the measure interval (100 - idle).
    pub cpu_percent: f64,
    /// Memory in use in bytes: `MemTotal - MemAvailable`.
    pub memory_used: u64,
    /// Memory available in bytes: `MemAvailable`.
    pub memory_free: u64,
    /// Network counters since boot, all interfaces (the `net_in_*`, `net_out_*` columns).
    pub net: crate::procstat::NetCounters,
}

/// One `computer` row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComputerRow {
    /// Logical CPUs usable by collect (`cpu_num_core` column).
    pub cpu_num_core: u64,
    /// Total memory in bytes (`MemTotal`; `memory_size` column).
    pub memory_size: u64,
    /// `device=total bytes` for each disk, `;`-separated.
    pub partition_list: String,
}

/// One row of our `partition` table.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionRow {
    /// The partition's id (`slappart<N>`).
    pub partition: String,
    /// The label of its `user` rows (its user's name).
    pub user: String,
    /// `cgroup` or `proc`.
    pub source: &'static str,
    /// CPU time in seconds: the cgroup's `usage_usec` (every process it ever ran), else the sum of its `user` rows' `cpu_time`.
    pub cpu_time: f64,
    /// CPU use in percent of one core over the measure interval (may exceed 100 on several cores).
    pub cpu_percent: f64,
    /// Bytes: `memory.current` of the cgroup, else the sum of the RSS.
    pub memory: u64,
    /// Live processes sampled (its `user` rows).
    pub process_count: usize,
    /// Bytes read and written from storage: the cgroup's `io.stat` when on, else the sum of its processes'.
    pub io_bytes: u64,
}

/// The history, open.
pub struct Database {
    conn: Connection,
}

impl Database {
    /// Opens (and makes) `dir/collector.db`.
    pub fn open(dir: &Path) -> rusqlite::Result<Database> {
        let conn = Connection::open(dir.join(FILE_NAME))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.execute_batch(SCHEMA)?;
        let db = Database { conn };
        for t in db.tables()? {
            db.conn.execute_batch(&format!("CREATE INDEX IF NOT EXISTS {t}_date_reported_index ON {t} (date, reported)"))?;
        }
        Ok(db)
    }

    /// The tables, in creation order.
    pub fn tables(&self) -> rusqlite::Result<Vec<String>> {
        let mut st = self.conn.prepare("SELECT name FROM sqlite_master WHERE type='table'")?;
        let rows = st.query_map([], |r| r.get(0))?;
        rows.collect()
    }

    /// Runs `f` in one transaction.
    pub fn transaction<T>(&mut self, f: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let tx = self.conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// The connection (queries of the reporter).
    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// Inserts a `user` row.
pub fn insert_user(tx: &Connection, r: &UserRow, date: &str, time: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("insert into user(partition, pid, process, cpu_percent, cpu_time, cpu_num_threads, memory_percent, memory_rss, io_rw_counter, io_cycles_counter, date, time) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)")?
        .execute(params![
            r.partition,
            r.pid,
            r.process,
            r.cpu_percent,
            r.cpu_time,
            r.cpu_num_threads,
            r.memory_percent,
            r.memory_rss as i64,
            r.io_rw_counter as i64,
            r.io_cycles_counter as i64,
            date,
            time
        ])?;
    Ok(())
}

/// Inserts a `system` row.
pub fn insert_system(tx: &Connection, r: &SystemRow, date: &str, time: &str) -> rusqlite::Result<()> {
    let n = &r.net;
    tx.execute(
        "insert into system(loadavg, cpu_percent, memory_used, memory_free, net_in_bytes, net_in_errors, net_in_dropped, net_out_bytes, net_out_errors, net_out_dropped, date, time) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            r.loadavg,
            r.cpu_percent,
            r.memory_used as i64,
            r.memory_free as i64,
            n.in_bytes as i64,
            n.in_errors as i64,
            n.in_dropped as i64,
            n.out_bytes as i64,
            n.out_errors as i64,
            n.out_dropped as i64,
            date,
            time
        ],
    )?;
    Ok(())
}

/// Inserts a `computer` row (frequency, CPU and memory types: 0, as
/// slapos.collect writes them).
pub fn insert_computer(tx: &Connection, r: &ComputerRow, date: &str, time: &str) -> rusqlite::Result<()> {
    tx.execute(
        "insert into computer(cpu_num_core, cpu_frequency, cpu_type, memory_size, memory_type, partition_list, date, time) values (?1, 0, 0, ?2, 0, ?3, ?4, ?5)",
        params![r.cpu_num_core as i64, r.memory_size as i64, r.partition_list, date, time],
    )?;
    Ok(())
}

/// Inserts a `disk` row (used and free as whole numbers in text columns,
/// as slapos.collect stores them).
pub fn insert_disk(tx: &Connection, d: &crate::procstat::Disk, date: &str, time: &str) -> rusqlite::Result<()> {
    tx.execute(
        "insert into disk(partition, used, free, mountpoint, date, time) values (?1, ?2, ?3, ?4, ?5, ?6)",
        params![d.device, d.used as i64, d.free as i64, d.mountpoint.display().to_string(), date, time],
    )?;
    Ok(())
}

/// Inserts a `folder` row: a partition's disk use in KiB.
pub fn insert_folder(tx: &Connection, partition: &str, kib: u64, date: &str, time: &str) -> rusqlite::Result<()> {
    tx.execute("insert into folder(partition, disk_used, date, time) values (?1, ?2, ?3, ?4)", params![partition, kib as i64, date, time])?;
    Ok(())
}

/// Inserts a `partition` row.
pub fn insert_partition(tx: &Connection, r: &PartitionRow, date: &str, time: &str) -> rusqlite::Result<()> {
    tx.execute(
        "insert into partition(partition, user, source, cpu_time, cpu_percent, memory, process_count, io_bytes, date, time) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![r.partition, r.user, r.source, r.cpu_time, r.cpu_percent, r.memory as i64, r.process_count as i64, r.io_bytes as i64, date, time],
    )?;
    Ok(())
}

/// The last `folder` sample of a partition: `(date, time)`.
pub fn last_folder_sample(conn: &Connection, partition: &str) -> rusqlite::Result<Option<(String, String)>> {
    let mut st = conn.prepare("select date, time from folder where partition = ?1 order by date DESC, time DESC limit 1")?;
    let mut rows = st.query_map([partition], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.next().transpose()
}

/// The dates with unreported `system` rows, but `ignore`.
pub fn unreported_dates(conn: &Connection, ignore: &str) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare("SELECT date FROM system WHERE reported = 0 AND date != ?1 GROUP BY date")?;
    let rows = st.query_map([ignore], |r| r.get(0))?;
    rows.collect()
}

/// Every date of the history.
pub fn all_dates(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare("SELECT date FROM system GROUP BY date")?;
    let rows = st.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// The rows of `table` on `date`, every column, in insertion order.
pub fn rows_of_day(conn: &Connection, table: &str, date: &str) -> rusqlite::Result<Vec<Vec<rusqlite::types::Value>>> {
    let mut st = conn.prepare(&format!("SELECT * FROM \"{}\" WHERE date = ?1", table.replace('"', "")))?;
    let n = st.column_count();
    let rows = st.query_map([date], |r| (0..n).map(|i| r.get::<_, rusqlite::types::Value>(i)).collect())?;
    rows.collect()
}

/// Marks every row of `date` as reported.
pub fn mark_reported(conn: &Connection, tables: &[String], date: &str) -> rusqlite::Result<()> {
    for t in tables {
        conn.execute(&format!("UPDATE \"{}\" SET reported = 1 WHERE date = ?1 AND reported = 0", t.replace('"', "")), [date])?;
    }
    Ok(())
}

/// slapos.collect's garbage collection (`collect_cache`): deletes the
/// reported rows dated outside the `days` days up to `today` (every table
/// but `heating`), then reclaims the space. Returns the rows deleted.
pub fn garbage_collect(db: &Database, days: u32, today: chrono::NaiveDate) -> rusqlite::Result<usize> {
    let mut filter = "reported = 1".to_string();
    if days > 0 {
        let oldest = today - chrono::Days::new(u64::from(days) - 1);
        filter += &format!(" AND (date < '{}' OR date > '{}')", oldest.format("%Y-%m-%d"), today.format("%Y-%m-%d"));
    }
    let mut deleted = 0;
    for t in db.tables()?.iter().filter(|t| !PRESERVED.contains(&t.as_str())) {
        deleted += db.conn.execute(&format!("DELETE FROM \"{t}\" WHERE {filter}"), [])?;
    }
    if deleted > 0 {
        db.conn.execute_batch("VACUUM")?;
    }
    Ok(deleted)
}
