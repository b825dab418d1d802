//! What the panel shows, read from the store in one transaction: plain
//! values the templates ([`super::views`]) render.

use std::collections::BTreeMap;

use slap::instance_xml::xml_to_dict;

use crate::accounting::{self, Event, EventKind};
use crate::store::{EventFilter, PartitionRow, ReportRow, StoreError, Tx};

/// The events an instance page shows at most.
const TIMELINE: usize = 100;

/// A software release supplied to a computer, with the node's last word on it.
#[derive(Debug, Clone)]
pub struct Software {
    /// The software release URL.
    pub url: String,
    /// The computer it is supplied to.
    pub computer: String,
    /// `available` or `destroyed`.
    pub requested_state: String,
    /// The last build report (building, available, error, destroyed).
    pub reported: Option<ReportRow>,
}

/// A computer at a glance.
#[derive(Debug, Clone)]
pub struct Computer {
    /// Its reference.
    pub reference: String,
    /// Its address, from its format report.
    pub address: Option<String>,
    /// Partitions hosting an instance.
    pub used: usize,
    /// Partitions free.
    pub free: usize,
    /// When its node last reported anything (seconds since the epoch).
    pub last_contact: Option<f64>,
    /// What is supplied to it.
    pub software: Vec<Software>,
}

/// An instance (a busy partition).
#[derive(Debug, Clone)]
pub struct Instance {
    /// The partition as stored.
    pub row: PartitionRow,
    /// The node's last report on it (started, stopped, error, destroyed).
    pub reported: Option<ReportRow>,
}

impl Instance {
    /// Its title (empty when the row has none).
    pub fn title(&self) -> &str {
        self.row.partition_reference.as_deref().unwrap_or("")
    }
    /// The root title of its tree.
    pub fn tree(&self) -> &str {
        if self.row.requested_by.is_empty() {
            self.title()
        } else {
            &self.row.requested_by
        }
    }
    /// Whether a person requested it (the root of a tree): the panel may
    /// request it again (state, parameters).
    pub fn is_root(&self) -> bool {
        self.row.requested_by.is_empty()
    }
    /// Whether the node's last report is an error.
    pub fn in_error(&self) -> bool {
        self.reported.as_ref().is_some_and(|r| r.state == "error")
    }
}

/// An instance tree: its root first, then the instances it requested.
#[derive(Debug, Clone)]
pub struct Tree {
    /// The root's title.
    pub title: String,
    /// Its instances, root first.
    pub instances: Vec<Instance>,
}

impl Tree {
    /// Whether an instance of the tree is in error.
    pub fn in_error(&self) -> bool {
        self.instances.iter().any(Instance::in_error)
    }
}

/// The site at a glance.
#[derive(Debug, Clone)]
pub struct Overview {
    /// Every computer (the site's default one too, before its first format).
    pub computers: Vec<Computer>,
    /// Every instance tree, those in error first.
    pub trees: Vec<Tree>,
}

/// An instance and what it holds, for its own page.
#[derive(Debug, Clone)]
pub struct Detail {
    /// The instance.
    pub instance: Instance,
    /// Its parameters (instance XML, decoded).
    pub parameters: BTreeMap<String, String>,
    /// Its published connection parameters.
    pub connection: BTreeMap<String, String>,
    /// The instances it requested.
    pub children: Vec<Instance>,
    /// What happened to it (states, errors, promise failures, bangs),
    /// newest first (`proxy::accounting`).
    pub timeline: Vec<Event>,
    /// Its addresses, as (interface, address).
    pub addresses: Vec<(String, String)>,
}

fn last_of<'a>(reports: &'a [ReportRow], kind: &str, computer: &str, reference: &str) -> Option<&'a ReportRow> {
    reports.iter().find(|r| r.kind == kind && r.computer_reference == computer && r.reference == reference)
}

fn instance(reports: &[ReportRow], row: PartitionRow) -> Instance {
    let reported = last_of(reports, "partition", &row.computer_reference, &row.reference).cloned();
    Instance { row, reported }
}

fn busy(p: &PartitionRow) -> bool {
    p.slap_state == "busy" && p.software_release.as_deref().is_some_and(|s| !s.is_empty())
}

