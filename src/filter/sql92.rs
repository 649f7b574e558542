//! SQL92 filter expressions over message properties, as RocketMQ defines them.
//!
//! Grammar: RocketMQ's `filter/.../parser/SelectorParser.jj` (from ActiveMQ's JMS selectors),
//! lowest precedence first:
//!
//! ```text
//! or      := and ( OR and )*
//! and     := eq ( AND eq )*
//! eq      := cmp ( '=' cmp | '<>' cmp | IS NULL | IS NOT NULL )*
//! cmp     := unary ( ('>'|'>='|'<'|'<=') unary
//!                  | [NOT] BETWEEN unary AND unary
//!                  | [NOT] IN '(' string (',' string)* ')'
//!                  | [NOT] (CONTAINS|STARTSWITH|ENDSWITH) string )*
//! unary   := '+' unary | '-' unary | NOT unary | primary
//! primary := string | integer | float | TRUE | FALSE | NULL | identifier | '(' or ')'
//! ```
//!
//! Keywords are case-insensitive; identifiers (`[A-Za-z_$][A-Za-z0-9_$]*`) are property names
//! and case-sensitive. Strings are single-quoted with `''` for a quote. Integers are `0` or
//! `[1-9][0-9]*` with an optional `L`, stored as a 32-bit int when they fit and a 64-bit long
//! otherwise; floats are `1.5`, `1.`, `.5`, `1e3`, `1.5E-3` (doubles). `-- comment` and
//! `/* comment */` are skipped. Note that `NOT` is a *unary* operator binding tighter than
//! comparisons, exactly as in RocketMQ: `NOT a = 1` means `(NOT a) = 1` (which is never
//! TRUE) and `NOT a > 1` is an error; write `NOT (a = 1)`.
//!
//! Checks at parse time (all `ILLEGAL_FILTER_EXPRESSION`, as RocketMQ rejects them):
//! operands of AND/OR/NOT and the whole expression must be boolean (a bare property is cast);
//! `>`, `>=`, `<`, `<=` and BETWEEN take no string/boolean/NULL literal and no boolean
//! sub-expression; `=`/`<>` take no NULL literal (use IS NULL) and no `TRUE = 1`-style pair of
//! literals; `low` of BETWEEN must not exceed `high` when both are literals; the left side of
//! IN must be a property; integer literals must fit 64 bits, float literals must be finite.
//!
//! Evaluation (`ComparisonExpression`, `LogicExpression`, `UnaryExpression`): property values
//! are strings (absent = NULL). Three-valued logic: AND/OR/NOT as in SQL with NULL =
//! unknown, evaluated left to right with short-circuit. A message matches only if the result
//! is TRUE. Comparisons:
//!
//! * `=`: NULL = NULL is TRUE; `x = NULL`-like cases: a NULL left side gives NULL, a NULL
//!   right side gives FALSE (RocketMQ's asymmetry, kept). `<>` is `NOT (=)`.
//! * `>`, `>=`, `<`, `<=`: NULL on either side gives NULL.
//! * A string (property) against a number converts the string with Java's parser for the
//!   number's type: `Integer.parseInt` for an int literal, `Long.parseLong` for a long,
//!   `Double.valueOf` for a float (which, unlike the integer parsers, trims blanks and
//!   accepts `1e3`, `2.5f`, `NaN`, `Infinity`). A string that does not parse makes the
//!   evaluation fail: RocketMQ's broker catches the exception and does not deliver the
//!   message, and so the whole expression is false for that message, whatever AND/OR around
//!   it would have said (unless short-circuit skipped the comparison).
//! * Two strings: `=` compares the text; `>`-style operators parse both as doubles (failure
//!   as above). A string against a boolean: `'true'` (any case) is TRUE, anything else FALSE.
//! * int/long/double mix by widening (int → long → double); numbers never equal booleans.
//! * `a BETWEEN x AND y` is `a >= x AND a <= y`; `NOT BETWEEN` is `a < x OR a > y`.
//! * `a IN (...)`: NULL if `a` is NULL, else whether the text is in the list (`NOT IN`
//!   negates, so NULL stays NULL).
//! * `CONTAINS`/`STARTSWITH`/`ENDSWITH` (and their NOT forms): FALSE if the value is NULL
//!   or not a string or the search string is empty; otherwise the text test (negated).
//! * A property used as a boolean (`a AND b`) is NULL when absent and FALSE otherwise.
//! * Unary minus of a non-number (a property) is NULL.
//!
//! Deviations from RocketMQ, each on inputs RocketMQ handles accidentally: trailing text after
//! a complete expression is an error (RocketMQ's grammar stops reading and ignores it); the
//! float literal `0.0` is accepted (RocketMQ rejects any float below `Double.MIN_VALUE`); a
//! `--` comment may end at the end of input; Java's number parsers also accept non-ASCII
//! digits and hex floats in property values, these do not (such values fail to convert);
//! nesting is limited to [`MAX_DEPTH`].

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use super::FilterError;

