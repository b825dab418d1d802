//! The planner's tests: whole plans on simulated nodes, and re-runs on the
//! node as the plan leaves it.

use super::*;
use crate::config::Overrides;
use crate::system::{Interface, PathInfo, Route, UserInfo};

/// The planner's test configuration, with `extra` `[slapformat]` lines.
pub(super) fn config(extra: &str) -> FormatConfig {
    let text = format!(
        "[slapos]\ncomputer_id = COMP-1\nmaster_url = http://m\ninstance_root = /srv/slapgrid\nsoftware_root = /opt/slapgrid\n[slapformat]\ncomputer_xml = /var/slapos.xml\npartition_amount = 2\ncreate_tap = false\ninterface_name = br0\nipv4_local_network = 10.0.0.0/16\nuser_base_name = tuser\nsoftware_user = tsoft\n{extra}"
    );
    FormatConfig::from_config(&slapos_config::Config::parse(&text).unwrap(), &Overrides::default()).unwrap()
}

fn fresh_node() -> Observed {
    let mut o = Observed::default();
    o.interfaces.insert(
        "br0".into(),
        Interface {
            name: "br0".into(),
            index: 3,
            addresses: vec![("fe80::1".parse().unwrap(), 64, false), ("fd00:e2e::1".parse().unwrap(), 64, false)],
            up: true,
            bridge: true,
            ..Default::default()
        },
    );
    o.all_addresses.insert("fd00:e2e::1".parse().unwrap());
    o
}

/// The system as it is after applying `plan` (what apply would do).
fn after(mut o: Observed, plan: &Plan) -> Observed {
    let mut uid = 990;
    for s in &plan.steps {
        match s {
            Step::CreateGroup { name } => {
                o.groups.insert(name.clone());
            }
            Step::CreateUser { name, home, group, groups } => {
                uid += 1;
                o.users.insert(
                    name.clone(),
                    UserInfo { uid, gid: uid, home: home.clone(), shell: "/bin/sh".into(), group: group.clone(), groups: groups.clone() },
                );
            }
            Step::CreateDirectory { path, mode } | Step::SetMode { path, mode } => {
                o.paths.entry(path.clone()).or_insert(PathInfo { mode: *mode, uid: 0, gid: 0 }).mode = *mode;
            }
            Step::SetOwner { path, user } => {
                let u = o.users[user].uid;
                o.paths.get_mut(path).unwrap().uid = u;
            }
            Step::AddAddress { interface, address, prefix, .. } => {
                o.interfaces.get_mut(interface).unwrap().addresses.push((*address, *prefix, false));
                o.all_addresses.insert(*address);
            }
            Step::CreateBridge { name } => {
                o.interfaces.insert(name.clone(), Interface { name: name.clone(), bridge: true, ..Default::default() });
            }
            Step::CreateTunTap { name, user, .. } => {
                let owner = Some(o.users.get(user).map(|u| u.uid).unwrap_or(0));
                o.interfaces.insert(name.clone(), Interface { name: name.clone(), tuntap: true, owner, ..Default::default() });
            }
            Step::SetMaster { interface, master } => o.interfaces.get_mut(interface).unwrap().master = Some(master.clone()),
            Step::SetUp { interface } => o.interfaces.get_mut(interface).unwrap().up = true,
            Step::AddRoute { destination, prefix, interface, via } => {
                o.routes.insert(Route { destination: *destination, prefix: *prefix, interface: interface.clone(), via: *via });
            }
            Step::AddLocalRoute { network, prefix } => {
                o.local_routes.insert((*network, *prefix));
            }
            Step::Sysctl { .. } => o.nonlocal_bind = true,
            Step::ClaimLocalRange { network, state_file, .. } => {
                o.local_claims.insert(*network, state_file.clone());
            }
            Step::WriteResource { path } => {
                let i = plan.state.partitions.iter().position(|p| p.path.join(".slapos-resource") == *path).unwrap();
                o.resources.insert(path.clone(), crate::state::to_json(&plan.state.partitions[i].to_value(&plan.state.software_user), 4));
            }
            _ => {}
        }
    }
    o
}

