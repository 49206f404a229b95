#!/usr/bin/env bash
# Load benchmark: the gateway against no proxy at all and against nginx doing the same job.
#
# Usage: benches/load.sh   (or: make bench)
#
# Builds the gateway and the mock upstream in release mode, then measures requests/s and
# p50/p99 latency of one small Streamable HTTP POST (a 150-byte JSON-RPC tools/call with an
# Mcp-Session-Id, answered with JSON) at CONNECTIONS concurrent keepalive connections, along
# four paths: wrk straight to the upstream ("direct"), wrk through `mcp-u2m-gateway serve`
# on a bearer route with prefix /bench ("gateway"), wrk through the same reverse proxy written
# directly on pingora with nothing else (`examples/pingora_baseline.rs`, "pingora": what
# pingora's own HTTP path costs), and wrk through nginx set up as the same reverse proxy ("nginx"). Each
# path runs against two upstreams: a fixed-answer nginx that
# costs almost nothing ("fixed"), and the project's mock MCP server ("mock"). Before
# measuring, one request down every path must return the expected JSON and prove the
# upstream saw the injected token; any non-2xx response or socket error during a run fails
# the script. It prints a table, then throughput ratios and the p99 each proxy adds.
#
# Environment:
#   DURATION=10s        length of each measured run (wrk syntax)
#   WARMUP=2s           unmeasured run before each measured one
#   CONNECTIONS=64      concurrent connections
#   THREADS=1           gateway and pingora worker threads, nginx proxy worker processes
#   WRK_THREADS=1       wrk threads
#   UPSTREAM_WORKERS=1  worker processes of the fixed-answer nginx upstream
#   CARGO_TARGET_DIR    honoured for the build and for finding the binaries
#   KEEP_TMP=1          keep the temp dir (configs and logs) even on success
#   ROUNDS=1            rounds of every path, interleaved; each figure is their median
#
# Needs cargo, wrk, nginx (Debian: nginx-light), curl and python3. As root on Debian the
# missing ones among wrk, nginx, curl are installed with apt-get. Everything listens on
# 127.0.0.1 at ports picked at run time; the nginx instances use their own prefix, config
# and pid file under a temp dir, and the system nginx service is never touched. Every
# process the script starts is stopped on exit, failure or Ctrl-C.
#
# Two more columns help read the numbers. "cpu us/req" is the CPU time the proxy's
# processes (all gateway or pingora threads; all nginx workers) spent per request. "up conns" is how
# many connections the fixed upstream accepted during the measured run: with keepalive
# holding it is about CONNECTIONS for direct (wrk's own) and near 0 through a proxy that
# kept its connections from the warm-up; the mock upstream cannot report it ("-").
#
# On a 2-core machine the default of one worker for each proxy leaves the other core to
# wrk and the upstream. Anything else running on the machine skews the numbers, so the
# script prints the load average first; compare numbers only within one run.
set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
WRK_THREADS=${WRK_THREADS:-1}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
KEEP_TMP=${KEEP_TMP:-0}
ROUNDS=${ROUNDS:-1}

# The request every run sends (150 bytes), and the fixed upstream's answer to it.
readonly REQUEST_BODY='{"jsonrpc":"2.0","id":"bench-1","method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"},"_meta":{"progressToken":"bench-progress-1"}}}'
readonly FIXED_RESPONSE='{"jsonrpc":"2.0","id":"bench-1","result":{"content":[{"type":"text","text":"hi"}],"isError":false}}'
readonly ACCEPT='application/json, text/event-stream'

benches=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$benches")

