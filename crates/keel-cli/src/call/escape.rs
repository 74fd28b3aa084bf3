//! Makes text from a server safe to print on a terminal. Status messages, metadata values,
//! details and descriptor comments come from the server; an escape sequence in them
//! (ESC `[2J`, a C1 CSI, an OSC setting the window title or a hyperlink) would act on the
//! user's terminal, and a bidirectional override could make the text read differently
//! from what it is. Such characters are shown escaped instead: every C0 and C1 control,
//! DEL, and the Unicode bidirectional controls.

use std::borrow::Cow;

/// True for a character that must not reach a terminal as it is.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every unsafe character escaped as Rust writes it (`\n`, `\t`, `\u{1b}`):
/// for text on one line, such as a status message or a metadata value.
pub fn line(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// [`line`], but newlines stay: for text whose lines are its structure, such as a
/// description or an error report.
pub fn lines(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

fn escape(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| is_unsafe(c) && !(keep_newlines && c == '\n');
    if !text.contains(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// JSON text from serde_json with every unsafe character in its strings written as a
/// `\uXXXX` escape, which means the same character to any JSON reader. serde_json escapes
/// C0 controls in strings already (a raw newline is the layout's), but not DEL, C1 controls
/// or bidirectional controls.
pub fn json(text: String) -> String {
    let unsafe_char = |c: char| is_unsafe(c) && !matches!(c, '\n' | '\r' | '\t');
    if !text.contains(unsafe_char) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            // All of them are in the Basic Multilingual Plane: one escape each.
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert!(matches!(line("plain text, é, 日本"), Cow::Borrowed(_)));
        assert_eq!(
            line("\u{1b}[31mred\u{1b}[0m\u{7}\r\n\t\u{7f}\u{9b}2J\u{202e}x"),
            "\\u{1b}[31mred\\u{1b}[0m\\u{7}\\r\\n\\t\\u{7f}\\u{9b}2J\\u{202e}x"
        );
        assert_eq!(lines("a\n\u{1b}b\n"), "a\n\\u{1b}b\n");
        // Quotes and backslashes are not controls: they stay as they are.
        assert_eq!(line(r#"say "\hi""#), r#"say "\hi""#);
    }

    #[test]
    fn json_keeps_its_meaning() {
        let value = serde_json::json!({"m": "\u{1b}[2J \u{9b}31m \u{7f} \u{202e} é\n"});
        for text in [
            serde_json::to_string(&value).unwrap(),
            serde_json::to_string_pretty(&value).unwrap(),
        ] {
            let escaped = json(text.clone());
            assert!(
                !escaped.contains(|c| is_unsafe(c) && c != '\n'),
                "{escaped}"
            );
            assert_eq!(escaped.lines().count(), text.lines().count());
            let parsed: serde_json::Value = serde_json::from_str(&escaped).unwrap();
            assert_eq!(parsed, value);
        }
    }
}
