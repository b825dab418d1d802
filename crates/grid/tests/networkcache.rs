//! The node's binary cache against the master's `/shacache`: a release
//! packed, signed and uploaded is installed back from the cache; an entry
//! signed by a key the node does not trust, a blacklisted URL or an entry
//! built for another architecture, a tampered or broken tarball, a cache that
//! is down or answers garbage: each is refused with its reason, and nothing
//! is left behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use slapos_grid::networkcache::{self, Client, Machine, Options};
use slapos_proxy::{start_background, Background, ProxyConfig};

const URL: &str = "http://sr.example/software.cfg";

fn md5_hex(s: &str) -> String {
    let out = Command::new("md5sum").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    let mut out = out;
    out.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    String::from_utf8(out.wait_with_output().unwrap().stdout).unwrap()[..32].to_string()
}

/// A self-signed RSA key pair: (key file, certificate PEM).
fn key_pair(dir: &Path, name: &str) -> (PathBuf, String) {
    let (k, c) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.crt")));
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", &format!("/CN={name}")])
        .arg("-keyout")
        .arg(&k)
        .arg("-out")
        .arg(&c)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl req failed");
    (k, std::fs::read_to_string(c).unwrap())
}

struct Site {
    dir: tempfile::TempDir,
    _master: Background,
    options: Options,
    root: PathBuf,
    other_cert: String,
}

fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let config = ProxyConfig {
        computer_id: "COMP-1".into(),
        database: slapos_proxy::Database::sqlite(dir.path().join("proxy.db")),
        shacache: Some(slapos_proxy::shacache::Options::under(dir.path())),
        ..Default::default()
    };
    let master = start_background(&config).unwrap();
    let (key, cert) = key_pair(dir.path(), "signer");
    let (_, other_cert) = key_pair(dir.path(), "other");
    let base = format!("{}/shacache", master.url());
    let options = Options {
        download_cache_url: Some(format!("{base}/cache")),
        download_dir_url: Some(format!("{base}/dir")),
        upload_cache_url: Some(format!("{base}/cache")),
        upload_dir_url: Some(format!("{base}/dir")),
        signature_private_key_file: Some(key),
        signature_certificates: vec![cert],
        retry_delay: std::time::Duration::from_millis(10),
        ..Options::default()
    };
    let root = dir.path().join("soft");
    std::fs::create_dir(&root).unwrap();
    if nix::unistd::geteuid().is_root() {
        // the node never runs tar as root: the software root is nobody's here
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
    }
    Site { dir, _master: master, options, root, other_cert }
}

impl Site {
    fn sp(&self) -> PathBuf {
        self.root.join(md5_hex(URL))
    }

