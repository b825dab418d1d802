//! The master's binary cache (`/shacache`) over HTTP, as
//! `slapos.libnetworkcache` uses it: files by SHA-512, shadir entries by key,
//! checks on what is stored, nothing half-written left behind.

use std::time::Duration;

use slapos_proxy::shacache::Options;
use slapos_proxy::{start_background, Background, ProxyConfig};

struct Cache {
    dir: tempfile::TempDir,
    master: Background,
    agent: ureq::Agent,
}

fn cache(max_file_size: u64) -> Cache {
    let dir = tempfile::tempdir().unwrap();
    let shacache = Options { max_file_size, ..Options::under(dir.path()) };
    let config = ProxyConfig {
        computer_id: "COMP-1".into(),
        database: slapos_proxy::Database::sqlite(dir.path().join("proxy.db")),
        shacache: Some(shacache),
        ..Default::default()
    };
    let master = start_background(&config).unwrap();
    let agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(20))).build().into();
    Cache { dir, master, agent }
}

fn sha512(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA512, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Cache {
    fn send(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let url = format!("{}/shacache{path}", self.master.url());
        let r = match method {
            "GET" => self.agent.get(&url).call(),
            "PUT" => self.agent.put(&url).send(body),
            _ => self.agent.post(&url).send(body),
        };
        let mut r = r.unwrap();
        (r.status().as_u16(), r.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap())
    }

    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("shacache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }
}

#[test]
fn a_file_stored_is_served_back_by_its_sha512() {
    let c = cache(8 << 30);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sum = sha512(&data);
    let (status, body) = c.send("POST", "/cache", &data);
    assert_eq!((status, String::from_utf8(body).unwrap()), (201, sum.clone()));
    let (status, body) = c.send("GET", &format!("/cache/{sum}"), b"");
    assert_eq!(status, 200);
    assert!(body == data, "the file served differs");
    let (status, _) = c.send("PUT", &format!("/cache/{}", sha512(b"x")), b"x");
    assert_eq!(status, 201);
    assert_eq!(c.send("GET", &format!("/cache/{}", sha512(b"nothing")), b"").0, 404);
}

#[test]
fn a_file_whose_content_does_not_match_its_name_is_refused_and_removed() {
    let c = cache(8 << 30);
    let (status, _) = c.send("PUT", &format!("/cache/{}", sha512(b"expected")), b"something else");
    assert_eq!(status, 400);
    assert_eq!(c.send("GET", &format!("/cache/{}", sha512(b"something else")), b"").0, 404);
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[test]
fn a_file_beyond_the_size_limit_is_refused_and_nothing_is_left() {
    let c = cache(1000);
    let (status, _) = c.send("POST", "/cache", &[7u8; 5000]);
    assert_eq!(status, 413);
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
    assert_eq!(c.send("POST", "/cache", &[7u8; 1000]).0, 201);
}

#[test]
fn names_that_are_not_a_sha512_or_a_key_are_refused() {
    let c = cache(8 << 30);
    assert_eq!(c.send("GET", "/cache/..%2F..%2Fproxy.db", b"").0, 400);
    assert_eq!(c.send("GET", "/dir/..%2Fshacache", b"").0, 400);
    assert_eq!(c.send("PUT", "/dir/.hidden", b"[]").0, 400);
}

#[test]
fn entries_are_added_under_their_key_checked_and_collected_when_their_file_is_gone() {
    let c = cache(8 << 30);
    let (_, sum) = c.send("POST", "/cache", b"tarball");
    let sum = String::from_utf8(sum).unwrap();
    let entry = |s: &str, arch: &str| serde_json::json!([serde_json::json!({"sha512": s, "multiarch": arch}).to_string(), "c2ln"]);
    let key = "0123456789abcdef0123456789abcdef";
    for arch in ["x86_64-linux-gnu", "aarch64-linux-gnu", "x86_64-linux-gnu"] {
        assert_eq!(c.send("PUT", &format!("/dir/{key}"), entry(&sum, arch).to_string().as_bytes()).0, 201);
    }
    let (status, body) = c.send("GET", &format!("/dir/{key}"), b"");
    assert_eq!(status, 200);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(list, vec![entry(&sum, "aarch64-linux-gnu"), entry(&sum, "x86_64-linux-gnu")]);
    // not an entry: refused
    assert_eq!(c.send("PUT", &format!("/dir/{key}"), br#"["{\"sha512\": \"../x\"}", ""]"#).0, 400);
    assert_eq!(c.send("PUT", &format!("/dir/{key}"), b"[1, 2, 3]").0, 400);
    // the file goes: /update drops its entries
    std::fs::remove_file(c.dir.path().join("shacache").join(&sum)).unwrap();
    let (status, body) = c.send("POST", "/update", b"");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["removed"], serde_json::json!([key]));
    assert_eq!(c.send("GET", &format!("/dir/{key}"), b"").0, 404);
}

#[test]
fn without_its_directories_the_cache_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let config = ProxyConfig {
        computer_id: "C".into(),
        database: slapos_proxy::Database::sqlite(dir.path().join("proxy.db")),
        ..Default::default()
    };
    let master = start_background(&config).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let r = agent.get(&format!("{}/shacache/dir/k", master.url())).call().unwrap();
    assert_eq!(r.status().as_u16(), 503);
}

fn cache_with_upstream(upstream: &str) -> Cache {
    let dir = tempfile::tempdir().unwrap();
    let shacache = Options {
        upstream_cache_url: Some(format!("{upstream}/cache")),
        upstream_dir_url: Some(format!("{upstream}/dir")),
        ..Options::under(dir.path())
    };
    let config = ProxyConfig {
        computer_id: "COMP-2".into(),
        database: slapos_proxy::Database::sqlite(dir.path().join("proxy.db")),
        shacache: Some(shacache),
        ..Default::default()
    };
    let master = start_background(&config).unwrap();
    let agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(20))).build().into();
    Cache { dir, master, agent }
}

#[test]
fn a_miss_is_fetched_from_the_upstream_cache_and_kept() {
    let upstream = cache(8 << 30);
    let (_, sum) = upstream.send("POST", "/cache", b"built upstream");
    let sum = String::from_utf8(sum).unwrap();
    let key = "0123456789abcdef0123456789abcdef";
    let entry = serde_json::json!([serde_json::json!({"sha512": sum}).to_string(), "c2ln"]);
    assert_eq!(upstream.send("PUT", &format!("/dir/{key}"), entry.to_string().as_bytes()).0, 201);
    let c = cache_with_upstream(&format!("{}/shacache", upstream.master.url()));
    let (status, body) = c.send("GET", &format!("/dir/{key}"), b"");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap(), serde_json::json!([entry]));
    assert_eq!(c.send("GET", &format!("/cache/{sum}"), b""), (200, b"built upstream".to_vec()));
    // kept: served while the upstream is gone
    drop(upstream);
    assert_eq!(c.send("GET", &format!("/cache/{sum}"), b""), (200, b"built upstream".to_vec()));
    assert_eq!(c.send("GET", &format!("/dir/{key}"), b"").0, 200);
    // a miss here and there is a 404; an upstream that is down, a 502
    assert_eq!(c.send("GET", &format!("/cache/{}", sha512(b"nowhere")), b"").0, 502);
}

