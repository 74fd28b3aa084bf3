#!/usr/bin/env bash
# What a load generator costs per call: `keel bench` against h2load, each loading bare tonic's
# Greeter (crates/bare-greeter) in alternating rounds of the same run. Issue 15 asks that
# keel bench cost at most half the server CPU per call of bare tonic.
# Run `scripts/bench-loadgen.sh --help` for what it measures; docs/BENCHMARKS.md has results.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/bench-loadgen.sh [--quick] [--no-build] [--help]

Loads bare tonic's Greeter (SayHello, name "world") with two generators in alternating
rounds: h2load (nghttp2, one thread: -n N -c C -m M) and `keel bench` (-n N, C connections,
C x M calls in flight, one current-thread runtime per core). For each run it records the generator's
CPU time (user + system, from /usr/bin/time) and the server's (from /proc/PID/stat), both
per call, and prints medians over the rounds with the ratio generator / server.

Then each generator runs under `valgrind --tool=callgrind` twice, with 2,000 and 12,000
calls, one at a time over one connection: its instructions per call are the difference
divided by 10,000 (start-up, descriptors and connecting cancel out). Unlike CPU time, this
does not move with the machine's load.

Every run must answer every call: h2load's 2xx count, keel bench's OK count.

Options:
  --quick      20k calls x 1 round
  --no-callgrind  skip the instruction counts
  --no-build   use the existing target/release binaries
  -h, --help   this text

Environment: BENCH_N [200000]  BENCH_C [4]  BENCH_M [32]  BENCH_ROUNDS [3]
             BENCH_OUT [bench-out]  (logs in $BENCH_OUT/logs/loadgen-*, table in loadgen.md)
USAGE
}

quick=0 build=1 do_cg=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --no-callgrind) do_cg=0 ;;
        --no-build) build=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$quick" = 1 ]; then d_n=20000 d_rounds=1; else d_n=200000 d_rounds=3; fi
N=${BENCH_N:-$d_n} C=${BENCH_C:-4} M=${BENCH_M:-32} ROUNDS=${BENCH_ROUNDS:-$d_rounds}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
out=${BENCH_OUT:-bench-out}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
logs=$out/logs

for tool in h2load /usr/bin/time; do command -v "$tool" >/dev/null || die "$tool not found (Debian: nghttp2-client, time)"; done
if [ "$build" = 1 ]; then
    # Apart, as scripts/bench-greeter.sh builds them: bare tonic gets no feature of keel's.
    log "cargo build --release -p bare-greeter; cargo build --release -p keel-cli"
    { cargo build --release -p bare-greeter && cargo build --release -p keel-cli; } >"$logs/loadgen-build.log" 2>&1 ||
        { tail -20 "$logs/loadgen-build.log" >&2; die "build failed (see $logs/loadgen-build.log)"; }
fi
target=${CARGO_TARGET_DIR:-$root/target}/release
if [ ! -x "$target/bare-greeter" ] || [ ! -x "$target/keel" ]; then die "binaries missing; run without --no-build"; fi

server_pid=
trap '[ -z "$server_pid" ] || kill -KILL "$server_pid" 2>/dev/null || true' EXIT
: >"$logs/loadgen-server.out" # not a previous run's "listening on" line
"$target/bare-greeter" 127.0.0.1:0 >"$logs/loadgen-server.out" 2>"$logs/loadgen-server.err" &
server_pid=$!
addr=$(wait_listening "$logs/loadgen-server.out" "grpc listening on" "$server_pid" 30) || die "bare-greeter did not start"

# bare tonic serves no reflection: keel bench reads the contract.
proto=$root/proto/helloworld/helloworld.proto
body=$out/hello-request.bin
printf '\x00\x00\x00\x00\x07\x0a\x05world' >"$body"

# cpu_of TIMEFILE: the "user system" seconds /usr/bin/time wrote, added.
cpu_of() { awk '{print $1 + $2}' "$1"; }

rounds=$out/loadgen-rounds.tsv
printf 'round\tloader\tcalls_per_s\tloader_cpu_us\tserver_cpu_us\n' >"$rounds"
log "warm-up: 20000 calls with each generator"
h2load -n 20000 -c "$C" -m "$M" -t 1 -d "$body" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$addr/helloworld.Greeter/SayHello" >"$logs/loadgen-warmup.h2load" 2>&1 || die "h2load warm-up failed"
"$target/keel" bench "$addr" helloworld.Greeter/SayHello --proto "$proto" -n 20000 -c $((C * M)) --connections "$C" \
    -d '{"name":"world"}' >"$logs/loadgen-warmup.keel" 2>&1 || die "keel bench warm-up failed"

