//! The JSON output shapes of `raftmq admin` and their human-readable tables.

use std::collections::BTreeMap;

use serde::Serialize;

use super::AdminError;
use crate::proto::raftmq::admin as apb;

/// One message in `message get` / `message trace` output.
#[derive(Debug, Clone, Serialize)]
pub struct MessageOut {
    /// Broker group holding it.
    pub broker_group: String,
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: u32,
    /// Queue offset; -1 while in no queue.
    pub queue_offset: i64,
    /// Message id.
    pub message_id: String,
    /// Message type.
    pub message_type: String,
    /// Tag (empty = none).
    pub tag: String,
    /// Keys.
    pub keys: Vec<String>,
    /// User properties.
    pub properties: BTreeMap<String, String>,
    /// Body, base64.
    pub body_base64: String,
    /// Body as UTF-8 if it is valid UTF-8.
    pub body_utf8: Option<String>,
    /// Producer time, ms.
    pub born_timestamp_ms: i64,
    /// Store time, ms.
    pub store_timestamp_ms: i64,
    /// Delivery time of a delay message, ms (0 = none).
    pub delivery_timestamp_ms: i64,
    /// Message group (empty = none).
    pub message_group: String,
    /// Producer host.
    pub born_host: String,
    /// CommitLog position.
    pub commitlog_position: u64,
}

impl MessageOut {
    pub(super) fn new(broker_group: &str, m: apb::StoredMessage) -> Self {
        use base64::Engine as _;
        MessageOut {
            broker_group: broker_group.to_string(),
            topic: m.topic,
            queue_id: m.queue_id,
            queue_offset: m.queue_offset,
            message_id: m.message_id,
            message_type: m.message_type,
            tag: m.tag,
            keys: m.keys,
            properties: m.properties.into_iter().collect(),
            body_base64: base64::engine::general_purpose::STANDARD.encode(&m.body),
            body_utf8: String::from_utf8(m.body.to_vec()).ok(),
            born_timestamp_ms: m.born_timestamp_ms,
            store_timestamp_ms: m.store_timestamp_ms,
            delivery_timestamp_ms: m.delivery_timestamp_ms,
            message_group: m.message_group,
            born_host: m.born_host,
            commitlog_position: m.commitlog_position,
        }
    }
}

/// Output of `message get`.
#[derive(Debug, Clone, Serialize)]
pub struct MessagesOut {
    /// Messages found, per broker group newest first.
    pub messages: Vec<MessageOut>,
}

/// Output of `message trace`.
#[derive(Debug, Clone, Serialize)]
pub struct TraceOut {
    /// The message.
    pub message: MessageOut,
    /// Raft entry that stored it, its term and the leader that wrote it.
    pub stored: StoredAt,
    /// Node that answered.
    pub answered_by: u64,
    /// Per consumer group (group@client for broadcasting consumers).
    pub groups: Vec<GroupTraceOut>,
    /// Last log index scanned.
    pub scanned_to_index: u64,
}

/// Where a message was stored.
#[derive(Debug, Clone, Serialize)]
pub struct StoredAt {
    /// Raft index.
    pub raft_index: u64,
    /// Term.
    pub term: u64,
    /// Leader node that appended it.
    pub leader_node: u64,
}

/// One group's history of a message.
#[derive(Debug, Clone, Serialize)]
pub struct GroupTraceOut {
    /// Group.
    pub group: String,
    /// Deliveries, in order.
    pub deliveries: Vec<DeliveryOut>,
    /// Acked.
    pub acked: bool,
}

/// One delivery.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryOut {
    /// Attempt (1 = first).
    pub attempt: u32,
    /// When (ms).
    pub at_ms: i64,
    /// Invisible until (ms).
    pub invisible_until_ms: i64,
}

/// Output of `group create|update|delete`.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerGroupWrite {
    /// Consumer group name.
    pub name: String,
    /// Every broker group succeeded.
    pub ok: bool,
    /// Per broker group.
    pub groups: Vec<GroupWrite>,
}

/// Output of `group list`.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerGroupList {
    /// Consumer groups: name, max delivery attempts, fifo, and the broker groups holding it.
    pub consumer_groups: Vec<ConsumerGroupOut>,
}

