//! Tests of the filter module: SQL92 parser and evaluator (every operator, precedence, NULL
//! handling, type mixing, errors), the `Filter` API, and property tests against a reference
//! evaluator over random expressions.

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::storage::message::{NewMessage, decode_batch, encode_batch};

/// Three-valued result with failure, as `SqlExpr::evaluate` returns it.
type R = Result<Option<bool>, ()>;
const T: R = Ok(Some(true));
const F: R = Ok(Some(false));
const N: R = Ok(None);
const E: R = Err(());

fn map(p: &[(&str, &str)]) -> HashMap<String, String> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn eval_map(e: &SqlExpr, m: &HashMap<String, String>) -> R {
    e.evaluate(&|k: &str| m.get(k).map(|v| Cow::Borrowed(v.as_str())))
}

#[track_caller]
fn parse(e: &str) -> SqlExpr {
    match SqlExpr::parse(e) {
        Ok(x) => x,
        Err(err) => panic!("{e:?} should parse: {err}"),
    }
}

#[track_caller]
fn ev(e: &str, p: &[(&str, &str)]) -> R {
    let x = parse(e);
    let r = eval_map(&x, &map(p));
    // Whatever it evaluates to, the canonical print parses back to the same tree.
    assert_eq!(parse(&x.to_string()), x, "round trip of {e:?} via {x}");
    r
}

#[track_caller]
fn check(e: &str, p: &[(&str, &str)], want: R) {
    assert_eq!(ev(e, p), want, "{e:?} with {p:?}");
    let x = parse(e);
    let m = map(p);
    assert_eq!(
        x.matches(&|k: &str| m.get(k).map(|v| Cow::Borrowed(v.as_str()))),
        want == T
    );
}

#[track_caller]
fn bad(e: &str) -> FilterError {
    match SqlExpr::parse(e) {
        Ok(x) => panic!("{e:?} should be rejected, parsed as {x}"),
        Err(err) => err,
    }
}

#[track_caller]
fn bad_at(e: &str, column: usize) -> String {
    match bad(e) {
        FilterError::Sql {
            column: c, message, ..
        } => {
            assert_eq!(c, column, "{e:?}: {message}");
            message
        }
        other => panic!("{e:?}: unexpected error {other:?}"),
    }
}

// ---- comparison operators ------------------------------------------------------------------

#[test]
fn every_comparison_operator_on_numbers() {
    let p = [("a", "5")];
    for (e, want) in [
        ("a = 5", T),
        ("a = 4", F),
        ("a <> 5", F),
        ("a <> 4", T),
        ("a > 4", T),
        ("a > 5", F),
        ("a >= 5", T),
        ("a >= 6", F),
        ("a < 6", T),
        ("a < 5", F),
        ("a <= 5", T),
        ("a <= 4", F),
        ("5 = a", T),
        ("6 > a", T),
        ("4 >= a", F),
    ] {
        check(e, &p, want);
    }
}

#[test]
fn string_equality_and_escapes() {
    let p = [("b", "it's"), ("c", "x")];
    check("b = 'it''s'", &p, T);
    check("b = 'its'", &p, F);
    check("b <> 'it''s'", &p, F);
    check("c = 'x'", &p, T);
    check("c = 'X'", &p, F);
    check("'x' = c", &p, T);
    check("c = ''", &p, F);
    check("c = ''", &[("c", "")], T);
    // Strings may span lines and hold anything but a lone quote.
    check(
        "c = 'a\nb -- no comment /* */'",
        &[("c", "a\nb -- no comment /* */")],
        T,
    );
    check("c = 'ünï'", &[("c", "ünï")], T);
}

#[test]
fn between_and_not_between() {
    for (v, inside) in [
        ("0", false),
        ("1", true),
        ("2", true),
        ("3", true),
        ("4", false),
    ] {
        let p = [("a", v)];
        check("a BETWEEN 1 AND 3", &p, if inside { T } else { F });
        check("a NOT BETWEEN 1 AND 3", &p, if inside { F } else { T });
    }
    check("a BETWEEN 1.5 AND 2.5", &[("a", "2")], T);
    check("a BETWEEN 1 AND 1", &[("a", "1")], T);
    // Bounds that are not both literals are not checked for order (RocketMQ).
    check("a BETWEEN -1 AND 1", &[("a", "0")], T);
    check("a BETWEEN 1 AND -1", &[("a", "0")], F);
    check(
        "a BETWEEN b AND c",
        &[("a", "2"), ("b", "1"), ("c", "3")],
        T,
    );
    check("a NOT BETWEEN -(2) AND -1", &[("a", "-3")], T);
    check("5 BETWEEN 1 AND 10", &[], T);
}

#[test]
fn in_and_not_in() {
    let p = [("b", "y")];
    check("b IN ('x', 'y')", &p, T);
    check("b IN ('x')", &p, F);
    check("b NOT IN ('x', 'z')", &p, T);
    check("b NOT IN ('y')", &p, F);
    check("b IN ('a','b','c','d','e','f','y')", &p, T);
    check("b IN ('it''s')", &[("b", "it's")], T);
    check("(b) IN ('y')", &p, T);
    // IN compares text: no numeric conversion.
    check("n IN ('1')", &[("n", "01")], F);
}

#[test]
fn string_tests() {
    let p = [("s", "hello")];
    check("s CONTAINS 'ell'", &p, T);
    check("s CONTAINS 'xyz'", &p, F);
    check("s NOT CONTAINS 'xyz'", &p, T);
    check("s NOT CONTAINS 'ell'", &p, F);
    check("s STARTSWITH 'he'", &p, T);
    check("s STARTSWITH 'lo'", &p, F);
    check("s NOT STARTSWITH 'lo'", &p, T);
    check("s ENDSWITH 'lo'", &p, T);
    check("s NOT ENDSWITH 'lo'", &p, F);
    // Empty search string, missing value or non-string: FALSE for both forms.
    check("s CONTAINS ''", &p, F);
    check("s NOT CONTAINS ''", &p, F);
    check("z CONTAINS 'a'", &p, F);
    check("z NOT CONTAINS 'a'", &p, F);
    check("5 NOT STARTSWITH 'a'", &p, F);
    check("TRUE NOT ENDSWITH 'a'", &p, F);
}

