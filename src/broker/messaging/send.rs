//! Producing: SendMessage (served by the leader, forwarded or waited for otherwise), its
//! validation and Raft write, and EndTransaction.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::MessagingSvc;
use super::convert::{error_status, ok, ts_ms};
use super::forward::{
    FORWARD_SLACK, FORWARDED, LEADER_POLL, leader_wait_budget, unless_leader_changes,
};
use crate::broker::node::Node;
use crate::broker::ops::Route;
use crate::proto::apache::rocketmq::v2;
use crate::proto::apache::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use crate::proto::raftmq::admin as pb;
use crate::protocol::route::{self, status};
use crate::protocol::settings;

/// Largest message body accepted (advertised to clients in the Settings reply).
pub const MAX_BODY_SIZE: usize = settings::MAX_BODY_SIZE as usize;

impl MessagingSvc {
    /// The SendMessage RPC (`MessagingService::send_message`).
    pub(super) async fn send(
        &self,
        req: Request<v2::SendMessageRequest>,
    ) -> Result<Response<v2::SendMessageResponse>, Status> {
        let node = self.node()?;
        let forwarded = req.metadata().get(FORWARDED).is_some();
        let client_id = Self::client_id(&req);
        let (meta, _, body) = req.into_parts();
        let msgs = body.messages;
        for m in &msgs {
            if let Some(t) = &m.topic {
                self.sessions.add_topic(&client_id, &t.name);
            }
        }
        // During an election a send waits for the new leader, within the client's deadline,
        // instead of failing at once: the client's own retries are few and fast.
        let deadline = tokio::time::Instant::now() + leader_wait_budget(&meta, Duration::ZERO);
        loop {
            let mut tried = None;
            let reply = match node.route() {
                Ok(Route::Local) => {
                    tried = Some(node.config.node_id);
                    self.send_local(&node, &msgs).await
                }
                Ok(Route::Leader(id, addr)) if !forwarded => {
                    tried = Some(id);
                    let mut c = self.leader_client(&addr)?;
                    let mut fwd = Request::new(v2::SendMessageRequest {
                        messages: msgs.clone(),
                    });
                    *fwd.metadata_mut() = Self::forward_metadata(&meta);
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    fwd.set_timeout(left + FORWARD_SLACK);
                    let until = deadline + FORWARD_SLACK;
                    let msg = match unless_leader_changes(&node, id, until, c.send_message(fwd))
                        .await
                    {
                        // Only the message: the leader's response headers must not be re-sent.
                        Some(Ok(r)) => Ok(r.into_inner()),
                        Some(Err(e)) => Err(format!("leader {addr}: {}", e.message())),
                        // Sent again to the new leader; a copy the old one stored after all
                        // is the same message id, stored once.
                        None => Err(format!("leader {addr} was replaced while it held the send")),
                    };
                    msg.unwrap_or_else(|e| v2::SendMessageResponse {
                        status: Some(status(v2::Code::HaNotAvailable, e)),
                        entries: vec![],
                    })
                }
                Ok(Route::Leader(..)) => v2::SendMessageResponse {
                    status: Some(status(
                        v2::Code::HaNotAvailable,
                        "leadership is changing; retry",
                    )),
                    entries: vec![],
                },
                Err(e) => v2::SendMessageResponse {
                    status: Some(error_status(&e)),
                    entries: vec![],
                },
            };
            let retry = reply
                .status
                .as_ref()
                .is_some_and(|s| s.code == v2::Code::HaNotAvailable as i32);
            if !retry || forwarded || tokio::time::Instant::now() >= deadline {
                crate::hops::mark(crate::hops::Hop::SendOut, 0);
                return Ok(Response::new(reply));
            }
            // Retry as soon as another leader is known, and at least every LEADER_POLL.
            let step = (tokio::time::Instant::now() + LEADER_POLL).min(deadline);
            node.wait_leader_change(tried, step).await;
        }
    }

