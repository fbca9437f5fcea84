#!/usr/bin/env bash
# Runs `cargo bench --bench e2e` with SPIRE's own agent side by side: builds spire-server and
# spire-agent v1.13.3 from the Go module proxy (cached under target/spire), starts a server
# (SQLite datastore, join_token node attestation, in-memory keys) and an agent (unix workload
# attestor) on loopback, registers spiffe://example.org/bench for this uid, and hands the agent's
# socket and PID to the bench.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cache="$root/target/spire"
bin="$cache/bin"
bash "$root/tests/interop/setup.sh" spire
run=$(mktemp -d)
cleanup() { kill "${agent_pid:-}" "${server_pid:-}" 2>/dev/null || true; rm -rf "$run"; }
trap cleanup EXIT
cat > "$run/server.conf" <<CONF
server {
  bind_address = "127.0.0.1"
  bind_port = "18081"
  socket_path = "$run/server.sock"
  trust_domain = "example.org"
  data_dir = "$run/server-data"
  log_level = "WARN"
}
plugins {
  DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "$run/server-data/datastore.sqlite3" } }
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "memory" { plugin_data {} }
}
CONF
cat > "$run/agent.conf" <<CONF
agent {
  data_dir = "$run/agent-data"
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "18081"
  socket_path = "$run/agent.sock"
  trust_domain = "example.org"
  insecure_bootstrap = true
}
plugins {
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "memory" { plugin_data {} }
  WorkloadAttestor "unix" { plugin_data {} }
}
CONF
"$bin/spire-server" run -config "$run/server.conf" >"$run/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do "$bin/spire-server" healthcheck -socketPath "$run/server.sock" >/dev/null 2>&1 && break; sleep 0.2; done
token=$("$bin/spire-server" token generate -spiffeID spiffe://example.org/node -socketPath "$run/server.sock" | awk '{print $2}')
"$bin/spire-server" entry create -parentID spiffe://example.org/node -spiffeID spiffe://example.org/bench \
    -selector "unix:uid:$(id -u)" -socketPath "$run/server.sock" >/dev/null
"$bin/spire-agent" run -config "$run/agent.conf" -joinToken "$token" >"$run/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 150); do
    "$bin/spire-agent" api fetch x509 -socketPath "$run/agent.sock" >/dev/null 2>&1 && break
    sleep 0.2
done
SPIRE_AGENT_SOCKET="$run/agent.sock" SPIRE_AGENT_PID=$agent_pid cargo bench --bench e2e
