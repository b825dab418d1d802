//! The master's storage: row types, the narrow [`Tx`] interface the master
//! logic works through, and its SQLite implementation.
//!
//! Everything the master does happens inside one [`Store::transaction`]:
//! SQLite in WAL mode with a busy timeout, one transaction per HTTP request,
//! so a request is either fully stored or not at all. A PostgreSQL store
//! would implement the same two traits.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row};

mod any;
mod migrations;
mod postgres;

pub use any::{hide_password, AnyStore, Database};
pub use postgres::{Isolation, PgStore};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be opened.
    #[error("database {path}: {source}")]
    Open {
        /// The SQLite file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The database was written by a newer version.
    #[error("database {path} has schema version {found}, newer than this program's {supported}")]
    TooNew {
        /// The SQLite file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// Ours.
        supported: i64,
    },
    /// The PostgreSQL database could not be opened.
    #[error("database {uri}: {}", with_causes(source))]
    PgOpen {
        /// The database URI, without its password.
        uri: String,
        /// Why.
        source: ::postgres::Error,
    },
    /// A PostgreSQL statement failed.
    #[error("database error: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// No connection could be had from the pool.
    #[error("database connection pool: {0}")]
    Pool(String),
    /// The PostgreSQL URI's TLS settings cannot be used.
    #[error("database {uri}: {message}")]
    PgTls {
        /// The database URI, without its password.
        uri: String,
        /// Why.
        message: String,
    },
}

/// `error: cause: cause…` on one line (the `postgres` crate's errors keep
/// why a connection failed, a TLS verification say, in their source).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = cause.source();
    }
    text
}

/// A computer partition and the instance it hosts (if any).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PartitionRow {
    /// The partition's reference (`slappart0`).
    pub reference: String,
    /// The computer it belongs to.
    pub computer_reference: String,
    /// `free` or `busy`.
    pub slap_state: String,
    /// The software release URL of its instance.
    pub software_release: Option<String>,
    /// Instance parameters (instance XML).
    pub xml: Option<String>,
    /// Published connection parameters (instance XML).
    pub connection_xml: Option<String>,
    /// Shared instances hosted here (a marshalled list of dicts).
    pub slave_instance_list: Option<String>,
    /// The software type of its instance.
    pub software_type: Option<String>,
    /// The instance title.
    pub partition_reference: Option<String>,
    /// Title of the root of the request tree; empty for a root.
    pub requested_by: String,
    /// Partition that directly requested this one (`user` for a person).
    pub requester_id: String,
    /// `started`, `stopped` or `destroyed`.
    pub requested_state: String,
    /// When the instance last changed (the node's reprocessing trigger).
    pub timestamp: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// A software release supplied to a computer.
pub struct SoftwareRow {
    /// The software release URL.
    pub url: String,
    /// The computer it is supplied to.
    pub computer_reference: String,
    /// `available` or `destroyed`.
    pub requested_state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
/// A computer the master knows.
pub struct ComputerRow {
    /// Its reference (`computer_id`).
    pub reference: String,
    /// Its IPv6 address, from the format report.
    pub address: Option<String>,
    /// Its netmask.
    pub netmask: Option<String>,
}

/// A shared (slave) instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlaveRow {
    /// `<root title>_<title>`.
    pub reference: String,
    /// The computer of its host partition.
    pub computer_reference: String,
    /// Published connection parameters (instance XML).
    pub connection_xml: Option<String>,
    /// The partition hosting it.
    pub hosted_by: Option<String>,
    /// Partition that requested it (`user` for a person).
    pub requester_id: String,
}

/// An address of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRow {
    /// The partition's reference.
    pub partition_reference: String,
    /// The computer.
    pub computer_reference: String,
    /// Interface name (tap name, or the partition reference).
    pub interface: String,
    /// The address.
    pub address: String,
    /// The netmask.
    pub netmask: String,
}

/// A state report from a node (beyond the Python proxy, which ignores them).
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    /// `software` or `partition`.
    pub kind: String,
    /// The computer that reported.
    pub computer_reference: String,
    /// Software release URL or partition reference.
    pub reference: String,
    /// building, available, error, destroyed, started, stopped.
    pub state: String,
    /// The error message, for `error` reports.
    pub message: Option<String>,
    /// When it was reported (seconds since the epoch).
    pub time: f64,
    /// The root title of the instance tree of a partition report; None when
    /// added: that of the partition then (`proxy migrate` gives the one kept).
    pub tree: Option<String>,
}

/// A usage report (`useComputer`).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    /// The computer that reported.
    pub computer_reference: String,
    /// The usage document, as sent.
    pub body: String,
    /// When it was reported (seconds since the epoch).
    pub time: f64,
}

/// A certificate the master's CA issued (`proxy::ca`): who it names.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateRow {
    /// The serial number, lowercase hex of its DER bytes.
    pub serial: String,
    /// `computer`, `partition`, `user`, `administrator` or `server`.
    pub kind: String,
    /// The computer id, partition id or user name.
    pub name: String,
    /// The computer of a partition (empty for the other kinds).
    pub computer_reference: String,
    /// End of validity, seconds since the epoch.
    pub not_after: f64,
    /// When it was revoked (None: valid).
    pub revoked: Option<f64>,
}

/// A one-time token (only its SHA-256 is stored).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    /// Lowercase hex SHA-256 of the token.
    pub hash: String,
    /// `computer` (join a computer) or `user` (get a user certificate).
    pub kind: String,
    /// The computer id or user name it is for.
    pub name: String,
    /// Seconds since the epoch after which it is refused.
    pub expires: f64,
    /// When it was used (None: not yet).
    pub used: Option<f64>,
}

/// A request forwarded to another master (`[multimaster/<url>]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardRow {
    /// The title asked upstream: `<requester>_<title>`.
    pub reference: String,
    /// The master it went to (as configured).
    pub master_url: String,
    /// The software release requested.
    pub software_release: String,
    /// When it was last forwarded, seconds since the epoch.
    pub time: f64,
}

/// The instances a partition requested in its last run
/// (`updateComputerPartitionRelatedInstanceList`).
#[derive(Debug, Clone, PartialEq)]
pub struct RelatedRow {
    /// The computer of the partition that reported.
    pub computer_reference: String,
    /// The partition that reported.
    pub partition_reference: String,
    /// Instance titles, one per line.
    pub instances: String,
    /// When it reported, seconds since the epoch.
    pub time: f64,
}

/// How much node history the store keeps (`[slapproxy] report_history`,
/// `report_limit`, `usage_history`, `usage_limit`, `usage_movement_limit`,
/// `usage_movement_days`): the newest rows, older ones are deleted as new
/// ones come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// State reports kept per software release or partition.
    pub reports_per_object: usize,
    /// State reports kept in all (among the last ones received).
    pub reports: usize,
    /// Usage reports kept per computer.
    pub usage_per_computer: usize,
    /// Usage reports kept in all (among the last ones received).
    pub usage: usize,
    /// Usage movements (the accounting's rows) kept in all, the last
    /// received; and hourly sums, the last made.
    pub movements: usize,
    /// Usage movements are kept this many days after their time.
    pub movement_days: usize,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            reports_per_object: 20,
            reports: 100_000,
            usage_per_computer: 100,
            usage: 10_000,
            movements: 2_000_000,
            movement_days: 400,
        }
    }
}

/// One line of a consumption journal (`useComputer`), as the accounting
/// keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct MovementRow {
    /// When the consumption happened (the journal's `start_date`, else when
    /// it was received), seconds since the epoch.
    pub time: f64,
    /// The computer that reported it.
    pub computer_reference: String,
    /// The partition it is for (empty: the computer itself).
    pub partition_reference: String,
    /// The root title of the partition's instance tree when it was received.
    pub tree: Option<String>,
    /// What was consumed (`CPU Consumption`, `service_module/disk_used`).
    pub resource: String,
    /// The movement's title.
    pub title: String,
    /// How much.
    pub quantity: f64,
    /// The unit of `quantity` (`s`, `MiB`, `%`; empty when unknown).
    pub unit: String,
    /// When the master received it, seconds since the epoch.
    pub received: f64,
}

