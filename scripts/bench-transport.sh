#!/usr/bin/env bash
# Transport tuning, measured: `keel serve` under `keel bench` with the HTTP/2 settings varied
# one at a time (max concurrent streams; flow-control windows and the adaptive window, for
# 1 KiB and 1 MiB messages over an emulated round trip; keepalive pings), so ServerConfig's
# defaults come from data. Run `scripts/bench-transport.sh --help` for what it measures;
# docs/BENCHMARKS.md ("Transport tuning") has the recorded results.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-transport.sh [--quick] [--only LIST] [--no-build] [--help]

Three matrices, each over `keel serve` (Keel's full default stack) processes that differ in
one `http2.*` setting, all started at once and loaded in alternating rounds (so they share
the machine's noise). For every server: calls/s, p50 and p99 latency, the server's CPU time
per call (utime+stime from /proc/PID/stat), its peak resident memory (VmHWM) and, for the
stream limit, the peak of tokio's alive tasks (keel_runtime_alive_tasks from the admin
/metrics, polled every 100 ms). Medians over the rounds; peaks are maxima.

  streams    http2.max_concurrent_streams in BENCH_STREAMS, on loopback: h2load sends unary
             SayHello with BENCH_STREAMS_INFLIGHT streams wanted on each of
             BENCH_STREAMS_CONNS connections, more than the lower limits allow, so the limit
             decides how much waits in the client and how much the server holds at once (the
             seed's 100 vs 500 table). Latency percentiles from h2load's per-request log (the
             time from submitting a request, queued or not, to its last byte).
  windows    the flow-control windows over an emulated round trip of BENCH_RTT_MS: h2load
             reaches each server through scripts/delay-proxy.py, which holds every byte
             BENCH_RTT_MS/2 in each direction (this kernel has no netem). Servers: the
             protocol's 64 KiB windows, Keel's defaults (1 MiB per stream, 4 MiB per
             connection), 4 MiB / 16 MiB, and http2.adaptive_window. Load: h2load calls
             grpc.testing.TestService/UnaryCall on one connection with 1 KiB request payloads
             (64 in flight) and with 1 MiB payloads (8 in flight: 8 MiB, twice Keel's
             connection window); empty responses. The server's receive windows are what a
             request upload waits on.
  keepalive  http2.keepalive_interval off, 5s and 1s, with BENCH_KA_CONNS connections
             carrying a trickle (BENCH_KA_RPS calls/s in all, so each is mostly idle) for
             BENCH_KA_SECONDS: the server CPU per second, what one ping costs (against off),
             and what the default 60s interval costs at that price.

Options:
  --quick       smoke run: fewer calls, 1 round, shorter keepalive run
  --only LIST   comma-separated subset of streams,windows,keepalive (default: all)
  --no-build    use the existing target/release/keel
  -h, --help    this text

Environment (defaults in brackets; --quick lowers them unless they are set):
  BENCH_ROUNDS [3]  BENCH_STREAMS ["100 500 1024 4096"]  BENCH_STREAMS_CALLS [200000]
  BENCH_STREAMS_INFLIGHT [1000]  BENCH_STREAMS_CONNS [4]
  BENCH_RTT_MS [10]  BENCH_SMALL_CALLS [20000]  BENCH_LARGE_CALLS [200]
  BENCH_KA_CONNS [1000]  BENCH_KA_RPS [20]  BENCH_KA_SECONDS [30]
  BENCH_OUT [bench-out]   output directory (logs, raw JSON, the tables)

Every h2load run must succeed completely (every request 2xx with the whole reply), and
keel bench must report no failed call. Output: the tables on stdout and as Markdown in
$BENCH_OUT/transport.md; h2load logs and keel bench reports in $BENCH_OUT/transport/. Exit
status: non-zero if a server or proxy fails to start or any call fails. Nothing is asserted about speed: the tables are the result.
EOF
}

quick=0 do_build=1 only="streams,windows,keepalive"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --no-build) do_build=0 ;;
        --only) [ $# -ge 2 ] || { echo "--only needs a value" >&2; exit 2; }; only=$2; shift ;;
        --only=*) only=${1#--only=} ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for part in ${only//,/ }; do
    case "$part" in
        streams | windows | keepalive) ;;
        *) echo "--only: unknown matrix '$part' (streams, windows, keepalive)" >&2; exit 2 ;;
    esac
