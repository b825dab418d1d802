//! Root acting inside a directory another user owns (a partition, the
//! software tree): every operation is relative to a directory descriptor
//! and never resolves a symbolic link the owner may have planted.
//!
//! One design everywhere: a [`Dir`] is an open directory; paths below it
//! are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (or,
//! where the kernel has no `openat2`, component by component with
//! `O_NOFOLLOW | O_DIRECTORY`), and the last component is acted on with
//! the `*at` calls and their no-follow flags. `..`, absolute paths and links
//! are refused. Opened files must be regular files with one link (a FIFO
//! never blocks the node: opens are non-blocking, then checked with
//! `fstat`); reads are bounded; files are written to a temporary file
//! created with its final mode and owner, then renamed over the old entry;
//! trees are removed and chowned without ever crossing a link.
//!
//! The path a [`Dir`] is opened from ([`Dir::open`]) is trusted: it is one
//! of the node's roots or a directory in one (its last component is still
//! never followed).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Uid};

/// Size limit of the small state files the node reads (timestamps,
/// promise results, retention and transaction files).
pub const SMALL: u64 = 1 << 20;

/// Size limit of the larger documents the node reads (instance profiles,
/// consumption reports).
pub const LARGE: u64 = 16 << 20;

/// Deepest tree [`Dir::remove_tree`] and [`Dir::chown_tree`] walk (each
/// level holds one descriptor).
pub const MAX_DEPTH: usize = 400;

/// What an entry is, as seen without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed by this module).
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

/// An entry's metadata, not following a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Meta {
    /// What the entry is.
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// The owner's uid.
    pub uid: u32,
    /// The owner's gid.
    pub gid: u32,
    /// The size in bytes.
    pub size: u64,
    /// The number of hard links (a file root writes or reads has one).
    pub nlink: u64,
    /// Modification time, in seconds since the epoch.
    pub mtime: f64,
}

impl Meta {
    #[allow(clippy::unnecessary_cast)] // st_nlink is u32 on some targets
    fn of(st: &rustix::fs::Stat) -> Meta {
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        };
        Meta {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            nlink: st.st_nlink as u64,
            mtime: st.st_mtime as f64 + st.st_mtime_nsec as f64 / 1e9,
        }
    }
}

/// A directory opened without following links; every operation takes a
/// path relative to it (plain names, no `..`, no absolute path).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// For messages only.
    path: PathBuf,
}

fn io_err(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// A one-line error naming `path`, of the same kind as `e`.
fn named(path: &Path, e: rustix::io::Errno) -> io::Error {
    let what = match e {
        rustix::io::Errno::LOOP => "is or goes through a symbolic link (refused)".to_string(),
        rustix::io::Errno::XDEV => "leads out of its directory (refused)".to_string(),
        e => io_err(e).to_string(),
    };
    io::Error::new(io_err(e).kind(), format!("{}: {what}", path.display()))
}

fn refused(path: &Path, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{}: {why} (refused)", path.display()))
}

/// The names of a relative path: `.` skipped; `..`, `/` and prefixes
/// refused.
fn names(rel: &Path) -> io::Result<Vec<&OsStr>> {
    rel.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(refused(rel, "not a plain relative path")),
        })
        .collect()
}

/// Whether `openat2` works here: 0 unknown, 1 yes, 2 no (ENOSYS, or
/// refused by a seccomp filter).
static OPENAT2: AtomicU8 = AtomicU8::new(0);

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// Opens the directory `names` below `fd`, following no link.
fn open_dir_beneath(fd: &OwnedFd, names: &[&OsStr], use_openat2: bool) -> rustix::io::Result<OwnedFd> {
    if names.is_empty() {
        return rustix::fs::openat(fd, c".", DIR_FLAGS, Mode::empty());
    }
    if use_openat2 && OPENAT2.load(Ordering::Relaxed) != 2 {
        let joined: PathBuf = names.iter().collect();
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(fd, &joined, DIR_FLAGS, Mode::empty(), resolve) {
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) if OPENAT2.load(Ordering::Relaxed) == 0 => {
                OPENAT2.store(2, Ordering::Relaxed);
            }
            // a concurrent rename: the walk below is as safe
            Err(rustix::io::Errno::AGAIN) => {}
            r => {
                OPENAT2.store(1, Ordering::Relaxed);
                return r;
            }
        }
    }
    let mut cur = rustix::fs::openat(fd, names[0], DIR_FLAGS, Mode::empty())?;
    for n in &names[1..] {
        cur = rustix::fs::openat(&cur, *n, DIR_FLAGS, Mode::empty())?;
    }
    Ok(cur)
}

