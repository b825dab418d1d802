//! Identities at the master: the security options of `[slapproxy]`
//! ([`Security`]), the running [`Authority`] (the CA and validity periods),
//! and the routes that issue and revoke certificates and spend one-time
//! tokens: `generateComputerCertificate`, `revokeComputerCertificate`,
//! `getComputerPartitionCertificate` (SLAP), `/identity/token` and
//! `/identity/grant`, `/identity/revoke` (the administrator), `/Person_requestComputer` (a node
//! joins with a token, as `slapos node register` calls SlapOS) and
//! `/Person_getCertificate` (a person gets a certificate with a token, as
//! `slapos configure client` calls SlapOS). Tokens come in the
//! `X-Access-Token` header (SlapOS) or a `token` field. Who may call them is decided by [`crate::rules`], like every route.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use slap::marshal::{self, Value};
use slapos_config::Config;

use crate::app::{error_page, App};
use crate::ca::{Ca, Subject};
use crate::master::{now, MasterError};
use crate::store::{Store, TokenRow, Tx};

type Shared = Arc<App>;

/// How long what the CA issues is valid (`[slapproxy]
/// computer_certificate_days`, `user_certificate_days`,
/// `partition_certificate_days`, `token_hours`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Computer certificates (`computer_certificate_days`, default 365).
    pub computer: Duration,
    /// User certificates (`user_certificate_days`, default 365).
    pub user: Duration,
    /// Partition certificates (`partition_certificate_days`, default 30).
    pub partition: Duration,
    /// One-time tokens (`token_hours`, default 24).
    pub token: Duration,
}

const DAY: u64 = 24 * 3600;

impl Default for Validity {
    fn default() -> Validity {
        Validity {
            computer: Duration::from_secs(365 * DAY),
            user: Duration::from_secs(365 * DAY),
            partition: Duration::from_secs(30 * DAY),
            token: Duration::from_secs(DAY),
        }
    }
}

/// The security of a master, from `[slapproxy]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Security {
    /// Plain HTTP, no identities, everything allowed: the local cloud
    /// (loopback), or `insecure = true` elsewhere (with a warning).
    #[default]
    Open,
    /// HTTPS, client certificates, every call authorized by [`crate::rules`].
    Tls {
        /// The CA's directory (`ca_dir`, default `ca` next to the database).
        ca_dir: PathBuf,
        /// The master's own certificate and key (`cert_file`, `key_file`);
        /// None: issued by the CA.
        files: Option<(PathBuf, PathBuf)>,
        /// How long what the CA issues stays valid.
        validity: Validity,
    },
}

fn flag(config: &Config, key: &str) -> anyhow::Result<Option<bool>> {
    match config.get_nonempty("slapproxy", key).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(None),
        Some(v) if ["true", "yes", "on", "1"].contains(&v.as_str()) => Ok(Some(true)),
        Some(v) if ["false", "no", "off", "0"].contains(&v.as_str()) => Ok(Some(false)),
        Some(v) => anyhow::bail!("[slapproxy] {key} must be true or false, wrong value: '{v}'"),
    }
}

/// Whether `host` (a listening address) is loopback only.
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

impl Security {
    /// Reads `tls`, `insecure`, `cert_file`, `key_file`, `ca_dir` and the
    /// validity periods. TLS is the default when `host` is not loopback;
    /// plain HTTP there needs `insecure = true`.
    pub fn from_config(config: &Config, host: &str, database: &Path) -> anyhow::Result<Security> {
        let get = |k: &str| config.get_nonempty("slapproxy", k).map(PathBuf::from);
        let files = match (get("cert_file"), get("key_file")) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => anyhow::bail!("[slapproxy] cert_file and key_file go together"),
        };
        let insecure = flag(config, "insecure")?.unwrap_or(false);
        let tls = flag(config, "tls")?.unwrap_or(files.is_some() || !(is_loopback(host) || insecure));
        if !tls {
            anyhow::ensure!(files.is_none(), "[slapproxy] cert_file is given but tls = false");
            anyhow::ensure!(
                is_loopback(host) || insecure,
                "[slapproxy] listening on {host} without TLS lets anyone act on everything: set tls = true, or insecure = true to accept it"
            );
            return Ok(Security::Open);
        }
        let ca_dir =
            get("ca_dir").unwrap_or_else(|| database.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).join("ca"));
        let d = Validity::default();
        let days = |k, dflt: Duration| crate::limits::positive(config, k, dflt.as_secs() / DAY).map(|n| Duration::from_secs(n * DAY));
        let validity = Validity {
            computer: days("computer_certificate_days", d.computer)?,
            user: days("user_certificate_days", d.user)?,
            partition: days("partition_certificate_days", d.partition)?,
            token: Duration::from_secs(3600 * crate::limits::positive(config, "token_hours", d.token.as_secs() / 3600)?),
        };
        Ok(Security::Tls { ca_dir, files, validity })
    }
}

