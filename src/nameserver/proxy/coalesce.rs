//! Group send of relayed `SendMessage` requests: the sends one client has in flight to one
//! broker group travel to the group as one `SendMessageRequest` per batch.
//!
//! Official clients send one message per request, and behind the proxy each request costs
//! two gRPC calls: the client's to the proxy and the proxy's to the group leader. The second
//! one need not be per message: a leader takes many messages in one request (and stores
//! each request's messages in order, answering one entry per message). On a loaded machine
//! the per-request HTTP/2 and gRPC work of that second hop is a large part of what the
//! proxy and the leader spend per message.
//!
//! As in the broker's own group commit (`crate::broker::batcher`), nothing waits for a
//! timer: a lone send is relayed at once, and batches grow only while up to
//! [`MAX_IN_FLIGHT`] earlier ones of the same (group, client) are in flight. Batches keep
//! each request's messages contiguous and in arrival order.
//!
//! Only sends whose relay is equivalent to relaying them one by one are grouped: same
//! broker group and same client (`x-mq-client-id`), no `authorization` header (a signed
//! request is relayed alone, as the broker checks each signature), only normal messages (no
//! FIFO message group, delay or transaction). A batch the group accepts as a whole is
//! split back into one answer per request; a batch it refuses (one bad message fails the
//! whole request) is relayed again request by request, so each gets its own answer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use super::{Inner, budget, is_ha, relay_metadata};
use crate::proto::apache::rocketmq::v2 as api;

/// Batches of one (group, client) relayed and not yet answered, at most.
pub(super) const MAX_IN_FLIGHT: usize = 4;
/// Most messages in one batch.
pub(super) const MAX_BATCH_MESSAGES: usize = 256;
/// Most body bytes in one batch (a larger single request still goes alone).
pub(super) const MAX_BATCH_BYTES: usize = 1 << 20;

type Answer = Result<api::SendMessageResponse, api::Status>;

/// What sends are grouped by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    group: String,
    client: String,
}

struct Waiter {
    md: MetadataMap,
    body: api::SendMessageRequest,
    deadline: Instant,
    reply: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    /// Relay tasks running for this key (each sends one batch at a time).
    running: usize,
}

/// The queues of every (group, client) with sends waiting or in flight.
#[derive(Default)]
pub(super) struct Coalescer {
    queues: std::sync::Mutex<HashMap<Key, Queue>>,
}

/// The key of a send that may share a batch, or `None` to relay it alone.
pub(super) fn key(group: &str, md: &MetadataMap, body: &api::SendMessageRequest) -> Option<Key> {
    if md.get("authorization").is_some() || body.messages.is_empty() {
        return None;
    }
    let normal = body.messages.iter().all(|m| {
        m.system_properties.as_ref().is_none_or(|p| {
            p.message_group.is_none()
                && p.delivery_timestamp.is_none()
                && (p.message_type == api::MessageType::Normal as i32
                    || p.message_type == api::MessageType::Unspecified as i32)
        })
    });
    if !normal {
        return None;
    }
    let client = md
        .get("x-mq-client-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    Some(Key {
        group: group.to_string(),
        client: client.to_string(),
    })
}

fn body_bytes(b: &api::SendMessageRequest) -> usize {
    b.messages.iter().map(|m| m.body.len()).sum()
}

impl Inner {
    /// Relay `body` with the other sends of `key`; answers as [`Inner::unary`] would.
    pub(super) async fn coalesced_send(
        self: &Arc<Self>,
        key: Key,
        md: MetadataMap,
        body: api::SendMessageRequest,
    ) -> Answer {
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + budget(&md, Duration::ZERO);
        let start = {
            let mut qs = self
                .coalescer
                .queues
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let q = qs.entry(key.clone()).or_default();
            q.waiting.push_back(Waiter {
                md,
                body,
                deadline,
                reply: tx,
            });
            let start = q.running < MAX_IN_FLIGHT;
            if start {
                q.running += 1;
            }
            start
        };
        if start {
            // A task of its own: the batch must go on if this caller goes away.
            let inner = Arc::clone(self);
            tokio::spawn(async move { inner.relay_batches(key).await });
        }
        rx.await.unwrap_or_else(|_| {
            Err(crate::protocol::route::status(
                api::Code::InternalServerError,
                "the proxy dropped the send",
            ))
        })
    }

