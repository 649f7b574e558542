//! The server's answer to a client's `Settings` on the `Telemetry` stream, shared by the
//! nameserver's and the broker's `MessagingService`.
//!
//! Clients send their settings when they open `Telemetry` (and every few minutes after); the
//! server answers at once on the same stream with `status OK` and the settings merged with
//! its own values, as the RocketMQ proxy does. Clients depend on those values: the Python
//! producer refuses every send if `publishing.max_body_size` is 0, the Node producer asserts
//! the backoff policy is exponential, and the PushConsumer takes its long-polling timeout
//! from `subscription.long_polling_timeout`.

use std::time::Duration;

use crate::proto::apache::rocketmq::v2 as api;
use api::settings::PubSub;

/// Largest message body a client may send (advertised as `publishing.max_body_size`).
pub const MAX_BODY_SIZE: i32 = 4 << 20;
/// Producer send attempts (first try + retries).
pub const PRODUCER_MAX_ATTEMPTS: i32 = 3;
/// Producer retry backoff: first delay, cap and multiplier.
pub const PRODUCER_BACKOFF: (Duration, Duration, f32) =
    (Duration::from_millis(10), Duration::from_secs(1), 2.0);
/// Consumer delivery attempts before a message goes to the dead-letter queue (RocketMQ's
/// default of 16 retries + the first delivery).
pub const CONSUMER_MAX_ATTEMPTS: i32 = 17;
/// Consumer redelivery backoff after a failed consumption: first delay, cap and multiplier.
pub const CONSUMER_BACKOFF: (Duration, Duration, f32) =
    (Duration::from_secs(1), Duration::from_secs(7200), 2.0);
/// Messages a consumer asks for per receive (`subscription.receive_batch_size`).
pub const RECEIVE_BATCH_SIZE: i32 = 32;
/// Longest long poll (`subscription.long_polling_timeout`).
pub const LONG_POLLING_TIMEOUT: Duration = Duration::from_secs(20);

/// A protobuf `Duration`.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// An exponential `RetryPolicy`.
pub fn exponential_backoff(
    max_attempts: i32,
    (initial, max, multiplier): (Duration, Duration, f32),
) -> api::RetryPolicy {
    api::RetryPolicy {
        max_attempts,
        strategy: Some(api::retry_policy::Strategy::ExponentialBackoff(
            api::ExponentialBackoff {
                initial: Some(duration(initial)),
                max: Some(duration(max)),
                multiplier,
            },
        )),
    }
}

/// A customized `RetryPolicy`: attempt n waits `delays[n-1]` (whole seconds, as the Python
/// PushConsumer reads them).
pub fn customized_backoff(max_attempts: i32, delays: &[Duration]) -> api::RetryPolicy {
    api::RetryPolicy {
        max_attempts,
        strategy: Some(api::retry_policy::Strategy::CustomizedBackoff(
            api::CustomizedBackoff {
                next: delays
                    .iter()
                    .map(|d| duration(Duration::from_secs(d.as_secs().max(1))))
                    .collect(),
            },
        )),
    }
}

/// Apply a consumer group's configuration to the settings answered to one of its
/// consumers: `fifo`, and the redelivery backoff. The Python PushConsumer honours only a
/// customized backoff and every other client only an exponential one, so Python push
/// consumers get the group's delays as they are and the others an exponential policy from the
/// first delay to the last.
pub fn apply_group(s: &mut api::Settings, fifo: bool, max_attempts: u32, delays: &[Duration]) {
    let Some(PubSub::Subscription(sub)) = &mut s.pub_sub else {
        return;
    };
    sub.fifo = Some(fifo);
    let attempts = i32::try_from(max_attempts).unwrap_or(i32::MAX);
    let python = s
        .user_agent
        .as_ref()
        .is_some_and(|u| u.language == api::Language::Python as i32);
    let push = s.client_type == Some(api::ClientType::PushConsumer as i32);
    s.backoff_policy = Some(if python && push && !delays.is_empty() {
        customized_backoff(attempts, delays)
    } else {
        let first = delays.first().copied().unwrap_or(CONSUMER_BACKOFF.0);
        let last = delays.last().copied().unwrap_or(CONSUMER_BACKOFF.1);
        exponential_backoff(attempts, (first, last.max(first), 2.0))
    });
}

fn is_consumer(t: Option<i32>) -> bool {
    matches!(
        t.and_then(|t| api::ClientType::try_from(t).ok()),
        Some(
            api::ClientType::PushConsumer
                | api::ClientType::SimpleConsumer
                | api::ClientType::PullConsumer
                | api::ClientType::LitePushConsumer
                | api::ClientType::LiteSimpleConsumer
        )
    )
}

