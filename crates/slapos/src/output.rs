//! The commands' standard output. A reader that goes away early (`slapos
//! service info … | head`) ends the command quietly with exit 0: SlapOS's
//! commands also end 0 there (their logging swallows the broken pipe),
//! while `println!` would panic. Any other write error is one line and
//! exit 1.

use std::io::Write;

/// Writes `args` to stdout and flushes; exits on a write error (0 for a
/// closed pipe, 1 otherwise).
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("slapos: cannot write to the standard output: {e}");
        std::process::exit(1);
    }
}

/// For read-only commands whose output is printed outside this crate:
/// the default SIGPIPE action (the Rust runtime ignores it), so that a
/// closed pipe ends the process quietly as it ends `cat`. Never for
/// commands that change things or serve: they must not die halfway.
pub fn die_quietly_on_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installs the default action, no handler code runs; called
    // before any thread of ours is started
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        tracing::debug!("cannot reset SIGPIPE: {e}");
    }
}

/// `print!` through [`write`].
macro_rules! out {
    ($($arg:tt)*) => { crate::output::write(format_args!($($arg)*)) };
}

/// `println!` through [`write`].
macro_rules! outln {
    () => { crate::output::write(format_args!("\n")) };
    ($($arg:tt)*) => { crate::output::write(format_args!("{}\n", format_args!($($arg)*))) };
}
