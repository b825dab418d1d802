//! A real PostgreSQL server for tests: Debian's binaries
//! (`/usr/lib/postgresql/*/bin`), `initdb` + `pg_ctl` in a temporary
//! directory, listening only on a unix socket in it, run as `nobody` when
//! the tests run as root (PostgreSQL refuses root) and as the current user
//! otherwise. Stopped (`pg_ctl stop -m immediate`) and removed when dropped,
//! so even when the test fails.
//!
//! Tests that use it are `#[ignore = "needs PostgreSQL"]` with
//! `needs_postgres` in their name; without PostgreSQL they fail saying so.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running PostgreSQL server of one test.
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// (uid, gid) the server runs as, when not the current user's.
    owner: Option<(u32, u32)>,
    /// Its port (which also names its unix socket).
    port: u16,
}

/// The newest PostgreSQL's binaries directory.
fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|b| b.join("initdb").exists()).collect())
        .unwrap_or_default();
    dirs.sort_by_key(|d| d.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()));
    dirs.pop().unwrap_or_else(|| {
        panic!("needs PostgreSQL: no initdb under /usr/lib/postgresql/*/bin (apt-get install postgresql, or scripts/install-deps.sh)")
    })
}

impl TestPostgres {
    /// Makes and starts a server (C collation, no fsync: tests only).
    pub fn start() -> TestPostgres {
        Self::start_with(None)
    }

    /// A server that also listens on 127.0.0.1:`port` with TLS only there
    /// (`hostssl`): `cert` and `key` (PEM) are its certificate and key.
    pub fn start_tls(port: u16, cert: &Path, key: &Path) -> TestPostgres {
        Self::start_with(Some((port, cert, key)))
    }

    fn start_with(tls: Option<(u16, &Path, &Path)>) -> TestPostgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new().prefix("slaptest-pg").tempdir().expect("temporary directory");
        let owner = nix::unistd::geteuid().is_root().then(|| {
            let nobody = nix::unistd::User::from_name("nobody").ok().flatten().expect("needs PostgreSQL as root: no user nobody");
            (nobody.uid.as_raw(), nobody.gid.as_raw())
        });
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the PostgreSQL directory");
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let port = tls.map_or(5432, |t| t.0);
        let pg = TestPostgres { dir, bin, owner, port };
        pg.run("initdb", &["-D", &pg.data(), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]);
        let mut options = format!("-k {} -c fsync=off -c max_connections=200", pg.dir.path().display());
        match tls {
            None => options += " -c listen_addresses=''",
            Some((port, cert, key)) => options += &pg.tls_options(port, cert, key),
        }
        pg.run("pg_ctl", &["-D", &pg.data(), "-l", &pg.log_path(), "-o", &options, "-w", "-t", "60", "start"]);
        pg
    }

    /// Copies the certificate and key where the server (its user, 0600)
    /// reads them, allows only TLS on TCP; the server's options.
    fn tls_options(&self, port: u16, cert: &Path, key: &Path) -> String {
        let (cert_copy, key_copy) = (self.dir.path().join("server.crt"), self.dir.path().join("server.key"));
        std::fs::copy(cert, &cert_copy).unwrap();
        std::fs::copy(key, &key_copy).unwrap();
        std::fs::set_permissions(&key_copy, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((uid, gid)) = self.owner {
            for f in [&cert_copy, &key_copy] {
                std::os::unix::fs::chown(f, Some(uid), Some(gid)).unwrap();
            }
        }
        let hba = Path::new(&self.data()).join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).unwrap();
        let ssl_only: String =
            text.lines().map(|l| if l.starts_with("host ") { format!("hostssl{}\n", &l[4..]) } else { format!("{l}\n") }).collect();
        std::fs::write(&hba, ssl_only).unwrap();
        format!(
            " -c listen_addresses=127.0.0.1 -p {port} -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert_copy.display(),
            key_copy.display()
        )
    }

    /// The URI of database `name` over TCP on 127.0.0.1 (a server of
    /// [`TestPostgres::start_tls`]).
    pub fn tcp_uri(&self, name: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{name}", self.port)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }
    fn log_path(&self) -> String {
        self.dir.path().join("server.log").display().to_string()
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.current_dir(self.dir.path()).env_remove("PGDATA").env("LC_ALL", "C");
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        c
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program).args(args).output().unwrap_or_else(|e| panic!("needs PostgreSQL: cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// The URI of database `name` on this server.
    pub fn uri(&self, name: &str) -> String {
        let socket: String = form_urlencoded::byte_serialize(self.dir.path().display().to_string().as_bytes()).collect();
        format!("postgresql://postgres@{socket}:{}/{name}", self.port)
    }

    /// Creates an empty database and gives its URI.
    pub fn database(&self, name: &str) -> String {
        let mut client = postgres::Client::connect(&self.uri("postgres"), postgres::NoTls).expect("connect to the test PostgreSQL");
        client.batch_execute(&format!("CREATE DATABASE \"{name}\"")).expect("create a test database");
        self.uri(name)
    }

    /// Where the server lives.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").args(["-D", &self.data(), "-m", "immediate", "-w", "stop"]).output();
    }
}
