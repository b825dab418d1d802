//! Running: one partition brought to the state the master asks — its
//! certificate, the instance buildout, the programs under supervisord, the
//! promises, the reports to the master, `.timestamp` last (`node.md` §5).
//! What to do was decided before ([`super::decide`]); every effect in the
//! partition directory goes through [`fsafe`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use slap::client::SlapError;
use slap::model::{ComputerPartition, InstanceState};

use super::decide::{Periodicity, Plan};
use super::log::PartitionScope;
use super::{InstanceOptions, Outcome};
use crate::decision::Decision;
use crate::fsafe::{self, Dir, Kind};
use crate::names::{self, NameError, PartitionId, ProgramName, SoftwareUrl};
use crate::node::{Node, SpaceError};
use crate::partition::{output, Owner};
use crate::process::{run_as_owner, shebang};
use crate::promise::{self, PromiseFailure};
use crate::supervisor::SupervisorError;
use crate::templates::{self, ProgramOwner, TailParams, TemplateError};

/// How long promises of services that were just started may fail before
/// it counts (a server needs a moment to bind its port).
const START_GRACE: Duration = Duration::from_secs(5);

/// Why processing one partition failed.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// Its promises failed, or could not be run.
    #[error(transparent)]
    Promises(#[from] PromiseFailure),
    /// The master refused a call or could not be reached.
    #[error(transparent)]
    Master(#[from] SlapError),
    /// A file of the partition or of its software.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// supervisord refused the partition's programs.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// A name in the partition (a program file, the id) is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A generated file cannot hold a value.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The filesystem has less than `instance_min_free_space`.
    #[error(transparent)]
    Space(#[from] SpaceError),
    /// The partition directory is not mode 0750.
    #[error("Wrong permissions in {} : actual permissions are: {mode:04o}, wanted are 0750", .path.display())]
    Permissions {
        /// The partition directory.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The master gives the partition no software release.
    #[error("Computer Partition {0} has no software release")]
    NoSoftware(String),
    /// The software release is not installed on this node.
    #[error("Software Release {0} is not present on system.\nCannot deploy instance.")]
    SoftwareMissing(String),
    /// The software release has neither `instance.cfg` nor `template.cfg`.
    #[error("Software Release {url} is not correctly installed. Missing file: {}", .missing.display())]
    NoProfile {
        /// The release's URL.
        url: String,
        /// The file looked for.
        missing: PathBuf,
    },
    /// The software has several `bin/bootstrap*`.
    #[error("More than one bootstrap candidate found in {}", .0.display())]
    Bootstraps(PathBuf),
    /// The software's buildout cannot be run.
    #[error("{} is missing or has no interpreter line", .0.display())]
    NoInterpreter(PathBuf),
    /// The instance buildout failed (its output).
    #[error("Failed to run buildout profile in directory '{}':\n{output}\n", .dir.display())]
    Buildout {
        /// The partition directory.
        dir: PathBuf,
        /// What buildout said.
        output: String,
    },
}

impl PartitionError {
    /// A promise failed (the partition itself was deployed).
    pub fn is_promise_failure(&self) -> bool {
        matches!(self, PartitionError::Promises(PromiseFailure::Failed(_)))
    }

    /// The master could not be reached (switch to offline processing).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, PartitionError::Master(e) if e.is_unreachable())
    }
}

/// Whether a directory of the partition has entries (links not followed).
fn has_entries(pd: &Dir, dirs: &[&str]) -> bool {
    dirs.iter().any(|d| pd.entries(Path::new(d)).is_ok_and(|e| !e.is_empty()))
}

/// The outcome of a failed master call: offline when it cannot be reached.
fn master_outcome(e: SlapError) -> Outcome {
    if e.is_unreachable() {
        Outcome::MasterDown(e.to_string())
    } else {
        Outcome::Failed(e.to_string())
    }
}

/// One partition being processed.
struct Target<'p> {
    p: &'p ComputerPartition,
    id: &'p str,
    pp: PathBuf,
    sp: Option<PathBuf>,
    pd: Dir,
    owner: Owner,
}

/// Context shared by the workers.
pub(super) struct Run<'a> {
    pub node: &'a Node,
    pub opts: &'a InstanceOptions,
    /// supervisord was (re)launched by this run: the services of started
    /// partitions are started again, even of up-to-date ones.
    pub supervisord_launched: bool,
}

