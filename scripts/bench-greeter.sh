#!/usr/bin/env bash
# Greeter unary benchmark: `keel serve` (Keel's full default stack) against a bare tonic Greeter
# (crates/bare-greeter, the baseline) and, when it can be built, grpc-go's Greeter (informative),
# all measured in the same run with an independent load generator (h2load).
# Run `scripts/bench-greeter.sh --help` for what it measures and how; docs/BENCHMARKS.md has
# the recorded results.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-greeter.sh [--quick] [--servers LIST] [--no-callgrind] [--no-throughput]
                                [--no-allocs] [--no-build] [--help]

Benchmarks helloworld.Greeter/SayHello (unary, name "world") on:
  floor  the physical limit: crates/h2-floor, raw hyper HTTP/2 reading each request and
         answering the same canned 18 bytes and trailers (no gRPC library, no protobuf)
  bare   bare tonic: crates/bare-greeter, tonic's defaults and nothing else (the baseline),
         built in a cargo invocation of its own so no feature of keel's dependencies reaches it
  keel   `keel serve` with Keel's full default stack (health, reflection, admin, layers;
         observability on, no trace export: what runs without OTEL_* settings)
  keel-off     the same with `--set observe.enabled=false`: no metrics, logs or spans per call
  keel-tpc     the same stack served thread-per-core (`--set serving_threads=N`, N = the
         machine's cores): N current-thread runtimes, each on its own SO_REUSEPORT socket
  keel-traced  the same with observability on and traces exported over OTLP, 10% sampled
         (OTEL_TRACES_SAMPLER=traceidratio, OTEL_TRACES_SAMPLER_ARG=0.1) to a sink
         (scripts/otlp-sink.py, grpcio from .venv; skipped with a note if it cannot run)
  go     grpc-go's helloworld greeter_server, built from Debian packages by
         ../shared/peers/build-go-greeter.sh (informative; skipped if it cannot be built)

Three measurements, all in the same run for every server:
  1. Throughput and CPU: each server runs natively; after a warm-up, h2load sends
     BENCH_N requests over BENCH_C connections with BENCH_M streams each, for BENCH_ROUNDS
     rounds interleaved across the servers (so they share the machine's noise). Reported:
     h2load's req/s and the server's CPU time (utime+stime from /proc/PID/stat) per request;
     medians over the rounds.
  2. Instructions: each server runs under `valgrind --tool=callgrind` twice, with
     BENCH_CG_N1 and BENCH_CG_N2 requests (one connection, one stream, after a separate
     warm-up of BENCH_CG_WARMUP requests); Ir per request = (Ir2 - Ir1) / (N2 - N1), which
     cancels start-up, warm-up and shutdown. Unlike CPU time, this is repeatable on a
     shared, noisy machine (valgrind serializes threads, hence a single connection).
  3. Allocations: floor, bare and keel* are built a second time with their `count-allocs`
     feature (crates/alloc-counter: the system allocator, counted; the totals printed on
     SIGUSR1) and copied to $BENCH_OUT/bin/. Each runs natively: warm-up, a snapshot, BENCH_CG_N1
     requests, a snapshot, BENCH_CG_N2 requests, a snapshot (one connection, one stream, like
     measurement 2); allocations (alloc and realloc calls) and bytes requested per call =
     (second difference - first) / (N2 - N1), which cancels each connection's own cost.
     grpc-go is not counted.

Every h2load run must succeed completely: every request answered 2xx with an 18-byte
HelloReply message ("Hello world"), otherwise the benchmark fails.

Options:
  --quick          short smoke run (20k requests x 1 round, callgrind 200/1200 requests)
  --servers LIST   comma-separated subset of floor,bare,keel,keel-tpc,keel-off,keel-traced,
                   go (default: floor,bare,keel,keel-tpc,go; the observability cost:
                   keel-off,keel,keel-traced)
  --no-callgrind   skip the instruction counts (measurement 2)
  --no-throughput  skip the throughput and CPU time rounds (measurement 1)
  --no-allocs      skip the allocation counts (measurement 3) and their builds
  --no-build       use the existing target/release binaries
  -h, --help       this text

Environment (defaults in brackets; --quick lowers them unless they are set):
  BENCH_N [100000]  BENCH_C [8]  BENCH_M [16]  BENCH_WARMUP [20000]  BENCH_ROUNDS [5]
  BENCH_CG_N1 [2000]  BENCH_CG_N2 [12000]  BENCH_CG_WARMUP [500]  BENCH_CG_C [1]  BENCH_CG_M [1]
  BENCH_OUT [bench-out]    output directory (logs, raw data, callgrind files)
  KEEL_SERVE_ARGS []       extra arguments for `keel serve` (e.g. "--set key=value")

Output: a table on stdout and the same as Markdown in $BENCH_OUT/greeter.md; per-round
numbers in $BENCH_OUT/greeter-rounds.tsv; in $BENCH_OUT/callgrind/, the profiles, the
per-request Ir of every function (NAME-self.txt, NAME-inclusive.txt, from
callgrind_annotate) and the per-function difference to the baseline (keel-vs-bare.txt,
go-vs-bare.txt).

Exit status: non-zero if the floor, bare-greeter or keel fails to build, start, run under
callgrind or report its allocations, or if any request fails (grpc-go's failures are only
reported). Issue 15's goals are reported, not enforced (speed is shown by benchmarks, not
asserted): keel <= 1.0x bare tonic's instructions per call, <= 1.25x the floor's, and at
least 40% less CPU per call than grpc-go. With keel-off and keel-traced, the observability
goal is reported too: keel-traced <= 1.10x keel-off.
EOF
}

