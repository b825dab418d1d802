//! `slapos node report` (`node.md` §7): usage of each partition sent to the
//! master, and destruction of the partitions the master says to destroy.
//!
//! Beyond slapgrid (whose usage report is empty unless a profile writes
//! one): the CPU time and memory of each partition's processes, read from
//! /proc for the processes its user runs (the partition user owns exactly
//! its services), are sent as a consumption journal.

use std::path::Path;

use slap::model::{ComputerPartition, InstanceState};

use crate::fsafe::{self, Dir, Kind};
use crate::instance::{select_partitions, Owner};
use crate::node::{self, Node};
use crate::process::{run_as_owner, run_as_owner_of};

pub use crate::procstat::{usage_of_uid, Usage};

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The consumption journal slapgrid sends with `useComputer` (one
/// "Sale Packing List" transaction, one movement per resource and
/// partition).
pub fn usage_journal(computer_id: &str, stop_date: &str, usages: &[(String, Usage)], extra_movements: &[String]) -> String {
    let mut movements = String::new();
    for m in extra_movements {
        movements.push_str("    ");
        movements.push_str(m.trim());
        movements.push('\n');
    }
    for (partition, u) in usages {
        for (resource, quantity) in [("CPU Consumption", u.cpu_seconds), ("Memory Consumption", u.memory_mib)] {
            movements.push_str(&format!(
                "    <movement>\n      <resource>{resource}</resource>\n      <title>{resource}</title>\n      <reference>{}</reference>\n      <quantity>{quantity:.3}</quantity>\n      <price>0.00</price>\n      <VAT>None</VAT>\n      <category>None</category>\n    </movement>\n",
                xml_escape(partition)
            ));
        }
    }
    format!(
        "<?xml version='1.0' encoding='utf-8'?>\n<journal>\n  <transaction type=\"Sale Packing List\">\n    <title>Resource consumptions</title>\n    <start_date></start_date>\n    <stop_date>{stop_date}</stop_date>\n    <reference>{}</reference>\n    <currency></currency>\n    <payment_mode></payment_mode>\n    <category></category>\n    <arrow type=\"Administration\">\n      <source></source>\n      <destination></destination>\n    </arrow>\n{movements}  </transaction>\n</journal>\n",
        xml_escape(computer_id)
    )
}

/// The `<movement>` elements of a partition's consumption report, each with
/// its `<reference>` replaced by the partition id; None when the document
/// is not well-formed XML or holds no movement.
pub fn partition_movements(xml: &str, partition_id: &str) -> Option<Vec<String>> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth_ok = false;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(quick_xml::events::Event::Start(_)) => depth_ok = true,
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    if !depth_ok {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<movement") {
        let after = &rest[start..];
        let end = after.find("</movement>")? + "</movement>".len();
        let m = &after[..end];
        let m = match (m.find("<reference>"), m.find("</reference>")) {
            (Some(a), Some(b)) if a < b => {
                format!("{}<reference>{}</reference>{}", &m[..a], xml_escape(partition_id), &m[b + "</reference>".len()..])
            }
            _ => m.to_string(),
        };
        out.push(m);
        rest = &after[end..];
    }
    (!out.is_empty()).then_some(out)
}

