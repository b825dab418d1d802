//! Our master and the Python proxy (slapos.core 1.26.1) side by side, on what
//! issue 14 asked to match: status lines, endpoints that read no field, the
//! frontend bypass over https, the `/http_proxy/` relay, multimaster
//! forwarding (the Python proxy as the other master) and the local software
//! release root. Each test records what the Python proxy answers and checks
//! that ours answers the same. Every test needs the venv (`needs_venv`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use slap::client::{ClientConfig, SlapClient};
use slap::marshal::Value;
use slapos_config::Config;
use slapos_proxy::{start_background, Background, ProxyConfig};

fn venv() -> PathBuf {
    let v = PathBuf::from(std::env::var_os("SLAPOS_VENV").unwrap_or_else(|| "/var/cache/slapos-e2e/venv-1.26.1".into()));
    assert!(v.join("bin/slapos").exists(), "needs the venv: no slapos in {} (set SLAPOS_VENV)", v.display());
    v
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The configuration of a master on `port` with `extra` sections/options.
fn cfg_text(dir: &Path, port: u16, computer: &str, slapproxy_extra: &str, extra: &str) -> String {
    format!(
        "[slapos]\ncomputer_id = {computer}\n\n[slapproxy]\nhost = 127.0.0.1\nport = {port}\ndatabase_uri = {}\n{slapproxy_extra}\n{extra}\n",
        dir.join("proxy.db").display()
    )
}

/// The Python proxy, killed by its pid when dropped.
struct Python {
    url: String,
    child: Child,
}

impl Python {
    fn start(dir: &Path, cfg: &str) -> Python {
        let port: u16 = cfg.lines().find_map(|l| l.strip_prefix("port = ")).unwrap().parse().unwrap();
        let path = dir.join("python.cfg");
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(dir.join("python.log")).unwrap();
        let mut child = Command::new(venv().join("bin/slapos"))
            .args(["proxy", "start", "--cfg"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "{}", std::fs::read_to_string(dir.join("python.log")).unwrap());
            assert!(Instant::now() < deadline, "the Python proxy did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Python { url: format!("http://127.0.0.1:{port}"), child }
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ours(cfg: &str) -> Background {
    let config = ProxyConfig::from_config(&Config::parse(cfg).unwrap()).unwrap();
    start_background(&config).unwrap()
}

/// One raw HTTP/1.1 exchange: (status line, headers, body).
fn exchange(base: &str, method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> (String, Vec<(String, String)>, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    if !body.is_empty() {
        head.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    write!(s, "{head}\r\n{body}").unwrap();
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut hs = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        hs.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    (status.trim_end().to_string(), hs, String::from_utf8_lossy(&rest).into_owned())
}

fn form(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish()
}

fn s(v: &str) -> Value {
    Value::str(v)
}

fn format_report(computer: &str) -> Value {
    let partitions = (0..2)
        .map(|i| {
            Value::Dict(BTreeMap::from([
                ("reference".to_string(), s(&format!("slappart{i}"))),
                ("tap".to_string(), Value::Dict(BTreeMap::from([("name".to_string(), s(&format!("slaptap{i}")))]))),
                (
                    "address_list".to_string(),
                    Value::List(vec![Value::Dict(BTreeMap::from([
                        ("addr".to_string(), s(&format!("10.0.0.{}", i + 2))),
                        ("netmask".to_string(), s("255.255.255.0")),
                    ]))]),
                ),
            ]))
        })
        .collect();
    Value::Dict(BTreeMap::from([
        ("reference".to_string(), s(computer)),
        ("address".to_string(), s("10.0.0.1")),
        ("netmask".to_string(), s("255.255.255.0")),
        ("partition_list".to_string(), Value::List(partitions)),
    ]))
}

/// `timestamp` values vary from run to run.
fn normalise(body: &str) -> String {
    let key = "<string>timestamp</string><string>";
    let mut out = String::new();
    let mut rest = body;
    while let Some(i) = rest.find(key) {
        out.push_str(&rest[..i + key.len()]);
        rest = &rest[i + key.len()..];
        rest = &rest[rest.find('<').unwrap_or(rest.len())..];
        out.push('T');
    }
    out.push_str(rest);
    out
}

#[test]
#[ignore = "needs the venv"]
fn needs_venv_status_lines_and_field_reading_match_python() {
    let (pd, od) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let py = Python::start(pd.path(), &cfg_text(pd.path(), free_port(), "COMP-1", "", ""));
    let us = ours(&cfg_text(od.path(), 0, "COMP-1", "", ""));
    let supply = form(&[("url", "http://sr"), ("computer_id", "COMP-1"), ("state", "available")]);
    let cases: &[(&str, &str, &str)] = &[
        ("GET", "/nope", ""),
        ("GET", "/requestComputerPartition", ""),
        ("POST", "/supplySupply", ""),
        ("POST", "/supplySupply?url=http://sr&computer_id=COMP-1&state=available", ""),
        ("POST", "/supplySupply", &supply),
        ("POST", "/computerBang", ""),
        ("POST", "/computerBang?computer_id=COMP-1&message=m", ""),
        ("POST", "/useComputer", ""),
        ("POST", "/buildingSoftwareRelease", ""),
        ("POST", "/softwareInstanceError?computer_id=COMP-1&computer_partition_id=p", ""),
        ("POST", "/startedComputerPartition", ""),
        ("POST", "/softwareInstanceBang", ""),
        ("POST", "/destroyedSoftwareRelease", ""),
        ("GET", "/getFullComputerInformation", ""),
        ("GET", "/getFullComputerInformation?computer_id=COMP-1", ""),
        ("GET", "/getComputerPartitionStatus", ""),
    ];
    let mut recorded = Vec::new();
    for (method, target, body) in cases {
        let (p_status, _, p_body) = exchange(&py.url, method, target, &[], body);
        let (o_status, _, o_body) = exchange(&us.url(), method, target, &[], body);
        recorded.push(format!("{method} {target} → {p_status}"));
        assert_eq!(o_status, p_status, "{method} {target}: ours {o_status}, Python {p_status}");
        if p_status.contains(" 200 ") {
            assert_eq!(o_body, p_body, "{method} {target}");
        }
    }
    eprintln!("the Python proxy answers:\n{}", recorded.join("\n"));
}

#[test]
#[ignore = "needs the venv"]
fn needs_venv_frontend_bypass_over_https_matches_python() {
    let (pd, od) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let py = Python::start(pd.path(), &cfg_text(pd.path(), free_port(), "COMP-1", "", ""));
    let us = ours(&cfg_text(od.path(), 0, "COMP-1", "", ""));
    let url = "http://[2001:db8::2]:8080/app dir/x?y=1#top";
    let params = slap::marshal::encode(&Value::Dict(BTreeMap::from([("url".to_string(), s(url))]))).unwrap();
    let body = form(&[
        ("software_release", "http://git.erp5.org/gitweb/slapos.git/blob_plain/HEAD:/software/apache-frontend/software.cfg"),
        ("partition_reference", "front"),
        ("partition_parameter_xml", &params),
        ("filter_xml", "<marshal><dictionary id=\"i2\"/></marshal>"),
        ("software_type", "default"),
        ("state", "<marshal><none/></marshal>"),
        ("shared_xml", "<marshal><bool>1</bool></marshal>"),
    ]);
    let secure = [("Host", "proxy.example:8443"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Prefix", "/slap/")];
    let default_port = [("Host", "proxy.example:443"), ("X-Forwarded-Proto", "https")];
    for headers in [&secure[..], &default_port[..], &[][..]] {
        let (ps, _, pb) = exchange(&py.url, "POST", "/requestComputerPartition", headers, &body);
        let (os, _, ob) = exchange(&us.url(), "POST", "/requestComputerPartition", headers, &body);
        assert_eq!(os, ps);
        assert_eq!(ob, pb, "headers {headers:?}");
        eprintln!("Python with {headers:?}: {pb}");
    }
    let (_, _, pb) = exchange(&py.url, "POST", "/requestComputerPartition", &secure, &body);
    assert!(pb.contains("https://proxy.example:8443/slap/http_proxy/http/%5B2001:db8::2%5D:8080/app%20dir/x?y=1#top"), "{pb}");
}

/// A loopback web server for the relay: `/ok`, `/boom` (500), `/moved`
/// (302 to `/ok`), `/slow` (answers after 7 s), `/big` (3 MB).
fn upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let mut agent = String::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if h.to_ascii_lowercase().starts_with("x-secret") {
                        agent.push_str("leaked ");
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, extra, body) = match path.as_str() {
                    p if p.starts_with("/ok") => {
                        ("200 OK", "Content-Type: text/html\r\nETag: \"e1\"\r\nX-Internal: 1\r\n", format!("hello {agent}{p}"))
                    }
                    "/boom" => ("500 Internal Server Error", "", "boom".to_string()),
                    "/moved" => ("302 Found", "Location: /ok?from=moved\r\n", String::new()),
                    "/slow" => {
                        std::thread::sleep(Duration::from_secs(7));
                        ("200 OK", "", "late".to_string())
                    }
                    _ => ("404 Not Found", "", "no".to_string()),
                };
                let mut s = stream;
                let _ = write!(s, "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            });
        }
    });
    url
}

#[test]
#[ignore = "needs the venv"]
fn needs_venv_http_proxy_relay_matches_python() {
    let (pd, od) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let py = Python::start(pd.path(), &cfg_text(pd.path(), free_port(), "COMP-1", "", ""));
    let us = ours(&cfg_text(od.path(), 0, "COMP-1", "", ""));
    let up = upstream();
    let closed = format!("127.0.0.1:{}", free_port());
    // a server answering plain HTTP at once, whatever comes: a TLS error for https
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let not_tls = plain.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut stream in plain.incoming().flatten() {
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let targets = [
        ("GET", format!("/http_proxy/http/{up}/ok?q=1")),
        ("HEAD", format!("/http_proxy/http/{up}/ok")),
        ("OPTIONS", format!("/http_proxy/http/{up}/ok")),
        ("POST", format!("/http_proxy/http/{up}/ok")),
        ("GET", format!("/http_proxy/http/{up}/boom")),
        ("GET", format!("/http_proxy/http/{up}/moved")),
        ("GET", format!("/http_proxy/http/{up}/missing")),
        ("GET", format!("/http_proxy/http/{closed}/x")),
        ("GET", format!("/http_proxy/https/{not_tls}/ok")),
        ("GET", format!("/http_proxy/ftp/{up}/ok")),
        ("GET", format!("/http_proxy/http/{up}/slow")),
    ];
    let mut recorded = Vec::new();
    for (method, target) in &targets {
        let headers = [("X-Secret", "1"), ("User-Agent", "relay-test")];
        let (ps, ph, pb) = exchange(&py.url, method, target, &headers, "");
        let (os, oh, ob) = exchange(&us.url(), method, target, &headers, "");
        recorded.push(format!("{method} {target} → {ps}"));
        assert_eq!(os, ps, "{method} {target}: ours {os} ({ob}), Python {ps} ({pb})");
        if ps.contains(" 200 ") || ps.contains(" 520 ") {
            assert_eq!(ob, pb, "{method} {target}");
            for h in ["content-type", "content-disposition", "etag", "x-internal"] {
                let get = |hs: &[(String, String)]| hs.iter().find(|(k, _)| k == h).map(|(_, v)| v.clone());
                assert_eq!(get(&oh), get(&ph), "{method} {target}: header {h}");
            }
        }
    }
    eprintln!("the Python proxy answers:\n{}", recorded.join("\n"));
}

fn request_form(sr: &str, title: &str, filter: &str) -> String {
    form(&[
        ("software_release", sr),
        ("partition_reference", title),
        ("partition_parameter_xml", "<marshal><dictionary id=\"i2\"><string>a</string><string>1</string></dictionary></marshal>"),
        ("filter_xml", filter),
        ("software_type", "default"),
        ("state", "<marshal><none/></marshal>"),
        ("shared_xml", "<marshal><bool>0</bool></marshal>"),
    ])
}

#[test]
#[ignore = "needs the venv"]
fn needs_venv_multimaster_forwarding_to_a_python_master_matches_python() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    // one Python B behind each A, so that both see the same fresh master
    let bs: Vec<Python> =
        (0..2).map(|i| Python::start(dirs[i].path(), &cfg_text(dirs[i].path(), free_port(), "COMP-EXT", "", ""))).collect();
    for b in &bs {
        SlapClient::new(ClientConfig::new(&b.url)).unwrap().load_computer_configuration(&format_report("COMP-EXT")).unwrap();
    }
    let dead = format!("http://127.0.0.1:{}/", free_port());
    let sections = |b: &str| {
        format!("[multimaster/{b}/]\nsoftware_release_list =\n  http://sr/forwarded\n\n[multimaster/{dead}]\nsoftware_release_list = http://sr/dead\n")
    };
    let py = Python::start(dirs[2].path(), &cfg_text(dirs[2].path(), free_port(), "COMP-1", "", &sections(&bs[0].url)));
    let us = ours(&cfg_text(dirs[3].path(), 0, "COMP-1", "", &sections(&bs[1].url)));
    let empty = "<marshal><dictionary id=\"i2\"/></marshal>";
    let unlisted = "<marshal><dictionary id=\"i2\"><string>master_url</string><string>http://127.0.0.1:9/</string></dictionary></marshal>";
    let cases = [
        ("forwarded", request_form("http://sr/forwarded", "Fwd", empty)),
        ("again", request_form("http://sr/forwarded", "Fwd", empty)),
        ("dead", request_form("http://sr/dead", "Dead", empty)),
        ("unlisted", request_form("http://sr/x", "X", unlisted)),
        ("local", request_form("http://sr/local", "Local", empty)),
    ];
    for (what, body) in &cases {
        let (ps, _, pb) = exchange(&py.url, "POST", "/requestComputerPartition", &[], body);
        let (os, _, ob) = exchange(&us.url(), "POST", "/requestComputerPartition", &[], body);
        eprintln!("{what}: Python {ps}: {}", &pb[..pb.len().min(300)]);
        assert_eq!(os, ps, "{what}: ours {ob}");
        if ps.contains(" 200 ") {
            let (pb, ob) = (pb.replace(&bs[0].url, "B"), ob.replace(&bs[1].url, "B"));
            assert_eq!(normalise(&ob), normalise(&pb), "{what}");
        }
    }
    // remembered and shown
    drop(us);
    let store = slapos_proxy::SqliteStore::open_read_only(&dirs[3].path().join("proxy.db")).unwrap();
    let shown = slapos_proxy::show::snapshot(&store).unwrap();
    let forwarded = shown["forwarded_requests"].as_array().unwrap();
    assert_eq!(forwarded.len(), 1, "{shown}");
    assert_eq!(forwarded[0]["reference"], "user_Fwd");
    assert_eq!(forwarded[0]["master_url"], format!("{}/", bs[1].url));
    // the Python proxy's own table says the same
    let out = Command::new(venv().join("bin/python3"))
        .arg("-c")
        .arg("import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select * from forwarded_partition_request18').fetchall())")
        .arg(dirs[2].path().join("proxy.db"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("('user_Fwd', '{}/')", bs[0].url)), "{text}");
}

/// The software URLs a master holds: supplies and the partition's release.
fn software_urls(base: &str) -> Vec<String> {
    let c = SlapClient::new(ClientConfig::new(base)).unwrap();
    let computer = c.computer_information("COMP-1").unwrap();
    let mut urls: Vec<String> = computer.software_releases.iter().map(|s| s.url.clone()).collect();
    for p in &computer.partitions {
        if let Some(sr) = &p.software_release {
            urls.push(format!("partition: {}", sr.url));
        }
    }
    urls
}

#[test]
#[ignore = "needs the venv"]
fn needs_venv_local_software_release_root_moves_as_in_python() {
    let root = tempfile::tempdir().unwrap();
    let r = |name: &str| root.path().join(name).to_string_lossy().into_owned();
    // a: in r1 and r2 (both present), b: only in r1 (kept), c: nowhere (rebased)
    for (dir, names) in [("r1", &["a", "b"][..]), ("r2", &["a"][..])] {
        for n in names {
            std::fs::create_dir_all(root.path().join(dir).join(n)).unwrap();
            std::fs::write(root.path().join(dir).join(n).join("software.cfg"), "").unwrap();
        }
    }
    let sr = |dir: &str, n: &str| format!("{}/{n}/software.cfg", r(dir));
    let mut results = Vec::new();
    for python in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = |root: &str| cfg_text(dir.path(), port, "COMP-1", &format!("local_software_release_root = {root}"), "");
        let mut seen = Vec::new();
        for (i, step_root) in ["r1", "r2", "r3", "r1"].iter().enumerate() {
            let base;
            let (_py, _us) = if python {
                let p = Python::start(dir.path(), &cfg(&r(step_root)));
                base = p.url.clone();
                (Some(p), None)
            } else {
                let o = ours(&cfg(&r(step_root)));
                base = o.url();
                (None, Some(o))
            };
            if i == 0 {
                let c = SlapClient::new(ClientConfig::new(&base)).unwrap();
                c.load_computer_configuration(&format_report("COMP-1")).unwrap();
                for n in ["a", "b", "c"] {
                    c.supply(&sr("r1", n), "COMP-1", slap::model::SoftwareState::Available).unwrap();
                }
                let body = request_form(&sr("r1", "c"), "I", "<marshal><dictionary id=\"i2\"/></marshal>");
                let (status, _, answer) = exchange(&base, "POST", "/requestComputerPartition", &[], &body);
                assert!(status.contains(" 200 "), "{answer}");
            }
            seen.push(software_urls(&base).into_iter().map(|u| u.replace(&r(""), "ROOT/")).collect::<Vec<_>>());
        }
        results.push(seen);
    }
    eprintln!("the Python proxy holds, root by root: {:#?}", results[0]);
    assert_eq!(results[1], results[0], "ours differs from the Python proxy");
    // and it did move something
    assert!(results[0][1].iter().any(|u| u.contains("ROOT/r2/")), "{:?}", results[0]);
}
