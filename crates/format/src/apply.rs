//! `slapos node format` from end to end: lock, observe, plan, then print
//! (dry run), compare (check) or apply, save the state, report to the master.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use slap::client::{ClientConfig, SlapClient};
use slap::marshal;

use crate::config::FormatConfig;
use crate::definition;
use crate::plan::{plan, Picker, Plan, Step, TunTapMode};
use crate::state::{pretty_marshal, save_xml, to_json, to_json_value, write_atomic, ComputerState};
use crate::system;

/// What to do with the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Change the system, save the state and report to the master.
    Apply,
    /// Print the plan, change nothing.
    DryRun,
    /// Report drift between the state file and the system; exit 1 if any.
    Check,
}

/// Exit codes of SlapOS: 0 formatted and reported, 1 failure, 2 formatted
/// but the master could not be told.
pub fn run(cfg: &FormatConfig, mode: Mode, json: bool) -> anyhow::Result<u8> {
    let _lock = lock(&cfg.computer_xml)?;
    let previous = ComputerState::load(&cfg.computer_xml)?;
    // the model: the definition file (-i), else the state file
    let (cfg, model) = match &cfg.input_definition_file {
        Some(path) => {
            tracing::info!("Using definition file {}", path.display());
            let defined = definition::read(path, cfg)?;
            let mut cfg = cfg.clone();
            cfg.software_user = defined.software_user.clone();
            (cfg, Some(defined))
        }
        None => {
            match &previous {
                Some(p) => {
                    tracing::info!("Loading previous computer data from {} ({} partitions)", cfg.computer_xml.display(), p.partitions.len())
                }
                None => tracing::warn!("Creating new computer data with id {}", cfg.computer_id),
            }
            (cfg.clone(), previous.clone())
        }
    };
    let cfg = &cfg;
    let invoking = nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map(|u| u.name).unwrap_or_else(|| "root".into());
    let mut users = vec![cfg.software_user.clone()];
    let mut partition_paths = Vec::new();
    for i in 0..cfg.partition_amount.max(model.as_ref().map(|p| p.partitions.len()).unwrap_or(0)) {
        users.push(format!("{}{i}", cfg.user_base_name));
        partition_paths.push(cfg.instance_root.join(format!("{}{i}", cfg.partition_base_name)));
    }
    for p in model.iter().flat_map(|m| &m.partitions) {
        users.push(p.user.clone());
        partition_paths.push(p.path.clone());
    }
    users.sort();
    users.dedup();
    partition_paths.sort();
    partition_paths.dedup();
    let resources: Vec<PathBuf> = partition_paths.iter().map(|p| p.join(".slapos-resource")).collect();
    let mut paths = vec![cfg.instance_root.clone(), cfg.software_root.clone()];
    paths.extend(cfg.certificate_repository_path.clone());
    paths.extend(partition_paths);
    if !cfg.alter_user {
        users.push(invoking.clone());
    }
    let interfaces: Vec<String> = [cfg.interface_name.clone(), cfg.ipv6_interface.clone()].into_iter().flatten().collect();
    let mut observed = system::observe(&users, &interfaces, &paths, &resources, cfg.alter_network)?;
    if cfg.local {
        observed.listening = crate::local_range::listening();
        observed.local_claims = crate::local_range::claims(&cfg.local_claims_dir);
    }
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let plan = plan(cfg, model.as_ref(), &observed, &invoking, &mut Picker::new(seed))?;
    if let (Some(path), true) = (&cfg.output_definition_file, mode != Mode::Check) {
        // an output asked for by name: also written by a dry run, as SlapOS does
        write_atomic(path, &definition::write(&plan.state)).with_context(|| format!("cannot write {}", path.display()))?;
        tracing::info!("Stored computer definition in {}", path.display());
    }
    match mode {
        Mode::DryRun => {
            print_plan(&plan, json)?;
            Ok(0)
        }
        Mode::Check => {
            let drift: Vec<&Step> = plan.steps.iter().collect();
            if previous.is_none() {
                println!("this node was never formatted ({} does not exist)", cfg.computer_xml.display());
                return Ok(1);
            }
            if plan.state.partitions.len() != previous.as_ref().map(|p| p.partitions.len()).unwrap_or(0) {
                println!(
                    "partition_amount is {}, the state file has {} partitions",
                    cfg.partition_amount,
                    previous.as_ref().map(|p| p.partitions.len()).unwrap_or(0)
                );
            }
            for w in &plan.warnings {
                println!("warning: {w}");
            }
            if drift.is_empty() {
                println!("no drift: the system matches {}", cfg.computer_xml.display());
                return Ok(0);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&drift)?);
            } else {
                println!("drift between {} and the system:", cfg.computer_xml.display());
                for s in drift {
                    println!("  {s}");
                }
            }
            Ok(1)
        }
        Mode::Apply => apply(cfg, &plan),
    }
}

