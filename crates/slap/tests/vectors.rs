//! The 88 real wire exchanges of `testdata/slap-vectors/` (Python client ↔
//! Python proxy, slapos.core 1.26.1) as test vectors: every marshalled form
//! field and body decodes to the captured JSON view, re-encodes byte for byte,
//! and every answer object reads into the typed model.

use std::collections::BTreeMap;

use serde_json::{json, Value as J};
use slap::instance_xml::{dict_to_xml, xml_to_dict};
use slap::marshal::{decode, encode, Value};
use slap::model::{Computer, ComputerPartition, InstanceState, RequestedInstance, SoftwareState};

struct Vector {
    name: String,
    doc: J,
}

fn vectors() -> Vec<Vector> {
    test_support::vectors().into_iter().map(|(name, doc)| Vector { name, doc }).collect()
}

/// The JSON view of the vectors README.
fn view(v: &Value) -> J {
    match v {
        Value::None => J::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(*i as i64),
        Value::Float(f) => json!(f),
        Value::Str(s) => json!(s),
        Value::List(items) => J::Array(items.iter().map(view).collect()),
        Value::Tuple(items) => json!({"$tuple": items.iter().map(view).collect::<Vec<_>>()}),
        Value::Set(items) => json!({"$set": items.iter().map(view).collect::<Vec<_>>()}),
        Value::Dict(d) => J::Object(d.iter().map(|(k, v)| (k.clone(), view(v))).collect()),
        Value::Object(o) => json!({
            "$object": format!("{}.{}", o.module, o.class),
            "$initargs": o.args.iter().map(view).collect::<Vec<_>>(),
            "$state": J::Object(o.state.iter().map(|(k, v)| (k.clone(), view(v))).collect()),
        }),
    }
}

