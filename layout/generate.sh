#!/usr/bin/env bash
# Regenerates layout/text-order.<profile>.txt: the functions of the `lanyard` binary that run when
# the agent starts (on a fresh and on an existing data directory), serves the Workload API to a few clients,
# reloads and stops, most instructions first. build.rs hands the file to the linker
# (--symbol-ordering-file), which then places those functions side by side at the start of the
# code, so the agent's resident code is the ~3 MB it runs instead of the ~10 MB of 64 KiB blocks
# the kernel maps around each first access when they are scattered across 16 MB.
#
# One file per profile: inlining differs between `release` and `dist` (fat LTO), and a function
# that one build runs but the other only contains would be placed among the hot ones for nothing.
#
# Needs valgrind (callgrind). Run it after a dependency or toolchain update (the names carry hashes
# that change then; stale names are ignored by the linker, so an old file only orders less):
#   bash layout/generate.sh            # release and dist profiles
#   PROFILES=release bash layout/generate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "layout/generate.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
profiles=${PROFILES:-release dist}
work=$(mktemp -d)
trap 'pkill -f "callgrind.*$work" 2>/dev/null || true; rm -rf "$work"' EXIT
# Runs the agent binary $1 under callgrind twice (a fresh data directory, then the same one again)
# with clients, a reload and a stop; appends the two output files to `outputs`.
exercise() {
    local bin=$1 dir=$2
    mkdir -p "$dir"
    cat > "$dir/lanyard.toml" <<EOF
socket_path = "$dir/agent.sock"
admin_socket_path = "$dir/admin/admin.sock"
data_dir = "$dir/data"
health = { address = "off" }
[[entry]]
spiffe_id = "spiffe://example.org/layout"
selectors = ["unix:uid:$(id -u)"]
EOF
    for run in fresh restart; do
        rm -f "$dir/agent.sock"
        RUST_LOG=warn valgrind --tool=callgrind --demangle=no \
            --callgrind-out-file="$dir/callgrind.$run" \
            "$bin" agent --config "$dir/lanyard.toml" >"$dir/$run.log" 2>&1 &
        local vg=$!
        for _ in $(seq 1 300); do [ -S "$dir/agent.sock" ] && break; sleep 1; done
        [ -S "$dir/agent.sock" ] || { cat "$dir/$run.log" >&2; exit 1; }
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
    if [ "$profile" = release ]; then
        # `cargo bench` builds the agent into the same directory with the dev-dependencies'
        # features (tokio's test-util...), so its functions carry other hashes: list both builds'
        # names (each build finds only its own).
        cargo bench --locked --bench e2e --no-run
        cp target/release/lanyard "$work/bin-bench/lanyard"
        exercise "$work/bin-bench/lanyard" "$work/bench"
    fi
    python3 - "${outputs[@]}" > "layout/text-order.$profile.txt" <<'EOF'
"""Self cost (instructions) per function of the lanyard binary, summed over callgrind outputs."""
import collections, re, sys

cost = collections.Counter()
for path in sys.argv[1:]:
    names, objects = {}, {}
    obj = fn = None
    after_calls = False
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        kind, _, rest = line.partition("=")
        if kind in ("ob", "fn", "cob", "cfn"):
            m = re.match(r"\((\d+)\)(?: (.*))?", rest)
            table = objects if kind in ("ob", "cob") else names
            if m and m.group(2):
                table[m.group(1)] = m.group(2)
            if kind == "ob":
                obj = objects.get(m.group(1)) if m else rest
            elif kind == "fn":
                fn = names.get(m.group(1)) if m else rest
        elif kind == "calls":
            after_calls = True  # the next cost line is the call's inclusive cost
        elif line[:1].isdigit() or line[:1] in "+-*":
            if after_calls:
                after_calls = False
                continue
            parts = line.split()
            if len(parts) >= 2 and obj and obj.endswith("/lanyard") and fn:
                # callgrind marks recursion levels with 'N; the symbol is the same.
                cost[re.sub(r"'\d+$", "", fn)] += int(parts[1])
for name, _ in cost.most_common():
    print(name)
EOF
    echo "layout/text-order.$profile.txt: $(wc -l < "layout/text-order.$profile.txt") functions"
done