/// The sum of a partition's movements of one resource and unit in one hour
/// (`usage_hour`, made as movements come).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageHourRow {
    /// The computer.
    pub computer_reference: String,
    /// The partition (empty: the computer itself).
    pub partition_reference: String,
    /// The root title of its tree (empty: none).
    pub tree: String,
    /// The resource.
    pub resource: String,
    /// Its unit.
    pub unit: String,
    /// The hour's start, seconds since the epoch.
    pub start: i64,
    /// The sum of its movements.
    pub quantity: f64,
}

/// What [`Tx::usage_sums`] adds up: the movements of one scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One partition of one computer.
    Partition {
        /// The computer.
        computer: String,
        /// The partition.
        partition: String,
    },
    /// Every partition of an instance tree (by its root title).
    Tree(String),
    /// A computer, itself and its partitions.
    Computer(String),
}

/// The selection of [`Tx::usage_sums`].
#[derive(Debug, Clone, PartialEq)]
pub struct UsageQuery {
    /// Whose usage.
    pub scope: Scope,
    /// The width of a bucket in seconds (3600, 86400), aligned on the epoch (UTC).
    pub bucket: i64,
    /// Movements at or after this time (seconds since the epoch) …
    pub since: f64,
    /// … and before this one.
    pub until: f64,
    /// At most this many buckets.
    pub limit: usize,
    /// Only the movements of this instance tree too (a person who sees a
    /// partition through its tree sees only that tree's usage of it).
    pub tree: Option<String>,
}

/// One bucket of usage: the sum of the movements of one resource and unit
/// whose time falls in `[start, start + bucket)`.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageBucket {
    /// The resource.
    pub resource: String,
    /// Its unit.
    pub unit: String,
    /// The bucket's start, seconds since the epoch.
    pub start: i64,
    /// The sum of the quantities.
    pub quantity: f64,
}

/// The selection of [`Tx::events`] (every field given must match).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventFilter {
    /// The computer.
    pub computer: Option<String>,
    /// The partition (partition events only).
    pub partition: Option<String>,
    /// The root title of the instance tree.
    pub tree: Option<String>,
    /// Events at or after this time (seconds since the epoch) …
    pub since: f64,
    /// … and before this one.
    pub until: f64,
    /// At most this many, the newest.
    pub limit: usize,
}

/// The operations the master needs, inside one transaction. Lists come in
/// insertion order (which fixes the allocation order).
pub trait Tx {
    /// The computer `reference`.
    fn computer(&mut self, reference: &str) -> Result<Option<ComputerRow>, StoreError>;
    /// Every computer.
    fn computers(&mut self) -> Result<Vec<ComputerRow>, StoreError>;
    /// Inserts the computer or updates its address.
    fn upsert_computer(&mut self, row: &ComputerRow) -> Result<(), StoreError>;

    /// The partition `reference` of `computer`.
    fn partition(&mut self, computer: &str, reference: &str) -> Result<Option<PartitionRow>, StoreError>;
    /// The partitions of `computer` (every computer: `None`).
    fn partitions(&mut self, computer: Option<&str>) -> Result<Vec<PartitionRow>, StoreError>;
    /// The instance titled `title` in the tree of `requested_by`, any computer.
    fn partition_by_title(&mut self, title: &str, requested_by: &str) -> Result<Option<PartitionRow>, StoreError>;
    /// The instances of the request tree rooted at `root_title`.
    fn partitions_requested_by(&mut self, root_title: &str) -> Result<Vec<PartitionRow>, StoreError>;
    /// The first free partition of `computer`, in insertion order.
    fn first_free_partition(&mut self, computer: &str) -> Result<Option<PartitionRow>, StoreError>;
    /// First partition of `computer` running `software_release` (and
    /// `software_type`, and `reference` when given): the host of a shared instance.
    fn find_host(
        &mut self,
        computer: &str,
        software_release: &str,
        software_type: Option<&str>,
        reference: Option<&str>,
    ) -> Result<Option<PartitionRow>, StoreError>;
    /// Inserts the partition if missing (existing rows are left alone).
    fn insert_partition_if_missing(&mut self, computer: &str, reference: &str) -> Result<(), StoreError>;
    /// Writes every column of the row.
    fn update_partition(&mut self, row: &PartitionRow) -> Result<(), StoreError>;
    /// Deletes the partitions of `computer` not in `keep`; returns how many.
    fn delete_partitions_except(&mut self, computer: &str, keep: &[String]) -> Result<usize, StoreError>;
    /// Sets the partition's timestamp.
    fn set_timestamp(&mut self, computer: &str, reference: &str, timestamp: f64) -> Result<(), StoreError>;

    /// The software releases supplied to `computer` (every computer: `None`).
    fn software_releases(&mut self, computer: Option<&str>) -> Result<Vec<SoftwareRow>, StoreError>;
    /// Delete + insert: the row moves to the end of the list (as the proxy).
    fn upsert_software(&mut self, row: &SoftwareRow) -> Result<(), StoreError>;
    /// Forgets a software release of `computer`.
    fn delete_software(&mut self, computer: &str, url: &str) -> Result<(), StoreError>;

    /// The shared instance `reference` on `computer`.
    fn slave(&mut self, reference: &str, computer: &str) -> Result<Option<SlaveRow>, StoreError>;
    /// Every shared instance.
    fn slaves(&mut self) -> Result<Vec<SlaveRow>, StoreError>;
    /// Inserts a shared instance.
    fn insert_slave(&mut self, row: &SlaveRow) -> Result<(), StoreError>;
    /// Updates every slave row with that reference (any computer).
    fn update_slave_connection(&mut self, reference: &str, connection_xml: &str, hosted_by: &str) -> Result<(), StoreError>;
    /// Changes who requested a shared instance.
    fn update_slave_requester(&mut self, reference: &str, computer: &str, requester_id: &str) -> Result<(), StoreError>;
    /// Deletes the shared instances of `computer` whose host is not in `hosts`.
    fn delete_slaves_not_hosted_in(&mut self, computer: &str, hosts: &[String]) -> Result<(), StoreError>;

    /// The addresses of `partition` (of `computer` when given).
    fn addresses(&mut self, computer: Option<&str>, partition: &str) -> Result<Vec<AddressRow>, StoreError>;
    /// Every address of a computer's partitions, in insertion order.
    fn computer_addresses(&mut self, computer: &str) -> Result<Vec<AddressRow>, StoreError>;
    /// Replaces every address of `computer`'s partitions.
    fn replace_addresses(&mut self, computer: &str, rows: &[AddressRow]) -> Result<(), StoreError>;

    /// Records a report, then forgets the oldest beyond the [`Retention`].
    fn add_report(&mut self, row: &ReportRow) -> Result<(), StoreError>;
    /// Every report kept, oldest first.
    fn reports(&mut self) -> Result<Vec<ReportRow>, StoreError>;
    /// The last report of each (kind, computer, reference).
    fn last_reports(&mut self) -> Result<Vec<ReportRow>, StoreError>;
    /// Records a usage report, then forgets the oldest beyond the [`Retention`].
    fn add_usage(&mut self, row: &UsageRow) -> Result<(), StoreError>;
    /// The `limit` latest usage reports, newest first.
    fn usages(&mut self, limit: usize) -> Result<Vec<UsageRow>, StoreError>;
    /// Records usage movements, then forgets the oldest beyond the
    /// [`Retention`] (by count, and by age from the newest movement's time).
    fn add_movements(&mut self, rows: &[MovementRow]) -> Result<(), StoreError>;
    /// Every movement kept, in the order received (for `proxy migrate`).
    fn movements(&mut self) -> Result<Vec<MovementRow>, StoreError>;
    /// Every hourly sum, in the order made (for `proxy migrate`).
    fn usage_hours(&mut self) -> Result<Vec<UsageHourRow>, StoreError>;
    /// Replaces every hourly sum (`proxy migrate`: they outlive the
    /// movements they were made of).
    fn replace_usage_hours(&mut self, rows: &[UsageHourRow]) -> Result<(), StoreError>;
    /// The movements of a scope summed per resource, unit and bucket (in
    /// SQL, from the hourly sums kept as movements come: the hours that
    /// start from `since`'s hour and before `until`), ordered by resource,
    /// unit and start.
    fn usage_sums(&mut self, query: &UsageQuery) -> Result<Vec<UsageBucket>, StoreError>;
    /// The reports that match `filter`, newest first.
    fn events(&mut self, filter: &EventFilter) -> Result<Vec<ReportRow>, StoreError>;

