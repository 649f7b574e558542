//! Clap argument and subcommand types of `raftmq admin`.

use crate::raft::state_machine::{Perm, TopicMessageType};

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
    /// Access key to sign requests with (ACL on).
    #[arg(long, env = "RAFTMQ_ACCESS_KEY", global = true)]
    pub access_key: Option<String>,
    /// Secret key of --access-key (prefer the env var to the flag).
    #[arg(long, env = "RAFTMQ_SECRET_KEY", global = true, hide_env_values = true)]
    pub secret_key: Option<String>,
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
    /// ACL users: create, update, delete, list (written to every broker group).
    User {
        /// The user command.
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// ACL policies: create, update, delete, list (written to every broker group).
    Acl {
        /// The policy command.
        #[command(subcommand)]
        cmd: AclCmd,
    },
}

/// `raftmq admin user` commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum UserCmd {
    /// Add a user (access key = its name).
    Create {
        /// Name (the access key clients send).
        #[arg(long)]
        username: String,
        /// Secret key (6-128 printable characters).
        #[arg(long)]
        password: String,
        /// `Normal` (default) or `Super`.
        #[arg(long, default_value = "Normal")]
        user_type: String,
    },
    /// Change a user's secret key and/or type.
    Update {
        /// Name.
        #[arg(long)]
        username: String,
        /// New secret key.
        #[arg(long)]
        password: Option<String>,
        /// New type: `Normal` or `Super`.
        #[arg(long)]
        user_type: Option<String>,
    },
    /// Remove a user and its policy.
    Delete {
        /// Name.
        #[arg(long)]
        username: String,
    },
    /// Users and their types (never their secrets).
    List,
}

/// `raftmq admin acl` commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum AclCmd {
    /// Add policy entries for a user (one per resource).
    Create(AclSpec),
    /// Replace a user's entries for these resources (adding missing ones).
    Update(AclSpec),
    /// Remove a user's entries for these resources, or all of them.
    Delete {
        /// `User:NAME` or `NAME`.
        #[arg(long)]
        subject: String,
        /// Resource patterns (repeat or comma-separate); none = every entry.
        #[arg(long = "resource", value_delimiter = ',')]
        resources: Vec<String>,
    },
    /// Policies (of one subject, or all).
    List {
        /// Only this subject.
        #[arg(long)]
        subject: Option<String>,
    },
}

/// Policy entries for `acl create|update`.
#[derive(clap::Args, Debug, Clone)]
pub struct AclSpec {
    /// `User:NAME` or `NAME`.
    #[arg(long)]
    pub subject: String,
    /// Resource patterns: `Topic:NAME`, `Topic:PREFIX*`, `Topic:*`, `Group:...`,
    /// `Cluster:*`, `*` (repeat or comma-separate).
    #[arg(long = "resource", value_delimiter = ',', required = true)]
    pub resources: Vec<String>,
    /// Actions: Pub, Sub, Create, Update, Delete, Get, List, All (repeat or comma-separate).
    #[arg(long = "action", value_delimiter = ',', required = true)]
    pub actions: Vec<String>,
    /// `Allow` or `Deny`.
    #[arg(long, default_value = "Allow")]
    pub decision: String,
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
