//! The binary cache of software releases (`node.md` §4.2), as slapgrid's
//! `networkcache.py` on top of `slapos.libnetworkcache` does it:
//!
//! * the key of a release is the md5 of its URL (its software path's name);
//! * shadir (`<dir-url>/<key>`) holds a JSON list of `[document, signature]`:
//!   the document is the JSON of `{"software_url", "software_root",
//!   "multiarch", "os", "sha512"}`, the signature base64 of an RSA PKCS#1
//!   v1.5 SHA-1 signature of the document (`openssl sha1 -sign`, as
//!   `slapos.crypto` does: the same `openssl` program makes and checks them);
//! * shacache (`<cache-url>/<sha512>`) holds the tarball (`tar czf` of the
//!   software path, named by its md5 inside).
//!
//! An entry is used only when its signature verifies against one of the
//! `signature-certificate-list` certificates, and its `multiarch`
//! (`gcc -dumpmachine`) and `os` (`/etc/os-release`, Debian by major
//! version) match this machine. Why an entry was not used is logged.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use slapos_config::Config;

/// The `[networkcache]` options a node uses for software releases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// `download-binary-cache-url`: where tarballs are read.
    pub download_cache_url: Option<String>,
    /// `download-binary-dir-url`: where entries are read.
    pub download_dir_url: Option<String>,
    /// `upload-binary-cache-url`: where tarballs are stored.
    pub upload_cache_url: Option<String>,
    /// `upload-binary-dir-url`: where entries are stored.
    pub upload_dir_url: Option<String>,
    /// `signature-private-key-file`: the PEM RSA key entries are signed with.
    pub signature_private_key_file: Option<PathBuf>,
    /// `signature-certificate-list`: PEM certificates, one after the other.
    pub signature_certificates: Vec<String>,
    /// `download-from-binary-cache-url-blacklist` (else the older
    /// `binary-cache-url-blacklist`): URL prefixes never downloaded.
    pub download_blacklist: Vec<String>,
    /// `upload-to-binary-cache-url-blacklist`: URL prefixes never uploaded.
    pub upload_blacklist: Vec<String>,
}

fn lines(v: Option<&str>) -> Vec<String> {
    v.unwrap_or("").lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// Splits a `signature-certificate-list` value into PEM certificates (as
/// slapgrid does: on `-----BEGIN CERTIFICATE-----`).
pub fn split_certificates(text: &str) -> Vec<String> {
    const MARK: &str = "-----BEGIN CERTIFICATE-----";
    text.split(MARK)
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(|q| format!("{MARK}\n{}\n", q.lines().map(str::trim).collect::<Vec<_>>().join("\n")))
        .collect()
}

impl Options {
    /// Reads `[networkcache]` (None without the section).
    pub fn from_config(config: &Config) -> Option<Options> {
        let get = |k: &str| config.get_nonempty("networkcache", k);
        let s = |k: &str| get(k).map(|v| v.trim().to_string());
        let o = Options {
            download_cache_url: s("download-binary-cache-url"),
            download_dir_url: s("download-binary-dir-url"),
            upload_cache_url: s("upload-binary-cache-url"),
            upload_dir_url: s("upload-binary-dir-url"),
            signature_private_key_file: s("signature-private-key-file").map(PathBuf::from),
            signature_certificates: split_certificates(get("signature-certificate-list").unwrap_or("")),
            download_blacklist: lines(get("download-from-binary-cache-url-blacklist").or(get("binary-cache-url-blacklist"))),
            upload_blacklist: lines(get("upload-to-binary-cache-url-blacklist")),
        };
        (o != Options::default()).then_some(o)
    }
}

/// This machine as entries name it: (`multiarch`, `os`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// `gcc -dumpmachine` (else `<arch>-linux-gnu`).
    pub multiarch: String,
    /// distro's (id, version, codename) from `/etc/os-release`.
    pub os: [String; 3],
}

