//! The PostgreSQL store: several master processes on one database.
//!
//! The synchronous `postgres` client (the store is called on tokio's
//! blocking pool, as SQLite is) behind an r2d2 pool. One transaction per
//! write request, as on SQLite; concurrency comes from row locks: rows a
//! write transaction reads are locked (`FOR UPDATE`), a free partition is
//! taken with `FOR UPDATE SKIP LOCKED` (two masters allocating at once get
//! different partitions), and a named advisory lock ([`Tx::lock_name`])
//! serialises requests for one instance title. A transaction that fails with
//! a serialisation failure, a deadlock or a lost insert race is run again.
//!
//! TLS: `sslrootcert=<CA file>` in the URI (libpq's parameter, so the same
//! URI works with `psql`) makes every connection TLS, the server's
//! certificate verified against that CA and its name against the host;
//! without it connections are plain (a unix socket, a private network) and
//! `sslmode=require` is refused rather than left unverified.

use std::time::Duration;

use postgres::config::SslMode;
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{IsolationLevel, Row, Transaction};
use r2d2_postgres::{r2d2, PostgresConnectionManager};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    hide_password, hour_of, movement_cutoff, scope_condition, AddressRow, Backend, CertificateRow, ComputerRow, EventFilter, ForwardRow,
    MovementRow, PartitionRow, RelatedRow, ReportRow, Retention, SlaveRow, SoftwareRow, Store, StoreError, TokenRow, Tx, UsageBucket,
    UsageHourRow, UsageQuery, UsageRow, ADD_TO_HOUR, ADD_TO_HOUR_CONFLICT, HOUR_COLUMNS, MIGRATIONS, MOVEMENT_COLUMNS, PARTITION_COLUMNS,
    SCHEMA_VERSION, TREE_OF_REPORT,
};

/// How write transactions keep concurrent masters apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// READ COMMITTED with row locks (`FOR UPDATE`, `SKIP LOCKED` for free
    /// partitions) and advisory locks on instance titles: the default.
    #[default]
    RowLocks,
    /// SERIALIZABLE (the same locks), run again on serialisation failures.
    Serializable,
}

/// How many times a transaction is tried before its failure is returned.
const ATTEMPTS: u32 = 30;

/// The advisory lock key that serialises migrations of one database.
const MIGRATION_LOCK: i64 = 0x5_1a90_5000;

type Pool = r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>;

/// PostgreSQL storage.
pub struct PgStore {
    /// Always there but while dropped.
    pool: Option<Pool>,
    shown: String,
    read_only: bool,
    retention: Retention,
    isolation: Isolation,
}

/// The settings of `uri` and its TLS connector (see the module's TLS).
fn config(uri: &str) -> Result<(postgres::Config, MakeRustlsConnect), StoreError> {
    let tls_error = |message: String| StoreError::PgTls { uri: hide_password(uri), message };
    let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut root_cert = None;
    let mut kept = form_urlencoded::Serializer::new(String::new());
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match (key.as_ref(), value.as_ref()) {
            ("sslrootcert", file) => root_cert = Some(std::path::PathBuf::from(file)),
            // what libpq calls them; the certificate is always verified here
            ("sslmode", "verify-ca" | "verify-full") => {
                kept.append_pair("sslmode", "require");
            }
            (k, v) => {
                kept.append_pair(k, v);
            }
        }
    }
    let kept = kept.finish();
    let plain = if kept.is_empty() { base.to_string() } else { format!("{base}?{kept}") };
    let mut config = plain.parse::<postgres::Config>().map_err(|e| StoreError::PgOpen { uri: hide_password(uri), source: e })?;
    let Some(root_cert) = root_cert else {
        if config.get_ssl_mode() == SslMode::Require {
            return Err(tls_error("sslmode=require needs sslrootcert=<CA file> (the server's certificate is always verified)".into()));
        }
        let empty = rustls::RootCertStore::empty();
        return Ok((config.ssl_mode(SslMode::Disable).clone(), connector(empty)?));
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in slap::tls::load_ca(&root_cert).map_err(|e| tls_error(e.to_string()))? {
        roots.add(cert).map_err(|e| tls_error(format!("{}: {e}", root_cert.display())))?;
    }
    Ok((config.ssl_mode(SslMode::Require).clone(), connector(roots)?))
}

/// A rustls connector (ring) trusting `roots`.
fn connector(roots: rustls::RootCertStore) -> Result<MakeRustlsConnect, StoreError> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Pool(format!("TLS: {e}")))?;
    Ok(MakeRustlsConnect::new(builder.with_root_certificates(roots).with_no_client_auth()))
}

impl PgStore {
    /// Connects, creating the schema or migrating it if needed.
    pub fn open(uri: &str) -> Result<PgStore, StoreError> {
        Self::open_at_version(uri, SCHEMA_VERSION)
    }

