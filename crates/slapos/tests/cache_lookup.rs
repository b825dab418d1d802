//! `slapos cache lookup binary-sr` (and SlapOS's `slapos cachelookup
//! binary-sr`): the entries the cache holds for a release and why this node
//! would or would not use each, from the node's `[networkcache]`.

use std::path::Path;
use std::process::Command;

use slapos_grid::networkcache::{md5_hex, Client, Machine, Options};
use slapos_proxy::{start_background, ProxyConfig};

const OURS: &str = env!("CARGO_BIN_EXE_slapos");
const URL: &str = "http://sr.example/lookup/software.cfg";

fn key_pair(dir: &Path, name: &str) -> String {
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", &format!("/CN={name}")])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.crt")))
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl req failed");
    std::fs::read_to_string(dir.join(format!("{name}.crt"))).unwrap()
}

fn slapos(cfg: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(OURS).args(args).arg("--cfg").arg(cfg).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn lookup_shows_each_entry_and_why_this_node_would_not_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = ProxyConfig {
        computer_id: "COMP-1".into(),
        database: slapos_proxy::Database::sqlite(dir.path().join("proxy.db")),
        shacache: Some(slapos_proxy::shacache::Options::under(dir.path())),
        ..Default::default()
    };
    let master = start_background(&config).unwrap();
    let base = format!("{}/shacache", master.url());
    let cert = key_pair(dir.path(), "signer");
    let o = Options {
        upload_cache_url: Some(format!("{base}/cache")),
        upload_dir_url: Some(format!("{base}/dir")),
        signature_certificates: vec![cert.clone()],
        ..Options::default()
    };
    let client = Client::new(&o).unwrap();
    let tarball = dir.path().join("t.tar.gz");
    let here = Machine::this();
    for (arch, content) in [(here.multiarch.as_str(), "here"), ("sparc64-linux-gnu", "sparc")] {
        std::fs::write(&tarball, content).unwrap();
        let meta = serde_json::json!({"software_url": URL, "software_root": "/opt/slapgrid", "multiarch": arch, "os": here.os});
        let (cache, dir_url) = (o.upload_cache_url.as_deref().unwrap(), o.upload_dir_url.as_deref().unwrap());
        client
            .upload(cache, dir_url, &md5_hex(URL), &tarball, meta.as_object().unwrap().clone(), Some(&dir.path().join("signer.key")))
            .unwrap();
    }
    let cert_lines = cert.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n");
    let cfg = dir.path().join("slapos.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[slapos]\nsoftware_root = /opt/slapgrid\n[networkcache]\ndownload-binary-cache-url = {base}/cache\n\
             download-binary-dir-url = {base}/dir\nsignature-certificate-list =\n{cert_lines}\n"
        ),
    )
    .unwrap();
    let (code, out) = slapos(&cfg, &["cache", "lookup", "binary-sr", URL]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&md5_hex(URL)) && out.contains("sparc64-linux-gnu"), "{out}");
    let sparc = out.lines().find(|l| l.contains("sparc64")).unwrap();
    assert!(sparc.contains("no: it was built for sparc64-linux-gnu"), "{out}");
    let ours = out.lines().find(|l| l.contains(&here.multiarch) && !l.contains("This machine")).unwrap();
    let words: Vec<&str> = ours.split_whitespace().filter(|w| *w != "|").collect();
    assert_eq!(words[words.len() - 3..], ["yes", "yes", "yes"], "compatible, verified, used: {out}");
    // blacklisted: no entry is used, and it says so
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("download-from-binary-cache-url-blacklist = http://sr.example/lookup/\n");
    std::fs::write(&cfg, text).unwrap();
    let (_, out) = slapos(&cfg, &["cache", "lookup", "binary-sr", URL]);
    assert!(out.contains("never downloads") && out.contains("download-from-binary-cache-url-blacklist"), "{out}");
    let ours = out.lines().find(|l| l.contains(&here.multiarch) && !l.contains("This machine")).unwrap();
    assert!(ours.contains("no: the URL is blacklisted (http://sr.example/lookup/)"), "{out}");
    // SlapOS's spelling, by md5; another key is not found: exit 1
    let (code, out) = slapos(&cfg, &["cachelookup", "binary-sr", &md5_hex(URL)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("sparc64-linux-gnu"), "{out}");
    let (code, out) = slapos(&cfg, &["cachelookup", "binary-sr", "http://elsewhere/software.cfg"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not found in binary cache"), "{out}");
    // a key nobody trusts: signed no
    std::fs::write(&cfg, format!("[networkcache]\ndownload-binary-cache-url = {base}/cache\ndownload-binary-dir-url = {base}/dir\n"))
        .unwrap();
    let (_, out) = slapos(&cfg, &["cache", "lookup", "binary-sr", URL]);
    assert!(out.contains("no: its signature is not by a certificate"), "{out}");
    // the download cache: a source URL and a Python package, signed
    let source = "http://example.org/src/foo-1.0.tar.gz";
    for (key, name, value) in
        [(format!("file-urlmd5:{}", md5_hex(source)), "url", source), ("pypi:foo=1.0".to_string(), "basename", "foo-1.0.tar.gz")]
    {
        let meta = serde_json::json!({ name: value });
        let (cache, dir_url) = (o.upload_cache_url.as_deref().unwrap(), o.upload_dir_url.as_deref().unwrap());
        client.upload(cache, dir_url, &key, &tarball, meta.as_object().unwrap().clone(), Some(&dir.path().join("signer.key"))).unwrap();
    }
    std::fs::write(&cfg, format!("[networkcache]\ndownload-dir-url = {base}/dir\nsignature-certificate-list =\n{cert_lines}\n")).unwrap();
    let (code, out) = slapos(&cfg, &["cachelookup", "url", source]);
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().any(|l| l.contains(source) && l.contains("true")), "{out}");
    let (code, out) = slapos(&cfg, &["cache", "lookup", "pypi", "foo", "1.0"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().any(|l| l.contains("foo-1.0.tar.gz") && l.contains("true")), "{out}");
    assert_eq!(slapos(&cfg, &["cache", "lookup", "pypi", "foo", "2.0"]).0, 1);
}