/// Runs the partition's `etc/report/*` scripts (as its user, each given a
/// fresh file name under `var/xml_report/`), then collects the reports of
/// the partition (its `var/xml_report/` and `instance_root/var/xml_report/<id>/`).
/// Valid reports are consumed (deleted); invalid ones stay, with a warning.
fn partition_reports(node: &Node, p: &ComputerPartition) -> Vec<String> {
    let cfg = &node.cfg;
    let id = p.partition_id.as_str();
    let Ok(pid) = crate::names::PartitionId::parse(id) else { return Vec::new() };
    let pp = pid.dir(&cfg.instance_root);
    let report_dir = pp.join("etc/report");
    let xml_dir = pp.join("var/xml_report");
    let Ok(pd) = Dir::open_nofollow(&pp) else { return Vec::new() };
    if let Ok(es) = pd.entries(Path::new("etc/report")) {
        // the scripts run as the partition's user: links are theirs to follow
        let scripts: Vec<_> =
            es.into_iter().filter(|(_, k)| matches!(k, Kind::File | Kind::Symlink)).map(|(n, _)| report_dir.join(n)).collect();
        if !scripts.is_empty() {
            if let Ok(owner) = Owner::of(&pp) {
                let to = nix::unistd::geteuid().is_root().then_some((owner.uid, owner.gid));
                let _ = pd.create_dir_all(Path::new("var/xml_report"), 0o755, to);
                crate::instance::chown_tree(&pp, "var", owner.uid, owner.gid);
            }
        }
        for (i, script) in scripts.iter().enumerate() {
            if let Err(e) = crate::names::ScriptName::parse(script.file_name().unwrap_or_default()) {
                let msg = format!("Script refused: {}", e.in_dir("etc/report"));
                tracing::error!("{msg}");
                let _ = node.client.partition_error(&cfg.computer_id, id, &msg, None);
                continue;
            }
            let target = xml_dir.join(format!("{}-{}-{i}.xml", chrono::Utc::now().format("%Y%m%d%H%M%S"), std::process::id()));
            let (program, args) = (script.display().to_string(), [target.display().to_string()]);
            let timeout = Some(std::time::Duration::from_secs(600));
            let ok = run_as_owner_of(&pp, &program, &args, &report_dir, &[], timeout, |l| tracing::info!("[{id}] {l}"))
                .map(|o| o.success)
                .unwrap_or(false);
            if !ok {
                let name = script.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let _ = node.client.partition_error(&cfg.computer_id, id, &format!("Script '{name}' failed."), None);
            }
        }
    }
    let mut movements = Vec::new();
    let dirs = [pd.open_dir(Path::new("var/xml_report")), Dir::open_below(&cfg.instance_root, &Path::new("var/xml_report").join(id))];
    for dir in dirs.into_iter().flatten() {
        let Ok(es) = dir.entries(Path::new(".")) else { continue };
        for (name, _) in es {
            let name = Path::new(&name);
            match dir.read_to_string(name, fsafe::LARGE).ok().and_then(|t| partition_movements(&t, id)) {
                Some(m) => {
                    movements.extend(m);
                    let _ = dir.remove_file(name);
                }
                None => tracing::warn!("{} is not a valid consumption report: left in place", dir.path().join(name).display()),
            }
        }
    }
    movements
}

/// Empties a partition directory completely (dotfiles too), keeping the
/// directory itself, its owner and its mode; never crosses a link (see
/// [`Dir::empty`]).
pub fn empty_partition(pp: &Path) -> std::io::Result<()> {
    let pd = Dir::open_nofollow(pp)?;
    let mode = pd.own_metadata()?.mode;
    pd.empty()?;
    pd.set_own_mode(mode)
}

/// Retention (`node.md` §7.7): with a delay in days, the first attempt sets the lock
/// date and refuses; later attempts refuse until that date.
pub fn retention_allows(pp: &Path, now: f64) -> Result<bool, std::io::Error> {
    let pd = Dir::open_nofollow(pp)?;
    let read = |f: &str| pd.read_to_string(Path::new(f), fsafe::SMALL).ok().and_then(|t| t.trim().parse::<f64>().ok());
    let delay = read(".slapos-retention-lock-delay").unwrap_or(0.0);
    if delay <= 0.0 {
        return Ok(true);
    }
    match read(".slapos-retention-lock-date") {
        Some(date) => Ok(now >= date),
        None => {
            pd.write(Path::new(".slapos-retention-lock-date"), format!("{}", now + delay * 86400.0).as_bytes(), 0o644, None)?;
            Ok(false)
        }
    }
}

