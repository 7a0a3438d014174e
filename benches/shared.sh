#!/usr/bin/env bash
# Shared-bucket benchmark: what the S3 tier costs and saves, next to the single-node store.
#
#   benches/shared.sh                 # 5 rounds, about 2 minutes
#   ROUNDS=3 GEMS="bench-1mb" benches/shared.sh
#
# Everything on loopback: the fake GitLab (release build, --bench), SeaweedFS (`weed mini`, the
# suite's pinned S3 server: .ci/s3venv/bin/weed or GITLAB_PKG_CACHE_TEST_WEED), and proxies.
# Per round and per gem (one client, curl, times from curl's own clock):
#   single   a proxy without a bucket: the cold fill from GitLab, then a hit from its disk;
#   shared   replica A with the bucket: the cold fill from GitLab (streamed to the caller
#            while written to disk and to the bucket), then a hit from its hot tier;
#   fresh    replica B, same bucket, empty disk: the first GET is a bucket hit (streamed to
#            the caller while copied into B's hot tier), the second a hit from B's hot tier.
# The variants run in turn within a round, so drift of a shared machine falls on all of them.
# The report gives medians (and min-max) in ms and MiB/s.
#
# Environment: ROUNDS (5), GEMS ("bench-1mb bench-20mb"), SKIP_BUILD=1 with BIN_DIR, OUT (a
# directory to copy the raw timings and logs to), WEED (the weed binary).
set -euo pipefail

ROUNDS=${ROUNDS:-5}
read -r -a GEMS <<<"${GEMS:-bench-1mb bench-20mb}"
FAKE_PORT=${FAKE_PORT:-18611}
PROXY_PORT=${PROXY_PORT:-18612}
S3_PORT=${S3_PORT:-18620}
TOKEN=glpat-demo-0123456789abcdef
AUTH="Authorization: Basic $(printf 'demo:%s' "$TOKEN" | base64 -w0)"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GEM_PATH=/api/v4/projects/20/packages/rubygems/gems
BUCKET=artifacts

SCRIPT=shared.sh
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"
for tool in curl awk; do command -v "$tool" >/dev/null || die "missing $tool"; done
WEED=${WEED:-${GITLAB_PKG_CACHE_TEST_WEED:-$ROOT/.ci/s3venv/bin/weed}}
[[ -x $WEED ]] || die "no weed binary at $WEED (scripts/test --install-only installs it)"

release_binaries

