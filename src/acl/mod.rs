//! Access control as RocketMQ 5 does it: users with access and secret keys, requests signed
//! by the clients, and per-user policies on topics, groups and the cluster.
//!
//! * [`signature`]: the `authorization` header the official clients send and its HMAC-SHA1.
//! * [`policy`]: resource patterns, actions, Allow/Deny and how a decision is reached.
//! * [`state`]: users and policies as replicated state, and the commands changing them.
//!
//! With ACL on (`acl_enabled`), every request to a broker is first **authenticated** (a known
//! access key and a valid signature, else `UNAUTHORIZED`, code 40100) and then **authorized**
//! for the resources it touches (else `FORBIDDEN`, 40300). Super users pass every check. The
//! bootstrap super user of the config (`acl_admin_access_key` / `acl_admin_secret_key`) is
//! not in the replicated state: it is how the first users are created, and a way back in if
//! they are lost.
//!
//! This module knows no gRPC: the service layers pass header values in and map [`AclError`]
//! to their status codes.

pub mod policy;
pub mod signature;
pub mod state;

pub use policy::{Action, Decision, Entry, Pattern, Resource, ResourceType};
pub use state::{AclCommand, AclState, User, UserKind};

/// ACL failures. Serializable: a replica's answer to an ACL command carries one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum AclError {
    /// Missing, malformed or wrong credentials (RocketMQ `UNAUTHORIZED`).
    #[error("unauthorized: {0}")]
    Unauthenticated(String),
    /// An authenticated user may not do this (RocketMQ `FORBIDDEN`).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Bad user or policy input.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The user or policy entry exists already.
    #[error("exists: {0}")]
    Conflict(String),
    /// No such user or policy.
    #[error("not found: {0}")]
    NotFound(String),
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The access key.
    pub name: String,
    /// A super user (or a caller holding a cluster certificate).
    pub superuser: bool,
}

impl Principal {
    /// A caller trusted without a signature: one that presented a certificate of the
    /// cluster CA (a cluster member or an operator's admin tool).
    pub fn cluster_member() -> Self {
        Principal {
            name: "cluster-certificate".into(),
            superuser: true,
        }
    }
}

/// The bootstrap super user of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCredentials {
    /// Access key.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
}

/// Check a request's `authorization` and `x-mq-date-time` header values against `state` and
/// the bootstrap `admin`.
pub fn authenticate(
    state: &AclState,
    admin: Option<&AdminCredentials>,
    authorization: Option<&str>,
    date_time: Option<&str>,
) -> Result<Principal, AclError> {
    let header = authorization.ok_or_else(|| {
        AclError::Unauthenticated("no credentials: the request is not signed".into())
    })?;
    let auth = signature::parse(header)?;
    let date_time = date_time.ok_or_else(|| {
        AclError::Unauthenticated(format!(
            "the signed header {} is missing",
            signature::SIGNED_HEADER
        ))
    })?;
    let (secret, superuser) = match (admin, state.user(auth.access_key)) {
        (Some(a), _) if a.access_key == auth.access_key => (a.secret_key.as_str(), true),
        (_, Some(u)) => (u.secret.as_str(), u.kind == UserKind::Super),
        _ => {
            return Err(AclError::Unauthenticated(format!(
                "unknown access key {}",
                auth.access_key
            )));
        }
    };
    if !signature::verify(secret, date_time, &auth.signature) {
        return Err(AclError::Unauthenticated(format!(
            "signature mismatch for access key {}: wrong secret key",
            auth.access_key
        )));
    }
    Ok(Principal {
        name: auth.access_key.to_string(),
        superuser,
    })
}

/// Allow `who` to take every `(resource, action)` of `needs`, or say which one is refused.
pub fn authorize(
    state: &AclState,
    who: &Principal,
    needs: &[(Resource, Action)],
) -> Result<(), AclError> {
    if who.superuser {
        return Ok(());
    }
    match needs.iter().find(|(r, a)| !state.allows(&who.name, r, *a)) {
        None => Ok(()),
        Some((r, a)) => Err(AclError::Forbidden(format!(
            "user {} may not {a} on {r}",
            who.name
        ))),
    }
}

/// Allow `who` to take at least one of `actions` on `r` (QueryRoute: Pub or Sub).
pub fn authorize_any(
    state: &AclState,
    who: &Principal,
    r: &Resource,
    actions: &[Action],
) -> Result<(), AclError> {
    if who.superuser || actions.iter().any(|a| state.allows(&who.name, r, *a)) {
        return Ok(());
    }
    let list: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
    Err(AclError::Forbidden(format!(
        "user {} may not {} on {r}",
        who.name,
        list.join(" or ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> AclState {
        let mut s = AclState::default();
        for (name, kind) in [("alice", UserKind::Normal), ("root", UserKind::Super)] {
            s.apply(AclCommand::CreateUser {
                user: User {
                    name: name.into(),
                    secret: format!("{name}-secret"),
                    kind,
                },
            })
            .unwrap();
        }
        s.apply(AclCommand::CreateAcl {
            subject: "User:alice".into(),
            entries: vec![Entry {
                resource: "Topic:orders".parse().unwrap(),
                actions: vec![Action::Pub],
                decision: Decision::Allow,
            }],
        })
        .unwrap();
        s
    }

    const T: &str = "20261207T193000Z";

    #[test]
    fn signed_requests_authenticate_and_wrong_ones_do_not() {
        let s = state();
        let admin = AdminCredentials {
            access_key: "boot".into(),
            secret_key: "boot-secret".into(),
        };
        let ok = signature::sign("alice", "alice-secret", T);
        let p = authenticate(&s, Some(&admin), Some(&ok), Some(T)).unwrap();
        assert_eq!(p.name, "alice");
        assert!(!p.superuser);
        let boot = signature::sign("boot", "boot-secret", T);
        assert!(
            authenticate(&s, Some(&admin), Some(&boot), Some(T))
                .unwrap()
                .superuser
        );
        let cases = [
            (None, Some(T)),
            (Some(signature::sign("alice", "wrong-secret", T)), Some(T)),
            (Some(signature::sign("mallory", "x-secret", T)), Some(T)),
            (Some(ok.clone()), None),
            (Some(ok.clone()), Some("20261207T193001Z")),
        ];
        for (h, d) in cases {
            assert!(matches!(
                authenticate(&s, Some(&admin), h.as_deref(), d),
                Err(AclError::Unauthenticated(_))
            ));
        }
    }

    #[test]
    fn authorization_follows_policy_and_super_users_pass() {
        let s = state();
        let alice = Principal {
            name: "alice".into(),
            superuser: false,
        };
        let root = Principal {
            name: "root".into(),
            superuser: true,
        };
        let pub_orders = [(Resource::topic("orders"), Action::Pub)];
        assert!(authorize(&s, &alice, &pub_orders).is_ok());
        let sub = [
            (Resource::topic("orders"), Action::Sub),
            (Resource::group("g"), Action::Sub),
        ];
        assert!(matches!(
            authorize(&s, &alice, &sub),
            Err(AclError::Forbidden(_))
        ));
        assert!(authorize(&s, &root, &sub).is_ok());
        let any = [Action::Pub, Action::Sub];
        assert!(authorize_any(&s, &alice, &Resource::topic("orders"), &any).is_ok());
        assert!(authorize_any(&s, &alice, &Resource::topic("other"), &any).is_err());
    }
}
