//! `raftmq admin message`: get and trace messages.

use super::client::Ctx;
use super::output::{
    DeliveryOut, GroupTraceOut, MessageOut, MessagesOut, StoredAt, TraceOut, render, table,
};
use super::{AdminError, MessageCmd, Output};
use crate::proto::raftmq::admin as apb;

pub(super) async fn message_cmd(
    ctx: &Ctx,
    cmd: MessageCmd,
    json: bool,
) -> Result<Output, AdminError> {
    let groups = ctx.groups().await?;
    match cmd {
        MessageCmd::Get {
            topic,
            id,
            key,
            max,
        } => {
            let req = apb::QueryMessageRequest {
                topic: topic.clone(),
                message_id: id.unwrap_or_default(),
                key: key.unwrap_or_default(),
                max,
            };
            let mut messages = Vec::new();
            let mut found_topic = false;
            for g in &groups {
                for addr in g.targets() {
                    let Ok(mut c) = ctx.admin(&addr) else {
                        continue;
                    };
                    match c.query_message(req.clone()).await {
                        Ok(r) => {
                            found_topic = true;
                            messages.extend(
                                r.into_inner()
                                    .messages
                                    .into_iter()
                                    .map(|m| MessageOut::new(&g.name, m)),
                            );
                            break;
                        }
                        // This group does not hold the topic.
                        Err(s) if s.code() == tonic::Code::NotFound => break,
                        Err(_) => continue,
                    }
                }
            }
            if !found_topic {
                return Err(AdminError::TopicNotFound(topic));
            }
            let out = MessagesOut { messages };
            // Finding nothing is an answer, not a failure (the JSON says `[]`).
            let ok = true;
            let text = render(json, &out, |o: &MessagesOut| {
                if o.messages.is_empty() {
                    return "no message found\n".to_string();
                }
                let rows: Vec<Vec<String>> = o
                    .messages
                    .iter()
                    .map(|m| {
                        vec![
                            m.broker_group.clone(),
                            m.queue_id.to_string(),
                            m.queue_offset.to_string(),
                            m.message_id.clone(),
                            m.tag.clone(),
                            m.keys.join(","),
                            m.body_utf8
                                .clone()
                                .map(|b| b.chars().take(40).collect())
                                .unwrap_or_else(|| {
                                    format!("<{} bytes>", m.body_base64.len() * 3 / 4)
                                }),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "GROUP",
                        "QUEUE",
                        "OFFSET",
                        "MESSAGE ID",
                        "TAG",
                        "KEYS",
                        "BODY",
                    ],
                    &rows,
                )
            })?;
            Ok(Output { ok, text })
        }
        MessageCmd::Trace { topic, id } => {
            let req = apb::QueryMessageRequest {
                topic: topic.clone(),
                message_id: id.clone(),
                key: String::new(),
                max: 8,
            };
            for g in &groups {
                for addr in g.targets() {
                    let Ok(mut c) = ctx.admin(&addr) else {
                        continue;
                    };
                    let Ok(r) = c.trace_message(req.clone()).await else {
                        continue;
                    };
                    let r = r.into_inner();
                    let Some(m) = r.message else { continue };
                    let out = TraceOut {
                        message: MessageOut::new(&g.name, m),
                        stored: StoredAt {
                            raft_index: r.raft_index,
                            term: r.term,
                            leader_node: r.leader_node,
                        },
                        answered_by: r.answered_by,
                        groups: r
                            .groups
                            .into_iter()
                            .map(|t| GroupTraceOut {
                                group: t.group,
                                deliveries: t
                                    .deliveries
                                    .into_iter()
                                    .map(|d| DeliveryOut {
                                        attempt: d.attempt,
                                        at_ms: d.at_ms,
                                        invisible_until_ms: d.invisible_until_ms,
                                    })
                                    .collect(),
                                acked: t.acked,
                            })
                            .collect(),
                        scanned_to_index: r.scanned_to_index,
                    };
                    let text = render(json, &out, |o: &TraceOut| {
                        let mut s = format!(
                            "message {} in {}:{} offset {} stored at raft index {} (term {}, leader node {})\n",
                            o.message.message_id,
                            o.message.topic,
                            o.message.queue_id,
                            o.message.queue_offset,
                            o.stored.raft_index,
                            o.stored.term,
                            o.stored.leader_node
                        );
                        let rows: Vec<Vec<String>> = o
                            .groups
                            .iter()
                            .map(|g| {
                                vec![
                                    g.group.clone(),
                                    g.deliveries.len().to_string(),
                                    g.deliveries
                                        .iter()
                                        .map(|d| d.attempt.to_string())
                                        .collect::<Vec<_>>()
                                        .join(","),
                                    g.acked.to_string(),
                                ]
                            })
                            .collect();
                        s.push_str(&table(&["GROUP", "DELIVERIES", "ATTEMPTS", "ACKED"], &rows));
                        s
                    })?;
                    return Ok(Output { ok: true, text });
                }
            }
            Err(AdminError::Usage(format!(
                "message {id} not found in topic `{topic}`"
            )))
        }
    }
}
