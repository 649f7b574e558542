//! Printing: the canonical text of an expression, with the fewest parentheses.

use std::fmt;

use super::Expr;

pub(super) fn quote(s: &str) -> String {
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
