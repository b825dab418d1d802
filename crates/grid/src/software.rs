//! `slapos node software` (`node.md` §4): build each software release
//! supplied to this computer with the real zc.buildout, report it, destroy
//! what the master says to destroy.

use std::path::{Path, PathBuf};

use slap::client::SlapError;
use slap::model::SoftwareState;

use crate::decision::software_path;
use crate::fsafe::{self, Dir, Kind};
use crate::names::SoftwareUrl;
use crate::node::{self, Node};
use crate::process::{run_as_owner, shebang};
use crate::progress::Progress;

/// What `node software` was asked.
#[derive(Debug, Clone, Default)]
pub struct SoftwareOptions {
    /// `--only-sr`: URLs or md5 keys; empty means every release.
    pub only: Vec<String>,
    /// `--force` / `--all`: rebuild installed releases, no `-N`.
    pub force: bool,
    /// `--garbage-collect`: delete software paths that are not supplied.
    pub garbage_collect: bool,
    /// `--buildout-debug`: buildout `-D`, attached to the terminal.
    pub buildout_debug: bool,
}

impl SoftwareOptions {
    fn selects(&self, url: &str, key: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == url || o == key)
    }
}

/// What to do with one release (pure, from the master's state and the disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SoftwareAction {
    /// Not selected (`--only-sr`): left alone.
    Skip,
    /// Build it (not completed yet, or `--force`).
    Install,
    /// Completed: nothing to do.
    UpToDate,
    /// The master destroyed it: remove it.
    Destroy,
}

/// What to do with one release: its `state` at the master, whether it is `completed` on disk, `selected` by `--only-sr`, and `--force`.
pub fn software_action(state: SoftwareState, completed: bool, selected: bool, force: bool) -> SoftwareAction {
    match (selected, state) {
        (false, _) => SoftwareAction::Skip,
        (true, SoftwareState::Destroyed) => SoftwareAction::Destroy,
        (true, _) if force || !completed => SoftwareAction::Install,
        (true, _) => SoftwareAction::UpToDate,
    }
}

/// Why building a release failed: the text reported to the master.
#[derive(Debug, thiserror::Error)]
pub enum SoftwareError {
    /// The buildout failed.
    #[error("Failed to run buildout profile in directory '{path}':\n{output}\n")]
    Buildout {
        /// The software's directory.
        path: String,
        /// The tail of buildout's output.
        output: String,
    },
    /// A file or program of the software path.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The filesystem has less than `software_min_free_space`.
    #[error(transparent)]
    Space(#[from] node::SpaceError),
    /// The software's `buildout.cfg` cannot hold the URL or a part list.
    #[error(transparent)]
    Template(#[from] crate::templates::TemplateError),
    /// The release is on `download-from-binary-cache-force-url-list` and
    /// the cache could not install it (it is not built; the next run tries
    /// again).
    #[error("Binary cache forced for {url} ({prefix}), but {why}, will retry again")]
    CacheForced {
        /// The release.
        url: String,
        /// The prefix of the force list it matched.
        prefix: String,
        /// Why the cache did not install it.
        why: String,
    },
    /// `[slapos] buildout` is not a program on PATH.
    #[error("buildout program '{0}' not found (set [slapos] buildout)")]
    NoBuildout(String),
}

/// The owner of the software root, to give what root creates in a software
/// path (None unless root).
fn software_owner(software_root: &Dir) -> std::io::Result<Option<(u32, u32)>> {
    let m = software_root.own_metadata()?;
    Ok(nix::unistd::geteuid().is_root().then_some((m.uid, m.gid)))
}

/// The software_root owner's `~/.netrc` goes into the software path (0600),
/// and a stale copy goes when the source is gone. Both are the software
/// user's: read and written without following their links.
fn copy_netrc(software_root: &Dir, sd: &Dir) -> std::io::Result<()> {
    let netrc = Path::new(".netrc");
    let owner = software_root.own_metadata()?;
    let home = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner.uid)).ok().flatten().map(|u| u.dir);
    let source = home.and_then(|h| Dir::open(&h).ok()).filter(|h| h.exists(netrc)).map(|h| h.read(netrc, fsafe::SMALL));
    match source {
        Some(Ok(text)) => sd.write(netrc, &text, 0o600, software_owner(software_root)?)?,
        // a link, a FIFO, a huge file: not copied
        Some(Err(e)) => tracing::warn!("{e}: not copied into the software path"),
        None => {
            if sd.exists(netrc) {
                sd.remove_file(netrc)?;
            }
        }
    }
    Ok(())
}

