//! Load generator for `bench/fleet/run.sh`: a simulated fleet of nodes
//! (plus clients) against one or more masters on one database, printing one
//! JSON line of results.
//!
//! `fleet_load URLS PIDS DB_PID COMPUTERS PARTITIONS INSTANCES SECONDS IDLE_SECONDS [IDLE_FLEET]`
//!
//! URLS and PIDS are comma-separated, one per master; client `i` talks to
//! master `i mod n`. DB_PID is PostgreSQL's postmaster (0: none): its CPU
//! time (with its children's) is reported beside the masters'.
//!
//! 1. setup: a format report of PARTITIONS partitions and one supply per
//!    computer (COMP-0…), from [`CLIENTS`] threads (timed);
//! 2. INSTANCES requests per computer (`computer_guid` filter), [`CLIENTS`]
//!    threads (timed);
//! 3. full information as the Python node asks for it (no `If-None-Match`),
//!    [`CLIENTS`] threads round-robin over the computers for SECONDS: rate,
//!    p50/p99 latency; the answer is read, not decoded;
//! 4. the same as our node asks for it (`If-None-Match` with the last ETag);
//! 5. the fleet: each client plays nodes and users in turn — conditional full
//!    information, a started report, connection parameters, a usage report
//!    (`useComputer`), a client's re-request of an existing instance —
//!    for SECONDS: rate of all requests, p50/p99;
//! 6. an idle fleet: IDLE_FLEET computers (default COMPUTERS; when larger,
//!    the site's computers poll in turn) each polling once per [`POLL_S`],
//!    evenly paced, for IDLE_SECONDS, conditional (our node) then not (the Python node);
//!    the masters' CPU time (`/proc/PID/stat`) over each window, as % of one
//!    core, and the database's; also a window of nothing (baseline).
//!
//! `FLEET_SETUP_CLIENTS` (default [`CLIENTS`]) sets how many threads send
//! the format reports of step 1 (the Python proxy answers concurrent ones
//! "database is locked").
//!
//! Errors (transport errors, statuses other than 200/304, requests not
//! allocated) are counted, never fatal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use slap::client::{ClientConfig, InstanceRequest, RequestResult, SlapClient};
use slap::marshal::Value;
use slap::model::SoftwareState;

mod common;
use common::{percentile, report, rss_kb};

const SR: &str = "http://example.com/software/bench/software.cfg";
/// Concurrent clients of the loaded phases.
const CLIENTS: usize = 8;
/// How often an idle node polls its full information (the node's default).
const POLL_S: f64 = 60.0;
/// Clock ticks per second of `/proc/PID/stat` (USER_HZ: 100 on Linux).
const TICKS: f64 = 100.0;

/// An allocated instance: (computer index, partition reference, title).
type Instance = (usize, String, String);

/// The site under load and what went wrong so far.
struct Fleet {
    urls: Vec<String>,
    computers: usize,
    /// How many nodes poll in the idle phase.
    idle_fleet: usize,
    instances: Vec<Instance>,
    errors: AtomicUsize,
}

/// One simulated client's connections and the ETags it keeps.
struct Client {
    id: usize,
    agent: ureq::Agent,
    slap: SlapClient,
    etags: HashMap<usize, String>,
}

/// A keep-alive agent that reads error statuses as values.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build().into()
}

impl Fleet {
    fn url(&self, client: usize) -> &str {
        &self.urls[client % self.urls.len()]
    }

    fn client(&self, id: usize) -> Client {
        let slap = SlapClient::new(ClientConfig::new(self.url(id)).with_timeout(Duration::from_secs(120))).unwrap();
        Client { id, agent: agent(), slap, etags: HashMap::new() }
    }

