//! Progress of long commands (restore, verify, sync waits) on stderr: one line redrawn in
//! place on a terminal, and plain lines at a fixed interval otherwise, so that logs and
//! pipes get whole lines. Only the command-line client uses it.

use std::io::Write;
use std::time::{Duration, Instant};

/// Shortest time between two redraws on a terminal.
const REDRAW_INTERVAL: Duration = Duration::from_millis(100);

/// A progress display on `out`.
pub struct ProgressLine<W: Write> {
    out: W,
    is_terminal: bool,
    /// Time between two plain lines.
    line_interval: Duration,
    started: Instant,
    last_shown: Option<Instant>,
}

impl<W: Write> ProgressLine<W> {
    /// Creates the display. `is_terminal` selects redrawing; otherwise a plain line goes out
    /// once `line_interval` has passed since the start or the previous line.
    pub fn new(out: W, is_terminal: bool, line_interval: Duration) -> ProgressLine<W> {
        ProgressLine {
            out,
            is_terminal,
            line_interval,
            started: Instant::now(),
            last_shown: None,
        }
    }

    /// Returns the time since the display was created.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Returns whether [`ProgressLine::update`] would show a line now; callers whose text
    /// costs a request ask first.
    pub fn is_due(&self) -> bool {
        if self.is_terminal {
            return self
                .last_shown
                .is_none_or(|t| t.elapsed() >= REDRAW_INTERVAL);
        }
        let since = self.last_shown.unwrap_or(self.started);
        since.elapsed() >= self.line_interval
    }

    /// Shows `text` if a redraw or a plain line is due.
    pub fn update(&mut self, text: &str) {
        if self.is_due() {
            self.show(text);
        }
    }

    /// On a terminal, draws the final `text` and ends the line, so that what follows starts
    /// on its own line. Plain lines are whole already, so nothing more is printed, and a
    /// command that finished before its first line prints nothing at all.
    pub fn finish(&mut self, text: &str) {
        if self.last_shown.is_none() || !self.is_terminal {
            return;
        }
        self.show(text);
        let _ = writeln!(self.out);
    }

    fn show(&mut self, text: &str) {
        self.last_shown = Some(Instant::now());
        let _ = if self.is_terminal {
            write!(self.out, "\r\x1b[K{text}")
        } else {
            writeln!(self.out, "{text}")
        };
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_wait_for_interval() {
        let mut output = Vec::new();
        let mut progress = ProgressLine::new(&mut output, false, Duration::from_secs(3600));
        progress.update("first");
        progress.finish("done");
        assert!(output.is_empty(), "{:?}", String::from_utf8_lossy(&output));
    }

    #[test]
    fn plain_lines_are_whole() {
        let mut output = Vec::new();
        let mut progress = ProgressLine::new(&mut output, false, Duration::ZERO);
        progress.update("step 1");
        progress.update("step 2");
        progress.finish("done");
        assert_eq!(String::from_utf8(output).unwrap(), "step 1\nstep 2\n");
    }

    #[test]
    fn terminal_redraws_in_place() {
        let mut output = Vec::new();
        let mut progress = ProgressLine::new(&mut output, true, Duration::ZERO);
        progress.update("step 1");
        progress.finish("done");
        assert_eq!(
            String::from_utf8(output).unwrap(),
            "\r\x1b[Kstep 1\r\x1b[Kdone\n"
        );
    }
}
