//! The host's double encoding peeled in one pass.
//!
//! The Functions host sends the trigger's documents as a JSON string whose content is another
//! JSON string whose content is the array: `"\"[{\\\"id\\\":...}]\""`. Peeling that with two
//! string parses copies and scans the text twice; [`peel_twice`] goes from the body's literal
//! to the array's text in one. Plain runs are the same in all three layers (a run holds no `\`
//! and no `"`), so only escape sequences need work. It handles what encoders produce; anything
//! else (a layer-1 string that does not end the text, a control character where layer 1
//! forbids it, a lone surrogate, an unknown escape) returns `None` and the caller takes the
//! general two-parse path, which reports the error exactly as before.

/// `literal` is a JSON string literal as it stands in the body, quotes included, already
/// validated as one (serde_json's `RawValue`). Returns the text of the string inside the
/// string, when the literal holds exactly a JSON string literal (surrounding layer-1
/// whitespace aside) and every escape is an ordinary one.
pub fn peel_twice(literal: &str) -> Option<String> {
    let content = literal.strip_prefix('"')?.strip_suffix('"')?;
    let bytes = content.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    // Layer-1 whitespace before the layer-1 string opens.
    let mut i = skip_layer1_whitespace(bytes, 0)?;
    // The layer-1 string opens: `\"` in layer 0.
    if bytes.get(i..i + 2)? != b"\\\"" {
        return None;
    }
    i += 2;
    loop {
        // A plain run: copied through both layers unchanged.
        let run_end = memchr::memchr(b'\\', &bytes[i..]).map_or(bytes.len(), |n| i + n);
        out.extend_from_slice(&bytes[i..run_end]);
        i = run_end;
        if i == bytes.len() {
            // The layer-1 string never closed.
            return None;
        }
        // A layer-0 escape at `i`: what layer-1 character does it stand for?
        let (ch, next) = layer0_escape(bytes, i)?;
        i = next;
        match ch {
            // The layer-1 string closes: only layer-1 whitespace may follow.
            '"' => {
                return (skip_layer1_whitespace(bytes, i)? == bytes.len())
                    .then(|| String::from_utf8(out).ok())
                    .flatten();
            }
            // A layer-1 escape: its next character, itself a layer-0 character.
            '\\' => {
                let (escaped, next) = layer0_char(bytes, i)?;
                i = next;
                match escaped {
                    '"' => out.push(b'"'),
                    '\\' => out.push(b'\\'),
                    '/' => out.push(b'/'),
                    'b' => out.push(0x08),
                    'f' => out.push(0x0c),
                    'n' => out.push(b'\n'),
                    'r' => out.push(b'\r'),
                    't' => out.push(b'\t'),
                    'u' => {
                        let (c, next) = layer1_unicode(bytes, i)?;
                        i = next;
                        push_char(&mut out, c);
                    }
                    _ => return None,
                }
            }
            // A raw control character inside the layer-1 string is not JSON.
            c if (c as u32) < 0x20 => return None,
            c => push_char(&mut out, c),
        }
    }
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// Skips layer-1 JSON whitespace (raw spaces, or escaped `\n`, `\r`, `\t` in layer 0).
fn skip_layer1_whitespace(bytes: &[u8], mut i: usize) -> Option<usize> {
    loop {
        match bytes.get(i) {
            Some(b' ') => i += 1,
            Some(b'\\') => match bytes.get(i + 1)? {
                b'n' | b'r' | b't' => i += 2,
                _ => return Some(i),
            },
            _ => return Some(i),
        }
    }
}

/// The layer-0 character at `i` (plain or escaped) and the index after it.
fn layer0_char(bytes: &[u8], i: usize) -> Option<(char, usize)> {
    match *bytes.get(i)? {
        b'\\' => layer0_escape(bytes, i),
        b if b.is_ascii() => Some((b as char, i + 1)),
        // A non-ASCII character right after a layer-1 backslash is an invalid escape.
        _ => None,
    }
}

/// The character a layer-0 escape sequence at `i` (`bytes[i] == b'\\'`) stands for.
fn layer0_escape(bytes: &[u8], i: usize) -> Option<(char, usize)> {
    let c = match *bytes.get(i + 1)? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => return unicode(bytes, i + 2, hex4, b"\\u"),
        _ => return None,
    };
    Some((c, i + 2))
}

/// A layer-1 `\uXXXX` whose `u` was at `i - 1`: four hex digits, each a layer-0 character,
/// and for a high surrogate the low one after it (`\\uXXXX` in layer 0).
fn layer1_unicode(bytes: &[u8], i: usize) -> Option<(char, usize)> {
    unicode(bytes, i, hex4, b"\\\\u")
}

/// A `\uXXXX` code unit at `i` (read by `read`), joined with a following low surrogate
/// (introduced by `low_prefix`) when it is a high one.
fn unicode(
    bytes: &[u8],
    i: usize,
    read: impl Fn(&[u8], usize) -> Option<u16>,
    low_prefix: &[u8],
) -> Option<(char, usize)> {
    let unit = read(bytes, i)?;
    let i = i + 4;
    match unit {
        0xD800..=0xDBFF => {
            let j = i + low_prefix.len();
            if bytes.get(i..j)? != low_prefix {
                return None;
            }
            let low = read(bytes, j)?;
            if !(0xDC00..=0xDFFF).contains(&low) {
                return None;
            }
            let c = 0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
            Some((char::from_u32(c)?, j + 4))
        }
        0xDC00..=0xDFFF => None,
        _ => Some((char::from_u32(u32::from(unit))?, i)),
    }
}

