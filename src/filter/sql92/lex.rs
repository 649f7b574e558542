//! The lexer: keywords, tokens with their byte offsets, and number literals.

use std::fmt;

use super::FilterError;
use super::eval::count_digits;
use super::print::quote;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kw {
    Not,
    And,
    Or,
    Between,
    In,
    True,
    False,
    Null,
    Is,
    Contains,
    StartsWith,
    EndsWith,
}

const KEYWORDS: [(&str, Kw); 12] = [
    ("NOT", Kw::Not),
    ("AND", Kw::And),
    ("OR", Kw::Or),
    ("BETWEEN", Kw::Between),
    ("IN", Kw::In),
    ("TRUE", Kw::True),
    ("FALSE", Kw::False),
    ("NULL", Kw::Null),
    ("IS", Kw::Is),
    ("CONTAINS", Kw::Contains),
    ("STARTSWITH", Kw::StartsWith),
    ("ENDSWITH", Kw::EndsWith),
];

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Str(String),
    /// Decimal integer digits (without the `L`).
    Int(String),
    Float(String),
    Ident(String),
    Kw(Kw),
    /// `=`, `<>`, `>`, `>=`, `<`, `<=`, `(`, `)`, `,`, `+`, `-`.
    Op(&'static str),
    Eof,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Str(s) => write!(f, "string {}", quote(s)),
            Tok::Int(s) | Tok::Float(s) => write!(f, "number `{s}`"),
            Tok::Ident(s) => write!(f, "identifier `{s}`"),
            Tok::Kw(k) => {
                let name = KEYWORDS
                    .iter()
                    .find(|(_, x)| x == k)
                    .map_or("?", |(n, _)| n);
                write!(f, "`{name}`")
            }
            Tok::Op(o) => write!(f, "`{o}`"),
            Tok::Eof => f.write_str("end of input"),
        }
    }
}

pub(super) fn lex_err(text: &str, pos: usize, message: impl Into<String>) -> FilterError {
    let column = text[..pos].chars().count() + 1;
    let near = if pos >= text.len() {
        "end of input".to_string()
    } else {
        let s: String = text[pos..].chars().take(12).collect();
        format!("`{s}`")
    };
    FilterError::Sql {
        column,
        near,
        message: message.into(),
    }
}

/// Tokens with their byte offsets; the last is `Eof` at `text.len()`.
pub(super) fn lex(text: &str) -> Result<Vec<(Tok, usize)>, FilterError> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => match text[i + 2..].find("*/") {
                Some(end) => i += 2 + end + 2,
                None => return Err(lex_err(text, start, "unterminated /* comment")),
            },
            b'\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match text[i..].find('\'') {
                        None => return Err(lex_err(text, start, "unterminated string literal")),
                        Some(q) => {
                            s.push_str(&text[i..i + q]);
                            i += q + 1;
                            if b.get(i) == Some(&b'\'') {
                                s.push('\'');
                                i += 1;
                            } else {
                                break;
                            }
                        }
                    }
                }
                out.push((Tok::Str(s), start));
            }
            b'0'..=b'9' | b'.' => {
                let (tok, len) =
                    lex_number(&b[i..]).ok_or_else(|| lex_err(text, start, "unexpected `.`"))?;
                out.push((tok, start));
                i += len;
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' | b'$' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$')
                {
                    i += 1;
                }
                let word = &text[start..i];
                let tok = match KEYWORDS.iter().find(|(k, _)| k.eq_ignore_ascii_case(word)) {
                    Some((_, kw)) => Tok::Kw(*kw),
                    None => Tok::Ident(word.to_string()),
                };
                out.push((tok, start));
            }
            _ => {
                let two = text.get(i..i + 2);
                if let Some(t @ ("==" | "!=")) = two {
                    return Err(lex_err(
                        text,
                        start,
                        format!("unknown operator `{t}` (use `=` or `<>`)"),
                    ));
                }
                let op: &'static str = match (two, c) {
                    (Some("<>"), _) => "<>",
                    (Some(">="), _) => ">=",
                    (Some("<="), _) => "<=",
                    (_, b'=') => "=",
                    (_, b'>') => ">",
                    (_, b'<') => "<",
                    (_, b'(') => "(",
                    (_, b')') => ")",
                    (_, b',') => ",",
                    (_, b'+') => "+",
                    (_, b'-') => "-",
                    _ => {
                        let ch = text[i..].chars().next().unwrap_or('?');
                        let msg = format!("unexpected character `{ch}`");
                        return Err(lex_err(text, start, msg));
                    }
                };
                out.push((Tok::Op(op), start));
                i += op.len();
            }
        }
    }
    out.push((Tok::Eof, text.len()));
    Ok(out)
}

/// The longest of DECIMAL_LITERAL and FLOATING_POINT_LITERAL at the start of `b` (a digit or
/// `.`), DECIMAL winning ties as in JavaCC. `None` for a lone `.`.
fn lex_number(b: &[u8]) -> Option<(Tok, usize)> {
    let text = |n: usize| String::from_utf8_lossy(&b[..n]).into_owned();
    // DECIMAL: "0" | [1-9][0-9]* [lL]?
    let dec = match b.first() {
        Some(b'0') => Some((1, 1)),
        Some(b'1'..=b'9') => {
            let n = count_digits(b);
            if matches!(b.get(n), Some(b'l' | b'L')) {
                Some((n + 1, n))
            } else {
                Some((n, n))
            }
        }
        _ => None,
    };
    // FLOAT: [0-9]+ "." [0-9]* EXP? | "." [0-9]+ EXP? | [0-9]+ EXP
    let exp = |b: &[u8]| -> usize {
        if !matches!(b.first(), Some(b'e' | b'E')) {
            return 0;
        }
        let s = usize::from(matches!(b.get(1), Some(b'+' | b'-')));
        let d = count_digits(&b[1 + s..]);
        if d == 0 { 0 } else { 1 + s + d }
    };
    let int = count_digits(b);
    let float = if b.get(int) == Some(&b'.') {
        let frac = count_digits(&b[int + 1..]);
        if int == 0 && frac == 0 {
            None
        } else {
            let n = int + 1 + frac;
            Some(n + exp(&b[n..]))
        }
    } else if int > 0 {
        match exp(&b[int..]) {
            0 => None,
            e => Some(int + e),
        }
    } else {
        None
    };
    match (dec, float) {
        (Some((dl, _)), Some(fl)) if fl > dl => Some((Tok::Float(text(fl)), fl)),
        (Some((dl, digits)), _) => Some((Tok::Int(text(digits)), dl)),
        (None, Some(fl)) => Some((Tok::Float(text(fl)), fl)),
        (None, None) => None,
    }
}
