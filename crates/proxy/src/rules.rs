//! Who may do what: the one rule table of the master ([`RULES`]) and its
//! enforcement ([`authorize`], a layer on every route of the router).
//!
//! Every call is authorized here before any handler runs: the route is
//! looked up in [`RULES`] (a route without a rule is refused), the identity
//! is read from the client certificate the TLS handshake verified
//! ([`crate::tls::ClientSerial`] → the store's record of what the CA issued),
//! and the rule decides from the identity, the object the call names (form
//! field, query argument, path) and what the store knows of it (which
//! computer hosts a partition, who requested it, which users may use an
//! instance tree or a computer). A refusal is a 403 whose one line names the
//! identity and the object; it is logged and changes nothing.
//!
//! In the local-cloud mode (no CA: plain HTTP on loopback, or `insecure`)
//! there are no identities and every call is allowed, as in the Python proxy.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use slap::marshal::Value;

use crate::app::{error_page, App};
use crate::limits::excerpt;
use crate::master::MasterError;
use crate::store::{Store, StoreError, Tx};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No client certificate.
    Anonymous,
    /// A node, by its computer id.
    Computer(String),
    /// A software instance: its partition on its computer.
    Partition {
        /// The computer hosting the partition.
        computer: String,
        /// The partition id (`slappartN`).
        partition: String,
    },
    /// A person.
    User(String),
    /// The master's administrator: everything.
    Administrator(String),
    /// A certificate revoked (its serial): refused everywhere.
    Revoked(String),
    /// A certificate signed by the CA that the store does not know, or past
    /// its end (its serial): refused everywhere.
    Unknown(String),
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = |s: &str| excerpt(s, 100).into_owned();
        match self {
            Identity::Anonymous => write!(f, "anonymous"),
            Identity::Computer(c) => write!(f, "computer {}", e(c)),
            Identity::Partition { computer, partition } => write!(f, "partition {} of {}", e(partition), e(computer)),
            Identity::User(u) => write!(f, "user {}", e(u)),
            Identity::Administrator(a) => write!(f, "administrator {}", e(a)),
            Identity::Revoked(s) => write!(f, "revoked certificate {s}"),
            Identity::Unknown(s) => write!(f, "unknown certificate {s}"),
        }
    }
}

/// Where a rule reads the object of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// A query argument (GET) or form field (POST).
    Field(&'static str),
    /// The path parameter of the route (`{title}`, `{reference}`).
    Path,
    /// The computer reference inside the marshalled format report (`xml`).
    FormatReport,
    /// A string field of the JSON body (the JSON-RPC API).
    Json(&'static str),
}

/// What a route allows (the administrator is allowed everywhere, a revoked
/// or unknown certificate nowhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone, anonymous included (nothing private, nothing changed).
    Public,
    /// Anyone with a certificate.
    Authenticated,
    /// Users (their own objects are filtered by the handler).
    People,
    /// The administrator only.
    Administrator,
    /// Anyone: the one-time token the call carries is its authorization,
    /// checked (and spent) by the handler.
    Token,
    /// The computer named acts on itself.
    Computer(Arg),
    /// The computer named, and the users it is open to.
    ComputerUser(Arg),
    /// The users the computer named is open to (supply, remove).
    Supply(Arg),
    /// The computer hosting the partition named (computer, partition).
    Hosted(Arg, Arg),
    /// The partition named (computer, partition): its computer, itself, the
    /// partition that requested it, the users of its tree.
    Instance(Arg, Arg),
    /// The users of the instance tree titled so.
    Tree(Arg),
    /// `requestComputerPartition`: a user for a tree of theirs (a new title
    /// becomes theirs) on a computer open to them; a partition for its own
    /// children in its tree, as itself (`X-SlapPartition`).
    Request,
    /// The instance an id of the JSON-RPC API names
    /// (`<title>___<root>___<0|1>`, [`crate::jsonrpc::parse_guid`]): as
    /// [`Rule::Instance`] for its partition (a shared instance: its host's,
    /// and the partition that requested it), the users of its tree.
    Guid(Arg),
    /// The computer hosting the instance an id names (its reports).
    GuidHost(Arg),
    /// `slapos.post.v0.software_instance`: as [`Rule::Request`], the title,
    /// SLA and requester read from the JSON body and `X-SlapPartition`.
    JsonRequest,
    /// The binary cache: reading (GET) is public; storing is for computers
    /// (nodes upload what they built). The body is not read to decide.
    Cache,
    /// The accounting (`/api/events`, `/api/usage`): a computer its own
    /// records, a person those of their instance trees and computers, by
    /// what the call names (`scope`+`id`, or `computer`, `partition`, `tree`).
    Accounting,
}