/// Deepest nesting accepted (parentheses, unary operators, chained comparisons), to keep
/// parsing and evaluation recursion bounded: the parser recurses once per level, and an
/// unoptimised build uses about 20 KiB of stack per parenthesis level, so 32 levels stay well
/// inside a 2 MiB tokio worker stack. AND/OR chains of any length do not nest.
pub const MAX_DEPTH: usize = 32;

/// A parsed SQL92 filter expression.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlExpr {
    root: Expr,
}

impl SqlExpr {
    /// Parses `text`; see the module docs for the grammar and the checks.
    pub fn parse(text: &str) -> Result<SqlExpr, FilterError> {
        if text.trim().is_empty() {
            return Err(FilterError::EmptySql);
        }
        let toks = lex(text)?;
        let mut p = Parser {
            text,
            toks,
            i: 0,
            nesting: 0,
        };
        let (e, _) = p.or_expr()?;
        if !matches!(p.peek(), Tok::Eof) {
            return Err(p.err_here(format!("unexpected {} after the expression", p.peek())));
        }
        let root = as_boolean(e).map_err(|m| p.err_at(0, m))?;
        Ok(SqlExpr { root })
    }

    /// Whether a message with properties `get` matches: the expression evaluates to TRUE.
    /// `get(name)` returns the property's value, `None` when absent.
    pub fn matches<'a>(&self, get: &dyn Fn(&str) -> Option<Cow<'a, str>>) -> bool {
        matches!(self.root.eval(get), Ok(Value::Bool(true)))
    }

    /// The three-valued result: `Ok(Some(b))`, `Ok(None)` for NULL/unknown, or `Err(())`
    /// when evaluation failed (e.g. `a > 5` with `a = "x"`). Only `Ok(Some(true))` matches.
    #[allow(clippy::result_unit_err)]
    pub fn evaluate<'a>(
        &self,
        get: &dyn Fn(&str) -> Option<Cow<'a, str>>,
    ) -> Result<Option<bool>, ()> {
        match self.root.eval(get) {
            Ok(Value::Bool(b)) => Ok(Some(b)),
            Ok(Value::Null) => Ok(None),
            // A boolean-typed root never yields another value; treat it as a failure.
            Ok(_) | Err(EvalError) => Err(()),
        }
    }

    /// Property names the expression reads, in order of appearance (with repeats).
    pub fn properties(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.root.props(&mut out);
        out
    }
}

/// Prints a canonical form (fewest parentheses) that parses back to the same expression.
impl fmt::Display for SqlExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.root.fmt(f)
    }
}

// ---------------------------------------------------------------------------------------------
// AST
// ---------------------------------------------------------------------------------------------

/// Relational operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelOp {
    Gt,
    Ge,
    Lt,
    Le,
}

impl RelOp {
    fn holds(self, o: Ordering) -> bool {
        match self {
            RelOp::Gt => o == Ordering::Greater,
            RelOp::Ge => o != Ordering::Less,
            RelOp::Lt => o == Ordering::Less,
            RelOp::Le => o != Ordering::Greater,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            RelOp::Gt => ">",
            RelOp::Ge => ">=",
            RelOp::Lt => "<",
            RelOp::Le => "<=",
        }
    }
}

/// String tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrOp {
    Contains,
    StartsWith,
    EndsWith,
}

impl StrOp {
    fn test(self, s: &str, search: &str) -> bool {
        match self {
            StrOp::Contains => s.contains(search),
            StrOp::StartsWith => s.starts_with(search),
            StrOp::EndsWith => s.ends_with(search),
        }
    }

    fn keyword(self) -> &'static str {
        match self {
            StrOp::Contains => "CONTAINS",
            StrOp::StartsWith => "STARTSWITH",
            StrOp::EndsWith => "ENDSWITH",
        }
    }
}

/// An expression node; mirrors RocketMQ's expression classes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// `NULL` literal (a boolean constant in RocketMQ).
    Null,
    Bool(bool),
    /// Integer literal that fits 32 bits (Java `Integer`).
    Int(i32),
    /// Integer literal beyond 32 bits (Java `Long`).
    Long(i64),
    Double(f64),
    Str(String),
    Prop(String),
    /// A property used where a boolean is expected (`UnaryExpression.createBooleanCast`).
    BoolCast(String),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    /// Two or more operands (a left-associative chain: same result, no nesting).
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Eq(Box<Expr>, Box<Expr>),
    /// `NOT (l = r)`.
    Ne(Box<Expr>, Box<Expr>),
    Rel(RelOp, Box<Expr>, Box<Expr>),
    IsNull {
        value: Box<Expr>,
        negated: bool,
    },
    Between {
        value: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    In {
        prop: String,
        list: Vec<String>,
        negated: bool,
    },
    StrTest {
        op: StrOp,
        value: Box<Expr>,
        search: String,
        negated: bool,
    },
}

