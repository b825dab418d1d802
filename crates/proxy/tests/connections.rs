//! The master under idle and slow clients: the real master (`run`, in a
//! child process: this test binary run again, with the 1,024-descriptor
//! limit of production) keeps answering a canary while 1,100 idle and 100
//! slow-loris connections are open; timeouts close idle and slow
//! connections; long request values are cut in its log.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use slapos_proxy::{start_background, Connections, Database, ProxyConfig};
use test_support::postgres::TestPostgres;

const CHILD: &str = "SLAPOS_PROXY_TEST_MASTER";

/// In the child: the master of the configuration file named by [`CHILD`],
/// as `slapos proxy start` runs it, until SIGTERM.
fn run_child_master(cfg: &str) {
    setrlimit(Resource::RLIMIT_NOFILE, 1024, getrlimit(Resource::RLIMIT_NOFILE).unwrap().1).unwrap();
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).init();
    let config = slapos_config::Config::load(Path::new(cfg)).unwrap();
    slapos_proxy::run(&ProxyConfig::from_config(&config).unwrap()).unwrap();
    std::process::exit(0);
}

/// A master in a child process, stopped (SIGTERM, then SIGKILL) on drop.
struct ChildMaster {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl ChildMaster {
    /// Runs `test` of this binary as the master, with `extra` in `[slapproxy]`.
    fn start(test: &str, dir: &Path, extra: &str) -> ChildMaster {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = dir.join("slapos.cfg");
        std::fs::write(&cfg, format!("[slapos]\ncomputer_id = COMP-CONN\n\n[slapproxy]\nport = {port}\n{extra}")).unwrap();
        let log = dir.join("master.log");
        let child = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--include-ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD, &cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let master = ChildMaster { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the master did not start: {}", master.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        master
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and wait (at most 15 s) for the master to stop.
    fn stop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildMaster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request on a fresh connection; (status line, elapsed).
fn canary(addr: SocketAddr) -> (String, Duration) {
    let started = Instant::now();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return ("no connection".into(), started.elapsed());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /getRunId HTTP/1.1\r\nHost: canary\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    (answer.lines().next().unwrap_or("no answer").to_string(), started.elapsed())
}

/// Raises this process's descriptor limit (the child lowers its own to 1,024).
fn raise_descriptor_limit(wanted: u64) {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < wanted {
        setrlimit(Resource::RLIMIT_NOFILE, wanted.min(hard), hard).unwrap();
    }
}

/// `[slapproxy] database_uri` of a fresh database of `pg`.
fn database_uri(pg: &TestPostgres) -> String {
    format!("database_uri = {}\n", pg.database("connections"))
}

#[test]
fn a_canary_is_answered_under_1100_idle_and_100_slow_connections() {
    const TEST: &str = "a_canary_is_answered_under_1100_idle_and_100_slow_connections";
    if let Ok(cfg) = std::env::var(CHILD) {
        return run_child_master(&cfg);
    }
    canary_under_load(TEST, "");
}

#[test]
#[ignore = "needs PostgreSQL"]
fn needs_postgres_a_canary_is_answered_under_1100_idle_and_100_slow_connections() {
    const TEST: &str = "needs_postgres_a_canary_is_answered_under_1100_idle_and_100_slow_connections";
    if let Ok(cfg) = std::env::var(CHILD) {
        return run_child_master(&cfg);
    }
    let pg = TestPostgres::start();
    canary_under_load(TEST, &database_uri(&pg));
}

/// The canary test, its master being the test `test` with `extra` in `[slapproxy]`.
fn canary_under_load(test: &str, extra: &str) {
    raise_descriptor_limit(4096);
    let dir = tempfile::tempdir().unwrap();
    let mut master = ChildMaster::start(test, dir.path(), extra);
    assert!(canary(master.addr).0.starts_with("HTTP/1.1 200"), "{}", master.log());

    let idle: Vec<TcpStream> = (0..1100).filter_map(|_| TcpStream::connect_timeout(&master.addr, Duration::from_secs(1)).ok()).collect();
    let slow: Vec<TcpStream> = (0..100).filter_map(|_| TcpStream::connect_timeout(&master.addr, Duration::from_secs(1)).ok()).collect();
    // slow loris: one header byte per connection every 50 ms, for at most 30 s
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let header = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let mut slow = slow;
            for byte in header.iter().take(600) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for s in &mut slow {
                    let _ = s.write(&[*byte]);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            slow.len()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let answers: Vec<(String, Duration)> = (0..5).map(|_| canary(master.addr)).collect();
    stop.store(true, Ordering::Relaxed);
    let slow_opened = feeder.join().unwrap();
    let idle_opened = idle.len();
    drop(idle);
    eprintln!("opened {idle_opened} idle and {slow_opened} slow connections; canaries: {answers:?}");
    assert!(idle_opened >= 1000 && slow_opened >= 90, "{idle_opened} idle, {slow_opened} slow opened");
    for (status, elapsed) in &answers {
        assert!(status.starts_with("HTTP/1.1 200"), "canary answered '{status}': {}", master.log());
        assert!(*elapsed < Duration::from_secs(1), "canary answered in {elapsed:?}");
    }
    master.stop();
    assert!(master.log().contains("closing the longest idle ones"), "{}", master.log());
}

/// Reads from `s` until it is closed by the master; how long that took.
fn time_to_close(s: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => continue,
        }
    }
}

/// A keep-alive request; the answer's status line.
fn keep_alive_request(s: &mut TcpStream) -> String {
    s.write_all(b"GET /getRunId HTTP/1.1\r\nHost: k\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // the run id is 32 characters: the answer ends with them
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") || answer.len() < 100 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some((_, body)) = text.split_once("\r\n\r\n") {
            if body.len() >= 32 {
                break;
            }
        }
    }
    String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_string()
}

#[test]
fn idle_and_slow_connections_are_closed_after_their_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    idle_and_slow_connections(Database::sqlite(dir.path().join("proxy.db")));
}

#[test]
#[ignore = "needs PostgreSQL"]
fn needs_postgres_idle_and_slow_connections_are_closed_after_their_timeouts() {
    let pg = TestPostgres::start();
    idle_and_slow_connections(Database::Postgres(pg.database("connections")));
}

fn idle_and_slow_connections(database: Database) {
    let connections =
        Connections { header_timeout: Duration::from_secs(1), idle_timeout: Duration::from_secs(3), ..Connections::default() };
    let config = ProxyConfig { computer_id: "COMP-T".into(), database, connections, ..Default::default() };
    let master = start_background(&config).unwrap();

    let mut idle = TcpStream::connect(master.addr).unwrap();
    let mut slow = TcpStream::connect(master.addr).unwrap();
    let mut kept = TcpStream::connect(master.addr).unwrap();
    let writer = {
        let mut slow = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            for b in b"GET / HTTP/1.1\r\nHost: slowly".iter() {
                if slow.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // a client that keeps asking, every 0.5 s for 4.5 s (past the idle timeout)
    let keeper = std::thread::spawn(move || {
        (0..9)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(500));
                keep_alive_request(&mut kept)
            })
            .collect::<Vec<_>>()
    });
    let slow_closed = time_to_close(&mut slow, Duration::from_secs(10));
    let idle_closed = time_to_close(&mut idle, Duration::from_secs(10)) + slow_closed;
    writer.join().unwrap();
    let kept_answers = keeper.join().unwrap();
    eprintln!("slow closed after {slow_closed:?}, idle after {idle_closed:?}");
    assert!(slow_closed >= Duration::from_millis(900) && slow_closed < Duration::from_millis(2900), "{slow_closed:?}");
    assert!(idle_closed >= Duration::from_millis(2900) && idle_closed < Duration::from_secs(6), "{idle_closed:?}");
    assert!(kept_answers.iter().all(|a| a.starts_with("HTTP/1.1 200")), "{kept_answers:?}");
}

