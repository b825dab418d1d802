//! `slapos node instance` (`node.md` §5): bring every partition to the
//! state the master asks, with the software release's own buildout, the
//! node's supervisord and the partition's promises.
//!
//! Beyond slapgrid, partitions are processed **in parallel** by a bounded
//! pool of workers, each buildout under a deadline: one slow or failing
//! partition never blocks the others. Master calls and supervisord
//! updates are the only shared points (supervisord updates are serialised).
//!
//! Deciding (`decide`: what the partition holds, read, then the pure
//! decision), running (`run`: the effects) and logging ([`log`]: the
//! partition's span and its file) are apart; this module selects the
//! partitions, runs the pool and sums the outcomes up as a [`RunSummary`]
//! (the program maps it to slapgrid's exit codes).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use slap::model::{ComputerPartition, InstanceState};

use crate::fsafe::{self, Dir};
use crate::names;
use crate::node::{Node, NodeError};
use crate::partition::{select_partitions, Owner};
use crate::promise::{self, PromiseFailure};

pub(crate) mod decide;
pub mod log;
mod run;

pub use run::PartitionError;

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

/// One partition of a run and how it went.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionResult {
    /// The partition's id.
    pub id: String,
    /// Its software type as shown in the summary (`(not ready)` when the
    /// master gives none).
    pub software_type: String,
    /// How it went.
    pub outcome: Outcome,
}

/// How a whole run went, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// At least one partition failed (slapgrid's exit code 1).
    Failed,
    /// Every partition was processed, but a promise fails (exit code 2).
    PromiseFailed,
    /// Everything went well (exit code 0).
    Success,
}

/// The partitions of a `node instance` or `node promise` run and how each
/// went.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunSummary {
    /// Every selected partition, in the master's order.
    pub partitions: Vec<PartitionResult>,
}

impl RunSummary {
    fn with(&self, f: impl Fn(&Outcome) -> Option<&String>) -> Vec<(&PartitionResult, &String)> {
        self.partitions.iter().filter_map(|r| f(&r.outcome).map(|m| (r, m))).collect()
    }

    /// Failures win over promise failures.
    pub fn status(&self) -> RunStatus {
        let any = |f: fn(&Outcome) -> bool| self.partitions.iter().any(|r| f(&r.outcome));
        if any(|o| matches!(o, Outcome::Failed(_))) {
            RunStatus::Failed
        } else if any(|o| matches!(o, Outcome::PromiseFailed(_))) {
            RunStatus::PromiseFailed
        } else {
            RunStatus::Success
        }
    }

    /// slapgrid's closing lines: the partitions that failed, then those
    /// whose promises fail, each with the first line of its message.
    pub fn lines(&self) -> Vec<String> {
        let first = |m: &str| m.lines().find(|l| !l.trim().is_empty()).unwrap_or_default().to_string();
        let failed = self.with(|o| if let Outcome::Failed(m) = o { Some(m) } else { None });
        let promises = self.with(|o| if let Outcome::PromiseFailed(m) = o { Some(m) } else { None });
        let mut lines = Vec::new();
        for (title, list) in
            [("Error while processing the following partitions:", failed), ("Error with promises for the following partitions:", promises)]
        {
            if !list.is_empty() {
                lines.push(title.to_string());
                lines.extend(list.iter().map(|(r, m)| format!("  {}[{}]: {}", r.id, r.software_type, first(m))));
            }
        }
        lines
    }

    /// Pairs `partitions` with their outcomes and logs [`RunSummary::lines`].
    fn log(partitions: &[&ComputerPartition], outcomes: Vec<Outcome>) -> RunSummary {
        let shown = |t| names::SoftwareType::parse(t).map(|t| t.to_string()).unwrap_or("(invalid software type)".into());
        let summary = RunSummary {
            partitions: partitions
                .iter()
                .zip(outcomes)
                .map(|(p, outcome)| PartitionResult {
                    id: p.partition_id.clone(),
                    software_type: p.software_type().map(shown).unwrap_or("(not ready)".into()),
                    outcome,
                })
                .collect(),
        };
        for l in summary.lines() {
            tracing::error!("{l}");
        }
        summary
    }
}

