//! Conversions between openraft's types and the `raftmq` protobuf messages, used by both the
//! client ([`super::network`](super)) and the server ([`super::grpc`](crate::raft::grpc)).
//!
//! `*_to_pb` functions are used by the sending side and cannot fail on well-formed openraft
//! values (except for JSON encoding, which does not fail for our types in practice);
//! `*_from_pb` functions validate what a peer sent and return
//! [`convert::ConvertError`](ConvertError) on malformed input.

use std::collections::BTreeMap;

use bytes::Bytes;
use openraft::BasicNode;
use openraft::alias::LeaderIdOf;
use openraft::errors::Fatal;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendError,
    StreamAppendResult, TransferLeaderError, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{EntryPayload, Membership};

use super::pb;
use crate::raft::types::{
    Command, CommittedLeaderId, Entry, LogId, NodeId, SnapshotMeta, TypeConfig, Vote,
};

/// A message from a peer that does not decode into a valid openraft value.
#[derive(Debug, thiserror::Error)]
#[error("malformed raft message: {0}")]
pub struct ConvertError(pub String);

impl ConvertError {
    fn missing(field: &str) -> Self {
        ConvertError(format!("missing field `{field}`"))
    }
}

/// A Raft error reported by a peer (openraft `Fatal`).
#[derive(Debug)]
pub struct RemoteFatal {
    /// The peer's rendering of the error.
    pub message: String,
    /// The error itself, if its JSON decoded.
    pub fatal: Option<Fatal<TypeConfig>>,
}

/// Wire overhead allowance per split `AppendEntries` request (vote, prev, commit, framing).
const REQUEST_OVERHEAD: usize = 256;

pub fn log_id_to_pb(log_id: &LogId) -> pb::LogId {
    pb::LogId {
        term: log_id.leader_id.term,
        node_id: log_id.leader_id.node_id,
        index: log_id.index,
    }
}

pub fn log_id_from_pb(log_id: pb::LogId) -> LogId {
    LogId {
        leader_id: CommittedLeaderId {
            term: log_id.term,
            node_id: log_id.node_id,
        },
        index: log_id.index,
    }
}

fn opt_log_id_to_pb(log_id: Option<&LogId>) -> Option<pb::LogId> {
    log_id.map(log_id_to_pb)
}

fn opt_log_id_from_pb(log_id: Option<pb::LogId>) -> Option<LogId> {
    log_id.map(log_id_from_pb)
}

pub fn vote_to_pb(vote: &Vote) -> pb::Vote {
    pb::Vote {
        term: vote.leader_id.term,
        node_id: vote.leader_id.node_id,
        committed: vote.committed,
    }
}

pub fn vote_from_pb(vote: pb::Vote) -> Vote {
    Vote {
        leader_id: LeaderIdOf::<TypeConfig> {
            term: vote.term,
            node_id: vote.node_id,
        },
        committed: vote.committed,
    }
}

fn required_vote(vote: Option<pb::Vote>, field: &str) -> Result<Vote, ConvertError> {
    vote.map(vote_from_pb)
        .ok_or_else(|| ConvertError::missing(field))
}

fn json_error(what: &str, e: serde_json::Error) -> ConvertError {
    ConvertError(format!("bad {what} JSON: {e}"))
}

pub fn entry_to_pb(entry: Entry) -> Result<pb::Entry, ConvertError> {
    let payload = match entry.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(pb::Empty {}),
        EntryPayload::Normal(command) => pb::entry::Payload::Normal(pb::Normal {
            kind: u32::from(command.kind),
            data: command.data,
        }),
        EntryPayload::Membership(membership) => pb::entry::Payload::MembershipJson(
            serde_json::to_vec(&membership)
                .map(Bytes::from)
                .map_err(|e| json_error("membership", e))?,
        ),
    };
    Ok(pb::Entry {
        term: entry.log_id.leader_id.term,
        node_id: entry.log_id.leader_id.node_id,
        index: entry.log_id.index,
        payload: Some(payload),
    })
}