/// Unique temporary names in one process.
static TMP: AtomicU64 = AtomicU64::new(0);

impl Dir {
    /// Opens a trusted directory: one of the node's roots (configured by
    /// root, so links in its path are followed), or a directory only root
    /// can replace.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(path, DIR_FLAGS.difference(OFlags::NOFOLLOW), Mode::empty()).map_err(|e| named(path, e))?;
        Ok(Dir { fd, path: path.to_path_buf() })
    }

    /// Opens the trusted directory `root`, then `rel` below it following no
    /// link (a partition: the instance root, then the partition's id).
    pub fn open_below(root: &Path, rel: &Path) -> io::Result<Dir> {
        Dir::open(root)?.open_dir(rel)
    }

    /// Opens `path`, whose parent is trusted (see [`Dir::open`]), without
    /// following its last component (a partition directory, a software
    /// path).
    pub fn open_nofollow(path: &Path) -> io::Result<Dir> {
        match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => Dir::open_below(parent, Path::new(name)),
            _ => Err(refused(path, "not a directory below another")),
        }
    }

    /// The path this directory was opened as (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn display(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// Opens the directory `rel` below this one, following no link.
    pub fn open_dir(&self, rel: &Path) -> io::Result<Dir> {
        let n = names(rel)?;
        let fd = open_dir_beneath(&self.fd, &n, true).map_err(|e| named(&self.display(rel), e))?;
        Ok(Dir { fd, path: self.display(rel) })
    }

    /// The directory holding `rel` and `rel`'s last name.
    fn parent<'a>(&self, rel: &'a Path) -> io::Result<(Dir, &'a OsStr)> {
        let n = names(rel)?;
        let Some((last, dirs)) = n.split_last() else {
            return Err(refused(&self.display(rel), "no file name"));
        };
        let parent: PathBuf = dirs.iter().collect();
        let fd = open_dir_beneath(&self.fd, dirs, true).map_err(|e| named(&self.display(&parent), e))?;
        Ok((Dir { fd, path: self.display(&parent) }, last))
    }

    /// Metadata of `rel` itself (a link is not followed).
    pub fn metadata(&self, rel: &Path) -> io::Result<Meta> {
        let (dir, name) = self.parent(rel)?;
        let st = rustix::fs::statat(&dir.fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| named(&self.display(rel), e))?;
        Ok(Meta::of(&st))
    }

    /// Metadata of this directory.
    pub fn own_metadata(&self) -> io::Result<Meta> {
        rustix::fs::fstat(&self.fd).map(|st| Meta::of(&st)).map_err(|e| named(&self.path, e))
    }

    /// Whether `rel` exists (a link counts, not followed).
    pub fn exists(&self, rel: &Path) -> bool {
        self.metadata(rel).is_ok()
    }

    /// Opens the regular file `rel` (one link only) with `flags`, without
    /// following a link or blocking on a FIFO; `O_NONBLOCK` is cleared once
    /// the file is known to be regular.
    fn open_file(&self, rel: &Path, flags: OFlags, mode: u32) -> io::Result<File> {
        let (dir, name) = self.parent(rel)?;
        let flags = flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd = rustix::fs::openat(&dir.fd, name, flags, Mode::from_raw_mode(mode)).map_err(|e| named(&self.display(rel), e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| named(&self.display(rel), e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(refused(&self.display(rel), "not a regular file"));
        }
        if st.st_nlink > 1 {
            return Err(refused(&self.display(rel), "a file with several hard links"));
        }
        rustix::fs::fcntl_setfl(&fd, flags.intersection(OFlags::APPEND)).map_err(|e| named(&self.display(rel), e))?;
        Ok(File::from(fd))
    }

    /// The content of the regular file `rel`, at most `max` bytes (more is
    /// an error).
    pub fn read(&self, rel: &Path, max: u64) -> io::Result<Vec<u8>> {
        let f = self.open_file(rel, OFlags::RDONLY, 0)?;
        let mut buf = Vec::new();
        f.take(max + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > max {
            return Err(refused(&self.display(rel), &format!("larger than {max} bytes")));
        }
        Ok(buf)
    }

    /// The first `max` bytes (at most) of the regular file `rel`.
    pub fn read_head(&self, rel: &Path, max: u64) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open_file(rel, OFlags::RDONLY, 0)?.take(max).read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// The first `max` bytes of the regular file `rel` (no link followed,
    /// never blocking), hard links allowed: for reads whose content never
    /// leaves the node and decides nothing dangerous (`node prune`'s
    /// signatures, where a script hard-linked by buildout must count).
    pub fn read_head_linked(&self, rel: &Path, max: u64) -> io::Result<Vec<u8>> {
        let (dir, name) = self.parent(rel)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd = rustix::fs::openat(&dir.fd, name, flags, Mode::empty()).map_err(|e| named(&self.display(rel), e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| named(&self.display(rel), e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(refused(&self.display(rel), "not a regular file"));
        }
        let mut buf = Vec::new();
        File::from(fd).take(max).read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// [`Dir::read`] as UTF-8 text.
    pub fn read_to_string(&self, rel: &Path, max: u64) -> io::Result<String> {
        String::from_utf8(self.read(rel, max)?).map_err(|_| refused(&self.display(rel), "not UTF-8 text"))
    }

    /// Writes `rel` atomically: a temporary file in the same directory,
    /// created with its final `mode` (and given to `owner`) before any byte
    /// is written, then renamed over whatever `rel` was (a link or a FIFO is
    /// replaced, never followed).
    pub fn write(&self, rel: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        let mut tmp = OsString::from(".");
        tmp.push(name);
        // unpredictable: a name planted in advance cannot make every write fail
        tmp.push(format!(".tmp{}-{}-{:08x}", std::process::id(), TMP.fetch_add(1, Ordering::Relaxed), rand::random::<u32>()));
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&dir.fd, tmp.as_os_str(), flags, Mode::from_raw_mode(mode & 0o600))
            .map_err(|e| named(&self.display(rel), e))?;
        let result = (|| {
            if let Some((uid, gid)) = owner {
                rustix::fs::fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
            }
            // the umask does not apply to fchmod: exactly `mode`, before any content
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
            let mut f = File::from(fd);
            f.write_all(data).map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))?;
            rustix::fs::renameat(&dir.fd, tmp.as_os_str(), &dir.fd, name)
        })();
        if let Err(e) = result {
            let _ = rustix::fs::unlinkat(&dir.fd, tmp.as_os_str(), AtFlags::empty());
            return Err(named(&self.display(rel), e));
        }
        Ok(())
    }

    /// [`Dir::write`] unless `rel` already holds `data` with this mode and
    /// owner; true when written.
    pub fn write_if_changed(&self, rel: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<bool> {
        let same = self.read(rel, data.len() as u64).ok().as_deref() == Some(data)
            && self.metadata(rel).is_ok_and(|m| m.mode == mode && owner.is_none_or(|o| (m.uid, m.gid) == o));
        if same {
            return Ok(false);
        }
        self.write(rel, data, mode, owner)?;
        Ok(true)
    }

    /// Opens `rel` for appending (created with `mode` and given to `owner`
    /// when missing); refused unless a regular file with one link.
    pub fn append(&self, rel: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<File> {
        let f = self.open_file(rel, OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE, mode)?;
        if let Some((uid, gid)) = owner {
            let st = rustix::fs::fstat(&f).map_err(|e| named(&self.display(rel), e))?;
            if (st.st_uid, st.st_gid) != (uid, gid) {
                rustix::fs::fchown(&f, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(|e| named(&self.display(rel), e))?;
            }
        }
        Ok(f)
    }

    /// Renames `from` to `to`, both below this directory (links are renamed,
    /// never followed).
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (a, an) = self.parent(from)?;
        let (b, bn) = self.parent(to)?;
        rustix::fs::renameat(&a.fd, an, &b.fd, bn).map_err(|e| named(&self.display(from), e))
    }

    /// Creates the directory `rel` and its missing parents (each with
    /// `mode`, given to `owner`), never through a link; opens it.
    pub fn create_dir_all(&self, rel: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<Dir> {
        let mut cur = Dir { fd: open_dir_beneath(&self.fd, &[], false).map_err(|e| named(&self.path, e))?, path: self.path.clone() };
        for n in names(rel)? {
            let path = cur.path.join(n);
            let created = match rustix::fs::mkdirat(&cur.fd, n, Mode::from_raw_mode(mode)) {
                Ok(()) => true,
                Err(rustix::io::Errno::EXIST) => false,
                Err(e) => return Err(named(&path, e)),
            };
            let fd = rustix::fs::openat(&cur.fd, n, DIR_FLAGS, Mode::empty()).map_err(|e| named(&path, e))?;
            if created {
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| named(&path, e))?;
                if let Some((uid, gid)) = owner {
                    rustix::fs::fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(|e| named(&path, e))?;
                }
            }
            cur = Dir { fd, path };
        }
        Ok(cur)
    }

    /// Sets this directory's mode (through its descriptor).
    pub fn set_own_mode(&self, mode: u32) -> io::Result<()> {
        rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(mode)).map_err(|e| named(&self.path, e))
    }

    /// Gives this directory to `uid:gid` (through its descriptor).
    pub fn chown_self(&self, uid: u32, gid: u32) -> io::Result<()> {
        rustix::fs::fchown(&self.fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(|e| named(&self.path, e))
    }

    /// Sets the mode of the file or directory `rel` (a link is refused):
    /// through an `O_PATH` descriptor, so that unreadable entries work too.
    pub fn set_mode(&self, rel: &Path, mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        chmod_entry(&dir.fd, name, mode).map_err(|e| named(&self.display(rel), e))
    }

    /// Gives `rel` itself to `uid:gid` (a link is not followed: the link
    /// itself changes owner); a file with several hard links is refused.
    pub fn chown(&self, rel: &Path, uid: u32, gid: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        match chown_entry_only(&dir.fd, name, uid, gid) {
            Ok(true) => Ok(()),
            Ok(false) => Err(refused(&self.display(rel), "a file with several hard links")),
            Err(e) => Err(named(&self.display(rel), e)),
        }
    }

    /// Removes the file or link `rel` (a directory is an error; see
    /// [`Dir::remove_tree`]).
    pub fn remove_file(&self, rel: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        rustix::fs::unlinkat(&dir.fd, name, AtFlags::empty()).map_err(|e| named(&self.display(rel), e))
    }

    /// The target of the link `rel`.
    pub fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        let (dir, name) = self.parent(rel)?;
        let t = rustix::fs::readlinkat(&dir.fd, name, Vec::new()).map_err(|e| named(&self.display(rel), e))?;
        Ok(PathBuf::from(OsStr::from_bytes(t.as_bytes())))
    }

    /// Creates the link `rel` → `target` (given to `owner`); an existing
    /// entry is an error.
    pub fn symlink(&self, target: &Path, rel: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        rustix::fs::symlinkat(target, &dir.fd, name).map_err(|e| named(&self.display(rel), e))?;
        if let Some((uid, gid)) = owner {
            rustix::fs::chownat(&dir.fd, name, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| named(&self.display(rel), e))?;
        }
        Ok(())
    }

    /// The entries of the directory `rel` (`.` for this one), sorted by
    /// name, with their kinds as seen without following them.
    pub fn entries(&self, rel: &Path) -> io::Result<Vec<(OsString, Kind)>> {
        let d = self.open_dir(rel)?;
        list(&d.fd).map_err(|e| named(&d.path, e))
    }

    /// Removes `rel` whatever it is: a file or link is unlinked, a
    /// directory emptied first, never crossing a link. Missing is fine.
    pub fn remove_tree(&self, rel: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        let path = self.display(rel);
        match rustix::fs::statat(&dir.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(named(&path, e)),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                remove_entry(&dir.fd, name, true, 0).map_err(|e| named(&path, e))
            }
            Ok(_) => remove_entry(&dir.fd, name, false, 0).map_err(|e| named(&path, e)),
        }
    }

    /// Removes everything in this directory (dotfiles too), keeping the
    /// directory itself, never crossing a link; unreadable directories
    /// below are made readable (0700) first.
    pub fn empty(&self) -> io::Result<()> {
        empty_fd(&self.fd, 0).map_err(|e| named(&self.path, e))
    }

    /// Gives `rel` and everything below it to `uid:gid` (only what differs),
    /// never crossing a link (links themselves change owner); files with
    /// several hard links are left alone.
    pub fn chown_tree(&self, rel: &Path, uid: u32, gid: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        chown_entry(&dir.fd, name, uid, gid, 0).map_err(|e| named(&self.display(rel), e))
    }
}

/// chmod of the entry `name` of `dir`, through an `O_PATH` descriptor and
/// `/proc/self/fd` (the kernel has no no-follow `fchmodat` before 6.6):
/// only files and directories.
fn chmod_entry(dir: &OwnedFd, name: &OsStr, mode: u32) -> rustix::io::Result<()> {
    let fd = rustix::fs::openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if !matches!(FileType::from_raw_mode(st.st_mode), FileType::RegularFile | FileType::Directory) {
        return Err(rustix::io::Errno::LOOP);
    }
    rustix::fs::chmod(format!("/proc/self/fd/{}", fd.as_raw_fd()), Mode::from_raw_mode(mode))
}

/// chown of the entry `name` of `dir` itself, through an `O_PATH`
/// descriptor: what is checked is what changes owner. False (and nothing
/// done) for a non-directory with several hard links: a second name of
/// someone else's file.
fn chown_entry_only(dir: &OwnedFd, name: &OsStr, uid: u32, gid: u32) -> rustix::io::Result<bool> {
    let fd = rustix::fs::openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory && st.st_nlink > 1 {
        return Ok(false);
    }
    if (st.st_uid, st.st_gid) != (uid, gid) {
        rustix::fs::chownat(&fd, c"", Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)), AtFlags::EMPTY_PATH)?;
    }
    Ok(true)
}

