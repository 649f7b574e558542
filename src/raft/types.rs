//! openraft type configuration and the application data carried in log entries.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::storage::record::RecordKind;

/// Node ids are small integers chosen by the operator (`--node-id`).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The raftmq Raft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

/// Shorthand aliases used across the crate.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A log entry.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A vote.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// Stored membership.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// Leader id as stored in log ids (term + node).
pub type CommittedLeaderId = openraft::alias::CommittedLeaderIdOf<TypeConfig>;

/// The application payload of a normal Raft entry: a record kind plus opaque bytes.
///
/// `kind` is [`RecordKind::MESSAGE_BATCH`] for producer messages or an internal command kind
/// (`>= RecordKind::FIRST_INTERNAL`); it becomes the CommitLog record's kind byte and `data`
/// becomes the record payload byte for byte, so the log on disk *is* the replicated data.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Record kind byte.
    pub kind: u8,
    /// Payload bytes (format defined by the kind's owner).
    pub data: Bytes,
}

impl Command {
    /// A message batch command.
    pub fn messages(data: Bytes) -> Self {
        Command {
            kind: RecordKind::MESSAGE_BATCH.0,
            data,
        }
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command(kind={}, {} bytes)", self.kind, self.data.len())
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What applying a command returns to the writer. Filled in by the state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// Index the command was applied at.
    pub index: u64,
    /// Kind-specific result bytes (for message batches: assigned queue offsets).
    pub data: Bytes,
}

/// Snapshot bytes as produced by the state machine and shipped by the network.
///
/// A raftmq snapshot is the applied *state* as of the retention boundary (queue bases, topic
/// config, consumer offsets), not the messages: those stay in the retained CommitLog segments
/// and are replicated as ordinary entries after the snapshot. It is therefore small enough to
/// hold in memory.
pub type SnapshotData = std::io::Cursor<Vec<u8>>;

/// A snapshot with our snapshot data.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
