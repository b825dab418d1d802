//! Deciding: what to do with each partition, from what the master says and
//! what the partition and its software hold, read without changing
//! anything ([`observe`]), then decided by the pure
//! [`decision::decide`](crate::decision::decide). A run makes the
//! [`Plan`] of every selected partition before any worker acts.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use slap::model::ComputerPartition;

use crate::config::NodeConfig;
use crate::decision::{decide, software_path, Decision};
use crate::fsafe::{self, Dir};

/// What a run will do with one partition, decided before anything is done.
#[derive(Debug)]
pub(crate) struct Plan<'p> {
    /// The partition, as the master gives it.
    pub p: &'p ComputerPartition,
    /// Its directory (`instance_root/<id>`, the id validated).
    pub pp: PathBuf,
    /// Its software path, when the master gives a software release.
    pub sp: Option<PathBuf>,
    /// What was read and decided, or why the partition directory cannot
    /// be opened.
    pub decided: std::io::Result<(Observed, Decision)>,
}

impl Plan<'_> {
    /// One line for the log: the partition and what will be done.
    pub fn describe(&self) -> String {
        let id = &self.p.partition_id;
        match &self.decided {
            Ok((_, Decision::Free)) => format!("{id}: free, left alone"),
            Ok((_, Decision::UpToDate { state })) => format!("{id}: up to date ({state:?}): promises and report only"),
            Ok((_, Decision::Process { state, reason })) => format!("{id}: process to {state:?} ({reason})"),
            Ok((_, Decision::UnknownState(s))) => format!("{id}: unsupported requested state '{s}'"),
            Err(e) => format!("{id}: cannot open the partition: {e}"),
        }
    }
}

/// The plan of partition `p` (`--force`: process even when up to date).
pub(crate) fn plan_partition<'p>(cfg: &NodeConfig, p: &'p ComputerPartition, force: bool) -> Plan<'p> {
    let pp = cfg.instance_root.join(&p.partition_id);
    let sp = p.software_release_url().map(|u| software_path(&cfg.software_root, u));
    let decided = Dir::open_nofollow(&pp).map(|pd| {
        let seen = observe(&pd, sp.as_deref());
        let decision = plan(p, &seen, cfg.maximum_periodicity, force);
        (seen, decision)
    });
    Plan { p, pp, sp, decided }
}

/// The periodicity of a software release, from `<sp>/periodicity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Periodicity {
    /// The file gives this many seconds.
    Given(i64),
    /// No file (or no software): the node's `maximum_periodicity`.
    Unset,
    /// The file does not hold a number: the node's maximum, and the file is
    /// deleted (as slapgrid does) when the plan is applied.
    Invalid,
}

impl Periodicity {
    /// Reads `<sp>/periodicity` (bounded, links not followed).
    pub(crate) fn of(sp: Option<&Path>) -> Periodicity {
        let Some(sd) = sp.and_then(|sp| Dir::open_nofollow(sp).ok()) else { return Periodicity::Unset };
        match sd.read_to_string(Path::new("periodicity"), fsafe::SMALL) {
            Ok(t) => t.trim().parse().map_or(Periodicity::Invalid, Periodicity::Given),
            Err(_) => Periodicity::Unset,
        }
    }

    /// The seconds it means, `maximum` unless given.
    pub(crate) fn seconds(self, maximum: i64) -> i64 {
        match self {
            Periodicity::Given(s) => s,
            Periodicity::Unset | Periodicity::Invalid => maximum,
        }
    }
}

/// What the node knows of a partition before it acts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Observed {
    /// The content of `.timestamp` (the master's timestamp of the last
    /// successful run).
    pub stamp: Option<String>,
    /// How long ago `.timestamp` was written (none when in the future).
    pub age: Option<Duration>,
    /// The software release's periodicity.
    pub periodicity: Periodicity,
}

/// Reads what the decision needs from the partition directory `pd` and the
/// software path `sp`.
pub(crate) fn observe(pd: &Dir, sp: Option<&Path>) -> Observed {
    let stamp_file = Path::new(".timestamp");
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    Observed {
        stamp: pd.read_to_string(stamp_file, fsafe::SMALL).ok(),
        age: pd.metadata(stamp_file).ok().filter(|m| m.mtime <= now).map(|m| Duration::from_secs_f64(now - m.mtime)),
        periodicity: Periodicity::of(sp),
    }
}

/// The decision for `p` given what was observed (pure).
pub(crate) fn plan(p: &ComputerPartition, seen: &Observed, maximum_periodicity: i64, force: bool) -> Decision {
    decide(p, seen.stamp.as_deref(), seen.age, seen.periodicity.seconds(maximum_periodicity), force)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodicity_from_the_software_or_the_node() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Periodicity::of(Some(d.path())), Periodicity::Unset);
        assert_eq!(Periodicity::of(Some(d.path())).seconds(86400), 86400);
        std::fs::write(d.path().join("periodicity"), "60\n").unwrap();
        assert_eq!(Periodicity::of(Some(d.path())).seconds(86400), 60);
        std::fs::write(d.path().join("periodicity"), "soon").unwrap();
        assert_eq!(Periodicity::of(Some(d.path())), Periodicity::Invalid);
        assert_eq!(Periodicity::Invalid.seconds(86400), 86400);
        assert!(d.path().join("periodicity").exists(), "observing deletes nothing");
        assert_eq!(Periodicity::of(None).seconds(5), 5);
    }

    #[test]
    fn the_software_periodicity_and_the_stamp_make_the_plan() {
        use crate::decision::Decision;
        use slap::model::InstanceState::Started;
        let d = tempfile::tempdir().unwrap();
        let (pp, sp) = (d.path().join("slappart0"), d.path().join("software"));
        std::fs::create_dir_all(&pp).unwrap();
        std::fs::create_dir_all(&sp).unwrap();
        let mut p = ComputerPartition::free("C", "slappart0");
        p.requested_state = Some(Started);
        p.software_release = Some(slap::model::SoftwareRelease::new("http://sr", "C"));
        p.parameters = Some([("timestamp".to_string(), slap::marshal::Value::str("17"))].into());
        let pd = Dir::open_nofollow(&pp).unwrap();
        let decided = |force| plan(&p, &observe(&pd, Some(&sp)), 86400, force);
        assert_eq!(decided(false), Decision::Process { state: Started, reason: "never deployed" });
        std::fs::write(pp.join(".timestamp"), "17").unwrap();
        assert_eq!(decided(false), Decision::UpToDate { state: Started });
        assert_eq!(decided(true), Decision::Process { state: Started, reason: "forced" });
        std::fs::write(sp.join("periodicity"), "0").unwrap();
        assert_eq!(decided(false), Decision::Process { state: Started, reason: "periodicity 0" });
        let shown = Plan { p: &p, pp: pp.clone(), sp: None, decided: Ok((observe(&pd, Some(&sp)), decided(false))) }.describe();
        assert_eq!(shown, "slappart0: process to Started (periodicity 0)");
    }

    #[test]
    fn the_stamp_and_its_age_are_read_without_a_change() {
        let d = tempfile::tempdir().unwrap();
        let pd = Dir::open_nofollow(d.path()).unwrap();
        assert_eq!(observe(&pd, None), Observed { stamp: None, age: None, periodicity: Periodicity::Unset });
        std::fs::write(d.path().join(".timestamp"), "1700000000").unwrap();
        let seen = observe(&pd, None);
        assert_eq!(seen.stamp.as_deref(), Some("1700000000"));
        assert!(seen.age.is_some_and(|a| a < Duration::from_secs(60)), "{seen:?}");
    }
}