#[test]
fn a_fresh_node_gets_users_dirs_addresses_ranges_then_a_rerun_is_empty() {
    let cfg = config("");
    let obs = fresh_node();
    let p = plan(&cfg, None, &obs, "root", &mut Picker::new(42)).unwrap();
    let text: Vec<String> = p.steps.iter().map(|s| s.to_string()).collect();
    for expected in [
        "groupadd tsoft",
        "useradd -d /opt/slapgrid -g tsoft -s /bin/sh -r tsoft",
        "useradd -d /srv/slapgrid/slappart0 -g tuser0 -s /bin/sh -r -G tsoft tuser0",
        "passwd -l tuser1",
        "mkdir -m 750 /srv/slapgrid/slappart1",
        "chown tuser1:tuser1 /srv/slapgrid/slappart1",
        "ip addr add fd00:e2e::2/64 dev br0",
        "ip addr add fd00:e2e::3/64 dev br0",
        "ip -6 route add local fd00:e2e:0:0:4001::/80 dev lo",
        "sysctl net.ipv6.ip_nonlocal_bind=1",
    ] {
        assert!(text.iter().any(|t| t == expected), "missing '{expected}' in {text:#?}");
    }
    assert!(text.iter().filter(|t| t.starts_with("ip addr add 10.0.")).count() == 2, "{text:#?}");
    assert_eq!(p.state.address.as_deref(), Some("fd00:e2e::1"));
    // re-run on the formatted node: nothing to do, same state
    let obs2 = after(obs, &p);
    let p2 = plan(&cfg, Some(&p.state), &obs2, "root", &mut Picker::new(7)).unwrap();
    assert_eq!(p2.steps, vec![], "a re-run changes nothing");
    assert_eq!(p2.state, p.state, "same addresses for the same partitions");
    // growing keeps the old partitions untouched
    let cfg3 = config("partition_amount = 3");
    let p3 = plan(&cfg3, Some(&p.state), &obs2, "root", &mut Picker::new(9)).unwrap();
    assert_eq!(&p3.state.partitions[..2], &p.state.partitions[..]);
    assert_eq!(p3.state.partitions[2].addresses[1].0, "fd00:e2e::4");
    assert!(p3.steps.iter().all(|s| !s.to_string().contains("slappart0")), "{:#?}", p3.steps);
    // shrinking is refused
    let cfg1 = config("partition_amount = 1");
    assert!(matches!(plan(&cfg1, Some(&p.state), &obs2, "root", &mut Picker::new(1)), Err(PlanError::FewerPartitions { .. })));
}

#[test]
fn bad_networks_are_named_before_anything_changes() {
    let cfg = config("");
    let mut obs = fresh_node();
    obs.interfaces.clear();
    assert_eq!(
        plan(&cfg, None, &obs, "root", &mut Picker::new(1)).unwrap_err().to_string(),
        "interface 'br0' (interface_name) does not exist; set [slapformat] create_bridge = true to let format create it as a bridge"
    );
    let mut obs = fresh_node();
    obs.interfaces.get_mut("br0").unwrap().addresses.retain(|(a, _, _)| a.to_string().starts_with("fe80"));
    assert!(plan(&cfg, None, &obs, "root", &mut Picker::new(1)).unwrap_err().to_string().contains("global IPv6"));
    let cfg = config("ipv6_prefixshift = 1");
    assert!(plan(&cfg, None, &fresh_node(), "root", &mut Picker::new(1)).unwrap_err().to_string().contains("ipv6_prefixshift 1"));
}

fn local_config(root: &str, extra: &str) -> FormatConfig {
    let text = format!("[slapos]\ncomputer_id = C\nmaster_url = http://m\ninstance_root = {root}/i\nsoftware_root = /tmp/s\ncomputer_xml = {root}/x.xml\npartition_amount = 2\n{extra}");
    FormatConfig::from_config(&slapos_config::Config::parse(&text).unwrap(), &Overrides { local: true, ..Default::default() }).unwrap()
}

/// The loopback /24 of a local plan's partitions.
fn local_net(p: &Plan) -> Ipv4Addr {
    let a: Ipv4Addr = p.state.partitions[0].addresses[0].0.parse().unwrap();
    assert_eq!(p.state.ipv4_local_network, Some(format!("{}/24", crate::local_range::network_of(a))), "stored in the state");
    crate::local_range::network_of(a)
}