/// `--garbage-collect`: the software paths (32 hex digits, with a
/// `buildout.cfg`) that no available release uses.
pub fn garbage(software_root: &Path, available: &[PathBuf]) -> Vec<PathBuf> {
    let Ok(root) = Dir::open(software_root) else { return Vec::new() };
    let mut out: Vec<PathBuf> = root
        .entries(Path::new("."))
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, kind)| {
            let name = name.to_string_lossy();
            *kind == Kind::Dir
                && crate::names::SoftwareHash::parse(&name).is_ok()
                && root.metadata(&Path::new(&*name).join("buildout.cfg")).is_ok_and(|m| m.kind == Kind::File)
        })
        .map(|(name, _)| software_root.join(name))
        .filter(|p| !available.contains(p))
        .collect();
    out.sort();
    out
}

/// Builds one release in its software path (`node.md` §4.2).
pub fn install(node: &Node, url: &SoftwareUrl, force: bool, debug: bool) -> Result<(), SoftwareError> {
    let cfg = &node.cfg;
    let sp = url.hash().dir(&cfg.software_root);
    node::check_free_space(&sp, cfg.software_min_free_space, "software_min_free_space")?;
    let cache = cfg.networkcache.as_ref();
    if let Some(nc) = cache {
        match crate::networkcache::try_install(nc, url.as_str(), &cfg.software_root, &sp) {
            Ok(bytes) => {
                tracing::info!("installed {url} from the binary cache ({bytes} bytes)");
                return Ok(());
            }
            Err(why) => match crate::networkcache::matching(&nc.force_list, url.as_str()) {
                Some(prefix) => return Err(SoftwareError::CacheForced { url: url.to_string(), prefix: prefix.into(), why }),
                None => tracing::info!("binary cache not used for {url}: {why}"),
            },
        }
    }
    // the software root and its paths are the software user's: never through their links
    let root = Dir::open(&cfg.software_root)?;
    let owner = software_owner(&root)?;
    let name = sp.file_name().map(PathBuf::from).unwrap_or_default();
    let sd = root.create_dir_all(&name, 0o755, owner)?;
    if let Some((uid, gid)) = owner {
        sd.chown_self(uid, gid)?;
    }
    copy_netrc(&root, &sd)?;
    let extends_cache = sp.join("extends-cache");
    sd.create_dir_all(Path::new("extends-cache"), 0o755, owner)?;
    if let Some((uid, gid)) = owner {
        sd.chown(Path::new("extends-cache"), uid, gid)?;
    }
    let buildout_cfg = sp.join("buildout.cfg");
    if !sd.exists(Path::new("buildout.cfg")) {
        let text = crate::templates::software_buildout(url, &cfg.shared_part_list, &cfg.build_time_part_list)?;
        sd.write(Path::new("buildout.cfg"), text.as_bytes(), 0o644, owner)?;
    }
    let mut args = vec![format!("buildout:extends-cache={}", extends_cache.display()), format!("buildout:directory={}", sp.display())];
    if !force {
        args.push("-N".into());
    }
    args.push("-c".into());
    args.push(buildout_cfg.display().to_string());

    // one spinner per program run, started after its log line
    let run = |program: &str, args: &[String]| {
        if debug {
            return crate::process::run_interactive_as_owner(program, args, &sp, &[]);
        }
        let progress = Progress::start(&format!("building {url}"));
        let out = run_as_owner(program, args, &sp, &[], None, |l| progress.line(l));
        progress.finish();
        out
    };
    let fail = |output: String| SoftwareError::Buildout { path: sp.display().to_string(), output };
    let binary = sp.join("bin/buildout");
    let marker = Path::new("bin/buildout-bootstrap-skipped");
    // a marker left by a failed run after a skipped bootstrap: bootstrap again
    let skip_bootstrap = match sd.remove_file(marker) {
        Ok(()) => false,
        Err(_) => sd.exists(Path::new("bin/buildout")),
    };
    if skip_bootstrap {
        sd.write(marker, b"", 0o644, owner)?;
    } else {
        let buildout = node::which(&cfg.buildout).ok_or_else(|| SoftwareError::NoBuildout(cfg.buildout.clone()))?;
        let mut boot = args.clone();
        boot.push("bootstrap".into());
        tracing::info!("Bootstrapping buildout in {} with {}", sp.display(), buildout.display());
        let out = run(&buildout.display().to_string(), &boot)?;
        if !out.success {
            return Err(fail(out.output));
        }
    }
    let mut command = shebang(&binary).ok_or_else(|| fail(format!("{} is missing or has no interpreter line", binary.display())))?;
    command.push(binary.display().to_string());
    if debug {
        command.push("-D".into());
    }
    command.push("-U".into());
    command.extend(args);
    tracing::info!("Launching buildout in {}", sp.display());
    let out = run(&command[0], &command[1..])?;
    if !out.success {
        return Err(fail(out.output));
    }
    if skip_bootstrap {
        let _ = sd.remove_file(marker);
    }
    if let Some(nc) = cache {
        crate::networkcache::upload_built(nc, url.as_str(), &cfg.software_root, &sp);
    }
    Ok(())
}

