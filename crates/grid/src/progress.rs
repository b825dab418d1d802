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
