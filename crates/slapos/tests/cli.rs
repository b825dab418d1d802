//! The command line as a user meets it: `slapos complete` and the console
//! log options `--log-time` / `--log-color` (SlapOS 1.26.1's behaviour).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_slapos");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).stdin(Stdio::null()).output().unwrap()
}

/// Runs bash on `script` and returns its stdout; fails the test on any error.
fn bash(script: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(script).output().expect("bash is needed for the completion test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "bash failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn complete_prints_a_bash_script_that_sources_and_completes_subcommands() {
    let out = run(&["complete"]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("slapos.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for word in ["node", "proxy", "request", "supply", "console", "complete"] {
        assert!(text.contains(word), "the script mentions {word}");
    }
    // sourcing registers the function; calling it as bash would completes
    // `slapos no<TAB>` and `slapos node i<TAB>`
    let s = script.display();
    let registered = bash(&format!("set -e; source {s}; complete -p slapos"));
    assert!(registered.contains("-F _slapos slapos"), "{registered}");
    let top = bash(&format!("source {s}; COMP_WORDS=(slapos no); COMP_CWORD=1; _slapos slapos no slapos; echo \"${{COMPREPLY[@]}}\""));
    assert_eq!(top.split_whitespace().collect::<Vec<_>>(), ["node"], "{top}");
    let node = bash(&format!("source {s}; COMP_WORDS=(slapos node i); COMP_CWORD=2; _slapos slapos i node; echo \"${{COMPREPLY[@]}}\""));
    assert_eq!(node.split_whitespace().collect::<Vec<_>>(), ["instance"], "{node}");
}

#[test]
fn complete_knows_zsh_and_fish_and_refuses_other_names() {
    let zsh = String::from_utf8(run(&["complete", "--shell", "zsh"]).stdout).unwrap();
    assert!(zsh.starts_with("#compdef slapos") && zsh.contains("'instance:"), "{}", &zsh[..zsh.len().min(200)]);
    let fish = String::from_utf8(run(&["complete", "--shell=fish"]).stdout).unwrap();
    assert!(fish.contains("complete -c slapos") && fish.contains("-a \"instance\""), "{}", &fish[..fish.len().min(200)]);
    let named = String::from_utf8(run(&["complete", "--name", "slapos-rs"]).stdout).unwrap();
    assert!(named.contains("complete -F _slapos__rs -o bashdefault -o default slapos-rs\n"), "{named}");
    let bad = run(&["complete", "--shell", "tcsh"]);
    assert_eq!(bad.status.code(), Some(5), "an unknown shell is a usage error");
}

/// A configuration on which `slapos node bang` logs one ERROR line without
/// touching the network (the node options it needs are missing).
fn incomplete_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("slapos.cfg");
    std::fs::write(&cfg, "[slapos]\ncomputer_id = COMP-1\nmaster_url = http://127.0.0.1:9\n").unwrap();
    cfg
}

/// The stderr of `slapos [global...] node bang` on the incomplete configuration.
fn error_line(global: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = incomplete_config(dir.path());
    let mut args = global.to_vec();
    args.extend(["node", "bang", "-m", "test", "--cfg", cfg.to_str().unwrap()]);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8(out.stderr).unwrap()
}

/// `YYYY-MM-DD HH:MM:SS ` at the start of `line`.
fn starts_with_timestamp(line: &str) -> bool {
    let shape = "0000-00-00 00:00:00 ";
    line.len() > shape.len() && line.bytes().zip(shape.bytes()).all(|(c, s)| if s == b'0' { c.is_ascii_digit() } else { c == s })
}

#[test]
fn console_lines_have_a_timestamp_unless_log_time_as_slapos() {
    let line = error_line(&[]);
    assert!(starts_with_timestamp(&line), "{line}");
    let rest = &line[20..];
    assert!(rest.starts_with("slapos[") && rest.contains("] ERROR Missing mandatory parameters"), "{line}");
    // SlapOS 1.26.1's --log-time is a store_false flag: it drops the time
    let line = error_line(&["--log-time"]);
    assert!(!starts_with_timestamp(&line) && line.starts_with("slapos["), "{line}");
    assert!(line.contains("] ERROR Missing mandatory parameters"), "{line}");
}

#[test]
fn console_colors_only_when_asked_or_on_a_terminal() {
    for global in [&[][..], &["--log-color"][..], &["--log-color=never"][..]] {
        let line = error_line(global);
        assert!(!line.contains('\x1b'), "{global:?}: no escape codes when redirected: {line:?}");
    }
    let line = error_line(&["--log-color=always"]);
    assert!(line.contains("\x1b[0;34mslapos["), "name in blue: {line:?}");
    assert!(line.contains("\x1b[1;30mERROR\x1b[0m"), "level in bold: {line:?}");
    assert!(line.contains("\x1b[0;31mMissing mandatory parameters"), "error message in red: {line:?}");
    assert!(line.starts_with("\x1b[0;32m") && line.trim_end().ends_with("\x1b[0m"), "{line:?}");
    let untimed = error_line(&["--log-color=always", "--log-time"]);
    assert!(untimed.starts_with("\x1b[0;34mslapos["), "{untimed:?}");
}

#[test]
fn console_colors_by_default_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = incomplete_config(dir.path());
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut child = Command::new(BIN)
        .args(["node", "bang", "-m", "test", "--cfg", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(pty.slave))
        .spawn()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(1));
    // the slave is closed once the child is gone: read until EIO
    let mut master = std::fs::File::from(pty.master);
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = master.read(&mut buf) {
        text.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("\x1b[0;34mslapos[") && text.contains("\x1b[0;31mMissing mandatory parameters"), "{text:?}");
}