    fn error(&self, what: &str) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("fleet_load: {what}");
        }
    }

    /// GETs COMP-`k`'s full information, conditional when `conditional` and
    /// an ETag is known; keeps the new ETag. Gives the status (0: failed).
    fn full_info(&self, c: &mut Client, k: usize, conditional: bool) -> u16 {
        let mut req = c.agent.get(format!("{}/getFullComputerInformation?computer_id=COMP-{k}", self.url(c.id)));
        if let Some(tag) = c.etags.get(&k).filter(|_| conditional) {
            req = req.header("If-None-Match", tag);
        }
        let result = req.call().and_then(|mut r| {
            let tag = r.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
            r.body_mut().with_config().limit(1 << 30).read_to_vec().map(|_| (r.status().as_u16(), tag))
        });
        match result {
            Ok((status @ (200 | 304), tag)) => {
                if let Some(tag) = tag {
                    c.etags.insert(k, tag);
                }
                status
            }
            Ok((status, _)) => {
                self.error(&format!("full information of COMP-{k}: HTTP {status}"));
                0
            }
            Err(e) => {
                self.error(&format!("full information of COMP-{k}: {e}"));
                0
            }
        }
    }

    /// A node's or client's call that only has to succeed.
    fn check<T, E: std::fmt::Display>(&self, what: &str, r: Result<T, E>) {
        if let Err(e) = r {
            self.error(&format!("{what}: {e}"));
        }
    }

    /// Runs `op(client, i)` (i: the client's i-th operation) from [`CLIENTS`]
    /// threads for `seconds`: operations/s and their sorted latencies (ms).
    fn timed<F: Fn(&mut Client, usize) + Sync>(&self, seconds: f64, op: F) -> (f64, Vec<f64>) {
        let latencies = Mutex::new(Vec::new());
        let start = Instant::now();
        std::thread::scope(|scope| {
            for id in 0..CLIENTS {
                let (op, latencies) = (&op, &latencies);
                scope.spawn(move || {
                    let mut c = self.client(id);
                    let mut mine = Vec::new();
                    while start.elapsed().as_secs_f64() < seconds {
                        let t = Instant::now();
                        op(&mut c, mine.len());
                        mine.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    latencies.lock().unwrap().extend(mine);
                });
            }
        });
        let mut all = latencies.into_inner().unwrap();
        all.sort_by(|a, b| a.total_cmp(b));
        (all.len() as f64 / start.elapsed().as_secs_f64(), all)
    }

    /// Runs `op(client, item)` over `0..n` from `threads` threads; seconds taken.
    fn each<F: Fn(&mut Client, usize) + Sync>(&self, threads: usize, n: usize, op: F) -> f64 {
        let start = Instant::now();
        std::thread::scope(|scope| {
            for id in 0..threads {
                let op = &op;
                scope.spawn(move || {
                    let mut c = self.client(id);
                    (id..n).step_by(threads).for_each(|item| op(&mut c, item));
                });
            }
        });
        start.elapsed().as_secs_f64()
    }
}

/// A request of instance `title` on computer `k`.
fn instance_request(k: usize, title: &str) -> InstanceRequest {
    let mut r = InstanceRequest::new(SR, title);
    r.filter.insert("computer_guid".into(), format!("COMP-{k}"));
    r.parameters.insert("title".into(), Value::str(title));
    r
}

