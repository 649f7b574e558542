"""ACL through the unchanged official clients (RocketMQ 5: users with access/secret keys,
requests signed `MQv2-HMAC-SHA1`, per-user policies, default deny).

A nameserver and a 3-node group with TLS and `--acl-enabled`. The Python client runs in a
fresh interpreter per case (grpc-core reads GRPC_DEFAULT_SSL_ROOTS_FILE_PATH once per
process) and reports what it got: messages, or the exception class and RocketMQ code. The
documented errors: a wrong secret or no credentials -> UnauthorizedException (40100); a
topic the user may not use -> ForbiddenException (40300). After each refusal the cluster
keeps serving the user it should.

A second cluster without TLS checks the admin side: `raftmq admin` signs with
--access-key/--secret-key, the bootstrap super user creates users and policies, and a
normal user's admin commands follow its policy."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import Cluster, wait_for
from test_tls import CA_VARIABLES, NODE_DIR, make_certs

ROOT_AK, ROOT_SK = "root", "root-secret-1"
ALICE_SK = "alice-secret-1"

CLIENT = r"""
import json, sys, time
from rocketmq import ClientConfiguration, Credentials, FilterExpression, Message, Producer, SimpleConsumer

a = json.loads(sys.argv[1])
config = ClientConfiguration(a["endpoint"], Credentials(a["ak"], a["sk"]))
out = {"sent": [], "got": [], "error": None}

def failed(e):
    out["error"] = {"type": type(e).__name__, "code": getattr(e, "code", None), "message": str(e)[:300]}

producer = Producer(config, (a["topic"],), tls_enable=a["tls"])
try:
    producer.startup()
    for i in range(a["n"]):
        m = Message()
        m.topic = a["topic"]
        m.body = f"acl-{i}".encode()
        out["sent"].append(producer.send(m).message_id)
except Exception as e:
    failed(e)
finally:
    producer.shutdown()
if a["consume"] and out["error"] is None:
    consumer = SimpleConsumer(config, a["group"], {a["topic"]: FilterExpression("*")}, await_duration=2,
                              tls_enable=a["tls"])
    try:
        consumer.startup()
        deadline = time.time() + 60
        while len(out["got"]) < a["expect"] and time.time() < deadline:
            for m in consumer.receive(32, 15):
                out["got"].append(m.body.decode())
                consumer.ack(m)
    except Exception as e:
        failed(e)
    finally:
        consumer.shutdown()
