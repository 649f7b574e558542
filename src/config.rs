//! The broker's typed configuration: a TOML file (`--config`), then `RAFTMQ_*` environment
//! variables, then flags — a later source overrides an earlier one, key by key. Everything is
//! validated before the node opens anything, and every error names the key.
//!
//! Keys (the file uses these names; flags are `--key-with-dashes`, env `RAFTMQ_KEY`):
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `group` | broker group name | required |
//! | `node_id` | this node's id | required |
//! | `listen` | gRPC `HOST:PORT` to bind | required |
//! | `advertise` | address others use to reach this node | this node's `peers` entry |
//! | `peers` | initial members `1=HOST:PORT,2=...` | required unless `join = true` |
//! | `join` | start without peers, to be added later as a learner | `false` |
//! | `data_dir` | data directory (created; must be writable) | required |
//! | `flush` | `sync` (ack after fsync) or `async` (fsync every 10 ms) | `sync` |
//! | `segment_size` | CommitLog segment size (`64K`, `64M`, `1G`) | `1G` |
//! | `heartbeat_ms` | Raft heartbeat interval | `100` |
//! | `election_timeout_ms` | minimum election timeout (max is twice) | `500` |
//! | `retention_secs` | delete whole segments older than this | none |
//! | `retention_bytes` | keep the CommitLog below this size (`100G`) | none |
//! | `retention_interval_secs` | how often retention runs | `10` |
//! | `nameservers` | nameservers to register with (list) | none |
//! | `http_listen` | HTTP `HOST:PORT` for health and metrics | off |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::broker::NodeConfig;
use crate::broker::node::parse_peers;
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

/// Broker settings from one source; `None` = not given by that source.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// See the module table.
    pub group: Option<String>,
    /// See the module table.
    pub node_id: Option<u64>,
    /// See the module table.
    pub listen: Option<String>,
    /// See the module table.
    pub advertise: Option<String>,
    /// See the module table.
    pub peers: Option<String>,
    /// See the module table.
    pub join: Option<bool>,
    /// See the module table.
    pub data_dir: Option<PathBuf>,
    /// See the module table.
    pub flush: Option<String>,
    /// See the module table.
    pub segment_size: Option<String>,
    /// See the module table.
    pub heartbeat_ms: Option<u64>,
    /// See the module table.
    pub election_timeout_ms: Option<u64>,
    /// See the module table.
    pub retention_secs: Option<u64>,
    /// See the module table.
    pub retention_bytes: Option<String>,
    /// See the module table.
    pub retention_interval_secs: Option<u64>,
    /// See the module table.
    pub nameservers: Option<Vec<String>>,
    /// See the module table.
    pub http_listen: Option<String>,
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().replace('\n', " "),
        })
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
        }
    }

    /// Validate and build the node configuration. The data directory is created and checked
    /// for writability here, so a bad one fails before anything else starts.
    pub fn into_node_config(self) -> Result<NodeConfig, ConfigError> {
        let group = self
            .group
            .ok_or_else(|| invalid("group", "missing (flag --group, env RAFTMQ_GROUP)"))?;
        let node_id = self
            .node_id
            .ok_or_else(|| invalid("node_id", "missing (flag --node-id, env RAFTMQ_NODE_ID)"))?;
        let listen_s = self
            .listen
            .ok_or_else(|| invalid("listen", "missing (flag --listen, env RAFTMQ_LISTEN)"))?;
        let listen: SocketAddr = listen_s
            .parse()
            .map_err(|_| invalid("listen", format!("`{listen_s}` is not an IP:PORT address")))?;
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
        let mut cfg = NodeConfig::new(&group, node_id, listen, data_dir);
        cfg.advertise = match (&self.advertise, peers.get(&node_id)) {
            (Some(x), _) => x.clone(),
            (None, Some(x)) => x.clone(),
            (None, None) => listen.to_string(),
        };
        cfg.peers = peers;
        if let Some(f) = &self.flush {
            cfg.flush = f.parse::<FlushMode>().map_err(|e| invalid("flush", e))?;
        }
        if let Some(s) = &self.segment_size {
            cfg.segment_size = parse_size(s).map_err(|e| invalid("segment_size", e))?;
        }
        if let Some(ms) = self.heartbeat_ms {
            cfg.heartbeat = Duration::from_millis(ms);
        }
        if let Some(ms) = self.election_timeout_ms {
            cfg.election_timeout = Duration::from_millis(ms);
        }
        cfg.retention_time = self.retention_secs.map(Duration::from_secs);
        if let Some(b) = &self.retention_bytes {
            cfg.retention_bytes = Some(parse_size(b).map_err(|e| invalid("retention_bytes", e))?);
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
        if let Some(h) = &self.http_listen {
            cfg.http_listen =
                Some(h.parse().map_err(|_| {
                    invalid("http_listen", format!("`{h}` is not an IP:PORT address"))
                })?);
        }
        cfg.validate()
            .map_err(|e| invalid("group", e.to_string()))?;
        check_writable(&cfg.data_dir)?;
        Ok(cfg)
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
        let cases: Vec<(BrokerSettings, &str)> = vec![
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
        let f = t.path().join("c.toml");
        std::fs::write(&f, "group = \"g\"\nnode_di = 3\n").unwrap_or_else(|e| panic!("{e}"));
        match BrokerSettings::from_file(&f) {
            Err(e) => assert!(e.to_string().contains("node_di"), "{e}"),
            Ok(_) => panic!("unknown key accepted"),
        }
    }
}
