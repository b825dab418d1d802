//! `slapos node instance` (`node.md` §5): bring every partition to the
//! state the master asks, with the software release's own buildout, the
//! node's supervisord and the partition's promises.
//!
//! Beyond slapgrid, partitions are processed **in parallel** by a bounded
//! pool of workers, each buildout under a deadline: one slow or failing
//! partition never blocks the others. Master calls and supervisord
//! updates are the only shared points (supervisord updates are serialised).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use slap::client::SlapError;
use slap::model::{ComputerPartition, InstanceState};

use crate::decision::{decide, software_path, Decision};
use crate::fsafe::{self, Dir, Kind};
use crate::names::{self, NameError, PartitionId, ProgramName, SoftwareUrl};
use crate::node::{self, Node};
use crate::process::{run_as_owner, shebang};
use crate::promise::{self, PromiseFailure};
use crate::templates::{self, ProgramOwner, TailParams, TemplateError};

/// Whether a directory of the partition `pp` has entries (links not
/// followed).
fn has_entries(pp: &Path, dirs: &[&str]) -> bool {
    let Ok(pd) = Dir::open_nofollow(pp) else { return false };
    dirs.iter().any(|d| pd.entries(Path::new(d)).is_ok_and(|e| !e.is_empty()))
}

fn has_promises(pp: &Path) -> bool {
    has_entries(pp, &["etc/promise", "etc/plugin"])
}

/// The owner to give what root creates in a partition (None unless root).
fn give_to(owner: &Owner) -> Option<(u32, u32)> {
    nix::unistd::geteuid().is_root().then_some((owner.uid, owner.gid))
}

/// How long promises of services that were just started may fail before
/// it counts (a server needs a moment to bind its port).
const START_GRACE: Duration = Duration::from_secs(5);

/// What `node instance` was asked.
#[derive(Debug, Clone, Default)]
pub struct InstanceOptions {
    /// `--only-cp`: partition ids; empty means all.
    pub only: Vec<String>,
    /// `--force`: process partitions even when up to date.
    pub force: bool,
    /// `--force-stop`: stop services even of started partitions.
    pub force_stop: bool,
    /// Partitions processed at once (at least 1).
    pub workers: usize,
    /// Deadline of one instance buildout when `partition_timeout` is unset.
    pub default_deadline: Duration,
    /// `--buildout-debug`: buildout `-D`, attached to the terminal, one
    /// partition at a time.
    pub buildout_debug: bool,
}

/// How one partition went.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Not processed (not in `--only-cp`, or free).
    Skipped,
    /// Up to date: nothing done but the promise check and the report.
    UpToDate,
    /// Processed and brought to its requested state.
    Done,
    /// Processing failed (the message is reported to the master).
    Failed(String),
    /// Processed, but a promise fails (its message).
    PromiseFailed(String),
    /// The master could not be reached: switch to offline processing.
    MasterDown(String),
}

/// The partition's owner, from the directory (ownership decides, not
/// names).
#[derive(Debug, Clone)]
pub struct Owner {
    /// The owner's uid.
    pub uid: u32,
    /// The owner's gid.
    pub gid: u32,
    /// The owner's user name (the uid as text when it has none).
    pub name: String,
    /// The owner's home (the partition directory when it has none).
    pub home: String,
}

impl Owner {
    /// The owner of the directory `path`.
    pub fn of(path: &Path) -> std::io::Result<Owner> {
        let m = Dir::open_nofollow(path)?.own_metadata()?;
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(m.uid)).ok().flatten();
        Ok(Owner {
            uid: m.uid,
            gid: m.gid,
            name: user.as_ref().map(|u| u.name.clone()).unwrap_or_else(|| m.uid.to_string()),
            home: user.map(|u| u.dir.display().to_string()).unwrap_or_else(|| path.display().to_string()),
        })
    }
}

/// Gives the tree `rel` of the partition `pp` to `uid:gid` (as root; only
/// what differs is changed; links and hard-linked files are never
/// followed, see [`Dir::chown_tree`]).
pub(crate) fn chown_tree(pp: &Path, rel: &str, uid: u32, gid: u32) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    if let Err(e) = Dir::open_nofollow(pp).and_then(|pd| pd.chown_tree(Path::new(rel), uid, gid)) {
        tracing::warn!("{e}");
    }
}

/// The per-partition log: every line also goes to
/// `<pp>/.slapgrid/log/instance.log`.
pub struct PartitionLog {
    id: String,
    file: Mutex<Option<std::fs::File>>,
}

