use super::*;

const H_GCC: &str = "1111aaaa1111aaaa1111aaaa1111aaaa";
const H_ZLIB: &str = "2222bbbb2222bbbb2222bbbb2222bbbb";
const H_OLD: &str = "3333cccc3333cccc3333cccc3333cccc";
const H_OLDLIB: &str = "4444dddd4444dddd4444dddd4444dddd";
const H_SCRIPT: &str = "5555eeee5555eeee5555eeee5555eeee";
const H_NESTED: &str = "6666ffff6666ffff6666ffff6666ffff";
const H_EXTRA: &str = "7777abab7777abab7777abab7777abab";

struct Site {
    _t: tempfile::TempDir,
    root: PathBuf,
    cfg: PruneConfig,
}

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn part(shared: &Path, name: &str, hash: &str, signature: &str) -> PathBuf {
    let p = shared.join(name).join(hash);
    write(&p.join(".buildout-shared.json"), signature);
    write(&p.join("lib/libx.so"), "binary");
    p
}

/// A node: gcc used by a software, zlib only by gcc's signature, old
/// unused, oldlib used only by old, one part used only by a bin script,
/// one only by a nested SlapOS in an instance, one only by an additional
/// software directory.
fn site() -> Site {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_path_buf();
    let shared = root.join("shared");
    part(&shared, "gcc", H_GCC, &format!("{{\"zlib\": \"{}/zlib/{H_ZLIB}\"}}", shared.display()));
    part(&shared, "zlib", H_ZLIB, "{}");
    part(&shared, "old", H_OLD, &format!("{{\"lib\": \"{H_OLDLIB}\"}}"));
    part(&shared, "oldlib", H_OLDLIB, "{}");
    part(&shared, "tool", H_SCRIPT, "{}");
    part(&shared, "nested", H_NESTED, "{}");
    part(&shared, "extra", H_EXTRA, "{}");
    let sr = root.join("software/0123abcd");
    write(&sr.join(".installed.cfg"), &format!("[gcc]\nlocation = {}/gcc/{H_GCC}\n", shared.display()));
    write(&sr.join("bin/tool"), &format!("#!/bin/sh\nexec {}/tool/{H_SCRIPT}/bin/tool\n", shared.display()));
    // a nested SlapOS (a runner) in a partition, with its own software root
    let nested = root.join("instance/slappart0/srv/runner");
    write(&nested.join("software/abc/.installed.cfg"), &format!("location = {}/nested/{H_NESTED}\n", shared.display()));
    std::fs::create_dir_all(nested.join("instance")).unwrap();
    write(
        &root.join("instance/slappart0/etc/slapos.cfg"),
        &format!("[slapos]\nsoftware_root = {0}/software\ninstance_root = {0}/instance\nshared_part_list = \n", nested.display()),
    );
    write(&root.join("extra-software/xyz/.installed.cfg"), &format!("x = {H_EXTRA}\n"));
    let cfg = PruneConfig {
        software_root: root.join("software"),
        instance_root: root.join("instance"),
        shared_root: Some(shared),
        pidfile_software: Some(root.join("sr.pid")),
        root_check: false,
    };
    Site { _t: t, root, cfg }
}

fn names(parts: &[PathBuf]) -> Vec<String> {
    let mut n: Vec<String> = parts.iter().map(|p| p.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned()).collect();
    n.sort();
    n
}

#[test]
fn unused_parts_go_in_passes_and_used_ones_stay() {
    let s = site();
    let extra = [s.root.join("extra-software")];
    let dry = run(&s.cfg, &extra, true).unwrap();
    assert_eq!(names(&dry), ["old", "oldlib"], "the dry run sees the second pass too");
    assert!(s.root.join("shared/old").join(H_OLD).exists(), "nothing removed by a dry run");
    let pruned = run(&s.cfg, &extra, false).unwrap();
    assert_eq!(names(&pruned), ["old", "oldlib"]);
    for (name, hash, kept) in [
        ("gcc", H_GCC, true),
        ("zlib", H_ZLIB, true),
        ("tool", H_SCRIPT, true),
        ("nested", H_NESTED, true),
        ("extra", H_EXTRA, true),
        ("old", H_OLD, false),
        ("oldlib", H_OLDLIB, false),
    ] {
        assert_eq!(s.root.join("shared").join(name).join(hash).exists(), kept, "{name}");
    }
    assert!(run(&s.cfg, &extra, false).unwrap().is_empty(), "nothing more");
    // without the additional directory, its part is unused
    assert_eq!(names(&run(&s.cfg, &[], false).unwrap()), ["extra"]);
}

