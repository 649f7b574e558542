//! `raftmq admin`: topics and cluster state, through the nameservers or one broker node.
//!
//! ```text
//! raftmq admin --nameservers HOST:PORT[,HOST:PORT] [--json] COMMAND
//! raftmq admin --broker HOST:PORT [--json] COMMAND
//!
//!   topic create NAME --queues N [--message-type normal|fifo|delay|transaction] [--perm rw|r|w]
//!   topic update NAME --queues N [--message-type ...] [--perm ...]
//!   topic list
//!   topic route NAME
//!   topic status NAME
//!   topic delete NAME
//!   group create|update NAME [--max-attempts N] [--fifo] [--broadcast] [--retry-backoff 1s,5s,..]
//!   group delete NAME
//!   group list
//!   group progress NAME --topic T
//!   raft transfer-leader --to ID [--group G]
//!   raft add-node --id ID --addr HOST:PORT [--voter] [--group G]
//!   raft remove-node --id ID [--group G]
//!   cluster
//! ```
//!
//! With `--nameservers` the groups come from every reachable nameserver (merged: per node the
//! freshest report). `topic create`/`update` write the topic to **every** group (N queues per
//! group, RocketMQ's per-broker convention) through `raftmq.admin.Admin/UpsertTopic`, sent to
//! the group's leader first and to its other members if that fails (a follower forwards to the
//! leader); `topic delete` deletes it from every group that has it. Both then wait (up to
//! `--timeout-ms`) until the nameservers' routes show the change, unless `--no-wait`. With
//! `--broker` the commands act on that node's group only. `cluster` shows the nameservers'
//! view of every node, refreshed by a live `Admin/Status` call to each node that answers.
//!
//! The exit status is non-zero if any group failed. Output is a table, or with `--json` one
//! JSON document whose field names are stable:
//!
//! * `topic create` / `topic update` / `topic delete`:
//!   `{"topic", "queues", "perm", "message_type", "ok", "routed",
//!     "groups": [{"group", "ok", "via", "raft_index", "error"}]}` (`queues`, `perm` and
//!   `message_type` are absent for delete; a delete's group entry also has `"deleted"`, false
//!   when the group did not have the topic; `routed` = the nameservers show the change, null
//!   with `--no-wait`);
//! * `topic list`: `{"topics": [{"name", "queues" (total), "perm", "message_type",
//!   "groups": [{"group", "queues", "perm", "message_type"}]}]}`;
//! * `topic route`: `{"topic", "groups": [{"group", "queues", "perm", "message_type",
//!   "leader_id", "leader_addr", "term", "members"}]}`;
//! * `cluster`: `{"groups": [{"group", "term", "leader_id", "leader_addr",
//!   "nodes": [{"node_id", "addr", "role", "term", "leader_id", "committed", "applied",
//!   "last_log_index", "lag", "version", "age_ms", "reachable"}]}]}` where
//!   `lag` = the leader's last log index − the node's applied index (null if unknown),
//!   `age_ms` = age of the nameserver's report (null with `--broker`), `reachable` = the node
//!   answered `Admin/Status` now (then the Raft fields are its live answer).
//!
//! * `topic status`: `{"topic", "groups": [{"group", "queues": [{"queue_id", "min_offset",
//!   "max_offset"}]}]}`;
//! * `group create|update|delete`: `{"name", "ok", "groups": [{"group", "ok", "via",
//!   "raft_index", "error"}]}`; `group list`: `{"consumer_groups": [{"name",
//!   "max_delivery_attempts", "fifo", "broker_groups"}]}`; `group progress`:
//!   `{"consumer_group", "topic", "broker_groups": [{"group", "queues": [{"queue_id",
//!   "min_offset", "max_offset", "consumer_offset", "next_offset", "inflight", "lag"}]}]}`
//!   (`consumer_offset` = everything below is acked; `lag` = `max_offset - consumer_offset`);
//! * `raft ...`: `{"group", "action", "ok", "via", "raft_index", "error"}`.
//!
//! Perm values are `rw`, `r`, `w`; message types `normal`, `fifo`, `delay`, `transaction`;
//! roles `leader`, `follower`, `candidate`, `learner`, `shutdown`. Missing numbers are null.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tonic::transport::Channel;

use crate::proto::raftmq::admin as apb;
use crate::proto::raftmq::admin::admin_client::AdminClient;
use crate::proto::raftmq::nameserver as npb;
use crate::proto::raftmq::nameserver::nameserver_client::NameserverClient;
use crate::raft::state_machine::{Perm, TopicMessageType};

