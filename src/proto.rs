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

    /// The nameserver's registry service (`proto/raftmq/nameserver.proto`).
    pub mod nameserver {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("raftmq.nameserver");
    }
}

/// The RocketMQ 5.x client protocol (`proto/apache/rocketmq/v2/*.proto`): the
/// `apache.rocketmq.v2.MessagingService` the official clients speak.
pub mod apache {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    /// `apache.rocketmq`
    pub mod rocketmq {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        /// `apache.rocketmq.v2`
        pub mod v2 {
            #![allow(missing_docs, clippy::all, clippy::pedantic)]
            tonic::include_proto!("apache.rocketmq.v2");
        }
    }
}
