//! `GET /api/events` and `GET /api/usage`: the accounting as JSON, or CSV
//! (`format=csv` or `Accept: text/csv`).
//!
//! - `/api/events?computer=&partition=&tree=&since=&until=&limit=`:
//!   `{"events": [{"time", "iso", "kind", "computer", "partition", "tree",
//!   "state", "message", "software"}]}`, newest first;
//! - `/api/usage?scope=partition|tree|computer&id=&bucket=hour|day&since=&until=`
//!   (`id`: `<computer>/<partition>`, a root title, a computer):
//!   `{"scope", "id", "bucket", "series": [{"resource", "unit", "points":
//!   [{"start", "iso", "quantity"}]}]}`; CSV `start,resource,unit,quantity`
//!   (`start` in ISO 8601).
//!
//! `since` and `until` are seconds since the epoch or ISO 8601 dates (UTC
//! unless they say otherwise); by default the last 30 days. Who may ask
//! what is `proxy::rules` ([`crate::rules::Rule::Accounting`]); a person who
//! may see a partition only through its instance tree sees only what that
//! tree did on it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::{json, Value as J};

use super::{Bucket, Event, EventFilter, Scope, UsageQuery, DEFAULT_EVENTS, DEFAULT_WINDOW, MAX_BUCKETS};
use crate::app::App;
use crate::rules::Identity;
use crate::store::{Store, StoreError, Tx};

type Shared = Arc<App>;

/// The routes of the accounting (merged before the `authorize` layer).
pub fn router() -> Router<Shared> {
    Router::new().route("/api/events", get(events)).route("/api/usage", get(usage))
}

/// A refusal of the call's arguments (400) or a storage failure (500), as JSON.
struct ApiError(StatusCode, String);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!("storage failure: {e}");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("storage failure: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, [(header::CONTENT_TYPE, "application/json")], json!({"error": self.1}).to_string()).into_response()
    }
}

fn bad(message: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message)
}

/// The query arguments of a call.
struct Args(Vec<(String, String)>);

impl Args {
    fn of(uri: &Uri) -> Args {
        Args(form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().take(64).collect())
    }
    /// A non-empty argument.
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
    fn time(&self, key: &str) -> Result<Option<f64>, ApiError> {
        self.get(key)
            .map(|v| parse_time(v).ok_or_else(|| bad(format!("'{key}': not a time: {}", crate::limits::excerpt(v, 100)))))
            .transpose()
    }
    /// (since, until): the last 30 days by default.
    fn window(&self) -> Result<(f64, f64), ApiError> {
        let until = self.time("until")?.unwrap_or_else(|| crate::master::now() + 1.0);
        let since = self.time("since")?.unwrap_or(until - DEFAULT_WINDOW);
        Ok((since, until))
    }
    fn csv(&self, headers: &HeaderMap) -> bool {
        match self.get("format") {
            Some(f) => f == "csv",
            None => headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("text/csv")),
        }
    }
}

/// Seconds since the epoch, or an ISO 8601 date or time (UTC without a zone).
pub fn parse_time(s: &str) -> Option<f64> {
    if let Ok(t) = s.parse::<f64>() {
        return t.is_finite().then_some(t);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis() as f64 / 1000.0);
    }
    let naive = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(s, f).ok())
        .or_else(|| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().map(|d| d.and_time(chrono::NaiveTime::MIN)))?;
    Some(naive.and_utc().timestamp() as f64)
}

/// `2026-12-01T21:00:00Z`.
pub fn iso(t: f64) -> String {
    chrono::DateTime::from_timestamp(t.floor() as i64, 0).map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

/// Runs `f` in a read transaction on the blocking pool.
async fn read<R: Send + 'static>(app: &Shared, f: impl Fn(&mut dyn Tx) -> Result<R, ApiError> + Send + 'static) -> Result<R, ApiError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || app.store.read(f))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("internal failure: {e}")))?
}

/// The tree a person sees a partition through: None when they may use its
/// computer (everything of it), else its current tree (only that tree's
/// records of it).
fn tree_restriction(tx: &mut dyn Tx, who: Option<&Identity>, computer: &str, partition: &str) -> Result<Option<String>, StoreError> {
    let Some(Identity::User(user)) = who else { return Ok(None) };
    if crate::rules::may_use(tx, "computer", computer, user)? {
        return Ok(None);
    }
    let tree = tx.partition(computer, partition)?.and_then(|p| {
        if p.requested_by.is_empty() {
            p.partition_reference.filter(|t| !t.is_empty())
        } else {
            Some(p.requested_by)
        }
    });
    // the rule let them in through the tree: a free partition shows nothing
    Ok(Some(tree.unwrap_or_default()))
}

fn body(csv: bool, text: String) -> Response {
    let kind = if csv { "text/csv; charset=utf-8" } else { "application/json" };
    (StatusCode::OK, [(header::CONTENT_TYPE, kind)], text).into_response()
}

fn csv_text(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    // (writing to memory cannot fail)
    let _ = w.write_record(header);
    for r in rows {
        let _ = w.write_record(&r);
    }
    String::from_utf8_lossy(&w.into_inner().unwrap_or_default()).into_owned()
}

fn event_json(e: &Event) -> J {
    json!({
        "time": e.time, "iso": iso(e.time), "kind": e.kind.name(), "computer": e.computer, "partition": e.partition,
        "tree": e.tree, "state": e.state, "message": e.message, "software": e.software,
    })
}