fn print_plan(plan: &Plan, json: bool) -> anyhow::Result<()> {
    if json {
        let doc = serde_json::json!({
            "steps": plan.steps,
            "state": to_json_value(&plan.state.to_value()),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if plan.steps.is_empty() {
        println!("nothing to change");
        for w in &plan.warnings {
            println!("warning: {w}");
        }
    } else {
        println!("plan ({} steps):", plan.steps.len());
        for s in &plan.steps {
            println!("  {s}");
        }
        for w in &plan.warnings {
            println!("warning: {w}");
        }
    }
    Ok(())
}

/// Holds `<computer_xml>.lock` for the run: a second format waits.
fn lock(computer_xml: &Path) -> anyhow::Result<nix::fcntl::Flock<File>> {
    let path = PathBuf::from(format!("{}.lock", computer_xml.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = File::create(&path).with_context(|| format!("cannot create the lock file {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((file, _)) => {
            tracing::warn!("another slapos node format holds {}: waiting for it", path.display());
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| anyhow!("cannot lock {}: {e}", path.display()))
        }
    }
}

fn uid_gid(user: &str) -> anyhow::Result<(u32, u32)> {
    let u = system::user(user).ok_or_else(|| anyhow!("user {user} does not exist"))?;
    Ok((u.uid, u.gid))
}

/// The netlink (or ioctl) change of a network step; a tun/tap's owner is
/// resolved now, once the users exist (root when the user does not).
fn network_change(step: &Step) -> Option<system::NetworkChange> {
    use system::NetworkChange as N;
    Some(match step {
        Step::CreateBridge { name } => N::Bridge { name: name.clone() },
        Step::CreateTunTap { name, mode, user } => {
            N::TunTap { name: name.clone(), tap: *mode == TunTapMode::Tap, uid: system::user(user).map(|u| u.uid).unwrap_or(0) }
        }
        Step::SetMaster { interface, master } => N::Master { interface: interface.clone(), master: master.clone() },
        Step::SetUp { interface } => N::Up { interface: interface.clone() },
        Step::AddAddress { interface, address, prefix, noprefixroute } => {
            N::Address { interface: interface.clone(), addr: *address, prefix: *prefix, noprefixroute: *noprefixroute }
        }
        Step::AddRoute { destination, prefix, interface, via } => {
            N::Route { destination: *destination, prefix: *prefix, interface: interface.clone(), via: *via }
        }
        Step::AddLocalRoute { network, prefix } => N::LocalRoute { network: *network, prefix: *prefix },
        _ => return None,
    })
}

/// Applies network steps in order over one netlink session.
fn apply_network(steps: &[&Step]) -> anyhow::Result<()> {
    if steps.is_empty() {
        return Ok(());
    }
    for step in steps {
        if matches!(step, Step::CreateBridge { .. }) {
            tracing::info!("creating bridge interface {}", step.device().unwrap_or_default());
        }
        tracing::info!("{step}");
    }
    let changes: Vec<system::NetworkChange> = steps.iter().filter_map(|s| network_change(s)).collect();
    if let Err((done, e)) = system::apply_network(&changes) {
        let step = steps.get(done).map(|s| s.to_string()).unwrap_or_default();
        return Err(anyhow!("step failed: {step}: {e} (what was done is kept; run slapos node format again once fixed)"));
    }
    Ok(())
}

fn apply(cfg: &FormatConfig, plan: &Plan) -> anyhow::Result<u8> {
    // the state first: a failure below leaves the chosen addresses saved, and
    // the next run converges to them
    let xml = pretty_marshal(&marshal::encode(&plan.state.to_value())?)?;
    save_xml(&cfg.computer_xml, &xml).with_context(|| format!("cannot write {}", cfg.computer_xml.display()))?;
    if let Some(json_path) = &cfg.computer_json {
        let text = to_json(&plan.state.to_value(), 2);
        if std::fs::read_to_string(json_path).ok().as_deref() != Some(text.as_str()) {
            write_atomic(json_path, &text).with_context(|| format!("cannot write {}", json_path.display()))?;
        }
    }
    if plan.steps.is_empty() {
        tracing::info!("the node is already formatted: nothing to change");
    }
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    // network changes go first, in one netlink session: duplicate address
    // detection then runs while users and directories are made. New taps and
    // tuns (and what is done on them) come after the users, who own them.
    let created: std::collections::BTreeSet<&str> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::CreateTunTap { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let (late, early): (Vec<&Step>, Vec<&Step>) =
        plan.steps.iter().filter(|s| s.is_network()).partition(|s| s.device().is_some_and(|d| created.contains(d)));
    apply_network(&early)?;
    for step in plan.steps.iter().filter(|s| !s.is_network()) {
        tracing::info!("{step}");
        let r: anyhow::Result<()> = match step {
            Step::CreateGroup { name } => system::run("groupadd", &[name]).map_err(Into::into),
            Step::CreateUser { name, home, group, groups } => {
                let home = home.display().to_string();
                let mut args = vec!["-d", home.as_str(), "-g", group.as_str(), "-s", "/bin/sh", "-r"];
                let joined = groups.join(",");
                if !groups.is_empty() {
                    args.extend(["-G", joined.as_str()]);
                }
                args.push(name);
                system::run("useradd", &args).map_err(Into::into)
            }
            Step::ModifyUser { name, home, group, groups } => {
                let home = home.display().to_string();
                let mut args = vec!["-d", home.as_str(), "-g", group.as_str(), "-s", "/bin/sh"];
                let joined = groups.join(",");
                if !groups.is_empty() {
                    args.extend(["-aG", joined.as_str()]);
                }
                args.push(name);
                system::run("usermod", &args).map_err(Into::into)
            }
            Step::LockPassword { name } => system::run("passwd", &["-l", name]).map_err(Into::into),
            Step::CreateDirectory { path, mode } => std::fs::create_dir_all(path)
                .with_context(|| format!("cannot create {}", path.display()))
                .and_then(|_| system::set_mode(path, *mode).map_err(Into::into)),
            Step::SetMode { path, mode } => system::set_mode(path, *mode).map_err(Into::into),
            Step::SetOwner { path, user } => uid_gid(user).and_then(|(u, g)| system::set_owner(path, u, g).map_err(Into::into)),
            Step::Sysctl { key, value } => {
                let file = format!("/proc/sys/{}", key.replace('.', "/"));
                std::fs::write(&file, value).with_context(|| format!("cannot set {key}"))
            }
            Step::WriteResource { path } => {
                let p = plan.state.partitions.iter().find(|p| p.path.join(".slapos-resource") == *path).expect("planned");
                write_atomic(path, &to_json(&p.to_value(&plan.state.software_user), 4))
                    .with_context(|| format!("cannot write {}", path.display()))
            }
            Step::ClaimLocalRange { network, dir, state_file } => {
                // advisory (it keeps other local nodes off the range): a failure is only a warning
                if let Err(e) = crate::local_range::claim(dir, *network, state_file) {
                    tracing::warn!("cannot claim {network}/24 in {}: {e}", dir.display());
                }
                Ok(())
            }
            _ => unreachable!("network steps are applied together"),
        };
        r.with_context(|| format!("step failed: {step} (what was done is kept; run slapos node format again once fixed)"))?;
    }
    apply_network(&late)?;
    // new IPv6 addresses of the node's interfaces must pass duplicate address
    // detection before use (taps and tuns stay tentative until used: SlapOS
    // accepts that)
    let node_interfaces = [cfg.interface_name.as_deref(), cfg.ipv6_interface.as_deref()];
    let added_v6: std::collections::BTreeSet<&str> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::AddAddress { interface, address: std::net::IpAddr::V6(_), .. } if node_interfaces.contains(&Some(interface.as_str())) => {
                Some(interface.as_str())
            }
            _ => None,
        })
        .collect();
    for iface in added_v6 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = system::tentative(iface)?;
            if t.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!("addresses still tentative on {iface} after 10 s: {t:?}");
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // the report
    let mut c = ClientConfig::new(&cfg.master_url).with_timeout(Duration::from_secs(60));
    c.key_file = cfg.key_file.clone();
    c.cert_file = cfg.cert_file.clone();
    c.ca_file = cfg.master_ca_file.clone();
    let result = SlapClient::new(c).and_then(|client| client.load_computer_configuration(&plan.state.to_value()));
    match result {
        Ok(()) => {
            tracing::info!("slapos successfully prepared the computer {} ({} partitions)", cfg.computer_id, plan.state.partitions.len());
            Ok(0)
        }
        Err(e) => {
            tracing::error!("the node is formatted, but the master could not be told: {e}; the next run reports again");
            Ok(2)
        }
    }
}