quick=0 do_cg=1 do_tp=1 do_allocs=1 do_build=1 servers_arg="floor,bare,keel,keel-tpc,go"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --no-callgrind) do_cg=0 ;;
        --no-throughput) do_tp=0 ;;
        --no-allocs) do_allocs=0 ;;
        --no-build) do_build=0 ;;
        --servers) [ $# -ge 2 ] || { echo "--servers needs a value" >&2; exit 2; }; servers_arg=$2; shift ;;
        --servers=*) servers_arg=${1#--servers=} ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$quick" = 1 ]; then
    d_n=20000 d_warmup=2000 d_rounds=1 d_cg1=200 d_cg2=1200 d_cgw=100
else
    d_n=100000 d_warmup=20000 d_rounds=5 d_cg1=2000 d_cg2=12000 d_cgw=500
fi
N=${BENCH_N:-$d_n}
C=${BENCH_C:-8}
M=${BENCH_M:-16}
WARMUP=${BENCH_WARMUP:-$d_warmup}
ROUNDS=${BENCH_ROUNDS:-$d_rounds}
CG_N1=${BENCH_CG_N1:-$d_cg1}
CG_N2=${BENCH_CG_N2:-$d_cg2}
CG_WARMUP=${BENCH_CG_WARMUP:-$d_cgw}
CG_C=${BENCH_CG_C:-1}
CG_M=${BENCH_CG_M:-1}
KEEL_SERVE_ARGS=${KEEL_SERVE_ARGS:-}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${BENCH_OUT:-bench-out}
mkdir -p "$out/logs" "$out/callgrind" "$out/bin"
out=$(cd "$out" && pwd)

# Bytes of DATA per response: 5-byte gRPC frame header + HelloReply{message: "Hello world"}.
REPLY_BYTES=18
PATH_SAYHELLO=/helloworld.Greeter/SayHello

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- processes we started
pids=()
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() {
    local p keep=()
    for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    pids=("${keep[@]}")
}

# ---------------------------------------------------------------- tools
apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update"
        apt-get update -q >"$out/logs/apt.log" 2>&1 || die "apt-get update failed (see $out/logs/apt.log)"
        apt_updated=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >>"$out/logs/apt.log" 2>&1 ||
        die "apt-get install $* failed (see $out/logs/apt.log)"
}
command -v h2load >/dev/null || apt_install nghttp2-client
if [ "$do_cg" = 1 ] && ! command -v valgrind >/dev/null; then apt_install valgrind; fi
command -v h2load >/dev/null || die "h2load not found"

# ---------------------------------------------------------------- servers
want_floor=0 want_bare=0 want_keel=0 want_go=0 want_off=0 want_traced=0 want_tpc=0
IFS=, read -r -a _list <<<"$servers_arg"
for s in "${_list[@]}"; do
    case "$s" in
        floor) want_floor=1 ;;
        bare) want_bare=1 ;;
        keel) want_keel=1 ;;
        keel-off) want_off=1 ;;
        keel-tpc) want_tpc=1 ;;
        keel-traced) want_traced=1 ;;
        go) want_go=1 ;;
        *) die "unknown server '$s' in --servers (floor, bare, keel, keel-tpc, keel-off, keel-traced, go)" ;;
    esac
done
[ "$want_bare" = 1 ] || log "note: without 'bare' there is no baseline, ratios are left empty"

servers=()
[ "$want_floor" = 1 ] && servers+=(floor)
[ "$want_bare" = 1 ] && servers+=(bare)
[ "$want_keel" = 1 ] && servers+=(keel)
[ "$want_tpc" = 1 ] && servers+=(keel-tpc)
[ "$want_off" = 1 ] && servers+=(keel-off)

