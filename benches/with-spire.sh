#!/usr/bin/env bash
# Runs `cargo bench --bench e2e` with SPIRE's own agent side by side, both joined to one SPIRE
# server: builds spire-server and spire-agent v1.13.3 from the Go module proxy (cached under
# target/spire), starts a server (SQLite datastore, join_token node attestation, in-memory keys,
# entry cache reloaded every 500 ms) on loopback, joins a spire-agent (unix workload attestor) and
# lanyard (`[authority] mode = "spire"`) to it with one join token each, registers
# spiffe://example.org/bench for this uid under each node, and hands the bench the spire-agent's
# socket and PID, lanyard's authority section and what it needs to change the entries (to time an
# entry change reaching an open stream on each agent).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cache="$root/target/spire"
bin="$cache/bin"
bash "$root/tests/interop/setup.sh" spire
run=$(mktemp -d)
cleanup() { kill "${agent_pid:-}" "${server_pid:-}" 2>/dev/null || true; rm -rf "$run"; }
trap cleanup EXIT
source "$root/benches/support/spire-server.sh"
start_spire_server "$run" 18081
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
token=$("$bin/spire-server" token generate -spiffeID spiffe://example.org/node -socketPath "$server_socket" | awk '{print $2}')
lanyard_token=$("$bin/spire-server" token generate -spiffeID spiffe://example.org/lanyard-node -socketPath "$server_socket" | awk '{print $2}')
entry_id() { awk -F': *' '/^Entry ID/ {print $2; exit}'; }
spire_entry=$("$bin/spire-server" entry create -parentID spiffe://example.org/node -spiffeID spiffe://example.org/bench \
    -selector "unix:uid:$(id -u)" -socketPath "$server_socket" | entry_id)
lanyard_entry=$("$bin/spire-server" entry create -parentID spiffe://example.org/lanyard-node -spiffeID spiffe://example.org/bench \
    -selector "unix:uid:$(id -u)" -socketPath "$server_socket" | entry_id)
"$bin/spire-agent" run -config "$run/agent.conf" -joinToken "$token" >"$run/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 150); do
    "$bin/spire-agent" api fetch x509 -socketPath "$run/agent.sock" >/dev/null 2>&1 && break
    sleep 0.2
done
export SPIRE_AGENT_SOCKET="$run/agent.sock" SPIRE_AGENT_PID=$agent_pid
export LANYARD_BENCH_AUTHORITY="trust_domain = \"example.org\"
[authority]
mode = \"spire\"
server_address = \"127.0.0.1:18081\"
trust_bundle_path = \"$server_bundle\"
join_token = \"$lanyard_token\"
"
export SPIRE_SERVER_BIN="$bin/spire-server" SPIRE_SERVER_SOCKET="$server_socket"
export SPIRE_ENTRIES="lanyard=$lanyard_entry:spiffe://example.org/lanyard-node,spire-agent=$spire_entry:spiffe://example.org/node"
cargo bench --bench e2e
