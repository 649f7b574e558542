#!/usr/bin/env bash
# Schema check of deploy/, run by .ci/run: the Kubernetes manifests against the Kubernetes API
# schemas (kubernetes-validate, offline, strict: unknown fields fail), the kustomize build
# when kubectl is installed, and the compose file against the compose spec (vendored in
# check-jsonschema). That the ConfigMap's files start raftmq nodes is `tests/deploy.rs`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYENV:-target/pyenv}
[ -x "$PY/bin/python" ] || python3 -m venv "$PY"
"$PY/bin/pip" install -q "kubernetes-validate==1.37.0" "check-jsonschema==0.39.0"

"$PY/bin/kubernetes-validate" --strict deploy/k8s/configmap.yaml deploy/k8s/nameserver.yaml deploy/k8s/broker.yaml
if command -v kubectl >/dev/null; then
  kubectl kustomize deploy/k8s > target/k8s-rendered.yaml
  "$PY/bin/kubernetes-validate" --strict target/k8s-rendered.yaml
else
  echo "kubectl not installed: the kustomize build was not rendered (the files were checked one by one)"
fi
"$PY/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml
