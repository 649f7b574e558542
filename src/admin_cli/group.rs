//! `raftmq admin group`: consumer group create/update/delete, list and progress.

use super::client::Ctx;
use std::collections::BTreeMap;

use super::output::{
    ConsumerGroupList, ConsumerGroupOut, ConsumerGroupWrite, GroupWrite, human_ms, table,
};
use super::{AdminError, GroupCmd, Output};
use crate::proto::raftmq::admin as apb;

pub(super) fn group_write_output(
    json: bool,
    name: String,
    groups: Vec<GroupWrite>,
    table: impl Fn(&ConsumerGroupWrite) -> String,
) -> Result<Output, AdminError> {
    let w = ConsumerGroupWrite {
        name,
        ok: !groups.is_empty() && groups.iter().all(|g| g.ok),
        groups,
    };
    Ok(Output {
        ok: w.ok,
        text: if json {
            format!("{}\n", serde_json::to_string_pretty(&w)?)
        } else {
            table(&w)
        },
    })
}

/// The table of a write to every group: `<what> <name>`, then a row per group.
pub(super) fn write_table(what: &str) -> impl Fn(&ConsumerGroupWrite) -> String + '_ {
    move |w: &ConsumerGroupWrite| {
        let rows: Vec<Vec<String>> = w
            .groups
            .iter()
            .map(|g| {
                vec![
                    g.group.clone(),
                    if g.ok { "ok".into() } else { "FAILED".into() },
                    g.via.clone().unwrap_or_default(),
                    g.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        format!(
            "{what} {}\n{}",
            w.name,
            table(&["GROUP", "RESULT", "VIA", "ERROR"], &rows)
        )
    }
}

pub(super) async fn consumer_group(ctx: &Ctx, cmd: GroupCmd) -> Result<Output, AdminError> {
    let json = ctx.args.json;
    let groups = ctx.groups().await?;
    let write_table = write_table("consumer group");
    match cmd {
        GroupCmd::Create(spec) | GroupCmd::Update(spec) => {
            let req = apb::GroupConfig {
                name: spec.name.clone(),
                max_delivery_attempts: spec.max_attempts,
                fifo: spec.fifo,
                broadcast: spec.broadcast,
                retry_backoff_ms: match &spec.retry_backoff {
                    Some(s) => crate::duration::parse_list(s)
                        .map_err(|e| AdminError::Usage(format!("--retry-backoff: {e}")))?
                        .iter()
                        .map(|d| d.as_millis() as u64)
                        .collect(),
                    None => Vec::new(),
                },
            };
            let out = ctx
                .write_groups(&groups, |mut c| {
                    let r = req.clone();
                    async move { c.upsert_group(r).await }
                })
                .await;
            group_write_output(json, spec.name, out, write_table)
        }
        GroupCmd::Delete { name } => {
            let req = apb::DeleteGroupRequest { name: name.clone() };
            let out = ctx
                .write_groups(&groups, |mut c| {
                    let r = req.clone();
                    async move { c.delete_group(r).await }
                })
                .await;
            group_write_output(json, name, out, write_table)
        }
        GroupCmd::Progress { name, topic } => {
            let mut out = Vec::new();
            for g in &groups {
                let mut queues = None;
                for addr in g.targets() {
                    let Ok(mut c) = ctx.admin(&addr) else {
                        continue;
                    };
                    let req = apb::GroupProgressRequest {
                        group: name.clone(),
                        topic: topic.clone(),
                    };
                    match c.group_progress(req).await {
                        Ok(r) => {
                            queues = Some(r.into_inner().queues);
                            break;
                        }
                        Err(s) if s.code() == tonic::Code::NotFound => break,
                        Err(_) => continue,
                    }
                }
                if let Some(qs) = queues {
                    out.push(serde_json::json!({
                        "group": g.name,
                        "queues": qs.iter().map(|q| serde_json::json!({
                            "queue_id": q.queue_id, "min_offset": q.min_offset, "max_offset": q.max_offset,
                            "consumer_offset": q.ack_offset, "next_offset": q.next_offset,
                            "inflight": q.inflight, "lag": q.lag,
                        })).collect::<Vec<_>>(),
                    }));
                }
            }
            if out.is_empty() {
                return Err(AdminError::TopicNotFound(topic));
            }
            let v =
                serde_json::json!({ "consumer_group": name, "topic": topic, "broker_groups": out });
            let text = if json {
                format!("{}\n", serde_json::to_string_pretty(&v)?)
            } else {
                let mut rows = Vec::new();
                for g in &out {
                    for q in g["queues"].as_array().into_iter().flatten() {
                        rows.push(
                            [
                                "queue_id",
                                "max_offset",
                                "consumer_offset",
                                "inflight",
                                "lag",
                            ]
                            .iter()
                            .fold(
                                vec![g["group"].as_str().unwrap_or_default().to_string()],
                                |mut r, k| {
                                    r.push(q[*k].to_string());
                                    r
                                },
                            ),
                        );
                    }
                }
                table(
                    &[
                        "GROUP",
                        "QUEUE",
                        "BROKER OFFSET",
                        "CONSUMER OFFSET",
                        "INFLIGHT",
                        "LAG",
                    ],
                    &rows,
                )
            };
            Ok(Output { ok: true, text })
        }
        GroupCmd::List => {
            let mut by_name: BTreeMap<String, ConsumerGroupOut> = BTreeMap::new();
            for g in &groups {
                for addr in g.targets() {
                    let Ok(mut c) = ctx.admin(&addr) else {
                        continue;
                    };
                    let Ok(r) = c.list_groups(apb::ListGroupsRequest {}).await else {
                        continue;
                    };
                    for cg in r.into_inner().groups {
                        let e = by_name.entry(cg.name.clone()).or_insert(ConsumerGroupOut {
                            name: cg.name,
                            max_delivery_attempts: cg.max_delivery_attempts,
                            fifo: cg.fifo,
                            broadcast: cg.broadcast,
                            retry_backoff: cg
                                .retry_backoff_ms
                                .iter()
                                .map(|ms| human_ms(*ms))
                                .collect(),
                            broker_groups: Vec::new(),
                        });
                        e.broker_groups.push(g.name.clone());
                    }
                    break;
                }
            }
            let l = ConsumerGroupList {
                consumer_groups: by_name.into_values().collect(),
            };
            let text = if json {
                format!("{}\n", serde_json::to_string_pretty(&l)?)
            } else {
                let rows: Vec<Vec<String>> = l
                    .consumer_groups
                    .iter()
                    .map(|g| {
                        vec![
                            g.name.clone(),
                            g.max_delivery_attempts.to_string(),
                            g.fifo.to_string(),
                            if g.broadcast {
                                "broadcast".into()
                            } else {
                                "clustering".into()
                            },
                            g.retry_backoff.join(","),
                            g.broker_groups.join(","),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "NAME",
                        "MAX ATTEMPTS",
                        "FIFO",
                        "MODE",
                        "RETRY BACKOFF",
                        "BROKER GROUPS",
                    ],
                    &rows,
                )
            };
            Ok(Output { ok: true, text })
        }
    }
}
