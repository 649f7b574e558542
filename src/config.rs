//! Typed configuration of the server processes, `raftmq broker` and `raftmq nameserver`: a TOML
//! file (`--config`), then environment variables, then flags — a later source overrides an
//! earlier one, key by key. Everything is validated before the process opens anything, and
//! every error names the key (`config key `listen`: ...`, or for a file the TOML error, which
//! quotes the offending line).
//!
//! Naming: a file key `some_key` is the flag `--some-key`; its environment variable is
//! `RAFTMQ_SOME_KEY` for the broker and `RAFTMQ_NAMESERVER_SOME_KEY` for the nameserver (a
//! separate prefix, so one shell or container can configure both without collisions). The
//! config file itself comes from `--config` or `RAFTMQ_CONFIG` (broker) /
//! `RAFTMQ_NAMESERVER_CONFIG` (nameserver). Commented examples: `deploy/conf/`.
//!
//! Broker keys ([`BrokerSettings`]):
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `group` | broker group name (letters, digits, `-`, `_`) | required |
//! | `node_id` | this node's id | required |
//! | `listen` | gRPC `IP:PORT` to bind | required |
//! | `advertise` | `HOST:PORT` others use to reach this node | this node's `peers` entry |
//! | `peers` | initial members `1=HOST:PORT,2=...` | required unless `join = true` |
//! | `join` | start without peers, to be added later as a learner | `false` |
//! | `data_dir` | data directory (created; must be writable) | required |
//! | `flush` | `sync` (ack after fsync) or `async` (fsync every 10 ms) | `sync` |
//! | `segment_size` | CommitLog segment size (`64K`, `64M`, `1G`; multiple of 4K) | `1G` |
//! | `heartbeat_ms` | Raft heartbeat interval | `50` |
//! | `election_timeout_ms` | minimum election timeout (max is 1.5×), ≥ 3 heartbeats | `150` |
//! | `retention_secs` | delete whole segments older than this | none |
//! | `retention_bytes` | keep the CommitLog below this size (`100G`) | none |
//! | `retention_interval_secs` | how often retention runs | `10` |
//! | `nameservers` | nameservers to register with (list of `HOST:PORT`) | none |
//! | `http_listen` | HTTP `IP:PORT` for health and metrics (HTTPS with TLS) | off |
//! | `max_delay` | longest delay a delay message may ask for (`500ms`, `30s`, `5m`, `24h`, `2d`) | `24h` |
//! | `transaction_check_interval` | check back a transaction half message unresolved this long, then again every interval | `30s` |
//! | `transaction_max_checks` | discard a half message after this many unanswered check-backs | `15` |
//! | `tls_cert` | PEM certificate chain of this node (server and client identity; SANs: its host names / IPs) | off |
//! | `tls_key` | PEM private key of `tls_cert` | off |
//! | `tls_ca` | PEM CA bundle of the cluster: verifies peers, nameservers and client certificates | off |
//! | `acl_enabled` | authenticate and authorize every client and admin request (RocketMQ 5 ACL: signed requests, users, policies) | `false` |
//! | `acl_admin_access_key` | access key of the bootstrap super user (not replicated; the same on every node) | none |
//! | `acl_admin_secret_key` | its secret key (6–128 printable characters); prefer the env var `RAFTMQ_ACL_ADMIN_SECRET_KEY` | none |
//!
//! ACL: with `acl_enabled` a group needs a way in for the first admin command, so it needs
//! the bootstrap super user, or TLS (a caller holding a certificate of the cluster CA is a
//! super user on the Admin service). See `crate::acl`.
//!
//! Nameserver keys ([`NameserverSettings`]):
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `listen` | gRPC `IP:PORT` to bind (route registry + RocketMQ access point) | `0.0.0.0:9876` |
//! | `node_timeout_ms` | drop a broker node silent this long; ≥ 150 | `3000` |
//! | `proxy` | relay every client RPC to the broker groups (routes name the nameserver) | `true` |
//! | `tls_cert` | PEM certificate chain of this nameserver (server and client identity) | off |
//! | `tls_key` | PEM private key of `tls_cert` | off |
//! | `tls_ca` | PEM CA bundle of the cluster | off |
//!
//! TLS (both processes): `tls_cert`, `tls_key` and `tls_ca` go together, all three or none;
//! the files are read and parsed at start. With them the gRPC port serves TLS (client
//! certificates optional, verified against `tls_ca` when presented), the cluster-internal
//! services (Raft, Admin, broker registration) demand a client certificate of the CA, and every
//! channel to another member uses mutual TLS. The broker's HTTP port (`http_listen`) serves
//! HTTPS with `tls_cert`/`tls_key` and asks for no client certificate (probes and scrapers
//! present none; it serves read-only status).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::broker::NodeConfig;
use crate::broker::node::parse_peers;
use crate::nameserver::{DEFAULT_NODE_TIMEOUT, NameserverConfig};
use crate::storage::FlushMode;

