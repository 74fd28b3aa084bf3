#!/usr/bin/env bash
# Zero-copy `bytes` fields (issue 15): `keel serve` with every proto `bytes` field generated
# as `bytes::Bytes` (keel-build's default) against the same server built with `Vec<u8>`
# (KEEL_BUILD_BYTES=vec), on grpc.testing.TestService/UnaryCall with 1 KiB and 64 KiB bodies.
# Run `scripts/bench-bytes.sh --help` for what it measures; docs/BENCHMARKS.md has results.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/bench-bytes.sh [--quick] [--sizes LIST] [--no-callgrind] [--no-throughput]
                              [--no-allocs] [--no-build] [--help]

Sends grpc.testing.TestService/UnaryCall requests whose Payload.body has SIZE bytes and
response_size 0 (the answer is a 2-byte SimpleResponse: only the request is large) to two
builds of `keel serve` (Keel's full default stack):
  vec    KEEL_BUILD_BYTES=vec: bytes fields generated as Vec<u8>, copied out of tonic's
         receive buffer (before)
  bytes  keel-build's default: bytes fields generated as bytes::Bytes, sliced from it (after)
Each build is made with and without the `count-allocs` feature and copied to $BENCH_OUT/bin/
(the last build leaves the default, Bytes, in target/release).

Three measurements, per size and build:
  1. Instructions (the primary result): the server under `valgrind --tool=callgrind`, after
     BENCH_CG_WARMUP calls, with BENCH_CG_N1 and then BENCH_CG_N2 calls (one connection,
     one stream); Ir per call = (Ir2 - Ir1) / (N2 - N1), which cancels start-up, warm-up
     and shutdown.
  2. Allocations (primary too): the count-allocs build (system allocator, counted), natively:
     warm-up, snapshot, N1 calls, snapshot, N2 calls, snapshot; allocations (alloc and
     realloc calls) and bytes requested per call = (second difference - first) / (N2 - N1).
  3. Throughput and CPU (noisy on a shared machine): both builds run at once; after
     BENCH_WARMUP calls each, h2load sends BENCH_N calls over BENCH_C connections with
     BENCH_M streams each, alternating between the builds for BENCH_ROUNDS rounds; h2load's
     req/s and the server's CPU time (utime + stime) per call, medians over the rounds.

Every h2load run must answer every call with a 2xx and the 2-byte SimpleResponse.

Options:
  --quick          short smoke run (5k calls x 1 round, callgrind 200/1200 calls)
  --sizes LIST     comma-separated request body sizes in bytes (default 1024,65536)
  --no-callgrind   skip the instruction counts
  --no-throughput  skip the throughput and CPU rounds
  --no-allocs      skip the allocation counts and the count-allocs builds
  --no-build       use the binaries already in $BENCH_OUT/bin/
  -h, --help       this text

Environment (defaults in brackets; --quick lowers them unless they are set):
  BENCH_N [50000]  BENCH_C [8]  BENCH_M [16]  BENCH_WARMUP [5000]  BENCH_ROUNDS [5]
  BENCH_CG_N1 [1000]  BENCH_CG_N2 [6000]  BENCH_CG_WARMUP [300]
  BENCH_OUT [bench-out]  (logs in $BENCH_OUT/logs/bytes-*, table in $BENCH_OUT/bytes.md)
USAGE
}

quick=0 build=1 do_cg=1 do_tp=1 do_allocs=1 sizes_arg=1024,65536
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --sizes) [ $# -ge 2 ] || { echo "--sizes needs a value" >&2; exit 2; }; sizes_arg=$2; shift ;;
        --sizes=*) sizes_arg=${1#--sizes=} ;;
        --no-callgrind) do_cg=0 ;;
        --no-throughput) do_tp=0 ;;
        --no-allocs) do_allocs=0 ;;
        --no-build) build=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$quick" = 1 ]; then
    d_n=5000 d_warmup=1000 d_rounds=1 d_cg1=200 d_cg2=1200 d_cgw=100