fn destroy_partition(node: &Node, p: &ComputerPartition) -> Result<(), String> {
    let cfg = &node.cfg;
    let id = p.partition_id.as_str();
    // (select_partitions already refused invalid ids: this is the proof, again, before destruction)
    let pp = crate::names::PartitionId::parse(id).map_err(|e| e.to_string())?.dir(&cfg.instance_root);
    tracing::info!("Destroying Computer Partition {id}...");
    node.supervisor.stop_partition(id).map_err(|e| e.to_string())?;
    if let Err(e) = node.client.partition_stopped(&cfg.computer_id, id) {
        tracing::debug!("stoppedComputerPartition for {id}: {e}");
    }
    let now = chrono::Utc::now().timestamp() as f64;
    if !retention_allows(&pp, now).map_err(|e| e.to_string())? {
        tracing::info!("Computer Partition {id} is kept until its retention delay expires.");
        return Ok(());
    }
    let destroy = pp.join("sbin/destroy");
    // run as the partition's user: a link is theirs to follow
    let has_destroy = Dir::open_nofollow(&pp)
        .and_then(|pd| pd.metadata(Path::new("sbin/destroy")))
        .is_ok_and(|m| matches!(m.kind, Kind::File | Kind::Symlink));
    if has_destroy {
        let out = run_as_owner(&destroy.display().to_string(), &[], &pp, &[], Some(std::time::Duration::from_secs(3600)), |l| {
            tracing::info!("[{id}] {l}")
        })
        .map_err(|e| e.to_string())?;
        if !out.success {
            return Err(format!("Destroy script {} failed:\n{}", destroy.display(), out.output));
        }
    }
    if let Some(repo) = cfg.certificate_repository_path.as_deref().and_then(|r| Dir::open(r).ok()) {
        for ext in ["crt", "key"] {
            let _ = repo.remove_file(Path::new(&format!("{id}.{ext}")));
        }
    }
    empty_partition(&pp).map_err(|e| format!("cannot empty {}: {e}", pp.display()))?;
    match node.client.partition_destroyed(&cfg.computer_id, id) {
        Ok(_) => {}
        Err(e) if e.is_not_found() || e.status() == Some(500) => tracing::debug!("destroyedComputerPartition for {id}: {e}"),
        Err(e) => return Err(e.to_string()),
    }
    tracing::info!("Destroyed Computer Partition {id}.");
    Ok(())
}

