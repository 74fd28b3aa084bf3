#!/usr/bin/env bash
# The same payment read over REST/JSON and over gRPC, against one payments server: server
# CPU and instructions per request, and payload sizes. See --help.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-rest.sh [--quick] [--no-build] [--help]

Measures `payments` (release build, SQLite, REST served in-process on the gRPC port by
keel-gateway) answering the same call two ways:
  grpc  POST /payments.v1.PaymentService/GetPayment  (application/grpc, protobuf)
  rest  GET  /v1/payments/{payment_id}                 (JSON, through the gateway)
The load generator is h2load (nghttp2), over cleartext HTTP/2 for both.

  1. CPU time: BENCH_N requests over BENCH_C connections with BENCH_M streams each,
     BENCH_ROUNDS rounds alternating grpc and rest after a warm-up; the server's
     utime+stime from /proc per request; medians.
  2. Instructions: the server under `valgrind --tool=callgrind`, twice per way, with
     BENCH_CG_N1 and BENCH_CG_N2 requests one at a time; Ir per request = difference /
     (N2 - N1).
  3. Payload sizes: the response body of each way (JSON vs the protobuf message), and the
     request body a payment would need (ProcessRequest) in JSON and in protobuf.

The goal (issue 6): REST costs at most 1.5x gRPC per request; reported, not enforced.
Every request must succeed (2xx, grpc-status 0), or the script fails.

Environment (defaults in brackets; --quick lowers them):
  BENCH_N [50000]  BENCH_C [4]  BENCH_M [16]  BENCH_ROUNDS [5]  BENCH_WARMUP [5000]
  BENCH_CG_N1 [1000]  BENCH_CG_N2 [6000]  BENCH_OUT [bench-out]
Output: the table on stdout and as Markdown in $BENCH_OUT/rest.md.
EOF
}

root=$(cd "$(dirname "$0")/.." && pwd)
quick=0 build=1
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        --no-build) build=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done
if [ "$quick" = 1 ]; then
    : "${BENCH_N:=5000}" "${BENCH_ROUNDS:=1}" "${BENCH_WARMUP:=500}" "${BENCH_CG_N1:=200}" "${BENCH_CG_N2:=1200}"
fi
N=${BENCH_N:-50000} C=${BENCH_C:-4} M=${BENCH_M:-16} ROUNDS=${BENCH_ROUNDS:-5}
WARMUP=${BENCH_WARMUP:-5000} N1=${BENCH_CG_N1:-1000} N2=${BENCH_CG_N2:-6000}
out=${BENCH_OUT:-$root/bench-out}
mkdir -p "$out/logs"
log() { echo "[bench-rest] $*" >&2; }
die() { log "$*"; exit 1; }

for tool in h2load:nghttp2-client valgrind:valgrind curl:curl; do
    command -v "${tool%%:*}" >/dev/null || {
        log "installing ${tool#*:}"
        apt-get install -y -qq "${tool#*:}" >/dev/null 2>&1 || die "${tool%%:*} is missing and could not be installed"
    }
done
if [ "$build" = 1 ]; then
    log "cargo build --release -p payments"
    (cd "$root" && cargo build --release -q -p payments) || die "build failed"
fi
payments=$root/target/release/payments
[ -x "$payments" ] || die "$payments missing; run without --no-build"

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# start WRAPPER...: starts payments (optionally under a wrapper such as valgrind) on the
# benchmark's database; sets $pid and $addr.
start() {
    local logf=$work/server-$RANDOM.out
    (cd "$work" && exec "$@" "$payments" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --database-url "sqlite://$work/payments.db" >"$logf" 2>"$logf.err") &
    pid=$!
    pids+=("$pid")
    addr=
    for _ in $(seq 600); do
        addr=$(sed -n 's/^grpc listening on //p' "$logf")
        [ -z "$addr" ] || return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    die "payments did not start (see $logf.err)"
}
stop() {
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 600); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
}

