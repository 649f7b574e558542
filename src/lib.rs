//! raftmq: a RocketMQ-style message broker whose CommitLog is a Raft log.
//!
//! Layers point down only: `main` (CLI) → `broker` / `nameserver` / `client` → [`raft`] →
//! [`storage`]. See `README.md` and `docs/failover.md` for the whole picture.
//!
//! * **Produce** (official client): `SendMessage` → a nameserver ([`nameserver::proxy`]) →
//!   a member of the group holding the topic → its leader ([`broker`], forwarded if need be,
//!   waiting out an election within the client's deadline) → one Raft entry per request
//!   (group-committed) → appended to the CommitLog ([`storage`]) and fsync'd on a quorum →
//!   applied: ConsumeQueue units, key/id index, dedupe window → answer with id and offset.
//! * **Consume**: `ReceiveMessage` (long poll) → proxy → leader picks ready messages for the
//!   consumer group (expired deliveries first; an orderly group skips queues with a delivery
//!   in flight), records the delivery as a Raft command and answers with receipt handles;
//!   `AckMessage` / `ChangeInvisibleDuration` are Raft commands too, so a new leader knows
//!   what was consumed.
//! * **TLS** ([`tls`]): optional on every gRPC port; cluster members talk mutual TLS and the
//!   cluster-internal services (Raft, Admin, broker registration) demand a certificate of the
//!   cluster CA, while RocketMQ clients need only trust the CA.

pub mod acl;
pub mod admin_cli;
pub mod broker;
pub mod cli_tls;
pub mod client;
pub mod config;
pub mod duration;
pub mod filter;
pub mod hops;
pub mod nameserver;
pub mod proto;
pub mod protocol;
pub mod raft;
pub mod storage;
pub mod tls;