    /// Records an issued certificate.
    fn add_certificate(&mut self, row: &CertificateRow) -> Result<(), StoreError>;
    /// The certificate with that serial, if the CA issued it.
    fn certificate(&mut self, serial: &str) -> Result<Option<CertificateRow>, StoreError>;
    /// Revokes every valid certificate of (kind, name, computer) at `time`;
    /// how many were revoked.
    fn revoke_certificates(&mut self, kind: &str, name: &str, computer: &str, time: f64) -> Result<usize, StoreError>;
    /// Forgets the certificates of `kind` that ended before `time` (they are
    /// refused by their end already); how many went.
    fn prune_certificates(&mut self, kind: &str, time: f64) -> Result<usize, StoreError>;
    /// Records a new token.
    fn add_token(&mut self, row: &TokenRow) -> Result<(), StoreError>;
    /// The token with that hash, as it was, marking it used at `time`.
    fn take_token(&mut self, hash: &str, time: f64) -> Result<Option<TokenRow>, StoreError>;
    /// The users who may use an object (`tree` title or `computer` id; `*`:
    /// every user).
    fn grantees(&mut self, kind: &str, reference: &str) -> Result<Vec<String>, StoreError>;
    /// Adds `user` to the users of an object.
    fn grant(&mut self, kind: &str, reference: &str, user: &str) -> Result<(), StoreError>;
    /// A value of the master's own settings (`local_software_release_root`).
    fn setting(&mut self, name: &str) -> Result<Option<String>, StoreError>;
    /// Sets a value of the master's own settings.
    fn set_setting(&mut self, name: &str, value: &str) -> Result<(), StoreError>;
    /// Records (or refreshes) a forwarded request.
    fn add_forward(&mut self, row: &ForwardRow) -> Result<(), StoreError>;
    /// Forgets a forwarded request.
    fn delete_forward(&mut self, reference: &str, master_url: &str) -> Result<(), StoreError>;
    /// Every forwarded request (`proxy show`).
    fn forwards(&mut self) -> Result<Vec<ForwardRow>, StoreError>;
    /// Replaces what a partition last said it requested.
    fn set_related(&mut self, row: &RelatedRow) -> Result<(), StoreError>;
    /// What every partition last said it requested (`proxy show`).
    fn related(&mut self) -> Result<Vec<RelatedRow>, StoreError>;
    /// Renames a software release URL in supplies and partitions; a supply
    /// of `new` already there for a computer wins over the renamed one.
    fn rename_software(&mut self, old: &str, new: &str) -> Result<(), StoreError>;
    /// Every issued certificate, by serial (for `proxy migrate`).
    fn certificates(&mut self) -> Result<Vec<CertificateRow>, StoreError>;
    /// Every token, by hash (for `proxy migrate`).
    fn tokens(&mut self) -> Result<Vec<TokenRow>, StoreError>;
    /// Every grant as (kind, reference, user) (for `proxy migrate`).
    fn grants(&mut self) -> Result<Vec<(String, String, String)>, StoreError>;
    /// Every setting as (name, value) (for `proxy migrate`).
    fn settings(&mut self) -> Result<Vec<(String, String)>, StoreError>;
    /// Holds, until the transaction ends, a lock named `name` that other
    /// transactions taking the same name wait for: two masters requesting
    /// the same instance title at once allocate it once. SQLite's single
    /// writer already serialises every write transaction (a no-op there).
    fn lock_name(&mut self, _name: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// The version of what a node reads about `computer` (0 before any
    /// change): the database bumps it on every change, whoever writes.
    fn computer_version(&mut self, computer: &str) -> Result<i64, StoreError>;
    /// The site's identity, drawn when its database was made (and so new
    /// after a migration to another database).
    fn site_id(&mut self) -> Result<String, StoreError>;
    /// How many [`MIGRATIONS`] the database has.
    fn schema_version(&mut self) -> Result<i64, StoreError>;
}

/// A storage backend: runs a closure in one transaction, committed when it
/// returns Ok and rolled back otherwise.
///
/// `f` may run more than once: a backend with concurrent writers
/// (PostgreSQL) runs it again after a serialisation failure or a deadlock,
/// on a fresh transaction, so it must not act outside the transaction.
pub trait Store: Send + Sync {
    /// Runs `f` in one write transaction.
    fn transaction<R, E: From<StoreError>>(&self, f: impl FnMut(&mut dyn Tx) -> Result<R, E>) -> Result<R, E>;
    /// A read-only transaction: a consistent snapshot, concurrent with other
    /// reads and with the writer. Writes through it fail.
    fn read<R, E: From<StoreError>>(&self, f: impl FnMut(&mut dyn Tx) -> Result<R, E>) -> Result<R, E>;
}

/// The schema, as a list of migrations for every backend: SQLite's
/// `user_version` (PostgreSQL's `schema_version` table) = how many were
/// applied. Write a new one once, as [`Migration::Portable`] SQL when it fits
/// the portable subset (see [`Migration`]), else side by side per backend.
pub const MIGRATIONS: &[Migration] = &[
    // 1: the SLAP data model (the Python proxy's schema 18, without its
    // version suffixes)
    Migration::Portable(
        "CREATE TABLE computer (
        reference TEXT PRIMARY KEY,
        address TEXT,
        netmask TEXT
     );
     CREATE TABLE software (
        url TEXT NOT NULL,
        computer_reference TEXT NOT NULL,
        requested_state TEXT NOT NULL DEFAULT 'available',
        PRIMARY KEY (url, computer_reference)
     );
     CREATE TABLE partition (
        reference TEXT NOT NULL,
        computer_reference TEXT NOT NULL,
        slap_state TEXT NOT NULL DEFAULT 'free',
        software_release TEXT,
        xml TEXT,
        connection_xml TEXT,
        slave_instance_list TEXT,
        software_type TEXT,
        partition_reference TEXT,
        requested_by TEXT NOT NULL DEFAULT '',
        requester_id TEXT NOT NULL DEFAULT '',
        requested_state TEXT NOT NULL DEFAULT 'started',
        timestamp REAL,
        PRIMARY KEY (reference, computer_reference)
     );
     CREATE INDEX partition_title ON partition (partition_reference, requested_by);
     CREATE INDEX partition_requested_by ON partition (requested_by);
     CREATE TABLE slave (
        reference TEXT NOT NULL,
        computer_reference TEXT NOT NULL,
        connection_xml TEXT,
        hosted_by TEXT,
        requester_id TEXT NOT NULL DEFAULT ''
     );
     CREATE INDEX slave_reference ON slave (reference, computer_reference);
     CREATE TABLE partition_network (
        partition_reference TEXT NOT NULL,
        computer_reference TEXT NOT NULL,
        reference TEXT NOT NULL,
        address TEXT NOT NULL,
        netmask TEXT NOT NULL
     );
     CREATE INDEX partition_network_partition ON partition_network (computer_reference, partition_reference);",
    ),
    // 2: what nodes report (the Python proxy ignores it)
    Migration::Portable(
        "CREATE TABLE report (
        kind TEXT NOT NULL,
        computer_reference TEXT NOT NULL,
        reference TEXT NOT NULL,
        state TEXT NOT NULL,
        message TEXT,
        time REAL NOT NULL
     );
     CREATE INDEX report_object ON report (kind, computer_reference, reference, time);
     CREATE TABLE usage (
        computer_reference TEXT NOT NULL,
        body TEXT NOT NULL,
        time REAL NOT NULL
     );",
    ),
    // 3: identities (proxy::ca, proxy::rules): issued certificates, one-time
    // tokens (hashed), which users may use which instance tree and computer
    Migration::Portable(
        "CREATE TABLE certificate (
        serial TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        computer_reference TEXT NOT NULL DEFAULT '',
        not_after REAL NOT NULL,
        revoked REAL
     );
     CREATE INDEX certificate_identity ON certificate (kind, name, computer_reference);
     CREATE TABLE token (
        hash TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        expires REAL NOT NULL,
        used REAL
     );
     CREATE TABLE grantee (
        kind TEXT NOT NULL,
        reference TEXT NOT NULL,
        username TEXT NOT NULL,
        PRIMARY KEY (kind, reference, username)
     );",
    ),
    // 4: the master's settings, forwarded requests (multimaster) and what
    // partitions say they requested
    Migration::Portable(
        "CREATE TABLE setting (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
     );
     CREATE TABLE forwarded_request (
        reference TEXT NOT NULL,
        master_url TEXT NOT NULL,
        software_release TEXT NOT NULL,
        time REAL NOT NULL,
        PRIMARY KEY (reference, master_url)
     );
     CREATE TABLE related_instance (
        computer_reference TEXT NOT NULL,
        partition_reference TEXT NOT NULL,
        instances TEXT NOT NULL,
        time REAL NOT NULL,
        PRIMARY KEY (computer_reference, partition_reference)
     );",
    ),
    // 5: a version per computer that every change of what its node reads
    // bumps (triggers: any writer, any master process), and the site's
    // identity; together they make the ETag of full computer information
    Migration::Generated(migrations::computer_versions),
    // 6: the accounting (proxy::accounting): reports carry the instance tree
    // of their partition, usage journals are read into movements, which are
    // also summed per hour as they come (`usage_hour`, tree '' for none)
    Migration::Portable(
        "ALTER TABLE report ADD COLUMN tree TEXT;
     CREATE INDEX report_time ON report (time);
     CREATE INDEX report_tree ON report (tree, time);
     CREATE TABLE usage_movement (
        time REAL NOT NULL,
        computer_reference TEXT NOT NULL,
        partition_reference TEXT NOT NULL DEFAULT '',
        tree TEXT,
        resource TEXT NOT NULL,
        title TEXT NOT NULL DEFAULT '',
        quantity REAL NOT NULL,
        unit TEXT NOT NULL DEFAULT '',
        received REAL NOT NULL
     );
     CREATE INDEX usage_movement_time ON usage_movement (time);
     CREATE TABLE usage_hour (
        computer_reference TEXT NOT NULL,
        partition_reference TEXT NOT NULL,
        tree TEXT NOT NULL,
        resource TEXT NOT NULL,
        unit TEXT NOT NULL,
        start INTEGER NOT NULL,
        quantity REAL NOT NULL,
        PRIMARY KEY (computer_reference, partition_reference, tree, resource, unit, start)
     );
     CREATE INDEX usage_hour_tree ON usage_hour (tree, start);
     CREATE INDEX usage_hour_computer ON usage_hour (computer_reference, start);
     CREATE INDEX usage_hour_partition ON usage_hour (computer_reference, partition_reference, start);",
    ),
    // 7: indexes a large site needs (bench/fleet, 100,000 partitions): a
    // computer's partitions (full information, the free-partition lookup)
    // and a partition reference's addresses on every computer (the request
    // answer's `ip_list`, slap-protocol.md quirk 11.7) were full scans
    Migration::Portable(
        "CREATE INDEX partition_computer ON partition (computer_reference, slap_state);
     CREATE INDEX partition_network_reference ON partition_network (partition_reference);",
    ),
];