#[test]
fn links_are_never_followed_nor_crossed() {
    let s = site();
    let outside = s.root.join("outside");
    write(&outside.join("precious/file"), "keep me");
    let shared = s.cfg.shared_root.clone().unwrap();
    // a link as a part's name directory, and as a part: not parts
    std::os::unix::fs::symlink(&outside, shared.join("evil")).unwrap();
    std::os::unix::fs::symlink(outside.join("precious"), shared.join("old").join("9999")).unwrap();
    // inside an unused part, a link out: unlinked, not crossed
    std::os::unix::fs::symlink(&outside, shared.join("old").join(H_OLD).join("escape")).unwrap();
    // a partition's link to a slapos.cfg elsewhere, and a link loop: ignored
    write(&outside.join("cfg/slapos.cfg"), &format!("[slapos]\nsoftware_root = {}\ninstance_root = /nonexistent\n", outside.display()));
    std::os::unix::fs::symlink(outside.join("cfg/slapos.cfg"), s.root.join("instance/slappart0/slapos.cfg")).unwrap();
    std::os::unix::fs::symlink(s.root.join("instance"), s.root.join("instance/slappart0/loop")).unwrap();
    let pruned = run(&s.cfg, &[s.root.join("extra-software")], false).unwrap();
    assert_eq!(names(&pruned), ["old", "oldlib"]);
    assert_eq!(std::fs::read_to_string(outside.join("precious/file")).unwrap(), "keep me");
    assert!(std::fs::symlink_metadata(shared.join("evil")).is_ok() && std::fs::symlink_metadata(shared.join("old/9999")).is_ok());
}

#[test]
fn an_unreadable_signature_prunes_nothing() {
    let s = site();
    // a FIFO as a software's .installed.cfg: never blocks, stops the prune
    let installed = s.root.join("software/0123abcd/.installed.cfg");
    std::fs::remove_file(&installed).unwrap();
    nix::unistd::mkfifo(&installed, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let e = run(&s.cfg, &[], false).unwrap_err();
    assert!(e.to_string().contains(".installed.cfg") && e.to_string().contains("nothing pruned"), "{e}");
    assert!(s.root.join("shared/old").join(H_OLD).exists());
}

#[test]
fn configuration_as_slapos_reads_it() {
    let c = Config::parse("[slapos]\nsoftware_root = /opt/slapgrid\ninstance_root = /srv/slapgrid\nshared_part_list =\n  /opt/slapos/shared\n  /opt/slapgrid/shared\n").unwrap();
    let p = PruneConfig::from_config(&c).unwrap();
    assert_eq!(p.shared_root, Some(PathBuf::from("/opt/slapgrid/shared")), "the last line");
    assert!(p.root_check);
    let none = PruneConfig::from_config(&Config::parse("[slapos]\nsoftware_root = /s\ninstance_root = /i\n").unwrap()).unwrap();
    let e = run(&none, &[], true).unwrap_err();
    assert_eq!(e.to_string(), "No shared_part_list options in slapos config");
}

#[test]
fn instances_too_deep_to_search_prune_nothing() {
    let s = site();
    let mut deep = s.root.join("instance/slappart1");
    for i in 0..70 {
        deep = deep.join(format!("d{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    let e = run(&s.cfg, &[], false).unwrap_err();
    assert!(e.to_string().contains("too large to search"), "{e}");
    assert!(s.root.join("shared/old").join(H_OLD).exists());
}