impl Expr {
    fn is_constant(&self) -> bool {
        matches!(
            self,
            Expr::Null
                | Expr::Bool(_)
                | Expr::Int(_)
                | Expr::Long(_)
                | Expr::Double(_)
                | Expr::Str(_)
        )
    }

    /// RocketMQ's `instanceof BooleanExpression`.
    fn is_boolean(&self) -> bool {
        !matches!(
            self,
            Expr::Int(_)
                | Expr::Long(_)
                | Expr::Double(_)
                | Expr::Str(_)
                | Expr::Prop(_)
                | Expr::Neg(_)
        )
    }

    fn props<'s>(&'s self, out: &mut Vec<&'s str>) {
        match self {
            Expr::Null
            | Expr::Bool(_)
            | Expr::Int(_)
            | Expr::Long(_)
            | Expr::Double(_)
            | Expr::Str(_) => {}
            Expr::Prop(p) | Expr::BoolCast(p) | Expr::In { prop: p, .. } => out.push(p),
            Expr::Neg(e)
            | Expr::Not(e)
            | Expr::IsNull { value: e, .. }
            | Expr::StrTest { value: e, .. } => e.props(out),
            Expr::And(v) | Expr::Or(v) => v.iter().for_each(|e| e.props(out)),
            Expr::Eq(l, r) | Expr::Ne(l, r) | Expr::Rel(_, l, r) => {
                l.props(out);
                r.props(out);
            }
            Expr::Between {
                value, low, high, ..
            } => {
                value.props(out);
                low.props(out);
                high.props(out);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

/// A runtime value (Java: null, Boolean, Integer, Long, Double, String).
#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    Str(Cow<'a, str>),
}

/// Evaluation failed (RocketMQ throws; the broker then does not deliver the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EvalError;

type Eval<'a> = Result<Value<'a>, EvalError>;

impl Expr {
    fn eval<'r, 's: 'r, 'a: 'r>(&'s self, get: &dyn Fn(&str) -> Option<Cow<'a, str>>) -> Eval<'r> {
        Ok(match self {
            Expr::Null => Value::Null,
            Expr::Bool(b) => Value::Bool(*b),
            Expr::Int(i) => Value::Int(*i),
            Expr::Long(l) => Value::Long(*l),
            Expr::Double(d) => Value::Double(*d),
            Expr::Str(s) => Value::Str(Cow::Borrowed(s)),
            Expr::Prop(p) => match get(p) {
                Some(v) => Value::Str(v),
                None => Value::Null,
            },
            Expr::BoolCast(p) => match get(p) {
                // Property values are strings, never Booleans: FALSE.
                Some(_) => Value::Bool(false),
                None => Value::Null,
            },
            Expr::Neg(e) => match e.eval(get)? {
                Value::Int(i) => Value::Int(i.wrapping_neg()),
                Value::Long(l) => Value::Long(l.wrapping_neg()),
                Value::Double(d) => Value::Double(-d),
                _ => Value::Null,
            },
            Expr::Not(e) => not(e.eval(get)?)?,
            Expr::And(v) => {
                let mut unknown = false;
                for e in v {
                    match as_bool(e.eval(get)?)? {
                        Some(false) => return Ok(Value::Bool(false)),
                        Some(true) => {}
                        None => unknown = true,
                    }
                }
                if unknown {
                    Value::Null
                } else {
                    Value::Bool(true)
                }
            }
            Expr::Or(v) => {
                let mut unknown = false;
                for e in v {
                    match as_bool(e.eval(get)?)? {
                        Some(true) => return Ok(Value::Bool(true)),
                        Some(false) => {}
                        None => unknown = true,
                    }
                }
                if unknown {
                    Value::Null
                } else {
                    Value::Bool(false)
                }
            }
            Expr::Eq(l, r) => equal(l.eval(get)?, r.eval(get)?)?,
            Expr::Ne(l, r) => not(equal(l.eval(get)?, r.eval(get)?)?)?,
            Expr::Rel(op, l, r) => relational(*op, l, r, get)?,
            Expr::IsNull { value, negated } => {
                Value::Bool((value.eval(get)? == Value::Null) != *negated)
            }
            Expr::Between {
                value,
                low,
                high,
                negated: false,
            } => {
                // AND(value >= low, value <= high)
                let a = as_bool(relational(RelOp::Ge, value, low, get)?)?;
                if a == Some(false) {
                    return Ok(Value::Bool(false));
                }
                let b = as_bool(relational(RelOp::Le, value, high, get)?)?;
                match (a, b) {
                    (_, Some(false)) => Value::Bool(false),
                    (None, _) | (_, None) => Value::Null,
                    _ => Value::Bool(true),
                }
            }
            Expr::Between {
                value,
                low,
                high,
                negated: true,
            } => {
                // OR(value < low, value > high)
                let a = as_bool(relational(RelOp::Lt, value, low, get)?)?;
                if a == Some(true) {
                    return Ok(Value::Bool(true));
                }
                let b = as_bool(relational(RelOp::Gt, value, high, get)?)?;
                match (a, b) {
                    (_, Some(true)) => Value::Bool(true),
                    (None, _) | (_, None) => Value::Null,
                    _ => Value::Bool(false),
                }
            }
            Expr::In {
                prop,
                list,
                negated,
            } => match get(prop) {
                None => Value::Null,
                Some(v) => Value::Bool(list.iter().any(|x| *x == *v) != *negated),
            },
            Expr::StrTest {
                op,
                value,
                search,
                negated,
            } => {
                if search.is_empty() {
                    return Ok(Value::Bool(false));
                }
                match value.eval(get)? {
                    Value::Str(s) => Value::Bool(op.test(&s, search) != *negated),
                    _ => Value::Bool(false),
                }
            }
        })
    }
}

/// Java's `(Boolean) value`: a non-boolean is a ClassCastException.
fn as_bool(v: Value<'_>) -> Result<Option<bool>, EvalError> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(b)),
        _ => Err(EvalError),
    }
}

fn not(v: Value<'_>) -> Eval<'static> {
    Ok(match as_bool(v)? {
        None => Value::Null,
        Some(b) => Value::Bool(!b),
    })
}

/// `ComparisonExpression.doCreateEqual(...).evaluate`.
fn equal<'r>(l: Value<'_>, r: Value<'_>) -> Eval<'r> {
    Ok(match (&l, &r) {
        (Value::Null, Value::Null) => Value::Bool(true),
        (Value::Null, _) => Value::Null,
        (_, Value::Null) => Value::Bool(false),
        _ => Value::Bool(java_compare(&l, &r)? == Ordering::Equal),
    })
}

/// `ComparisonExpression.evaluate` for `>`, `>=`, `<`, `<=`.
fn relational<'r, 's: 'r, 'a: 'r>(
    op: RelOp,
    l: &'s Expr,
    r: &'s Expr,
    get: &dyn Fn(&str) -> Option<Cow<'a, str>>,
) -> Eval<'r> {
    let lv = l.eval(get)?;
    if lv == Value::Null {
        return Ok(Value::Null);
    }
    let rv = r.eval(get)?;
    if rv == Value::Null {
        return Ok(Value::Null);
    }
    let o = match (&lv, &rv) {
        (Value::Str(a), Value::Str(b)) => java_double_cmp(java_double(a)?, java_double(b)?),
        _ => java_compare(&lv, &rv)?,
    };
    Ok(Value::Bool(op.holds(o)))
}

