# Shared by the benchmark scripts (sourced, not run): messages, the release binaries, and
# waiting for a server to answer. The sourcing script sets SCRIPT (its name, for messages)
# and ROOT (the repository).

log() { printf '==> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; exit 1; }

# Sets PROXY_BIN and FAKE_BIN: built in release mode, or (SKIP_BUILD=1) taken from BIN_DIR,
# where the fake may sit at the top or under examples/.
release_binaries() {
    local dir
    if [[ ${SKIP_BUILD:-} == 1 ]]; then
        dir=${BIN_DIR:?SKIP_BUILD=1 needs BIN_DIR}
    else
        log "building release binaries"
        (cd "$ROOT" && cargo build --release -j 2 --bin gitlab-pkg-cache --example fake_gitlab)
        dir=${CARGO_TARGET_DIR:-$ROOT/target}/release
    fi
    PROXY_BIN=$dir/gitlab-pkg-cache
    FAKE_BIN=$dir/fake_gitlab
    [[ -x $FAKE_BIN ]] || FAKE_BIN=$dir/examples/fake_gitlab
    [[ -x $PROXY_BIN && -x $FAKE_BIN ]] || die "binaries not found in $dir"
}

# Waits until `url` answers anything over HTTP, for at most `seconds` (60), while `pid` lives.
wait_for() {
    local url=$1 name=$2 pid=$3 seconds=${4:-60}
    for _ in $(seq $((seconds * 10))); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "$url") != 000 ]] && return 0
        kill -0 "$pid" 2>/dev/null || die "$name exited at start; see its log"
        sleep 0.1
    done
    die "$name did not come up at $url"
}
