#!/usr/bin/env bash
# Prepares the client-matrix programs of tests/clients.rs under the target directory:
#   python  a venv with PyPI `spiffe` (python/requirements.txt)
#   go      tests/interop/go built with go-spiffe (modules cached under the target directory)
#   java    tests/interop/java compiled with java-spiffe (Maven artifacts cached likewise)
# usage: tests/interop/setup.sh [python|go|java]...   (none: all three)
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
}

java_part() {
    local stamp
    stamp=$(stamp_of "$here/java/pom.xml" "$here"/java/src/main/java/interop/*.java)
    if [ -f "$out/java.classpath" ] && [ "$(cat "$out/java.stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    mvn -q -B -Dmaven.repo.local="$out/m2" -Dinterop.build="$out/java" -f "$here/java/pom.xml" \
        compile dependency:build-classpath -Dmdep.outputFile="$out/java.classpath"
    echo "$stamp" > "$out/java.stamp"
}

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(python go java)
for part in "${parts[@]}"; do
    case "$part" in
        python | go | java) "${part}_part" || { echo "setup.sh: preparing the $part client failed" >&2; exit 1; } ;;
        *) echo "setup.sh: unknown part '$part' (python, go or java)" >&2; exit 2 ;;
    esac
done
