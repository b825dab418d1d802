//! Running buildout (and other node programs) the way slapgrid does
//! (`node.md` §4.2): as the owner of a directory, in it, with HOME set to
//! it, a cleaned environment, umask 027, stdin closed, stdout and stderr
//! merged, logged line by line and kept for error reports.
//!
//! Every program the node runs for a partition or a software (buildout,
//! promises, report scripts, `sbin/destroy`) drops privileges through
//! [`drop_privileges`]: the user's groups are resolved in the parent
//! ([`Identity::resolve`], `getgrouplist`), the child between fork and exec
//! only makes async-signal-safe system calls (`setgroups`, `setgid`,
//! `setuid`, `umask`, `close_range`) — no user-database lookup, no
//! allocation, no lock that another thread could hold at fork.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variables slapgrid removes before running buildout.
const DROPPED: &[&str] =
    &["PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "CONFIG_SITE", "ENV", "LOGNAME", "TEMP", "TMP", "TMPDIR", "LANG", "LANGUAGE"];

/// What a run gave.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Exited with code 0.
    pub success: bool,
    /// The exit code (`None`: killed by a signal or at the deadline).
    pub code: Option<i32>,
    /// Merged stdout and stderr.
    pub output: String,
    /// What came on stderr alone.
    pub stderr: String,
    /// Killed because it ran out of time.
    pub timed_out: bool,
}

/// In a child before exec: every inherited descriptor above 2 is closed at
/// exec (buildout and promises get nothing of ours beyond stdio), while the
/// standard library's own exec-error pipe keeps working. One syscall,
/// async-signal-safe; ignored on kernels without `close_range` (< 5.11).
pub(crate) fn close_inherited_fds_on_exec() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 4;
    unsafe {
        libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC);
    }
}

/// Who a program runs as: resolved in the parent, applied in the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id the child takes (`setuid`).
    pub uid: u32,
    /// The primary group id the child takes (`setgid`).
    pub gid: u32,
    /// The supplementary groups (the user's, from the group database,
    /// with `gid` first); `[gid]` for a uid without a user entry.
    pub groups: Vec<u32>,
}

impl Identity {
    /// The identity of `uid` with primary group `gid` and its user's
    /// supplementary groups (`getgrouplist`). Never root: refused.
    pub fn resolve(uid: u32, gid: u32) -> std::io::Result<Identity> {
        if uid == 0 || gid == 0 {
            return Err(std::io::Error::other(format!("refusing to run a program as root (uid {uid}, gid {gid})")));
        }
        let g = nix::unistd::Gid::from_raw(gid);
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).map_err(std::io::Error::from)?;
        let mut groups = vec![gid];
        if let Some(name) = user.and_then(|u| std::ffi::CString::new(u.name).ok()) {
            let list = nix::unistd::getgrouplist(&name, g).map_err(std::io::Error::from)?;
            groups.extend(list.into_iter().map(|g| g.as_raw()).filter(|&x| x != gid));
        }
        if groups.contains(&0) {
            return Err(std::io::Error::other(format!("refusing to run a program with the root group (uid {uid} is in group 0)")));
        }
        Ok(Identity { uid, gid, groups })
    }
}

/// Prepares `cmd` to run as `identity` (when given: we are root), with
/// umask 027 and no inherited descriptor. The child only calls
/// async-signal-safe functions; gaining root back after the drop fails it.
pub fn drop_privileges(cmd: &mut Command, identity: Option<Identity>) {
    let target = identity.map(|i| {
        let groups: Vec<nix::unistd::Gid> = i.groups.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
        (nix::unistd::Uid::from_raw(i.uid), nix::unistd::Gid::from_raw(i.gid), groups)
    });
    // groups, then gid, then uid, then the umask, all in the child
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid, groups)) = &target {
                nix::unistd::setgroups(groups)?;
                nix::unistd::setgid(*gid)?;
                nix::unistd::setuid(*uid)?;
                if nix::unistd::setuid(nix::unistd::Uid::from_raw(0)).is_ok() {
                    return Err(std::io::ErrorKind::PermissionDenied.into());
                }
            }
            libc::umask(0o027);
            close_inherited_fds_on_exec();
            Ok(())
        });
    }
}