if [ "$do_build" = 1 ]; then
    # One cargo invocation per binary: built together, bare-greeter would get the features
    # keel's dependencies turn on in shared crates (sqlx turns on tracing's `log`, which makes
    # every span h2 opens in a process without a subscriber go through the `log` crate:
    # +28% instructions per call; docs/BENCHMARKS.md, "Honest baselines").
    builds=()
    [ "$want_floor" = 1 ] && builds+=(h2-floor)
    [ "$want_bare" = 1 ] && builds+=(bare-greeter)
    [ "$want_keel$want_tpc$want_off$want_traced" = 0000 ] || builds+=(keel-cli)
    # The counting builds first, copied aside: the plain builds then put the measured
    # binaries back in target/release.
    if [ "$do_allocs" = 1 ]; then
        for pkg in "${builds[@]}"; do
            log "cargo build --release -p $pkg --features count-allocs"
            cargo build --release -p "$pkg" --features count-allocs >>"$out/logs/cargo-build.log" 2>&1 ||
                { tail -30 "$out/logs/cargo-build.log" >&2; die "cargo build failed (see $out/logs/cargo-build.log)"; }
            bin=$pkg
            [ "$pkg" != keel-cli ] || bin=keel
            cp "${CARGO_TARGET_DIR:-$root/target}/release/$bin" "$out/bin/$bin-count-allocs"
        done
    fi
    for pkg in "${builds[@]}"; do
        log "cargo build --release -p $pkg"
        cargo build --release -p "$pkg" >>"$out/logs/cargo-build.log" 2>&1 ||
            { tail -30 "$out/logs/cargo-build.log" >&2; die "cargo build failed (see $out/logs/cargo-build.log)"; }
    done
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
floor_bin=$target_dir/release/h2-floor
bare_bin=$target_dir/release/bare-greeter
keel_bin=$target_dir/release/keel
go_bin=$out/go-peer/greeter_server
[ "$want_floor" = 0 ] || [ -x "$floor_bin" ] || die "$floor_bin not built"
[ "$want_bare" = 0 ] || [ -x "$bare_bin" ] || die "$bare_bin not built"
[ "$want_keel$want_tpc$want_off$want_traced" = 0000 ] || [ -x "$keel_bin" ] || die "$keel_bin not built"
if [ "$do_allocs" = 1 ]; then
    for b in $([ "$want_floor" = 0 ] || echo h2-floor) $([ "$want_bare" = 0 ] || echo bare-greeter) \
        $([ "$want_keel$want_tpc$want_off$want_traced" = 0000 ] || echo keel); do
        [ -x "$out/bin/$b-count-allocs" ] || die "$out/bin/$b-count-allocs not built (run without --no-build, or with --no-allocs)"
    done
fi

# keel-traced exports to an OTLP sink of its own (Python grpcio, from the test environment).
sink_addr=
if [ "$want_traced" = 1 ]; then
    sink_py=$root/.venv/bin/python
    if [ -x "$sink_py" ] && "$sink_py" -c 'import grpc' 2>/dev/null; then
        "$sink_py" "$root/scripts/otlp-sink.py" 127.0.0.1:0 >"$out/logs/otlp-sink.out" 2>&1 &
        pids+=("$!")
        for _ in $(seq 50); do
            sink_addr=$(sed -n 's/^otlp sink listening on //p' "$out/logs/otlp-sink.out")
            [ -z "$sink_addr" ] || break
            sleep 0.1
        done
    fi
    if [ -n "$sink_addr" ]; then
        servers+=(keel-traced)
    else
        log "no OTLP sink (run scripts/test.sh once to create .venv with grpcio); skipping keel-traced"
    fi
fi

if [ "$want_go" = 1 ]; then
    if [ ! -x "$go_bin" ]; then
        script=$root/../shared/peers/build-go-greeter.sh
        if [ -f "$script" ]; then
            log "building grpc-go greeter (informative column)"
            bash "$script" "$out/go-peer" >"$out/logs/go-build.log" 2>&1 ||
                log "grpc-go greeter build failed, skipping it (see $out/logs/go-build.log)"
        else
            log "no $script, skipping grpc-go"
        fi
    fi
    [ -x "$go_bin" ] && servers+=(go)
fi
[ ${#servers[@]} -gt 0 ] || die "no server to benchmark"

label() {
    case "$1" in
        floor) echo "h2 floor (hyper, canned reply)" ;;
        bare) echo "bare tonic (baseline)" ;;
        keel) echo "keel serve" ;;
        keel-tpc) echo "keel serve, thread-per-core" ;;
        keel-off) echo "keel serve, observe off" ;;
        keel-traced) echo "keel serve, traces 10% exported" ;;
        go) echo "grpc-go (informative)" ;;
    esac
}
# Only grpc-go is optional: its failures are reported but do not fail the benchmark.
optional() { [ "$1" = go ]; }