pub fn entry_from_pb(entry: pb::Entry) -> Result<Entry, ConvertError> {
    let log_id = LogId {
        leader_id: CommittedLeaderId {
            term: entry.term,
            node_id: entry.node_id,
        },
        index: entry.index,
    };
    let payload = match entry
        .payload
        .ok_or_else(|| ConvertError::missing("entry.payload"))?
    {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Normal(normal) => {
            let kind = u8::try_from(normal.kind)
                .map_err(|_| ConvertError(format!("entry kind {} out of range", normal.kind)))?;
            EntryPayload::Normal(Command {
                kind,
                data: normal.data,
            })
        }
        pb::entry::Payload::MembershipJson(json) => {
            let membership: Membership<NodeId, BasicNode> =
                serde_json::from_slice(&json).map_err(|e| json_error("membership", e))?;
            // Re-check the invariants openraft relies on (voters are known nodes, no empty
            // config); deserialization alone does not.
            let nodes: BTreeMap<NodeId, BasicNode> = membership
                .nodes()
                .map(|(id, node)| (*id, node.clone()))
                .collect();
            Membership::new(membership.get_joint_config().clone(), nodes)
                .map_err(|e| ConvertError(format!("invalid membership: {e}")))?;
            EntryPayload::Membership(membership)
        }
    };
    Ok(Entry { log_id, payload })
}

pub fn append_request_to_pb(
    req: AppendEntriesRequest<TypeConfig>,
) -> Result<pb::AppendEntriesRequest, ConvertError> {
    Ok(pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&req.vote)),
        prev_log_id: opt_log_id_to_pb(req.prev_log_id.as_ref()),
        entries: req
            .entries
            .into_iter()
            .map(entry_to_pb)
            .collect::<Result<_, _>>()?,
        leader_commit: opt_log_id_to_pb(req.leader_commit.as_ref()),
    })
}

