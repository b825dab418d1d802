//! Log lines as SlapOS prints them: `2026-11-24 17:44:52 slapos[15245] INFO message`
//! on the console, and `[2026-11-24 17:44:52,123] INFO     message` in log files.

use std::fmt;
use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter::LevelFilter, Layer};

use crate::Global;

struct ConsoleFormat;

impl<S, N> FormatEvent<S, N> for ConsoleFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
        write!(w, "{now} slapos[{}] {} ", std::process::id(), event.metadata().level())?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

struct FileFormat;

impl<S, N> FormatEvent<S, N> for FileFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S,%3f");
        write!(w, "[{now}] {:<8} ", event.metadata().level().as_str())?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Sets up the console log (stderr) and the optional `--log-file`.
pub fn init(global: &Global) -> anyhow::Result<()> {
    let level = if global.quiet {
        LevelFilter::WARN
    } else if global.verbose > 0 || global.debug {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    };
    // our crates log at `level`; dependencies only from warnings up
    let targets = tracing_subscriber::filter::Targets::new()
        .with_default(LevelFilter::WARN.min(level))
        .with_target("slap", level)
        .with_target("slapos", level)
        .with_target("slapos_proxy", level)
        .with_target("slapos_format", level)
        .with_target("slapos_grid", level)
        .with_target("slapos_config", level)
        // its notes on kernel attributes it does not know are not ours to show
        .with_target("netlink_packet_route", LevelFilter::ERROR);
    let console = tracing_subscriber::fmt::layer().event_format(ConsoleFormat).with_writer(std::io::stderr).with_filter(targets.clone());
    let file = match &global.log_file {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot open log file {}: {e}", path.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .event_format(FileFormat)
                    .with_ansi(false)
                    .with_writer(Mutex::new(f))
                    .with_filter(targets.with_default(LevelFilter::WARN.min(level.max(LevelFilter::INFO)))),
            )
        }
        None => None,
    };
    tracing_subscriber::registry().with(console).with(file).try_init()?;
    let _ = Level::INFO;
    Ok(())
}
