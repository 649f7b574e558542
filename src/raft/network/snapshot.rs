//! Snapshot transfer: streams a full snapshot to a peer over `InstallSnapshot`.

use std::future::Future;
use std::pin::pin;

use bytes::Bytes;
use futures::SinkExt;
use openraft::errors::{NetworkError, ReplicationClosed, StreamingError};
use openraft::network::RPCOption;
use openraft::raft::SnapshotResponse;
use openraft::{OptionalSend, RPCTypes};

use super::{GrpcNetwork, Snapshot, convert, pb};
use crate::raft::types::{TypeConfig, Vote};

/// Smallest snapshot chunk we send, whatever openraft suggests.
const MIN_SNAPSHOT_CHUNK_BYTES: usize = 64 << 10;

impl GrpcNetwork {
    /// Streams a header (vote + JSON meta + size) and the snapshot buffer in chunks; the whole
    /// `Cursor` buffer is sent, whatever its position.
    pub(super) async fn send_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let ttl = option.soft_ttl();
        let timeout =
            || StreamingError::Timeout(self.timeout_error(RPCTypes::InstallSnapshot, ttl));
        let mut client = self.data_client()?;

        let chunk_bytes = option
            .snapshot_chunk_size()
            .unwrap_or(self.config.snapshot_chunk_bytes)
            .clamp(
                MIN_SNAPSHOT_CHUNK_BYTES,
                (self.config.max_message_bytes / 2).max(MIN_SNAPSHOT_CHUNK_BYTES),
            );
        let data = Bytes::from(snapshot.snapshot.into_inner());
        let header = convert::snapshot_header_to_pb(&vote, &snapshot.meta, data.len() as u64)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;

        let (mut tx, rx) = futures::channel::mpsc::channel::<pb::SnapshotChunk>(1);
        let mut call = pin!(client.install_snapshot(rx));
        let mut cancel = pin!(cancel);

        let send_all = async move {
            let header = pb::SnapshotChunk {
                chunk: Some(pb::snapshot_chunk::Chunk::Header(header)),
            };
            let chunks =
                std::iter::once(header).chain((0..data.len()).step_by(chunk_bytes).map(|start| {
                    pb::SnapshotChunk {
                        chunk: Some(pb::snapshot_chunk::Chunk::Data(
                            data.slice(start..(start + chunk_bytes).min(data.len())),
                        )),
                    }
                }));
            for chunk in chunks {
                match tokio::time::timeout(ttl, tx.send(chunk)).await {
                    Err(_elapsed) => return Err(timeout()),
                    Ok(Err(e)) => return Err(StreamingError::Network(NetworkError::new(&e))),
                    Ok(Ok(())) => {}
                }
            }
            // Dropping `tx` ends the request stream.
            Ok(())
        };

        // Phase 1: stream the chunks. The peer may answer early (e.g. with an error).
        let early = tokio::select! {
            biased;
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            response = &mut call => Some(response),
            sent = send_all => {
                sent?;
                None
            }
        };
        // Phase 2: wait for the peer to install the snapshot.
        let response = match early {
            Some(response) => response,
            None => tokio::select! {
                biased;
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                response = tokio::time::timeout(ttl, &mut call) => match response {
                    Ok(response) => response,
                    Err(_elapsed) => return Err(timeout()),
                },
            },
        };
        let response = response
            .map_err(|status| {
                StreamingError::from(self.status_error(RPCTypes::InstallSnapshot, ttl, status))
            })?
            .into_inner();
        match convert::snapshot_response_from_pb(response)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?
        {
            Ok(response) => Ok(response),
            Err(remote) => Err(StreamingError::Unreachable(self.remote_error(remote))),
        }
    }
}
