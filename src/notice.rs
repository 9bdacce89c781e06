//! What an operator must see even from a program that installed no `tracing` subscriber: why
//! the front gave up, a rollback, a crash, the service ending. Such a line is logged through
//! `tracing` like every other, and written to stderr as well when no subscriber would record
//! it, never both.

use std::io::Write;

/// Logs a line at `$level` and, when no `tracing` subscriber is installed, writes it to stderr.
/// Structured fields for the subscriber go in braces first: `report!(warn, { delay_ms = 200 },
/// "...")`.
macro_rules! report {
    ($level:ident, { $($field:tt)+ }, $($arg:tt)+) => {{
        let message = format!($($arg)+);
        tracing::$level!($($field)+, "{message}");
        $crate::notice::unrecorded(&message);
    }};
    ($level:ident, $($arg:tt)+) => {{
        let message = format!($($arg)+);
        tracing::$level!("{message}");
        $crate::notice::unrecorded(&message);
    }};
}
pub(crate) use report;

/// Writes `message` to stderr, prefixed with `risefront:`, unless a subscriber records it.
pub(crate) fn unrecorded(message: &str) {
    // The machine's own tests drive thousands of event sequences with no subscriber.
    if cfg!(test) {
        return;
    }
    let recorded = !tracing::dispatcher::get_default(|dispatch| {
        dispatch.is::<tracing::subscriber::NoSubscriber>()
    });
    if !recorded {
        // Straight to the stream, not `eprintln!`: the test harness captures the macro's
        // output, and a front running inside a test never finishes that test to show it.
        let _ = writeln!(std::io::stderr().lock(), "risefront: {message}");
    }
}