done

if [ "$quick" = 1 ]; then
    d_rounds=1 d_scalls=20000 d_small=2000 d_large=40 d_kasec=5
else
    d_rounds=3 d_scalls=200000 d_small=20000 d_large=200 d_kasec=30
fi
ROUNDS=${BENCH_ROUNDS:-$d_rounds}
STREAMS=${BENCH_STREAMS:-"100 500 1024 4096"}
STREAMS_CALLS=${BENCH_STREAMS_CALLS:-$d_scalls}
STREAMS_INFLIGHT=${BENCH_STREAMS_INFLIGHT:-1000}
STREAMS_CONNS=${BENCH_STREAMS_CONNS:-4}
RTT_MS=${BENCH_RTT_MS:-10}
SMALL_CALLS=${BENCH_SMALL_CALLS:-$d_small}
LARGE_CALLS=${BENCH_LARGE_CALLS:-$d_large}
KA_CONNS=${BENCH_KA_CONNS:-1000}
KA_RPS=${BENCH_KA_RPS:-20}
KA_SECONDS=${BENCH_KA_SECONDS:-$d_kasec}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
out=${BENCH_OUT:-bench-out}
mkdir -p "$out/transport" "$out/logs"
out=$(cd "$out" && pwd)
raw=$out/transport
keel=$root/target/release/keel

for tool in jq curl bc h2load python3; do
    command -v "$tool" >/dev/null && continue
    package=$tool
    [ "$tool" != h2load ] || package=nghttp2-client
    log "apt-get install $package"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package"; } \
        >"$out/logs/transport-apt.log" 2>&1 || die "cannot install $package (see $out/logs/transport-apt.log)"
done

if [ "$do_build" = 1 ]; then
    log "cargo build --release -p keel-cli"
    cargo build --release -q -p keel-cli || die "keel does not build"
fi
[ -x "$keel" ] || die "$keel is missing (drop --no-build)"

# ------------------------------------------------------------------ processes and cleanup
pids=() pollers=()
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
    local p
    for p in "${pollers[@]}" "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${pollers[@]}" "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# Servers of the current matrix by NAME: their process, admin address, and what the load
# goes to (the server's address, or its delay proxy's).
declare -A pid_of=() admin_of=() target=()
names=()

# start NAME ARGS...: starts `keel serve ARGS` on loopback and records its addresses.
start() {
    local name=$1 logbase=$out/logs/transport-$1 pid addr admin
    shift
    : >"$logbase.out" # not a previous run's "listening on" line (see bench-lib.sh start_server)
    "$keel" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 "$@" \
        >"$logbase.out" 2>"$logbase.err" &
    pid=$!
    pids+=("$pid")
    addr=$(wait_listening "$logbase.out" "grpc listening on" "$pid" 30) ||
        die "$name did not start (see $logbase.err)"
    admin=$(wait_listening "$logbase.out" "admin listening on" "$pid" 30) ||
        die "$name has no admin listener (see $logbase.out)"
    pid_of[$name]=$pid admin_of[$name]=$admin target[$name]=$addr
    names+=("$name")
}

# delay NAME: puts scripts/delay-proxy.py (BENCH_RTT_MS round trip) in front of NAME.
delay() {
    local name=$1 logf=$out/logs/transport-$1-proxy.out pid addr
    : >"$logf"
    python3 scripts/delay-proxy.py 0 "${target[$name]}" "$(echo "$RTT_MS / 2" | bc -l)" >"$logf" 2>&1 &
    pid=$!
    pids+=("$pid")
    addr=$(wait_listening "$logf" "delay proxy listening on" "$pid" 30) ||
        die "the delay proxy for $name did not start (see $logf)"
    target[$name]=$addr
}

# poll_tasks NAME: in the background, the highest keel_runtime_alive_tasks seen, written to
# $raw/NAME.tasks, every 100 ms.
poll_tasks() {
    local name=$1 admin=${admin_of[$1]}
    (
        peak=0
        while :; do
            now=$(curl -s "http://$admin/metrics" |
                awk '$1 == "keel_runtime_alive_tasks" { print int($2) }')
            if [ -n "$now" ] && [ "$now" -gt "$peak" ]; then
                peak=$now
                echo "$peak" >"$raw/$name.tasks"
            fi
            sleep 0.1
        done
    ) &
    pollers+=("$!")
}

