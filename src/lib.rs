//! raftmq: a RocketMQ-style message broker whose CommitLog is a Raft log.
//!
//! Layers point down only: `main` (CLI) → `broker` / `nameserver` / `client` → [`raft`] →
//! [`storage`]. See `README.md` and `../shared/DESIGN.md` for the produce and consume flows.

pub mod admin_cli;
pub mod broker;
pub mod client;
pub mod config;
pub mod duration;
pub mod filter;
pub mod nameserver;
pub mod proto;
pub mod protocol;
pub mod raft;
pub mod storage;