    async fn send_local(&self, node: &Node, msgs: &[v2::Message]) -> v2::SendMessageResponse {
        let fail = |st: v2::Status, n: usize| v2::SendMessageResponse {
            status: Some(st.clone()),
            entries: (0..n)
                .map(|_| v2::SendResultEntry {
                    status: Some(st.clone()),
                    ..Default::default()
                })
                .collect(),
        };
        if msgs.is_empty() {
            return fail(status(v2::Code::BadRequest, "no message"), 0);
        }
        let n = msgs.len();
        let mut req = pb::ProduceRequest::default();
        let no_props = v2::SystemProperties::default();
        for m in msgs {
            let topic_name = m.topic.as_ref().map(|t| t.name.clone()).unwrap_or_default();
            let Some(topic) = node.sm.topic(&topic_name) else {
                return fail(
                    status(
                        v2::Code::TopicNotFound,
                        format!("topic `{topic_name}` does not exist"),
                    ),
                    n,
                );
            };
            if !topic.perm.writable() {
                return fail(
                    status(
                        v2::Code::Forbidden,
                        format!("topic `{topic_name}` is not writable"),
                    ),
                    n,
                );
            }
            let sp = m.system_properties.as_ref().unwrap_or(&no_props);
            if sp.message_id.is_empty() {
                return fail(
                    status(v2::Code::IllegalMessageId, "message id is required"),
                    n,
                );
            }
            if m.body.len() > MAX_BODY_SIZE {
                return fail(
                    status(
                        v2::Code::MessageBodyTooLarge,
                        format!("body of {} bytes exceeds {MAX_BODY_SIZE}", m.body.len()),
                    ),
                    n,
                );
            }
            let sent_type =
                v2::MessageType::try_from(sp.message_type).unwrap_or(v2::MessageType::Unspecified);
            let want = route::message_type(topic.message_type);
            let sent_type = if sent_type == v2::MessageType::Unspecified {
                if sp.message_group.is_some() {
                    v2::MessageType::Fifo
                } else {
                    v2::MessageType::Normal
                }
            } else {
                sent_type
            };
            if sent_type != want {
                return fail(
                    status(
                        v2::Code::MessagePropertyConflictWithType,
                        format!(
                            "topic `{topic_name}` accepts {} messages, not {}",
                            want.as_str_name(),
                            sent_type.as_str_name()
                        ),
                    ),
                    n,
                );
            }
            if want == v2::MessageType::Fifo && sp.message_group.as_deref().unwrap_or("").is_empty()
            {
                return fail(
                    status(
                        v2::Code::IllegalMessageGroup,
                        "FIFO messages need a message group",
                    ),
                    n,
                );
            }
            let delivery_timestamp_ms = match (want, sp.delivery_timestamp.as_ref()) {
                (v2::MessageType::Delay, Some(t)) => ts_ms(t).max(1),
                (v2::MessageType::Delay, None) => {
                    return fail(
                        status(
                            v2::Code::IllegalDeliveryTime,
                            "a DELAY message needs a delivery timestamp",
                        ),
                        n,
                    );
                }
                (_, Some(_)) => {
                    return fail(
                        status(
                            v2::Code::MessagePropertyConflictWithType,
                            format!(
                                "only DELAY messages carry a delivery timestamp, not {}",
                                want.as_str_name()
                            ),
                        ),
                        n,
                    );
                }
                (_, None) => 0,
            };
            let queue_id = if sp.queue_id >= 0
                && (sp.queue_id as u32) < topic.queues
                && want != v2::MessageType::Fifo
            {
                sp.queue_id
            } else {
                -1
            };
            req.messages.push(pb::ProduceMessage {
                topic: topic_name,
                queue_id,
                message_id: sp.message_id.clone(),
                tag: sp.tag.clone().unwrap_or_default(),
                keys: sp.keys.clone(),
                properties: m.user_properties.clone(),
                body: m.body.clone(),
                message_group: sp.message_group.clone().unwrap_or_default(),
                born_timestamp_ms: sp.born_timestamp.as_ref().map(ts_ms).unwrap_or(0),
                delivery_timestamp_ms,
                transaction: want == v2::MessageType::Transaction,
            });
        }
        let transactional: Vec<bool> = req.messages.iter().map(|m| m.transaction).collect();
        match node.produce(req).await {
            Ok(reply) => v2::SendMessageResponse {
                status: Some(ok()),
                entries: reply
                    .results
                    .into_iter()
                    .zip(&transactional)
                    .map(|(r, tx)| v2::SendResultEntry {
                        status: Some(ok()),
                        // The transaction is named by its message id (EndTransaction carries
                        // both; see `end_transaction`).
                        transaction_id: if *tx {
                            r.message_id.clone()
                        } else {
                            String::new()
                        },
                        message_id: r.message_id,
                        // A message still waiting (delay, half) has no queue offset yet.
                        offset: if r.pending { -1 } else { r.offset as i64 },
                        recall_handle: String::new(),
                    })
                    .collect(),
            },
            Err(e) => fail(error_status(&e), n),
        }
    }

    /// The EndTransaction RPC (`MessagingService::end_transaction`).
    pub(super) async fn resolve_transaction(
        &self,
        req: Request<v2::EndTransactionRequest>,
    ) -> Result<Response<v2::EndTransactionResponse>, Status> {
        let node = self.node()?;
        let reply = |st: v2::Status| {
            Ok(Response::new(v2::EndTransactionResponse {
                status: Some(st),
            }))
        };
        let forward =
            |mut c: MessagingServiceClient<Channel>, r| async move { c.end_transaction(r).await };
        let failed = |st| v2::EndTransactionResponse { status: Some(st) };
        let req = match self
            .here_or_leader(&node, req, Duration::ZERO, forward, failed)
            .await?
        {
            Ok(req) => req,
            Err(reply) => return Ok(reply),
        };
        let r = req.into_inner();
        let topic = r.topic.map(|t| t.name).unwrap_or_default();
        if r.message_id.is_empty() {
            return reply(status(v2::Code::IllegalMessageId, "message id is required"));
        }
        // The transaction id handed out by SendMessage is the message id.
        if !r.transaction_id.is_empty() && r.transaction_id != r.message_id {
            return reply(status(
                v2::Code::InvalidTransactionId,
                format!(
                    "transaction id `{}` does not belong to message {}",
                    r.transaction_id, r.message_id
                ),
            ));
        }
        let commit = match v2::TransactionResolution::try_from(r.resolution) {
            Ok(v2::TransactionResolution::Commit) => true,
            Ok(v2::TransactionResolution::Rollback) => false,
            _ => {
                return reply(status(
                    v2::Code::BadRequest,
                    "resolution must be COMMIT or ROLLBACK",
                ));
            }
        };
        match node.end_transaction(&topic, &r.message_id, commit).await {
            Ok(what) => reply(status(v2::Code::Ok, what)),
            Err(e) => reply(error_status(&e)),
        }
    }
}
