//! Access policies: which actions a user may take on which resources.
//!
//! As in RocketMQ 5 (ACL 2.0), a policy entry names a resource pattern, the actions it covers
//! and a decision:
//!
//! | resource pattern   | matches |
//! |--------------------|---------|
//! | `Topic:orders`     | the topic `orders` |
//! | `Topic:orders-*`   | every topic whose name starts with `orders-` |
//! | `Topic:*`          | every topic (likewise `Group:…`, `Cluster:*`) |
//! | `*`                | every resource |
//!
//! Actions: `Pub` and `Sub` (data), `Create`, `Update`, `Delete`, `Get`, `List` (admin), and
//! `All` for every action. Decisions: `Allow` or `Deny`.
//!
//! Evaluation, for one user, resource and action: among the user's entries whose pattern
//! matches the resource and whose actions include the action, the most specific pattern
//! decides (an exact name beats a longer prefix beats a shorter prefix beats `Type:*` beats
//! `*`); at equal specificity `Deny` wins. If no entry matches, the answer is deny: with ACL
//! on, nothing is allowed unless a policy says so.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::AclError;

/// What kind of resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    /// A topic.
    Topic,
    /// A consumer group.
    Group,
    /// The broker group itself (membership, leadership, retention, messages by id).
    Cluster,
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceType::Topic => "Topic",
            ResourceType::Group => "Group",
            ResourceType::Cluster => "Cluster",
        })
    }
}

/// A concrete resource a request touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Its type.
    pub kind: ResourceType,
    /// Its name.
    pub name: String,
}

impl Resource {
    /// The topic `name`.
    pub fn topic(name: &str) -> Self {
        Resource {
            kind: ResourceType::Topic,
            name: name.to_string(),
        }
    }

    /// The consumer group `name`.
    pub fn group(name: &str) -> Self {
        Resource {
            kind: ResourceType::Group,
            name: name.to_string(),
        }
    }

    /// The broker group (cluster-wide operations).
    pub fn cluster() -> Self {
        Resource {
            kind: ResourceType::Cluster,
            name: String::new(),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}:{}", self.kind, self.name)
        }
    }
}

/// A resource pattern of a policy entry (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Pattern {
    /// `*`: every resource.
    Any,
    /// `Type:*`: every resource of a type.
    AnyOf(ResourceType),
    /// `Type:prefix*`.
    Prefix(ResourceType, String),
    /// `Type:name`.
    Exact(ResourceType, String),
}

impl Pattern {
    /// Does the pattern cover `r`?
    pub fn matches(&self, r: &Resource) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::AnyOf(t) => *t == r.kind,
            Pattern::Prefix(t, p) => *t == r.kind && r.name.starts_with(p.as_str()),
            Pattern::Exact(t, n) => *t == r.kind && *n == r.name,
        }
    }

    /// Higher is more specific.
    fn specificity(&self) -> (u8, usize) {
        match self {
            Pattern::Any => (0, 0),
            Pattern::AnyOf(_) => (1, 0),
            Pattern::Prefix(_, p) => (2, p.len()),
            Pattern::Exact(..) => (3, 0),
        }
    }

    fn kind(&self) -> Option<ResourceType> {
        match self {
            Pattern::Any => None,
            Pattern::AnyOf(t) | Pattern::Prefix(t, _) | Pattern::Exact(t, _) => Some(*t),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Any => f.write_str("*"),
            Pattern::AnyOf(t) => write!(f, "{t}:*"),
            Pattern::Prefix(t, p) => write!(f, "{t}:{p}*"),
            Pattern::Exact(t, n) => write!(f, "{t}:{n}"),
        }
    }
}

impl FromStr for Pattern {
    type Err = AclError;

    fn from_str(s: &str) -> Result<Self, AclError> {
        let s = s.trim();
        if s == "*" {
            return Ok(Pattern::Any);
        }
        let bad = || {
            AclError::Invalid(format!(
                "resource `{s}`: expected `*`, `Topic:NAME`, `Topic:PREFIX*`, `Topic:*`, the same \
                 with `Group:`, or `Cluster:*`"
            ))
        };
        let (t, name) = s.split_once(':').ok_or_else(bad)?;
        let kind = match t.trim().to_ascii_lowercase().as_str() {
            "topic" => ResourceType::Topic,
            "group" => ResourceType::Group,
            "cluster" => ResourceType::Cluster,
            _ => return Err(bad()),
        };
        let name = name.trim();
        if name.is_empty() || name.strip_suffix('*').unwrap_or(name).contains('*') {
            return Err(bad());
        }
        Ok(match name.strip_suffix('*') {
            Some("") => Pattern::AnyOf(kind),
            Some(_) if kind == ResourceType::Cluster => return Err(bad()),
            Some(p) => Pattern::Prefix(kind, p.to_string()),
            None if kind == ResourceType::Cluster => return Err(bad()),
            None => Pattern::Exact(kind, name.to_string()),
        })
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for Pattern {
    type Error = AclError;
    fn try_from(s: String) -> Result<Self, AclError> {
        s.parse()
    }
}

/// An action on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Send to a topic (and end transactions on it).
    Pub,
    /// Receive from a topic, consume as a group.
    Sub,
    /// Create a topic or group.
    Create,
    /// Change a topic's or group's configuration, commit offsets, cluster operations.
    Update,
    /// Delete a topic or group.
    Delete,
    /// Read a resource's details (status, offsets, messages by id).
    Get,
    /// List resources.
    List,
    /// Every action (in a policy only).
    All,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl FromStr for Action {
    type Err = AclError;
    fn from_str(s: &str) -> Result<Self, AclError> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "pub" => Action::Pub,
            "sub" => Action::Sub,
            "create" => Action::Create,
            "update" => Action::Update,
            "delete" => Action::Delete,
            "get" => Action::Get,
            "list" => Action::List,
            "all" => Action::All,
            _ => {
                return Err(AclError::Invalid(format!(
                    "action `{s}`: expected Pub, Sub, Create, Update, Delete, Get, List or All"
                )));
            }
        })
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Decision {
    /// The action is allowed.
    Allow,
    /// The action is refused.
    Deny,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl FromStr for Decision {
    type Err = AclError;
    fn from_str(s: &str) -> Result<Self, AclError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "allow" => Ok(Decision::Allow),
            "deny" => Ok(Decision::Deny),
            _ => Err(AclError::Invalid(format!(
                "decision `{s}`: expected Allow or Deny"
            ))),
        }
    }
}