/// A configuration error; the message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error (names the key).
        message: String,
    },
    /// A value is missing or invalid.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Read a TOML file into settings; unknown keys and wrong types are errors that name the key.
fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().replace('\n', " "),
    })
}

/// `IP:PORT` to bind.
fn parse_listen(key: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.trim()
        .parse()
        .map_err(|_| invalid(key, format!("`{s}` is not an IP:PORT address")))
}

/// `HOST:PORT` to connect to (host: DNS name, IPv4, or `[IPv6]`).
fn check_host_port(key: &'static str, s: &str) -> Result<(), ConfigError> {
    parse_peers(&format!("0={s}"))
        .map(|_| ())
        .map_err(|_| invalid(key, format!("`{s}` is not a HOST:PORT address")))
}

/// Broker settings from one source; `None` = not given by that source. The keys are
/// documented in the module table and in `deploy/conf/broker-1.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// Broker group name; every member of one Raft group uses the same. Required.
    pub group: Option<String>,
    /// This node's id within the group (one of the ids in `peers`). Required.
    pub node_id: Option<u64>,
    /// `IP:PORT` to bind the gRPC port (Raft, admin and client services). Required.
    pub listen: Option<String>,
    /// `HOST:PORT` other nodes and clients use to reach this node; default: this node's entry
    /// in `peers` (or `listen` for a joining node).
    pub advertise: Option<String>,
    /// Initial members, `1=HOST:PORT,2=HOST:PORT,...`. Required unless `join`.
    pub peers: Option<String>,
    /// Start without peers, to be added later as a learner. Default `false`.
    pub join: Option<bool>,
    /// Data directory; created if missing, must be writable. Required.
    pub data_dir: Option<PathBuf>,
    /// `sync` (acknowledge after fsync, default) or `async` (fsync every 10 ms).
    pub flush: Option<String>,
    /// CommitLog segment size: `64K`, `64M`, `1G` (default) or bytes; a multiple of 4 KiB.
    pub segment_size: Option<String>,
    /// Raft heartbeat interval in milliseconds (default 50).
    pub heartbeat_ms: Option<u64>,
    /// Minimum Raft election timeout in milliseconds, at least 3 heartbeats; the maximum is
    /// 1.5 times this (default 150).
    pub election_timeout_ms: Option<u64>,
    /// Delete whole CommitLog segments older than this many seconds (default: no age limit).
    pub retention_secs: Option<u64>,
    /// Delete the oldest whole segments while the CommitLog is larger than this, e.g. `100G`
    /// (default: no size limit).
    pub retention_bytes: Option<String>,
    /// How often retention runs, in seconds (default 10; 0 means 1).
    pub retention_interval_secs: Option<u64>,
    /// Nameservers to register with, each `HOST:PORT` (an entry may hold a comma-separated
    /// list). Default: none.
    pub nameservers: Option<Vec<String>>,
    /// `IP:PORT` for HTTP `/healthz`, `/readyz`, `/raftz`, `/metrics` (HTTPS when TLS is on).
    /// Default: off.
    pub http_listen: Option<String>,
    /// Longest delay a delay message may ask for, e.g. `24h` (default); later delivery
    /// times are refused with ILLEGAL_DELIVERY_TIME.
    pub max_delay: Option<String>,
    /// A transaction half message unresolved this long is checked back through a producer's
    /// Telemetry stream, then again every interval, e.g. `30s` (default).
    pub transaction_check_interval: Option<String>,
    /// After this many unanswered check-backs a half message is discarded (default 15).
    pub transaction_max_checks: Option<u32>,
    /// PEM certificate chain of this node; with `tls_key` and `tls_ca` turns TLS on.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle of the cluster.
    pub tls_ca: Option<PathBuf>,
    /// Authenticate and authorize every request (default `false`).
    pub acl_enabled: Option<bool>,
    /// Access key of the bootstrap super user.
    pub acl_admin_access_key: Option<String>,
    /// Secret key of the bootstrap super user.
    pub acl_admin_secret_key: Option<String>,
}