# The data: two accounts and one payment to read back.
start env
curl -sf "$addr/v1/accounts" --json '{"accountId": "alice", "currency": "EUR"}' >/dev/null
curl -sf "$addr/v1/accounts" --json '{"accountId": "bob", "currency": "EUR"}' >/dev/null
curl -sf "$addr/v1/accounts/alice:deposit" --json '{"amountMinor": "100000", "idempotencyKey": "d1"}' >/dev/null
process_json='{"idempotencyKey":"pay-1","payerAccountId":"alice","payeeAccountId":"bob","amountMinor":"2500","currency":"EUR","description":"books"}'
payment=$(curl -sf "$addr/v1/payments" --json "$process_json")
payment_id=$(sed -n 's/.*"paymentId":"\([^"]*\)".*/\1/p' <<<"$payment")
[ -n "$payment_id" ] || die "no payment id in $payment"
rest_reply=$(curl -sf "$addr/v1/payments/$payment_id")
stop "$pid"

# GetPaymentRequest {payment_id = 1} in a gRPC frame; ProcessRequest in protobuf for the
# size comparison.
python3 - "$payment_id" "$work" <<'PY'
import struct, sys
pid, work = sys.argv[1].encode(), sys.argv[2]
def field(n, b): return bytes([n << 3 | 2, len(b)]) + b
msg = field(1, pid)
open(f"{work}/get.bin", "wb").write(b"\0" + struct.pack(">I", len(msg)) + msg)
process = (field(1, b"pay-1") + field(2, b"alice") + field(3, b"bob") + bytes([4 << 3, 0xc4, 0x13])
           + field(5, b"EUR") + field(6, b"books"))
open(f"{work}/process.bin", "wb").write(process)
PY

