//! Legacy promises (`<partition>/etc/promise/*`, `node.md` §5.5): run each
//! executable as the partition's owner with a timeout, and save its result
//! in `.slapgrid/promise/result/<title>.status.json` in the shape (and the
//! JSON spacing) slapgrid writes.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fsafe::{self, Dir, Kind};
use crate::partition::{chown_tree, output, Owner};

/// The outcome of one promise.
#[derive(Debug, Clone, PartialEq)]
pub struct PromiseResult {
    /// File name (legacy) or module name (plugin).
    pub title: String,
    /// The name shown in reports (the title, as slapgrid).
    pub name: String,
    /// The promise's file.
    pub path: PathBuf,
    /// Seconds it took.
    pub execution_time: f64,
    /// It failed (non-zero exit, exception or timeout).
    pub failed: bool,
    /// Its output, or why it failed (the tail, at most a few thousand characters).
    pub message: String,
    /// `YYYY-MM-DDTHH:MM:SS+0000`.
    pub date: String,
}

/// Messages are cut to their last 5000 characters, as slapgrid does.
const MAX_MESSAGE: usize = 5000;

fn tail_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

/// Python's `json.dumps(value)` (keys in the given order).
pub fn python_json(v: &serde_json::Value) -> String {
    slap::pyjson::dumps(v, &slap::pyjson::Options::DEFAULT)
}

impl PromiseResult {
    /// The result file's content, as slapgrid writes it.
    pub fn to_json(&self) -> String {
        let mut result = serde_json::Map::new();
        result.insert("type".into(), "Test Result".into());
        result.insert("failed".into(), self.failed.into());
        result.insert("date".into(), self.date.clone().into());
        result.insert("message".into(), self.message.clone().into());
        let mut doc = serde_json::Map::new();
        doc.insert("title".into(), self.title.clone().into());
        doc.insert("name".into(), self.name.clone().into());
        doc.insert("path".into(), self.path.display().to_string().into());
        doc.insert("execution-time".into(), serde_json::json!((self.execution_time * 1000.0).round() / 1000.0));
        doc.insert("result".into(), serde_json::Value::Object(result));
        python_json(&serde_json::Value::Object(doc))
    }

    /// Writes `<partition>/.slapgrid/promise/result/<title>.status.json`
    /// (temporary file, then rename).
    pub fn save(&self, partition: &Path) -> std::io::Result<PathBuf> {
        let rel = Path::new(".slapgrid/promise/result");
        let dir = Dir::open_nofollow(partition)?.create_dir_all(rel, 0o755, None)?;
        let name = format!("{}.status.json", self.title);
        dir.write(Path::new(&name), self.to_json().as_bytes(), 0o644, None)?;
        Ok(partition.join(rel).join(name))
    }
}

/// Runs a legacy promise: `path` in `partition`, as `owner` (uid, gid) when
/// given, killed (with its process group) after `timeout`. Success is exit
/// code 0; the message is the output.
pub fn run_legacy(path: &Path, partition: &Path, owner: Option<(u32, u32)>, timeout: Duration) -> PromiseResult {
    let title = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let date = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S+0000").to_string();
    let start = Instant::now();
    let done = |failed: bool, message: String, start: Instant| PromiseResult {
        title: title.clone(),
        name: title.clone(),
        path: path.to_path_buf(),
        execution_time: start.elapsed().as_secs_f64(),
        failed,
        message: tail_chars(&message, MAX_MESSAGE),
        date: date.clone(),
    };
    let executable = std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if !executable {
        return done(true, format!("Bad promise file: {} is not an executable file", path.display()), start);
    }
    let mut cmd = Command::new(path);
    cmd.current_dir(partition).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    // as root, always as the owner, with its groups (the one privilege drop)
    let identity = match owner {
        Some((uid, gid)) if nix::unistd::geteuid().is_root() => match crate::process::Identity::resolve(uid, gid) {
            Ok(i) => Some(i),
            Err(e) => return done(true, format!("Error: cannot run {}: {e}", path.display()), start),
        },
        _ => None,
    };
    crate::process::drop_privileges(&mut cmd, identity);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return done(true, format!("Error: cannot run {}: {e}", path.display()), start),
    };
    let (mut out, mut err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let reader = std::thread::spawn(move || {
        let mut o = String::new();
        let mut e = String::new();
        let _ = out.read_to_string(&mut o);
        let _ = err.read_to_string(&mut e);
        (o, e)
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                // terminate the whole process group, then kill it after 1 s
                let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
                let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGTERM);
                std::thread::sleep(Duration::from_secs(1));
                let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                break None;
            }
        }
    };
    let (o, e) = reader.join().unwrap_or_default();
    let output = format!("{}{}", o, e).trim().to_string();
    match status {
        None => done(true, format!("Error: Promise timed out after {} seconds", timeout.as_secs()), start),
        Some(s) if s.success() => done(false, output, start),
        Some(_) if output.is_empty() => done(true, "Error: No output returned by the promise".into(), start),
        Some(_) => done(true, output, start),
    }
}

