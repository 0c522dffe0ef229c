//! A small reader for the libconfig syntax of gala-gopher's `.meta` files.
//!
//! It covers the subset those files (and gala-gopher.conf) use: settings `name = value` or
//! `name: value` ended by an optional `;` or `,`; groups `{…}`, lists `(…)` and arrays `[…]`
//! (trailing commas allowed); strings with escapes, adjacent strings concatenated; integers
//! (decimal, `0x`, `0b`, `0o`, optional `L`/`LL`), floats and booleans; `#`, `//` and `/* */`
//! comments. `@include` is refused: meta files are loaded from directories instead.
//! Groups become tables and lists/arrays become arrays of the shared [`Node`] tree, so one
//! walker interprets both meta formats.
//! Our own because no maintained crate reads libconfig with a place for every key and value.

use std::ops::Range;

use toml::Spanned;

use super::error::{DiagnosticKind, Reporter};
use super::node::{Entry, Node};

/// Deep enough for any real file, shallow enough that hostile input cannot overflow the stack.
const MAX_DEPTH: usize = 64;

type PResult<T> = Result<T, (Range<usize>, String)>;

/// Parses libconfig text into a spanned tree; the first syntax error is reported and ends it.
pub(crate) fn parse(text: &str, rep: &mut Reporter<'_>) -> Option<Vec<Entry>> {
    let mut p = Parser {
        text,
        src: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    match p.settings(None) {
        Ok(entries) => Some(entries),
        Err((span, message)) => {
            rep.report(&span, "", DiagnosticKind::Syntax, message);
            None
        }
    }
}

struct Parser<'t> {
    text: &'t str,
    src: &'t [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.src.get(self.pos + ahead).copied()
    }

    /// The character at the cursor, quoted for messages.
    fn found(&self) -> String {
        self.text
            .get(self.pos..)
            .and_then(|s| s.chars().next())
            .map_or_else(|| "end of file".to_owned(), |c| format!("{c:?}"))
    }

    fn here(&self) -> Range<usize> {
        self.pos..self.pos + 1
    }

    fn line_of(&self, offset: usize) -> usize {
        self.text
            .get(..offset)
            .map_or(0, |s| s.matches('\n').count())
            + 1
    }

    fn skip_trivia(&mut self) -> PResult<()> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r' | b'\n' | b'\x0c') => self.pos += 1,
                Some(b'#') => self.skip_line(),
                Some(b'/') if self.peek_at(1) == Some(b'/') => self.skip_line(),
                Some(b'/') if self.peek_at(1) == Some(b'*') => {
                    let start = self.pos;
                    let Some(end) = self.text[self.pos + 2..].find("*/") else {
                        return Err((
                            start..start + 2,
                            "unterminated comment: \"/*\" without \"*/\"".to_owned(),
                        ));
                    };
                    self.pos += 2 + end + 2;
                }
                _ => return Ok(()),
            }
        }
    }

    fn skip_line(&mut self) {
        while let Some(b) = self.peek() {
            if b == b'\n' {
                break;
            }
            self.pos += 1;
        }
    }

    /// Settings until `close` (not consumed) or, at top level, end of input.
    fn settings(&mut self, close: Option<(u8, usize)>) -> PResult<Vec<Entry>> {
        let mut entries: Vec<Entry> = Vec::new();
        loop {
            self.skip_trivia()?;
            match (self.peek(), close) {
                (None, None) => return Ok(entries),
                (None, Some((c, open))) => {
                    return Err((
                        open..open + 1,
                        format!(
                            "missing {:?} for the group opened here (reached end of file)",
                            char::from(c)
                        ),
                    ));
                }
                (Some(b), Some((c, _))) if b == c => return Ok(entries),
                (Some(b'@'), _) => {
                    return Err((
                        self.here(),
                        "@include and other directives are not supported".to_owned(),
                    ));
                }
                _ => {}
            }
            let name = self.name()?;
            self.skip_trivia()?;
            match self.peek() {
                Some(b'=' | b':') => self.pos += 1,
                _ => {
                    return Err((
                        self.here(),
                        format!(
                            "expected ':' or '=' after setting name {:?}, found {}",
                            name.get_ref(),
                            self.found()
                        ),
                    ));
                }
            }
            self.skip_trivia()?;
            let value = self.value()?;
            if let Some((first, _)) = entries.iter().find(|(k, _)| k.get_ref() == name.get_ref()) {
                return Err((
                    name.span(),
                    format!(
                        "duplicate setting {:?} (first set at line {})",
                        name.get_ref(),
                        self.line_of(first.span().start)
                    ),
                ));
            }
            entries.push((name, value));
            self.skip_trivia()?;
            if matches!(self.peek(), Some(b';' | b',')) {
                self.pos += 1;
            }
        }
    }

    fn name(&mut self) -> PResult<Spanned<String>> {
        let start = self.pos;
        match self.peek() {
            Some(b) if b.is_ascii_alphabetic() || b == b'*' => self.pos += 1,
            _ => {
                return Err((
                    self.here(),
                    format!("expected a setting name, found {}", self.found()),
                ));
            }
        }
        while matches!(self.peek(), Some(b) if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*'))
        {
            self.pos += 1;
        }
        Ok(Spanned::new(
            start..self.pos,
            self.text[start..self.pos].to_owned(),
        ))
    }

    fn value(&mut self) -> PResult<Spanned<Node>> {
        match self.peek() {
            Some(b'{') => {
                let open = self.pos;
                self.enter(open)?;
                self.pos += 1;
                let entries = self.settings(Some((b'}', open)))?;
                self.pos += 1;
                self.depth -= 1;
                Ok(Spanned::new(open..self.pos, Node::Table(entries)))
            }
            Some(b'(') => self.list(b')'),
            Some(b'[') => self.list(b']'),
            Some(b'"') => self.strings(),
            _ => self.scalar(),
        }
    }

    fn enter(&mut self, open: usize) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err((
                open..open + 1,
                format!("nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn list(&mut self, close: u8) -> PResult<Spanned<Node>> {
        let open = self.pos;
        let kind = if close == b')' { "list" } else { "array" };
        self.enter(open)?;
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.skip_trivia()?;
            match self.peek() {
                Some(b) if b == close => {
                    self.pos += 1;
                    break;
                }
                None => {
                    return Err((
                        open..open + 1,
                        format!(
                            "missing {:?} for the {kind} opened here (reached end of file)",
                            char::from(close)
                        ),
                    ));
                }
                _ => {}
            }
            let item = self.value()?;
            // libconfig arrays hold scalars only; lists hold anything.
            if close == b']' && matches!(item.get_ref(), Node::Table(_) | Node::Array(_)) {
                return Err((
                    item.span(),
                    "arrays [...] hold only scalars; use a list (...) for groups".to_owned(),
                ));
            }
            items.push(item);
            self.skip_trivia()?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b) if b == close => {}
                None => {
                    return Err((
                        open..open + 1,
                        format!(
                            "missing {:?} for the {kind} opened here (reached end of file)",
                            char::from(close)
                        ),
                    ));
                }
                _ => {
                    return Err((
                        self.here(),
                        format!(
                            "expected ',' or {:?} in the {kind} opened at line {}, found {}",
                            char::from(close),
                            self.line_of(open),
                            self.found()
                        ),
                    ));
                }
            }
        }
        self.depth -= 1;
        Ok(Spanned::new(open..self.pos, Node::Array(items)))
    }

    /// One or more adjacent string literals, concatenated (libconfig's way to split long text).
    fn strings(&mut self) -> PResult<Spanned<Node>> {
        let start = self.pos;
        let mut out = Vec::new();
        loop {
            self.string_literal(&mut out)?;
            let after = self.pos;
            self.skip_trivia()?;
            if self.peek() != Some(b'"') {
                self.pos = after;
                break;
            }
        }
        let s = String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Ok(Spanned::new(start..self.pos, Node::Str(s)))
    }

    fn string_literal(&mut self, out: &mut Vec<u8>) -> PResult<()> {
        let open = self.pos;
        self.pos += 1;
        loop {
            let Some(b) = self.peek() else {
                return Err((
                    open..open + 1,
                    "unterminated string (opened here)".to_owned(),
                ));
            };
            self.pos += 1;
            match b {
                b'"' => return Ok(()),
                // libconfig itself allows raw newlines in strings, but no meta file needs
                // them, and refusing them turns a missing quote into an error on the right
                // line instead of one far below where the string happens to close.
                b'\n' => {
                    return Err((
                        open..open + 1,
                        "unterminated string: it must close on the line it opens (split long text into adjacent \"...\" \"...\" strings)".to_owned(),
                    ));
                }
                b'\\' => {
                    let esc = self.pos - 1;
                    let Some(e) = self.peek() else { continue };
                    self.pos += 1;
                    match e {
                        b'\\' => out.push(b'\\'),
                        b'"' => out.push(b'"'),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'f' => out.push(b'\x0c'),
                        b'x' => {
                            let hex = self
                                .src
                                .get(self.pos..self.pos + 2)
                                .and_then(|h| std::str::from_utf8(h).ok());
                            let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                                return Err((
                                    esc..esc + 2,
                                    "\\x must be followed by two hex digits".to_owned(),
                                ));
                            };
                            out.push(v);
                            self.pos += 2;
                        }
                        _ => {
                            let c = self
                                .text
                                .get(esc + 1..)
                                .and_then(|s| s.chars().next())
                                .unwrap_or('?');
                            return Err((esc..esc + 2, format!("unknown escape \"\\{c}\"")));
                        }
                    }
                }
                _ => out.push(b),
            }
        }
    }

    fn scalar(&mut self) -> PResult<Spanned<Node>> {
        let start = self.pos;
        while matches!(self.peek(), Some(b) if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-' | b'_'))
        {
            self.pos += 1;
        }
        let token = &self.text[start..self.pos];
        if token.is_empty() {
            return Err((
                self.here(),
                format!("expected a value, found {}", self.found()),
            ));
        }
        let node = scalar_value(token).ok_or_else(|| {
            (
                start..self.pos,
                format!("expected a value, found {token:?}"),
            )
        })?;
        Ok(Spanned::new(start..self.pos, node))
    }
}