/// `ComparisonExpression.__compare` with string conversion on: converts across types the way
/// RocketMQ does, `Less` for incomparable pairs, an error where Java throws.
fn java_compare(l: &Value<'_>, r: &Value<'_>) -> Result<Ordering, EvalError> {
    use Value::*;
    Ok(match (l, r) {
        (Null, _) | (_, Null) => return Err(EvalError),
        (Bool(a), Bool(b)) => a.cmp(b),
        (Int(a), Int(b)) => a.cmp(b),
        (Long(a), Long(b)) => a.cmp(b),
        (Double(a), Double(b)) => java_double_cmp(*a, *b),
        (Str(a), Str(b)) => a.encode_utf16().cmp(b.encode_utf16()),
        // RocketMQ casts the Boolean to String here: ClassCastException.
        (Bool(_), Str(_)) => return Err(EvalError),
        (Bool(_), _) => Ordering::Less,
        (Int(a), Long(b)) => i64::from(*a).cmp(b),
        (Int(a), Double(b)) => java_double_cmp(f64::from(*a), *b),
        (Int(a), Str(s)) => a.cmp(&java_int(s)?),
        (Int(_), Bool(_)) => Ordering::Less,
        (Long(a), Int(b)) => a.cmp(&i64::from(*b)),
        (Long(a), Double(b)) => java_double_cmp(*a as f64, *b),
        (Long(a), Str(s)) => a.cmp(&java_long(s)?),
        (Long(_), Bool(_)) => Ordering::Less,
        (Double(a), Int(b)) => java_double_cmp(*a, f64::from(*b)),
        (Double(a), Long(b)) => java_double_cmp(*a, *b as f64),
        (Double(a), Str(s)) => java_double_cmp(*a, java_double(s)?),
        (Double(_), Bool(_)) => Ordering::Less,
        (Str(s), Bool(b)) => s.eq_ignore_ascii_case("true").cmp(b),
        (Str(s), Int(b)) => java_int(s)?.cmp(b),
        (Str(s), Long(b)) => java_long(s)?.cmp(b),
        (Str(s), Double(b)) => java_double_cmp(java_double(s)?, *b),
    })
}

/// `Double.compare`: -0.0 < 0.0, NaN equals NaN and is above +Infinity.
fn java_double_cmp(a: f64, b: f64) -> Ordering {
    if a < b {
        Ordering::Less
    } else if a > b {
        Ordering::Greater
    } else {
        let bits = |x: f64| {
            if x.is_nan() {
                0x7ff8_0000_0000_0000_i64
            } else {
                x.to_bits() as i64
            }
        };
        bits(a).cmp(&bits(b))
    }
}

