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
//! version) match this machine. Why an entry was not used is logged, one
//! line per reason.
//!
//! Network failures (a cache down, a 5xx) are retried a bounded number of
//! times with a short backoff (SlapOS sleeps 30 minutes between upload
//! tries, blocking every other release; we wait seconds). A tarball is
//! extracted into a temporary directory beside the software path and renamed
//! into place: a failed install leaves nothing behind.
//!
//! Signatures are made and checked by the `openssl` program rather than in
//! process: `ring` (already built) verifies RSA/SHA-1 but cannot sign with
//! SHA-1, `rustls-webpki` refuses X.509 v1 certificates (which a
//! `signature-certificate-list` may hold), and the `rsa` + `sha1` +
//! `x509-cert` crates would be a second crypto stack for one call per
//! entry; `openssl` is also what `slapos.crypto` calls.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use slapos_config::Config;

/// The `[networkcache]` options a node uses for software releases.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// `download-from-binary-cache-force-url-list`: URL prefixes that are
    /// only ever installed from the cache (never built: a miss fails the
    /// release, retried on the next run).
    pub force_list: Vec<String>,
    /// `shacache-ca-file`, `shacache-cert-file`, `shacache-key-file`: TLS
    /// to the cache of tarballs.
    pub shacache_tls: slap::tls::TlsFiles,
    /// `shadir-ca-file`, `shadir-cert-file`, `shadir-key-file`: TLS to the
    /// directory of entries.
    pub shadir_tls: slap::tls::TlsFiles,
    /// Tries of each network operation (ours; 3).
    pub attempts: u32,
    /// The first wait between tries, doubled each time (ours; 1 s).
    pub retry_delay: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            download_cache_url: None,
            download_dir_url: None,
            upload_cache_url: None,
            upload_dir_url: None,
            signature_private_key_file: None,
            signature_certificates: Vec::new(),
            download_blacklist: Vec::new(),
            upload_blacklist: Vec::new(),
            force_list: Vec::new(),
            shacache_tls: Default::default(),
            shadir_tls: Default::default(),
            attempts: 3,
            retry_delay: Duration::from_secs(1),
        }
    }
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
    /// Reads `[networkcache]` (None without any of its options).
    pub fn from_config(config: &Config) -> Option<Options> {
        let get = |k: &str| config.get_nonempty("networkcache", k);
        let s = |k: &str| get(k).map(|v| v.trim().to_string());
        let tls = |side: &str| slap::tls::TlsFiles {
            ca_file: s(&format!("{side}-ca-file")).map(PathBuf::from),
            cert_file: s(&format!("{side}-cert-file")).map(PathBuf::from),
            key_file: s(&format!("{side}-key-file")).map(PathBuf::from),
        };
        let o = Options {
            download_cache_url: s("download-binary-cache-url"),
            download_dir_url: s("download-binary-dir-url"),
            upload_cache_url: s("upload-binary-cache-url"),
            upload_dir_url: s("upload-binary-dir-url"),
            signature_private_key_file: s("signature-private-key-file").map(PathBuf::from),
            signature_certificates: split_certificates(get("signature-certificate-list").unwrap_or("")),
            download_blacklist: lines(get("download-from-binary-cache-url-blacklist").or(get("binary-cache-url-blacklist"))),
            upload_blacklist: lines(get("upload-to-binary-cache-url-blacklist")),
            force_list: lines(get("download-from-binary-cache-force-url-list")),
            shacache_tls: tls("shacache"),
            shadir_tls: tls("shadir"),
            ..Options::default()
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

/// Whether `url` starts with one of `prefixes` (the first that matches).
pub fn matching<'a>(prefixes: &'a [String], url: &str) -> Option<&'a str> {
    prefixes.iter().map(String::as_str).find(|p| url.starts_with(p))
}

/// Why a network operation failed: worth another try or not.
#[derive(Debug)]
pub enum Failure {
    /// Down, timed out, a 5xx: tried again.
    Transient(String),
    /// A 4xx, a bad answer: not tried again.
    Permanent(String),
}

impl Failure {
    fn message(self) -> String {
        match self {
            Failure::Transient(m) | Failure::Permanent(m) => m,
        }
    }
}

