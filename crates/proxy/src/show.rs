//! `slapos proxy show`: what the master knows, as tables or JSON, read
//! straight from its database (read-only, safe while the master runs).

use std::collections::BTreeMap;

use serde_json::{json, Value as J};
use slap::instance_xml::xml_to_dict;
use slap::marshal;

use crate::store::{Store, StoreError, Tx};

/// Everything `proxy show` prints, as one JSON document.
pub fn snapshot(store: &impl Store) -> Result<J, StoreError> {
    store.transaction(|tx: &mut dyn Tx| -> Result<J, StoreError> {
        let reports = tx.last_reports()?;
        let report_of = |kind: &str, computer: &str, reference: &str| {
            reports
                .iter()
                .find(|r| r.kind == kind && r.computer_reference == computer && r.reference == reference)
                .map(|r| json!({"state": r.state, "message": r.message, "time": r.time}))
        };
        let computers: Vec<J> =
            tx.computers()?.into_iter().map(|c| json!({"reference": c.reference, "address": c.address, "netmask": c.netmask})).collect();
        let software: Vec<J> = tx
            .software_releases(None)?
            .into_iter()
            .map(|s| {
                json!({
                    "url": s.url, "computer": s.computer_reference, "requested_state": s.requested_state,
                    "reported": report_of("software", &s.computer_reference, &s.url),
                })
            })
            .collect();
        let params = |xml: &Option<String>| -> J {
            let d = xml.as_deref().and_then(|x| xml_to_dict(x).ok()).unwrap_or_default();
            J::Object(d.into_iter().map(|(k, v)| (k, json!(v))).collect())
        };
        let mut partitions = Vec::new();
        for p in tx.partitions(None)? {
            let addresses: Vec<J> = tx
                .addresses(Some(&p.computer_reference), &p.reference)?
                .into_iter()
                .map(|a| json!({"interface": a.interface, "address": a.address, "netmask": a.netmask}))
                .collect();
            let shared: Vec<J> = p
                .slave_instance_list
                .as_deref()
                .and_then(|t| marshal::decode(t).ok())
                .and_then(|v| v.as_seq().map(|items| items.to_vec()))
                .unwrap_or_default()
                .iter()
                .filter_map(|v| v.as_dict().and_then(|d| d.get("slave_reference")).and_then(|r| r.as_str()).map(|s| json!(s)))
                .collect();
            partitions.push(json!({
                "computer": p.computer_reference,
                "partition": p.reference,
                "slap_state": p.slap_state,
                "instance": p.partition_reference,
                "requested_by": p.requested_by,
                "requester": p.requester_id,
                "software_release": p.software_release,
                "software_type": p.software_type,
                "requested_state": p.requested_state,
                "timestamp": p.timestamp,
                "parameters": params(&p.xml),
                "connection_parameters": params(&p.connection_xml),
                "shared_instances": shared,
                "addresses": addresses,
                "reported": report_of("partition", &p.computer_reference, &p.reference),
            }));
        }
        let shared: Vec<J> = tx
            .slaves()?
            .into_iter()
            .map(|s| {
                json!({
                    "reference": s.reference, "computer": s.computer_reference, "hosted_by": s.hosted_by,
                    "requester": s.requester_id, "connection_parameters": params(&s.connection_xml),
                })
            })
            .collect();
        let usage: Vec<J> = tx
            .usages(20)?
            .into_iter()
            .map(|u| json!({"computer": u.computer_reference, "time": u.time, "bytes": u.body.len(), "body": u.body}))
            .collect();
        let forwarded: Vec<J> = tx
            .forwards()?
            .into_iter()
            .map(|f| json!({"reference": f.reference, "master_url": f.master_url, "software_release": f.software_release, "time": f.time}))
            .collect();
        let related: Vec<J> = tx
            .related()?
            .into_iter()
            .map(|r| {
                let instances: Vec<&str> = r.instances.lines().collect();
                json!({"computer": r.computer_reference, "partition": r.partition_reference, "instances": instances, "time": r.time})
            })
            .collect();
        Ok(json!({
            "computers": computers, "software_releases": software, "partitions": partitions,
            "shared_instances": shared, "usage_reports": usage, "forwarded_requests": forwarded,
            "related_instances": related,
        }))
    })
}