impl PartitionLog {
    fn open(pp: &Path, id: &str, owner: &Owner) -> PartitionLog {
        let to = give_to(owner);
        let file = (|| -> std::io::Result<std::fs::File> {
            let pd = Dir::open_nofollow(pp)?;
            pd.create_dir_all(Path::new(".slapgrid"), 0o755, to)?;
            let dir = pd.create_dir_all(Path::new(".slapgrid/log"), 0o700, to)?;
            dir.set_own_mode(0o700)?;
            let log = Path::new("instance.log");
            if dir.metadata(log).is_ok_and(|m| m.size > 20 * 1024 * 1024) {
                dir.rename(log, Path::new("instance.log.1"))?;
            }
            let f = dir.append(log, 0o640, to)?;
            chown_tree(pp, ".slapgrid", owner.uid, owner.gid);
            Ok(f)
        })()
        .inspect_err(|e| tracing::warn!("no partition log for {id}: {e}"))
        .ok();
        PartitionLog { id: id.to_string(), file: Mutex::new(file) }
    }

    fn write(&self, level: &str, msg: &str) {
        use std::io::Write;
        if let Some(f) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S,%3f");
            let _ = writeln!(f, "[{now}] {level:<8} slapos.grid {msg}");
        }
    }
    /// Logs an info line to the console and the partition's log.
    pub fn info(&self, msg: &str) {
        tracing::info!("{msg}");
        self.write("INFO", msg);
    }
    /// Logs a warning to the console and the partition's log.
    pub fn warn(&self, msg: &str) {
        tracing::warn!("{msg}");
        self.write("WARNING", msg);
    }
    /// Logs an error to the console and the partition's log.
    pub fn error(&self, msg: &str) {
        tracing::error!("{msg}");
        self.write("ERROR", msg);
    }
    /// A line of buildout output, prefixed with the partition when several
    /// partitions run at once.
    pub fn output(&self, line: &str) {
        tracing::info!("[{}] {line}", self.id);
        self.write("INFO", line);
    }
}

/// An error of one partition: a promise, the master, or anything else.
#[derive(Debug)]
enum PartitionError {
    Promise(String),
    Master(SlapError),
    Other(String),
}

impl From<SlapError> for PartitionError {
    fn from(e: SlapError) -> Self {
        PartitionError::Master(e)
    }
}
impl From<std::io::Error> for PartitionError {
    fn from(e: std::io::Error) -> Self {
        PartitionError::Other(e.to_string())
    }
}
impl From<crate::supervisor::SupervisorError> for PartitionError {
    fn from(e: crate::supervisor::SupervisorError) -> Self {
        PartitionError::Other(e.to_string())
    }
}
impl From<NameError> for PartitionError {
    fn from(e: NameError) -> Self {
        PartitionError::Other(e.to_string())
    }
}
impl From<TemplateError> for PartitionError {
    fn from(e: TemplateError) -> Self {
        PartitionError::Other(e.to_string())
    }
}
impl From<PromiseFailure> for PartitionError {
    fn from(e: PromiseFailure) -> Self {
        match e {
            PromiseFailure::Failed(m) => PartitionError::Promise(m),
            PromiseFailure::Error(m) => PartitionError::Other(m),
        }
    }
}

/// The periodicity of a software release: `<sp>/periodicity`, else the
/// node's maximum.
fn periodicity(sp: Option<&Path>, maximum: i64) -> i64 {
    let Some(sd) = sp.and_then(|sp| Dir::open_nofollow(sp).ok()) else { return maximum };
    let file = Path::new("periodicity");
    match sd.read_to_string(file, fsafe::SMALL) {
        Ok(t) => match t.trim().parse::<i64>() {
            Ok(v) => v,
            Err(_) => {
                let _ = sd.remove_file(file);
                maximum
            }
        },
        Err(_) => maximum,
    }
}

/// Context shared by the workers.
struct Run<'a> {
    node: &'a Node,
    opts: &'a InstanceOptions,
    /// supervisord was (re)launched by this run: the services of started
    /// partitions are started again, even of up-to-date ones.
    supervisord_launched: bool,
}