/// The identity side of a running master (present only with TLS).
pub struct Authority {
    /// The master's certificate authority (`ca_dir`).
    pub ca: Ca,
    /// How long what it issues stays valid.
    pub validity: Validity,
}

impl Authority {
    /// Issues a certificate for `subject` and records it, in one transaction.
    pub fn issue(&self, tx: &mut dyn Tx, subject: &Subject, valid: Duration) -> Result<crate::ca::Issued, MasterError> {
        let issued = self.ca.issue(subject, valid).map_err(|e| MasterError::Unknown(e.to_string()))?;
        tx.add_certificate(&issued.row)?;
        Ok(issued)
    }

    /// Writes the administrator's certificate and key (`admin.crt`,
    /// `admin.key`, 0600) next to the CA, when missing.
    pub fn ensure_administrator(&self, store: &impl Store) -> anyhow::Result<()> {
        let dir = self.ca.dir();
        if dir.join("admin.key").exists() {
            return Ok(());
        }
        let issued =
            store.transaction(|tx| self.issue(tx, &Subject::Administrator("admin".into()), Duration::from_secs(10 * 365 * DAY)))?;
        crate::ca::write_file(&dir.join("admin.crt"), issued.certificate_pem.as_bytes(), 0o644)?;
        crate::ca::write_file(&dir.join("admin.key"), issued.key_pem.as_bytes(), 0o600)?;
        tracing::info!("the administrator's certificate is {}/admin.crt (key admin.key)", dir.display());
        Ok(())
    }
}

/// A new one-time token: 32 random bytes, hex; the store keeps its SHA-256.
pub fn new_token() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::thread_rng().gen();
    crate::ca::hex(&bytes)
}

/// The SHA-256 (hex) of a token, as stored.
pub fn token_hash(token: &str) -> String {
    crate::ca::hex(ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes()).as_ref())
}

fn fields(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn field<'a>(f: &'a [(String, String)], key: &str) -> Result<&'a str, MasterError> {
    f.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).ok_or_else(|| MasterError::BadRequest(format!("missing field '{key}'")))
}

fn authority(app: &App) -> Result<&Authority, MasterError> {
    app.identity.as_deref().ok_or_else(|| MasterError::NotFound("this master has no certificate authority (plain HTTP)".into()))
}

async fn blocking<R: Send + 'static>(
    app: &Shared,
    f: impl FnOnce(&App) -> Result<R, MasterError> + Send + 'static,
) -> Result<R, MasterError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || f(&app)).await.map_err(|e| MasterError::Unknown(format!("internal failure: {e}")))?
}

fn marshalled_pair(certificate: &str, key: &str) -> Response {
    let d = BTreeMap::from([("certificate".to_string(), Value::str(certificate)), ("key".to_string(), Value::str(key))]);
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], marshal::encode(&Value::Dict(d)).unwrap_or_default())
        .into_response()
}

fn json(v: serde_json::Value) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// `getComputerPartitionCertificate`: a new certificate and key for the
/// partition (empty strings without a CA, as the Python proxy).
async fn partition_certificate(State(app): State<Shared>, uri: Uri) -> Response {
    let r = blocking(&app, move |app| {
        let Some(auth) = app.identity.as_deref() else {
            return Ok((String::new(), String::new()));
        };
        let q = fields(uri.query().unwrap_or("").as_bytes());
        let (c, p) = (field(&q, "computer_id")?.to_string(), field(&q, "computer_partition_id")?.to_string());
        app.store.transaction(|tx| {
            if tx.partition(&c, &p)?.is_none() {
                return Err(MasterError::NotFound(format!("Unknown partition '{p}' on computer '{c}'")));
            }
            // each call issues one: those ended are forgotten (refused by their end already)
            tx.prune_certificates("partition", now())?;
            let issued = auth.issue(tx, &Subject::Partition { computer: c.clone(), partition: p.clone() }, auth.validity.partition)?;
            Ok((issued.certificate_pem, issued.key_pem))
        })
    });
    match r.await {
        Ok((cert, key)) => marshalled_pair(&cert, &key),
        Err(e) => e.into_response(),
    }
}