/// All three TLS keys or none; files read and parsed now, errors naming the key.
fn load_tls(
    cert: Option<&Path>,
    key: Option<&Path>,
    ca: Option<&Path>,
) -> Result<Option<crate::tls::TlsSettings>, ConfigError> {
    use crate::tls::TlsError;
    crate::tls::TlsSettings::server(cert, key, ca).map_err(|e| {
        let key = match &e {
            TlsError::Read { key, .. }
            | TlsError::Parse { key, .. }
            | TlsError::Incomplete { key } => key,
            TlsError::Address { .. } | TlsError::Generate { .. } | TlsError::Identity { .. } => {
                "tls_cert"
            }
        };
        // The TLS error already names the key in backquotes; keep only its detail.
        let m = e.to_string();
        let m = m
            .strip_prefix(&format!("`{key}`: "))
            .unwrap_or(&m)
            .to_string();
        invalid(key, m)
    })
}

/// `64K`, `1M`, `2G`, or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 64K, 16M or 1G"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

impl BrokerSettings {
    /// Read a TOML file; unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        read_toml(path)
    }

    /// `self` over `base`, key by key.
    pub fn over(self, base: BrokerSettings) -> BrokerSettings {
        BrokerSettings {
            group: self.group.or(base.group),
            node_id: self.node_id.or(base.node_id),
            listen: self.listen.or(base.listen),
            advertise: self.advertise.or(base.advertise),
            peers: self.peers.or(base.peers),
            join: self.join.or(base.join),
            data_dir: self.data_dir.or(base.data_dir),
            flush: self.flush.or(base.flush),
            segment_size: self.segment_size.or(base.segment_size),
            heartbeat_ms: self.heartbeat_ms.or(base.heartbeat_ms),
            election_timeout_ms: self.election_timeout_ms.or(base.election_timeout_ms),
            retention_secs: self.retention_secs.or(base.retention_secs),
            retention_bytes: self.retention_bytes.or(base.retention_bytes),
            retention_interval_secs: self
                .retention_interval_secs
                .or(base.retention_interval_secs),
            nameservers: self.nameservers.or(base.nameservers),
            http_listen: self.http_listen.or(base.http_listen),
            max_delay: self.max_delay.or(base.max_delay),
            transaction_check_interval: self
                .transaction_check_interval
                .or(base.transaction_check_interval),
            transaction_max_checks: self.transaction_max_checks.or(base.transaction_max_checks),
            tls_cert: self.tls_cert.or(base.tls_cert),
            tls_key: self.tls_key.or(base.tls_key),
            tls_ca: self.tls_ca.or(base.tls_ca),
            acl_enabled: self.acl_enabled.or(base.acl_enabled),
            acl_admin_access_key: self.acl_admin_access_key.or(base.acl_admin_access_key),
            acl_admin_secret_key: self.acl_admin_secret_key.or(base.acl_admin_secret_key),
        }
    }

    /// Validate and build the node configuration. The data directory is created and checked
    /// for writability here, so a bad one fails before anything else starts.
    pub fn into_node_config(self) -> Result<NodeConfig, ConfigError> {
        // TLS is on iff all three keys are given (`load_tls` below rejects anything else).
        let acl =
            self.acl(self.tls_cert.is_some() && self.tls_key.is_some() && self.tls_ca.is_some())?;
        let group = self
            .group
            .ok_or_else(|| invalid("group", "missing (flag --group, env RAFTMQ_GROUP)"))?;
        if group.is_empty()
            || !group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "group",
                format!("`{group}` must be non-empty and use only letters, digits, `-` and `_`"),
            ));
        }
        let node_id = self
            .node_id
            .ok_or_else(|| invalid("node_id", "missing (flag --node-id, env RAFTMQ_NODE_ID)"))?;
        let listen_s = self
            .listen
            .ok_or_else(|| invalid("listen", "missing (flag --listen, env RAFTMQ_LISTEN)"))?;
        let listen = parse_listen("listen", &listen_s)?;
        let data_dir = self
            .data_dir
            .ok_or_else(|| invalid("data_dir", "missing (flag --data-dir, env RAFTMQ_DATA_DIR)"))?;
        let join = self.join.unwrap_or(false);
        let peers = match self.peers.as_deref().map(str::trim) {
            None | Some("") if !join => {
                return Err(invalid(
                    "peers",
                    "missing: give the initial members `1=HOST:PORT,2=...`, or `join = true` for a node that will be added as a learner",
                ));
            }
            None | Some("") => Default::default(),
            Some(p) => parse_peers(p).map_err(|e| invalid("peers", e.to_string()))?,
        };
        if join && !peers.is_empty() {
            return Err(invalid(
                "join",
                "a joining node has no initial peers; remove `peers` or `join`",
            ));
        }
        if !peers.is_empty() && !peers.contains_key(&node_id) {
            return Err(invalid(
                "node_id",
                format!(
                    "{node_id} is not one of the ids in `peers` ({:?})",
                    peers.keys().collect::<Vec<_>>()
                ),
            ));
        }
        let mut cfg = NodeConfig::new(&group, node_id, listen, data_dir);
        cfg.advertise = match (&self.advertise, peers.get(&node_id)) {
            (Some(x), _) => {
                check_host_port("advertise", x)?;
                x.trim().to_string()
            }
            (None, Some(x)) => x.clone(),
            (None, None) => listen.to_string(),
        };
        cfg.peers = peers;
        if let Some(f) = &self.flush {
            cfg.flush = f.parse::<FlushMode>().map_err(|e| invalid("flush", e))?;
        }
        if let Some(s) = &self.segment_size {
            let n = parse_size(s).map_err(|e| invalid("segment_size", e))?;
            if n < 4096 || n % 4096 != 0 {
                return Err(invalid(
                    "segment_size",
                    format!("`{s}` must be a multiple of 4K (4096 bytes)"),
                ));
            }
            cfg.segment_size = n;
        }
        if let Some(ms) = self.heartbeat_ms {
            if ms == 0 {
                return Err(invalid("heartbeat_ms", "must be at least 1"));
            }
            cfg.heartbeat = Duration::from_millis(ms);
        }
        if let Some(ms) = self.election_timeout_ms {
            cfg.election_timeout = Duration::from_millis(ms);
        }
        if cfg.election_timeout < cfg.heartbeat * 3 {
            return Err(invalid(
                "election_timeout_ms",
                format!(
                    "{} ms is less than 3 heartbeat intervals (heartbeat_ms = {})",
                    cfg.election_timeout.as_millis(),
                    cfg.heartbeat.as_millis()
                ),
            ));
        }
        cfg.retention_time = self.retention_secs.map(Duration::from_secs);
        if let Some(b) = &self.retention_bytes {
            cfg.retention_bytes = Some(parse_size(b).map_err(|e| invalid("retention_bytes", e))?);
        }
        if let Some(d) = &self.max_delay {
            cfg.max_delay = crate::duration::parse(d).map_err(|e| invalid("max_delay", e))?;
        }
        if let Some(d) = &self.transaction_check_interval {
            let d =
                crate::duration::parse(d).map_err(|e| invalid("transaction_check_interval", e))?;
            if d < Duration::from_millis(100) {
                return Err(invalid(
                    "transaction_check_interval",
                    "must be at least 100ms",
                ));
            }
            cfg.transaction_check_interval = d;
        }
        if let Some(n) = self.transaction_max_checks {
            cfg.transaction_max_checks = n;
        }
        if let Some(s) = self.retention_interval_secs {
            cfg.retention_interval = Duration::from_secs(s.max(1));
        }
        cfg.nameservers = self
            .nameservers
            .unwrap_or_default()
            .into_iter()
            .flat_map(|s| {
                s.split(',')
                    .map(|x| x.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|s| !s.is_empty())
            .collect();
        for ns in &cfg.nameservers {
            check_host_port("nameservers", ns)?;
        }
        if let Some(h) = &self.http_listen {
            cfg.http_listen = Some(parse_listen("http_listen", h)?);
        }
        cfg.tls = load_tls(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_ca.as_deref(),
        )?;
        cfg.acl = acl;
        // Everything the node itself checks was checked above, key by key; this only guards
        // against a rule added there later.
        cfg.validate().map_err(|e| {
            let m = e.to_string();
            let key = ["group", "peers", "election", "heartbeat"]
                .into_iter()
                .zip(["group", "peers", "election_timeout_ms", "heartbeat_ms"])
                .find(|(word, _)| m.contains(word))
                .map_or("group", |(_, key)| key);
            invalid(key, m)
        })?;
        check_writable(&cfg.data_dir)?;
        Ok(cfg)
    }
}