#[test]
fn is_null_and_is_not_null() {
    check("a IS NULL", &[], T);
    check("a IS NULL", &[("a", "")], F);
    check("a IS NOT NULL", &[("a", "1")], T);
    check("a IS NOT NULL", &[], F);
    check("5 IS NULL", &[], F);
    check("NULL IS NULL", &[], T);
    check("(a = 1) IS NULL", &[], T);
    check("(a = 1) IS NOT NULL", &[("a", "2")], T);
    check("a iS nOt NuLl", &[("a", "1")], T);
}

// ---- logic, precedence, keywords ---------------------------------------------------------

#[test]
fn three_valued_logic_tables() {
    let v = [("TRUE", T), ("FALSE", F), ("NULL", N)];
    for (a, ra) in v {
        for (b, rb) in v {
            let and = match (ra, rb) {
                (F, _) | (_, F) => F,
                (N, _) | (_, N) => N,
                _ => T,
            };
            let or = match (ra, rb) {
                (T, _) | (_, T) => T,
                (N, _) | (_, N) => N,
                _ => F,
            };
            check(&format!("{a} AND {b}"), &[], and);
            check(&format!("{a} OR {b}"), &[], or);
        }
        let not = match ra {
            T => F,
            F => T,
            _ => N,
        };
        check(&format!("NOT {a}"), &[], not);
    }
}

#[test]
fn and_binds_tighter_than_or_and_parentheses_override() {
    let p = [("a", "1"), ("b", "0"), ("c", "0")];
    check("a = 1 OR b = 1 AND c = 1", &p, T);
    check("(a = 1 OR b = 1) AND c = 1", &p, F);
    check("b = 1 AND c = 1 OR a = 1", &p, T);
    check("b = 1 AND (c = 1 OR a = 1)", &p, F);
    check("a = 1 AND NOT (b = 1 OR c = 1)", &p, T);
    check("((((a = 1))))", &p, T);
    // Chains are left-associative and flattened.
    check("b = 1 OR c = 1 OR a = 1 OR b = 2", &p, T);
    check("a = 1 AND a = 1 AND b = 0 AND c = 1", &p, F);
}

#[test]
fn not_is_unary_as_in_rocketmq() {
    // NOT (comparison) is the usual negation.
    check("NOT (a = 1)", &[("a", "2")], T);
    check("NOT (a = 1)", &[("a", "1")], F);
    check("NOT (a = 1)", &[], N);
    check("NOT NOT (a = 1)", &[("a", "1")], T);
    // `NOT a = 1` is `(NOT a) = 1`: a boolean never equals a number.
    check("NOT a = 1", &[("a", "1")], F);
    check("NOT a = 1", &[("a", "2")], F);
    check("NOT a = TRUE", &[("a", "x")], T);
    // ...and a boolean cannot be ordered.
    bad_at("NOT a > 1", 1);
}

#[test]
fn keywords_are_case_insensitive_identifiers_are_not() {
    let p = [("a", "1"), ("A", "2"), ("b", "x")];
    check("a = 1 and b = 'x'", &p, T);
    check("a = 1 AnD A = 2", &p, T);
    check("a = 2 oR b iN ('x')", &p, T);
    check("a bEtWeEn 0 aNd 1", &p, T);
    check("a nOt BeTwEeN 0 AND 1", &p, F);
    check("b not in ('y')", &p, T);
    check("b is not null", &p, T);
    check(
        "b contains 'x' and b startswith 'x' and b endswith 'x'",
        &p,
        T,
    );
    check("true and not false", &p, T);
    check("A = 1", &p, F);
    check("$x_1 = 'v' AND _y IS NULL", &[("$x_1", "v")], T);
    // Keywords cannot be property names; longer words are identifiers.
    bad("and = 1");
    bad("null = 1");
    check("nulls = 1 OR andy IS NULL", &[], T);
}

#[test]
fn boolean_literals_and_bare_properties() {
    check("TRUE", &[], T);
    check("FALSE", &[], F);
    check("NULL", &[], N);
    check("TRUE = TRUE", &[], T);
    check("FALSE <> TRUE", &[], T);
    // A property used as a boolean: NULL when absent, FALSE otherwise (values are strings).
    check("a", &[], N);
    check("a", &[("a", "true")], F);
    check("NOT a", &[("a", "true")], T);
    check("a OR b = 1", &[("b", "1")], T);
    // A string property compares with a boolean by Boolean.valueOf (case-insensitive 'true').
    check("a = TRUE", &[("a", "TrUe")], T);
    check("a = TRUE", &[("a", "yes")], F);
    check("a = FALSE", &[("a", "no")], T);
    // With the boolean on the left RocketMQ throws (ClassCastException): no match.
    check("TRUE = a", &[("a", "true")], E);
    // Numbers never equal booleans.
    check("(a = 1) = 1", &[("a", "1")], F);
    check("1 = (a = 1)", &[("a", "1")], F);
}

// ---- NULL handling -------------------------------------------------------------------------

#[test]
fn missing_properties() {
    for (e, want) in [
        ("a = 1", N),
        ("a <> 1", N),
        ("a = 'x'", N),
        ("a > 1", N),
        ("a >= 1", N),
        ("a < 1", N),
        ("a <= 1", N),
        ("1 < a", N),
        ("a BETWEEN 1 AND 2", N),
        ("a NOT BETWEEN 1 AND 2", N),
        ("a IN ('x')", N),
        ("a NOT IN ('x')", N),
        ("-a = 1", N),
        ("NOT (a = 1)", N),
        ("a = 1 AND TRUE", N),
        ("a = 1 AND FALSE", F),
        ("a = 1 OR TRUE", T),
        ("a = 1 OR FALSE", N),
        // Two missing properties are equal (RocketMQ: null == null).
        ("a = b", T),
        ("a <> b", F),
    ] {
        check(e, &[], want);
    }
    // The equality asymmetry of RocketMQ: NULL on the left gives NULL, on the right FALSE.
    check("a = b", &[("a", "1")], F);
    check("a <> b", &[("a", "1")], T);
    check("'x' <> b", &[], T);
    check("b <> 'x'", &[], N);
    check("a = b", &[("b", "1")], N);
    // Relational: NULL either side gives NULL.
    check("a > b", &[("a", "1")], N);
    check("a > b", &[("b", "1")], N);
}