fn classify(what: &str, e: ureq::Error) -> Failure {
    match e {
        ureq::Error::StatusCode(code) if code < 500 => Failure::Permanent(format!("{what}: answered {code}")),
        ureq::Error::StatusCode(code) => Failure::Transient(format!("{what}: answered {code}")),
        other => {
            Failure::Transient(format!("{what}: {}", slap::tls::describe_handshake_error(&other).unwrap_or_else(|| other.to_string())))
        }
    }
}

/// The HTTP clients of the cache: one for shacache, one for shadir, each
/// with its own TLS files (checked when built).
#[derive(Clone)]
pub struct Client {
    cache: ureq::Agent,
    dir: ureq::Agent,
    attempts: u32,
    delay: Duration,
}

fn agent(tls: &slap::tls::TlsFiles, side: &str) -> Result<ureq::Agent, String> {
    let tls = tls.config().map_err(|e| format!("{side} TLS files: {e}"))?;
    Ok(ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(60)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .user_agent(format!("slapos-rs/{} (networkcache)", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        .build()
        .into())
}

fn join(base: &str, name: &str) -> String {
    format!("{}/{name}", base.trim_end_matches('/'))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-512 of a file, streamed.
pub fn sha512_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(ctx.finish().as_ref()));
        }
        ctx.update(&buf[..n]);
    }
}

impl Client {
    /// The clients of `o` (its TLS files checked: a file that cannot be used
    /// is a one-line error naming it).
    pub fn new(o: &Options) -> Result<Client, String> {
        Ok(Client {
            cache: agent(&o.shacache_tls, "shacache")?,
            dir: agent(&o.shadir_tls, "shadir")?,
            attempts: o.attempts.max(1),
            delay: o.retry_delay,
        })
    }