#[test]
fn local_mode_changes_no_user_and_no_network() {
    let cfg = local_config("/tmp", "");
    let p = plan(&cfg, None, &Observed::default(), "alice", &mut Picker::new(1)).unwrap();
    for s in &p.steps {
        assert!(matches!(s, Step::CreateDirectory { .. } | Step::WriteResource { .. } | Step::ClaimLocalRange { .. }), "{s}");
    }
    assert_eq!(p.state.partitions[0].user, "alice");
    let net = local_net(&p).octets();
    assert_eq!(p.state.partitions[1].addresses, vec![(format!("127.{}.{}.2", net[1], net[2]), "255.255.255.255".to_string())]);
    // a re-run keeps the range and changes nothing
    let obs = after(Observed::default(), &p);
    let again = plan(&cfg, Some(&p.state), &obs, "alice", &mut Picker::new(2)).unwrap();
    assert!(again.steps.is_empty(), "{:?}", again.steps);
    assert_eq!(again.state, p.state);
}

#[test]
fn local_nodes_get_ranges_of_their_own() {
    let a = plan(&local_config("/tmp/a", ""), None, &Observed::default(), "alice", &mut Picker::new(1)).unwrap();
    let b = plan(&local_config("/tmp/b", ""), None, &Observed::default(), "alice", &mut Picker::new(1)).unwrap();
    assert_ne!(local_net(&a), local_net(&b), "two instance roots, two ranges");
    // the range a listener is in is skipped, so is one another node claims
    let first = local_net(&a);
    let mut obs = Observed::default();
    obs.listening.insert(Ipv4Addr::from(u32::from(first) + 7));
    let skipped = plan(&local_config("/tmp/a", ""), None, &obs, "alice", &mut Picker::new(1)).unwrap();
    assert_ne!(local_net(&skipped), first);
    let mut obs = Observed::default();
    obs.local_claims.insert(first, "/elsewhere/slapos.xml".into());
    assert_ne!(local_net(&plan(&local_config("/tmp/a", ""), None, &obs, "alice", &mut Picker::new(1)).unwrap()), first);
    // but a range stored in the state is kept even when its services listen
    obs.listening.insert(Ipv4Addr::from(u32::from(first) + 1));
    obs.local_claims.insert(first, "/tmp/a/x.xml".into());
    let kept = plan(&local_config("/tmp/a", ""), Some(&a.state), &obs, "alice", &mut Picker::new(1)).unwrap();
    assert_eq!(local_net(&kept), first);
    // a node formatted before ranges were stored keeps its 127.1.0.x
    let mut old = a.state.clone();
    old.ipv4_local_network = None;
    old.partitions.truncate(1);
    old.partitions[0].addresses = vec![("127.1.0.1".into(), "255.255.255.255".into())];
    let p = plan(&local_config("/tmp/a", ""), Some(&old), &Observed::default(), "alice", &mut Picker::new(1)).unwrap();
    assert_eq!(p.state.partitions[1].addresses[0].0, "127.1.0.2");
    // the configured range wins; more than a /24 of partitions is refused
    assert_eq!(
        local_net(
            &plan(&local_config("/tmp/a", "ipv4_local_network = 127.42.3.0/24"), None, &Observed::default(), "alice", &mut Picker::new(1))
                .unwrap()
        ),
        Ipv4Addr::new(127, 42, 3, 0)
    );
    let err =
        plan(&local_config("/tmp/a", "partition_amount = 300"), None, &Observed::default(), "alice", &mut Picker::new(1)).unwrap_err();
    assert_eq!(err.to_string(), "a local node holds at most 254 partitions (one loopback /24); 300 asked");
}

fn texts(p: &Plan) -> Vec<String> {
    p.steps.iter().map(|s| s.to_string()).collect()
}

fn assert_has(text: &[String], expected: &[&str]) {
    for e in expected {
        assert!(text.iter().any(|t| t == e), "missing '{e}' in {text:#?}");
    }
}