// ---- type mixing ---------------------------------------------------------------------------

#[test]
fn string_properties_against_numbers() {
    // Int literal: Integer.parseInt (sign allowed, no blanks, no decimals, 32-bit range).
    check("a = 5", &[("a", "5")], T);
    check("a = 5", &[("a", "+5")], T);
    check("a = 5", &[("a", "005")], T);
    check("a = -5", &[("a", "-5")], T);
    check("a = 5", &[("a", "5.0")], E);
    check("a = 5", &[("a", " 5")], E);
    check("a = 5", &[("a", "x")], E);
    check("a = 5", &[("a", "")], E);
    check("a > 5", &[("a", "3000000000")], E);
    check("a <> 5", &[("a", "x")], E);
    // Long literal (beyond 32 bits): Long.parseLong.
    check("a > 2147483648", &[("a", "3000000000")], T);
    check("a = 3000000000L", &[("a", "3000000000")], T);
    check("a < 3000000000", &[("a", "5")], T);
    check("a < 3000000000", &[("a", "99999999999999999999")], E);
    // Double literal: Double.valueOf (blanks trimmed, exponents, suffixes, NaN, Infinity).
    check("a = 5.0", &[("a", "5")], T);
    check("a = 5.0", &[("a", " 5 ")], T);
    check("a = 5.0", &[("a", "5.0d")], T);
    check("a = 500.0", &[("a", "5e2")], T);
    check("a > 2.5", &[("a", "2.75f")], T);
    check("a > 2.5", &[("a", "Infinity")], T);
    check("a < -2.5", &[("a", "-Infinity")], T);
    check("a > 2.5", &[("a", "NaN")], T); // Double.compare puts NaN above everything
    check("a = 2.5", &[("a", "x")], E);
    check("a = 2.5", &[("a", "2.5.1")], E);
    check("a = 2.5", &[("a", "inf")], E);
    check("a = 0.0", &[("a", "-0")], F); // -0.0 < 0.0 for Double.compare
    check("a BETWEEN 1 AND 10", &[("a", "x")], E);
    check("a NOT BETWEEN 1 AND 10", &[("a", "7.5")], E);
    check("a NOT BETWEEN 1.0 AND 10.0", &[("a", "17.5")], T);
}

#[test]
fn numbers_widen() {
    check("5 = 5.0", &[], T);
    check("5.0 = 5", &[], T);
    check("3000000000 > 5", &[], T);
    check("5 < 3000000000", &[], T);
    check("3000000000 = 3000000000.0", &[], T);
    check("2.5 < 3000000000", &[], T);
    check("-5 < -4", &[], T);
    check("-(-5) = 5", &[], T);
    check("+5 = 5", &[], T);
    check("- 2147483648 = -2147483648", &[], T);
    check("1e3 = 1000", &[], T);
    check(".5 = 0.5", &[], T);
    check("5. = 5", &[], T);
    check("1.5E+1 = 15", &[], T);
    // Unary minus of a property (a string) is NULL.
    check("-a = -5", &[("a", "5")], N);
}

#[test]
fn two_string_operands() {
    // = compares text; ordering converts both to doubles.
    check("a = b", &[("a", "10"), ("b", "10")], T);
    check("a = b", &[("a", "10"), ("b", "10.0")], F);
    check("a > b", &[("a", "10"), ("b", "9")], T);
    check("a >= b", &[("a", "10"), ("b", "10.0")], T);
    check("a < b", &[("a", "x"), ("b", "y")], E);
    check("a < b", &[("a", "1"), ("b", "y")], E);
}

#[test]
fn evaluation_errors_fail_the_whole_expression_unless_short_circuited() {
    let p = [("a", "abc"), ("b", "x")];
    check("a = 1 OR b = 'x'", &p, E);
    check("b = 'x' OR a = 1", &p, T);
    check("b = 'y' AND a = 1", &p, F);
    check("a = 1 AND b = 'y'", &p, E);
    check("NOT (a > 1)", &p, E);
    check("(a > 1) IS NULL", &p, E);
    check("b IN ('x') OR a > 1", &p, T);
    check("a BETWEEN 1 AND 2 OR TRUE", &p, E);
}

// ---- system properties and the Filter API -------------------------------------------------

#[test]
fn tags_property_and_filter_api() {
    let f = Filter::parse_sql("TAGS = 'TagA' OR (a > 5 AND b IS NULL)").unwrap();
    assert!(f.is_sql());
    assert!(f.may_match_hash(0) && f.may_match_hash(tag_hash("TagB")));
    let props = |m: &'static [(&'static str, &'static str)]| {
        move |k: &str| m.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
    };
    assert!(f.matches(Some("TagA"), &props(&[])));
    assert!(!f.matches(Some("TagB"), &props(&[])));
    assert!(!f.matches(None, &props(&[])));
    assert!(f.matches(None, &props(&[("a", "6")])));
    assert!(!f.matches(None, &props(&[("a", "6"), ("b", "")])));
    // A user property named TAGS does not hide the tag.
    assert!(!f.matches(Some("TagB"), &props(&[("TAGS", "TagA")])));
    let f = Filter::parse_sql("TAGS IS NULL").unwrap();
    assert!(f.matches(None, &props(&[])) && !f.matches(Some("x"), &props(&[])));

    let t = Filter::parse_tag("TagA || TagC").unwrap();
    assert!(!t.is_sql());
    assert!(t.may_match_hash(tag_hash("TagC")) && !t.may_match_hash(tag_hash("TagB")));
    assert!(!t.may_match_hash(0));
    assert!(t.matches(Some("TagA"), &props(&[])) && !t.matches(None, &props(&[])));
    for all in ["*", "", " "] {
        let f = Filter::parse_tag(all).unwrap();
        assert_eq!(f, Filter::All);
        assert!(f.may_match_hash(0) && f.matches(None, &props(&[])));
    }
    assert!(matches!(
        Filter::parse_tag("||"),
        Err(FilterError::NoTags { .. })
    ));
    assert_eq!(Filter::parse_sql(" "), Err(FilterError::EmptySql));
}

