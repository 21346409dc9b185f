//! Line-oriented files read line by line: a line that is not text does not hide the others.

/// A file split into lines, each decoded on its own.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lines {
    /// Every line, without its newline; `None` where the line is not UTF-8 text (or holds a
    /// NUL byte). Index + 1 is the line number.
    pub lines: Vec<Option<String>>,
    /// The last line has no newline (an empty file is terminated).
    pub unterminated: bool,
}

impl Lines {
    /// Line numbers (1-based) of the lines that are not text.
    pub fn bad_lines(&self) -> impl Iterator<Item = u32> + '_ {
        self.lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_none())
            .map(|(i, _)| u32::try_from(i + 1).unwrap_or(u32::MAX))
    }

    /// The text with every line that is not text replaced by an empty line, so line
    /// numbers stay the same for parsers that take a `&str`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(l.as_deref().unwrap_or(""));
        }
        if !self.unterminated && !self.lines.is_empty() {
            out.push('\n');
        }
        out
    }
}

/// Split `bytes` at `\n`, decoding each line as UTF-8 on its own; a trailing `\r` stays.
pub fn split(bytes: &[u8]) -> Lines {
    let mut out = Lines::default();
    if bytes.is_empty() {
        return out;
    }
    let body = bytes.strip_suffix(b"\n");
    out.unterminated = body.is_none();
    for line in body.unwrap_or(bytes).split(|b| *b == b'\n') {
        let text = (!line.contains(&0))
            .then(|| std::str::from_utf8(line).ok())
            .flatten();
        out.lines.push(text.map(String::from));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_do_not_hide_good_ones() {
        let l = split(b"\xff\xfe-bad\nnot-a-uuid\n6D31-87F4");
        assert_eq!(
            l.lines,
            [None, Some("not-a-uuid".into()), Some("6D31-87F4".into())]
        );
        assert!(l.unterminated);
        assert_eq!(l.bad_lines().collect::<Vec<_>>(), [1]);
        assert_eq!(l.text(), "\nnot-a-uuid\n6D31-87F4");
        let t = split(b"a\n\nb\n");
        assert!(!t.unterminated);
        assert_eq!(t.lines.len(), 3);
        assert_eq!(t.text(), "a\n\nb\n");
        assert_eq!(split(b""), Lines::default());
    }

    proptest::proptest! {
        #[test]
        fn text_input_round_trips(s in "\\PC{0,200}") {
            let l = split(s.as_bytes());
            proptest::prop_assert_eq!(l.text(), s.clone());
            proptest::prop_assert_eq!(l.bad_lines().count(), 0);
        }

        #[test]
        fn lines_match_newlines(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let l = split(&b);
            let newlines = b.iter().filter(|c| **c == b'\n').count();
            let want = if b.is_empty() { 0 } else if l.unterminated { newlines + 1 } else { newlines };
            proptest::prop_assert_eq!(l.lines.len(), want);
            proptest::prop_assert_eq!(l.unterminated, !b.is_empty() && b.last() != Some(&b'\n'));
        }
    }
}