/// Steps 1 and 2: formats every computer, then requests `per_computer`
/// instances on each. Gives (format seconds, allocation seconds).
fn setup(fleet: &mut Fleet, partitions: usize, per_computer: usize) -> (f64, f64) {
    // one request first, alone: the Python proxy makes its tables on its
    // first request, and concurrent first requests race there
    for url in &fleet.urls {
        let _ = agent().get(format!("{url}/")).call();
    }
    let threads = std::env::var("FLEET_SETUP_CLIENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(CLIENTS).max(1);
    let format_s = fleet.each(threads, fleet.computers, |c, k| {
        let computer = format!("COMP-{k}");
        fleet.check("format report", c.slap.load_computer_configuration(&report(&computer, partitions, k * partitions)));
        fleet.check("supply", c.slap.supply(SR, &computer, SoftwareState::Available));
    });
    let allocated = Mutex::new(Vec::new());
    let allocate_s = fleet.each(CLIENTS, fleet.computers * per_computer, |c, n| {
        let (k, title) = (n % fleet.computers, format!("inst-{n}"));
        match c.slap.request(&instance_request(k, &title)) {
            Ok(RequestResult::Ready(i)) => match i.partition_id {
                Some(p) => allocated.lock().unwrap().push((k, p, title)),
                None => fleet.error(&format!("{title}: no partition")),
            },
            Ok(RequestResult::NotReady { message }) => fleet.error(&format!("{title}: not allocated: {message}")),
            Err(e) => fleet.error(&format!("{title}: {e}")),
        }
    });
    fleet.instances = allocated.into_inner().unwrap();
    (format_s, allocate_s)
}

/// Step 5's operation `i` of client `c`: the node's and the users' calls in turn.
fn fleet_operation(fleet: &Fleet, c: &mut Client, i: usize) {
    let n = c.id + i / 5 * CLIENTS;
    let (k, partition, title) = &fleet.instances[n % fleet.instances.len()];
    let computer = format!("COMP-{k}");
    match i % 5 {
        0 => {
            fleet.full_info(c, n % fleet.computers, true);
        }
        1 => fleet.check("started", c.slap.partition_started(&computer, partition)),
        2 => {
            let url = Value::str(format!("http://{title}.example.com/"));
            let parameters = [("url".to_string(), url)].into_iter().collect();
            fleet.check("connection parameters", c.slap.set_connection_parameters(&computer, partition, &parameters, None))
        }
        3 => fleet.check("useComputer", c.slap.use_computer(&computer, &usage(&computer, partition))),
        _ => fleet.check("re-request", c.slap.request(&instance_request(*k, title))),
    }
}

/// A small usage report (`useComputer`'s journal) of one partition.
fn usage(computer: &str, partition: &str) -> String {
    format!(
        "<?xml version='1.0' encoding='utf-8'?><journal><transaction type=\"Sale Packing List\"><title>{computer}</title>\
         <movement><resource>CPU Load</resource><quantity>0.5</quantity><reference>{partition}</reference></movement>\
         </transaction></journal>"
    )
}

/// CPU ticks spent so far by `pid` (utime + stime), and with `children` the
/// reaped children's too (PostgreSQL's exited backends).
fn cpu_ticks(pid: &str, children: bool) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after "(comm)": state is field 3; utime 14, stime 15, cutime 16, cstime 17
    let fields: Vec<u64> =
        stat.rsplit_once(')').map(|(_, f)| f.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect()).unwrap_or_default();
    let take = if children { 11..15 } else { 11..13 };
    fields.get(take).map(|f| f.iter().sum()).unwrap_or(0)
}

/// The PIDs of the live children of `parent`.
fn children(parent: &str) -> Vec<String> {
    let procs = std::fs::read_dir("/proc").map(|d| d.filter_map(|e| e.ok()).collect::<Vec<_>>()).unwrap_or_default();
    procs
        .into_iter()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rsplit_once(')').and_then(|(_, f)| f.split_whitespace().nth(1).map(|p| p == parent)).unwrap_or(false)
        })
        .collect()
}

/// CPU ticks of the masters `pids` and of the database `db` (with its backends).
fn cpu_now(pids: &[String], db: &str) -> (u64, u64) {
    let masters = pids.iter().map(|p| cpu_ticks(p, false)).sum();
    let database = if db == "0" { 0 } else { cpu_ticks(db, true) + children(db).iter().map(|p| cpu_ticks(p, false)).sum::<u64>() };
    (masters, database)
}

