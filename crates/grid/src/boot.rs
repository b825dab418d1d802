//! `slapos node boot` (`node.md` §3): after a reboot, format until it
//! succeeds (the master may not answer yet), bang the computer, and forget
//! every partition's `.timestamp` so that the next instance run
//! reprocesses everything.
//!
//! Formatting is the program's (`slapos node format`, another crate): it
//! is given as a function that makes one attempt.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::fsafe::Dir;
use crate::node::Node;

/// What `node boot` was asked.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Time between two attempts (of format, of the bang).
    pub interval: Duration,
    /// Give up after this long (`None`: never).
    pub timeout: Option<Duration>,
    /// `[slapformat] partition_base_name`: the partitions whose
    /// `.timestamp` is forgotten.
    pub partition_base_name: String,
    /// `node boot -m`: the message of the bang (SlapOS's default: `Reboot`).
    pub message: String,
}

/// How one attempt to format the node ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatAttempt {
    /// Formatted.
    Done,
    /// The master does not answer yet (`node format`'s exit code 2).
    MasterDown,
    /// Failed otherwise (its exit code, none when killed by a signal).
    Failed(Option<i32>),
}

/// How `node boot` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootOutcome {
    /// Formatted, banged; this many partitions will be reprocessed.
    Booted {
        /// Partitions whose `.timestamp` was removed.
        forgotten: usize,
    },
    /// `--timeout` passed before formatting succeeded.
    FormatGaveUp,
    /// `--timeout` passed before the master took the bang.
    BangGaveUp,
}

/// `slapos node boot`: `format` makes one attempt to format the node (an
/// error to run it ends the boot).
pub fn boot(node: &Node, opts: &BootOptions, mut format: impl FnMut() -> std::io::Result<FormatAttempt>) -> std::io::Result<BootOutcome> {
    let start = Instant::now();
    let expired = || opts.timeout.is_some_and(|t| start.elapsed() > t);
    let secs = opts.interval.as_secs();
    loop {
        match format()? {
            FormatAttempt::Done => break,
            FormatAttempt::MasterDown => tracing::warn!("the master does not answer yet: formatting again in {secs} s"),
            FormatAttempt::Failed(code) => tracing::warn!("node format exited with {code:?}: again in {secs} s"),
        }
        if expired() {
            tracing::error!("node boot gave up after {} s", opts.timeout.unwrap_or_default().as_secs());
            return Ok(BootOutcome::FormatGaveUp);
        }
        std::thread::sleep(opts.interval);
    }
    while let Err(e) = node.client.computer_bang(&node.cfg.computer_id, &opts.message) {
        tracing::warn!("cannot bang the master yet ({e}): again in {secs} s");
        if expired() {
            return Ok(BootOutcome::BangGaveUp);
        }
        std::thread::sleep(opts.interval);
    }
    let forgotten = forget_timestamps(&node.cfg.instance_root, &opts.partition_base_name)?;
    tracing::info!("Node booted: formatted, master banged, {forgotten} partition(s) will be reprocessed by the next instance run.");
    Ok(BootOutcome::Booted { forgotten })
}

/// Removes `.timestamp` from every partition directory named
/// `<base>…` of `instance_root` (the directory not followed when it is a
/// link); how many were removed.
pub fn forget_timestamps(instance_root: &Path, base: &str) -> std::io::Result<usize> {
    let mut forgotten = 0;
    for e in std::fs::read_dir(instance_root)?.flatten() {
        if !e.file_name().to_string_lossy().starts_with(base) {
            continue;
        }
        let Ok(pd) = Dir::open_nofollow(&e.path()) else { continue };
        if pd.remove_file(Path::new(".timestamp")).is_ok() {
            forgotten += 1;
        }
    }
    Ok(forgotten)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NodeConfig, NodeOverrides};

    /// A node of `root` whose master answers every call with `status`.
    fn test_node(root: &Path, status: u16) -> (Node, test_support::Canned) {
        let master = test_support::canned(status, "");
        let text = format!(
            "[slapos]\ncomputer_id = COMP-1\nmaster_url = {}\nsoftware_root = {r}\ninstance_root = {r}\n",
            master.url,
            r = root.display()
        );
        let cfg = NodeConfig::from_config(&slapos_config::Config::parse(&text).unwrap(), &NodeOverrides::default()).unwrap();
        (Node::new(cfg).unwrap(), master)
    }

    fn opts(timeout_ms: Option<u64>) -> BootOptions {
        BootOptions {
            interval: Duration::from_millis(1),
            timeout: timeout_ms.map(Duration::from_millis),
            partition_base_name: "slappart".into(),
            message: "Reboot".into(),
        }
    }

    #[test]
    fn formats_until_it_works_then_bangs_and_forgets() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("slappart0")).unwrap();
        std::fs::write(d.path().join("slappart0/.timestamp"), "1").unwrap();
        let (node, master) = test_node(d.path(), 200);
        let mut attempts = vec![FormatAttempt::Done, FormatAttempt::Failed(Some(1)), FormatAttempt::MasterDown];
        let outcome = boot(&node, &opts(None), || Ok(attempts.pop().unwrap())).unwrap();
        assert_eq!(outcome, BootOutcome::Booted { forgotten: 1 });
        assert!(attempts.is_empty(), "three attempts");
        assert!(!d.path().join("slappart0/.timestamp").exists());
        let received = master.received.lock().unwrap();
        let bangs: Vec<_> = received.iter().filter(|r| r.target.ends_with("/computerBang")).map(|r| r.form()).collect();
        assert_eq!(bangs.len(), 1, "{received:?}");
        assert!(bangs[0].contains(&("message".into(), "Reboot".into())), "{bangs:?}");
    }

    #[test]
    fn the_timeout_gives_up_formatting_or_banging() {
        let d = tempfile::tempdir().unwrap();
        let (node, _master) = test_node(d.path(), 200);
        assert_eq!(boot(&node, &opts(Some(20)), || Ok(FormatAttempt::MasterDown)).unwrap(), BootOutcome::FormatGaveUp);
        let (refusing, _master) = test_node(d.path(), 500);
        assert_eq!(boot(&refusing, &opts(Some(20)), || Ok(FormatAttempt::Done)).unwrap(), BootOutcome::BangGaveUp);
        let failed = boot(&refusing, &opts(None), || Err(std::io::Error::other("no slapos program")));
        assert_eq!(failed.unwrap_err().to_string(), "no slapos program");
    }

    #[test]
    fn only_the_partitions_timestamps_are_forgotten_never_through_a_link() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("srv");
        for p in ["slappart0", "slappart1", "other"] {
            std::fs::create_dir_all(root.join(p)).unwrap();
            std::fs::write(root.join(p).join(".timestamp"), "1").unwrap();
        }
        std::fs::remove_file(root.join("slappart1/.timestamp")).unwrap();
        // a partition that is a link to elsewhere: its target keeps its file
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join(".timestamp"), "1").unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("slappart2")).unwrap();
        assert_eq!(forget_timestamps(&root, "slappart").unwrap(), 1);
        assert!(!root.join("slappart0/.timestamp").exists());
        assert!(root.join("other/.timestamp").exists() && elsewhere.join(".timestamp").exists());
        assert!(forget_timestamps(&d.path().join("missing"), "slappart").is_err());
    }
}
