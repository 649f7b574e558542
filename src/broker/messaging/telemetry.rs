//! The Telemetry stream: each client's settings recorded with its stream, Settings replies
//! filled from the consumer group's configuration.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::{BoxStream, MessagingSvc, error_status};
use crate::acl::{Action, Resource};
use crate::broker::error::BrokerError;
use crate::broker::node::Node;
use crate::proto::apache::rocketmq::v2;
use crate::protocol::settings::{self, settings_reply};

impl MessagingSvc {
    /// The Telemetry RPC (`MessagingService::telemetry`).
    pub(super) async fn open_telemetry(
        &self,
        req: Request<tonic::Streaming<v2::TelemetryCommand>>,
    ) -> Result<Response<BoxStream<v2::TelemetryCommand>>, Status> {
        let client_id = Self::client_id(&req);
        // ACL: the stream is authenticated once, when it opens; each Settings command is
        // authorized for what it declares (a producer's topics: Pub; a consumer's group and
        // topics: Sub). A refused Settings is answered with the refusal's status and not
        // recorded, so no check-back or setting reaches that client through it.
        let principal = self.node()?.principal(req.metadata());
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<v2::TelemetryCommand, Status>>(64);
        let node = self.node.clone();
        let sessions = Arc::clone(&self.sessions);
        // Settings are recorded per client id with the stream (check-backs of transactions
        // go out on it) and each Settings command is answered at once; the stream stays open
        // until the client closes it.
        // The task keeps the request's span, so its log lines name the client.
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                loop {
                    let msg = match inbound.message().await {
                        Ok(Some(m)) => m,
                        Ok(None) | Err(_) => break,
                    };
                    let Some(n) = node.upgrade() else { break };
                    if let Some(v2::telemetry_command::Command::Settings(s)) = msg.command {
                        tracing::info!(
                            client_type = ?s.client_type.and_then(|t| v2::ClientType::try_from(t).ok()),
                            "client settings"
                        );
                        let allowed = match &principal {
                            Ok(None) => Ok(()),
                            Ok(Some(p)) => n.authorize_as(p, &settings_needs(&s)),
                            Err(e) => Err(BrokerError::Acl(e.clone())),
                        };
                        if let Err(e) = allowed {
                            tracing::info!("refused settings: {e}");
                            let mut reply = settings_reply(s);
                            reply.status = Some(error_status(&e));
                            if tx.send(Ok(reply)).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        sessions.set_settings(&client_id, &s, &tx);
                        let mut reply = settings_reply(s);
                        group_settings(&n, &mut reply);
                        if tx.send(Ok(reply)).await.is_err() {
                            break;
                        }
                    } else {
                        sessions.touch(&client_id);
                    }
                }
                tracing::info!("telemetry stream closed");
            },
            span,
        ));
        // The stream ends when the node stops serving (a graceful leave drains requests, and
        // a stream that never ends would hold the drain to its bound); clients open it again
        // on another member.
        let mut stop = self.node()?.shutdown_signal();
        let out = Box::pin(futures::StreamExt::take_until(
            tokio_stream_from(rx),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
        Ok(Response::new(out))
    }
}

/// What a client's Settings declare it will do: Pub on a producer's topics, Sub on a
/// consumer's group and topics.
fn settings_needs(s: &v2::Settings) -> Vec<(Resource, Action)> {
    let name = |r: &Option<v2::Resource>| r.as_ref().map_or(String::new(), |r| r.name.clone());
    match &s.pub_sub {
        Some(v2::settings::PubSub::Publishing(p)) => p
            .topics
            .iter()
            .map(|t| (Resource::topic(&t.name), Action::Pub))
            .collect(),
        Some(v2::settings::PubSub::Subscription(sub)) => {
            let mut needs = vec![(Resource::group(&name(&sub.group)), Action::Sub)];
            needs.extend(
                sub.subscriptions
                    .iter()
                    .map(|e| (Resource::topic(&name(&e.topic)), Action::Sub)),
            );
            needs
        }
        None => Vec::new(),
    }
}

/// Fill a consumer's Settings reply from its group's replicated configuration.
fn group_settings(node: &Node, reply: &mut v2::TelemetryCommand) {
    let Some(v2::telemetry_command::Command::Settings(s)) = &mut reply.command else {
        return;
    };
    let Some(v2::settings::PubSub::Subscription(sub)) = &s.pub_sub else {
        return;
    };
    let Some(group) = sub.group.as_ref().map(|g| g.name.clone()) else {
        return;
    };
    let gc = node.sm.group_config(&group);
    let delays: Vec<Duration> = gc
        .retry_backoff_ms
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect();
    settings::apply_group(s, gc.fifo, gc.max_delivery_attempts, &delays);
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<Result<T, Status>>,
) -> BoxStream<T> {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