/// `--buildout-debug`: the same run, attached to our terminal (buildout's
/// `-D` opens pdb on errors), output not captured, no deadline.
pub fn run_interactive_as_owner(program: &str, args: &[String], dir: &Path, extra_env: &[(&str, &str)]) -> std::io::Result<RunOutput> {
    let mut cmd = owned_command(program, args, dir, extra_env)?;
    let status = cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit()).stderr(Stdio::inherit()).status()?;
    Ok(RunOutput {
        success: status.success(),
        code: status.code(),
        output: format!("{program} exited with {status} (--buildout-debug: its output went to the terminal)\n"),
        stderr: String::new(),
        timed_out: false,
    })
}

/// `program args…` prepared to run in `dir` as the owner of `dir` (see
/// [`drop_privileges`]), cleaned environment.
fn owned_command(program: &str, args: &[String], dir: &Path, extra_env: &[(&str, &str)]) -> std::io::Result<Command> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir)?;
    let (uid, gid) = (meta.uid(), meta.gid());
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if DROPPED.contains(&k.as_str()) || k.starts_with("LC_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("HOME", dir).env("PYTHONNOUSERSITE", "true");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let identity = if nix::unistd::geteuid().is_root() {
        let refused = |e: std::io::Error| std::io::Error::other(format!("{program} in {}: {e}", dir.display()));
        Some(Identity::resolve(uid, gid).map_err(refused)?)
    } else {
        None
    };
    drop_privileges(&mut cmd, identity);
    Ok(cmd)
}

/// Runs `program args…` in `dir` as the owner of `dir` (when we are root
/// and the owner is not), each output line passed to `on_line`; killed with
/// its whole process group after `timeout`.
pub fn run_as_owner(
    program: &str,
    args: &[String],
    dir: &Path,
    extra_env: &[(&str, &str)],
    timeout: Option<Duration>,
    on_line: impl FnMut(&str),
) -> std::io::Result<RunOutput> {
    run_as_owner_of(dir, program, args, dir, extra_env, timeout, on_line)
}

/// [`run_as_owner`] in `cwd` as the owner of `owner_dir` (HOME), as
/// slapgrid runs report scripts: in `etc/report`, as the partition's user.
pub fn run_as_owner_of(
    owner_dir: &Path,
    program: &str,
    args: &[String],
    cwd: &Path,
    extra_env: &[(&str, &str)],
    timeout: Option<Duration>,
    mut on_line: impl FnMut(&str),
) -> std::io::Result<RunOutput> {
    let mut cmd = owned_command(program, args, owner_dir, extra_env)?;
    cmd.current_dir(cwd);
    // its own process group, so that a deadline kills the whole tree
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<(bool, String)>();
    let tx2 = tx.clone();
    let stdout = child.stdout.take().expect("piped");
    let t1 = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((false, line));
        }
    });
    let t2 = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send((true, line));
        }
    });
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut output = String::new();
    let mut stderr_text = String::new();
    let mut timed_out = false;
    loop {
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(3600),
        };
        match rx.recv_timeout(wait) {
            Ok((is_err, line)) => {
                if is_err {
                    stderr_text.push_str(&line);
                    stderr_text.push('\n');
                }
                on_line(&line);
                output.push_str(&line);
                output.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    // suspend the whole tree, then kill it
                    let pg = nix::unistd::Pid::from_raw(-pid);
                    let _ = nix::sys::signal::kill(pg, nix::sys::signal::Signal::SIGSTOP);
                    let _ = nix::sys::signal::kill(pg, nix::sys::signal::Signal::SIGKILL);
                    timed_out = true;
                    break;
                }
            }
        }
    }
    if timed_out {
        // drain what is left without blocking on grandchildren holding the pipes
        while let Ok((_, line)) = rx.recv_timeout(Duration::from_millis(200)) {
            output.push_str(&line);
            output.push('\n');
        }
    } else {
        let _ = t1.join();
        let _ = t2.join();
    }
    let status = child.wait()?;
    if timed_out {
        output.push_str(&format!("Timeout: {program} was killed after {} seconds\n", timeout.unwrap_or_default().as_secs()));
    }
    Ok(RunOutput {
        success: status.success() && !timed_out,
        code: if timed_out { None } else { status.code() },
        output,
        stderr: stderr_text,
        timed_out,
    })
}