/// `slapos node report`: returns the exit code.
pub fn run(node: &Node) -> u8 {
    let cfg = &node.cfg;
    if let Err(e) = node.supervisor.ensure_running() {
        tracing::error!("{e}");
        return node::FAIL;
    }
    let computer = match node.computer() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return node::FAIL;
        }
    };
    let partitions = match select_partitions(node, &computer.partitions, &[], false) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}");
            return node::FAIL;
        }
    };
    // usage of the partitions that run something
    let mut usages = Vec::new();
    for p in &partitions {
        if p.requested_state == Some(InstanceState::Destroyed) {
            continue;
        }
        let pp = cfg.instance_root.join(&p.partition_id);
        let Ok(owner) = Owner::of(&pp) else { continue };
        if owner.uid == 0 || owner.uid == nix::unistd::getuid().as_raw() {
            // local mode: every partition is ours, usage cannot be told apart
            continue;
        }
        let u = usage_of_uid(owner.uid);
        if u.processes > 0 {
            tracing::info!("{}: {} processes, {:.2} s CPU, {:.1} MiB resident", p.partition_id, u.processes, u.cpu_seconds, u.memory_mib);
            usages.push((p.partition_id.clone(), u));
        }
    }
    // what the partitions report themselves
    let mut movements = Vec::new();
    for p in &partitions {
        movements.extend(partition_reports(node, p));
    }
    // computer reports, sent as they are
    if let Ok(dir) = Dir::open_below(&cfg.instance_root, &Path::new("var/xml_report").join(&cfg.computer_id)) {
        for (name, _) in dir.entries(Path::new(".")).unwrap_or_default() {
            let name = Path::new(&name);
            let Ok(text) = dir.read_to_string(name, fsafe::LARGE) else { continue };
            match node.client.use_computer(&cfg.computer_id, &text) {
                Ok(()) => {
                    let _ = dir.remove_file(name);
                }
                Err(err) => tracing::warn!("could not send {}: {err}", dir.path().join(name).display()),
            }
        }
    }
    if !usages.is_empty() || !movements.is_empty() {
        let stop = chrono::Local::now().format("%Y-%m-%d at %H:%M:%S").to_string();
        let journal = usage_journal(&cfg.computer_id, &stop, &usages, &movements);
        if let Err(e) = node.client.use_computer(&cfg.computer_id, &journal) {
            tracing::warn!("could not send the usage report: {e}");
        }
    }
    let mut failed = false;
    for p in partitions.iter().filter(|p| p.requested_state == Some(InstanceState::Destroyed)) {
        if let Err(e) = destroy_partition(node, p) {
            tracing::error!("Computer Partition {} not destroyed: {e}", p.partition_id);
            let _ = node.client.partition_error(&cfg.computer_id, &p.partition_id, &e, None);
            failed = true;
        }
    }
    tracing::info!("Finished usage reports.");
    if failed {
        node::FAIL
    } else {
        node::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_journal_has_one_movement_per_resource_and_partition() {
        let j = usage_journal(
            "COMP-1",
            "2026-11-25 at 10:00:00",
            &[("slappart0".into(), Usage { cpu_seconds: 1.5, memory_mib: 20.25, processes: 2 })],
            &[],
        );
        assert!(j.contains("<reference>COMP-1</reference>"));
        assert!(j.contains("<stop_date>2026-11-25 at 10:00:00</stop_date>"));
        assert_eq!(j.matches("<movement>").count(), 2);
        assert!(j.contains("<resource>CPU Consumption</resource>") && j.contains("<quantity>1.500</quantity>"));
        assert!(j.contains("<reference>slappart0</reference>") && j.contains("<quantity>20.250</quantity>"));
    }

    #[test]
    fn partition_reports_give_their_movements_with_the_partition_reference() {
        let xml = "<?xml version='1.0'?><journal><transaction><movement><resource>CPU</resource><reference>whatever</reference><quantity>2</quantity></movement><movement><resource>RAM</resource></movement></transaction></journal>";
        let m = partition_movements(xml, "slappart3").unwrap();
        assert_eq!(m.len(), 2);
        assert!(m[0].contains("<reference>slappart3</reference>") && !m[0].contains("whatever"));
        assert_eq!(m[1], "<movement><resource>RAM</resource></movement>");
        assert_eq!(partition_movements("<journal><movement>", "p"), None);
        assert_eq!(partition_movements("<journal/>", "p"), None);
        let j = usage_journal("C", "d", &[], &m);
        assert_eq!(j.matches("<movement>").count(), 2);
    }

    #[test]
    fn emptying_keeps_the_directory_and_retention_delays() {
        let d = tempfile::tempdir().unwrap();
        let pp = d.path().join("slappart0");
        std::fs::create_dir_all(pp.join(".slapgrid/log")).unwrap();
        std::fs::write(pp.join(".timestamp"), "1").unwrap();
        std::os::unix::fs::symlink("/nonexistent", pp.join("software_release")).unwrap();
        std::fs::set_permissions(&pp, std::fs::Permissions::from_mode(0o750)).unwrap();
        empty_partition(&pp).unwrap();
        assert!(pp.is_dir() && std::fs::read_dir(&pp).unwrap().next().is_none());
        assert!(retention_allows(&pp, 1000.0).unwrap());
        std::fs::write(pp.join(".slapos-retention-lock-delay"), "1.0").unwrap();
        assert!(!retention_allows(&pp, 1000.0).unwrap(), "first attempt sets the date");
        assert!(!retention_allows(&pp, 1000.0 + 3600.0).unwrap());
        assert!(retention_allows(&pp, 1000.0 + 86400.0).unwrap());
    }
}
