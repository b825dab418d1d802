//! One grammar for every name the node receives from outside (the master or
//! a partition) and turns into a path, a file name or a line of generated
//! configuration (`threat-model.md`, node rules 1 and 2).
//!
//! Each kind of name is a newtype that can only be built by validating it:
//! [`PartitionId`] and [`SoftwareUrl`] from the master, [`SoftwareHash`]
//! computed from a URL (or read back from the software root),
//! [`ProgramName`], [`PromiseName`] and [`ScriptName`] from the file names a
//! partition user leaves in `etc/run|service|promise|report`, and
//! [`SoftwareType`] for what is only shown. [`beneath`] proves that a path
//! built from names stays under its root. Everything here is pure.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use md5::{Digest, Md5};

/// Why a name was refused: which kind of name, the name as it can be shown
/// safely (escaped, cut), and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} '{shown}': {reason}")]
pub struct NameError {
    /// What the name was for ("partition id", "software release URL", …).
    pub kind: &'static str,
    /// The name, escaped and cut to [`SHOWN_MAX`] characters.
    pub shown: String,
    /// The rule the name breaks.
    pub reason: String,
}

impl NameError {
    /// The same error about `dir/<name>` (which file of which directory).
    pub fn in_dir(self, dir: &str) -> NameError {
        NameError { shown: format!("{dir}/{}", self.shown), ..self }
    }
}

/// How many characters of a refused name an error message shows.
pub const SHOWN_MAX: usize = 80;

/// A name as it can be logged or sent: control characters escaped (no
/// forged log lines), cut to [`SHOWN_MAX`] characters.
pub fn shown(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if i == SHOWN_MAX {
            out.push('…');
            break;
        }
        if c.is_control() || is_line_separator(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// U+2028 and U+2029 end lines for Python's `str.splitlines`.
fn is_line_separator(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}')
}

fn refuse(kind: &'static str, name: &str, reason: impl Into<String>) -> NameError {
    NameError { kind, shown: shown(name), reason: reason.into() }
}

/// The first character that ends a line or is a control character (NUL,
/// newline, CR, tab, DEL, C1…), if any.
fn first_control(s: &str) -> Option<char> {
    s.chars().find(|c| c.is_control() || is_line_separator(*c))
}

fn check_length(kind: &'static str, s: &str, max: usize) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(refuse(kind, s, "empty"));
    }
    if s.len() > max {
        return Err(refuse(kind, s, format!("{} bytes, at most {max} allowed", s.len())));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The validated name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<Path> for $name {
            fn as_ref(&self) -> &Path {
                Path::new(&self.0)
            }
        }
    };
}

name_type!(
    /// A partition reference from the master (`slappart0`): ASCII letters,
    /// digits, `-`, `_` and `.`, at most [`PartitionId::MAX`] bytes, no `..`,
    /// not starting with `.` or `-`. One plain path component, so
    /// [`PartitionId::dir`] is always a direct child of its root; also safe
    /// in supervisord section names and the buildout tail.
    PartitionId
);

impl PartitionId {
    /// The longest partition id accepted, in bytes.
    pub const MAX: usize = 128;
    const KIND: &'static str = "partition id";

    /// Validates a partition reference.
    pub fn parse(s: &str) -> Result<PartitionId, NameError> {
        check_length(Self::KIND, s, Self::MAX)?;
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
            return Err(refuse(Self::KIND, s, format!("{:?} is not allowed (letters, digits, '-', '_', '.' only)", c)));
        }
        if s.starts_with('.') || s.starts_with('-') {
            return Err(refuse(Self::KIND, s, "starts with '.' or '-'"));
        }
        if s.contains("..") {
            return Err(refuse(Self::KIND, s, "contains '..'"));
        }
        Ok(PartitionId(s.to_string()))
    }

    /// The partition's directory: `root/<id>`, proven under `root`.
    pub fn dir(&self, root: &Path) -> PathBuf {
        beneath(root, Path::new(&self.0)).expect("a partition id is one plain path component")
    }
}