/// The schema version this program writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub use migrations::{Backend, Migration};

/// A new random identity for a site's database.
pub fn new_site_id() -> String {
    use rand::Rng;
    rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(16).map(char::from).collect()
}

/// SQLite storage in one file.
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    read_only: bool,
    /// Idle read-only connections (WAL readers do not block the writer).
    readers: Mutex<Vec<Connection>>,
    retention: Retention,
}

impl SqliteStore {
    /// Opens (creating it if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_at_version(path, SCHEMA_VERSION)
    }

    /// Opens and migrates up to `version` (tests use it to build old databases).
    pub fn open_at_version(path: &Path, version: i64) -> Result<SqliteStore, StoreError> {
        let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        // WAL + NORMAL: a committed transaction survives the process being
        // killed (it is in the WAL); only a power loss may lose the last ones
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(open_err)?;
        if current > SCHEMA_VERSION {
            return Err(StoreError::TooNew { path: path.to_path_buf(), found: current, supported: SCHEMA_VERSION });
        }
        if current < version {
            let tx = conn.transaction().map_err(open_err)?;
            for (i, m) in MIGRATIONS.iter().enumerate().take(version as usize).skip(current as usize) {
                tx.execute_batch(&m.sql(Backend::Sqlite)).map_err(open_err)?;
                tracing::info!("database {}: migrated to schema version {}", path.display(), i + 1);
            }
            if version >= 3 {
                tx.execute("INSERT INTO meta (key, value) VALUES ('site_id', ?1) ON CONFLICT DO NOTHING", [new_site_id()])
                    .map_err(open_err)?;
            }
            tx.pragma_update(None, "user_version", version).map_err(open_err)?;
            tx.commit().map_err(open_err)?;
        }
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            read_only: false,
            readers: Mutex::new(Vec::new()),
            retention: Retention::default(),
        })
    }

    /// Opens an existing database without changing it (for `proxy show`).
    pub fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
        if !path.exists() {
            return Err(open_err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some("no such file".into()),
            )));
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(open_err)?;
        let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(open_err)?;
        if current != SCHEMA_VERSION {
            return Err(StoreError::TooNew { path: path.to_path_buf(), found: current, supported: SCHEMA_VERSION });
        }
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            read_only: true,
            readers: Mutex::new(Vec::new()),
            retention: Retention::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies the whole database to `<database>-backup-<suffix>` (before
    /// changing URLs in bulk), and returns that path.
    pub fn backup(&self, suffix: &str) -> Result<PathBuf, StoreError> {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!("-backup-{suffix}"));
        let target = PathBuf::from(name);
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute("VACUUM INTO ?1", [target.to_string_lossy()])?;
        Ok(target)
    }

    /// The same store, keeping `retention` of the node history.
    pub fn with_retention(mut self, retention: Retention) -> SqliteStore {
        self.retention = retention;
        self
    }
}

impl Store for SqliteStore {
    fn transaction<R, E: From<StoreError>>(&self, mut f: impl FnMut(&mut dyn Tx) -> Result<R, E>) -> Result<R, E> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        // IMMEDIATE: take the write lock up front, so that concurrent writers
        // wait (busy timeout) instead of failing with "database is locked"
        let behavior = if self.read_only { rusqlite::TransactionBehavior::Deferred } else { rusqlite::TransactionBehavior::Immediate };
        let tx = conn.transaction_with_behavior(behavior).map_err(StoreError::Sql)?;
        let mut stx = SqliteTx { tx: &tx, retention: self.retention };
        let result = f(&mut stx)?;
        tx.commit().map_err(StoreError::Sql)?;
        Ok(result)
    }

    fn read<R, E: From<StoreError>>(&self, mut f: impl FnMut(&mut dyn Tx) -> Result<R, E>) -> Result<R, E> {
        if self.read_only {
            return self.transaction(f);
        }
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(StoreError::Sql)?;
                c.busy_timeout(Duration::from_secs(30)).map_err(StoreError::Sql)?;
                c
            }
        };
        let result = (|| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred).map_err(StoreError::Sql)?;
            let mut stx = SqliteTx { tx: &tx, retention: self.retention };
            let result = f(&mut stx)?;
            tx.commit().map_err(StoreError::Sql)?;
            Ok(result)
        })();
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if readers.len() < 8 {
            readers.push(conn);
        }
        result
    }
}