/// `Integer.parseInt` (ASCII digits): optional sign, digits, in range.
fn java_int(s: &str) -> Result<i32, EvalError> {
    if !is_java_integer(s) {
        return Err(EvalError);
    }
    s.parse().map_err(|_| EvalError)
}

/// `Long.parseLong` (ASCII digits).
fn java_long(s: &str) -> Result<i64, EvalError> {
    if !is_java_integer(s) {
        return Err(EvalError);
    }
    s.parse().map_err(|_| EvalError)
}

fn is_java_integer(s: &str) -> bool {
    let d = s.strip_prefix(['+', '-']).unwrap_or(s);
    !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
}

/// `Double.valueOf(String)` for decimal input: blanks (chars <= ' ') trimmed, optional sign,
/// `NaN`, `Infinity`, or digits with optional `.`, exponent and `f`/`F`/`d`/`D` suffix.
fn java_double(s: &str) -> Result<f64, EvalError> {
    let s = s.trim_matches(|c: char| c <= ' ');
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let v = match body {
        "NaN" => f64::NAN,
        "Infinity" => f64::INFINITY,
        _ => {
            let num = body.strip_suffix(['f', 'F', 'd', 'D']).unwrap_or(body);
            let b = num.as_bytes();
            let mut i = 0;
            let int_digits = count_digits(&b[i..]);
            i += int_digits;
            let mut frac_digits = 0;
            if b.get(i) == Some(&b'.') {
                i += 1;
                frac_digits = count_digits(&b[i..]);
                i += frac_digits;
            }
            if int_digits + frac_digits == 0 {
                return Err(EvalError);
            }
            if matches!(b.get(i), Some(b'e' | b'E')) {
                i += 1;
                if matches!(b.get(i), Some(b'+' | b'-')) {
                    i += 1;
                }
                let e = count_digits(&b[i..]);
                if e == 0 {
                    return Err(EvalError);
                }
                i += e;
            }
            if i != b.len() {
                return Err(EvalError);
            }
            num.parse::<f64>().map_err(|_| EvalError)?
        }
    };
    Ok(if neg { -v } else { v })
}

fn count_digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

// ---------------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kw {
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
enum Tok {
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

fn lex_err(text: &str, pos: usize, message: impl Into<String>) -> FilterError {
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
fn lex(text: &str) -> Result<Vec<(Tok, usize)>, FilterError> {
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

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

struct Parser<'t> {
    text: &'t str,
    toks: Vec<(Tok, usize)>,
    i: usize,
    /// Current recursion depth through `unary`/`primary`.
    nesting: usize,
}

/// An expression with the depth of its tree (AND/OR chains count once).
type Parsed = (Expr, usize);

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        self.toks.get(self.i).map_or(&Tok::Eof, |(t, _)| t)
    }

    fn peek2(&self) -> &Tok {
        self.toks.get(self.i + 1).map_or(&Tok::Eof, |(t, _)| t)
    }

    fn pos(&self) -> usize {
        self.toks.get(self.i).map_or(self.text.len(), |(_, p)| *p)
    }

    fn bump(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.i < self.toks.len() {
            self.i += 1;
        }
        t
    }

    fn err_at(&self, pos: usize, message: impl Into<String>) -> FilterError {
        lex_err(self.text, pos, message)
    }

    fn err_here(&self, message: impl Into<String>) -> FilterError {
        self.err_at(self.pos(), message)
    }

    fn expect_op(&mut self, op: &'static str) -> Result<(), FilterError> {
        if *self.peek() == Tok::Op(op) {
            self.bump();
            Ok(())
        } else {
            Err(self.err_here(format!("expected `{op}`, found {}", self.peek())))
        }
    }

    fn expect_kw(&mut self, kw: Kw, what: &str) -> Result<(), FilterError> {
        if *self.peek() == Tok::Kw(kw) {
            self.bump();
            Ok(())
        } else {
            Err(self.err_here(format!("expected {what}, found {}", self.peek())))
        }
    }

    fn check_depth(&self, d: usize, pos: usize) -> Result<usize, FilterError> {
        if d > MAX_DEPTH {
            return Err(FilterError::TooDeep {
                max: MAX_DEPTH,
                column: self.text[..pos].chars().count() + 1,
            });
        }
        Ok(d)
    }

    fn or_expr(&mut self) -> Result<Parsed, FilterError> {
        let start = self.pos();
        let (first, mut depth) = self.and_expr()?;
        if *self.peek() != Tok::Kw(Kw::Or) {
            return Ok((first, depth));
        }
        let mut v = vec![as_boolean(first).map_err(|m| self.err_at(start, m))?];
        while *self.peek() == Tok::Kw(Kw::Or) {
            self.bump();
            let p = self.pos();
            let (e, d) = self.and_expr()?;
            depth = depth.max(d);
            v.push(as_boolean(e).map_err(|m| self.err_at(p, m))?);
        }
        let d = self.check_depth(depth + 1, start)?;
        Ok((Expr::Or(v), d))
    }

