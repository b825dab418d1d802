//! `slapos console`: scripts with --command, from a file and on stdin, SlapOS options, and the interactive
//! console driven through a pseudo-terminal, against our master.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use slap::client::{ClientConfig, SlapClient};
use slap::marshal::Value;
use test_support::Master;

const BIN: &str = env!("CARGO_BIN_EXE_slapos");

fn master() -> Master {
    master_with(Path::new(BIN))
}

/// `program proxy start` (ours or the Python one), formatted with one
/// partition; `client.cfg` in its directory points at it.
fn master_with(program: &Path) -> Master {
    let m = Master::start(program, "COMP-CON");
    let c = SlapClient::new(ClientConfig::new(&m.url)).unwrap();
    let s = |v: &str| Value::str(v);
    c.load_computer_configuration(&Value::Dict(BTreeMap::from([
        ("reference".into(), s("COMP-CON")),
        ("address".into(), s("10.0.0.1")),
        ("netmask".into(), s("255.255.255.0")),
        (
            "partition_list".into(),
            Value::List(vec![Value::Dict(BTreeMap::from([
                ("reference".into(), s("slappart0")),
                ("address_list".into(), Value::List(vec![])),
            ]))]),
        ),
    ])))
    .unwrap();
    std::fs::write(m.dir.path().join("client.cfg"), format!("[slapos]\nmaster_url = {}\n", m.url)).unwrap();
    m
}

fn console(cfg: &Path, args: &[&str]) -> Output {
    Command::new(BIN).arg("console").arg("--cfg").arg(cfg).args(args).output().unwrap()
}

#[test]
fn scripts_with_command_and_from_a_file() {
    scripts_against(&master());
}

#[test]
#[ignore = "needs the venv"]
fn needs_venv_scripts_against_the_python_master() {
    scripts_against(&master_with(&test_support::python_venv().join("bin/slapos")));
}

fn scripts_against(m: &Master) {
    let cfg = m.dir.path().join("client.cfg");
    let c = SlapClient::new(ClientConfig::new(&m.url)).unwrap();
    let o = console(
        &cfg,
        &[
            "--command",
            r#"supply("http://sr/s.cfg", "COMP-CON"); let i = request("web", "http://sr/s.cfg", #{greeting: "hi"}); print(i.partition_id()); print(i.parameters().greeting);"#,
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["slappart0", "hi"]);
    c.set_connection_parameters("COMP-CON", "slappart0", &BTreeMap::from([("url".into(), Value::str("http://10.0.0.2/"))]), None).unwrap();
    let script = m.dir.path().join("show.rhai");
    std::fs::write(
        &script,
        "let i = request(\"web\", \"http://sr/s.cfg\", #{greeting: \"hi\"});\nprint(i.connection_parameters().url);\nlet c = computer(\"COMP-CON\");\nfor p in c.partitions() { print(p.id + \" \" + p.instance); }\nprint(c.software_releases()[0].state);\n",
    )
    .unwrap();
    let o = console(&cfg, &[script.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().collect::<Vec<_>>(), ["http://10.0.0.2/", "slappart0 web", "available"]);
    // errors: where, and exit 1, no backtrace
    std::fs::write(&script, "let a = 1;\nlet b = request(\"x\");\n").unwrap();
    let o = console(&cfg, &[script.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("show.rhai, line 2"), "{err}");
    // SlapOS's options: -u beats the file's master_url (here a dead port),
    // a script takes its arguments (ARGV), -p is accepted with a note
    let dead = m.dir.path().join("dead.cfg");
    std::fs::write(&dead, format!("[slapos]\nmaster_url = http://127.0.0.1:{}\n", test_support::free_port())).unwrap();
    std::fs::write(&script, "print(ARGV[1] + \" \" + ARGV.len());\nprint(computer(\"COMP-CON\").partitions()[0].instance);\n").unwrap();
    let o = console(&dead, &["-p", "-u", &m.url, script.to_str().unwrap(), "first", "--second"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().collect::<Vec<_>>(), ["first 3", "web"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("this console speaks Rhai"));
    let o = console(&cfg, &["--command", r#"request("other", "http://sr/s.cfg")"#]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("No free computer partition found for: other"), "the master's message: {err}");
}

/// Reads from the pty until `needle` shows up (or fails after 20 s).
fn expect(master: &mut std::fs::File, seen: &mut String, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        assert!(Instant::now() < deadline, "'{needle}' never came; the screen shows:\n{seen}");
        let fd = master.as_raw_fd();
        let mut fds = [nix::poll::PollFd::new(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }, nix::poll::PollFlags::POLLIN)];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)).unwrap_or(0) > 0 {
            match master.read(&mut buf) {
                Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => {}
            }
        }
    }
}

#[test]
fn the_interactive_console_through_a_pseudo_terminal() {
    let m = master();
    let cfg = m.dir.path().join("client.cfg");
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave: OwnedFd = pty.slave;
    let mut child = Command::new(BIN)
        .arg("console")
        .arg("--cfg")
        .arg(&cfg)
        .env("HOME", m.dir.path())
        .env("TERM", "dumb")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    let mut seen = String::new();
    expect(&mut master, &mut seen, "slapos> ");
    master.write_all(b"help()\r").unwrap();
    expect(&mut master, &mut seen, "supply(software_url, computer_id)");
    master.write_all(b"supply(\"http://sr/i.cfg\", \"COMP-CON\");\r").unwrap();
    master.write_all(b"let i = request(\"tty\", \"http://sr/i.cfg\");\r").unwrap();
    master.write_all(b"i.partition_id()\r").unwrap();
    expect(&mut master, &mut seen, "slappart0");
    // a statement over two lines
    master.write_all(b"if true {\r").unwrap();
    expect(&mut master, &mut seen, "...> ");
    master.write_all(b"print(\"multi\" + \"line\") }\r").unwrap();
    expect(&mut master, &mut seen, "multiline");
    master.write_all(b"nosuch()\r").unwrap();
    expect(&mut master, &mut seen, "error:");
    master.write_all(&[4]).unwrap(); // Ctrl-D
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the console did not quit on Ctrl-D:\n{seen}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let history = std::fs::read_to_string(m.dir.path().join(".slapos/console_history")).unwrap();
    assert!(history.contains("i.partition_id()"), "history kept: {history}");
}

#[test]
fn slapos_options_and_a_script_on_standard_input() {
    let m = master();
    let dir = m.dir.path();
    // a configuration without master_url: -u gives it (SlapOS would refuse)
    let bare = dir.join("bare.cfg");
    std::fs::write(&bare, "[slapos]\n").unwrap();
    let mut child = Command::new(BIN)
        .args(["console", "--cfg", bare.to_str().unwrap(), "--master_url", &m.url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"print(master_url());\nprint(ARGV.len());\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().collect::<Vec<_>>(), [m.url.as_str(), "0"]);
    // -k/-c are the key and the certificate (as SlapOS): files that are not
    // there are named in one line
    let cfg = dir.join("client.cfg");
    for (flag, name) in [("-c", "nocert.pem"), ("--cert_file", "nocert.pem")] {
        let o = console(&cfg, &["-k", dir.join("nokey.pem").to_str().unwrap(), flag, dir.join(name).to_str().unwrap(), "--command", "1"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("nocert.pem") || err.contains("nokey.pem"), "{err}");
        assert!(err.trim().lines().count() == 1 && !err.contains("panicked"), "{err}");
    }
    // the shell flags exclude each other, as in SlapOS
    let o = console(&cfg, &["-i", "-b", "--command", "1"]);
    assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
}
