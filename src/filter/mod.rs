//! Subscription filters: RocketMQ tag expressions and SQL92 property expressions.
//!
//! A consumer subscribes with a `FilterExpression { type, expression }`. Map the protocol's
//! type to a parser like RocketMQ's proxy does (`GrpcConverter.buildExpressionType`):
//! `FilterType::Sql` → [`Filter::parse_sql`], anything else (`TAG`, `UNSPECIFIED`) →
//! [`Filter::parse_tag`]; a missing expression means [`Filter::All`]. A parse error is the
//! protocol's `ILLEGAL_FILTER_EXPRESSION` (40010); its `Display` names the column.
//!
//! On the receive path call [`Filter::may_match_hash`] with the ConsumeQueue unit's tag hash
//! first (cheap, no body read; exact for tag filters up to hash collisions, always `true` for
//! SQL92), then [`Filter::matches_message`] (or [`Filter::matches`]) on the decoded message.
//!
//! * Tags ([`tag`]): `*`, empty or blank = everything; otherwise `a || b || c`, each tag
//!   trimmed, empty pieces dropped (RocketMQ `FilterAPI.buildSubscriptionData`); a message
//!   matches when its tag is one of them, so a message without a tag matches only `*`.
//! * SQL92 ([`sql92`]): RocketMQ's `SelectorParser.jj` grammar and the evaluation of its
//!   `ComparisonExpression`/`LogicExpression`/`UnaryExpression`, over the message's
//!   properties as strings; a message matches only when the expression evaluates to TRUE
//!   (NULL/unknown and evaluation errors do not match). See [`sql92`] for the details.
//!
//! Properties visible to SQL92 ([`Filter::matches_message`]): the user properties plus the
//! system properties RocketMQ keeps in the same map and raftmq can supply: `TAGS` (the tag),
//! `KEYS` (the keys joined by a space), `UNIQ_KEY` (the message id) and `__SHARDINGKEY` (the
//! message group). A system name shadows a user property of the same name (RocketMQ's proxy
//! refuses such user properties at send time).

pub mod sql92;
pub mod tag;

use std::borrow::Cow;

use crate::storage::message::MessageView;

pub use self::sql92::SqlExpr;
pub use self::tag::TagSet;
/// The hash a ConsumeQueue unit stores for a tag (re-exported from the storage layer).
pub use crate::storage::consumequeue::tag_hash;

/// Property names that map to message fields rather than user properties (see module docs).
pub const PROPERTY_TAGS: &str = "TAGS";
/// The message's keys, joined by a space (RocketMQ `MessageConst.KEY_SEPARATOR`).
pub const PROPERTY_KEYS: &str = "KEYS";
/// The message id.
pub const PROPERTY_UNIQ_KEY: &str = "UNIQ_KEY";
/// The message group of a FIFO message.
pub const PROPERTY_SHARDING_KEY: &str = "__SHARDINGKEY";

/// A filter expression that could not be parsed: answer `ILLEGAL_FILTER_EXPRESSION`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A SQL92 subscription with an empty or blank expression.
    #[error("empty SQL92 filter expression")]
    EmptySql,
    /// A tag expression that names no tag (e.g. `||`).
    #[error("tag expression `{expr}` names no tag")]
    NoTags {
        /// The expression as given.
        expr: String,
    },
    /// A SQL92 expression with a lexical, syntax or type error.
    #[error("invalid SQL92 filter expression at column {column} (near {near}): {message}")]
    Sql {
        /// 1-based character column of the problem (one past the end for "unexpected end").
        column: usize,
        /// The text at that column (a few characters), or `end of input`.
        near: String,
        /// What is wrong.
        message: String,
    },
    /// A SQL92 expression nested deeper than [`sql92::MAX_DEPTH`].
    #[error("SQL92 filter expression nested deeper than {max} levels (at column {column})")]
    TooDeep {
        /// The limit.
        max: usize,
        /// 1-based character column where the limit was passed.
        column: usize,
    },
}

/// A parsed subscription filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every message (`*`, an empty tag expression, or no expression).
    All,
    /// Messages whose tag is in the set.
    Tags(TagSet),
    /// Messages for which the SQL92 expression is TRUE.
    Sql(SqlExpr),
}

impl Filter {
    /// Parses a TAG-type expression: `*`/empty/blank → [`Filter::All`], else `a || b`.
    pub fn parse_tag(expr: &str) -> Result<Filter, FilterError> {
        Ok(match TagSet::parse(expr)? {
            None => Filter::All,
            Some(t) => Filter::Tags(t),
        })
    }

    /// Parses a SQL92-type expression (an empty one is an error, as in RocketMQ's
    /// `FilterAPI.build`).
    pub fn parse_sql(expr: &str) -> Result<Filter, FilterError> {
        SqlExpr::parse(expr).map(Filter::Sql)
    }

    /// Whether a message whose ConsumeQueue unit carries tag hash `h` (0 = no tag) can match,
    /// decided before reading the message. `false` is final; `true` needs [`Filter::matches`].
    pub fn may_match_hash(&self, h: u64) -> bool {
        match self {
            Filter::All | Filter::Sql(_) => true,
            Filter::Tags(t) => t.may_match_hash(h),
        }
    }

    /// Exact decision for a message with `tag` (None = no tag) and user properties `props`.
    /// For SQL92, `TAGS` resolves to `tag` and every other name to `props`.
    pub fn matches<'a>(
        &self,
        tag: Option<&'a str>,
        props: &dyn Fn(&str) -> Option<&'a str>,
    ) -> bool {
        match self {
            Filter::All => true,
            Filter::Tags(t) => t.matches(tag),
            Filter::Sql(e) => e.matches(&|name: &str| {
                if name == PROPERTY_TAGS {
                    tag.map(Cow::Borrowed)
                } else {
                    props(name).map(Cow::Borrowed)
                }
            }),
        }
    }

    /// Exact decision for a decoded message, with the system properties listed in the
    /// module docs visible to SQL92.
    pub fn matches_message(&self, m: &MessageView) -> bool {
        match self {
            Filter::All => true,
            Filter::Tags(t) => t.matches(m.tag()),
            Filter::Sql(e) => e.matches(&|name: &str| message_property(m, name)),
        }
    }

    /// True for [`Filter::Sql`].
    pub fn is_sql(&self) -> bool {
        matches!(self, Filter::Sql(_))
    }
}

/// The value of property `name` of `m` as a SQL92 filter sees it (see the module docs).
pub fn message_property<'a>(m: &'a MessageView, name: &str) -> Option<Cow<'a, str>> {
    match name {
        PROPERTY_TAGS => m.tag().map(Cow::Borrowed),
        PROPERTY_KEYS => match m.keys.as_slice() {
            [] => None,
            [k] => Some(Cow::Borrowed(k.as_str())),
            ks => Some(Cow::Owned(
                ks.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" "),
            )),
        },
        PROPERTY_UNIQ_KEY => {
            (!m.message_id.is_empty()).then(|| Cow::Borrowed(m.message_id.as_str()))
        }
        PROPERTY_SHARDING_KEY => m.message_group().map(Cow::Borrowed),
        _ => m.property(name).map(Cow::Borrowed),
    }
}

#[cfg(test)]
mod tests;