/// Decodes and validates an `AppendEntries` request: the vote is present and the entries
/// are consecutive and follow `prev_log_id`.
pub fn append_request_from_pb(
    req: pb::AppendEntriesRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, ConvertError> {
    let vote = required_vote(req.vote, "vote")?;
    let prev_log_id = opt_log_id_from_pb(req.prev_log_id);
    let entries = req
        .entries
        .into_iter()
        .map(entry_from_pb)
        .collect::<Result<Vec<_>, _>>()?;
    let mut expected = prev_log_id.as_ref().map(|prev| prev.index.checked_add(1));
    for entry in &entries {
        match expected {
            Some(Some(index)) if index == entry.log_id.index => {}
            None => {}
            _ => {
                return Err(ConvertError(format!(
                    "entry index {} does not follow {:?}",
                    entry.log_id.index, expected
                )));
            }
        }
        expected = Some(entry.log_id.index.checked_add(1));
    }
    Ok(AppendEntriesRequest {
        vote,
        prev_log_id,
        entries,
        leader_commit: opt_log_id_from_pb(req.leader_commit),
    })
}

/// Splits a request whose encoding exceeds `max_bytes` into consecutive requests of at most
/// about `max_bytes` each (a single larger entry travels alone). Each piece after the first
/// has the previous piece's last log id as `prev_log_id`; vote and leader commit are
/// repeated. Always returns at least one request.
pub fn split_append(
    req: pb::AppendEntriesRequest,
    max_bytes: usize,
) -> Vec<pb::AppendEntriesRequest> {
    use prost::Message;

    if req.entries.len() <= 1 || req.encoded_len() <= max_bytes {
        return vec![req];
    }
    let budget = max_bytes.saturating_sub(REQUEST_OVERHEAD).max(1);
    let pb::AppendEntriesRequest {
        vote,
        prev_log_id,
        entries,
        leader_commit,
    } = req;

    let mut out = Vec::new();
    let mut prev = prev_log_id;
    let mut current: Vec<pb::Entry> = Vec::new();
    let mut current_bytes = 0usize;
    for entry in entries {
        let len = entry.encoded_len();
        let len = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        if let Some(last) = current.last() {
            if current_bytes + len > budget {
                let last = pb::LogId {
                    term: last.term,
                    node_id: last.node_id,
                    index: last.index,
                };
                out.push(pb::AppendEntriesRequest {
                    vote,
                    prev_log_id: prev.replace(last),
                    entries: std::mem::take(&mut current),
                    leader_commit,
                });
                current_bytes = 0;
            }
        }
        current_bytes += len;
        current.push(entry);
    }
    out.push(pb::AppendEntriesRequest {
        vote,
        prev_log_id: prev,
        entries: current,
        leader_commit,
    });
    out
}

pub fn raft_error_to_pb(fatal: &Fatal<TypeConfig>) -> pb::RaftError {
    pb::RaftError {
        message: fatal.to_string(),
        json: serde_json::to_vec(fatal)
            .map(Bytes::from)
            .unwrap_or_default(),
    }
}

pub fn raft_error_from_pb(error: pb::RaftError) -> RemoteFatal {
    RemoteFatal {
        fatal: serde_json::from_slice(&error.json).ok(),
        message: error.message,
    }
}

pub fn append_response_to_pb(
    result: Result<AppendEntriesResponse<TypeConfig>, Fatal<TypeConfig>>,
) -> pb::AppendEntriesResponse {
    use pb::append_entries_response::Outcome;
    let outcome = match result {
        Ok(AppendEntriesResponse::Success) => Outcome::Success(pb::Empty {}),
        Ok(AppendEntriesResponse::PartialSuccess(matching)) => {
            Outcome::PartialSuccess(pb::PartialSuccess {
                matching: opt_log_id_to_pb(matching.as_ref()),
            })
        }
        Ok(AppendEntriesResponse::Conflict) => Outcome::Conflict(pb::Empty {}),
        Ok(AppendEntriesResponse::HigherVote(vote)) => Outcome::HigherVote(vote_to_pb(&vote)),
        Err(fatal) => Outcome::RaftError(raft_error_to_pb(&fatal)),
    };
    pb::AppendEntriesResponse {
        outcome: Some(outcome),
    }
}

pub fn append_response_from_pb(
    response: pb::AppendEntriesResponse,
) -> Result<Result<AppendEntriesResponse<TypeConfig>, RemoteFatal>, ConvertError> {
    use pb::append_entries_response::Outcome;
    Ok(
        match response
            .outcome
            .ok_or_else(|| ConvertError::missing("outcome"))?
        {
            Outcome::Success(_) => Ok(AppendEntriesResponse::Success),
            Outcome::PartialSuccess(p) => Ok(AppendEntriesResponse::PartialSuccess(
                opt_log_id_from_pb(p.matching),
            )),
            Outcome::Conflict(_) => Ok(AppendEntriesResponse::Conflict),
            Outcome::HigherVote(vote) => Ok(AppendEntriesResponse::HigherVote(vote_from_pb(vote))),
            Outcome::RaftError(e) => Err(raft_error_from_pb(e)),
        },
    )
}

pub fn stream_result_to_pb(
    result: Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>>,
) -> pb::StreamAppendResponse {
    use pb::stream_append_response::Outcome;
    let outcome = match result {
        Ok(Ok(flushed)) => Outcome::Flushed(pb::Flushed {
            log_id: opt_log_id_to_pb(flushed.as_ref()),
        }),
        Ok(Err(StreamAppendError::Conflict(log_id))) => Outcome::Conflict(log_id_to_pb(&log_id)),
        Ok(Err(StreamAppendError::HigherVote(vote))) => Outcome::HigherVote(vote_to_pb(&vote)),
        Err(fatal) => Outcome::RaftError(raft_error_to_pb(&fatal)),
    };
    pb::StreamAppendResponse {
        outcome: Some(outcome),
    }
}

pub fn stream_result_from_pb(
    response: pb::StreamAppendResponse,
) -> Result<Result<StreamAppendResult<TypeConfig>, RemoteFatal>, ConvertError> {
    use pb::stream_append_response::Outcome;
    Ok(
        match response
            .outcome
            .ok_or_else(|| ConvertError::missing("outcome"))?
        {
            Outcome::Flushed(f) => Ok(Ok(opt_log_id_from_pb(f.log_id))),
            Outcome::Conflict(log_id) => {
                Ok(Err(StreamAppendError::Conflict(log_id_from_pb(log_id))))
            }
            Outcome::HigherVote(vote) => Ok(Err(StreamAppendError::HigherVote(vote_from_pb(vote)))),
            Outcome::RaftError(e) => Err(raft_error_from_pb(e)),
        },
    )
}

pub fn vote_request_to_pb(req: &VoteRequest<TypeConfig>) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote_to_pb(&req.vote)),
        last_log_id: opt_log_id_to_pb(req.last_log_id.as_ref()),
        leadership_transfer: req.leadership_transfer,
    }
}

pub fn vote_request_from_pb(req: pb::VoteRequest) -> Result<VoteRequest<TypeConfig>, ConvertError> {
    let mut request = VoteRequest::new(
        required_vote(req.vote, "vote")?,
        opt_log_id_from_pb(req.last_log_id),
    );
    request.leadership_transfer = req.leadership_transfer;
    Ok(request)
}

pub fn vote_response_to_pb(
    result: Result<VoteResponse<TypeConfig>, Fatal<TypeConfig>>,
) -> pb::VoteResponse {
    match result {
        Ok(resp) => pb::VoteResponse {
            vote: Some(vote_to_pb(&resp.vote)),
            vote_granted: resp.vote_granted,
            last_log_id: opt_log_id_to_pb(resp.last_log_id.as_ref()),
            error: None,
        },
        Err(fatal) => pb::VoteResponse {
            error: Some(raft_error_to_pb(&fatal)),
            ..Default::default()
        },
    }
}