stop_all() {
    local name p
    for p in "${pollers[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    for name in "${names[@]}"; do stop_process "${pid_of[$name]}"; done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    pollers=() pids=() names=()
    pid_of=() admin_of=() target=()
}

vm_hwm_mb() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# record NAME TAG RPS P50_MS P99_MS CALLS TICKS: one round's line in $raw/rounds.tsv.
record() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" \
        "$(echo "$7 * 1000000 / $clk_tck / $6" | bc -l)" >>"$raw/rounds.tsv"
}

# h2load_load NAME TAG BODY PATH REPLY_BYTES N C M: one h2load run against NAME's target;
# every request must succeed with REPLY_BYTES of DATA. Records the round.
h2load_load() {
    local name=$1 tag=$2 body=$3 path=$4 reply=$5 n=$6 c=$7 m=$8 pid logf reqlog t0 t1
    pid=${pid_of[$name]}
    logf=$raw/$name-$tag.h2load reqlog=$raw/$name-$tag.requests
    t0=$(cpu_ticks "$pid")
    timeout --kill-after=5 900 h2load -n "$n" -c "$c" -m "$m" -t 1 -d "$body" \
        -H 'content-type: application/grpc' -H 'te: trailers' --log-file="$reqlog" \
        "http://${target[$name]}$path" >"$logf" 2>&1 || die "h2load against $name failed (see $logf)"
    t1=$(cpu_ticks "$pid")
    h2load_verify "$logf" "$n" "$reply" || die "$name ($tag): calls failed"
    h2load_percentiles "$reqlog"
    record "$name" "$tag" "$h2_rps" "$h2_p50" "$h2_p99" "$n" "$((t1 - t0))"
}

# bench_load NAME TAG ARGS...: one keel bench run against NAME's target (any failed call fails
# the benchmark). Records the round.
bench_load() {
    local name=$1 tag=$2 pid report t0 t1
    shift 2
    pid=${pid_of[$name]}
    report=$raw/$name-$tag.json
    t0=$(cpu_ticks "$pid")
    "$keel" bench "${target[$name]}" --format json -o "$report" "$@" 2>>"$out/logs/transport-bench.err" ||
        die "keel bench against $name ($tag) had failures: see $report"
    t1=$(cpu_ticks "$pid")
    record "$name" "$tag" "$(jq .requests_per_second "$report")" \
        "$(jq '.latency_distribution[] | select(.percentile == 50) | .latency_ms' "$report")" \
        "$(jq '.latency_distribution[] | select(.percentile == 99) | .latency_ms' "$report")" \
        "$(jq .count "$report")" "$((t1 - t0))"
}

# median_of NAME TAG COLUMN: the median over the rounds of one column of rounds.tsv.
median_of() {
    awk -F'\t' -v n="$1" -v t="$2" -v c="$3" '$1 == n && $2 == t { print $c }' "$raw/rounds.tsv" |
        sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

fmt() { LC_ALL=C printf "%'.${2}f" "$1"; }

# table_head TITLE COLUMNS ALIGNMENT: a Markdown table's title and first two rows.
table_head() { printf '### %s\n\n%s\n%s\n' "$1" "$2" "$3"; }

md=$out/transport.md
: >"$md"
: >"$raw/rounds.tsv"

# SayHello{name: "world"} and UnaryCall requests with N-byte payloads, as gRPC frames.
hello=$raw/hello.bin
printf '\x00\x00\x00\x00\x07\x0a\x05world' >"$hello"
grpc_unary_call() {
    python3 - "$1" <<'PY'
import struct, sys
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)
body = bytes(int(sys.argv[1]))
payload = b"\x12" + varint(len(body)) + body           # Payload.body = 2
request = b"\x1a" + varint(len(payload)) + payload     # SimpleRequest.payload = 3
sys.stdout.buffer.write(b"\x00" + struct.pack(">I", len(request)) + request)
PY
}

