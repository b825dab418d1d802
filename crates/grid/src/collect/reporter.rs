//! What `node collect` writes from the history, as slapos.collect's
//! reporter does: today's system CSV files (`system_<item>.csv`), raw dumps
//! of past days (`<date>/dump_<table>.csv`, then `<date>.tar.gz`), and the
//! daily consumption journal (`consumption-report/<date>.xml`, copied to the
//! computer's `xml_report` directory where `node report` sends it).

use std::path::Path;

use rusqlite::types::Value;
use rusqlite::Connection;
use slap::marshal::python_float_repr;

use super::db;

/// A value as Python's `str()` writes it.
fn py_str(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => python_float_repr(*f),
        Value::Text(t) => t.clone(),
        Value::Blob(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// A CSV writer as Python's `csv.writer` (minimal quoting, CRLF).
fn csv_writer(path: &Path) -> std::io::Result<csv::Writer<std::fs::File>> {
    let f = std::fs::File::create(path)?;
    Ok(csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).flexible(true).from_writer(f))
}

fn csv_err(e: csv::Error) -> std::io::Error {
    std::io::Error::other(e)
}

/// Writes rows to a CSV file.
fn write_rows(path: &Path, rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut w = csv_writer(path)?;
    for r in rows {
        w.write_record(r).map_err(csv_err)?;
    }
    w.flush()
}

/// The system items of slapos.collect's `exportSystemAsDict`: name, column
/// index in the query, divisor, whether it is a counter (written as the
/// difference with the previous sample).
const SYSTEM_ITEMS: [(&str, usize, f64, bool); 10] = [
    ("loadavg", 0, 1.0, false),
    ("cpu_percent", 1, 1.0, false),
    ("memory_used", 2, 1024.0, false),
    ("memory_free", 3, 1024.0, false),
    ("net_in_bytes", 4, 1024.0, true),
    ("net_in_errors", 5, 1.0, false),
    ("net_in_dropped", 6, 1.0, false),
    ("net_out_bytes", 7, 1024.0, true),
    ("net_out_errors", 8, 1.0, false),
    ("net_out_dropped", 9, 1.0, false),
];

fn real(v: &Value) -> f64 {
    match v {
        Value::Integer(i) => *i as f64,
        Value::Real(f) => *f,
        Value::Text(t) => t.parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

/// `system_<item>.csv` (`time,entry`) for today's samples, the first one
/// left out (it is the base of the network differences), and
/// `system_disk_memory_{used,free}_<device>.csv` in KiB.
pub fn system_csv(conn: &Connection, dir: &Path, today: &str) -> std::io::Result<()> {
    let rows = db::rows_of_day(conn, "system", today).map_err(std::io::Error::other)?;
    for (name, col, div, counter) in SYSTEM_ITEMS {
        let mut out = vec![vec!["time".to_string(), "entry".to_string()]];
        for pair in rows.windows(2) {
            let (prev, cur) = (&pair[0], &pair[1]);
            let v = if counter { real(&cur[col]) - real(&prev[col]) } else { real(&cur[col]) };
            let entry = if div == 1.0 { py_str(&cur[col]) } else { python_float_repr(v / div) };
            out.push(vec![format!("{} {}", py_str(&cur[10]), py_str(&cur[11])), entry]);
        }
        write_rows(&dir.join(format!("system_{name}.csv")), &out)?;
    }
    let disks = db::rows_of_day(conn, "disk", today).map_err(std::io::Error::other)?;
    let mut files: std::collections::BTreeMap<String, Vec<Vec<String>>> = Default::default();
    for d in &disks {
        // slapos.collect splits "<device>-used" on '-' and joins with '_'
        let id = py_str(&d[0]).replace(['-', '/'], "_");
        let when = format!("{} {}", py_str(&d[4]), py_str(&d[5]));
        for (kind, col) in [("used", 1), ("free", 2)] {
            let rows =
                files.entry(format!("system_disk_memory_{kind}_{id}.csv")).or_insert_with(|| vec![vec!["time".into(), "entry".into()]]);
            rows.push(vec![when.clone(), python_float_repr(real(&d[col]) / 1024.0)]);
        }
    }
    for (name, rows) in files {
        write_rows(&dir.join(name), &rows)?;
    }
    Ok(())
}

/// Writes every table's rows of `date` to `dir/<date>/dump_<table>.csv`
/// (no header, as slapos.collect).
pub fn dump_day(conn: &Connection, tables: &[String], dir: &Path, date: &str) -> std::io::Result<()> {
    let day = dir.join(date);
    std::fs::create_dir_all(&day)?;
    for t in tables {
        let rows = db::rows_of_day(conn, t, date).map_err(std::io::Error::other)?;
        let text: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(py_str).collect()).collect();
        write_rows(&day.join(format!("dump_{t}.csv")), &text)?;
    }
    Ok(())
}

/// slapos.collect's `RawCSVDumper`: dumps each past day not yet reported,
/// then marks it reported (which lets the garbage collection delete it).
pub fn dump_past_days(conn: &Connection, dir: &Path, today: &str) -> std::io::Result<Vec<String>> {
    let io = std::io::Error::other;
    let tables = db_tables(conn)?;
    let dates = db::unreported_dates(conn, today).map_err(io)?;
    for date in &dates {
        dump_day(conn, &tables, dir, date)?;
        db::mark_reported(conn, &tables, date).map_err(io)?;
    }
    Ok(dates)
}

fn db_tables(conn: &Connection) -> std::io::Result<Vec<String>> {
    let mut st = conn.prepare("SELECT name FROM sqlite_master WHERE type='table'").map_err(std::io::Error::other)?;
    let rows = st.query_map([], |r| r.get(0)).map_err(std::io::Error::other)?;
    rows.collect::<rusqlite::Result<Vec<String>>>().map_err(std::io::Error::other)
}

/// `slapos node collect --export-csv DIR`: every day of the history as
/// `DIR/<date>/dump_<table>.csv` (nothing is marked reported).
pub fn export_csv(conn: &Connection, dir: &Path) -> std::io::Result<Vec<String>> {
    let tables = db_tables(conn)?;
    let dates = db::all_dates(conn).map_err(std::io::Error::other)?;
    for date in &dates {
        dump_day(conn, &tables, dir, date)?;
    }
    Ok(dates)
}

fn is_day_dir(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    parts.len() >= 3 && !name.ends_with(".tar.gz")
}

/// slapos.collect's `compressLogFolder`: each `<date>/` directory of `dir`
/// becomes `<date>.tar.gz` (holding `<date>/…`) and is removed.
pub fn compress_days(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.file_type()?.is_dir() || !is_day_dir(&name) {
            continue;
        }
        let tmp = dir.join(format!(".{name}.tar.gz.tmp"));
        let gz = flate2::write::GzEncoder::new(std::fs::File::create(&tmp)?, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        tar.follow_symlinks(false);
        tar.append_dir_all(&name, e.path())?;
        tar.into_inner()?.finish()?;
        std::fs::rename(&tmp, dir.join(format!("{name}.tar.gz")))?;
        std::fs::remove_dir_all(e.path())?;
    }
    Ok(())
}

/// Text as lxml writes it: `&`, `<`, `>` escaped, non-ASCII as character
/// references.
fn xml_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c if c.is_ascii() => out.push(c),
            c => out.push_str(&format!("&#{};", c as u32)),
        }
    }
    out
}

