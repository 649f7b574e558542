//! TLS for every port: the one shared type ([`TlsSettings`]), the one function that turns an
//! address into a client [`Endpoint`] ([`endpoint`]), the one check that a caller holds a
//! certificate of the cluster CA ([`ClusterOnly`]), and the HTTPS configuration of a broker's
//! HTTP port ([`TlsSettings::https_server_config`]).
//!
//! Trust model: every member of the cluster (brokers, nameservers) holds a certificate signed by
//! the cluster's CA (`tls_ca`). Servers accept connections without a client certificate, because
//! the official RocketMQ SDKs present none, but a certificate that *is* presented must chain to
//! the CA (rustls refuses the handshake otherwise). The cluster-internal services (Raft, Admin,
//! the nameserver's broker registration) then demand a verified client certificate through
//! [`ClusterOnly`]. Outbound channels between members use mutual TLS: the CA as the only trust
//! root and the node's own certificate as its client identity. The HTTP port (health,
//! readiness, metrics) serves HTTPS with the same certificate and asks for no client
//! certificate at all (Kubernetes probes and Prometheus present none).
//!
//! Crypto provider: ring everywhere. tonic (feature `tls-ring`) builds its rustls configs with
//! the process default, which is ring as the only provider compiled in; the HTTPS config names
//! ring explicitly, so it needs no process-wide provider installed.
//!
//! This module is a leaf: it knows PEM files and tonic, nothing of brokers or Raft.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// A TLS setup error; the message names the configuration key or address concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("`{key}`: cannot read {}: {source}", path.display())]
    Read {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("`{key}`: {}: {message}", path.display())]
    Parse {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Only some of `tls_cert`, `tls_key`, `tls_ca` were given.
    #[error("`{key}`: missing; `tls_cert`, `tls_key` and `tls_ca` go together (all three or none)")]
    Incomplete {
        /// The first missing key.
        key: &'static str,
    },
    /// Generating or writing development certificates failed.
    #[error("generating certificates in {}: {message}", dir.display())]
    Generate {
        /// The directory.
        dir: PathBuf,
        /// Why.
        message: String,
    },
    /// The certificate and key do not make a usable HTTPS server (see
    /// [`TlsSettings::https_server_config`]).
    #[error("`tls_cert` / `tls_key`: not a usable HTTPS server identity: {message}")]
    Identity {
        /// Why.
        message: String,
    },
    /// An address could not be made into a TLS endpoint.
    #[error("invalid address {addr:?}: {message}")]
    Address {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
}

/// The PEM contents, loaded and checked once at start (so a bad file fails at start, not at
/// the first connection).
struct Pem {
    /// This node's certificate chain and key; `None` for a CLI that only verifies servers.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The cluster CA bundle.
    ca: Vec<u8>,
}

/// TLS material of one process: the cluster CA and (for servers, optionally for CLIs) this
/// process's certificate and key. Cheap to clone.
#[derive(Clone)]
pub struct TlsSettings {
    pem: Arc<Pem>,
}

impl std::fmt::Debug for TlsSettings {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("identity", &self.pem.identity.is_some())
            .finish_non_exhaustive()
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a file holding at least one PEM certificate.
fn read_certs(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = read(key, path)?;
    let parse = |message: String| TlsError::Parse {
        key,
        path: path.to_path_buf(),
        message,
    };
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(&bytes) {
        c.map_err(|e| parse(format!("not a PEM certificate: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(parse("no PEM certificate (BEGIN CERTIFICATE) found".into()));
    }
    Ok(bytes)
}

fn read_key(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Parse {
        key,
        path: path.to_path_buf(),
        message: format!("no usable PEM private key: {e}"),
    })?;
    Ok(bytes)
}

impl TlsSettings {
    /// A server's settings: all three of `tls_cert`, `tls_key`, `tls_ca`, or none (`Ok(None)`).
    /// Errors name the key.
    pub fn server(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<Option<TlsSettings>, TlsError> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => {
                let tls = Self::client(ca, Some((cert, key)))?;
                // Build the server side once now, so that a key that does not match the
                // certificate (or a CA rustls cannot use) stops the process at start.
                let config = tls.server_config()?;
                tonic::transport::Server::builder()
                    .tls_config(config)
                    .map_err(|e| TlsError::Parse {
                        key: "tls_key",
                        path: key.to_path_buf(),
                        message: format!(
                            "`tls_cert`, `tls_key` and `tls_ca` do not make a usable TLS server: {}",
                            error_chain(&e)
                        ),
                    })?;
                // The HTTP port's config too (the same files, another rustls config).
                tls.https_server_config().map_err(|e| TlsError::Parse {
                    key: "tls_key",
                    path: key.to_path_buf(),
                    message: e.to_string(),
                })?;
                Ok(Some(tls))
            }
            (None, _, _) => Err(TlsError::Incomplete { key: "tls_cert" }),
            (_, None, _) => Err(TlsError::Incomplete { key: "tls_key" }),
            (_, _, None) => Err(TlsError::Incomplete { key: "tls_ca" }),
        }
    }

    /// A client's settings: the CA to verify servers with and, optionally, a certificate and
    /// key to present (needed for the cluster-internal services).
    pub fn client(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<TlsSettings, TlsError> {
        let identity = match identity {
            Some((cert, key)) => Some((read_certs("tls_cert", cert)?, read_key("tls_key", key)?)),
            None => None,
        };
        let ca = read_certs("tls_ca", ca)?;
        Ok(TlsSettings {
            pem: Arc::new(Pem { identity, ca }),
        })
    }

    /// Whether this process has a certificate to present.
    pub fn has_identity(&self) -> bool {
        self.pem.identity.is_some()
    }

    /// The server side: this node's identity; client certificates optional (official SDK
    /// clients have none) but, when presented, verified against the CA.
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let Some((cert, key)) = &self.pem.identity else {
            return Err(TlsError::Incomplete { key: "tls_cert" });
        };
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(&self.pem.ca))
            .client_auth_optional(true))
    }

    /// The HTTP port's server side (HTTPS): this node's identity, no client certificate asked
    /// for (Kubernetes probes with `scheme: HTTPS` and Prometheus present none; the port serves
    /// read-only status), HTTP/1.1 by ALPN, the ring crypto provider.
    pub fn https_server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let Some((cert, key)) = &self.pem.identity else {
            return Err(TlsError::Incomplete { key: "tls_cert" });
        };
        let bad = |message: String| TlsError::Identity { message };
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad(format!("key: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| bad(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn client_config(&self, domain: &str) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.pem.ca))
            .domain_name(domain);
        if let Some((cert, key)) = &self.pem.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        c
    }
}

/// An error and its sources, `a: b: c` (tonic's transport errors say little at the top).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `HOST:PORT` without a scheme (a scheme given is dropped: the scheme follows from `tls`).
fn authority(addr: &str) -> &str {
    addr.split_once("://").map_or(addr, |(_, rest)| rest)
}

/// THE place that turns an address into a client endpoint: `http://HOST:PORT` without TLS;
/// `https://HOST:PORT` with TLS, trusting only the cluster CA, presenting this process's
/// certificate if it has one, and verifying the server's certificate against HOST (certificates
/// carry the nodes' host names / IPs as SANs).
pub fn endpoint(addr: &str, tls: Option<&TlsSettings>) -> Result<Endpoint, TlsError> {
    let bad = |message: String| TlsError::Address {
        addr: addr.to_string(),
        message,
    };
    let hostport = authority(addr);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ep =
        Endpoint::from_shared(format!("{scheme}://{hostport}")).map_err(|e| bad(e.to_string()))?;
    let Some(tls) = tls else {
        return Ok(ep);
    };
    let host = ep
        .uri()
        .host()
        .ok_or_else(|| bad("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    ep.tls_config(tls.client_config(&host))
        .map_err(|e| bad(e.to_string()))
}

/// The message a caller without a cluster certificate gets.
pub const CLIENT_CERT_REQUIRED: &str = "a client certificate of the cluster CA is required";

/// A tonic interceptor for the cluster-internal services: with TLS on, only callers that
/// presented a certificate (which rustls has already verified against the CA, or the handshake
/// would have failed) get through; others get `UNAUTHENTICATED`. With TLS off it lets every
/// call through (the cluster is then trusted by network placement, as before).
#[derive(Clone, Copy, Debug)]
pub struct ClusterOnly {
    enabled: bool,
}

impl ClusterOnly {
    /// Enforcing iff `tls` is configured.
    pub fn new(tls: Option<&TlsSettings>) -> Self {
        ClusterOnly {
            enabled: tls.is_some(),
        }
    }
}

impl tonic::service::Interceptor for ClusterOnly {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if !self.enabled || req.peer_certs().is_some_and(|c| !c.is_empty()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(CLIENT_CERT_REQUIRED))
        }
    }
}

/// Paths of a generated CA and node certificate.
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// The CA certificate (`ca.pem`).
    pub ca: PathBuf,
    /// The node certificate (`node.pem`), for server and client use.
    pub cert: PathBuf,
    /// Its key (`node-key.pem`).
    pub key: PathBuf,
}

/// For development and tests only: a fresh CA and one certificate signed by it for `names`
/// (DNS names or IPs, e.g. `127.0.0.1`, `localhost`), usable as server and client identity,
/// written to `dir` as `ca.pem`, `node.pem`, `node-key.pem`. Files already there are reused
/// (so clients configured with the CA keep working across restarts).
pub fn dev_certs(dir: &Path, names: &[&str]) -> Result<DevCerts, TlsError> {
    let out = DevCerts {
        ca: dir.join("ca.pem"),
        cert: dir.join("node.pem"),
        key: dir.join("node-key.pem"),
    };
    if out.ca.exists() && out.cert.exists() && out.key.exists() {
        return Ok(out);
    }
    let fail = |message: String| TlsError::Generate {
        dir: dir.to_path_buf(),
        message,
    };
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let e = |e: rcgen::Error| fail(e.to_string());
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "raftmq development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let issuer = Issuer::new(ca, ca_key);
    let node_key = KeyPair::generate().map_err(e)?;
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut node = CertificateParams::new(names).map_err(e)?;
    node.distinguished_name
        .push(DnType::CommonName, "raftmq node");
    node.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let node_cert = node.signed_by(&node_key, &issuer).map_err(e)?;
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    for (path, text) in [
        (&out.ca, ca_cert.pem()),
        (&out.cert, node_cert.pem()),
        (&out.key, node_key.serialize_pem()),
    ] {
        std::fs::write(path, text).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_pick_the_scheme() {
        let ep = endpoint("127.0.0.1:1", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ep.uri().to_string(), "http://127.0.0.1:1/");
        let ep = endpoint("http://h:2", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ep.uri().to_string(), "http://h:2/");
    }

    #[test]
    fn missing_keys_are_named() {
        let p = Path::new("/nonexistent");
        for (c, k, a, key) in [
            (None, Some(p), Some(p), "tls_cert"),
            (Some(p), None, Some(p), "tls_key"),
            (Some(p), Some(p), None, "tls_ca"),
        ] {
            match TlsSettings::server(c, k, a) {
                Err(e) => assert!(e.to_string().contains(&format!("`{key}`")), "{e}"),
                Ok(_) => panic!("{key}: accepted"),
            }
        }
        match TlsSettings::server(Some(p), Some(p), Some(p)) {
            Err(e) => assert!(e.to_string().contains("`tls_cert`"), "{e}"),
            Ok(_) => panic!("accepted"),
        }
    }
}
