//! What `slapos node instance` does with a partition (`node.md` §5.1–5.2),
//! decided from the master's view and the partition's `.timestamp`, as a
//! pure function.

use std::path::{Path, PathBuf};
use std::time::Duration;

use slap::model::{ComputerPartition, InstanceState};

/// Where a software release is installed: `software_root/<md5 of its URL>`.
pub fn software_path(software_root: &Path, url: &str) -> PathBuf {
    crate::names::SoftwareHash::of(url).dir(software_root)
}

/// The decision for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A free partition (destroyed, no software release): left alone.
    Free,
    /// Nothing changed since the last successful run: for a started
    /// partition, only the promise anomaly check and the `started` report.
    UpToDate {
        /// The requested state.
        state: InstanceState,
    },
    /// Run the instance buildout and bring the partition to `state`.
    Process {
        /// The requested state.
        state: InstanceState,
        /// Why it is processed (logged).
        reason: &'static str,
    },
    /// The master asks for a state we do not know: an error for this
    /// partition, not a crash.
    UnknownState(String),
}

/// `stored_timestamp`: the content of `.timestamp`, `age`: how long ago it
/// was written; `periodicity`: seconds (0: always process, negative: never
/// expire).
pub fn decide(p: &ComputerPartition, stored_timestamp: Option<&str>, age: Option<Duration>, periodicity: i64, force: bool) -> Decision {
    if let Some(s) = p.unknown_requested_state() {
        return Decision::UnknownState(s.to_string());
    }
    if p.is_free() {
        return Decision::Free;
    }
    let state = p.requested_state.unwrap_or(InstanceState::Started);
    if force {
        return Decision::Process { state, reason: "forced" };
    }
    let Some(master) = p.timestamp() else {
        return Decision::Process { state, reason: "the master gives no timestamp" };
    };
    if periodicity == 0 {
        return Decision::Process { state, reason: "periodicity 0" };
    }
    match stored_timestamp {
        Some(stored) if stored.trim() == master => {
            let expired = periodicity > 0 && age.is_some_and(|a| a.as_secs() > periodicity as u64);
            if expired {
                Decision::Process { state, reason: "periodicity expired" }
            } else {
                Decision::UpToDate { state }
            }
        }
        Some(_) => Decision::Process { state, reason: "the master's timestamp changed" },
        None => Decision::Process { state, reason: "never deployed" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slap::marshal::Value;

    fn busy(state: InstanceState, timestamp: Option<&str>) -> ComputerPartition {
        let mut p = ComputerPartition::free("C", "slappart0");
        p.requested_state = Some(state);
        p.software_release = Some(slap::model::SoftwareRelease::new("http://sr", "C"));
        let mut params = std::collections::BTreeMap::new();
        if let Some(t) = timestamp {
            params.insert("timestamp".to_string(), Value::str(t));
        }
        p.parameters = Some(params);
        p
    }

    #[test]
    fn timestamps_and_periodicity_decide() {
        use InstanceState::*;
        let day = Duration::from_secs(3600);
        let p = busy(Started, Some("1795542339.7344759"));
        assert_eq!(decide(&p, Some("1795542339.7344759"), Some(day), 86400, false), Decision::UpToDate { state: Started });
        assert!(matches!(
            decide(&p, Some("1795542339.7344759"), Some(day), 60, false),
            Decision::Process { reason: "periodicity expired", .. }
        ));
        assert_eq!(decide(&p, Some("1795542339.7344759"), Some(day * 100), -1, false), Decision::UpToDate { state: Started });
        assert!(matches!(decide(&p, Some("1795542339.7344759"), Some(day), 0, false), Decision::Process { .. }));
        assert!(matches!(
            decide(&p, Some("1795540000.0"), Some(day), 86400, false),
            Decision::Process { reason: "the master's timestamp changed", .. }
        ));
        assert!(matches!(decide(&p, None, None, 86400, false), Decision::Process { reason: "never deployed", .. }));
        assert!(matches!(decide(&p, Some("1795542339.7344759"), Some(day), 86400, true), Decision::Process { reason: "forced", .. }));
        assert!(matches!(decide(&busy(Stopped, None), None, None, 86400, false), Decision::Process { state: Stopped, .. }));
        assert_eq!(decide(&ComputerPartition::free("C", "p"), None, None, 86400, false), Decision::Free);
        let mut odd = busy(Started, None);
        odd.requested_state = None;
        odd.extra.insert("_requested_state".into(), Value::str("paused"));
        assert_eq!(decide(&odd, None, None, 86400, false), Decision::UnknownState("paused".into()));
    }

    #[test]
    fn software_paths_are_md5_of_the_url() {
        assert_eq!(
            software_path(Path::new("/opt/slapgrid"), "http://example.com/software.cfg"),
            PathBuf::from("/opt/slapgrid/91d5c3732524c019b6f1d313793d8809")
        );
    }
}