/// [`Tx`] on a SQLite transaction.
pub struct SqliteTx<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    retention: Retention,
}

/// The tree of a partition report added without one: the root title of the
/// partition named by the report's kind (`?1`), computer (`?2`) and
/// reference (`?3`) (PostgreSQL's placeholders are renamed).
const TREE_OF_REPORT: &str = "CASE WHEN ?1 = 'partition' THEN
       (SELECT CASE WHEN requested_by = '' THEN NULLIF(partition_reference, '') ELSE requested_by END
        FROM partition WHERE computer_reference = ?2 AND reference = ?3) END";

/// The columns of `usage_movement`, in [`MovementRow`]'s order.
const MOVEMENT_COLUMNS: &str = "time, computer_reference, partition_reference, tree, resource, title, quantity, unit, received";

/// The SQL condition of a usage query's scope (and tree) and its
/// arguments, numbered from 5 with the backend's placeholder (`?` or `$`).
fn scope_condition(q: &UsageQuery, placeholder: char) -> (String, Vec<String>) {
    let (mut cond, mut args) = match &q.scope {
        Scope::Partition { computer, partition } => (
            format!("computer_reference = {placeholder}5 AND partition_reference = {placeholder}6"),
            vec![computer.clone(), partition.clone()],
        ),
        Scope::Tree(t) => (format!("tree = {placeholder}5"), vec![t.clone()]),
        Scope::Computer(c) => (format!("computer_reference = {placeholder}5"), vec![c.clone()]),
    };
    if let Some(t) = &q.tree {
        args.push(t.clone());
        cond += &format!(" AND tree = {placeholder}{}", args.len() + 4);
    }
    (cond, args)
}

/// The columns of `usage_hour`, in [`UsageHourRow`]'s order.
const HOUR_COLUMNS: &str = "computer_reference, partition_reference, tree, resource, unit, start, quantity";

/// Adds a movement to its hour of `usage_hour` (placeholders of SQLite,
/// renamed for PostgreSQL): computer, partition, tree, resource, unit,
/// hour, quantity.
const ADD_TO_HOUR: &str = "INSERT INTO usage_hour (computer_reference, partition_reference, tree, resource, unit, start, quantity)";
const ADD_TO_HOUR_CONFLICT: &str = "ON CONFLICT (computer_reference, partition_reference, tree, resource, unit, start)
     DO UPDATE SET quantity = usage_hour.quantity + excluded.quantity";

/// The start of the UTC hour of `time`.
fn hour_of(time: f64) -> i64 {
    (time / 3600.0).floor() as i64 * 3600
}

/// Movements older than this are forgotten after `rows` were added: the
/// retention's days before the newest reception.
fn movement_cutoff(rows: &[MovementRow], retention: &Retention) -> Option<f64> {
    let newest = rows.iter().map(|m| m.received).fold(f64::NAN, f64::max);
    (!newest.is_nan()).then_some(newest - retention.movement_days as f64 * 86400.0)
}

const PARTITION_COLUMNS: &str = "reference, computer_reference, slap_state, software_release, xml, connection_xml, \
     slave_instance_list, software_type, partition_reference, requested_by, requester_id, requested_state, timestamp";

fn partition_row(r: &Row) -> rusqlite::Result<PartitionRow> {
    Ok(PartitionRow {
        reference: r.get(0)?,
        computer_reference: r.get(1)?,
        slap_state: r.get(2)?,
        software_release: r.get(3)?,
        xml: r.get(4)?,
        connection_xml: r.get(5)?,
        slave_instance_list: r.get(6)?,
        software_type: r.get(7)?,
        partition_reference: r.get(8)?,
        requested_by: r.get(9)?,
        requester_id: r.get(10)?,
        requested_state: r.get(11)?,
        timestamp: r.get(12)?,
    })
}

fn address_row(r: &Row) -> rusqlite::Result<AddressRow> {
    Ok(AddressRow {
        partition_reference: r.get(0)?,
        computer_reference: r.get(1)?,
        interface: r.get(2)?,
        address: r.get(3)?,
        netmask: r.get(4)?,
    })
}

fn slave_row(r: &Row) -> rusqlite::Result<SlaveRow> {
    Ok(SlaveRow {
        reference: r.get(0)?,
        computer_reference: r.get(1)?,
        connection_xml: r.get(2)?,
        hosted_by: r.get(3)?,
        requester_id: r.get(4)?,
    })
}