/// One policy entry of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Which resources.
    pub resource: Pattern,
    /// Which actions.
    pub actions: Vec<Action>,
    /// Allow or deny.
    pub decision: Decision,
}

impl Entry {
    /// Reject entries that can never match: no actions, or `Pub` on a group, or data actions
    /// on the cluster.
    pub fn validate(&self) -> Result<(), AclError> {
        if self.actions.is_empty() {
            return Err(AclError::Invalid(format!(
                "{}: at least one action is required",
                self.resource
            )));
        }
        for a in &self.actions {
            let ok = !matches!(
                (self.resource.kind(), a),
                (Some(ResourceType::Group), Action::Pub)
                    | (Some(ResourceType::Cluster), Action::Pub | Action::Sub)
            );
            if !ok {
                return Err(AclError::Invalid(format!(
                    "{}: action {a} does not apply to this resource",
                    self.resource
                )));
            }
        }
        Ok(())
    }

    fn covers(&self, r: &Resource, action: Action) -> bool {
        self.resource.matches(r)
            && self
                .actions
                .iter()
                .any(|a| *a == action || *a == Action::All)
    }
}

/// The decision of `entries` for `action` on `r`: `None` if no entry matches (deny by
/// default, see the module docs).
pub fn decide(entries: &[Entry], r: &Resource, action: Action) -> Option<Decision> {
    entries
        .iter()
        .filter(|e| e.covers(r, action))
        // Most specific first; Deny before Allow at equal specificity.
        .max_by_key(|e| (e.resource.specificity(), e.decision == Decision::Deny))
        .map(|e| e.decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(res: &str, actions: &[Action], d: Decision) -> Entry {
        Entry {
            resource: res.parse().unwrap(),
            actions: actions.to_vec(),
            decision: d,
        }
    }

    #[test]
    fn patterns_parse_and_print_back() {
        for s in ["*", "Topic:*", "Topic:orders", "Group:g-*", "Cluster:*"] {
            assert_eq!(s.parse::<Pattern>().unwrap().to_string(), s);
        }
        for bad in [
            "",
            "Topic:",
            "Queue:x",
            "Topic:a*b",
            "Topic:**",
            "Cluster:x",
            "orders",
            "Topic:é*é",
        ] {
            assert!(bad.parse::<Pattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn no_matching_entry_means_deny_by_default() {
        let es = [entry("Topic:a", &[Action::Pub], Decision::Allow)];
        assert_eq!(decide(&es, &Resource::topic("b"), Action::Pub), None);
        assert_eq!(decide(&es, &Resource::topic("a"), Action::Sub), None);
        assert_eq!(
            decide(&es, &Resource::topic("a"), Action::Pub),
            Some(Decision::Allow)
        );
    }

    #[test]
    fn the_most_specific_pattern_decides_and_deny_wins_ties() {
        let es = [
            entry("Topic:*", &[Action::All], Decision::Allow),
            entry("Topic:secret-*", &[Action::Sub], Decision::Deny),
            entry("Topic:secret-ok", &[Action::Sub], Decision::Allow),
            entry("Topic:tie", &[Action::Pub], Decision::Allow),
            entry("Topic:tie", &[Action::Pub], Decision::Deny),
        ];
        let d = |t: &str, a| decide(&es, &Resource::topic(t), a);
        assert_eq!(d("x", Action::Sub), Some(Decision::Allow));
        assert_eq!(d("secret-1", Action::Sub), Some(Decision::Deny));
        assert_eq!(d("secret-1", Action::Pub), Some(Decision::Allow));
        assert_eq!(d("secret-ok", Action::Sub), Some(Decision::Allow));
        assert_eq!(d("tie", Action::Pub), Some(Decision::Deny));
        assert_eq!(decide(&es, &Resource::group("g"), Action::Sub), None);
    }

    #[test]
    fn entries_that_cannot_apply_are_rejected() {
        assert!(
            entry("Group:g", &[Action::Pub], Decision::Allow)
                .validate()
                .is_err()
        );
        assert!(
            entry("Cluster:*", &[Action::Sub], Decision::Allow)
                .validate()
                .is_err()
        );
        assert!(entry("Topic:t", &[], Decision::Allow).validate().is_err());
        assert!(
            entry("*", &[Action::Pub, Action::Get], Decision::Allow)
                .validate()
                .is_ok()
        );
    }
}
