//! Log lines as SlapOS prints them: `2026-11-24 17:44:52 slapos[15245] INFO message`
//! on the console, and `[2026-11-24 17:44:52,123] INFO     message` in log files.
//!
//! The console line is that of SlapOS's `coloredlogs` handler: timestamp
//! (green), `slapos[pid]` (blue), level (bold), message (red for errors,
//! yellow for warnings, green for debug), colored only on a terminal unless
//! `--log-color=always|never` says otherwise; `--log-time` drops the
//! timestamp, as the flag of the same name does in SlapOS 1.26.1.

use std::fmt;
use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::sync::Mutex;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter::LevelFilter, Layer};

use crate::{ColorWhen, Global};

/// The level as Python's logging names it (`WARNING`, not `WARN`).
fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::WARN => "WARNING",
        _ => level.as_str(),
    }
}

/// Console lines: `[time ]slapos[pid] LEVEL message`, optionally with ANSI colors.
struct ConsoleFormat {
    color: bool,
    time: bool,
}

impl ConsoleFormat {
    /// Writes `text` in the SGR style `sgr` (e.g. `0;32`) when colors are on.
    fn styled(&self, w: &mut Writer<'_>, sgr: &str, text: impl fmt::Display) -> fmt::Result {
        match self.color {
            true => write!(w, "\x1b[{sgr}m{text}\x1b[0m "),
            false => write!(w, "{text} "),
        }
    }
}

impl<S, N> FormatEvent<S, N> for ConsoleFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        if self.time {
            self.styled(&mut w, "0;32", chrono::Local::now().format("%Y-%m-%d %H:%M:%S"))?;
        }
        self.styled(&mut w, "0;34", format_args!("slapos[{}]", std::process::id()))?;
        let level = event.metadata().level();
        self.styled(&mut w, "1;30", level_name(level))?;
        let message_sgr = match *level {
            Level::ERROR => Some("0;31"),
            Level::WARN => Some("0;33"),
            Level::DEBUG => Some("0;32"),
            _ => None,
        }
        .filter(|_| self.color);
        if let Some(sgr) = message_sgr {
            write!(w, "\x1b[{sgr}m")?;
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        if message_sgr.is_some() {
            write!(w, "\x1b[0m")?;
        }
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
        write!(w, "[{now}] {:<8} ", level_name(event.metadata().level()))?;
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
    let color = match global.log_color {
        ColorWhen::Auto => std::io::stderr().is_terminal(),
        ColorWhen::Always => true,
        ColorWhen::Never => false,
    };
    let console = tracing_subscriber::fmt::layer()
        .event_format(ConsoleFormat { color, time: !global.log_time_off })
        // (field names plain: the colors are ours, around the whole message)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .with_filter(targets.clone());
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
    // each partition's lines also go to its .slapgrid/log/instance.log
    let partitions = slapos_grid::instance::log::layer();
    tracing_subscriber::registry().with(console).with(file).with(partitions).try_init()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_named_as_python_logging() {
        assert_eq!(level_name(&Level::WARN), "WARNING");
        assert_eq!(level_name(&Level::ERROR), "ERROR");
        assert_eq!(level_name(&Level::INFO), "INFO");
    }
}