# ------------------------------------------------------------------ 1. max concurrent streams
if [[ ",$only," == *,streams,* ]]; then
    log "streams: servers with http2.max_concurrent_streams in {$STREAMS}"
    for v in $STREAMS; do
        start "streams-$v" --set "http2.max_concurrent_streams=$v"
    done
    for name in "${names[@]}"; do poll_tasks "$name"; done
    for name in "${names[@]}"; do
        h2load_load "$name" warmup "$hello" /helloworld.Greeter/SayHello 18 20000 "$STREAMS_CONNS" 100
    done
    for round in $(seq "$ROUNDS"); do
        for name in "${names[@]}"; do
            log "streams round $round/$ROUNDS: $name"
            h2load_load "$name" run "$hello" /helloworld.Greeter/SayHello 18 "$STREAMS_CALLS" \
                "$STREAMS_CONNS" "$STREAMS_INFLIGHT"
        done
    done
    {
        table_head "max_concurrent_streams: $STREAMS_CONNS connections wanting $STREAMS_INFLIGHT unary calls in flight each (loopback, h2load)" \
            "| http2.max_concurrent_streams | calls/s | p50 ms | p99 ms | server CPU µs/call | peak alive tasks | peak RSS MiB |" \
            "|---:|---:|---:|---:|---:|---:|---:|"
        for name in "${names[@]}"; do
            printf '| %s | %s | %s | %s | %s | %s | %s |\n' "${name#streams-}" \
                "$(fmt "$(median_of "$name" run 3)" 0)" "$(fmt "$(median_of "$name" run 4)" 2)" \
                "$(fmt "$(median_of "$name" run 5)" 2)" "$(fmt "$(median_of "$name" run 6)" 2)" \
                "$(cat "$raw/$name.tasks" 2>/dev/null || echo -)" "$(vm_hwm_mb "${pid_of[$name]}")"
        done
        echo
    } >>"$md"
    stop_all
fi

# ------------------------------------------------------------------ 2. windows over a round trip
if [[ ",$only," == *,windows,* ]]; then
    log "windows: each server behind a ${RTT_MS} ms round trip (scripts/delay-proxy.py)"
    start win-64k --set http2.initial_stream_window=65535 --set http2.initial_connection_window=65535
    start win-default
    start win-4m --set http2.initial_stream_window=4194304 --set http2.initial_connection_window=16777216
    start win-adaptive --set http2.adaptive_window=true
    for name in "${names[@]}"; do delay "$name"; done
    small=$raw/unary-1k.bin large=$raw/unary-1m.bin
    grpc_unary_call 1024 >"$small"
    grpc_unary_call 1048576 >"$large"
    method=/grpc.testing.TestService/UnaryCall
    # Replies: a SimpleResponse holding an empty payload, 7 bytes with the frame header.
    for name in "${names[@]}"; do
        h2load_load "$name" warmup "$large" "$method" 7 20 1 8
    done
    for round in $(seq "$ROUNDS"); do
        for name in "${names[@]}"; do
            log "windows round $round/$ROUNDS: $name"
            h2load_load "$name" 1k "$small" "$method" 7 "$SMALL_CALLS" 1 64
            h2load_load "$name" 1m "$large" "$method" 7 "$LARGE_CALLS" 1 8
        done
    done
    {
        table_head "Flow-control windows: one connection, ${RTT_MS} ms round trip, empty payloads in the responses (h2load)" \
            "| server windows (stream / connection) | 1 KiB calls/s | 1 KiB p99 ms | 1 KiB CPU µs/call | 1 MiB calls/s | 1 MiB MB/s | 1 MiB p50 ms | 1 MiB p99 ms | 1 MiB CPU µs/call | peak RSS MiB |" \
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for name in "${names[@]}"; do
            case "$name" in
                win-64k) label="64 KiB / 64 KiB (the protocol's)" ;;
                win-default) label="1 MiB / 4 MiB (Keel's defaults)" ;;
                win-4m) label="4 MiB / 16 MiB" ;;
                win-adaptive) label="adaptive (BDP estimate)" ;;
            esac
            rps=$(median_of "$name" 1m 3)
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" \
                "$(fmt "$(median_of "$name" 1k 3)" 0)" "$(fmt "$(median_of "$name" 1k 5)" 2)" \
                "$(fmt "$(median_of "$name" 1k 6)" 1)" "$(fmt "$rps" 1)" \
                "$(fmt "$(echo "$rps * 1.048576" | bc -l)" 0)" \
                "$(fmt "$(median_of "$name" 1m 4)" 1)" "$(fmt "$(median_of "$name" 1m 5)" 1)" \
                "$(fmt "$(median_of "$name" 1m 6)" 0)" "$(vm_hwm_mb "${pid_of[$name]}")"
        done
        echo
    } >>"$md"
    stop_all