else
    d_n=50000 d_warmup=5000 d_rounds=5 d_cg1=1000 d_cg2=6000 d_cgw=300
fi
N=${BENCH_N:-$d_n} C=${BENCH_C:-8} M=${BENCH_M:-16} WARMUP=${BENCH_WARMUP:-$d_warmup}
ROUNDS=${BENCH_ROUNDS:-$d_rounds} CG_N1=${BENCH_CG_N1:-$d_cg1} CG_N2=${BENCH_CG_N2:-$d_cg2}
CG_WARMUP=${BENCH_CG_WARMUP:-$d_cgw}
IFS=, read -r -a sizes <<<"$sizes_arg"
for size in "${sizes[@]}"; do
    [[ "$size" =~ ^[0-9]+$ ]] || { echo "--sizes: '$size' is not a number of bytes" >&2; exit 2; }
done
[ "$CG_N2" -gt "$CG_N1" ] || { echo "BENCH_CG_N2 must be larger than BENCH_CG_N1" >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
out=${BENCH_OUT:-bench-out}
mkdir -p "$out/logs" "$out/bin" "$out/callgrind"
out=$(cd "$out" && pwd)
logs=$out/logs
builds=(vec bytes)

command -v h2load >/dev/null || die "h2load not found (Debian: nghttp2-client)"
[ "$do_cg" = 0 ] || command -v valgrind >/dev/null || die "valgrind not found (Debian: valgrind), or pass --no-callgrind"

# ---------------------------------------------------------------- builds
# Changing KEEL_BUILD_BYTES re-runs the build scripts of the crates whose contracts have bytes
# fields (keel-interop) and rebuilds what depends on them; the rest stays compiled.
if [ "$build" = 1 ]; then
    for b in "${builds[@]}"; do
        for features in $([ "$do_allocs" = 0 ] || echo count-allocs) ''; do
            log "KEEL_BUILD_BYTES=$b cargo build --release -p keel-cli${features:+ --features $features}"
            KEEL_BUILD_BYTES=$b cargo build --release -p keel-cli ${features:+--features "$features"} \
                >>"$logs/bytes-build.log" 2>&1 ||
                { tail -30 "$logs/bytes-build.log" >&2; die "build failed (see $logs/bytes-build.log)"; }
            cp "${CARGO_TARGET_DIR:-$root/target}/release/keel" "$out/bin/keel-$b${features:+-$features}"
        done
    done
fi
for b in "${builds[@]}"; do
    [ -x "$out/bin/keel-$b" ] || die "$out/bin/keel-$b missing; run without --no-build"
    [ "$do_allocs" = 0 ] || [ -x "$out/bin/keel-$b-count-allocs" ] ||
        die "$out/bin/keel-$b-count-allocs missing; run without --no-build (or with --no-allocs)"
done

# ---------------------------------------------------------------- servers and load
pids=()
# shellcheck disable=SC2317 # invoked by the trap
cleanup() { local p; for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server BINARY LOGBASE [CALLGRIND_OUT]: `keel serve` on ephemeral ports; sets
# $server_pid and $server_addr.
server_pid='' server_addr=''
start_server() {
    local cmd=("$1" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --set shutdown.drain_delay=0s)
    [ -z "${3:-}" ] || cmd=(valgrind --tool=callgrind --fair-sched=yes "--callgrind-out-file=$3" "${cmd[@]}")
    : >"$2.out" # not a previous run's "listening on" line (see bench-lib.sh start_server)
    "${cmd[@]}" >"$2.out" 2>"$2.err" &
    server_pid=$!
    pids+=("$server_pid")
    server_addr=$(wait_listening "$2.out" "grpc listening on" "$server_pid" 180) ||
        die "server did not start (see $2.err)"
}

# stop_server: SIGTERM to $server_pid, SIGKILL after 120 s (callgrind writes its profile on
# the way out, slowly).
stop_server() {
    local p keep=() deadline=$((SECONDS + 120))
    kill -TERM "$server_pid" 2>/dev/null || true
    while kill -0 "$server_pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    for p in "${pids[@]}"; do [ "$p" = "$server_pid" ] || keep+=("$p"); done
    pids=("${keep[@]}")
}

# Request bodies: a gRPC frame (flag 0, big-endian length) around SimpleRequest{payload:
# Payload{body: SIZE bytes of 'x'}}. The answer to each is a 7-byte frame: SimpleResponse
# {payload: Payload{}} (response_size 0) = field 1, length 0.
REPLY_BYTES=7
for size in "${sizes[@]}"; do
    python3 - "$size" "$out/bytes-request-$size.bin" <<'PY'
import struct, sys

def varint(n):
    out = bytearray()
    while True:
        if n < 0x80:
            return bytes(out + bytes([n]))
        out.append(n & 0x7F | 0x80)
        n >>= 7

size, path = int(sys.argv[1]), sys.argv[2]
payload = b"\x12" + varint(size) + b"x" * size
message = b"\x1a" + varint(len(payload)) + payload
open(path, "wb").write(b"\x00" + struct.pack(">I", len(message)) + message)
PY
done

# h2load_run ADDR SIZE N C M LOGFILE: N calls; fails unless every one was answered in full.
# Sets $h2_rps.
h2_rps=
h2load_run() {
    local addr=$1 size=$2 n=$3 c=$4 m=$5 logf=$6 ok s2xx data
    [ "$c" -le "$n" ] || c=$n
    timeout --kill-after=5 600 h2load -n "$n" -c "$c" -m "$m" -t 1 -d "$out/bytes-request-$size.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://$addr/grpc.testing.TestService/UnaryCall" >"$logf" 2>&1 || die "h2load failed (see $logf)"
    ok=$(awk '/^requests:/ {print $8}' "$logf")
    s2xx=$(awk '/^status codes:/ {print $3}' "$logf")
    data=$(sed -n 's/.*(\([0-9]*\)) data.*/\1/p' "$logf")
    h2_rps=$(awk '/^finished in/ {print $4}' "$logf")
    { [ "$ok" = "$n" ] && [ "$s2xx" = "$n" ] && [ "$data" = "$((n * REPLY_BYTES))" ]; } ||
        die "calls failed: $n sent, ${ok:-?} succeeded, ${s2xx:-?} 2xx, ${data:-?} data bytes (want $((n * REPLY_BYTES))); see $logf"
}

median() { sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
declare -A ir=() allocs=() alloc_bytes=() rps=() cpu=() cpu_all=()
log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- 1. instructions
if [ "$do_cg" = 1 ]; then
    for size in "${sizes[@]}"; do
        for b in "${builds[@]}"; do
            declare -A total=()
            for n in "$CG_N1" "$CG_N2"; do
                base=$logs/bytes-cg-$b-$size-$n
                profile=$out/callgrind/bytes-$b-$size-$n.out
                rm -f "$profile"
                start_server "$out/bin/keel-$b" "$base" "$profile"
                h2load_run "$server_addr" "$size" "$CG_WARMUP" 1 1 "$base-warmup.h2load"
                h2load_run "$server_addr" "$size" "$n" 1 1 "$base.h2load"
                stop_server
                total[$n]=$(awk '/^totals:/ {print $2}' "$profile")
                [ -n "${total[$n]}" ] || die "no totals in $profile (see $base.err)"
            done
            ir[$size,$b]=$(awk -v a="${total[$CG_N1]}" -v b="${total[$CG_N2]}" -v d=$((CG_N2 - CG_N1)) \
                'BEGIN {printf "%.0f", (b - a) / d}')
            log "callgrind, $size-byte bodies, $b: Ir ${total[$CG_N1]} -> ${total[$CG_N2]}, ${ir[$size,$b]} Ir/call"
        done
    done
fi

# ---------------------------------------------------------------- 2. allocations
# snapshot PID ERRFILE: SIGUSR1, then the totals line it prints; sets $snap ("allocs bytes").
snap=
snapshot() {
    local before deadline=$((SECONDS + 10))
    before=$(grep -c '^alloc-count ' "$2" || true)
    kill -USR1 "$1"
    while [ "$(grep -c '^alloc-count ' "$2" || true)" -le "$before" ]; do
        [ $SECONDS -lt $deadline ] || die "no alloc-count line in $2 10 s after SIGUSR1"
        sleep 0.05
    done
    snap=$(grep '^alloc-count ' "$2" | tail -1 |
        sed -n 's/^alloc-count allocations=\([0-9]*\) reallocations=\([0-9]*\) bytes=\([0-9]*\)$/\1 \2 \3/p' |
        awk '{print $1 + $2, $3}')
    [ -n "$snap" ] || die "unreadable alloc-count line in $2"
}
if [ "$do_allocs" = 1 ]; then
    for b in "${builds[@]}"; do
        base=$logs/bytes-allocs-$b
        start_server "$out/bin/keel-$b-count-allocs" "$base"
        for size in "${sizes[@]}"; do
            h2load_run "$server_addr" "$size" "$CG_WARMUP" 1 1 "$base-$size-warmup.h2load"
            snapshot "$server_pid" "$base.err"
            s0=$snap
            h2load_run "$server_addr" "$size" "$CG_N1" 1 1 "$base-$size-$CG_N1.h2load"
            snapshot "$server_pid" "$base.err"
            s1=$snap
            h2load_run "$server_addr" "$size" "$CG_N2" 1 1 "$base-$size-$CG_N2.h2load"
            snapshot "$server_pid" "$base.err"
            read -r "allocs[$size,$b]" "alloc_bytes[$size,$b]" < <(echo "$s0 $s1 $snap" |
                awk -v d=$((CG_N2 - CG_N1)) '{printf "%.1f %.0f\n", (($5 - $3) - ($3 - $1)) / d, (($6 - $4) - ($4 - $2)) / d}')
            log "allocations, $size-byte bodies, $b: ${allocs[$size,$b]} allocations, ${alloc_bytes[$size,$b]} bytes per call"
        done
        stop_server
    done
fi

# ---------------------------------------------------------------- 3. throughput and CPU
rounds=$out/bytes-rounds.tsv
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
if [ "$do_tp" = 1 ]; then
    declare -A spid=() saddr=()
    for b in "${builds[@]}"; do
        start_server "$out/bin/keel-$b" "$logs/bytes-native-$b"
        spid[$b]=$server_pid saddr[$b]=$server_addr
    done
    printf 'size\tround\tbuild\treq_per_s\tcpu_us_per_call\n' >"$rounds"
    for size in "${sizes[@]}"; do
        for b in "${builds[@]}"; do
            h2load_run "${saddr[$b]}" "$size" "$WARMUP" "$C" "$M" "$logs/bytes-native-$b-$size-warmup.h2load"
        done
        for ((r = 1; r <= ROUNDS; r++)); do
            order=("${builds[@]}")
            [ $((r % 2)) = 1 ] || order=("${builds[1]}" "${builds[0]}")
            for b in "${order[@]}"; do
                before=$(cpu_ticks "${spid[$b]}")
                h2load_run "${saddr[$b]}" "$size" "$N" "$C" "$M" "$logs/bytes-native-$b-$size-round$r.h2load"
                after=$(cpu_ticks "${spid[$b]}")
                us=$(awk -v t=$((after - before)) -v hz="$clk_tck" -v n="$N" 'BEGIN {printf "%.3f", t * 1e6 / hz / n}')
                printf '%s\t%s\t%s\t%s\t%s\n' "$size" "$r" "$b" "$h2_rps" "$us" >>"$rounds"
                log "round $r/$ROUNDS, $size-byte bodies, $b: $h2_rps req/s, $us CPU us/call"
            done
        done
        for b in "${builds[@]}"; do
            rps[$size,$b]=$(awk -F'\t' -v s="$size" -v b="$b" '$1 == s && $3 == b {print $4}' "$rounds" | median)
            cpu[$size,$b]=$(awk -F'\t' -v s="$size" -v b="$b" '$1 == s && $3 == b {print $5}' "$rounds" | median)
            cpu_all[$size,$b]=$(awk -F'\t' -v s="$size" -v b="$b" '$1 == s && $3 == b {printf "%s%.2f", sep, $5; sep = ", "}' "$rounds")
        done
    done
    for b in "${builds[@]}"; do server_pid=${spid[$b]}; stop_server; done
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
num() { if [ -n "${1:-}" ]; then printf "%.${2:-0}f" "$1"; else echo "-"; fi; }
ratio() { if [ -n "${1:-}" ] && [ -n "${2:-}" ]; then awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3fx", a / b}'; else echo "-"; fi; }
human() { if [ "$1" -ge 1024 ] && [ $(($1 % 1024)) = 0 ]; then echo "$(($1 / 1024)) KiB"; else echo "$1 B"; fi; }
git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")
[ -z "$(git status --porcelain 2>/dev/null | head -1)" ] || git_rev="$git_rev (with uncommitted changes)"
cmdline=
for v in $(compgen -v BENCH_); do cmdline+="$v=${!v} "; done
cmdline+="scripts/bench-bytes.sh$([ "$quick" = 0 ] || echo " --quick")"
[ "$sizes_arg" = 1024,65536 ] || cmdline+=" --sizes $sizes_arg"
md=$out/bytes.md
{
    echo "| request body | bytes fields | Ir/call | allocs/call | bytes allocated/call | req/s | CPU µs/call |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    for size in "${sizes[@]}"; do
        for b in "${builds[@]}"; do
            printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$(human "$size")" \
                "$([ "$b" = vec ] && echo "Vec<u8> (before)" || echo "Bytes (after)")" "$(num "${ir[$size,$b]:-}")" \
                "$(num "${allocs[$size,$b]:-}" 1)" "$(num "${alloc_bytes[$size,$b]:-}")" "$(num "${rps[$size,$b]:-}")" \
                "$(num "${cpu[$size,$b]:-}" 2)"
        done
        printf '| %s | **after ÷ before** | **%s** | %s | %s | **%s** | %s |\n' "$(human "$size")" \
            "$(ratio "${ir[$size,bytes]:-}" "${ir[$size,vec]:-}")" "$(ratio "${allocs[$size,bytes]:-}" "${allocs[$size,vec]:-}")" \
            "$(ratio "${alloc_bytes[$size,bytes]:-}" "${alloc_bytes[$size,vec]:-}")" \
            "$(ratio "${rps[$size,bytes]:-}" "${rps[$size,vec]:-}")" "$(ratio "${cpu[$size,bytes]:-}" "${cpu[$size,vec]:-}")"
    done
    echo
    echo "Command: \`$cmdline\` — $(date -u '+%Y-%m-%d %H:%M UTC'), git $git_rev, $(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo))."
    [ "$do_cg" = 0 ] || echo "- Instructions: callgrind, one connection, one stream, (Ir after $CG_N2 calls − Ir after $CG_N1) / $((CG_N2 - CG_N1)), after $CG_WARMUP warm-up calls."
    [ "$do_allocs" = 0 ] || echo "- Allocations: count-allocs builds (system allocator; alloc and realloc calls, bytes requested), one connection, one stream, (over $CG_N2 calls − over $CG_N1) / $((CG_N2 - CG_N1))."
    if [ "$do_tp" = 1 ]; then
        echo "- Throughput and CPU: h2load \`-n $N -c $C -m $M\`, $ROUNDS alternating round(s) per size after $WARMUP warm-up calls, medians; load average $load_before before, $load_after after."
        for size in "${sizes[@]}"; do
            for b in "${builds[@]}"; do echo "  - $(human "$size"), $b: CPU µs/call per round: ${cpu_all[$size,$b]}"; done
        done
    fi
} >"$md"
echo
cat "$md"
echo
echo "Markdown: $md; callgrind profiles: $out/callgrind/; logs: $logs/bytes-*"