async fn events(State(app): State<Shared>, who: Option<Extension<Identity>>, headers: HeaderMap, uri: Uri) -> Response {
    let r = async {
        let args = Args::of(&uri);
        let (since, until) = args.window()?;
        let limit = match args.get("limit") {
            Some(l) => l.parse::<usize>().map_err(|_| bad(format!("'limit': not a count: {}", crate::limits::excerpt(l, 100))))?,
            None => DEFAULT_EVENTS,
        };
        let text = |k: &str| args.get(k).map(str::to_string);
        let filter = EventFilter { computer: text("computer"), partition: text("partition"), tree: text("tree"), since, until, limit };
        let who = who.map(|Extension(w)| w);
        let list = read(&app, move |tx| {
            let mut filter = filter.clone();
            if let (Some(c), Some(p)) = (&filter.computer, &filter.partition) {
                if let Some(t) = tree_restriction(tx, who.as_ref(), c, p)? {
                    if filter.tree.as_ref().is_some_and(|f| *f != t) {
                        return Ok(Vec::new());
                    }
                    filter.tree = Some(t);
                }
            }
            Ok(super::events(tx, &filter)?)
        })
        .await?;
        Ok::<_, ApiError>((args.csv(&headers), list))
    };
    match r.await {
        Ok((true, list)) => {
            let header = ["time", "iso", "kind", "computer", "partition", "tree", "state", "message", "software"];
            let rows = list.iter().map(|e| {
                let o = |v: &Option<String>| v.clone().unwrap_or_default();
                vec![
                    e.time.to_string(),
                    iso(e.time),
                    e.kind.name().into(),
                    e.computer.clone(),
                    e.partition.clone(),
                    o(&e.tree),
                    o(&e.state),
                    o(&e.message),
                    o(&e.software),
                ]
            });
            body(true, csv_text(&header, rows))
        }
        Ok((false, list)) => body(false, json!({"events": list.iter().map(event_json).collect::<Vec<_>>()}).to_string()),
        Err(e) => e.into_response(),
    }
}

/// The scope a usage call names.
fn scope_of(args: &Args) -> Result<(Scope, String), ApiError> {
    let id = args.get("id").ok_or_else(|| bad("missing 'id'".into()))?.to_string();
    let scope = match args.get("scope").unwrap_or("") {
        "partition" => match id.rsplit_once('/') {
            Some((c, p)) if !c.is_empty() && !p.is_empty() => Scope::Partition { computer: c.into(), partition: p.into() },
            _ => return Err(bad("a partition's 'id' is <computer>/<partition>".into())),
        },
        "tree" => Scope::Tree(id.clone()),
        "computer" => Scope::Computer(id.clone()),
        other => return Err(bad(format!("'scope' is partition, tree or computer, not '{}'", crate::limits::excerpt(other, 100)))),
    };
    Ok((scope, id))
}

async fn usage(State(app): State<Shared>, who: Option<Extension<Identity>>, headers: HeaderMap, uri: Uri) -> Response {
    let r = async {
        let args = Args::of(&uri);
        let (scope, id) = scope_of(&args)?;
        let bucket = Bucket::parse(args.get("bucket").unwrap_or("hour")).ok_or_else(|| bad("'bucket' is hour or day".into()))?;
        let (since, until) = args.window()?;
        let query = UsageQuery { scope, bucket: bucket.seconds(), since, until, limit: MAX_BUCKETS, tree: None };
        let who = who.map(|Extension(w)| w);
        let buckets = read(&app, move |tx| {
            let mut query = query.clone();
            if let Scope::Partition { computer, partition } = &query.scope {
                query.tree = tree_restriction(tx, who.as_ref(), computer, partition)?;
            }
            Ok(super::usage(tx, &query)?)
        })
        .await?;
        Ok::<_, ApiError>((args.csv(&headers), args.get("scope").unwrap_or("").to_string(), id, bucket, buckets))
    };
    match r.await {
        Ok((true, _, _, _, buckets)) => {
            let rows = buckets.into_iter().map(|b| vec![iso(b.start as f64), b.resource, b.unit, b.quantity.to_string()]);
            body(true, csv_text(&["start", "resource", "unit", "quantity"], rows))
        }
        Ok((false, scope, id, bucket, buckets)) => {
            let series: Vec<J> = super::series(buckets)
                .into_iter()
                .map(|s| {
                    let points: Vec<J> =
                        s.points.iter().map(|(start, q)| json!({"start": start, "iso": iso(*start as f64), "quantity": q})).collect();
                    json!({"resource": s.resource, "unit": s.unit, "points": points})
                })
                .collect();
            body(false, json!({"scope": scope, "id": id, "bucket": bucket.name(), "series": series}).to_string())
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_seconds_or_iso_dates() {
        assert_eq!(parse_time("1795996800"), Some(1_795_996_800.0));
        assert_eq!(parse_time("1795996800.5"), Some(1_795_996_800.5));
        assert_eq!(parse_time("2026-11-30"), Some(1_795_996_800.0));
        assert_eq!(parse_time("2026-11-30T01:00:00Z"), Some(1_796_000_400.0));
        assert_eq!(parse_time("2026-11-30T03:00:00+02:00"), Some(1_796_000_400.0));
        assert_eq!(parse_time("2026-11-30T01:00:00"), Some(1_796_000_400.0));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("inf"), None);
        assert_eq!(iso(1_796_000_400.7), "2026-11-30T01:00:00Z");
    }
}