#[test]
fn taps_are_created_owned_attached_addressed_and_routed_then_kept() {
    let cfg = config("create_tap = true\ntap_base_name = ttap\npartition_amount = 3");
    let obs = fresh_node();
    let p = plan(&cfg, None, &obs, "root", &mut Picker::new(42)).unwrap();
    let text = texts(&p);
    assert_has(
        &text,
        &[
            "ip tuntap add dev ttap0 mode tap user tuser0",
            "ip link set ttap0 master br0",
            "ip link set ttap0 up",
            "ip addr add fd00:e2e::8001:ffff:ffff:ffff/80 dev ttap0 noprefixroute",
            "ip -6 route add fd00:e2e::8001:0:0:1/128 dev ttap0",
            "ip -6 route add fd00:e2e:0:0:8001::/80 dev ttap0 via fd00:e2e::8001:0:0:1",
            "ip addr add fd00:e2e::8003:ffff:ffff:ffff/80 dev ttap2 noprefixroute",
        ],
    );
    // the tap's creation comes before what is done on it
    let pos = |t: &str| text.iter().position(|x| x == t).unwrap();
    assert!(pos("ip tuntap add dev ttap0 mode tap user tuser0") < pos("ip link set ttap0 master br0"));
    assert!(pos("ip link set ttap0 up") < pos("ip addr add fd00:e2e::8001:ffff:ffff:ffff/80 dev ttap0 noprefixroute"));
    // recorded by the Python format (node.md §2.12)
    let tap = &p.state.partitions[0].tap;
    assert_eq!(
        (tap.name.as_str(), tap.ipv6_addr.as_str(), tap.ipv6_netmask.as_str(), tap.ipv6_gateway.as_str(), tap.ipv6_network.as_str()),
        ("ttap0", "fd00:e2e::8001:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff::", "fd00:e2e::8001:0:0:1", "fd00:e2e::8001:0:0:1/80")
    );
    assert_eq!((tap.ipv4_addr.as_str(), tap.ipv4_gateway.as_str()), ("", ""));
    assert_eq!(p.state.partitions[0].tun, None);
    // re-run: the taps are kept, nothing to do
    let obs2 = after(obs, &p);
    let p2 = plan(&cfg, Some(&p.state), &obs2, "root", &mut Picker::new(7)).unwrap();
    assert_eq!(p2.steps, vec![]);
    assert_eq!(p2.state, p.state);
    assert_eq!(p2.warnings, Vec::<String>::new());
    // a lost tap is drift: created again with its stored address and routes
    let mut lost = obs2.clone();
    lost.interfaces.remove("ttap1");
    lost.routes.retain(|r| r.interface != "ttap1");
    let p3 = plan(&cfg, Some(&p.state), &lost, "root", &mut Picker::new(7)).unwrap();
    assert_has(
        &texts(&p3),
        &["ip tuntap add dev ttap1 mode tap user tuser1", "ip addr add fd00:e2e::8002:ffff:ffff:ffff/80 dev ttap1 noprefixroute"],
    );
    assert!(texts(&p3).iter().all(|t| !t.contains("ttap0") && !t.contains("ttap2")), "{:#?}", p3.steps);
    assert_eq!(p3.state, p.state);
    // another owner is reported, never changed; a detached tap is attached again
    let mut odd = obs2.clone();
    odd.interfaces.get_mut("ttap2").unwrap().owner = Some(4242);
    odd.interfaces.get_mut("ttap2").unwrap().master = None;
    let p4 = plan(&cfg, Some(&p.state), &odd, "root", &mut Picker::new(7)).unwrap();
    assert_eq!(texts(&p4), vec!["ip link set ttap2 master br0"]);
    assert!(p4.warnings[0].contains("Wrong owner of TUN/TAP interface ttap2") && p4.warnings[0].contains("got 4242"), "{:?}", p4.warnings);
    // an interface of that name that is not a tap is refused
    let mut clash = obs2;
    clash.interfaces.get_mut("ttap0").unwrap().tuntap = false;
    assert!(matches!(plan(&cfg, Some(&p.state), &clash, "root", &mut Picker::new(7)), Err(PlanError::NotTunTap(n)) if n == "ttap0"));
}

