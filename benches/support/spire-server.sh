# Sourced by benches/with-spire.sh and layout/generate.sh: starts a spire-server (v1.13.3, from
# target/spire/bin; tests/interop/setup.sh spire builds it) for the trust domain example.org on
# loopback — SQLite datastore, join_token node attestation, in-memory keys, entry cache reloaded
# every 500 ms — and waits until it answers.
#
# usage: start_spire_server DIR PORT
# sets: spire_server (the binary), server_pid, server_socket (its API socket), server_bundle (a
# PEM file with its bundle). The caller stops it (kill "$server_pid").
start_spire_server() {
    local dir=$1 port=$2
    spire_server="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/spire/bin/spire-server"
    server_socket="$dir/server.sock"
    server_bundle="$dir/bundle.pem"
    mkdir -p "$dir"
    cat > "$dir/server.conf" <<CONF
server {
  bind_address = "127.0.0.1"
  bind_port = "$port"
  socket_path = "$server_socket"
  trust_domain = "example.org"
  data_dir = "$dir/server-data"
  log_level = "WARN"
  experimental { cache_reload_interval = "500ms" }
}
plugins {
  DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "$dir/server-data/datastore.sqlite3" } }
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "memory" { plugin_data {} }
}
CONF
    "$spire_server" run -config "$dir/server.conf" >"$dir/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        "$spire_server" healthcheck -socketPath "$server_socket" >/dev/null 2>&1 && break
        sleep 0.2
    done
    "$spire_server" healthcheck -socketPath "$server_socket" >/dev/null 2>&1 \
        || { cat "$dir/server.log" >&2; echo "spire-server did not start" >&2; return 1; }
    "$spire_server" bundle show -socketPath "$server_socket" > "$server_bundle"
}