impl Run<'_> {
    fn pp(&self, id: &str) -> PathBuf {
        self.node.cfg.instance_root.join(id)
    }

    /// One partition, start to end: never panics, always an outcome.
    fn partition(&self, p: &ComputerPartition) -> Outcome {
        let cfg = &self.node.cfg;
        let id = p.partition_id.as_str();
        let pp = self.pp(id);
        let sp = p.software_release_url().map(|u| software_path(&cfg.software_root, u));
        let period = periodicity(sp.as_deref(), cfg.maximum_periodicity);
        let pd = match Dir::open_nofollow(&pp) {
            Ok(d) => d,
            Err(e) => return Outcome::Failed(format!("cannot open the partition: {e}")),
        };
        let stamp_file = Path::new(".timestamp");
        let stored = pd.read_to_string(stamp_file, fsafe::SMALL).ok();
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let age = pd.metadata(stamp_file).ok().filter(|m| m.mtime <= now).map(|m| Duration::from_secs_f64(now - m.mtime));
        let _ = pd.remove_file(Path::new(&format!(".slapos-request-transaction-{id}")));
        let decision = decide(p, stored.as_deref(), age, period, self.opts.force);
        let owner = match Owner::of(&pp) {
            Ok(o) => o,
            Err(e) => return Outcome::Failed(format!("cannot read {}: {e}", pp.display())),
        };
        match decision {
            Decision::Free => Outcome::Skipped,
            Decision::UnknownState(s) => {
                let msg = format!("Computer Partition {id}: unsupported requested state '{s}'");
                tracing::error!("{msg}");
                match self.node.client.partition_error(&cfg.computer_id, id, &msg, None) {
                    Err(e) if e.is_unreachable() => Outcome::MasterDown(e.to_string()),
                    _ => Outcome::Failed(msg),
                }
            }
            Decision::UpToDate { state } => {
                if state != InstanceState::Started || self.opts.force_stop {
                    return Outcome::UpToDate;
                }
                let log = PartitionLog::open(&pp, id, &owner);
                // services lost with a supervisord that died: start them again
                let has_programs = has_entries(&pp, &["etc/run", "etc/service"]);
                if has_programs && self.supervisord_launched {
                    log.warn(&format!("supervisord was not running: starting the services of {id} again"));
                    if let Err(e) = self.start(id, &pp, &owner, &log) {
                        return Outcome::Failed(e_to_string(e));
                    }
                }
                // the anomaly check of an up-to-date started partition
                let checked = if has_programs && self.supervisord_launched {
                    self.promises_after_start(p, &pp, &owner, &log)
                } else {
                    promise::run_all(self.node, p, &pp, &owner, false, true, &log)
                };
                match checked {
                    Ok(()) => {
                        let status = p.access_status();
                        if status.is_none() || status.is_some_and(|s| s.starts_with("#error")) {
                            if let Err(e) = self.node.client.partition_started(&cfg.computer_id, id) {
                                return if e.is_unreachable() {
                                    Outcome::MasterDown(e.to_string())
                                } else {
                                    Outcome::Failed(e.to_string())
                                };
                            }
                        }
                        Outcome::UpToDate
                    }
                    Err(f) => {
                        let msg = match f {
                            PromiseFailure::Failed(m) | PromiseFailure::Error(m) => m,
                        };
                        let _ = self.node.client.partition_error(&cfg.computer_id, id, &msg, None);
                        Outcome::PromiseFailed(msg)
                    }
                }
            }
            Decision::Process { state, reason } => {
                let log = PartitionLog::open(&pp, id, &owner);
                log.info(&format!("Processing Computer Partition {id}."));
                log.info(&format!("  Software URL: {}", p.software_release_url().unwrap_or("None")));
                log.info(&format!("  Software path: {}", sp.as_deref().map(|s| s.display().to_string()).unwrap_or("None".into())));
                log.info(&format!("  Instance path: {} ({reason})", pp.display()));
                let error_log = format!(".slapgrid-{id}-error.log");
                let _ = pd.remove_file(Path::new(&error_log));
                let result = self.process(p, state, &pp, sp.as_deref(), &owner, &log);
                match result {
                    Ok(()) => {
                        if !(state == InstanceState::Started && self.opts.force_stop) {
                            if let Some(ts) = p.timestamp() {
                                if let Err(e) = pd.write(stamp_file, ts.as_bytes(), 0o644, None) {
                                    log.warn(&e.to_string());
                                }
                            }
                        }
                        Outcome::Done
                    }
                    Err(PartitionError::Master(e)) if e.is_unreachable() => Outcome::MasterDown(e.to_string()),
                    Err(err) => {
                        let (msg, promise_failed) = match err {
                            PartitionError::Promise(m) => (m, true),
                            PartitionError::Master(e) => (e.to_string(), false),
                            PartitionError::Other(m) => (m, false),
                        };
                        log.error(msg.lines().next().unwrap_or_default());
                        if !promise_failed {
                            let _ = pd.write(Path::new(&error_log), msg.as_bytes(), 0o644, None);
                            if state == InstanceState::Started {
                                // keep the promise results up to date, failures ignored
                                let _ = promise::run_all(self.node, p, &pp, &owner, true, false, &log);
                            }
                        }
                        if let Err(e) = self.node.client.partition_error(&cfg.computer_id, id, &msg, None) {
                            if e.is_unreachable() {
                                return Outcome::MasterDown(e.to_string());
                            }
                        }
                        if promise_failed {
                            Outcome::PromiseFailed(msg)
                        } else {
                            Outcome::Failed(msg)
                        }
                    }
                }
            }
        }
    }

    fn process(
        &self,
        p: &ComputerPartition,
        state: InstanceState,
        pp: &Path,
        sp: Option<&Path>,
        owner: &Owner,
        log: &PartitionLog,
    ) -> Result<(), PartitionError> {
        let cfg = &self.node.cfg;
        let id = p.partition_id.as_str();
        self.refresh_certificate(id, owner)?;
        match state {
            InstanceState::Started => {
                self.install(p, pp, sp, owner, log)?;
                if self.opts.force_stop {
                    self.node.supervisor.stop_partition(id)?;
                    return Ok(());
                }
                self.start(id, pp, owner, log)?;
                self.promises_after_start(p, pp, owner, log)?;
                self.node.client.partition_started(&cfg.computer_id, id)?;
                self.end_transaction(id, pp, log)?;
            }
            InstanceState::Stopped => {
                let installed = self.install(p, pp, sp, owner, log);
                self.node.supervisor.stop_partition(id)?;
                if let Err(e) = self.node.client.partition_stopped(&cfg.computer_id, id) {
                    if e.is_unreachable() {
                        return Err(e.into());
                    }
                }
                installed?;
                self.end_transaction(id, pp, log)?;
            }
            InstanceState::Destroyed => {
                self.node.supervisor.stop_partition(id)?;
                if let Err(e) = self.node.client.partition_stopped(&cfg.computer_id, id) {
                    if e.is_unreachable() {
                        return Err(e.into());
                    }
                }
            }
        }
        Ok(())
    }

    /// A forced promise run for services that were just started: they get a
    /// short grace period to come up before a failure counts.
    fn promises_after_start(&self, p: &ComputerPartition, pp: &Path, owner: &Owner, log: &PartitionLog) -> Result<(), PromiseFailure> {
        let grace = std::time::Instant::now() + START_GRACE;
        // a server needs a moment to bind: waiting costs nothing here (other
        // partitions use the CPU meanwhile), checking too early costs a
        // promise run
        if has_promises(pp) {
            std::thread::sleep(Duration::from_millis(250));
        }
        loop {
            match promise::run_all(self.node, p, pp, owner, true, false, log) {
                Err(PromiseFailure::Failed(m)) if std::time::Instant::now() < grace => {
                    log.info(&format!("{m} (services just started: checking again)"));
                    std::thread::sleep(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    fn refresh_certificate(&self, id: &str, owner: &Owner) -> Result<(), PartitionError> {
        let Some(repo) = &self.node.cfg.certificate_repository_path else { return Ok(()) };
        let (cert, key) = self.node.client.certificate(&self.node.cfg.computer_id, id)?;
        let dir = Dir::open(repo)?;
        // created with their final mode and owner (0400, as slapgrid), then renamed
        for (name, text) in [(format!("{id}.crt"), cert), (format!("{id}.key"), key)] {
            dir.write_if_changed(Path::new(&name), text.as_bytes(), 0o400, give_to(owner))?;
        }
        Ok(())
    }

    /// The instance buildout (`node.md` §5.3).
    fn install(
        &self,
        p: &ComputerPartition,
        pp: &Path,
        sp: Option<&Path>,
        owner: &Owner,
        log: &PartitionLog,
    ) -> Result<(), PartitionError> {
        let cfg = &self.node.cfg;
        let id = p.partition_id.as_str();
        crate::node::check_free_space(pp, cfg.instance_min_free_space, "instance_min_free_space").map_err(PartitionError::Other)?;
        let pd = Dir::open_nofollow(pp)?;
        let mode = pd.own_metadata()?.mode;
        if mode != 0o750 {
            return Err(PartitionError::Other(format!(
                "Wrong permissions in {} : actual permissions are: {mode:04o}, wanted are 0750",
                pp.display()
            )));
        }
        let url = p.software_release_url().unwrap_or_default();
        let sp = sp.ok_or_else(|| PartitionError::Other(format!("Computer Partition {id} has no software release")))?;
        let Ok(sd) = Dir::open_nofollow(sp) else {
            return Err(PartitionError::Other(format!("Software Release {url} is not present on system.\nCannot deploy instance.")));
        };
        // software_release -> <sp>, replaced (never followed) when it points elsewhere
        let link = Path::new("software_release");
        match pd.metadata(link) {
            Ok(m) if m.kind == Kind::Symlink => {
                if pd.read_link(link).ok().as_deref() != Some(sp) {
                    pd.remove_file(link)?;
                    pd.symlink(sp, link, give_to(owner))?;
                }
            }
            Ok(_) => tracing::debug!("{} is not a symlink: left alone", pp.join(link).display()),
            Err(_) => pd.symlink(sp, link, give_to(owner))?,
        }
        let profile_name = ["instance.cfg", "template.cfg"].into_iter().find(|f| sd.exists(Path::new(f))).ok_or_else(|| {
            PartitionError::Other(format!(
                "Software Release {url} is not correctly installed. Missing file: {}",
                sp.join("instance.cfg").display()
            ))
        })?;
        let profile = sd.read_to_string(Path::new(profile_name), fsafe::LARGE)?;
        let (key_file, cert_file) = match &cfg.certificate_repository_path {
            Some(r) => (r.join(format!("{id}.key")).display().to_string(), r.join(format!("{id}.crt")).display().to_string()),
            None => (String::new(), String::new()),
        };
        let tail = TailParams {
            computer_id: cfg.computer_id.clone(),
            partition_id: PartitionId::parse(id)?,
            server_url: cfg.master_url.clone(),
            software_release_url: SoftwareUrl::parse(url)?,
            key_file,
            cert_file,
            shared_part_list: cfg.shared_part_list.clone(),
            build_time_part_list: cfg.build_time_part_list.clone(),
            requested_state: p.requested_state.unwrap_or(InstanceState::Started),
            storage_home: cfg.instance_storage_home.clone(),
            global_ipv4_network: cfg.ipv4_global_network.clone(),
        };
        // root:<partition group> 0640, created so, then renamed over the old one
        let cfg_owner = nix::unistd::geteuid().is_root().then_some((0, owner.gid));
        pd.write_if_changed(Path::new("buildout.cfg"), templates::instance_buildout(&profile, &tail)?.as_bytes(), 0o640, cfg_owner)?;
        // which buildout: a single bin/bootstrap* of the software, else its bin/buildout
        let bin = sp.join("bin");
        let bootstraps: Vec<PathBuf> = sd
            .entries(Path::new("bin"))
            .map(|es| es.into_iter().filter(|(n, _)| n.to_string_lossy().starts_with("bootstrap")).map(|(n, _)| bin.join(n)).collect())
            .unwrap_or_default();
        let deadline = cfg.partition_timeout.unwrap_or(self.opts.default_deadline);
        let env = [("SLAPGRID_INSTANCE_ROOT", cfg.instance_root.to_str().unwrap_or_default())];
        let on_line = |l: &str| log.output(l);
        let fail = |out: String| PartitionError::Other(format!("Failed to run buildout profile in directory '{}':\n{out}\n", pp.display()));
        let buildout = if bootstraps.len() > 1 {
            return Err(PartitionError::Other(format!("More than one bootstrap candidate found in {}", bin.display())));
        } else if let Some(b) = bootstraps.first() {
            let mut cmd = shebang(b).unwrap_or_default();
            cmd.push(b.display().to_string());
            let out = run_as_owner(&cmd[0], &cmd[1..], pp, &env, Some(deadline), on_line)?;
            if !out.success {
                return Err(fail(out.output));
            }
            pp.join("sbin/buildout")
        } else {
            bin.join("buildout")
        };
        let mut cmd = shebang(&buildout)
            .ok_or_else(|| PartitionError::Other(format!("{} is missing or has no interpreter line", buildout.display())))?;
        cmd.push(buildout.display().to_string());
        if self.opts.buildout_debug {
            cmd.push("-D".into());
        }
        cmd.push("-U".into());
        log.info(&format!("Launching buildout in {} as {}", pp.display(), owner.name));
        let out = if self.opts.buildout_debug {
            crate::process::run_interactive_as_owner(&cmd[0], &cmd[1..], pp, &env)?
        } else {
            run_as_owner(&cmd[0], &cmd[1..], pp, &env, Some(deadline), on_line)?
        };
        if !out.success {
            return Err(fail(out.output));
        }
        let retention = Path::new(".slapos-retention-lock-delay");
        if !pd.exists(retention) {
            let delay = p.filter().get("retention_delay").and_then(|v| v.as_str().map(str::to_string)).unwrap_or("0".into());
            let delay: f64 = delay.trim().parse().unwrap_or(0.0);
            pd.write(retention, format!("{delay:?}").as_bytes(), 0o644, give_to(owner))?;
        }
        Ok(())
    }

    /// Programs from `etc/run` and `etc/service` into supervisord, then start
    /// the group (`node.md` §5.4).
    fn start(&self, id: &str, pp: &Path, owner: &Owner, log: &PartitionLog) -> Result<(), PartitionError> {
        // every file name is checked: one bad name refuses the partition
        let pd = Dir::open_nofollow(pp)?;
        let names = |dir: &str| -> Result<Vec<ProgramName>, NameError> {
            let listing: Vec<_> = pd.entries(Path::new(dir)).map(|es| es.into_iter().map(|(n, _)| n).collect()).unwrap_or_default();
            names::parse_all::<ProgramName>(dir, listing)
        };
        let programs = templates::partition_programs(pp, &names("etc/run")?, &names("etc/service")?);
        if programs.is_empty() {
            log.warn(&format!("No runners nor services found for partition {id}"));
            self.node.supervisor.install_group(id, None)?;
            return Ok(());
        }
        let po = ProgramOwner { uid: owner.uid, gid: owner.gid, user: owner.name.clone(), home: owner.home.clone() };
        let conf = templates::partition_group_conf(&PartitionId::parse(id)?, pp, &programs, &po)?;
        self.node.supervisor.install_group(id, Some(&conf))?;
        self.node.supervisor.start_group(id)?;
        log.info(&format!("Requested start of {id}..."));
        Ok(())
    }

    /// Reports the instances this partition requested (`node.md` §5.6).
    fn end_transaction(&self, id: &str, pp: &Path, log: &PartitionLog) -> Result<(), PartitionError> {
        let file = format!(".slapos-request-transaction-{id}");
        let Ok(text) = Dir::open_nofollow(pp).and_then(|pd| pd.read_to_string(Path::new(&file), fsafe::SMALL)) else { return Ok(()) };
        let list: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
        match self.node.client.update_related_instance_list(&self.node.cfg.computer_id, id, &list) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => {
                log.info("The master does not track the instances a partition requests (updateComputerPartitionRelatedInstanceList: 404)");
                Ok(())
            }
            Err(e) if e.is_unreachable() => Err(e.into()),
            Err(e) => {
                log.warn(&format!("could not report the related instance list: {e}"));
                Ok(())
            }
        }
    }
}

fn e_to_string(e: PartitionError) -> String {
    match e {
        PartitionError::Promise(m) | PartitionError::Other(m) => m,
        PartitionError::Master(e) => e.to_string(),
    }
}

/// The partitions `node instance`, `report` and `promise` work on: unknown
/// `--only-cp` ids are an error; partitions with an invalid id or software
/// URL are refused (reported when `report_missing` and their id is valid);
/// missing directories are reported; free partitions are cleaned and
/// skipped.
pub fn select_partitions<'a>(
    node: &Node,
    partitions: &'a [ComputerPartition],
    only: &[String],
    report_missing: bool,
) -> Result<Vec<&'a ComputerPartition>, String> {
    for o in only {
        if !partitions.iter().any(|p| &p.partition_id == o) {
            return Err(format!("Computer Partition '{o}' does not exist on computer {} (--only-cp)", node.cfg.computer_id));
        }
    }
    let mut out = Vec::new();
    for p in partitions {
        if !only.is_empty() && !only.contains(&p.partition_id) {
            continue;
        }
        // the gate: nothing is done with a partition whose names are invalid
        let pp = match names::check_partition(p) {
            Ok(id) => id.dir(&node.cfg.instance_root),
            Err(r) => {
                let msg = format!("Computer Partition refused: {r}");
                tracing::error!("{msg}");
                if let (Some(id), true) = (&r.id, report_missing) {
                    let _ = node.client.partition_error(&node.cfg.computer_id, id.as_str(), &msg, None);
                }
                continue;
            }
        };
        if !pp.is_dir() {
            let msg = format!("Partition directory {} does not exist.", pp.display());
            tracing::error!("{msg}");
            if report_missing {
                let _ = node.client.partition_error(&node.cfg.computer_id, &p.partition_id, &msg, None);
            }
            continue;
        }
        if p.is_free() {
            let Ok(pd) = Dir::open_nofollow(&pp) else { continue };
            let _ = pd.remove_tree(Path::new(".slapgrid"));
            let _ = pd.remove_file(Path::new(".timestamp"));
            let left: Vec<String> = pd
                .entries(Path::new("."))
                .map(|es| es.into_iter().map(|(n, _)| n.to_string_lossy().into_owned()).filter(|n| n != ".slapos-resource").collect())
                .unwrap_or_default();
            if !left.is_empty() {
                tracing::warn!("Free partition {} contains files: {}", p.partition_id, left.join(", "));
            }
            continue;
        }
        out.push(p);
    }
    Ok(out)
}

/// Runs `f` on every item with at most `workers` at once, results in order.
pub fn parallel<T: Sync, R: Send>(items: &[T], workers: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= items.len() {
                    break;
                }
                let r = f(&items[i]);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().map(|r| r.expect("every item processed")).collect()
}

/// The exit code and the summary lines of a run.
pub fn summarize(results: &[(String, String, Outcome)]) -> (u8, Vec<String>) {
    let mut lines = Vec::new();
    let errors: Vec<_> = results.iter().filter(|r| matches!(r.2, Outcome::Failed(_))).collect();
    let promises: Vec<_> = results.iter().filter(|r| matches!(r.2, Outcome::PromiseFailed(_))).collect();
    let first = |m: &str| m.lines().find(|l| !l.trim().is_empty()).unwrap_or_default().to_string();
    if !errors.is_empty() {
        lines.push("Error while processing the following partitions:".to_string());
        for (id, ty, o) in &errors {
            if let Outcome::Failed(m) = o {
                lines.push(format!("  {id}[{ty}]: {}", first(m)));
            }
        }
    }
    if !promises.is_empty() {
        lines.push("Error with promises for the following partitions:".to_string());
        for (id, ty, o) in &promises {
            if let Outcome::PromiseFailed(m) = o {
                lines.push(format!("  {id}[{ty}]: {}", first(m)));
            }
        }
    }
    let code = if !errors.is_empty() {
        node::FAIL
    } else if !promises.is_empty() {
        node::PROMISE_FAIL
    } else {
        node::SUCCESS
    };
    (code, lines)
}

/// Offline processing (`node.md` §5.1): the master is unreachable; keep what runs
/// running.
pub fn offline(node: &Node) -> u8 {
    tracing::warn!("The master is unreachable: offline processing (services are kept running, nothing is built or destroyed)");
    // legacy: a partition whose .requested_state says stopped stays stopped
    if let Ok(rd) = std::fs::read_dir(&node.cfg.instance_root) {
        for e in rd.flatten() {
            let marker = Path::new(".requested_state");
            let Ok(pd) = Dir::open_nofollow(&e.path()) else { continue };
            if pd.read_to_string(marker, fsafe::SMALL).is_ok_and(|t| t.trim() == "stopped") {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = std::fs::remove_file(node.supervisor.conf_dir.join(format!("{id}.conf")));
                let _ = pd.remove_file(marker);
            }
        }
    }
    if let Err(e) = node.supervisor.update() {
        tracing::warn!("{e}");
    }
    match node.supervisor.call("supervisor.startAllProcesses", &[crate::supervisor::XValue::Bool(false)]) {
        Ok(_) => node::OFFLINE_SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            node::FAIL
        }
    }
}

