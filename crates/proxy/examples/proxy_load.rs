//! Load generator for `bench/proxy/run.sh`: drives one master (ours or the
//! Python one) through the same scenario and prints one JSON line of results.
//!
//! `proxy_load URL PID COMPUTERS PARTITIONS_PER_COMPUTER INSTANCES_PER_COMPUTER SECONDS`
//!
//! 1. format reports for COMPUTERS computers (COMP-0…), PARTITIONS_PER_COMPUTER each;
//! 2. supply one software release to each, request INSTANCES_PER_COMPUTER
//!    instances on each (timed: allocation rate);
//! 3. re-requests of existing instances from 4 threads for SECONDS (req/s);
//! 4. getFullComputerInformation of COMP-0 from 4 threads for SECONDS (req/s),
//!    then sequential latencies p50/p99 over every computer;
//!
//! RSS of PID (VmRSS) idle (before 1) and loaded (after 4).

use std::time::{Duration, Instant};

use slap::client::{ClientConfig, InstanceRequest, SlapClient};

mod common;
use common::{percentile, report, rss_kb};
use slap::marshal::Value;
use slap::model::SoftwareState;

const SR: &str = "http://example.com/software/bench/software.cfg";

fn parallel<F: Fn(&SlapClient, usize) + Sync>(url: &str, seconds: f64, f: F) -> f64 {
    let count = std::sync::atomic::AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (count, f) = (&count, &f);
            scope.spawn(move || {
                let c = SlapClient::new(ClientConfig::new(url)).unwrap();
                let mut i = t;
                while start.elapsed().as_secs_f64() < seconds {
                    f(&c, i);
                    i += 4;
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    count.into_inner() as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (url, pid) = (&a[1], &a[2]);
    let computers: usize = a[3].parse().unwrap();
    let partitions: usize = a[4].parse().unwrap();
    let instances: usize = a[5].parse().unwrap();
    let seconds: f64 = a[6].parse().unwrap();
    let c = SlapClient::new(ClientConfig::new(url).with_timeout(Duration::from_secs(120))).unwrap();
    let idle = rss_kb(pid);
    let t = Instant::now();
    for k in 0..computers {
        c.load_computer_configuration(&report(&format!("COMP-{k}"), partitions, k * partitions)).unwrap();
        c.supply(SR, &format!("COMP-{k}"), SoftwareState::Available).unwrap();
    }
    let format_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut titles = Vec::new();
    for k in 0..computers {
        for i in 0..instances {
            let title = format!("inst-{k}-{i}");
            let mut r = InstanceRequest::new(SR, &title);
            r.filter.insert("computer_guid".into(), format!("COMP-{k}"));
            r.parameters.insert("n".into(), Value::str(i.to_string()));
            c.request(&r).unwrap();
            titles.push((title, k, i));
        }
    }
    let allocations_per_s = titles.len() as f64 / t.elapsed().as_secs_f64();
    let requests_per_s = parallel(url, seconds, |c, i| {
        let (title, k, n) = &titles[i % titles.len()];
        let mut r = InstanceRequest::new(SR, title);
        r.filter.insert("computer_guid".into(), format!("COMP-{k}"));
        r.parameters.insert("n".into(), Value::str(n.to_string()));
        c.request(&r).unwrap();
    });
    // the master's side only: raw GETs, the answer is read but not decoded
    let raw = |agent: &ureq::Agent, computer: &str| {
        let mut r = agent.get(&format!("{url}/getFullComputerInformation?computer_id={computer}")).call().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.body_mut().with_config().limit(1 << 30).read_to_string().unwrap().len()
    };
    let info_per_s = {
        let count = std::sync::atomic::AtomicUsize::new(0);
        let start = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    let agent = ureq::Agent::new_with_defaults();
                    while start.elapsed().as_secs_f64() < seconds {
                        raw(&agent, "COMP-0");
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        count.into_inner() as f64 / start.elapsed().as_secs_f64()
    };
    let agent = ureq::Agent::new_with_defaults();
    let mut lat = Vec::new();
    let rounds = (200 / computers).max(1);
    for _ in 0..rounds {
        for k in 0..computers {
            let t = Instant::now();
            raw(&agent, &format!("COMP-{k}"));
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let loaded = rss_kb(pid);
    println!(
        "{{\"format_s\": {format_s:.3}, \"allocations_per_s\": {allocations_per_s:.1}, \"requests_per_s\": {requests_per_s:.1}, \"info_per_s\": {info_per_s:.1}, \"info_p50_ms\": {:.2}, \"info_p99_ms\": {:.2}, \"idle_rss_kb\": {idle}, \"loaded_rss_kb\": {loaded}}}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
}
