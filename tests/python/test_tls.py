"""The unchanged official Python and Node clients over TLS: a nameserver and a 3-node group
serving TLS (mutual TLS between them), certificates made with openssl in a temp dir.

Python: the client trusts the cluster CA through GRPC_DEFAULT_SSL_ROOTS_FILE_PATH (the SDK
calls grpc.ssl_channel_credentials() without arguments) and uses tls_enable=True. grpc-core
reads that variable once per process, when default roots are first needed, so the client part
runs in a fresh interpreter: it works whichever tests ran before in this one.

Node (rocketmq-client-nodejs 1.0.8, tests/node/smoke.mjs with SMOKE_TLS=1, i.e.
`sslEnabled: true`, grpc-js ChannelCredentials.createSsl() with the default roots): the CA
through GRPC_DEFAULT_SSL_ROOTS_FILE_PATH (grpc-js: replaces the default roots) or through
NODE_EXTRA_CA_CERTS (Node: added to its built-in roots); both are checked, and that without
either the client does not get through."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import Cluster, wait_for

NODE_DIR = os.path.join(os.path.dirname(__file__), "..", "node")
CA_VARIABLES = ("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", "NODE_EXTRA_CA_CERTS")

CLIENT = r"""
import json, sys, time
from rocketmq import ClientConfiguration, Credentials, FilterExpression, Message, Producer, SimpleConsumer

endpoint, topic, group, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
config = ClientConfiguration(endpoint, Credentials())
producer = Producer(config, (topic,), tls_enable=True)
producer.startup()
sent = []
try:
    for i in range(n):
        m = Message()
        m.topic = topic
        m.body = f"tls-{i}".encode()
        sent.append(producer.send(m).message_id)
finally:
    producer.shutdown()
consumer = SimpleConsumer(config, group, {topic: FilterExpression("*")}, await_duration=2, tls_enable=True)
consumer.startup()
got, acked = [], 0
try:
    deadline = time.time() + 60
    while len(got) < n and time.time() < deadline:
        for m in consumer.receive(32, 15):
            got.append(m.body.decode())
            consumer.ack(m)
            acked += 1
finally:
    consumer.shutdown()
print(json.dumps({"sent": sent, "got": got, "acked": acked}))
"""


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_certs(d):
    """A CA and one certificate for 127.0.0.1/localhost (server and client use)."""
    ca_key, ca, key, csr, cert, ext = (os.path.join(d, f) for f in
                                       ("ca-key.pem", "ca.pem", "node-key.pem", "node.csr", "node.pem", "ext.cnf"))
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=raftmq test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", "/CN=raftmq node")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "extendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", ext)
    return ca, cert, key


@pytest.fixture(scope="module")
def tls_cluster():
    d = tempfile.mkdtemp(prefix="raftmq-tls-")
    ca, cert, key = make_certs(d)
    flags = ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca]
    c = Cluster(extra_args=flags, ns_extra_args=flags, admin_args=flags)
    c.ca = ca
    try:
        c.wait_all_up()
        c.leader()
        yield c
    finally:
        c.close()
        shutil.rmtree(d, ignore_errors=True)


def test_official_client_over_tls(tls_cluster):
    tls_cluster.create_topic("TlsTopic", queues=2)
    env = dict(os.environ, GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=tls_cluster.ca)
    out = subprocess.run([sys.executable, "-c", CLIENT, tls_cluster.nameserver, "TlsTopic", "tls-group", "20"],
                         capture_output=True, timeout=180, env=env, text=True)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr[-3000:]}"
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(r["sent"]) == 20 and all(r["sent"])
    assert sorted(r["got"]) == sorted(f"tls-{i}" for i in range(20)), r
    assert r["acked"] == 20


def test_plaintext_client_is_refused(tls_cluster):
    """The same client without TLS gets no answer from the TLS port."""
    import grpc
    ch = grpc.insecure_channel(tls_cluster.nameserver)
    with pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(ch).result(timeout=3)
    ch.close()


def node_smoke(cluster, topic, count, deadline_ms, ca_env=None):
    """`node tests/node/smoke.mjs` over TLS against the cluster; (exit code, summary, stderr).
    `ca_env`: the variable that hands the client the CA (None: neither)."""
    node = shutil.which("node")
    assert node, "node is not installed (the Node client tests need it)"
    assert os.path.isdir(os.path.join(NODE_DIR, "node_modules", "rocketmq-client-nodejs")), \
        "tests/node/node_modules is missing: run `npm ci` in tests/node (.ci/run does)"
    env = {k: v for k, v in os.environ.items() if k not in CA_VARIABLES}
    env.update(SMOKE_TLS="1", SMOKE_DEADLINE_MS=str(deadline_ms))
    if ca_env:
        env[ca_env] = cluster.ca
    out = subprocess.run([node, os.path.join(NODE_DIR, "smoke.mjs"), cluster.nameserver, topic, str(count)],
                         capture_output=True, timeout=deadline_ms / 1000 + 30, env=env, text=True)
    summary = next((json.loads(line) for line in reversed(out.stdout.splitlines())
                    if line.lstrip().startswith("{")), None)
    return out.returncode, summary, out.stderr


def create_routed_topic(cluster, topic):
    cluster.create_topic(topic, queues=2)
    # The nameserver routes the topic to every member before a client asks for it.
    wait_for(lambda: len(cluster.admin("topic", "route", topic)["groups"][0]["members"]) == 3,
             30, f"route of {topic}")


@pytest.mark.parametrize("ca_env", CA_VARIABLES)
def test_official_node_client_over_tls(tls_cluster, ca_env):
    topic = f"NodeTls{CA_VARIABLES.index(ca_env)}"
    create_routed_topic(tls_cluster, topic)
    code, r, err = node_smoke(tls_cluster, topic, 20, 120000, ca_env)
    assert code == 0 and r is not None, f"{r}\n{err[-3000:]}"
    assert r["tls"] is True and r["ok"] is True, r
    # Every sent message received once (checked against what was sent: body, tag, keys,
    # property) and acked.
    assert (r["sent"], r["received"], r["acked"]) == (20, 20, 20), r
    assert r["duplicates"] == 0 and r["unknown"] == 0 and r["mismatches"] == [], r


def test_node_client_without_the_ca_is_refused(tls_cluster):
    """Control: the same client, not given the CA, cannot verify the servers and sends nothing."""
    topic = "NodeTlsNoCa"
    create_routed_topic(tls_cluster, topic)
    code, r, err = node_smoke(tls_cluster, topic, 1, 20000)
    assert code != 0, f"{r}\n{err[-3000:]}"
    assert r is not None and r["sent"] == 0, r
    # grpc-js: "unable to verify the first certificate".
    assert "certificate" in err, err[-3000:]