/// Deletes a software path (its parent is trusted), making unreadable
/// directories readable first, never crossing a link (see
/// [`Dir::remove_tree`]).
pub fn destroy(path: &Path) -> std::io::Result<()> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => Dir::open(parent)?.remove_tree(Path::new(name)),
        _ => Err(std::io::Error::other(format!("{}: not a software path", path.display()))),
    }
}

/// Whether the software path `sp` has its `.completed` marker.
fn is_completed(sp: &Path) -> bool {
    Dir::open_nofollow(sp).is_ok_and(|sd| sd.metadata(Path::new(".completed")).is_ok_and(|m| m.kind == Kind::File))
}

fn asctime() -> String {
    chrono::Local::now().format("%a %b %e %H:%M:%S %Y").to_string()
}

/// What became of one release in a `node software` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Not selected by `--only-sr`.
    Skipped,
    /// Already installed.
    UpToDate,
    /// Built, reported `available`, `.completed` written.
    Installed,
    /// Removed, reported `destroyed`.
    Destroyed,
    /// Refused (invalid URL) or failed: the text reported to the master.
    Failed(String),
}

/// The releases of a `node software` run and what became of each.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SoftwareSummary {
    /// `(URL, outcome)` in the master's order.
    pub releases: Vec<(String, ReleaseOutcome)>,
}

impl SoftwareSummary {
    /// No release failed (slapgrid's exit code 0, else 1).
    pub fn is_clean(&self) -> bool {
        !self.releases.iter().any(|(_, o)| matches!(o, ReleaseOutcome::Failed(_)))
    }
}

/// `slapos node software`: every supplied release built or destroyed as
/// the master says; an unreachable master stops the run.
pub fn run(node: &Node, opts: &SoftwareOptions) -> Result<SoftwareSummary, SlapError> {
    let cfg = &node.cfg;
    let computer = node.computer()?;
    tracing::info!("Processing software releases...");
    let mut summary = SoftwareSummary::default();
    for sr in &computer.software_releases {
        let outcome = release(node, &sr.url, sr.state(), opts)?;
        summary.releases.push((sr.url.clone(), outcome));
    }
    if opts.garbage_collect {
        let available: Vec<PathBuf> = computer
            .software_releases
            .iter()
            .filter(|s| s.state() != SoftwareState::Destroyed)
            .map(|s| software_path(&cfg.software_root, &s.url))
            .collect();
        for path in garbage(&cfg.software_root, &available) {
            tracing::info!("Destroying garbage collected software folder {} ...", path.display());
            match destroy(&path) {
                Ok(()) => tracing::info!("Destroyed {} .", path.display()),
                Err(e) => tracing::error!("Problem while destroying garbage collected software folder {}: {e}", path.display()),
            }
        }
    }
    tracing::info!("Finished software releases.");
    Ok(summary)
}

/// One release: the gate of its URL, then what [`software_action`] says.
fn release(node: &Node, raw_url: &str, state: SoftwareState, opts: &SoftwareOptions) -> Result<ReleaseOutcome, SlapError> {
    let cfg = &node.cfg;
    // the gate: a release with an invalid URL is neither built nor destroyed
    let valid = match SoftwareUrl::parse(raw_url) {
        Ok(u) => u,
        Err(e) => {
            let text = format!("Software release refused: {e}");
            tracing::error!("{text}");
            match node.client.software_release_error(raw_url, &cfg.computer_id, &text) {
                Err(e) if e.is_unreachable() => return Err(e),
                Err(e) => tracing::warn!("could not report the refused release: {e}"),
                Ok(()) => {}
            }
            return Ok(ReleaseOutcome::Failed(text));
        }
    };
    let url = valid.as_str();
    let sp = valid.hash().dir(&cfg.software_root);
    let key = sp.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match software_action(state, is_completed(&sp), opts.selects(url, &key), opts.force) {
        SoftwareAction::Skip => {
            tracing::debug!("Skipping software release {url} (not selected by --only-sr)");
            Ok(ReleaseOutcome::Skipped)
        }
        SoftwareAction::UpToDate => {
            tracing::info!("Software release {url} is already installed in {}", sp.display());
            Ok(ReleaseOutcome::UpToDate)
        }
        SoftwareAction::Install => build(node, &valid, &sp, opts),
        SoftwareAction::Destroy => {
            if sp.exists() {
                tracing::info!("Destroying {url} in {}...", sp.display());
            }
            match destroy(&sp) {
                Ok(()) => {
                    node.client.software_release_destroyed(url, &cfg.computer_id)?;
                    tracing::info!("Destroyed {url}.");
                    Ok(ReleaseOutcome::Destroyed)
                }
                Err(e) => {
                    let text = format!("Cannot remove {}: {e}", sp.display());
                    node.client.software_release_error(url, &cfg.computer_id, &text)?;
                    Ok(ReleaseOutcome::Failed(text))
                }
            }
        }
    }
}

