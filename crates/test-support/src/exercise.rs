//! Every client call against a master, each write checked through the
//! master's own answers. Shared by the interoperability tests against the
//! Python master (crates/slap) and against ours (crates/proxy).

use std::collections::BTreeMap;

use slap::client::{ClientConfig, InstanceRequest, RequestResult, SlapClient, SlapError};
use slap::marshal::Value;
use slap::model::{InstanceState, RequestedInstance, SoftwareState};

const SR: &str = "http://example.com/software/my-software/software.cfg";
const COMPUTER: &str = "COMP-TEST";

fn s(v: &str) -> Value {
    Value::str(v)
}

fn dict(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// The dictionary `slapos node format` posts [cap 003], for `n` partitions.
fn format_report(computer: &str, n: usize) -> Value {
    let partitions = (0..n)
        .map(|i| {
            Value::Dict(dict(&[
                ("reference", s(&format!("slappart{i}"))),
                ("path", s(&format!("/srv/slapgrid/slappart{i}"))),
                (
                    "user",
                    Value::Dict(dict(&[
                        ("name", s(&format!("slapuser{i}"))),
                        ("additional_group_list", Value::List(vec![])),
                        ("shell", s("/bin/sh")),
                    ])),
                ),
                (
                    "address_list",
                    Value::List(vec![
                        Value::Dict(dict(&[("addr", s(&format!("10.0.0.{}", i + 2))), ("netmask", s("255.255.255.255"))])),
                        Value::Dict(dict(&[("addr", s(&format!("2001:db8::{}", i + 2))), ("netmask", s("ffff:ffff:ffff:ffff::"))])),
                    ]),
                ),
                ("tap", Value::Dict(dict(&[("name", s(&format!("slaptap{i}")))]))),
                ("tun", Value::None),
                ("external_storage_list", Value::List(vec![])),
            ]))
        })
        .collect();
    Value::Dict(dict(&[
        ("reference", s(computer)),
        ("address", s("2001:db8::1")),
        ("netmask", s("ffff:ffff:ffff:ffff::")),
        ("instance_root", s("/srv/slapgrid")),
        ("software_root", s("/opt/slapgrid")),
        ("partition_list", Value::List(partitions)),
    ]))
}

fn ready(r: RequestResult) -> RequestedInstance {
    match r {
        RequestResult::Ready(i) => *i,
        RequestResult::NotReady { message } => panic!("not ready: {message}"),
    }
}

/// Drives every call of the client against the master at `url`, whose
/// configured computer is `COMP-TEST` and which has seen nothing yet.
pub fn every_client_call(url: &str) {
    let c = SlapClient::new(ClientConfig::new(url)).unwrap();

    // probes and the configured computer before any format
    assert_eq!(c.hateoas_url().unwrap(), None, "the Python proxy has no getHateoasUrl");
    let computer = c.computer_information(COMPUTER).unwrap();
    assert!(computer.partitions.is_empty());

    // format report
    c.load_computer_configuration(&format_report(COMPUTER, 3)).unwrap();
    let computer = c.computer_information(COMPUTER).unwrap();
    assert_eq!(computer.partitions.len(), 3);
    assert!(computer.partitions.iter().all(|p| p.is_free()));

    // supply
    let answer = c.supply(SR, COMPUTER, SoftwareState::Available).unwrap();
    assert!(answer.contains("available"), "{answer}");
    let computer = c.computer_information(COMPUTER).unwrap();
    assert_eq!(computer.software_releases.len(), 1);
    assert_eq!(computer.software_releases[0].url, SR);
    assert_eq!(computer.software_releases[0].state(), SoftwareState::Available);

    // software release reports (the Python proxy ignores them, but accepts them)
    c.software_release_building(SR, COMPUTER).unwrap();
    c.software_release_available(SR, COMPUTER).unwrap();
    c.software_release_error(SR, COMPUTER, "log & <tail>").unwrap();

    // request with parameters (escaping, non-ASCII), a software type and an SLA
    let mut req = InstanceRequest::new(SR, "MyInstance");
    req.software_type = "default".into();
    req.parameters = dict(&[("count", Value::Int(3)), ("text", s("a&b <c> é"))]);
    req.filter.insert("computer_guid".into(), COMPUTER.into());
    let inst = ready(c.request(&req).unwrap());
    let partition = inst.partition_id.clone().unwrap();
    assert_eq!(inst.computer_id.as_deref(), Some(COMPUTER));
    assert_eq!(inst.requested_state, Some(InstanceState::Started));
    assert_eq!(inst.instance_parameters()["count"], s("3"), "instance XML makes everything text");
    assert_eq!(inst.instance_parameters()["text"], s("a&b <c> é"));
    let first_timestamp = inst.timestamp().unwrap().to_string();
    // identical re-request: same partition, same timestamp
    let again = ready(c.request(&req).unwrap());
    assert_eq!(again.partition_id.as_deref(), Some(partition.as_str()));
    assert_eq!(again.timestamp(), Some(first_timestamp.as_str()));

    // what the node sees
    let p = c.register_partition(COMPUTER, &partition).unwrap();
    assert_eq!(p.instance_title(), Some("MyInstance"));
    assert_eq!(p.software_release_url(), Some(SR));
    assert_eq!(p.requested_state, Some(InstanceState::Started));
    assert_eq!(p.ip_list().len(), 2);

    // connection parameters published by the partition, read back by the requester
    c.set_connection_parameters(COMPUTER, &partition, &dict(&[("url", s("http://[2001:db8::2]:8080/")), ("password", s("s3cr&t"))]), None)
        .unwrap();
    let conn = ready(c.request(&req).unwrap()).connection_parameters();
    assert_eq!(conn["password"].as_deref(), Some("s3cr&t"));
    assert_eq!(conn["url"].as_deref(), Some("http://[2001:db8::2]:8080/"));

    // a child requested from inside the partition (Authorization header)
    let mut child = InstanceRequest::new(SR, "MyChild");
    child.requester = Some((COMPUTER.into(), partition.clone()));
    let child = ready(c.request(&child).unwrap());
    let child_partition = child.partition_id.clone().unwrap();
    assert_ne!(child_partition, partition);
    let cp = c.register_partition(COMPUTER, &child_partition).unwrap();
    assert_eq!(cp.root_instance_title(), Some("MyInstance"), "the child belongs to the tree of its requester");

    // a shared instance hosted by the first partition, and its connection parameters
    let mut shared = InstanceRequest::new(SR, "MyShared");
    shared.shared = true;
    shared.parameters = dict(&[("domain", s("example.org"))]);
    let sh = ready(c.request(&shared).unwrap());
    assert_eq!(sh.instance_guid, None);
    let host = sh.partition_id.clone().unwrap();
    let hp = c.register_partition(COMPUTER, &host).unwrap();
    let slaves = hp.slave_instance_list();
    assert_eq!(slaves.len(), 1);
    assert_eq!(slaves[0]["domain"], s("example.org"));
    let reference = slaves[0]["slave_reference"].as_str().unwrap().to_string();
    c.set_connection_parameters(COMPUTER, &host, &dict(&[("site-url", s("https://example.org/"))]), Some(&reference)).unwrap();
    let conn = ready(c.request(&shared).unwrap()).connection_parameters();
    assert_eq!(conn["site-url"].as_deref(), Some("https://example.org/"));

    // stopped state
    let mut stop = req.clone();
    stop.state = Some(InstanceState::Stopped);
    ready(c.request(&stop).unwrap());
    let p = c.register_partition(COMPUTER, &partition).unwrap();
    assert_eq!(p.requested_state, Some(InstanceState::Stopped));
    assert_ne!(p.timestamp(), Some(first_timestamp.as_str()), "a state change bumps the timestamp");

    // partition reports, bang, rename, certificate, usage, product list
    c.partition_started(COMPUTER, &partition).unwrap();
    c.partition_stopped(COMPUTER, &partition).unwrap();
    c.partition_error(COMPUTER, &partition, "it broke", None).unwrap();
    let before = c.register_partition(COMPUTER, &partition).unwrap().timestamp().map(str::to_string);
    std::thread::sleep(std::time::Duration::from_millis(20));
    c.bang(COMPUTER, &partition, "please reprocess").unwrap();
    let after = c.register_partition(COMPUTER, &partition).unwrap().timestamp().map(str::to_string);
    assert_ne!(before, after, "a bang bumps the timestamp");
    c.computer_bang(COMPUTER, "reboot").unwrap();
    let (cert, key) = c.certificate(COMPUTER, &partition).unwrap();
    assert_eq!((cert.as_str(), key.as_str()), ("", ""));
    c.use_computer(COMPUTER, "<journal/>").unwrap();
    assert_eq!(c.software_release_list_from_product("no-such-product").unwrap(), Vec::<String>::new());
    let answer = c.rename(COMPUTER, &child_partition, "MyRenamedChild", None).unwrap();
    assert_eq!(answer, "done");
    assert_eq!(c.register_partition(COMPUTER, &child_partition).unwrap().instance_title(), Some("MyRenamedChild"));
    // a route the Python proxy lacks (404) and ours records
    assert!(matches!(c.update_related_instance_list(COMPUTER, &partition, &["MyChild".into()]), Ok(()) | Err(SlapError::NotFound { .. })));

    // a stopped root stops its children when they are re-requested (`slap-protocol.md` §7.1): start it again
    let mut start = req.clone();
    start.state = Some(InstanceState::Started);
    ready(c.request(&start).unwrap());
    // destruction: request destroyed, then the node reports the partition destroyed
    let mut destroy = InstanceRequest::new(SR, "MyRenamedChild");
    destroy.requester = Some((COMPUTER.into(), partition.clone()));
    destroy.state = Some(InstanceState::Destroyed);
    ready(c.request(&destroy).unwrap());
    assert_eq!(c.register_partition(COMPUTER, &child_partition).unwrap().requested_state, Some(InstanceState::Destroyed));
    assert_eq!(c.partition_destroyed(COMPUTER, &child_partition).unwrap(), "OK");
    assert!(c.register_partition(COMPUTER, &child_partition).unwrap().is_free(), "the partition is free again");

    // software release removal
    c.supply(SR, COMPUTER, SoftwareState::Destroyed).unwrap();
    assert_eq!(c.computer_information(COMPUTER).unwrap().software_releases[0].state(), SoftwareState::Destroyed);
    c.software_release_destroyed(SR, COMPUTER).unwrap();
    assert!(c.computer_information(COMPUTER).unwrap().software_releases.is_empty());

    // errors as the Python master gives them
    assert!(matches!(c.register_partition(COMPUTER, "slappart99"), Err(SlapError::Server { status: 500, .. })));
    let mut no_room = InstanceRequest::new(SR, "NoRoom");
    no_room.filter.insert("computer_guid".into(), "NO-SUCH-COMPUTER".into());
    match c.request(&no_room) {
        Err(SlapError::NotFound { message, .. }) => {
            assert!(message.contains("No free computer partition"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}
