//! Helpers shared by the network module's tests.

use std::time::Duration;

use openraft::alias::LeaderIdOf;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;

use crate::raft::types::{CommittedLeaderId, Entry, LogId, TypeConfig, Vote};

pub(super) fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
    LogId {
        leader_id: CommittedLeaderId { term, node_id },
        index,
    }
}

pub(super) fn vote(term: u64, node_id: u64, committed: bool) -> Vote {
    Vote {
        leader_id: LeaderIdOf::<TypeConfig> { term, node_id },
        committed,
    }
}

pub(super) fn append_request(
    prev: Option<LogId>,
    entries: Vec<Entry>,
) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: vote(3, 2, true),
        prev_log_id: prev,
        entries,
        leader_commit: Some(log_id(3, 2, 4)),
    }
}

pub(super) fn option(ms: u64) -> RPCOption {
    RPCOption::new(Duration::from_millis(ms))
}
