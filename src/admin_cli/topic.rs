//! `raftmq admin topic`: status, create/update and delete of topics.

use super::client::{Ctx, rpc_err};
use super::output::{RouteGroup, TopicInGroup, TopicSummary, TopicWrite, table};
use super::{AdminError, Output, TopicSpec};
use crate::proto::raftmq::admin as apb;

pub(super) async fn topic_status(ctx: &Ctx, name: &str) -> Result<Output, AdminError> {
    let groups = ctx.groups().await?;
    let mut out = Vec::new();
    for g in &groups {
        for addr in g.targets() {
            let Ok(mut c) = ctx.admin(&addr) else {
                continue;
            };
            let Ok(topics) = c.list_topics(apb::ListTopicsRequest {}).await else {
                continue;
            };
            let Some(t) = topics
                .into_inner()
                .topics
                .into_iter()
                .find(|t| t.name == name)
            else {
                break;
            };
            let mut queues = Vec::new();
            for q in 0..t.queues {
                let r = c
                    .read_queue(apb::ReadQueueRequest {
                        topic: name.to_string(),
                        queue_id: q,
                        offset: u64::MAX,
                        max: 1,
                    })
                    .await
                    .map_err(|s| rpc_err(&addr, &s))?
                    .into_inner();
                queues.push(serde_json::json!({
                    "queue_id": q, "min_offset": r.min_offset, "max_offset": r.max_offset,
                }));
            }
            out.push(serde_json::json!({ "group": g.name, "queues": queues }));
            break;
        }
    }
    if out.is_empty() {
        return Err(AdminError::TopicNotFound(name.to_string()));
    }
    let v = serde_json::json!({ "topic": name, "groups": out });
    let text = if ctx.args.json {
        format!("{}\n", serde_json::to_string_pretty(&v)?)
    } else {
        let mut rows = Vec::new();
        for g in &out {
            for q in g["queues"].as_array().into_iter().flatten() {
                rows.push(vec![
                    g["group"].as_str().unwrap_or_default().to_string(),
                    q["queue_id"].to_string(),
                    q["min_offset"].to_string(),
                    q["max_offset"].to_string(),
                ]);
            }
        }
        table(&["GROUP", "QUEUE", "MIN OFFSET", "MAX OFFSET"], &rows)
    };
    Ok(Output { ok: true, text })
}

pub(super) fn summary(name: String, groups: &[RouteGroup]) -> TopicSummary {
    TopicSummary {
        queues: groups.iter().map(|g| g.queues).sum(),
        perm: groups.first().map(|g| g.perm.clone()).unwrap_or_default(),
        message_type: groups
            .first()
            .map(|g| g.message_type.clone())
            .unwrap_or_default(),
        groups: groups
            .iter()
            .map(|g| TopicInGroup {
                group: g.group.clone(),
                queues: g.queues,
                perm: g.perm.clone(),
                message_type: g.message_type.clone(),
            })
            .collect(),
        name,
    }
}

pub(super) async fn upsert(ctx: &Ctx, spec: &TopicSpec) -> Result<TopicWrite, AdminError> {
    let groups = ctx.groups().await?;
    if groups.is_empty() {
        return Err(AdminError::NoGroups);
    }
    let cfg = apb::TopicConfig {
        name: spec.name.clone(),
        queues: spec.queues,
        perm: spec.perm.clone(),
        message_type: spec.message_type.clone(),
    };
    let writes = groups.iter().map(|g| {
        let cfg = cfg.clone();
        ctx.write_group(g, move |mut c| {
            let cfg = cfg.clone();
            async move { c.upsert_topic(cfg).await }
        })
    });
    let results = futures::future::join_all(writes).await;
    let ok = results.iter().all(|r| r.ok);
    let routed = if ctx.args.no_wait || !ok {
        None
    } else {
        let want: Vec<TopicInGroup> = results
            .iter()
            .map(|r| TopicInGroup {
                group: r.group.clone(),
                queues: spec.queues,
                perm: spec.perm.clone(),
                message_type: spec.message_type.clone(),
            })
            .collect();
        Some(
            ctx.wait_topics(|t| {
                let Some(gs) = t.get(&spec.name) else {
                    return false;
                };
                want.iter().all(|w| {
                    gs.iter().any(|g| {
                        g.group == w.group
                            && g.queues == w.queues
                            && g.perm == w.perm
                            && g.message_type == w.message_type
                    })
                })
            })
            .await,
        )
    };
    Ok(TopicWrite {
        topic: spec.name.clone(),
        queues: Some(spec.queues),
        perm: Some(spec.perm.clone()),
        message_type: Some(spec.message_type.clone()),
        ok,
        routed,
        groups: results,
    })
}

pub(super) async fn delete(ctx: &Ctx, name: &str) -> Result<TopicWrite, AdminError> {
    let groups = ctx.groups().await?;
    if groups.is_empty() {
        return Err(AdminError::NoGroups);
    }
    let writes = groups.iter().map(|g| {
        ctx.write_group(g, move |mut c| async move {
            c.delete_topic(apb::DeleteTopicRequest {
                name: name.to_string(),
            })
            .await
        })
    });
    let mut results = futures::future::join_all(writes).await;
    for r in &mut results {
        // A group without the topic answers NOT_FOUND: nothing to delete there.
        if !r.ok && r.not_found {
            r.ok = true;
            r.error = None;
            r.deleted = Some(false);
        } else {
            r.deleted = Some(r.ok);
        }
    }
    if results.iter().all(|r| r.deleted == Some(false)) {
        return Err(AdminError::TopicNotFound(name.to_string()));
    }
    let ok = results.iter().all(|r| r.ok);
    let routed = if ctx.args.no_wait || !ok {
        None
    } else {
        Some(ctx.wait_topics(|t| !t.contains_key(name)).await)
    };
    Ok(TopicWrite {
        topic: name.to_string(),
        queues: None,
        perm: None,
        message_type: None,
        ok,
        routed,
        groups: results,
    })
}