/// The overview: computers with their partitions and software releases,
/// instance trees with those in error first.
pub fn overview(tx: &mut dyn Tx, default_computer: &str) -> Result<Overview, StoreError> {
    let reports = tx.last_reports()?;
    let partitions = tx.partitions(None)?;
    let software = tx.software_releases(None)?;
    let usages = tx.usages(100)?;
    let mut references: Vec<String> = tx.computers()?.into_iter().map(|c| c.reference).collect();
    if !default_computer.is_empty() && !references.iter().any(|r| r == default_computer) {
        references.insert(0, default_computer.to_string());
    }
    let mut computers = Vec::new();
    for reference in references {
        let address = tx.computer(&reference)?.and_then(|c| c.address);
        let mine = partitions.iter().filter(|p| p.computer_reference == reference);
        let used = mine.clone().filter(|p| busy(p)).count();
        let free = mine.count() - used;
        let last_report = reports.iter().filter(|r| r.computer_reference == reference).map(|r| r.time);
        let last_usage = usages.iter().filter(|u| u.computer_reference == reference).map(|u| u.time);
        let last_contact = last_report.chain(last_usage).reduce(f64::max);
        let software = software
            .iter()
            .filter(|s| s.computer_reference == reference)
            .map(|s| Software {
                url: s.url.clone(),
                computer: reference.clone(),
                requested_state: s.requested_state.clone(),
                reported: last_of(&reports, "software", &reference, &s.url).cloned(),
            })
            .collect();
        computers.push(Computer { reference, address, used, free, last_contact, software });
    }
    Ok(Overview { computers, trees: trees(&reports, partitions) })
}

/// Groups the busy partitions by instance tree, roots first in each, trees
/// in error first.
fn trees(reports: &[ReportRow], partitions: Vec<PartitionRow>) -> Vec<Tree> {
    let mut by_title: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
    for row in partitions.into_iter().filter(busy) {
        let i = instance(reports, row);
        by_title.entry(i.tree().to_string()).or_default().push(i);
    }
    let mut trees: Vec<Tree> = by_title
        .into_iter()
        .map(|(title, mut instances)| {
            instances.sort_by_key(|i| !i.is_root());
            Tree { title, instances }
        })
        .collect();
    trees.sort_by_key(|t| !t.in_error());
    trees
}

fn decoded(xml: Option<&str>) -> BTreeMap<String, String> {
    xml.and_then(|x| xml_to_dict(x).ok()).unwrap_or_default().into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect()
}

/// One instance with its parameters, children, reports and addresses; None
/// for an unknown or free partition.
pub fn detail(tx: &mut dyn Tx, computer: &str, partition: &str) -> Result<Option<Detail>, StoreError> {
    let Some(row) = tx.partition(computer, partition)?.filter(busy) else {
        return Ok(None);
    };
    let reports = tx.last_reports()?;
    let instance = instance(&reports, row);
    let mut children = Vec::new();
    for child in tx.partitions_requested_by(instance.tree())? {
        if child.requester_id == instance.row.reference && busy(&child) && child.reference != instance.row.reference {
            children.push(self::instance(&reports, child));
        }
    }
    let filter = EventFilter {
        computer: Some(computer.into()),
        partition: Some(partition.into()),
        tree: None,
        since: 0.0,
        until: f64::MAX,
        limit: TIMELINE,
    };
    let timeline = accounting::events(tx, &filter)?.into_iter().filter(|e| e.kind != EventKind::Usage).collect();
    let addresses = tx.addresses(Some(computer), partition)?.into_iter().map(|a| (a.interface, a.address)).collect();
    Ok(Some(Detail {
        parameters: decoded(instance.row.xml.as_deref()),
        connection: decoded(instance.row.connection_xml.as_deref()),
        instance,
        children,
        timeline,
        addresses,
    }))
}

/// The software releases supplied anywhere, each URL once (the request form's choices).
pub fn supplied_urls(tx: &mut dyn Tx) -> Result<Vec<String>, StoreError> {
    let mut urls: Vec<String> =
        tx.software_releases(None)?.into_iter().filter(|s| s.requested_state == "available").map(|s| s.url).collect();
    urls.sort();
    urls.dedup();
    Ok(urls)
}

/// Every computer reference (the site's default one first).
pub fn computer_references(tx: &mut dyn Tx, default_computer: &str) -> Result<Vec<String>, StoreError> {
    let mut refs: Vec<String> = tx.computers()?.into_iter().map(|c| c.reference).filter(|r| r != default_computer).collect();
    if !default_computer.is_empty() {
        refs.insert(0, default_computer.to_string());
    }
    Ok(refs)
}
