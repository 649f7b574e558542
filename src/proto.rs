//! Generated protobuf/gRPC code, included once.

/// raftmq's internal Raft transport.
pub mod raftmq {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("raftmq");
}