    /// Connects and migrates up to `version` (tests build old databases with it).
    pub fn open_at_version(uri: &str, version: i64) -> Result<PgStore, StoreError> {
        let shown = hide_password(uri);
        let open_err = |source| StoreError::PgOpen { uri: shown.clone(), source };
        let (config, tls) = config(uri)?;
        let mut client = config.connect(tls).map_err(open_err)?;
        let mut t = client.transaction().map_err(open_err)?;
        // one migrating process at a time; the others wait and find it done
        t.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).map_err(open_err)?;
        t.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)").map_err(open_err)?;
        let current: i64 = t.query_opt("SELECT version FROM schema_version", &[]).map_err(open_err)?.map(|r| r.get(0)).unwrap_or(0);
        if current > SCHEMA_VERSION {
            return Err(StoreError::TooNew { path: shown.into(), found: current, supported: SCHEMA_VERSION });
        }
        if current < version {
            for (i, m) in MIGRATIONS.iter().enumerate().take(version as usize).skip(current as usize) {
                t.batch_execute(&m.sql(Backend::Postgres)).map_err(open_err)?;
                tracing::info!("database {shown}: migrated to schema version {}", i + 1);
            }
            if version >= 3 {
                t.execute("INSERT INTO meta (key, value) VALUES ('site_id', $1) ON CONFLICT DO NOTHING", &[&super::new_site_id()])
                    .map_err(open_err)?;
            }
            t.execute("DELETE FROM schema_version", &[]).map_err(open_err)?;
            t.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&version]).map_err(open_err)?;
        }
        t.commit().map_err(open_err)?;
        drop(client);
        Self::pooled(uri, false)
    }

    /// Connects to an existing database without changing it (`proxy show`).
    pub fn open_read_only(uri: &str) -> Result<PgStore, StoreError> {
        let store = Self::pooled(uri, true)?;
        let found = store.read(|tx: &mut dyn Tx| tx.schema_version())?;
        if found != SCHEMA_VERSION {
            return Err(StoreError::TooNew { path: store.shown.clone().into(), found, supported: SCHEMA_VERSION });
        }
        Ok(store)
    }

    fn pooled(uri: &str, read_only: bool) -> Result<PgStore, StoreError> {
        let (config, tls) = config(uri)?;
        let manager = PostgresConnectionManager::new(config, tls);
        // as many connections as the master's blocking threads; opened as needed
        let pool = r2d2::Pool::builder()
            .max_size(16)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(30))
            .build(manager)
            .map_err(|e| StoreError::Pool(format!("{}: {e}", hide_password(uri))))?;
        Ok(PgStore {
            pool: Some(pool),
            shown: hide_password(uri),
            read_only,
            retention: Retention::default(),
            isolation: Isolation::default(),
        })
    }

    /// The URI, without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The same store, keeping `retention` of the node history.
    pub fn with_retention(mut self, retention: Retention) -> PgStore {
        self.retention = retention;
        self
    }

    /// The same store, keeping masters apart with `isolation`.
    pub fn with_isolation(mut self, isolation: Isolation) -> PgStore {
        self.isolation = isolation;
        self
    }

    fn run<R, E: From<StoreError>>(&self, write: bool, mut f: impl FnMut(&mut dyn Tx) -> Result<R, E>) -> Result<R, E> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let pool = self.pool.as_ref().expect("the pool lives as long as the store");
            let mut conn = pool.get().map_err(|e| StoreError::Pool(format!("{}: {e}", self.shown)))?;
            let level = match (write, self.isolation) {
                (false, _) => IsolationLevel::RepeatableRead,
                (true, Isolation::RowLocks) => IsolationLevel::ReadCommitted,
                (true, Isolation::Serializable) => IsolationLevel::Serializable,
            };
            let mut t = conn
                .build_transaction()
                .isolation_level(level)
                .read_only(!write || self.read_only)
                .start()
                .map_err(StoreError::Postgres)?;
            let mut ptx = PgTx { t: &mut t, write, retention: self.retention, retry: false };
            let result = f(&mut ptx);
            let retry = ptx.retry;
            let outcome = match result {
                Ok(r) => match t.commit() {
                    Ok(()) => return Ok(r),
                    Err(e) if retryable(&e) && attempt < ATTEMPTS => None,
                    Err(e) => Some(Err(E::from(StoreError::Postgres(e)))),
                },
                Err(e) if retry && attempt < ATTEMPTS => {
                    drop(e);
                    None
                }
                Err(e) => Some(Err(e)),
            };
            if let Some(failure) = outcome {
                return failure;
            }
            // another master got there first: let it finish, then again
            std::thread::sleep(Duration::from_millis(rand::random::<u64>() % (2 * u64::from(attempt)) + 1));
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // closing a synchronous client blocks on its own runtime, which
        // cannot run inside the master's: close the pool on a plain thread
        if let Some(pool) = self.pool.take().filter(|_| tokio::runtime::Handle::try_current().is_ok()) {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

/// Failures that running the transaction again resolves.
fn retryable(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::UNIQUE_VIOLATION
    )
}

