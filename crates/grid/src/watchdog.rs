//! `slapos node watchdog` (`node.md` §5.7): the supervisord event listener
//! that bangs the master when a watched service (`etc/service`, process
//! names ending in `-on-watch`) exits or fails, at most once per
//! successful deployment of its partition.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use slap::client::{ClientConfig, SlapClient};

/// Where the watchdog reports.
#[derive(Debug, Clone)]
pub struct WatchdogConfig {
    /// The master to bang.
    pub master_url: String,
    /// The computer whose partition is banged.
    pub computer_id: String,
    /// Parent directory of the partitions.
    pub instance_root: PathBuf,
    /// Where partitions' certificates are, to bang as the partition.
    pub certificate_repository_path: Option<PathBuf>,
    /// The node's `master_ca_file` (verifies the master's certificate).
    pub master_ca_file: Option<PathBuf>,
}

/// The `command=` line of `[eventlistener:watchdog]`: this very program.
pub fn command_line(program: &Path, c: &WatchdogConfig) -> String {
    let mut line = format!(
        "{} node watchdog --master-url {} --computer-id {} --instance-root {}",
        program.display(),
        c.master_url,
        c.computer_id,
        c.instance_root.display()
    );
    if let Some(r) = &c.certificate_repository_path {
        line.push_str(&format!(" --certificate-repository-path {}", r.display()));
    }
    if let Some(ca) = &c.master_ca_file {
        line.push_str(&format!(" --master-ca-file {}", ca.display()));
    }
    line
}

