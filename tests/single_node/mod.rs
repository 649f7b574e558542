//! One in-process broker node for storage/Raft tests: the Raft over the real `LogStore` and
//! `StateMachine` in a directory, configured like `NodeConfig::raft_config` in
//! `broker/node.rs`, as the only member of its group.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use raftmq::raft::log_store::LogStore;
use raftmq::raft::network::{GrpcNetworkConfig, GrpcNetworkFactory};
use raftmq::raft::state_machine::{SmHandle, StateMachine};
use raftmq::raft::{NodeId, TypeConfig};
use raftmq::storage::{CommitLog, CommitLogConfig, FlushMode};

/// The node's id.
pub const NODE: NodeId = 1;
/// How long `lead` waits for the node to lead.
pub const WAIT: Duration = Duration::from_secs(10);

/// One in-process node.
pub struct Node {
    pub raft: Raft<TypeConfig, StateMachine>,
    pub sm: SmHandle,
    #[allow(dead_code)] // not every test reads the log directly
    pub log: Arc<CommitLog>,
}

/// Like `NodeConfig::raft_config` in `broker/node.rs`.
fn raft_config(name: &str) -> Result<Arc<Config>> {
    let cfg = Config {
        cluster_name: name.into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        enable_pre_vote: Some(true),
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        enable_leader_restore: Some(false),
        allow_log_reversion: Some(true),
        ..Default::default()
    };
    Ok(Arc::new(cfg.validate()?))
}

/// Open (or reopen) the node in `dir`, with CommitLog segments of `segment_size` bytes and
/// `flush = sync`. It does not lead until [`lead`] (a fresh directory) or an election (a
/// reopened one).
pub async fn open_node(dir: &Path, segment_size: u64, name: &str) -> Result<Node> {
    let mut lc = CommitLogConfig::new(dir);
    lc.segment_size = segment_size;
    lc.flush = FlushMode::Sync;
    let store = LogStore::open(lc)?;
    let log = store.commitlog();
    let (sm, handle) = StateMachine::open(dir, Arc::clone(&log))?;
    // A single-member group never sends: the factory is never asked for a connection.
    let network = GrpcNetworkFactory::new(NODE, GrpcNetworkConfig::default());
    let raft = Raft::new(NODE, raft_config(name)?, network, store, sm)
        .await
        .map_err(|e| anyhow!("Raft::new: {e}"))?;
    Ok(Node {
        raft,
        sm: handle,
        log,
    })
}

/// Make the node the only member and wait until it leads.
pub async fn lead(raft: &Raft<TypeConfig, StateMachine>) -> Result<()> {
    let members = BTreeMap::from([(
        NODE,
        BasicNode {
            addr: "127.0.0.1:1".into(),
        },
    )]);
    raft.initialize(members)
        .await
        .map_err(|e| anyhow!("initialize: {e}"))?;
    raft.wait(Some(WAIT))
        .state(ServerState::Leader, "node 1 leads")
        .await?;
    Ok(())
}
