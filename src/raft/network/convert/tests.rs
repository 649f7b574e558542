//! Tests of the protobuf conversions and `split_append`.

use std::collections::{BTreeMap, BTreeSet};

use openraft::StoredMembership;

use super::*;
use crate::raft::network::test_util::{append_request, log_id, vote};

fn membership() -> Membership<NodeId, BasicNode> {
    let nodes: BTreeMap<NodeId, BasicNode> = [
        (1, BasicNode::new("raftmq-0.raftmq.default.svc:8081")),
        (2, BasicNode::new("raftmq-1.raftmq.default.svc:8081")),
        (3, BasicNode::new("raftmq-2.raftmq.default.svc:8081")),
        (4, BasicNode::new("10.0.0.4:8081")),
    ]
    .into_iter()
    .collect();
    let voters: BTreeSet<NodeId> = [1, 2, 3].into_iter().collect();
    Membership::new(vec![voters], nodes).expect("valid membership")
}

fn normal(term: u64, index: u64, kind: u8, data: &'static [u8]) -> Entry {
    Entry {
        log_id: log_id(term, 2, index),
        payload: EntryPayload::Normal(Command {
            kind,
            data: Bytes::from_static(data),
        }),
    }
}

fn roundtrip(entry: Entry) -> Entry {
    entry_from_pb(entry_to_pb(entry).expect("encode")).expect("decode")
}

#[test]
fn log_id_and_vote_roundtrip() {
    let id = log_id(7, 3, u64::MAX);
    assert_eq!(log_id_from_pb(log_id_to_pb(&id)), id);
    for committed in [false, true] {
        let v = vote(9, 2, committed);
        assert_eq!(vote_from_pb(vote_to_pb(&v)), v);
    }
}

#[test]
fn entry_roundtrip_blank_normal_membership() {
    let blank = Entry {
        log_id: log_id(1, 1, 0),
        payload: EntryPayload::Blank,
    };
    assert_eq!(roundtrip(blank.clone()), blank);

    let n = normal(3, 42, 3, b"hello messages");
    assert_eq!(roundtrip(n.clone()), n);
    let n = normal(3, 43, 255, b"");
    assert_eq!(roundtrip(n.clone()), n);

    let m = Entry {
        log_id: log_id(2, 1, 5),
        payload: EntryPayload::Membership(membership()),
    };
    assert_eq!(roundtrip(m.clone()), m);
}

#[test]
fn normal_payload_is_not_copied_or_json() {
    let data = Bytes::from(vec![0xAB; 4096]);
    let entry = Entry {
        log_id: log_id(1, 1, 1),
        payload: EntryPayload::Normal(Command {
            kind: 3,
            data: data.clone(),
        }),
    };
    let pb = entry_to_pb(entry).expect("encode");
    match &pb.payload {
        Some(pb::entry::Payload::Normal(n)) => {
            assert_eq!(n.kind, 3);
            // Same buffer, not a copy.
            assert_eq!(n.data.as_ptr(), data.as_ptr());
        }
        other => panic!("unexpected payload {other:?}"),
    }
}

#[test]
fn malformed_entries_are_rejected() {
    let mut pb = entry_to_pb(normal(1, 1, 3, b"x")).expect("encode");
    pb.payload = None;
    assert!(entry_from_pb(pb).is_err());

    let pb = pb::Entry {
        term: 1,
        node_id: 1,
        index: 1,
        payload: Some(pb::entry::Payload::Normal(pb::Normal {
            kind: 256,
            data: Bytes::new(),
        })),
    };
    assert!(entry_from_pb(pb).is_err());

    let pb = pb::Entry {
        term: 1,
        node_id: 1,
        index: 1,
        payload: Some(pb::entry::Payload::MembershipJson(Bytes::from_static(
            b"{not json",
        ))),
    };
    assert!(entry_from_pb(pb).is_err());

    // A voter that is not among the nodes.
    let json = br#"{"configs":[[1,2]],"nodes":{"1":{"addr":"a:1"}}}"#;
    let pb = pb::Entry {
        term: 1,
        node_id: 1,
        index: 1,
        payload: Some(pb::entry::Payload::MembershipJson(Bytes::from_static(json))),
    };
    let err = entry_from_pb(pb).expect_err("voter 2 has no node");
    assert!(err.to_string().contains("invalid membership"), "{err}");
}

