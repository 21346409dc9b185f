//! Live views (`--watch`) that behave like kubectl's: on a terminal one compact block is
//! redrawn in place; piped, each change is one new line (the timeline's new lines and the
//! headline when it changes), so a log of the output reads as a story.

use std::collections::HashSet;
use std::io::Write;

/// Where a live view draws.
pub(crate) struct Live<W: Write> {
    out: W,
    /// Some(width): a terminal of that many columns (redraw in place); None: piped.
    tty: Option<usize>,
    /// Lines of the block drawn last (a terminal).
    drawn: usize,
    last_block: String,
    last_headline: String,
    printed: HashSet<String>,
}

impl Live<std::io::Stdout> {
    /// On stdout: a terminal redraws, anything else gets lines.
    pub(crate) fn stdout() -> Self {
        use std::io::IsTerminal;
        let out = std::io::stdout();
        let tty = out
            .is_terminal()
            .then(|| super::output::terminal_width().unwrap_or(80));
        Live::new(out, tty)
    }
}

impl<W: Write> Live<W> {
    pub(crate) fn new(out: W, tty: Option<usize>) -> Self {
        Live {
            out,
            tty,
            drawn: 0,
            last_block: String::new(),
            last_headline: String::new(),
            printed: HashSet::new(),
        }
    }

    /// One look at the operation: `block` is what a terminal shows (headline first);
    /// piped, the `timeline` lines not printed before, then the headline if it changed.
    pub(crate) fn frame(&mut self, block: &str, timeline: &[String]) {
        // A closed pipe or terminal is not worth an error: the watch ends with the state.
        let _ = self.draw(block, timeline);
    }

    fn draw(&mut self, block: &str, timeline: &[String]) -> std::io::Result<()> {
        match self.tty {
            Some(width) => {
                if block == self.last_block {
                    return Ok(());
                }
                if self.drawn > 0 {
                    // Up to the block's first line, then clear to the end of the screen.
                    write!(self.out, "\x1b[{}A\r\x1b[J", self.drawn)?;
                }
                let lines: Vec<String> = block.lines().map(|l| cut(l, width)).collect();
                for l in &lines {
                    writeln!(self.out, "{l}")?;
                }
                self.drawn = lines.len();
                self.last_block = block.to_owned();
            }
            None => {
                for l in timeline {
                    if self.printed.insert(l.clone()) {
                        writeln!(self.out, "{l}")?;
                    }
                }
                let headline = block.lines().next().unwrap_or_default();
                if headline != self.last_headline {
                    writeln!(self.out, "{headline}")?;
                    self.last_headline = headline.to_owned();
                }
            }
        }
        self.out.flush()
    }

    #[cfg(test)]
    pub(crate) fn into_inner(self) -> W {
        self.out
    }
}

/// At most `width` characters: a line longer than the terminal would wrap and break the
/// count of lines to redraw.
fn cut(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_owned();
    }
    let mut s: String = line.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piped_prints_one_line_per_change() {
        let mut live = Live::new(Vec::new(), None);
        live.frame("rollout r: running (0/2)\nNODE ...", &["t1 started".into()]);
        live.frame(
            "rollout r: running (0/2)\nNODE changed",
            &["t1 started".into()],
        );
        live.frame(
            "rollout r: running (1/2)\nNODE",
            &["t1 started".into(), "t2 pve-01: done".into()],
        );
        live.frame(
            "rollout r: completed (2/2)\nNODE",
            &[
                "t1 started".into(),
                "t2 pve-01: done".into(),
                "t3 completed".into(),
            ],
        );
        let out = String::from_utf8(live.into_inner()).unwrap();
        assert_eq!(
            out,
            "t1 started\nrollout r: running (0/2)\nt2 pve-01: done\nrollout r: running (1/2)\n\
             t3 completed\nrollout r: completed (2/2)\n"
        );
        assert!(!out.contains('\x1b'));
    }

    #[test]
    fn a_terminal_redraws_the_block_in_place() {
        let mut live = Live::new(Vec::new(), Some(20));
        live.frame("head 1\nrow a\nrow b", &[]);
        live.frame("head 1\nrow a\nrow b", &[]);
        live.frame("head 2\nrow a is much longer than twenty\nrow b", &[]);
        let out = String::from_utf8(live.into_inner()).unwrap();
        assert_eq!(
            out,
            "head 1\nrow a\nrow b\n\x1b[3A\r\x1b[Jhead 2\nrow a is much longe…\nrow b\n"
        );
    }
}