    /// "Builds" the release and uploads it, then empties the software root.
    fn build_and_upload(&self) {
        let sp = self.sp();
        std::fs::create_dir_all(sp.join("bin")).unwrap();
        std::fs::write(sp.join("bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
        std::fs::write(sp.join("buildout.cfg"), "[buildout]\n").unwrap();
        networkcache::upload_built(&self.options, URL, &self.root, &sp);
        std::fs::remove_dir_all(&sp).unwrap();
    }

    fn lookup(&self, here: &Machine) -> Result<String, String> {
        networkcache::lookup(&Client::new(&self.options).unwrap(), &self.options, URL, &md5_hex(URL), here)
    }

    fn content_dir(&self) -> PathBuf {
        self.dir.path().join("shacache")
    }

    fn root_entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }
}

#[test]
fn a_release_uploaded_is_installed_from_the_cache() {
    let s = site();
    s.build_and_upload();
    networkcache::try_install(&s.options, URL, &s.root, &s.sp()).unwrap();
    assert_eq!(std::fs::read_to_string(s.sp().join("bin/hello")).unwrap(), "#!/bin/sh\necho hello\n");
    assert_eq!(s.root_entries(), vec![md5_hex(URL)], "temporary files left behind");
    // an installed release is never overwritten
    assert!(!networkcache::install_from_cache(&s.options, URL, &s.root, &s.sp()));
    let _ = &s.dir;
}

#[test]
fn an_entry_signed_by_an_untrusted_key_is_not_used() {
    let mut s = site();
    s.build_and_upload();
    s.options.signature_certificates = vec![s.other_cert.clone()];
    let err = s.lookup(&Machine::this()).unwrap_err();
    assert!(err.contains("no usable entry among 1"), "{err}");
    assert!(!networkcache::install_from_cache(&s.options, URL, &s.root, &s.sp()));
    assert!(s.root_entries().is_empty(), "{:?}", s.root_entries());
}

#[test]
fn a_blacklisted_url_is_not_downloaded() {
    let mut s = site();
    s.build_and_upload();
    s.options.download_blacklist = vec!["http://sr.example/".into()];
    let err = s.lookup(&Machine::this()).unwrap_err();
    assert!(err.contains("blacklisted"), "{err}");
    assert!(!networkcache::install_from_cache(&s.options, URL, &s.root, &s.sp()));
}

#[test]
fn an_entry_for_another_architecture_or_os_is_not_used() {
    let s = site();
    s.build_and_upload();
    let here = Machine::this();
    let elsewhere = Machine { multiarch: "sparc64-linux-gnu".into(), ..here.clone() };
    assert!(s.lookup(&elsewhere).is_err());
    let other_os = Machine { os: ["debian".into(), "3.1".into(), String::new()], ..here.clone() };
    if here.os[0] != "debian" || !here.os[1].starts_with('3') {
        assert!(s.lookup(&other_os).is_err());
    }
    assert!(s.lookup(&here).is_ok());
}

#[test]
fn debian_minor_versions_match_and_others_must_be_equal() {
    let m = |id: &str, v: &str, c: &str| Machine { multiarch: "x86_64-linux-gnu".into(), os: [id.into(), v.into(), c.into()] };
    assert!(m("debian", "12.4", "bookworm").runs("x86_64-linux-gnu", &["Debian".into(), "12".into(), "".into()]));
    assert!(!m("debian", "12", "").runs("x86_64-linux-gnu", &["debian".into(), "11".into(), "".into()]));
    assert!(!m("ubuntu", "22.04", "jammy").runs("x86_64-linux-gnu", &["ubuntu".into(), "22.10".into(), "kinetic".into()]));
    assert!(!m("debian", "12", "").runs("aarch64-linux-gnu", &["debian".into(), "12".into(), "".into()]));
    let os = networkcache::os_release("PRETTY_NAME=\"Debian GNU/Linux 12\"\nID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n");
    assert_eq!(os, ["debian".to_string(), "12".into(), "bookworm".into()]);
}

const PYTHON_PEER: &str = r#"
import io, json, sys
from slapos.libnetworkcache import NetworkcacheClient
mode, cache, dir_, key, keyfile, certfile, meta = sys.argv[1:8]
cert = open(certfile).read()
nc = NetworkcacheClient(cache, dir_, signature_private_key_file=keyfile, signature_certificate_list=[cert])
if mode == "upload":
    print(nc.upload(io.BytesIO(b"not a tarball"), key, **json.loads(meta)))
else:
    print(len(list(nc.select(key))))
"#;

/// The project's venv (`$SLAPOS_VENV`), with slapos.libnetworkcache.
fn venv_python() -> PathBuf {
    let venv = std::env::var("SLAPOS_VENV").unwrap_or_else(|_| "/var/cache/slapos-e2e/venv-1.26.1".into());
    let py = Path::new(&venv).join("bin/python3");
    assert!(py.exists(), "needs the venv: {} is missing (set SLAPOS_VENV)", py.display());
    py
}

#[test]
#[ignore = "needs the venv"]
fn needs_venv_entries_signed_by_the_python_library_and_by_ours_verify_both_ways() {
    let python = venv_python();
    let s = site();
    let (key_file, cert) = key_pair(s.dir.path(), "both");
    let cert_file = s.dir.path().join("both.crt");
    let here = Machine::this();
    let meta = serde_json::json!({"software_url": URL, "multiarch": here.multiarch, "os": here.os}).to_string();
    let o = Options { signature_private_key_file: Some(key_file.clone()), signature_certificates: vec![cert], ..s.options.clone() };
    let peer = |mode: &str, key: &str| {
        let out = Command::new(&python)
            .args(["-c", PYTHON_PEER, mode, o.upload_cache_url.as_deref().unwrap(), o.upload_dir_url.as_deref().unwrap(), key])
            .arg(&key_file)
            .arg(&cert_file)
            .arg(&meta)
            .output()
            .unwrap();
        assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    // theirs → ours
    peer("upload", "python-key");
    networkcache::lookup(&Client::new(&o).unwrap(), &o, URL, "python-key", &here).unwrap();
    // ours → theirs
    let tarball = s.dir.path().join("t.tar.gz");
    std::fs::write(&tarball, b"ours").unwrap();
    let meta_map = serde_json::from_str(&meta).unwrap();
    Client::new(&o)
        .unwrap()
        .upload(
            o.upload_cache_url.as_deref().unwrap(),
            o.upload_dir_url.as_deref().unwrap(),
            "rust-key",
            &tarball,
            meta_map,
            Some(&key_file),
        )
        .unwrap();
    assert_eq!(peer("select", "rust-key"), "1");
}

/// The only tarball of the master's content directory.
fn the_tarball(s: &Site) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(s.content_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[test]
fn a_tampered_tarball_is_refused_and_nothing_is_left() {
    let s = site();
    s.build_and_upload();
    std::fs::write(the_tarball(&s), b"not what was signed").unwrap();
    let err = networkcache::try_install(&s.options, URL, &s.root, &s.sp()).unwrap_err();
    assert!(err.contains("does not match its SHA-512"), "{err}");
    assert!(s.root_entries().is_empty(), "{:?}", s.root_entries());
}

#[test]
fn a_broken_tarball_leaves_nothing_half_extracted() {
    let s = site();
    // a signed entry whose tarball stops in the middle of its second file
    let key = md5_hex(URL);
    let src = s.dir.path().join("src");
    std::fs::create_dir_all(src.join(&key)).unwrap();
    let noise: Vec<u8> = (0..400_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(src.join(&key).join("a"), &noise).unwrap();
    std::fs::write(src.join(&key).join("b"), &noise).unwrap();
    let tarball = s.dir.path().join("broken.tar.gz");
    assert!(Command::new("tar").arg("-czf").arg(&tarball).arg("-C").arg(&src).arg(&key).status().unwrap().success());
    let whole = std::fs::read(&tarball).unwrap();
    std::fs::write(&tarball, &whole[..whole.len() * 3 / 4]).unwrap();
    let here = Machine::this();
    let meta = serde_json::json!({"software_url": URL, "multiarch": here.multiarch, "os": here.os});
    let o = &s.options;
    Client::new(o)
        .unwrap()
        .upload(
            o.upload_cache_url.as_deref().unwrap(),
            o.upload_dir_url.as_deref().unwrap(),
            &key,
            &tarball,
            meta.as_object().unwrap().clone(),
            o.signature_private_key_file.as_deref(),
        )
        .unwrap();
    let err = networkcache::try_install(o, URL, &s.root, &s.sp()).unwrap_err();
    assert!(err.contains("tar refused the tarball"), "{err}");
    assert!(s.root_entries().is_empty(), "half-extracted: {:?}", s.root_entries());
}

#[test]
fn a_cache_that_is_down_is_tried_a_few_times_then_skipped() {
    let s = site();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = format!("http://127.0.0.1:{port}/shacache");
    let o =
        Options { download_cache_url: Some(format!("{down}/cache")), download_dir_url: Some(format!("{down}/dir")), ..s.options.clone() };
    let err = networkcache::lookup(&Client::new(&o).unwrap(), &o, URL, &md5_hex(URL), &Machine::this()).unwrap_err();
    assert!(err.contains("after 3 tries"), "{err}");
    assert!(!networkcache::install_from_cache(&o, URL, &s.root, &s.sp()));
    assert!(s.root_entries().is_empty());
}

#[test]
fn a_cache_answering_garbage_or_errors_is_skipped() {
    let s = site();
    let garbage = test_support::canned(200, "<html><body>Welcome to nginx!</body></html>");
    let o = Options { download_dir_url: Some(garbage.url.clone()), ..s.options.clone() };
    let err = networkcache::lookup(&Client::new(&o).unwrap(), &o, URL, &md5_hex(URL), &Machine::this()).unwrap_err();
    assert!(err.contains("not a JSON list"), "{err}");
    let wrong_shape = test_support::canned(200, r#"[1, ["a"], {"x": 2}]"#);
    let o = Options { download_dir_url: Some(wrong_shape.url.clone()), ..s.options.clone() };
    let err = networkcache::lookup(&Client::new(&o).unwrap(), &o, URL, &md5_hex(URL), &Machine::this()).unwrap_err();
    assert!(err.contains("no usable entry among 3"), "{err}");
    let failing = test_support::canned(503, "busy");
    let o = Options { download_dir_url: Some(failing.url.clone()), ..s.options.clone() };
    let err = networkcache::lookup(&Client::new(&o).unwrap(), &o, URL, &md5_hex(URL), &Machine::this()).unwrap_err();
    assert!(err.contains("answered 503 (after 3 tries)"), "{err}");
    assert_eq!(failing.received.lock().unwrap().len(), 3, "a 5xx is tried exactly 3 times");
    assert!(!networkcache::install_from_cache(&o, URL, &s.root, &s.sp()));
    assert!(s.root_entries().is_empty());
}

#[test]
fn a_missing_entry_is_not_retried() {
    let s = site();
    let err = s.lookup(&Machine::this()).unwrap_err();
    assert!(err.contains("no entry for"), "{err}");
}

#[test]
fn the_options_have_slapos_names_and_tls_files_are_checked() {
    let text = "[networkcache]\ndownload-binary-cache-url = https://c/cache\ndownload-binary-dir-url = https://c/dir\n\
        download-from-binary-cache-url-blacklist =\n  http://a/\n  http://b/\n\
        upload-to-binary-cache-url-blacklist = http://u/\n\
        download-from-binary-cache-force-url-list = https://forced/\n\
        shacache-ca-file = /nonexistent/ca.pem\nshadir-cert-file = /c.pem\nshadir-key-file = /k.pem\n";
    let o = Options::from_config(&slapos_config::Config::parse(text).unwrap()).unwrap();
    assert_eq!(o.download_blacklist, vec!["http://a/".to_string(), "http://b/".into()]);
    assert_eq!(o.upload_blacklist, vec!["http://u/".to_string()]);
    assert_eq!(o.force_list, vec!["https://forced/".to_string()]);
    assert_eq!(networkcache::matching(&o.force_list, "https://forced/sr.cfg"), Some("https://forced/"));
    assert_eq!(o.shacache_tls.ca_file.as_deref(), Some(Path::new("/nonexistent/ca.pem")));
    assert_eq!(o.shadir_tls.key_file.as_deref(), Some(Path::new("/k.pem")));
    let err = Client::new(&o).err().unwrap();
    assert!(err.starts_with("shacache TLS files:") && err.contains("/nonexistent/ca.pem") && !err.contains('\n'), "{err}");
    // the older name of the download blacklist
    let old = "[networkcache]\nbinary-cache-url-blacklist = http://old/\n";
    assert_eq!(
        Options::from_config(&slapos_config::Config::parse(old).unwrap()).unwrap().download_blacklist,
        vec!["http://old/".to_string()]
    );
}

#[test]
fn the_cache_is_reached_over_tls_with_the_shacache_and_shadir_files() {
    let mut s = site();
    let pki = test_support::tls::Pki::new("cache");
    let (cert, key) = pki.client("computer");
    let backend: std::net::SocketAddr = s._master.url().trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
    let server = test_support::tls::serve(pki.server_config(&["127.0.0.1"], true), test_support::tls::Backend::Forward(backend));
    let base = format!("{}/shacache", server.url);
    let files = slap::tls::TlsFiles { ca_file: Some(pki.ca_file.clone()), cert_file: Some(cert), key_file: Some(key) };
    s.options = Options {
        download_cache_url: Some(format!("{base}/cache")),
        download_dir_url: Some(format!("{base}/dir")),
        upload_cache_url: Some(format!("{base}/cache")),
        upload_dir_url: Some(format!("{base}/dir")),
        shacache_tls: files.clone(),
        shadir_tls: files,
        ..s.options.clone()
    };
    s.build_and_upload();
    networkcache::try_install(&s.options, URL, &s.root, &s.sp()).unwrap();
    assert!(s.sp().join("bin/hello").is_file());
    assert!(server.answered.load(std::sync::atomic::Ordering::SeqCst) >= 4, "not through the TLS server");
    // without the CA, the server is not trusted: one line that says so
    std::fs::remove_dir_all(s.sp()).unwrap();
    s.options.shadir_tls.ca_file = None;
    let err = networkcache::try_install(&s.options, URL, &s.root, &s.sp()).unwrap_err();
    assert!(!err.contains('\n') && err.contains("shadir"), "{err}");
    assert!(s.root_entries().is_empty());
}

#[test]
fn a_tarball_with_members_outside_its_release_writes_nothing_outside() {
    let s = site();
    let key = md5_hex(URL);
    let tarball = s.dir.path().join("hostile.tar.gz");
    let gz = flate2::write::GzEncoder::new(std::fs::File::create(&tarball).unwrap(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    let absolute = format!("/tmp/absolute-{key}");
    for name in [format!("{key}/bin/ok"), format!("{key}/../../escaped"), absolute.clone(), "other/x".into()] {
        // the raw name: the tar crate refuses to write `..` through set_path
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(1);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, &b"x"[..]).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
    let listing = Command::new("tar").arg("-tzf").arg(&tarball).output().unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("/../../escaped"), "the hostile member is not in the tarball");
    let here = Machine::this();
    let meta = serde_json::json!({"software_url": URL, "multiarch": here.multiarch, "os": here.os});
    let o = &s.options;
    let (cache, dir) = (o.upload_cache_url.as_deref().unwrap(), o.upload_dir_url.as_deref().unwrap());
    Client::new(o)
        .unwrap()
        .upload(cache, dir, &key, &tarball, meta.as_object().unwrap().clone(), o.signature_private_key_file.as_deref())
        .unwrap();
    let result = networkcache::try_install(o, URL, &s.root, &s.sp());
    assert!(!s.dir.path().join("escaped").exists() && !s.root.join("escaped").exists(), "a member escaped the release: {result:?}");
    assert!(!Path::new(&absolute).exists(), "an absolute member was written: {result:?}");
    assert!(!s.root.join("other").exists());
    match result {
        Ok(_) => assert_eq!(s.root_entries(), vec![key]),
        Err(_) => assert!(s.root_entries().is_empty(), "{:?}", s.root_entries()),
    }
}
