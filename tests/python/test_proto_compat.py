"""Our apache/rocketmq/v2 protos must match the official Python client's bundled descriptors."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_protos_match_the_official_client():
    root = os.path.dirname(os.path.dirname(HERE))
    r = subprocess.run([sys.executable, os.path.join(HERE, "check_proto_compat.py")], cwd=root,
                       capture_output=True, text=True, timeout=300)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: every client message field, enum value and RPC matches ours" in r.stdout