fn scalar_value(token: &str) -> Option<Node> {
    if token.eq_ignore_ascii_case("true") {
        return Some(Node::Bool(true));
    }
    if token.eq_ignore_ascii_case("false") {
        return Some(Node::Bool(false));
    }
    let (negative, unsigned) = match token.as_bytes().first() {
        Some(b'-') => (true, &token[1..]),
        Some(b'+') => (false, &token[1..]),
        _ => (false, token),
    };
    let lower = unsigned.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if let Some(d) = lower
        .strip_prefix("0o")
        .or_else(|| lower.strip_prefix("0q"))
    {
        (8, d)
    } else {
        (10, lower.as_str())
    };
    let digits = digits
        .strip_suffix("ll")
        .or_else(|| digits.strip_suffix('l'))
        .unwrap_or(digits);
    if !digits.is_empty()
        && let Ok(v) = i64::from_str_radix(digits, radix)
    {
        return Some(Node::Int(if negative { -v } else { v }));
    }
    if radix == 10 && lower.contains(['.', 'e']) && !lower.contains("inf") && !lower.contains("nan")
    {
        return token.parse::<f64>().ok().map(Node::Float);
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::error::Diagnostic;

    fn parse_ok(text: &str) -> Node {
        let mut rep = Reporter::new(Path::new("t.meta"), text);
        let entries = parse(text, &mut rep);
        assert!(rep.diagnostics.is_empty(), "{:?}", rep.diagnostics);
        Node::Table(entries.unwrap_or_default())
    }

    fn parse_err(text: &str) -> Diagnostic {
        let mut rep = Reporter::new(Path::new("t.meta"), text);
        assert!(parse(text, &mut rep).is_none());
        rep.diagnostics
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no diagnostic"))
    }

    #[test]
    fn scalars_and_structures() {
        let text = r#"
            # hash comment
            a = 1; b: -0x10L, c = 2.5e1  // line comment
            d = TRUE /* block
            comment */ e = "x\ty\"z" "-joined";
            f = [1, 2, 3,];
            g = ( { h = "i"; }, ( 1, "two" ), );
            k = { };
        "#;
        let Node::Table(entries) = parse_ok(text) else {
            panic!("root is a table")
        };
        let get = |k: &str| {
            entries
                .iter()
                .find(|(n, _)| n.get_ref() == k)
                .map(|(_, v)| v.get_ref().clone())
        };
        assert_eq!(get("a"), Some(Node::Int(1)));
        assert_eq!(get("b"), Some(Node::Int(-16)));
        assert_eq!(get("c"), Some(Node::Float(25.0)));
        assert_eq!(get("d"), Some(Node::Bool(true)));
        assert_eq!(get("e"), Some(Node::Str("x\ty\"z-joined".to_owned())));
        let Some(Node::Array(f)) = get("f") else {
            panic!("f")
        };
        assert_eq!(f.len(), 3);
        let Some(Node::Array(g)) = get("g") else {
            panic!("g")
        };
        assert!(matches!(g[0].get_ref(), Node::Table(t) if t.len() == 1));
        assert!(matches!(g[1].get_ref(), Node::Array(a) if a.len() == 2));
        assert_eq!(get("k"), Some(Node::Table(Vec::new())));
    }

    #[test]
    fn numbers() {
        assert_eq!(scalar_value("0b101"), Some(Node::Int(5)));
        assert_eq!(scalar_value("0o17"), Some(Node::Int(15)));
        assert_eq!(scalar_value("+42LL"), Some(Node::Int(42)));
        assert_eq!(scalar_value(".5"), Some(Node::Float(0.5)));
        assert_eq!(scalar_value("1e3"), Some(Node::Float(1000.0)));
        assert_eq!(scalar_value("abc"), None);
        assert_eq!(scalar_value("nan"), None);
        assert_eq!(scalar_value("0x"), None);
    }

    #[test]
    fn unterminated_string_points_at_its_start() {
        let d = parse_err("version = \"1.0.0\"\nmeasurements: (\n  { name: \"tcp_link\n  }\n)\n");
        assert_eq!((d.line, d.column), (3, 11));
        assert!(d.message.contains("unterminated string"), "{}", d.message);
        assert_eq!(d.to_string(), format!("t.meta:3:11: {}", d.message));
    }

    #[test]
    fn missing_paren_names_the_open_line() {
        // The inner list is closed with '}' instead of ')'.
        let text =
            "measurements:\n(\n  {\n    name: \"x\",\n    fields: ( { name: \"a\" }\n  }\n)\n";
        let d = parse_err(text);
        assert_eq!(d.line, 6);
        assert!(d.message.contains("opened at line 5"), "{}", d.message);
    }

    #[test]
    fn missing_paren_at_end_of_file() {
        let d = parse_err("measurements:\n(\n  { name: \"x\" }\n");
        assert_eq!((d.line, d.column), (2, 1));
        assert!(d.message.contains("missing ')'"), "{}", d.message);
    }

    #[test]
    fn other_syntax_errors() {
        let cases = [
            ("a = 1\nb 2\n", 2, "expected ':' or '='"),
            ("a = 1\n/* open\n", 2, "unterminated comment"),
            ("a = \"\\q\"\n", 1, "unknown escape"),
            ("a = \"\\x4\"\n", 1, "two hex digits"),
            ("a = 1\na = 2\n", 2, "duplicate setting"),
            ("@include \"x\"\n", 1, "not supported"),
            ("a = ;\n", 1, "expected a value"),
            ("a = bogus\n", 1, "expected a value"),
            ("a = [ { b = 1 } ]\n", 1, "only scalars"),
            ("g = { a = 1\n", 1, "missing '}'"),
            ("9a = 1\n", 1, "expected a setting name"),
        ];
        for (text, line, needle) in cases {
            let d = parse_err(text);
            assert_eq!(d.line, line, "{text:?}: {d}");
            assert!(d.message.contains(needle), "{text:?}: {d}");
            assert_eq!(d.kind, DiagnosticKind::Syntax);
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let text = format!("a = {}{}", "(".repeat(10_000), ")".repeat(10_000));
        let d = parse_err(&text);
        assert!(d.message.contains("nested deeper"), "{}", d.message);
    }
}
