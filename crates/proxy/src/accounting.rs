//! The accounting of SLAP: what nodes reported, as data.
//!
//! Two kinds of records, both kept within the store's
//! [`Retention`](crate::store::Retention):
//! - **events**: the state reports of software releases and partitions, their
//!   errors with the log the node sent, promise failures, bangs (of a
//!   partition or a computer) and usage journals received, each with its
//!   time, computer, partition and instance tree (the root title of the
//!   partition's tree when it was reported) — [`events`];
//! - **usage**: the movements of the consumption journals nodes send with
//!   `useComputer` ([`record_usage`], [`journal`]), summed per resource in
//!   hour or day buckets for a partition, an instance tree or a computer —
//!   [`usage`], grouped per resource by [`series`].
//!
//! The HTTP face (`GET /api/events`, `GET /api/usage`, JSON or CSV) is
//! [`routes`].

pub mod journal;
pub mod routes;

pub use crate::store::{EventFilter, Scope, UsageBucket, UsageQuery};
use crate::store::{MovementRow, ReportRow, StoreError, Tx};

/// The most events one call returns.
pub const MAX_EVENTS: usize = 5_000;
/// Events returned when the call says no limit.
pub const DEFAULT_EVENTS: usize = 500;
/// The most buckets one call returns (every resource together).
pub const MAX_BUCKETS: usize = 100_000;
/// The window of a call that gives no `since`: 30 days, in seconds.
pub const DEFAULT_WINDOW: f64 = 30.0 * 86400.0;

/// The width of usage buckets (UTC hours and days).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
}

impl Bucket {
    /// Its width in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Bucket::Hour => 3600,
            Bucket::Day => 86400,
        }
    }
    /// `hour` or `day`.
    pub fn name(self) -> &'static str {
        match self {
            Bucket::Hour => "hour",
            Bucket::Day => "day",
        }
    }
    /// From `hour` or `day`.
    pub fn parse(s: &str) -> Option<Bucket> {
        match s {
            "hour" => Some(Bucket::Hour),
            "day" => Some(Bucket::Day),
            _ => None,
        }
    }
}

/// What an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A partition reported a state (`started`, `stopped`, `destroyed`).
    State,
    /// A partition reported an error (its message is the node's log).
    Error,
    /// A partition's promise failed (an error whose message says so).
    Promise,
    /// A partition or a computer banged.
    Bang,
    /// A software release reported a state (`building`, `available`, `error`, `destroyed`).
    Software,
    /// A usage journal was received (its message: how many movements).
    Usage,
}

impl EventKind {
    /// Its name in the API.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::State => "state",
            EventKind::Error => "error",
            EventKind::Promise => "promise",
            EventKind::Bang => "bang",
            EventKind::Software => "software",
            EventKind::Usage => "usage",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When it was received, seconds since the epoch.
    pub time: f64,
    /// What it is.
    pub kind: EventKind,
    /// The computer it came from.
    pub computer: String,
    /// The partition (empty for software, computer and usage events).
    pub partition: String,
    /// The root title of the partition's instance tree, when it had one.
    pub tree: Option<String>,
    /// The state reported (None for bangs and usage).
    pub state: Option<String>,
    /// The error log, the bang's message, the usage summary.
    pub message: Option<String>,
    /// The software release URL of a software event.
    pub software: Option<String>,
}

/// A promise failure, as slapgrid and our node word it.
fn is_promise_failure(message: Option<&str>) -> bool {
    message.is_some_and(|m| m.contains("Promise '") && m.contains("failed"))
}

impl From<ReportRow> for Event {
    fn from(r: ReportRow) -> Event {
        let kind = match (r.kind.as_str(), r.state.as_str()) {
            ("software", _) => EventKind::Software,
            ("usage", _) => EventKind::Usage,
            (_, "bang") => EventKind::Bang,
            (_, "error") if is_promise_failure(r.message.as_deref()) => EventKind::Promise,
            (_, "error") => EventKind::Error,
            _ => EventKind::State,
        };
        let stateless = matches!(kind, EventKind::Bang | EventKind::Usage);
        let partition = if r.kind == "partition" { r.reference.clone() } else { String::new() };
        Event {
            time: r.time,
            kind,
            software: (kind == EventKind::Software).then(|| r.reference.clone()),
            computer: r.computer_reference,
            partition,
            tree: r.tree,
            state: (!stateless).then_some(r.state),
            message: r.message,
        }
    }
}

/// The events that match `filter`, newest first (at most [`MAX_EVENTS`]).
pub fn events(tx: &mut dyn Tx, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
    let filter = EventFilter { limit: filter.limit.min(MAX_EVENTS), ..filter.clone() };
    Ok(tx.events(&filter)?.into_iter().map(Event::from).collect())
}