impl Machine {
    /// This machine.
    pub fn this() -> Machine {
        let multiarch = Command::new("gcc")
            .arg("-dumpmachine")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("{}-linux-gnu", std::env::consts::ARCH));
        let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        Machine { multiarch, os: os_release(&text) }
    }

    /// Whether an entry built on (`multiarch`, `os`) runs here (slapgrid's
    /// `is_compatible`: same multiarch, same debianized OS).
    pub fn runs(&self, multiarch: &str, os: &[String; 3]) -> bool {
        self.multiarch == multiarch && debianize(&self.os) == debianize(os)
    }
}

/// `distro.id()`, `distro.version()`, `distro.codename()` from os-release.
pub fn os_release(text: &str) -> [String; 3] {
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
            .unwrap_or_default()
    };
    [field("ID").to_lowercase(), field("VERSION_ID"), field("VERSION_CODENAME")]
}

fn debianize(os: &[String; 3]) -> [String; 3] {
    let mut name = os[0].to_lowercase();
    if name == "raspbian" {
        name = "debian".into();
    }
    if name == "debian" {
        return [name, os[1].split('.').next().unwrap_or("").to_string(), String::new()];
    }
    [name, os[1].clone(), os[2].clone()]
}

/// Runs `openssl args…` with `input` on stdin; its stdout, or its error line.
fn openssl(args: &[&str], input: &[u8]) -> Result<Vec<u8>, String> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    child.stdin.take().expect("piped").write_all(input).map_err(|e| format!("openssl: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("openssl: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!("openssl {}: {}", args[0], String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("failed")))
    }
}

/// The signature of `document` with the key in `key_file` (base64).
pub fn sign(key_file: &Path, document: &str) -> Result<String, String> {
    let key = key_file.to_str().ok_or("the key path is not UTF-8")?;
    let raw = openssl(&["sha1", "-sign", key], document.as_bytes())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(raw))
}

