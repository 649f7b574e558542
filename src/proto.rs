//! Generated protobuf/gRPC code, included once.

/// raftmq's internal Raft transport (`proto/raftmq/raft.proto`).
pub mod raftmq {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("raftmq");

    /// raftmq's admin and test service (`proto/raftmq/admin.proto`).
    pub mod admin {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("raftmq.admin");
    }
}