    /// Relay the batches of `key` one after the other until its queue is empty.
    async fn relay_batches(self: Arc<Self>, key: Key) {
        loop {
            let batch = {
                let mut qs = self
                    .coalescer
                    .queues
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let Some(q) = qs.get_mut(&key) else { return };
                let batch = take_batch(&mut q.waiting);
                if batch.is_empty() {
                    q.running -= 1;
                    if q.running == 0 {
                        qs.remove(&key);
                    }
                    return;
                }
                batch
            };
            self.relay_batch(&key.group, batch).await;
        }
    }

    async fn relay_batch(&self, group: &str, mut batch: Vec<Waiter>) {
        if batch.len() == 1
            && let Some(w) = batch.pop()
        {
            let r = self.send_alone(group, &w.md, w.deadline, w.body).await;
            let _ = w.reply.send(r);
            return;
        }
        let deadline = batch
            .iter()
            .map(|w| w.deadline)
            .min()
            .unwrap_or_else(Instant::now);
        let counts: Vec<usize> = batch.iter().map(|w| w.body.messages.len()).collect();
        let merged = api::SendMessageRequest {
            messages: batch
                .iter()
                .flat_map(|w| w.body.messages.iter().cloned())
                .collect(),
        };
        let total = merged.messages.len();
        tracing::debug!(
            group,
            requests = batch.len(),
            messages = total,
            "relaying a batch"
        );
        let relay = relay_metadata(&batch[0].md);
        let r = self
            .unary_until(
                group,
                &relay,
                deadline,
                merged,
                Duration::ZERO,
                |mut c, r| async move { c.send_message(r).await },
                |r: &api::SendMessageResponse| is_ha(r.status.as_ref()),
            )
            .await;
        match r {
            Ok(resp) if accepted(&resp, total) => {
                let mut entries = resp.entries.into_iter();
                for (w, n) in batch.into_iter().zip(counts) {
                    let _ = w.reply.send(Ok(api::SendMessageResponse {
                        status: resp.status.clone(),
                        entries: entries.by_ref().take(n).collect(),
                    }));
                }
            }
            // No member answered within the batch's deadline, the earliest of its requests'.
            // Requests with time left try again by themselves, as they would have.
            Err(st) => {
                let now = Instant::now();
                let again = batch.into_iter().map(|w| {
                    let st = st.clone();
                    async move {
                        let r = if w.deadline > now {
                            self.send_alone(group, &w.md, w.deadline, w.body).await
                        } else {
                            Err(st)
                        };
                        let _ = w.reply.send(r);
                    }
                });
                futures::future::join_all(again).await;
            }
            // Refused as a whole: every request gets its own answer.
            Ok(resp) => {
                tracing::debug!(group, status = ?resp.status, "batch refused: relaying its requests one by one");
                let alone = batch.into_iter().map(|w| async move {
                    let r = self.send_alone(group, &w.md, w.deadline, w.body).await;
                    let _ = w.reply.send(r);
                });
                futures::future::join_all(alone).await;
            }
        }
    }

    /// One request relayed by itself, as without grouping.
    async fn send_alone(
        &self,
        group: &str,
        md: &MetadataMap,
        deadline: Instant,
        body: api::SendMessageRequest,
    ) -> Answer {
        self.unary_until(
            group,
            &relay_metadata(md),
            deadline,
            body,
            Duration::ZERO,
            |mut c, r| async move { c.send_message(r).await },
            |r: &api::SendMessageResponse| is_ha(r.status.as_ref()),
        )
        .await
    }
}

/// Whether a batch's answer is a success for each of its `total` messages.
fn accepted(r: &api::SendMessageResponse, total: usize) -> bool {
    let ok = |s: Option<&api::Status>| s.is_some_and(|s| s.code == api::Code::Ok as i32);
    ok(r.status.as_ref())
        && r.entries.len() == total
        && r.entries.iter().all(|e| ok(e.status.as_ref()))
}

