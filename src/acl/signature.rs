//! The request signature of the RocketMQ 5 clients.
//!
//! Every signed request carries two headers:
//!
//! ```text
//! x-mq-date-time: 20261207T193000Z
//! authorization:  MQv2-HMAC-SHA1 Credential=<access key>, SignedHeaders=x-mq-date-time, Signature=<hex>
//! ```
//!
//! where `<hex>` is HMAC-SHA1 keyed with the secret key over the `x-mq-date-time` value. The
//! Python client writes the hex in lower case, the Node client in upper case: both are
//! accepted. The date is not checked against the clock: the Python client formats its *local*
//! time with a `Z` suffix, so any skew window would reject it on every host not set to UTC.

use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::AclError;

/// The only algorithm the clients use.
pub const ALGORITHM: &str = "MQv2-HMAC-SHA1";

/// The only header the clients sign.
pub const SIGNED_HEADER: &str = "x-mq-date-time";

/// The parts of an `authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization<'a> {
    /// The access key (`Credential=`).
    pub access_key: &'a str,
    /// The signature bytes (decoded from hex).
    pub signature: Vec<u8>,
}

/// Parse an `authorization` header. An empty access key (what the Python client sends when
/// it has no credentials) counts as no credentials.
pub fn parse(header: &str) -> Result<Authorization<'_>, AclError> {
    let rest = header
        .trim()
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| AclError::Unauthenticated(format!("authorization must use {ALGORITHM}")))?;
    let (mut access_key, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        match k.trim() {
            "Credential" => access_key = Some(v.trim()),
            "SignedHeaders" => signed = Some(v.trim()),
            "Signature" => signature = Some(v.trim()),
            _ => {}
        }
    }
    let access_key = access_key.unwrap_or("");
    if access_key.is_empty() {
        return Err(AclError::Unauthenticated(
            "no credentials: the request carries no access key".into(),
        ));
    }
    if !signed.is_some_and(|s| s.eq_ignore_ascii_case(SIGNED_HEADER)) {
        return Err(AclError::Unauthenticated(format!(
            "SignedHeaders must be {SIGNED_HEADER}"
        )));
    }
    let signature = signature
        .and_then(|s| hex::decode(s).ok())
        .ok_or_else(|| AclError::Unauthenticated("Signature is missing or not hex".into()))?;
    Ok(Authorization {
        access_key,
        signature,
    })
}

/// Check `signature` against HMAC-SHA1(`secret`, `date_time`), in constant time.
pub fn verify(secret: &str, date_time: &str, signature: &[u8]) -> bool {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(date_time.as_bytes());
    mac.verify_slice(signature).is_ok()
}

/// The `authorization` header a client with `access_key`/`secret` sends for `date_time`
/// (lower-case hex, as the Python client does). Used by our own client and admin CLI.
pub fn sign(access_key: &str, secret: &str, date_time: &str) -> String {
    let hex = match Hmac::<Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(date_time.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        }
        // HMAC accepts keys of any length; this arm is unreachable in practice.
        Err(_) => String::new(),
    };
    format!("{ALGORITHM} Credential={access_key}, SignedHeaders={SIGNED_HEADER}, Signature={hex}")
}

/// The current UTC time as `x-mq-date-time` wants it: `20261207T193000Z`.
pub fn date_time_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    date_time(secs)
}

/// `secs` since the epoch as `YYYYMMDDTHHMMSSZ` (proleptic Gregorian calendar, UTC).
pub fn date_time(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_time_is_utc_in_the_clients_format() {
        assert_eq!(date_time(0), "19700101T000000Z");
        // 2026-12-07 19:30:00 UTC.
        assert_eq!(date_time(1_796_671_800), "20261207T193000Z");
        // A leap day.
        assert_eq!(date_time(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn a_signed_header_round_trips_and_verifies() {
        let h = sign("alice", "s3cret", "20261207T193000Z");
        let a = parse(&h).unwrap();
        assert_eq!(a.access_key, "alice");
        assert!(verify("s3cret", "20261207T193000Z", &a.signature));
        assert!(!verify("wrong", "20261207T193000Z", &a.signature));
        assert!(!verify("s3cret", "20261207T193001Z", &a.signature));
    }

    #[test]
    fn upper_case_hex_as_the_node_client_sends_is_accepted() {
        let h = sign("alice", "s3cret", "20261207T193000Z");
        let (head, sig) = h.rsplit_once('=').unwrap();
        let upper = format!("{head}={}", sig.to_uppercase());
        let a = parse(&upper).unwrap();
        assert!(verify("s3cret", "20261207T193000Z", &a.signature));
    }

    #[test]
    fn known_vector_matches_hmac_sha1() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?".
        let h = sign("k", "Jefe", "what do ya want for nothing?");
        assert!(h.ends_with("Signature=effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"));
    }

    #[test]
    fn missing_or_malformed_credentials_are_unauthenticated() {
        // What the Python client sends with `Credentials()`.
        let empty = "MQv2-HMAC-SHA1 Credential=, SignedHeaders=x-mq-date-time, Signature=ab";
        for bad in [
            empty,
            "Basic dXNlcjpwYXNz",
            "MQv2-HMAC-SHA1 Credential=a, SignedHeaders=host, Signature=ab",
            "MQv2-HMAC-SHA1 Credential=a, SignedHeaders=x-mq-date-time, Signature=zz",
            "MQv2-HMAC-SHA1 Credential=a, SignedHeaders=x-mq-date-time",
        ] {
            assert!(
                matches!(parse(bad), Err(AclError::Unauthenticated(_))),
                "{bad}"
            );
        }
    }
}