name_type!(
    /// A software release URL from the master: at most
    /// [`SoftwareUrl::MAX`] bytes, no control character (newline, CR, tab,
    /// NUL…), no whitespace (buildout splits `extends` on it), no `${`
    /// (buildout substitution, which has no escape) and no `%(`
    /// (configparser interpolation). Any URL slapgrid can build passes.
    SoftwareUrl
);

impl SoftwareUrl {
    /// The longest URL accepted, in bytes.
    pub const MAX: usize = 4096;
    const KIND: &'static str = "software release URL";

    /// Validates a software release URL.
    pub fn parse(s: &str) -> Result<SoftwareUrl, NameError> {
        check_length(Self::KIND, s, Self::MAX)?;
        if let Some(c) = first_control(s) {
            return Err(refuse(Self::KIND, s, format!("contains the control character {c:?}")));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(refuse(Self::KIND, s, "contains whitespace"));
        }
        buildout_safe(Self::KIND, s)?;
        Ok(SoftwareUrl(s.to_string()))
    }

    /// Where this release is installed under a software root.
    pub fn hash(&self) -> SoftwareHash {
        SoftwareHash::of(&self.0)
    }
}

/// Refuses what a buildout value cannot hold literally: `${` (substitution,
/// which buildout cannot escape: `$${` stays `$${`) and `%(`.
pub(crate) fn buildout_safe(kind: &'static str, s: &str) -> Result<(), NameError> {
    if s.contains("${") {
        return Err(refuse(kind, s, "contains '${' (buildout substitution)"));
    }
    if s.contains("%(") {
        return Err(refuse(kind, s, "contains '%(' (configparser interpolation)"));
    }
    Ok(())
}

name_type!(
    /// The directory name of a software release: the md5 of its URL, 32
    /// lowercase hexadecimal digits.
    SoftwareHash
);

impl SoftwareHash {
    const KIND: &'static str = "software hash";

    /// The hash of a URL (any string: the md5 of its bytes).
    pub fn of(url: &str) -> SoftwareHash {
        let digest = Md5::digest(url.as_bytes());
        SoftwareHash(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Validates a hash read back (a directory name, `--only-sr`).
    pub fn parse(s: &str) -> Result<SoftwareHash, NameError> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(refuse(Self::KIND, s, "not 32 lowercase hexadecimal digits"));
        }
        Ok(SoftwareHash(s.to_string()))
    }

    /// The software path: `root/<hash>`, proven under `root`.
    pub fn dir(&self, root: &Path) -> PathBuf {
        beneath(root, Path::new(&self.0)).expect("a software hash is one plain path component")
    }
}

/// The grammar of a file name a partition user chooses in
/// `etc/run|service|promise|report`: valid UTF-8, 1 to 255 bytes, not
/// starting with `.`, and none of: a control character or whitespace (lines
/// and words of supervisord's INI and of its shlex-split `command=`), `/`,
/// `[`, `]` (section headers), `%` (supervisord's `%(…)s` expansion), `;`,
/// `:`, `=`, `,` (the group's program list), `'`, `"`, `\` (shlex quoting).
fn file_name(kind: &'static str, name: &OsStr) -> Result<String, NameError> {
    let Some(s) = name.to_str() else {
        return Err(refuse(kind, &name.to_string_lossy(), "not valid UTF-8"));
    };
    check_length(kind, s, 255)?;
    if s.starts_with('.') {
        return Err(refuse(kind, s, "starts with '.'"));
    }
    if let Some(c) = s.chars().find(|c| c.is_control() || c.is_whitespace() || is_line_separator(*c)) {
        return Err(refuse(kind, s, format!("contains {c:?}")));
    }
    if let Some(c) = s.chars().find(|c| matches!(c, '/' | '[' | ']' | '%' | ';' | ':' | '=' | ',' | '\'' | '"' | '\\')) {
        return Err(refuse(kind, s, format!("contains {c:?}")));
    }
    Ok(s.to_string())
}

name_type!(
    /// A program file name in `etc/run` or `etc/service` (the file name
    /// grammar: see [`ProgramName::parse`]).
    ProgramName
);
name_type!(
    /// A legacy promise file name in `etc/promise` (the file name grammar).
    PromiseName
);
name_type!(
    /// A report script file name in `etc/report` (the file name grammar).
    ScriptName
);

