//! Our master with real peers: our own client (every call), and the real
//! Python client (`slapos.slap` from slapos.core 1.26.1) through every call.

use test_support::postgres as pg;

use std::process::Command;

use slapos_proxy::{start_background, ProxyConfig};

fn config(dir: &std::path::Path, computer: &str) -> ProxyConfig {
    on(slapos_proxy::Database::sqlite(dir.join("proxy.db")), computer)
}

fn on(database: slapos_proxy::Database, computer: &str) -> ProxyConfig {
    ProxyConfig {
        computer_id: computer.into(),
        host: "127.0.0.1".into(),
        port: 0,
        database,
        software_products: Default::default(),
        ..Default::default()
    }
}

#[test]
fn our_client_through_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let master = start_background(&config(dir.path(), "COMP-TEST")).unwrap();
    test_support::exercise::every_client_call(&master.url());
}

#[test]
#[ignore = "needs PostgreSQL"]
fn needs_postgres_our_client_through_every_call() {
    let pg = pg::TestPostgres::start();
    let master = start_background(&on(slapos_proxy::Database::Postgres(pg.database("interop")), "COMP-TEST")).unwrap();
    test_support::exercise::every_client_call(&master.url());
}

#[test]
#[ignore = "needs PostgreSQL and the venv"]
fn needs_postgres_needs_venv_the_python_client_through_every_call() {
    let pg = pg::TestPostgres::start();
    python_client_every_call(&on(slapos_proxy::Database::Postgres(pg.database("interop")), "COMP-PY"));
}

#[test]
#[ignore = "needs the venv"]
fn needs_venv_the_python_client_through_every_call() {
    let dir = tempfile::tempdir().unwrap();
    python_client_every_call(&config(dir.path(), "COMP-PY"));
}

fn python_client_every_call(config: &ProxyConfig) {
    let master = start_background(config).unwrap();
    let venv = test_support::python_venv();
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/client_every_call.py");
    let out = Command::new(venv.join("bin/python3")).arg(&script).arg(master.url()).arg("COMP-PY").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Python client failed against our master:\n{text}");
    assert!(text.contains("every call OK"), "{text}");
}
