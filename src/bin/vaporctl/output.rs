//! What vaporctl prints: tables whose cells cannot carry terminal escapes,
//! property maps as JSON, sizes and times for people, and the size syntax
//! people type.

use std::collections::HashMap;

use serde_json::{json, Value};
use zbus::OwnedVariant;

/// One object's properties of one interface, as D-Bus sends them.
pub type Props = HashMap<String, OwnedVariant>;

pub fn prop_str(props: &Props, key: &str) -> String {
    match props.get(key).map(|v| props_json_value(v)) {
        Some(Value::String(s)) => s,
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

pub fn prop_u64(props: &Props, key: &str) -> u64 {
    props
        .get(key)
        .and_then(|v| props_json_value(v).as_u64())
        .unwrap_or(0)
}

pub fn prop_bool(props: &Props, key: &str) -> bool {
    props
        .get(key)
        .and_then(|v| props_json_value(v).as_bool())
        .unwrap_or(false)
}

/// An array-of-strings (or of object paths) property.
pub fn prop_strs(props: &Props, key: &str) -> Vec<String> {
    match props.get(key).map(|v| props_json_value(v)) {
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|v| match v {
                Value::String(s) => s,
                v => v.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

pub fn props_json_value(v: &zbus::Variant<'_>) -> Value {
    match v {
        zbus::Variant::Str(s) => json!(s.as_str()),
        zbus::Variant::Bool(b) => json!(b),
        zbus::Variant::U8(n) => json!(n),
        zbus::Variant::U16(n) => json!(n),
        zbus::Variant::U32(n) => json!(n),
        zbus::Variant::U64(n) => json!(n),
        zbus::Variant::I16(n) => json!(n),
        zbus::Variant::I32(n) => json!(n),
        zbus::Variant::I64(n) => json!(n),
        zbus::Variant::F64(n) => json!(n),
        zbus::Variant::ObjectPath(p) => json!(p.as_str()),
        zbus::Variant::Array(a) => Value::Array(a.iter().map(props_json_value).collect()),
        other => json!(other.to_string()),
    }
}

pub fn props_json(props: &Props) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in props {
        m.insert(k.clone(), props_json_value(v));
    }
    Value::Object(m)
}

/// Print a JSON value the way every `--json` listing does.
pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// `s`, or `-` when empty.
pub fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// Text from vapord on one line: line breaks become spaces, other control
/// characters (terminal escapes) U+FFFD. No length limit.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// A table cell: one line, no control characters (a daemon reply could carry
/// terminal escape sequences), at most `MAX_CELL` characters.
pub fn cell_text(cell: &str) -> String {
    const MAX_CELL: usize = 80;
    let mut out: String = cell
        .chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .take(MAX_CELL + 1)
        .collect();
    if out.chars().count() > MAX_CELL {
        out = out.chars().take(MAX_CELL - 1).collect();
        out.push('…');
    }
    out
}

pub fn table(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cell_text(c)).collect())
        .collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The header row of a table.
pub fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Print `key  value` lines, keys padded to `width`, values on one line.
pub fn print_fields(fields: &[(String, String)], width: usize) {
    for (k, v) in fields {
        println!("{:<width$} {}", one_line(k), one_line(v));
    }
}

/// Every property for `show`, as `(name, text)` after `Object`, sorted by
/// name: sizes (`…Bytes`) for people with the exact count, object paths
/// (alone or in arrays) through `names`, the empty path `/` as `-`.
pub fn show_fields(
    path: &str,
    props: &Props,
    names: &dyn Fn(&[String]) -> Vec<String>,
) -> Vec<(String, String)> {
    let all = props_json(props);
    let Value::Object(all) = all else {
        return Vec::new();
    };
    let is_path = |s: &str| s.starts_with("/org/vapor/");
    let mut out = vec![("Object".to_string(), path.to_string())];
    for (k, v) in all {
        let text = match v {
            Value::Number(n) if k.ends_with("Bytes") => {
                let b = n.as_u64().unwrap_or(0);
                format!("{} ({b} bytes)", format_size(b))
            }
            Value::String(s) if is_path(&s) => names(&[s]).join(""),
            Value::String(s)
                if s == "/"
                    && props
                        .get(&k)
                        .is_some_and(|v| matches!(&**v, zbus::Variant::ObjectPath(_))) =>
            {
                "-".into()
            }
            Value::String(s) => or_dash(s),
            Value::Array(a) => {
                let items: Vec<String> = a
                    .into_iter()
                    .map(|x| match x {
                        Value::String(s) => s,
                        x => x.to_string(),
                    })
                    .collect();
                let items = if !items.is_empty() && items.iter().all(|s| is_path(s)) {
                    names(&items)
                } else {
                    items
                };
                or_dash(items.join(", "))
            }
            v => v.to_string(),
        };
        out.push((k, text));
    }
    out
}

const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// Bytes for people, in binary units: `0 B`, `512 B`, `10 GiB`, `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    let scale = 1u64 << (10 * unit);
    if bytes.is_multiple_of(scale) {
        return format!("{} {}", bytes / scale, UNITS[unit]);
    }
    let tenths = (u128::from(bytes) * 10 + u128::from(scale) / 2) / u128::from(scale);
    if tenths % 10 == 0 {
        // Rounded to a whole number: say it is not exact.
        return format!("{}.0 {}", tenths / 10, UNITS[unit]);
    }
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

/// A size as people write it, libvirt's way: a number (a fraction is
/// allowed) with an optional unit: none or `B` bytes; `K`, `M`, `G`, `T`,
/// `P`, `E` or `KiB` … `EiB` powers of 1024; `KB` … `EB` powers of 1000.
/// Case-insensitive. A fractional byte count is rounded down.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let bad = || format!("{text:?} is not a size (e.g. 20G, 512MiB, 1.5T, 10GB, 4096)");
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 9 {
        return Err(bad());
    }
    let unit_lc = unit.to_ascii_lowercase();
    let (prefix, rest) = match unit_lc.chars().next() {
        Some(c) if "kmgtpe".contains(c) => (Some(c), &unit_lc[1..]),
        _ => (None, unit_lc.as_str()),
    };
    let base: u128 = match rest {
        "" | "ib" if prefix.is_some() => 1024,
        "b" if prefix.is_some() => 1000,
        "" | "b" => 1,
        _ => return Err(bad()),
    };
    let power = prefix.map_or(0, |c| "kmgtpe".find(c).unwrap_or(0) as u32 + 1);
    let multiplier = base.pow(power);
    let parse = |s: &str| -> Result<u128, String> {
        if s.is_empty() {
            Ok(0)
        } else {
            s.parse::<u128>().map_err(|_| bad())
        }
    };
    let frac_scale = 10u128.pow(frac.len() as u32);
    let whole = parse(whole)?;
    let frac = parse(frac)?;
    let bytes = whole
        .checked_mul(multiplier)
        .and_then(|w| w.checked_add(frac * multiplier / frac_scale))
        .ok_or_else(|| format!("{text:?} is too large"))?;
    u64::try_from(bytes).map_err(|_| format!("{text:?} is too large"))
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC` (`-` for 0).
pub fn format_epoch(secs: u64) -> String {
    if secs == 0 {
        return "-".into();
    }
    let (y, mo, d, h, mi, se) = vapor::text::civil_utc(secs.min(i64::MAX as u64) as i64);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{se:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_take_any_reply_without_panicking() {
        let long = "d".repeat(200_000);
        let rows = vec![
            vec!["NAME".to_string(), "DESCRIPTION".to_string()],
            vec!["t1".to_string(), long],
            vec!["t2".to_string()],
            vec![
                "t3".to_string(),
                "line\nbreak \u{1b}[31mred\u{fffe}".to_string(),
            ],
        ];
        let out = table(&rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[1].chars().count() <= 4 + 2 + 80);
        assert!(lines[1].ends_with('…'));
        assert!(!out.contains('\u{1b}'));
        assert!(lines[3].starts_with("t3    line break"), "{}", lines[3]);
    }

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1 KiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(10 << 30), "10 GiB");
        assert_eq!(format_size((10 << 30) + 1), "10.0 GiB");
        assert_eq!(format_size(3 * (1 << 40) / 2), "1.5 TiB");
        assert_eq!(format_size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn sizes_parse_the_libvirt_way() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("20g"), Ok(20 << 30));
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("20 GiB"), Ok(20 << 30));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5T"), Ok(3 << 39));
        assert_eq!(parse_size(".5K"), Ok(512));
        assert_eq!(parse_size("16E"), Err("\"16E\" is too large".into()));
        for bad in ["", "G", "ten", "1.2.3", "5X", "5 GiBs", "-1", "1e9"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        for n in [0, 1, 1023, 1 << 20, 10 << 30] {
            assert_eq!(parse_size(&n.to_string()), Ok(n));
        }
    }

    #[test]
    fn epochs_print_as_utc() {
        assert_eq!(format_epoch(0), "-");
        assert_eq!(format_epoch(1), "1970-01-01 00:00:01 UTC");
        assert_eq!(format_epoch(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_epoch(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn one_line_removes_escapes_but_keeps_length() {
        let s = format!("a\nb\u{1b}[1m{}", "x".repeat(300));
        let out = one_line(&s);
        assert!(out.starts_with("a b\u{fffd}[1m"));
        assert_eq!(out.chars().count(), s.chars().count());
    }

    #[test]
    fn show_fields_are_for_people() {
        let v = |x: zbus::Variant<'static>| OwnedVariant::try_from(x).unwrap();
        let path = |p: &'static str| v(zbus::ObjectPath::from_static_str_unchecked(p).into());
        let mut props = Props::new();
        props.insert("CapacityBytes".into(), v((10u64 << 30).into()));
        props.insert("Pool".into(), path("/org/vapor/Virtualization/pool/p"));
        props.insert("OwnedBy".into(), path("/"));
        props.insert("BackingStore".into(), v("".into()));
        props.insert("Name".into(), v("a\u{1b}[2Jb".into()));
        let names = |p: &[String]| {
            p.iter()
                .map(|s| format!("<{}>", &s[s.len() - 1..]))
                .collect()
        };
        let fields = show_fields("/obj", &props, &names);
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, t)| t.clone());
        assert_eq!(fields[0], ("Object".into(), "/obj".into()));
        assert_eq!(get("CapacityBytes").unwrap(), "10 GiB (10737418240 bytes)");
        assert_eq!(get("Pool").unwrap(), "<p>");
        assert_eq!(get("OwnedBy").unwrap(), "-");
        assert_eq!(get("BackingStore").unwrap(), "-");
        assert_eq!(one_line(&get("Name").unwrap()), "a\u{fffd}[2Jb");
    }
}