impl BrokerSettings {
    fn acl(&self, tls: bool) -> Result<crate::broker::auth::AclConfig, ConfigError> {
        let admin = match (&self.acl_admin_access_key, &self.acl_admin_secret_key) {
            (None, None) => None,
            (Some(ak), Some(sk)) => {
                crate::acl::state::validate_name(ak)
                    .map_err(|e| invalid("acl_admin_access_key", e.to_string()))?;
                crate::acl::state::validate_secret(sk)
                    .map_err(|e| invalid("acl_admin_secret_key", e.to_string()))?;
                Some(crate::acl::AdminCredentials {
                    access_key: ak.clone(),
                    secret_key: sk.clone(),
                })
            }
            (Some(_), None) => {
                return Err(invalid(
                    "acl_admin_secret_key",
                    "missing: the bootstrap user needs both keys",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "acl_admin_access_key",
                    "missing: the bootstrap user needs both keys",
                ));
            }
        };
        let enabled = self.acl_enabled.unwrap_or(false);
        if enabled && admin.is_none() && !tls {
            return Err(invalid(
                "acl_enabled",
                "ACL on without TLS needs the bootstrap super user (acl_admin_access_key and \
                 acl_admin_secret_key): nobody could create the first user",
            ));
        }
        Ok(crate::broker::auth::AclConfig { enabled, admin })
    }
}