for ((r = 1; r <= ROUNDS; r++)); do
    for loader in h2load keel; do
        t=$logs/loadgen-round$r-$loader.time
        before=$(cpu_ticks "$server_pid")
        if [ "$loader" = h2load ]; then
            /usr/bin/time -f '%U %S' -o "$t" h2load -n "$N" -c "$C" -m "$M" -t 1 -d "$body" \
                -H 'content-type: application/grpc' -H 'te: trailers' \
                "http://$addr/helloworld.Greeter/SayHello" >"$logs/loadgen-round$r.h2load" 2>&1 || die "h2load failed"
            ok=$(awk '/^status codes:/ {print $3}' "$logs/loadgen-round$r.h2load")
            rate=$(awk '/^finished in/ {print $4}' "$logs/loadgen-round$r.h2load")
        else
            /usr/bin/time -f '%U %S' -o "$t" "$target/keel" bench "$addr" helloworld.Greeter/SayHello \
                --proto "$proto" -n "$N" -c $((C * M)) --connections "$C" -d '{"name":"world"}' --format json \
                -o "$logs/loadgen-round$r.json" 2>"$logs/loadgen-round$r.keel.err" || die "keel bench failed (see $logs)"
            ok=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["status_codes"].get("OK", 0))' "$logs/loadgen-round$r.json")
            rate=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests_per_second"])' "$logs/loadgen-round$r.json")
        fi
        after=$(cpu_ticks "$server_pid")
        [ "$ok" = "$N" ] || die "$loader: $ok of $N calls answered OK"
        loader_us=$(awk -v s="$(cpu_of "$t")" -v n="$N" 'BEGIN {printf "%.3f", s * 1e6 / n}')
        server_us=$(awk -v t=$((after - before)) -v hz="$clk_tck" -v n="$N" 'BEGIN {printf "%.3f", t * 1e6 / hz / n}')
        printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$loader" "$rate" "$loader_us" "$server_us" >>"$rounds"
        log "round $r/$ROUNDS $loader: $rate calls/s, loader $loader_us CPU us/call, server $server_us"
    done
done

# cg_calls LOADER N: Ir of the generator making N calls one at a time, under callgrind.
cg_calls() {
    local f=$logs/loadgen-cg-$1-$2.out
    rm -f "$f"
    if [ "$1" = h2load ]; then
        valgrind --tool=callgrind "--callgrind-out-file=$f" h2load -n "$2" -c 1 -m 1 -t 1 -d "$body" \
            -H 'content-type: application/grpc' -H 'te: trailers' \
            "http://$addr/helloworld.Greeter/SayHello" >"$f.log" 2>&1 || die "h2load under callgrind failed (see $f.log)"
    else
        valgrind --tool=callgrind "--callgrind-out-file=$f" "$target/keel" bench "$addr" \
            helloworld.Greeter/SayHello --proto "$proto" -n "$2" -c 1 >"$f.log" 2>&1 ||
            die "keel bench under callgrind failed (see $f.log)"
    fi
    awk '/^totals:/ {print $2}' "$f"
}
declare -A ir_call=()
if [ "$do_cg" = 1 ]; then
    command -v valgrind >/dev/null || die "valgrind not found (Debian: valgrind), or pass --no-callgrind"
    for loader in h2load keel; do
        log "$loader under callgrind: 2000 and 12000 calls"
        a=$(cg_calls "$loader" 2000) b=$(cg_calls "$loader" 12000)
        ir_call[$loader]=$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.0f", (b - a) / 10000}')
        log "$loader: ${ir_call[$loader]} Ir/call"
    done
fi

median() { sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
col() { awk -F'\t' -v l="$1" -v c="$2" '$2 == l {print $c}' "$rounds" | median; }
md=$out/loadgen.md
{
    echo "| loader | calls/s | loader CPU µs/call | bare tonic server CPU µs/call | loader / server | loader Ir/call |"
    echo "|---|---:|---:|---:|---:|---:|"
    for loader in h2load keel; do
        l=$(col "$loader" 4) s=$(col "$loader" 5)
        printf '| %s | %.0f | %.2f | %.2f | %.3fx | %s |\n' "$([ "$loader" = keel ] && echo "keel bench" || echo h2load)" \
            "$(col "$loader" 3)" "$l" "$s" "$(awk -v a="$l" -v b="$s" 'BEGIN {print a / b}')" "${ir_call[$loader]:--}"
    done
    echo
    echo "Command: \`scripts/bench-loadgen.sh\` with N=$N, C=$C, M=$M, $ROUNDS round(s), $(date -u '+%Y-%m-%d %H:%M UTC'), git $(git rev-parse --short HEAD), $(nproc) cores; medians over the rounds."
} >"$md"
cat "$md"
k=$(col keel 4) s=$(col keel 5)
awk -v k="$k" -v s="$s" 'BEGIN {r = k / s; printf "Goal keel bench CPU/call <= 0.5x bare tonic server CPU/call: %.3fx (%s).\n", r, r <= 0.5 ? "met" : "NOT met"}'
