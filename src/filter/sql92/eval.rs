//! Evaluation of a parsed expression: runtime values, three-valued logic and Java's
//! comparison and number-parsing rules.

use std::borrow::Cow;
use std::cmp::Ordering;

use super::{Expr, RelOp};

/// A runtime value (Java: null, Boolean, Integer, Long, Double, String).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value<'a> {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    Str(Cow<'a, str>),
}

/// Evaluation failed (RocketMQ throws; the broker then does not deliver the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct EvalError;

type Eval<'a> = Result<Value<'a>, EvalError>;

impl Expr {
    pub(super) fn eval<'r, 's: 'r, 'a: 'r>(
        &'s self,
        get: &dyn Fn(&str) -> Option<Cow<'a, str>>,
    ) -> Eval<'r> {
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
pub(super) fn java_compare(l: &Value<'_>, r: &Value<'_>) -> Result<Ordering, EvalError> {
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

pub(super) fn count_digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}
