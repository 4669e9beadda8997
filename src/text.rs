//! The rules for caller-supplied text: which characters and sizes vapord
//! accepts in anything a caller sends (names, paths, descriptions, JSON
//! specs), and how outgoing text is made safe as a last line of defence.
//!
//! Why: caller text ends up in D-Bus messages (where a NUL makes the bus
//! drop vapord's connection), in polkit details, in replies that sd-bus
//! clients refuse when they hold Unicode non-characters ("Bad message"), in
//! libvirt XML (which allows only XML 1.0 `Char`), in file names, files and
//! log lines. So every string from a caller is checked once, here, before it
//! goes anywhere:
//!
//! - [`check`] / [`problem`]: one string against a [`TextRule`] (size first,
//!   then characters);
//! - [`parse_json_strict`] and [`check_json`]: a JSON document, refusing
//!   duplicate keys and checking every key and string in it;
//! - [`for_bus`]: outgoing text (error messages, polkit details, log lines)
//!   escaped and capped, whatever it holds.
//!
//! Accepted characters are the XML 1.0 `Char` production minus the C0
//! controls (TAB, LF and CR stay allowed in multi-line text), DEL, the C1
//! controls and every Unicode non-character. Messages name the character and
//! its position; they never echo the value.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// How much, and what kind of, text a field takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextRule {
    /// Largest accepted size, in bytes of UTF-8.
    pub max_bytes: usize,
    /// Whether TAB, LF and CR are allowed.
    pub multiline: bool,
}

impl TextRule {
    /// A name (VM, template, pool …); names have a stricter pattern of their
    /// own elsewhere, this only bounds what reaches that check.
    pub const NAME: TextRule = TextRule {
        max_bytes: 256,
        multiline: false,
    };
    /// One line: a path, a key, an address, a short value.
    pub const LINE: TextRule = TextRule {
        max_bytes: 4096,
        multiline: false,
    };
    /// Free text a person writes, e.g. a template's description.
    pub const DESCRIPTION: TextRule = TextRule {
        max_bytes: 64 * 1024,
        multiline: true,
    };
    /// A whole document: a JSON spec, a cloud-init user-data.
    pub const DOCUMENT: TextRule = TextRule {
        max_bytes: 1024 * 1024,
        multiline: true,
    };
}

/// [`for_bus`] never returns more than this many bytes.
const BUS_MAX_BYTES: usize = 64 * 1024;

/// [`check_json`] lists at most this many problems; the rest are counted.
const MAX_REPORTED: usize = 100;

/// Object keys are shown cut to this many characters.
const KEY_SHOWN_CHARS: usize = 64;

/// What the document root is called when [`check_json`] has no `field_root`.
const ROOT_NAME: &str = "document";

/// Unicode non-characters: U+FDD0–U+FDEF and the last two code points of
/// every plane (U+FFFE, U+FFFF, U+1FFFE, …, U+10FFFF).
fn is_noncharacter(c: char) -> bool {
    let u = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&u) || u & 0xFFFE == 0xFFFE
}

/// Whether `c` may appear in caller text.
fn acceptable(c: char, multiline: bool) -> bool {
    match c {
        '\t' | '\n' | '\r' => multiline,
        '\0'..='\u{1F}' | '\u{7F}'..='\u{9F}' => false,
        c => !is_noncharacter(c),
    }
}

/// What is wrong with `c` (known to be unacceptable), found at `position`
/// (1-based, in characters).
fn describe(c: char, position: usize) -> String {
    let code = u32::from(c);
    match c {
        '\0' => format!("contains NUL (U+0000) at character {position}"),
        '\t' => format!("contains a tab (U+0009) at character {position}; must be one line"),
        '\n' => format!("contains a line feed (U+000A) at character {position}; must be one line"),
        '\r' => {
            format!("contains a carriage return (U+000D) at character {position}; must be one line")
        }
        c if is_noncharacter(c) => {
            format!("contains the Unicode non-character U+{code:04X} at character {position}")
        }
        _ => format!("contains the control character U+{code:04X} at character {position}"),
    }
}

