//! The proxy's unary relay: one request sent to a broker group member by member, within the
//! client's deadline, until a member answers with a leader.

use std::time::Duration;

use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::{HA_PAUSE, Inner, PER_TRY, budget, relay_metadata};
use crate::proto::apache::rocketmq::v2 as api;
use crate::proto::apache::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use crate::protocol::route::status;

impl Inner {
    /// Send `body` to `group`, member by member, until one answers without `HA_NOT_AVAILABLE`
    /// or the budget is spent. [`PER_TRY`] (plus `reserved`, a receive's long poll) bounds one
    /// member's time, the last try gets what is left; `ha` says whether an answer means "no leader yet, ask again".
    pub(super) async fn unary<Req, Resp, Fut>(
        &self,
        group: &str,
        md: &MetadataMap,
        body: Req,
        reserved: Duration,
        call: impl Fn(MessagingServiceClient<Channel>, Request<Req>) -> Fut,
        ha: impl Fn(&Resp) -> bool,
    ) -> Result<Resp, api::Status>
    where
        Req: Clone,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + budget(md, reserved);
        self.unary_until(
            group,
            &relay_metadata(md),
            deadline,
            body,
            reserved,
            call,
            ha,
        )
        .await
    }

    /// [`Inner::unary`] with the relayed headers and the deadline already worked out.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn unary_until<Req, Resp, Fut>(
        &self,
        group: &str,
        relay: &MetadataMap,
        deadline: tokio::time::Instant,
        body: Req,
        reserved: Duration,
        call: impl Fn(MessagingServiceClient<Channel>, Request<Req>) -> Fut,
        ha: impl Fn(&Resp) -> bool,
    ) -> Result<Resp, api::Status>
    where
        Req: Clone,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let mut last: Option<Resp> = None;
        let mut last_err = format!("no live member of broker group `{group}` is registered");
        loop {
            let members = self.candidates(group);
            if members.is_empty() {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(HA_PAUSE * 2).await;
                continue;
            }
            for addr in members {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                let c = self
                    .client(&addr)
                    .map_err(|e| status(api::Code::InternalServerError, e.message()))?;
                let mut r = Request::new(body.clone());
                *r.metadata_mut() = relay.clone();
                let this_try = (PER_TRY + reserved).min(left + reserved);
                r.set_timeout(this_try);
                match tokio::time::timeout(this_try, call(c, r)).await {
                    Ok(Ok(resp)) => {
                        let resp = resp.into_inner();
                        if !ha(&resp) {
                            return Ok(resp);
                        }
                        last = Some(resp);
                        // The member is up but its group has no leader yet: the others
                        // know no more. Ask again shortly.
                        tokio::time::sleep(HA_PAUSE.min(left)).await;
                        break;
                    }
                    Ok(Err(e)) => {
                        last_err = format!("broker {addr}: {}", e.message());
                        self.suspect(&addr);
                    }
                    Err(_) => {
                        last_err = format!("broker {addr} did not answer in {this_try:?}");
                        self.suspect(&addr);
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        match last {
            Some(r) => Ok(r),
            None => Err(status(api::Code::HaNotAvailable, last_err)),
        }
    }
}
