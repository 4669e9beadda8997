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

/// Seconds since the epoch as a UTC civil date and time: (year, month,
/// day, hour, minute, second) (Howard Hinnant's `civil_from_days`).
pub fn civil_utc(unix_secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month as u32,
        day as u32,
        (secs / 3600) as u32,
        ((secs / 60) % 60) as u32,
        (secs % 60) as u32,
    )
}

#[cfg(test)]
#[path = "text_tests.rs"]
mod tests;