use Arg::{Field as F, FormatReport, Json as J, Path};

/// The rule of every route of the master. A route of the router missing
/// here is refused to everyone (and fails the authorization matrix test).
pub const RULES: &[(&str, Rule)] = &[
    ("/", Rule::Public),
    ("/getRunId", Rule::Public),
    ("/getSoftwareReleaseListFromSoftwareProduct", Rule::Authenticated),
    ("/getFullComputerInformation", Rule::Computer(F("computer_id"))),
    ("/getComputerInformation", Rule::Computer(F("computer_id"))),
    ("/loadComputerConfigurationFromXML", Rule::Computer(FormatReport)),
    ("/buildingSoftwareRelease", Rule::Computer(F("computer_id"))),
    ("/availableSoftwareRelease", Rule::Computer(F("computer_id"))),
    ("/softwareReleaseError", Rule::Computer(F("computer_id"))),
    ("/destroyedSoftwareRelease", Rule::Computer(F("computer_id"))),
    ("/useComputer", Rule::Computer(F("computer_id"))),
    ("/computerBang", Rule::Computer(F("computer_id"))),
    ("/generateComputerCertificate", Rule::Computer(F("computer_id"))),
    ("/revokeComputerCertificate", Rule::Computer(F("computer_id"))),
    ("/supplySupply", Rule::Supply(F("computer_id"))),
    ("/getComputerPartitionCertificate", Rule::Hosted(F("computer_id"), F("computer_partition_id"))),
    ("/startedComputerPartition", Rule::Hosted(F("computer_id"), F("computer_partition_id"))),
    ("/stoppedComputerPartition", Rule::Hosted(F("computer_id"), F("computer_partition_id"))),
    ("/destroyedComputerPartition", Rule::Hosted(F("computer_id"), F("computer_partition_id"))),
    ("/registerComputerPartition", Rule::Instance(F("computer_reference"), F("computer_partition_reference"))),
    ("/getComputerPartitionStatus", Rule::Instance(F("computer_id"), F("computer_partition_id"))),
    ("/setComputerPartitionConnectionXml", Rule::Instance(F("computer_id"), F("computer_partition_id"))),
    ("/softwareInstanceError", Rule::Instance(F("computer_id"), F("computer_partition_id"))),
    ("/softwareInstanceBang", Rule::Instance(F("computer_id"), F("computer_partition_id"))),
    ("/softwareInstanceRename", Rule::Instance(F("computer_id"), F("computer_partition_id"))),
    ("/updateComputerPartitionRelatedInstanceList", Rule::Hosted(F("computer_id"), F("computer_partition_id"))),
    ("/requestComputerPartition", Rule::Request),
    // the frontend bypass's relay reaches any host: only for identified callers
    ("/http_proxy/{scheme}/{netloc}", Rule::Authenticated),
    ("/http_proxy/{scheme}/{netloc}/", Rule::Authenticated),
    ("/http_proxy/{scheme}/{netloc}/{*path}", Rule::Authenticated),
    ("/hateoas", Rule::People),
    ("/hateoas/", Rule::People),
    ("/hateoas/partitions/{title}", Rule::Tree(Path)),
    ("/hateoas/shared/{title}", Rule::Tree(Path)),
    ("/hateoas/computers/{reference}", Rule::ComputerUser(Path)),
    ("/identity/token", Rule::Administrator),
    ("/identity/grant", Rule::Administrator),
    ("/identity/revoke", Rule::Administrator),
    ("/Person_requestComputer", Rule::Token),
    ("/Person_getCertificate", Rule::Token),
    ("/shacache/cache", Rule::Cache),
    ("/shacache/cache/", Rule::Cache),
    ("/shacache/cache/{sha512}", Rule::Cache),
    ("/shacache/dir/{key}", Rule::Cache),
    ("/shacache/update", Rule::Administrator),
    ("/api/events", Rule::Accounting),
    ("/api/usage", Rule::Accounting),
    // the JSON-RPC API (proxy::jsonrpc), as its SLAP equivalents
    ("/json_rpc.json", Rule::Public),
    ("/json_rpc_experimental.json", Rule::Public),
    ("/slapos.get.v0.hateoas_url", Rule::Public),
    ("/slapos.remove.v0.compute_node_certificate", Rule::Computer(J("computer_guid"))),
    ("/slapos.post.v0.compute_node_certificate", Rule::Computer(J("computer_guid"))),
    ("/slapos.post.v0.compute_node_usage", Rule::Computer(J("computer_guid"))),
    ("/slapos.put.v0.compute_node_bang", Rule::Computer(J("computer_guid"))),
    ("/slapos.put.v0.compute_node_format", Rule::Computer(J("computer_guid"))),
    ("/slapos.put.v0.software_installation_reported_state", Rule::Computer(J("computer_guid"))),
    ("/slapos.put.v0.software_installation_error", Rule::Computer(J("computer_guid"))),
    ("/slapos.allDocs.v0.compute_node_instance_list", Rule::Computer(J("computer_guid"))),
    ("/slapos.allDocs.v0.compute_node_software_installation_list", Rule::ComputerUser(J("computer_guid"))),
    ("/slapos.get.v0.compute_node_status", Rule::ComputerUser(J("computer_guid"))),
    ("/slapos.post.v0.software_installation", Rule::Supply(J("computer_guid"))),
    ("/slapos.get.v0.compute_partition", Rule::Instance(J("computer_guid"), J("compute_partition_id"))),
    ("/slapos.get.v0.software_instance", Rule::Guid(J("instance_guid"))),
    ("/slapos.get.v0.software_instance_certificate", Rule::Guid(J("instance_guid"))),
    ("/slapos.allDocs.v0.instance_node_instance_list", Rule::Guid(J("instance_guid"))),
    ("/slapos.put.v0.software_instance_connection_parameter", Rule::Guid(J("instance_guid"))),
    ("/slapos.put.v0.software_instance_error", Rule::Guid(J("instance_guid"))),
    ("/slapos.put.v0.software_instance_bang", Rule::Guid(J("instance_guid"))),
    ("/slapos.put.v0.software_instance_title", Rule::Guid(J("instance_guid"))),
    ("/slapos.put.v0.software_instance_reported_state", Rule::GuidHost(J("instance_guid"))),
    ("/slapos.post.v0.software_instance", Rule::JsonRequest),
    ("/slapos.get.v0.instance_tree", Rule::Tree(J("title"))),
    ("/slapos.allDocs.v0.instance_tree_list", Rule::People),
    ("/slapos.allDocs.WIP.compute_node_list", Rule::People),
    // the parameter schema of a software release supplied here (the panel)
    ("/api/schema", Rule::Authenticated),
    // the panel shows and changes the whole site: the administrator's (its
    // files are public: nothing in them is private)
    ("/panel/", Rule::Administrator),
    ("/panel/instance", Rule::Administrator),
    ("/panel/request", Rule::Administrator),
    ("/panel/supply", Rule::Administrator),
    ("/panel/instance/state", Rule::Administrator),
    ("/panel/instance/parameters", Rule::Administrator),
    ("/panel/assets/{name}", Rule::Public),
];