pub fn vote_response_from_pb(
    resp: pb::VoteResponse,
) -> Result<Result<VoteResponse<TypeConfig>, RemoteFatal>, ConvertError> {
    if let Some(error) = resp.error {
        return Ok(Err(raft_error_from_pb(error)));
    }
    Ok(Ok(VoteResponse {
        vote: required_vote(resp.vote, "vote")?,
        vote_granted: resp.vote_granted,
        last_log_id: opt_log_id_from_pb(resp.last_log_id),
    }))
}

pub fn snapshot_header_to_pb(
    vote: &Vote,
    meta: &SnapshotMeta,
    total_bytes: u64,
) -> Result<pb::SnapshotHeader, ConvertError> {
    Ok(pb::SnapshotHeader {
        vote: Some(vote_to_pb(vote)),
        meta_json: serde_json::to_vec(meta)
            .map(Bytes::from)
            .map_err(|e| json_error("snapshot meta", e))?,
        total_bytes,
    })
}

pub fn snapshot_header_from_pb(
    header: pb::SnapshotHeader,
) -> Result<(Vote, SnapshotMeta, u64), ConvertError> {
    let vote = required_vote(header.vote, "vote")?;
    let meta =
        serde_json::from_slice(&header.meta_json).map_err(|e| json_error("snapshot meta", e))?;
    Ok((vote, meta, header.total_bytes))
}

pub fn snapshot_response_to_pb(
    result: Result<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>>,
) -> pb::SnapshotResponse {
    match result {
        Ok(resp) => pb::SnapshotResponse {
            vote: Some(vote_to_pb(&resp.vote)),
            error: None,
        },
        Err(fatal) => pb::SnapshotResponse {
            vote: None,
            error: Some(raft_error_to_pb(&fatal)),
        },
    }
}

pub fn snapshot_response_from_pb(
    resp: pb::SnapshotResponse,
) -> Result<Result<SnapshotResponse<TypeConfig>, RemoteFatal>, ConvertError> {
    if let Some(error) = resp.error {
        return Ok(Err(raft_error_from_pb(error)));
    }
    Ok(Ok(SnapshotResponse::new(required_vote(resp.vote, "vote")?)))
}

pub fn transfer_request_to_pb(
    req: &TransferLeaderRequest<TypeConfig>,
) -> pb::TransferLeaderRequest {
    pb::TransferLeaderRequest {
        from_leader: Some(vote_to_pb(req.from_leader())),
        to_node_id: *req.to_node_id(),
        last_log_id: opt_log_id_to_pb(req.last_log_id()),
    }
}

pub fn transfer_request_from_pb(
    req: pb::TransferLeaderRequest,
) -> Result<TransferLeaderRequest<TypeConfig>, ConvertError> {
    Ok(TransferLeaderRequest::new(
        required_vote(req.from_leader, "from_leader")?,
        req.to_node_id,
        opt_log_id_from_pb(req.last_log_id),
    ))
}

pub fn transfer_response_to_pb(
    result: Result<TransferLeaderResponse<TypeConfig>, Fatal<TypeConfig>>,
) -> pb::TransferLeaderResponse {
    use pb::transfer_leader_response::Outcome;
    let outcome = match result {
        Ok(Ok(())) => Outcome::Accepted(pb::Empty {}),
        Ok(Err(rejected)) => match serde_json::to_vec(&rejected) {
            Ok(json) => Outcome::RejectedJson(Bytes::from(json)),
            Err(e) => Outcome::RaftError(pb::RaftError {
                message: format!("{rejected} (not serializable: {e})"),
                json: Bytes::new(),
            }),
        },
        Err(fatal) => Outcome::RaftError(raft_error_to_pb(&fatal)),
    };
    pb::TransferLeaderResponse {
        outcome: Some(outcome),
    }
}

pub fn transfer_response_from_pb(
    resp: pb::TransferLeaderResponse,
) -> Result<Result<TransferLeaderResponse<TypeConfig>, RemoteFatal>, ConvertError> {
    use pb::transfer_leader_response::Outcome;
    Ok(
        match resp
            .outcome
            .ok_or_else(|| ConvertError::missing("outcome"))?
        {
            Outcome::Accepted(_) => Ok(Ok(())),
            Outcome::RejectedJson(json) => {
                let rejected: TransferLeaderError<TypeConfig> = serde_json::from_slice(&json)
                    .map_err(|e| json_error("transfer leader error", e))?;
                Ok(Err(rejected))
            }
            Outcome::RaftError(e) => Err(raft_error_from_pb(e)),
        },
    )
}

#[cfg(test)]
mod tests;