    fn and_expr(&mut self) -> Result<Parsed, FilterError> {
        let start = self.pos();
        let (first, mut depth) = self.eq_expr()?;
        if *self.peek() != Tok::Kw(Kw::And) {
            return Ok((first, depth));
        }
        let mut v = vec![as_boolean(first).map_err(|m| self.err_at(start, m))?];
        while *self.peek() == Tok::Kw(Kw::And) {
            self.bump();
            let p = self.pos();
            let (e, d) = self.eq_expr()?;
            depth = depth.max(d);
            v.push(as_boolean(e).map_err(|m| self.err_at(p, m))?);
        }
        let d = self.check_depth(depth + 1, start)?;
        Ok((Expr::And(v), d))
    }

    fn eq_expr(&mut self) -> Result<Parsed, FilterError> {
        let start = self.pos();
        let (mut left, mut depth) = self.cmp_expr()?;
        loop {
            let p = self.pos();
            match (self.peek(), self.peek2()) {
                (Tok::Op(op @ ("=" | "<>")), _) => {
                    let ne = *op == "<>";
                    self.bump();
                    let rp = self.pos();
                    let (right, d) = self.cmp_expr()?;
                    check_equal_operand(&left).map_err(|m| self.err_at(start, m))?;
                    check_equal_operand(&right).map_err(|m| self.err_at(rp, m))?;
                    if left.is_constant()
                        && right.is_constant()
                        && matches!(left, Expr::Bool(_))
                        && !right.is_boolean()
                    {
                        return Err(self.err_at(
                            start,
                            "a boolean literal cannot be compared with a non-boolean literal",
                        ));
                    }
                    let (l, r) = (Box::new(left), Box::new(right));
                    left = if ne { Expr::Ne(l, r) } else { Expr::Eq(l, r) };
                    depth = self.check_depth(depth.max(d) + 1, p)?;
                }
                (Tok::Kw(Kw::Is), Tok::Kw(Kw::Null)) => {
                    self.bump();
                    self.bump();
                    left = Expr::IsNull {
                        value: Box::new(left),
                        negated: false,
                    };
                    depth = self.check_depth(depth + 1, p)?;
                }
                (Tok::Kw(Kw::Is), _) => {
                    self.bump();
                    self.expect_kw(Kw::Not, "`NULL` or `NOT NULL` after `IS`")?;
                    self.expect_kw(Kw::Null, "`NULL` after `IS NOT`")?;
                    left = Expr::IsNull {
                        value: Box::new(left),
                        negated: true,
                    };
                    depth = self.check_depth(depth + 1, p)?;
                }
                _ => return Ok((left, depth)),
            }
        }
    }

    fn cmp_expr(&mut self) -> Result<Parsed, FilterError> {
        let start = self.pos();
        let (mut left, mut depth) = self.unary()?;
        loop {
            let p = self.pos();
            let (negated, kw_tok) = match (self.peek(), self.peek2()) {
                (
                    Tok::Kw(Kw::Not),
                    t
                    @ Tok::Kw(Kw::Between | Kw::In | Kw::Contains | Kw::StartsWith | Kw::EndsWith),
                ) => (true, t.clone()),
                (t, _) => (false, t.clone()),
            };
            match kw_tok {
                Tok::Op(op @ (">" | ">=" | "<" | "<=")) if !negated => {
                    self.bump();
                    let rp = self.pos();
                    let (right, d) = self.unary()?;
                    let rel = match op {
                        ">" => RelOp::Gt,
                        ">=" => RelOp::Ge,
                        "<" => RelOp::Lt,
                        _ => RelOp::Le,
                    };
                    check_less_than_operand(&left).map_err(|m| self.err_at(start, m))?;
                    check_less_than_operand(&right).map_err(|m| self.err_at(rp, m))?;
                    left = Expr::Rel(rel, Box::new(left), Box::new(right));
                    depth = self.check_depth(depth.max(d) + 1, p)?;
                }
                Tok::Kw(kw @ (Kw::Contains | Kw::StartsWith | Kw::EndsWith)) => {
                    self.i += 1 + usize::from(negated);
                    let search = self.string_literal()?;
                    let op = match kw {
                        Kw::Contains => StrOp::Contains,
                        Kw::StartsWith => StrOp::StartsWith,
                        _ => StrOp::EndsWith,
                    };
                    left = Expr::StrTest {
                        op,
                        value: Box::new(left),
                        search,
                        negated,
                    };
                    depth = self.check_depth(depth + 1, p)?;
                }
                Tok::Kw(Kw::Between) => {
                    self.i += 1 + usize::from(negated);
                    let lp = self.pos();
                    let (low, d1) = self.unary()?;
                    self.expect_kw(Kw::And, "`AND` in BETWEEN")?;
                    let hp = self.pos();
                    let (high, d2) = self.unary()?;
                    if !negated && low.is_constant() && high.is_constant() {
                        between_bounds(&low, &high).map_err(|m| self.err_at(lp, m))?;
                    }
                    check_less_than_operand(&left).map_err(|m| self.err_at(start, m))?;
                    check_less_than_operand(&low).map_err(|m| self.err_at(lp, m))?;
                    check_less_than_operand(&high).map_err(|m| self.err_at(hp, m))?;
                    left = Expr::Between {
                        value: Box::new(left),
                        low: Box::new(low),
                        high: Box::new(high),
                        negated,
                    };
                    depth = self.check_depth(depth.max(d1).max(d2) + 1, p)?;
                }
                Tok::Kw(Kw::In) => {
                    self.i += 1 + usize::from(negated);
                    self.expect_op("(")?;
                    let mut list = vec![self.string_literal()?];
                    while *self.peek() == Tok::Op(",") {
                        self.bump();
                        list.push(self.string_literal()?);
                    }
                    self.expect_op(")")?;
                    let Expr::Prop(prop) = left else {
                        return Err(
                            self.err_at(start, "the left side of IN must be a property name")
                        );
                    };
                    left = Expr::In {
                        prop,
                        list,
                        negated,
                    };
                    depth = self.check_depth(depth + 1, p)?;
                }
                _ => return Ok((left, depth)),
            }
        }
    }