# A relative CARGO_TARGET_DIR means relative to where the user stands, not to the repo.
if [[ -n ${CARGO_TARGET_DIR:-} && ${CARGO_TARGET_DIR} != /* ]]; then
    CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR
fi
target_dir=${CARGO_TARGET_DIR:-$repo/target}

workdir=""
pids=()
failed=1

say() {
    echo "load.sh: $*" >&2
}

die() {
    say "error: $*"
    exit 1
}

# --- Processes and cleanup ---

stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    local _
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${pids[@]}"; do
        stop_pid "$pid"
    done
    if [[ -n $workdir ]]; then
        if ((failed)) || [[ $KEEP_TMP == 1 ]]; then
            say "configs and logs kept in $workdir"
        else
            rm -rf "$workdir"
        fi
    fi
    exit "$status"
}

# Starts a command in the background with its output in a log; the pid lands in $started.
start() {
    local log=$1
    shift
    "$@" >"$log" 2>&1 &
    started=$!
    pids+=("$started")
}

# Waits until `url` answers anything over HTTP, or fails with the process's log.
wait_http() {
    local name=$1 pid=$2 url=$3 log=$4
    local _
    for _ in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$log" >&2 || true
            die "$name exited during start-up (log: $log)"
        fi
        if [[ $(curl -s -o /dev/null -w '%{http_code}' "$url" || true) != 000 ]]; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$log" >&2 || true
    die "$name did not answer on $url within 10 s (log: $log)"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- Tools and builds ---

find_nginx() {
    command -v nginx || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true
}

require_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    [[ -n $(find_nginx) ]] || missing+=(nginx-light)
    command -v curl >/dev/null || missing+=(curl)
    if ((${#missing[@]})); then
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            say "installing ${missing[*]} with apt-get"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        else
            die "missing ${missing[*]}: install with: sudo apt-get install ${missing[*]}"
        fi
    fi
    command -v python3 >/dev/null || die "missing python3 (used to pick free ports)"
    command -v cargo >/dev/null || die "missing cargo (https://rustup.rs)"
    nginx_bin=$(find_nginx)
}

build() {
    say "building release binaries (target dir: $target_dir)"
    (cd "$repo" && CARGO_TARGET_DIR=$target_dir cargo build --release --quiet \
        --bin mcp-u2m-gateway --example mock_upstream --example pingora_baseline)
    gateway_bin=$target_dir/release/mcp-u2m-gateway
    mock_bin=$target_dir/release/examples/mock_upstream
    baseline_bin=$target_dir/release/examples/pingora_baseline
}

# --- Configs ---

# nginx's temp paths, inside its prefix: the compiled-in ones are under /var/lib/nginx,
# which a non-root user cannot write. Only modules compiled in accept the directive.
temp_paths() {
    local prefix=$1
    local out="client_body_temp_path $prefix/body; proxy_temp_path $prefix/proxy;"
    local module
    for module in fastcgi uwsgi scgi; do
        if ! "$nginx_bin" -V 2>&1 | grep -q -- "--without-http_${module}_module"; then
            out+=" ${module}_temp_path $prefix/$module;"
        fi
    done
    echo "$out"
}

# Renders benches/<template> into <prefix>/nginx.conf; the rest are NAME=value pairs.
render_nginx() {
    local template=$1 prefix=$2
    shift 2
    local script=(-e "s|@PREFIX@|$prefix|g" -e "s|@TEMP_PATHS@|$(temp_paths "$prefix")|")
    local pair
    for pair in "$@"; do
        script+=(-e "s|@${pair%%=*}@|${pair#*=}|g")
    done
    mkdir -p "$prefix"
    sed "${script[@]}" "$benches/$template" >"$prefix/nginx.conf"
    if grep -v '^ *#' "$prefix/nginx.conf" | grep -q '@[A-Z_]\+@'; then
        die "unfilled placeholder in $prefix/nginx.conf"
    fi
}

start_nginx() {
    local name=$1 prefix=$2 port=$3
    "$nginx_bin" -t -q -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" ||
        die "$name: bad nginx config $prefix/nginx.conf"
    start "$prefix/stdout.log" "$nginx_bin" -p "$prefix" -c "$prefix/nginx.conf" \
        -e "$prefix/error.log"
    wait_http "$name" "$started" "http://127.0.0.1:$port/" "$prefix/error.log"
}

write_gateway_config() {
    local path=$1 port=$2 upstream=$3
    cat >"$path" <<EOF
[server]
listen = "127.0.0.1:$port"
threads = $THREADS
sse_keepalive_secs = 15

[store]
kind = "file"
dir = "$workdir/store"

[[routes]]
name = "bench"
prefix = "/bench"
upstream = "$upstream"

[routes.auth]
kind = "bearer"
token_file = "$workdir/token"
EOF
}

# --- Upstreams and proxies ---

# Starts the fixed-answer nginx; sets upstream_port and upstream_pid.
start_fixed_upstream() {
    upstream_port=$(free_port)
    local prefix=$workdir/fixed-upstream
    render_nginx upstream.nginx.conf "$prefix" WORKERS="$UPSTREAM_WORKERS" \
        PORT="$upstream_port" TOKEN="$token" RESPONSE="$FIXED_RESPONSE"
    start_nginx "fixed upstream (nginx)" "$prefix" "$upstream_port"
    upstream_pid=$started
}

# Starts the mock MCP server; sets upstream_port and upstream_pid.
start_mock_upstream() {
    upstream_port=$(free_port)
    local log=$workdir/mock-upstream.log
    start "$log" "$mock_bin" --port "$upstream_port" --token "$token"
    upstream_pid=$started
    wait_http "mock upstream" "$upstream_pid" "http://127.0.0.1:$upstream_port/mcp" "$log"
}

# Starts the gateway and the nginx proxy in front of the current upstream.
start_proxies() {
    local upstream=$1
    gateway_port=$(free_port)
    local config=$workdir/gateway-$upstream.toml log=$workdir/gateway-$upstream.log
    write_gateway_config "$config" "$gateway_port" "http://127.0.0.1:$upstream_port"
    start "$log" "$gateway_bin" serve --config "$config"
    gateway_pid=$started
    wait_http "gateway" "$gateway_pid" "http://127.0.0.1:$gateway_port/healthz" "$log"

    pingora_port=$(free_port)
    log=$workdir/pingora-$upstream.log
    start "$log" "$baseline_bin" "127.0.0.1:$pingora_port" "127.0.0.1:$upstream_port" /bench \
        "$workdir/token" "$THREADS"
    pingora_pid=$started
    wait_http "pingora baseline" "$pingora_pid" "http://127.0.0.1:$pingora_port/" "$log"

    nginx_port=$(free_port)
    local prefix=$workdir/nginx-proxy-$upstream
    render_nginx proxy.nginx.conf "$prefix" WORKERS="$THREADS" PORT="$nginx_port" \
        UPSTREAM_PORT="$upstream_port" TOKEN="$token"
    start_nginx "nginx proxy" "$prefix" "$nginx_port"
    nginx_pid=$started
}

stop_all_for_upstream() {
    stop_pid "$nginx_pid"
    stop_pid "$pingora_pid"
    stop_pid "$gateway_pid"
    stop_pid "$upstream_pid"
}

# The URL of /mcp on the upstream, along one path.
path_url() {
    case $1 in
        direct) echo "http://127.0.0.1:$upstream_port/mcp" ;;
        gateway) echo "http://127.0.0.1:$gateway_port/bench/mcp" ;;
        pingora) echo "http://127.0.0.1:$pingora_port/bench/mcp" ;;
        nginx) echo "http://127.0.0.1:$nginx_port/bench/mcp" ;;
    esac
}

# The Authorization header the client sends: only direct, where no proxy injects it.
client_auth() {
    if [[ $1 == direct ]]; then
        echo "Bearer $token"
    fi
}

# --- Correctness checks ---

# POSTs `body` to `url` with the benchmark's headers. Sets http_status, http_type,
# http_body and http_session (the Mcp-Session-Id answered, if any).
post() {
    local url=$1 auth=$2 session=$3 body=$4
    local args=(-sS -X POST -H "Content-Type: application/json" -H "Accept: $ACCEPT"
        -D "$workdir/headers" -o "$workdir/body" -w '%{http_code} %{content_type}'
        --data-binary "$body")
    [[ -z $auth ]] || args+=(-H "Authorization: $auth")
    [[ -z $session ]] || args+=(-H "Mcp-Session-Id: $session")
    local result
    result=$(curl "${args[@]}" "$url") || die "POST $url failed"
    http_status=${result%% *}
    http_type=${result#* }
    http_body=$(cat "$workdir/body")
    http_session=$(tr -d '\r' <"$workdir/headers" |
        awk -F': *' 'tolower($1) == "mcp-session-id" { print $2 }')
}

expect_status() {
    local want=$1 what=$2
    [[ $http_status == "$want" ]] ||
        die "$what: HTTP $http_status, expected $want; body: $http_body"
}

expect_json_containing() {
    local want=$1 what=$2
    expect_status 200 "$what"
    [[ $http_type == application/json* ]] ||
        die "$what: Content-Type $http_type, expected application/json"
    [[ $http_body == *"$want"* ]] || die "$what: body $http_body lacks $want"
}

# Proves the fixed upstream refuses a request without the token, then that every path
# gets the fixed answer: through a proxy, only with the token the proxy injected.
check_fixed() {
    local path
    post "$(path_url direct)" "" fixed-session "$REQUEST_BODY"
    expect_status 401 "fixed upstream without a token"
    for path in direct gateway pingora nginx; do
        post "$(path_url "$path")" "$(client_auth "$path")" fixed-session "$REQUEST_BODY"
        expect_json_containing "$FIXED_RESPONSE" "$path -> fixed upstream"
        [[ $http_body == "$FIXED_RESPONSE" ]] ||
            die "$path -> fixed upstream: body $http_body differs from the fixed answer"
        sessions[$path]=fixed-session
    done
}

# Opens one MCP session per path on the mock, asks its whoami tool which Authorization
# header arrived, and checks the echo call the benchmark sends.
check_mock() {
    local path url auth session
    local init='{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"load-bench","version":"1"}}}'
    local initialized='{"jsonrpc":"2.0","method":"notifications/initialized"}'
    local whoami='{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}'
    post "$(path_url direct)" "" "" "$init"
    expect_status 401 "mock upstream without a token"
    for path in direct gateway pingora nginx; do
        url=$(path_url "$path")
        auth=$(client_auth "$path")
        post "$url" "$auth" "" "$init"
        expect_json_containing '"protocolVersion"' "$path -> mock: initialize"
        session=$http_session
        [[ -n $session ]] || die "$path -> mock: initialize answered no Mcp-Session-Id"
        post "$url" "$auth" "$session" "$initialized"
        expect_status 202 "$path -> mock: notifications/initialized"
        post "$url" "$auth" "$session" "$whoami"
        expect_json_containing "Bearer $token" "$path -> mock: whoami"
        post "$url" "$auth" "$session" "$REQUEST_BODY"
        expect_json_containing '"text":"hi"' "$path -> mock: tools/call echo"
        sessions[$path]=$session
    done
}

# --- Measuring ---

# Connections the fixed upstream has accepted so far, from nginx's stub_status.
upstream_accepts() {
    curl -sf "http://127.0.0.1:$upstream_port/nginx-status" | awk 'NR == 3 { print $1 }'
}

# CPU clock ticks used by a process and its children (nginx's workers) so far.
cpu_ticks() {
    cat /proc/[0-9]*/stat 2>/dev/null |
        awk -v pid="$1" '$1 == pid || $4 == pid { ticks += $14 + $15 } END { print ticks + 0 }'
}

proxy_pid() {
    case $1 in
        direct) echo "" ;;
        gateway) echo "$gateway_pid" ;;
        pingora) echo "$pingora_pid" ;;
        nginx) echo "$nginx_pid" ;;
    esac
}