/// One consumer group in `group list`.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerGroupOut {
    /// Name.
    pub name: String,
    /// Max delivery attempts.
    pub max_delivery_attempts: u32,
    /// Orderly consumption.
    pub fifo: bool,
    /// Broadcasting consumption.
    pub broadcast: bool,
    /// Redelivery delays, e.g. `["1s", "5s"]`.
    pub retry_backoff: Vec<String>,
    /// Broker groups that have it.
    pub broker_groups: Vec<String>,
}

/// `1500` → `1500ms`, `5000` → `5s`, `120000` → `2m`, `7200000` → `2h`.
pub(super) fn human_ms(ms: u64) -> String {
    match ms {
        m if m % 3_600_000 == 0 && m > 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 && m > 0 => format!("{}m", m / 60_000),
        m if m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

// ---------------------------------------------------------------------------------------------
// JSON shapes (field names are part of the interface; see the module docs).

/// One group's outcome of a topic write.
#[derive(Debug, Clone, Serialize)]
pub struct GroupWrite {
    /// Group name.
    pub group: String,
    /// The write succeeded (or, for delete, the group did not have the topic).
    pub ok: bool,
    /// Delete only: the group had the topic and deleted it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
    /// The node that took the request.
    pub via: Option<String>,
    /// Raft index of the write.
    pub raft_index: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The group answered NOT_FOUND (the topic does not exist there).
    #[serde(skip)]
    pub(super) not_found: bool,
}

/// Result of `topic create|update|delete`.
#[derive(Debug, Clone, Serialize)]
pub struct TopicWrite {
    /// Topic name.
    pub topic: String,
    /// Queues per group (create/update).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues: Option<u32>,
    /// Permission (create/update).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perm: Option<String>,
    /// Message type (create/update).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    /// Every group succeeded.
    pub ok: bool,
    /// The nameservers (or the node, with `--broker`) show the change; null with `--no-wait`.
    pub routed: Option<bool>,
    /// Per group.
    pub groups: Vec<GroupWrite>,
}

/// A topic in one group.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TopicInGroup {
    /// Group name.
    pub group: String,
    /// Queues in this group.
    pub queues: u32,
    /// Permission.
    pub perm: String,
    /// Message type.
    pub message_type: String,
}

/// One line of `topic list`.
#[derive(Debug, Clone, Serialize)]
pub struct TopicSummary {
    /// Topic name.
    pub name: String,
    /// Queues over all groups.
    pub queues: u32,
    /// Permission (of the first group).
    pub perm: String,
    /// Message type (of the first group).
    pub message_type: String,
    /// Per group.
    pub groups: Vec<TopicInGroup>,
}

/// `topic list`.
#[derive(Debug, Clone, Serialize)]
pub struct TopicList {
    /// By name.
    pub topics: Vec<TopicSummary>,
}

/// One group's part of a route.
#[derive(Debug, Clone, Serialize)]
pub struct RouteGroup {
    /// Group name.
    pub group: String,
    /// Queues in this group.
    pub queues: u32,
    /// Permission.
    pub perm: String,
    /// Message type.
    pub message_type: String,
    /// Current leader.
    pub leader_id: Option<u64>,
    /// Its address.
    pub leader_addr: String,
    /// Highest term seen.
    pub term: u64,
    /// Live members, leader first.
    pub members: Vec<String>,
}

/// `topic route`.
#[derive(Debug, Clone, Serialize)]
pub struct TopicRouteOut {
    /// Topic name.
    pub topic: String,
    /// Per group.
    pub groups: Vec<RouteGroup>,
}

/// One node in `cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterNode {
    /// Node id.
    pub node_id: u64,
    /// Advertised address.
    pub addr: String,
    /// Raft role.
    pub role: String,
    /// Raft term.
    pub term: u64,
    /// The leader it knows.
    pub leader_id: Option<u64>,
    /// Committed index.
    pub committed: Option<u64>,
    /// Applied index.
    pub applied: Option<u64>,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Leader's last log index − this node's applied index.
    pub lag: Option<u64>,
    /// raftmq version.
    pub version: String,
    /// Age of the nameserver's report.
    pub age_ms: Option<u64>,
    /// It answered `Admin/Status` now.
    pub reachable: bool,
}