/// `generateComputerCertificate`: a new certificate for the computer (its
/// earlier ones stay valid until revoked or expired: renewal).
async fn generate_computer_certificate(State(app): State<Shared>, body: Bytes) -> Response {
    let r = blocking(&app, move |app| {
        let auth = authority(app)?;
        let c = field(&fields(&body), "computer_id")?.to_string();
        app.store.transaction(|tx| auth.issue(tx, &Subject::Computer(c.clone()), auth.validity.computer))
    });
    match r.await {
        Ok(issued) => marshalled_pair(&issued.certificate_pem, &issued.key_pem),
        Err(e) => e.into_response(),
    }
}

/// `revokeComputerCertificate`: every certificate of the computer is
/// revoked, refused from the next request on.
async fn revoke_computer_certificate(State(app): State<Shared>, body: Bytes) -> Response {
    let r = blocking(&app, move |app| {
        authority(app)?;
        let c = field(&fields(&body), "computer_id")?.to_string();
        let n = app.store.transaction(|tx| tx.revoke_certificates("computer", &c, "", now()))?;
        tracing::warn!("certificates of computer {} revoked ({n})", crate::limits::excerpt(&c, 100));
        Ok(())
    });
    match r.await {
        Ok(()) => (StatusCode::OK, "").into_response(),
        Err(e) => e.into_response(),
    }
}