/// JSON objects compare without regard to key order.
fn same(a: &J, b: &J) -> bool {
    match (a, b) {
        (J::Object(x), J::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w))),
        (J::Array(x), J::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w)),
        (J::Number(x), J::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[test]
fn every_marshalled_field_and_body_decodes_and_reencodes_byte_for_byte() {
    let all = vectors();
    assert_eq!(all.len(), 88, "expected the 88 captured exchanges");
    let (mut fields, mut bodies) = (0, 0);
    for v in &all {
        let req = &v.doc["request"];
        if let Some(decoded) = req.get("form_decoded").and_then(J::as_object) {
            for (key, expected) in decoded {
                let raw = req["form"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p[0] == *key)
                    .and_then(|p| p[1].as_str())
                    .unwrap_or_else(|| panic!("{}: form field {key} missing", v.name));
                if expected.get("$decode_error").is_some() {
                    // garbage the Python decoder refused: ours refuses it too, with a position
                    let e = decode(raw).expect_err(&v.name);
                    assert!(e.offset <= raw.len(), "{}: {e}", v.name);
                    continue;
                }
                let value = decode(raw).unwrap_or_else(|e| panic!("{}: field {key}: {e}", v.name));
                assert!(same(&view(&value), expected), "{}: field {key}: {:?} != {expected}", v.name, view(&value));
                assert_eq!(encode(&value).unwrap(), raw, "{}: field {key} re-encoded differently", v.name);
                fields += 1;
            }
        }
        let resp = &v.doc["response"];
        if let Some(expected) = resp.get("body_decoded") {
            let raw = resp["body"].as_str().unwrap();
            let value = decode(raw).unwrap_or_else(|e| panic!("{}: body: {e}", v.name));
            assert!(same(&view(&value), expected), "{}: body view differs", v.name);
            assert_eq!(encode(&value).unwrap(), raw, "{}: body re-encoded differently", v.name);
            bodies += 1;
        }
    }
    assert!(fields >= 80 && bodies >= 35, "too few marshalled documents checked: {fields} fields, {bodies} bodies");
}

fn body_value(v: &Vector) -> Option<Value> {
    let resp = &v.doc["response"];
    if resp["status"] != 200 {
        return None;
    }
    let body = resp["body"].as_str()?;
    body.starts_with("<marshal>").then(|| decode(body).unwrap())
}

#[test]
fn the_typed_model_reads_every_answer_of_the_python_proxy() {
    let mut read = 0;
    for v in vectors() {
        let Some(value) = body_value(&v) else { continue };
        let path = v.doc["request"]["path"].as_str().unwrap();
        match path {
            "/getFullComputerInformation" | "/getComputerInformation" => {
                let c = Computer::from_value(&value).unwrap_or_else(|e| panic!("{}: {e}", v.name));
                assert_eq!(Computer::from_value(&c.to_value()).unwrap(), c, "{}", v.name);
                for p in &c.partitions {
                    assert!(p.requested_state.is_some(), "{}: {} without state", v.name, p.partition_id);
                    assert_eq!(p.computer_id, c.computer_id);
                }
                read += 1;
            }
            "/registerComputerPartition" => {
                let p = ComputerPartition::from_value(&value).unwrap_or_else(|e| panic!("{}: {e}", v.name));
                assert_eq!(encode(&p.to_value()).unwrap(), v.doc["response"]["body"].as_str().unwrap(), "{}", v.name);
                read += 1;
            }
            "/requestComputerPartition" => {
                let i = RequestedInstance::from_value(&value).unwrap_or_else(|e| panic!("{}: {e}", v.name));
                assert!(i.partition_id.is_some(), "{}", v.name);
                read += 1;
            }
            _ => {}
        }
    }
    assert!(read >= 30, "only {read} answers read");
}

fn vector(name_prefix: &str) -> Vector {
    vectors().into_iter().find(|v| v.name.starts_with(name_prefix)).unwrap()
}

#[test]
fn computer_information_facts() {
    // [cap 015]: an allocated partition, a child with json-in-xml parameters, free ones
    let c = Computer::from_value(&body_value(&vector("015")).unwrap()).unwrap();
    assert_eq!(c.computer_id, "COMP-1234");
    let p0 = c.partition("slappart0").unwrap();
    assert_eq!(p0.requested_state, Some(InstanceState::Started));
    assert_eq!(p0.software_release_url(), Some("http://example.com/software/my-software/software.cfg"));
    assert_eq!(p0.instance_title(), Some("MyInstance"));
    assert_eq!(p0.software_type(), Some("default"));
    assert_eq!(p0.timestamp(), Some("1795541544.3356452"));
    assert_eq!(p0.ip_list(), vec![("slaptap0".to_string(), "10.0.0.2".to_string()), ("slaptap0".to_string(), "2001:db8::2".to_string())]);
    let slaves = p0.slave_instance_list();
    assert_eq!(slaves.len(), 1);
    assert_eq!(slaves[0]["slave_reference"], Value::str("_MyShared"));
    assert_eq!(p0.instance_parameters().keys().collect::<Vec<_>>(), ["count", "foo"]);
    assert!(!p0.is_free());
    assert!(c.partitions.iter().any(|p| p.is_free()));
    // [cap 006, 086]: software release list with requested states
    let c = Computer::from_value(&body_value(&vector("006")).unwrap()).unwrap();
    assert_eq!(c.software_releases[0].state(), SoftwareState::Available);
    let c = Computer::from_value(&body_value(&vector("086")).unwrap()).unwrap();
    assert!(c.software_releases.iter().any(|s| s.state() == SoftwareState::Destroyed));
    // [cap 002]: the configured computer before any format: empty lists
    let c = Computer::from_value(&body_value(&vector("002")).unwrap()).unwrap();
    assert!(c.partitions.is_empty() && c.software_releases.is_empty());
}

#[test]
fn request_answers() {
    // normal [cap 011], shared [cap 013], forward [cap 062], frontend bypass [cap 059]
    let i = RequestedInstance::from_value(&body_value(&vector("011")).unwrap()).unwrap();
    assert_eq!(i.partition_id.as_deref(), Some("slappart0"));
    assert_eq!(i.instance_guid.as_deref(), Some("COMP-1234-slappart0"));
    assert_eq!(i.requested_state, Some(InstanceState::Started));
    assert_eq!(i.instance_parameters()["count"], Value::str("3"));
    assert!(i.timestamp().is_some());
    let s = RequestedInstance::from_value(&body_value(&vector("013")).unwrap()).unwrap();
    assert_eq!(s.instance_guid, None, "shared answers have no guid");
    assert_eq!(s.partition_id.as_deref(), Some("slappart0"));
    let f = RequestedInstance::from_value(&body_value(&vector("062")).unwrap()).unwrap();
    assert_eq!(f.computer_id.as_deref(), Some("COMP-EXT"));
    assert_eq!(f.software_release_url.as_deref(), Some("http://example.com/software/forwarded/software.cfg"));
    let b = RequestedInstance::from_value(&body_value(&vector("059")).unwrap()).unwrap();
    assert_eq!(b.connection_parameters()["secure_access"].as_deref(), Some("http://[2001:db8::2]:8080/app?x=1"));
    // [cap 022]: connection parameters published by the partition, double-escaped on the wire
    let c = RequestedInstance::from_value(&body_value(&vector("022")).unwrap()).unwrap();
    assert_eq!(c.connection_parameters()["password"].as_deref(), Some("s3cr&t"));
}

#[test]
fn instance_xml_in_the_captures_round_trips() {
    let mut seen = 0;
    for v in vectors() {
        let Some(value) = body_value(&v) else { continue };
        let Some(obj) = value.as_object() else { continue };
        let Some(Value::Str(xml)) = obj.state.get("connection_xml") else { continue };
        let dict = xml_to_dict(xml).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let back: BTreeMap<String, Value> = dict.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect();
        // None values were empty strings: write them back as such
        let back: BTreeMap<String, Value> = back.into_iter().map(|(k, v)| (k, if v.is_none() { Value::str("") } else { v })).collect();
        assert_eq!(&dict_to_xml(&back), xml, "{}", v.name);
        seen += 1;
    }
    assert!(seen >= 3, "only {seen} connection_xml documents seen");
}
