//! Two local nodes on one machine: `slapos node format --local` for real
//! (observation of the listeners and claims, state file, claim), no root.

use std::net::Ipv4Addr;
use std::path::Path;

use slapos_format::apply::{run, Mode};
use slapos_format::config::{FormatConfig, Overrides};
use slapos_format::local_range;
use slapos_format::state::ComputerState;

fn config(root: &Path, claims: &Path) -> FormatConfig {
    let text = format!(
        "[slapos]\ncomputer_id = C\nmaster_url = http://127.0.0.1:9\ninstance_root = {0}/srv\nsoftware_root = {0}/opt\ncomputer_xml = {0}/slapos.xml\npartition_amount = 3\n",
        root.display()
    );
    let mut cfg =
        FormatConfig::from_config(&slapos_config::Config::parse(&text).unwrap(), &Overrides { local: true, ..Default::default() }).unwrap();
    cfg.local_claims_dir = claims.to_path_buf();
    cfg
}

/// Formats (the master does not answer: exit 2, the node formatted) and
/// returns the node's loopback /24.
fn format(cfg: &FormatConfig) -> Ipv4Addr {
    assert_eq!(run(cfg, Mode::Apply, false).unwrap(), 2);
    let state = ComputerState::load(&cfg.computer_xml).unwrap().unwrap();
    let net: Ipv4Addr = state.ipv4_local_network.as_deref().unwrap().trim_end_matches("/24").parse().unwrap();
    for (i, p) in state.partitions.iter().enumerate() {
        assert_eq!(p.addresses[0].0, Ipv4Addr::from(u32::from(net) + i as u32 + 1).to_string());
    }
    net
}

#[test]
fn two_local_nodes_get_disjoint_ranges_and_a_busy_range_is_skipped() {
    let d = tempfile::tempdir().unwrap();
    let claims = d.path().join("claims");
    let (a, b) = (config(&d.path().join("a"), &claims), config(&d.path().join("b"), &claims));
    // something already listens in the range b would take first
    let first_b = local_range::pick(local_range::seed(&b.instance_root.display().to_string()), |_| false).unwrap();
    let listener = std::net::TcpListener::bind((Ipv4Addr::from(u32::from(first_b) + 5), 0)).unwrap();
    let net_a = format(&a);
    let net_b = format(&b);
    assert_ne!(net_a, net_b);
    assert_ne!(net_b, first_b, "the range with a listener is skipped");
    assert_eq!(local_range::claims(&claims).len(), 2, "both ranges claimed");
    drop(listener);
    // re-runs keep the ranges, even now that b's first choice is free
    assert_eq!(format(&a), net_a);
    assert_eq!(format(&b), net_b);
    assert_eq!(std::fs::read_to_string(claims.join(net_a.to_string())).unwrap(), a.computer_xml.display().to_string());
}
