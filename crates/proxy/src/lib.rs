//! # slapos-proxy — a SlapOS master for one site
//!
//! The master behind `slapos proxy start`: the classic SLAP endpoints of
//! `slap-protocol.md` §4 with the semantics of §7 and the HATEOAS routes of
//! §10, on a SQLite file. Wire-compatible with slapos.core 1.26.1: the
//! Python client and node work against it. Beyond the Python proxy, it
//! records what nodes report (building/available/error, started/stopped,
//! destroyed, usage) and shows it (`slapos proxy show`).
//!
//! Layers: [`store`] (storage behind the narrow [`store::Tx`] interface),
//! [`master`] (what each call does, over one transaction), [`app`] (the
//! shared state and error pages), [`http`] (axum routes, form limits, access
//! log) and [`hateoas`] and [`jsonrpc`] (the JSON-RPC API) on it, [`server`] (connections: cap and timeouts,
//! TLS), [`limits`], [`show`]. Identities: [`ca`] (the certificate
//! authority), [`tls`] (HTTPS, client certificates), [`identity`] (security
//! options, certificate and token routes) and [`rules`] (the one rule table
//! every call goes through). Beyond one master: [`multimaster`] (requests
//! forwarded to other masters), [`relay`] (`/http_proxy/`, the frontend
//! bypass's relay), [`software_root`] (local software release paths rebased).
//! For the panel: [`schema_api`] (`/api/schema`, software release schemas).

#![warn(missing_docs)]

pub mod accounting;
pub mod app;
pub mod ca;
pub mod hateoas;
pub mod http;
pub mod identity;
pub mod jsonrpc;
pub mod limits;
pub mod master;
pub mod migrate;
pub mod multimaster;
pub mod panel;
pub mod relay;
pub mod rules;
pub mod schema_api;
pub mod server;
pub mod shacache;
pub mod show;
pub mod software_root;
pub mod store;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::distributions::Alphanumeric;
use rand::Rng;
use slapos_config::Config;

pub use limits::{Connections, Limits};
pub use store::{AnyStore, Database, Retention, SqliteStore, Store, StoreError};

/// How the master is configured (`[slapos]` and `[slapproxy]` of slapos.cfg).
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    /// `[slapos] computer_id`: the computer requests go to by default.
    pub computer_id: String,
    /// `[slapproxy] host`: the address to listen on (127.0.0.1).
    pub host: String,
    /// `[slapproxy] port`: the port to listen on (8080).
    pub port: u16,
    /// `[slapproxy] database_uri`: a SQLite file or a PostgreSQL URI.
    pub database: Database,
    /// `software_product_list`: `<product> <url>` per line.
    pub software_products: BTreeMap<String, String>,
    /// Sizes of requests, fields and marshalled documents.
    pub limits: Limits,
    /// Connection cap and timeouts.
    pub connections: Connections,
    /// Node history kept.
    pub retention: Retention,
    /// Plain HTTP (local cloud) or TLS with identities.
    pub security: identity::Security,
    /// `[multimaster/<url>]` sections.
    pub multimaster: multimaster::Multimaster,
    /// `local_software_release_root`: local software release paths are
    /// rebased onto it when it changes.
    pub local_software_release_root: Option<PathBuf>,
    /// The binary cache (`shacache_*` options), if any.
    pub shacache: Option<shacache::Options>,
}

/// Default port of `slapos proxy start` (as in SlapOS).
pub const DEFAULT_PORT: u16 = 8080;

impl ProxyConfig {
    /// Reads `[slapos]` then `[slapproxy]` (a key already set is kept, as
    /// the Python proxy does). Only `computer_id` is required; the database
    /// defaults to `proxy.db` next to the configuration file.
    pub fn from_config(config: &Config) -> anyhow::Result<ProxyConfig> {
        let get = |key: &str| config.get_nonempty("slapos", key).or_else(|| config.get_nonempty("slapproxy", key));
        let computer_id =
            get("computer_id").ok_or_else(|| anyhow::anyhow!("computer_id is not set in [slapos] of {}", describe(config)))?.to_string();
        let host = get("host").unwrap_or("127.0.0.1").to_string();
        let port = match get("port") {
            Some(p) => p.parse().map_err(|_| anyhow::anyhow!("[slapproxy] port must be a port number, wrong value: '{p}'"))?,
            None => DEFAULT_PORT,
        };
        let database = match get("database_uri") {
            Some(d) => Database::parse(d),
            None => Database::Sqlite(
                config.path().and_then(Path::parent).map(|d| d.join("proxy.db")).unwrap_or_else(|| PathBuf::from("proxy.db")),
            ),
        };
        let mut software_products = BTreeMap::new();
        if let Some(list) = get("software_product_list") {
            for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
                match line.split_once(char::is_whitespace) {
                    Some((name, url)) => {
                        software_products.insert(name.to_string(), url.trim().to_string());
                    }
                    None => anyhow::bail!("software_product_list: expected '<product> <url>', got '{line}'"),
                }
            }
        }
        // the CA lives next to a SQLite file; with PostgreSQL, next to the
        // configuration file (masters sharing a site share their ca_dir)
        let beside = match &database {
            Database::Sqlite(path) => path.clone(),
            Database::Postgres(_) => {
                config.path().and_then(Path::parent).map(|d| d.join("proxy.db")).unwrap_or_else(|| PathBuf::from("proxy.db"))
            }
        };
        let security = identity::Security::from_config(config, &host, &beside)?;
        Ok(ProxyConfig {
            computer_id,
            host,
            port,
            database,
            software_products,
            limits: Limits::from_config(config)?,
            connections: Connections::from_config(config)?,
            retention: retention(config)?,
            security,
            multimaster: multimaster::Multimaster::from_config(config),
            local_software_release_root: get("local_software_release_root").map(PathBuf::from),
            shacache: shacache::Options::from_config(config)?,
        })
    }
}