# bare-greeter and keel serve listen on port 0 and print the port they got; grpc-go takes a
# port picked here below the kernel's ephemeral range (no outgoing connection holds it).
used_ports=" "
pick_port() {
    local low p
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    [ "$low" -gt 11000 ] || low=32768
    p=$((10000 + RANDOM % (low - 11000)))
    while [[ "$used_ports" == *" $p "* ]] || (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do
        p=$((p + 1))
    done
    used_ports+="$p "
    echo "$p"
}

# start_server NAME LOGBASE [CALLGRIND_OUT]: starts it in the background, sets $started_pid
# (and $started_port for grpc-go).
started_pid='' started_port=''
start_server() {
    local name=$1 logbase=$2 cgout=${3:-} cmd envs=()
    started_port=0
    case "$name" in
        floor) cmd=("$floor_bin" 127.0.0.1:0) ;;
        bare) cmd=("$bare_bin" 127.0.0.1:0) ;;
        keel*)
            # shellcheck disable=SC2206 # KEEL_SERVE_ARGS is split on purpose
            cmd=("$keel_bin" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
                --set shutdown.drain_delay=0s $KEEL_SERVE_ARGS)
            case "$name" in
                keel-off) cmd+=(--set observe.enabled=false) ;;
                keel-tpc) cmd+=(--set "serving_threads=$(nproc)") ;;
                keel-traced)
                    envs=("OTEL_EXPORTER_OTLP_ENDPOINT=http://$sink_addr"
                        OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0.1) ;;
            esac ;;
        go)
            started_port=$(pick_port)
            cmd=("$go_bin" "127.0.0.1:$started_port")
            # Go's asynchronous preemption signals trip an assertion in callgrind's signal
            # handling.
            [ -z "$cgout" ] || envs=(GODEBUG=asyncpreemptoff=1) ;;
    esac
    if [ -n "$cgout" ]; then
        # --fair-sched: valgrind runs one thread at a time; without fair scheduling a thread
        # spinning on another (Go's GC does) can livelock for a long time and inflate the counts.
        cmd=(valgrind --tool=callgrind --fair-sched=yes "--callgrind-out-file=$cgout" "${cmd[@]}")
    fi
    # Environment goes on the outermost command: valgrind does not follow an `env` it runs.
    [ ${#envs[@]} -eq 0 ] || cmd=(env "${envs[@]}" "${cmd[@]}")
    echo "${cmd[*]}" >"$logbase.cmd"
    "${cmd[@]}" >"$logbase.out" 2>"$logbase.err" &
    started_pid=$!
    pids+=("$started_pid")
}

# wait_ready NAME PID PORT LOGBASE TIMEOUT_S: sets $ready_port. bare and keel print
# "grpc listening on ADDR"; grpc-go prints nothing, so its PORT is probed with a connection.
ready_port=
wait_ready() {
    local name=$1 pid=$2 port=$3 logbase=$4 deadline=$((SECONDS + $5)) addr
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$pid" 2>/dev/null || { log "$(label "$name") exited early: $(tail -3 "$logbase.err" | tr '\n' ' ')"; return 1; }
        if [ "$name" = go ]; then
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                ready_port=$port
                return 0
            fi
        else
            addr=$(sed -n 's/^grpc listening on \(.*\)$/\1/p' "$logbase.out" 2>/dev/null | head -1)
            if [ -n "$addr" ]; then
                ready_port=${addr##*:}
                return 0
            fi
        fi
        sleep 0.1
    done
    log "$(label "$name") not ready after $5 s (see $logbase.err)"
    return 1
}

# stop_server PID TIMEOUT_S: SIGTERM, then SIGKILL after the timeout. Returns 1 if killed.
stop_server() {
    local pid=$1 deadline=$((SECONDS + $2)) rc=0
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        rc=1
    fi
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
    return $rc
}

# ---------------------------------------------------------------- load
body=$out/hello-request.bin
# gRPC frame: uncompressed flag 0, length 7 (big-endian), then HelloRequest{name: "world"}
# = field 1, wire type 2 (0x0a), length 5, "world".
printf '\x00\x00\x00\x00\x07\x0a\x05world' >"$body"

# h2load_run PORT N C M LOGFILE: runs h2load and checks every request succeeded with a full
# HelloReply. Sets $h2_rps. Returns 1 (with a message) on any failure.
h2_rps=
h2load_run() {
    local port=$1 n=$2 c=$3 m=$4 logf=$5 total ok s2xx data
    [ "$c" -le "$n" ] || c=$n
    if ! timeout --kill-after=5 600 h2load -n "$n" -c "$c" -m "$m" -t 1 -d "$body" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$port$PATH_SAYHELLO" >"$logf" 2>&1; then
        log "h2load failed (see $logf)"
        return 1
    fi
    read -r total ok < <(awk '/^requests:/ {print $2, $8}' "$logf") || true
    s2xx=$(awk '/^status codes:/ {print $3}' "$logf")
    data=$(sed -n 's/.*(\([0-9]*\)) data.*/\1/p' "$logf")
    h2_rps=$(awk '/^finished in/ {print $4}' "$logf")
    if [ "${total:-}" != "$n" ] || [ "${ok:-}" != "$n" ] || [ "${s2xx:-}" != "$n" ] ||
        [ "${data:-}" != "$((n * REPLY_BYTES))" ] || [ -z "$h2_rps" ]; then
        log "requests failed: $n sent, ${ok:-?} succeeded, ${s2xx:-?} 2xx, ${data:-?} data bytes (want $((n * REPLY_BYTES))); see $logf"
        grep -E '^(requests|status codes|traffic):' "$logf" >&2 || true
        return 1
    fi
}

clk_tck=$(getconf CLK_TCK)
# Server CPU time (user + system, all threads, living and exited) in clock ticks.
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat") || return 1
    # Fields after "(comm)": state is field 3, utime 14, stime 15.
    stat=${stat##*) }
    awk '{print $12 + $13}' <<<"$stat"
}

median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) print ""; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

status=0
declare -A failed=() cg_failed=() rps_med=() cpu_med=() ir_req=() cpu_all=()

# ---------------------------------------------------------------- 1. throughput and CPU
log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A spid=() sport=()
rounds_tsv=$out/greeter-rounds.tsv
if [ "$do_tp" = 1 ]; then
    for s in "${servers[@]}"; do
        start_server "$s" "$out/logs/$s-native"
        spid[$s]=$started_pid sport[$s]=$started_port
    done
    for s in "${servers[@]}"; do
        if ! wait_ready "$s" "${spid[$s]}" "${sport[$s]}" "$out/logs/$s-native" 60; then
            failed[$s]="did not start"
            continue
        fi
        sport[$s]=$ready_port
        log "$(label "$s"): warm-up, $WARMUP requests"
        if ! h2load_run "${sport[$s]}" "$WARMUP" "$C" "$M" "$out/logs/$s-warmup.h2load"; then
            failed[$s]="requests failed"
        fi
    done

    printf 'round\tserver\trequests\treq_per_s\tcpu_ticks\tcpu_us_per_req\n' >"$rounds_tsv"
    k=${#servers[@]}
    for ((r = 1; r <= ROUNDS; r++)); do
        for ((i = 0; i < k; i++)); do
            s=${servers[$(((i + r - 1) % k))]} # rotate the order from round to round
            [ -z "${failed[$s]:-}" ] || continue
            before=$(cpu_ticks "${spid[$s]}") || { failed[$s]="exited"; continue; }
            if ! h2load_run "${sport[$s]}" "$N" "$C" "$M" "$out/logs/$s-round$r.h2load"; then
                failed[$s]="requests failed"
                continue
            fi
            after=$(cpu_ticks "${spid[$s]}") || { failed[$s]="exited"; continue; }
            us=$(awk -v t=$((after - before)) -v hz="$clk_tck" -v n="$N" 'BEGIN {printf "%.3f", t * 1e6 / hz / n}')
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$s" "$N" "$h2_rps" "$((after - before))" "$us" >>"$rounds_tsv"
            log "round $r/$ROUNDS $(label "$s"): $h2_rps req/s, $us CPU us/req"
        done
    done
    for s in "${servers[@]}"; do
        stop_server "${spid[$s]}" 10 || true
        [ -z "${failed[$s]:-}" ] || continue
        rps_med[$s]=$(awk -v s="$s" -F'\t' '$2 == s {print $4}' "$rounds_tsv" | median)
        cpu_med[$s]=$(awk -v s="$s" -F'\t' '$2 == s {print $6}' "$rounds_tsv" | median)
        cpu_all[$s]=$(awk -v s="$s" -F'\t' '$2 == s {printf "%s%.2f", sep, $6; sep = ", "}' "$rounds_tsv")
    done
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- 2. instructions (callgrind)
# cg_run NAME N: one server under callgrind: warm-up, N requests, stop. Sets $cg_ir.
cg_ir=
cg_run() {
    local s=$1 n=$2 port base f pid
    base=$out/logs/$s-cg$n
    f=$out/callgrind/$s-$n.out
    rm -f "$f"
    start_server "$s" "$base" "$f"
    pid=$started_pid
    wait_ready "$s" "$pid" "$started_port" "$base" 180 || { stop_server "$pid" 5 || true; return 1; }
    port=$ready_port
    h2load_run "$port" "$CG_WARMUP" "$CG_C" "$CG_M" "$base-warmup.h2load" || { stop_server "$pid" 5 || true; return 1; }
    h2load_run "$port" "$n" "$CG_C" "$CG_M" "$base.h2load" || { stop_server "$pid" 5 || true; return 1; }
    stop_server "$pid" 120 || { log "$(label "$s") under callgrind did not stop on SIGTERM"; return 1; }
    cg_ir=$(awk '/^totals:/ {print $2}' "$f" 2>/dev/null)
    [ -n "$cg_ir" ] || { log "no totals in $f (see $base.err)"; return 1; }
}

# cg_functions FILE INCLUSIVE(yes|no): "Ir<TAB>function" for every function of a profile. With
# line tables only, callgrind_annotate splits a function by the source file of its inlined
# parts: self costs are added up, inclusive costs take the largest part.
cg_functions() {
    callgrind_annotate --auto=no --threshold=100 --inclusive="$2" "$1" 2>/dev/null |
        awk -v inc="$2" '/^ *[0-9,]+ \([ 0-9.]+%\)  / && !/PROGRAM TOTALS/ {
            ir = $1; gsub(",", "", ir); name = $0
            sub(/^ *[0-9,]+ \([ 0-9.]+%\)  /, "", name); sub(/ \[[^]]*\]$/, "", name); sub(/^[^:]*:/, "", name)
            if (inc == "yes") { if (ir + 0 > f[name] + 0) f[name] = ir } else f[name] += ir
        }
        END { for (k in f) print f[k] "\t" k }'
}

