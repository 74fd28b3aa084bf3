#!/usr/bin/env bash
# Client-side cost per call: keel::client::Channel vs a plain tonic Channel, same server,
# same run. See --help.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-client.sh [--quick] [--no-build] [--help]

Measures the client's cost of a unary helloworld.Greeter/SayHello call through
keel::client::Channel (dns:/// target, round_robin, Keel's resolver, balancer and
subchannel) and through tonic's Channel (Endpoint::connect), against the same server:
crates/bare-greeter (bare tonic), started once and shared by every run.

The client is crates/keel/examples/greeter_client_bench.rs (release build):
  1. CPU time: BENCH_CLIENT_CALLS calls, BENCH_CLIENT_C at a time, BENCH_CLIENT_ROUNDS rounds
     alternating tonic and keel; the client reads its own utime+stime from /proc around the
     calls (after a warm-up). Medians are reported, with every round.
  2. Instructions: each client under `valgrind --tool=callgrind`, once with BENCH_CG_N1 and
     once with BENCH_CG_N2 calls, one at a time; Ir per call = (Ir2 - Ir1) / (N2 - N1),
     which cancels start-up, connection set-up and warm-up. Repeatable on a noisy machine.

The goal (issue 5): Keel's Channel costs at most 1.10x tonic's per call; reported, not
enforced. Exits non-zero if anything fails to build, start or complete every call.

Environment (defaults in brackets; --quick lowers them):
  BENCH_CLIENT_CALLS [100000]  BENCH_CLIENT_C [16]  BENCH_CLIENT_ROUNDS [5]
  BENCH_CG_N1 [2000]  BENCH_CG_N2 [12000]  BENCH_OUT [bench-out]

Output: the table on stdout and as Markdown in $BENCH_OUT/client.md.
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
    : "${BENCH_CLIENT_CALLS:=20000}" "${BENCH_CLIENT_ROUNDS:=1}" "${BENCH_CG_N1:=200}" "${BENCH_CG_N2:=1200}"
fi
CALLS=${BENCH_CLIENT_CALLS:-100000}
C=${BENCH_CLIENT_C:-16}
ROUNDS=${BENCH_CLIENT_ROUNDS:-5}
N1=${BENCH_CG_N1:-2000}
N2=${BENCH_CG_N2:-12000}
out=${BENCH_OUT:-$root/bench-out}
mkdir -p "$out/logs"
log() { echo "[bench-client] $*" >&2; }
die() { log "$*"; exit 1; }

command -v valgrind >/dev/null || {
    log "installing valgrind"
    apt-get install -y -qq valgrind >/dev/null 2>&1 || die "valgrind is missing and could not be installed"
}
if [ "$build" = 1 ]; then
    log "cargo build --release (bare-greeter, greeter_client_bench)"
    # Two invocations, so the server gets none of the features keel turns on in shared crates
    # (as scripts/bench-greeter.sh builds it).
    (cd "$root" && cargo build --release -q -p bare-greeter &&
        cargo build --release -q -p keel --example greeter_client_bench) ||
        die "build failed"
fi
client=$root/target/release/examples/greeter_client_bench
server=$root/target/release/bare-greeter
{ [ -x "$client" ] && [ -x "$server" ]; } || die "binaries missing; run without --no-build"

: >"$out/logs/client-server.out" # not a previous run's "listening on" line
"$server" 127.0.0.1:0 >"$out/logs/client-server.out" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    target=$(sed -n 's/^grpc listening on //p' "$out/logs/client-server.out")
    [ -z "$target" ] || break
    sleep 0.1
done
[ -n "$target" ] || die "bare-greeter did not start"

declare -A cpu_rounds ir
channels=(tonic keel)
for r in $(seq "$ROUNDS"); do
    for ch in "${channels[@]}"; do
        line=$("$client" --channel "$ch" --target "$target" --calls "$CALLS" --concurrency "$C") ||
            die "$ch client failed in round $r"
        us=$(sed -n 's/.*cpu_us_per_call=\([0-9.]*\).*/\1/p' <<<"$line")
        rps=$(sed -n 's/.*calls_per_s=\([0-9]*\).*/\1/p' <<<"$line")
        cpu_rounds[$ch]+="${cpu_rounds[$ch]:+ }$us"
        log "round $r/$ROUNDS $ch: $us CPU us/call, $rps calls/s"
    done
done
median() { tr ' ' '\n' | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

for ch in "${channels[@]}"; do
    totals=()
    for n in "$N1" "$N2"; do
        f=$out/logs/client-$ch-$n.callgrind
        valgrind --tool=callgrind --callgrind-out-file="$f" \
            "$client" --channel "$ch" --target "$target" --calls "$n" --concurrency 1 \
            >"$out/logs/client-$ch-$n.out" 2>"$out/logs/client-$ch-$n.err" ||
            die "$ch under callgrind failed (see $out/logs/client-$ch-$n.err)"
        totals+=("$(awk '/^totals:/ {print $2}' "$f")")
    done
    ir[$ch]=$(( (totals[1] - totals[0]) / (N2 - N1) ))
    log "$ch: Ir ${totals[0]} -> ${totals[1]}, ${ir[$ch]} Ir/call"
done

cpu_t=$(median <<<"${cpu_rounds[tonic]}")
cpu_k=$(median <<<"${cpu_rounds[keel]}")
table=$(awk -v ct="$cpu_t" -v ck="$cpu_k" -v it="${ir[tonic]}" -v ik="${ir[keel]}" 'BEGIN {
    printf "| client channel | CPU µs/call (median) | Ir/call | CPU vs tonic | Ir vs tonic |\n"
    printf "|---|---:|---:|---:|---:|\n"
    printf "| tonic Channel (baseline) | %.2f | %d | 1.000x | 1.000x |\n", ct, it
    printf "| keel::client::Channel | %.2f | %d | %.3fx | %.3fx |\n", ck, ik, ck / ct, ik / it
}')
verdict=$(awk -v ct="$cpu_t" -v ck="$cpu_k" -v it="${ir[tonic]}" -v ik="${ir[keel]}" 'BEGIN {
    q = ik / it; r = ck / ct
    printf "Goal keel <= 1.10x tonic per call: instructions %.3fx (%s), CPU time %.3fx (%s).",
        q, q <= 1.10 ? "met" : "NOT met", r, r <= 1.10 ? "met" : "NOT met" }')
{
    echo "### Client per-call cost: keel::client::Channel vs tonic Channel"
    echo
    echo "Command: \`scripts/bench-client.sh$([ "$quick" = 1 ] && echo " --quick")\` — $(date -u '+%Y-%m-%d %H:%M UTC'), git $(git -C "$root" rev-parse --short HEAD 2>/dev/null), $(nproc) cores."
    echo
    echo "$table"
    echo
    echo "- CPU: $CALLS calls, $C at a time, $ROUNDS round(s) alternating; tonic: ${cpu_rounds[tonic]}; keel: ${cpu_rounds[keel]} (µs/call)."
    echo "- Instructions: callgrind, one call at a time, (Ir after $N2 calls − Ir after $N1) / $((N2 - N1))."
    echo
    echo "$verdict"
} >"$out/client.md"
echo
echo "$table"
echo
echo "$verdict"
echo "Markdown: $out/client.md"
