use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use super::*;

/// A tenant's directory `t/a/b/` with `t/a/b/f`, and a victim outside.
struct Plot {
    _d: tempfile::TempDir,
    tenant: PathBuf,
    victim_dir: PathBuf,
    victim: PathBuf,
}

fn plot() -> Plot {
    let d = tempfile::tempdir().unwrap();
    let tenant = d.path().join("t");
    std::fs::create_dir_all(tenant.join("a/b")).unwrap();
    std::fs::write(tenant.join("a/b/f"), "tenant").unwrap();
    let victim_dir = d.path().join("outside");
    std::fs::create_dir_all(victim_dir.join("a/b")).unwrap();
    let victim = victim_dir.join("a/b/f");
    std::fs::write(&victim, "victim").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    Plot { tenant, victim_dir, victim, _d: d }
}

impl Plot {
    fn victim_unchanged(&self) {
        assert_eq!(std::fs::read_to_string(&self.victim).unwrap(), "victim");
        assert_eq!(std::fs::metadata(&self.victim).unwrap().mode() & 0o7777, 0o644);
        assert_eq!(std::fs::read_dir(self.victim_dir.join("a/b")).unwrap().count(), 1, "nothing created outside");
    }

    /// Replaces the tenant's component `rel` (`a`, `a/b` or `a/b/f`) with a
    /// link to its counterpart outside.
    fn plant_link(&self, rel: &str) {
        let p = self.tenant.join(rel);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
        std::os::unix::fs::symlink(self.victim_dir.join(rel), &p).unwrap();
    }
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// Every operation on `a/b/f` through a link planted at each component:
/// refused (or, for writes, the link replaced), the victim unchanged.
#[test]
fn links_at_every_component_are_never_followed() {
    for planted in ["a", "a/b", "a/b/f"] {
        for openat2 in [true, false] {
            let p = plot();
            p.plant_link(planted);
            OPENAT2.store(if openat2 { 0 } else { 2 }, Ordering::Relaxed);
            let d = Dir::open(&p.tenant).unwrap();
            let f = Path::new("a/b/f");
            assert!(d.read(f, SMALL).is_err(), "read through {planted}");
            assert!(d.append(f, 0o600, None).is_err(), "append through {planted}");
            assert!(d.set_mode(f, 0o666).is_err(), "chmod through {planted}");
            assert!(d.create_dir_all(Path::new("a/b/f/new"), 0o700, None).is_err(), "mkdir through {planted}");
            assert!(d.write(Path::new("a/b/new"), b"x", 0o644, None).is_err() || planted == "a/b/f", "create through {planted}");
            if planted == "a/b/f" {
                // the link itself is replaced, or changes owner, or goes
                d.chown(f, nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw()).unwrap();
                assert_eq!(d.metadata(f).unwrap().kind, Kind::Symlink);
                d.write(f, b"node", 0o640, None).unwrap();
                assert_eq!(std::fs::read_to_string(p.tenant.join(f)).unwrap(), "node");
                assert!(!std::fs::symlink_metadata(p.tenant.join(f)).unwrap().file_type().is_symlink());
            } else {
                assert!(d.write(f, b"node", 0o640, None).is_err(), "write through {planted}");
                assert!(d.metadata(f).is_err() && d.entries(Path::new("a/b")).is_err());
                assert!(d.remove_file(f).is_err() && d.remove_tree(Path::new("a/b")).is_err() || planted == "a/b");
            }
            p.victim_unchanged();
        }
    }
    OPENAT2.store(0, Ordering::Relaxed);
}

#[test]
fn parent_and_absolute_paths_are_refused() {
    let p = plot();
    let d = Dir::open(&p.tenant.join("a")).unwrap();
    for rel in ["../outside/a/b/f", "b/../../a/b/f", "/etc/passwd", ""] {
        let e = d.read(Path::new(rel), SMALL).unwrap_err();
        assert!(e.to_string().contains("refused"), "{rel}: {e}");
        assert!(d.write(Path::new(rel), b"x", 0o600, None).is_err(), "{rel}");
    }
    assert!(d.open_dir(Path::new("..")).is_err());
    assert_eq!(d.read(Path::new("./b/f"), SMALL).unwrap(), b"tenant");
}

#[test]
fn a_fifo_never_blocks_and_is_never_read_or_appended_to() {
    let p = plot();
    let fifo = p.tenant.join("a/b/f");
    std::fs::remove_file(&fifo).unwrap();
    mkfifo(&fifo);
    let d = Dir::open(&p.tenant).unwrap();
    let t = Instant::now();
    assert!(d.read(Path::new("a/b/f"), SMALL).unwrap_err().to_string().contains("not a regular file"));
    assert!(d.append(Path::new("a/b/f"), 0o600, None).is_err(), "no reader: ENXIO; a reader: not regular");
    // with a reader holding it open, still refused
    let reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    assert!(d.append(Path::new("a/b/f"), 0o600, None).unwrap_err().to_string().contains("not a regular file"));
    drop(reader);
    assert!(d.write_if_changed(Path::new("a/b/f"), b"x", 0o644, None).unwrap(), "replaced by a file");
    assert_eq!(std::fs::read(&fifo).unwrap(), b"x");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

use std::os::unix::fs::OpenOptionsExt;

#[test]
fn files_and_directories_get_their_final_mode_whatever_the_umask() {
    let p = plot();
    let d = Dir::open(&p.tenant).unwrap();
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    d.write(Path::new("key"), b"secret", 0o400, None).unwrap();
    d.write(Path::new("a/public"), b"x", 0o644, None).unwrap();
    let made = d.create_dir_all(Path::new("x/y"), 0o750, None).unwrap();
    nix::sys::stat::umask(old);
    let mode = |rel: &str| std::fs::metadata(p.tenant.join(rel)).unwrap().mode() & 0o7777;
    assert_eq!(mode("key"), 0o400);
    assert_eq!(mode("a/public"), 0o644);
    assert_eq!((mode("x"), mode("x/y")), (0o750, 0o750));
    assert_eq!(made.path(), p.tenant.join("x/y"));
    assert_eq!(std::fs::read(p.tenant.join("key")).unwrap(), b"secret");
    // no temporary file left behind
    assert_eq!(d.entries(Path::new(".")).unwrap().iter().filter(|(n, _)| n.to_string_lossy().contains(".tmp")).count(), 0);
    // unchanged content, mode and owner: not rewritten
    assert!(!d.write_if_changed(Path::new("a/public"), b"x", 0o644, None).unwrap());
    assert!(d.write_if_changed(Path::new("a/public"), b"x", 0o640, None).unwrap());
    assert_eq!(mode("a/public"), 0o640);
    let mut log = d.append(Path::new("a/log"), 0o600, None).unwrap();
    log.write_all(b"one\n").unwrap();
    d.append(Path::new("a/log"), 0o600, None).unwrap().write_all(b"two\n").unwrap();
    assert_eq!(std::fs::read_to_string(p.tenant.join("a/log")).unwrap(), "one\ntwo\n");
    assert_eq!(mode("a/log"), 0o600);
}

#[test]
fn reads_are_bounded_and_hard_links_refused() {
    let p = plot();
    let d = Dir::open(&p.tenant).unwrap();
    std::fs::write(p.tenant.join("big"), vec![b'x'; 100]).unwrap();
    assert_eq!(d.read(Path::new("big"), 100).unwrap().len(), 100);
    assert!(d.read(Path::new("big"), 99).unwrap_err().to_string().contains("larger than 99 bytes"));
    std::fs::hard_link(&p.victim, p.tenant.join("a/hard")).unwrap();
    assert!(d.read(Path::new("a/hard"), SMALL).unwrap_err().to_string().contains("hard links"));
    assert!(d.append(Path::new("a/hard"), 0o600, None).is_err());
    d.write(Path::new("a/hard"), b"replaced", 0o600, None).unwrap();
    p.victim_unchanged();
}

#[test]
fn removal_never_crosses_a_link_and_opens_unreadable_directories() {
    let p = plot();
    let t = &p.tenant;
    std::os::unix::fs::symlink(&p.victim_dir, t.join("a/to-outside")).unwrap();
    std::os::unix::fs::symlink(&p.victim, t.join("a/b/to-victim")).unwrap();
    std::fs::create_dir_all(t.join("a/locked/inner")).unwrap();
    std::fs::write(t.join("a/locked/inner/x"), "x").unwrap();
    std::fs::write(t.join(".hidden"), "x").unwrap();
    std::fs::set_permissions(t.join("a/locked/inner"), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(t.join("a/locked"), std::fs::Permissions::from_mode(0o500)).unwrap();
    mkfifo(&t.join("a/fifo"));
    let d = Dir::open(t).unwrap();
    d.remove_tree(Path::new("a/b")).unwrap();
    assert!(!t.join("a/b").exists());
    d.remove_tree(Path::new("missing")).unwrap();
    d.set_own_mode(0o750).unwrap();
    d.empty().unwrap();
    assert_eq!(std::fs::read_dir(t).unwrap().count(), 0);
    assert_eq!(std::fs::metadata(t).unwrap().mode() & 0o7777, 0o750, "the directory itself is kept");
    p.victim_unchanged();
    assert!(p.victim_dir.join("a").is_dir());
}

#[test]
fn a_symlinked_partition_or_component_is_refused_by_open_below() {
    let p = plot();
    std::os::unix::fs::symlink(&p.victim_dir, p.tenant.join("link")).unwrap();
    assert!(Dir::open_below(&p.tenant, Path::new("link")).is_err());
    assert!(Dir::open_below(&p.tenant, Path::new("a/b")).is_ok());
    let e = Dir::open_below(&p.tenant, Path::new("link/a")).unwrap_err().to_string();
    assert!(e.contains("symbolic link") || e.contains("refused"), "{e}");
}

#[test]
fn the_walk_without_openat2_refuses_links_too() {
    let p = plot();
    let d = Dir::open(&p.tenant).unwrap();
    p.plant_link("a/b");
    // O_NOFOLLOW | O_DIRECTORY on a link: ENOTDIR (ELOOP on some kernels)
    let e = open_dir_beneath(&d.fd, &[OsStr::new("a"), OsStr::new("b")], false).unwrap_err();
    assert!(matches!(e, rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP), "{e}");
    assert!(open_dir_beneath(&d.fd, &[OsStr::new("a")], false).is_ok());
}

#[test]
fn chown_tree_keeps_links_and_their_targets() {
    let p = plot();
    let t = &p.tenant;
    std::os::unix::fs::symlink(&p.victim_dir, t.join("a/to-outside")).unwrap();
    std::fs::hard_link(&p.victim, t.join("a/hard")).unwrap();
    let (uid, gid) =
        if nix::unistd::geteuid().is_root() { (65534, 65534) } else { (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw()) };
    let victim_owner = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.uid(), m.gid())
    };
    let before = (victim_owner(&p.victim), victim_owner(&p.victim_dir.join("a")));
    Dir::open(t).unwrap().chown_tree(Path::new("a"), uid, gid).unwrap();
    assert_eq!(victim_owner(&t.join("a/b/f")), (uid, gid));
    assert_eq!(std::fs::symlink_metadata(t.join("a/to-outside")).unwrap().uid(), uid);
    assert_eq!((victim_owner(&p.victim), victim_owner(&p.victim_dir.join("a"))), before, "nothing outside changes owner");
}

#[test]
fn read_head_linked_takes_hard_links_but_no_link_nor_fifo() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path();
    std::fs::write(t.join("script"), "abcdef").unwrap();
    std::fs::hard_link(t.join("script"), t.join("linked")).unwrap();
    std::os::unix::fs::symlink(t.join("script"), t.join("soft")).unwrap();
    mkfifo(&t.join("fifo"));
    let dir = Dir::open(t).unwrap();
    assert_eq!(dir.read_head_linked(Path::new("linked"), 3).unwrap(), b"abc", "hard link read, bounded");
    assert!(dir.read(Path::new("linked"), 100).is_err(), "the ordinary read still refuses it");
    assert!(dir.read_head_linked(Path::new("soft"), 100).is_err());
    assert!(dir.read_head_linked(Path::new("fifo"), 100).is_err());
}
