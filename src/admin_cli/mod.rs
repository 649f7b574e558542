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
//!   user create --username U --password P [--user-type Normal|Super]
//!   user update --username U [--password P] [--user-type T]
//!   user delete --username U
//!   user list
//!   acl create|update --subject User:U --resource Topic:T[,Group:G..] --action Pub[,Sub..] [--decision Allow|Deny]
//!   acl delete --subject User:U [--resource R,..]
//!   acl list [--subject User:U]
//! ```
//!
//! With ACL on (broker `acl_enabled`), `--access-key` / `--secret-key` (env `RAFTMQ_ACCESS_KEY`,
//! `RAFTMQ_SECRET_KEY`) sign every request as the RocketMQ clients do; `user` and `acl`
//! commands need a super user (or, with TLS, a client certificate of the cluster CA). Users and
//! policies live in each broker group's Raft log, so `user`/`acl` writes go to every group and
//! listings show each group's.
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
//! * `user create|update|delete`, `acl create|update|delete`: `{"name", "ok", "groups":
//!   [{"group", "ok", "via", "raft_index", "error"}]}`; `user list`: `{"groups": [{"group",
//!   "via", "error", "items": [{"name", "user_type"}]}]}`; `acl list`: the same with items
//!   `{"subject", "resource", "actions", "decision"}`.
//!
//! Perm values are `rw`, `r`, `w`; message types `normal`, `fifo`, `delay`, `transaction`;
//! roles `leader`, `follower`, `candidate`, `learner`, `shutdown`. Missing numbers are null.

mod acl;
mod args;
mod client;
mod cluster;
mod group;
mod message;
mod output;
mod raft;
mod topic;

use std::time::{Duration, Instant};

pub use args::{
    AclCmd, AclSpec, AdminArgs, AdminCmd, GroupCmd, GroupSpec, MessageCmd, RaftCmd, TopicCmd,
    TopicSpec, UserCmd,
};
use client::Ctx;
use cluster::cluster;
use group::consumer_group;
use message::message_cmd;
pub use output::{
    ClusterGroup, ClusterNode, ClusterOut, ConsumerGroupList, ConsumerGroupOut, ConsumerGroupWrite,
    DeliveryOut, GroupTraceOut, GroupWrite, MessageOut, MessagesOut, RouteGroup, StoredAt,
    TopicInGroup, TopicList, TopicRouteOut, TopicSummary, TopicWrite, TraceOut,
};
use output::{cluster_table, list_table, render, route_table, write_table};
use raft::raft_cmd;
use topic::{delete, summary, topic_status, upsert};

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

/// What a command printed and whether it fully succeeded.
#[derive(Debug, Clone)]
pub struct Output {
    /// The table or JSON document (ends with a newline).
    pub text: String,
    /// False if some group failed: exit non-zero.
    pub ok: bool,
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
    let signer = match (&args.access_key, &args.secret_key) {
        (Some(ak), Some(sk)) => client::Signer {
            creds: Some((ak.clone(), sk.clone())),
        },
        (None, None) => client::Signer::default(),
        _ => {
            return Err(AdminError::Usage(
                "give both --access-key and --secret-key, or neither".into(),
            ));
        }
    };
    let ctx = Ctx {
        signer,
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
        AdminCmd::User { cmd } => acl::user_cmd(&ctx, cmd).await,
        AdminCmd::Acl { cmd } => acl::acl_cmd(&ctx, cmd).await,
    }
}
