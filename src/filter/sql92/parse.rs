//! The recursive-descent parser and RocketMQ's parse-time checks on operands.

use std::borrow::Cow;
use std::cmp::Ordering;

use super::eval::{EvalError, Value, java_compare};
use super::lex::{Kw, Tok, lex_err};
use super::{Expr, FilterError, MAX_DEPTH, RelOp, StrOp};

pub(super) struct Parser<'t> {
    pub(super) text: &'t str,
    pub(super) toks: Vec<(Tok, usize)>,
    pub(super) i: usize,
    /// Current recursion depth through `unary`/`primary`.
    pub(super) nesting: usize,
}

/// An expression with the depth of its tree (AND/OR chains count once).
type Parsed = (Expr, usize);

impl Parser<'_> {
    pub(super) fn peek(&self) -> &Tok {
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

    pub(super) fn err_at(&self, pos: usize, message: impl Into<String>) -> FilterError {
        lex_err(self.text, pos, message)
    }

    pub(super) fn err_here(&self, message: impl Into<String>) -> FilterError {
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

    pub(super) fn or_expr(&mut self) -> Result<Parsed, FilterError> {
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
pub(super) fn as_boolean(e: Expr) -> Result<Expr, String> {
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
