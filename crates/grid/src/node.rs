//! What every node command shares: the configuration, the master client,
//! the node's supervisord, the pid-file lock and the errors that stop a run
//! (`node.md` §3). Exit codes are the program's: library functions return
//! typed outcomes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use slap::client::{ClientConfig, SlapClient, SlapError};
use slap::model::Computer;

use crate::config::NodeConfig;
use crate::supervisor::{Supervisor, SupervisorError};

#[derive(Debug, thiserror::Error)]
/// Why a node run cannot start or proceed.
pub enum NodeError {
    /// Another run holds the pid-file lock.
    #[error("another slapos process is already running (pid {pid}, pid file {path})")]
    AlreadyRunning {
        /// Its process id.
        pid: i32,
        /// The pid file.
        path: PathBuf,
    },
    /// The pid file cannot be written.
    #[error("cannot write the pid file {path}: {source}")]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The node's directories or supervisord cannot be set up.
    #[error("{0}")]
    Structure(String),
    /// The master refused or did not answer.
    #[error(transparent)]
    Master(#[from] SlapError),
    /// The node's supervisord cannot be launched or refused a call.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// `--only-cp` names a partition the master does not list.
    #[error("Computer Partition '{id}' does not exist on computer {computer_id} (--only-cp)")]
    UnknownPartition {
        /// The id asked for.
        id: String,
        /// The node's computer.
        computer_id: String,
    },
    /// Offline processing could not start the services again.
    #[error(transparent)]
    Offline(SupervisorError),
}

/// The node: configuration, master, supervisord.
pub struct Node {
    /// The node's configuration.
    pub cfg: NodeConfig,
    /// The client of the master.
    pub client: SlapClient,
    /// The node's supervisord.
    pub supervisor: Supervisor,
}

/// Where `supervisord` comes from: `[slapos] supervisord` is not a SlapOS
/// option (slapgrid uses its own Python's); we look next to the configured
/// buildout, then on PATH.
pub fn find_program(name: &str, near: &str) -> String {
    let near = Path::new(near);
    if near.is_absolute() {
        if let Some(dir) = near.parent() {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate.display().to_string();
            }
        }
    }
    which(name).map(|p| p.display().to_string()).unwrap_or_else(|| name.to_string())
}

/// The first `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