fn check_writable(dir: &Path) -> Result<(), ConfigError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| invalid("data_dir", format!("cannot create {}: {e}", dir.display())))?;
    let probe = dir.join(".raftmq-write-check");
    std::fs::write(&probe, b"ok")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| {
            invalid(
                "data_dir",
                format!("{} is not writable: {e}", dir.display()),
            )
        })
}

/// Shortest `node_timeout_ms`: brokers heartbeat at most every
/// [`crate::broker::register::MIN_INTERVAL`] (50 ms), and a node must get three heartbeats
/// into every timeout.
pub const MIN_NODE_TIMEOUT_MS: u64 = 3 * crate::broker::register::MIN_INTERVAL.as_millis() as u64;

/// Default nameserver `listen`.
pub const DEFAULT_NAMESERVER_LISTEN: &str = "0.0.0.0:9876";

/// Nameserver settings from one source; `None` = not given by that source. The keys are
/// documented in the module table and in `deploy/conf/nameserver.toml`. The nameserver is
/// stateless: it has no data directory.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameserverSettings {
    /// `IP:PORT` to bind the gRPC port (route registry and the RocketMQ `MessagingService`
    /// access point). Default `0.0.0.0:9876`.
    pub listen: Option<String>,
    /// Drop a broker node that has not reported for this many milliseconds (default 3000,
    /// at least 150). Nodes heartbeat every third of it (at most every second).
    pub node_timeout_ms: Option<u64>,
    /// Act as the RocketMQ clients' proxy (default true): `QueryRoute` answers with the
    /// endpoints the client used and every client RPC is relayed to the broker groups, so a
    /// frozen or killed leader costs clients about one election. `false`: routes name the
    /// brokers and only the access-point RPCs are answered here.
    pub proxy: Option<bool>,
    /// PEM certificate chain of this nameserver; with `tls_key` and `tls_ca` turns TLS on.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle of the cluster.
    pub tls_ca: Option<PathBuf>,
}

