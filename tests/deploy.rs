//! The Kubernetes manifests in `deploy/k8s/` configure nodes that would start: the broker and
//! nameserver files of the ConfigMap pass raftmq's own config validation for every pod of the
//! StatefulSet, with the node id the pod computes from its ordinal, and the addresses agree
//! with the Services. (The manifests' schema is checked by `deploy/validate.sh` in CI.)

use std::path::Path;

use raftmq::config::{BrokerSettings, NameserverSettings};

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The block scalar of `key: |` in a YAML file (the ConfigMap's file contents).
fn block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let head = lines
        .next()
        .unwrap_or_else(|| panic!("no `{key}: |` block"));
    let outer = head.len() - head.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > outer)
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first `replicas: N` after `name: <name>` in a manifest file.
fn replicas(yaml: &str, name: &str) -> u64 {
    let after = &yaml[yaml
        .find(&format!("kind: StatefulSet\nmetadata:\n  name: {name}"))
        .unwrap_or_else(|| panic!("StatefulSet {name}"))..];
    let line = after
        .lines()
        .find(|l| l.trim_start().starts_with("replicas:"))
        .expect("replicas");
    line.trim_start()["replicas:".len()..]
        .trim()
        .parse()
        .expect("a number")
}

#[test]
fn the_kubernetes_configmap_starts_every_pod() {
    let t = tempfile::tempdir().expect("tempdir");
    let cm = read("deploy/k8s/configmap.yaml");
    let broker_yaml = read("deploy/k8s/broker.yaml");
    let ns_yaml = read("deploy/k8s/nameserver.yaml");

    let ns_file = t.path().join("nameserver.toml");
    std::fs::write(&ns_file, block(&cm, "nameserver.toml")).expect("write");
    let ns = NameserverSettings::from_file(&ns_file)
        .and_then(|s| s.into_nameserver_config())
        .unwrap_or_else(|e| panic!("nameserver.toml: {e}"));
    assert_eq!(ns.listen.port(), 9876);
    assert!(ns.proxy, "official clients go through the nameservers");

    let broker_file = t.path().join("broker.toml");
    std::fs::write(&broker_file, block(&cm, "broker.toml")).expect("write");
    let file =
        BrokerSettings::from_file(&broker_file).unwrap_or_else(|e| panic!("broker.toml: {e}"));
    let n = replicas(&broker_yaml, "raftmq-broker");
    // The pod's command: node id = ordinal + 1 (HOSTNAME is raftmq-broker-<ordinal>).
    assert!(broker_yaml.contains(r#"--node-id "$(( ${HOSTNAME##*-} + 1 ))""#));
    let nameservers: Vec<String> = (0..replicas(&ns_yaml, "raftmq-nameserver"))
        .map(|i| format!("raftmq-nameserver-{i}.raftmq-nameserver:9876"))
        .collect();
    for ordinal in 0..n {
        let pod = BrokerSettings {
            node_id: Some(ordinal + 1),
            data_dir: Some(t.path().join(format!("pod{ordinal}"))),
            ..Default::default()
        };
        let cfg = pod
            .over(file.clone())
            .into_node_config()
            .unwrap_or_else(|e| panic!("pod {ordinal}: {e}"));
        assert_eq!(cfg.peers.len() as u64, n, "one peer per replica");
        // A pod advertises its own stable DNS name (headless Service `raftmq-broker`).
        assert_eq!(
            cfg.advertise,
            format!("raftmq-broker-{ordinal}.raftmq-broker:8081")
        );
        assert_eq!(
            cfg.nameservers, nameservers,
            "every nameserver replica, by name"
        );
        assert_eq!(
            cfg.http_listen.map(|a| a.port()),
            Some(9081),
            "the probes' port"
        );
    }
}