/// Why the promises of a partition did not pass.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromiseFailure {
    /// A promise failed: `Promise '<name>' failed with output: <message>`.
    #[error("{0}")]
    Failed(String),
    /// The promises could not be run at all.
    #[error("{0}")]
    Error(String),
}

/// Plugin promises of a partition: `etc/plugin/*.py` except `__init__*`.
pub fn plugin_files(partition: &Path) -> Vec<PathBuf> {
    let dir = partition.join("etc/plugin");
    let mut v: Vec<PathBuf> = entries(partition, "etc/plugin")
        .into_iter()
        .filter(|(n, _)| {
            let n = n.to_string_lossy();
            n.ends_with(".py") && !n.starts_with("__init__")
        })
        .map(|(n, _)| dir.join(n))
        .collect();
    v.sort();
    v
}

/// The entries of a directory of a partition, links not followed (none
/// when it cannot be read).
fn entries(partition: &Path, rel: &str) -> Vec<(std::ffi::OsString, Kind)> {
    Dir::open_nofollow(partition).and_then(|pd| pd.entries(Path::new(rel))).unwrap_or_default()
}

/// A small file of a partition (a promise's cache or result).
fn read_state(partition: &Path, rel: &Path) -> Option<String> {
    Dir::open_nofollow(partition).and_then(|pd| pd.read_to_string(rel, fsafe::SMALL)).ok()
}

/// The paths of the first `sys.path[0:0] = [...]` assignment of a plugin
/// file: where its slapos.core is importable from.
pub fn plugin_sys_path(plugin_source: &str) -> Vec<String> {
    let Some(line) = plugin_source.lines().find(|l| l.trim_start().starts_with("sys.path[0:0]")) else { return Vec::new() };
    let Some((_, list)) = line.split_once('=') else { return Vec::new() };
    let mut out = Vec::new();
    let mut rest = list;
    while let Some(start) = rest.find(['\'', '"']) {
        let quote = rest.as_bytes()[start] as char;
        let after = &rest[start + 1..];
        let Some(end) = after.find(quote) else { break };
        out.push(after[..end].to_string());
        rest = &after[end + 1..];
    }
    out
}

/// The cache of a promise (when it may run again), relative to its
/// partition.
fn cache_path(title: &str) -> PathBuf {
    Path::new(".slapgrid/promise/cache").join(title)
}

fn saved_result(partition: &Path, title: &str) -> Option<(bool, String)> {
    let text = read_state(partition, &Path::new(".slapgrid/promise/result").join(format!("{title}.status.json")))?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let r = v.get("result")?;
    Some((r.get("failed")?.as_bool()?, r.get("message").and_then(|m| m.as_str()).unwrap_or_default().to_string()))
}