/// How `node instance` ended.
#[derive(Debug, Clone, PartialEq)]
pub enum InstanceRun {
    /// The partitions were processed.
    Processed(RunSummary),
    /// The master was unreachable: offline processing kept the services
    /// running (slapgrid's exit code 3).
    Offline,
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

/// Offline processing (`node.md` §5.1): the master is unreachable; keep what
/// runs running.
pub fn offline(node: &Node) -> Result<InstanceRun, NodeError> {
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
    node.supervisor.call("supervisor.startAllProcesses", &[crate::supervisor::XValue::Bool(false)]).map_err(NodeError::Offline)?;
    Ok(InstanceRun::Offline)
}

/// `certificate_repository_path`, mode 0711 as `slapos node register` makes
/// it: nobody lists it, each partition user reaches its own key (0400).
fn certificate_repository(node: &Node) {
    if let Some(repo) = &node.cfg.certificate_repository_path {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o711).create(repo) {
            tracing::warn!("cannot create certificate_repository_path {}: {e}", repo.display());
        } else if std::fs::metadata(repo).is_ok_and(|m| m.permissions().mode() & 0o7777 != 0o711) {
            if let Err(e) = std::fs::set_permissions(repo, std::fs::Permissions::from_mode(0o711)) {
                tracing::warn!("cannot make certificate_repository_path {} mode 0711: {e}", repo.display());
            }
        }
    }
}

/// `slapos node instance`: every selected partition through the pool, or
/// offline processing when the master cannot be reached.
pub fn run(node: &Node, opts: &InstanceOptions) -> Result<InstanceRun, NodeError> {
    certificate_repository(node);
    let supervisord_launched = node.supervisor.ensure_running()?;
    let computer = match node.computer() {
        Ok(c) => c,
        Err(e) if e.is_unreachable() => {
            tracing::error!("{e}");
            return offline(node);
        }
        Err(e) => return Err(e.into()),
    };
    let selected = select_partitions(node, &computer.partitions, &opts.only, true)?;
    tracing::info!("Processing computer partitions ({} to check, {} at once)...", selected.len(), opts.workers.max(1));
    // plan, then apply: every partition is decided before any is touched
    let plans: Vec<decide::Plan> = selected.iter().map(|p| decide::plan_partition(&node.cfg, p, opts.force)).collect();
    for plan in &plans {
        tracing::debug!("Plan: {}", plan.describe());
    }
    let run = run::Run { node, opts, supervisord_launched };
    let workers = if opts.buildout_debug { 1 } else { opts.workers };
    let outcomes = parallel(&plans, workers, |plan| run.partition(plan));
    if let Some(Outcome::MasterDown(m)) = outcomes.iter().find(|o| matches!(o, Outcome::MasterDown(_))) {
        tracing::error!("{m}");
        return offline(node);
    }
    let summary = RunSummary::log(&selected, outcomes);
    tracing::info!("Finished computer partitions.");
    Ok(InstanceRun::Processed(summary))
}

/// `slapos node promise`: a forced test run of the promises of every
/// started partition; results are logged and saved, nothing is reported to
/// the master.
pub fn check_promises(node: &Node, only: &[String], workers: usize) -> Result<RunSummary, NodeError> {
    let computer = node.computer()?;
    let selected = select_partitions(node, &computer.partitions, only, false)?;
    let started: Vec<&ComputerPartition> =
        selected.into_iter().filter(|p| p.requested_state.unwrap_or(InstanceState::Started) == InstanceState::Started).collect();
    let outcomes = parallel(&started, workers, |p| {
        let pp = node.cfg.instance_root.join(&p.partition_id);
        let owner = match Owner::of(&pp) {
            Ok(o) => o,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let _scope = log::PartitionScope::enter(&pp, &p.partition_id, &owner);
        match promise::run_all(node, p, &pp, &owner, true, false) {
            Ok(()) => Outcome::Done,
            Err(PromiseFailure::Failed(m)) => Outcome::PromiseFailed(m),
            Err(PromiseFailure::Error(m)) => Outcome::Failed(m),
        }
    });
    Ok(RunSummary::log(&started, outcomes))
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
    fn errors_win_over_promise_failures() {
        let r = |id: &str, outcome: Outcome| PartitionResult { id: id.into(), software_type: "default".into(), outcome };
        let s = |rs: Vec<PartitionResult>| RunSummary { partitions: rs };
        let ok = s(vec![r("a", Outcome::Done), r("b", Outcome::UpToDate)]);
        assert_eq!((ok.status(), ok.lines()), (RunStatus::Success, vec![]));
        let promise = s(vec![r("a", Outcome::PromiseFailed("Promise 'x' failed".into())), r("b", Outcome::Done)]);
        assert_eq!(promise.status(), RunStatus::PromiseFailed);
        assert_eq!(promise.lines(), ["Error with promises for the following partitions:", "  a[default]: Promise 'x' failed"]);
        let both = s(vec![r("a", Outcome::PromiseFailed("p".into())), r("b", Outcome::Failed("\nboom\nmore".into()))]);
        assert_eq!(both.status(), RunStatus::Failed);
        assert_eq!(
            both.lines(),
            [
                "Error while processing the following partitions:",
                "  b[default]: boom",
                "Error with promises for the following partitions:",
                "  a[default]: p"
            ]
        );
    }
}