/// `slapos node instance`: returns the exit code.
pub fn run(node: &Node, opts: &InstanceOptions) -> u8 {
    if let Some(repo) = &node.cfg.certificate_repository_path {
        // private to root, as slapgrid makes it
        use std::os::unix::fs::DirBuilderExt;
        if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(repo) {
            tracing::warn!("cannot create certificate_repository_path {}: {e}", repo.display());
        }
    }
    let supervisord_launched = match node.supervisor.ensure_running() {
        Ok(launched) => launched,
        Err(e) => {
            tracing::error!("{e}");
            return node::FAIL;
        }
    };
    let computer = match node.computer() {
        Ok(c) => c,
        Err(e) if e.is_unreachable() => {
            tracing::error!("{e}");
            return offline(node);
        }
        Err(e) => {
            tracing::error!("{e}");
            return node::FAIL;
        }
    };
    let selected = match select_partitions(node, &computer.partitions, &opts.only, true) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return node::FAIL;
        }
    };
    tracing::info!("Processing computer partitions ({} to check, {} at once)...", selected.len(), opts.workers.max(1));
    let run = Run { node, opts, supervisord_launched };
    let workers = if opts.buildout_debug { 1 } else { opts.workers };
    let outcomes = parallel(&selected, workers, |p| run.partition(p));
    if let Some(Outcome::MasterDown(m)) = outcomes.iter().find(|o| matches!(o, Outcome::MasterDown(_))) {
        tracing::error!("{m}");
        return offline(node);
    }
    let code = log_summary(&selected, outcomes);
    tracing::info!("Finished computer partitions.");
    code
}

