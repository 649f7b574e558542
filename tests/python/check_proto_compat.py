#!/usr/bin/env python3
"""Wire-compatibility check: raftmq's apache.rocketmq.v2 protos vs the official Python client.

Compiles our `proto/apache/rocketmq/v2/*.proto` with grpcio-tools and compares the result with the
descriptors bundled in `rocketmq-python-client` (`rocketmq.grpc_protocol.definition_pb2` and
`service_pb2`). For everything the client knows about, ours must agree:

  * messages (including nested ones and map entries): every client field exists in ours with the
    same name, number, type, type name, label, proto3 `optional` flag and oneof membership;
  * enums (including nested ones): every client value exists in ours with the same number;
  * services: every client RPC exists with the same request/response types and streaming flags.

Ours may be a superset (newer fields, values, messages, RPCs); those are listed as info only.
Exits 0 when compatible, 1 on any mismatch, 2 if the environment is unusable.

Usage (inside a venv with `rocketmq-python-client` installed):
    python tests/python/check_proto_compat.py [--proto-root DIR]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
from importlib import resources

from google.protobuf import descriptor_pb2

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PACKAGE = "apache.rocketmq.v2"
# The RPCs the brief requires MessagingService to carry (whatever the client version knows).
REQUIRED_RPCS = [
    "QueryRoute", "Heartbeat", "SendMessage", "QueryAssignment", "ReceiveMessage", "AckMessage",
    "ForwardMessageToDeadLetterQueue", "PullMessage", "UpdateOffset", "GetOffset", "QueryOffset",
    "EndTransaction", "Telemetry", "NotifyClientTermination", "ChangeInvisibleDuration",
    "RecallMessage", "SyncLiteSubscription",
]

FDP = descriptor_pb2.FieldDescriptorProto
TYPE_NAMES = {v: k for k, v in FDP.Type.items()}
LABEL_NAMES = {v: k for k, v in FDP.Label.items()}


def client_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """The FileDescriptorProtos the client was generated from (no shared descriptor pool)."""
    try:
        from rocketmq.grpc_protocol import definition_pb2, service_pb2
    except ImportError as e:  # pragma: no cover - environment problem
        print(f"ERROR: cannot import rocketmq.grpc_protocol ({e}); "
              "install rocketmq-python-client in this interpreter's environment", file=sys.stderr)
        sys.exit(2)
    out = []
    for mod in (definition_pb2, service_pb2):
        fdp = descriptor_pb2.FileDescriptorProto()
        fdp.ParseFromString(mod.DESCRIPTOR.serialized_pb)
        out.append(fdp)
    return out


def our_files(proto_root: str) -> list[descriptor_pb2.FileDescriptorProto]:
    """Compile our protos with grpcio-tools' protoc into a FileDescriptorSet."""
    try:
        from grpc_tools import protoc
    except ImportError as e:  # pragma: no cover - environment problem
        print(f"ERROR: grpcio-tools is missing ({e})", file=sys.stderr)
        sys.exit(2)
    protos = sorted(glob.glob(os.path.join(proto_root, "apache", "rocketmq", "v2", "*.proto")))
    if not protos:
        print(f"ERROR: no .proto files under {proto_root}/apache/rocketmq/v2", file=sys.stderr)
        sys.exit(2)
    wkt_include = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ours.pb")
        args = ["protoc", f"-I{proto_root}", f"-I{wkt_include}", f"--descriptor_set_out={out}",
                "--include_imports", *protos]
        rc = protoc.main(args)
        if rc != 0:
            print(f"ERROR: protoc failed (exit {rc}) compiling {protos}", file=sys.stderr)
            sys.exit(1)
        fds = descriptor_pb2.FileDescriptorSet()
        with open(out, "rb") as f:
            fds.ParseFromString(f.read())
    return [f for f in fds.file if f.package == PACKAGE]


def index(files):
    """Full name -> descriptor for every message, enum and service (nested ones included)."""
    msgs, enums, svcs = {}, {}, {}

    def walk_msg(prefix, m):
        name = f"{prefix}.{m.name}"
        msgs[name] = m
        for e in m.enum_type:
            enums[f"{name}.{e.name}"] = e
        for n in m.nested_type:
            walk_msg(name, n)

    for f in files:
        prefix = f".{f.package}"
        for m in f.message_type:
            walk_msg(prefix, m)
        for e in f.enum_type:
            enums[f"{prefix}.{e.name}"] = e
        for s in f.service:
            svcs[f"{prefix}.{s.name}"] = s
    return msgs, enums, svcs


def oneof_of(msg, field):
    """Name of the oneof a field belongs to, or None (proto3-optional synthetic oneofs included)."""
    if field.HasField("oneof_index"):
        return msg.oneof_decl[field.oneof_index].name
    return None


def describe(field):
    label = LABEL_NAMES[field.label].removeprefix("LABEL_").lower()
    if label == "optional":  # proto3: plain singular field unless proto3_optional is set
        label = "singular"
    kind = field.type_name or TYPE_NAMES[field.type].removeprefix("TYPE_").lower()
    opt = " proto3-optional" if field.proto3_optional else ""
    return f"{label} {kind}{opt}"