#[test]
fn matches_message_sees_system_properties() {
    let msg = |tag: &str, keys: &[&str], group: &str, props: &[(&str, &str)]| {
        let m = NewMessage {
            topic: "t".into(),
            message_id: "ID-1".into(),
            tag: tag.into(),
            message_group: group.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Bytes::from_static(b"body"),
            ..Default::default()
        };
        let buf = Bytes::from(encode_batch(&[m]).unwrap());
        decode_batch(&buf).unwrap().remove(0)
    };
    let m = msg("TagA", &["k1", "k2"], "g1", &[("a", "7"), ("TAGS", "user")]);
    let sql = |e: &str| Filter::parse_sql(e).unwrap();
    assert!(sql("TAGS = 'TagA'").matches_message(&m));
    assert!(sql("KEYS = 'k1 k2'").matches_message(&m));
    assert!(sql("KEYS CONTAINS 'k2'").matches_message(&m));
    assert!(sql("UNIQ_KEY = 'ID-1'").matches_message(&m));
    assert!(sql("__SHARDINGKEY = 'g1'").matches_message(&m));
    assert!(sql("a BETWEEN 7 AND 8").matches_message(&m));
    assert!(!sql("a > 7").matches_message(&m));
    assert!(sql("zz IS NULL").matches_message(&m));
    let bare = msg("", &["only"], "", &[]);
    assert!(sql("TAGS IS NULL AND __SHARDINGKEY IS NULL AND KEYS = 'only'").matches_message(&bare));
    let none = msg("", &[], "", &[]);
    assert!(sql("KEYS IS NULL").matches_message(&none));
    let tags = Filter::parse_tag("TagA").unwrap();
    assert!(tags.matches_message(&m) && !tags.matches_message(&bare));
    assert!(Filter::All.matches_message(&bare));
    assert_eq!(
        parse("a = 1 OR b IN ('x') AND TAGS CONTAINS 'y'").properties(),
        ["a", "b", "TAGS"]
    );
}

// ---- comments and whitespace ---------------------------------------------------------------

#[test]
fn comments_and_whitespace() {
    let p = [("a", "1"), ("b", "2")];
    check("a = 1 -- first\nAND b = 2", &p, T);
    check("a = 1 -- trailing comment", &p, T);
    check("/* lead */ a /* mid * / */ = /**/ 1 /***/", &p, T);
    check("\t\r\n\x0ca\n=\n1\n", &p, T);
    check("a=1AND b=2", &p, T); // `1AND`: a number then a keyword
    bad_at("a = 1 /* never closed", 7);
}

// ---- malformed input -----------------------------------------------------------------------

#[test]
fn malformed_expressions_are_rejected_with_a_column() {
    assert_eq!(bad(""), FilterError::EmptySql);
    assert_eq!(bad(" \n\t"), FilterError::EmptySql);
    // Unbalanced parentheses.
    bad_at("(a = 1", 7);
    bad_at("((a = 1) OR b = 2", 18);
    bad_at("a = 1)", 6);
    bad_at(")", 1);
    bad_at("()", 2);
    // Unterminated string.
    let m = bad_at("b = 'abc", 5);
    assert!(m.contains("unterminated"), "{m}");
    bad_at("b IN ('x', 'y)", 12);
    // Missing operands.
    bad_at("a =", 4);
    bad_at("a = 1 AND", 10);
    bad_at("OR a = 1", 1);
    bad_at("= 1", 1);
    bad_at("a BETWEEN 1", 12);
    bad_at("a BETWEEN 1 OR 2", 13);
    bad_at("a IN ()", 7);
    bad_at("a IN 'x'", 6);
    bad_at("a IN ('x',)", 11);
    bad_at("a IS 1", 6);
    bad_at("a IS NOT 1", 10);
    bad_at("a NOT", 3);
    // Unknown operators.
    let m = bad_at("a == 1", 3);
    assert!(m.contains("unknown operator"), "{m}");
    bad_at("a != 1", 3);
    bad_at("a LIKE 'x'", 3);
    bad_at("a + 1 = 2", 3);
    bad_at("a * 2 = 2", 3);
    bad_at("a = 1 && b = 2", 7);
    bad_at("a = 1 || b = 2", 7);
    bad_at("a.b = 1", 2);
    bad_at("ä = 1", 1);
    bad_at("a = \"x\"", 5);
    // Trailing garbage.
    bad_at("a = 1 b", 7);
    bad_at("a = 1 garbage = 2", 7);
    bad_at("a = 1 NOT", 7);
    bad_at("a = 07", 6);
    bad_at("a = 0L", 6);
    bad_at("a = 1.2.3", 8);
    // Type errors RocketMQ reports at parse time.
    bad_at("a > 'x'", 5);
    bad_at("'x' < a", 1);
    bad_at("a >= TRUE", 6);
    bad_at("a < NULL", 5);
    bad_at("a BETWEEN 'a' AND 'b'", 11);
    bad_at("a BETWEEN 3 AND 1", 11);
    bad_at("a BETWEEN 1 AND NULL", 11);
    bad_at("a NOT BETWEEN 1 AND 'z'", 21);
    bad_at("(a = 1) > 2", 1);
    bad_at("a = NULL", 5);
    bad_at("NULL <> a", 1);
    bad_at("TRUE = 1", 1);
    bad_at("5", 1);
    bad_at("'x'", 1);
    bad_at("-a", 1);
    bad_at("a = 1 AND 5", 11);
    bad_at("NOT 5", 5);
    bad_at("'x' IN ('x')", 1);
    bad_at("a IN (1, 2)", 7);
    bad_at("a CONTAINS b", 12);
    bad_at("a = 99999999999999999999", 5);
    bad_at("a = 1e999", 5);
    // The message names the column and the text there.
    let e = bad("a = 1 AND (b = 2");
    assert_eq!(
        e.to_string(),
        "invalid SQL92 filter expression at column 17 (near end of input): expected `)`, found end of input"
    );
    let e = bad("a = 1 garbage");
    assert!(e.to_string().contains("column 7 (near `garbage`)"), "{e}");
}