#[test]
fn an_upstream_serving_other_content_is_refused_and_nothing_is_kept() {
    let liar = test_support::canned(200, "not the file you asked for");
    let c = cache_with_upstream(&liar.url);
    let (status, _) = c.send("GET", &format!("/cache/{}", sha512(b"the real file")), b"");
    assert_eq!(status, 502);
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
    assert_eq!(std::fs::read_dir(c.dir.path().join("shacache")).unwrap().count(), 0);
    // garbage for a key: refused, nothing stored
    assert_eq!(c.send("GET", "/dir/somekey", b"").0, 502);
    assert!(!c.dir.path().join("shadir/somekey").exists());
    let missing = test_support::canned(404, "no");
    let c = cache_with_upstream(&missing.url);
    assert_eq!(c.send("GET", &format!("/cache/{}", sha512(b"x")), b"").0, 404);
}

#[test]
fn update_removes_old_files_no_entry_references_and_keeps_the_others() {
    let c = cache(8 << 30);
    let post = |data: &[u8]| String::from_utf8(c.send("POST", "/cache", data).1).unwrap();
    let (kept, orphan, fresh) = (post(b"referenced"), post(b"orphan"), post(b"just uploaded"));
    let entry = serde_json::json!([serde_json::json!({"sha512": kept}).to_string(), ""]);
    assert_eq!(c.send("PUT", "/dir/key", entry.to_string().as_bytes()).0, 201);
    let content = c.dir.path().join("shacache");
    let old = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    for name in [&kept, &orphan] {
        std::fs::File::options().write(true).open(content.join(name)).unwrap().set_modified(old).unwrap();
    }
    let partial = content.join(".upload-00000000deadbeef");
    std::fs::write(&partial, b"half").unwrap();
    std::fs::File::options().write(true).open(&partial).unwrap().set_modified(old - Duration::from_secs(86_400)).unwrap();
    let (status, body) = c.send("POST", "/update", b"");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut expected = vec![".upload-00000000deadbeef".to_string(), orphan.clone()];
    expected.sort();
    assert_eq!(doc["removed_files"], serde_json::json!(expected));
    assert_eq!(c.send("GET", &format!("/cache/{kept}"), b"").0, 200);
    assert_eq!(c.send("GET", &format!("/cache/{fresh}"), b"").0, 200, "a file younger than the grace period is kept");
    assert_eq!(c.send("GET", &format!("/cache/{orphan}"), b"").0, 404);
    // without a grace period, the fresh orphan goes too
    let removed = slapos_proxy::shacache::collect_unreferenced(&Options::under(c.dir.path()), Duration::ZERO).unwrap();
    assert_eq!(removed, vec![fresh]);
}