# cg_per_request NAME INCLUSIVE: per-request Ir of each function, the difference of the two
# runs' profiles divided by the difference in requests, largest first, tab-separated.
cg_per_request() {
    local s=$1 inc=$2
    echo "# $(label "$s"): Ir per request by function ($([ "$inc" = yes ] && echo inclusive || echo self) cost),"
    echo "# (profile after $CG_N2 requests - profile after $CG_N1) / $((CG_N2 - CG_N1)); total ${ir_req[$s]} Ir/req"
    awk -F'\t' -v dn=$((CG_N2 - CG_N1)) -v total="${ir_req[$s]}" '
        NR == FNR { a[$2] = $1; next }
        { b[$2] = $1 }
        END {
            for (k in a) if (!(k in b)) b[k] = 0
            for (k in b) { d = (b[k] - a[k]) / dn; if (d >= 1 || d <= -1) printf "%10.0f\t%7.2f%%\t%s\n", d, 100 * d / total, k }
        }' <(cg_functions "$out/callgrind/$s-$CG_N1.out" "$inc") <(cg_functions "$out/callgrind/$s-$CG_N2.out" "$inc") |
        sort -t $'\t' -k1,1 -g -r
}

# cg_delta A B: per-request self cost by function, B minus A, largest differences both ways.
cg_delta() {
    echo "# Ir per request by function (self cost): $(label "$2") minus $(label "$1"); total ${ir_req[$2]} - ${ir_req[$1]} = $((ir_req[$2] - ir_req[$1]))"
    printf '# %8s  %10s  %10s  %s\n' "delta" "$1" "$2" "function"
    awk -F'\t' 'FNR == 1 { f++ } /^#/ { next } { v[f, $3] = $1; k[$3] = 1 }
        END { for (n in k) { d = v[2, n] - v[1, n]; if (d >= 1 || d <= -1) printf "%10.0f  %10.0f  %10.0f  %s\n", d, v[1, n], v[2, n], n } }' \
        "$out/callgrind/$1-self.txt" "$out/callgrind/$2-self.txt" | sort -g -r >"$out/callgrind/.delta"
    head -30 "$out/callgrind/.delta"
    echo "# ..."
    tail -15 "$out/callgrind/.delta"
    rm -f "$out/callgrind/.delta"
}