/// A name in the file name grammar, for [`parse_all`].
pub trait FileName: Sized + Ord {
    /// Validates one file name.
    fn from_os(name: &OsStr) -> Result<Self, NameError>;
}

macro_rules! file_name_parse {
    ($name:ident, $kind:literal) => {
        impl FileName for $name {
            fn from_os(name: &OsStr) -> Result<Self, NameError> {
                Self::parse(name)
            }
        }

        impl $name {
            /// Validates a file name: valid UTF-8, 1 to 255 bytes, no leading
            /// `.`, no control character, whitespace, `/`, `[`, `]`, `%`,
            /// `;`, `:`, `=`, `,`, quote or backslash.
            pub fn parse(name: impl AsRef<OsStr>) -> Result<$name, NameError> {
                file_name($kind, name.as_ref()).map($name)
            }
        }
    };
}
file_name_parse!(ProgramName, "program file name");
file_name_parse!(PromiseName, "promise file name");
file_name_parse!(ScriptName, "report script file name");

/// Validates every file name of a directory listing (`dir` names the
/// directory in the error: `etc/service/<name>`), sorted.
pub fn parse_all<T: FileName>(dir: &str, names: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Vec<T>, NameError> {
    let mut out = Vec::new();
    for n in names {
        match T::from_os(&n) {
            Ok(v) => out.push(v),
            Err(e) => return Err(e.in_dir(dir)),
        }
    }
    out.sort();
    Ok(out)
}

name_type!(
    /// A software type from the master, only ever shown: 1 to 255 bytes, no
    /// control character.
    SoftwareType
);

impl SoftwareType {
    const KIND: &'static str = "software type";

    /// Validates a software type.
    pub fn parse(s: &str) -> Result<SoftwareType, NameError> {
        check_length(Self::KIND, s, 255)?;
        if let Some(c) = first_control(s) {
            return Err(refuse(Self::KIND, s, format!("contains the control character {c:?}")));
        }
        Ok(SoftwareType(s.to_string()))
    }
}

/// A partition from the master the node refuses to act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct Refusal {
    /// The partition's id when it is valid itself (then the master can be
    /// told, about that partition).
    pub id: Option<PartitionId>,
    /// What is wrong.
    pub error: NameError,
}

/// The gate every partition from the master passes before the node uses
/// it: a valid id and, for a partition in use, a valid software URL.
pub fn check_partition(p: &slap::model::ComputerPartition) -> Result<PartitionId, Refusal> {
    let id = PartitionId::parse(&p.partition_id).map_err(|error| Refusal { id: None, error })?;
    if let Some(url) = p.software_release_url() {
        if let Err(error) = SoftwareUrl::parse(url) {
            return Err(Refusal { id: Some(id), error });
        }
    }
    Ok(id)
}