fn element(out: &mut String, name: &str, text: &str) {
    out.push_str(&format!("<{name}>{}</{name}>", xml_text(text)));
}

fn movement(out: &mut String, resource: &str, title: &str, quantity: &str, reference: &str) {
    out.push_str("<movement>");
    for (name, text) in [
        ("resource", resource),
        ("title", title),
        ("reference", reference),
        ("quantity", quantity),
        ("price", "0.0"),
        ("VAT", ""),
        ("category", ""),
    ] {
        element(out, name, text);
    }
    out.push_str("</movement>");
}

fn scalar(conn: &Connection, sql: &str, args: &[&str]) -> rusqlite::Result<Option<f64>> {
    conn.query_row(sql, rusqlite::params_from_iter(args), |r| r.get::<_, Option<f64>>(0))
}

/// A partition's average of `column` (`SUM` over its rows divided by the
/// number of distinct sample times), None without rows.
fn partition_average(conn: &Connection, table: &str, column: &str, label: &str, date: &str) -> rusqlite::Result<Option<f64>> {
    let sum = scalar(conn, &format!("SELECT SUM({column}) FROM {table} WHERE date = ?1 AND partition = ?2"), &[date, label])?;
    let Some(sum) = sum else { return Ok(None) };
    let n = scalar(conn, &format!("SELECT COUNT(DISTINCT time) FROM {table} WHERE date = ?1 AND partition = ?2"), &[date, label])?
        .unwrap_or(1.0);
    Ok(Some(sum / n))
}

