//! Managers, as slapgrid loads them from `[slapos] manager_list`
//! (`slapos/manager/`): optional steps around a partition's life. Two are
//! implemented, each as a pure plan (what the partition's files ask, read
//! through [`crate::fsafe`] and validated) and an apply (the effects):
//!
//! * [`prerm`]: before a partition is destroyed, its `etc/prerm/*` scripts
//!   run as its user (slapgrid runs them under supervisord and waits for
//!   them; the node runs them directly, under a deadline, through
//!   [`crate::process`]);
//! * [`portredir`]: after a started partition is processed, the
//!   redirections of its `.slapos-port-redirect` become `socat` programs
//!   in its `<partition>-socat` supervisord group.
//!
//! slapgrid's other managers (`cpuset`, `devperm`, `whitelistfirewall`)
//! are accepted in the list and skipped with a warning; any other name is
//! a configuration error, as slapgrid fails to import it.

pub mod portredir;
pub mod prerm;

/// The managers of `manager_list` this node runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Managers {
    /// `prerm`: pre-delete scripts before destruction.
    pub prerm: bool,
    /// `portredir`: port redirections of started partitions.
    pub portredir: bool,
}

/// A name in `manager_list` that is no slapos.core 1.26.1 manager.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("manager_list: unknown manager '{0}' (slapos.core 1.26.1 has cpuset, devperm, portredir, prerm, whitelistfirewall)")]
pub struct UnknownManager(pub String);

/// Managers slapos.core has that this node does not run.
const NOT_RUN: &[&str] = &["cpuset", "devperm", "whitelistfirewall"];

impl Managers {
    /// Parses `manager_list` as slapgrid does: names separated by commas
    /// or white space. Managers this node does not run are logged.
    pub fn parse(list: &str) -> Result<Managers, UnknownManager> {
        let mut m = Managers::default();
        for name in list.replace(',', " ").split_whitespace() {
            match name {
                "prerm" => m.prerm = true,
                "portredir" => m.portredir = true,
                n if NOT_RUN.contains(&n) => tracing::warn!("manager_list: the {n} manager is not supported by this node: skipped"),
                n => return Err(UnknownManager(crate::names::shown(n))),
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_list_is_read_as_slapgrid_reads_it() {
        assert_eq!(Managers::parse("").unwrap(), Managers::default());
        assert_eq!(Managers::parse("prerm, portredir").unwrap(), Managers { prerm: true, portredir: true });
        assert_eq!(Managers::parse(" portredir\n").unwrap(), Managers { prerm: false, portredir: true });
        assert_eq!(Managers::parse("cpuset prerm").unwrap(), Managers { prerm: true, portredir: false }, "known, not run");
        let e = Managers::parse("prerm,../../evil").unwrap_err();
        assert!(e.to_string().contains("unknown manager '../../evil'"), "{e}");
    }
}