#[test]
fn taps_get_ipv4_from_the_gateway_interface_and_no_bridge_means_no_master() {
    let cfg = config("create_tap = true\ntap_gateway_interface = eth1\ntap_ipv6 = false\ninterface_name = lo0\nipv6_interface = br0");
    let mut obs = fresh_node();
    obs.interfaces.insert("lo0".into(), Interface { name: "lo0".into(), up: true, ..Default::default() });
    obs.interfaces.insert(
        "eth1".into(),
        Interface { name: "eth1".into(), addresses: vec![("10.8.0.1".parse().unwrap(), 24, false)], up: true, ..Default::default() },
    );
    let p = plan(&cfg, None, &obs, "root", &mut Picker::new(3)).unwrap();
    let tap = &p.state.partitions[0].tap;
    assert_eq!(
        (tap.ipv4_addr.as_str(), tap.ipv4_netmask.as_str(), tap.ipv4_gateway.as_str(), tap.ipv4_network.as_str()),
        ("10.8.0.2", "255.255.255.0", "10.8.0.1", "10.8.0.0")
    );
    assert_eq!(p.state.partitions[1].tap.ipv4_addr, "10.8.0.3");
    assert_eq!(tap.ipv6_addr, "", "tap_ipv6 = false");
    let text = texts(&p);
    assert_has(&text, &["ip route add 10.8.0.2/32 dev slaptap0", "ip tuntap add dev slaptap1 mode tap user tuser1"]);
    assert!(text.iter().all(|t| !t.contains("master")), "lo0 is not a bridge: {text:#?}");
    assert!(p.state.to_value().as_dict().unwrap()["tap_gateway_interface"].as_str() == Some("eth1"));
    // a gateway subnet too small for the partitions is refused
    obs.interfaces.get_mut("eth1").unwrap().addresses = vec![("10.8.0.1".parse().unwrap(), 31, false)];
    assert!(matches!(plan(&cfg, None, &obs, "root", &mut Picker::new(3)), Err(PlanError::TapGatewayTooSmall { .. })));
    obs.interfaces.remove("eth1");
    assert!(plan(&cfg, None, &obs, "root", &mut Picker::new(3)).unwrap_err().to_string().contains("'eth1'"));
}

#[test]
fn tuns_get_a_172_16_subnet_and_an_ipv6_range() {
    let cfg = config("create_tun = true\npartition_amount = 3");
    let obs = fresh_node();
    let p = plan(&cfg, None, &obs, "root", &mut Picker::new(5)).unwrap();
    let tun = p.state.partitions[0].tun.clone().unwrap();
    // recorded by the Python format (node.md §2.12)
    assert_eq!(
        (tun.name.as_str(), tun.ipv4_addr.as_str(), tun.ipv4_netmask.as_str(), tun.ipv4_network.as_str(), tun.ipv4_gateway.as_str()),
        ("slaptun0", "172.16.0.1", "255.252.0.0", "172.16.0.1/255.252.0.0", "")
    );
    assert_eq!(
        (tun.ipv6_addr.as_str(), tun.ipv6_netmask.as_str(), tun.ipv6_network.as_str(), tun.ipv6_gateway.as_str()),
        ("fd00:e2e::c001:0:0:1", "ffff:ffff:ffff:ffff:ffff::", "fd00:e2e::c001:0:0:1/80", "")
    );
    assert_eq!(p.state.partitions[2].tun.as_ref().unwrap().ipv4_addr, "172.24.0.1");
    assert_has(
        &texts(&p),
        &[
            "ip tuntap add dev slaptun0 mode tun user tuser0",
            "ip link set slaptun0 up",
            "ip addr add 172.16.0.1/14 dev slaptun0",
            "ip addr add fd00:e2e::c001:0:0:1/80 dev slaptun0",
        ],
    );
    assert!(texts(&p).iter().all(|t| !t.contains("slaptun0 master")), "tuns are not bridged");
    let obs2 = after(obs, &p);
    let p2 = plan(&cfg, Some(&p.state), &obs2, "root", &mut Picker::new(6)).unwrap();
    assert_eq!(p2.steps, vec![]);
    assert_eq!(p2.state, p.state);
}