/// Everything `raftmq admin` can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Bad flags.
    #[error("{0}")]
    Usage(String),
    /// No nameserver answered.
    #[error("no nameserver answered: {0}")]
    NoNameserver(String),
    /// The nameservers know no broker group.
    #[error("no broker group is registered with the nameservers")]
    NoGroups,
    /// The topic exists nowhere.
    #[error("topic `{0}` does not exist")]
    TopicNotFound(String),
    /// A node refused or failed a request.
    #[error("{addr}: {message}")]
    Rpc {
        /// The node or nameserver asked.
        addr: String,
        /// What it said.
        message: String,
    },
    /// Encoding the output failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Flags of `raftmq admin`.
#[derive(clap::Args, Debug, Clone)]
pub struct AdminArgs {
    /// Nameservers, `HOST:PORT[,HOST:PORT]`.
    #[arg(long, env = "RAFTMQ_NAMESERVERS", value_delimiter = ',')]
    pub nameservers: Vec<String>,
    /// Talk to this one broker node (`HOST:PORT`) instead of the nameservers: commands then
    /// act on its group only.
    #[arg(long)]
    pub broker: Option<String>,
    /// Print one JSON document (stable field names, see `raftmq::admin_cli`).
    #[arg(long, global = true)]
    pub json: bool,
    /// Deadline of the whole command, in milliseconds (retries included).
    #[arg(long, global = true, default_value_t = 15_000)]
    pub timeout_ms: u64,
    /// Return after the writes, without waiting for the nameservers to show the change.
    #[arg(long, global = true)]
    pub no_wait: bool,
    /// TLS (`--tls-ca`, `--tls-cert`, `--tls-key`).
    #[command(flatten)]
    pub tls: crate::cli_tls::TlsArgs,
    /// What to do.
    #[command(subcommand)]
    pub cmd: AdminCmd,
}

/// `raftmq admin` commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum AdminCmd {
    /// Create, update, list, route and delete topics.
    Topic {
        /// The topic command.
        #[command(subcommand)]
        cmd: TopicCmd,
    },
    /// Consumer groups: create, update, delete, list (written to every broker group).
    Group {
        /// The consumer-group command.
        #[command(subcommand)]
        cmd: GroupCmd,
    },
    /// Raft membership and leadership: transfer-leader, add-node, remove-node.
    Raft {
        /// The raft command.
        #[command(subcommand)]
        cmd: RaftCmd,
    },
    /// Every group's nodes: role, term, leader, commit/applied index, lag, version.
    Cluster,
    /// Messages: get by id or key, trace one message's deliveries and acks.
    Message {
        /// The message command.
        #[command(subcommand)]
        cmd: MessageCmd,
    },
}

/// `raftmq admin message` commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum MessageCmd {
    /// Stored messages of a topic by message id or by key (through the key index).
    Get {
        /// Topic.
        #[arg(long)]
        topic: String,
        /// Message id.
        #[arg(long, conflicts_with = "key", required_unless_present = "key")]
        id: Option<String>,
        /// Message key.
        #[arg(long)]
        key: Option<String>,
        /// At most this many messages per broker group.
        #[arg(long, default_value_t = 32)]
        max: u32,
    },
    /// Where a message was stored (Raft index, term, leader) and, per consumer group, each
    /// delivery attempt and whether it was acked.
    Trace {
        /// Topic.
        #[arg(long)]
        topic: String,
        /// Message id.
        #[arg(long)]
        id: String,
    },
}

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
    fn new(broker_group: &str, m: apb::StoredMessage) -> Self {
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

/// `raftmq admin group` commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum GroupCmd {
    /// Create a consumer group on every broker group.
    Create(GroupSpec),
    /// Change a consumer group on every broker group (creates it where missing).
    Update(GroupSpec),
    /// Delete a consumer group (configuration and delivery state) from every broker group.
    Delete {
        /// Consumer group name.
        name: String,
    },
    /// Every consumer group with its settings per broker group.
    List,
    /// A consumer group's progress on a topic: per queue broker offset, consumer offset, lag.
    Progress {
        /// Consumer group name.
        name: String,
        /// Topic.
        #[arg(long)]
        topic: String,
    },
}

