//! Users and their policies: the replicated ACL state and the commands that change it.
//!
//! The state lives in the Raft state machine (`AppliedState::acl`), so every node of a group
//! enforces the same users and policies and a new leader knows them. Commands are applied
//! deterministically on every replica; one that does not fit the state (a user that exists,
//! a policy for an unknown user) changes nothing and answers an error.
//!
//! Secrets are stored as given: the HMAC signature of the clients can only be checked with
//! the secret itself. They are never returned by `user list`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::AclError;
use super::policy::{Action, Decision, Entry, Pattern, Resource, decide};

/// Super users may do everything; normal users what their policies allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserKind {
    /// Every action on every resource, including user and policy management.
    Super,
    /// Only what the user's policies allow.
    Normal,
}

impl std::fmt::Display for UserKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::str::FromStr for UserKind {
    type Err = AclError;
    fn from_str(s: &str) -> Result<Self, AclError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "super" => Ok(UserKind::Super),
            "normal" | "" => Ok(UserKind::Normal),
            _ => Err(AclError::Invalid(format!(
                "user type `{s}`: expected Super or Normal"
            ))),
        }
    }
}

/// A user: access key (its name) and secret key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The access key the clients send as `Credential=`.
    pub name: String,
    /// The secret key.
    pub secret: String,
    /// Super or normal.
    pub kind: UserKind,
}

impl User {
    /// Names: 1–64 of letters, digits, `_`, `-`, `.`, `@`; secrets: 6–128 printable ASCII
    /// characters without spaces (the clients put the secret in no header, but operators
    /// pass it on command lines and in env vars).
    pub fn validate(&self) -> Result<(), AclError> {
        validate_name(&self.name)?;
        validate_secret(&self.secret)
    }
}

/// See [`User::validate`].
pub fn validate_name(name: &str) -> Result<(), AclError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'))
    {
        return Err(AclError::Invalid(format!(
            "user name `{name}`: 1-64 letters, digits, `_`, `-`, `.` or `@`"
        )));
    }
    Ok(())
}

/// See [`User::validate`].
pub fn validate_secret(secret: &str) -> Result<(), AclError> {
    if secret.len() < 6 || secret.len() > 128 || !secret.chars().all(|c| c.is_ascii_graphic()) {
        return Err(AclError::Invalid(
            "secret key: 6-128 printable ASCII characters, no spaces".into(),
        ));
    }
    Ok(())
}

/// A user's name from a subject: `User:alice` (RocketMQ's form) or `alice`.
pub fn subject_name(subject: &str) -> &str {
    let s = subject.trim();
    s.strip_prefix("User:").unwrap_or(s)
}

/// A command that changes users or policies (carried by the Raft log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "acl_op", rename_all = "snake_case")]
pub enum AclCommand {
    /// Add a user; fails if the name is taken.
    CreateUser {
        /// The user.
        user: User,
    },
    /// Change a user's secret and/or type; fails if there is no such user.
    UpdateUser {
        /// Name.
        name: String,
        /// New secret, if any.
        secret: Option<String>,
        /// New type, if any.
        kind: Option<UserKind>,
    },
    /// Remove a user and its policies.
    DeleteUser {
        /// Name.
        name: String,
    },
    /// Add entries to a user's policy; fails if the user is unknown or already has an entry
    /// for one of the resources (change those with `UpdateAcl`).
    CreateAcl {
        /// User name.
        subject: String,
        /// New entries.
        entries: Vec<Entry>,
    },
    /// Replace the user's entries for these resources (adding those it lacks); fails if the
    /// user has no policy yet.
    UpdateAcl {
        /// User name.
        subject: String,
        /// Entries.
        entries: Vec<Entry>,
    },
    /// Remove the user's entries for these resources, or all of them if none are named.
    DeleteAcl {
        /// User name.
        subject: String,
        /// Resources.
        resources: Vec<Pattern>,
    },
}

/// Users and policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclState {
    users: BTreeMap<String, User>,
    policies: BTreeMap<String, Vec<Entry>>,
}