/// The effective settings for `client`: its own settings with the server's values merged in.
///
/// * producers (`publishing`): `max_body_size` = [`MAX_BODY_SIZE`],
///   `validate_message_type = true`, backoff exponential ([`PRODUCER_MAX_ATTEMPTS`],
///   [`PRODUCER_BACKOFF`]);
/// * consumers (`subscription`): `receive_batch_size` = [`RECEIVE_BATCH_SIZE`],
///   `long_polling_timeout` = [`LONG_POLLING_TIMEOUT`], `fifo = false` unless the client set
///   it (a broker that knows the group is orderly sets it afterwards), backoff exponential
///   ([`CONSUMER_MAX_ATTEMPTS`], [`CONSUMER_BACKOFF`]);
/// * `metric` defaults to off.
///
/// A settings with neither `publishing` nor `subscription` gets one from its `client_type`;
/// `Err` carries what is wrong when that is impossible.
pub fn effective_settings(client: api::Settings) -> Result<api::Settings, String> {
    let mut s = client;
    if s.pub_sub.is_none() {
        s.pub_sub = match s
            .client_type
            .and_then(|t| api::ClientType::try_from(t).ok())
        {
            Some(api::ClientType::Producer) => Some(PubSub::Publishing(api::Publishing::default())),
            _ if is_consumer(s.client_type) => {
                Some(PubSub::Subscription(api::Subscription::default()))
            }
            _ => {
                return Err(
                    "settings carry neither publishing nor subscription, and no known client type"
                        .into(),
                );
            }
        };
    }
    match &mut s.pub_sub {
        Some(PubSub::Publishing(p)) => {
            p.max_body_size = MAX_BODY_SIZE;
            p.validate_message_type = true;
            s.backoff_policy = Some(exponential_backoff(PRODUCER_MAX_ATTEMPTS, PRODUCER_BACKOFF));
        }
        Some(PubSub::Subscription(sub)) => {
            sub.receive_batch_size = Some(RECEIVE_BATCH_SIZE);
            sub.long_polling_timeout = Some(duration(LONG_POLLING_TIMEOUT));
            sub.fifo = Some(sub.fifo.unwrap_or(false));
            s.backoff_policy = Some(exponential_backoff(CONSUMER_MAX_ATTEMPTS, CONSUMER_BACKOFF));
        }
        None => {}
    }
    if s.metric.is_none() {
        s.metric = Some(api::Metric {
            on: false,
            endpoints: None,
        });
    }
    Ok(s)
}

/// The `TelemetryCommand` answering a client's `Settings`: `status OK` + the effective
/// settings ([`effective_settings`]), or `BAD_REQUEST` + the settings echoed unchanged.
pub fn settings_reply(client: api::Settings) -> api::TelemetryCommand {
    match effective_settings(client.clone()) {
        Ok(s) => api::TelemetryCommand {
            status: Some(super::route::status(api::Code::Ok, "OK")),
            command: Some(api::telemetry_command::Command::Settings(s)),
        },
        Err(e) => api::TelemetryCommand {
            status: Some(super::route::status(api::Code::BadRequest, e)),
            command: Some(api::telemetry_command::Command::Settings(client)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(s: &api::Settings) -> (i32, api::ExponentialBackoff) {
        let p = s.backoff_policy.clone().unwrap();
        match p.strategy {
            Some(api::retry_policy::Strategy::ExponentialBackoff(e)) => (p.max_attempts, e),
            other => panic!("not exponential: {other:?}"),
        }
    }

    #[test]
    fn producer_settings() {
        let client = api::Settings {
            client_type: Some(api::ClientType::Producer as i32),
            request_timeout: Some(duration(Duration::from_secs(3))),
            pub_sub: Some(PubSub::Publishing(api::Publishing {
                topics: vec![api::Resource {
                    resource_namespace: String::new(),
                    name: "T".into(),
                }],
                max_body_size: 134_217_728,
                validate_message_type: false,
            })),
            ..Default::default()
        };
        let reply = settings_reply(client);
        assert_eq!(reply.status.unwrap().code, api::Code::Ok as i32);
        let Some(api::telemetry_command::Command::Settings(s)) = reply.command else {
            panic!("no settings");
        };
        let Some(PubSub::Publishing(p)) = &s.pub_sub else {
            panic!("no publishing");
        };
        assert_eq!(p.max_body_size, 4 << 20);
        assert!(p.validate_message_type);
        assert_eq!(p.topics.len(), 1);
        assert_eq!(s.request_timeout.unwrap().seconds, 3);
        let (n, e) = backoff(&s);
        assert_eq!(n, 3);
        assert_eq!(e.initial.unwrap().nanos, 10_000_000);
        assert_eq!(e.max.unwrap().seconds, 1);
        assert_eq!(e.multiplier, 2.0);
        assert!(!s.metric.unwrap().on);
    }

    #[test]
    fn consumer_settings() {
        let client = api::Settings {
            client_type: Some(api::ClientType::SimpleConsumer as i32),
            ..Default::default()
        };
        let s = effective_settings(client).unwrap();
        let Some(PubSub::Subscription(sub)) = &s.pub_sub else {
            panic!("no subscription");
        };
        assert_eq!(sub.receive_batch_size, Some(32));
        assert_eq!(sub.long_polling_timeout.unwrap().seconds, 20);
        assert_eq!(sub.fifo, Some(false));
        assert_eq!(backoff(&s).0, CONSUMER_MAX_ATTEMPTS);
        let bad = settings_reply(api::Settings::default());
        assert_eq!(bad.status.unwrap().code, api::Code::BadRequest as i32);
    }
}
