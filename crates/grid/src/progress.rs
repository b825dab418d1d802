//! Progress on long work (a software release build, an instance buildout):
//! on a terminal, a spinner with what is being done, the elapsed time and the
//! last output line; otherwise every output line goes to the log.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Shows a running program on a terminal: a spinner with its last output line (plain log lines when not on a terminal).
pub struct Progress {
    bar: Option<ProgressBar>,
    prefix: String,
}

impl Progress {
    /// `what`: e.g. "building https://…/software.cfg".
    pub fn start(what: &str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix} | {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress { bar, prefix: what.to_string() }
    }

    /// One line of output of the running program.
    pub fn line(&self, line: &str) {
        match &self.bar {
            Some(bar) => {
                tracing::debug!("{line}");
                bar.set_message(line.trim().to_string());
            }
            None => tracing::info!("{line}"),
        }
    }

    /// Removes the spinner.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        let _ = self.prefix;
    }
}

/// Bytes transferred (a download from the binary cache): on a terminal a
/// bar (or a byte counter without a known total); otherwise a log line
/// every 10 s and one at the end.
pub struct Bytes {
    bar: Option<ProgressBar>,
    what: String,
    total: Option<u64>,
    done: u64,
    started: std::time::Instant,
    logged: std::time::Instant,
}

impl Bytes {
    /// `what`: e.g. "downloading 1a2b…"; `total` from Content-Length.
    pub fn start(what: &str, total: Option<u64>) -> Bytes {
        let bar = std::io::stderr().is_terminal().then(|| {
            let (bar, template) = match total {
                Some(t) => (ProgressBar::new(t), "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"),
                None => (ProgressBar::new_spinner(), "{spinner} {prefix} {bytes} {bytes_per_sec}"),
            };
            bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
            bar.set_prefix(what.to_string());
            bar
        });
        let now = std::time::Instant::now();
        Bytes { bar, what: what.to_string(), total, done: 0, started: now, logged: now }
    }

    /// `n` more bytes.
    pub fn add(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.logged.elapsed() >= Duration::from_secs(10) => {
                self.logged = std::time::Instant::now();
                tracing::info!("{}: {}", self.what, self.amount());
            }
            None => {}
        }
    }

    fn amount(&self) -> String {
        match self.total {
            Some(t) => format!("{} of {} bytes", self.done, t),
            None => format!("{} bytes", self.done),
        }
    }

    /// Ends the bar and logs the amount and the time; the bytes transferred.
    pub fn finish(self) -> u64 {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        tracing::info!("{}: {} in {:.1} s", self.what, self.amount(), self.started.elapsed().as_secs_f64());
        self.done
    }
}