print(json.dumps(out))
"""


def run_client(cluster, ak, sk, topic, n=5, consume=False, group="acl-group", expect=None, tls=True):
    args = dict(endpoint=cluster.nameserver, ak=ak, sk=sk, topic=topic, n=n, consume=consume, group=group,
                expect=n if expect is None else expect, tls=tls)
    env = dict(os.environ)
    if tls:
        env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = cluster.ca
    out = subprocess.run([sys.executable, "-c", CLIENT, json.dumps(args)], capture_output=True, timeout=240,
                         env=env, text=True)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_refused(r, exc, code):
    assert r["sent"] == [], r
    assert r["error"] is not None, r
    assert r["error"]["type"] == exc, r
    assert r["error"]["code"] == code, r


@pytest.fixture(scope="module")
def acl_cluster():
    d = tempfile.mkdtemp(prefix="raftmq-acl-")
    ca, cert, key = make_certs(d)
    tls = ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca]
    acl = ["--acl-enabled", "--acl-admin-access-key", ROOT_AK, "--acl-admin-secret-key", ROOT_SK]
    # The admin tool holds a cluster certificate: a super user on the Admin service.
    c = Cluster(extra_args=tls + acl, ns_extra_args=tls, admin_args=tls)
    c.ca = ca
    try:
        c.wait_all_up()
        c.leader()
        c.create_topic("AclTopic", queues=2)
        c.create_topic("AclDenied", queues=2)
        c.create_topic("AclNode", queues=2)
        c.admin("user", "create", "--username", "alice", "--password", ALICE_SK)
        c.admin("acl", "create", "--subject", "User:alice", "--resource", "Topic:AclTopic,Topic:AclNode",
                "--action", "Pub,Sub")
        c.admin("acl", "create", "--subject", "User:alice", "--resource", "Group:acl-group,Group:node-acl",
                "--action", "Sub")
        for t in ("AclTopic", "AclDenied", "AclNode"):
            wait_for(lambda t=t: len(c.admin("topic", "route", t)["groups"][0]["members"]) == 3, 30,
                     f"{t} routed to every member")
        yield c
    finally:
        c.close()
        shutil.rmtree(d, ignore_errors=True)


def test_policies_are_replicated_to_every_node(acl_cluster):
    users = acl_cluster.admin("user", "list")
    assert [(u["name"], u["user_type"]) for u in users["groups"][0]["items"]] == [("alice", "Normal")]
    acls = acl_cluster.admin("acl", "list", "--subject", "alice")["groups"][0]["items"]
    assert {(a["resource"], tuple(a["actions"])) for a in acls} == {
        ("Topic:AclTopic", ("Pub", "Sub")), ("Topic:AclNode", ("Pub", "Sub")), ("Group:acl-group", ("Sub",)),
        ("Group:node-acl", ("Sub",))}


def test_python_client_with_credentials_over_tls_produces_and_consumes(acl_cluster):
    r = run_client(acl_cluster, "alice", ALICE_SK, "AclTopic", n=10, consume=True)
    assert r["error"] is None, r
    assert len(r["sent"]) == 10
    assert sorted(r["got"]) == sorted(f"acl-{i}" for i in range(10)), r


def test_wrong_secret_no_credentials_and_denied_topic_get_the_documented_errors(acl_cluster):
    assert_refused(run_client(acl_cluster, "alice", "not-the-secret", "AclTopic"), "UnauthorizedException", 40100)
    assert_refused(run_client(acl_cluster, "", "", "AclTopic"), "UnauthorizedException", 40100)
    assert_refused(run_client(acl_cluster, "mallory", "whatever-1", "AclTopic"), "UnauthorizedException", 40100)
    assert_refused(run_client(acl_cluster, "alice", ALICE_SK, "AclDenied"), "ForbiddenException", 40300)
    # The broker keeps serving: alice still produces and consumes on her topic.
    r = run_client(acl_cluster, "alice", ALICE_SK, "AclTopic", n=3, consume=True, group="acl-group")
    assert r["error"] is None and len(r["sent"]) == 3, r
    assert sorted(r["got"]) == ["acl-0", "acl-1", "acl-2"], r


def test_consuming_with_a_group_not_granted_is_forbidden(acl_cluster):
    r = run_client(acl_cluster, "alice", ALICE_SK, "AclTopic", n=1, consume=True, group="not-granted", expect=1)
    assert len(r["sent"]) == 1, r
    assert r["error"] is not None and r["error"]["type"] == "ForbiddenException", r
    assert r["error"]["code"] == 40300, r


def test_a_policy_change_takes_effect_without_restart(acl_cluster):
    acl_cluster.admin("acl", "create", "--subject", "User:alice", "--resource", "Topic:AclDenied",
                      "--action", "Pub", "--decision", "Allow")
    r = run_client(acl_cluster, "alice", ALICE_SK, "AclDenied", n=2)
    assert r["error"] is None and len(r["sent"]) == 2, r
    acl_cluster.admin("acl", "update", "--subject", "User:alice", "--resource", "Topic:AclDenied",
                      "--action", "Pub", "--decision", "Deny")
    assert_refused(run_client(acl_cluster, "alice", ALICE_SK, "AclDenied"), "ForbiddenException", 40300)


def node_client(cluster, ak, sk, topic, count, group):
    node = shutil.which("node")
    assert node, "node is not installed (the Node client tests need it)"
    assert os.path.isdir(os.path.join(NODE_DIR, "node_modules", "rocketmq-client-nodejs")), \
        "tests/node/node_modules is missing: run `npm ci` in tests/node (.ci/run does)"
    env = {k: v for k, v in os.environ.items() if k not in CA_VARIABLES}
    env.update(SMOKE_TLS="1", SMOKE_DEADLINE_MS="60000", GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=cluster.ca,
               SMOKE_ACCESS_KEY=ak, SMOKE_SECRET_KEY=sk, SMOKE_GROUP=group)
    out = subprocess.run([node, os.path.join(NODE_DIR, "smoke.mjs"), cluster.nameserver, topic, str(count)],
                         capture_output=True, timeout=120, env=env, text=True)
    summary = next((json.loads(line) for line in reversed(out.stdout.splitlines())
                    if line.lstrip().startswith("{")), None)
    return out.returncode, summary, out.stderr


def test_node_client_with_credentials_over_tls(acl_cluster):
    code, summary, err = node_client(acl_cluster, "alice", ALICE_SK, "AclNode", 10, "node-acl")
    assert code == 0, f"{summary}\n{err[-3000:]}"
    assert summary["sent"] == 10 and summary["received"] == 10 and summary["acked"] == 10, summary


def test_node_client_with_a_wrong_secret_is_refused(acl_cluster):
    code, summary, err = node_client(acl_cluster, "alice", "not-the-secret", "AclNode", 1, "node-acl")
    assert code != 0, summary
    assert summary is not None and summary["sent"] == 0, summary
    assert "40100" in err or "nauthorized" in err or "40100" in json.dumps(summary), f"{summary}\n{err[-2000:]}"


@pytest.fixture(scope="module")
def plain_acl_cluster():
    acl = ["--acl-enabled", "--acl-admin-access-key", ROOT_AK, "--acl-admin-secret-key", ROOT_SK]
    c = Cluster(extra_args=acl, admin_args=["--access-key", ROOT_AK, "--secret-key", ROOT_SK])
    try:
        c.wait_all_up()
        c.leader()
        yield c
    finally:
        c.close()


def admin_as(cluster, ak, sk, *args):
    """`raftmq admin` signed as ak/sk (or unsigned with ak None): (exit code, stdout+stderr)."""
    from conftest import BIN
    creds = [] if ak is None else ["--access-key", ak, "--secret-key", sk]
    out = subprocess.run([BIN, "admin", "--nameservers", cluster.nameserver, *creds, "--json",
                          "--timeout-ms", "5000", *args], capture_output=True, timeout=60, text=True)
    return out.returncode, out.stdout + out.stderr


def test_admin_commands_are_signed_and_follow_policies(plain_acl_cluster):
    c = plain_acl_cluster
    c.admin("user", "create", "--username", "bob", "--password", "bob-secret-1")
    code, out = admin_as(c, None, None, "topic", "create", "BobTopic", "--queues", "2")
    assert code != 0 and "Unauthenticated" in out, out
    code, out = admin_as(c, "bob", "wrong-secret", "topic", "create", "BobTopic", "--queues", "2")
    assert code != 0 and "signature mismatch" in out, out
    code, out = admin_as(c, "bob", "bob-secret-1", "topic", "create", "BobTopic", "--queues", "2")
    assert code != 0 and "PermissionDenied" in out, out
    c.admin("acl", "create", "--subject", "User:bob", "--resource", "Topic:Bob*", "--action", "Create,Pub")
    code, out = admin_as(c, "bob", "bob-secret-1", "--no-wait", "topic", "create", "BobTopic", "--queues", "2")
    assert code == 0, out
    # Only super users manage users and policies.
    code, out = admin_as(c, "bob", "bob-secret-1", "user", "list")
    assert code != 0 and "super user" in out, out
    code, out = admin_as(c, "bob", "bob-secret-1", "user", "create", "--username", "eve", "--password", "eve-secret-1")
    assert code != 0 and "super user" in out, out
    # A plaintext Python client with bob's credentials sends to the topic his policy covers.
    wait_for(lambda: len(c.admin("topic", "route", "BobTopic")["groups"][0]["members"]) == 3, 30, "BobTopic routed")
    r = run_client(c, "bob", "bob-secret-1", "BobTopic", n=2, tls=False)
    assert r["error"] is None and len(r["sent"]) == 2, r
    c.admin("user", "delete", "--username", "bob")
    assert_refused(run_client(c, "bob", "bob-secret-1", "BobTopic", tls=False), "UnauthorizedException", 40100)
