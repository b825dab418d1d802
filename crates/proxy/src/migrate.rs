//! `slapos proxy migrate --from … --to …`: copies a site from one database
//! to another (SQLite to PostgreSQL, or back), in one transaction on the
//! destination, which must be empty. Rows keep their order (which fixes
//! allocation order and the order of every list a node reads).

use crate::store::{
    AnyStore, CertificateRow, Database, ForwardRow, MovementRow, RelatedRow, Retention, Store, StoreError, TokenRow, Tx, UsageHourRow,
};

/// How many rows of each kind were copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Computers.
    pub computers: usize,
    /// Partitions.
    pub partitions: usize,
    /// Software releases supplied.
    pub software: usize,
    /// Shared (slave) instances.
    pub shared: usize,
    /// Partition addresses.
    pub addresses: usize,
    /// Node reports.
    pub reports: usize,
    /// Usage reports (journals, and the movements read from them).
    pub usage: usize,
    /// Issued certificates, tokens, grants and settings.
    pub identities: usize,
    /// Forwarded requests and related instances.
    pub forwards: usize,
}

/// The rows of identity (certificates, tokens, grants), the master's
/// settings and multimaster's (forwarded requests, related instances).
struct Others {
    certificates: Vec<CertificateRow>,
    tokens: Vec<TokenRow>,
    grants: Vec<(String, String, String)>,
    settings: Vec<(String, String)>,
    forwards: Vec<ForwardRow>,
    related: Vec<RelatedRow>,
    movements: Vec<MovementRow>,
    hours: Vec<UsageHourRow>,
}

impl Others {
    fn read(tx: &mut dyn Tx) -> Result<Others, StoreError> {
        Ok(Others {
            certificates: tx.certificates()?,
            tokens: tx.tokens()?,
            grants: tx.grants()?,
            settings: tx.settings()?,
            forwards: tx.forwards()?,
            related: tx.related()?,
            movements: tx.movements()?,
            hours: tx.usage_hours()?,
        })
    }

    fn write(&self, tx: &mut dyn Tx) -> Result<(), StoreError> {
        for c in &self.certificates {
            tx.add_certificate(c)?;
        }
        for t in &self.tokens {
            tx.add_token(t)?;
        }
        for (kind, reference, user) in &self.grants {
            tx.grant(kind, reference, user)?;
        }
        for (name, value) in &self.settings {
            tx.set_setting(name, value)?;
        }
        for f in &self.forwards {
            tx.add_forward(f)?;
        }
        for r in &self.related {
            tx.set_related(r)?;
        }
        tx.add_movements(&self.movements)?;
        // the sums as they were (they outlive the movements they were made of)
        tx.replace_usage_hours(&self.hours)?;
        Ok(())
    }
}

/// Copies everything of `from` into the empty database `to` (created and
/// migrated to the current schema if needed).
pub fn migrate(from: &Database, to: &Database) -> Result<Copied, anyhow::Error> {
    let source = AnyStore::open_read_only(from).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", from.shown()))?;
    // keep every report and usage row the source kept
    let everything = Retention {
        reports_per_object: usize::MAX >> 2,
        reports: usize::MAX >> 2,
        usage_per_computer: usize::MAX >> 2,
        usage: usize::MAX >> 2,
        movements: usize::MAX >> 2,
        movement_days: usize::MAX >> 20,
    };
    let destination = AnyStore::open(to, everything).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", to.shown()))?;
    let rows = source.read(|tx: &mut dyn Tx| -> Result<_, StoreError> {
        let computers = tx.computers()?;
        let mut addresses = Vec::new();
        for c in tx.partitions(None)?.iter().map(|p| p.computer_reference.clone()).chain(computers.iter().map(|c| c.reference.clone())) {
            if !addresses.iter().any(|(k, _)| *k == c) {
                let list = tx.computer_addresses(&c)?;
                addresses.push((c, list));
            }
        }
        Ok((
            computers,
            tx.partitions(None)?,
            tx.software_releases(None)?,
            tx.slaves()?,
            addresses,
            tx.reports()?,
            tx.usages(usize::MAX >> 2)?,
        ))
    })?;
    let (computers, partitions, software, slaves, addresses, reports, mut usage) = rows;
    usage.reverse(); // newest first: insert oldest first
    let others = source.read(Others::read)?;
    destination.transaction(|tx: &mut dyn Tx| -> Result<Copied, anyhow::Error> {
        if !tx.computers()?.is_empty() || !tx.partitions(None)?.is_empty() || !tx.software_releases(None)?.is_empty() {
            anyhow::bail!("{} is not empty: migrate into a new database", to.shown());
        }
        for c in &computers {
            tx.upsert_computer(c)?;
        }
        for p in &partitions {
            tx.insert_partition_if_missing(&p.computer_reference, &p.reference)?;
            tx.update_partition(p)?;
        }
        for s in &software {
            tx.upsert_software(s)?;
        }
        for s in &slaves {
            tx.insert_slave(s)?;
        }
        for (computer, list) in &addresses {
            tx.replace_addresses(computer, list)?;
        }
        for r in &reports {
            tx.add_report(r)?;
        }
        for u in &usage {
            tx.add_usage(u)?;
        }
        others.write(tx)?;
        Ok(Copied {
            computers: computers.len(),
            partitions: partitions.len(),
            software: software.len(),
            shared: slaves.len(),
            addresses: addresses.iter().map(|(_, l)| l.len()).sum(),
            reports: reports.len(),
            usage: usage.len() + others.movements.len(),
            identities: others.certificates.len() + others.tokens.len() + others.grants.len() + others.settings.len(),
            forwards: others.forwards.len() + others.related.len(),
        })
    })
}