WORK=$(mktemp -d -t gpc-shared.XXXXXX)
PIDS=()
PROXY_PID=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    [[ -n $PROXY_PID ]] && kill -TERM "$PROXY_PID" 2>/dev/null
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n ${OUT:-} ]]; then mkdir -p "$OUT" && cp "$WORK"/*.tsv "$WORK"/*.log "$OUT"/ 2>/dev/null || true; fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$FAKE_BIN" --listen "127.0.0.1:$FAKE_PORT" --bench --bench-large-mb 0 --quiet --token "$TOKEN" \
    --proxy-url "http://127.0.0.1:$PROXY_PORT" >"$WORK/fake.log" 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:$FAKE_PORT/-/hits" "fake GitLab" "${PIDS[-1]}"

log "starting SeaweedFS (S3 on $S3_PORT)"
cat >"$WORK/s3.json" <<'EOF'
{"identities": [{"name": "bench", "credentials": [{"accessKey": "benchaccess", "secretKey": "benchsecret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
printf '[default]\naws_access_key_id = benchaccess\naws_secret_access_key = benchsecret\n' >"$WORK/s3-credentials"
head -c 32 /dev/urandom >"$WORK/credential.key"
mkdir -p "$WORK/weed"
"$WEED" mini -dir="$WORK/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port="$S3_PORT" \
    -s3.port.iceberg=0 -s3.port.lance=0 -master.port=$((S3_PORT + 1)) \
    -volume.port=$((S3_PORT + 2)) -filer.port=$((S3_PORT + 3)) -admin.ui=false \
    -admin.port=$((S3_PORT + 4)) -webdav=false -s3.config="$WORK/s3.json" \
    -master.telemetry=false -bucket=$BUCKET >"$WORK/weed.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 600); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((S3_PORT + 3))/buckets/$BUCKET/") == 200 ]] && break
    kill -0 "${PIDS[-1]}" 2>/dev/null || die "weed exited at start (see weed.log)"
    sleep 0.1
done

URL=http://127.0.0.1:$PROXY_PORT
start_proxy() { # name data-dir [s3 prefix]
    local name=$1 dir=$2 prefix=${3:-}
    local env=(GITLAB_PKG_CACHE_LISTEN=127.0.0.1:$PROXY_PORT
        GITLAB_PKG_CACHE_UPSTREAM=http://127.0.0.1:$FAKE_PORT
        GITLAB_PKG_CACHE_DATA_DIR=$dir)
    if [[ -n $prefix ]]; then
        env+=(GITLAB_PKG_CACHE_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
            GITLAB_PKG_CACHE_S3_BUCKET=$BUCKET
            GITLAB_PKG_CACHE_S3_REGION=us-east-1
            GITLAB_PKG_CACHE_S3_PREFIX=$prefix
            GITLAB_PKG_CACHE_S3_PATH_STYLE=true
            GITLAB_PKG_CACHE_S3_CREDENTIALS_FILE=$WORK/s3-credentials
            GITLAB_PKG_CACHE_CREDENTIAL_KEY_FILE=$WORK/credential.key)
    fi
    env "${env[@]}" "$PROXY_BIN" serve >>"$WORK/proxy-$name.log" 2>&1 &
    PROXY_PID=$!
    wait_for "$URL/-/healthz" "gitlab-pkg-cache ($name)" "$PROXY_PID"
}
stop_proxy() {
    kill -TERM "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=""
}
metric() { # name: the sum of its samples
    curl -s "$URL/-/pkg-cache/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { print s + 0 }'
}
# One GET: "seconds bytes x-cache", appended to results.tsv under the given label.
timed_get() { # variant step gem
    local out
    out=$(curl -s -o /dev/null -H "$AUTH" -D "$WORK/headers" -w '%{http_code} %{time_total} %{size_download}' "$URL$GEM_PATH/$3-1.0.0.gem")
    local code seconds bytes cache
    read -r code seconds bytes <<<"$out"
    cache=$(awk 'tolower($1) == "x-cache:" { print $2 }' "$WORK/headers" | tr -d '\r')
    [[ $code == 200 ]] || die "$1 $2 $3: HTTP $code"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$seconds" "$bytes" "$cache" >>"$WORK/results.tsv"
}
# Fills commit just after the response's last byte: wait for it before the next step.
wait_stored() { # variant gem
    for _ in $(seq 300); do
        if [[ $1 == single ]]; then
            curl -s -I -H "$AUTH" "$URL$GEM_PATH/$2-1.0.0.gem" | grep -qi '^x-cache: hit' && return 0
        else
            (($(metric gitlab_pkg_cache_shared_commits_won_total) >= 1)) && return 0
        fi
        sleep 0.05
    done
    die "$1: the fill was not committed"
}

: >"$WORK/results.tsv"
for round in $(seq "$ROUNDS"); do
    for gem in "${GEMS[@]}"; do
        log "round $round, $gem"
        start_proxy single "$WORK/single-$round-$gem"
        timed_get single cold "$gem"
        wait_stored single "$gem"
        timed_get single hit "$gem"
        stop_proxy

        prefix="round-$round-$gem"
        start_proxy shared "$WORK/shared-a-$round-$gem" "$prefix"
        timed_get shared cold "$gem"
        wait_stored shared "$gem"
        timed_get shared hit "$gem"
        stop_proxy

        start_proxy fresh "$WORK/shared-b-$round-$gem" "$prefix"
        timed_get fresh bucket "$gem"
        sleep 0.5
        timed_get fresh hit "$gem"
        stop_proxy
    done
done

echo
echo "## Shared bucket vs single node (one client, median of $ROUNDS rounds, min-max)"
echo
echo "| gem | what | x-cache | ms | MiB/s |"
echo "|---|---|---|---:|---:|"
for gem in "${GEMS[@]}"; do
    for pair in "single cold" "shared cold" "single hit" "shared hit" "fresh bucket" "fresh hit"; do
        read -r variant step <<<"$pair"
        case "$variant $step" in
            "single cold") label="single node: cold fill from GitLab" ;;
            "shared cold") label="with bucket: cold fill from GitLab (also written to the bucket)" ;;
            "single hit") label="single node: hit from disk" ;;
            "shared hit") label="with bucket: hit from the hot tier" ;;
            "fresh bucket") label="new replica, empty disk: hit from the bucket" ;;
            "fresh hit") label="new replica: next hit, from its hot tier" ;;
        esac
        awk -F'\t' -v v="$variant" -v s="$step" -v g="$gem" \
            '$1 == v && $2 == s && $3 == g { print $4 * 1000, $5, $6 }' "$WORK/results.tsv" |
            sort -n |
            awk -v g="$gem" -v label="$label" '
                { t[++n] = $1; bytes = $2; cache = $3 }
                END {
                    if (n == 0) exit
                    med = (n % 2) ? t[(n + 1) / 2] : (t[n / 2] + t[n / 2 + 1]) / 2
                    printf "| %s | %s | %s | %.1f (%.1f-%.1f) | %.0f |\n", g, label, cache,
                        med, t[1], t[n], bytes / 1048576 / (med / 1000)
                }'
    done
done
