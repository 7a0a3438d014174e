#!/usr/bin/env bash
# Instructions per warm hit: the proxy under callgrind, counted per request, repeatable however
# busy the machine is (wall-clock numbers are not; see load.sh for those).
#
#   benches/instructions.sh                       # list info mod gem_1mb gem_20mb
#   SCENARIOS="info list" REQUESTS=3000 benches/instructions.sh
#
# For each scenario: warm the path, zero callgrind's counters, send REQUESTS requests over
# CONNECTIONS keep-alive connections (curl --parallel),
# dump, and report user-space instructions (Ir) per request and per MiB served, with the
# functions that cost the most (inclusive). Kernel work (copies into sockets, syscalls) is not
# in Ir.
#
# Environment: SCENARIOS, REQUESTS (2000; the 20 MiB scenario uses REQUESTS/100), CONNECTIONS
# (4), SKIP_BUILD=1 with BIN_DIR, OUT (directory for the callgrind files and annotations),
# TOP (functions listed per scenario, 25).
set -euo pipefail

REQUESTS=${REQUESTS:-2000}
CONNECTIONS=${CONNECTIONS:-4}
TOP=${TOP:-25}
FAKE_PORT=${FAKE_PORT:-18591}
PROXY_PORT=${PROXY_PORT:-18590}
TOKEN=glpat-demo-0123456789abcdef
AUTH="Authorization: Basic $(printf 'demo:%s' "$TOKEN" | base64 -w0)"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GO=/api/v4/projects/20/packages/go/gitlab.example.com/bench/private/@v
GEMS=/api/v4/projects/20/packages/rubygems/gems
declare -A PATHS=(
    [list]=$GO/list
    [info]=$GO/v1.0.0.info
    [mod]=$GO/v1.0.0.mod
    [gem_1mb]=$GEMS/bench-1mb-1.0.0.gem
    [gem_20mb]=$GEMS/bench-20mb-1.0.0.gem
)
read -r -a SCENARIOS <<<"${SCENARIOS:-list info mod gem_1mb gem_20mb}"

SCRIPT=instructions.sh
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"
for tool in valgrind callgrind_control callgrind_annotate curl; do
    command -v "$tool" >/dev/null || die "missing $tool (apt-get install valgrind curl)"
done

release_binaries

WORK=$(mktemp -d -t gpc-instr.XXXXXX)
FAKE_PID="" PROXY_PID=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in $PROXY_PID $FAKE_PID; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n ${OUT:-} ]]; then mkdir -p "$OUT" && cp "$WORK"/*.txt "$WORK"/callgrind.out.* "$OUT"/ 2>/dev/null || true; fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$FAKE_BIN" --listen "127.0.0.1:$FAKE_PORT" --bench --bench-large-mb 0 --quiet --token "$TOKEN" \
    --proxy-url "http://127.0.0.1:$PROXY_PORT" >"$WORK/fake.log" 2>&1 &
FAKE_PID=$!
wait_for "http://127.0.0.1:$FAKE_PORT/-/hits" "fake GitLab" "$FAKE_PID"

log "starting the proxy under callgrind"
(cd "$WORK" && GITLAB_PKG_CACHE_LISTEN=127.0.0.1:$PROXY_PORT \
    GITLAB_PKG_CACHE_UPSTREAM=http://127.0.0.1:$FAKE_PORT \
    GITLAB_PKG_CACHE_DATA_DIR=$WORK/data \
    exec valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out.%p" \
    "$PROXY_BIN" serve >"$WORK/proxy.log" 2>"$WORK/valgrind.log") &
PROXY_PID=$!
URL=http://127.0.0.1:$PROXY_PORT
# Under callgrind the proxy takes minutes to start (it translates a large binary first).
wait_for "$URL/-/healthz" "gitlab-pkg-cache" "$PROXY_PID" 600

# Exactly N requests over CONNECTIONS keep-alive connections; prints "requests bytes" of the
# answers that were 200. (curl rather than wrk: wrk runs for its whole duration even after its
# threads stop, and under callgrind a fixed duration gives wildly different counts.)
drive() {
    local n=$1 url=$2
    for _ in $(seq "$n"); do printf 'url = "%s"\noutput = "/dev/null"\n' "$url"; done >"$WORK/urls.cfg"
    curl -s --no-progress-meter --parallel --parallel-max "$CONNECTIONS" -H "$AUTH" -K "$WORK/urls.cfg" \
        -w '%{http_code} %{size_download}\n' |
        awk '$1 == 200 { r++; b += $2 } END { printf "%d %d\n", r, b }'
}

printf '| scenario | requests | Ir per request | Ir per MiB served |\n|---|---:|---:|---:|\n' >"$WORK/table.txt"
for name in "${SCENARIOS[@]}"; do
    path=${PATHS[$name]:?unknown scenario $name}
    n=$REQUESTS
    [[ $name == gem_20mb ]] && n=$((REQUESTS / 100 > 4 ? REQUESTS / 100 : 4))
    log "$name: warming"
    for _ in $(seq 50); do
        status=$(curl -s -o /dev/null -D - -H "$AUTH" "$URL$path" | awk 'tolower($1) == "x-cache:" {print $2}' | tr -d '\r')
        [[ $status == hit ]] && break
        sleep 0.2
    done
    [[ $status == hit ]] || die "$path is not a hit after warming"
    # A few more hits so that lazily built state (pools, buffers) is in place.
    for _ in $(seq 20); do curl -s -o /dev/null -H "$AUTH" "$URL$path"; done
    callgrind_control -z "$PROXY_PID" >/dev/null
    log "$name: $n requests over $CONNECTIONS connections"
    read -r requests bytes < <(drive "$n" "$URL$path")
    ((requests == n)) || die "$name: $requests of $n requests answered 200"
    callgrind_control -d "scenario-$name" "$PROXY_PID" >/dev/null
    sleep 1
    file=$(ls -t "$WORK"/callgrind.out.* | grep -v '\.txt$' | head -1)
    ir=$(awk '/^(summary|totals):/{print $2; exit}' "$file")
    printf '| %s | %s | %.0f | %.0f |\n' "$name" "$requests" \
        "$(awk -v i="$ir" -v r="$requests" 'BEGIN{print i/r}')" \
        "$(awk -v i="$ir" -v b="$bytes" 'BEGIN{print i/(b/1048576)}')" >>"$WORK/table.txt"
    callgrind_annotate --inclusive=yes "$file" 2>/dev/null >"$WORK/annotate-$name.txt" || true
    callgrind_annotate "$file" 2>/dev/null >"$WORK/self-$name.txt" || true
    mv "$file" "$WORK/callgrind.out.$name"
    log "$name: $(tail -1 "$WORK/table.txt")"
done
echo
echo "## Instructions per warm hit (callgrind, user space only)"
echo
cat "$WORK/table.txt"