impl Store for PgStore {
    fn transaction<R, E: From<StoreError>>(&self, f: impl FnMut(&mut dyn Tx) -> Result<R, E>) -> Result<R, E> {
        self.run(!self.read_only, f)
    }
    fn read<R, E: From<StoreError>>(&self, f: impl FnMut(&mut dyn Tx) -> Result<R, E>) -> Result<R, E> {
        self.run(false, f)
    }
}

/// [`Tx`] on a PostgreSQL transaction.
pub struct PgTx<'a, 'c> {
    t: &'a mut Transaction<'c>,
    /// A write transaction locks the rows it reads.
    write: bool,
    retention: Retention,
    /// A statement failed in a way that running again resolves.
    retry: bool,
}

fn partition_row(r: &Row) -> PartitionRow {
    PartitionRow {
        reference: r.get(0),
        computer_reference: r.get(1),
        slap_state: r.get(2),
        software_release: r.get(3),
        xml: r.get(4),
        connection_xml: r.get(5),
        slave_instance_list: r.get(6),
        software_type: r.get(7),
        partition_reference: r.get(8),
        requested_by: r.get(9),
        requester_id: r.get(10),
        requested_state: r.get(11),
        timestamp: r.get(12),
    }
}

fn address_row(r: &Row) -> AddressRow {
    AddressRow { partition_reference: r.get(0), computer_reference: r.get(1), interface: r.get(2), address: r.get(3), netmask: r.get(4) }
}

fn slave_row(r: &Row) -> SlaveRow {
    SlaveRow { reference: r.get(0), computer_reference: r.get(1), connection_xml: r.get(2), hosted_by: r.get(3), requester_id: r.get(4) }
}

fn report_row(r: &Row) -> ReportRow {
    ReportRow {
        kind: r.get(0),
        computer_reference: r.get(1),
        reference: r.get(2),
        state: r.get(3),
        message: r.get(4),
        time: r.get(5),
        tree: r.get(6),
    }
}

fn computer_row(r: &Row) -> ComputerRow {
    ComputerRow { reference: r.get(0), address: r.get(1), netmask: r.get(2) }
}

impl PgTx<'_, '_> {
    fn failed(&mut self, e: postgres::Error) -> StoreError {
        self.retry |= retryable(&e);
        StoreError::Postgres(e)
    }
    fn query(&mut self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        self.t.query(sql, args).map_err(|e| self.failed(e))
    }
    fn execute(&mut self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        self.t.execute(sql, args).map_err(|e| self.failed(e))
    }
    /// `FOR UPDATE` in a write transaction: the row read is the row written.
    fn lock(&self, how: &'static str) -> &'static str {
        if self.write {
            how
        } else {
            ""
        }
    }
    fn partitions_where(&mut self, cond: &str, args: &[&(dyn ToSql + Sync)], lock: bool) -> Result<Vec<PartitionRow>, StoreError> {
        let lock = if lock { self.lock(" FOR UPDATE") } else { "" };
        let sql = format!("SELECT {PARTITION_COLUMNS} FROM partition {cond} ORDER BY rowid{lock}");
        Ok(self.query(&sql, args)?.iter().map(partition_row).collect())
    }
    fn partition_where(
        &mut self,
        cond: &str,
        args: &[&(dyn ToSql + Sync)],
        lock: &'static str,
    ) -> Result<Option<PartitionRow>, StoreError> {
        let sql = format!("SELECT {PARTITION_COLUMNS} FROM partition {cond} ORDER BY rowid LIMIT 1{}", self.lock(lock));
        Ok(self.query(&sql, args)?.first().map(partition_row))
    }
    fn addresses_where(&mut self, cond: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Vec<AddressRow>, StoreError> {
        let sql = format!(
            "SELECT partition_reference, computer_reference, reference, address, netmask FROM partition_network {cond} ORDER BY rowid"
        );
        Ok(self.query(&sql, args)?.iter().map(address_row).collect())
    }
}

const SLAVE_COLUMNS: &str = "reference, computer_reference, connection_xml, hosted_by, requester_id";

impl Tx for PgTx<'_, '_> {
    fn computer(&mut self, reference: &str) -> Result<Option<ComputerRow>, StoreError> {
        Ok(self.query("SELECT reference, address, netmask FROM computer WHERE reference = $1", &[&reference])?.first().map(computer_row))
    }
    fn computers(&mut self) -> Result<Vec<ComputerRow>, StoreError> {
        Ok(self.query("SELECT reference, address, netmask FROM computer ORDER BY rowid", &[])?.iter().map(computer_row).collect())
    }
    fn upsert_computer(&mut self, row: &ComputerRow) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO computer (reference, address, netmask) VALUES ($1, $2, $3)
             ON CONFLICT (reference) DO UPDATE SET address = excluded.address, netmask = excluded.netmask",
            &[&row.reference, &row.address, &row.netmask],
        )?;
        Ok(())
    }

