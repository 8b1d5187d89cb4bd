//! Writing to stdout without panicking when the reader goes away.

use anyhow::Result;
use std::io::Write;

/// stdout's reader closed it (`canaryctl events | head -1`): not a
/// failure, canaryctl stops without a word.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes to stdout (flushed, so `--follow` output is seen at once); a
/// closed pipe is `StdoutClosed`, not a panic as with `print!`.
pub fn emit(args: std::fmt::Arguments) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// `print!` that returns `StdoutClosed` from the function instead of
/// panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::emit(format_args!($($arg)*))?
    };
}

/// `println!`, the same way.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::emit(format_args!("{}\n", format_args!($($arg)*)))?
    };
}
