//! Tag expressions: `*` or `TagA || TagB || TagC`.
//!
//! Semantics of RocketMQ's `FilterAPI.buildSubscriptionData` and
//! `ExpressionMessageFilter.isMatchedByConsumeQueue`: an empty expression or `*` subscribes
//! to everything; otherwise the expression is split on `||`, each piece trimmed and empty
//! pieces dropped. RocketMQ compares the tag's hash code only; here [`TagSet::may_match_hash`]
//! compares the ConsumeQueue's 64-bit [`tag_hash`] and [`TagSet::matches`] the tag itself, so
//! a hash collision never delivers a wrong tag.
//!
//! Differences from RocketMQ, both on inputs it handles oddly: the whole expression is trimmed
//! before the `*` check (RocketMQ treats ` * ` as the literal tag `*`), and an expression that
//! names no tag (`||`, `|| ||`) is an error (RocketMQ errors on `||`, and accepts `|| ||`
//! which then matches nothing).

use super::FilterError;
use super::tag_hash;

/// A set of tags (at least one), each with its [`tag_hash`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSet {
    tags: Vec<(String, u64)>,
}

impl TagSet {
    /// Parses a tag expression. `Ok(None)` means "every message" (`*`, empty or blank).
    pub fn parse(expr: &str) -> Result<Option<TagSet>, FilterError> {
        let e = expr.trim();
        if e.is_empty() || e == "*" {
            return Ok(None);
        }
        let mut tags: Vec<(String, u64)> = Vec::new();
        for t in e.split("||").map(str::trim).filter(|t| !t.is_empty()) {
            if !tags.iter().any(|(x, _)| x == t) {
                tags.push((t.to_string(), tag_hash(t)));
            }
        }
        if tags.is_empty() {
            return Err(FilterError::NoTags {
                expr: expr.to_string(),
            });
        }
        Ok(Some(TagSet { tags }))
    }

    /// The tags, in first-seen order, without duplicates.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.tags.iter().map(|(t, _)| t.as_str())
    }

    /// Whether a ConsumeQueue unit with tag hash `h` (0 = no tag) may hold a matching message.
    pub fn may_match_hash(&self, h: u64) -> bool {
        h != 0 && self.tags.iter().any(|(_, x)| *x == h)
    }

    /// Whether a message with `tag` (None or empty = no tag) matches.
    pub fn matches(&self, tag: Option<&str>) -> bool {
        match tag {
            None | Some("") => false,
            Some(tag) => self.tags.iter().any(|(t, _)| t == tag),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(e: &str) -> TagSet {
        TagSet::parse(e).unwrap().unwrap()
    }

    #[test]
    fn all_forms() {
        for e in ["*", "", "  ", " * ", "\t*\n"] {
            assert_eq!(TagSet::parse(e).unwrap(), None, "{e:?}");
        }
    }

    #[test]
    fn split_trim_dedup() {
        let s = set(" TagA ||TagB||  TagA || || TagC ");
        assert_eq!(s.tags().collect::<Vec<_>>(), ["TagA", "TagB", "TagC"]);
        assert_eq!(set("TagA").tags().collect::<Vec<_>>(), ["TagA"]);
        // A single `|` is part of a tag, `*` inside a list is a literal tag.
        assert_eq!(set("a|b || *").tags().collect::<Vec<_>>(), ["a|b", "*"]);
    }

    #[test]
    fn no_tags_is_an_error() {
        for e in ["||", " || || ", "|||| "] {
            assert!(
                matches!(TagSet::parse(e), Err(FilterError::NoTags { .. })),
                "{e:?}"
            );
        }
    }

    #[test]
    fn matching_by_hash_and_tag() {
        let s = set("TagA || TagC");
        assert!(s.may_match_hash(tag_hash("TagA")));
        assert!(s.may_match_hash(tag_hash("TagC")));
        assert!(!s.may_match_hash(tag_hash("TagB")));
        assert!(!s.may_match_hash(0), "no tag");
        assert!(s.matches(Some("TagA")) && s.matches(Some("TagC")));
        assert!(!s.matches(Some("TagB")));
        assert!(!s.matches(Some("taga")), "tags are case-sensitive");
        assert!(!s.matches(Some(" TagA")));
        assert!(!s.matches(None) && !s.matches(Some("")));
    }
}