/// The first reason `value` is not acceptable text (TAB, LF and CR allowed
/// only when `multiline`), naming the character and its position; `None`
/// when it is fine. Sizes are not looked at (see [`check`]).
pub fn problem(value: &str, multiline: bool) -> Option<String> {
    value
        .chars()
        .enumerate()
        .find(|&(_, c)| !acceptable(c, multiline))
        .map(|(i, c)| describe(c, i + 1))
}

fn too_big(len: usize, max: usize) -> String {
    format!("is {len} bytes, at most {max} allowed")
}

/// Check one caller-supplied string: `InvalidArgument("<field>: <problem>")`
/// when it is over `rule.max_bytes` (checked first) or holds a character the
/// rule refuses. `field` is made safe with [`for_bus`] before it is shown.
pub fn check(field: &str, value: &str, rule: TextRule) -> Result<()> {
    match breaks(value, rule) {
        None => Ok(()),
        Some(p) => Err(Error::InvalidArgument(format!("{}: {p}", for_bus(field)))),
    }
}

/// JSON text made safe for the bus without changing what it says: every
/// character that is not acceptable multi-line text becomes a JSON `\u`
/// escape (a surrogate pair above U+FFFF), which only JSON strings can hold
/// — and JSON from serde_json already escapes controls, so these are the
/// non-characters it leaves raw.
pub fn json_for_bus(json: String) -> String {
    if json.chars().all(|c| acceptable(c, true)) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if acceptable(c, true) {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", u);
            }
        }
    }
    out
}

/// Outgoing text made safe for D-Bus (no NUL), sd-bus (no non-characters) and
/// XML: unchanged when every character is acceptable multi-line text,
/// otherwise each unacceptable character becomes `\u{XXXX}`. The result is at
/// most 64 KiB; longer text is cut on a character boundary and ends in `…`.
pub fn for_bus(s: &str) -> Cow<'_, str> {
    if s.len() <= BUS_MAX_BYTES && s.chars().all(|c| acceptable(c, true)) {
        return Cow::Borrowed(s);
    }
    const ELLIPSIS: char = '…';
    let limit = BUS_MAX_BYTES - ELLIPSIS.len_utf8();
    let mut out = String::with_capacity(s.len().min(BUS_MAX_BYTES));
    // Where to cut if the whole does not fit: before the first piece that
    // goes past `limit`, so the ellipsis still fits.
    let mut cut_at = None;
    for c in s.chars() {
        let before = out.len();
        if acceptable(c, true) {
            out.push(c);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:04X}}}", u32::from(c));
        }
        if cut_at.is_none() && out.len() > limit {
            cut_at = Some(before);
        }
        if out.len() > BUS_MAX_BYTES {
            break;
        }
    }
    if out.len() > BUS_MAX_BYTES {
        out.truncate(cut_at.unwrap_or(0));
        out.push(ELLIPSIS);
    }
    Cow::Owned(out)
}

/// One step of a path into a JSON document.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A key that can be shown bare after a dot: a short ASCII identifier.
fn is_plain_key(k: &str) -> bool {
    let mut chars = k.chars();
    k.len() <= KEY_SHOWN_CHARS
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A key as it appears in messages: quoted, escaped, cut short, safe.
fn shown_key(k: &str) -> String {
    let mut chars = k.chars();
    let short: String = chars.by_ref().take(KEY_SHOWN_CHARS).collect();
    let cut = if chars.next().is_some() { "…" } else { "" };
    let escaped = short.escape_debug().to_string();
    format!("\"{}{cut}\"", for_bus(&escaped))
}

/// Append a key to a rendered path: `a.b`, or `a["x y"]`; a plain key at an
/// empty path stands alone.
fn push_key(path: &mut String, key: &str) {
    if is_plain_key(key) {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        let _ = write!(path, "[{}]", shown_key(key));
    }
}

fn push_index(path: &mut String, i: usize) {
    let _ = write!(path, "[{i}]");
}

fn path_text(segs: &[Seg]) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => push_key(&mut out, k),
            Seg::Index(i) => push_index(&mut out, *i),
        }
    }
    out
}