/// The day's consumption journal, byte for byte as slapos.collect's
/// `ConsumptionReport.buildXMLReport` writes it: the computer's average CPU
/// load and used memory, the zero-emission ratio (-1 without a heating
/// test), then each partition's (user's) average CPU percent, resident
/// memory (MiB) and disk use (MiB).
pub fn consumption_xml(conn: &Connection, computer_id: &str, users: &[String], date: &str) -> rusqlite::Result<String> {
    let mut x = String::from("<?xml version='1.0' encoding='utf-8'?><journal><transaction type=\"Sale Packing List\">");
    element(&mut x, "title", &format!("Eco Information for {computer_id} "));
    element(&mut x, "start_date", &format!("{date} 00:00:00"));
    element(&mut x, "stop_date", &format!("{date} 23:59:59"));
    element(&mut x, "reference", &format!("{date}-global"));
    for name in ["currency", "payment_mode", "category"] {
        element(&mut x, name, "");
    }
    x.push_str("<arrow type=\"Destination\"/>");
    if let Some(cpu) = scalar(conn, "SELECT SUM(cpu_percent)/COUNT(cpu_percent) FROM system WHERE date = ?1", &[date])? {
        movement(&mut x, "service_module/cpu_load_percent", "CPU Load Percent Average", &python_float_repr(cpu), computer_id);
    }
    if let Some(mem) = scalar(conn, "SELECT SUM(memory_used)/COUNT(memory_used) FROM system WHERE date = ?1", &[date])? {
        movement(&mut x, "service_module/memory_used", "Used Memory", &python_float_repr(mem), computer_id);
    }
    let ratio = conn
        .query_row("SELECT zero_emission_ratio FROM heating ORDER BY date, time DESC LIMIT 1", [], |r| r.get::<_, Value>(0))
        .map(|v| py_str(&v))
        .unwrap_or_else(|_| "-1".into());
    movement(&mut x, "service_module/zero_emission_ratio", "Zero Emission Ratio", &ratio, computer_id);
    for u in users {
        if let Some(v) = partition_average(conn, "user", "cpu_percent", u, date)? {
            movement(&mut x, "service_module/cpu_load_percent", &format!("CPU Load Percent Average for {u}"), &python_float_repr(v), u);
        }
    }
    for u in users {
        if let Some(v) = partition_average(conn, "user", "memory_rss", u, date)? {
            movement(&mut x, "service_module/memory_used", &format!("Memory Used Average for {u}"), &python_float_repr(v / 1048576.0), u);
        }
    }
    for u in users {
        if let Some(v) = partition_average(conn, "folder", "disk_used", u, date)? {
            movement(
                &mut x,
                "service_module/disk_used",
                &format!("Partition Disk Used Average for {u}"),
                &python_float_repr(v / 1024.0),
                u,
            );
        }
    }
    x.push_str("</transaction></journal>");
    Ok(x)
}

/// Writes the journals of yesterday and the day before into
/// `consumption_dir/<date>.xml` (once: never over an existing or
/// `.uploaded` one) and copies each new one into `xml_report_dir`.
/// Returns the dates written.
pub fn daily_reports(
    conn: &Connection,
    computer_id: &str,
    users: &[String],
    consumption_dir: &Path,
    xml_report_dir: &Path,
    today: chrono::NaiveDate,
) -> std::io::Result<Vec<String>> {
    let mut written = Vec::new();
    for back in 1..3 {
        let date = (today - chrono::Days::new(back)).format("%Y-%m-%d").to_string();
        let path = consumption_dir.join(format!("{date}.xml"));
        if path.exists() || consumption_dir.join(format!("{date}.xml.uploaded")).exists() {
            continue;
        }
        let xml = consumption_xml(conn, computer_id, users, &date).map_err(std::io::Error::other)?;
        crate::collect::write_atomic(&path, xml.as_bytes())?;
        crate::collect::write_atomic(&xml_report_dir.join(format!("{date}.xml")), xml.as_bytes())?;
        written.push(date);
    }
    Ok(written)
}
