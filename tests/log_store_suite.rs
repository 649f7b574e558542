//! openraft's own storage conformance suite, run against the CommitLog-backed log store,
//! with tiny segments and index files so that rolls and multi-file indexes are exercised.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use raftmq::raft::TypeConfig;
use raftmq::raft::log_store::LogStore;
use raftmq::raft::state_machine::StateMachine;
use raftmq::storage::{CommitLogConfig, FlushMode};
use tempfile::TempDir;

fn io_err(e: std::io::Error) -> StorageError<TypeConfig> {
    StorageError::from_io_error(openraft::ErrorSubject::Store, openraft::ErrorVerb::Read, e)
}

struct Builder {
    flush: FlushMode,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().map_err(io_err)?;
        let mut cfg = CommitLogConfig::new(dir.path());
        cfg.segment_size = 4096;
        cfg.index_slots_per_file = 8;
        cfg.flush = self.flush;
        let store = LogStore::open(cfg).map_err(|e| io_err(e.into()))?;
        let (sm, _handle) =
            StateMachine::open(dir.path(), store.commitlog()).map_err(|e| io_err(e.into()))?;
        Ok((dir, store, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_sync_flush() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(Builder {
        flush: FlushMode::Sync,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_async_flush() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(Builder {
        flush: FlushMode::Async,
    })
    .await
}