    /// Runs `op` until it succeeds, fails for good or has been tried
    /// `attempts` times, waiting `delay`, then twice as long, … (at most
    /// 30 s) between tries.
    fn retry<T>(&self, what: &str, mut op: impl FnMut() -> Result<T, Failure>) -> Result<T, String> {
        let mut delay = self.delay;
        for attempt in 1..=self.attempts {
            match op() {
                Ok(v) => return Ok(v),
                Err(Failure::Transient(m)) if attempt < self.attempts => {
                    tracing::info!("{m} (try {attempt} of {}; next in {} ms)", self.attempts, delay.as_millis());
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                Err(Failure::Transient(m)) => return Err(format!("{m} (after {} tries)", self.attempts)),
                Err(f) => return Err(f.message()),
            }
        }
        Err(format!("{what}: not tried"))
    }

    /// The entries under `key` (at most 4 MiB of JSON), each a
    /// `[document, signature]` pair or why it is not one; None when the
    /// directory has no such key (404).
    pub fn select(&self, dir_url: &str, key: &str) -> Result<Option<Vec<Entry>>, String> {
        let what = format!("shadir {key}");
        let body = self.retry(&what, || {
            let mut resp = match self.dir.get(&join(dir_url, key)).call() {
                Ok(r) => r,
                Err(ureq::Error::StatusCode(404)) => return Ok(None),
                Err(e) => return Err(classify(&what, e)),
            };
            let body = resp.body_mut().with_config().limit(4 << 20).read_to_vec().map_err(|e| classify(&what, e))?;
            Ok(Some(body))
        })?;
        let Some(body) = body else { return Ok(None) };
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(&body).map_err(|e| format!("{what}: the answer is not a JSON list of entries ({e})"))?;
        Ok(Some(
            list.into_iter()
                .map(|v| serde_json::from_value::<(String, String)>(v).map_err(|_| "not a [document, signature] pair".into()))
                .collect(),
        ))
    }

    /// Downloads `<cache_url>/<sha512>` to `dest` (created again on each
    /// try), checking its SHA-512; progress in bytes. Its size.
    pub fn download(&self, cache_url: &str, sha512: &str, dest: &Path) -> Result<u64, String> {
        let what = format!("shacache {sha512}");
        self.retry(&what, || {
            let resp = self.cache.get(&join(cache_url, sha512)).call().map_err(|e| classify(&what, e))?;
            let total = resp.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let mut reader = resp.into_body().into_reader();
            let mut file = std::fs::File::create(dest).map_err(|e| Failure::Permanent(format!("{}: {e}", dest.display())))?;
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
            let mut buf = vec![0u8; 1 << 16];
            let mut progress = crate::progress::Bytes::start(&format!("downloading {}…", &sha512[..16]), total);
            loop {
                let n = reader.read(&mut buf).map_err(|e| Failure::Transient(format!("{what}: {e}")))?;
                if n == 0 {
                    break;
                }
                ctx.update(&buf[..n]);
                file.write_all(&buf[..n]).map_err(|e| Failure::Permanent(format!("{}: {e}", dest.display())))?;
                progress.add(n as u64);
            }
            let done = progress.finish();
            if hex(ctx.finish().as_ref()) != sha512 {
                return Err(Failure::Permanent(format!("{what}: the content does not match its SHA-512 (tampered or truncated)")));
            }
            Ok(done)
        })
    }

    /// Uploads `file` to `cache_url` (unless already there, streamed) and
    /// indexes it under `key` in `dir_url` with `metadata` plus its
    /// `sha512`, signed with `key_file` (an empty signature without one, as
    /// libnetworkcache does). Its SHA-512.
    pub fn upload(
        &self,
        cache_url: &str,
        dir_url: &str,
        key: &str,
        file: &Path,
        metadata: serde_json::Map<String, serde_json::Value>,
        key_file: Option<&Path>,
    ) -> Result<String, String> {
        let sum = sha512_file(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let what = "shacache upload";
        let present = self.cache.get(&join(cache_url, &sum)).call().is_ok();
        if !present {
            self.retry(what, || {
                let body = std::fs::File::open(file).map_err(|e| Failure::Permanent(format!("{}: {e}", file.display())))?;
                let mut resp = self
                    .cache
                    .post(cache_url)
                    .config()
                    .timeout_recv_response(Some(Duration::from_secs(3600)))
                    .build()
                    .header("Content-Type", "application/octet-stream")
                    .send(body)
                    .map_err(|e| classify(what, e))?;
                let answer = resp.body_mut().read_to_string().unwrap_or_default();
                if resp.status().as_u16() != 201 || answer.trim() != sum {
                    let answer: String = answer.chars().take(200).collect();
                    return Err(Failure::Permanent(format!("{what}: answered {} '{answer}'", resp.status())));
                }
                Ok(())
            })?;
        }
        let mut doc = metadata;
        doc.insert("sha512".into(), sum.clone().into());
        let document = serde_json::Value::Object(doc).to_string();
        let signature = match key_file {
            Some(k) => sign(k, &document)?,
            None => String::new(),
        };
        let entry = serde_json::json!([document, signature]).to_string();
        self.retry("shadir upload", || {
            self.dir
                .put(&join(dir_url, key))
                .header("Content-Type", "application/json")
                .send(entry.as_bytes())
                .map(|_| ())
                .map_err(|e| classify("shadir upload", e))
        })?;
        Ok(sum)
    }
}

/// One shadir entry: `(document, signature)`, or why it is not one.
pub type Entry = Result<(String, String), String>;

/// What one shadir entry is, and whether this node would use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `software_url` of its document.
    pub software_url: String,
    /// `multiarch` of its document.
    pub multiarch: String,
    /// `os` of its document.
    pub os: [String; 3],
    /// Its signature verifies against `signature-certificate-list`.
    pub signed: bool,
    /// Built for this machine's multiarch and OS.
    pub compatible: bool,
    /// Its tarball, when the document names a valid one.
    pub sha512: Option<String>,
    /// Why it would not be used (None: usable).
    pub why_not: Option<String>,
}

/// Examines one entry: signature, document, machine, in that order.
pub fn examine(entry: &Entry, certificates: &[String], here: &Machine) -> Verdict {
    let mut v = Verdict {
        software_url: String::new(),
        multiarch: String::new(),
        os: Default::default(),
        signed: false,
        compatible: false,
        sha512: None,
        why_not: None,
    };
    let (document, signature) = match entry {
        Ok(pair) => pair,
        Err(e) => {
            v.why_not = Some(e.clone());
            return v;
        }
    };
    v.signed = verify(certificates, document, signature);
    let doc: serde_json::Value = match serde_json::from_str(document) {
        Ok(d) => d,
        Err(e) => {
            v.why_not = Some(format!("its document is not JSON: {e}"));
            return v;
        }
    };
    let text = |k: &str| doc.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    v.software_url = text("software_url");
    v.multiarch = text("multiarch");
    let os: Vec<String> = match doc.get("os") {
        Some(serde_json::Value::Array(a)) => a.iter().map(|s| s.as_str().unwrap_or("").to_string()).collect(),
        // slapgrid's older entries: "machine" and the repr of a tuple
        Some(serde_json::Value::String(t)) if doc.get("multiarch").is_none() && text("machine") == "x86_64" => {
            v.multiarch = "x86_64-linux-gnu".into();
            python_tuple(t)
        }
        _ => Vec::new(),
    };
    v.os = os.try_into().unwrap_or_default();
    v.compatible = here.runs(&v.multiarch, &v.os);
    v.sha512 = Some(text("sha512")).filter(|s| s.len() == 128 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    v.why_not = if !v.signed {
        Some("its signature is not by a certificate of signature-certificate-list".into())
    } else if !v.compatible {
        Some(format!("it was built for {} on {}, this is {} on {}", v.multiarch, v.os.join(" "), here.multiarch, here.os.join(" ")))
    } else if v.sha512.is_none() {
        Some("it has no valid sha512".into())
    } else {
        None
    };
    v
}

/// The strings of a Python tuple's repr (`('debian', '12', '')`).
fn python_tuple(text: &str) -> Vec<String> {
    let inner = text.trim().trim_start_matches('(').trim_end_matches(')');
    inner.split(',').map(str::trim).filter(|p| !p.is_empty()).map(|p| p.trim_matches(|c| c == '\'' || c == '"').to_string()).collect()
}

/// The SHA-512 of the first usable entry for `url` under `key`, or why
/// there is none (each entry not used is logged, one line each).
pub fn lookup(client: &Client, o: &Options, url: &str, key: &str, here: &Machine) -> Result<String, String> {
    let dir_url = o.download_dir_url.as_deref().ok_or("no download-binary-dir-url")?;
    if let Some(b) = matching(&o.download_blacklist, url) {
        return Err(format!("{url} is blacklisted (download-from-binary-cache-url-blacklist: {b})"));
    }
    let entries = client.select(dir_url, key)?.ok_or_else(|| format!("no entry for {url} (shadir key {key})"))?;
    if entries.is_empty() {
        return Err(format!("no entry for {url} (shadir key {key})"));
    }
    for (i, e) in entries.iter().enumerate() {
        let v = examine(e, &o.signature_certificates, here);
        match (v.why_not, v.sha512) {
            (None, Some(sum)) => return Ok(sum),
            (why, _) => tracing::info!("binary cache entry {i} for {url} not used: {}", why.unwrap_or_default()),
        }
    }
    Err(format!("no usable entry among {} for {url}", entries.len()))
}

/// `node software`'s first step: installs `url` into its empty software
/// path `sp` (under `software_root`) from the cache, extracting the tarball
/// as the owner of the software root; false (with the reason logged in one
/// line) when the cache is not configured or has nothing usable.
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
/// download or extraction.
pub fn try_install(o: &Options, url: &str, software_root: &Path, sp: &Path) -> Result<u64, String> {
    let (Some(cache_url), Some(_)) = (o.download_cache_url.as_deref(), o.download_dir_url.as_deref()) else {
        return Err("download-binary-cache-url and download-binary-dir-url are not both set".into());
    };
    let key = sp.file_name().and_then(|n| n.to_str()).ok_or("no software path name")?;
    if sp.symlink_metadata().is_ok() {
        return Err(format!("{} already exists", sp.display()));
    }
    let client = Client::new(o)?;
    let sum = lookup(&client, o, url, key, &Machine::this())?;
    fetch_and_extract(&client, cache_url, &sum, software_root, key)
}

/// Downloads the tarball into `software_root/.cache-XXXX/`, extracts its
/// `key` directory there as the software user, renames it to
/// `software_root/key`; the temporary directory goes whatever happens.
fn fetch_and_extract(client: &Client, cache_url: &str, sum: &str, software_root: &Path, key: &str) -> Result<u64, String> {
    tracing::info!("Downloading {key} from the binary cache ({sum})");
    let tmp =
        tempfile::Builder::new().prefix(".cache-").tempdir_in(software_root).map_err(|e| format!("{}: {e}", software_root.display()))?;
    let tarball = tmp.path().join("software.tar.gz");
    let tree = tmp.path().join("tree");
    std::fs::create_dir(&tree).map_err(|e| format!("{}: {e}", tree.display()))?;
    let bytes = client.download(cache_url, sum, &tarball)?;
    // only the release's own directory, as the software user (never as root)
    give_to_owner(&[tmp.path(), &tarball, &tree], software_root)?;
    let args: Vec<String> =
        ["--no-same-owner", "--no-same-permissions", "-xzf", &tarball.display().to_string(), "-C", &tree.display().to_string(), "--", key]
            .map(String::from)
            .to_vec();
    let out = crate::process::run_as_owner_of(software_root, "tar", &args, tmp.path(), &[], Some(Duration::from_secs(3600)), |_| {})
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !out.success {
        return Err(format!("tar refused the tarball: {}", out.output.lines().last().unwrap_or("")));
    }
    let extracted = tree.join(key);
    if !extracted.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Err(format!("the tarball holds no directory {key}"));
    }
    // rename(2) does not replace a non-empty directory: a path created meanwhile stays
    std::fs::rename(&extracted, software_root.join(key)).map_err(|e| format!("cannot move the release into place: {e}"))?;
    Ok(bytes)
}

/// Gives `paths` to the owner of the software root (when root).
fn give_to_owner(paths: &[&Path], software_root: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let m = std::fs::metadata(software_root).map_err(|e| e.to_string())?;
    for p in paths {
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
    if let Some(b) = matching(&o.upload_blacklist, url) {
        tracing::info!("not uploading {url} to the binary cache: blacklisted (upload-to-binary-cache-url-blacklist: {b})");
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
        let client = Client::new(o)?;
        let tmp = tempfile::Builder::new().prefix(".cache-").tempdir_in(software_root).map_err(|e| e.to_string())?;
        let tarball = tmp.path().join("software.tar.gz");
        // packed as the software user: root never reads the release's files
        give_to_owner(&[tmp.path()], software_root)?;
        let args: Vec<String> =
            ["-czf", &tarball.display().to_string(), "-C", &software_root.display().to_string(), "--", key].map(String::from).to_vec();
        let out = crate::process::run_as_owner_of(software_root, "tar", &args, tmp.path(), &[], Some(Duration::from_secs(3600)), |_| {})
            .map_err(|e| format!("cannot run tar: {e}"))?;
        if !out.success {
            return Err(format!("tar failed: {}", out.output.lines().last().unwrap_or("")));
        }
        let here = Machine::this();
        let mut meta = serde_json::Map::new();
        meta.insert("software_url".into(), url.into());
        meta.insert("software_root".into(), software_root.display().to_string().into());
        meta.insert("multiarch".into(), here.multiarch.into());
        meta.insert("os".into(), serde_json::json!(here.os));
        client.upload(cache_url, dir_url, key, &tarball, meta, o.signature_private_key_file.as_deref())
    })();
    match result {
        Ok(sum) => tracing::info!("uploaded {url} to the binary cache ({sum})"),
        Err(why) => tracing::warn!("could not upload {url} to the binary cache: {why}"),
    }
}

/// The lowercase hex md5 of `s`: the shadir key of a release URL, and of a
/// source URL after `file-urlmd5:`.
pub fn md5_hex(s: &str) -> String {
    use md5::Digest;
    format!("{:x}", md5::Md5::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_slapgrid_entries_with_machine_and_a_tuple_repr_are_read() {
        let here = Machine { multiarch: "x86_64-linux-gnu".into(), os: ["debian".into(), "12".into(), "bookworm".into()] };
        let doc = serde_json::json!({"machine": "x86_64", "os": "('debian', '12.5', '')", "sha512": "a".repeat(128)}).to_string();
        let v = examine(&Ok((doc, String::new())), &[], &here);
        assert_eq!((v.multiarch.as_str(), v.os.clone()), ("x86_64-linux-gnu", ["debian".to_string(), "12.5".into(), "".into()]));
        assert!(v.compatible);
        assert_eq!(v.why_not.as_deref(), Some("its signature is not by a certificate of signature-certificate-list"));
        assert_eq!(python_tuple("('ubuntu', '22.04', 'jammy')"), ["ubuntu", "22.04", "jammy"]);
    }
}