/// The reason `value` breaks `rule`: too big (checked first, it is cheap) or
/// an unacceptable character.
fn breaks(value: &str, rule: TextRule) -> Option<String> {
    if value.len() > rule.max_bytes {
        Some(too_big(value.len(), rule.max_bytes))
    } else {
        problem(value, rule.multiline)
    }
}

/// The problems found so far: the first [`MAX_REPORTED`] in sorted order,
/// and how many more there were (so memory stays bounded).
#[derive(Default)]
struct Problems {
    shown: std::collections::BTreeSet<String>,
    more: usize,
}

impl Problems {
    fn add(&mut self, problem: String) {
        if self.shown.insert(problem) && self.shown.len() > MAX_REPORTED {
            self.shown.pop_last();
            self.more += 1;
        }
    }

    fn into_result(self) -> Result<()> {
        if self.shown.is_empty() {
            return Ok(());
        }
        let mut out = self.shown.into_iter().collect::<Vec<_>>().join("; ");
        if self.more > 0 {
            let _ = write!(out, "; … and {} more", self.more);
        }
        Err(Error::InvalidArgument(out))
    }
}

/// A container being walked by [`check_json`], and the length of the path
/// to it (children are appended after that).
enum Frame<'a> {
    Array(std::iter::Enumerate<std::slice::Iter<'a, Value>>, usize),
    Object(serde_json::map::Iter<'a>, usize),
}

/// Check every object key (as one line, [`TextRule::LINE`]) and every string
/// value (with `rule_for(path)`) of a parsed JSON document. Paths look like
/// `storage.disks[1].path`, prefixed with `field_root.` unless `field_root` is
/// empty; keys that are not short identifiers appear as `["…"]` (escaped, cut
/// to 64 characters). Every problem is reported, sorted and joined with `; `
/// (at most 100, then `; … and N more`), in one `InvalidArgument`.
pub fn check_json(
    field_root: &str,
    doc: &Value,
    rule_for: impl Fn(&str) -> TextRule,
) -> Result<()> {
    let mut problems = Problems::default();
    let mut path = field_root.to_string();
    // Iterative with one shared path, so neither a document built in code
    // (not depth limited) nor a wide one costs more than its size.
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut next = Some(doc);
    loop {
        match next.take() {
            Some(Value::String(s)) => {
                if let Some(p) = breaks(s, rule_for(&path)) {
                    let shown = if path.is_empty() { ROOT_NAME } else { &path };
                    problems.add(format!("{shown}: {p}"));
                }
            }
            Some(Value::Array(items)) => {
                stack.push(Frame::Array(items.iter().enumerate(), path.len()))
            }
            Some(Value::Object(map)) => stack.push(Frame::Object(map.iter(), path.len())),
            Some(Value::Null | Value::Bool(_) | Value::Number(_)) => {}
            None => {}
        }
        let Some(frame) = stack.last_mut() else {
            break;
        };
        match frame {
            Frame::Array(items, len) => {
                path.truncate(*len);
                if let Some((i, item)) = items.next() {
                    push_index(&mut path, i);
                    next = Some(item);
                }
            }
            Frame::Object(entries, len) => {
                path.truncate(*len);
                if let Some((key, item)) = entries.next() {
                    push_key(&mut path, key);
                    if let Some(p) = breaks(key, TextRule::LINE) {
                        problems.add(format!("{path}: key {p}"));
                    }
                    next = Some(item);
                }
            }
        }
        if next.is_none() {
            stack.pop();
        }
    }
    problems.into_result()
}

/// Parse `text` as JSON, refusing text over `max_bytes` and duplicate object
/// keys at any depth (`<what>: duplicate key storage.disks[0].size`); syntax
/// errors read `<what> is not valid JSON: line L column C: <problem>`.
/// Nesting is bounded by serde_json's recursion limit (128), which gives a
/// syntax error, not a stack overflow. Characters are not checked here (see
/// [`check_json`]).
pub fn parse_json_strict(what: &str, text: &str, max_bytes: usize) -> Result<Value> {
    if text.len() > max_bytes {
        return Err(Error::InvalidArgument(format!(
            "{what}: {}",
            too_big(text.len(), max_bytes)
        )));
    }
    let mut walk = Walk::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = ValueSeed(&mut walk)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    parsed.map_err(|e| match walk.duplicate.take() {
        Some(path) => Error::InvalidArgument(format!("{what}: duplicate key {path}")),
        None => {
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let words = full.strip_suffix(&suffix).unwrap_or(&full);
            Error::InvalidArgument(format!(
                "{what} is not valid JSON: line {} column {}: {words}",
                e.line(),
                e.column()
            ))
        }
    })
}

/// Where the strict parser is, and the duplicate key it found (rendered).
#[derive(Default)]
struct Walk {
    path: Vec<Seg>,
    duplicate: Option<String>,
}

/// Builds a [`Value`] like serde_json's own, but refuses duplicate keys.
struct ValueSeed<'a>(&'a mut Walk);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            self.0.path.push(Seg::Index(out.len()));
            let next = seq.next_element_seed(ValueSeed(&mut *self.0))?;
            self.0.path.pop();
            match next {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let duplicate = out.contains_key(&key);
            self.0.path.push(Seg::Key(key.clone()));
            if duplicate {
                self.0.duplicate = Some(path_text(&self.0.path));
                return Err(de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(ValueSeed(&mut *self.0))?;
            self.0.path.pop();
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod json_for_bus_tests {
    use super::*;

    #[test]
    fn json_keeps_its_meaning_and_loses_non_characters() {
        let v = serde_json::json!({"name": "a\u{fffe}b\u{1fffe}", "ok": "é\n"});
        let text = json_for_bus(serde_json::to_string(&v).unwrap());
        assert!(problem(&text, true).is_none(), "{text}");
        assert!(
            text.contains(r"\ufffe") && text.contains(r"\ud83f\udffe"),
            "{text}"
        );
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn invalid(m: &str) -> Result<()> {
        Err(Error::InvalidArgument(m.into()))
    }

    fn json_err(r: Result<Value>) -> String {
        match r {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn problems_name_the_character_and_where() {
        let table: &[(&str, bool, Option<&str>)] = &[
            ("", false, None),
            ("plain text", false, None),
            ("üñíçødé ✓ 日本 😀", false, None),
            ("a\0b", true, Some("contains NUL (U+0000) at character 2")),
            (
                "abcd\u{1b}[0m",
                true,
                Some("contains the control character U+001B at character 5"),
            ),
            (
                "\u{FFFE}",
                true,
                Some("contains the Unicode non-character U+FFFE at character 1"),
            ),
            (
                "x\u{FFFF}",
                false,
                Some("contains the Unicode non-character U+FFFF at character 2"),
            ),
            (
                "\u{FDD0}",
                false,
                Some("contains the Unicode non-character U+FDD0 at character 1"),
            ),
            (
                "ab\u{FDEF}",
                false,
                Some("contains the Unicode non-character U+FDEF at character 3"),
            ),
            (
                "\u{1FFFE}",
                false,
                Some("contains the Unicode non-character U+1FFFE at character 1"),
            ),
            (
                "é\u{10FFFF}",
                false,
                Some("contains the Unicode non-character U+10FFFF at character 2"),
            ),
            (
                "\u{7F}",
                true,
                Some("contains the control character U+007F at character 1"),
            ),
            (
                "é\u{85}",
                true,
                Some("contains the control character U+0085 at character 2"),
            ),
            (
                "\u{9F}",
                true,
                Some("contains the control character U+009F at character 1"),
            ),
            (
                "a\tb",
                false,
                Some("contains a tab (U+0009) at character 2; must be one line"),
            ),
            (
                "a\nb",
                false,
                Some("contains a line feed (U+000A) at character 2; must be one line"),
            ),
            (
                "a\r\nb",
                false,
                Some("contains a carriage return (U+000D) at character 2; must be one line"),
            ),
            ("line 1\r\n\tline 2\n", true, None),
            (
                "a\x0bb",
                true,
                Some("contains the control character U+000B at character 2"),
            ),
            // Just around the forbidden ranges.
            (
                "\u{A0}\u{FDCF}\u{FDF0}\u{FFFD}\u{1FFFD}\u{E000}\u{D7FF}",
                false,
                None,
            ),
        ];
        for &(value, multiline, want) in table {
            assert_eq!(
                problem(value, multiline).as_deref(),
                want,
                "{value:?} {multiline}"
            );
        }
    }

    #[test]
    fn rules_bound_size_and_lines() {
        assert_eq!(check("name", "web-01", TextRule::NAME), Ok(()));
        assert_eq!(
            check("name", &"a".repeat(257), TextRule::NAME),
            invalid("name: is 257 bytes, at most 256 allowed")
        );
        assert_eq!(check("name", &"a".repeat(256), TextRule::NAME), Ok(()));
        assert_eq!(
            check("path", "/a\nb", TextRule::LINE),
            invalid("path: contains a line feed (U+000A) at character 3; must be one line")
        );
        assert_eq!(check("path", &"é".repeat(2048), TextRule::LINE), Ok(()));
        assert_eq!(
            check("path", &"é".repeat(2049), TextRule::LINE),
            invalid("path: is 4098 bytes, at most 4096 allowed")
        );
        assert_eq!(
            check("description", "a\nb\tc", TextRule::DESCRIPTION),
            Ok(())
        );
        assert_eq!(
            check("description", &"x".repeat(10 << 20), TextRule::DESCRIPTION),
            invalid("description: is 10485760 bytes, at most 65536 allowed")
        );
        assert_eq!(
            check("description", "ok\u{FFFE}", TextRule::DESCRIPTION),
            invalid("description: contains the Unicode non-character U+FFFE at character 3")
        );
        assert_eq!(
            check("spec", &"x".repeat(1 << 20), TextRule::DOCUMENT),
            Ok(())
        );
        assert_eq!(
            check("spec", &"x".repeat((1 << 20) + 1), TextRule::DOCUMENT),
            invalid("spec: is 1048577 bytes, at most 1048576 allowed")
        );
        // The size is checked first, and the field is never echoed unsafely.
        assert_eq!(
            check("a\0", &"\0".repeat(300), TextRule::NAME),
            invalid("a\\u{0000}: is 300 bytes, at most 256 allowed")
        );
    }

    #[test]
    fn for_bus_escapes_only_what_it_must() {
        assert!(matches!(
            for_bus("fine\ttext\n"),
            Cow::Borrowed("fine\ttext\n")
        ));
        assert_eq!(for_bus("a\0b"), "a\\u{0000}b");
        assert_eq!(
            for_bus("\u{FFFE}\u{1b}é\u{10FFFF}"),
            "\\u{FFFE}\\u{001B}é\\u{10FFFF}"
        );
        assert_eq!(for_bus("\u{85}"), "\\u{0085}");
    }

    #[test]
    fn for_bus_caps_the_size_on_a_char_boundary() {
        let exact = "é".repeat(BUS_MAX_BYTES / 2);
        assert!(matches!(for_bus(&exact), Cow::Borrowed(_)));
        let long = "é".repeat(BUS_MAX_BYTES);
        let out = for_bus(&long);
        assert!(out.len() <= BUS_MAX_BYTES, "{}", out.len());
        assert!(out.ends_with("é…"));
        // Escapes are never cut in half.
        let nuls = "\0".repeat(BUS_MAX_BYTES);
        let out = for_bus(&nuls);
        assert!(out.len() <= BUS_MAX_BYTES);
        assert!(out.ends_with("\\u{0000}…"), "{}", &out[out.len() - 20..]);
        // Escaping that grows the text past the cap is cut too.
        let grown = "\u{1b}".repeat(BUS_MAX_BYTES / 4);
        assert!(for_bus(&grown).ends_with('…'));
    }

    fn spec_rule(path: &str) -> TextRule {
        if path == "cloud_init.user_data" {
            TextRule::DOCUMENT
        } else {
            TextRule::LINE
        }
    }

    #[test]
    fn check_json_reports_every_problem_with_its_path() {
        let doc = json!({
            "name": "a\u{0}b",
            "storage": {"disks": [{"path": "ok"}, {"path": "x\u{FFFE}"}]},
            "cloud_init": {"user_data": "#cloud-config\npackages:\n\t- nginx\r\n"},
            "metadata": {"bad key\n": "v", "owner.team": "\u{1b}"},
            "list": ["\u{7f}", 1, null, true, {"k\u{85}": [["\u{FDD0}"]]}],
        });
        let want = "list[0]: contains the control character U+007F at character 1; \
                    list[4][\"k\\u{85}\"]: key contains the control character U+0085 at character 2; \
                    list[4][\"k\\u{85}\"][0][0]: contains the Unicode non-character U+FDD0 at character 1; \
                    metadata[\"bad key\\n\"]: key contains a line feed (U+000A) at character 8; must be one line; \
                    metadata[\"owner.team\"]: contains the control character U+001B at character 1; \
                    name: contains NUL (U+0000) at character 2; \
                    storage.disks[1].path: contains the Unicode non-character U+FFFE at character 2";
        assert_eq!(check_json("", &doc, spec_rule), invalid(want));
        let ok = json!({"cloud_init": {"user_data": "a\nb"}, "n": [1, "x", {"y": "z"}]});
        assert_eq!(check_json("", &ok, spec_rule), Ok(()));
    }

    #[test]
    fn check_json_paths_use_the_root_and_the_rule() {
        let doc = json!({"a": ["x\ny"], "b": "x\ny"});
        let seen = std::cell::RefCell::new(Vec::new());
        let rule = |p: &str| {
            seen.borrow_mut().push(p.to_string());
            TextRule {
                max_bytes: 3,
                multiline: p == "spec.b",
            }
        };
        assert_eq!(
            check_json("spec", &doc, rule),
            invalid("spec.a[0]: contains a line feed (U+000A) at character 2; must be one line")
        );
        let mut seen = seen.into_inner();
        seen.sort();
        assert_eq!(seen, ["spec.a[0]", "spec.b"]);
        assert_eq!(
            check_json("", &json!("toolong"), spec_rule),
            Ok(()),
            "a root string is checked with the rule for \"\""
        );
        assert_eq!(
            check_json("", &json!("a\0"), spec_rule),
            invalid("document: contains NUL (U+0000) at character 2")
        );
        let long_key = format!("{}\0", "k ".repeat(40));
        let msg = check_json("", &json!({ long_key: 1 }), spec_rule).unwrap_err();
        let want = format!(
            "[\"{}…\"]: key contains NUL (U+0000) at character 81",
            "k ".repeat(32)
        );
        assert_eq!(msg, Error::InvalidArgument(want));
        let big_key = "k".repeat(5000);
        assert_eq!(
            check_json("", &json!({ big_key: 1 }), spec_rule),
            invalid(&format!(
                "[\"{}…\"]: key is 5000 bytes, at most 4096 allowed",
                "k".repeat(64)
            ))
        );
    }

    #[test]
    fn check_json_lists_at_most_a_hundred() {
        let doc = Value::Array((0..150).map(|_| json!("\0")).collect());
        let Err(Error::InvalidArgument(m)) = check_json("x", &doc, spec_rule) else {
            panic!("expected InvalidArgument");
        };
        assert_eq!(m.matches("contains NUL").count(), 100);
        assert!(m.ends_with("; … and 50 more"), "{m}");
    }

    #[test]
    fn check_json_survives_a_deep_document_built_in_code() {
        let mut doc = json!("\0");
        for _ in 0..100_000 {
            doc = Value::Array(vec![doc]);
        }
        assert!(check_json("", &doc, spec_rule).is_err());
        // Dropping a deep Value recurses; unwind it by hand.
        while let Value::Array(mut a) = doc {
            doc = a.pop().unwrap_or(Value::Null);
        }
    }

    #[test]
    fn duplicate_keys_are_refused_by_path() {
        let table = [
            (
                r#"{"memory":64,"memory":4194304}"#,
                "spec: duplicate key memory",
            ),
            (
                r#"{"storage":{"disks":[{"size":1},{"size":1,"size":2}]}}"#,
                "spec: duplicate key storage.disks[1].size",
            ),
            (r#"[{"a b":1,"a b":1}]"#, "spec: duplicate key [0][\"a b\"]"),
            (r#"{"m":{"x":{},"x":{}}}"#, "spec: duplicate key m.x"),
            (
                r#"{"\u0000":1,"\u0000":2}"#,
                "spec: duplicate key [\"\\0\"]",
            ),
        ];
        for (text, want) in table {
            assert_eq!(
                json_err(parse_json_strict("spec", text, 1 << 20)),
                want,
                "{text}"
            );
        }
        // Same key in different objects is fine.
        let ok = r#"{"a":{"k":1},"b":{"k":2},"c":[{"k":1},{"k":1}]}"#;
        assert!(parse_json_strict("spec", ok, 1 << 20).is_ok());
    }

    #[test]
    fn syntax_size_and_depth_errors_are_clean() {
        assert_eq!(
            json_err(parse_json_strict("spec", "{\"name\": }", 100)),
            "spec is not valid JSON: line 1 column 10: expected value"
        );
        assert_eq!(
            json_err(parse_json_strict("spec", "{} x", 100)),
            "spec is not valid JSON: line 1 column 4: trailing characters"
        );
        assert_eq!(
            json_err(parse_json_strict("spec", "", 100)),
            "spec is not valid JSON: line 1 column 0: EOF while parsing a value"
        );
        assert_eq!(
            json_err(parse_json_strict("doc", "[1, 2]", 5)),
            "doc: is 6 bytes, at most 5 allowed"
        );
        let deep = "[".repeat(100_000);
        let msg = json_err(parse_json_strict("spec", &deep, 1 << 20));
        assert!(msg.contains("recursion limit exceeded"), "{msg}");
        let ok_depth = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse_json_strict("spec", &ok_depth, 1 << 20).is_ok());
        let lone = r#"["\ud800"]"#;
        let m = json_err(parse_json_strict("spec", lone, 100));
        assert!(
            m.starts_with("spec is not valid JSON: line 1 column 9: "),
            "{m}"
        );
    }

    #[test]
    fn the_deepest_document_fits_a_small_stack() {
        // serde_json stops at 128 levels; that must fit well within the 2 MiB
        // of a tokio worker, here a quarter of it.
        let arrays = format!("{}{}", "[".repeat(127), "]".repeat(127));
        let objects = format!("{}1{}", "{\"a\":".repeat(127), "}".repeat(127));
        let deeper = "{\"a\":[".repeat(1000);
        std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || {
                assert!(parse_json_strict("spec", &arrays, 1 << 20).is_ok());
                assert!(parse_json_strict("spec", &objects, 1 << 20).is_ok());
                let m = json_err(parse_json_strict("spec", &deeper, 1 << 20));
                assert!(m.ends_with("recursion limit exceeded"), "{m}");
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn strict_parse_matches_serde_json() {
        for text in [
            r#"{"a": [1, -2, 3.5, 1e300, 18446744073709551615, -9223372036854775808]}"#,
            r#"{"s": "é\u00e9\n\"", "t": true, "f": false, "n": null, "o": {}, "e": []}"#,
            " 7 ",
        ] {
            let want: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse_json_strict("x", text, 1000).unwrap(), want, "{text}");
        }
    }

    /// Characters `check` must refuse in single-line text.
    fn forbidden_char() -> impl Strategy<Value = char> {
        prop_oneof![
            (0u32..=0x1F).prop_map(|u| char::from_u32(u).unwrap()),
            (0x7Fu32..=0x9F).prop_map(|u| char::from_u32(u).unwrap()),
            (0xFDD0u32..=0xFDEF).prop_map(|u| char::from_u32(u).unwrap()),
            (0u32..=0x10, 0u32..=1)
                .prop_map(|(plane, low)| { char::from_u32((plane << 16) | 0xFFFE | low).unwrap() }),
        ]
    }

    fn allowed_char(multiline: bool) -> impl Strategy<Value = char> {
        any::<char>().prop_filter("acceptable", move |&c| acceptable(c, multiline))
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            // Halves are exact in binary and decimal, so they survive a round trip.
            any::<i32>().prop_map(|i| json!(f64::from(i) / 2.0)),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn for_bus_output_is_always_acceptable(s in any::<String>()) {
            let out = for_bus(&s);
            prop_assert_eq!(problem(&out, true), None);
            prop_assert!(!out.contains('\0'));
            prop_assert!(out.len() <= BUS_MAX_BYTES);
            if problem(&s, true).is_none() {
                prop_assert_eq!(out.as_ref(), s.as_str());
            }
        }

        #[test]
        fn for_bus_output_is_acceptable_for_forbidden_text(
            s in prop::collection::vec(forbidden_char(), 0..64)
        ) {
            let s: String = s.into_iter().collect();
            let out = for_bus(&s);
            prop_assert_eq!(problem(&out, true), None);
            prop_assert!(!out.contains('\0'));
        }

        #[test]
        fn check_accepts_allowed_text(
            multiline in any::<bool>(),
            chars in prop::collection::vec(allowed_char(true), 0..200),
        ) {
            let s: String = chars
                .into_iter()
                .filter(|&c| acceptable(c, multiline))
                .collect();
            let rule = TextRule { max_bytes: s.len(), multiline };
            prop_assert_eq!(check("field", &s, rule), Ok(()));
        }

        #[test]
        fn check_refuses_an_inserted_forbidden_char(
            chars in prop::collection::vec(allowed_char(false), 0..100),
            bad in forbidden_char(),
            at in any::<prop::sample::Index>(),
            multiline in any::<bool>(),
        ) {
            prop_assume!(!(multiline && matches!(bad, '\t' | '\n' | '\r')));
            let mut chars = chars;
            let at = at.index(chars.len() + 1);
            chars.insert(at, bad);
            let s: String = chars.into_iter().collect();
            let rule = TextRule { max_bytes: TextRule::DOCUMENT.max_bytes, multiline };
            let Err(Error::InvalidArgument(m)) = check("my.field", &s, rule) else {
                return Err(TestCaseError::fail("accepted"));
            };
            let code = format!("U+{:04X}", u32::from(bad));
            prop_assert!(m.starts_with("my.field: contains "), "{}", m);
            prop_assert!(m.contains(&code), "{}", m);
            prop_assert!(m.ends_with(&format!("at character {}", at + 1))
                || m.contains(&format!("at character {};", at + 1)), "{}", m);
        }

        #[test]
        fn strict_parse_never_panics(text in any::<String>()) {
            let _ = parse_json_strict("spec", &text, TextRule::DOCUMENT.max_bytes);
        }

        #[test]
        fn strict_parse_never_panics_on_jsonish_text(
            text in "[\\[\\]{}\":,0-9a-z \\\\]{0,300}"
        ) {
            let _ = parse_json_strict("spec", &text, TextRule::DOCUMENT.max_bytes);
        }

        #[test]
        fn strict_parse_survives_deep_nesting(
            depth in 0usize..20_000,
            open in prop_oneof![Just("["), Just("{\"a\":")],
        ) {
            let text = open.repeat(depth);
            let r = parse_json_strict("spec", &text, TextRule::DOCUMENT.max_bytes);
            prop_assert!(r.is_err());
        }

        #[test]
        fn strict_parse_round_trips(v in json_value()) {
            let text = serde_json::to_string(&v).unwrap();
            prop_assert_eq!(parse_json_strict("x", &text, usize::MAX).unwrap(), v.clone());
            let pretty = serde_json::to_string_pretty(&v).unwrap();
            prop_assert_eq!(parse_json_strict("x", &pretty, usize::MAX).unwrap(), v);
        }
    }
}
