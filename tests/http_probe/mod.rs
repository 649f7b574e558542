//! A minimal blocking HTTP/1.1 GET for the tests of a broker's HTTP port, over plain TCP or
//! over TLS (rustls, ring) trusting one CA file and presenting no client certificate, like a
//! Kubernetes probe with `scheme: HTTPS` or a Prometheus scrape.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(tcp)
}

fn request(addr: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
}

/// Reads to the end; a connection closed without TLS close_notify ends the answer too.
fn read_all(mut r: impl Read) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    match r.read_to_end(&mut buf) {
        Ok(_) => Ok(buf),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => Ok(buf),
        Err(e) => Err(e),
    }
}

/// `(status, body)` of an HTTP/1.1 answer.
fn parse(raw: &[u8]) -> std::io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((code, body.to_string()))
}

/// The bytes a plain-HTTP GET of `path` on `addr` gets back (whatever they are).
pub fn plain_raw(addr: &str, path: &str) -> std::io::Result<Vec<u8>> {
    let mut tcp = connect(addr)?;
    tcp.write_all(request(addr, path).as_bytes())?;
    read_all(tcp)
}

/// `GET https://ADDR/PATH`, trusting only the CA in `ca` and checking the server's certificate
/// against the host part of `addr`; `(status, body)`.
pub fn https_get(addr: &str, path: &str, ca: &Path) -> std::io::Result<(u16, String)> {
    let io = |e: String| std::io::Error::other(e);
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| io(e.to_string()))? {
        roots
            .add(c.map_err(|e| io(e.to_string()))?)
            .map_err(|e| io(e.to_string()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| io(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let name = ServerName::try_from(host.to_string()).map_err(|e| io(e.to_string()))?;
    let conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| io(e.to_string()))?;
    let mut tls = rustls::StreamOwned::new(conn, connect(addr)?);
    tls.write_all(request(addr, path).as_bytes())?;
    parse(&read_all(tls)?)
}
