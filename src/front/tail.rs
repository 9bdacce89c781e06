//! The last lines a starting generation wrote to stderr, for the person who asked for the
//! upgrade: a build that fails before it serves says why there, and `--upgrade` (or
//! `upgrade()`) returns those lines with the failure. Every byte still goes on to the front's
//! own stderr, where it always went. The generation reads as its own again once it is ready
//! (see `handoff::lend_stderr`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Lines kept: enough for an error and its causes, few enough for a terminal.
const LINES: usize = 12;
/// Characters kept of one line.
const LINE_CHARS: usize = 300;

/// A ring of the last [`LINES`] complete lines, and the line being written.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl Tail {
    /// Takes in what was written, as it was written: lines may arrive in pieces.
    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&bytes[..end]);
            let line = clean(&self.partial);
            self.partial.clear();
            if self.lines.len() == LINES {
                self.lines.pop_front();
            }
            self.lines.push_back(line);
            bytes = &bytes[end + 1..];
        }
        // A line longer than anything kept need not be held whole.
        let room = (LINE_CHARS * 4).saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// The kept lines, oldest first, with an unfinished last line; blank lines left out.
    pub(crate) fn lines(&self) -> Vec<String> {
        let last = (!self.partial.is_empty()).then(|| clean(&self.partial));
        self.lines
            .iter()
            .cloned()
            .chain(last)
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// A line as a person reads it: lossy UTF-8, terminal colour codes and other control
/// characters left out, at most [`LINE_CHARS`] characters.
fn clean(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    let mut kept = 0;
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter), as `tracing`'s colours are.
            if chars.next_if_eq(&'[').is_some() {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c.is_control() && c != '\t' {
            continue;
        }
        if kept == LINE_CHARS {
            out.push('…');
            break;
        }
        out.push(c);
        kept += 1;
    }
    out
}

/// Copies what `reader` yields to the front's stderr, keeping the last lines in `tail`, until
/// the generation closes its end (it exited, or took its stderr back once ready).
pub(crate) async fn pass_through(mut reader: impl AsyncRead + Unpin, tail: Arc<Mutex<Tail>>) {
    // tokio's, which writes on a blocking thread: a front whose own stderr is slow to drain
    // (a pipe to a busy reader) must not stall its runtime for a generation's output.
    let mut stderr = tokio::io::stderr();
    let mut buf = [0u8; 8192];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // A closed stderr is not the generation's problem: what it wrote is still kept.
        let _ = stderr.write_all(&buf[..n]).await;
        if let Ok(mut tail) = tail.lock() {
            tail.push(&buf[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LINE_CHARS, LINES, Tail, clean};

    #[test]
    fn keeps_the_last_lines_whatever_the_pieces() {
        let mut tail = Tail::default();
        for i in 0..LINES + 5 {
            let line = format!("line {i}\n");
            let (a, b) = line.as_bytes().split_at(3);
            tail.push(a);
            tail.push(b);
        }
        tail.push(b"Error: cannot read /etc/app/cert.pem");
        let lines = tail.lines();
        assert_eq!(lines.len(), LINES + 1);
        assert_eq!(lines[0], "line 5");
        assert_eq!(lines[LINES - 1], format!("line {}", LINES + 4));
        assert_eq!(lines[LINES], "Error: cannot read /etc/app/cert.pem");
    }

    #[test]
    fn several_lines_in_one_write_and_blank_ones_left_out() {
        let mut tail = Tail::default();
        tail.push(b"a\n\n  \nb\r\nc\n");
        assert_eq!(tail.lines(), ["a", "b", "c"]);
    }

    #[test]
    fn colours_and_control_characters_are_left_out() {
        assert_eq!(
            clean(b"\x1b[2m2026-12-05\x1b[0m \x1b[31mERROR\x1b[0m boom\x07"),
            "2026-12-05 ERROR boom"
        );
        assert_eq!(clean(b"tab\there"), "tab\there");
        assert_eq!(clean(b"bad \xff utf-8"), "bad \u{fffd} utf-8");
    }

    #[test]
    fn a_long_line_of_wide_characters_keeps_its_first_characters() {
        let mut tail = Tail::default();
        tail.push("é".repeat(LINE_CHARS + 100).as_bytes());
        let line = &tail.lines()[0];
        assert_eq!(line.chars().count(), LINE_CHARS + 1, "{line}");
        assert!(line.starts_with('é') && line.ends_with('…'));
    }

    #[tokio::test]
    async fn what_is_passed_through_is_kept() {
        let tail = std::sync::Arc::new(std::sync::Mutex::new(Tail::default()));
        let written: &[u8] = b"starting\nError: no certificate\n";
        super::pass_through(written, std::sync::Arc::clone(&tail)).await;
        let lines = tail.lock().expect("lock").lines();
        assert_eq!(lines, ["starting", "Error: no certificate"]);
    }

    #[test]
    fn long_lines_are_cut() {
        let mut tail = Tail::default();
        tail.push(&vec![b'x'; LINE_CHARS * 10]);
        tail.push(b"\n");
        let line = &tail.lines()[0];
        assert_eq!(line.chars().count(), LINE_CHARS + 1);
        assert!(line.ends_with('…'));
    }
}
