//! `raftmq admin user` and `raftmq admin acl`: ACL users and policies, written to every
//! broker group (each group keeps its own in its Raft log) and listed per group.

use serde::Serialize;

use super::client::Ctx;
use super::group::{group_write_output, write_table};
use super::output::table;
use super::{AclCmd, AclSpec, AdminError, Output, UserCmd};
use crate::proto::raftmq::admin as apb;
use apb::acl_change::Change;

/// One group's users or policies.
#[derive(Debug, Serialize)]
struct GroupListing<T> {
    group: String,
    /// The node that answered; `None` if none did.
    via: Option<String>,
    error: Option<String>,
    items: Vec<T>,
}

#[derive(Debug, Serialize)]
struct UserOut {
    name: String,
    user_type: String,
}

#[derive(Debug, Serialize)]
struct AclOut {
    subject: String,
    resource: String,
    actions: Vec<String>,
    decision: String,
}

/// Send one change to every group.
async fn change_everywhere(
    ctx: &Ctx,
    what: &str,
    name: String,
    change: Change,
) -> Result<Output, AdminError> {
    let groups = ctx.groups().await?;
    if groups.is_empty() {
        return Err(AdminError::NoGroups);
    }
    let req = apb::AclChange {
        change: Some(change),
    };
    let out = ctx
        .write_groups(&groups, |mut c| {
            let r = req.clone();
            async move { c.change_acl(r).await }
        })
        .await;
    group_write_output(ctx.args.json, name, out, write_table(what))
}

/// Ask each group (leader first, then the others) with `f`.
async fn list_everywhere<T, R, F, Fut>(
    ctx: &Ctx,
    f: F,
    items: impl Fn(R) -> Vec<T>,
) -> Result<Vec<GroupListing<T>>, AdminError>
where
    F: Fn(super::client::Admin) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    let mut out = Vec::new();
    for g in ctx.groups().await? {
        let mut listing = GroupListing {
            group: g.name.clone(),
            via: None,
            error: Some("no member answered".into()),
            items: Vec::new(),
        };
        for addr in g.targets() {
            let c = ctx.admin(&addr)?;
            match f(c).await {
                Ok(r) => {
                    listing.items = items(r.into_inner());
                    listing.via = Some(addr);
                    listing.error = None;
                    break;
                }
                Err(s) => listing.error = Some(format!("{addr}: {}", s.message())),
            }
        }
        out.push(listing);
    }
    Ok(out)
}

fn listing_output<T: Serialize>(
    json: bool,
    listings: &[GroupListing<T>],
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<Output, AdminError> {
    let ok = listings.iter().all(|l| l.error.is_none());
    let text = if json {
        format!(
            "{}\n",
            serde_json::to_string_pretty(&serde_json::json!({ "groups": listings }))?
        )
    } else {
        let mut rows = Vec::new();
        for l in listings {
            match &l.error {
                Some(e) => {
                    let mut r = vec![l.group.clone(), format!("ERROR: {e}")];
                    r.resize(header.len(), String::new());
                    rows.push(r);
                }
                None => rows.extend(l.items.iter().map(|i| {
                    let mut r = vec![l.group.clone()];
                    r.extend(row(i));
                    r
                })),
            }
        }
        table(header, &rows)
    };
    Ok(Output { text, ok })
}

fn acl_of(spec: &AclSpec) -> apb::Acl {
    apb::Acl {
        subject: spec.subject.clone(),
        entries: spec
            .resources
            .iter()
            .map(|r| apb::AclEntry {
                resource: r.clone(),
                actions: spec.actions.clone(),
                decision: spec.decision.clone(),
            })
            .collect(),
    }
}

pub(super) async fn user_cmd(ctx: &Ctx, cmd: UserCmd) -> Result<Output, AdminError> {
    match cmd {
        UserCmd::Create {
            username,
            password,
            user_type,
        } => {
            let c = Change::CreateUser(apb::User {
                name: username.clone(),
                secret: password,
                kind: user_type,
            });
            change_everywhere(ctx, "user", username, c).await
        }
        UserCmd::Update {
            username,
            password,
            user_type,
        } => {
            let c = Change::UpdateUser(apb::User {
                name: username.clone(),
                secret: password.unwrap_or_default(),
                kind: user_type.unwrap_or_default(),
            });
            change_everywhere(ctx, "user", username, c).await
        }
        UserCmd::Delete { username } => {
            let c = Change::DeleteUser(username.clone());
            change_everywhere(ctx, "user", username, c).await
        }
        UserCmd::List => {
            let l = list_everywhere(
                ctx,
                |mut c| async move { c.list_users(apb::ListUsersRequest {}).await },
                |r: apb::ListUsersReply| {
                    r.users
                        .into_iter()
                        .map(|u| UserOut {
                            name: u.name,
                            user_type: u.kind,
                        })
                        .collect()
                },
            )
            .await?;
            listing_output(ctx.args.json, &l, &["GROUP", "USER", "TYPE"], |u| {
                vec![u.name.clone(), u.user_type.clone()]
            })
        }
    }
}

pub(super) async fn acl_cmd(ctx: &Ctx, cmd: AclCmd) -> Result<Output, AdminError> {
    match cmd {
        AclCmd::Create(spec) => {
            let c = Change::CreateAcl(acl_of(&spec));
            change_everywhere(ctx, "policy of", spec.subject, c).await
        }
        AclCmd::Update(spec) => {
            let c = Change::UpdateAcl(acl_of(&spec));
            change_everywhere(ctx, "policy of", spec.subject, c).await
        }
        AclCmd::Delete { subject, resources } => {
            let c = Change::DeleteAcl(apb::DeleteAcl {
                subject: subject.clone(),
                resources,
            });
            change_everywhere(ctx, "policy of", subject, c).await
        }
        AclCmd::List { subject } => {
            let req = apb::ListAclsRequest {
                subject: subject.unwrap_or_default(),
            };
            let l = list_everywhere(
                ctx,
                |mut c| {
                    let r = req.clone();
                    async move { c.list_acls(r).await }
                },
                |r: apb::ListAclsReply| {
                    r.acls
                        .into_iter()
                        .flat_map(|a| {
                            let subject = a.subject;
                            a.entries.into_iter().map(move |e| AclOut {
                                subject: subject.clone(),
                                resource: e.resource,
                                actions: e.actions,
                                decision: e.decision,
                            })
                        })
                        .collect()
                },
            )
            .await?;
            listing_output(
                ctx.args.json,
                &l,
                &["GROUP", "SUBJECT", "RESOURCE", "ACTIONS", "DECISION"],
                |a| {
                    vec![
                        a.subject.clone(),
                        a.resource.clone(),
                        a.actions.join(","),
                        a.decision.clone(),
                    ]
                },
            )
        }
    }
}