/// The interpreter line of a script (`#!/path/python3 -S` → `["/path/python3", "-S"]`).
pub fn shebang(script: &Path) -> Option<Vec<String>> {
    // a FIFO, link or huge file planted as the script never blocks or fills the node
    let text = crate::fsafe::Dir::open(script.parent()?).ok()?.read_head(Path::new(script.file_name()?), 4096).ok()?;
    let first = text.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?.strip_prefix("#!")?;
    let parts: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    (!parts.is_empty()).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory owned by a non-root user (as root, run_as_owner refuses
    /// root-owned directories).
    fn owned_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(d.path(), Some(65534), Some(65534)).unwrap();
        }
        d
    }

    #[test]
    #[ignore = "needs root"]
    fn needs_root_the_program_runs_as_the_owner_of_the_directory() {
        test_support::require_root();
        let d = owned_dir();
        let out = run_as_owner("/bin/sh", &["-c".into(), "id -u; id -g; id -G".into()], d.path(), &[], None, |_| {}).unwrap();
        let lines: Vec<&str> = out.output.lines().collect();
        assert_eq!(lines[..2], ["65534", "65534"], "{}", out.output);
        assert!(!lines[2].split(' ').any(|g| g == "0"), "no root group left: {}", out.output);
        let root = tempfile::tempdir().unwrap();
        assert!(run_as_owner("/bin/true", &[], root.path(), &[], None, |_| {}).unwrap_err().to_string().contains("refusing"));
    }

    #[test]
    fn runs_in_the_directory_with_a_clean_environment_and_merged_output() {
        let d = owned_dir();
        let mut lines = Vec::new();
        let out = run_as_owner(
            "/bin/sh",
            &["-c".into(), "echo out; echo err >&2; echo HOME=$HOME; echo LANG=${LANG:-unset}; umask; exit 3".into()],
            d.path(),
            &[("EXTRA", "1")],
            None,
            |l| lines.push(l.to_string()),
        );
        let out = out.unwrap();
        assert!(!out.success);
        assert_eq!(out.code, Some(3));
        assert!(out.output.contains("out\n") && out.output.contains("err\n"), "{}", out.output);
        assert!(out.output.contains(&format!("HOME={}", d.path().display())));
        assert!(out.output.contains("LANG=unset"));
        assert!(out.output.contains("0027"), "umask 027: {}", out.output);
        assert_eq!(lines.len(), out.output.lines().count());
    }

    #[test]
    fn a_run_past_its_timeout_is_killed_with_its_children() {
        let d = owned_dir();
        let t = Instant::now();
        let out = run_as_owner(
            "/bin/sh",
            &["-c".into(), "echo start; sleep 30 & sleep 30".into()],
            d.path(),
            &[],
            Some(Duration::from_millis(300)),
            |_| {},
        )
        .unwrap();
        assert!(out.timed_out && !out.success);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(out.output.starts_with("start\n") && out.output.contains("killed after"), "{}", out.output);
    }

    #[test]
    fn inherited_descriptors_do_not_reach_the_program() {
        use std::os::fd::AsRawFd;
        let d = owned_dir();
        // a descriptor without close-on-exec, as a parent process could leave us
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD(50)).unwrap();
        let out = run_as_owner(
            "/bin/sh",
            &["-c".into(), format!("[ -e /proc/self/fd/{fd} ] && echo leaked || echo closed")],
            d.path(),
            &[],
            None,
            |_| {},
        )
        .unwrap();
        nix::unistd::close(fd).unwrap();
        assert_eq!(out.output.trim(), "closed");
    }

    #[test]
    fn shebang_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("buildout");
        std::fs::write(&p, "#!/opt/venv/bin/python3 -S\nimport sys\n").unwrap();
        assert_eq!(shebang(&p).unwrap(), ["/opt/venv/bin/python3", "-S"]);
        std::fs::write(&p, "no shebang").unwrap();
        assert_eq!(shebang(&p), None);
    }
}