/// Legacy promises of a partition, run natively. `force`: ignore the
/// periodicity (2 minutes) and run every promise now.
pub fn run_legacy_all(
    partition: &Path,
    owner: (u32, u32),
    timeout: Duration,
    force: bool,
    anomaly: bool,
) -> Result<Vec<PromiseResult>, PromiseFailure> {
    let dir = partition.join("etc/promise");
    let mut results = Vec::new();
    let mut first_failure = None;
    let now = chrono::Utc::now().timestamp();
    for (name, _) in entries(partition, "etc/promise") {
        let path = dir.join(&name);
        let title = name.to_string_lossy().into_owned();
        let cache = cache_path(&title);
        let cached = read_state(partition, &cache).and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        let next_run_after = cached.as_ref().and_then(|v| v.get("next_run_after").and_then(|n| n.as_f64()));
        let mut in_a_row = cached.as_ref().and_then(|v| v.get("failed-in-a-row").and_then(|n| n.as_u64())).unwrap_or(0);
        let (failed, message) = match (force, next_run_after, saved_result(partition, &title)) {
            (false, Some(next), Some(saved)) if (now as f64) < next => saved,
            _ => {
                let r = run_legacy(&path, partition, Some(owner), timeout);
                let _ = r.save(partition);
                in_a_row = if r.failed { in_a_row + 1 } else { 0 };
                let doc = serde_json::json!({
                    "is_tested": true, "is_anomaly_detected": anomaly && in_a_row >= ANOMALY_FAILURES, "periodicity": 2,
                    "next_run_after": now as f64 + 120.0, "timestamp": now as f64,
                    "module_file": path.display().to_string(), "failed-in-a-row": in_a_row,
                });
                let written = Dir::open_nofollow(partition).and_then(|pd| {
                    pd.create_dir_all(Path::new(".slapgrid/promise/cache"), 0o755, None)?;
                    pd.write(&cache, python_json(&doc).as_bytes(), 0o644, None)
                });
                if let Err(e) = written {
                    tracing::warn!("{e}");
                }
                let out = (r.failed, r.message.clone());
                results.push(r);
                out
            }
        };
        // a test fails at once; an anomaly only after several failures in a row
        let counts = if anomaly { failed && in_a_row >= ANOMALY_FAILURES } else { failed };
        if counts && first_failure.is_none() {
            first_failure = Some(format!("Promise '{title}' failed with output: {message}"));
        }
    }
    match first_failure {
        Some(m) => Err(PromiseFailure::Failed(m)),
        None => Ok(results),
    }
}

/// Failures in a row that make a legacy promise's anomaly (slapgrid wraps
/// legacy promises with `_anomaly(result_count=3, failure_amount=3)`).
pub const ANOMALY_FAILURES: u64 = 3;

/// Whether every promise of a partition (plugins and legacy) has a cache
/// entry saying it is not due yet, for the same plugin file, and a last
/// result that passed: then an anomaly run has nothing to do.
pub fn all_cached_and_passing(pp: &Path, plugins: &[PathBuf]) -> bool {
    let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
    let Ok(pd) = Dir::open_nofollow(pp) else { return false };
    let legacy: Vec<PathBuf> = entries(pp, "etc/promise").into_iter().map(|(n, _)| pp.join("etc/promise").join(n)).collect();
    let entries = plugins.iter().map(|p| (p, true)).chain(legacy.iter().map(|p| (p, false)));
    for (path, is_plugin) in entries {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let title = if is_plugin { name.trim_end_matches(".py").to_string() } else { name.clone() };
        let Some(cache) = read_state(pp, &cache_path(&title)).and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()) else {
            return false;
        };
        if cache.get("next_run_after").and_then(|v| v.as_f64()).is_none_or(|next| now >= next) {
            return false;
        }
        if is_plugin {
            let mtime = pd.metadata(&Path::new("etc/plugin").join(&name)).ok().map(|m| m.mtime);
            let cached = cache.get("module_file_mtime").and_then(|v| v.as_f64());
            if !matches!((mtime, cached), (Some(a), Some(b)) if (a - b).abs() < 1e-3) {
                return false;
            }
        }
        match saved_result(pp, &title) {
            Some((false, _)) => {}
            _ => return false,
        }
    }
    true
}