/// Step 6, one window: every computer polls once per [`POLL_S`] (paced,
/// `conditional` or not; `poll == false`: no request at all) for `seconds`.
/// Gives the masters' and the database's CPU as % of one core.
fn idle_window(fleet: &Fleet, pids: &[String], db: &str, seconds: f64, poll: bool, conditional: bool) -> (f64, f64) {
    let mut clients: Vec<Client> = (0..fleet.urls.len()).map(|id| fleet.client(id)).collect();
    let masters = clients.len();
    if conditional {
        // our node keeps the last answer's ETag: one poll before the window
        (0..fleet.computers).for_each(|k| {
            fleet.full_info(&mut clients[k % masters], k, false);
        });
    }
    std::thread::sleep(Duration::from_secs(1));
    let (m0, d0) = cpu_now(pids, db);
    let start = Instant::now();
    let interval = POLL_S / fleet.idle_fleet as f64;
    let mut n = 0usize;
    while start.elapsed().as_secs_f64() < seconds {
        if poll {
            let k = n % fleet.computers;
            fleet.full_info(&mut clients[k % masters], k, conditional);
        }
        n += 1;
        let next = Duration::from_secs_f64(interval * n as f64);
        std::thread::sleep(next.saturating_sub(start.elapsed()));
    }
    let (m1, d1) = cpu_now(pids, db);
    let window = start.elapsed().as_secs_f64();
    let pct = |ticks: u64| ticks as f64 / TICKS / window * 100.0;
    (pct(m1 - m0), pct(d1 - d0))
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 9 && a.len() != 10 {
        eprintln!("usage: fleet_load URLS PIDS DB_PID COMPUTERS PARTITIONS INSTANCES SECONDS IDLE_SECONDS [IDLE_FLEET]");
        std::process::exit(2);
    }
    let urls: Vec<String> = a[1].split(',').map(str::to_string).collect();
    let pids: Vec<String> = a[2].split(',').map(str::to_string).collect();
    let db = a[3].as_str();
    let [computers, partitions, per_computer]: [usize; 3] = [4, 5, 6].map(|i| a[i].parse().expect("a number"));
    let [seconds, idle_seconds]: [f64; 2] = [7, 8].map(|i| a[i].parse().expect("a number of seconds"));
    let idle_fleet = a.get(9).map(|n| n.parse().expect("a number")).unwrap_or(computers);
    let mut fleet = Fleet { urls, computers, idle_fleet, instances: Vec::new(), errors: AtomicUsize::new(0) };
    let idle_rss = pids.iter().map(|p| rss_kb(p)).max().unwrap_or(0);
    let (format_s, allocate_s) = setup(&mut fleet, partitions, per_computer);
    let fleet = &fleet;
    let round_robin = |c: &Client, i: usize| (c.id + i * CLIENTS) % fleet.computers;
    let (plain_rate, plain) = fleet.timed(seconds, |c, i| {
        fleet.full_info(c, round_robin(c, i), false);
    });
    let not_modified = AtomicUsize::new(0);
    let (cond_rate, cond) = fleet.timed(seconds, |c, i| {
        if fleet.full_info(c, round_robin(c, i), true) == 304 {
            not_modified.fetch_add(1, Ordering::Relaxed);
        }
    });
    let (mix_rate, mix) =
        if fleet.instances.is_empty() { (0.0, Vec::new()) } else { fleet.timed(seconds, |c, i| fleet_operation(fleet, c, i)) };
    let loaded_rss = pids.iter().map(|p| rss_kb(p)).max().unwrap_or(0);
    let (base_cpu, base_db) = idle_window(fleet, &pids, db, idle_seconds / 2.0, false, false);
    let (idle_cpu, idle_db) = idle_window(fleet, &pids, db, idle_seconds, true, true);
    let (plain_cpu, plain_db) = idle_window(fleet, &pids, db, idle_seconds, true, false);
    let ms = |v: &[f64], p: f64| (percentile(v, p) * 100.0).round() / 100.0;
    let line = serde_json::json!({
        "masters": pids.len(), "computers": computers, "idle_fleet": idle_fleet, "partitions": computers * partitions,
        "instances": fleet.instances.len(), "format_s": format_s, "allocate_s": allocate_s,
        "info_per_s": plain_rate, "info_p50_ms": ms(&plain, 0.5), "info_p99_ms": ms(&plain, 0.99),
        "cond_per_s": cond_rate, "cond_p50_ms": ms(&cond, 0.5), "cond_p99_ms": ms(&cond, 0.99),
        "cond_304_share": not_modified.into_inner() as f64 / cond.len().max(1) as f64,
        "requests_per_s": mix_rate, "requests_p50_ms": ms(&mix, 0.5), "requests_p99_ms": ms(&mix, 0.99),
        "idle_rss_kb": idle_rss, "loaded_rss_kb": loaded_rss,
        "base_cpu_pct": base_cpu, "base_db_cpu_pct": base_db,
        "idle_cpu_pct": idle_cpu, "idle_db_cpu_pct": idle_db,
        "idle_plain_cpu_pct": plain_cpu, "idle_plain_db_cpu_pct": plain_db,
        "errors": fleet.errors.load(Ordering::Relaxed),
    });
    println!("{line}");
}
