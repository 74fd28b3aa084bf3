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

# shellcheck source=scripts/bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

quick=0 do_cg=1 do_tp=1 do_allocs=1 do_build=1 servers_arg="floor,bare,keel,keel-tpc,go"
while [ $# -gt 0 ]; do
    case "$1" in
        --no-throughput) do_tp=0 ;;
        *) greeter_option "$@"; shift $((option_args - 1)) ;;
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


trap kill_started EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- tools
command -v h2load >/dev/null || apt_install nghttp2-client
if [ "$do_cg" = 1 ] && ! command -v valgrind >/dev/null; then apt_install valgrind; fi
command -v h2load >/dev/null || die "h2load not found"

# ---------------------------------------------------------------- servers
greeter_servers "$servers_arg"
greeter_build "$do_build" "$do_allocs"

# keel-traced exports to an OTLP sink of its own (Python grpcio, from the test environment).
sink_addr=
if [ "$want_traced" = 1 ]; then
    sink_py=$root/.venv/bin/python
    if [ -x "$sink_py" ] && "$sink_py" -c 'import grpc' 2>/dev/null; then
        "$sink_py" "$root/scripts/otlp-sink.py" 127.0.0.1:0 >"$out/logs/otlp-sink.out" 2>&1 &
        started_pids+=("$!")
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