if [ "$do_cg" = 1 ]; then
    [ "$CG_N2" -gt "$CG_N1" ] || die "BENCH_CG_N2 must be larger than BENCH_CG_N1"
    rm -f "$out/callgrind/"*.txt
    for s in "${servers[@]}"; do
        [ -z "${failed[$s]:-}" ] || continue
        log "$(label "$s") under callgrind: $CG_N1 and $CG_N2 requests"
        ok=0
        for attempt in 1 2; do
            cg_run "$s" "$CG_N1" || break
            ir1=$cg_ir
            cg_run "$s" "$CG_N2" || break
            ir2=$cg_ir
            # The fixed part (start-up, warm-up, shutdown) implied by the two runs must be
            # positive; if not, one run did extra work (e.g. spinning) and the pair is redone.
            if awk -v a="$ir1" -v b="$ir2" -v n1="$CG_N1" -v n2="$CG_N2" \
                'BEGIN {x = (b - a) / (n2 - n1); exit !(x > 0 && a - n1 * x > 0)}'; then
                ok=1
                break
            fi
            log "$(label "$s"): inconsistent counts (Ir $ir1 after $CG_N1 requests, $ir2 after $CG_N2), attempt $attempt"
        done
        if [ "$ok" = 1 ]; then
            ir_req[$s]=$(awk -v a="$ir1" -v b="$ir2" -v n1="$CG_N1" -v n2="$CG_N2" 'BEGIN {printf "%.0f", (b - a) / (n2 - n1)}')
            log "$(label "$s"): Ir $ir1 -> $ir2, ${ir_req[$s]} Ir/req"
            cg_per_request "$s" no >"$out/callgrind/$s-self.txt" || true
            cg_per_request "$s" yes >"$out/callgrind/$s-inclusive.txt" || true
        else
            cg_failed[$s]=1
        fi
    done
fi

if [ "$do_cg" = 1 ] && [ -n "${ir_req[bare]:-}" ]; then
    for s in keel go; do
        [ -z "${ir_req[$s]:-}" ] || cg_delta bare "$s" >"$out/callgrind/$s-vs-bare.txt" || true
    done
fi
if [ "$do_cg" = 1 ] && [ -n "${ir_req[keel-off]:-}" ]; then
    for s in keel keel-traced; do
        [ -z "${ir_req[$s]:-}" ] || cg_delta keel-off "$s" >"$out/callgrind/$s-vs-keel-off.txt" || true
    done
fi

# ---------------------------------------------------------------- 3. allocations
declare -A alloc_req=() bytes_req=() alloc_failed=()
# alloc_snapshot PID ERRFILE: SIGUSR1, then waits for the totals line it prints. Sets
# $snap_allocs (alloc + realloc calls) and $snap_bytes.
snap_allocs='' snap_bytes=''
alloc_snapshot() {
    local pid=$1 errf=$2 before deadline=$((SECONDS + 10)) line
    before=$(grep -c '^alloc-count ' "$errf" || true)
    kill -USR1 "$pid" 2>/dev/null || { log "server $pid is gone"; return 1; }
    while [ "$(grep -c '^alloc-count ' "$errf" || true)" -le "$before" ]; do
        [ $SECONDS -lt $deadline ] || { log "no alloc-count line in $errf 10 s after SIGUSR1"; return 1; }
        sleep 0.05
    done
    line=$(grep '^alloc-count ' "$errf" | tail -1)
    read -r snap_allocs snap_bytes < <(sed -n 's/^alloc-count allocations=\([0-9]*\) reallocations=\([0-9]*\) bytes=\([0-9]*\)$/\1 \2 \3/p' <<<"$line" |
        awk '{print $1 + $2, $3}')
    [ -n "$snap_bytes" ] || { log "unreadable totals line in $errf: $line"; return 1; }
}

