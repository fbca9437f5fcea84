#!/usr/bin/env bash
# Prepares the client-matrix programs of tests/clients.rs under the target directory:
#   python  a venv with PyPI `spiffe` (python/requirements.txt)
#   go      tests/interop/go built with go-spiffe, tests/interop/go/sds with go-control-plane
#           (modules cached under the target directory)
#   java    tests/interop/java compiled with java-spiffe (Maven artifacts cached likewise)
#   spire   spire-server and spire-agent v1.13.3 built from the Go module proxy into
#           target/spire/bin (tests/spire_server.rs, benches/with-spire.sh)
# usage: tests/interop/setup.sh [python|go|java|spire]...   (none: all four)
# Idempotent: each part is redone only when its inputs changed. Output goes to $LANYARD_INTEROP_DIR
# (default: target/interop). Exits non-zero, naming the step, when a part cannot be prepared.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${LANYARD_INTEROP_DIR:-$root/target/interop}
mkdir -p "$out/bin"

stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

python_part() {
    local stamp
    stamp=$(stamp_of "$here/python/requirements.txt")
    if [ -x "$out/venv/bin/python" ] && [ "$(cat "$out/venv/.stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    python3 -m venv --clear "$out/venv"
    "$out/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$here/python/requirements.txt"
    echo "$stamp" > "$out/venv/.stamp"
}

go_part() {
    export GOMODCACHE="$out/gomod" GOCACHE="$out/gocache" GOFLAGS=-modcacherw
    (cd "$here/go" && go mod download && go build -o "$out/bin/interop-go" .)
    # The SDS client: Envoy's own generated types (go-control-plane), a module of its own.
    (cd "$here/go/sds" && go mod download && go build -o "$out/bin/interop-sds" .)
    # The OIDC relying party: github.com/coreos/go-oidc/v3.
    (cd "$here/go/oidc" && go mod download && go build -o "$out/bin/interop-oidc" .)
}

java_part() {
    local stamp
    # The classpath holds absolute paths into $out/m2: a target directory moved or copied to another
    # checkout must resolve it again, so the stamp covers where it lives too.
    stamp=$( (echo "$out"; cat "$here/java/pom.xml" "$here"/java/src/main/java/interop/*.java) | sha256sum | cut -d' ' -f1)
    if [ -f "$out/java.classpath" ] && [ "$(cat "$out/java.stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    mvn -q -B -Dmaven.repo.local="$out/m2" -Dinterop.build="$out/java" -f "$here/java/pom.xml" \
        compile dependency:build-classpath -Dmdep.outputFile="$out/java.classpath"
    echo "$stamp" > "$out/java.stamp"
}

spire_version=v1.13.3
spire_part() {
    local bin="$root/target/spire/bin" build="$root/target/spire/build"
    if [ -x "$bin/spire-server" ] && [ -x "$bin/spire-agent" ] \
        && [ "$(cat "$bin/.version" 2>/dev/null)" = "$spire_version" ]; then
        return 0
    fi
    export GOMODCACHE="$out/gomod" GOCACHE="$out/gocache" GOFLAGS="-modcacherw -mod=mod"
    mkdir -p "$build" "$bin"
    (
        cd "$build"
        [ -f go.mod ] || go mod init spirebuild >/dev/null 2>&1
        go get -tool "github.com/spiffe/spire/cmd/spire-server@$spire_version"
        go get -tool "github.com/spiffe/spire/cmd/spire-agent@$spire_version"
        GOBIN="$bin" go install github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
    )
    echo "$spire_version" > "$bin/.version"
}

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(python go java spire)
for part in "${parts[@]}"; do
    case "$part" in
        python | go | java | spire) "${part}_part" || { echo "setup.sh: preparing the $part client failed" >&2; exit 1; } ;;
        *) echo "setup.sh: unknown part '$part' (python, go, java or spire)" >&2; exit 2 ;;
    esac
done