/// The rule of a route (as the router spells it).
pub fn rule_of(route: &str) -> Option<Rule> {
    RULES.iter().find(|(r, _)| *r == route).map(|(_, rule)| *rule)
}

/// Grantee of an object open to every user.
pub const EVERYONE: &str = "*";

/// What a call names: its fields (query or form), its path parameter and the
/// `X-SlapPartition` header.
#[derive(Debug, Clone, Default)]
pub struct Call {
    /// The form and query fields.
    pub fields: Vec<(String, String)>,
    /// The route's path parameter (a title or a computer reference).
    pub path: Option<String>,
    /// The `X-SlapPartition` header: (computer, partition).
    pub authorization: Option<(String, String)>,
    /// Bounds of a marshalled field read here (the format report).
    pub marshal: slap::marshal::Limits,
    /// The computer requests go to without a `computer_guid`.
    pub default_computer: String,
    /// Whether the call only reads (GET or HEAD).
    pub reads: bool,
    /// The JSON body of a JSON-RPC call (None: not JSON).
    pub json: Option<serde_json::Value>,
}

impl Call {
    fn field(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn arg(&self, arg: Arg) -> Result<String, String> {
        match arg {
            Arg::Field(key) => self.field(key).map(str::to_string).ok_or_else(|| format!("no '{key}' in the call")),
            Arg::Path => self.path.clone().ok_or_else(|| "no object in the path".into()),
            Arg::FormatReport => {
                let xml = self.field("xml").ok_or("no 'xml' in the call")?;
                let v = slap::marshal::decode_with(xml, &self.marshal).map_err(|e| format!("field 'xml': {e}"))?;
                v.as_dict()
                    .and_then(|d| d.get("reference"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| "no computer reference in the format report".into())
            }
            Arg::Json(key) => self.json_text(key).map(str::to_string).ok_or_else(|| format!("no '{key}' in the call")),
        }
    }

    fn json_text(&self, key: &str) -> Option<&str> {
        self.json.as_ref()?.get(key)?.as_str()
    }
}

/// Allowed, or refused with the reason (without the identity, added by the caller).
pub type Decision = Result<(), String>;

fn quoted(s: &str) -> String {
    format!("'{}'", excerpt(s, 100))
}

/// The root title of the tree of a partition (None: free or unknown).
fn tree_of(tx: &mut dyn Tx, computer: &str, partition: &str) -> Result<Option<String>, StoreError> {
    Ok(tx.partition(computer, partition)?.and_then(|p| {
        if p.requested_by.is_empty() {
            p.partition_reference.filter(|t| !t.is_empty())
        } else {
            Some(p.requested_by)
        }
    }))
}

/// Whether `user` may use the object (`tree` title or `computer` id): named
/// among its grantees, or it is open to everyone.
pub fn may_use(tx: &mut dyn Tx, kind: &str, reference: &str, user: &str) -> Result<bool, StoreError> {
    Ok(tx.grantees(kind, reference)?.iter().any(|g| g == user || g == EVERYONE))
}

/// Decides a call of `rule` by `who` (not the administrator, not revoked).
/// Only [`Rule::Request`] writes: a user's new tree title becomes theirs.
pub fn decide(tx: &mut dyn Tx, who: &Identity, rule: Rule, call: &Call) -> Result<Decision, StoreError> {
    use Identity as I;
    let deny = |what: String| Ok(Err(what));
    let arg = |a: Arg| call.arg(a);
    match rule {
        Rule::Public | Rule::Token => Ok(Ok(())),
        Rule::Authenticated if *who != I::Anonymous => Ok(Ok(())),
        Rule::Authenticated => deny("a certificate is needed".into()),
        Rule::People if matches!(who, I::User(_)) => Ok(Ok(())),
        Rule::People => deny("only people may list".into()),
        Rule::Administrator => deny("only the administrator may".into()),
        Rule::Computer(a) => {
            let c = match arg(a) {
                Ok(c) => c,
                Err(e) => return deny(e),
            };
            match who {
                I::Computer(me) if *me == c => Ok(Ok(())),
                _ => deny(format!("may not act as computer {}", quoted(&c))),
            }
        }
        Rule::ComputerUser(a) | Rule::Supply(a) => {
            let c = match arg(a) {
                Ok(c) => c,
                Err(e) => return deny(e),
            };
            let ok = match who {
                I::Computer(me) => *me == c && matches!(rule, Rule::ComputerUser(_)),
                I::User(u) => may_use(tx, "computer", &c, u)?,
                _ => false,
            };
            if ok {
                Ok(Ok(()))
            } else {
                deny(format!("may not use computer {}", quoted(&c)))
            }
        }
        Rule::Hosted(ac, ap) => {
            let (c, p) = match (arg(ac), arg(ap)) {
                (Ok(c), Ok(p)) => (c, p),
                (Err(e), _) | (_, Err(e)) => return deny(e),
            };
            match who {
                I::Computer(me) if *me == c => Ok(Ok(())),
                _ => deny(format!("may not act for the host of partition {} of {}", quoted(&p), quoted(&c))),
            }
        }
        Rule::Instance(ac, ap) => {
            let (c, p) = match (arg(ac), arg(ap)) {
                (Ok(c), Ok(p)) => (c, p),
                (Err(e), _) | (_, Err(e)) => return deny(e),
            };
            if instance_allowed(tx, who, &c, &p)? {
                Ok(Ok(()))
            } else {
                deny(format!("may not act on partition {} of {}", quoted(&p), quoted(&c)))
            }
        }
        Rule::Tree(a) => {
            let t = match arg(a) {
                Ok(t) => t,
                Err(e) => return deny(e),
            };
            match who {
                I::User(u) if may_use(tx, "tree", &t, u)? => Ok(Ok(())),
                _ => deny(format!("may not see instance tree {}", quoted(&t))),
            }
        }
        Rule::Request => request(tx, who, call),
        Rule::JsonRequest => json_request(tx, who, call),
        Rule::Guid(a) | Rule::GuidHost(a) => {
            let g = match arg(a) {
                Ok(g) => g,
                Err(e) => return deny(e),
            };
            if guid_allowed(tx, who, &g, matches!(rule, Rule::GuidHost(_)))? {
                Ok(Ok(()))
            } else {
                deny(format!("may not act on instance {}", quoted(&g)))
            }
        }
        Rule::Cache if call.reads || matches!(who, I::Computer(_)) => Ok(Ok(())),
        Rule::Cache => deny("only computers may store in the binary cache".into()),
        Rule::Accounting => accounting(tx, who, call),
    }
}

/// [`Rule::Accounting`]: the objects a call names — `scope` and `id` (a
/// partition `<computer>/<partition>`, a tree, a computer), or the filters
/// `computer`, `partition` and `tree` — one of which the caller must have:
/// a computer itself, a person a tree or computer open to them (or the
/// tree of the partition named, through which the handler then restricts).
fn accounting(tx: &mut dyn Tx, who: &Identity, call: &Call) -> Result<Decision, StoreError> {
    let id = call.field("id").map(str::to_string);
    let (computer, partition, tree) = match call.field("scope") {
        Some("partition") => match id.as_deref().and_then(|i| i.rsplit_once('/')) {
            Some((c, p)) => (Some(c.to_string()), Some(p.to_string()), None),
            None => return Ok(Err("no partition named".into())),
        },
        Some("tree") => (None, None, id),
        Some("computer") => (id, None, None),
        Some(other) => return Ok(Err(format!("unknown scope {}", quoted(other)))),
        None => {
            let f = |k: &str| call.field(k).filter(|v| !v.is_empty()).map(str::to_string);
            (f("computer"), f("computer").and(f("partition")), f("tree"))
        }
    };
    let ok = match who {
        Identity::Computer(me) => computer.as_deref() == Some(me.as_str()),
        Identity::User(u) => {
            let mut ok = false;
            if let Some(t) = &tree {
                ok |= may_use(tx, "tree", t, u)?;
            }
            if let Some(c) = &computer {
                ok = ok || may_use(tx, "computer", c, u)?;
                if let (false, Some(p)) = (ok, &partition) {
                    ok = match tree_of(tx, c, p)? {
                        Some(t) => may_use(tx, "tree", &t, u)?,
                        None => false,
                    };
                }
            }
            ok
        }
        _ => false,
    };
    if ok {
        return Ok(Ok(()));
    }
    let named = [("computer", &computer), ("partition", &partition), ("instance tree", &tree)]
        .iter()
        .filter_map(|(what, v)| v.as_ref().map(|v| format!("{what} {}", quoted(v))))
        .collect::<Vec<_>>();
    if named.is_empty() {
        Ok(Err("may not see the whole site's accounting (name a computer or an instance tree)".into()))
    } else {
        Ok(Err(format!("may not see the accounting of {}", named.join(", "))))
    }
}

/// [`Rule::Instance`]: its computer, itself, its requester, its tree's users.
fn instance_allowed(tx: &mut dyn Tx, who: &Identity, c: &str, p: &str) -> Result<bool, StoreError> {
    Ok(match who {
        Identity::Computer(me) => me == c,
        Identity::Partition { computer, partition } => {
            if computer == c && partition == p {
                return Ok(true);
            }
            let (Some(target), Some(mine)) = (tx.partition(c, p)?, tree_of(tx, computer, partition)?) else {
                return Ok(false);
            };
            let target_tree =
                if target.requested_by.is_empty() { target.partition_reference.clone() } else { Some(target.requested_by.clone()) };
            target.requester_id == *partition && target_tree.as_deref() == Some(mine.as_str())
        }
        Identity::User(u) => match tree_of(tx, c, p)? {
            Some(tree) => may_use(tx, "tree", &tree, u)?,
            None => false,
        },
        _ => false,
    })
}

/// [`Rule::Guid`] and [`Rule::GuidHost`] (`host_only`): the partition of
/// the instance (a shared one: its host) decides as [`Rule::Instance`] (or
/// [`Rule::Hosted`]); the partition that requested a shared instance and
/// the users of the tree are allowed too (not for `host_only`).
fn guid_allowed(tx: &mut dyn Tx, who: &Identity, guid: &str, host_only: bool) -> Result<bool, StoreError> {
    let Some((title, root, shared)) = crate::jsonrpc::parse_guid(guid) else {
        return Ok(false);
    };
    let (computer, partition, requester) = if shared {
        let reference = format!("{root}_{title}");
        match tx.slaves()?.into_iter().find(|s| s.reference == reference) {
            Some(s) => (s.computer_reference, s.hosted_by.unwrap_or_default(), Some(s.requester_id)),
            None => return Ok(false),
        }
    } else {
        match tx.partition_by_title(&title, &root)? {
            Some(p) => (p.computer_reference, p.reference, None),
            None => return Ok(false),
        }
    };
    if host_only {
        return Ok(matches!(who, Identity::Computer(me) if *me == computer));
    }
    if let (Identity::Partition { computer: c, partition: p }, Some(r)) = (who, &requester) {
        if *c == computer && p == r {
            return Ok(true);
        }
    }
    instance_allowed(tx, who, &computer, &partition)
}

/// [`Rule::JsonRequest`]: [`Rule::Request`] with the title, the SLA's
/// computer and the requester of a JSON body (only `X-SlapPartition`).
fn json_request(tx: &mut dyn Tx, who: &Identity, call: &Call) -> Result<Decision, StoreError> {
    let title = call.json_text("title").unwrap_or("").to_string();
    let sla = call.json.as_ref().and_then(|j| j.get("sla_parameters")?.get("computer_guid")?.as_str());
    let computer = sla.map(str::to_string).unwrap_or_else(|| call.default_computer.clone());
    let claimed: Vec<(String, String)> = call.authorization.iter().cloned().collect();
    request_of(tx, who, &title, &claimed, computer)
}

/// [`Rule::Request`].
fn request(tx: &mut dyn Tx, who: &Identity, call: &Call) -> Result<Decision, StoreError> {
    let title = call.field("partition_reference").unwrap_or("").to_string();
    let claimed: Vec<(String, String)> = call
        .authorization
        .iter()
        .cloned()
        .chain(match (call.field("computer_id"), call.field("computer_partition_id")) {
            (Some(c), Some(p)) => Some((c.to_string(), p.to_string())),
            _ => None,
        })
        .collect();
    request_of(tx, who, &title, &claimed, requested_computer(call))
}

/// Who may request the instance `title` on `computer`, claiming to be the
/// partitions `claimed` (`X-SlapPartition`, form fields).
fn request_of(
    tx: &mut dyn Tx,
    who: &Identity,
    title: &str,
    claimed: &[(String, String)],
    computer: String,
) -> Result<Decision, StoreError> {
    let title = title.to_string();
    match who {
        Identity::User(u) => {
            if !claimed.is_empty() {
                return Ok(Err("a person may not request as a partition".into()));
            }
            if !may_use(tx, "computer", &computer, u)? {
                return Ok(Err(format!("may not use computer {}", quoted(&computer))));
            }
            let users = tx.grantees("tree", &title)?;
            if users.is_empty() {
                tx.grant("tree", &title, u)?;
            } else if !users.iter().any(|g| g == u) {
                return Ok(Err(format!("may not request instance tree {}", quoted(&title))));
            }
            Ok(Ok(()))
        }
        Identity::Partition { computer: me_c, partition: me_p } => {
            if claimed.is_empty() || claimed.iter().any(|(c, p)| c != me_c || p != me_p) {
                return Ok(Err("a partition requests as itself (X-SlapPartition)".into()));
            }
            let Some(tree) = tree_of(tx, me_c, me_p)? else {
                return Ok(Err("the requesting partition hosts no instance".into()));
            };
            if let Some(existing) = tx.partition_by_title(&title, &tree)? {
                // not itself either: re-requesting would make it its own requester
                if existing.requester_id != *me_p || (existing.computer_reference == *me_c && existing.reference == *me_p) {
                    return Ok(Err(format!("instance {} of tree {} was not requested by it", quoted(&title), quoted(&tree))));
                }
            }
            if let Some(c) = Some(computer).filter(|c| c != me_c) {
                let owners = tx.grantees("tree", &tree)?;
                let mut open = false;
                for o in &owners {
                    open |= may_use(tx, "computer", &c, o)?;
                }
                if !open {
                    return Ok(Err(format!("may not use computer {}", quoted(&c))));
                }
            }
            Ok(Ok(()))
        }
        _ => Ok(Err("only people and partitions may request".into())),
    }
}

/// The `computer_guid` of a request's filter, or the site's default computer.
fn requested_computer(call: &Call) -> String {
    let guid = || {
        let v = slap::marshal::decode_with(call.field("filter_xml")?, &call.marshal).ok()?;
        v.as_dict()?.get("computer_guid")?.as_str().map(str::to_string)
    };
    guid().unwrap_or_else(|| call.default_computer.clone())
}

/// The identity of a connection's verified client certificate.
pub fn identity_of(tx: &mut dyn Tx, serial: Option<&crate::tls::ClientSerial>) -> Result<Identity, StoreError> {
    let Some(serial) = serial else {
        return Ok(Identity::Anonymous);
    };
    let s = serial.0.clone();
    let Some(row) = tx.certificate(&s)? else {
        return Ok(Identity::Unknown(s));
    };
    if row.revoked.is_some() {
        return Ok(Identity::Revoked(s));
    }
    if row.not_after < crate::master::now() {
        return Ok(Identity::Unknown(s));
    }
    Ok(match row.kind.as_str() {
        "computer" => Identity::Computer(row.name),
        "partition" => Identity::Partition { computer: row.computer_reference, partition: row.name },
        "user" => Identity::User(row.name),
        "administrator" => Identity::Administrator(row.name),
        _ => Identity::Unknown(s),
    })
}

fn refuse(who: &Identity, route: &str, why: &str) -> Response {
    let message = format!("{who} refused on {route}: {why}");
    tracing::warn!("{message}");
    if route.starts_with("/slapos.") {
        // the JSON-RPC API answers its errors as JSON documents
        return crate::jsonrpc::error_document(403, &message);
    }
    error_page(StatusCode::FORBIDDEN, &message)
}

/// The layer on every route: finds the route's rule and the caller's
/// identity, decides, and refuses (403) or passes the request on with its
/// [`Identity`] in the extensions.
pub async fn authorize(
    State(app): State<Arc<App>>,
    path: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Response {
    if app.identity.is_none() {
        return next.run(req).await;
    }
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_default();
    let (parts, body) = req.into_parts();
    let path = path.ok().and_then(|p| p.iter().next().map(|(_, v)| v.to_string()));
    let serial = parts.extensions.get::<crate::tls::ClientSerial>().cloned();
    let Some(rule) = rule_of(&route) else {
        return refuse(&Identity::Anonymous, &route, "this route has no rule");
    };
    // the binary cache decides without the body (it streams to disk)
    let streamed = matches!(rule, Rule::Cache);
    let (bytes, body) = if streamed {
        (Ok(axum::body::Bytes::new()), Some(body))
    } else {
        (axum::body::to_bytes(body, app.limits.max_request_size).await, None)
    };
    let bytes: axum::body::Bytes = match bytes {
        Ok(b) => b,
        Err(_) => {
            let max = app.limits.max_request_size;
            return error_page(StatusCode::PAYLOAD_TOO_LARGE, &format!("request body larger than {max} bytes"));
        }
    };
    let mut call = Call {
        path,
        authorization: crate::http::parse_authorization(&parts.headers),
        marshal: app.limits.marshal,
        default_computer: app.site.computer_id.clone(),
        reads: parts.method == Method::GET || parts.method == Method::HEAD,
        ..Call::default()
    };
    let form = if parts.method == Method::GET { parts.uri.query().unwrap_or("").as_bytes().to_vec() } else { bytes.to_vec() };
    let app2 = app.clone();
    let bytes_for_json = bytes.clone();
    let route2 = route.clone();
    let decided = tokio::task::spawn_blocking(move || {
        let route = route2;
        call.fields = form_urlencoded::parse(&form).into_owned().take(app2.limits.max_fields + 1).collect();
        // the JSON-RPC API names its objects in a JSON body
        if route.starts_with("/slapos.") {
            call.json = serde_json::from_slice(&bytes_for_json).ok();
        }
        app2.store.transaction(|tx| -> Result<_, MasterError> {
            let who = identity_of(tx, serial.as_ref())?;
            let decision = match (&who, rule) {
                (Identity::Revoked(_), _) => Err("the certificate is revoked".to_string()),
                (Identity::Unknown(_), _) => Err("the certificate is not known to this master".to_string()),
                (Identity::Administrator(_), _) => Ok(()),
                _ => decide(tx, &who, rule, &call)?,
            };
            Ok((who, decision))
        })
    })
    .await;
    match decided {
        Ok(Ok((who, Ok(())))) => {
            let mut req = Request::from_parts(parts, body.unwrap_or_else(|| Body::from(bytes)));
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        Ok(Ok((who, Err(why)))) => refuse(&who, &route, &why),
        Ok(Err(e)) => axum::response::IntoResponse::into_response(e),
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("internal failure: {e}")),
    }
}