fn retention(config: &Config) -> anyhow::Result<Retention> {
    let d = Retention::default();
    let n = |key, default: usize| limits::positive(config, key, default as u64).map(|n| n as usize);
    Ok(Retention {
        reports_per_object: n("report_history", d.reports_per_object)?,
        reports: n("report_limit", d.reports)?,
        usage_per_computer: n("usage_history", d.usage_per_computer)?,
        usage: n("usage_limit", d.usage)?,
        movements: n("usage_movement_limit", d.movements)?,
        movement_days: n("usage_movement_days", d.movement_days)?,
    })
}

fn describe(config: &Config) -> String {
    config.path().map(|p| p.display().to_string()).unwrap_or_else(|| "the configuration".into())
}

/// A master ready to serve: its shared state and, with TLS, its server
/// configuration.
pub struct Opened {
    /// The master's shared state, for the routes.
    pub app: Arc<http::App>,
    /// The HTTPS configuration (None: plain HTTP, the local cloud).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The shared state of a running master, opened on its database; with TLS,
/// its CA (created on first start), the administrator's certificate and the
/// master's own certificate.
pub fn open_app(config: &ProxyConfig) -> anyhow::Result<Opened> {
    let store = AnyStore::open(&config.database, config.retention)?;
    let site_id = store.read(|tx: &mut dyn store::Tx| tx.site_id())?;
    software_root::apply(&store, config.local_software_release_root.as_deref())?;
    let run_id: String = rand::thread_rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect();
    let site = master::Site { computer_id: config.computer_id.clone(), software_products: config.software_products.clone() };
    let mut app = app::App::new(store, site, run_id, config.limits).with_multimaster(config.multimaster.clone()).with_site_id(site_id);
    if let Some(o) = &config.shacache {
        o.create_dirs().map_err(|e| anyhow::anyhow!("cannot create the shacache directories: {e}"))?;
        app.shacache = Some(Arc::new(o.clone()));
    }
    let mut tls = None;
    if let identity::Security::Tls { ca_dir, files, validity } = &config.security {
        let authority = identity::Authority { ca: ca::Ca::open_or_create(ca_dir)?, validity: *validity };
        authority.ensure_administrator(&app.store)?;
        let files = files.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        tls = Some(tls::server_config(&authority.ca, files, &server_names(&config.host))?);
        app.identity = Some(Arc::new(authority));
    }
    Ok(Opened { app: Arc::new(app), tls })
}

/// The names a certificate issued for the master carries.
fn server_names(host: &str) -> Vec<String> {
    let mut names = vec![host.trim_start_matches('[').trim_end_matches(']').to_string()];
    if let Ok(h) = nix::unistd::gethostname() {
        names.push(h.to_string_lossy().into_owned());
    }
    names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
    names.retain(|n| !n.is_empty() && n != "0.0.0.0" && n != "::");
    names.dedup();
    names
}

/// Serves on `listener` until `shutdown` resolves, within `connections`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    opened: Opened,
    connections: Connections,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::serve(listener, http::router(opened.app), connections, opened.tls, shutdown).await
}

async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
        _ = term.recv() => tracing::info!("terminated: stopping"),
    }
}

/// `slapos proxy start`: serves until SIGTERM/SIGINT.
pub fn run(config: &ProxyConfig) -> anyhow::Result<()> {
    let opened = open_app(config)?;
    let scheme = if opened.tls.is_some() { "https" } else { "http" };
    if opened.tls.is_none() && !identity::is_loopback(&config.host) {
        tracing::warn!("listening on {} without TLS (insecure = true): anyone who reaches it can act on everything", config.host);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).max_blocking_threads(16).enable_all().build()?;
    runtime.block_on(async {
        let addr = format!("{}:{}", config.host, config.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr()?;
        let shown = if local.is_ipv6() { format!("[{}]:{}", local.ip(), local.port()) } else { local.to_string() };
        tracing::info!(
            "SlapOS master for computer {} listening on {scheme}://{shown}/ (database {})",
            config.computer_id,
            config.database.shown()
        );
        serve(listener, opened, config.connections, termination()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// A master running in the background of this process (for tests and tools).
pub struct Background {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Serving HTTPS.
    pub tls: bool,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Its base URL, `http://host:port`.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }
}

/// Starts a master on `127.0.0.1:0` with `config` (port ignored).
pub fn start_background(config: &ProxyConfig) -> anyhow::Result<Background> {
    let opened = open_app(config)?;
    let tls = opened.tls.is_some();
    let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let connections = config.connections;
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            let _ = serve(listener, opened, connections, async {
                let _ = rx.await;
            })
            .await;
        });
    });
    Ok(Background { addr, tls, shutdown: Some(tx), thread: Some(thread) })
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