fn list(fd: &OwnedFd) -> rustix::io::Result<Vec<(OsString, Kind)>> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(fd)? {
        let e = e?;
        let name = OsStr::from_bytes(e.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let ft = match e.file_type() {
            FileType::Unknown => FileType::from_raw_mode(rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)?.st_mode),
            t => t,
        };
        let kind = match ft {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        };
        out.push((name.to_os_string(), kind));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Opens the directory `name` of `dir`, making it readable first when it
/// is not (as its owner could have left it).
fn open_child_dir(dir: &OwnedFd, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    match rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
        Err(rustix::io::Errno::ACCESS) => {
            chmod_entry(dir, name, 0o700)?;
            rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())
        }
        r => r,
    }
}

fn remove_entry(dir: &OwnedFd, name: &OsStr, is_dir: bool, depth: usize) -> rustix::io::Result<()> {
    if is_dir {
        if depth >= MAX_DEPTH {
            return Err(rustix::io::Errno::NAMETOOLONG);
        }
        // a directory swapped for a link since it was listed: ELOOP, refused
        let child = open_child_dir(dir, name)?;
        empty_fd(&child, depth + 1)?;
    }
    let flags = if is_dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
    match rustix::fs::unlinkat(dir, name, flags) {
        // a directory we cannot write in: make it writable, once
        Err(rustix::io::Errno::ACCESS) => {
            rustix::fs::fchmod(dir, Mode::from_raw_mode(0o700))?;
            rustix::fs::unlinkat(dir, name, flags)
        }
        r => r,
    }
}

fn empty_fd(dir: &OwnedFd, depth: usize) -> rustix::io::Result<()> {
    let entries = match list(dir) {
        Err(rustix::io::Errno::ACCESS) => {
            rustix::fs::fchmod(dir, Mode::from_raw_mode(0o700))?;
            list(dir)?
        }
        r => r?,
    };
    for (name, kind) in entries {
        match remove_entry(dir, &name, kind == Kind::Dir, depth) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn chown_entry(dir: &OwnedFd, name: &OsStr, uid: u32, gid: u32, depth: usize) -> rustix::io::Result<()> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        r => r?,
    };
    // a second name of someone else's file (a planted hard link): never chowned
    match chown_entry_only(dir, name, uid, gid) {
        Ok(_) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e),
    }
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft == FileType::Directory {
        if depth >= MAX_DEPTH {
            return Err(rustix::io::Errno::NAMETOOLONG);
        }
        let child = match rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
            // swapped for a link since: not followed
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR | rustix::io::Errno::NOENT) => return Ok(()),
            r => r?,
        };
        for (n, _) in list(&child)? {
            chown_entry(&child, &n, uid, gid, depth + 1)?;
        }
    }
    Ok(())
}

impl AsFd for Dir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests;
