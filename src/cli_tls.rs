//! TLS flags of the client CLIs (`raftmq admin`, `produce`, `consume`): kept out of the
//! commands' own modules so they share one definition.

use std::path::PathBuf;

use crate::tls::{TlsError, TlsSettings};

/// `--tls-ca` turns on `https://` with that CA as the only trust root; `--tls-cert` and
/// `--tls-key` add a client certificate, which the cluster-internal services (Admin, broker
/// registration: everything `raftmq admin` calls) require.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM CA bundle of the cluster: connect with TLS and verify the servers against it.
    #[arg(long, env = "RAFTMQ_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate chain (with --tls-key), signed by the cluster CA.
    #[arg(long, env = "RAFTMQ_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "RAFTMQ_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The client TLS settings; `None` without `--tls-ca` (plaintext). Files are read now.
    pub fn load(&self) -> Result<Option<TlsSettings>, TlsError> {
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            (None, Some(_)) => return Err(TlsError::Incomplete { key: "tls_cert" }),
            (Some(_), None) => return Err(TlsError::Incomplete { key: "tls_key" }),
        };
        match &self.tls_ca {
            Some(ca) => TlsSettings::client(ca, identity).map(Some),
            None if identity.is_some() => Err(TlsError::Incomplete { key: "tls_ca" }),
            None => Ok(None),
        }
    }
}