# alloc_run NAME: the counting build of one server; sets alloc_req[NAME] and bytes_req[NAME].
alloc_run() {
    local s=$1 base=$out/logs/$1-allocs pid port a0 b0 a1 b1 a2 b2
    start_server "$s" "$base"
    pid=$started_pid
    wait_ready "$s" "$pid" "$started_port" "$base" 60 || { stop_server "$pid" 5 || true; return 1; }
    port=$ready_port
    { h2load_run "$port" "$CG_WARMUP" "$CG_C" "$CG_M" "$base-warmup.h2load" &&
        alloc_snapshot "$pid" "$base.err" && a0=$snap_allocs b0=$snap_bytes &&
        h2load_run "$port" "$CG_N1" "$CG_C" "$CG_M" "$base-$CG_N1.h2load" &&
        alloc_snapshot "$pid" "$base.err" && a1=$snap_allocs b1=$snap_bytes &&
        h2load_run "$port" "$CG_N2" "$CG_C" "$CG_M" "$base-$CG_N2.h2load" &&
        alloc_snapshot "$pid" "$base.err" && a2=$snap_allocs b2=$snap_bytes; } ||
        { stop_server "$pid" 5 || true; return 1; }
    stop_server "$pid" 10 || true
    read -r "alloc_req[$s]" "bytes_req[$s]" < <(awk -v a0="$a0" -v a1="$a1" -v a2="$a2" -v b0="$b0" -v b1="$b1" -v b2="$b2" \
        -v dn=$((CG_N2 - CG_N1)) 'BEGIN {printf "%.1f %.0f\n", ((a2 - a1) - (a1 - a0)) / dn, ((b2 - b1) - (b1 - b0)) / dn}')
    log "$(label "$s"): allocations $a0 -> $a1 -> $a2, ${alloc_req[$s]} allocations and ${bytes_req[$s]} bytes per call"
}

if [ "$do_allocs" = 1 ]; then
    plain_bins=("$floor_bin" "$bare_bin" "$keel_bin")
    floor_bin=$out/bin/h2-floor-count-allocs bare_bin=$out/bin/bare-greeter-count-allocs keel_bin=$out/bin/keel-count-allocs
    for s in "${servers[@]}"; do
        if [ -n "${failed[$s]:-}" ] || [ "$s" = go ]; then continue; fi
        log "$(label "$s"), counting build: allocations for $CG_N1 and $CG_N2 requests"
        alloc_run "$s" || alloc_failed[$s]=1
    done
    floor_bin=${plain_bins[0]} bare_bin=${plain_bins[1]} keel_bin=${plain_bins[2]}
fi

# ---------------------------------------------------------------- report
# keel-traced only counts if its spans really reached the sink.
if [ -n "$sink_addr" ]; then
    exported=$(sed -n 's/^otlp sink received \([0-9]*\) exports, \([0-9]*\) spans$/\2 spans in \1 exports/p' \
        "$out/logs/otlp-sink.out" | tail -1)
    if [ -z "$exported" ]; then
        log "$(label keel-traced): FAILED (the OTLP sink received no spans)"
        failed[keel-traced]="no spans exported"
    else
        log "OTLP sink received $exported"
    fi
fi
for s in "${servers[@]}"; do
    if [ -n "${failed[$s]:-}" ]; then
        log "$(label "$s"): FAILED (${failed[$s]})"
        optional "$s" || status=1
    elif [ -n "${cg_failed[$s]:-}" ]; then
        log "$(label "$s"): FAILED under callgrind (see $out/logs/$s-cg*)"
        optional "$s" || status=1
    elif [ -n "${alloc_failed[$s]:-}" ]; then
        log "$(label "$s"): FAILED counting allocations (see $out/logs/$s-allocs.*)"
        status=1
    fi
done

ratio() { # ratio VALUE BASE
    if [ -n "${1:-}" ] && [ -n "${2:-}" ]; then awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3fx", a / b}'; else echo "-"; fi
}
fmt_int() { # 12345.6 -> 12,346
    if [ -n "${1:-}" ]; then printf '%.0f' "$1" | sed -e :a -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/; ta'; else echo "-"; fi
}
fmt_cpu() { if [ -n "${1:-}" ]; then printf "%.2f" "$1"; else echo "-"; fi; }

rows=()
for s in "${servers[@]}"; do
    if [ -n "${failed[$s]:-}" ]; then
        rows+=("$(label "$s")|failed: ${failed[$s]}|-|-|-|-|-|-|-")
        continue
    fi
    rows+=("$(label "$s")|$(fmt_int "${rps_med[$s]:-}")|$(fmt_cpu "${cpu_med[$s]:-}")|$([ -z "${cg_failed[$s]:-}" ] && fmt_int "${ir_req[$s]:-}" || echo "failed")|$(ratio "${cpu_med[$s]:-}" "${cpu_med[bare]:-}")|$(ratio "${ir_req[$s]:-}" "${ir_req[bare]:-}")|$(ratio "${ir_req[$s]:-}" "${ir_req[floor]:-}")|${alloc_req[$s]:--}|$(fmt_int "${bytes_req[$s]:-}")")
done