fi

# ------------------------------------------------------------------ 3. keepalive
# connections NAME: the server's open connections (keel_server_connections, all listeners).
connections() {
    curl -s "http://${admin_of[$1]}/metrics" |
        awk '$1 ~ /^keel_server_connections($|\{)/ { n += $2 } END { print int(n) }'
}

# idle_load NAME: KA_CONNS connections with a trickle of calls from keel bench; once all are
# open, the server's CPU over KA_SECONDS (so neither the handshakes nor the closes count).
# Records "NAME idle CPU_MS_PER_S" in $raw/idle.tsv; any failed call fails the benchmark.
idle_load() {
    local name=$1 pid bench report t0 t1 waited=0
    pid=${pid_of[$name]}
    report=$raw/$name-idle.json
    "$keel" bench "${target[$name]}" --format json -o "$report" -z "$((KA_SECONDS + 15))s" \
        --rps "$KA_RPS" -c "$KA_CONNS" --connections "$KA_CONNS" helloworld.Greeter/SayHello \
        -d '{"name": "world"}' 2>>"$out/logs/transport-bench.err" &
    bench=$!
    until [ "$(connections "$name")" -ge "$KA_CONNS" ]; do
        kill -0 "$bench" 2>/dev/null || die "keel bench against $name ended before connecting"
        [ "$waited" -lt 600 ] || die "$name: $KA_CONNS connections not open after 60 s"
        sleep 0.1
        waited=$((waited + 1))
    done
    t0=$(cpu_ticks "$pid")
    sleep "$KA_SECONDS" # the measurement window itself
    t1=$(cpu_ticks "$pid")
    wait "$bench" || die "keel bench against $name had failures: see $report"
    printf '%s\t%s\n' "$name" "$(echo "($t1 - $t0) * 1000 / $clk_tck / $KA_SECONDS" | bc -l)" >>"$raw/idle.tsv"
}

if [[ ",$only," == *,keepalive,* ]]; then
    log "keepalive: $KA_CONNS connections, $KA_RPS calls/s in all, ${KA_SECONDS}s measured per server"
    : >"$raw/idle.tsv"
    for interval in 0s 5s 1s; do
        start "ka-$interval" --set "http2.keepalive_interval=$interval"
    done
    for round in $(seq "$ROUNDS"); do
        for name in "${names[@]}"; do
            log "keepalive round $round/$ROUNDS: $name"
            idle_load "$name"
        done
    done
    idle_median() {
        awk -F'\t' -v n="$1" '$1 == n { print $2 }' "$raw/idle.tsv" | sort -g |
            awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
    }
    {
        table_head "Keepalive: $KA_CONNS connections, $KA_RPS calls/s in all (each connection idle ~$((KA_CONNS / KA_RPS)) s between calls), ${KA_SECONDS} s measured once all are open" \
            "| http2.keepalive_interval | server CPU ms/s | pings/s (at most) | CPU µs per ping | the default (60s) at that price, ms/s per 1,000 connections |" \
            "|---|---:|---:|---:|---:|"
        base=$(idle_median ka-0s)
        for name in "${names[@]}"; do
            interval=${name#ka-}
            per_s=$(idle_median "$name")
            if [ "$interval" = 0s ]; then
                printf '| off | %s | 0 | - | - |\n' "$(fmt "$per_s" 2)"
                continue
            fi
            pings=$(echo "$KA_CONNS / ${interval%s}" | bc -l)
            per_ping=$(echo "($per_s - $base) * 1000 / $pings" | bc -l)
            printf '| %s | %s | %s | %s | %s |\n' "$interval" "$(fmt "$per_s" 2)" \
                "$(fmt "$pings" 0)" "$(fmt "$per_ping" 2)" \
                "$(fmt "$(echo "$per_ping * 1000 / 60 / 1000" | bc -l)" 3)"
        done
        echo
    } >>"$md"
    stop_all
fi

cat "$md"
log "tables in $md, reports in $raw/"
