//! The per-partition log: while a worker handles a partition it is inside
//! a `tracing` span named [`SPAN`] whose `partition` field is the
//! partition's id, and [`layer`] (installed by the program beside its
//! console layer) copies every event of that span, from `INFO` up, to
//! `<pp>/.slapgrid/log/instance.log` as slapgrid writes it:
//! `[2026-11-24 17:44:52,123] INFO     slapos.grid message`.
//!
//! The file is opened by root through [`fsafe`](crate::fsafe) (never
//! through a link, regular with one link, rotated at 20 MiB) when the
//! span is entered ([`PartitionScope::enter`]), and kept in a table keyed
//! by the partition id until the scope ends.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::fsafe::Dir;
use crate::partition::{chown_tree, Owner};

/// The name of the span a partition is processed in.
pub const SPAN: &str = "partition";

/// The size beyond which `instance.log` becomes `instance.log.1`.
const ROTATE_AT: u64 = 20 * 1024 * 1024;

/// The open partition logs, by partition id.
type Files = Mutex<HashMap<String, Arc<Mutex<File>>>>;

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(Files::default)
}

fn file_of(id: &str) -> Option<Arc<Mutex<File>>> {
    files().lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
}

/// The current thread is inside the span of one partition, whose log file
/// is open, until this is dropped.
pub struct PartitionScope {
    id: String,
    _entered: tracing::span::EnteredSpan,
}

impl PartitionScope {
    /// Opens `<pp>/.slapgrid/log/instance.log` (its directories created
    /// 0755/0700 and given to `owner`; a failure is logged and only the
    /// console gets the lines) and enters the partition's span.
    pub fn enter(pp: &Path, id: &str, owner: &Owner) -> PartitionScope {
        match open(pp, owner) {
            Ok(f) => {
                files().lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), Arc::new(Mutex::new(f)));
            }
            Err(e) => tracing::warn!("no partition log for {id}: {e}"),
        }
        let span = tracing::info_span!(SPAN, partition = id);
        PartitionScope { id: id.to_string(), _entered: span.entered() }
    }
}

impl Drop for PartitionScope {
    fn drop(&mut self) {
        files().lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// The partition's log file, for appending, through directory descriptors.
fn open(pp: &Path, owner: &Owner) -> std::io::Result<File> {
    let to = owner.give_to();
    let pd = Dir::open_nofollow(pp)?;
    pd.create_dir_all(Path::new(".slapgrid"), 0o755, to)?;
    let dir = pd.create_dir_all(Path::new(".slapgrid/log"), 0o700, to)?;
    dir.set_own_mode(0o700)?;
    let log = Path::new("instance.log");
    if dir.metadata(log).is_ok_and(|m| m.size > ROTATE_AT) {
        dir.rename(log, Path::new("instance.log.1"))?;
    }
    let f = dir.append(log, 0o640, to)?;
    chown_tree(pp, ".slapgrid", owner.uid, owner.gid);
    Ok(f)
}

/// The layer that writes the events of partition spans to their files:
/// those of this crate and of the SLAP client, from `INFO` up (debug lines
/// and other libraries' lines stay on the console).
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let ours = Targets::new().with_target(env!("CARGO_CRATE_NAME"), LevelFilter::INFO).with_target("slap", LevelFilter::INFO);
    PartitionFiles.with_filter(ours)
}

/// The partition id a span carries (kept in its extensions).
struct PartitionOf(String);

/// See [`layer`].
struct PartitionFiles;

impl<S> Layer<S> for PartitionFiles
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != SPAN {
            return;
        }
        let mut field = FieldText::new("partition");
        attrs.record(&mut field);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(PartitionOf(field.text));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else { return };
        let Some(id) = scope.into_iter().find_map(|s| s.extensions().get::<PartitionOf>().map(|p| p.0.clone())) else { return };
        let Some(file) = file_of(&id) else { return };
        let mut message = FieldText::new("message");
        event.record(&mut message);
        let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S,%3f");
        let level = match *event.metadata().level() {
            Level::WARN => "WARNING",
            ref l => l.as_str(),
        };
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(f, "[{now}] {level:<8} slapos.grid {}", message.text);
    }
}

/// The text of one field (`message`: the event's message), other fields
/// appended as ` name=value`.
struct FieldText {
    name: &'static str,
    text: String,
}

impl FieldText {
    fn new(name: &'static str) -> FieldText {
        FieldText { name, text: String::new() }
    }
}

impl Visit for FieldText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == self.name {
            self.text.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == self.name {
            let _ = write!(self.text, "{value:?}");
        } else if self.name == "message" {
            let _ = write!(self.text, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn me(dir: &Path) -> Owner {
        Owner::of(dir).unwrap()
    }

    #[test]
    fn the_lines_of_a_partition_span_go_to_its_file_only() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("slappart0"), d.path().join("slappart1"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let subscriber = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside every partition");
            {
                let _scope = PartitionScope::enter(&a, "slappart0", &me(&a));
                tracing::info!("Processing Computer Partition slappart0.");
                tracing::debug!("not in the file");
                crate::partition::output("slappart0", "buildout says hi");
                tracing::warn!(code = 3, "careful");
                tracing::info!(target: "another_library", "not ours");
            }
            let _scope = PartitionScope::enter(&b, "slappart1", &me(&b));
            tracing::error!("broken");
        });
        let text = std::fs::read_to_string(a.join(".slapgrid/log/instance.log")).unwrap();
        let lines: Vec<&str> = text.lines().map(|l| l.split_once("] ").unwrap().1).collect();
        assert_eq!(
            lines,
            [
                "INFO     slapos.grid Processing Computer Partition slappart0.",
                "INFO     slapos.grid [slappart0] buildout says hi",
                "WARNING  slapos.grid careful code=3",
            ]
        );
        assert!(text.starts_with('[') && text.as_bytes()[24] == b']', "{text}");
        let other = std::fs::read_to_string(b.join(".slapgrid/log/instance.log")).unwrap();
        assert!(other.ends_with("ERROR    slapos.grid broken\n"), "{other}");
        assert!(file_of("slappart0").is_none(), "closed at the end of its scope");
    }

    #[test]
    fn a_log_planted_as_a_link_is_never_written_through() {
        let d = tempfile::tempdir().unwrap();
        // (an id of its own: the table of open logs is the process's)
        let pp = d.path().join("slappart9");
        std::fs::create_dir_all(pp.join(".slapgrid/log")).unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        std::os::unix::fs::symlink(&victim, pp.join(".slapgrid/log/instance.log")).unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer()), || {
            let _scope = PartitionScope::enter(&pp, "slappart9", &me(&pp));
            tracing::info!("to the console only");
        });
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    }
}