impl AclState {
    /// The user with access key `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Every user, by name.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// Every user's policy entries, by user name.
    pub fn policies(&self) -> impl Iterator<Item = (&str, &[Entry])> {
        self.policies
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// May the normal user `name` take `action` on `r`? (Super users are let through by
    /// the caller.)
    pub fn allows(&self, name: &str, r: &Resource, action: Action) -> bool {
        let entries = self.policies.get(name).map(Vec::as_slice).unwrap_or(&[]);
        decide(entries, r, action) == Some(Decision::Allow)
    }

    /// Apply `cmd`: a description of what changed, or why nothing did.
    pub fn apply(&mut self, cmd: AclCommand) -> Result<String, AclError> {
        match cmd {
            AclCommand::CreateUser { user } => {
                user.validate()?;
                if self.users.contains_key(&user.name) {
                    return Err(AclError::Conflict(format!("user {} exists", user.name)));
                }
                let msg = format!("created user {} ({})", user.name, user.kind);
                self.users.insert(user.name.clone(), user);
                Ok(msg)
            }
            AclCommand::UpdateUser { name, secret, kind } => {
                let u = self
                    .users
                    .get_mut(&name)
                    .ok_or_else(|| AclError::NotFound(format!("no user {name}")))?;
                if let Some(s) = &secret {
                    validate_secret(s)?;
                }
                if let Some(s) = secret {
                    u.secret = s;
                }
                if let Some(k) = kind {
                    u.kind = k;
                }
                Ok(format!("updated user {name} ({})", u.kind))
            }
            AclCommand::DeleteUser { name } => {
                self.users
                    .remove(&name)
                    .ok_or_else(|| AclError::NotFound(format!("no user {name}")))?;
                self.policies.remove(&name);
                Ok(format!("deleted user {name} and its policy"))
            }
            AclCommand::CreateAcl { subject, entries } => {
                let name = subject_name(&subject).to_string();
                self.check_entries(&name, &entries)?;
                let have = self.policies.entry(name.clone()).or_default();
                if let Some(e) = entries
                    .iter()
                    .find(|e| have.iter().any(|h| h.resource == e.resource))
                {
                    return Err(AclError::Conflict(format!(
                        "user {name} already has an entry for {}: use `acl update`",
                        e.resource
                    )));
                }
                let n = entries.len();
                have.extend(entries);
                Ok(format!("added {n} entries to the policy of {name}"))
            }
            AclCommand::UpdateAcl { subject, entries } => {
                let name = subject_name(&subject).to_string();
                self.check_entries(&name, &entries)?;
                let have = self
                    .policies
                    .get_mut(&name)
                    .ok_or_else(|| AclError::NotFound(format!("user {name} has no policy")))?;
                let n = entries.len();
                for e in entries {
                    have.retain(|h| h.resource != e.resource);
                    have.push(e);
                }
                Ok(format!("set {n} entries of the policy of {name}"))
            }
            AclCommand::DeleteAcl { subject, resources } => {
                let name = subject_name(&subject).to_string();
                let have = self
                    .policies
                    .get_mut(&name)
                    .ok_or_else(|| AclError::NotFound(format!("user {name} has no policy")))?;
                let before = have.len();
                if resources.is_empty() {
                    have.clear();
                } else {
                    have.retain(|h| !resources.contains(&h.resource));
                }
                let removed = before - have.len();
                if have.is_empty() {
                    self.policies.remove(&name);
                }
                Ok(format!(
                    "removed {removed} entries from the policy of {name}"
                ))
            }
        }
    }

    fn check_entries(&self, name: &str, entries: &[Entry]) -> Result<(), AclError> {
        if !self.users.contains_key(name) {
            return Err(AclError::NotFound(format!("no user {name}")));
        }
        if entries.is_empty() {
            return Err(AclError::Invalid(
                "at least one resource is required".into(),
            ));
        }
        entries.iter().try_for_each(Entry::validate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            secret: "secret-1".into(),
            kind: UserKind::Normal,
        }
    }

    fn entry(res: &str, a: Action, d: Decision) -> Entry {
        Entry {
            resource: res.parse().unwrap(),
            actions: vec![a],
            decision: d,
        }
    }

    #[test]
    fn users_and_policies_follow_their_commands() {
        let mut s = AclState::default();
        s.apply(AclCommand::CreateUser {
            user: user("alice"),
        })
        .unwrap();
        assert!(matches!(
            s.apply(AclCommand::CreateUser {
                user: user("alice")
            }),
            Err(AclError::Conflict(_))
        ));
        assert!(matches!(
            s.apply(AclCommand::CreateAcl {
                subject: "User:bob".into(),
                entries: vec![entry("Topic:t", Action::Pub, Decision::Allow)],
            }),
            Err(AclError::NotFound(_))
        ));
        s.apply(AclCommand::CreateAcl {
            subject: "User:alice".into(),
            entries: vec![entry("Topic:t", Action::Pub, Decision::Allow)],
        })
        .unwrap();
        assert!(s.allows("alice", &Resource::topic("t"), Action::Pub));
        assert!(!s.allows("alice", &Resource::topic("t"), Action::Sub));
        s.apply(AclCommand::UpdateAcl {
            subject: "alice".into(),
            entries: vec![entry("Topic:t", Action::Pub, Decision::Deny)],
        })
        .unwrap();
        assert!(!s.allows("alice", &Resource::topic("t"), Action::Pub));
        s.apply(AclCommand::UpdateUser {
            name: "alice".into(),
            secret: Some("another-secret".into()),
            kind: None,
        })
        .unwrap();
        assert_eq!(s.user("alice").unwrap().secret, "another-secret");
        s.apply(AclCommand::DeleteUser {
            name: "alice".into(),
        })
        .unwrap();
        assert!(s.user("alice").is_none());
        assert_eq!(s.policies().count(), 0);
    }

    #[test]
    fn bad_input_changes_nothing() {
        let mut s = AclState::default();
        let mut u = user("bad name");
        assert!(s.apply(AclCommand::CreateUser { user: u.clone() }).is_err());
        u.name = "ok".into();
        u.secret = "short".into();
        assert!(s.apply(AclCommand::CreateUser { user: u }).is_err());
        assert_eq!(s, AclState::default());
    }
}