/// `/identity/token` (administrator): `kind` (`computer` or `user`), `name`
/// → a one-time token, its text the whole answer.
async fn mint_token(State(app): State<Shared>, body: Bytes) -> Response {
    let r = blocking(&app, move |app| {
        let auth = authority(app)?;
        let f = fields(&body);
        let (kind, name) = (field(&f, "kind")?.to_string(), field(&f, "name")?.to_string());
        if !["computer", "user"].contains(&kind.as_str()) || name.is_empty() {
            return Err(MasterError::BadRequest("a token is for a 'computer' or a 'user', with a name".into()));
        }
        let token = new_token();
        let row = TokenRow {
            hash: token_hash(&token),
            kind: kind.clone(),
            name: name.clone(),
            expires: now() + auth.validity.token.as_secs_f64(),
            used: None,
        };
        app.store.transaction(|tx| tx.add_token(&row))?;
        tracing::info!("token minted to join {kind} {}", crate::limits::excerpt(&name, 100));
        Ok(token)
    });
    match r.await {
        Ok(token) => (StatusCode::OK, token).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `/identity/revoke` (administrator): `kind` (`user` or `computer`),
/// `name` → every valid certificate of it revoked, refused from the next
/// request on; the answer is how many.
async fn revoke(State(app): State<Shared>, body: Bytes) -> Response {
    let r = blocking(&app, move |app| {
        authority(app)?;
        let f = fields(&body);
        let (kind, name) = (field(&f, "kind")?.to_string(), field(&f, "name")?.to_string());
        if !["computer", "user"].contains(&kind.as_str()) {
            return Err(MasterError::BadRequest("revoke a 'computer' or a 'user'".into()));
        }
        let n = app.store.transaction(|tx| tx.revoke_certificates(&kind, &name, "", now()))?;
        tracing::warn!("certificates of {kind} {} revoked ({n})", crate::limits::excerpt(&name, 100));
        Ok(n)
    });
    match r.await {
        Ok(n) => (StatusCode::OK, n.to_string()).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `/identity/grant` (administrator): gives `user` (`*`: everyone) the use
/// of a `computer` or an instance `tree` (`kind`, `reference`).
async fn grant(State(app): State<Shared>, body: Bytes) -> Response {
    let r = blocking(&app, move |app| {
        let f = fields(&body);
        let (kind, reference, user) = (field(&f, "kind")?, field(&f, "reference")?, field(&f, "user")?);
        if !["computer", "tree"].contains(&kind) || user.is_empty() {
            return Err(MasterError::BadRequest("grant a 'computer' or a 'tree' to a user".into()));
        }
        app.store.transaction(|tx| tx.grant(kind, reference, user))?;
        Ok(())
    });
    match r.await {
        Ok(()) => (StatusCode::OK, "OK").into_response(),
        Err(e) => e.into_response(),
    }
}

/// Spends `token` for `kind`: its name, or why it is refused.
fn spend(tx: &mut dyn Tx, token: &str, kind: &str) -> Result<String, MasterError> {
    let refused = |why: &str| MasterError::Forbidden(format!("token refused: {why}"));
    let Some(row) = tx.take_token(&token_hash(token), now())? else {
        return Err(refused("unknown token"));
    };
    if row.used.is_some() {
        return Err(refused("already used"));
    }
    if row.expires < now() {
        return Err(refused("expired"));
    }
    if row.kind != kind {
        return Err(refused(&format!("it is not for a {kind}")));
    }
    Ok(row.name)
}

/// The answer of a join: certificate, key and the CA's certificate (JSON).
/// A computer's certificate starts, as SlapOS master's, with a text line
/// naming its subject (`…CN=<id>/emailAddress…`), where the Python `slapos
/// node register` reads the computer id (PEM readers skip text before the
/// certificate).
fn joined(app: &App, issued: &crate::ca::Issued, name: &str) -> Response {
    let ca = app.identity.as_deref().map(|a| a.ca.certificate_pem()).unwrap_or("");
    let certificate = if issued.row.kind == "computer" {
        format!("Subject: O=SlapOS, OU=computer, CN={name}/emailAddress={name}@computer\n{}", issued.certificate_pem)
    } else {
        issued.certificate_pem.clone()
    };
    json(serde_json::json!({"name": name, "certificate": certificate, "key": issued.key_pem, "ca": ca}))
}

/// The token of a call: `X-Access-Token`, or the `token` field.
fn token_of(headers: &HeaderMap, f: &[(String, String)]) -> Result<String, MasterError> {
    match headers.get("x-access-token").and_then(|v| v.to_str().ok()) {
        Some(t) => Ok(t.to_string()),
        None => field(f, "token").map(str::to_string),
    }
}

/// `/Person_requestComputer`: token, `title` (the computer id) → the
/// computer's first certificate (JSON, with the CA's). The token is spent
/// even when the join is refused.
async fn join_computer(State(app): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let r = blocking(&app, move |app| {
        let auth = authority(app)?;
        let f = fields(&body);
        let (token, computer) = (token_of(&headers, &f)?, field(&f, "title")?.to_string());
        // the spent token is kept even when the join is refused: a second try needs a new one
        let name = app.store.transaction(|tx| spend(tx, &token, "computer"))?;
        app.store
            .transaction(|tx| {
                if name != computer {
                    return Err(MasterError::Forbidden(format!("token refused: it is for another computer than '{computer}'")));
                }
                if tx.computer(&computer)?.is_some() || tx.revoke_certificates("computer", &computer, "", now())? > 0 {
                    // revoke_certificates found valid ones: the computer exists; undone by the rollback
                    return Err(MasterError::Forbidden(format!("computer '{computer}' has already joined (Certificate still active.)")));
                }
                auth.issue(tx, &Subject::Computer(computer.clone()), auth.validity.computer)
            })
            .map(|issued| (issued, computer))
    });
    match r.await {
        Ok((issued, name)) => {
            tracing::info!("computer {} joined", crate::limits::excerpt(&name, 100));
            joined(&app, &issued, &name)
        }
        Err(e) => e.into_response(),
    }
}

/// `/Person_getCertificate`: token → a certificate for the user it was
/// minted for (JSON, with the CA's).
async fn join_user(State(app): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let r = blocking(&app, move |app| {
        let auth = authority(app)?;
        let token = token_of(&headers, &fields(&body))?;
        let name = app.store.transaction(|tx| spend(tx, &token, "user"))?;
        let issued = app.store.transaction(|tx| auth.issue(tx, &Subject::User(name.clone()), auth.validity.user))?;
        Ok((issued, name))
    });
    match r.await {
        Ok((issued, name)) => {
            tracing::info!("user {} got a certificate", crate::limits::excerpt(&name, 100));
            joined(&app, &issued, &name)
        }
        Err(e) => e.into_response(),
    }
}

async fn method_not_allowed() -> Response {
    error_page(StatusCode::METHOD_NOT_ALLOWED, "The method is not allowed for the requested URL.")
}

/// The routes of this module.
pub fn router() -> Router<Shared> {
    let p = |r: axum::routing::MethodRouter<Shared>| r.fallback(method_not_allowed);
    Router::new()
        .route("/getComputerPartitionCertificate", p(get(partition_certificate)))
        .route("/generateComputerCertificate", p(post(generate_computer_certificate)))
        .route("/revokeComputerCertificate", p(post(revoke_computer_certificate)))
        .route("/identity/token", p(post(mint_token)))
        .route("/identity/grant", p(post(grant)))
        .route("/identity/revoke", p(post(revoke)))
        .route("/Person_requestComputer", p(post(join_computer)))
        .route("/Person_getCertificate", p(post(join_user)))
}