    fn string_literal(&mut self) -> Result<String, FilterError> {
        match self.peek() {
            Tok::Str(s) => {
                let s = s.clone();
                self.bump();
                Ok(s)
            }
            t => Err(self.err_here(format!("expected a string literal, found {t}"))),
        }
    }

    fn unary(&mut self) -> Result<Parsed, FilterError> {
        let p = self.pos();
        self.nesting += 1;
        self.check_depth(self.nesting, p)?;
        let r = match self.peek() {
            Tok::Op("+") => {
                self.bump();
                self.unary()
            }
            Tok::Op("-") => {
                self.bump();
                let (e, d) = self.unary()?;
                let d = self.check_depth(d + 1, p)?;
                Ok((Expr::Neg(Box::new(e)), d))
            }
            Tok::Kw(Kw::Not) => {
                self.bump();
                let ep = self.pos();
                let (e, d) = self.unary()?;
                let e = as_boolean(e).map_err(|m| self.err_at(ep, m))?;
                let d = self.check_depth(d + 1, p)?;
                Ok((Expr::Not(Box::new(e)), d))
            }
            _ => self.primary(),
        };
        self.nesting -= 1;
        r
    }

    fn primary(&mut self) -> Result<Parsed, FilterError> {
        let p = self.pos();
        let e = match self.bump() {
            Tok::Str(s) => Expr::Str(s),
            Tok::Int(digits) => match digits.parse::<i64>() {
                Ok(v) => match i32::try_from(v) {
                    Ok(i) => Expr::Int(i),
                    Err(_) => Expr::Long(v),
                },
                Err(_) => {
                    return Err(self.err_at(p, format!("integer `{digits}` does not fit 64 bits")));
                }
            },
            Tok::Float(t) => match t.parse::<f64>() {
                Ok(v) if v.is_finite() => Expr::Double(v),
                _ => return Err(self.err_at(p, format!("float `{t}` is out of range"))),
            },
            Tok::Kw(Kw::True) => Expr::Bool(true),
            Tok::Kw(Kw::False) => Expr::Bool(false),
            Tok::Kw(Kw::Null) => Expr::Null,
            Tok::Ident(name) => Expr::Prop(name),
            Tok::Op("(") => {
                let inner = self.or_expr()?;
                self.expect_op(")")?;
                return Ok(inner);
            }
            Tok::Eof => return Err(self.err_at(p, "unexpected end of input: expected an operand")),
            t => return Err(self.err_at(p, format!("expected an operand, found {t}"))),
        };
        Ok((e, 1))
    }
}

/// `SelectorParser.asBooleanExpression`.
fn as_boolean(e: Expr) -> Result<Expr, String> {
    match e {
        Expr::Prop(p) => Ok(Expr::BoolCast(p)),
        e if e.is_boolean() => Ok(e),
        e => Err(format!(
            "expression `{e}` will not result in a boolean value"
        )),
    }
}

/// `ComparisonExpression.checkLessThanOperand`.
fn check_less_than_operand(e: &Expr) -> Result<(), String> {
    let ok = if e.is_constant() {
        matches!(e, Expr::Int(_) | Expr::Long(_) | Expr::Double(_))
    } else {
        !e.is_boolean()
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "value `{e}` cannot be compared with >, >=, <, <= or BETWEEN"
        ))
    }
}

/// `ComparisonExpression.checkEqualOperand`.
fn check_equal_operand(e: &Expr) -> Result<(), String> {
    if *e == Expr::Null {
        Err("NULL cannot be compared with = or <> (use IS NULL / IS NOT NULL)".into())
    } else {
        Ok(())
    }
}