impl Node {
    /// Sets up the node from `cfg`: the master's client, the supervisord configuration and its directories.
    pub fn new(cfg: NodeConfig) -> Result<Node, NodeError> {
        let mut cc = ClientConfig::new(cfg.master_url.clone()).with_timeout(Duration::from_secs(60));
        cc.key_file = cfg.key_file.clone();
        cc.cert_file = cfg.cert_file.clone();
        cc.ca_file = cfg.master_ca_file.clone();
        let mut client = SlapClient::new(cc.clone())?;
        if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
            match crate::certificate::renew_computer(&client, &cfg.computer_id, cert, key, cfg.certificate_renewal) {
                Ok(true) => client = SlapClient::new(cc)?,
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot renew the computer certificate {}: {e}", cert.display()),
            }
        }
        let supervisor = Supervisor::new(&cfg.instance_root, find_program("supervisord", &cfg.buildout));
        Ok(Node { cfg, client, supervisor })
    }

    /// `software_root` and `instance_root` must exist; the supervisord files
    /// are created or refreshed (every software, instance and report run).
    pub fn check_structure(&self) -> Result<(), NodeError> {
        for (key, path) in [("software_root", &self.cfg.software_root), ("instance_root", &self.cfg.instance_root)] {
            if !path.is_dir() {
                return Err(NodeError::Structure(format!(
                    "{key} {} does not exist or is not a directory: run `slapos node format` first, or fix [slapos] {key}",
                    path.display()
                )));
            }
        }
        let watchdog = std::env::current_exe().ok().map(|exe| {
            crate::watchdog::command_line(
                &exe,
                &crate::watchdog::WatchdogConfig {
                    master_url: self.cfg.master_url.clone(),
                    computer_id: self.cfg.computer_id.clone(),
                    instance_root: self.cfg.instance_root.clone(),
                    certificate_repository_path: self.cfg.certificate_repository_path.clone(),
                    master_ca_file: self.cfg.master_ca_file.clone(),
                },
            )
        });
        self.supervisor
            .write_configuration(watchdog.as_deref())
            .map_err(|e| NodeError::Structure(format!("cannot write the supervisord configuration: {e}")))
    }

    /// The computer as the master sees it (one `getFullComputerInformation`,
    /// after the `getHateoasUrl` probe every slapgrid run makes), retried
    /// with backoff while the master cannot be reached.
    pub fn computer(&self) -> Result<Computer, SlapError> {
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            let r = self.client.hateoas_url().and_then(|_| self.client.computer_information(&self.cfg.computer_id));
            match r {
                Err(e) if e.is_unreachable() && attempt < 3 => {
                    tracing::warn!("master unreachable ({e}); retrying in {:.1} s", delay.as_secs_f32());
                    std::thread::sleep(delay);
                    delay *= 3;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Free space for non-root users on the filesystem of `path` (or of its
/// nearest existing ancestor).
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    let mut p = path;
    while !p.exists() {
        p = p.parent().unwrap_or(Path::new("/"));
    }
    let s = nix::sys::statvfs::statvfs(p).map_err(std::io::Error::from)?;
    Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// slapgrid's `DiskSpaceError`, with its message.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    /// `statvfs` failed.
    #[error("cannot read the free space of {}: {source}", .path.display())]
    Unknown {
        /// The path asked about.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Less than the option asks.
    #[error("Not enough space for {}: available {}, required {} (option '{option}')", .path.display(), mib(*.available), mib(*.required))]
    NotEnough {
        /// The path asked about.
        path: PathBuf,
        /// Bytes free for non-root users.
        available: u64,
        /// Bytes the option requires.
        required: u64,
        /// The option (`software_min_free_space`, `instance_min_free_space`).
        option: String,
    },
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Checks that the filesystem of `path` has `required` bytes free (the
/// value of `option`).
pub fn check_free_space(path: &Path, required: u64, option: &str) -> Result<(), SpaceError> {
    let available = free_space(path).map_err(|source| SpaceError::Unknown { path: path.to_path_buf(), source })?;
    if available < required {
        return Err(SpaceError::NotEnough { path: path.to_path_buf(), available, required, option: option.to_string() });
    }
    Ok(())
}

/// The pid-file lock of a node command: a live `slapos` process in the file
/// means another run is going on.
#[derive(Debug)]
pub struct PidLock {
    path: PathBuf,
}

impl PidLock {
    /// Takes the lock at `path`: refused while the pid it holds is alive, a stale pid is replaced.
    pub fn acquire(path: &Path) -> Result<PidLock, NodeError> {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if pid != std::process::id() as i32 && String::from_utf8_lossy(&cmdline).contains("slapos") {
                    return Err(NodeError::AlreadyRunning { pid, path: path.to_path_buf() });
                }
            }
        }
        let err = |source| NodeError::PidFile { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        // written whole, then renamed: a reader never sees half a pid
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let written =
            std::fs::File::create(&tmp).and_then(|mut f| write!(f, "{}", std::process::id())).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        Ok(PidLock { path: path.to_path_buf() })
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_checked_against_the_option() {
        let d = tempfile::tempdir().unwrap();
        assert!(check_free_space(&d.path().join("not/yet"), 1, "software_min_free_space").is_ok());
        let e = check_free_space(d.path(), u64::MAX, "instance_min_free_space").unwrap_err().to_string();
        assert!(e.starts_with("Not enough space for ") && e.ends_with("(option 'instance_min_free_space')"), "{e}");
    }

    #[test]
    fn a_live_slapos_process_in_the_pid_file_refuses_a_second_run() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("run/slapgrid-cp.pid");
        {
            let _lock = PidLock::acquire(&path).unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), std::process::id().to_string());
        }
        assert!(!path.exists(), "removed at the end");
        // a stale pid (not a slapos process) is overwritten
        std::fs::write(&path, "1").unwrap();
        PidLock::acquire(&path).unwrap();
        // a live process whose command line says slapos
        let mut child = std::process::Command::new("/bin/sh").args(["-c", "sleep 5; true", "slapos"]).spawn().unwrap();
        // (wait for the exec: before it, the command line is not yet the shell's)
        for _ in 0..200 {
            if std::fs::read(format!("/proc/{}/cmdline", child.id()))
                .map(|c| String::from_utf8_lossy(&c).contains("sleep 5"))
                .unwrap_or(false)
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::fs::write(&path, child.id().to_string()).unwrap();
        let e = PidLock::acquire(&path).unwrap_err();
        assert!(matches!(e, NodeError::AlreadyRunning { .. }), "{e}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