fn time_text(t: Option<f64>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t as i64, 0))
        .map(|d| d.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn s(v: &J) -> String {
    match v {
        J::Null => String::new(),
        J::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn reported(v: &J) -> String {
    if v.is_null() {
        return "-".into();
    }
    let mut out = format!("{} at {}", s(&v["state"]), time_text(v["time"].as_f64()));
    if let Some(m) = v["message"].as_str().filter(|m| !m.is_empty()) {
        let last = m.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        let cut: String = last.chars().take(80).collect();
        out.push_str(&format!(": {cut}"));
    }
    out
}

fn table(title: &str, header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(header.to_vec());
    for r in rows {
        t.add_row(r);
    }
    format!("{title}\n{t}\n")
}

/// The sections of `proxy show` (SlapOS's `--computers --software
/// --partitions --slaves --params --network`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sections {
    /// Computers and usage reports.
    pub computers: bool,
    /// Software releases supplied and their build states.
    pub software: bool,
    /// Partitions, forwarded requests and related instances.
    pub partitions: bool,
    /// Shared (slave) instances.
    pub slaves: bool,
    /// Instance and connection parameters.
    pub params: bool,
    /// Addresses of the partitions in use.
    pub network: bool,
}

impl Sections {
    /// Every section.
    pub const ALL: Sections = Sections { computers: true, software: true, partitions: true, slaves: true, params: true, network: true };

    /// These sections, or all of them when none is asked (as SlapOS).
    pub fn or_all(self) -> Sections {
        if self == Sections::default() {
            Sections::ALL
        } else {
            self
        }
    }
}

/// The parts of the snapshot `sections` show (partitions are kept for
/// `params` and `network`, which are read from them).
pub fn filter(snap: J, sections: &Sections) -> J {
    let keep = |k: &str| match k {
        "computers" | "usage_reports" => sections.computers,
        "software_releases" => sections.software,
        "partitions" => sections.partitions || sections.params || sections.network,
        "forwarded_requests" | "related_instances" => sections.partitions,
        "shared_instances" => sections.slaves,
        _ => true,
    };
    match snap {
        J::Object(m) => J::Object(m.into_iter().filter(|(k, _)| keep(k)).collect()),
        other => other,
    }
}

/// The snapshot as tables for people.
pub fn render_tables(snap: &J) -> String {
    render_sections(snap, &Sections::ALL)
}

/// The `sections` of the snapshot as tables for people, in SlapOS's order.
pub fn render_sections(snap: &J, sections: &Sections) -> String {
    let mut out = String::new();
    if sections.computers {
        out.push_str(&computer_tables(snap));
    }
    if sections.software {
        out.push_str(&software_table(snap));
    }
    if sections.partitions {
        out.push_str(&partition_tables(snap));
    }
    if sections.slaves {
        out.push_str(&shared_table(snap));
    }
    if sections.params {
        out.push_str(&params_table(snap));
    }
    if sections.network {
        out.push_str(&network_table(snap));
    }
    out
}

fn arr(snap: &J, k: &str) -> Vec<J> {
    snap[k].as_array().cloned().unwrap_or_default()
}

fn computer_tables(snap: &J) -> String {
    let mut out = table(
        "Computers",
        &["reference", "address", "netmask"],
        arr(snap, "computers").iter().map(|c| vec![s(&c["reference"]), s(&c["address"]), s(&c["netmask"])]).collect(),
    );
    let usage = arr(snap, "usage_reports");
    if !usage.is_empty() {
        out.push_str(&table(
            "Usage reports (latest)",
            &["computer", "time", "bytes"],
            usage.iter().map(|u| vec![s(&u["computer"]), time_text(u["time"].as_f64()), s(&u["bytes"])]).collect(),
        ));
    }
    out
}

fn software_table(snap: &J) -> String {
    table(
        "Software releases",
        &["computer", "url", "requested", "last report"],
        arr(snap, "software_releases")
            .iter()
            .map(|r| vec![s(&r["computer"]), s(&r["url"]), s(&r["requested_state"]), reported(&r["reported"])])
            .collect(),
    )
}

fn partition_tables(snap: &J) -> String {
    let mut out = table(
        "Partitions",
        &["computer", "partition", "instance", "software release", "type", "requested", "timestamp", "last report"],
        arr(snap, "partitions")
            .iter()
            .map(|p| {
                let busy = p["slap_state"] == "busy";
                vec![
                    s(&p["computer"]),
                    s(&p["partition"]),
                    if busy { s(&p["instance"]) } else { "(free)".into() },
                    s(&p["software_release"]),
                    s(&p["software_type"]),
                    if busy { s(&p["requested_state"]) } else { String::new() },
                    time_text(p["timestamp"].as_f64()),
                    reported(&p["reported"]),
                ]
            })
            .collect(),
    );
    let forwarded = arr(snap, "forwarded_requests");
    if !forwarded.is_empty() {
        out.push_str(&table(
            "Forwarded requests",
            &["reference", "master", "software release", "time"],
            forwarded
                .iter()
                .map(|f| vec![s(&f["reference"]), s(&f["master_url"]), s(&f["software_release"]), time_text(f["time"].as_f64())])
                .collect(),
        ));
    }
    let related = arr(snap, "related_instances");
    if !related.is_empty() {
        out.push_str(&table(
            "Related instances (requested in the last run)",
            &["computer", "partition", "instances", "time"],
            related
                .iter()
                .map(|r| {
                    let list: Vec<String> = r["instances"].as_array().map(|a| a.iter().map(s).collect()).unwrap_or_default();
                    vec![s(&r["computer"]), s(&r["partition"]), list.join(", "), time_text(r["time"].as_f64())]
                })
                .collect(),
        ));
    }
    out
}

fn shared_table(snap: &J) -> String {
    let shared = arr(snap, "shared_instances");
    if shared.is_empty() {
        return String::new();
    }
    table(
        "Shared instances",
        &["reference", "computer", "hosted by", "connection parameters"],
        shared.iter().map(|x| vec![s(&x["reference"]), s(&x["computer"]), s(&x["hosted_by"]), s(&x["connection_parameters"])]).collect(),
    )
}

fn params_table(snap: &J) -> String {
    let mut rows = Vec::new();
    for p in arr(snap, "partitions").iter().filter(|p| p["slap_state"] == "busy") {
        for (kind, key) in [("parameter", "parameters"), ("connection", "connection_parameters")] {
            let m: BTreeMap<String, J> = p[key].as_object().map(|m| m.clone().into_iter().collect()).unwrap_or_default();
            for (k, v) in m {
                rows.push(vec![s(&p["instance"]), kind.to_string(), k, s(&v)]);
            }
        }
    }
    table("Instance parameters", &["instance", "kind", "name", "value"], rows)
}

fn network_table(snap: &J) -> String {
    let rows = arr(snap, "partitions")
        .iter()
        .filter(|p| p["slap_state"] == "busy")
        .map(|p| {
            let addresses: Vec<String> = arr(p, "addresses").iter().map(|a| s(&a["address"])).collect();
            vec![s(&p["computer"]), s(&p["partition"]), addresses.join(", ")]
        })
        .collect();
    table("Network", &["computer", "partition", "addresses"], rows)
}