/// Whether `signature` (base64) is a signature of `document` by one of
/// `certificates` (PEM).
pub fn verify(certificates: &[String], document: &str, signature: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    if raw.is_empty() {
        return false;
    }
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let (sig, key) = (dir.path().join("sig"), dir.path().join("key.pem"));
    if std::fs::write(&sig, &raw).is_err() {
        return false;
    }
    certificates.iter().any(|cert| {
        let Ok(public) = openssl(&["x509", "-pubkey", "-noout"], cert.as_bytes()) else {
            return false;
        };
        std::fs::write(&key, public).is_ok()
            && openssl(&["sha1", "-verify", key.to_str().unwrap_or(""), "-signature", sig.to_str().unwrap_or("")], document.as_bytes())
                .is_ok()
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(60)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn join(base: &str, name: &str) -> String {
    format!("{}/{name}", base.trim_end_matches('/'))
}

/// The `[document, signature]` entries under `key` (at most 4 MiB of JSON).
pub fn select(dir_url: &str, key: &str) -> Result<Vec<(String, String)>, String> {
    let mut resp = agent().get(&join(dir_url, key)).call().map_err(|e| format!("shadir {key}: {e}"))?;
    let body = resp.body_mut().with_config().limit(4 << 20).read_to_vec().map_err(|e| format!("shadir {key}: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("shadir {key}: not a list of [document, signature]: {e}"))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Downloads `<cache_url>/<sha512>` to `dest`, checking its SHA-512.
pub fn download(cache_url: &str, sha512: &str, dest: &Path) -> Result<u64, String> {
    let resp = agent().get(&join(cache_url, sha512)).call().map_err(|e| format!("shacache {sha512}: {e}"))?;
    let mut reader = resp.into_body().into_reader();
    let mut file = std::fs::File::create(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| format!("shacache {sha512}: {e}"))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(|e| format!("{}: {e}", dest.display()))?;
        total += n as u64;
    }
    if hex(ctx.finish().as_ref()) != sha512 {
        return Err(format!("shacache {sha512}: the content does not match its SHA-512"));
    }
    Ok(total)
}

/// Uploads `file` to `cache_url` (unless already there) and indexes it
/// under `key` in `dir_url` with `metadata` plus its `sha512`, signed with
/// `key_file` (an empty signature without one, as libnetworkcache does).
pub fn upload(
    cache_url: &str,
    dir_url: &str,
    key: &str,
    file: &Path,
    metadata: serde_json::Map<String, serde_json::Value>,
    key_file: Option<&Path>,
) -> Result<String, String> {
    let data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let sum = hex(ring::digest::digest(&ring::digest::SHA512, &data).as_ref());
    let a = agent();
    if a.get(&join(cache_url, &sum)).call().is_err() {
        let mut resp = a
            .post(cache_url)
            .header("Content-Type", "application/octet-stream")
            .send(&data[..])
            .map_err(|e| format!("shacache upload: {e}"))?;
        let answer = resp.body_mut().read_to_string().unwrap_or_default();
        if resp.status().as_u16() != 201 || answer.trim() != sum {
            return Err(format!("shacache upload: answered {} '{}'", resp.status(), answer.chars().take(200).collect::<String>()));
        }
    }
    let mut doc = metadata;
    doc.insert("sha512".into(), sum.clone().into());
    let document = serde_json::Value::Object(doc).to_string();
    let signature = match key_file {
        Some(k) => sign(k, &document)?,
        None => String::new(),
    };
    let entry = serde_json::json!([document, signature]).to_string();
    a.put(&join(dir_url, key))
        .header("Content-Type", "application/json")
        .send(entry.as_bytes())
        .map_err(|e| format!("shadir upload: {e}"))?;
    Ok(sum)
}

/// The SHA-512 of an entry usable here, or why it is not (logged).
fn usable(entry: &(String, String), certificates: &[String], here: &Machine) -> Result<String, String> {
    if !verify(certificates, &entry.0, &entry.1) {
        return Err("its signature is not by a certificate of signature-certificate-list".into());
    }
    let doc: serde_json::Value = serde_json::from_str(&entry.0).map_err(|e| format!("its document is not JSON: {e}"))?;
    let multiarch = doc.get("multiarch").and_then(|v| v.as_str()).unwrap_or("");
    let os: Vec<String> = doc
        .get("os")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().map(|s| s.as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default();
    let os: [String; 3] = os.try_into().unwrap_or_default();
    if !here.runs(multiarch, &os) {
        return Err(format!("it was built for {multiarch} on {}, this is {} on {}", os.join(" "), here.multiarch, here.os.join(" ")));
    }
    match doc.get("sha512").and_then(|v| v.as_str()) {
        Some(s) if s.len() == 128 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => Ok(s.to_string()),
        _ => Err("it has no valid sha512".into()),
    }
}

/// The SHA-512 of the first usable entry for `url` under `key`, or why
/// there is none.
pub fn lookup(o: &Options, url: &str, key: &str, here: &Machine) -> Result<String, String> {
    let dir_url = o.download_dir_url.as_deref().ok_or("no download-binary-dir-url")?;
    if let Some(b) = o.download_blacklist.iter().find(|b| url.starts_with(b.as_str())) {
        return Err(format!("{url} is blacklisted ({b})"));
    }
    let entries = select(dir_url, key)?;
    if entries.is_empty() {
        return Err(format!("no entry for {url}"));
    }
    for (i, e) in entries.iter().enumerate() {
        match usable(e, &o.signature_certificates, here) {
            Ok(sum) => return Ok(sum),
            Err(why) => tracing::info!("binary cache entry {i} for {url} not used: {why}"),
        }
    }
    Err(format!("no usable entry among {} for {url}", entries.len()))
}

/// `node software`'s first step: installs `url` into its empty software
/// path `sp` (under `software_root`) from the cache, extracting the tarball
/// as the owner of the software root; false (with the reason logged) when
/// the cache is not configured or has nothing usable.
pub fn install_from_cache(o: &Options, url: &str, software_root: &Path, sp: &Path) -> bool {
    match try_install(o, url, software_root, sp) {
        Ok(bytes) => {
            tracing::info!("installed {url} from the binary cache ({bytes} bytes)");
            true
        }
        Err(why) => {
            tracing::info!("binary cache not used for {url}: {why}");
            false
        }
    }
}

/// [`install_from_cache`], saying why not. Nothing is left of a failed
/// extraction.
pub fn try_install(o: &Options, url: &str, software_root: &Path, sp: &Path) -> Result<u64, String> {
    let (Some(cache_url), Some(_)) = (o.download_cache_url.as_deref(), o.download_dir_url.as_deref()) else {
        return Err("download-binary-cache-url and download-binary-dir-url are not both set".into());
    };
    let key = sp.file_name().and_then(|n| n.to_str()).ok_or("no software path name")?;
    if sp.exists() {
        return Err(format!("{} already exists", sp.display()));
    }
    let sum = lookup(o, url, key, &Machine::this())?;
    fetch_and_extract(cache_url, &sum, software_root, key).inspect_err(|_| {
        if sp.exists() {
            let _ = crate::software::destroy(sp);
        }
    })
}

fn fetch_and_extract(cache_url: &str, sum: &str, software_root: &Path, key: &str) -> Result<u64, String> {
    tracing::info!("Downloading {key} from the binary cache ({sum})");
    let tmp =
        tempfile::Builder::new().prefix(".cache-").tempdir_in(software_root).map_err(|e| format!("{}: {e}", software_root.display()))?;
    let tarball = tmp.path().join("software.tar.gz");
    let bytes = download(cache_url, sum, &tarball)?;
    // only the release's own directory, as the software user (never as root)
    make_readable(tmp.path(), &tarball, software_root)?;
    let args: Vec<String> = [
        "--no-same-owner",
        "--no-same-permissions",
        "-xzf",
        &tarball.display().to_string(),
        "-C",
        &software_root.display().to_string(),
        "--",
        key,
    ]
    .map(String::from)
    .to_vec();
    let out = crate::process::run_as_owner("tar", &args, software_root, &[], Some(Duration::from_secs(3600)), |_| {})
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !out.success {
        return Err(format!("tar failed: {}", out.output.lines().last().unwrap_or("")));
    }
    Ok(bytes)
}

/// Lets the owner of the software root read the downloaded tarball.
fn make_readable(tmp: &Path, tarball: &Path, software_root: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(software_root).map_err(|e| e.to_string())?;
    for p in [tmp, tarball] {
        std::os::unix::fs::chown(p, Some(m.uid()), Some(m.gid())).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// `node software`'s last step after a build: packs the software path
/// (`tar czf`, named by its key inside) and uploads a signed entry, unless
/// uploads are not configured, `url` is blacklisted or the release uses
/// shared parts. Failures are logged, never fatal.
pub fn upload_built(o: &Options, url: &str, software_root: &Path, sp: &Path) {
    let (Some(cache_url), Some(dir_url)) = (o.upload_cache_url.as_deref(), o.upload_dir_url.as_deref()) else {
        return;
    };
    if let Some(b) = o.upload_blacklist.iter().find(|b| url.starts_with(b.as_str())) {
        tracing::info!("not uploading {url} to the binary cache: blacklisted ({b})");
        return;
    }
    if sp.join(".shared").exists() {
        tracing::info!("not uploading {url} to the binary cache: it uses shared parts");
        return;
    }
    let Some(key) = sp.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let result = (|| -> Result<String, String> {
        let tmp = tempfile::Builder::new().prefix(".cache-").tempdir_in(software_root).map_err(|e| e.to_string())?;
        let tarball = tmp.path().join("software.tar.gz");
        let status = Command::new("tar")
            .args(["-czf", &tarball.display().to_string(), "-C", &software_root.display().to_string(), "--", key])
            .status()
            .map_err(|e| format!("cannot run tar: {e}"))?;
        if !status.success() {
            return Err(format!("tar failed ({status})"));
        }
        let here = Machine::this();
        let mut meta = serde_json::Map::new();
        meta.insert("software_url".into(), url.into());
        meta.insert("software_root".into(), software_root.display().to_string().into());
        meta.insert("multiarch".into(), here.multiarch.into());
        meta.insert("os".into(), serde_json::json!(here.os));
        upload(cache_url, dir_url, key, &tarball, meta, o.signature_private_key_file.as_deref())
    })();
    match result {
        Ok(sum) => tracing::info!("uploaded {url} to the binary cache ({sum})"),
        Err(why) => tracing::warn!("could not upload {url} to the binary cache: {why}"),
    }
}