/// The usage of a scope per resource, unit and bucket, summed by the
/// database from its hourly sums (at most [`MAX_BUCKETS`]), ordered by
/// resource, unit and start. The window takes whole hours: those that start
/// from `since`'s hour and before `until`.
pub fn usage(tx: &mut dyn Tx, query: &UsageQuery) -> Result<Vec<UsageBucket>, StoreError> {
    // (movements without a tree are summed under the tree '')
    if matches!(&query.scope, Scope::Tree(t) if t.is_empty()) || query.tree.as_deref() == Some("") {
        return Ok(Vec::new());
    }
    let query = UsageQuery { limit: query.limit.min(MAX_BUCKETS), ..query.clone() };
    tx.usage_sums(&query)
}

/// The buckets of one resource and unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The resource.
    pub resource: String,
    /// Its unit.
    pub unit: String,
    /// (bucket start, sum), in time order.
    pub points: Vec<(i64, f64)>,
}

/// Buckets (ordered as [`usage`] returns them) grouped per resource and unit.
pub fn series(buckets: Vec<UsageBucket>) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for b in buckets {
        match out.last_mut() {
            Some(s) if s.resource == b.resource && s.unit == b.unit => s.points.push((b.start, b.quantity)),
            _ => out.push(Series { resource: b.resource, unit: b.unit, points: vec![(b.start, b.quantity)] }),
        }
    }
    out
}

/// What [`record_usage`] kept of a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recorded {
    /// Movements stored.
    pub movements: usize,
    /// Movements left out (see [`journal::Journal::skipped`]).
    pub skipped: usize,
}

/// The partition a movement's reference names on `computer` (empty: the
/// computer itself) and its tree: a partition id, the computer id, or a
/// partition's user as slapos.collect writes it (`slapuserN` for
/// `slappartN`); anything else is kept as it is, without a tree.
fn partition_of(tx: &mut dyn Tx, computer: &str, reference: &str) -> Result<(String, Option<String>), StoreError> {
    if reference.is_empty() || reference == computer {
        return Ok((String::new(), None));
    }
    let mut candidates = vec![reference.to_string()];
    if let Some(n) = reference.strip_prefix("slapuser").filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
        candidates.push(format!("slappart{n}"));
    }
    for c in candidates {
        if let Some(p) = tx.partition(computer, &c)? {
            let tree = if p.requested_by.is_empty() { p.partition_reference.filter(|t| !t.is_empty()) } else { Some(p.requested_by) };
            return Ok((c, tree));
        }
    }
    Ok((reference.to_string(), None))
}

/// Reads the journal a computer sent (`useComputer`) into movements and
/// stores them, with a `usage` event saying what was kept (or why nothing
/// could be). A movement's time is its transaction's `start_date` when that
/// is a date no later than a day after `now`, else `now`.
pub fn record_usage(tx: &mut dyn Tx, computer: &str, body: &str, now: f64) -> Result<Recorded, StoreError> {
    let parsed = journal::parse(body);
    let (summary, recorded) = match parsed {
        Ok(j) => {
            let mut rows = Vec::with_capacity(j.movements.len());
            let mut known: Vec<(String, (String, Option<String>))> = Vec::new();
            for m in j.movements {
                let target = match known.iter().find(|(r, _)| *r == m.reference) {
                    Some((_, t)) => t.clone(),
                    None => {
                        let t = partition_of(tx, computer, &m.reference)?;
                        known.push((m.reference.clone(), t.clone()));
                        t
                    }
                };
                let time = m.start.filter(|t| *t <= now + 86400.0).unwrap_or(now);
                rows.push(MovementRow {
                    time,
                    computer_reference: computer.to_string(),
                    unit: journal::unit_of(&m.resource, target.0.is_empty(), &m.category),
                    partition_reference: target.0,
                    tree: target.1,
                    resource: m.resource,
                    title: m.title,
                    quantity: m.quantity,
                    received: now,
                });
            }
            tx.add_movements(&rows)?;
            let recorded = Recorded { movements: rows.len(), skipped: j.skipped };
            (format!("{} movements recorded, {} skipped", recorded.movements, recorded.skipped), recorded)
        }
        Err(e) => (e.to_string(), Recorded::default()),
    };
    tx.add_report(&ReportRow {
        kind: "usage".into(),
        computer_reference: computer.to_string(),
        reference: String::new(),
        state: "received".into(),
        message: Some(summary),
        time: now,
        tree: None,
    })?;
    Ok(recorded)
}
