//! Decode + encode throughput of the xml_marshaller codec (used by
//! `bench/marshal/run.sh`, side by side with the Python library).
//!
//! `marshal_bench generate N COMPUTERS_ID > file.xml`: a computer information
//! document with N busy partitions; `marshal_bench run SECONDS FILE…`: decode
//! and re-encode each file in a loop, print one line per file:
//! `<file> <documents/s> <MB/s>`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use slap::marshal::{decode, encode, Value};
use slap::model::{Computer, ComputerPartition, InstanceState, SoftwareRelease};

fn generate(n: usize, computer_id: &str) -> String {
    let sr = "http://example.com/software/my-software/software.cfg";
    let mut c = Computer::new(computer_id);
    c.extra.insert("_computer_id".into(), Value::str(computer_id));
    c.software_releases.push(SoftwareRelease::new(sr, computer_id));
    for i in 0..n {
        let mut p = ComputerPartition::free(computer_id, format!("slappart{i}"));
        p.requested_state = Some(InstanceState::Started);
        p.need_modification = Some(true);
        p.software_release = Some(SoftwareRelease::new(sr, computer_id));
        let mut params = BTreeMap::new();
        params.insert("greeting".to_string(), Value::str(format!("hello & <welcome> {i}")));
        params.insert("instance_title".to_string(), Value::str(format!("instance-{i}")));
        params.insert("root_instance_title".to_string(), Value::str(format!("instance-{i}")));
        params.insert("slap_computer_id".to_string(), Value::str(computer_id));
        params.insert("slap_computer_partition_id".to_string(), Value::str(format!("slappart{i}")));
        params.insert("slap_software_release_url".to_string(), Value::str(sr));
        params.insert("slap_software_type".to_string(), Value::str("default"));
        params.insert("slave_instance_list".to_string(), Value::List(vec![]));
        params.insert("full_address_list".to_string(), Value::List(vec![]));
        params.insert("timestamp".to_string(), Value::str("1795541544.3356452"));
        params.insert(
            "ip_list".to_string(),
            Value::List(vec![
                Value::Tuple(vec![Value::str(format!("slaptap{i}")), Value::str(format!("10.0.{}.{}", i / 250, i % 250 + 2))]),
                Value::Tuple(vec![Value::str(format!("slaptap{i}")), Value::str(format!("2001:db8::{:x}", i + 2))]),
            ]),
        );
        p.parameters = Some(params);
        p.connection = Some(BTreeMap::from([("url".to_string(), Value::str(format!("http://[2001:db8::{:x}]:8080/", i + 2)))]));
        c.partitions.push(p);
    }
    encode(&c.to_value()).expect("encodable")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("generate") => {
            let n: usize = args.get(2).and_then(|a| a.parse().ok()).expect("generate N COMPUTER_ID");
            print!("{}", generate(n, args.get(3).map(String::as_str).unwrap_or("COMP-BENCH")));
        }
        Some("run") => {
            let seconds: f64 = args.get(2).and_then(|a| a.parse().ok()).expect("run SECONDS FILE...");
            for file in &args[3..] {
                let doc = std::fs::read_to_string(file).expect("readable file");
                // check once that the round trip is exact
                assert_eq!(encode(&decode(&doc).unwrap()).unwrap(), doc.trim_end(), "{file}: not a fixed point");
                let budget = Duration::from_secs_f64(seconds);
                let start = Instant::now();
                let mut count = 0u64;
                while start.elapsed() < budget {
                    let v = decode(&doc).unwrap();
                    std::hint::black_box(encode(&v).unwrap());
                    count += 1;
                }
                let secs = start.elapsed().as_secs_f64();
                let per_s = count as f64 / secs;
                if std::env::var_os("MARSHAL_BENCH_SPLIT").is_some() {
                    let t = Instant::now();
                    let v = decode(&doc).unwrap();
                    let d = t.elapsed();
                    let t = Instant::now();
                    std::hint::black_box(encode(&v).unwrap());
                    let e = t.elapsed();
                    let t = Instant::now();
                    drop(v);
                    eprintln!("{file}: decode {d:?}, encode {e:?}, drop {:?}", t.elapsed());
                }
                println!("{file} {per_s:.1} {:.2}", per_s * doc.len() as f64 / 1e6);
            }
        }
        _ => {
            eprintln!("usage: marshal_bench generate N [COMPUTER_ID] | run SECONDS FILE...");
            std::process::exit(2);
        }
    }
}
