//! The node's certificates and their renewal before they end: the
//! computer's (`[slapos] cert_file`/`key_file`, renewed through
//! `generateComputerCertificate`, which the master allows a computer for
//! itself) and its partitions' (`certificate_repository_path`, fetched
//! again with `getComputerPartitionCertificate`). A certificate is due when
//! less than its renewal window remains: `[slapos] certificate_renewal_days`
//! when set, otherwise a third of its lifetime (at most 30 days).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use slap::client::SlapClient;
use slap::marshal::{self, Value};
use x509_parser::pem::Pem;

/// At most this much before its end is a certificate renewed by default.
const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// The validity (not before, not after; seconds since the epoch) of the
/// first certificate of a PEM text (text before it is skipped, as SlapOS
/// master's certificates start with their subject in text).
pub fn validity(pem: &str) -> Option<(i64, i64)> {
    let (pem, _) = Pem::iter_from_buffer(pem.as_bytes()).flatten().find(|p| p.label == "CERTIFICATE").map(|p| (p, ()))?;
    let cert = pem.parse_x509().ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Whether a certificate valid (`not_before`, `not_after`) is due for
/// renewal at `now` (all in seconds since the epoch), with `window` when
/// configured.
pub fn due(not_before: i64, not_after: i64, now: i64, window: Option<Duration>) -> bool {
    let lifetime = (not_after - not_before).max(0) as u64;
    let window = window.unwrap_or_else(|| Duration::from_secs(lifetime / 3).min(MAX_WINDOW));
    not_after - now < window.as_secs() as i64
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Whether the certificate in `pem` must be (re)fetched: unreadable, or due.
pub fn needs_renewal(pem: Option<&str>, window: Option<Duration>) -> bool {
    match pem.and_then(validity) {
        Some((from, to)) => due(from, to, now(), window),
        None => true,
    }
}

/// Renews the computer's certificate when it is due: a new certificate and
/// key from the master (`generateComputerCertificate`), written over
/// `cert_file` and `key_file` (0600, through a rename). Returns whether it
/// renewed. The certificate in use stays valid until it ends.
pub fn renew_computer(
    client: &SlapClient,
    computer_id: &str,
    cert_file: &Path,
    key_file: &Path,
    window: Option<Duration>,
) -> anyhow::Result<bool> {
    let current = std::fs::read_to_string(cert_file).ok();
    let Some((from, to)) = current.as_deref().and_then(validity) else {
        // not ours to judge: the client reports an unusable certificate itself
        return Ok(false);
    };
    if !due(from, to, now(), window) {
        return Ok(false);
    }
    let body = client.post("generateComputerCertificate", &[("computer_id", computer_id)], None)?;
    let v = marshal::decode(&body).map_err(|e| anyhow::anyhow!("generateComputerCertificate: {e}"))?;
    let get = |k: &str| v.as_dict().and_then(|d| d.get(k)).and_then(Value::as_str).unwrap_or_default().to_string();
    let (cert, key) = (get("certificate"), get("key"));
    anyhow::ensure!(validity(&cert).is_some() && !key.is_empty(), "generateComputerCertificate gave no usable certificate");
    // the key first: a certificate never names a key that is not there yet
    write_private(key_file, &key)?;
    write_private(cert_file, &cert)?;
    tracing::info!("the computer certificate {} ended within its renewal window: renewed", cert_file.display());
    Ok(true)
}

/// Writes `text` to `path` with mode 0600 from its creation, through a rename.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("renew{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600;

    #[test]
    fn a_certificate_is_due_within_its_window() {
        // a year: renewed in its last 30 days
        assert!(!due(0, 365 * DAY, 300 * DAY, None));
        assert!(due(0, 365 * DAY, 340 * DAY, None));
        // a day: renewed in its last third
        assert!(!due(0, DAY, DAY / 2, None));
        assert!(due(0, DAY, DAY - DAY / 4, None));
        // the configured window wins; an ended certificate is always due
        assert!(due(0, DAY, 0, Some(Duration::from_secs(2 * DAY as u64))));
        assert!(due(0, DAY, 2 * DAY, None));
    }

    #[test]
    fn unreadable_certificates_are_fetched_again() {
        assert!(needs_renewal(None, None));
        assert!(needs_renewal(Some("not a certificate"), None));
    }
}