# Runs wrk; the output lands in `out`. Fails on any non-2xx response or socket error.
run_wrk() {
    local path=$1 duration=$2 out=$3
    BENCH_BODY=$REQUEST_BODY BENCH_SESSION=${sessions[$path]} \
        BENCH_AUTHORIZATION=$(client_auth "$path") \
        wrk -t "$WRK_THREADS" -c "$CONNECTIONS" -d "$duration" --latency \
        -s "$benches/mcp_post.lua" "$(path_url "$path")" >"$out" 2>&1 ||
        { cat "$out" >&2; die "wrk failed on $path"; }
    if grep -q -e 'Non-2xx' -e 'Socket errors' "$out"; then
        cat "$out" >&2
        die "$path: wrk saw failed requests (output above, also in $out)"
    fi
}

# Prints "req/s p50_ms p99_ms requests" from wrk's --latency output.
parse_wrk() {
    awk '
        function ms(text,  unit) {
            unit = text
            sub(/^[0-9.]+/, "", unit)
            if (unit == "us") return text / 1000
            if (unit == "ms") return text + 0
            if (unit == "s") return text * 1000
            if (unit == "m") return text * 60000
            return -1
        }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        $1 == "Requests/sec:" { rps = $2 }
        $2 == "requests" && $3 == "in" { requests = $1 }
        END {
            if (rps == "" || p50 == "" || p99 == "" || requests == "") exit 1
            printf "%.0f %.3f %.3f %d\n", rps, p50, p99, requests
        }' "$1"
}