    fn partition(&mut self, computer: &str, reference: &str) -> Result<Option<PartitionRow>, StoreError> {
        self.partition_where("WHERE reference = $1 AND computer_reference = $2", &[&reference, &computer], " FOR UPDATE")
    }
    fn partitions(&mut self, computer: Option<&str>) -> Result<Vec<PartitionRow>, StoreError> {
        match computer {
            Some(c) => self.partitions_where("WHERE computer_reference = $1", &[&c], false),
            None => self.partitions_where("", &[], false),
        }
    }
    fn partition_by_title(&mut self, title: &str, requested_by: &str) -> Result<Option<PartitionRow>, StoreError> {
        self.partition_where("WHERE partition_reference = $1 AND requested_by = $2", &[&title, &requested_by], " FOR UPDATE")
    }
    fn partitions_requested_by(&mut self, root_title: &str) -> Result<Vec<PartitionRow>, StoreError> {
        self.partitions_where("WHERE requested_by = $1", &[&root_title], true)
    }
    fn first_free_partition(&mut self, computer: &str) -> Result<Option<PartitionRow>, StoreError> {
        // a partition another master is allocating is skipped, not waited for
        self.partition_where("WHERE slap_state = 'free' AND computer_reference = $1", &[&computer], " FOR UPDATE SKIP LOCKED")
    }
    fn find_host(
        &mut self,
        computer: &str,
        software_release: &str,
        software_type: Option<&str>,
        reference: Option<&str>,
    ) -> Result<Option<PartitionRow>, StoreError> {
        self.partition_where(
            "WHERE software_release = $1 AND computer_reference = $2
               AND ($3::TEXT IS NULL OR software_type = $3) AND ($4::TEXT IS NULL OR reference = $4)",
            &[&software_release, &computer, &software_type, &reference],
            " FOR UPDATE",
        )
    }
    fn insert_partition_if_missing(&mut self, computer: &str, reference: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO partition (reference, computer_reference) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&reference, &computer],
        )?;
        Ok(())
    }
    fn update_partition(&mut self, p: &PartitionRow) -> Result<(), StoreError> {
        self.execute(
            "UPDATE partition SET slap_state = $3, software_release = $4, xml = $5, connection_xml = $6,
                slave_instance_list = $7, software_type = $8, partition_reference = $9, requested_by = $10,
                requester_id = $11, requested_state = $12, timestamp = $13
             WHERE reference = $1 AND computer_reference = $2",
            &[
                &p.reference,
                &p.computer_reference,
                &p.slap_state,
                &p.software_release,
                &p.xml,
                &p.connection_xml,
                &p.slave_instance_list,
                &p.software_type,
                &p.partition_reference,
                &p.requested_by,
                &p.requester_id,
                &p.requested_state,
                &p.timestamp,
            ],
        )?;
        Ok(())
    }
    fn delete_partitions_except(&mut self, computer: &str, keep: &[String]) -> Result<usize, StoreError> {
        let n = self.execute("DELETE FROM partition WHERE computer_reference = $1 AND NOT (reference = ANY($2))", &[&computer, &keep])?;
        Ok(n as usize)
    }
    fn set_timestamp(&mut self, computer: &str, reference: &str, timestamp: f64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE partition SET timestamp = $3 WHERE reference = $1 AND computer_reference = $2",
            &[&reference, &computer, &timestamp],
        )?;
        Ok(())
    }

    fn software_releases(&mut self, computer: Option<&str>) -> Result<Vec<SoftwareRow>, StoreError> {
        let rows = self.query(
            "SELECT url, computer_reference, requested_state FROM software
             WHERE $1::TEXT IS NULL OR computer_reference = $1 ORDER BY rowid",
            &[&computer],
        )?;
        Ok(rows.iter().map(|r| SoftwareRow { url: r.get(0), computer_reference: r.get(1), requested_state: r.get(2) }).collect())
    }
    fn upsert_software(&mut self, row: &SoftwareRow) -> Result<(), StoreError> {
        // delete + insert: the row moves to the end, as SQLite's INSERT OR REPLACE
        self.delete_software(&row.computer_reference, &row.url)?;
        self.execute(
            "INSERT INTO software (url, computer_reference, requested_state) VALUES ($1, $2, $3)",
            &[&row.url, &row.computer_reference, &row.requested_state],
        )?;
        Ok(())
    }
    fn delete_software(&mut self, computer: &str, url: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM software WHERE url = $1 AND computer_reference = $2", &[&url, &computer])?;
        Ok(())
    }

    fn slave(&mut self, reference: &str, computer: &str) -> Result<Option<SlaveRow>, StoreError> {
        let sql = format!("SELECT {SLAVE_COLUMNS} FROM slave WHERE reference = $1 AND computer_reference = $2 ORDER BY rowid LIMIT 1");
        Ok(self.query(&sql, &[&reference, &computer])?.first().map(slave_row))
    }
    fn slaves(&mut self) -> Result<Vec<SlaveRow>, StoreError> {
        let sql = format!("SELECT {SLAVE_COLUMNS} FROM slave ORDER BY rowid");
        Ok(self.query(&sql, &[])?.iter().map(slave_row).collect())
    }
    fn insert_slave(&mut self, row: &SlaveRow) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO slave (reference, computer_reference, connection_xml, hosted_by, requester_id) VALUES ($1, $2, $3, $4, $5)",
            &[&row.reference, &row.computer_reference, &row.connection_xml, &row.hosted_by, &row.requester_id],
        )?;
        Ok(())
    }
    fn update_slave_connection(&mut self, reference: &str, connection_xml: &str, hosted_by: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE slave SET connection_xml = $2, hosted_by = $3 WHERE reference = $1",
            &[&reference, &connection_xml, &hosted_by],
        )?;
        Ok(())
    }
    fn update_slave_requester(&mut self, reference: &str, computer: &str, requester_id: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE slave SET requester_id = $3 WHERE reference = $1 AND computer_reference = $2",
            &[&reference, &computer, &requester_id],
        )?;
        Ok(())
    }
    fn delete_slaves_not_hosted_in(&mut self, computer: &str, hosts: &[String]) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM slave WHERE computer_reference = $1 AND (hosted_by IS NULL OR NOT (hosted_by = ANY($2)))",
            &[&computer, &hosts],
        )?;
        Ok(())
    }

    fn addresses(&mut self, computer: Option<&str>, partition: &str) -> Result<Vec<AddressRow>, StoreError> {
        self.addresses_where("WHERE ($1::TEXT IS NULL OR computer_reference = $1) AND partition_reference = $2", &[&computer, &partition])
    }
    fn computer_addresses(&mut self, computer: &str) -> Result<Vec<AddressRow>, StoreError> {
        self.addresses_where("WHERE computer_reference = $1", &[&computer])
    }
    fn replace_addresses(&mut self, computer: &str, rows: &[AddressRow]) -> Result<(), StoreError> {
        self.execute("DELETE FROM partition_network WHERE computer_reference = $1", &[&computer])?;
        let st = self.t.prepare(
            "INSERT INTO partition_network (partition_reference, computer_reference, reference, address, netmask)
             VALUES ($1, $2, $3, $4, $5)",
        );
        let st = st.map_err(|e| self.failed(e))?;
        for a in rows {
            let r = self.t.execute(&st, &[&a.partition_reference, &computer, &a.interface, &a.address, &a.netmask]);
            r.map_err(|e| self.failed(e))?;
        }
        Ok(())
    }

    fn add_report(&mut self, r: &ReportRow) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO report (kind, computer_reference, reference, state, message, time, tree)
             VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7, {}))",
            TREE_OF_REPORT.replace('?', "$")
        );
        self.execute(&sql, &[&r.kind, &r.computer_reference, &r.reference, &r.state, &r.message, &r.time, &r.tree])?;
        let per_object = self.retention.reports_per_object as i64;
        self.execute(
            "DELETE FROM report WHERE kind = $1 AND computer_reference = $2 AND reference = $3 AND rowid NOT IN
               (SELECT rowid FROM report WHERE kind = $1 AND computer_reference = $2 AND reference = $3
                ORDER BY rowid DESC LIMIT $4)",
            &[&r.kind, &r.computer_reference, &r.reference, &per_object],
        )?;
        let all = self.retention.reports as i64;
        self.execute("DELETE FROM report WHERE rowid <= (SELECT rowid FROM report ORDER BY rowid DESC OFFSET $1 LIMIT 1)", &[&all])?;
        Ok(())
    }
    fn reports(&mut self) -> Result<Vec<ReportRow>, StoreError> {
        let rows = self.query("SELECT kind, computer_reference, reference, state, message, time, tree FROM report ORDER BY rowid", &[])?;
        Ok(rows.iter().map(report_row).collect())
    }
    fn last_reports(&mut self) -> Result<Vec<ReportRow>, StoreError> {
        // byte order of the names, as SQLite sorts
        let rows = self.query(
            "SELECT * FROM (SELECT DISTINCT ON (kind, computer_reference, reference)
                    kind, computer_reference, reference, state, message, time, tree FROM report
                    ORDER BY kind, computer_reference, reference, time DESC, rowid DESC) AS last
             ORDER BY kind COLLATE \"C\", computer_reference COLLATE \"C\", reference COLLATE \"C\"",
            &[],
        )?;
        Ok(rows.iter().map(report_row).collect())
    }
    fn add_usage(&mut self, u: &UsageRow) -> Result<(), StoreError> {
        self.execute("INSERT INTO usage (computer_reference, body, time) VALUES ($1, $2, $3)", &[&u.computer_reference, &u.body, &u.time])?;
        let per_computer = self.retention.usage_per_computer as i64;
        self.execute(
            "DELETE FROM usage WHERE computer_reference = $1 AND rowid NOT IN
               (SELECT rowid FROM usage WHERE computer_reference = $1 ORDER BY rowid DESC LIMIT $2)",
            &[&u.computer_reference, &per_computer],
        )?;
        let all = self.retention.usage as i64;
        self.execute("DELETE FROM usage WHERE rowid <= (SELECT rowid FROM usage ORDER BY rowid DESC OFFSET $1 LIMIT 1)", &[&all])?;
        Ok(())
    }
    fn usages(&mut self, limit: usize) -> Result<Vec<UsageRow>, StoreError> {
        let rows = self.query("SELECT computer_reference, body, time FROM usage ORDER BY time DESC LIMIT $1", &[&(limit as i64)])?;
        Ok(rows.iter().map(|r| UsageRow { computer_reference: r.get(0), body: r.get(1), time: r.get(2) }).collect())
    }
    fn add_movements(&mut self, rows: &[MovementRow]) -> Result<(), StoreError> {
        let sql = format!("INSERT INTO usage_movement ({MOVEMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
        let st = self.t.prepare(&sql);
        let st = st.map_err(|e| self.failed(e))?;
        for m in rows {
            let r = self.t.execute(
                &st,
                &[
                    &m.time,
                    &m.computer_reference,
                    &m.partition_reference,
                    &m.tree,
                    &m.resource,
                    &m.title,
                    &m.quantity,
                    &m.unit,
                    &m.received,
                ],
            );
            r.map_err(|e| self.failed(e))?;
        }
        let st = self.t.prepare(&format!("{ADD_TO_HOUR} VALUES ($1, $2, $3, $4, $5, $6, $7) {ADD_TO_HOUR_CONFLICT}"));
        let st = st.map_err(|e| self.failed(e))?;
        for m in rows {
            let (tree, hour) = (m.tree.as_deref().unwrap_or(""), hour_of(m.time));
            let r = self.t.execute(&st, &[&m.computer_reference, &m.partition_reference, &tree, &m.resource, &m.unit, &hour, &m.quantity]);
            r.map_err(|e| self.failed(e))?;
        }
        let all = self.retention.movements as i64;
        for table in ["usage_movement", "usage_hour"] {
            let sql = format!("DELETE FROM {table} WHERE rowid <= (SELECT rowid FROM {table} ORDER BY rowid DESC OFFSET $1 LIMIT 1)");
            self.execute(&sql, &[&all])?;
        }
        if let Some(cutoff) = movement_cutoff(rows, &self.retention) {
            self.execute("DELETE FROM usage_movement WHERE time < $1", &[&cutoff])?;
            self.execute("DELETE FROM usage_hour WHERE start < $1", &[&(cutoff.floor() as i64)])?;
        }
        Ok(())
    }
    fn movements(&mut self) -> Result<Vec<MovementRow>, StoreError> {
        let rows = self.query(&format!("SELECT {MOVEMENT_COLUMNS} FROM usage_movement ORDER BY rowid"), &[])?;
        Ok(rows
            .iter()
            .map(|r| MovementRow {
                time: r.get(0),
                computer_reference: r.get(1),
                partition_reference: r.get(2),
                tree: r.get(3),
                resource: r.get(4),
                title: r.get(5),
                quantity: r.get(6),
                unit: r.get(7),
                received: r.get(8),
            })
            .collect())
    }
    fn usage_hours(&mut self) -> Result<Vec<UsageHourRow>, StoreError> {
        let rows = self.query(&format!("SELECT {HOUR_COLUMNS} FROM usage_hour ORDER BY rowid"), &[])?;
        Ok(rows
            .iter()
            .map(|r| UsageHourRow {
                computer_reference: r.get(0),
                partition_reference: r.get(1),
                tree: r.get(2),
                resource: r.get(3),
                unit: r.get(4),
                start: r.get(5),
                quantity: r.get(6),
            })
            .collect())
    }
    fn replace_usage_hours(&mut self, rows: &[UsageHourRow]) -> Result<(), StoreError> {
        self.execute("DELETE FROM usage_hour", &[])?;
        let st = self.t.prepare(&format!("INSERT INTO usage_hour ({HOUR_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"));
        let st = st.map_err(|e| self.failed(e))?;
        for h in rows {
            let r =
                self.t.execute(&st, &[&h.computer_reference, &h.partition_reference, &h.tree, &h.resource, &h.unit, &h.start, &h.quantity]);
            r.map_err(|e| self.failed(e))?;
        }
        Ok(())
    }
    fn usage_sums(&mut self, q: &UsageQuery) -> Result<Vec<UsageBucket>, StoreError> {
        let (cond, scope_args) = scope_condition(q, '$');
        // byte order of the names, as SQLite sorts
        let sql = format!(
            "SELECT resource, unit, (start / $1) * $1 AS bucket, SUM(quantity) FROM usage_hour
             WHERE start >= $2 AND start < $3 AND {cond}
             GROUP BY resource, unit, bucket ORDER BY resource COLLATE \"C\", unit COLLATE \"C\", bucket LIMIT $4"
        );
        // hours are not negative (the query's window starts at 0 at the earliest)
        let (since, until, limit) = (hour_of(q.since.max(0.0)), q.until.ceil() as i64, q.limit as i64);
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&q.bucket, &since, &until, &limit];
        args.extend(scope_args.iter().map(|a| a as &(dyn ToSql + Sync)));
        let rows = self.query(&sql, &args)?;
        Ok(rows.iter().map(|r| UsageBucket { resource: r.get(0), unit: r.get(1), start: r.get(2), quantity: r.get(3) }).collect())
    }
    fn events(&mut self, f: &EventFilter) -> Result<Vec<ReportRow>, StoreError> {
        let rows = self.query(
            "SELECT kind, computer_reference, reference, state, message, time, tree FROM report
             WHERE time >= $1 AND time < $2 AND ($3::TEXT IS NULL OR computer_reference = $3)
               AND ($4::TEXT IS NULL OR (kind = 'partition' AND reference = $4)) AND ($5::TEXT IS NULL OR tree = $5)
             ORDER BY time DESC, rowid DESC LIMIT $6",
            &[&f.since, &f.until, &f.computer, &f.partition, &f.tree, &(f.limit as i64)],
        )?;
        Ok(rows.iter().map(report_row).collect())
    }

    fn add_certificate(&mut self, c: &CertificateRow) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO certificate (serial, kind, name, computer_reference, not_after, revoked) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&c.serial, &c.kind, &c.name, &c.computer_reference, &c.not_after, &c.revoked],
        )?;
        Ok(())
    }
    fn certificate(&mut self, serial: &str) -> Result<Option<CertificateRow>, StoreError> {
        let rows =
            self.query("SELECT serial, kind, name, computer_reference, not_after, revoked FROM certificate WHERE serial = $1", &[&serial])?;
        Ok(rows.first().map(|r| CertificateRow {
            serial: r.get(0),
            kind: r.get(1),
            name: r.get(2),
            computer_reference: r.get(3),
            not_after: r.get(4),
            revoked: r.get(5),
        }))
    }
    fn revoke_certificates(&mut self, kind: &str, name: &str, computer: &str, time: f64) -> Result<usize, StoreError> {
        let n = self.execute(
            "UPDATE certificate SET revoked = $4 WHERE kind = $1 AND name = $2 AND computer_reference = $3 AND revoked IS NULL",
            &[&kind, &name, &computer, &time],
        )?;
        Ok(n as usize)
    }
    fn prune_certificates(&mut self, kind: &str, time: f64) -> Result<usize, StoreError> {
        let n = self.execute("DELETE FROM certificate WHERE kind = $1 AND not_after < $2", &[&kind, &time])?;
        Ok(n as usize)
    }
    fn add_token(&mut self, t: &TokenRow) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO token (hash, kind, name, expires, used) VALUES ($1, $2, $3, $4, $5)",
            &[&t.hash, &t.kind, &t.name, &t.expires, &t.used],
        )?;
        Ok(())
    }
    fn take_token(&mut self, hash: &str, time: f64) -> Result<Option<TokenRow>, StoreError> {
        // locked: two masters taking one token at once, the second sees it used
        let sql = format!("SELECT hash, kind, name, expires, used FROM token WHERE hash = $1{}", self.lock(" FOR UPDATE"));
        let rows = self.query(&sql, &[&hash])?;
        let row = rows.first().map(|r| TokenRow { hash: r.get(0), kind: r.get(1), name: r.get(2), expires: r.get(3), used: r.get(4) });
        if row.as_ref().is_some_and(|t| t.used.is_none()) {
            self.execute("UPDATE token SET used = $2 WHERE hash = $1", &[&hash, &time])?;
        }
        Ok(row)
    }
    fn grantees(&mut self, kind: &str, reference: &str) -> Result<Vec<String>, StoreError> {
        let rows = self.query("SELECT username FROM grantee WHERE kind = $1 AND reference = $2 ORDER BY username", &[&kind, &reference])?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
    fn grant(&mut self, kind: &str, reference: &str, user: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO grantee (kind, reference, username) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&kind, &reference, &user],
        )?;
        Ok(())
    }
    fn setting(&mut self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.query("SELECT value FROM setting WHERE name = $1", &[&name])?.first().map(|r| r.get(0)))
    }
    fn set_setting(&mut self, name: &str, value: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO setting (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            &[&name, &value],
        )?;
        Ok(())
    }
    fn add_forward(&mut self, f: &ForwardRow) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO forwarded_request (reference, master_url, software_release, time) VALUES ($1, $2, $3, $4)
             ON CONFLICT (reference, master_url) DO UPDATE SET software_release = excluded.software_release, time = excluded.time",
            &[&f.reference, &f.master_url, &f.software_release, &f.time],
        )?;
        Ok(())
    }
    fn delete_forward(&mut self, reference: &str, master_url: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM forwarded_request WHERE reference = $1 AND master_url = $2", &[&reference, &master_url])?;
        Ok(())
    }
    fn forwards(&mut self) -> Result<Vec<ForwardRow>, StoreError> {
        let rows =
            self.query("SELECT reference, master_url, software_release, time FROM forwarded_request ORDER BY master_url, reference", &[])?;
        Ok(rows
            .iter()
            .map(|r| ForwardRow { reference: r.get(0), master_url: r.get(1), software_release: r.get(2), time: r.get(3) })
            .collect())
    }
    fn set_related(&mut self, row: &RelatedRow) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO related_instance (computer_reference, partition_reference, instances, time) VALUES ($1, $2, $3, $4)
             ON CONFLICT (computer_reference, partition_reference)
             DO UPDATE SET instances = excluded.instances, time = excluded.time",
            &[&row.computer_reference, &row.partition_reference, &row.instances, &row.time],
        )?;
        Ok(())
    }
    fn related(&mut self) -> Result<Vec<RelatedRow>, StoreError> {
        let rows = self.query(
            "SELECT computer_reference, partition_reference, instances, time FROM related_instance
             ORDER BY computer_reference, partition_reference",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| RelatedRow { computer_reference: r.get(0), partition_reference: r.get(1), instances: r.get(2), time: r.get(3) })
            .collect())
    }
    fn certificates(&mut self) -> Result<Vec<CertificateRow>, StoreError> {
        let rows = self.query("SELECT serial, kind, name, computer_reference, not_after, revoked FROM certificate ORDER BY serial", &[])?;
        Ok(rows
            .iter()
            .map(|r| CertificateRow {
                serial: r.get(0),
                kind: r.get(1),
                name: r.get(2),
                computer_reference: r.get(3),
                not_after: r.get(4),
                revoked: r.get(5),
            })
            .collect())
    }
    fn tokens(&mut self) -> Result<Vec<TokenRow>, StoreError> {
        let rows = self.query("SELECT hash, kind, name, expires, used FROM token ORDER BY hash", &[])?;
        Ok(rows.iter().map(|r| TokenRow { hash: r.get(0), kind: r.get(1), name: r.get(2), expires: r.get(3), used: r.get(4) }).collect())
    }
    fn grants(&mut self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = self.query("SELECT kind, reference, username FROM grantee ORDER BY kind, reference, username", &[])?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }
    fn settings(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.query("SELECT name, value FROM setting ORDER BY name", &[])?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
    fn rename_software(&mut self, old: &str, new: &str) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM software WHERE url = $1 AND computer_reference IN
               (SELECT computer_reference FROM software WHERE url = $2)",
            &[&old, &new],
        )?;
        self.execute("UPDATE software SET url = $2 WHERE url = $1", &[&old, &new])?;
        self.execute("UPDATE partition SET software_release = $2 WHERE software_release = $1", &[&old, &new])?;
        Ok(())
    }

    fn lock_name(&mut self, name: &str) -> Result<(), StoreError> {
        if self.write {
            self.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&name])?;
        }
        Ok(())
    }
    fn computer_version(&mut self, computer: &str) -> Result<i64, StoreError> {
        let rows = self.query("SELECT version FROM computer_version WHERE computer_reference = $1", &[&computer])?;
        Ok(rows.first().map(|r| r.get(0)).unwrap_or(0))
    }
    fn site_id(&mut self) -> Result<String, StoreError> {
        let rows = self.query("SELECT value FROM meta WHERE key = 'site_id'", &[])?;
        Ok(rows.first().map(|r| r.get(0)).unwrap_or_default())
    }
    fn schema_version(&mut self) -> Result<i64, StoreError> {
        let rows = self.query("SELECT version FROM schema_version", &[])?;
        Ok(rows.first().map(|r| r.get(0)).unwrap_or(0))
    }
}
