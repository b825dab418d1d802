//! The master's accept loop: HTTP/1.1 connections (hyper) under a cap, with
//! an idle timeout and a header timeout, so that idle or slow clients cannot
//! starve the others.
//!
//! Each connection is tracked: whether a request is being answered, since
//! when it has been idle (accepted, or its last response done) and when the
//! first byte of its next request came. A watchdog closes it when idle for
//! `idle_timeout`, or when the headers of a request do not complete within
//! `header_timeout` of its first byte. At the cap, a new connection closes
//! the one that has been idle the longest (never one being answered); when
//! every connection is busy, the new one is closed instead.
//!
//! With TLS ([`crate::tls`]), the handshake must complete within
//! `header_timeout`; the serial of the client certificate it verified is
//! given to every request of the connection ([`crate::tls::ClientSerial`]).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::limits::Connections;

/// Descriptors kept free for the database, logs and the listener.
const RESERVED_DESCRIPTORS: u64 = 64;

/// How long a stopping master waits for the requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Milliseconds since the server started (never 0).
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(&self) -> u64 {
        self.0.elapsed().as_millis() as u64 + 1
    }
}

/// What the server knows of one connection.
struct Conn {
    /// Requests being answered.
    busy: AtomicUsize,
    /// When it last became idle (accepted, or a response done).
    idle_since: AtomicU64,
    /// When the first byte came since then (0: none yet).
    first_byte: AtomicU64,
    /// Told to close (the cap needs its place).
    close: Notify,
}

/// Every open connection.
struct Registry {
    clock: Clock,
    max: usize,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    /// When the last warning about the cap was logged.
    warned: Mutex<Option<Instant>>,
}

impl Registry {
    /// Makes room for a new connection; `None` when every connection is busy.
    fn admit(&self) -> Option<(u64, Arc<Conn>)> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() >= self.max {
            self.warn_cap();
            let victim = conns
                .iter()
                .filter(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, c)| c.idle_since.load(Ordering::Acquire))
                .map(|(id, _)| *id)?;
            if let Some(c) = conns.remove(&victim) {
                c.close.notify_one();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now();
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now),
            first_byte: AtomicU64::new(0),
            close: Notify::new(),
        });
        conns.insert(id, conn.clone());
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// At most one line a minute: an attack should not fill the log.
    fn warn_cap(&self) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            *warned = Some(Instant::now());
            tracing::warn!("{} connections open (max_connections): closing the longest idle ones", self.max);
        }
    }
}

/// The cap actually applied: `max_connections`, and room left in the
/// descriptor limit.
fn effective_max(max_connections: usize) -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let descriptors = getrlimit(Resource::RLIMIT_NOFILE).map(|(soft, _)| soft).unwrap_or(1024);
    let room = descriptors.saturating_sub(RESERVED_DESCRIPTORS).max(1);
    max_connections.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// Serves `router` on `listener` until `shutdown` resolves; then waits (at
/// most [`SHUTDOWN_GRACE`]) for the requests in progress.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Connections,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let registry = Arc::new(Registry {
        clock: Clock(Instant::now()),
        max: effective_max(limits.max_connections),
        conns: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        warned: Mutex::new(None),
    });
    let graceful = GracefulShutdown::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // out of descriptors or memory: let connections close first
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Some((id, conn)) = registry.admit() else {
            tracing::debug!("connection from {peer} refused: every connection is busy");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let task = Task { id, conn, registry: registry.clone(), limits, peer };
        let (router, watcher) = (router.clone(), graceful.watcher());
        match acceptor.clone() {
            None => tokio::spawn(task.run(stream, router, None, watcher)),
            Some(acceptor) => tokio::spawn(task.handshake(acceptor, stream, router, watcher)),
        };
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("stopping with requests still in progress"),
    }
    Ok(())
}

/// One connection being served.
struct Task {
    id: u64,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    limits: Connections,
    peer: SocketAddr,
}

impl Task {
    /// TLS first (within `header_timeout`), then HTTP.
    async fn handshake(self, acceptor: tokio_rustls::TlsAcceptor, stream: TcpStream, router: Router, watcher: Watcher) {
        let accepted = tokio::time::timeout(self.limits.header_timeout, acceptor.accept(stream)).await;
        match accepted {
            Ok(Ok(tls)) => {
                let serial = crate::tls::client_serial(tls.get_ref().1);
                self.run(tls, router, serial, watcher).await
            }
            Ok(Err(e)) => {
                tracing::info!("TLS handshake with {} failed: {e}", self.peer);
                self.registry.remove(self.id);
            }
            Err(_) => {
                tracing::debug!("TLS handshake with {} too slow", self.peer);
                self.registry.remove(self.id);
            }
        }
    }

    async fn run<S>(self, stream: S, router: Router, serial: Option<crate::tls::ClientSerial>, watcher: Watcher)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let clock = self.registry.clock;
        let io = TokioIo::new(Tracked { stream, conn: self.conn.clone(), clock });
        let (conn, peer) = (self.conn.clone(), self.peer);
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            if let Some(s) = &serial {
                req.extensions_mut().insert(s.clone());
            }
            let busy = Busy::start(conn.clone(), clock);
            let router = router.clone();
            async move {
                let response = router.oneshot(req).await;
                drop(busy);
                response
            }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        // the watchdog below times headers (from their first byte) and idleness
        http.header_read_timeout(None);
        let connection = watcher.watch(http.serve_connection(io, service));
        tokio::select! {
            r = connection => {
                if let Err(e) = r {
                    tracing::debug!("connection from {}: {e}", self.peer);
                }
            }
            _ = self.conn.close.notified() => tracing::debug!("connection from {} closed for a new one", self.peer),
            why = watchdog(&self.conn, clock, self.limits) => tracing::debug!("connection from {} closed: {why}", self.peer),
        }
        self.registry.remove(self.id);
    }
}

/// Resolves (saying why) when the connection must be closed.
async fn watchdog(conn: &Conn, clock: Clock, limits: Connections) -> &'static str {
    let header = limits.header_timeout.as_millis() as u64;
    let idle = limits.idle_timeout.as_millis() as u64;
    loop {
        let now = clock.now();
        let (deadline, why) = if conn.busy.load(Ordering::Acquire) > 0 {
            (u64::MAX, "")
        } else {
            match conn.first_byte.load(Ordering::Acquire) {
                0 => (conn.idle_since.load(Ordering::Acquire).saturating_add(idle), "idle timeout"),
                first => (first.saturating_add(header), "request headers too slow"),
            }
        };
        if deadline <= now {
            return why;
        }
        // look again at least every `header` ms: a first byte may shorten the deadline
        let wait = (deadline - now).min(header).max(10);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// Marks a connection busy while a request is being answered.
struct Busy {
    conn: Arc<Conn>,
    clock: Clock,
}

impl Busy {
    fn start(conn: Arc<Conn>, clock: Clock) -> Busy {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Busy { conn, clock }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn.idle_since.store(self.clock.now(), Ordering::Release);
        self.conn.first_byte.store(0, Ordering::Release);
        self.conn.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection, noting when the first byte of a request arrives.
struct Tracked<S> {
    stream: S,
    conn: Arc<Conn>,
    clock: Clock,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before && self.conn.busy.load(Ordering::Acquire) == 0 {
            let now = self.clock.now();
            let _ = self.conn.first_byte.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
