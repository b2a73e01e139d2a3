//! The protobuf text format, as far as `remote_scrubbing.Config` needs it: fields with string,
//! identifier and number values, nested messages in `{}` or `<>`, list values in `[]`, adjacent
//! string literals, `#` comments and optional `,`/`;` separators. The result is an untyped tree
//! that [`crate::config`] checks against the schema, so that every error can name its line.
//!
//! A hand-written reader rather than a protobuf runtime: the schema has nine fields, and owning
//! the parser is what lets a message say which rule and which field are wrong.

use thiserror::Error;

/// A syntax error, at a 1-based line.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// One `name: value` or `name { ... }`; a list value gives one field per element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub line: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// One or more adjacent string literals, unescaped and concatenated.
    String(String),
    /// An identifier or number as written (`true`, `0`, `ENUM_NAME`).
    Word(String),
    Message(Vec<Field>),
}

/// Parses a whole text-format message.
pub fn parse(text: &str) -> Result<Vec<Field>, SyntaxError> {
    let mut reader = Reader {
        text: text.as_bytes(),
        pos: 0,
        line: 1,
    };
    let fields = reader.fields(None)?;
    Ok(fields)
}

struct Reader<'a> {
    text: &'a [u8],
    pos: usize,
    line: usize,
}

impl Reader<'_> {
    fn error<T>(&self, message: impl Into<String>) -> Result<T, SyntaxError> {
        Err(SyntaxError {
            line: self.line,
            message: message.into(),
        })
    }

    /// Skips whitespace and comments; the next byte, if any.
    fn peek(&mut self) -> Option<u8> {
        while let Some(&c) = self.text.get(self.pos) {
            match c {
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                b' ' | b'\t' | b'\r' | 0x0b | 0x0c => self.pos += 1,
                b'#' => {
                    while self.text.get(self.pos).is_some_and(|&c| c != b'\n') {
                        self.pos += 1;
                    }
                }
                _ => return Some(c),
            }
        }
        None
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Fields until `close` (or the end of the text when `close` is None).
    fn fields(&mut self, close: Option<u8>) -> Result<Vec<Field>, SyntaxError> {
        let mut fields = Vec::new();
        loop {
            match (self.peek(), close) {
                (None, None) => return Ok(fields),
                (None, Some(c)) => return self.error(format!("missing '{}'", c as char)),
                (Some(c), Some(want)) if c == want => {
                    self.pos += 1;
                    return Ok(fields);
                }
                _ => {}
            }
            self.field(&mut fields)?;
            if !self.eat(b',') {
                self.eat(b';');
            }
        }
    }

    fn field(&mut self, into: &mut Vec<Field>) -> Result<(), SyntaxError> {
        let line = self.line;
        let name = match self.word() {
            Some(name) if !name.starts_with(|c: char| c.is_ascii_digit()) => name,
            _ => return self.unexpected("a field name"),
        };
        let colon = self.eat(b':');
        match self.peek() {
            Some(open @ (b'{' | b'<')) => {
                self.pos += 1;
                let close = if open == b'{' { b'}' } else { b'>' };
                let value = Value::Message(self.fields(Some(close))?);
                into.push(Field { name, line, value });
            }
            Some(b'[') if colon => {
                self.pos += 1;
                if self.eat(b']') {
                    return Ok(());
                }
                loop {
                    let value = self.value()?;
                    into.push(Field {
                        name: name.clone(),
                        line: self.line,
                        value,
                    });
                    if self.eat(b']') {
                        return Ok(());
                    }
                    if !self.eat(b',') {
                        return self.unexpected("',' or ']'");
                    }
                }
            }
            _ if colon => {
                let value = self.value()?;
                into.push(Field { name, line, value });
            }
            _ => return self.error(format!("expected ':' or '{{' after {name}")),
        }
        Ok(())
    }

    /// A scalar, or a message in a list.
    fn value(&mut self) -> Result<Value, SyntaxError> {
        match self.peek() {
            Some(b'"' | b'\'') => {
                let mut bytes = Vec::new();
                while let Some(quote @ (b'"' | b'\'')) = self.peek() {
                    self.pos += 1;
                    self.string(quote, &mut bytes)?;
                }
                match String::from_utf8(bytes) {
                    Ok(s) => Ok(Value::String(s)),
                    Err(_) => self.error("the string is not valid UTF-8"),
                }
            }
            Some(open @ (b'{' | b'<')) => {
                self.pos += 1;
                let close = if open == b'{' { b'}' } else { b'>' };
                Ok(Value::Message(self.fields(Some(close))?))
            }
            _ => {
                let negative = self.eat(b'-');
                match self.word() {
                    Some(word) if negative => Ok(Value::Word(format!("-{word}"))),
                    Some(word) => Ok(Value::Word(word)),
                    None => self.unexpected("a value"),
                }
            }
        }
    }

    /// Letters, digits, `_` and `.` (numbers such as `1.5`); None if there are none here.
    fn word(&mut self) -> Option<String> {
        self.peek()?;
        let start = self.pos;
        while self
            .text
            .get(self.pos)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
        {
            self.pos += 1;
        }
        (self.pos > start)
            .then(|| String::from_utf8_lossy(&self.text[start..self.pos]).into_owned())
    }

    /// The error for something other than `wanted` here.
    fn unexpected<T>(&mut self, wanted: &str) -> Result<T, SyntaxError> {
        let message = match self.peek() {
            None => format!("expected {wanted}, found the end of the file"),
            Some(_) => {
                let rest = String::from_utf8_lossy(&self.text[self.pos..]);
                let token: String = rest.chars().take(20).take_while(|c| *c != '\n').collect();
                format!("expected {wanted}, found {token:?}")
            }
        };
        self.error(message)
    }

    /// The rest of a string literal opened by `quote`, unescaped into `out`.
    fn string(&mut self, quote: u8, out: &mut Vec<u8>) -> Result<(), SyntaxError> {
        loop {
            let Some(&c) = self.text.get(self.pos) else {
                return self.error("unterminated string");
            };
            self.pos += 1;
            match c {
                b'\n' => return self.error("unterminated string (a newline inside quotes)"),
                c if c == quote => return Ok(()),
                b'\\' => self.escape(out)?,
                c => out.push(c),
            }
        }
    }

    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), SyntaxError> {
        let Some(&c) = self.text.get(self.pos) else {
            return self.error("unterminated string");
        };
        self.pos += 1;
        let simple = match c {
            b'n' => Some(b'\n'),
            b't' => Some(b'\t'),
            b'r' => Some(b'\r'),
            b'a' => Some(0x07),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'v' => Some(0x0b),
            b'\\' | b'\'' | b'"' | b'?' => Some(c),
            _ => None,
        };
        if let Some(byte) = simple {
            out.push(byte);
            return Ok(());
        }
        let (radix, max_digits) = match c {
            b'0'..=b'7' => {
                self.pos -= 1;
                (8, 3)
            }
            b'x' | b'X' => (16, 2),
            b'u' => (16, 4),
            b'U' => (16, 8),
            _ => return self.error(format!("unknown escape '\\{}'", c as char)),
        };
        let start = self.pos;
        while self.pos - start < max_digits
            && self
                .text
                .get(self.pos)
                .is_some_and(|&d| (d as char).is_digit(radix))
        {
            self.pos += 1;
        }
        let digits = std::str::from_utf8(&self.text[start..self.pos]).unwrap_or_default();
        let value = u32::from_str_radix(digits, radix);
        match (c, value) {
            (b'u' | b'U', Ok(code)) if digits.len() == max_digits => match char::from_u32(code) {
                Some(ch) => out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
                None => return self.error(format!("\\{}{digits} is not a character", c as char)),
            },
            (b'u' | b'U', _) => {
                return self.error(format!("\\{} needs {max_digits} hex digits", c as char))
            }
            (_, Ok(byte)) if byte <= 0xff => out.push(byte as u8),
            _ => return self.error(format!("bad escape '\\{}{digits}'", c as char)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> Value {
        Value::String(s.into())
    }

    #[test]
    fn fields_messages_lists_and_comments() {
        let text = "# a comment\nrules {\n  matcher < label: '//a' 'b' >\n  transform {\n    \
                    omitted_inputs: [\"x\", \"y\"]; salt: \"s\",\n  }\n}\nrules {}\nflag: true\n";
        let fields = parse(text).unwrap();
        assert_eq!(fields.len(), 3);
        assert_eq!(fields[0].line, 2);
        let Value::Message(rule) = &fields[0].value else {
            panic!("{fields:?}")
        };
        let Value::Message(matcher) = &rule[0].value else {
            panic!("{rule:?}")
        };
        assert_eq!(matcher[0].value, string("//ab"));
        let Value::Message(transform) = &rule[1].value else {
            panic!("{rule:?}")
        };
        let names: Vec<_> = transform.iter().map(|f| (&*f.name, f.line)).collect();
        assert_eq!(
            names,
            [("omitted_inputs", 5), ("omitted_inputs", 5), ("salt", 5)]
        );
        assert_eq!(transform[1].value, string("y"));
        assert_eq!(fields[1].value, Value::Message(vec![]));
        assert_eq!(fields[2].value, Value::Word("true".into()));
    }

    #[test]
    fn escapes_as_protobuf_writes_them() {
        let fields = parse(r#"s: "a\"b\\c\n\t\001\x41\u00e9\'" "#).unwrap();
        assert_eq!(fields[0].value, string("a\"b\\c\n\t\u{1}A\u{e9}'"));
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let cases = [
            ("rules {\n  matcher {\n", 3, "missing '}'"),
            ("a: \"open\n\"", 1, "unterminated string"),
            ("rules\n  label: 1", 2, "expected ':' or '{' after rules"),
            ("a: \"\\q\"", 1, "unknown escape '\\q'"),
            ("a: [\"x\" \"y\" z]", 1, "expected ',' or ']'"),
            ("a: \"\\xff\"", 1, "not valid UTF-8"),
            ("{", 1, "expected a field name"),
            ("a:", 1, "expected a value, found the end of the file"),
        ];
        for (text, line, message) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.message.contains(message), "{text:?}: {err}");
        }
    }
}