# run WAY N C M LOG: one h2load run; checks every request succeeded; sets $data_per.
run() {
    local way=$1 n=$2 c=$3 m=$4 logf=$5 ok s2xx data
    [ "$c" -le "$n" ] || c=$n
    if [ "$way" = grpc ]; then
        timeout 600 h2load -n "$n" -c "$c" -m "$m" -t 1 -d "$work/get.bin" \
            -H 'content-type: application/grpc' -H 'te: trailers' \
            "http://$addr/payments.v1.PaymentService/GetPayment" >"$logf" 2>&1 || die "h2load failed (see $logf)"
    else
        timeout 600 h2load -n "$n" -c "$c" -m "$m" -t 1 \
            "http://$addr/v1/payments/$payment_id" >"$logf" 2>&1 || die "h2load failed (see $logf)"
    fi
    ok=$(awk '/^requests:/ {print $8}' "$logf")
    s2xx=$(awk '/^status codes:/ {print $3}' "$logf")
    data=$(sed -n 's/.*(\([0-9]*\)) data.*/\1/p' "$logf")
    { [ "$ok" = "$n" ] && [ "$s2xx" = "$n" ]; } || die "$way: $n sent, ${ok:-?} ok, ${s2xx:-?} 2xx (see $logf)"
    data_per=$((data / n))
}
cpu_ticks() { local stat; stat=$(cat "/proc/$1/stat"); stat=${stat##*) }; awk '{print $12 + $13}' <<<"$stat"; }
clk_tck=$(getconf CLK_TCK)

declare -A cpu_rounds ir bytes
start env
run grpc "$WARMUP" "$C" "$M" "$out/logs/rest-warmup-grpc.h2load"
run rest "$WARMUP" "$C" "$M" "$out/logs/rest-warmup-rest.h2load"
for r in $(seq "$ROUNDS"); do
    for way in grpc rest; do
        before=$(cpu_ticks "$pid")
        run "$way" "$N" "$C" "$M" "$out/logs/rest-$way-round$r.h2load"
        after=$(cpu_ticks "$pid")
        bytes[$way]=$data_per
        us=$(awk -v t=$((after - before)) -v hz="$clk_tck" -v n="$N" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
        cpu_rounds[$way]+="${cpu_rounds[$way]:+ }$us"
        log "round $r/$ROUNDS $way: $us CPU us/request"
    done
done
stop "$pid"

for way in grpc rest; do
    totals=()
    for n in "$N1" "$N2"; do
        f=$out/logs/rest-$way-$n.callgrind
        start valgrind --tool=callgrind --fair-sched=yes "--callgrind-out-file=$f"
        run "$way" 200 1 1 "$out/logs/rest-cg-warmup.h2load"
        run "$way" "$n" 1 1 "$out/logs/rest-cg-$way-$n.h2load"
        stop "$pid"
        totals+=("$(awk '/^totals:/ {print $2}' "$f")")
    done
    ir[$way]=$(( (totals[1] - totals[0]) / (N2 - N1) ))
    log "$way: ${ir[$way]} Ir/request under callgrind"
done

median() { tr ' ' '\n' | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
cpu_g=$(median <<<"${cpu_rounds[grpc]}")
cpu_r=$(median <<<"${cpu_rounds[rest]}")
json_reply=${#rest_reply}
proto_reply=$((bytes[grpc] - 5))
json_process=${#process_json}
proto_process=$(stat -c %s "$work/process.bin")
table=$(awk -v cg="$cpu_g" -v cr="$cpu_r" -v ig="${ir[grpc]}" -v ir="${ir[rest]}" 'BEGIN {
    printf "| way | server CPU µs/request (median) | server Ir/request | vs gRPC (CPU) | vs gRPC (Ir) |\n|---|---:|---:|---:|---:|\n"
    printf "| gRPC `GetPayment` | %.2f | %d | 1.000x | 1.000x |\n", cg, ig
    printf "| REST `GET /v1/payments/{id}` | %.2f | %d | %.3fx | %.3fx |\n", cr, ir, cr / cg, ir / ig }')
sizes=$(awk -v jr="$json_reply" -v pr="$proto_reply" -v jp="$json_process" -v pp="$proto_process" 'BEGIN {
    printf "| message | protobuf bytes | JSON bytes | JSON / protobuf |\n|---|---:|---:|---:|\n"
    printf "| GetPaymentResponse (the reply measured) | %d | %d | %.2fx |\n", pr, jr, jr / pr
    printf "| ProcessRequest (a payment to make) | %d | %d | %.2fx |\n", pp, jp, jp / pp }')
verdict=$(awk -v cg="$cpu_g" -v cr="$cpu_r" -v ig="${ir[grpc]}" -v ir="${ir[rest]}" 'BEGIN {
    q = ir / ig; r = cr / cg
    printf "Goal REST <= 1.5x gRPC per request: instructions %.3fx (%s), CPU time %.3fx (%s).",
        q, q <= 1.5 ? "met" : "NOT met", r, r <= 1.5 ? "met" : "NOT met" }')
{
    echo "### The same payment read over REST/JSON and gRPC"
    echo
    echo "Command: \`scripts/bench-rest.sh$([ "$quick" = 1 ] && echo " --quick")\` — $(date -u '+%Y-%m-%d %H:%M UTC'), git $(git -C "$root" rev-parse --short HEAD 2>/dev/null), $(nproc) cores."
    echo
    echo "$table"
    echo
    echo "- CPU: h2load -n $N -c $C -m $M, $ROUNDS round(s) alternating; grpc: ${cpu_rounds[grpc]}; rest: ${cpu_rounds[rest]} (µs/request)."
    echo "- Instructions: callgrind, one request at a time, (Ir after $N2 − Ir after $N1) / $((N2 - N1))."
    echo
    echo "$sizes"
    echo
    echo "$verdict"
} >"$out/rest.md"
echo
echo "$table"
echo
echo "$sizes"
echo
echo "$verdict"
echo "Markdown: $out/rest.md"