/// `key:value key:value …` (the event header and its payload's first line).
pub fn parse_tokens(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace().filter_map(|t| t.split_once(':')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Whether this event is worth a bang: `(partition id, message)`. Records
/// the bang in the partition (`.slapos_latest_bang_timestamp`), so that the
/// next one waits for a newer deployment.
pub fn decide_bang(event: &str, payload: &BTreeMap<String, String>, instance_root: &Path) -> Option<(String, String)> {
    if event != "PROCESS_STATE_EXITED" && event != "PROCESS_STATE_FATAL" {
        return None;
    }
    let process = payload.get("processname")?;
    if !process.contains("-on-watch") {
        return None;
    }
    let partition = payload.get("groupname")?.clone();
    // the partition's files, never through its links
    let pd = crate::fsafe::Dir::open_below(instance_root, Path::new(&partition)).ok()?;
    let text = |f: &str| pd.read_to_string(Path::new(f), crate::fsafe::SMALL).ok().map(|t| t.trim().to_string());
    let read = |f: &str| text(f).and_then(|t| t.parse::<f64>().ok());
    let deployed = read(".timestamp").unwrap_or(0.0);
    if let Some(latest) = read(".slapos_latest_bang_timestamp") {
        if deployed <= latest {
            return None;
        }
    }
    let stamp = text(".timestamp").unwrap_or_else(|| "0".into());
    let _ = pd.write(Path::new(".slapos_latest_bang_timestamp"), stamp.as_bytes(), 0o644, None);
    Some((partition.clone(), format!("{process} process in partition {partition} encountered a problem")))
}

/// The listener loop on stdin/stdout (supervisor's event listener
/// protocol); logs go to stderr.
pub fn run(c: &WatchdogConfig, input: &mut impl BufRead, output: &mut impl Write) -> std::io::Result<()> {
    loop {
        output.write_all(b"READY\n")?;
        output.flush()?;
        let mut header = String::new();
        if input.read_line(&mut header)? == 0 {
            return Ok(());
        }
        let h = parse_tokens(&header);
        let len: usize = h.get("len").and_then(|l| l.parse().ok()).unwrap_or(0);
        let mut payload = vec![0u8; len];
        input.read_exact(&mut payload)?;
        let payload = String::from_utf8_lossy(&payload);
        let first = payload.lines().next().unwrap_or_default();
        let event = h.get("eventname").map(String::as_str).unwrap_or_default();
        if let Some((partition, message)) = decide_bang(event, &parse_tokens(first), &c.instance_root) {
            let mut cc = ClientConfig::new(c.master_url.clone());
            cc.ca_file = c.master_ca_file.clone();
            if let Some(r) = &c.certificate_repository_path {
                let (key, cert) = (r.join(format!("{partition}.key")), r.join(format!("{partition}.crt")));
                if key.exists() && cert.exists() {
                    cc.key_file = Some(key);
                    cc.cert_file = Some(cert);
                }
            }
            match SlapClient::new(cc).and_then(|client| client.bang(&c.computer_id, &partition, &message)) {
                Ok(()) => tracing::info!("watchdog: banged the master: {message}"),
                Err(e) => tracing::warn!("watchdog: could not bang the master ({message}): {e}"),
            }
        }
        output.write_all(b"RESULT 2\nOK")?;
        output.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(process: &str, group: &str) -> BTreeMap<String, String> {
        parse_tokens(&format!("processname:{process} groupname:{group} from_state:RUNNING expected:0 pid:42"))
    }

    #[test]
    fn only_watched_services_bang_once_per_deployment() {
        let d = tempfile::tempdir().unwrap();
        let pp = d.path().join("slappart0");
        std::fs::create_dir_all(&pp).unwrap();
        let root = d.path();
        // etc/run programs and other events never bang
        assert_eq!(decide_bang("PROCESS_STATE_EXITED", &event("runner", "slappart0"), root), None);
        assert_eq!(decide_bang("PROCESS_STATE_STOPPED", &event("http-on-watch", "slappart0"), root), None);
        // never deployed: the first event bangs, later ones do not
        let (p, m) = decide_bang("PROCESS_STATE_EXITED", &event("http-on-watch", "slappart0"), root).unwrap();
        assert_eq!((p.as_str(), m.as_str()), ("slappart0", "http-on-watch process in partition slappart0 encountered a problem"));
        assert_eq!(std::fs::read_to_string(pp.join(".slapos_latest_bang_timestamp")).unwrap(), "0");
        assert_eq!(decide_bang("PROCESS_STATE_FATAL", &event("http-on-watch", "slappart0"), root), None);
        // a newer deployment: one more bang, recorded
        std::fs::write(pp.join(".timestamp"), "1795542339.7344759").unwrap();
        assert!(decide_bang("PROCESS_STATE_FATAL", &event("http-on-watch", "slappart0"), root).is_some());
        assert_eq!(std::fs::read_to_string(pp.join(".slapos_latest_bang_timestamp")).unwrap(), "1795542339.7344759");
        assert_eq!(decide_bang("PROCESS_STATE_EXITED", &event("http-on-watch", "slappart0"), root), None);
    }

    #[test]
    fn the_bang_record_never_goes_through_a_partitions_link() {
        let d = tempfile::tempdir().unwrap();
        let pp = d.path().join("slappart0");
        std::fs::create_dir_all(&pp).unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, pp.join(".slapos_latest_bang_timestamp")).unwrap();
        std::os::unix::fs::symlink(&victim, pp.join(".timestamp")).unwrap();
        assert!(decide_bang("PROCESS_STATE_EXITED", &event("http-on-watch", "slappart0"), d.path()).is_some());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(pp.join(".slapos_latest_bang_timestamp")).unwrap(), "0", "the link replaced");
        // a partition name that leaves the instance root is not a partition
        assert_eq!(decide_bang("PROCESS_STATE_EXITED", &event("x-on-watch", "../slappart0"), &pp), None);
    }

    #[test]
    fn speaks_the_event_listener_protocol() {
        let c = WatchdogConfig {
            master_url: "http://127.0.0.1:9".into(),
            computer_id: "C".into(),
            instance_root: "/nonexistent".into(),
            certificate_repository_path: None,
            master_ca_file: None,
        };
        let payload = "processname:x groupname:y from_state:RUNNING expected:0 pid:1";
        let input = format!(
            "ver:3.0 server:supervisor serial:1 pool:watchdog poolserial:1 eventname:PROCESS_STATE_EXITED len:{}\n{payload}",
            payload.len()
        );
        let mut out = Vec::new();
        run(&c, &mut std::io::Cursor::new(input), &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "READY\nRESULT 2\nOKREADY\n");
        assert!(command_line(Path::new("/usr/bin/slapos"), &c).starts_with("/usr/bin/slapos node watchdog --master-url http://127.0.0.1:9"));
        // the node's CA reaches the watchdog's master client
        let c = WatchdogConfig { master_ca_file: Some("/etc/opt/slapos/ssl/master-ca.pem".into()), ..c };
        assert!(command_line(Path::new("/usr/bin/slapos"), &c).ends_with(" --master-ca-file /etc/opt/slapos/ssl/master-ca.pem"));
    }
}
