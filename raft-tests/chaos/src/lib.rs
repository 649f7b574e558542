//! raftmq chaos suite: a real cluster (nameserver + broker groups as separate `raftmq`
//! processes, each node in its own network namespace when the host allows it), a workload of
//! producers and consumers over the RocketMQ protocol that records every outcome into a
//! history, a nemesis injecting one fault at a time on a seeded schedule, and a checker over
//! the history in the spirit of Jepsen's queue checkers.
//!
//! The same modules are compiled into the `raftmq-chaos` binary and (through `#[path]`) into
//! the `raft_chaos` test of the main crate, which is how CI finds the built `raftmq` binary.

#[path = "checker.rs"]
pub mod checker;
#[path = "cluster.rs"]
pub mod cluster;
#[path = "history.rs"]
pub mod history;
#[path = "nemesis.rs"]
pub mod nemesis;
#[path = "net.rs"]
pub mod net;
#[path = "pyclient.rs"]
pub mod pyclient;
#[path = "replica.rs"]
pub mod replica;
#[path = "rng.rs"]
pub mod rng;
#[path = "run.rs"]
pub mod run;
#[path = "workload.rs"]
pub mod workload;