#[test]
fn a_missing_interface_is_created_as_a_bridge_only_when_asked() {
    let cfg = config("interface_name = br1\nipv6_interface = br0\ncreate_tap = true");
    let e = plan(&cfg, None, &fresh_node(), "root", &mut Picker::new(1)).unwrap_err().to_string();
    assert!(e.contains("'br1'") && e.contains("create_bridge = true"), "{e}");
    let cfg = config("interface_name = br1\nipv6_interface = br0\ncreate_tap = true\ncreate_bridge = true");
    let obs = fresh_node();
    let p = plan(&cfg, None, &obs, "root", &mut Picker::new(1)).unwrap();
    let text = texts(&p);
    assert_eq!(
        &text[text.iter().position(|t| t.starts_with("ip link add")).unwrap()..][..2],
        ["ip link add br1 type bridge", "ip link set br1 up"]
    );
    assert_has(&text, &["ip link set slaptap0 master br1", "ip addr add fd00:e2e::2/64 dev br0"]);
    assert_eq!(text.iter().filter(|t| t.starts_with("ip addr add 10.0.") && t.ends_with("dev br1")).count(), 2, "{text:#?}");
    let p2 = plan(&cfg, Some(&p.state), &after(obs, &p), "root", &mut Picker::new(2)).unwrap();
    assert_eq!(p2.steps, vec![]);
    // a new bridge has no IPv6 to derive the partitions' from
    let cfg = config("interface_name = br1\ncreate_bridge = true");
    let e = plan(&cfg, None, &fresh_node(), "root", &mut Picker::new(1)).unwrap_err().to_string();
    assert!(e.contains("ipv6_interface"), "{e}");
}

#[test]
fn taken_addresses_fall_back_to_random_ones_with_the_default_shift() {
    let mut obs = fresh_node();
    obs.interfaces.insert(
        "eth9".into(),
        Interface {
            name: "eth9".into(),
            addresses: vec![("fd00:e2e::2".parse().unwrap(), 64, false), ("fd00:e2e::8001:ffff:ffff:ffff".parse().unwrap(), 80, false)],
            ..Default::default()
        },
    );
    obs.all_addresses.insert("fd00:e2e::2".parse().unwrap());
    obs.all_addresses.insert("fd00:e2e::8001:ffff:ffff:ffff".parse().unwrap());
    let cfg = config("create_tap = true");
    let p = plan(&cfg, None, &obs, "root", &mut Picker::new(11)).unwrap();
    let v6 = &p.state.partitions[0].addresses[1].0;
    assert!(v6.starts_with("fd00:e2e::") && v6 != "fd00:e2e::2", "{v6}");
    assert_eq!(p.state.partitions[1].addresses[1].0, "fd00:e2e::3", "only the taken one changes");
    let tap = &p.state.partitions[0].tap;
    assert!(tap.ipv6_addr.starts_with("fd00:e2e::") && tap.ipv6_addr.ends_with(":ffff:ffff:ffff"), "{}", tap.ipv6_addr);
    assert_ne!(tap.ipv6_addr, "fd00:e2e::8001:ffff:ffff:ffff");
    assert_eq!(tap.ipv6_gateway, format!("{}:0:0:1", tap.ipv6_addr.trim_end_matches(":ffff:ffff:ffff")));
    // another shift aborts, as in SlapOS
    let e = plan(&config("ipv6_prefixshift = 20"), None, &obs, "root", &mut Picker::new(11)).unwrap_err();
    assert!(matches!(e, PlanError::Collision { .. }), "{e}");
}

#[test]
fn a_defined_computer_keeps_its_address_without_an_interface() {
    let cfg = config("interface_name = nosuch0\nalter_network = false");
    let defined = crate::definition::parse(
        "[computer]\naddress = fd00:1::1/ffff:ffff:ffff:ffff::\n[partition_0]\naddress = 10.1.0.2/255.255.255.255 fd00:1::2/ffff:ffff:ffff:ffff::\nuser = duser0\nnetwork_interface = dtap0\npathname = dpart0\n[partition_1]\naddress = \nuser = duser1\nnetwork_interface = dtap1\npathname = dpart1\n",
        "def.cfg",
        &cfg,
    )
    .unwrap();
    let p = plan(&cfg, Some(&defined), &Observed::default(), "root", &mut Picker::new(1)).unwrap();
    assert_eq!((p.state.address.as_deref(), p.state.netmask.as_deref()), (Some("fd00:1::1"), Some("ffff:ffff:ffff:ffff::")));
    assert_eq!(p.state.partitions, defined.partitions, "the definition is used as it is");
    assert_has(
        &texts(&p),
        &["useradd -d /srv/slapgrid/dpart1 -g duser1 -s /bin/sh -r -G tsoft duser1", "mkdir -m 750 /srv/slapgrid/dpart0"],
    );
}