#[test]
fn update_adds_the_new_entries_of_the_upstream_and_keeps_the_local_ones() {
    let upstream = cache(8 << 30);
    let key = "fedcba9876543210fedcba9876543210";
    let entry = |s: &[u8], tag: &str| serde_json::json!([serde_json::json!({"sha512": sha512(s), "tag": tag}).to_string(), ""]);
    let put = |c: &Cache, e: &serde_json::Value| assert_eq!(c.send("PUT", &format!("/dir/{key}"), e.to_string().as_bytes()).0, 201);
    put(&upstream, &entry(b"one", "upstream-1"));
    let c = cache_with_upstream(&format!("{}/shacache", upstream.master.url()));
    assert_eq!(c.send("GET", &format!("/dir/{key}"), b"").0, 200);
    put(&c, &entry(b"local", "uploaded-here"));
    put(&upstream, &entry(b"two", "upstream-2"));
    let (status, body) = c.send("POST", "/update", b"");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["updated"], serde_json::json!([key]));
    assert_eq!(doc["removed"], serde_json::json!([]), "entries whose file is upstream are kept");
    let list: serde_json::Value = serde_json::from_slice(&c.send("GET", &format!("/dir/{key}"), b"").1).unwrap();
    assert_eq!(list, serde_json::json!([entry(b"one", "upstream-1"), entry(b"local", "uploaded-here"), entry(b"two", "upstream-2")]));
    // nothing new upstream: nothing updated
    let doc: serde_json::Value = serde_json::from_slice(&c.send("POST", "/update", b"").1).unwrap();
    assert_eq!(doc["updated"], serde_json::json!([]));
}
