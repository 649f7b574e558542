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

mod eval;
mod lex;
mod parse;
mod print;

use self::eval::{EvalError, Value};
use self::lex::{Tok, lex};
use self::parse::{Parser, as_boolean};

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