# Measures one path in one round; the figures land under "upstream/path#round".
measure() {
    local upstream=$1 path=$2 round=$3 key="$1/$2#$3" out=$workdir/wrk-$1-$2-$3.txt
    local pid accepts_before="" ticks_before=0 which=""
    pid=$(proxy_pid "$path")
    ((ROUNDS == 1)) || which=" (round $round of $ROUNDS)"
    say "$upstream upstream, $path$which: warm-up $WARMUP, then $DURATION"
    run_wrk "$path" "$WARMUP" "$workdir/wrk-$upstream-$path-$round-warmup.txt"

    [[ $upstream != fixed ]] || accepts_before=$(upstream_accepts)
    [[ -z $pid ]] || ticks_before=$(cpu_ticks "$pid")
    run_wrk "$path" "$DURATION" "$out"
    local numbers requests
    numbers=$(parse_wrk "$out") || die "cannot read wrk's output in $out"
    read -r "rps[$key]" "p50[$key]" "p99[$key]" requests <<<"$numbers"

    cpu[$key]=-
    if [[ -n $pid ]]; then
        cpu[$key]=$(awk -v t="$(($(cpu_ticks "$pid") - ticks_before))" -v hz="$clock_hz" \
            -v n="$requests" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
    fi
    conns[$key]=-
    if [[ -n $accepts_before ]]; then
        # Less one: the connection that asked for the second count.
        local accepted=$(($(upstream_accepts) - accepts_before - 1))
        conns[$key]=$accepted
        # wrk opens CONNECTIONS of its own in the direct run; a proxy should open none.
        if ((accepted > 2 * CONNECTIONS)); then
            say "warning: $key: the upstream accepted $accepted connections: keepalive is not holding"
        fi
    fi
}

bench_upstream() {
    local upstream=$1 path round
    "start_${upstream}_upstream"
    start_proxies "$upstream"
    "check_$upstream"
    # Rounds interleave the paths, so a slow spell of the machine hits all of them alike.
    for ((round = 1; round <= ROUNDS; round++)); do
        for path in direct gateway pingora nginx; do
            measure "$upstream" "$path" "$round"
        done
    done
    for path in direct gateway pingora nginx; do
        settle "$upstream/$path"
    done
    stop_all_for_upstream
}

# The median of the arguments (the lower of the middle two for an even count); "-" for "-".
median() {
    if [[ $1 == - ]]; then
        echo -
    else
        printf '%s\n' "$@" | sort -g | sed -n "$((($# + 1) / 2))p"
    fi
}

# Files each figure of `key` (upstream/path) as its median over the rounds.
settle() {
    local key=$1 table round
    for table in rps p50 p99 cpu conns; do
        local -n figures=$table
        local values=()
        for ((round = 1; round <= ROUNDS; round++)); do
            values+=("${figures[$key#$round]}")
        done
        figures[$key]=$(median "${values[@]}")
        unset -n figures
    done
}

# --- Report ---

report() {
    local upstream path key
    echo
    echo "cores $(nproc), proxy threads $THREADS, wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION," \
        "fixed upstream workers $UPSTREAM_WORKERS, load average before: $load_before"
    ((ROUNDS == 1)) || echo "each figure is the median of $ROUNDS interleaved rounds"
    echo
    local format='%-9s %-9s %9s %9s %9s %11s %9s\n'
    # shellcheck disable=SC2059 # the format is the constant above
    printf "$format" scenario upstream req/s "p50 ms" "p99 ms" "cpu us/req" "up conns"
    for upstream in fixed mock; do
        for path in direct gateway pingora nginx; do
            key=$upstream/$path
            # shellcheck disable=SC2059
            printf "$format" "$path" "$upstream" "${rps[$key]}" "${p50[$key]}" \
                "${p99[$key]}" "${cpu[$key]}" "${conns[$key]}"
        done
    done
    echo
    for upstream in fixed mock; do
        awk -v u="$upstream" \
            -v rd="${rps[$upstream/direct]}" -v rg="${rps[$upstream/gateway]}" \
            -v rn="${rps[$upstream/nginx]}" -v rb="${rps[$upstream/pingora]}" \
            -v pd="${p99[$upstream/direct]}" -v pg="${p99[$upstream/gateway]}" \
            -v pn="${p99[$upstream/nginx]}" -v pb="${p99[$upstream/pingora]}" 'BEGIN {
                printf "%s: throughput gateway/direct %.2f, gateway/nginx %.2f,", u, rg / rd, rg / rn
                printf " gateway/pingora %.2f;", rg / rb
                printf " added p99: gateway %+.3f ms, pingora %+.3f ms, nginx %+.3f ms\n", pg - pd, pb - pd, pn - pd
            }'
    done
}

main() {
    trap cleanup EXIT
    [[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a whole number of at least 1, not '$ROUNDS'"
    trap 'exit 130' INT
    trap 'exit 143' TERM

    require_tools
    build
    [[ -x $gateway_bin && -x $mock_bin ]] || die "release binaries missing under $target_dir"

    workdir=$(mktemp -d "${TMPDIR:-/tmp}/mcp-gateway-bench.XXXXXX")
    token=bench-$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    (umask 077 && printf '%s\n' "$token" >"$workdir/token")

    clock_hz=$(getconf CLK_TCK)
    load_before=$(cut -d ' ' -f 1-3 /proc/loadavg)
    say "load average $load_before on $(nproc) cores; other work on the machine skews results"

    declare -gA sessions=() rps=() p50=() p99=() cpu=() conns=()
    bench_upstream fixed
    bench_upstream mock
    report
    failed=0
}

main "$@"
