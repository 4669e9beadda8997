//! Tests of `text.rs`: the rules, the bus-safe forms, strict JSON.

mod json_for_bus {
    use super::super::*;

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

mod rules {
    use proptest::prelude::*;
    use serde_json::json;

    use super::super::*;

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