/// The longest prefix of `waiting` within the batch bounds (at least one request).
fn take_batch(waiting: &mut VecDeque<Waiter>) -> Vec<Waiter> {
    let mut batch = Vec::new();
    let (mut msgs, mut bytes) = (0, 0);
    while let Some(w) = waiting.front() {
        let (n, b) = (w.body.messages.len(), body_bytes(&w.body));
        if !batch.is_empty() && (msgs + n > MAX_BATCH_MESSAGES || bytes + b > MAX_BATCH_BYTES) {
            break;
        }
        msgs += n;
        bytes += b;
        batch.extend(waiting.pop_front());
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(group: Option<&str>, ty: api::MessageType, body: usize) -> api::Message {
        api::Message {
            topic: Some(api::Resource {
                resource_namespace: String::new(),
                name: "T".into(),
            }),
            user_properties: Default::default(),
            system_properties: Some(api::SystemProperties {
                message_id: "m".into(),
                message_group: group.map(str::to_string),
                message_type: ty as i32,
                ..Default::default()
            }),
            body: vec![0u8; body].into(),
        }
    }

    fn req(m: api::Message) -> api::SendMessageRequest {
        api::SendMessageRequest { messages: vec![m] }
    }

    #[test]
    fn only_plain_unsigned_normal_sends_are_grouped() {
        let mut md = MetadataMap::new();
        md.insert("x-mq-client-id", "c1".parse().unwrap());
        let normal = req(msg(None, api::MessageType::Normal, 8));
        let k = key("g1", &md, &normal).expect("normal send is grouped");
        assert_eq!(
            k,
            Key {
                group: "g1".into(),
                client: "c1".into()
            }
        );
        assert!(key("g1", &md, &req(msg(None, api::MessageType::Unspecified, 8))).is_some());
        assert!(key("g1", &md, &req(msg(Some("a"), api::MessageType::Fifo, 8))).is_none());
        assert!(key("g1", &md, &req(msg(None, api::MessageType::Transaction, 8))).is_none());
        assert!(key("g1", &md, &req(msg(None, api::MessageType::Delay, 8))).is_none());
        assert!(key("g1", &md, &api::SendMessageRequest { messages: vec![] }).is_none());
        let mut signed = md.clone();
        signed.insert("authorization", "MQv2-HMAC-SHA1 x".parse().unwrap());
        assert!(key("g1", &signed, &normal).is_none());
    }

    #[test]
    fn batches_are_bounded_prefixes() {
        let mut q = VecDeque::new();
        for n in [100, 100, 100] {
            let (tx, _rx) = oneshot::channel();
            q.push_back(Waiter {
                md: MetadataMap::new(),
                body: api::SendMessageRequest {
                    messages: (0..n)
                        .map(|_| msg(None, api::MessageType::Normal, 8))
                        .collect(),
                },
                deadline: Instant::now(),
                reply: tx,
            });
        }
        assert_eq!(take_batch(&mut q).len(), 2, "200 messages fit, 300 do not");
        assert_eq!(take_batch(&mut q).len(), 1);
        assert!(take_batch(&mut q).is_empty());
        // A single request larger than the bounds still goes, alone.
        let (tx, _rx) = oneshot::channel();
        q.push_back(Waiter {
            md: MetadataMap::new(),
            body: req(msg(None, api::MessageType::Normal, MAX_BATCH_BYTES + 1)),
            deadline: Instant::now(),
            reply: tx,
        });
        let (tx, _rx2) = oneshot::channel();
        q.push_back(Waiter {
            md: MetadataMap::new(),
            body: req(msg(None, api::MessageType::Normal, 8)),
            deadline: Instant::now(),
            reply: tx,
        });
        assert_eq!(take_batch(&mut q).len(), 1);
        assert_eq!(take_batch(&mut q).len(), 1);
    }

    #[test]
    fn a_batch_is_accepted_only_if_every_message_is() {
        let ok = || Some(crate::protocol::route::status(api::Code::Ok, "OK"));
        let entry = |s| api::SendResultEntry {
            status: s,
            ..Default::default()
        };
        let r = api::SendMessageResponse {
            status: ok(),
            entries: vec![entry(ok()), entry(ok())],
        };
        assert!(accepted(&r, 2));
        assert!(!accepted(&r, 3));
        let mut bad = r.clone();
        bad.entries[1].status = Some(crate::protocol::route::status(api::Code::Forbidden, "no"));
        assert!(!accepted(&bad, 2));
        let refused = api::SendMessageResponse {
            status: Some(crate::protocol::route::status(
                api::Code::TopicNotFound,
                "no",
            )),
            entries: vec![],
        };
        assert!(!accepted(&refused, 2));
    }
}
