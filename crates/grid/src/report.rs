//! `slapos node report` (`node.md` §7): usage of each partition sent to the
//! master, and destruction of the partitions the master says to destroy.
//!
//! Beyond slapgrid (whose usage report is empty unless a profile writes
//! one): the CPU time and memory of each partition's processes, read from
//! /proc for the processes its user runs (the partition user owns exactly
//! its services), are sent as a consumption journal. The CPU time sent is
//! what was used since the previous report (the totals last sent are kept in
//! [`CPU_STATE`], root's, beside the partitions), so a master adding reports
//! up over an hour or a month counts each CPU second once.

use std::collections::BTreeMap;
use std::path::Path;

use slap::model::{ComputerPartition, InstanceState};

use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};

use crate::fsafe::{self, Dir, Kind};
use crate::node::{Node, NodeError};
use crate::partition::{chown_tree, output, select_partitions, Owner};
use crate::process::{run_as_owner, run_as_owner_of};

pub use crate::procstat::{usage_of_uid, Usage};

/// One `<movement>` of a partition's consumption report, as XML events
/// (whitespace between elements dropped), its `<reference>` already the
/// partition's id.
#[derive(Debug, Clone, PartialEq)]
pub struct Movement(Vec<Event<'static>>);

impl Movement {
    /// The movement as compact XML.
    pub fn to_xml(&self) -> String {
        let mut w = Writer::new(Vec::new());
        for e in &self.0 {
            // (writing to memory cannot fail)
            let _ = w.write_event(e.borrow());
        }
        String::from_utf8_lossy(&w.into_inner()).into_owned()
    }
}

/// Writes `<name>text</name>` (text escaped).
fn element(w: &mut Writer<Vec<u8>>, name: &str, text: &str) -> std::io::Result<()> {
    w.create_element(name).write_text_content(BytesText::new(text))?;
    Ok(())
}

/// Writes the `<movement>` of one resource of one partition.
fn usage_movement(w: &mut Writer<Vec<u8>>, partition: &str, resource: &str, quantity: f64) -> std::io::Result<()> {
    w.write_event(Event::Start(BytesStart::new("movement")))?;
    for (name, text) in [
        ("resource", resource),
        ("title", resource),
        ("reference", partition),
        ("quantity", &format!("{quantity:.3}")),
        ("price", "0.00"),
        ("VAT", "None"),
        ("category", "None"),
    ] {
        element(w, name, text)?;
    }
    w.write_event(Event::End(BytesEnd::new("movement")))
}

/// The journal document, written through `w`.
fn write_journal(
    w: &mut Writer<Vec<u8>>,
    computer_id: &str,
    stop_date: &str,
    usages: &[(String, Usage)],
    extra: &[Movement],
) -> std::io::Result<()> {
    w.write_event(Event::Start(BytesStart::new("journal")))?;
    w.write_event(Event::Start(BytesStart::new("transaction").with_attributes([("type", "Sale Packing List")])))?;
    for (name, text) in [("title", "Resource consumptions"), ("start_date", ""), ("stop_date", stop_date), ("reference", computer_id)] {
        element(w, name, text)?;
    }
    for name in ["currency", "payment_mode", "category"] {
        element(w, name, "")?;
    }
    w.create_element("arrow").with_attribute(("type", "Administration")).write_inner_content(|w| {
        element(w, "source", "")?;
        element(w, "destination", "")
    })?;
    for event in extra.iter().flat_map(|m| &m.0) {
        w.write_event(event.borrow())?;
    }
    for (partition, u) in usages {
        usage_movement(w, partition, "CPU Consumption", u.cpu_seconds)?;
        usage_movement(w, partition, "Memory Consumption", u.memory_mib)?;
    }
    w.write_event(Event::End(BytesEnd::new("transaction")))?;
    w.write_event(Event::End(BytesEnd::new("journal")))
}

/// The consumption journal slapgrid sends with `useComputer` (one
/// "Sale Packing List" transaction, one movement per resource and
/// partition, after the movements the partitions reported themselves).
pub fn usage_journal(computer_id: &str, stop_date: &str, usages: &[(String, Usage)], extra_movements: &[Movement]) -> String {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    // (writing to memory cannot fail)
    let _ = write_journal(&mut w, computer_id, stop_date, usages, extra_movements);
    format!("<?xml version='1.0' encoding='utf-8'?>\n{}\n", String::from_utf8_lossy(&w.into_inner()))
}

/// The `<movement>` elements of a partition's consumption report, each with
/// the content of its first `<reference>` replaced by the partition id;
/// None when the document is not well-formed XML or holds no movement.
pub fn partition_movements(xml: &str, partition_id: &str) -> Option<Vec<Movement>> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    reader.config_mut().check_end_names = true;
    let mut out = Vec::new();
    let mut current: Option<MovementParse> = None;
    let mut depth = 0usize;
    loop {
        let event = reader.read_event().ok()?.into_owned();
        match &event {
            Event::Eof if depth == 0 => break,
            Event::Eof => return None,
            Event::Start(_) => depth += 1,
            Event::End(_) => depth = depth.checked_sub(1)?,
            _ => {}
        }
        match current.as_mut() {
            Some(m) => {
                if m.push(event, partition_id) {
                    out.extend(current.take().map(|m| Movement(m.events)));
                }
            }
            None => match event {
                Event::Start(ref s) if s.name().as_ref() == b"movement" => current = Some(MovementParse::new(event)),
                Event::Empty(ref s) if s.name().as_ref() == b"movement" => out.push(Movement(vec![event])),
                _ => {}
            },
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A `<movement>` being read.
struct MovementParse {
    events: Vec<Event<'static>>,
    /// Elements open inside the movement.
    depth: usize,
    /// The first `<reference>` was seen.
    referenced: bool,
    /// Inside that `<reference>` (the depth it opened at): its content is
    /// dropped.
    in_reference: Option<usize>,
}

impl MovementParse {
    fn new(start: Event<'static>) -> MovementParse {
        MovementParse { events: vec![start], depth: 0, referenced: false, in_reference: None }
    }

    /// Takes the next event; true when it closed the movement.
    fn push(&mut self, event: Event<'static>, partition_id: &str) -> bool {
        let is_reference = |s: &BytesStart| s.name().as_ref() == b"reference";
        match &event {
            Event::Start(s) if !self.referenced && is_reference(s) => {
                self.referenced = true;
                self.in_reference = Some(self.depth);
                self.depth += 1;
                self.events.push(event);
                self.events.push(Event::Text(BytesText::new(partition_id).into_owned()));
                return false;
            }
            Event::Empty(s) if !self.referenced && is_reference(s) => {
                self.referenced = true;
                self.events.push(Event::Start(BytesStart::new("reference")));
                self.events.push(Event::Text(BytesText::new(partition_id).into_owned()));
                self.events.push(Event::End(BytesEnd::new("reference")));
                return false;
            }
            Event::Start(_) => self.depth += 1,
            Event::End(_) if self.depth == 0 => {
                self.events.push(event);
                return true;
            }
            Event::End(_) => {
                self.depth -= 1;
                if self.in_reference == Some(self.depth) {
                    self.in_reference = None;
                    self.events.push(event);
                    return false;
                }
            }
            _ => {}
        }
        if self.in_reference.is_none() {
            self.events.push(event);
        }
        false
    }
}

/// Runs the partition's `etc/report/*` scripts (as its user, each given a
/// fresh file name under `var/xml_report/`), then collects the reports of
/// the partition (its `var/xml_report/` and `instance_root/var/xml_report/<id>/`).
/// Valid reports are consumed (deleted); invalid ones stay, with a warning.
fn partition_reports(node: &Node, p: &ComputerPartition) -> Vec<Movement> {
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
                chown_tree(&pp, "var", owner.uid, owner.gid);
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
            let ok =
                run_as_owner_of(&pp, &program, &args, &report_dir, &[], timeout, |l| output(id, l)).map(|o| o.success).unwrap_or(false);
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

/// Why a partition was not destroyed (reported to the master).
#[derive(Debug, thiserror::Error)]
pub enum DestroyError {
    /// The partition id is invalid.
    #[error(transparent)]
    Name(#[from] crate::names::NameError),
    /// supervisord could not stop its programs.
    #[error(transparent)]
    Supervisor(#[from] crate::supervisor::SupervisorError),
    /// A file of the partition (the retention lock, the destroy script).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// `sbin/destroy` failed (its output).
    #[error("Destroy script {} failed:\n{output}", .script.display())]
    Script {
        /// The script.
        script: std::path::PathBuf,
        /// What it said.
        output: String,
    },
    /// A pre-delete script (`prerm` manager) still ran at its deadline.
    #[error(transparent)]
    Prerm(#[from] crate::manager::prerm::PrermError),
    /// The partition directory cannot be emptied.
    #[error("cannot empty {}: {source}", .path.display())]
    Empty {
        /// The partition directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The master refused `destroyedComputerPartition`.
    #[error(transparent)]
    Master(#[from] slap::client::SlapError),
}

/// Destroys one partition (`node.md` §7.7): stop, retention, `sbin/destroy`
/// as its user, its certificate, its files, then the report.
fn destroy_partition(node: &Node, p: &ComputerPartition) -> Result<(), DestroyError> {
    let cfg = &node.cfg;
    let id = p.partition_id.as_str();
    // (select_partitions already refused invalid ids: this is the proof, again, before destruction)
    let pp = crate::names::PartitionId::parse(id)?.dir(&cfg.instance_root);
    tracing::info!("Destroying Computer Partition {id}...");
    node.supervisor.stop_partition(id)?;
    if let Err(e) = node.client.partition_stopped(&cfg.computer_id, id) {
        tracing::debug!("stoppedComputerPartition for {id}: {e}");
    }
    let now = chrono::Utc::now().timestamp() as f64;
    if !retention_allows(&pp, now)? {
        tracing::info!("Computer Partition {id} is kept until its retention delay expires.");
        return Ok(());
    }
    if cfg.managers.prerm {
        let plan = crate::manager::prerm::plan(&Dir::open_nofollow(&pp)?);
        let deadline = cfg.partition_timeout.unwrap_or(std::time::Duration::from_secs(3600));
        crate::manager::prerm::apply(&plan, &pp, id, deadline)?;
    }
    let destroy = pp.join("sbin/destroy");
    // run as the partition's user: a link is theirs to follow
    let has_destroy = Dir::open_nofollow(&pp)
        .and_then(|pd| pd.metadata(Path::new("sbin/destroy")))
        .is_ok_and(|m| matches!(m.kind, Kind::File | Kind::Symlink));
    if has_destroy {
        let hour = Some(std::time::Duration::from_secs(3600));
        let out = run_as_owner(&destroy.display().to_string(), &[], &pp, &[], hour, |l| output(id, l))?;
        if !out.success {
            return Err(DestroyError::Script { script: destroy, output: out.output });
        }
    }
    if let Some(repo) = cfg.certificate_repository_path.as_deref().and_then(|r| Dir::open(r).ok()) {
        for ext in ["crt", "key"] {
            let _ = repo.remove_file(Path::new(&format!("{id}.{ext}")));
        }
    }
    empty_partition(&pp).map_err(|source| DestroyError::Empty { path: pp.clone(), source })?;
    match node.client.partition_destroyed(&cfg.computer_id, id) {
        Ok(_) => {}
        Err(e) if e.is_not_found() || e.status() == Some(500) => tracing::debug!("destroyedComputerPartition for {id}: {e}"),
        Err(e) => return Err(e.into()),
    }
    tracing::info!("Destroyed Computer Partition {id}.");
    Ok(())
}

/// How a `node report` run went.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReportSummary {
    /// Partitions whose usage was measured.
    pub measured: Vec<String>,
    /// Partitions destroyed (or kept for their retention delay).
    pub destroyed: Vec<String>,
    /// Partitions that could not be destroyed, with why (reported).
    pub not_destroyed: Vec<(String, String)>,
}

impl ReportSummary {
    /// Every partition to destroy was (slapgrid's exit code 0, else 1).
    pub fn is_clean(&self) -> bool {
        self.not_destroyed.is_empty()
    }
}

/// The usage of the partitions that run something, as their users' processes.
fn usages(cfg: &crate::config::NodeConfig, partitions: &[&ComputerPartition]) -> Vec<(String, Usage)> {
    let mut usages = Vec::new();
    for p in partitions.iter().filter(|p| p.requested_state != Some(InstanceState::Destroyed)) {
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
    usages
}

/// The file, in the instance root, where `node report` keeps each
/// partition's CPU total as last reported.
pub const CPU_STATE: &str = ".slapgrid-report-cpu.json";

/// Turns each partition's CPU total into the CPU used since the previous
/// report (`last`: the totals then) and returns the totals to keep. A total
/// lower than the last one means the processes were restarted: it counts
/// from zero. A partition not measured now is forgotten.
pub fn cpu_since_last_report(last: &BTreeMap<String, f64>, usages: &mut [(String, Usage)]) -> BTreeMap<String, f64> {
    let mut totals = BTreeMap::new();
    for (id, u) in usages.iter_mut() {
        totals.insert(id.clone(), u.cpu_seconds);
        if let Some(&before) = last.get(id.as_str()).filter(|&&before| before <= u.cpu_seconds) {
            u.cpu_seconds -= before;
        }
    }
    totals
}

/// The totals last reported (empty when missing or unreadable).
fn read_cpu_state(cfg: &crate::config::NodeConfig) -> BTreeMap<String, f64> {
    let Ok(root) = Dir::open(&cfg.instance_root) else { return BTreeMap::new() };
    root.read(Path::new(CPU_STATE), fsafe::SMALL).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Keeps the totals just reported (root's, 0600).
fn write_cpu_state(cfg: &crate::config::NodeConfig, totals: &BTreeMap<String, f64>) {
    let written = Dir::open(&cfg.instance_root).and_then(|root| {
        let text = serde_json::to_vec(totals).unwrap_or_default();
        root.write(Path::new(CPU_STATE), &text, 0o600, None)
    });
    if let Err(e) = written {
        tracing::warn!("could not keep the CPU totals in {}: {e}", cfg.instance_root.join(CPU_STATE).display());
    }
}

/// The computer's own reports (`instance_root/var/xml_report/<computer>`),
/// sent as they are and deleted once sent.
fn send_computer_reports(node: &Node) {
    let cfg = &node.cfg;
    let Ok(dir) = Dir::open_below(&cfg.instance_root, &Path::new("var/xml_report").join(&cfg.computer_id)) else { return };
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

/// `slapos node report`: usage and reports sent, then the partitions the
/// master says to destroy destroyed.
pub fn run(node: &Node) -> Result<ReportSummary, NodeError> {
    let cfg = &node.cfg;
    node.supervisor.ensure_running()?;
    let computer = node.computer()?;
    let partitions = select_partitions(node, &computer.partitions, &[], false)?;
    let mut usages = usages(cfg, &partitions);
    let totals = cpu_since_last_report(&read_cpu_state(cfg), &mut usages);
    // what the partitions report themselves
    let movements: Vec<Movement> = partitions.iter().flat_map(|p| partition_reports(node, p)).collect();
    send_computer_reports(node);
    if !usages.is_empty() || !movements.is_empty() {
        let stop = chrono::Local::now().format("%Y-%m-%d at %H:%M:%S").to_string();
        let journal = usage_journal(&cfg.computer_id, &stop, &usages, &movements);
        match node.client.use_computer(&cfg.computer_id, &journal) {
            Ok(()) => write_cpu_state(cfg, &totals),
            Err(e) => tracing::warn!("could not send the usage report: {e}"),
        }
    }
    let mut summary = ReportSummary { measured: usages.into_iter().map(|(id, _)| id).collect(), ..Default::default() };
    for p in partitions.iter().filter(|p| p.requested_state == Some(InstanceState::Destroyed)) {
        match destroy_partition(node, p) {
            Ok(()) => summary.destroyed.push(p.partition_id.clone()),
            Err(e) => {
                let e = e.to_string();
                tracing::error!("Computer Partition {} not destroyed: {e}", p.partition_id);
                let _ = node.client.partition_error(&cfg.computer_id, &p.partition_id, &e, None);
                summary.not_destroyed.push((p.partition_id.clone(), e));
            }
        }
    }
    tracing::info!("Finished usage reports.");
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn cpu_is_reported_since_the_last_report_and_a_restart_counts_from_zero() {
        let u = |cpu| Usage { cpu_seconds: cpu, memory_mib: 1.0, processes: 1 };
        let mut now = vec![("slappart0".to_string(), u(10.0)), ("slappart1".to_string(), u(3.0)), ("slappart2".to_string(), u(4.0))];
        let last = BTreeMap::from([("slappart0".to_string(), 7.5), ("slappart1".to_string(), 5.0), ("slappart9".to_string(), 1.0)]);
        let totals = cpu_since_last_report(&last, &mut now);
        let sent: Vec<f64> = now.iter().map(|(_, u)| u.cpu_seconds).collect();
        // 10 - 7.5 used since; 3 < 5: restarted, all 3 are new; slappart2 never reported
        assert_eq!(sent, [2.5, 3.0, 4.0]);
        assert_eq!(totals, BTreeMap::from([("slappart0".into(), 10.0), ("slappart1".into(), 3.0), ("slappart2".into(), 4.0)]));
    }

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
        assert!(m[0].to_xml().contains("<reference>slappart3</reference>") && !m[0].to_xml().contains("whatever"));
        assert_eq!(m[1].to_xml(), "<movement><resource>RAM</resource></movement>");
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

    #[test]
    fn names_are_escaped_and_the_journal_reads_back() {
        let report = "<j><movement><resource>R&amp;D</resource><x><reference>old<b/></reference></x></movement></j>";
        let m = partition_movements(report, "a&<b").unwrap();
        assert_eq!(m[0].to_xml(), "<movement><resource>R&amp;D</resource><x><reference>a&amp;&lt;b</reference></x></movement>");
        let j = usage_journal("C&D", "d", &[("p<1".into(), Usage { cpu_seconds: 1.0, memory_mib: 2.0, processes: 1 })], &m);
        assert!(j.starts_with("<?xml version='1.0' encoding='utf-8'?>\n<journal>\n  <transaction type=\"Sale Packing List\">\n"));
        assert!(j.contains("\n    <reference>C&amp;D</reference>\n") && j.contains("\n      <reference>p&lt;1</reference>\n"), "{j}");
        assert!(j.contains("\n    <movement>\n      <resource>R&amp;D</resource>\n"), "{j}");
        // well-formed: every movement, the partition's first
        let again = partition_movements(&j, "z").unwrap();
        assert_eq!(again.len(), 3);
        assert!(again[0].to_xml().contains("<resource>R&amp;D</resource>"));
    }

    #[test]
    fn only_movement_elements_count_and_only_their_first_reference_changes() {
        assert_eq!(partition_movements("<j><movements><reference>r</reference></movements></j>", "p"), None);
        let m =
            partition_movements("<j><movement><reference>1</reference><reference>2</reference></movement><movement/></j>", "p").unwrap();
        assert_eq!(m[0].to_xml(), "<movement><reference>p</reference><reference>2</reference></movement>");
        assert_eq!(m[1].to_xml(), "<movement/>");
        let empty_ref = partition_movements("<j><movement><reference/></movement></j>", "p").unwrap();
        assert_eq!(empty_ref[0].to_xml(), "<movement><reference>p</reference></movement>");
        assert_eq!(partition_movements("<j><movement></j>", "p"), None, "mismatched end tag");
        assert_eq!(partition_movements("<j><movement>", "p"), None, "unclosed");
        assert_eq!(partition_movements("not xml at all", "p"), None);
    }
}