/// Four plain hex digits at `i`.
fn hex4(bytes: &[u8], i: usize) -> Option<u16> {
    let digits = std::str::from_utf8(bytes.get(i..i + 4)?).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The general path: two string parses.
    fn two_parses(literal: &str) -> Option<String> {
        let layer1: String = serde_json::from_str(literal).ok()?;
        serde_json::from_str::<String>(&layer1).ok()
    }

    /// JSON text with every non-ASCII character and `<`, `>`, `&`, `'`, `+` escaped as
    /// `\uXXXX`, as .NET's default encoder writes it.
    fn ascii_escaped(text: &str) -> String {
        let mut out = String::new();
        for c in text.chars() {
            if c.is_ascii() && !"<>&'+".contains(c) {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04X}"));
                }
            }
        }
        out
    }

    #[test]
    fn ordinary_bodies_peel_as_two_parses_do() {
        let docs = json!([
            {"id": "a", "_etag": "\"0f00\"", "path": "a/b\\c", "text": "line\nnext\ttab\r\u{8}\u{c}"},
            {"id": "é ü 中文 😀", "q": "<script>&'+", "ctl": "\u{1}\u{1f}", "n": 1.5e3, "z": null},
            {"id": "\\\"", "nested": {"a": [1, "two", {"three": "\\u0041"}]}},
        ]);
        let array = docs.to_string();
        let once = serde_json::to_string(&array).unwrap();
        let cases = [
            ("serde_json", serde_json::to_string(&once).unwrap()),
            (
                ".NET-style \\u escapes in layer 0",
                ascii_escaped(&serde_json::to_string(&once).unwrap()),
            ),
            (
                ".NET-style \\u escapes in layer 1",
                serde_json::to_string(&ascii_escaped(&once)).unwrap(),
            ),
            (
                "\\u escapes in both",
                ascii_escaped(&serde_json::to_string(&ascii_escaped(&once)).unwrap()),
            ),
            (
                "layer-1 whitespace around the string",
                serde_json::to_string(&format!(" \n\t{once}\r\n ")).unwrap(),
            ),
            ("the captured host body", captured_binding()),
        ];
        for (name, literal) in cases {
            let expected = two_parses(&literal).unwrap();
            assert_eq!(peel_twice(&literal), Some(expected), "{name}");
        }
        // A layer-0 `\u` escape for a backslash starts a layer-1 escape, as it should.
        assert_eq!(peel_twice(r#""\"\u005cn\"""#).as_deref(), Some("\n"));
        let peeled = peel_twice(&serde_json::to_string(&once).unwrap()).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&peeled).unwrap(), docs);
    }

    fn captured_binding() -> String {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/reference/functions-host/cosmos-trigger-request-1-multi.json"
        );
        let body = std::fs::read_to_string(path).unwrap_or_else(|_| {
            // Outside this workplace: the same shape, made here.
            let docs = json!([{"id": "x", "_etag": "\"0f00\"", "_lsn": 161}]).to_string();
            json!({"Data": {"documents": serde_json::to_string(&docs).unwrap()}}).to_string()
        });
        let v: Value = serde_json::from_str(&body).unwrap();
        serde_json::to_string(&v["Data"]["documents"]).unwrap()
    }

    #[test]
    fn anything_unusual_goes_to_the_general_path() {
        // (literal as it stands in the body, why the fast path declines)
        let cases = [
            (r#""[1]""#, "single-encoded: the caller's one-parse path"),
            (r#""\"[1]\" x""#, "text after the layer-1 string"),
            (r#""\"[1]""#, "the layer-1 string never closes"),
            (r#""\"a\nb\"""#, "a raw newline inside the layer-1 string"),
            (r#""\"a\\x\"""#, "an unknown layer-1 escape"),
            (
                r#""\"a\\\nb\"""#,
                "a layer-1 backslash before a control character",
            ),
            (r#""\"\\uD800\"""#, "a lone high surrogate in layer 1"),
            (r#""\"\\uDC00\"""#, "a lone low surrogate in layer 1"),
            (r#""\"\\u12\"""#, "short hex in layer 1"),
            (r#""\"\uD83D\"""#, "a lone high surrogate in layer 0"),
            (
                r#""\"\\\u00e9\"""#,
                "a layer-1 backslash before a non-ASCII character",
            ),
            (r#""""#, "empty"),
            ("x", "not a literal"),
        ];
        for (literal, why) in cases {
            assert_eq!(peel_twice(literal), None, "{why}: {literal}");
        }
    }

    #[test]
    fn generated_strings_peel_as_two_parses_do() {
        // A small deterministic generator (xorshift): strings mixing the characters that
        // need escaping at each layer, encoded plainly and .NET-style.
        let alphabet: Vec<char> = "ab \"\\/\n\r\t\u{8}\u{c}\u{1}é中😀<>&'+u0"
            .chars()
            .collect();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let len = (next() % 24) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            // As a document's string, and as the innermost text itself (raw control
            // characters and whitespace there come from layer-1 escapes).
            for text in [json!([s, {"k": s}]).to_string(), s] {
                let once = serde_json::to_string(&text).unwrap();
                for literal in [
                    serde_json::to_string(&once).unwrap(),
                    ascii_escaped(&serde_json::to_string(&ascii_escaped(&once)).unwrap()),
                ] {
                    assert_eq!(peel_twice(&literal), two_parses(&literal), "{literal}");
                    assert_eq!(peel_twice(&literal).as_ref(), Some(&text), "{literal}");
                }
            }
        }
    }
}
