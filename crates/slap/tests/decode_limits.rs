//! Back-reference bombs decoded in a child process (this test binary run
//! again), so that its peak memory (VmHWM) is the decoder's alone: a typed
//! limit error, in bounded memory and time.

use std::process::Command;
use std::time::{Duration, Instant};

use slap::marshal::{decode, DecodeErrorKind, LimitKind};
use test_support::reference_bomb;

const CHILD: &str = "SLAP_DECODE_LIMITS_CHILD";

fn vm_hwm_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM value")
}

/// In the child: decodes the bomb named by the environment and prints one
/// `result` line.
fn child(spec: &str) {
    let n: Vec<usize> = spec.split(',').map(|x| x.parse().unwrap()).collect();
    let doc = reference_bomb(n[0], n[1], n[2]);
    let before = vm_hwm_kb();
    let started = Instant::now();
    let outcome = decode(&doc);
    let elapsed = started.elapsed();
    let kind = match outcome {
        Ok(_) => "decoded".to_string(),
        Err(e) => format!("{:?}", e.kind),
    };
    println!("result bytes={} before_kb={before} after_kb={} ms={} kind={kind}", doc.len(), vm_hwm_kb(), elapsed.as_millis());
}

/// Runs `test` of this binary as a child decoding the bomb `spec`; its line.
fn run_child(test: &str, spec: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, spec)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "the child failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    // the harness may print `test … ... ` on the same line first
    let line = text.lines().find_map(|l| l.find("result bytes=").map(|i| &l[i..])).unwrap_or_else(|| panic!("no result line: {text}"));
    eprintln!("{line}");
    line.to_string()
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace().find_map(|w| w.strip_prefix(name).and_then(|w| w.strip_prefix('='))).unwrap()
}

fn check_bomb(test: &str, spec: &str, expected: LimitKind) {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec);
    }
    let started = Instant::now();
    let line = run_child(test, spec);
    let bytes: usize = field(&line, "bytes").parse().unwrap();
    let after_kb: u64 = field(&line, "after_kb").parse().unwrap();
    let limit = match expected {
        LimitKind::Nodes => 1_000_000,
        LimitKind::TotalBytes => 64 << 20,
        other => panic!("not a bomb limit: {other:?}"),
    };
    assert!(bytes < 4096, "the bomb should be small: {bytes} bytes");
    let kind = line.split_once(" kind=").map(|(_, k)| k).unwrap_or_default();
    assert_eq!(kind, format!("{:?}", DecodeErrorKind::Limit { what: expected, limit }));
    assert!(after_kb < 64 * 1024, "peak RSS {after_kb} kB while refusing a {bytes}-byte document");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
}

#[test]
fn a_bomb_of_a_billion_values_is_refused_in_bounded_memory() {
    // 10 references per level, 9 levels: 10^9 values
    check_bomb("a_bomb_of_a_billion_values_is_refused_in_bounded_memory", "10,9,10", LimitKind::Nodes);
}

#[test]
fn a_bomb_of_gigabytes_of_text_is_refused_in_bounded_memory() {
    // 4 references per level, 12 levels, 500-byte strings: 8 GB of text
    check_bomb("a_bomb_of_gigabytes_of_text_is_refused_in_bounded_memory", "4,12,500", LimitKind::TotalBytes);
}
