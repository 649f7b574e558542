//! Protocol conversions and small helpers: RocketMQ statuses, timestamps and durations,
//! stored messages as `v2::Message`, filters, one-item response streams.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use md5::{Digest as _, Md5};

use super::BoxStream;
use super::receive::Delivery;
use crate::acl::AclError;
use crate::broker::error::BrokerError;
use crate::filter::Filter;
use crate::proto::apache::rocketmq::v2;
use crate::protocol::route::status;
use crate::raft::consume;
use crate::storage::message::{MessageType, MessageView};

pub(super) fn ok() -> v2::Status {
    status(v2::Code::Ok, "OK")
}

/// The one mapping of broker errors onto RocketMQ status codes.
pub fn error_status(e: &BrokerError) -> v2::Status {
    let code = match e {
        BrokerError::BadRequest(_) | BrokerError::Config(_) => v2::Code::BadRequest,
        BrokerError::TopicNotFound(_) => v2::Code::TopicNotFound,
        BrokerError::Forbidden(..) => v2::Code::Forbidden,
        BrokerError::IllegalDeliveryTime(_) => v2::Code::IllegalDeliveryTime,
        BrokerError::Transaction(_) => v2::Code::InvalidTransactionId,
        BrokerError::NoLeader(_) | BrokerError::Forward { .. } | BrokerError::Raft(_) => {
            v2::Code::HaNotAvailable
        }
        BrokerError::Acl(a) => match a {
            AclError::Unauthenticated(_) => v2::Code::Unauthorized,
            AclError::Forbidden(_) => v2::Code::Forbidden,
            AclError::Invalid(_) | AclError::Conflict(_) => v2::Code::BadRequest,
            AclError::NotFound(_) => v2::Code::NotFound,
        },
        _ => v2::Code::InternalServerError,
    };
    status(code, e.to_string())
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(super) fn ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub(super) fn ts_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds.saturating_mul(1000) + i64::from(t.nanos) / 1_000_000
}

pub(super) fn dur(d: &prost_types::Duration) -> Duration {
    Duration::from_secs(d.seconds.max(0) as u64) + Duration::from_nanos(d.nanos.max(0) as u64)
}

fn md5_hex(b: &[u8]) -> String {
    let d = Md5::digest(b);
    d.iter().map(|x| format!("{x:02X}")).collect()
}

/// The subscription filter of a receive: tag expressions (`*`, `a || b`) are checked on the
/// ConsumeQueue's tag hash before the message is read, SQL92 on its properties after.
pub(super) fn parse_filter(f: Option<&v2::FilterExpression>) -> Result<Filter, v2::Status> {
    let Some(f) = f else { return Ok(Filter::All) };
    let parsed = match v2::FilterType::try_from(f.r#type).unwrap_or(v2::FilterType::Unspecified) {
        v2::FilterType::Sql => Filter::parse_sql(&f.expression),
        _ => Filter::parse_tag(&f.expression),
    };
    parsed.map_err(|e| {
        status(
            v2::Code::IllegalFilterExpression,
            format!("bad filter expression `{}`: {e}", f.expression),
        )
    })
}

/// A stored message as the RocketMQ protocol carries it (no delivery fields): what a
/// check-back of a transaction sends, and the base of every delivered message.
pub(crate) fn to_v2_message(ns: &str, m: &MessageView, store_host: &str) -> v2::Message {
    let message_type = match m.msg_type {
        MessageType::Fifo => v2::MessageType::Fifo,
        MessageType::Delay => v2::MessageType::Delay,
        MessageType::TransactionHalf | MessageType::TransactionCommitted => {
            v2::MessageType::Transaction
        }
        MessageType::Normal => v2::MessageType::Normal,
    };
    let body: Bytes = m.body.clone();
    v2::Message {
        topic: Some(v2::Resource {
            resource_namespace: ns.to_string(),
            name: m.topic.to_string(),
        }),
        user_properties: m
            .properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        system_properties: Some(v2::SystemProperties {
            tag: m.tag().map(str::to_string),
            keys: m.keys.iter().map(|k| k.to_string()).collect(),
            message_id: m.message_id.to_string(),
            body_digest: Some(v2::Digest {
                r#type: v2::DigestType::Md5 as i32,
                checksum: md5_hex(&body),
            }),
            body_encoding: v2::Encoding::Identity as i32,
            message_type: message_type as i32,
            born_timestamp: Some(ts(m.born_timestamp_ms)),
            born_host: m.born_host.to_string(),
            store_timestamp: Some(ts(m.store_timestamp_ms)),
            store_host: store_host.to_string(),
            delivery_timestamp: m.delivery_timestamp_ms().map(ts),
            queue_id: m.queue_id as i32,
            message_group: m.message_group().map(str::to_string),
            ..Default::default()
        }),
        body,
    }
}

pub(super) fn delivered(
    ns: &str,
    d: &Delivery,
    store_host: &str,
    invisible: Duration,
) -> v2::Message {
    let mut out = to_v2_message(ns, &d.msg, store_host);
    if let Some(sp) = out.system_properties.as_mut() {
        sp.receipt_handle = Some(consume::encode_handle(d.queue, d.offset, d.seq));
        sp.queue_id = d.queue as i32;
        sp.queue_offset = Some(d.offset as i64);
        sp.invisible_duration = Some(prost_types::Duration {
            seconds: invisible.as_secs() as i64,
            nanos: invisible.subsec_nanos() as i32,
        });
        sp.delivery_attempt = Some(d.attempt as i32);
    }
    out
}

pub(super) fn one<T: Send + 'static>(item: T) -> BoxStream<T> {
    Box::pin(futures::stream::iter([Ok(item)]))
}

pub(super) fn receive_status(st: v2::Status) -> v2::ReceiveMessageResponse {
    v2::ReceiveMessageResponse {
        content: Some(v2::receive_message_response::Content::Status(st)),
    }
}
