#!/usr/bin/env bash
# Generates the Python stubs (semcache_pb2.py, semcache_pb2_grpc.py, semcache_pb2.pyi) from
# proto/semcache/v1/semcache.proto into clients/python/_generated/ (git-ignored).
# Needs grpcio-tools (requirements.txt). semcache_client.py does the same on first import.
#
#   clients/python/generate.sh [PYTHON]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${1:-python3}
root=$(cd "$here/../.." && pwd)
rm -rf "$here/_generated"
mkdir -p "$here/_generated"
"$python" -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$here/_generated" --grpc_python_out="$here/_generated" --pyi_out="$here/_generated" \
  "$root/proto/semcache/v1/semcache.proto"
echo "stubs generated in $here/_generated"