#[test]
fn append_request_roundtrip() {
    for req in [
        append_request(None, vec![]),
        append_request(Some(log_id(2, 1, 4)), vec![]),
        append_request(
            Some(log_id(2, 1, 4)),
            vec![
                Entry {
                    log_id: log_id(3, 2, 5),
                    payload: EntryPayload::Blank,
                },
                normal(3, 6, 3, b"a"),
                Entry {
                    log_id: log_id(3, 2, 7),
                    payload: EntryPayload::Membership(membership()),
                },
            ],
        ),
    ] {
        let back = append_request_from_pb(append_request_to_pb(req.clone()).expect("encode"))
            .expect("decode");
        assert_eq!(back.vote, req.vote);
        assert_eq!(back.prev_log_id, req.prev_log_id);
        assert_eq!(back.leader_commit, req.leader_commit);
        assert_eq!(back.entries, req.entries);
    }
}

#[test]
fn append_request_validation() {
    let mut pb = append_request_to_pb(append_request(None, vec![])).expect("encode");
    pb.vote = None;
    assert!(append_request_from_pb(pb).is_err(), "missing vote");

    // Gap after prev_log_id.
    let req = append_request(Some(log_id(2, 1, 4)), vec![normal(3, 6, 3, b"a")]);
    let pb = append_request_to_pb(req).expect("encode");
    assert!(append_request_from_pb(pb).is_err());

    // Non-consecutive entries.
    let req = append_request(None, vec![normal(3, 1, 3, b"a"), normal(3, 3, 3, b"b")]);
    let pb = append_request_to_pb(req).expect("encode");
    assert!(append_request_from_pb(pb).is_err());

    // Index overflow.
    let req = append_request(Some(log_id(2, 1, u64::MAX)), vec![normal(3, 0, 3, b"a")]);
    let pb = append_request_to_pb(req).expect("encode");
    assert!(append_request_from_pb(pb).is_err());
}

#[test]
fn append_response_roundtrip() {
    for resp in [
        AppendEntriesResponse::Success,
        AppendEntriesResponse::PartialSuccess(None),
        AppendEntriesResponse::PartialSuccess(Some(log_id(3, 1, 9))),
        AppendEntriesResponse::Conflict,
        AppendEntriesResponse::HigherVote(vote(5, 3, false)),
    ] {
        let back = append_response_from_pb(append_response_to_pb(Ok(resp.clone())))
            .expect("decode")
            .expect("not an error");
        assert_eq!(back, resp);
    }
    let remote = append_response_from_pb(append_response_to_pb(Err(Fatal::Stopped)))
        .expect("decode")
        .expect_err("remote error");
    assert_eq!(remote.fatal, Some(Fatal::Stopped));
    assert!(append_response_from_pb(pb::AppendEntriesResponse { outcome: None }).is_err());
}

#[test]
fn stream_result_roundtrip() {
    let results: Vec<StreamAppendResult<TypeConfig>> = vec![
        Ok(None),
        Ok(Some(log_id(4, 2, 100))),
        Err(StreamAppendError::Conflict(log_id(4, 2, 50))),
        Err(StreamAppendError::HigherVote(vote(6, 1, true))),
    ];
    for result in results {
        let back = stream_result_from_pb(stream_result_to_pb(Ok(result.clone())))
            .expect("decode")
            .expect("not an error");
        assert_eq!(back, result);
    }
    let remote = stream_result_from_pb(stream_result_to_pb(Err(Fatal::Panicked)))
        .expect("decode")
        .expect_err("remote error");
    assert_eq!(remote.fatal, Some(Fatal::Panicked));
}

#[test]
fn vote_roundtrip() {
    let mut req = VoteRequest::new(vote(4, 1, false), Some(log_id(3, 2, 10)));
    req.leadership_transfer = true;
    assert_eq!(
        vote_request_from_pb(vote_request_to_pb(&req)).expect("decode"),
        req
    );
    let req = VoteRequest::new(vote(1, 1, false), None);
    assert_eq!(
        vote_request_from_pb(vote_request_to_pb(&req)).expect("decode"),
        req
    );
    assert!(vote_request_from_pb(pb::VoteRequest::default()).is_err());

    for resp in [
        VoteResponse::new(vote(4, 1, false), Some(log_id(3, 2, 10)), true),
        VoteResponse::new(vote(5, 3, true), None, false),
    ] {
        let back = vote_response_from_pb(vote_response_to_pb(Ok(resp.clone())))
            .expect("decode")
            .expect("not an error");
        assert_eq!(back, resp);
    }
    assert!(
        vote_response_from_pb(vote_response_to_pb(Err(Fatal::Stopped)))
            .expect("decode")
            .is_err()
    );
}

#[test]
fn snapshot_header_and_response_roundtrip() {
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(3, 1, 77)),
        last_membership: StoredMembership::new(Some(log_id(1, 1, 0)), membership()),
    };
    let v = vote(3, 1, true);
    let (v2, meta2, total) =
        snapshot_header_from_pb(snapshot_header_to_pb(&v, &meta, 12345).expect("encode"))
            .expect("decode");
    assert_eq!((v2, meta2, total), (v, meta, 12345));

    let back = snapshot_response_from_pb(snapshot_response_to_pb(Ok(SnapshotResponse::new(v))))
        .expect("decode")
        .expect("not an error");
    assert_eq!(back, SnapshotResponse::new(v));
    assert!(snapshot_response_from_pb(pb::SnapshotResponse::default()).is_err());
}

#[test]
fn transfer_leader_roundtrip() {
    let req = TransferLeaderRequest::<TypeConfig>::new(vote(3, 1, true), 2, Some(log_id(3, 1, 9)));
    assert_eq!(
        transfer_request_from_pb(transfer_request_to_pb(&req)).expect("decode"),
        req
    );
    let rejected: TransferLeaderResponse<TypeConfig> = Err(TransferLeaderError::VoteChanged {
        expected: vote(3, 1, true),
        actual: vote(4, 2, true),
    });
    for resp in [Ok(()), rejected] {
        let back = transfer_response_from_pb(transfer_response_to_pb(Ok(resp.clone())))
            .expect("decode")
            .expect("not an error");
        assert_eq!(back, resp);
    }
}

fn big_request(n: u64, entry_bytes: usize) -> pb::AppendEntriesRequest {
    let entries = (1..=n)
        .map(|i| Entry {
            log_id: log_id(2, 1, 10 + i),
            payload: EntryPayload::Normal(Command {
                kind: 3,
                data: Bytes::from(vec![i as u8; entry_bytes]),
            }),
        })
        .collect();
    append_request_to_pb(append_request(Some(log_id(1, 1, 10)), entries)).expect("encode")
}

#[test]
fn split_keeps_small_requests_whole() {
    let req = big_request(10, 100);
    assert_eq!(split_append(req.clone(), 1 << 20), vec![req]);
    // A single entry larger than the limit still travels (alone).
    let req = big_request(1, 4096);
    assert_eq!(split_append(req.clone(), 1024), vec![req]);
}

#[test]
fn split_chains_prev_log_ids_and_bounds_size() {
    use prost::Message;

    let req = big_request(20, 10_000);
    let max = 35_000;
    let parts = split_append(req.clone(), max);
    assert!(parts.len() >= 6, "{} parts", parts.len());
    let mut expected_prev = req.prev_log_id;
    let mut all = Vec::new();
    for part in &parts {
        assert!(part.encoded_len() <= max, "{} > {max}", part.encoded_len());
        assert_eq!(part.vote, req.vote);
        assert_eq!(part.leader_commit, req.leader_commit);
        assert_eq!(part.prev_log_id, expected_prev);
        // Each part decodes as a valid request on its own.
        append_request_from_pb(part.clone()).expect("valid part");
        let last = part.entries.last().expect("non-empty part");
        expected_prev = Some(pb::LogId {
            term: last.term,
            node_id: last.node_id,
            index: last.index,
        });
        all.extend(part.entries.iter().cloned());
    }
    assert_eq!(all, req.entries);
}
