#!/usr/bin/env bash
# Regenerates layout/text-order.<profile>.txt: the functions of the `lanyard` binary that run when
# the agent starts (on a fresh and on an existing data directory), serves the Workload API to a few
# clients, reloads and stops — on its own, then joined to a SPIRE server. layout/order.py lists
# what it ran on its own first (most instructions first), then what it ran only when joined.
# build.rs hands the file to the linker (--symbol-ordering-file), which places those functions side
# by side at the start of the code, so the agent's resident code is the ~3 MB it runs instead of
# the ~10 MB of 64 KiB blocks the kernel maps around each first access when they are scattered
# across 16 MB.
#
# One file per profile: inlining differs between `release` and `dist` (fat LTO), and a function
# that one build runs but the other only contains would be placed among the hot ones for nothing.
#
# Needs valgrind (callgrind). Run it before a release, after a toolchain or dependency update (the
# names carry hashes that change then) and after adding code the agent runs (new functions are not
# listed). Edits to existing lanyard functions keep their names: the crate is built in one codegen
# unit (Cargo.toml), so none carries an `.llvm.*` suffix. Stale names are skipped by the linker, so
# an old file only orders less; `cargo bench --bench e2e` says when the resident code shows it.
#   bash layout/generate.sh            # release and dist profiles
#   PROFILES=release bash layout/generate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "layout/generate.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
profiles=${PROFILES:-release dist}
work=$(mktemp -d)
trap 'pkill -f "callgrind.*$work" 2>/dev/null || true; rm -rf "$work"' EXIT
# A SPIRE server (v1.13.3, built once into target/spire by tests/interop/setup.sh) for the runs
# joined to it, with an entry for this uid under every node the join tokens below attest.
bash tests/interop/setup.sh spire
source benches/support/spire-server.sh
start_spire_server "$work/server" 18091
trap 'kill $server_pid 2>/dev/null || true; pkill -f "callgrind.*$work" 2>/dev/null || true; rm -rf "$work"' EXIT
spire=$spire_server

# Runs the agent binary $1 under callgrind twice (a fresh data directory, then the same one again)
# with clients, a reload and a stop, on its own (local authority) or, with $3 = spire, joined to the
# server; appends the two output files to `outputs`.
exercise() {
    local bin=$1 dir=$2 mode=${3:-local}
    mkdir -p "$dir"
    cat > "$dir/lanyard.toml" <<EOF
socket_path = "$dir/agent.sock"
admin_socket_path = "$dir/admin/admin.sock"
data_dir = "$dir/data"
health = { address = "off" }
EOF
    if [ "$mode" = spire ]; then
        local node="spiffe://example.org/layout-node-$RANDOM$RANDOM"
        local token
        token=$("$spire" token generate -spiffeID "$node" -socketPath "$server_socket" | awk '{print $2}')
        "$spire" entry create -parentID "$node" -spiffeID spiffe://example.org/layout \
            -selector "unix:uid:$(id -u)" -socketPath "$server_socket" >/dev/null
        cat >> "$dir/lanyard.toml" <<EOF
trust_domain = "example.org"
[authority]
mode = "spire"
server_address = "127.0.0.1:18091"
trust_bundle_path = "$server_bundle"
join_token = "$token"
EOF
    else
        cat >> "$dir/lanyard.toml" <<EOF
[[entry]]
spiffe_id = "spiffe://example.org/layout"
selectors = ["unix:uid:$(id -u)"]
EOF
    fi
    for run in fresh restart; do
        rm -f "$dir/agent.sock"
        RUST_LOG=warn valgrind --tool=callgrind --demangle=no \
            --callgrind-out-file="$dir/callgrind.$run" \
            "$bin" agent --config "$dir/lanyard.toml" >"$dir/$run.log" 2>&1 &
        local vg=$!
        for _ in $(seq 1 300); do [ -S "$dir/agent.sock" ] && break; sleep 1; done
        [ -S "$dir/agent.sock" ] || { cat "$dir/$run.log" >&2; exit 1; }
        # Joined to the server, the entry arrives with the first sync.
        for _ in $(seq 1 120); do
            "$bin" fetch x509 --socket "$dir/agent.sock" >/dev/null 2>&1 && break
            sleep 1
        done
        for _ in 1 2 3; do
            "$bin" fetch x509 --socket "$dir/agent.sock" >/dev/null
            "$bin" fetch jwt --audience layout --socket "$dir/agent.sock" >/dev/null
            "$bin" fetch bundles --socket "$dir/agent.sock" >/dev/null
            "$bin" fetch jwt-bundles --socket "$dir/agent.sock" >/dev/null
        done
        timeout 5 "$bin" watch --socket "$dir/agent.sock" | head -1 >/dev/null || true
        "$bin" inventory --admin-socket "$dir/admin/admin.sock" >/dev/null
        kill -HUP "$vg"
        sleep 2
        "$bin" fetch x509 --socket "$dir/agent.sock" >/dev/null
        kill -TERM "$vg"
        wait "$vg" || true
        outputs+=("$dir/callgrind.$run")
    done
}

for profile in $profiles; do
    outputs=()
    cargo build --profile "$profile" --locked --bin lanyard
    mkdir -p "$work/bin-$profile" "$work/bin-bench"
    cp "target/$profile/lanyard" "$work/bin-$profile/lanyard"
    exercise "$work/bin-$profile/lanyard" "$work/$profile"
    exercise "$work/bin-$profile/lanyard" "$work/$profile-spire" spire
    if [ "$profile" = release ]; then
        # `cargo bench` builds the agent into the same directory with the dev-dependencies'
        # features (tokio's test-util...), so its functions carry other hashes: list both builds'
        # names (each build finds only its own).
        cargo bench --locked --bench e2e --no-run
        cp target/release/lanyard "$work/bin-bench/lanyard"
        exercise "$work/bin-bench/lanyard" "$work/bench"
        exercise "$work/bin-bench/lanyard" "$work/bench-spire" spire
    fi
    python3 layout/order.py "${outputs[@]}" > "layout/text-order.$profile.txt"
    echo "layout/text-order.$profile.txt: $(wc -l < "layout/text-order.$profile.txt") functions"
done
