//! Authentication and authorization of broker requests (ACL, see [`crate::acl`]).
//!
//! With `acl_enabled` every client RPC is checked against the group's replicated users and
//! policies: first the signature (`UNAUTHORIZED` when missing or wrong), then the resources
//! the request touches (`FORBIDDEN`). Nothing is checked with ACL off.
//!
//! A node checks the requests it receives, also those a follower forwarded (the client's
//! `authorization` and `x-mq-date-time` travel with them): no header marks a request as
//! already checked, because any client could set it. On the Admin service a caller that
//! presented a certificate of the cluster CA (mutual TLS) counts as a super user — that is
//! an operator or a member forwarding an admin write — while the RocketMQ service never
//! trusts certificates, since the nameserver's proxy relays every client with its own.

use tonic::metadata::MetadataMap;

use super::error::BrokerError;
use super::node::Node;
use crate::acl::{self, AclError, Action, AdminCredentials, Principal, Resource};

/// ACL settings of a node.
#[derive(Debug, Clone, Default)]
pub struct AclConfig {
    /// Check every request.
    pub enabled: bool,
    /// The bootstrap super user (`acl_admin_access_key` / `acl_admin_secret_key`).
    pub admin: Option<AdminCredentials>,
}

/// The headers a signature covers; forwarded with a request so the next node can check it.
pub const AUTH_HEADERS: [&str; 2] = ["authorization", crate::acl::signature::SIGNED_HEADER];

fn header<'a>(md: &'a MetadataMap, name: &str) -> Option<&'a str> {
    md.get(name).and_then(|v| v.to_str().ok())
}

impl Node {
    /// Whether requests are checked.
    pub fn acl_enabled(&self) -> bool {
        self.config.acl.enabled
    }

    /// Who signed the request (`None` with ACL off).
    pub fn principal(&self, md: &MetadataMap) -> Result<Option<Principal>, AclError> {
        if !self.config.acl.enabled {
            return Ok(None);
        }
        let p = self.sm.with_acl(|s| {
            acl::authenticate(
                s,
                self.config.acl.admin.as_ref(),
                header(md, "authorization"),
                header(md, acl::signature::SIGNED_HEADER),
            )
        })?;
        Ok(Some(p))
    }

    /// Authenticate the request and allow every `(resource, action)` of `needs`.
    pub fn authorize(
        &self,
        md: &MetadataMap,
        needs: &[(Resource, Action)],
    ) -> Result<(), BrokerError> {
        match self.principal(md)? {
            None => Ok(()),
            Some(p) => self.authorize_as(&p, needs),
        }
    }

    /// Allow every `(resource, action)` of `needs` for `p`.
    pub fn authorize_as(
        &self,
        p: &Principal,
        needs: &[(Resource, Action)],
    ) -> Result<(), BrokerError> {
        Ok(self.sm.with_acl(|s| acl::authorize(s, p, needs))?)
    }

    /// Authenticate the request and allow at least one of `actions` on `r`.
    pub fn authorize_any(
        &self,
        md: &MetadataMap,
        r: &Resource,
        actions: &[Action],
    ) -> Result<(), BrokerError> {
        match self.principal(md)? {
            None => Ok(()),
            Some(p) => Ok(self
                .sm
                .with_acl(|s| acl::authorize_any(s, &p, r, actions))?),
        }
    }
}

/// `Pub` on each distinct topic of a send.
pub fn publish_needs<'a>(topics: impl Iterator<Item = &'a str>) -> Vec<(Resource, Action)> {
    let mut topics: Vec<&str> = topics.collect();
    topics.sort_unstable();
    topics.dedup();
    topics
        .into_iter()
        .map(|t| (Resource::topic(t), Action::Pub))
        .collect()
}

/// Topic and group needs of a consumer RPC: `Sub` on both.
pub fn consume_needs(topic: &str, group: &str) -> [(Resource, Action); 2] {
    [
        (Resource::topic(topic), Action::Sub),
        (Resource::group(group), Action::Sub),
    ]
}

/// Copy the signature headers of `from` into `to` (forwarding a request).
pub fn copy_auth_headers(from: &MetadataMap, to: &mut MetadataMap) {
    for name in AUTH_HEADERS {
        if let Some(v) = from.get(name) {
            to.insert(name, v.clone());
        }
    }
}

tokio::task_local! {
    /// The signature headers of the Admin request being served, for forwarding it.
    static CALLER_AUTH: MetadataMap;
}

/// Run `fut` (serving an Admin request whose metadata is `md`) so that the admin writes it
/// forwards to the leader carry the caller's signature (see [`signed`]).
pub async fn as_caller<F: std::future::Future>(md: &MetadataMap, fut: F) -> F::Output {
    let mut auth = MetadataMap::new();
    copy_auth_headers(md, &mut auth);
    CALLER_AUTH.scope(auth, fut).await
}

/// `body` as a request carrying the signature of the caller being served (if any): a
/// forwarded admin write is checked again by the leader.
pub fn signed<T>(body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    let _ = CALLER_AUTH.try_with(|auth| copy_auth_headers(auth, r.metadata_mut()));
    r
}
