#!/usr/bin/env bash
# Load benchmark: gitlab-pkg-cache against nginx's proxy_cache, both in front of the fake GitLab.
#
#   benches/load.sh                      # the whole issue-11 table, a little over 7 minutes
#   DURATION=3s ROUNDS=1 benches/load.sh # quick look
#
# What it measures, all on loopback:
#   1. warm hits (@v/list, .info, a 1 MiB and a 20 MiB gem) at 16 and 128 connections with
#      wrk (2 threads), proxy and nginx interleaved per scenario (A B, then B A, ...) so that
#      drift of a shared machine falls on both;
#   2. a cold stampede: 100 concurrent clients on one uncached 20 MiB gem, counting the
#      requests that reached GitLab and the wall time;
#   3. peak RSS (sampled VmRSS; nginx: master and all workers summed) while 128 clients
#      download the 20 MiB gem and 50 clients the 200 MiB gem (warm).
#
# Every warm-hit row carries the servers' CPU time per request (user + system, from
# /proc/<pid>/stat) and its proxy/nginx ratio. The report ends with each of issue 11's targets
# judged met or not from these rows. For work per request that does not depend on how busy
# the machine is, see benches/instructions.sh (instructions per hit under callgrind).
#
# Environment: DURATION (10s), ROUNDS (2), CONNECTIONS ("16 128"), STAMPEDE_CLIENTS (100),
# RSS_RUNS ("128:20 50:200", clients:MiB, each MiB one of 20 or LARGE_MB), LARGE_MB (200),
# SCENARIOS ("list info mod gem_1mb gem_20mb"), SKIP_BUILD=1 with BIN_DIR=<dir holding
# gitlab-pkg-cache and fake_gitlab>, KEEP_WORK=1 to keep the temporary directory, OUT (a
# directory to copy the raw results and logs to).
#
# AUTH_TTLS="30s 300s" (two or more `auth_ttl` values) measures the decision bound instead
# of the comparison with nginx: one proxy per value, each given GITLAB_PKG_CACHE_AUTH_TTL
# (ports PROXY_PORT+10, +11, ...), the same warm scenarios (SCENARIOS, default "info") with
# the same caller, interleaved per round (A B, then B A, ...), counting what reached GitLab
# during each run (for Go routes the authorization probe is the module's @v/list). Use a
# DURATION of 20s or more so that decisions age into their refresh window during the runs.
#
# PROFILE="info gem_20mb" (any scenarios) adds, after the measured runs, one run per named
# scenario at the first CONNECTIONS value with `perf record -e cpu-clock -g` attached to the
# proxy, and writes `perf report` of it to profile-<scenario>.txt (not part of the numbers:
# sampling costs the proxy CPU). Needs perf (Debian: linux-perf) and the release build's line
# tables (the default profile keeps them).
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
CONNECTIONS=${CONNECTIONS:-"16 128"}
THREADS=2
STAMPEDE_CLIENTS=${STAMPEDE_CLIENTS:-100}
LARGE_MB=${LARGE_MB:-200}
RSS_RUNS=${RSS_RUNS:-"128:20 50:$LARGE_MB"}
PROFILE=${PROFILE:-}
FAKE_PORT=${FAKE_PORT:-18581}
PROXY_PORT=${PROXY_PORT:-18580}
NGINX_PORT=${NGINX_PORT:-18582}
TOKEN=glpat-demo-0123456789abcdef
# What a Go or gem client sends for a private project: HTTP Basic with the token as password.
AUTH="Authorization: Basic $(printf 'demo:%s' "$TOKEN" | base64 -w0)"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FAKE_URL=http://127.0.0.1:$FAKE_PORT
PROXY_URL=http://127.0.0.1:$PROXY_PORT
NGINX_URL=http://127.0.0.1:$NGINX_PORT
GO=/api/v4/projects/20/packages/go/gitlab.example.com/bench/private/@v
GEMS=/api/v4/projects/20/packages/rubygems/gems

SCRIPT=load.sh
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"

# --- tools -------------------------------------------------------------------------------
missing=()
for tool in nginx wrk curl awk base64; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "installing nginx-light and wrk (missing: ${missing[*]})"
        apt-get install -y nginx-light wrk curl >/dev/null
    else
        die "missing ${missing[*]}: apt-get install -y nginx-light wrk curl"
    fi
fi
NGINX_BIN=$(command -v nginx)

for port in "$FAKE_PORT" "$PROXY_PORT" "$NGINX_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is already in use on 127.0.0.1 (set FAKE_PORT/PROXY_PORT/NGINX_PORT)"
    fi