/// Builds a release, reports it `available`, then writes `.completed`
/// (never before the master knows).
fn build(node: &Node, url: &SoftwareUrl, sp: &Path, opts: &SoftwareOptions) -> Result<ReleaseOutcome, SlapError> {
    let cfg = &node.cfg;
    let url_text = url.as_str();
    tracing::info!("Installing software release {url_text}...");
    match node.client.software_release_building(url_text, &cfg.computer_id) {
        Err(e) if !e.is_not_found() => tracing::warn!("could not report building {url_text}: {e}"),
        _ => {}
    }
    let started = std::time::Instant::now();
    if let Err(e) = install(node, url, opts.force, opts.buildout_debug) {
        let text = e.to_string();
        tracing::error!("{}", text.lines().next().unwrap_or_default());
        node.client.software_release_error(url_text, &cfg.computer_id, &text)?;
        return Ok(ReleaseOutcome::Failed(text));
    }
    node.client.software_release_available(url_text, &cfg.computer_id)?;
    match Dir::open_nofollow(sp).and_then(|sd| sd.write(Path::new(".completed"), asctime().as_bytes(), 0o644, None)) {
        Ok(()) => {
            tracing::info!("Software release {url_text} installed in {:.1} s.", started.elapsed().as_secs_f64());
            Ok(ReleaseOutcome::Installed)
        }
        Err(e) => Ok(ReleaseOutcome::Failed(format!("cannot write {}: {e}", sp.join(".completed").display()))),
    }
}

/// The directory of a release (for people and tests).
pub fn path_of(node: &Node, url: &str) -> PathBuf {
    software_path(&node.cfg.software_root, url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn installed_releases_are_left_alone_unless_forced() {
        use SoftwareAction::*;
        assert_eq!(software_action(SoftwareState::Available, false, true, false), Install);
        assert_eq!(software_action(SoftwareState::Available, true, true, false), UpToDate);
        assert_eq!(software_action(SoftwareState::Available, true, true, true), Install);
        // --only-sr alone does not rebuild (as verified with slapos.core)
        assert_eq!(software_action(SoftwareState::Available, true, true, false), UpToDate);
        assert_eq!(software_action(SoftwareState::Available, false, false, false), Skip);
        assert_eq!(software_action(SoftwareState::Destroyed, true, true, false), Destroy);
        assert_eq!(software_action(SoftwareState::Destroyed, false, false, true), Skip);
    }

    #[test]
    fn only_sr_takes_a_url_or_its_md5() {
        let o = SoftwareOptions { only: vec!["0123".into()], ..Default::default() };
        assert!(o.selects("http://x", "0123") && !o.selects("http://x", "4567"));
        let o = SoftwareOptions { only: vec!["http://x".into()], ..Default::default() };
        assert!(o.selects("http://x", "0123"));
        assert!(SoftwareOptions::default().selects("any", "key"));
    }

    #[test]
    fn garbage_is_only_unsupplied_32_hex_directories_with_a_buildout_cfg() {
        let d = tempfile::tempdir().unwrap();
        let mk = |name: &str, cfg: bool| {
            let p = d.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            if cfg {
                std::fs::write(p.join("buildout.cfg"), "").unwrap();
            }
            p
        };
        let kept = mk("0123456789abcdef0123456789abcdef", true);
        let gone = mk("fedcba9876543210fedcba9876543210", true);
        mk("00000000000000000000000000000000", false);
        mk("not-a-software-path-at-all-xxxxx", true);
        mk("0123456789ABCDEF0123456789ABCDEF", true);
        assert_eq!(garbage(d.path(), &[kept]), [gone]);
    }

    #[test]
    fn destroy_removes_unreadable_trees() {
        let d = tempfile::tempdir().unwrap();
        let sp = d.path().join("sp");
        std::fs::create_dir_all(sp.join("a/b")).unwrap();
        std::fs::write(sp.join("a/b/f"), "x").unwrap();
        std::fs::set_permissions(sp.join("a"), std::fs::Permissions::from_mode(0o000)).unwrap();
        destroy(&sp).unwrap();
        assert!(!sp.exists());
        destroy(&sp).unwrap();
    }
}