/// One group in `cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterGroup {
    /// Group name.
    pub group: String,
    /// Highest term.
    pub term: u64,
    /// Current leader.
    pub leader_id: Option<u64>,
    /// Its address.
    pub leader_addr: String,
    /// By node id.
    pub nodes: Vec<ClusterNode>,
}

/// `cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterOut {
    /// By group name.
    pub groups: Vec<ClusterGroup>,
}

pub(super) fn render<T: Serialize>(
    json: bool,
    v: &T,
    table: fn(&T) -> String,
) -> Result<String, AdminError> {
    if json {
        Ok(format!("{}\n", serde_json::to_string_pretty(v)?))
    } else {
        Ok(table(v))
    }
}

// ---------------------------------------------------------------------------------------------
// Tables.

pub(super) fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.len());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

pub(super) fn write_table(w: &TopicWrite) -> String {
    let rows: Vec<Vec<String>> = w
        .groups
        .iter()
        .map(|g| {
            let result = match (g.ok, g.deleted) {
                (true, Some(false)) => "absent".to_string(),
                (true, _) => "ok".to_string(),
                (false, _) => format!("FAILED: {}", g.error.clone().unwrap_or_default()),
            };
            vec![
                g.group.clone(),
                result,
                g.via.clone().unwrap_or_else(|| "-".into()),
                opt(g.raft_index),
            ]
        })
        .collect();
    let mut out = table(&["GROUP", "RESULT", "VIA", "RAFT INDEX"], &rows);
    let what = match (&w.queues, &w.message_type, &w.perm) {
        (Some(q), Some(t), Some(p)) => format!("{q} queues per group, {t}, {p}"),
        _ => "deleted".to_string(),
    };
    let routed = match w.routed {
        Some(true) => "; routes updated",
        Some(false) => "; routes NOT yet updated",
        None => "",
    };
    out.push_str(&format!(
        "topic {}: {what}{routed}{}\n",
        w.topic,
        if w.ok { "" } else { " (some groups FAILED)" }
    ));
    out
}

pub(super) fn list_table(l: &TopicList) -> String {
    let rows: Vec<Vec<String>> = l
        .topics
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.message_type.clone(),
                t.perm.clone(),
                t.queues.to_string(),
                t.groups
                    .iter()
                    .map(|g| format!("{}({})", g.group, g.queues))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    table(&["TOPIC", "TYPE", "PERM", "QUEUES", "GROUPS"], &rows)
}

pub(super) fn route_table(r: &TopicRouteOut) -> String {
    let rows: Vec<Vec<String>> = r
        .groups
        .iter()
        .map(|g| {
            vec![
                g.group.clone(),
                g.queues.to_string(),
                g.perm.clone(),
                g.message_type.clone(),
                match g.leader_id {
                    Some(id) => format!("{id}@{}", g.leader_addr),
                    None => "-".into(),
                },
                g.term.to_string(),
                g.members.join(","),
            ]
        })
        .collect();
    let mut out = format!("topic {}\n", r.topic);
    out.push_str(&table(
        &[
            "GROUP", "QUEUES", "PERM", "TYPE", "LEADER", "TERM", "MEMBERS",
        ],
        &rows,
    ));
    out
}

pub(super) fn cluster_table(c: &ClusterOut) -> String {
    let mut rows = Vec::new();
    for g in &c.groups {
        for n in &g.nodes {
            rows.push(vec![
                g.group.clone(),
                n.node_id.to_string(),
                n.addr.clone(),
                if n.reachable {
                    n.role.clone()
                } else {
                    format!("{}?", n.role)
                },
                n.term.to_string(),
                opt(n.leader_id),
                opt(n.committed),
                opt(n.applied),
                opt(n.lag),
                n.version.clone(),
                n.age_ms.map_or_else(|| "-".into(), |a| format!("{a}ms")),
            ]);
        }
    }
    let mut out = table(
        &[
            "GROUP",
            "NODE",
            "ADDRESS",
            "ROLE",
            "TERM",
            "LEADER",
            "COMMIT",
            "APPLIED",
            "LAG",
            "VERSION",
            "REPORT AGE",
        ],
        &rows,
    );
    if c.groups
        .iter()
        .any(|g| g.nodes.iter().any(|n| !n.reachable))
    {
        out.push_str("(`?`: node did not answer now; values from its last report)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns() {
        let t = table(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "".into()]],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz\n");
    }
}
