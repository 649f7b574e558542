//! RocketMQ 5 protocol helpers shared by the services that speak it (broker nodes and
//! nameservers): routes (`QueryRoute` answers), the Telemetry `Settings` reply, and the
//! client's deadline (`grpc-timeout`).
//! Protocol types stop at this service layer; storage and Raft never see them.

pub mod route;
pub mod settings;

pub use route::GroupRoute;

use std::time::Duration;

/// The client's deadline for this call, from its `grpc-timeout` header (up to 8 digits and
/// a unit: `H`, `M`, `S`, `m`, `u`, `n`); `None` if it sent none or an unreadable one.
pub fn grpc_timeout(md: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let unit = v.chars().last()?;
    let n: u64 = v.get(..v.len() - unit.len_utf8())?.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n.saturating_mul(3600)),
        'M' => Duration::from_secs(n.saturating_mul(60)),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let md = |v: &'static str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert(
                "grpc-timeout",
                tonic::metadata::MetadataValue::from_static(v),
            );
            m
        };
        assert_eq!(
            grpc_timeout(&md("2999m")),
            Some(Duration::from_millis(2999))
        );
        assert_eq!(grpc_timeout(&md("8S")), Some(Duration::from_secs(8)));
        assert_eq!(grpc_timeout(&md("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(&md("500u")), Some(Duration::from_micros(500)));
        assert_eq!(grpc_timeout(&md("12x")), None);
        assert_eq!(grpc_timeout(&md("m")), None);
        assert_eq!(grpc_timeout(&tonic::metadata::MetadataMap::new()), None);
    }
}