/// `root/rel`, proven to stay under `root` lexically: `rel` must be
/// relative and made only of plain components (no `..`, no `.`, no root,
/// no empty path). Symbolic links are not this function's business (see
/// ARCHITECTURE.md: the node does not follow a partition's links).
pub fn beneath(root: &Path, rel: &Path) -> Result<PathBuf, NameError> {
    let text = rel.to_string_lossy();
    let mut parts = 0;
    for c in rel.components() {
        match c {
            Component::Normal(_) => parts += 1,
            Component::ParentDir => return Err(refuse("relative path", &text, "contains '..'")),
            Component::CurDir => return Err(refuse("relative path", &text, "contains '.'")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("relative path", &text, "is absolute")),
        }
    }
    if parts == 0 {
        return Err(refuse("relative path", &text, "empty"));
    }
    let joined = root.join(rel);
    if !joined.starts_with(root) || joined.components().count() != root.components().count() + parts {
        return Err(refuse("relative path", &text, format!("leaves {}", root.display())));
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    /// Every name source gets these: traversal, absolute, newline, `]`, `%`,
    /// NUL, 10 KB.
    fn hostile() -> Vec<String> {
        vec![
            "../../victim".into(),
            "..".into(),
            "/abs/victim".into(),
            "a/b".into(),
            "x\n[program:x]\ncommand=/bin/sh\nuser=root".into(),
            "x\r".into(),
            "a]b".into(),
            "a%(here)sb".into(),
            "a\0b".into(),
            "a".repeat(10 * 1024),
            String::new(),
        ]
    }

    #[test]
    fn partition_ids() {
        for ok in ["slappart0", "slappart12", "COMP-1_part.3", "a"] {
            assert_eq!(PartitionId::parse(ok).unwrap().as_str(), ok);
        }
        for bad in hostile().iter().map(String::as_str).chain([".hidden", "-rf", "a..b", "a b", "a:b", "é", "a,b"]) {
            let e = PartitionId::parse(bad).unwrap_err();
            assert_eq!(e.kind, "partition id");
            assert!(!e.to_string().contains('\n') && e.to_string().len() < 300, "{e}");
        }
        assert!(PartitionId::parse(&"a".repeat(PartitionId::MAX)).is_ok());
        let root = Path::new("/srv/slapgrid");
        assert_eq!(PartitionId::parse("slappart0").unwrap().dir(root), Path::new("/srv/slapgrid/slappart0"));
    }

    #[test]
    fn software_urls() {
        for ok in [
            "https://lab.nexedi.com/nexedi/slapos/raw/1.0.300/software/kvm/software.cfg",
            "/srv/sr/hello-http/software.cfg",
            "http://x/a%20b.cfg",
            "http://x/$a",
            "http://[::1]:8080/software.cfg;x=1",
        ] {
            assert_eq!(SoftwareUrl::parse(ok).unwrap().as_str(), ok);
        }
        let hostile = hostile();
        let accepted: Vec<&str> = hostile.iter().map(String::as_str).filter(|u| SoftwareUrl::parse(u).is_ok()).collect();
        // paths are fine in a URL (it is hashed); everything else is refused
        assert_eq!(accepted, ["../../victim", "..", "/abs/victim", "a/b", "a]b"]);
        for bad in ["http://sr/software.cfg\nextends = file:///etc/passwd", "a\tb", "a b", "${buildout:directory}", "a\u{2028}b", "a\u{85}"]
        {
            assert!(SoftwareUrl::parse(bad).is_err(), "{bad:?}");
        }
        assert!(SoftwareUrl::parse(&"a".repeat(SoftwareUrl::MAX)).is_ok());
    }

    #[test]
    fn software_hashes() {
        let url = SoftwareUrl::parse("http://example.com/software.cfg").unwrap();
        assert_eq!(url.hash().as_str(), "91d5c3732524c019b6f1d313793d8809");
        assert_eq!(url.hash().dir(Path::new("/opt/slapgrid")), Path::new("/opt/slapgrid/91d5c3732524c019b6f1d313793d8809"));
        assert!(SoftwareHash::parse("91d5c3732524c019b6f1d313793d8809").is_ok());
        for bad in ["91D5C3732524C019B6F1D313793D8809", "91d5c3732524c019b6f1d313793d880", "../../victim", ""] {
            assert!(SoftwareHash::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_names() {
        for ok in ["http-server", "check-port_8080", "monitor.py", "a+b@c~", "été"] {
            assert_eq!(ProgramName::parse(ok).unwrap().as_str(), ok);
            assert!(PromiseName::parse(ok).is_ok() && ScriptName::parse(ok).is_ok());
        }
        let refused = hostile()
            .into_iter()
            .chain(["x;y", "a:b", "a=b", "a,b", "a'b", "a\"b", "a\\b", "a b", "[x", ".hidden", "a\u{2028}"].map(String::from));
        for bad in refused {
            let e = ProgramName::parse(&bad).unwrap_err();
            assert_eq!(e.kind, "program file name");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        assert!(ProgramName::parse("a".repeat(255)).is_ok());
        assert!(ProgramName::parse(OsString::from_vec(vec![b'a', 0xff])).unwrap_err().reason.contains("UTF-8"));
    }

    #[test]
    fn a_listing_is_refused_as_a_whole_naming_the_file() {
        let names = ["b", "a", "x\n[program:y]"].map(OsString::from);
        let e = parse_all::<ProgramName>("etc/service", names).unwrap_err();
        assert_eq!(e.to_string(), "invalid program file name 'etc/service/x\\n[program:y]': contains '\\n'");
        let ok = parse_all::<ProgramName>("etc/run", ["b", "a"].map(OsString::from)).unwrap();
        assert_eq!(ok.iter().map(ProgramName::as_str).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn software_types_are_shown_only_when_clean() {
        assert!(SoftwareType::parse("default").is_ok() && SoftwareType::parse("kvm frontend").is_ok());
        assert!(SoftwareType::parse("a\nERROR forged").is_err() && SoftwareType::parse(&"t".repeat(10 * 1024)).is_err());
        assert_eq!(shown("a\nb\0"), "a\\nb\\u{0}");
        assert_eq!(shown(&"x".repeat(1000)).chars().count(), SHOWN_MAX + 1);
    }

    #[test]
    fn partitions_pass_the_gate_only_with_a_valid_id_and_url() {
        use slap::model::{ComputerPartition, SoftwareRelease};
        let with_url = |id: &str, url: &str| {
            let mut p = ComputerPartition::free("C", id);
            p.software_release = Some(SoftwareRelease::new(url, "C"));
            p
        };
        assert_eq!(check_partition(&with_url("slappart0", "http://sr")).unwrap().as_str(), "slappart0");
        assert!(check_partition(&ComputerPartition::free("C", "slappart1")).is_ok(), "a free partition has no URL");
        for id in ["../../victim", "/abs/victim"] {
            let r = check_partition(&with_url(id, "http://sr")).unwrap_err();
            assert_eq!(r.id, None, "an invalid id is never used, not even to report");
        }
        let r = check_partition(&with_url("slappart2", "http://sr\nextends = file:///x")).unwrap_err();
        assert_eq!(r.id.unwrap().as_str(), "slappart2");
        assert_eq!(r.error.kind, "software release URL");
    }

    #[test]
    fn joined_paths_stay_under_their_root() {
        let root = Path::new("/srv/slapgrid");
        assert_eq!(beneath(root, Path::new("slappart0/etc/service")).unwrap(), Path::new("/srv/slapgrid/slappart0/etc/service"));
        for bad in ["../victim", "a/../../b", "a/..", "/abs/victim", "", ".", "./a"] {
            assert!(beneath(root, Path::new(bad)).is_err(), "{bad:?}");
        }
        // trailing slashes, repeated separators and inner `.` are only spelling
        assert_eq!(beneath(root, Path::new("a//./b/")).unwrap(), Path::new("/srv/slapgrid/a/b"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the master sends, an accepted partition id is a single
        /// child of the instance root and a refused one never panics.
        #[test]
        fn accepted_partition_ids_are_direct_children(s in "\\PC{0,40}|[a-z./\\n%\\]-]{0,12}") {
            let root = Path::new("/srv/slapgrid");
            if let Ok(id) = PartitionId::parse(&s) {
                let dir = id.dir(root);
                prop_assert_eq!(dir.parent(), Some(root));
                prop_assert!(!s.contains('/') && !s.contains(".."));
            }
        }

        #[test]
        fn accepted_file_names_are_one_plain_component(s in "\\PC{0,40}|[a-z./\\n%\\]\\[=:;, -]{0,12}") {
            if let Ok(n) = ProgramName::parse(&s) {
                let joined = beneath(Path::new("/p/etc/service"), Path::new(n.as_str())).unwrap();
                prop_assert_eq!(joined.parent(), Some(Path::new("/p/etc/service")));
                prop_assert!(!n.as_str().contains(['\n', '%', '[', ']', ',', ' ']));
            }
        }

        #[test]
        fn accepted_urls_hold_no_line_break(s in "\\PC{0,40}|[a-z:/\\n\\r\\t ${}%(]{0,12}") {
            if let Ok(u) = SoftwareUrl::parse(&s) {
                let clean = !u.as_str().contains(['\n', '\r', '\0', ' ']) && !u.as_str().contains("${");
                prop_assert!(clean, "{:?}", u);
            }
        }
    }
}