done

# --- build -------------------------------------------------------------------------------
release_binaries

# --- processes and cleanup ---------------------------------------------------------------
WORK=$(mktemp -d -t gpc-load.XXXXXX)
# nginx workers run as an unprivileged user and must reach the cache below this directory.
chmod 755 "$WORK"
FAKE_PID="" PROXY_PID="" NGINX_PID="" SAMPLER_PID=""
AUTH_PIDS=()

stop() {
    local pid=$1
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop "$SAMPLER_PID"
    for pid in "${AUTH_PIDS[@]}"; do stop "$pid"; done
    stop "$NGINX_PID"
    stop "$PROXY_PID"
    stop "$FAKE_PID"
    wait 2>/dev/null || true
    if [[ -n ${OUT:-} ]]; then
        mkdir -p "$OUT"
        cp "$WORK"/*.tsv "$WORK"/*.log "$WORK"/nginx/nginx.conf "$OUT"/ 2>/dev/null || true
        cp "$WORK"/profile-*.txt "$OUT"/ 2>/dev/null || true
        cp "$WORK"/nginx/error.log "$OUT"/nginx-error.log 2>/dev/null || true
    fi
    if [[ ${KEEP_WORK:-} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting the fake GitLab on $FAKE_URL (with ${LARGE_MB} MiB benchmark gem)"
"$FAKE_BIN" --listen "127.0.0.1:$FAKE_PORT" --bench --bench-large-mb "$LARGE_MB" --quiet \
    --token "$TOKEN" --proxy-url "$PROXY_URL" >"$WORK/fake.log" 2>&1 &
FAKE_PID=$!
wait_for "$FAKE_URL/-/hits" "fake GitLab" "$FAKE_PID"

log "starting gitlab-pkg-cache on $PROXY_URL"
GITLAB_PKG_CACHE_LISTEN=127.0.0.1:$PROXY_PORT \
    GITLAB_PKG_CACHE_UPSTREAM=$FAKE_URL \
    GITLAB_PKG_CACHE_DATA_DIR=$WORK/proxy-data \
    "$PROXY_BIN" serve >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
wait_for "$PROXY_URL/-/healthz" "gitlab-pkg-cache" "$PROXY_PID"

log "starting nginx (proxy_cache) on $NGINX_URL"
mkdir -p "$WORK/nginx/cache" "$WORK/nginx/temp"
NGINX_USER=""
if [[ $(id -u) == 0 ]]; then
    if id www-data >/dev/null 2>&1; then NGINX_USER="user www-data;"; else NGINX_USER="user nobody nogroup;"; fi
fi
cat >"$WORK/nginx/nginx.conf" <<EOF
# nginx as an admin would put it in front of GitLab's package APIs.
$NGINX_USER
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log $WORK/nginx/access.log;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    client_body_temp_path $WORK/nginx/temp/client;
    proxy_temp_path $WORK/nginx/temp/proxy;
    fastcgi_temp_path $WORK/nginx/temp/fastcgi;
    uwsgi_temp_path $WORK/nginx/temp/uwsgi;
    scgi_temp_path $WORK/nginx/temp/scgi;

    proxy_cache_path $WORK/nginx/cache levels=1:2 keys_zone=gitlab_packages:10m
                     max_size=20g inactive=7d use_temp_path=off;

    upstream gitlab {
        server 127.0.0.1:$FAKE_PORT;
        keepalive 32;
    }

    server {
        listen 127.0.0.1:$NGINX_PORT;

        location /api/v4/projects/ {
            proxy_pass http://gitlab;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;

            proxy_cache gitlab_packages;
            # Every header GitLab reads a credential from is part of the key, so one caller's
            # answer is never served to another: a careful admin must do this.
            proxy_cache_key "\$scheme\$proxy_host\$request_uri|\$http_authorization|\$http_private_token|\$http_job_token|\$http_deploy_token|\$cookie__gitlab_session";
            proxy_cache_valid 200 10m;
            proxy_cache_lock on;
            # Large artifacts take longer than the 5 s default to fill.
            proxy_cache_lock_timeout 60s;
            proxy_cache_lock_age 60s;
            # GitLab marks API answers "max-age=0, private": nothing would be cached otherwise.
            proxy_ignore_headers Cache-Control Expires Set-Cookie;
            add_header X-Cache-Status \$upstream_cache_status;
        }
    }
}
EOF
"$NGINX_BIN" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
NGINX_PID=$!
wait_for "$NGINX_URL/" nginx "$NGINX_PID"

nginx_pids() {
    echo "$NGINX_PID"
    ps -o pid= --ppid "$NGINX_PID" | tr -d ' '
}

upstream_hits() { curl -sf "$FAKE_URL/-/hits${1:+?prefix=$1}"; }

# --- machine -----------------------------------------------------------------------------
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
    echo "kernel: $(uname -r)"
    echo "memory: $(free -h | awk '/Mem:/{print $2}')"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "nginx: $("$NGINX_BIN" -v 2>&1 | sed 's/.*: //')"
    echo "wrk: $(wrk --version 2>&1 | head -1 | awk '{print $2}')"
    echo "proxy: $("$PROXY_BIN" --version)"
} | tee "$WORK/machine.log" >&2

# --- decision bound (AUTH_TTLS) ----------------------------------------------------------
if [[ -n ${AUTH_TTLS:-} ]]; then
    read -r -a TTLS <<<"$AUTH_TTLS"
    ((${#TTLS[@]} >= 2)) || die "AUTH_TTLS needs two or more values"
    read -r -a TTL_SCENARIOS <<<"${SCENARIOS:-info}"
    declare -A TTL_PATHS=([list]=$GO/list [info]=$GO/v1.0.0.info [mod]=$GO/v1.0.0.mod)
    TTL_URLS=()
    for i in "${!TTLS[@]}"; do
        port=$((PROXY_PORT + 10 + i))
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            die "port $port is already in use on 127.0.0.1 (set PROXY_PORT)"
        fi
        log "starting gitlab-pkg-cache with auth_ttl ${TTLS[$i]} on 127.0.0.1:$port"
        GITLAB_PKG_CACHE_LISTEN=127.0.0.1:$port \
            GITLAB_PKG_CACHE_UPSTREAM=$FAKE_URL \
            GITLAB_PKG_CACHE_DATA_DIR=$WORK/proxy-data-ttl-$i \
            GITLAB_PKG_CACHE_AUTH_TTL=${TTLS[$i]} \
            "$PROXY_BIN" serve >"$WORK/proxy-ttl-$i.log" 2>&1 &
        AUTH_PIDS+=($!)
        TTL_URLS+=("http://127.0.0.1:$port")
        wait_for "${TTL_URLS[$i]}/-/healthz" "gitlab-pkg-cache (auth_ttl ${TTLS[$i]})" "${AUTH_PIDS[$i]}"
    done
    for i in "${!TTLS[@]}"; do
        for name in "${TTL_SCENARIOS[@]}"; do
            path=${TTL_PATHS[$name]:-}
            [[ -n $path ]] || die "AUTH_TTLS: scenario $name is not one of ${!TTL_PATHS[*]}"
            status=""
            for _ in $(seq 50); do
                status=$(curl -s -o /dev/null -D - -H "$AUTH" "${TTL_URLS[$i]}$path" |
                    awk 'tolower($1) == "x-cache:" {print $2}' | tr -d '\r')
                [[ $status == hit ]] && break
                sleep 0.1
            done
            [[ $status == hit ]] || die "${TTL_URLS[$i]}$path is not a hit after warming"
        done
    done
    cat >"$WORK/ttl-report.lua" <<'EOF'
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("RESULT %d %d %d %.0f %.0f\n", summary.requests, summary.duration,
        e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50),
        latency:percentile(99)))
end
EOF
    TTL_RESULTS=$WORK/auth-ttl.tsv
    printf 'scenario\tconnections\tauth_ttl\tround\trequests\tduration_us\terrors\tp50_us\tp99_us\tprobes\tupstream_requests\tload1\n' >"$TTL_RESULTS"
    log "decision bound: auth_ttl {${TTLS[*]}} x ${TTL_SCENARIOS[*]} x connections {$CONNECTIONS}, $DURATION each, $ROUNDS rounds"
    for name in "${TTL_SCENARIOS[@]}"; do
        for conns in $CONNECTIONS; do
            for round in $(seq "$ROUNDS"); do
                order=("${!TTLS[@]}")
                if ((round % 2 == 0)); then
                    order=()
                    for ((i = ${#TTLS[@]} - 1; i >= 0; i--)); do order+=("$i"); done
                fi
                for i in "${order[@]}"; do
                    probes0=$(upstream_hits "$GO/list")
                    all0=$(upstream_hits)
                    out=$(wrk -t "$THREADS" -c "$conns" -d "$DURATION" --timeout 30s --latency \
                        -s "$WORK/ttl-report.lua" -H "$AUTH" "${TTL_URLS[$i]}${TTL_PATHS[$name]}")
                    probes=$(($(upstream_hits "$GO/list") - probes0))
                    all=$(($(upstream_hits) - all0))
                    echo "$out" >>"$WORK/wrk.log"
                    line=$(grep '^RESULT ' <<<"$out") || die "no wrk result for auth_ttl ${TTLS[$i]}"
                    read -r _ requests duration errors p50 p99 <<<"$line"
                    load1=$(cut -d' ' -f1 /proc/loadavg)
                    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$conns" \
                        "${TTLS[$i]}" "$round" "$requests" "$duration" "$errors" "$p50" "$p99" \
                        "$probes" "$all" "$load1" >>"$TTL_RESULTS"
                    printf '    auth_ttl %-5s %-5s c=%-4s round %s: %8.0f req/s  p99 %s ms  errors %s  GitLab asked %s (probes %s)  load %s\n' \
                        "${TTLS[$i]}" "$name" "$conns" "$round" \
                        "$(awk -v r="$requests" -v d="$duration" 'BEGIN{print r/d*1e6}')" \
                        "$(awk -v p="$p99" 'BEGIN{printf "%.2f", p/1000}')" \
                        "$errors" "$all" "$probes" "$load1" >&2
                done
            done
        done
    done
    echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$WORK/machine.log" >&2
    echo
    echo "## Decision bound (wrk -t$THREADS, $DURATION per run, $ROUNDS interleaved rounds)"
    echo
    echo "Ratio: req/s with auth_ttl ${TTLS[0]} over ${TTLS[1]} in the same round (back-to-back runs)."
    echo
    echo "| scenario | conns | auth_ttl | mean req/s | mean p99 ms | client requests | GitLab requests (probes) | errors | req/s ratio ${TTLS[0]}/${TTLS[1]} per round: mean (min–max) |"
    echo "|---|---:|---|---:|---:|---:|---|---:|---|"
    awk -F'\t' -v a="${TTLS[0]}" -v b="${TTLS[1]}" '
        NR == 1 { next }
        {
            k = $1 SUBSEP $2
            if (!(k in seen)) { seen[k] = 1; order[++n] = k }
            t = $3
            if (!((k, t) in runs)) { ttls[k, ++nt[k]] = t }
            rps[k, t] += $5 / $6 * 1e6; p99[k, t] += $9 / 1000; runs[k, t]++
            reqs[k, t] += $5; probes[k, t] += $10; all[k, t] += $11; err[k, t] += $7
            round_rps[k, $4, t] = $5 / $6 * 1e6
            if (!((k, $4) in rounds)) { rounds[k, $4] = 1; round_list[k, ++nr[k]] = $4 }
        }
        END {
            for (i = 1; i <= n; i++) {
                k = order[i]; split(k, parts, SUBSEP)
                sum = 0; cnt = 0; lo = 1e9; hi = 0
                for (j = 1; j <= nr[k]; j++) {
                    r = round_list[k, j]
                    if (round_rps[k, r, b] > 0) {
                        ratio = round_rps[k, r, a] / round_rps[k, r, b]
                        sum += ratio; cnt++
                        if (ratio < lo) lo = ratio
                        if (ratio > hi) hi = ratio
                    }
                }
                for (j = 1; j <= nt[k]; j++) {
                    t = ttls[k, j]
                    cell = (j == 1 && cnt > 0) ? sprintf("%.2f (%.2f–%.2f)", sum / cnt, lo, hi) : ""
                    printf "| %s | %s | %s | %.0f | %.2f | %d | %d (%d) | %d | %s |\n",
                        parts[1], parts[2], t, rps[k, t] / runs[k, t], p99[k, t] / runs[k, t],
                        reqs[k, t], all[k, t], probes[k, t], err[k, t], cell
                }
            }
        }' "$TTL_RESULTS"
    exit 0
fi

# --- warm-up -----------------------------------------------------------------------------
declare -A PATHS=(
    [list]=$GO/list
    [info]=$GO/v1.0.0.info
    [mod]=$GO/v1.0.0.mod
    [gem_1mb]=$GEMS/bench-1mb-1.0.0.gem
    [gem_20mb]=$GEMS/bench-20mb-1.0.0.gem
    [gem_large]=$GEMS/bench-large-1.0.0.gem
)
read -r -a SCENARIOS <<<"${SCENARIOS:-list info mod gem_1mb gem_20mb}"

# After the first GET of each path, later ones must become cache hits on both (the proxy
# commits a fill just after its last byte went out, so the very next GET may still follow it).
warm() {
    local base=$1 header=$2 path status
    for name in "${SCENARIOS[@]}" gem_large; do
        path=${PATHS[$name]}
        curl -sf -o /dev/null -H "$AUTH" "$base$path" || die "warming $base$path failed"
        for _ in $(seq 50); do
            status=$(curl -sf -o /dev/null -D - -H "$AUTH" "$base$path" |
                awk -v h="$header" 'tolower($1) == tolower(h) ":" {print $2}' | tr -d '\r')
            [[ ${status,,} == hit ]] && break
            sleep 0.1
        done
        [[ ${status,,} == hit ]] || die "$base$path is not a hit after warming ($header: $status)"
    done
}
log "warming both caches"
warm "$PROXY_URL" x-cache
warm "$NGINX_URL" x-cache-status
log "upstream requests so far: $(upstream_hits)"

# --- warm hits under wrk -----------------------------------------------------------------
cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("RESULT %d %d %d %d %d %d %d %d %.0f %.0f\n",
        summary.requests, summary.bytes, summary.duration,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(99)))
end
EOF

RESULTS=$WORK/wrk.tsv
printf 'scenario\tconnections\ttarget\tround\trequests\tbytes\tduration_us\terrors\tp50_us\tp99_us\tserver_cpu_ticks\twrk_cpu_ticks\tforeign_cpu_ticks\tsteal_ticks\n' >"$RESULTS"

# User plus system CPU time of processes, in clock ticks.
cpu_ticks() {
    local total=0 pid ticks
    for pid in "$@"; do
        ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
        total=$((total + ${ticks:-0}))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)
# CPU ticks all processes of the machine spent (user, nice, system), and ticks the
# hypervisor gave to someone else (steal).
machine_ticks() { awk '/^cpu /{print $2 + $3 + $4; exit}' /proc/stat; }
steal_ticks() { awk '/^cpu /{print $9; exit}' /proc/stat; }
# Sets CHILD_TICKS to the CPU ticks of this script's finished children (wrk, curl), from
# the `times` builtin; call it directly, not in $(...), where `times` sees a subshell.
children_ticks() {
    times >"$WORK/times"
    CHILD_TICKS=$(awk -v tck="$CLK_TCK" 'NR == 2 {
        n = split($1 " " $2, parts, " "); total = 0
        for (i = 1; i <= n; i++) { split(parts[i], ms, /[ms]/); total += ms[1] * 60 + ms[2] }
        printf "%d", total * tck
    }' "$WORK/times")
}

run_wrk() {
    local target=$1 base=$2 name=$3 conns=$4 round=$5 out line pids
    if [[ $target == proxy ]]; then pids=("$PROXY_PID"); else mapfile -t pids < <(nginx_pids); fi
    local machine0 ours0 server0 fake0 steal0
    machine0=$(machine_ticks)
    steal0=$(steal_ticks)
    server0=$(cpu_ticks "${pids[@]}")
    fake0=$(cpu_ticks "$FAKE_PID")
    children_ticks
    ours0=$CHILD_TICKS
    out=$(wrk -t "$THREADS" -c "$conns" -d "$DURATION" --timeout 30s --latency \
        -s "$WORK/report.lua" -H "$AUTH" "$base${PATHS[$name]}")
    local server=$(($(cpu_ticks "${pids[@]}") - server0))
    children_ticks
    local client=$((CHILD_TICKS - ours0))
    local fake=$(($(cpu_ticks "$FAKE_PID") - fake0))
    # What other processes (other users of the shared cores) used meanwhile.
    local foreign=$(($(machine_ticks) - machine0 - server - client - fake))
    ((foreign < 0)) && foreign=0
    local steal=$(($(steal_ticks) - steal0))
    echo "$out" >>"$WORK/wrk.log"
    line=$(grep '^RESULT ' <<<"$out") || die "no wrk result for $target $name"
    read -r _ requests bytes duration connect read write status timeout p50 p99 <<<"$line"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$conns" "$target" \
        "$round" "$requests" "$bytes" "$duration" $((connect + read + write + status + timeout)) \
        "$p50" "$p99" "$server" "$client" "$foreign" "$steal" >>"$RESULTS"
    printf '    %-6s %-9s c=%-4s round %s: %8.0f req/s  p99 %s ms  errors %s  others %s%% steal %s%% CPU\n' \
        "$target" "$name" "$conns" "$round" \
        "$(awk -v r="$requests" -v d="$duration" 'BEGIN{print r/d*1e6}')" \
        "$(awk -v p="$p99" 'BEGIN{printf "%.2f", p/1000}')" \
        $((connect + read + write + status + timeout)) \
        "$(awk -v f="$foreign" -v d="$duration" -v t="$CLK_TCK" 'BEGIN{printf "%.0f", f/t/(d/1e6)*100}')" \
        "$(awk -v f="$steal" -v d="$duration" -v t="$CLK_TCK" 'BEGIN{printf "%.0f", f/t/(d/1e6)*100}')" >&2
}

log "warm hits: ${SCENARIOS[*]} x connections {$CONNECTIONS}, $DURATION each, $ROUNDS rounds"
for name in "${SCENARIOS[@]}"; do
    for conns in $CONNECTIONS; do
        for round in $(seq "$ROUNDS"); do
            if ((round % 2)); then order=(proxy nginx); else order=(nginx proxy); fi
            for target in "${order[@]}"; do
                if [[ $target == proxy ]]; then base=$PROXY_URL; else base=$NGINX_URL; fi
                run_wrk "$target" "$base" "$name" "$conns" "$round"
            done
        done
    done
done

# --- profiles (not measured) -------------------------------------------------------------
for name in $PROFILE; do
    [[ -n ${PATHS[$name]:-} ]] || die "PROFILE: unknown scenario $name"
    command -v perf >/dev/null || die "PROFILE needs perf (apt-get install linux-perf)"
    conns=${CONNECTIONS%% *}
    log "profiling the proxy: $name at $conns connections"
    perf record -e cpu-clock -F 999 -g -p "$PROXY_PID" -o "$WORK/perf-$name.data" \
        -- sleep "${DURATION%s}" >>"$WORK/perf.log" 2>&1 &
    perf_pid=$!
    wrk -t "$THREADS" -c "$conns" -d "$DURATION" --timeout 30s -H "$AUTH" \
        "$PROXY_URL${PATHS[$name]}" >>"$WORK/perf.log" 2>&1
    wait "$perf_pid" || true
    {
        echo "# perf record -e cpu-clock -F 999 -g, proxy only, $name, $conns connections, $DURATION"
        echo "## flat (self time)"
        perf report -i "$WORK/perf-$name.data" --stdio --no-children --sort dso,symbol \
            --percent-limit 0.5 -g none 2>/dev/null | grep -v '^$'
        echo "## by caller (children)"
        perf report -i "$WORK/perf-$name.data" --stdio --children --sort symbol \
            --percent-limit 3 -g none 2>/dev/null | grep -v '^$'
    } >"$WORK/profile-$name.txt"
    log "  wrote profile-$name.txt"
done

# --- cold stampede -----------------------------------------------------------------------
STAMPEDE=$WORK/stampede.tsv
printf 'target\tclients\tok\tupstream_artifact_fetches\tupstream_requests\twall_s\tslowest_client_s\n' >"$STAMPEDE"
stampede() {
    local target=$1 base=$2 path=$GEMS/bench-stampede-1.0.0.gem
    local before_path before_all start end args=()
    before_path=$(upstream_hits "$path")
    before_all=$(upstream_hits)
    for _ in $(seq "$STAMPEDE_CLIENTS"); do args+=(-o /dev/null "$base$path"); done
    start=$(date +%s.%N)
    curl -s -Z --parallel-immediate --parallel-max "$STAMPEDE_CLIENTS" -H "$AUTH" \
        -w '%{http_code} %{size_download} %{time_total}\n' "${args[@]}" >"$WORK/stampede-$target.log" 2>>"$WORK/curl.log"
    end=$(date +%s.%N)
    local ok slowest
    ok=$(awk '$1 == 200 && $2 == 20971520' "$WORK/stampede-$target.log" | wc -l)
    slowest=$(awk 'BEGIN{m=0} $3 > m {m=$3} END{printf "%.2f", m}' "$WORK/stampede-$target.log")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$STAMPEDE_CLIENTS" "$ok" \
        $(($(upstream_hits "$path") - before_path)) $(($(upstream_hits) - before_all)) \
        "$(awk -v s="$start" -v e="$end" 'BEGIN{printf "%.2f", e-s}')" "$slowest" >>"$STAMPEDE"
}
log "cold stampede: $STAMPEDE_CLIENTS clients on one uncached 20 MiB gem"
stampede proxy "$PROXY_URL"
stampede nginx "$NGINX_URL"

# --- peak RSS ----------------------------------------------------------------------------
rss_kib() {
    local total=0 pid kib
    for pid in "$@"; do
        kib=$(awk '/^VmRSS:/{print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}
RSS=$WORK/rss.tsv
printf 'target\tclients\tmib\tok\tbaseline_mib\tpeak_mib\twall_s\n' >"$RSS"
rss_run() {
    local target=$1 base=$2 clients=$3 mib=$4 path pids args=() start end
    if ((mib == 20)); then path=${PATHS[gem_20mb]}; else path=${PATHS[gem_large]}; fi
    if [[ $target == proxy ]]; then pids=("$PROXY_PID"); else mapfile -t pids < <(nginx_pids); fi
    local baseline
    baseline=$(rss_kib "${pids[@]}")
    (
        peak=0
        while :; do
            now=$(rss_kib "${pids[@]}")
            ((now > peak)) && peak=$now && echo "$peak" >"$WORK/peak-$target"
            sleep 0.05
        done
    ) &
    SAMPLER_PID=$!
    for _ in $(seq "$clients"); do args+=(-o /dev/null "$base$path"); done
    start=$(date +%s.%N)
    curl -s -Z --parallel-immediate --parallel-max "$clients" -H "$AUTH" \
        -w '%{http_code} %{size_download}\n' "${args[@]}" >"$WORK/rss-$target.log" 2>>"$WORK/curl.log"
    end=$(date +%s.%N)
    stop "$SAMPLER_PID"
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
    local ok
    ok=$(awk -v n=$((mib * 1048576)) '$1 == 200 && $2 == n' "$WORK/rss-$target.log" | wc -l)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$clients" "$mib" "$ok" \
        "$(awk -v k="$baseline" 'BEGIN{printf "%.1f", k/1024}')" \
        "$(awk -v k="$(cat "$WORK/peak-$target" 2>/dev/null || echo 0)" 'BEGIN{printf "%.1f", k/1024}')" \
        "$(awk -v s="$start" -v e="$end" 'BEGIN{printf "%.2f", e-s}')" >>"$RSS"
}
for run in $RSS_RUNS; do
    clients=${run%%:*} mib=${run##*:}
    ((mib == 20 || mib == LARGE_MB)) || die "RSS_RUNS: $mib MiB is neither 20 nor LARGE_MB"
    log "peak RSS: $clients clients downloading the $mib MiB gem (warm)"
    rss_run proxy "$PROXY_URL" "$clients" "$mib"
    rss_run nginx "$NGINX_URL" "$clients" "$mib"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$WORK/machine.log" >&2

# --- report ------------------------------------------------------------------------------
echo
echo "## Warm hits (wrk -t$THREADS, $DURATION, mean of $ROUNDS interleaved rounds)"
echo
echo "| scenario | conns | proxy req/s | nginx req/s | req/s ratio | proxy MiB/s | nginx MiB/s | MiB/s ratio | proxy p99 ms | nginx p99 ms | p99 ratio | server CPU µs/req (proxy/nginx) | CPU/req ratio | other processes' CPU % (proxy/nginx runs) | steal % (proxy/nginx runs) | errors (proxy/nginx) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
awk -F'\t' -v tck="$CLK_TCK" '
    NR == 1 { next }
    {
        k = $1 SUBSEP $2
        if (!(k in seen)) { seen[k] = 1; order[++n] = k }
        t = $3
        rps[k, t] += $5 / $7 * 1e6
        mibs[k, t] += $6 / $7 * 1e6 / 1048576
        p99[k, t] += $10 / 1000
        err[k, t] += $8
        cpu[k, t] += $11 / tck * 1e6 / ($5 > 0 ? $5 : 1)
        foreign[k, t] += $13 / tck / ($7 / 1e6) * 100
        steal[k, t] += $14 / tck / ($7 / 1e6) * 100
        runs[k, t]++
    }
    END {
        for (i = 1; i <= n; i++) {
            k = order[i]; split(k, parts, SUBSEP)
            pr = rps[k, "proxy"] / runs[k, "proxy"]; nr = rps[k, "nginx"] / runs[k, "nginx"]
            pm = mibs[k, "proxy"] / runs[k, "proxy"]; nm = mibs[k, "nginx"] / runs[k, "nginx"]
            pp = p99[k, "proxy"] / runs[k, "proxy"]; np = p99[k, "nginx"] / runs[k, "nginx"]
            pc = cpu[k, "proxy"] / runs[k, "proxy"]; nc = cpu[k, "nginx"] / runs[k, "nginx"]
            pf = foreign[k, "proxy"] / runs[k, "proxy"]; nf = foreign[k, "nginx"] / runs[k, "nginx"]
            ps = steal[k, "proxy"] / runs[k, "proxy"]; ns = steal[k, "nginx"] / runs[k, "nginx"]
            printf "| %s | %s | %.0f | %.0f | %.2f | %.1f | %.1f | %.2f | %.2f | %.2f | %.2f | %.0f/%.0f | %.2f | %.0f/%.0f | %.0f/%.0f | %d/%d |\n",
                parts[1], parts[2], pr, nr, pr / nr, pm, nm, pm / nm, pp, np, pp / np, pc, nc, pc / (nc > 0 ? nc : 1), pf, nf, ps, ns,
                err[k, "proxy"], err[k, "nginx"]
        }
    }' "$RESULTS"
echo
echo "## Cold stampede ($STAMPEDE_CLIENTS concurrent clients, one uncached 20 MiB gem)"
echo
echo "| target | complete 200s | upstream fetches of the gem | all upstream requests | wall time s | slowest client s |"
echo "|---|---:|---:|---:|---:|---:|"
awk -F'\t' 'NR > 1 { printf "| %s | %s/%s | %s | %s | %s | %s |\n", $1, $3, $2, $4, $5, $6, $7 }' "$STAMPEDE"
echo
echo "## Memory (concurrent clients downloading a warm gem)"
echo
echo "| target | clients × MiB | complete 200s | RSS before MiB | peak RSS MiB | growth MiB | wall time s | aggregate MiB/s |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
awk -F'\t' 'NR > 1 {
    printf "| %s | %s × %s | %s/%s | %s | %s | %.1f | %s | %.0f |\n", $1, $2, $3, $4, $2, $5, $6, $6 - $5, $7, $4 * $3 / $7
}' "$RSS"
echo
echo "(nginx RSS is the master plus all workers; RSS is sampled every 50 ms.)"

# --- the issue's targets (issue 11), judged from the rows above --------------------------
echo
echo "## Against the targets"
echo
echo "| target | row | measured | met |"
echo "|---|---|---:|---|"
awk -F'\t' -v tck="$CLK_TCK" '
    NR == 1 { next }
    {
        k = $1 SUBSEP $2
        if (!(k in seen)) { seen[k] = 1; order[++n] = k }
        t = $3
        rps[k, t] += $5 / $7 * 1e6; p99[k, t] += $10; runs[k, t]++
        cpu[k, t] += $11 / tck * 1e6 / ($5 > 0 ? $5 : 1)
    }
    function row(what, name, value, ok) { printf "| %s | %s | %.2f | %s |\n", what, name, value, ok ? "yes" : "**no**" }
    END {
        for (i = 1; i <= n; i++) {
            k = order[i]; split(k, parts, SUBSEP); name = parts[1] " c=" parts[2]
            r = (rps[k, "proxy"] / runs[k, "proxy"]) / (rps[k, "nginx"] / runs[k, "nginx"])
            p = (p99[k, "proxy"] / runs[k, "proxy"]) / (p99[k, "nginx"] / runs[k, "nginx"])
            nc = cpu[k, "nginx"] / runs[k, "nginx"]
            c = (cpu[k, "proxy"] / runs[k, "proxy"]) / (nc > 0 ? nc : 1)
            if (parts[1] ~ /^gem_/) {
                row("MiB/s ≥ 0.8× nginx", name, r, r >= 0.8)
            } else {
                row("req/s ≥ 1.0× nginx", name, r, r >= 1.0)
                row("p99 ≤ 1.0× nginx", name, p, p <= 1.0)
            }
            row("CPU/request ≤ 1.5× nginx", name, c, c <= 1.5)
        }
    }' "$RESULTS"
awk -F'\t' 'NR > 1 && $1 == "proxy" {
    g = ($6 - $5) * 1048576 / 1e6
    printf "| RSS growth < 32 MB | %s clients × %s MiB | %.1f MB | %s |\n", $2, $3, g, (g < 32 && $4 == $2) ? "yes" : "**no**"
}' "$RSS"
awk -F'\t' 'NR > 1 && $1 == "proxy" {
    printf "| cold stampede: one GitLab fetch, every client served | %s clients | %s fetch(es), %s/%s complete | %s |\n", $2, $4, $3, $2, ($4 == 1 && $3 == $2) ? "yes" : "**no**"
}' "$STAMPEDE"