/// Every promise of a partition (`node.md` §5.5): plugin promises (and then the
/// legacy ones) through slapos.core's `runpromises.py` with the software's
/// Python, or the legacy ones natively when there is no plugin.
pub fn run_all(
    node: &crate::node::Node,
    p: &slap::model::ComputerPartition,
    pp: &Path,
    owner: &Owner,
    force: bool,
    check_anomaly: bool,
) -> Result<(), PromiseFailure> {
    let id = p.partition_id.as_str();
    let timeout = node.cfg.promise_timeout;
    let plugins = plugin_files(pp);
    let legacy: Vec<_> = entries(pp, "etc/promise").into_iter().map(|(name, _)| name).collect();
    let legacy_count = legacy.len();
    // one badly named promise refuses them all (an error of the partition)
    crate::names::parse_all::<crate::names::PromiseName>("etc/promise", legacy)
        .map_err(|e| PromiseFailure::Error(format!("Promise refused: {e}")))?;
    if plugins.is_empty() && legacy_count == 0 {
        return Ok(());
    }
    tracing::info!("Checking {id} promises...");
    if check_anomaly && !force && !plugins.is_empty() && all_cached_and_passing(pp, &plugins) {
        // nothing is due: spare the start of the software's Python
        return Ok(());
    }
    let result = if plugins.is_empty() {
        let r = run_legacy_all(pp, (owner.uid, owner.gid), timeout, force, check_anomaly && !force).map(drop);
        // an anomaly asks the master to reprocess the instance (once per run)
        if let (Err(PromiseFailure::Failed(m)), true) = (&r, check_anomaly && !force) {
            let title = m.split('\'').nth(1).unwrap_or_default();
            match node.client.bang(&node.cfg.computer_id, id, &format!("Promise {title} is failing")) {
                Ok(()) => tracing::warn!("Banged the master: promise {title} is failing"),
                Err(e) => tracing::warn!("could not bang the master: {e}"),
            }
        }
        r
    } else {
        run_with_python(node, p, pp, owner, &plugins, legacy_count, force, check_anomaly)
    };
    // the partition's user owns its promise state
    chown_tree(pp, ".slapgrid", owner.uid, owner.gid);
    result
}

/// slapos.core's `runpromises.py`: under one of the plugin's `sys.path`
/// entries, else wherever the software's Python imports slapos from. That
/// import runs as the partition's user in `pp`: the `sys.path` comes from
/// the partition's plugin file, never imported by root.
fn find_runpromises(python: &str, sys_path: &[String], pp: &Path) -> Option<PathBuf> {
    let found = sys_path.iter().find_map(|d| {
        ["slapos/grid/promise/runpromises.py", "grid/promise/runpromises.py"].iter().map(|rel| Path::new(d).join(rel)).find(|r| r.is_file())
    });
    if found.is_some() {
        return found;
    }
    let mut args = vec![
        "-c".to_string(),
        "import sys, os; sys.path[0:0] = sys.argv[1:]; import slapos.grid.promise as p; print('RUNPROMISES=' + os.path.dirname(p.__file__))".into(),
    ];
    args.extend(sys_path.iter().cloned());
    let out = crate::process::run_as_owner(python, &args, pp, &[], Some(Duration::from_secs(60)), |_| {}).ok()?;
    let dir = out.output.lines().find_map(|l| l.strip_prefix("RUNPROMISES="))?.trim().to_string();
    let r = Path::new(&dir).join("runpromises.py");
    (out.success && r.is_file()).then_some(r)
}

#[allow(clippy::too_many_arguments)]
fn run_with_python(
    node: &crate::node::Node,
    p: &slap::model::ComputerPartition,
    pp: &Path,
    owner: &Owner,
    plugins: &[PathBuf],
    legacy_count: usize,
    force: bool,
    check_anomaly: bool,
) -> Result<(), PromiseFailure> {
    let id = p.partition_id.as_str();
    let sp = crate::decision::software_path(&node.cfg.software_root, p.software_release_url().unwrap_or_default());
    let python = crate::process::shebang(&sp.join("bin/buildout")).and_then(|v| v.into_iter().next()).ok_or_else(|| {
        PromiseFailure::Error(format!("plugin promises need the software's Python: {} has none", sp.join("bin/buildout").display()))
    })?;
    let plugin_name = plugins[0].file_name().map(|n| Path::new("etc/plugin").join(n)).unwrap_or_default();
    let source = Dir::open_nofollow(pp).and_then(|pd| pd.read_to_string(&plugin_name, fsafe::LARGE)).unwrap_or_default();
    let runner = find_runpromises(&python, &plugin_sys_path(&source), pp).ok_or_else(|| {
        PromiseFailure::Error(format!(
            "plugin promise {} needs slapos.core: neither its sys.path[0:0] list nor {python} can import slapos.grid.promise",
            plugins[0].display()
        ))
    })?;
    tracing::info!("Switching to {id}'s python at {python}");
    let (cert, key) = match &node.cfg.certificate_repository_path {
        Some(r) => (r.join(format!("{id}.crt")).display().to_string(), r.join(format!("{id}.key")).display().to_string()),
        None => ("None".to_string(), "None".to_string()),
    };
    let mut args = vec![
        runner.display().to_string(),
        "--promise-folder".into(),
        pp.join("etc/plugin").display().to_string(),
        "--legacy-promise-folder".into(),
        pp.join("etc/promise").display().to_string(),
        "--promise-timeout".into(),
        node.cfg.promise_timeout.as_secs().to_string(),
        "--partition-folder".into(),
        pp.display().to_string(),
        "--log-folder".into(),
        pp.join(".slapgrid/promise/log").display().to_string(),
    ];
    if force {
        args.push("--force".into());
    }
    if check_anomaly {
        args.push("--check-anomaly".into());
    }
    for (k, v) in [
        ("--master-url", node.cfg.master_url.clone()),
        ("--partition-cert", cert),
        ("--partition-key", key),
        ("--partition-id", id.to_string()),
        ("--computer-id", node.cfg.computer_id.clone()),
    ] {
        args.push(k.into());
        args.push(v);
    }
    // the .slapgrid tree must be the partition user's before it writes there
    let to = nix::unistd::geteuid().is_root().then_some((owner.uid, owner.gid));
    let _ = Dir::open_nofollow(pp).and_then(|pd| pd.create_dir_all(Path::new(".slapgrid"), 0o755, to));
    chown_tree(pp, ".slapgrid", owner.uid, owner.gid);
    let total = Duration::from_secs((plugins.len() + legacy_count) as u64 * node.cfg.promise_timeout.as_secs() + 10);
    let out = crate::process::run_as_owner(&python, &args, pp, &[("HOME", owner.home.as_str())], Some(total), |l| output(id, l))
        .map_err(|e| PromiseFailure::Error(format!("cannot run {python}: {e}")))?;
    match out.code {
        Some(0) => Ok(()),
        Some(2) => Err(PromiseFailure::Failed(out.stderr.trim().to_string())),
        _ => Err(PromiseFailure::Error(if out.stderr.trim().is_empty() { out.output } else { out.stderr.trim().to_string() })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o750)).unwrap();
        p
    }

    #[test]
    fn pass_fail_timeout_silence_and_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let ok = run_legacy(&script(d.path(), "ok", "echo fine"), d.path(), None, Duration::from_secs(10));
        assert!(!ok.failed && ok.message == "fine", "{ok:?}");
        let ko = run_legacy(&script(d.path(), "ko", "echo broken >&2; exit 3"), d.path(), None, Duration::from_secs(10));
        assert!(ko.failed && ko.message == "broken", "{ko:?}");
        let silent = run_legacy(&script(d.path(), "silent", "exit 1"), d.path(), None, Duration::from_secs(10));
        assert_eq!(silent.message, "Error: No output returned by the promise");
        let slow = run_legacy(&script(d.path(), "slow", "sleep 30"), d.path(), None, Duration::from_secs(1));
        assert!(slow.failed && slow.message == "Error: Promise timed out after 1 seconds", "{slow:?}");
        assert!(slow.execution_time < 10.0, "the process group was killed");
        std::fs::write(d.path().join("plain"), "x").unwrap();
        let bad = run_legacy(&d.path().join("plain"), d.path(), None, Duration::from_secs(1));
        assert!(bad.failed && bad.message.starts_with("Bad promise file"), "{bad:?}");
        let cwd = run_legacy(&script(d.path(), "cwd", "pwd"), d.path(), None, Duration::from_secs(10));
        assert_eq!(PathBuf::from(&cwd.message).canonicalize().unwrap(), d.path().canonicalize().unwrap());
    }

    #[test]
    fn an_anomaly_run_is_skipped_only_when_every_promise_is_cached_passing_and_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let pp = d.path();
        std::fs::create_dir_all(pp.join("etc/plugin")).unwrap();
        std::fs::create_dir_all(pp.join(".slapgrid/promise/cache")).unwrap();
        std::fs::create_dir_all(pp.join(".slapgrid/promise/result")).unwrap();
        let plugin = pp.join("etc/plugin/check_http.py");
        std::fs::write(&plugin, "sys.path[0:0] = []\n").unwrap();
        let mtime = std::fs::metadata(&plugin).unwrap().modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let now = chrono::Utc::now().timestamp() as f64;
        let cache = |next: f64, mtime: f64| {
            std::fs::write(
                pp.join(".slapgrid/promise/cache/check_http"),
                format!("{{\"next_run_after\": {next}, \"module_file_mtime\": {mtime}}}"),
            )
            .unwrap()
        };
        let result = |failed: bool| {
            std::fs::write(
                pp.join(".slapgrid/promise/result/check_http.status.json"),
                format!("{{\"result\": {{\"failed\": {failed}, \"message\": \"m\"}}}}"),
            )
            .unwrap()
        };
        let plugins = plugin_files(pp);
        assert!(!all_cached_and_passing(pp, &plugins), "no cache yet");
        cache(now + 60.0, mtime);
        result(false);
        assert!(all_cached_and_passing(pp, &plugins));
        result(true);
        assert!(!all_cached_and_passing(pp, &plugins), "last result failed");
        result(false);
        cache(now - 1.0, mtime);
        assert!(!all_cached_and_passing(pp, &plugins), "due");
        cache(now + 60.0, mtime - 10.0);
        assert!(!all_cached_and_passing(pp, &plugins), "the plugin changed");
    }

    #[test]
    fn the_plugin_sys_path_is_read_from_its_first_assignment() {
        let src = "import sys\nsys.path[0:0] = ['/venv/lib/site-packages', \"/other\"]\nimport x\nsys.path[0:0] = ['/no']\n";
        assert_eq!(plugin_sys_path(src), ["/venv/lib/site-packages", "/other"]);
        assert!(plugin_sys_path("import sys\n").is_empty());
    }

    #[test]
    fn legacy_promises_report_the_first_failure_and_respect_their_periodicity() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("etc/promise");
        std::fs::create_dir_all(&dir).unwrap();
        script(&dir, "good", "echo ok");
        let counter = d.path().join("count");
        script(&dir, "bad", &format!("echo x >> {}; echo down; exit 1", counter.display()));
        // as root, promises run as the partition's owner (never root): nobody here
        let me = if nix::unistd::geteuid().is_root() {
            assert!(std::process::Command::new("chown").args(["-R", "65534:65534"]).arg(d.path()).status().unwrap().success());
            (65534, 65534)
        } else {
            (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw())
        };
        let e = run_legacy_all(d.path(), me, Duration::from_secs(5), true, false).unwrap_err();
        assert_eq!(e, PromiseFailure::Failed("Promise 'bad' failed with output: down".into()));
        assert!(d.path().join(".slapgrid/promise/result/good.status.json").exists());
        // a test run within the periodicity reuses the saved result
        let e2 = run_legacy_all(d.path(), me, Duration::from_secs(5), false, false).unwrap_err();
        assert_eq!(e, e2);
        assert_eq!(std::fs::read_to_string(&counter).unwrap().lines().count(), 1);
        run_legacy_all(d.path(), me, Duration::from_secs(5), true, false).unwrap_err();
        assert_eq!(std::fs::read_to_string(&counter).unwrap().lines().count(), 2);
        // an anomaly needs three failures in a row: two so far, the third counts
        std::fs::remove_file(d.path().join(".slapgrid/promise/cache/bad")).unwrap();
        std::fs::write(d.path().join(".slapgrid/promise/cache/bad"), "{\"failed-in-a-row\": 1}").unwrap();
        assert!(run_legacy_all(d.path(), me, Duration::from_secs(5), true, true).is_ok(), "2 in a row: not yet an anomaly");
        assert!(run_legacy_all(d.path(), me, Duration::from_secs(5), true, true).is_err(), "3 in a row: an anomaly");
    }

    #[test]
    fn the_result_file_has_slapgrids_shape_and_spacing() {
        let d = tempfile::tempdir().unwrap();
        let r = PromiseResult {
            title: "check-http".into(),
            name: "check-http".into(),
            path: "/srv/slapgrid/slappart0/etc/promise/check-http".into(),
            execution_time: 0.0512,
            failed: false,
            message: "http://[fd00:e2e::2]:8080/ is reachable é".into(),
            date: "2026-11-24T17:45:43+0000".into(),
        };
        let path = r.save(d.path()).unwrap();
        assert!(path.ends_with(".slapgrid/promise/result/check-http.status.json"));
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            "{\"title\": \"check-http\", \"name\": \"check-http\", \"path\": \"/srv/slapgrid/slappart0/etc/promise/check-http\", \"execution-time\": 0.051, \"result\": {\"type\": \"Test Result\", \"failed\": false, \"date\": \"2026-11-24T17:45:43+0000\", \"message\": \"http://[fd00:e2e::2]:8080/ is reachable \\u00e9\"}}"
        );
    }
}
