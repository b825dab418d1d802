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

/// The outcome of one promise.
#[derive(Debug, Clone, PartialEq)]
pub struct PromiseResult {
    /// File name (legacy) or module name (plugin).
    pub title: String,
    pub name: String,
    pub path: PathBuf,
    pub execution_time: f64,
    pub failed: bool,
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

/// Python's `json.dumps(value)`: `", "` and `": "` separators, non-ASCII
/// escaped, keys in the given order.
pub fn python_json(v: &serde_json::Value) -> String {
    let mut out = String::new();
    write_json(&mut out, v);
    out
}

fn write_json(out: &mut String, v: &serde_json::Value) {
    use serde_json::Value as J;
    match v {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Number(n) => out.push_str(&n.to_string()),
        J::String(s) => {
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if (c as u32) < 0x20 || !c.is_ascii() => {
                        let mut buf = [0u16; 2];
                        for u in c.encode_utf16(&mut buf) {
                            out.push_str(&format!("\\u{u:04x}"));
                        }
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        J::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(out, x);
            }
            out.push(']');
        }
        J::Object(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(out, &J::String(k.clone()));
                out.push_str(": ");
                write_json(out, x);
            }
            out.push('}');
        }
    }
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
        let dir = partition.join(".slapgrid/promise/result");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.status.json", self.title));
        let tmp = dir.join(format!(".{}.status.json.tmp", self.title));
        std::fs::write(&tmp, self.to_json())?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
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
    if let Some((uid, gid)) = owner {
        if nix::unistd::geteuid().is_root() && uid != 0 {
            cmd.uid(uid).gid(gid);
        }
    }
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