#[test]
fn nesting_is_bounded_chains_are_not() {
    let nest = |n: usize| format!("{}a = 1{}", "(".repeat(n), ")".repeat(n));
    check(&nest(sql92::MAX_DEPTH - 5), &[("a", "1")], T);
    assert!(matches!(
        bad(&nest(sql92::MAX_DEPTH + 1)),
        FilterError::TooDeep { .. }
    ));
    assert!(matches!(bad(&nest(100_000)), FilterError::TooDeep { .. }));
    assert!(matches!(
        bad(&format!("{}TRUE", "NOT ".repeat(500))),
        FilterError::TooDeep { .. }
    ));
    assert!(matches!(
        bad(&format!("a = {}1", "- ".repeat(500))),
        FilterError::TooDeep { .. }
    ));
    assert!(matches!(
        bad(&format!("a{}", " IS NULL".repeat(500))),
        FilterError::TooDeep { .. }
    ));
    check(&format!("NOT {}", "NOT ".repeat(20) + "TRUE"), &[], F);
    // Long AND/OR chains are flat.
    let or: Vec<String> = (0..20_000).map(|i| format!("a = {i}")).collect();
    check(&or.join(" OR "), &[("a", "19999")], T);
    check(&or.join(" AND "), &[("a", "0")], F);
    let big_in: Vec<String> = (0..5_000).map(|i| format!("'v{i}'")).collect();
    check(
        &format!("a IN ({})", big_in.join(",")),
        &[("a", "v4999")],
        T,
    );
}

#[test]
fn deep_expressions_fit_a_small_stack() {
    // Parsing and evaluating the deepest accepted expression on a 1 MiB stack (half a
    // tokio worker's; an unoptimised build needs ~20 KiB per parenthesis level).
    let e = format!(
        "{}a = 1{} AND {}TRUE",
        "(".repeat(sql92::MAX_DEPTH - 3),
        ")".repeat(sql92::MAX_DEPTH - 3),
        "NOT ".repeat(sql92::MAX_DEPTH - 3)
    );
    let r = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || {
            let x = SqlExpr::parse(&e).map_err(|e| e.to_string())?;
            let m = map(&[("a", "1")]);
            let bad = SqlExpr::parse(&format!("{}TRUE", "NOT ".repeat(10 * sql92::MAX_DEPTH)));
            Ok::<_, String>((eval_map(&x, &m), bad.is_err()))
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(r, Ok((F, true)));
}

#[test]
fn canonical_print_parses_back() {
    for e in [
        "a = 1 OR b = 'x' AND NOT (c IS NULL)",
        "a BETWEEN -1 AND 2.5 OR b NOT IN ('x', 'it''s')",
        "NOT a = TRUE",
        "a CONTAINS 'x' AND b NOT STARTSWITH 'y' AND c ENDSWITH 'z'",
        "-(-a) = 3000000000 OR 1e300 > a OR 0.1 < a",
        "a = 1 = TRUE IS NOT NULL",
        "(a OR b) AND (c OR NULL)",
    ] {
        let x = parse(e);
        let printed = x.to_string();
        assert_eq!(parse(&printed), x, "{e} printed as {printed}");
        assert_eq!(parse(&printed).to_string(), printed);
    }
    for (e, canonical) in [
        ("((a = 1)) or (b)", "a = 1 OR b"),
        (
            "(a or b) and not (c = -(-5))",
            "(a OR b) AND NOT (c = - - 5)",
        ),
        ("a = (b > 1)", "a = b > 1"),
        ("(a = 1) contains 'x'", "(a = 1) CONTAINS 'x'"),
        ("(a OR b) OR c", "(a OR b) OR c"),
        ("a between +1 and 2.50", "a BETWEEN 1 AND 2.5"),
    ] {
        assert_eq!(parse(e).to_string(), canonical, "{e}");
    }
}

// ---- property tests ------------------------------------------------------------------------

/// A numeric literal as the generator writes it.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i32),
    Long(i64),
    Double(f64),
}

/// An operand: a property, a (possibly negated) number, or a string literal.
#[derive(Debug, Clone)]
enum Opd {
    Prop(&'static str),
    Num(Num),
    Neg(Num),
    Str(&'static str),
}

#[derive(Debug, Clone)]
enum G {
    Lit(Option<bool>),
    PropBool(&'static str),
    Eq(Opd, Opd, bool),
    Rel(&'static str, Opd, Opd),
    IsNull(Opd, bool),
    Between(Opd, Opd, Opd, bool),
    In(&'static str, Vec<&'static str>, bool),
    StrTest(&'static str, Opd, &'static str, bool),
    Not(Box<G>),
    And(Vec<G>),
    Or(Vec<G>),
}

const PROPS: [&str; 3] = ["a", "b", "c"];
const VALUES: [&str; 16] = [
    "1",
    "5",
    "-3",
    "2.5",
    " 7",
    "+7",
    "3000000000",
    "x",
    "",
    "true",
    "TRUE",
    "NaN",
    "1e3",
    "it's",
    "5.0",
    "-0",
];
const STRINGS: [&str; 7] = ["x", "1", "5", "2.5", "true", "it's", ""];

fn num() -> impl Strategy<Value = Num> {
    prop_oneof![
        (0i32..10).prop_map(Num::Int),
        any::<i32>().prop_map(|i| Num::Int(i.wrapping_abs().max(0))),
        (i64::from(i32::MAX) + 1..i64::MAX).prop_map(Num::Long),
        prop::sample::select(vec![
            0.0,
            0.5,
            2.5,
            5.0,
            1e3,
            1e-3,
            3.0e9,
            1.7976931348623157e308
        ])
        .prop_map(Num::Double),
    ]
}

fn numeric_opd() -> impl Strategy<Value = Opd> {
    prop_oneof![
        3 => prop::sample::select(PROPS.to_vec()).prop_map(Opd::Prop),
        2 => num().prop_map(Opd::Num),
        1 => num().prop_map(Opd::Neg),
    ]
}

fn any_opd() -> impl Strategy<Value = Opd> {
    prop_oneof![
        3 => numeric_opd(),
        2 => prop::sample::select(STRINGS.to_vec()).prop_map(Opd::Str),
    ]
}

fn leaf() -> impl Strategy<Value = G> {
    let prop = || prop::sample::select(PROPS.to_vec());
    prop_oneof![
        prop::option::of(any::<bool>()).prop_map(G::Lit),
        prop().prop_map(G::PropBool),
        (any_opd(), any_opd(), any::<bool>()).prop_map(|(l, r, ne)| G::Eq(l, r, ne)),
        (
            prop::sample::select(vec![">", ">=", "<", "<="]),
            numeric_opd(),
            numeric_opd()
        )
            .prop_map(|(o, l, r)| G::Rel(o, l, r)),
        (any_opd(), any::<bool>()).prop_map(|(o, n)| G::IsNull(o, n)),
        (numeric_opd(), numeric_opd(), numeric_opd(), any::<bool>()).prop_map(|(v, lo, hi, n)| {
            // RocketMQ rejects literal bounds out of order in BETWEEN (not in NOT BETWEEN).
            match (&lo, &hi) {
                (Opd::Num(a), Opd::Num(b))
                    if !n && ref_num_cmp(*b, *a) == std::cmp::Ordering::Less =>
                {
                    G::Between(v, hi, lo, n)
                }
                _ => G::Between(v, lo, hi, n),
            }
        }),
        (
            prop(),
            prop::collection::vec(prop::sample::select(VALUES.to_vec()), 1..4),
            any::<bool>()
        )
            .prop_map(|(p, l, n)| G::In(p, l, n)),
        (
            prop::sample::select(vec!["CONTAINS", "STARTSWITH", "ENDSWITH"]),
            any_opd(),
            prop::sample::select(STRINGS.to_vec()),
            any::<bool>()
        )
            .prop_map(|(o, v, s, n)| G::StrTest(o, v, s, n)),
    ]
}

fn tree() -> impl Strategy<Value = G> {
    leaf().prop_recursive(5, 40, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|g| G::Not(Box::new(g))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(G::And),
            prop::collection::vec(inner, 2..4).prop_map(G::Or),
        ]
    })
}

/// Writes `G` as text with the fewest parentheses the grammar needs, keywords in random case.
struct Printer {
    seed: u64,
    out: String,
}

impl Printer {
    fn coin(&mut self) -> bool {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.seed >> 33) & 1 == 1
    }

    fn kw(&mut self, k: &str) {
        let s: String = k
            .chars()
            .map(|c| {
                if self.coin() {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect();
        self.out.push(' ');
        self.out.push_str(&s);
        self.out.push(' ');
    }

    fn num(&mut self, n: Num) {
        match n {
            Num::Int(i) => self.out.push_str(&i.to_string()),
            Num::Long(l) => {
                self.out.push_str(&l.to_string());
                if self.coin() {
                    self.out.push('L');
                }
            }
            Num::Double(d) => self.out.push_str(&format!("{d:?}")),
        }
    }

    fn opd(&mut self, o: &Opd) {
        match o {
            Opd::Prop(p) => self.out.push_str(p),
            Opd::Num(n) => self.num(*n),
            Opd::Neg(n) => {
                self.out.push_str(" -");
                self.num(*n);
            }
            Opd::Str(s) => self.out.push_str(&format!("'{}'", s.replace('\'', "''"))),
        }
    }

    /// Precedence levels: OR 1, AND 2, =/<>/IS 3, comparisons 4, unary 5, primary 6.
    fn level(g: &G) -> u8 {
        match g {
            G::Or(_) => 1,
            G::And(_) => 2,
            G::Eq(..) | G::IsNull(..) => 3,
            G::Rel(..) | G::Between(..) | G::In(..) | G::StrTest(..) => 4,
            G::Not(_) => 5,
            G::Lit(_) | G::PropBool(_) => 6,
        }
    }

    fn g(&mut self, g: &G, min: u8) {
        let paren = Self::level(g) < min || self.coin() && self.coin() && self.coin();
        if paren {
            self.out.push('(');
        }
        match g {
            G::Lit(None) => self.kw("NULL"),
            G::Lit(Some(true)) => self.kw("TRUE"),
            G::Lit(Some(false)) => self.kw("FALSE"),
            G::PropBool(p) => self.out.push_str(p),
            G::Eq(l, r, ne) => {
                self.opd(l);
                self.out.push_str(if *ne { " <> " } else { " = " });
                self.opd(r);
            }
            G::Rel(op, l, r) => {
                self.opd(l);
                self.out.push_str(&format!(" {op} "));
                self.opd(r);
            }
            G::IsNull(o, n) => {
                self.opd(o);
                self.kw(if *n { "IS NOT NULL" } else { "IS NULL" });
            }
            G::Between(v, lo, hi, n) => {
                self.opd(v);
                self.kw(if *n { "NOT BETWEEN" } else { "BETWEEN" });
                self.opd(lo);
                self.kw("AND");
                self.opd(hi);
            }
            G::In(p, l, n) => {
                self.out.push_str(p);
                self.kw(if *n { "NOT IN" } else { "IN" });
                let items: Vec<String> = l
                    .iter()
                    .map(|s| format!("'{}'", s.replace('\'', "''")))
                    .collect();
                self.out.push_str(&format!("({})", items.join(",")));
            }
            G::StrTest(op, v, s, n) => {
                self.opd(v);
                if *n {
                    self.kw("NOT");
                }
                self.kw(op);
                self.out.push_str(&format!("'{}'", s.replace('\'', "''")));
            }
            G::Not(inner) => {
                self.kw("NOT");
                self.g(inner, 5);
            }
            G::And(v) | G::Or(v) => {
                let (sep, lvl) = if matches!(g, G::And(_)) {
                    ("AND", 3)
                } else {
                    ("OR", 2)
                };
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        self.kw(sep);
                    }
                    self.g(x, lvl);
                }
            }
        }
        if paren {
            self.out.push(')');
        }
    }
}

// The reference evaluator: RocketMQ's rules, written independently of `sql92`.

#[derive(Debug, Clone, PartialEq)]
enum RV {
    Null,
    Int(i32),
    Long(i64),
    Dbl(f64),
    Str(String),
}

fn ref_jcmp(a: f64, b: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Equal,
        (true, false) => Greater,
        (false, true) => Less,
        _ if a == b => b.is_sign_negative().cmp(&a.is_sign_negative()),
        _ => a.partial_cmp(&b).unwrap_or(Equal),
    }
}

fn ref_num_cmp(a: Num, b: Num) -> std::cmp::Ordering {
    ref_cmp(&ref_num(a, false), &ref_num(b, false)).unwrap_or(std::cmp::Ordering::Less)
}

fn ref_num(n: Num, neg: bool) -> RV {
    match (n, neg) {
        (Num::Int(i), false) => RV::Int(i),
        (Num::Int(i), true) => RV::Int(-i),
        (Num::Long(l), false) => RV::Long(l),
        (Num::Long(l), true) => RV::Long(-l),
        (Num::Double(d), false) => RV::Dbl(d),
        (Num::Double(d), true) => RV::Dbl(-d),
    }
}

fn ref_parse_i64(s: &str, lo: i64, hi: i64) -> Option<i64> {
    let (neg, digits) = match s.chars().next()? {
        '-' => (true, &s[1..]),
        '+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: i128 = 0;
    for c in digits.chars() {
        v = v * 10 + i128::from(c.to_digit(10)?);
        if v > i128::from(i64::MAX) + 1 {
            return None;
        }
    }
    let v = if neg { -v } else { v };
    (i128::from(lo)..=i128::from(hi))
        .contains(&v)
        .then_some(v as i64)
}

fn ref_parse_f64(s: &str) -> Option<f64> {
    let t = s.trim_matches(|c: char| c <= ' ');
    let (sign, rest) = match t.chars().next()? {
        '-' => (-1.0, &t[1..]),
        '+' => (1.0, &t[1..]),
        _ => (1.0, t),
    };
    if rest == "NaN" {
        return Some(f64::NAN);
    }
    if rest == "Infinity" {
        return Some(sign * f64::INFINITY);
    }
    let rest = rest.strip_suffix(['f', 'F', 'd', 'D']).unwrap_or(rest);
    let ok = rest
        .chars()
        .all(|c| c.is_ascii_digit() || "eE+-.".contains(c))
        && rest.chars().any(|c| c.is_ascii_digit())
        && !rest.starts_with(['e', 'E', '+', '-']);
    if !ok {
        return None;
    }
    rest.parse::<f64>().ok().map(|v| sign * v)
}

/// `None` where Java throws.
fn ref_cmp(l: &RV, r: &RV) -> Option<std::cmp::Ordering> {
    use RV::*;
    let to_f = |v: &RV| match v {
        Int(i) => f64::from(*i),
        Long(l) => *l as f64,
        Dbl(d) => *d,
        _ => f64::NAN,
    };
    Some(match (l, r) {
        (Str(a), Str(b)) => a.encode_utf16().cmp(b.encode_utf16()),
        (Str(s), Int(_)) => {
            return ref_cmp(
                &Int(ref_parse_i64(s, i32::MIN.into(), i32::MAX.into())? as i32),
                r,
            );
        }
        (Int(_), Str(s)) => {
            return ref_cmp(
                l,
                &Int(ref_parse_i64(s, i32::MIN.into(), i32::MAX.into())? as i32),
            );
        }
        (Str(s), Long(_)) => return ref_cmp(&Long(ref_parse_i64(s, i64::MIN, i64::MAX)?), r),
        (Long(_), Str(s)) => return ref_cmp(l, &Long(ref_parse_i64(s, i64::MIN, i64::MAX)?)),
        (Str(s), Dbl(_)) => return ref_cmp(&Dbl(ref_parse_f64(s)?), r),
        (Dbl(_), Str(s)) => return ref_cmp(l, &Dbl(ref_parse_f64(s)?)),
        (Int(a), Int(b)) => a.cmp(b),
        (Int(_) | Long(_), Int(_) | Long(_)) => {
            let i = |v: &RV| {
                if let Int(x) = v {
                    i64::from(*x)
                } else if let Long(x) = v {
                    *x
                } else {
                    0
                }
            };
            i(l).cmp(&i(r))
        }
        (Null, _) | (_, Null) => return None,
        _ => ref_jcmp(to_f(l), to_f(r)),
    })
}

fn ref_opd(o: &Opd, m: &HashMap<String, String>) -> RV {
    match o {
        Opd::Prop(p) => m.get(*p).map_or(RV::Null, |v| RV::Str(v.clone())),
        Opd::Num(n) => ref_num(*n, false),
        // Negation of a number literal; the generator never negates a property.
        Opd::Neg(n) => ref_num(*n, true),
        Opd::Str(s) => RV::Str(s.to_string()),
    }
}

fn ref_rel(op: &str, l: &Opd, r: &Opd, m: &HashMap<String, String>) -> R {
    let (lv, rv) = (ref_opd(l, m), ref_opd(r, m));
    if lv == RV::Null || rv == RV::Null {
        return N;
    }
    let o = match (&lv, &rv) {
        (RV::Str(a), RV::Str(b)) => {
            ref_jcmp(ref_parse_f64(a).ok_or(())?, ref_parse_f64(b).ok_or(())?)
        }
        _ => ref_cmp(&lv, &rv).ok_or(())?,
    };
    use std::cmp::Ordering::*;
    Ok(Some(match op {
        ">" => o == Greater,
        ">=" => o != Less,
        "<" => o == Less,
        _ => o != Greater,
    }))
}

fn ref_and(parts: &mut dyn Iterator<Item = R>) -> R {
    let mut unknown = false;
    for r in parts {
        match r? {
            Some(false) => return F,
            None => unknown = true,
            Some(true) => {}
        }
    }
    if unknown { N } else { T }
}

fn ref_or(parts: &mut dyn Iterator<Item = R>) -> R {
    let mut unknown = false;
    for r in parts {
        match r? {
            Some(true) => return T,
            None => unknown = true,
            Some(false) => {}
        }
    }
    if unknown { N } else { F }
}

fn ref_not(r: R) -> R {
    r.map(|v| v.map(|b| !b))
}

fn reference(g: &G, m: &HashMap<String, String>) -> R {
    match g {
        G::Lit(v) => Ok(*v),
        G::PropBool(p) => Ok(m.get(*p).map(|_| false)),
        G::Eq(l, r, ne) => {
            let (lv, rv) = (ref_opd(l, m), ref_opd(r, m));
            let eq = match (&lv, &rv) {
                (RV::Null, RV::Null) => T,
                (RV::Null, _) => N,
                (_, RV::Null) => F,
                _ => Ok(Some(
                    ref_cmp(&lv, &rv).ok_or(())? == std::cmp::Ordering::Equal,
                )),
            };
            if *ne { ref_not(eq) } else { eq }
        }
        G::Rel(op, l, r) => ref_rel(op, l, r, m),
        G::IsNull(o, n) => Ok(Some((ref_opd(o, m) == RV::Null) != *n)),
        G::Between(v, lo, hi, false) => ref_and(
            &mut [(">=", lo), ("<=", hi)]
                .into_iter()
                .map(|(op, b)| ref_rel(op, v, b, m)),
        ),
        G::Between(v, lo, hi, true) => ref_or(
            &mut [("<", lo), (">", hi)]
                .into_iter()
                .map(|(op, b)| ref_rel(op, v, b, m)),
        ),
        G::In(p, l, n) => Ok(m.get(*p).map(|v| l.contains(&v.as_str()) != *n)),
        G::StrTest(op, v, s, n) => Ok(Some(match ref_opd(v, m) {
            RV::Str(x) if !s.is_empty() => {
                let hit = match *op {
                    "CONTAINS" => x.contains(s),
                    "STARTSWITH" => x.starts_with(s),
                    _ => x.ends_with(s),
                };
                hit != *n
            }
            _ => false,
        })),
        G::Not(x) => ref_not(reference(x, m)),
        G::And(v) => ref_and(&mut v.iter().map(|x| reference(x, m))),
        G::Or(v) => ref_or(&mut v.iter().map(|x| reference(x, m))),
    }
}

fn props_strategy() -> impl Strategy<Value = HashMap<String, String>> {
    prop::collection::vec(prop::option::of(prop::sample::select(VALUES.to_vec())), 3).prop_map(
        |vals| {
            PROPS
                .iter()
                .zip(vals)
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v.to_string())))
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random expression trees, printed with minimal parentheses and random keyword case,
    /// parse and evaluate exactly like the reference evaluator says; the canonical print
    /// of the parsed tree parses back to the same tree.
    #[test]
    fn evaluator_agrees_with_reference(
        g in tree(),
        seed in any::<u64>(),
        envs in prop::collection::vec(props_strategy(), 1..6),
    ) {
        let mut p = Printer { seed, out: String::new() };
        p.g(&g, 1);
        let text = p.out;
        let x = SqlExpr::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        let canonical = x.to_string();
        prop_assert_eq!(SqlExpr::parse(&canonical), Ok(x.clone()), "canonical {}", canonical);
        for m in &envs {
            prop_assert_eq!(eval_map(&x, m), reference(&g, m), "{:?} with {:?}", text, m);
        }
    }

    /// Arbitrary text never panics the parser; whatever parses also evaluates and prints
    /// back to itself.
    #[test]
    fn random_text_never_panics(s in ".{0,80}") {
        if let Ok(x) = SqlExpr::parse(&s) {
            let _ = eval_map(&x, &map(&[("a", "1")]));
            prop_assert_eq!(SqlExpr::parse(&x.to_string()), Ok(x.clone()));
        }
        let _ = TagSet::parse(&s);
    }

    /// Token soup: likelier to reach deep parser states than random characters.
    #[test]
    fn random_token_sequences_never_panic(
        toks in prop::collection::vec(prop::sample::select(vec![
            "a", "b", "TAGS", "=", "<>", ">", ">=", "<", "<=", "(", ")", ",", "+", "-", "'x'",
            "'it''s'", "'", "''", "1", "0", "07", "2147483648", "9223372036854775808", "2.5",
            ".5", "1e3", "1e", ".", "L", "AND", "or", "NOT", "IS", "NULL", "TRUE", "false",
            "BETWEEN", "IN", "CONTAINS", "STARTSWITH", "ENDSWITH", "--", "/*", "*/", "\n",
            "!=", "==", "ä", "$", "_",
        ]), 0..25),
        sep in prop::sample::select(vec![" ", ""]),
        envs in prop::collection::vec(props_strategy(), 1..3),
    ) {
        let s = toks.join(sep);
        if let Ok(x) = SqlExpr::parse(&s) {
            for m in &envs {
                let _ = eval_map(&x, m);
            }
            prop_assert_eq!(SqlExpr::parse(&x.to_string()), Ok(x.clone()), "{:?}", s);
        }
    }
}