/// `raftmq admin raft` commands (membership and leadership of a broker group).
#[derive(clap::Subcommand, Debug, Clone)]
pub enum RaftCmd {
    /// Move leadership of a group to node `--to`.
    TransferLeader {
        /// Target node id.
        #[arg(long)]
        to: u64,
        /// Broker group (needed when the nameservers know several).
        #[arg(long)]
        group: Option<String>,
    },
    /// Add a node as learner (it catches up, through a snapshot if needed); `--voter` then
    /// promotes it.
    AddNode {
        /// New node id.
        #[arg(long)]
        id: u64,
        /// Its address, HOST:PORT.
        #[arg(long)]
        addr: String,
        /// Promote it to voter once it has caught up.
        #[arg(long)]
        voter: bool,
        /// Broker group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Remove a node from the voters (and the group).
    RemoveNode {
        /// Node id.
        #[arg(long)]
        id: u64,
        /// Broker group.
        #[arg(long)]
        group: Option<String>,
    },
}

/// A consumer group's settings.
#[derive(clap::Args, Debug, Clone)]
pub struct GroupSpec {
    /// Consumer group name.
    pub name: String,
    /// Deliveries before a message goes to `%DLQ%<name>` (default 17).
    #[arg(long, default_value_t = 17)]
    pub max_attempts: u32,
    /// Orderly consumption: a queue's next message only after the previous one is acked.
    #[arg(long)]
    pub fifo: bool,
    /// Broadcasting: every consumer of the group gets every message (default: clustering,
    /// the consumers share the messages).
    #[arg(long)]
    pub broadcast: bool,
    /// Redelivery delays after failed consumptions, e.g. `1s,5s,10s` (attempt n waits the
    /// n-th; the last repeats). Default: 1s,5s,10s,30s,1m,2m,...,2h.
    #[arg(long)]
    pub retry_backoff: Option<String>,
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
fn human_ms(ms: u64) -> String {
    match ms {
        m if m % 3_600_000 == 0 && m > 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 && m > 0 => format!("{}m", m / 60_000),
        m if m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

/// `raftmq admin topic` commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum TopicCmd {
    /// Create a topic on every group (N queues per group).
    Create(TopicSpec),
    /// Change a topic on every group (creates it where missing).
    Update(TopicSpec),
    /// Every topic with its queues per group.
    List,
    /// Per group and queue: the oldest retained and the next offset.
    Status {
        /// Topic name.
        name: String,
    },
    /// A topic's route: per group, queues, leader and members.
    Route {
        /// Topic name.
        name: String,
    },
    /// Delete a topic from every group that has it.
    Delete {
        /// Topic name.
        name: String,
    },
}

/// A topic's settings.
#[derive(clap::Args, Debug, Clone)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Queues per group.
    #[arg(long)]
    pub queues: u32,
    /// `normal`, `fifo`, `delay` or `transaction`.
    #[arg(long, default_value = "normal", value_parser = parse_type)]
    pub message_type: String,
    /// `rw`, `r` or `w`.
    #[arg(long, default_value = "rw", value_parser = parse_perm)]
    pub perm: String,
}

fn parse_type(s: &str) -> Result<String, String> {
    s.parse::<TopicMessageType>().map(|t| t.to_string())
}

fn parse_perm(s: &str) -> Result<String, String> {
    s.parse::<Perm>().map(|p| p.to_string())
}

/// What a command printed and whether it fully succeeded.
#[derive(Debug, Clone)]
pub struct Output {
    /// The table or JSON document (ends with a newline).
    pub text: String,
    /// False if some group failed: exit non-zero.
    pub ok: bool,
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
    not_found: bool,
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

// ---------------------------------------------------------------------------------------------

fn admin_client(
    addr: &str,
    timeout: Duration,
    tls: Option<&crate::tls::TlsSettings>,
) -> Result<AdminClient<Channel>, AdminError> {
    let ep = crate::tls::endpoint(addr, tls)
        .map_err(|e| AdminError::Usage(format!("bad address `{addr}`: {e}")))?
        .connect_timeout(Duration::from_secs(2).min(timeout))
        .timeout(timeout);
    Ok(AdminClient::new(ep.connect_lazy()))
}

fn nameserver_client(
    addr: &str,
    timeout: Duration,
    tls: Option<&crate::tls::TlsSettings>,
) -> Result<NameserverClient<Channel>, AdminError> {
    let ep = crate::tls::endpoint(addr, tls)
        .map_err(|e| AdminError::Usage(format!("bad address `{addr}`: {e}")))?
        .connect_timeout(Duration::from_secs(2).min(timeout))
        .timeout(timeout);
    Ok(NameserverClient::new(ep.connect_lazy()))
}

fn rpc_err(addr: &str, s: &tonic::Status) -> AdminError {
    AdminError::Rpc {
        addr: addr.to_string(),
        message: format!("{:?}: {}", s.code(), s.message()),
    }
}

/// A group as the admin tool sees it.
#[derive(Debug, Clone)]
struct Group {
    name: String,
    term: u64,
    leader_id: Option<u64>,
    leader_addr: String,
    /// Node id → (report, age).
    nodes: BTreeMap<u64, (npb::NodeReport, Option<u64>)>,
}

impl Group {
    /// Addresses to send a write to: leader first, then the other members.
    fn targets(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.leader_addr.is_empty() {
            out.push(self.leader_addr.clone());
        }
        for (r, _) in self.nodes.values() {
            if !out.contains(&r.addr) {
                out.push(r.addr.clone());
            }
        }
        out
    }
}

struct Ctx {
    args: AdminArgs,
    deadline: Instant,
    tls: Option<crate::tls::TlsSettings>,
}

impl Ctx {
    fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100))
    }