[ "$want_go" = 0 ] || greeter_go
[ ${#servers[@]} -gt 0 ] || die "no server to benchmark"

body=$out/hello-request.bin
greeter_body

status=0
declare -A cg_failed=() rps_med=() cpu_med=() cpu_all=()

# ---------------------------------------------------------------- 1. throughput and CPU
log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rounds_tsv=$out/greeter-rounds.tsv
if [ "$do_tp" = 1 ]; then
    greeter_start_native

    printf 'round\tserver\trequests\treq_per_s\tcpu_ticks\tcpu_us_per_req\n' >"$rounds_tsv"
    k=${#servers[@]}
    for ((r = 1; r <= ROUNDS; r++)); do
        for ((i = 0; i < k; i++)); do
            s=${servers[$(((i + r - 1) % k))]} # rotate the order from round to round
            [ -z "${server_failed[$s]:-}" ] || continue
            kill -0 "${spid[$s]}" 2>/dev/null || { server_failed[$s]="exited"; continue; }
            before=$(cpu_ticks "${spid[$s]}")
            if ! h2load_run "${sport[$s]}" "$N" "$C" "$M" "$out/logs/$s-round$r.h2load"; then
                server_failed[$s]="requests failed"
                continue
            fi
            kill -0 "${spid[$s]}" 2>/dev/null || { server_failed[$s]="exited"; continue; }
            after=$(cpu_ticks "${spid[$s]}")
            us=$(awk -v t=$((after - before)) -v hz="$clk_tck" -v n="$N" 'BEGIN {printf "%.3f", t * 1e6 / hz / n}')
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$s" "$N" "$h2_rps" "$((after - before))" "$us" >>"$rounds_tsv"
            log "round $r/$ROUNDS $(greeter_label "$s"): $h2_rps req/s, $us CPU us/req"
        done
    done
    for s in "${servers[@]}"; do
        stop_server "${spid[$s]}" 10 || true
        [ -z "${server_failed[$s]:-}" ] || continue
        rps_med[$s]=$(awk -v s="$s" -F'\t' '$2 == s {print $4}' "$rounds_tsv" | median)
        cpu_med[$s]=$(awk -v s="$s" -F'\t' '$2 == s {print $6}' "$rounds_tsv" | median)
        cpu_all[$s]=$(awk -v s="$s" -F'\t' '$2 == s {printf "%s%.2f", sep, $6; sep = ", "}' "$rounds_tsv")
    done
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- 2. instructions (callgrind)
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
    echo "# $(greeter_label "$s"): Ir per request by function ($([ "$inc" = yes ] && echo inclusive || echo self) cost),"
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
    echo "# Ir per request by function (self cost): $(greeter_label "$2") minus $(greeter_label "$1"); total ${ir_req[$2]} - ${ir_req[$1]} = $((ir_req[$2] - ir_req[$1]))"
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
        [ -z "${server_failed[$s]:-}" ] || continue
        if cg_measure "$s"; then
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
if [ "$do_allocs" = 1 ]; then
    live=()
    for s in "${servers[@]}"; do [ -n "${server_failed[$s]:-}" ] || live+=("$s"); done
    alloc_measure "${live[@]}"
fi

# ---------------------------------------------------------------- report
# keel-traced only counts if its spans really reached the sink.
if [ -n "$sink_addr" ]; then
    exported=$(sed -n 's/^otlp sink received \([0-9]*\) exports, \([0-9]*\) spans$/\2 spans in \1 exports/p' \
        "$out/logs/otlp-sink.out" | tail -1)
    if [ -z "$exported" ]; then
        log "$(greeter_label keel-traced): FAILED (the OTLP sink received no spans)"
        server_failed[keel-traced]="no spans exported"
    else
        log "OTLP sink received $exported"
    fi
fi
for s in "${servers[@]}"; do
    if [ -n "${server_failed[$s]:-}" ]; then
        log "$(greeter_label "$s"): FAILED (${server_failed[$s]})"
        optional "$s" || status=1
    elif [ -n "${cg_failed[$s]:-}" ]; then
        log "$(greeter_label "$s"): FAILED under callgrind (see $out/logs/$s-cg*)"
        optional "$s" || status=1
    elif [ -n "${alloc_failed[$s]:-}" ]; then
        log "$(greeter_label "$s"): FAILED counting allocations (see $out/logs/$s-allocs.*)"
        status=1
    fi
done

rows=()
for s in "${servers[@]}"; do
    if [ -n "${server_failed[$s]:-}" ]; then
        rows+=("$(greeter_label "$s")|failed: ${server_failed[$s]}|-|-|-|-|-|-|-")
        continue
    fi
    rows+=("$(greeter_label "$s")|$(fmt_int "${rps_med[$s]:-}")|$(fmt_2 "${cpu_med[$s]:-}")|$([ -z "${cg_failed[$s]:-}" ] && fmt_int "${ir_req[$s]:-}" || echo "failed")|$(ratio "${cpu_med[$s]:-}" "${cpu_med[bare]:-}")|$(ratio "${ir_req[$s]:-}" "${ir_req[bare]:-}")|$(ratio "${ir_req[$s]:-}" "${ir_req[floor]:-}")|${alloc_req[$s]:--}|$(fmt_int "${bytes_req[$s]:-}")")
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
    { [ -n "${ir_req[keel-off]:-}${cpu_med[keel-off]:-}" ] && [ -n "${ir_req[$s]:-}${cpu_med[$s]:-}" ]; } || continue
    verdict+="${verdict:+ }$(awk -v name="$(greeter_label "$s")" -v c="${cpu_med[$s]:-}" -v co="${cpu_med[keel-off]:-}" \
        -v i="${ir_req[$s]:-}" -v io="${ir_req[keel-off]:-}" 'BEGIN {
        s = "Observability goal: " name " <= 1.10x keel serve, observe off:"
        if (c != "" && co != "") { r = c / co; s = s sprintf(" CPU time %.3fx (%s)", r, r <= 1.10 ? "met" : "NOT met") }
        if (i != "" && io != "") { q = i / io; s = s sprintf("%s instructions %.3fx (%s)", (c != "" && co != "") ? "," : "", q, q <= 1.10 ? "met" : "NOT met") }
        print s "." }')"
done

flags=$(greeter_flags)
[ "$do_tp" = 1 ] || flags+=" --no-throughput"

md=$out/greeter.md
{
    echo "### Greeter unary: keel serve vs bare tonic"
    echo
    echo "$(run_facts "scripts/bench-greeter.sh$flags"), load average ${load_before} before and ${load_after} after the throughput rounds."
    echo
    echo "| server | req/s | CPU µs/req | Ir/req | CPU vs bare | Ir vs bare | Ir vs floor | allocs/req | bytes/req |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}" | markdown_rows
    echo
    [ "$do_tp" = 0 ] || echo "- Throughput and CPU: h2load \`-n $N -c $C -m $M\`, $ROUNDS round(s) per server interleaved, after $WARMUP warm-up requests; medians over the rounds. CPU is the server's utime+stime."
    for s in "${servers[@]}"; do
        [ -z "${cpu_all[$s]:-}" ] || echo "  - $(greeter_label "$s"): CPU µs/req per round: ${cpu_all[$s]}"
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
} | aligned_table
echo
[ -z "$verdict" ] || echo "$verdict"
echo "Markdown: $md; per-round data: $rounds_tsv; callgrind: $out/callgrind/"
exit $status