/// `ComparisonExpression.createBetween`'s check on two literal bounds.
fn between_bounds(low: &Expr, high: &Expr) -> Result<(), String> {
    let lit = |e: &Expr| -> Option<Value<'static>> {
        Some(match e {
            Expr::Bool(b) => Value::Bool(*b),
            Expr::Int(i) => Value::Int(*i),
            Expr::Long(l) => Value::Long(*l),
            Expr::Double(d) => Value::Double(*d),
            Expr::Str(s) => Value::Str(Cow::Owned(s.clone())),
            _ => return None,
        })
    };
    let (Some(l), Some(h)) = (lit(low), lit(high)) else {
        return Err("the bounds of BETWEEN cannot be NULL".into());
    };
    match java_compare(&h, &l) {
        Ok(Ordering::Less) => Err(format!(
            "BETWEEN bounds out of order: {low} is above {high}"
        )),
        Ok(_) => Ok(()),
        Err(EvalError) => Err(format!(
            "BETWEEN bounds {low} and {high} cannot be compared"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------------------------

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Expr {
    /// Binding level for printing: OR 1, AND 2, `=`/`<>`/IS 3, other comparisons 4,
    /// unary 5, operands 6 (the grammar's precedence).
    fn level(&self) -> u8 {
        match self {
            Expr::Or(_) => 1,
            Expr::And(_) => 2,
            Expr::Eq(..) | Expr::Ne(..) | Expr::IsNull { .. } => 3,
            Expr::Rel(..) | Expr::Between { .. } | Expr::In { .. } | Expr::StrTest { .. } => 4,
            Expr::Not(_) | Expr::Neg(_) => 5,
            Expr::Null
            | Expr::Bool(_)
            | Expr::Int(_)
            | Expr::Long(_)
            | Expr::Double(_)
            | Expr::Str(_)
            | Expr::Prop(_)
            | Expr::BoolCast(_) => 6,
        }
    }

    /// Writes `self` where the grammar needs at least level `min`, parenthesised if lower.
    fn write_at(&self, f: &mut fmt::Formatter<'_>, min: u8) -> fmt::Result {
        if self.level() < min {
            write!(f, "({self})")
        } else {
            write!(f, "{self}")
        }
    }
}

/// The fewest parentheses the grammar needs (so a printed expression never nests deeper
/// than the text it was parsed from), `- ` with a space (never a `--` comment).
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not = |n: bool| if n { "NOT " } else { "" };
        match self {
            Expr::Null => f.write_str("NULL"),
            Expr::Bool(true) => f.write_str("TRUE"),
            Expr::Bool(false) => f.write_str("FALSE"),
            Expr::Int(i) => write!(f, "{i}"),
            Expr::Long(l) => write!(f, "{l}"),
            Expr::Double(d) => write!(f, "{d:?}"),
            Expr::Str(s) => f.write_str(&quote(s)),
            Expr::Prop(p) | Expr::BoolCast(p) => f.write_str(p),
            Expr::Neg(e) => {
                f.write_str("- ")?;
                e.write_at(f, 5)
            }
            Expr::Not(e) => {
                f.write_str("NOT ")?;
                e.write_at(f, 5)
            }
            Expr::And(v) | Expr::Or(v) => {
                let (sep, min) = if matches!(self, Expr::And(_)) {
                    (" AND ", 3)
                } else {
                    (" OR ", 2)
                };
                for (i, e) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(sep)?;
                    }
                    e.write_at(f, min)?;
                }
                Ok(())
            }
            Expr::Eq(l, r) | Expr::Ne(l, r) => {
                l.write_at(f, 3)?;
                f.write_str(if matches!(self, Expr::Eq(..)) {
                    " = "
                } else {
                    " <> "
                })?;
                r.write_at(f, 4)
            }
            Expr::Rel(op, l, r) => {
                l.write_at(f, 4)?;
                write!(f, " {} ", op.symbol())?;
                r.write_at(f, 5)
            }
            Expr::IsNull { value, negated } => {
                value.write_at(f, 3)?;
                write!(f, " IS {}NULL", not(*negated))
            }
            Expr::Between {
                value,
                low,
                high,
                negated,
            } => {
                value.write_at(f, 4)?;
                write!(f, " {}BETWEEN ", not(*negated))?;
                low.write_at(f, 5)?;
                f.write_str(" AND ")?;
                high.write_at(f, 5)
            }
            Expr::In {
                prop,
                list,
                negated,
            } => {
                write!(f, "{prop} {}IN (", not(*negated))?;
                for (i, s) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(&quote(s))?;
                }
                f.write_str(")")
            }
            Expr::StrTest {
                op,
                value,
                search,
                negated,
            } => {
                value.write_at(f, 4)?;
                write!(f, " {}{} {}", not(*negated), op.keyword(), quote(search))
            }
        }
    }
}