impl Run<'_> {
    /// Applies the plan of one partition, start to end: never panics,
    /// always an outcome.
    pub fn partition(&self, plan: &Plan) -> Outcome {
        let cfg = &self.node.cfg;
        let (p, pp, sp) = (plan.p, plan.pp.clone(), plan.sp.clone());
        let id = p.partition_id.as_str();
        let (seen, decision) = match &plan.decided {
            Ok((seen, decision)) => (seen, decision.clone()),
            Err(e) => return Outcome::Failed(format!("cannot open the partition: {e}")),
        };
        let pd = match Dir::open_nofollow(&pp) {
            Ok(d) => d,
            Err(e) => return Outcome::Failed(format!("cannot open the partition: {e}")),
        };
        if let (Periodicity::Invalid, Some(sd)) = (seen.periodicity, sp.as_deref().and_then(|s| Dir::open_nofollow(s).ok())) {
            let _ = sd.remove_file(Path::new("periodicity"));
        }
        let _ = pd.remove_file(Path::new(&format!(".slapos-request-transaction-{id}")));
        let owner = match Owner::of(&pp) {
            Ok(o) => o,
            Err(e) => return Outcome::Failed(format!("cannot read {}: {e}", pp.display())),
        };
        let t = Target { p, id, pp, sp, pd, owner };
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
            Decision::UpToDate { state } if state != InstanceState::Started || self.opts.force_stop => Outcome::UpToDate,
            Decision::UpToDate { .. } => {
                let _scope = PartitionScope::enter(&t.pp, id, &t.owner);
                let outcome = self.up_to_date(&t);
                self.tear_down(&t);
                outcome
            }
            Decision::Process { state, reason } => {
                let _scope = PartitionScope::enter(&t.pp, id, &t.owner);
                let outcome = self.reprocess(&t, state, reason);
                if state == InstanceState::Started && !self.opts.force_stop {
                    self.tear_down(&t);
                }
                outcome
            }
        }
    }

    /// The managers' step after a started partition, processed or up to
    /// date, failed or not (slapgrid's `instanceTearDown`): `portredir`'s
    /// socat group from the partition's `.slapos-port-redirect`. A failure
    /// is logged; the partition's outcome stays what it was. (Stopped and
    /// destroyed partitions lose the group with their others, and so does
    /// every partition when `portredir` leaves `manager_list`.)
    fn tear_down(&self, t: &Target) {
        use crate::manager::portredir;
        let Ok(id) = PartitionId::parse(t.id) else { return };
        if !self.node.cfg.managers.portredir {
            // the manager was taken out of manager_list: its group goes
            let group = format!("{id}-{}", portredir::GROUP_SUFFIX);
            if self.node.supervisor.has_group(&group) {
                if let Err(e) = self.node.supervisor.install_group(&group, None) {
                    tracing::warn!("{group}: {e}");
                }
            }
            return;
        }
        let plan = portredir::plan(&t.pd, portredir::partition_ipv6(t.p));
        let o = &t.owner;
        let po = ProgramOwner { uid: o.uid, gid: o.gid, user: o.name.clone(), home: o.home.clone() };
        if let Err(e) = portredir::apply(&self.node.supervisor, &id, &t.pp, &plan, &po) {
            tracing::error!("{}: port redirections not in place: {e}", t.id);
        }
    }

    /// An up-to-date started partition: its services again when
    /// supervisord was relaunched, then the promises' anomaly check.
    fn up_to_date(&self, t: &Target) -> Outcome {
        let cfg = &self.node.cfg;
        // services lost with a supervisord that died: start them again
        let restart = self.supervisord_launched && has_entries(&t.pd, &["etc/run", "etc/service"]);
        if restart {
            tracing::warn!("supervisord was not running: starting the services of {} again", t.id);
            if let Err(e) = self.start(t) {
                return Outcome::Failed(e.to_string());
            }
        }
        let checked = if restart { self.promises_after_start(t) } else { promise::run_all(self.node, t.p, &t.pp, &t.owner, false, true) };
        match checked {
            Ok(()) => {
                let status = t.p.access_status();
                if status.is_none_or(|s| s.starts_with("#error")) {
                    if let Err(e) = self.node.client.partition_started(&cfg.computer_id, t.id) {
                        return master_outcome(e);
                    }
                }
                Outcome::UpToDate
            }
            Err(f) => {
                let msg = f.to_string();
                let _ = self.node.client.partition_error(&cfg.computer_id, t.id, &msg, None);
                Outcome::PromiseFailed(msg)
            }
        }
    }

    /// A partition to process: [`Run::process`], then `.timestamp` on
    /// success, or the error reported (and kept in
    /// `.slapgrid-<id>-error.log`).
    fn reprocess(&self, t: &Target, state: InstanceState, reason: &str) -> Outcome {
        let id = t.id;
        tracing::info!("Processing Computer Partition {id}.");
        tracing::info!("  Software URL: {}", t.p.software_release_url().unwrap_or("None"));
        tracing::info!("  Software path: {}", t.sp.as_deref().map(|s| s.display().to_string()).unwrap_or("None".into()));
        tracing::info!("  Instance path: {} ({reason})", t.pp.display());
        let error_log = format!(".slapgrid-{id}-error.log");
        let _ = t.pd.remove_file(Path::new(&error_log));
        let err = match self.process(t, state) {
            Ok(()) => {
                // last: a failure before is retried on the next run
                if let (false, Some(ts)) = (state == InstanceState::Started && self.opts.force_stop, t.p.timestamp()) {
                    if let Err(e) = t.pd.write(Path::new(".timestamp"), ts.as_bytes(), 0o644, None) {
                        tracing::warn!("{e}");
                    }
                }
                return Outcome::Done;
            }
            Err(e) if e.is_unreachable() => return Outcome::MasterDown(e.to_string()),
            Err(e) => e,
        };
        let msg = err.to_string();
        tracing::error!("{}", msg.lines().next().unwrap_or_default());
        let promise_failed = err.is_promise_failure();
        if !promise_failed {
            let _ = t.pd.write(Path::new(&error_log), msg.as_bytes(), 0o644, None);
            if state == InstanceState::Started {
                // keep the promise results up to date, failures ignored
                let _ = promise::run_all(self.node, t.p, &t.pp, &t.owner, true, false);
            }
        }
        if let Err(e) = self.node.client.partition_error(&self.node.cfg.computer_id, id, &msg, None) {
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

    /// Brings the partition to `state` (`node.md` §5.3–5.6).
    fn process(&self, t: &Target, state: InstanceState) -> Result<(), PartitionError> {
        let cfg = &self.node.cfg;
        let id = t.id;
        self.refresh_certificate(t)?;
        let stopped = |r: Result<(), SlapError>| match r {
            Err(e) if e.is_unreachable() => Err(e),
            _ => Ok(()),
        };
        match state {
            InstanceState::Started => {
                self.install(t)?;
                if self.opts.force_stop {
                    self.node.supervisor.stop_partition(id)?;
                    return Ok(());
                }
                self.start(t)?;
                self.promises_after_start(t)?;
                self.node.client.partition_started(&cfg.computer_id, id)?;
                self.end_transaction(t)?;
            }
            InstanceState::Stopped => {
                let installed = self.install(t);
                self.node.supervisor.stop_partition(id)?;
                stopped(self.node.client.partition_stopped(&cfg.computer_id, id))?;
                installed?;
                self.end_transaction(t)?;
            }
            InstanceState::Destroyed => {
                self.node.supervisor.stop_partition(id)?;
                stopped(self.node.client.partition_stopped(&cfg.computer_id, id))?;
            }
        }
        Ok(())
    }

    /// A forced promise run for services that were just started: they get a
    /// short grace period to come up before a failure counts.
    fn promises_after_start(&self, t: &Target) -> Result<(), PromiseFailure> {
        let grace = Instant::now() + START_GRACE;
        // a server needs a moment to bind: waiting costs nothing here (other
        // partitions use the CPU meanwhile), checking too early costs a
        // promise run
        if has_entries(&t.pd, &["etc/promise", "etc/plugin"]) {
            std::thread::sleep(Duration::from_millis(250));
        }
        loop {
            match promise::run_all(self.node, t.p, &t.pp, &t.owner, true, false) {
                Err(PromiseFailure::Failed(m)) if Instant::now() < grace => {
                    tracing::info!("{m} (services just started: checking again)");
                    std::thread::sleep(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    /// The partition's certificate and key from the master into
    /// `certificate_repository_path` (0400, the partition's), when missing
    /// or within their renewal window ([`crate::certificate`]).
    fn refresh_certificate(&self, t: &Target) -> Result<(), PartitionError> {
        let Some(repo) = &self.node.cfg.certificate_repository_path else { return Ok(()) };
        let dir = Dir::open(repo)?;
        let crt = format!("{}.crt", t.id);
        let current = dir.read_to_string(Path::new(&crt), fsafe::LARGE).ok();
        let key_there = dir.exists(Path::new(&format!("{}.key", t.id)));
        if key_there && !crate::certificate::needs_renewal(current.as_deref(), self.node.cfg.certificate_renewal) {
            return Ok(());
        }
        let (cert, key) = self.node.client.certificate(&self.node.cfg.computer_id, t.id)?;
        // created with their final mode and owner (0400, as slapgrid), then renamed
        for (name, text) in [(format!("{}.crt", t.id), cert), (format!("{}.key", t.id), key)] {
            dir.write_if_changed(Path::new(&name), text.as_bytes(), 0o400, t.owner.give_to())?;
        }
        Ok(())
    }

    /// The instance buildout (`node.md` §5.3): checks, `software_release`,
    /// `buildout.cfg`, then the software's buildout as the partition's user.
    fn install(&self, t: &Target) -> Result<(), PartitionError> {
        let cfg = &self.node.cfg;
        crate::node::check_free_space(&t.pp, cfg.instance_min_free_space, "instance_min_free_space")?;
        let mode = t.pd.own_metadata()?.mode;
        if mode != 0o750 {
            return Err(PartitionError::Permissions { path: t.pp.clone(), mode });
        }
        let url = t.p.software_release_url().unwrap_or_default();
        let sp = t.sp.as_deref().ok_or_else(|| PartitionError::NoSoftware(t.id.to_string()))?;
        let sd = Dir::open_nofollow(sp).map_err(|_| PartitionError::SoftwareMissing(url.to_string()))?;
        self.link_software(t, sp)?;
        self.write_buildout_cfg(t, &sd, sp, url)?;
        self.run_buildout(t, &sd, sp)?;
        let retention = Path::new(".slapos-retention-lock-delay");
        if !t.pd.exists(retention) {
            let delay = t.p.filter().get("retention_delay").and_then(|v| v.as_str().map(str::to_string)).unwrap_or("0".into());
            let delay: f64 = delay.trim().parse().unwrap_or(0.0);
            t.pd.write(retention, format!("{delay:?}").as_bytes(), 0o644, t.owner.give_to())?;
        }
        Ok(())
    }

    /// `software_release` → `sp`, replaced (never followed) when it points
    /// elsewhere; a file of that name that is not a link is left alone.
    fn link_software(&self, t: &Target, sp: &Path) -> Result<(), PartitionError> {
        let link = Path::new("software_release");
        match t.pd.metadata(link) {
            Ok(m) if m.kind == Kind::Symlink => {
                if t.pd.read_link(link).ok().as_deref() != Some(sp) {
                    t.pd.remove_file(link)?;
                    t.pd.symlink(sp, link, t.owner.give_to())?;
                }
            }
            Ok(_) => tracing::debug!("{} is not a symlink: left alone", t.pp.join(link).display()),
            Err(_) => t.pd.symlink(sp, link, t.owner.give_to())?,
        }
        Ok(())
    }

    /// The partition's `buildout.cfg`: the software's instance profile and
    /// slapgrid's tail, `root:<partition group>` 0640, written only when it
    /// changed.
    fn write_buildout_cfg(&self, t: &Target, sd: &Dir, sp: &Path, url: &str) -> Result<(), PartitionError> {
        let cfg = &self.node.cfg;
        let id = t.id;
        let profile_name = ["instance.cfg", "template.cfg"]
            .into_iter()
            .find(|f| sd.exists(Path::new(f)))
            .ok_or_else(|| PartitionError::NoProfile { url: url.to_string(), missing: sp.join("instance.cfg") })?;
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
            requested_state: t.p.requested_state.unwrap_or(InstanceState::Started),
            storage_home: cfg.instance_storage_home.clone(),
            global_ipv4_network: cfg.ipv4_global_network.clone(),
        };
        // root:<partition group> 0640, created so, then renamed over the old one
        let cfg_owner = nix::unistd::geteuid().is_root().then_some((0, t.owner.gid));
        t.pd.write_if_changed(Path::new("buildout.cfg"), templates::instance_buildout(&profile, &tail)?.as_bytes(), 0o640, cfg_owner)?;
        Ok(())
    }

    /// The software's single `bin/bootstrap*` when it has one (its buildout
    /// is then the partition's `sbin/buildout`), else its `bin/buildout`,
    /// run as the partition's user under the deadline.
    fn run_buildout(&self, t: &Target, sd: &Dir, sp: &Path) -> Result<(), PartitionError> {
        let cfg = &self.node.cfg;
        let pp = t.pp.as_path();
        let bin = sp.join("bin");
        let bootstraps: Vec<PathBuf> = sd
            .entries(Path::new("bin"))
            .map(|es| es.into_iter().filter(|(n, _)| n.to_string_lossy().starts_with("bootstrap")).map(|(n, _)| bin.join(n)).collect())
            .unwrap_or_default();
        let deadline = cfg.partition_timeout.unwrap_or(self.opts.default_deadline);
        let env = [("SLAPGRID_INSTANCE_ROOT", cfg.instance_root.to_str().unwrap_or_default())];
        let on_line = |l: &str| output(t.id, l);
        let fail = |output: String| PartitionError::Buildout { dir: pp.to_path_buf(), output };
        let buildout = match bootstraps.as_slice() {
            [] => bin.join("buildout"),
            [b] => {
                let mut cmd = shebang(b).unwrap_or_default();
                cmd.push(b.display().to_string());
                let out = run_as_owner(&cmd[0], &cmd[1..], pp, &env, Some(deadline), on_line)?;
                if !out.success {
                    return Err(fail(out.output));
                }
                pp.join("sbin/buildout")
            }
            _ => return Err(PartitionError::Bootstraps(bin)),
        };
        let mut cmd = shebang(&buildout).ok_or_else(|| PartitionError::NoInterpreter(buildout.clone()))?;
        cmd.push(buildout.display().to_string());
        if self.opts.buildout_debug {
            cmd.push("-D".into());
        }
        cmd.push("-U".into());
        tracing::info!("Launching buildout in {} as {}", pp.display(), t.owner.name);
        let out = if self.opts.buildout_debug {
            crate::process::run_interactive_as_owner(&cmd[0], &cmd[1..], pp, &env)?
        } else {
            run_as_owner(&cmd[0], &cmd[1..], pp, &env, Some(deadline), on_line)?
        };
        match out.success {
            true => Ok(()),
            false => Err(fail(out.output)),
        }
    }

    /// Programs from `etc/run` and `etc/service` into supervisord, then start
    /// the group (`node.md` §5.4).
    fn start(&self, t: &Target) -> Result<(), PartitionError> {
        let id = t.id;
        // every file name is checked: one bad name refuses the partition
        let names = |dir: &str| -> Result<Vec<ProgramName>, NameError> {
            let listing: Vec<_> = t.pd.entries(Path::new(dir)).map(|es| es.into_iter().map(|(n, _)| n).collect()).unwrap_or_default();
            names::parse_all::<ProgramName>(dir, listing)
        };
        let programs = templates::partition_programs(&t.pp, &names("etc/run")?, &names("etc/service")?);
        if programs.is_empty() {
            tracing::warn!("No runners nor services found for partition {id}");
            self.node.supervisor.install_group(id, None)?;
            return Ok(());
        }
        let o = &t.owner;
        let po = ProgramOwner { uid: o.uid, gid: o.gid, user: o.name.clone(), home: o.home.clone() };
        let conf = templates::partition_group_conf(&PartitionId::parse(id)?, &t.pp, &programs, &po)?;
        self.node.supervisor.install_group(id, Some(&conf))?;
        self.node.supervisor.start_group(id)?;
        tracing::info!("Requested start of {id}...");
        Ok(())
    }

    /// Reports the instances this partition requested (`node.md` §5.6).
    fn end_transaction(&self, t: &Target) -> Result<(), PartitionError> {
        let file = format!(".slapos-request-transaction-{}", t.id);
        let Ok(text) = t.pd.read_to_string(Path::new(&file), fsafe::SMALL) else { return Ok(()) };
        let list: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
        match self.node.client.update_related_instance_list(&self.node.cfg.computer_id, t.id, &list) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => {
                tracing::info!(
                    "The master does not track the instances a partition requests (updateComputerPartitionRelatedInstanceList: 404)"
                );
                Ok(())
            }
            Err(e) if e.is_unreachable() => Err(e.into()),
            Err(e) => {
                tracing::warn!("could not report the related instance list: {e}");
                Ok(())
            }
        }
    }
}
