//! User and policy commands of the Admin service (ACL): requests checked and turned into
//! replicated [`AclCommand`]s, and the listings.

use crate::acl::{AclCommand, AclError, Entry, Pattern, User, UserKind, state::subject_name};
use crate::proto::raftmq::admin as pb;
use crate::raft::state_machine::InternalCommand;

use super::error::BrokerError;
use super::node::Node;
use super::ops::Fwd;

fn entry(e: &pb::AclEntry) -> Result<Entry, AclError> {
    let actions = e
        .actions
        .iter()
        .flat_map(|a| a.split(','))
        .filter(|a| !a.trim().is_empty())
        .map(str::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if e.decision.trim().is_empty() {
        return Err(AclError::Invalid(format!(
            "{}: a decision (Allow or Deny) is required",
            e.resource
        )));
    }
    let entry = Entry {
        resource: e.resource.parse()?,
        actions,
        decision: e.decision.parse()?,
    };
    entry.validate()?;
    Ok(entry)
}

fn entries(acl: &pb::Acl) -> Result<(String, Vec<Entry>), AclError> {
    let name = subject_name(&acl.subject).to_string();
    crate::acl::state::validate_name(&name)?;
    let es = acl
        .entries
        .iter()
        .map(entry)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name, es))
}

/// The replicated command for one change, validated.
pub fn command(c: &pb::AclChange) -> Result<AclCommand, AclError> {
    use pb::acl_change::Change;
    let change = c
        .change
        .as_ref()
        .ok_or_else(|| AclError::Invalid("empty ACL change".into()))?;
    Ok(match change {
        Change::CreateUser(u) => {
            let user = User {
                name: u.name.clone(),
                secret: u.secret.clone(),
                kind: u.kind.parse()?,
            };
            user.validate()?;
            AclCommand::CreateUser { user }
        }
        Change::UpdateUser(u) => {
            crate::acl::state::validate_name(&u.name)?;
            let secret = (!u.secret.is_empty()).then(|| u.secret.clone());
            if let Some(s) = &secret {
                crate::acl::state::validate_secret(s)?;
            }
            let kind = if u.kind.trim().is_empty() {
                None
            } else {
                Some(u.kind.parse::<UserKind>()?)
            };
            if secret.is_none() && kind.is_none() {
                return Err(AclError::Invalid(
                    "nothing to update: give a new secret and/or type".into(),
                ));
            }
            AclCommand::UpdateUser {
                name: u.name.clone(),
                secret,
                kind,
            }
        }
        Change::DeleteUser(name) => AclCommand::DeleteUser { name: name.clone() },
        Change::CreateAcl(a) => {
            let (subject, entries) = entries(a)?;
            AclCommand::CreateAcl { subject, entries }
        }
        Change::UpdateAcl(a) => {
            let (subject, entries) = entries(a)?;
            AclCommand::UpdateAcl { subject, entries }
        }
        Change::DeleteAcl(d) => AclCommand::DeleteAcl {
            subject: subject_name(&d.subject).to_string(),
            resources: d
                .resources
                .iter()
                .map(|r| r.parse::<Pattern>())
                .collect::<Result<_, _>>()?,
        },
    })
}

fn pb_entry(e: &Entry) -> pb::AclEntry {
    pb::AclEntry {
        resource: e.resource.to_string(),
        actions: e.actions.iter().map(|a| a.to_string()).collect(),
        decision: e.decision.to_string(),
    }
}

impl Node {
    /// Apply one user or policy change through Raft (forwarded to the leader).
    pub async fn change_acl(&self, c: pb::AclChange) -> Result<pb::AdminReply, BrokerError> {
        let cmd = command(&c)?;
        let mut reply = self
            .internal(InternalCommand::Acl(cmd), Fwd::Acl(c))
            .await?;
        // Applied here: the replica's answer, `Result<String, AclError>` as JSON. Forwarded:
        // the leader already turned it into a message or an error.
        if let Ok(answer) = serde_json::from_str::<Result<String, AclError>>(&reply.message) {
            reply.message = answer?;
        }
        Ok(reply)
    }

    /// Users as applied here, without secrets.
    pub fn list_users(&self) -> pb::ListUsersReply {
        pb::ListUsersReply {
            users: self.sm.with_acl(|s| {
                s.users()
                    .map(|u| pb::User {
                        name: u.name.clone(),
                        secret: String::new(),
                        kind: u.kind.to_string(),
                    })
                    .collect()
            }),
        }
    }

    /// Policies as applied here (one subject's, or all).
    pub fn list_acls(&self, r: &pb::ListAclsRequest) -> pb::ListAclsReply {
        let only = subject_name(&r.subject);
        pb::ListAclsReply {
            acls: self.sm.with_acl(|s| {
                s.policies()
                    .filter(|(name, _)| only.is_empty() || *name == only)
                    .map(|(name, es)| pb::Acl {
                        subject: format!("User:{name}"),
                        entries: es.iter().map(pb_entry).collect(),
                    })
                    .collect()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::acl_change::Change;

    #[test]
    fn changes_are_validated_before_they_are_replicated() {
        let bad = [
            Change::CreateUser(pb::User {
                name: "a b".into(),
                secret: "secret-1".into(),
                kind: String::new(),
            }),
            Change::UpdateUser(pb::User {
                name: "alice".into(),
                secret: String::new(),
                kind: String::new(),
            }),
            Change::CreateAcl(pb::Acl {
                subject: "User:alice".into(),
                entries: vec![pb::AclEntry {
                    resource: "Topic:t".into(),
                    actions: vec!["Publish".into()],
                    decision: "Allow".into(),
                }],
            }),
            Change::CreateAcl(pb::Acl {
                subject: "User:alice".into(),
                entries: vec![pb::AclEntry {
                    resource: "Topic:t".into(),
                    actions: vec!["Pub".into()],
                    decision: String::new(),
                }],
            }),
        ];
        for c in bad {
            let r = command(&pb::AclChange { change: Some(c) });
            assert!(matches!(r, Err(AclError::Invalid(_))), "{r:?}");
        }
        let ok = command(&pb::AclChange {
            change: Some(Change::CreateAcl(pb::Acl {
                subject: "User:alice".into(),
                entries: vec![pb::AclEntry {
                    resource: "Topic:orders-*".into(),
                    actions: vec!["Pub,Sub".into()],
                    decision: "allow".into(),
                }],
            })),
        })
        .unwrap();
        let AclCommand::CreateAcl { subject, entries } = ok else {
            panic!("{ok:?}")
        };
        assert_eq!(subject, "alice");
        assert_eq!(entries[0].actions.len(), 2);
    }
}
