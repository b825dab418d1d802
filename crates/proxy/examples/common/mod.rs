//! What the load generators of the benchmarks share (`proxy_load`,
//! `fleet_load`): format reports, percentiles, a process's RSS.

use std::collections::BTreeMap;

use slap::marshal::Value;

/// The resident set size of process `pid` (VmRSS), in kB; 0 when unknown.
pub fn rss_kb(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// A format report of `computer` with `partitions` partitions (slappart0…),
/// one IPv4 and one IPv6 address each, numbered from `base` across the site.
pub fn report(computer: &str, partitions: usize, base: usize) -> Value {
    fn s(v: impl Into<String>) -> Value {
        Value::Str(v.into())
    }
    let list = (0..partitions)
        .map(|i| {
            let n = base + i;
            Value::Dict(BTreeMap::from([
                ("reference".to_string(), s(format!("slappart{i}"))),
                ("tap".to_string(), Value::Dict(BTreeMap::from([("name".to_string(), s(format!("slaptap{i}")))]))),
                (
                    "address_list".to_string(),
                    Value::List(vec![
                        Value::Dict(BTreeMap::from([
                            ("addr".to_string(), s(format!("10.{}.{}.{}", n / 65536 % 256, n / 256 % 256, n % 256))),
                            ("netmask".to_string(), s("255.255.255.255")),
                        ])),
                        Value::Dict(BTreeMap::from([
                            ("addr".to_string(), s(format!("2001:db8::{:x}", n + 2))),
                            ("netmask".to_string(), s("ffff:ffff:ffff:ffff::")),
                        ])),
                    ]),
                ),
            ]))
        })
        .collect();
    Value::Dict(BTreeMap::from([
        ("reference".to_string(), s(computer)),
        ("address".to_string(), s("2001:db8::1")),
        ("netmask".to_string(), s("ffff:ffff:ffff:ffff::")),
        ("partition_list".to_string(), Value::List(list)),
    ]))
}

/// The `p` quantile (0..=1) of `sorted`, nearest rank; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