def compare(client, ours):
    errors: list[str] = []
    extras: list[str] = []
    c_msgs, c_enums, c_svcs = index(client)
    o_msgs, o_enums, o_svcs = index(ours)

    for f in client:
        if f.package != PACKAGE:
            errors.append(f"client file {f.name}: unexpected package {f.package!r}")

    # Messages.
    for name, cm in sorted(c_msgs.items()):
        om = o_msgs.get(name)
        if om is None:
            errors.append(f"message {name}: missing in ours")
            continue
        if cm.options.map_entry != om.options.map_entry:
            errors.append(f"message {name}: map_entry {cm.options.map_entry} vs ours {om.options.map_entry}")
        o_fields = {fl.name: fl for fl in om.field}
        o_by_num = {fl.number: fl for fl in om.field}
        for cf in cm.field:
            where = f"{name}.{cf.name}"
            of = o_fields.get(cf.name)
            if of is None:
                other = o_by_num.get(cf.number)
                hint = f" (ours uses number {cf.number} for {other.name!r})" if other else ""
                errors.append(f"field {where}: missing in ours{hint}")
                continue
            if cf.number != of.number:
                errors.append(f"field {where}: number {cf.number} vs ours {of.number}")
            if cf.type != of.type or cf.type_name != of.type_name:
                errors.append(f"field {where}: type {describe(cf)} vs ours {describe(of)}")
            if cf.label != of.label:
                errors.append(f"field {where}: label {describe(cf)} vs ours {describe(of)}")
            if cf.proto3_optional != of.proto3_optional:
                errors.append(f"field {where}: proto3 optional {cf.proto3_optional} vs ours {of.proto3_optional}")
            c_oneof, o_oneof = oneof_of(cm, cf), oneof_of(om, of)
            if c_oneof != o_oneof:
                errors.append(f"field {where}: oneof {c_oneof!r} vs ours {o_oneof!r}")
            c_packed = cf.options.packed if cf.options.HasField("packed") else None
            o_packed = of.options.packed if of.options.HasField("packed") else None
            if c_packed != o_packed:
                errors.append(f"field {where}: packed option {c_packed} vs ours {o_packed}")
        c_names = {fl.name for fl in cm.field}
        for of in om.field:
            if of.name not in c_names:
                extras.append(f"field {name}.{of.name} = {of.number} ({describe(of)})")
    for name in sorted(set(o_msgs) - set(c_msgs)):
        extras.append(f"message {name}")

    # Enums.
    for name, ce in sorted(c_enums.items()):
        oe = o_enums.get(name)
        if oe is None:
            errors.append(f"enum {name}: missing in ours")
            continue
        o_vals = {v.name: v.number for v in oe.value}
        for cv in ce.value:
            if cv.name not in o_vals:
                errors.append(f"enum value {name}.{cv.name} = {cv.number}: missing in ours")
            elif o_vals[cv.name] != cv.number:
                errors.append(f"enum value {name}.{cv.name}: number {cv.number} vs ours {o_vals[cv.name]}")
        c_vals = {v.name for v in ce.value}
        for ov in oe.value:
            if ov.name not in c_vals:
                extras.append(f"enum value {name}.{ov.name} = {ov.number}")
    for name in sorted(set(o_enums) - set(c_enums)):
        extras.append(f"enum {name}")

    # Services.
    for name, cs in sorted(c_svcs.items()):
        os_ = o_svcs.get(name)
        if os_ is None:
            errors.append(f"service {name}: missing in ours")
            continue
        o_methods = {m.name: m for m in os_.method}
        for cmth in cs.method:
            where = f"{name}/{cmth.name}"
            om = o_methods.get(cmth.name)
            if om is None:
                errors.append(f"rpc {where}: missing in ours")
                continue
            for attr in ("input_type", "output_type", "client_streaming", "server_streaming"):
                if getattr(cmth, attr) != getattr(om, attr):
                    errors.append(f"rpc {where}: {attr} {getattr(cmth, attr)!r} vs ours {getattr(om, attr)!r}")
        c_methods = {m.name for m in cs.method}
        for om in os_.method:
            if om.name not in c_methods:
                extras.append(f"rpc {name}/{om.name}")
    for name in sorted(set(o_svcs) - set(c_svcs)):
        extras.append(f"service {name}")

    ours_ms = o_svcs.get(f".{PACKAGE}.MessagingService")
    have = {m.name for m in ours_ms.method} if ours_ms else set()
    for rpc in REQUIRED_RPCS:
        if rpc not in have:
            errors.append(f"rpc .{PACKAGE}.MessagingService/{rpc}: required but missing in ours")

    counts = (len(c_msgs), len(c_enums), sum(len(s.method) for s in c_svcs.values()))
    return errors, extras, counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proto-root", default=os.path.join(REPO_ROOT, "proto"),
                    help="include root holding apache/rocketmq/v2/*.proto (default: <repo>/proto)")
    args = ap.parse_args()

    try:
        from importlib.metadata import version
        client_version = version("rocketmq-python-client")
    except Exception:  # noqa: BLE001 - informational only
        client_version = "unknown"

    client = client_files()
    ours = our_files(args.proto_root)
    errors, extras, (n_msgs, n_enums, n_rpcs) = compare(client, ours)

    print(f"rocketmq-python-client {client_version}: {n_msgs} messages, {n_enums} enums, {n_rpcs} RPCs "
          f"({', '.join(f.name for f in client)})")
    print(f"ours: {', '.join(f.name for f in ours)} under {args.proto_root}")
    if extras:
        print(f"ours only ({len(extras)}; allowed, newer contract):")
        for e in extras:
            print(f"  + {e}")
    if errors:
        print(f"MISMATCHES ({len(errors)}):")
        for e in errors:
            print(f"  ! {e}")
        print("FAIL: our protos are not wire-compatible with the client")
        return 1
    print("OK: every client message field, enum value and RPC matches ours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