# Issue 15's goals: keel <= 1.0x bare tonic's and <= 1.25x the floor's instructions per call,
# and >= 40% less CPU per call than grpc-go.
verdict=
goal() { # goal TEXT VALUE BASE LIMIT
    [ -n "${2:-}" ] && [ -n "${3:-}" ] || return 0
    verdict+="${verdict:+ }$(awk -v t="$1" -v a="$2" -v b="$3" -v l="$4" 'BEGIN {
        r = a / b; printf "Goal %s %.2fx: %.3fx (%s).", t, l, r, r <= l ? "met" : "NOT met" }')"
}
goal "keel <= bare tonic instructions/call," "${ir_req[keel]:-}" "${ir_req[bare]:-}" 1.0
goal "keel <= h2 floor instructions/call," "${ir_req[keel]:-}" "${ir_req[floor]:-}" 1.25
goal "keel CPU/call <= grpc-go's" "${cpu_med[keel]:-}" "${cpu_med[go]:-}" 0.60

# Observability's cost: traced (10% exported) and default (on, no export) vs off.
for s in keel-traced keel; do
    [ -n "${ir_req[keel-off]:-}${cpu_med[keel-off]:-}" ] && [ -n "${ir_req[$s]:-}${cpu_med[$s]:-}" ] || continue
    verdict+="${verdict:+ }$(awk -v name="$(label "$s")" -v c="${cpu_med[$s]:-}" -v co="${cpu_med[keel-off]:-}" \
        -v i="${ir_req[$s]:-}" -v io="${ir_req[keel-off]:-}" 'BEGIN {
        s = "Observability goal: " name " <= 1.10x keel serve, observe off:"
        if (c != "" && co != "") { r = c / co; s = s sprintf(" CPU time %.3fx (%s)", r, r <= 1.10 ? "met" : "NOT met") }
        if (i != "" && io != "") { q = i / io; s = s sprintf("%s instructions %.3fx (%s)", (c != "" && co != "") ? "," : "", q, q <= 1.10 ? "met" : "NOT met") }
        print s "." }')"
done

git_rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "no commit")
if [ -n "$(git -C "$root" status --porcelain 2>/dev/null | head -1)" ]; then git_rev="$git_rev (with uncommitted changes)"; fi
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
cmdline=
for v in $(compgen -v BENCH_) KEEL_SERVE_ARGS; do
    [ -z "${!v:-}" ] || cmdline+="$v=$(printf '%q' "${!v}") "
done
cmdline+="scripts/bench-greeter.sh"
[ "$quick" = 1 ] && cmdline+=" --quick"
[ "$servers_arg" = "floor,bare,keel,keel-tpc,go" ] || cmdline+=" --servers $servers_arg"
[ "$do_cg" = 1 ] || cmdline+=" --no-callgrind"
[ "$do_tp" = 1 ] || cmdline+=" --no-throughput"
[ "$do_allocs" = 1 ] || cmdline+=" --no-allocs"

md=$out/greeter.md
{
    echo "### Greeter unary: keel serve vs bare tonic"
    echo
    echo "Command: \`$cmdline\` — $(date -u '+%Y-%m-%d %H:%M UTC'), git $git_rev, $(nproc) cores ($cpu_model), load average ${load_before} before and ${load_after} after the throughput rounds."
    echo
    echo "| server | req/s | CPU µs/req | Ir/req | CPU vs bare | Ir vs bare | Ir vs floor | allocs/req | bytes/req |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for row in "${rows[@]}"; do echo "| ${row//|/ | } |"; done
    echo
    [ "$do_tp" = 0 ] || echo "- Throughput and CPU: h2load \`-n $N -c $C -m $M\`, $ROUNDS round(s) per server interleaved, after $WARMUP warm-up requests; medians over the rounds. CPU is the server's utime+stime."
    for s in "${servers[@]}"; do
        [ -z "${cpu_all[$s]:-}" ] || echo "  - $(label "$s"): CPU µs/req per round: ${cpu_all[$s]}"
    done
    if [ "$do_cg" = 1 ]; then
        echo "- Instructions: callgrind, h2load \`-c $CG_C -m $CG_M\`, (Ir after $CG_N2 requests − Ir after $CG_N1) / $((CG_N2 - CG_N1)), each run after $CG_WARMUP warm-up requests."
    fi
    if [ "$do_allocs" = 1 ]; then
        echo "- Allocations: \`count-allocs\` builds (alloc and realloc calls, bytes requested), h2load \`-c $CG_C -m $CG_M\`, (counted over $CG_N2 requests − over $CG_N1) / $((CG_N2 - CG_N1)), after $CG_WARMUP warm-up requests; grpc-go not counted."
    fi
    [ -z "$verdict" ] || { echo; echo "$verdict"; }
} >"$md"

echo
{
    printf '%s|%s|%s|%s|%s|%s|%s|%s|%s\n' "server" "req/s" "CPU us/req" "Ir/req" "CPU vs bare" "Ir vs bare" "Ir vs floor" "allocs/req" "bytes/req"
    for row in "${rows[@]}"; do echo "$row"; done
} | awk -F'|' '{ for (i = 1; i <= NF; i++) { c[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NR; nf = NF }
    END { for (r = 1; r <= n; r++) { line = ""; for (i = 1; i <= nf; i++) line = line sprintf(i == 1 ? "%-" w[i] "s" : "  %" w[i] "s", c[r, i]); print line } }'
echo
[ -z "$verdict" ] || echo "$verdict"
echo "Markdown: $md; per-round data: $rounds_tsv; callgrind: $out/callgrind/"
exit $status