#[test]
fn long_request_values_are_cut_in_the_log() {
    const TEST: &str = "long_request_values_are_cut_in_the_log";
    if let Ok(cfg) = std::env::var(CHILD) {
        return run_child_master(&cfg);
    }
    long_request_values(TEST, "");
}

#[test]
#[ignore = "needs PostgreSQL"]
fn needs_postgres_long_request_values_are_cut_in_the_log() {
    const TEST: &str = "needs_postgres_long_request_values_are_cut_in_the_log";
    if let Ok(cfg) = std::env::var(CHILD) {
        return run_child_master(&cfg);
    }
    let pg = TestPostgres::start();
    long_request_values(TEST, &database_uri(&pg));
}

/// The log test, its master being the test `test` with `extra` in `[slapproxy]`.
fn long_request_values(test: &str, extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut master = ChildMaster::start(test, dir.path(), extra);
    let url = format!("http://{}", master.addr);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let ten_mb = "v".repeat(10 << 20);
    let post = |path: &str, form: &[(&str, &str)]| agent.post(format!("{url}/{path}")).send_form(form.iter().copied()).unwrap().status();
    let s = post("softwareReleaseError", &[("url", "http://sr"), ("computer_id", "COMP-CONN"), ("error_log", &ten_mb)]);
    assert_eq!(s.as_u16(), 200);
    assert_eq!(post("computerBang", &[("computer_id", "COMP-CONN"), ("message", &ten_mb)]).as_u16(), 200);
    let long_query = format!("{url}/getComputerInformation?computer_id={}", "q".repeat(60_000));
    let _ = agent.get(&long_query).call().unwrap();
    master.stop();
    let log = master.log();
    assert!(log.contains("reports an error") && log.contains("banged"), "{}", &log[..log.len().min(4000)]);
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1000 && log.len() < 20_000, "log of {} bytes, longest line {longest}", log.len());
}
