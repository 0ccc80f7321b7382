//! Writing HTML from text nobody vouches for: names and messages from the API, the upstream's
//! errors, probe URLs from the configuration. Everything goes through [`text`] or [`attr`].

use std::fmt::Write;

/// Longest message, reason or error kept for the page, in bytes: a summary, not a log.
pub const MAX_TEXT: usize = 256;

/// `s` escaped for an element's content or a quoted attribute value: `& < > " '` become
/// entities; control characters, which no page shows usefully, become spaces (line breaks and
/// tabs) or U+FFFD.
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

/// Appends `s`, escaped, as an element's content.
pub fn text(out: &mut String, s: &str) {
    escape_into(out, s);
}

/// Appends ` name="value"`, the value escaped.
pub fn attr(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, " {name}=\"");
    escape_into(out, value);
    out.push('"');
}

/// Appends `<td>s</td>`, `s` escaped.
pub fn cell(out: &mut String, s: &str) {
    out.push_str("<td>");
    escape_into(out, s);
    out.push_str("</td>");
}

/// `s` cut to at most [`MAX_TEXT`] bytes on a character boundary, marked with `…` when cut.
pub fn truncated(s: &str) -> &str {
    if s.len() <= MAX_TEXT {
        return s;
    }
    let mut end = MAX_TEXT - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// [`truncated`] with the mark, as an owned string to keep.
pub fn summary(s: &str) -> Box<str> {
    let cut = truncated(s);
    if cut.len() == s.len() {
        s.into()
    } else {
        format!("{cut}…").into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_markup_or_control_is_escaped() {
        let mut out = String::new();
        escape_into(&mut out, "<script>a&b\"c'd</script>\u{1b}[31m\nx\u{0}");
        assert_eq!(
            out,
            "&lt;script&gt;a&amp;b&quot;c&#39;d&lt;/script&gt;\u{FFFD}[31m x\u{FFFD}"
        );
        let mut out = String::new();
        attr(&mut out, "data-name", "\"><img src=x>");
        assert_eq!(out, " data-name=\"&quot;&gt;&lt;img src=x&gt;\"");
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(summary("short"), "short".into());
        let long = "é".repeat(300);
        let cut = summary(&long);
        assert!(cut.len() <= MAX_TEXT, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("éé"));
    }
}