    /// Per-call timeout.
    fn call_timeout(&self) -> Duration {
        self.remaining().min(Duration::from_secs(5))
    }

    fn nameservers(&self) -> Vec<String> {
        self.args
            .nameservers
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Ask every nameserver concurrently; the answers of those that answered, or an error
    /// naming every failure if none did.
    async fn ask_all<T, F, Fut>(&self, f: F) -> Result<Vec<T>, AdminError>
    where
        F: Fn(NameserverClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let list = self.nameservers();
        if list.is_empty() {
            return Err(AdminError::Usage(
                "give --nameservers HOST:PORT[,HOST:PORT] or --broker HOST:PORT".into(),
            ));
        }
        let timeout = self.call_timeout();
        let calls = list.iter().map(|a| {
            let client = nameserver_client(a, timeout, self.tls.as_ref());
            let f = &f;
            async move {
                let c = client?;
                f(c).await
                    .map(|r| r.into_inner())
                    .map_err(|s| rpc_err(a, &s))
            }
        });
        let results = futures::future::join_all(calls).await;
        let mut ok = Vec::new();
        let mut errs = Vec::new();
        for r in results {
            match r {
                Ok(v) => ok.push(v),
                Err(e) => errs.push(e.to_string()),
            }
        }
        if ok.is_empty() {
            return Err(AdminError::NoNameserver(errs.join("; ")));
        }
        Ok(ok)
    }

    /// Groups known to the nameservers, merged (per node the freshest report).
    async fn groups(&self) -> Result<Vec<Group>, AdminError> {
        if let Some(b) = &self.args.broker {
            return Ok(vec![self.broker_group(b).await?]);
        }
        let replies = self
            .ask_all(|mut c| async move { c.list_groups(npb::ListGroupsRequest {}).await })
            .await?;
        let mut out: BTreeMap<String, Group> = BTreeMap::new();
        for reply in replies {
            for g in reply.groups {
                let e = out.entry(g.group.clone()).or_insert_with(|| Group {
                    name: g.group.clone(),
                    term: 0,
                    leader_id: None,
                    leader_addr: String::new(),
                    nodes: BTreeMap::new(),
                });
                if g.term > e.term || (g.term == e.term && e.leader_id.is_none()) {
                    e.term = g.term;
                    if g.leader_id.is_some() {
                        e.leader_id = g.leader_id;
                        e.leader_addr = g.leader_addr.clone();
                    }
                }
                for n in g.nodes {
                    let Some(r) = n.report else { continue };
                    let fresher = e
                        .nodes
                        .get(&r.node_id)
                        .is_none_or(|(_, age)| age.is_none_or(|a| n.age_ms < a));
                    if fresher {
                        e.nodes.insert(r.node_id, (r, Some(n.age_ms)));
                    }
                }
            }
        }
        Ok(out.into_values().collect())
    }

    async fn status(&self, addr: &str) -> Result<apb::NodeStatus, AdminError> {
        let mut c = admin_client(
            addr,
            self.call_timeout().min(Duration::from_secs(2)),
            self.tls.as_ref(),
        )?;
        c.status(apb::StatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| rpc_err(addr, &s))
    }

    /// `--broker`: the node's group as the node itself sees it.
    async fn broker_group(&self, addr: &str) -> Result<Group, AdminError> {
        let st = self.status(addr).await?;
        let mut nodes = BTreeMap::new();
        nodes.insert(st.node_id, (status_report(&st, addr), None));
        if let Some(l) = st.leader_id
            && l != st.node_id
            && !st.leader_addr.is_empty()
            && let Ok(ls) = self.status(&st.leader_addr).await
        {
            nodes.insert(ls.node_id, (status_report(&ls, &st.leader_addr), None));
        }
        Ok(Group {
            name: st.group.clone(),
            term: st.term,
            leader_id: st.leader_id,
            leader_addr: st.leader_addr.clone(),
            nodes,
        })
    }

    /// Topics per group, from the nameservers' routes or the `--broker` node.
    async fn topics(&self) -> Result<BTreeMap<String, Vec<RouteGroup>>, AdminError> {
        let mut out: BTreeMap<String, BTreeMap<String, RouteGroup>> = BTreeMap::new();
        if let Some(b) = &self.args.broker {
            let g = self.broker_group(b).await?;
            let mut c = admin_client(b, self.call_timeout(), self.tls.as_ref())?;
            let topics = c
                .list_topics(apb::ListTopicsRequest {})
                .await
                .map_err(|s| rpc_err(b, &s))?
                .into_inner()
                .topics;
            let members = g.targets();
            for t in topics {
                out.entry(t.name.clone()).or_default().insert(
                    g.name.clone(),
                    RouteGroup {
                        group: g.name.clone(),
                        queues: t.queues,
                        perm: t.perm,
                        message_type: t.message_type,
                        leader_id: g.leader_id,
                        leader_addr: g.leader_addr.clone(),
                        term: g.term,
                        members: members.clone(),
                    },
                );
            }
        } else {
            let replies = self
                .ask_all(|mut c| async move {
                    c.get_routes(npb::GetRoutesRequest { topics: Vec::new() })
                        .await
                })
                .await?;
            for reply in replies {
                for r in reply.routes {
                    let e = out.entry(r.topic.clone()).or_default();
                    for g in r.groups {
                        let newer = e.get(&g.group).is_none_or(|old| g.term > old.term);
                        if newer {
                            e.insert(
                                g.group.clone(),
                                RouteGroup {
                                    group: g.group,
                                    queues: g.queues,
                                    perm: g.perm,
                                    message_type: g.message_type,
                                    leader_id: g.leader_id,
                                    leader_addr: g.leader_addr,
                                    term: g.term,
                                    members: g.members,
                                },
                            );
                        }
                    }
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|(t, gs)| (t, gs.into_values().collect()))
            .collect())
    }

    /// Send a write to a group: leader first, then the others, retrying while the group
    /// has no leader, until the deadline.
    async fn write_group<F, Fut>(&self, g: &Group, f: F) -> GroupWrite
    where
        F: Fn(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<apb::AdminReply>, tonic::Status>>,
    {
        let targets = g.targets();
        let mut last = String::from("no member address known");
        loop {
            for addr in &targets {
                let c = match admin_client(addr, self.call_timeout(), self.tls.as_ref()) {
                    Ok(c) => c,
                    Err(e) => {
                        last = e.to_string();
                        continue;
                    }
                };
                match f(c).await {
                    Ok(r) => {
                        return GroupWrite {
                            group: g.name.clone(),
                            ok: true,
                            deleted: None,
                            via: Some(addr.clone()),
                            raft_index: Some(r.into_inner().raft_index),
                            error: None,
                            not_found: false,
                        };
                    }
                    Err(s) => {
                        last = rpc_err(addr, &s).to_string();
                        // The group's own answer (bad request, no such topic): final.
                        if matches!(
                            s.code(),
                            tonic::Code::InvalidArgument
                                | tonic::Code::NotFound
                                | tonic::Code::PermissionDenied
                                | tonic::Code::AlreadyExists
                        ) {
                            return GroupWrite {
                                group: g.name.clone(),
                                ok: false,
                                deleted: None,
                                via: Some(addr.clone()),
                                raft_index: None,
                                error: Some(last),
                                not_found: s.code() == tonic::Code::NotFound,
                            };
                        }
                    }
                }
            }
            if Instant::now() + Duration::from_millis(200) >= self.deadline {
                return GroupWrite {
                    group: g.name.clone(),
                    ok: false,
                    deleted: None,
                    via: None,
                    raft_index: None,
                    error: Some(last),
                    not_found: false,
                };
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until `check` holds on the current topic view; false on deadline.
    async fn wait_topics<F>(&self, check: F) -> bool
    where
        F: Fn(&BTreeMap<String, Vec<RouteGroup>>) -> bool,
    {
        loop {
            if let Ok(t) = self.topics().await
                && check(&t)
            {
                return true;
            }
            if Instant::now() + Duration::from_millis(100) >= self.deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn status_report(st: &apb::NodeStatus, addr: &str) -> npb::NodeReport {
    npb::NodeReport {
        group: st.group.clone(),
        node_id: st.node_id,
        addr: addr.to_string(),
        role: st.role.clone(),
        term: st.term,
        leader_id: st.leader_id,
        leader_addr: st.leader_addr.clone(),
        committed: st.committed,
        applied: st.applied,
        last_log_index: st.last_log_index,
        topics: Vec::new(),
        version: st.version.clone(),
        voters: st.voters.clone(),
        learners: st.learners.clone(),
    }
}

/// Run one `raftmq admin` command.
pub async fn run(args: AdminArgs) -> Result<Output, AdminError> {
    if args.broker.is_none() && args.nameservers.iter().all(|s| s.trim().is_empty()) {
        return Err(AdminError::Usage(
            "give --nameservers HOST:PORT[,HOST:PORT] or --broker HOST:PORT".into(),
        ));
    }
    let tls = args
        .tls
        .load()
        .map_err(|e| AdminError::Usage(e.to_string()))?;
    let ctx = Ctx {
        tls,
        deadline: Instant::now() + Duration::from_millis(args.timeout_ms.max(100)),
        args,
    };
    let json = ctx.args.json;
    match ctx.args.cmd.clone() {
        AdminCmd::Topic { cmd } => match cmd {
            TopicCmd::Create(spec) | TopicCmd::Update(spec) => {
                let out = upsert(&ctx, &spec).await?;
                Ok(Output {
                    ok: out.ok,
                    text: render(json, &out, write_table)?,
                })
            }
            TopicCmd::Delete { name } => {
                let out = delete(&ctx, &name).await?;
                Ok(Output {
                    ok: out.ok,
                    text: render(json, &out, write_table)?,
                })
            }
            TopicCmd::List => {
                let topics = ctx.topics().await?;
                let out = TopicList {
                    topics: topics
                        .into_iter()
                        .map(|(name, groups)| summary(name, &groups))
                        .collect(),
                };
                Ok(Output {
                    ok: true,
                    text: render(json, &out, list_table)?,
                })
            }
            TopicCmd::Status { name } => topic_status(&ctx, &name).await,
            TopicCmd::Route { name } => {
                let mut topics = ctx.topics().await?;
                let groups = topics
                    .remove(&name)
                    .ok_or_else(|| AdminError::TopicNotFound(name.clone()))?;
                let out = TopicRouteOut {
                    topic: name,
                    groups,
                };
                Ok(Output {
                    ok: true,
                    text: render(json, &out, route_table)?,
                })
            }
        },
        AdminCmd::Group { cmd } => consumer_group(&ctx, cmd).await,
        AdminCmd::Raft { cmd } => raft_cmd(&ctx, cmd).await,
        AdminCmd::Cluster => {
            let out = cluster(&ctx).await?;
            Ok(Output {
                ok: true,
                text: render(json, &out, cluster_table)?,
            })
        }
        AdminCmd::Message { cmd } => message_cmd(&ctx, cmd, json).await,
    }
}

async fn message_cmd(ctx: &Ctx, cmd: MessageCmd, json: bool) -> Result<Output, AdminError> {
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
                    let Ok(mut c) = admin_client(&addr, ctx.call_timeout(), ctx.tls.as_ref())
                    else {
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
                    let Ok(mut c) = admin_client(&addr, ctx.call_timeout(), ctx.tls.as_ref())
                    else {
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

async fn topic_status(ctx: &Ctx, name: &str) -> Result<Output, AdminError> {
    let groups = ctx.groups().await?;
    let mut out = Vec::new();
    for g in &groups {
        for addr in g.targets() {
            let Ok(mut c) = admin_client(&addr, ctx.call_timeout(), ctx.tls.as_ref()) else {
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

async fn raft_cmd(ctx: &Ctx, cmd: RaftCmd) -> Result<Output, AdminError> {
    let wanted = match &cmd {
        RaftCmd::TransferLeader { group, .. }
        | RaftCmd::AddNode { group, .. }
        | RaftCmd::RemoveNode { group, .. } => group.clone(),
    };
    let groups = ctx.groups().await?;
    let g = match (&wanted, groups.len()) {
        (Some(w), _) => groups
            .iter()
            .find(|g| &g.name == w)
            .ok_or_else(|| AdminError::Usage(format!("no broker group `{w}`")))?,
        (None, 1) => &groups[0],
        (None, n) => {
            return Err(AdminError::Usage(format!(
                "{n} broker groups known: give --group"
            )));
        }
    };
    let (action, write) = match cmd {
        RaftCmd::TransferLeader { to, .. } => (
            format!("transfer leadership to {to}"),
            ctx.write_group(g, |mut c| async move {
                c.transfer_leader(apb::TransferLeaderRequest { to }).await
            })
            .await,
        ),
        RaftCmd::AddNode {
            id, addr, voter, ..
        } => {
            let a = addr.clone();
            let w = ctx
                .write_group(g, |mut c| {
                    let addr = a.clone();
                    async move {
                        c.add_learner(apb::AddLearnerRequest { node_id: id, addr })
                            .await
                    }
                })
                .await;
            if voter && w.ok {
                let mut voters: Vec<u64> = g.nodes.keys().copied().collect();
                if let Some(st) = g.targets().first()
                    && let Ok(s) = ctx.status(st).await
                {
                    voters = s.voters.clone();
                }
                voters.push(id);
                voters.sort_unstable();
                voters.dedup();
                let v2 = voters.clone();
                let w2 = ctx
                    .write_group(g, |mut c| {
                        let voters = v2.clone();
                        async move {
                            c.change_membership(apb::ChangeMembershipRequest { voters })
                                .await
                        }
                    })
                    .await;
                (
                    format!("add node {id} at {addr} as voter (voters {voters:?})"),
                    w2,
                )
            } else {
                (format!("add node {id} at {addr} as learner"), w)
            }
        }
        RaftCmd::RemoveNode { id, .. } => {
            let mut voters: Vec<u64> = Vec::new();
            for t in g.targets() {
                if let Ok(s) = ctx.status(&t).await {
                    voters = s.voters.clone();
                    break;
                }
            }
            voters.retain(|v| *v != id);
            if voters.is_empty() {
                return Err(AdminError::Usage("cannot remove the last voter".into()));
            }
            let v2 = voters.clone();
            (
                format!("remove node {id} (voters {voters:?})"),
                ctx.write_group(g, |mut c| {
                    let voters = v2.clone();
                    async move {
                        c.change_membership(apb::ChangeMembershipRequest { voters })
                            .await
                    }
                })
                .await,
            )
        }
    };
    let v = serde_json::json!({
        "group": g.name, "action": action, "ok": write.ok, "via": write.via,
        "raft_index": write.raft_index, "error": write.error,
    });
    let text = if ctx.args.json {
        format!("{}\n", serde_json::to_string_pretty(&v)?)
    } else {
        format!(
            "{}: {} {}\n",
            g.name,
            action,
            if write.ok {
                "ok".to_string()
            } else {
                format!("FAILED: {}", write.error.unwrap_or_default())
            }
        )
    };
    Ok(Output { ok: write.ok, text })
}

fn group_write_output(
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

async fn consumer_group(ctx: &Ctx, cmd: GroupCmd) -> Result<Output, AdminError> {
    let json = ctx.args.json;
    let groups = ctx.groups().await?;
    let write_table = |w: &ConsumerGroupWrite| {
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
            "consumer group {}\n{}",
            w.name,
            table(&["GROUP", "RESULT", "VIA", "ERROR"], &rows)
        )
    };
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
            let mut out = Vec::new();
            for g in &groups {
                let r = req.clone();
                out.push(
                    ctx.write_group(g, |mut c| {
                        let r = r.clone();
                        async move { c.upsert_group(r).await }
                    })
                    .await,
                );
            }
            group_write_output(json, spec.name, out, write_table)
        }
        GroupCmd::Delete { name } => {
            let req = apb::DeleteGroupRequest { name: name.clone() };
            let mut out = Vec::new();
            for g in &groups {
                let r = req.clone();
                out.push(
                    ctx.write_group(g, |mut c| {
                        let r = r.clone();
                        async move { c.delete_group(r).await }
                    })
                    .await,
                );
            }
            group_write_output(json, name, out, write_table)
        }
        GroupCmd::Progress { name, topic } => {
            let mut out = Vec::new();
            for g in &groups {
                let mut queues = None;
                for addr in g.targets() {
                    let Ok(mut c) = admin_client(&addr, ctx.call_timeout(), ctx.tls.as_ref())
                    else {
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
                    let Ok(mut c) = admin_client(&addr, ctx.call_timeout(), ctx.tls.as_ref())
                    else {
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

fn render<T: Serialize>(json: bool, v: &T, table: fn(&T) -> String) -> Result<String, AdminError> {
    if json {
        Ok(format!("{}\n", serde_json::to_string_pretty(v)?))
    } else {
        Ok(table(v))
    }
}

fn summary(name: String, groups: &[RouteGroup]) -> TopicSummary {
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

async fn upsert(ctx: &Ctx, spec: &TopicSpec) -> Result<TopicWrite, AdminError> {
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

async fn delete(ctx: &Ctx, name: &str) -> Result<TopicWrite, AdminError> {
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

async fn cluster(ctx: &Ctx) -> Result<ClusterOut, AdminError> {
    let groups = ctx.groups().await?;
    let mut out = Vec::new();
    for g in groups {
        let live = futures::future::join_all(
            g.nodes
                .values()
                .map(|(r, _)| async move { ctx.status(&r.addr).await.ok() }),
        )
        .await;
        let mut nodes: Vec<ClusterNode> = g
            .nodes
            .values()
            .zip(live)
            .map(|((r, age), st)| match st {
                Some(s) => ClusterNode {
                    node_id: s.node_id,
                    addr: r.addr.clone(),
                    role: s.role,
                    term: s.term,
                    leader_id: s.leader_id,
                    committed: s.committed,
                    applied: s.applied,
                    last_log_index: s.last_log_index,
                    lag: None,
                    version: s.version,
                    age_ms: *age,
                    reachable: true,
                },
                None => ClusterNode {
                    node_id: r.node_id,
                    addr: r.addr.clone(),
                    role: r.role.clone(),
                    term: r.term,
                    leader_id: r.leader_id,
                    committed: r.committed,
                    applied: r.applied,
                    last_log_index: r.last_log_index,
                    lag: None,
                    version: r.version.clone(),
                    age_ms: *age,
                    reachable: false,
                },
            })
            .collect();
        // The group's leader: the live view's self-declared leader at the highest term first.
        let term = nodes
            .iter()
            .map(|n| n.term)
            .max()
            .unwrap_or(g.term)
            .max(g.term);
        let leader_id = nodes
            .iter()
            .filter(|n| n.role == "leader" && n.term == term)
            .map(|n| n.node_id)
            .next()
            .or(g.leader_id);
        let leader_last = nodes
            .iter()
            .find(|n| Some(n.node_id) == leader_id)
            .and_then(|n| n.last_log_index);
        for n in &mut nodes {
            n.lag = leader_last.map(|l| l.saturating_sub(n.applied.unwrap_or(0)));
        }
        let leader_addr = nodes
            .iter()
            .find(|n| Some(n.node_id) == leader_id)
            .map(|n| n.addr.clone())
            .unwrap_or(g.leader_addr);
        out.push(ClusterGroup {
            group: g.name,
            term,
            leader_id,
            leader_addr,
            nodes,
        });
    }
    Ok(ClusterOut { groups: out })
}

// ---------------------------------------------------------------------------------------------
// Tables.

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
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

fn write_table(w: &TopicWrite) -> String {
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

fn list_table(l: &TopicList) -> String {
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

fn route_table(r: &TopicRouteOut) -> String {
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

fn cluster_table(c: &ClusterOut) -> String {
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

    #[test]
    fn group_targets_leader_first() {
        let mut nodes = BTreeMap::new();
        for id in 1..=3u64 {
            nodes.insert(
                id,
                (
                    npb::NodeReport {
                        node_id: id,
                        addr: format!("h:{id}"),
                        ..Default::default()
                    },
                    Some(1),
                ),
            );
        }
        let g = Group {
            name: "g".into(),
            term: 1,
            leader_id: Some(2),
            leader_addr: "h:2".into(),
            nodes,
        };
        assert_eq!(g.targets(), vec!["h:2", "h:1", "h:3"]);
    }
}