/// Logs the summary of a run over `partitions` and gives its exit code.
fn log_summary(partitions: &[&ComputerPartition], outcomes: Vec<Outcome>) -> u8 {
    let results: Vec<(String, String, Outcome)> = partitions
        .iter()
        .zip(outcomes)
        .map(|(p, o)| {
            let shown = |t| names::SoftwareType::parse(t).map(|t| t.to_string()).unwrap_or("(invalid software type)".into());
            let ty = p.software_type().map(shown);
            (p.partition_id.clone(), ty.unwrap_or("(not ready)".into()), o)
        })
        .collect();
    let (code, lines) = summarize(&results);
    for l in &lines {
        tracing::error!("{l}");
    }
    code
}

/// `slapos node promise`: a forced test run of the promises of every
/// started partition; results are logged and saved, nothing is reported to
/// the master. Exit 2 when a promise fails.
pub fn check_promises(node: &Node, only: &[String], workers: usize) -> u8 {
    let computer = match node.computer() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return node::FAIL;
        }
    };
    let selected = match select_partitions(node, &computer.partitions, only, false) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return node::FAIL;
        }
    };
    let started: Vec<&ComputerPartition> =
        selected.into_iter().filter(|p| p.requested_state.unwrap_or(InstanceState::Started) == InstanceState::Started).collect();
    let outcomes = parallel(&started, workers, |p| {
        let pp = node.cfg.instance_root.join(&p.partition_id);
        let owner = match Owner::of(&pp) {
            Ok(o) => o,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let log = PartitionLog::open(&pp, &p.partition_id, &owner);
        match promise::run_all(node, p, &pp, &owner, true, false, &log) {
            Ok(()) => Outcome::Done,
            Err(PromiseFailure::Failed(m)) => Outcome::PromiseFailed(m),
            Err(PromiseFailure::Error(m)) => Outcome::Failed(m),
        }
    });
    log_summary(&started, outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_keeps_the_order_and_bounds_the_workers() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let items: Vec<u32> = (0..20).collect();
        let out = parallel(&items, 3, |i| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            running.fetch_sub(1, Ordering::SeqCst);
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert!(parallel(&[] as &[u32], 4, |i| *i).is_empty());
    }

    #[test]
    fn errors_win_over_promise_failures_in_the_exit_code() {
        let r = |id: &str, o: Outcome| (id.to_string(), "default".to_string(), o);
        assert_eq!(summarize(&[r("a", Outcome::Done), r("b", Outcome::UpToDate)]).0, node::SUCCESS);
        let (code, lines) = summarize(&[r("a", Outcome::PromiseFailed("Promise 'x' failed".into())), r("b", Outcome::Done)]);
        assert_eq!(code, node::PROMISE_FAIL);
        assert_eq!(lines, ["Error with promises for the following partitions:", "  a[default]: Promise 'x' failed"]);
        let (code, lines) = summarize(&[r("a", Outcome::PromiseFailed("p".into())), r("b", Outcome::Failed("\nboom\nmore".into()))]);
        assert_eq!(code, node::FAIL);
        assert_eq!(lines[..2], ["Error while processing the following partitions:".to_string(), "  b[default]: boom".to_string()]);
    }

    #[test]
    fn periodicity_from_the_software_or_the_node() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(periodicity(Some(d.path()), 86400), 86400);
        std::fs::write(d.path().join("periodicity"), "60\n").unwrap();
        assert_eq!(periodicity(Some(d.path()), 86400), 60);
        std::fs::write(d.path().join("periodicity"), "soon").unwrap();
        assert_eq!(periodicity(Some(d.path()), 86400), 86400);
        assert!(!d.path().join("periodicity").exists(), "an unreadable value is deleted");
        assert_eq!(periodicity(None, 5), 5);
    }
}