impl NameserverSettings {
    /// Read a TOML file; unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        read_toml(path)
    }

    /// `self` over `base`, key by key.
    pub fn over(self, base: NameserverSettings) -> NameserverSettings {
        NameserverSettings {
            listen: self.listen.or(base.listen),
            node_timeout_ms: self.node_timeout_ms.or(base.node_timeout_ms),
            proxy: self.proxy.or(base.proxy),
            tls_cert: self.tls_cert.or(base.tls_cert),
            tls_key: self.tls_key.or(base.tls_key),
            tls_ca: self.tls_ca.or(base.tls_ca),
        }
    }

    /// Validate and build the nameserver configuration.
    pub fn into_nameserver_config(self) -> Result<NameserverConfig, ConfigError> {
        let listen = parse_listen(
            "listen",
            self.listen.as_deref().unwrap_or(DEFAULT_NAMESERVER_LISTEN),
        )?;
        let node_timeout = match self.node_timeout_ms {
            None => DEFAULT_NODE_TIMEOUT,
            Some(ms) if ms < MIN_NODE_TIMEOUT_MS => {
                return Err(invalid(
                    "node_timeout_ms",
                    format!(
                        "{ms} is too short: brokers heartbeat at most every {} ms and need three \
                         heartbeats per timeout, so the minimum is {MIN_NODE_TIMEOUT_MS}",
                        MIN_NODE_TIMEOUT_MS / 3
                    ),
                ));
            }
            Some(ms) => Duration::from_millis(ms),
        };
        Ok(NameserverConfig {
            listen,
            node_timeout,
            proxy: self.proxy.unwrap_or(true),
            tls: load_tls(
                self.tls_cert.as_deref(),
                self.tls_key.as_deref(),
                self.tls_ca.as_deref(),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_sources_override_earlier_ones_key_by_key() {
        let file = BrokerSettings {
            group: Some("g".into()),
            node_id: Some(1),
            segment_size: Some("64M".into()),
            ..Default::default()
        };
        let flags = BrokerSettings {
            node_id: Some(2),
            ..Default::default()
        };
        let m = flags.over(file);
        assert_eq!(m.group.as_deref(), Some("g"));
        assert_eq!(m.node_id, Some(2));
        assert_eq!(m.segment_size.as_deref(), Some("64M"));
    }

    #[test]
    fn errors_name_the_key() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let base = BrokerSettings {
            group: Some("g".into()),
            node_id: Some(1),
            listen: Some("127.0.0.1:1".into()),
            peers: Some("1=127.0.0.1:1".into()),
            data_dir: Some(t.path().join("d")),
            ..Default::default()
        };
        assert!(base.clone().into_node_config().is_ok());
        let acl = BrokerSettings {
            acl_enabled: Some(true),
            acl_admin_access_key: Some("root".into()),
            acl_admin_secret_key: Some("root-secret".into()),
            ..base.clone()
        }
        .into_node_config()
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(acl.acl.enabled && acl.acl.admin.is_some());
        let cases: Vec<(BrokerSettings, &str)> = vec![
            (
                BrokerSettings {
                    acl_enabled: Some(true),
                    ..base.clone()
                },
                "acl_enabled",
            ),
            (
                BrokerSettings {
                    acl_admin_access_key: Some("root".into()),
                    ..base.clone()
                },
                "acl_admin_secret_key",
            ),
            (
                BrokerSettings {
                    acl_admin_access_key: Some("root".into()),
                    acl_admin_secret_key: Some("short".into()),
                    ..base.clone()
                },
                "acl_admin_secret_key",
            ),
            (
                BrokerSettings {
                    listen: Some("nope".into()),
                    ..base.clone()
                },
                "listen",
            ),
            (
                BrokerSettings {
                    peers: None,
                    ..base.clone()
                },
                "peers",
            ),
            (
                BrokerSettings {
                    peers: Some("1=host".into()),
                    ..base.clone()
                },
                "peers",
            ),
            (
                BrokerSettings {
                    flush: Some("sometimes".into()),
                    ..base.clone()
                },
                "flush",
            ),
            (
                BrokerSettings {
                    segment_size: Some("huge".into()),
                    ..base.clone()
                },
                "segment_size",
            ),
            (
                BrokerSettings {
                    group: None,
                    ..base.clone()
                },
                "group",
            ),
            (
                BrokerSettings {
                    http_listen: Some("x".into()),
                    ..base.clone()
                },
                "http_listen",
            ),
        ];
        for (s, key) in cases {
            match s.into_node_config() {
                Err(e) => assert!(e.to_string().contains(&format!("`{key}`")), "{key}: {e}"),
                Ok(_) => panic!("{key}: accepted"),
            }
        }
        // TLS: all three or none, files read and parsed at start; errors name the key.
        let bad = t.path().join("bad.pem");
        std::fs::write(&bad, "not pem").unwrap_or_else(|e| panic!("{e}"));
        let certs = crate::tls::dev_certs(&t.path().join("tls"), &["127.0.0.1"])
            .unwrap_or_else(|e| panic!("{e}"));
        let with_tls = |cert: &Path, key: Option<&Path>, ca: &Path| BrokerSettings {
            tls_cert: Some(cert.to_path_buf()),
            tls_key: key.map(Path::to_path_buf),
            tls_ca: Some(ca.to_path_buf()),
            ..base.clone()
        };
        match with_tls(&certs.cert, Some(&certs.key), &certs.ca).into_node_config() {
            Ok(c) => assert!(c.tls.is_some_and(|t| t.has_identity())),
            Err(e) => panic!("valid TLS files refused: {e}"),
        }
        for (s, key) in [
            (with_tls(&certs.cert, None, &certs.ca), "tls_key"),
            (with_tls(&bad, Some(&certs.key), &certs.ca), "tls_cert"),
            (with_tls(&certs.cert, Some(&bad), &certs.ca), "tls_key"),
            (with_tls(&certs.cert, Some(&certs.key), &bad), "tls_ca"),
            (
                with_tls(&certs.cert, Some(&certs.key), &t.path().join("missing.pem")),
                "tls_ca",
            ),
        ] {
            match s.into_node_config() {
                Err(e) => assert!(e.to_string().contains(&format!("`{key}`")), "{key}: {e}"),
                Ok(_) => panic!("{key}: accepted"),
            }
        }
        let ns = NameserverSettings {
            tls_cert: Some(certs.cert.clone()),
            ..Default::default()
        };
        match ns.into_nameserver_config() {
            Err(e) => assert!(e.to_string().contains("`tls_key`"), "{e}"),
            Ok(_) => panic!("incomplete nameserver TLS accepted"),
        }
        let f = t.path().join("c.toml");
        std::fs::write(&f, "group = \"g\"\nnode_di = 3\n").unwrap_or_else(|e| panic!("{e}"));
        match BrokerSettings::from_file(&f) {
            Err(e) => assert!(e.to_string().contains("node_di"), "{e}"),
            Ok(_) => panic!("unknown key accepted"),
        }
    }
}