impl SqliteTx<'_> {
    fn partitions_where(&mut self, cond: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<PartitionRow>, StoreError> {
        let sql = format!("SELECT {PARTITION_COLUMNS} FROM partition {cond} ORDER BY rowid");
        let mut st = self.tx.prepare_cached(&sql)?;
        let rows = st.query_map(args, partition_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
    fn partition_where(&mut self, cond: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Option<PartitionRow>, StoreError> {
        let sql = format!("SELECT {PARTITION_COLUMNS} FROM partition {cond} ORDER BY rowid LIMIT 1");
        let mut st = self.tx.prepare_cached(&sql)?;
        Ok(st.query_row(args, partition_row).optional()?)
    }
}

impl Tx for SqliteTx<'_> {
    fn computer(&mut self, reference: &str) -> Result<Option<ComputerRow>, StoreError> {
        let mut st = self.tx.prepare_cached("SELECT reference, address, netmask FROM computer WHERE reference = ?1")?;
        Ok(st.query_row([reference], |r| Ok(ComputerRow { reference: r.get(0)?, address: r.get(1)?, netmask: r.get(2)? })).optional()?)
    }
    fn computers(&mut self) -> Result<Vec<ComputerRow>, StoreError> {
        let mut st = self.tx.prepare_cached("SELECT reference, address, netmask FROM computer ORDER BY rowid")?;
        let rows = st
            .query_map([], |r| Ok(ComputerRow { reference: r.get(0)?, address: r.get(1)?, netmask: r.get(2)? }))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
    fn upsert_computer(&mut self, row: &ComputerRow) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO computer (reference, address, netmask) VALUES (?1, ?2, ?3)
             ON CONFLICT (reference) DO UPDATE SET address = excluded.address, netmask = excluded.netmask",
            params![row.reference, row.address, row.netmask],
        )?;
        Ok(())
    }

    fn partition(&mut self, computer: &str, reference: &str) -> Result<Option<PartitionRow>, StoreError> {
        self.partition_where("WHERE reference = ?1 AND computer_reference = ?2", &[&reference, &computer])
    }
    fn partitions(&mut self, computer: Option<&str>) -> Result<Vec<PartitionRow>, StoreError> {
        match computer {
            Some(c) => self.partitions_where("WHERE computer_reference = ?1", &[&c]),
            None => self.partitions_where("", &[]),
        }
    }
    fn partition_by_title(&mut self, title: &str, requested_by: &str) -> Result<Option<PartitionRow>, StoreError> {
        self.partition_where("WHERE partition_reference = ?1 AND requested_by = ?2", &[&title, &requested_by])
    }
    fn partitions_requested_by(&mut self, root_title: &str) -> Result<Vec<PartitionRow>, StoreError> {
        self.partitions_where("WHERE requested_by = ?1", &[&root_title])
    }
    fn first_free_partition(&mut self, computer: &str) -> Result<Option<PartitionRow>, StoreError> {
        self.partition_where("WHERE slap_state = 'free' AND computer_reference = ?1", &[&computer])
    }
    fn find_host(
        &mut self,
        computer: &str,
        software_release: &str,
        software_type: Option<&str>,
        reference: Option<&str>,
    ) -> Result<Option<PartitionRow>, StoreError> {
        match (software_type, reference) {
            (None, None) => {
                self.partition_where("WHERE software_release = ?1 AND computer_reference = ?2", &[&software_release, &computer])
            }
            (Some(t), None) => self.partition_where(
                "WHERE software_release = ?1 AND computer_reference = ?2 AND software_type = ?3",
                &[&software_release, &computer, &t],
            ),
            (None, Some(r)) => self.partition_where(
                "WHERE software_release = ?1 AND computer_reference = ?2 AND reference = ?3",
                &[&software_release, &computer, &r],
            ),
            (Some(t), Some(r)) => self.partition_where(
                "WHERE software_release = ?1 AND computer_reference = ?2 AND software_type = ?3 AND reference = ?4",
                &[&software_release, &computer, &t, &r],
            ),
        }
    }
    fn insert_partition_if_missing(&mut self, computer: &str, reference: &str) -> Result<(), StoreError> {
        self.tx.execute("INSERT OR IGNORE INTO partition (reference, computer_reference) VALUES (?1, ?2)", params![reference, computer])?;
        Ok(())
    }
    fn update_partition(&mut self, p: &PartitionRow) -> Result<(), StoreError> {
        let mut st = self.tx.prepare_cached(
            "UPDATE partition SET slap_state = ?3, software_release = ?4, xml = ?5, connection_xml = ?6,
                slave_instance_list = ?7, software_type = ?8, partition_reference = ?9, requested_by = ?10,
                requester_id = ?11, requested_state = ?12, timestamp = ?13
             WHERE reference = ?1 AND computer_reference = ?2",
        )?;
        st.execute(params![
            p.reference,
            p.computer_reference,
            p.slap_state,
            p.software_release,
            p.xml,
            p.connection_xml,
            p.slave_instance_list,
            p.software_type,
            p.partition_reference,
            p.requested_by,
            p.requester_id,
            p.requested_state,
            p.timestamp
        ])?;
        Ok(())
    }
    fn delete_partitions_except(&mut self, computer: &str, keep: &[String]) -> Result<usize, StoreError> {
        let existing = self.partitions(Some(computer))?;
        let mut n = 0;
        for p in existing.iter().filter(|p| !keep.contains(&p.reference)) {
            n += self
                .tx
                .execute("DELETE FROM partition WHERE reference = ?1 AND computer_reference = ?2", params![p.reference, computer])?;
        }
        Ok(n)
    }
    fn set_timestamp(&mut self, computer: &str, reference: &str, timestamp: f64) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE partition SET timestamp = ?3 WHERE reference = ?1 AND computer_reference = ?2",
            params![reference, computer, timestamp],
        )?;
        Ok(())
    }

    fn software_releases(&mut self, computer: Option<&str>) -> Result<Vec<SoftwareRow>, StoreError> {
        let map = |r: &Row| Ok(SoftwareRow { url: r.get(0)?, computer_reference: r.get(1)?, requested_state: r.get(2)? });
        let rows = match computer {
            Some(c) => {
                let mut st = self.tx.prepare_cached(
                    "SELECT url, computer_reference, requested_state FROM software WHERE computer_reference = ?1 ORDER BY rowid",
                )?;
                let v = st.query_map([c], map)?.collect::<Result<Vec<_>, _>>()?;
                v
            }
            None => {
                let mut st = self.tx.prepare_cached("SELECT url, computer_reference, requested_state FROM software ORDER BY rowid")?;
                let v = st.query_map([], map)?.collect::<Result<Vec<_>, _>>()?;
                v
            }
        };
        Ok(rows)
    }
    fn upsert_software(&mut self, row: &SoftwareRow) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO software (url, computer_reference, requested_state) VALUES (?1, ?2, ?3)",
            params![row.url, row.computer_reference, row.requested_state],
        )?;
        Ok(())
    }
    fn delete_software(&mut self, computer: &str, url: &str) -> Result<(), StoreError> {
        self.tx.execute("DELETE FROM software WHERE url = ?1 AND computer_reference = ?2", params![url, computer])?;
        Ok(())
    }

    fn slave(&mut self, reference: &str, computer: &str) -> Result<Option<SlaveRow>, StoreError> {
        let mut st = self.tx.prepare_cached(
            "SELECT reference, computer_reference, connection_xml, hosted_by, requester_id FROM slave
             WHERE reference = ?1 AND computer_reference = ?2 ORDER BY rowid LIMIT 1",
        )?;
        Ok(st.query_row(params![reference, computer], slave_row).optional()?)
    }
    fn slaves(&mut self) -> Result<Vec<SlaveRow>, StoreError> {
        let mut st = self
            .tx
            .prepare_cached("SELECT reference, computer_reference, connection_xml, hosted_by, requester_id FROM slave ORDER BY rowid")?;
        let rows = st.query_map([], slave_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
    fn insert_slave(&mut self, row: &SlaveRow) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO slave (reference, computer_reference, connection_xml, hosted_by, requester_id) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![row.reference, row.computer_reference, row.connection_xml, row.hosted_by, row.requester_id],
        )?;
        Ok(())
    }
    fn update_slave_connection(&mut self, reference: &str, connection_xml: &str, hosted_by: &str) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE slave SET connection_xml = ?2, hosted_by = ?3 WHERE reference = ?1",
            params![reference, connection_xml, hosted_by],
        )?;
        Ok(())
    }
    fn update_slave_requester(&mut self, reference: &str, computer: &str, requester_id: &str) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE slave SET requester_id = ?3 WHERE reference = ?1 AND computer_reference = ?2",
            params![reference, computer, requester_id],
        )?;
        Ok(())
    }
    fn delete_slaves_not_hosted_in(&mut self, computer: &str, hosts: &[String]) -> Result<(), StoreError> {
        let rows = self.slaves()?;
        for s in rows.iter().filter(|s| s.computer_reference == computer) {
            let hosted_here = s.hosted_by.as_ref().is_some_and(|h| hosts.contains(h));
            if !hosted_here {
                self.tx.execute("DELETE FROM slave WHERE reference = ?1 AND computer_reference = ?2", params![s.reference, computer])?;
            }
        }
        Ok(())
    }

    fn addresses(&mut self, computer: Option<&str>, partition: &str) -> Result<Vec<AddressRow>, StoreError> {
        let map = address_row;
        let rows = match computer {
            Some(c) => {
                let mut st = self.tx.prepare_cached(
                    "SELECT partition_reference, computer_reference, reference, address, netmask FROM partition_network
                     WHERE computer_reference = ?1 AND partition_reference = ?2 ORDER BY rowid",
                )?;
                let v = st.query_map(params![c, partition], map)?.collect::<Result<Vec<_>, _>>()?;
                v
            }
            None => {
                let mut st = self.tx.prepare_cached(
                    "SELECT partition_reference, computer_reference, reference, address, netmask FROM partition_network
                     WHERE partition_reference = ?1 ORDER BY rowid",
                )?;
                let v = st.query_map(params![partition], map)?.collect::<Result<Vec<_>, _>>()?;
                v
            }
        };
        Ok(rows)
    }
    fn computer_addresses(&mut self, computer: &str) -> Result<Vec<AddressRow>, StoreError> {
        let mut st = self.tx.prepare_cached(
            "SELECT partition_reference, computer_reference, reference, address, netmask FROM partition_network
             WHERE computer_reference = ?1 ORDER BY rowid",
        )?;
        let rows = st.query_map([computer], address_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
    fn replace_addresses(&mut self, computer: &str, rows: &[AddressRow]) -> Result<(), StoreError> {
        self.tx.execute("DELETE FROM partition_network WHERE computer_reference = ?1", [computer])?;
        let mut st = self.tx.prepare_cached(
            "INSERT INTO partition_network (partition_reference, computer_reference, reference, address, netmask)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for a in rows {
            st.execute(params![a.partition_reference, computer, a.interface, a.address, a.netmask])?;
        }
        Ok(())
    }

    fn add_report(&mut self, r: &ReportRow) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO report (kind, computer_reference, reference, state, message, time, tree)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, COALESCE(?7, {TREE_OF_REPORT}))"
        );
        self.tx.execute(&sql, params![r.kind, r.computer_reference, r.reference, r.state, r.message, r.time, r.tree])?;
        let mut st = self.tx.prepare_cached(
            "DELETE FROM report WHERE kind = ?1 AND computer_reference = ?2 AND reference = ?3 AND rowid NOT IN
               (SELECT rowid FROM report WHERE kind = ?1 AND computer_reference = ?2 AND reference = ?3
                ORDER BY rowid DESC LIMIT ?4)",
        )?;
        st.execute(params![r.kind, r.computer_reference, r.reference, self.retention.reports_per_object as i64])?;
        // rowids grow with each insert: the last N inserted are those above MAX - N
        let mut st = self.tx.prepare_cached("DELETE FROM report WHERE rowid <= (SELECT MAX(rowid) FROM report) - ?1")?;
        st.execute([self.retention.reports as i64])?;
        Ok(())
    }
    fn reports(&mut self) -> Result<Vec<ReportRow>, StoreError> {
        let mut st =
            self.tx.prepare_cached("SELECT kind, computer_reference, reference, state, message, time, tree FROM report ORDER BY rowid")?;
        let rows = st
            .query_map([], |r| {
                Ok(ReportRow {
                    kind: r.get(0)?,
                    computer_reference: r.get(1)?,
                    reference: r.get(2)?,
                    state: r.get(3)?,
                    message: r.get(4)?,
                    time: r.get(5)?,
                    tree: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
    fn last_reports(&mut self) -> Result<Vec<ReportRow>, StoreError> {
        let mut st = self.tx.prepare_cached(
            "SELECT kind, computer_reference, reference, state, message, MAX(time), tree FROM report
             GROUP BY kind, computer_reference, reference ORDER BY kind, computer_reference, reference",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(ReportRow {
                    kind: r.get(0)?,
                    computer_reference: r.get(1)?,
                    reference: r.get(2)?,
                    state: r.get(3)?,
                    message: r.get(4)?,
                    time: r.get(5)?,
                    tree: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
    fn add_usage(&mut self, u: &UsageRow) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO usage (computer_reference, body, time) VALUES (?1, ?2, ?3)",
            params![u.computer_reference, u.body, u.time],
        )?;
        let mut st = self.tx.prepare_cached(
            "DELETE FROM usage WHERE computer_reference = ?1 AND rowid NOT IN
               (SELECT rowid FROM usage WHERE computer_reference = ?1 ORDER BY rowid DESC LIMIT ?2)",
        )?;
        st.execute(params![u.computer_reference, self.retention.usage_per_computer as i64])?;
        let mut st = self.tx.prepare_cached("DELETE FROM usage WHERE rowid <= (SELECT MAX(rowid) FROM usage) - ?1")?;
        st.execute([self.retention.usage as i64])?;
        Ok(())
    }
    fn usages(&mut self, limit: usize) -> Result<Vec<UsageRow>, StoreError> {
        let mut st = self.tx.prepare_cached("SELECT computer_reference, body, time FROM usage ORDER BY time DESC LIMIT ?1")?;
        let rows = st
            .query_map([limit as i64], |r| Ok(UsageRow { computer_reference: r.get(0)?, body: r.get(1)?, time: r.get(2)? }))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
    fn add_movements(&mut self, rows: &[MovementRow]) -> Result<(), StoreError> {
        let mut st = self
            .tx
            .prepare_cached(&format!("INSERT INTO usage_movement ({MOVEMENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"))?;
        for m in rows {
            st.execute(params![
                m.time,
                m.computer_reference,
                m.partition_reference,
                m.tree,
                m.resource,
                m.title,
                m.quantity,
                m.unit,
                m.received
            ])?;
        }
        let mut st = self.tx.prepare_cached(&format!("{ADD_TO_HOUR} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) {ADD_TO_HOUR_CONFLICT}"))?;
        for m in rows {
            let tree = m.tree.as_deref().unwrap_or("");
            st.execute(params![m.computer_reference, m.partition_reference, tree, m.resource, m.unit, hour_of(m.time), m.quantity])?;
        }
        for table in ["usage_movement", "usage_hour"] {
            let mut st = self.tx.prepare_cached(&format!("DELETE FROM {table} WHERE rowid <= (SELECT MAX(rowid) FROM {table}) - ?1"))?;
            st.execute([self.retention.movements as i64])?;
        }
        if let Some(cutoff) = movement_cutoff(rows, &self.retention) {
            self.tx.prepare_cached("DELETE FROM usage_movement WHERE time < ?1")?.execute([cutoff])?;
            self.tx.prepare_cached("DELETE FROM usage_hour WHERE start < ?1")?.execute([cutoff.floor() as i64])?;
        }
        Ok(())
    }
    fn movements(&mut self) -> Result<Vec<MovementRow>, StoreError> {
        let mut st = self.tx.prepare_cached(&format!("SELECT {MOVEMENT_COLUMNS} FROM usage_movement ORDER BY rowid"))?;
        let rows = st
            .query_map([], |r| {
                Ok(MovementRow {
                    time: r.get(0)?,
                    computer_reference: r.get(1)?,
                    partition_reference: r.get(2)?,
                    tree: r.get(3)?,
                    resource: r.get(4)?,
                    title: r.get(5)?,
                    quantity: r.get(6)?,
                    unit: r.get(7)?,
                    received: r.get(8)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
    fn usage_hours(&mut self) -> Result<Vec<UsageHourRow>, StoreError> {
        let mut st = self.tx.prepare_cached(&format!("SELECT {HOUR_COLUMNS} FROM usage_hour ORDER BY rowid"))?;
        let rows = st
            .query_map([], |r| {
                Ok(UsageHourRow {
                    computer_reference: r.get(0)?,
                    partition_reference: r.get(1)?,
                    tree: r.get(2)?,
                    resource: r.get(3)?,
                    unit: r.get(4)?,
                    start: r.get(5)?,
                    quantity: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
    fn replace_usage_hours(&mut self, rows: &[UsageHourRow]) -> Result<(), StoreError> {
        self.tx.execute("DELETE FROM usage_hour", [])?;
        let mut st = self.tx.prepare_cached(&format!("INSERT INTO usage_hour ({HOUR_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"))?;
        for h in rows {
            st.execute(params![h.computer_reference, h.partition_reference, h.tree, h.resource, h.unit, h.start, h.quantity])?;
        }
        Ok(())
    }
    fn usage_sums(&mut self, q: &UsageQuery) -> Result<Vec<UsageBucket>, StoreError> {
        let (cond, scope_args) = scope_condition(q, '?');
        // hours are not negative (the query's window starts at 0 at the earliest)
        let sql = format!(
            "SELECT resource, unit, (start / ?1) * ?1 AS bucket, SUM(quantity) FROM usage_hour
             WHERE start >= ?2 AND start < ?3 AND {cond}
             GROUP BY resource, unit, bucket ORDER BY resource, unit, bucket LIMIT ?4"
        );
        let mut st = self.tx.prepare_cached(&sql)?;
        let mut args: Vec<rusqlite::types::Value> =
            vec![q.bucket.into(), hour_of(q.since.max(0.0)).into(), (q.until.ceil() as i64).into(), (q.limit as i64).into()];
        args.extend(scope_args.into_iter().map(rusqlite::types::Value::from));
        let rows = st
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok(UsageBucket { resource: r.get(0)?, unit: r.get(1)?, start: r.get(2)?, quantity: r.get(3)? })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
    fn events(&mut self, f: &EventFilter) -> Result<Vec<ReportRow>, StoreError> {
        let mut st = self.tx.prepare_cached(
            "SELECT kind, computer_reference, reference, state, message, time, tree FROM report
             WHERE time >= ?1 AND time < ?2 AND (?3 IS NULL OR computer_reference = ?3)
               AND (?4 IS NULL OR (kind = 'partition' AND reference = ?4)) AND (?5 IS NULL OR tree = ?5)
             ORDER BY time DESC, rowid DESC LIMIT ?6",
        )?;
        let rows = st
            .query_map(params![f.since, f.until, f.computer, f.partition, f.tree, f.limit as i64], |r| {
                Ok(ReportRow {
                    kind: r.get(0)?,
                    computer_reference: r.get(1)?,
                    reference: r.get(2)?,
                    state: r.get(3)?,
                    message: r.get(4)?,
                    time: r.get(5)?,
                    tree: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn add_certificate(&mut self, c: &CertificateRow) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO certificate (serial, kind, name, computer_reference, not_after, revoked) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![c.serial, c.kind, c.name, c.computer_reference, c.not_after, c.revoked],
        )?;
        Ok(())
    }
    fn certificate(&mut self, serial: &str) -> Result<Option<CertificateRow>, StoreError> {
        let mut st = self
            .tx
            .prepare_cached("SELECT serial, kind, name, computer_reference, not_after, revoked FROM certificate WHERE serial = ?1")?;
        Ok(st
            .query_row([serial], |r| {
                Ok(CertificateRow {
                    serial: r.get(0)?,
                    kind: r.get(1)?,
                    name: r.get(2)?,
                    computer_reference: r.get(3)?,
                    not_after: r.get(4)?,
                    revoked: r.get(5)?,
                })
            })
            .optional()?)
    }
    fn revoke_certificates(&mut self, kind: &str, name: &str, computer: &str, time: f64) -> Result<usize, StoreError> {
        Ok(self.tx.execute(
            "UPDATE certificate SET revoked = ?4 WHERE kind = ?1 AND name = ?2 AND computer_reference = ?3 AND revoked IS NULL",
            params![kind, name, computer, time],
        )?)
    }
    fn prune_certificates(&mut self, kind: &str, time: f64) -> Result<usize, StoreError> {
        Ok(self.tx.execute("DELETE FROM certificate WHERE kind = ?1 AND not_after < ?2", params![kind, time])?)
    }
    fn add_token(&mut self, t: &TokenRow) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO token (hash, kind, name, expires, used) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![t.hash, t.kind, t.name, t.expires, t.used],
        )?;
        Ok(())
    }
    fn take_token(&mut self, hash: &str, time: f64) -> Result<Option<TokenRow>, StoreError> {
        let mut st = self.tx.prepare_cached("SELECT hash, kind, name, expires, used FROM token WHERE hash = ?1")?;
        let row = st
            .query_row([hash], |r| Ok(TokenRow { hash: r.get(0)?, kind: r.get(1)?, name: r.get(2)?, expires: r.get(3)?, used: r.get(4)? }))
            .optional()?;
        if row.as_ref().is_some_and(|t| t.used.is_none()) {
            self.tx.execute("UPDATE token SET used = ?2 WHERE hash = ?1", params![hash, time])?;
        }
        Ok(row)
    }
    fn grantees(&mut self, kind: &str, reference: &str) -> Result<Vec<String>, StoreError> {
        let mut st = self.tx.prepare_cached("SELECT username FROM grantee WHERE kind = ?1 AND reference = ?2 ORDER BY username")?;
        let rows = st.query_map([kind, reference], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
        Ok(rows)
    }
    fn grant(&mut self, kind: &str, reference: &str, user: &str) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO grantee (kind, reference, username) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![kind, reference, user],
        )?;
        Ok(())
    }
    fn setting(&mut self, name: &str) -> Result<Option<String>, StoreError> {
        let mut st = self.tx.prepare_cached("SELECT value FROM setting WHERE name = ?1")?;
        Ok(st.query_row([name], |r| r.get(0)).optional()?)
    }
    fn set_setting(&mut self, name: &str, value: &str) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO setting (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            params![name, value],
        )?;
        Ok(())
    }
    fn add_forward(&mut self, f: &ForwardRow) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO forwarded_request (reference, master_url, software_release, time) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (reference, master_url) DO UPDATE SET software_release = excluded.software_release, time = excluded.time",
            params![f.reference, f.master_url, f.software_release, f.time],
        )?;
        Ok(())
    }
    fn delete_forward(&mut self, reference: &str, master_url: &str) -> Result<(), StoreError> {
        self.tx.execute("DELETE FROM forwarded_request WHERE reference = ?1 AND master_url = ?2", params![reference, master_url])?;
        Ok(())
    }
    fn forwards(&mut self) -> Result<Vec<ForwardRow>, StoreError> {
        let mut st = self
            .tx
            .prepare_cached("SELECT reference, master_url, software_release, time FROM forwarded_request ORDER BY master_url, reference")?;
        let rows = st
            .query_map([], |r| {
                Ok(ForwardRow { reference: r.get(0)?, master_url: r.get(1)?, software_release: r.get(2)?, time: r.get(3)? })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
    fn set_related(&mut self, row: &RelatedRow) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO related_instance (computer_reference, partition_reference, instances, time) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (computer_reference, partition_reference)
             DO UPDATE SET instances = excluded.instances, time = excluded.time",
            params![row.computer_reference, row.partition_reference, row.instances, row.time],
        )?;
        Ok(())
    }
    fn related(&mut self) -> Result<Vec<RelatedRow>, StoreError> {
        let mut st = self.tx.prepare_cached(
            "SELECT computer_reference, partition_reference, instances, time FROM related_instance
             ORDER BY computer_reference, partition_reference",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(RelatedRow { computer_reference: r.get(0)?, partition_reference: r.get(1)?, instances: r.get(2)?, time: r.get(3)? })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
    fn certificates(&mut self) -> Result<Vec<CertificateRow>, StoreError> {
        let mut st =
            self.tx.prepare_cached("SELECT serial, kind, name, computer_reference, not_after, revoked FROM certificate ORDER BY serial")?;
        let rows = st
            .query_map([], |r| {
                Ok(CertificateRow {
                    serial: r.get(0)?,
                    kind: r.get(1)?,
                    name: r.get(2)?,
                    computer_reference: r.get(3)?,
                    not_after: r.get(4)?,
                    revoked: r.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
    fn tokens(&mut self) -> Result<Vec<TokenRow>, StoreError> {
        let mut st = self.tx.prepare_cached("SELECT hash, kind, name, expires, used FROM token ORDER BY hash")?;
        let rows = st
            .query_map([], |r| Ok(TokenRow { hash: r.get(0)?, kind: r.get(1)?, name: r.get(2)?, expires: r.get(3)?, used: r.get(4)? }))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
    fn grants(&mut self) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut st = self.tx.prepare_cached("SELECT kind, reference, username FROM grantee ORDER BY kind, reference, username")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
    fn settings(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let mut st = self.tx.prepare_cached("SELECT name, value FROM setting ORDER BY name")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
    fn rename_software(&mut self, old: &str, new: &str) -> Result<(), StoreError> {
        self.tx.execute(
            "DELETE FROM software WHERE url = ?1 AND computer_reference IN
               (SELECT computer_reference FROM software WHERE url = ?2)",
            params![old, new],
        )?;
        self.tx.execute("UPDATE software SET url = ?2 WHERE url = ?1", params![old, new])?;
        self.tx.execute("UPDATE partition SET software_release = ?2 WHERE software_release = ?1", params![old, new])?;
        Ok(())
    }
    fn computer_version(&mut self, computer: &str) -> Result<i64, StoreError> {
        let mut st = self.tx.prepare_cached("SELECT version FROM computer_version WHERE computer_reference = ?1")?;
        Ok(st.query_row([computer], |r| r.get(0)).optional()?.unwrap_or(0))
    }
    fn site_id(&mut self) -> Result<String, StoreError> {
        let mut st = self.tx.prepare_cached("SELECT value FROM meta WHERE key = 'site_id'")?;
        Ok(st.query_row([], |r| r.get(0)).optional()?.unwrap_or_default())
    }
    fn schema_version(&mut self) -> Result<i64, StoreError> {
        Ok(self.tx.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }
}
