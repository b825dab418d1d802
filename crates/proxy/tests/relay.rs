//! The `/http_proxy/` relay's bounds (ours only; the Python proxy has none
//! of them): answer size, redirects to other schemes, redirect loops, and
//! methods other than GET/HEAD/OPTIONS. Upstreams are loopback servers of
//! the test.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use slapos_proxy::{start_background, Limits, ProxyConfig};

/// A loopback server: `/big` (2000 bytes), `/ftp` (redirect to ftp://),
/// `/loop` (redirect to itself).
fn upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let me = addr.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, extra, body) = match path.as_str() {
                "/big" => ("200 OK", String::new(), "x".repeat(2000)),
                "/ftp" => ("302 Found", "Location: ftp://127.0.0.1/file\r\n".to_string(), String::new()),
                _ => ("302 Found", format!("Location: http://{me}/loop\r\n"), String::new()),
            };
            let mut s = stream;
            let _ = write!(s, "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    addr
}

#[test]
fn the_relay_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { relay_max_response: 1000, ..Default::default() };
    let config = ProxyConfig {
        computer_id: "C".into(),
        database: slapos_proxy::Database::sqlite(dir.path().join("proxy.db")),
        limits,
        ..Default::default()
    };
    let master = start_background(&config).unwrap();
    let up = upstream();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let status = |method: &str, path: &str| {
        let url = format!("{}/http_proxy/http/{up}{path}", master.url());
        let resp = match method {
            "GET" => agent.get(&url).call(),
            "DELETE" => agent.delete(&url).call(),
            _ => agent.post(&url).send(""),
        };
        let mut resp = resp.unwrap();
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap_or_default())
    };
    let (s, body) = status("GET", "/big");
    assert_eq!(s, 502, "{body}");
    assert!(body.contains("larger than 1000 bytes"), "{body}");
    assert_eq!(status("GET", "/ftp").0, 400, "a redirect to another scheme is not followed");
    assert_eq!(status("GET", "/loop").0, 520, "too many redirects");
    assert_eq!(status("DELETE", "/big").0, 405);
    assert_eq!(status("POST", "/big").0, 405);
}
