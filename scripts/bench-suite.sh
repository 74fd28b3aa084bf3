#!/usr/bin/env bash
# Issue 15's one suite: the Greeter on the floor, bare tonic, Keel (default and
# thread-per-core) and grpc-go, loaded by h2load and by `keel bench` in alternating rounds, and
# payments `Process` over gRPC and REST, in one command and one table. Run
# `scripts/bench-suite.sh --help` for what it measures; docs/BENCHMARKS.md, "The suite", has
# the recorded tables.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-suite.sh [--quick] [--servers LIST] [--no-callgrind] [--no-allocs]
                              [--no-payments] [--no-build] [--write-docs] [--help]

One command, one run, every comparison of issue 15 side by side:

Greeter (helloworld.Greeter/SayHello, name "world"), on the servers of
scripts/bench-greeter.sh (see its --help for what each is):
  floor     crates/h2-floor, raw hyper HTTP/2 with a canned reply (the physical limit)
  bare      crates/bare-greeter, tonic's defaults (the baseline: every ratio is "vs bare")
  keel      `keel serve`, Keel's full default stack
  keel-tpc  the same, thread-per-core (`--set serving_threads=N`, N = cores)
  keel-off  the same with observability off (not in the default list)
  go        grpc-go's greeter (built by ../shared/peers/build-go-greeter.sh; skipped with
            a note if it cannot be built)

  1. Rounds: all servers run at once; after a warm-up, each round loads every server with
     h2load (-n BENCH_N -c BENCH_C -m BENCH_M, one thread) and with `keel bench` (the same
     calls: -n BENCH_N, BENCH_C connections, BENCH_C x BENCH_M in flight), the server
     order rotated and the loader order swapped from round to round, so every server sees
     the machine's noise alike. Per run: req/s; p50/p99 latency (h2load: from its
     per-request --log-file; keel bench: from its JSON report); the server's CPU time
     (utime+stime from /proc/PID/stat) per request. Medians over BENCH_ROUNDS rounds.
  2. Instructions per request: each server under callgrind, BENCH_CG_N1 and BENCH_CG_N2
     requests one at a time; (Ir2 - Ir1) / (N2 - N1), as bench-greeter.sh computes it
     (the same functions, from scripts/bench-lib.sh).
  3. Allocations per request: the `count-allocs` builds, the same two-count difference
     (grpc-go is not counted).

Payments `Process` (the release `payments` binary, SQLite on a fresh file under
$BENCH_OUT, REST served by keel-gateway on the gRPC port), accounts alice and bob created
and alice funded first:
  grpc  payments.v1.PaymentService/Process, loaded by `keel bench`
  rest  POST /v1/payments with a JSON body, loaded by `keel bench --rest`
  Each call has a fresh idempotency key ({{newUUID}}), so each moves money and commits.
  h2load cannot vary a request's body, so it would replay one key (the idempotent replay
  path, not a payment): payments are loaded by keel bench only. BENCH_PAY_N calls over
  BENCH_PAY_C connections x BENCH_PAY_M streams, alternating the two ways, BENCH_ROUNDS
  rounds. Instructions and allocations are not measured for payments ("–"): each call
  waits on a SQLite commit (an fsync), which instructions do not show, and payments has
  no count-allocs build; scripts/bench-rest.sh counts REST vs gRPC instructions on a read.

Every call must succeed (h2load: every request 2xx with the full 18-byte reply; keel
bench: every call OK), or the suite exits non-zero after reporting.

Options:
  --quick          smoke run (20k calls x 1 round, callgrind 200/1200, 2k payments): under
                   a minute once built (a full run: about 3 minutes; the first build, much
                   longer: six release builds, two of them keel)
  --servers LIST   comma-separated subset of floor,bare,keel,keel-tpc,keel-off,go
                   (default floor,bare,keel,keel-tpc,go)
  --no-callgrind   skip instructions per request
  --no-allocs      skip allocations per request and the count-allocs builds
  --no-payments    skip payments
  --no-build       use the binaries already built (and $BENCH_OUT/bin's counting builds)
  --write-docs     also put the tables, with the command, date, commit and load average,
                   between <!-- suite:begin --> and <!-- suite:end --> in docs/BENCHMARKS.md
  -h, --help       this text

Environment (defaults in brackets; --quick lowers them unless they are set):
  BENCH_N [100000]  BENCH_C [8]  BENCH_M [16]  BENCH_WARMUP [20000]  BENCH_ROUNDS [3]
  BENCH_CG_N1 [2000]  BENCH_CG_N2 [12000]  BENCH_CG_WARMUP [500]
  BENCH_PAY_N [20000]  BENCH_PAY_C [4]  BENCH_PAY_M [16]  BENCH_PAY_WARMUP [2000]
  BENCH_OUT [bench-out]    output directory
  KEEL_SERVE_ARGS []       extra arguments for `keel serve`

Output: the tables on stdout and as Markdown in $BENCH_OUT/suite.md; every run in
$BENCH_OUT/suite-rounds.tsv; logs and reports in $BENCH_OUT/logs/ (suite-*).
EOF
}

# shellcheck source=scripts/bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

quick=0 do_cg=1 do_allocs=1 do_pay=1 do_build=1 write_docs=0 servers_arg="floor,bare,keel,keel-tpc,go"
while [ $# -gt 0 ]; do
    case "$1" in
        --no-payments) do_pay=0 ;;
        --write-docs) write_docs=1 ;;
        *) greeter_option "$@"; shift $((option_args - 1)) ;;
    esac
    shift
done
[[ ",$servers_arg," != *,keel-traced,* ]] || { echo "keel-traced needs an OTLP sink: use scripts/bench-greeter.sh" >&2; exit 2; }

if [ "$quick" = 1 ]; then
    d_n=20000 d_warmup=2000 d_rounds=1 d_cg1=200 d_cg2=1200 d_cgw=100 d_pay=2000 d_payw=200
else
    d_n=100000 d_warmup=20000 d_rounds=3 d_cg1=2000 d_cg2=12000 d_cgw=500 d_pay=20000 d_payw=2000
fi
N=${BENCH_N:-$d_n} C=${BENCH_C:-8} M=${BENCH_M:-16} WARMUP=${BENCH_WARMUP:-$d_warmup}
ROUNDS=${BENCH_ROUNDS:-$d_rounds}
CG_N1=${BENCH_CG_N1:-$d_cg1} CG_N2=${BENCH_CG_N2:-$d_cg2} CG_WARMUP=${BENCH_CG_WARMUP:-$d_cgw}
CG_C=1 CG_M=1
PAY_N=${BENCH_PAY_N:-$d_pay} PAY_C=${BENCH_PAY_C:-4} PAY_M=${BENCH_PAY_M:-16}
PAY_WARMUP=${BENCH_PAY_WARMUP:-$d_payw}
KEEL_SERVE_ARGS=${KEEL_SERVE_ARGS:-}
[ "$CG_N2" -gt "$CG_N1" ] || { echo "BENCH_CG_N2 must be larger than BENCH_CG_N1" >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${BENCH_OUT:-bench-out}
mkdir -p "$out/logs" "$out/callgrind" "$out/bin"
out=$(cd "$out" && pwd)
logs=$out/logs

trap kill_started EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- tools, builds, servers
command -v h2load >/dev/null || apt_install nghttp2-client
command -v jq >/dev/null || apt_install jq
if [ "$do_cg" = 1 ] && ! command -v valgrind >/dev/null; then apt_install valgrind; fi

greeter_servers "$servers_arg"
want_any_keel=1 # keel bench is the other loader: keel is built whatever the servers
greeter_build "$do_build" "$do_allocs"
[ "$do_pay" = 0 ] || [ "$do_build" = 0 ] || cargo_release "$logs/cargo-build.log" -p payments --bins
payments_bin=${CARGO_TARGET_DIR:-$root/target}/release/payments
[ "$do_pay" = 0 ] || [ -x "$payments_bin" ] || die "$payments_bin not built"
[ "$want_go" = 0 ] || greeter_go
[ ${#servers[@]} -gt 0 ] || die "no server to benchmark"

body=$out/hello-request.bin
greeter_body
proto=$root/proto/helloworld/helloworld.proto
status=0
rounds_tsv=$out/suite-rounds.tsv
printf 'workload\tround\tloader\treq_per_s\tp50_ms\tp99_ms\tcpu_us_per_req\n' >"$rounds_tsv"

# record WORKLOAD ROUND LOADER RPS P50 P99 TICKS CALLS: one run in suite-rounds.tsv.
record() {
    local us
    us=$(awk -v t="$7" -v hz="$clk_tck" -v n="$8" 'BEGIN {printf "%.3f", t * 1e6 / hz / n}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$us" >>"$rounds_tsv"
    log "round $2/$ROUNDS $1, $3: $(fmt_int "$4") req/s, p50 $5 ms, p99 $6 ms, $us CPU us/req"
}

# keel_bench REPORT ARGS...: `keel bench ARGS --format json -o REPORT`; fails unless every
# call was OK. Sets kb_rps, kb_p50, kb_p99.
kb_rps='' kb_p50='' kb_p99=''
keel_bench() {
    local report=$1 calls ok
    shift
    "$keel_bin" bench "$@" --format json -o "$report" 2>"$report.err" ||
        { log "keel bench failed: $(tail -2 "$report.err" | tr '\n' ' ')$(jq -c '.status_codes, .errors[:3]' "$report" 2>/dev/null | tr '\n' ' ')"; return 1; }
    read -r calls ok kb_rps kb_p50 kb_p99 < <(jq -r '[.count, (.status_codes.OK // 0), .requests_per_second,
        (.latency_distribution[] | select(.percentile == 50) | .latency_ms),
        (.latency_distribution[] | select(.percentile == 99) | .latency_ms)] | @tsv' "$report")
    [ "$ok" = "$calls" ] || { log "keel bench: $ok of $calls calls OK (see $report)"; return 1; }
}

# greeter_keel_bench PORT N LOGBASE: keel bench with h2load's shape: N calls, C connections,
# C x M in flight.
greeter_keel_bench() {
    keel_bench "$3.json" "127.0.0.1:$1" helloworld.Greeter/SayHello --proto "$proto" \
        -d '{"name":"world"}' -n "$2" --connections "$C" -c $((C * M))
}

# ---------------------------------------------------------------- 1. Greeter rounds
log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
greeter_start_native
for s in "${servers[@]}"; do
    [ -z "${server_failed[$s]:-}" ] || continue
    greeter_keel_bench "${sport[$s]}" "$WARMUP" "$logs/suite-$s-warmup" || server_failed[$s]="keel bench warm-up failed"
done
k=${#servers[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    loaders=(h2load keel-bench)
    [ $((r % 2)) = 1 ] || loaders=(keel-bench h2load)
    for ((i = 0; i < k; i++)); do
        s=${servers[$(((i + r - 1) % k))]} # rotate the order from round to round
        for loader in "${loaders[@]}"; do
            [ -z "${server_failed[$s]:-}" ] || continue
            base=$logs/suite-$s-round$r-$loader
            t0=$(cpu_ticks "${spid[$s]}")
            if [ "$loader" = h2load ]; then
                h2load_run "${sport[$s]}" "$N" "$C" "$M" "$base.h2load" "$base.requests" || { server_failed[$s]="h2load calls failed"; continue; }
                rps=$h2_rps p50=$h2_p50 p99=$h2_p99
            else
                greeter_keel_bench "${sport[$s]}" "$N" "$base" || { server_failed[$s]="keel bench calls failed"; continue; }
                rps=$kb_rps p50=$kb_p50 p99=$kb_p99
            fi
            t1=$(cpu_ticks "${spid[$s]}")
            kill -0 "${spid[$s]}" 2>/dev/null || { server_failed[$s]="exited"; continue; }
            record "$s" "$r" "$loader" "$rps" "$p50" "$p99" $((t1 - t0)) "$N"
        done
    done
done
for s in "${servers[@]}"; do stop_server "${spid[$s]}" 10 || true; done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- 2, 3. Ir and allocations
live=()
for s in "${servers[@]}"; do [ -n "${server_failed[$s]:-}" ] || live+=("$s"); done
declare -A cg_failed=()
if [ "$do_cg" = 1 ]; then
    for s in "${live[@]}"; do cg_measure "$s" || cg_failed[$s]=1; done
fi
[ "$do_allocs" = 0 ] || alloc_measure "${live[@]}"

# ---------------------------------------------------------------- 4. payments
pay_failed=''
# pay_setup ADDR: alice and bob, alice funded, over REST with keel bench (one call each).
pay_setup() {
    local addr=$1 route data
    for route in "POST /v1/accounts|{\"accountId\":\"alice\",\"currency\":\"EUR\"}" \
        "POST /v1/accounts|{\"accountId\":\"bob\",\"currency\":\"EUR\"}" \
        "POST /v1/accounts/alice:deposit|{\"amountMinor\":\"1000000000000\",\"idempotencyKey\":\"suite-deposit\"}"; do
        data=${route#*|}
        keel_bench "$logs/suite-payments-setup.json" --rest "${route%%|*}" "$addr" -n 1 -c 1 -d "$data" || return 1
    done
}
# pay_load WAY ADDR N LOGBASE: N Process calls, each with a fresh idempotency key.
pay_load() {
    local way=$1 addr=$2 n=$3 base=$4
    if [ "$way" = grpc ]; then
        keel_bench "$base.json" "$addr" payments.v1.PaymentService/Process -n "$n" --connections "$PAY_C" -c $((PAY_C * PAY_M)) \
            -d '{"idempotency_key":"suite-{{newUUID}}","payer_account_id":"alice","payee_account_id":"bob","amount_minor":1,"currency":"EUR","description":"suite"}'
    else
        keel_bench "$base.json" --rest 'POST /v1/payments' "$addr" -n "$n" --connections "$PAY_C" -c $((PAY_C * PAY_M)) \
            -d '{"idempotencyKey":"suite-{{newUUID}}","payerAccountId":"alice","payeeAccountId":"bob","amountMinor":"1","currency":"EUR","description":"suite"}'
    fi
}
if [ "$do_pay" = 1 ]; then
    pay_dir=$(mktemp -d "$out/suite-sqlite.XXXXXX")
    : >"$logs/suite-payments.out" # not a previous run's "listening on" line (see start_server)
    PAYMENTS_LOG=warn "$payments_bin" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --database-url "sqlite://$pay_dir/payments.db" --set server.shutdown.drain_delay=0s \
        >"$logs/suite-payments.out" 2>"$logs/suite-payments.err" &
    pay_pid=$!
    started_pids+=("$pay_pid")
    if ! pay_addr=$(wait_listening "$logs/suite-payments.out" "grpc listening on" "$pay_pid" 60); then
        pay_failed="did not start"
    elif ! pay_setup "$pay_addr"; then
        pay_failed="account setup failed"
    else
        for way in grpc rest; do
            log "payments $way: warm-up, $PAY_WARMUP calls"
            pay_load "$way" "$pay_addr" "$PAY_WARMUP" "$logs/suite-payments-$way-warmup" || pay_failed="$way warm-up failed"
        done
        for ((r = 1; r <= ROUNDS && ${#pay_failed} == 0; r++)); do
            ways=(grpc rest)
            [ $((r % 2)) = 1 ] || ways=(rest grpc)
            for way in "${ways[@]}"; do
                t0=$(cpu_ticks "$pay_pid")
                pay_load "$way" "$pay_addr" "$PAY_N" "$logs/suite-payments-$way-round$r" || { pay_failed="$way calls failed"; break; }
                t1=$(cpu_ticks "$pay_pid")
                record "payments-$way" "$r" keel-bench "$kb_rps" "$kb_p50" "$kb_p99" $((t1 - t0)) "$PAY_N"
            done
        done
    fi
    stop_server "$pay_pid" 10 || true
    rm -rf "$pay_dir"
fi

# ---------------------------------------------------------------- report
for s in "${servers[@]}"; do
    if [ -n "${server_failed[$s]:-}" ]; then
        log "$(greeter_label "$s"): FAILED (${server_failed[$s]}; see $logs/suite-$s-* and $logs/$s-*)"
        status=1
    elif [ -n "${cg_failed[$s]:-}" ]; then
        log "$(greeter_label "$s"): FAILED under callgrind (see $logs/$s-cg*)"
        status=1
    elif [ -n "${alloc_failed[$s]:-}" ]; then
        log "$(greeter_label "$s"): FAILED counting allocations (see $logs/$s-allocs.*)"
        status=1
    fi
done
[ -z "$pay_failed" ] || { log "payments: FAILED ($pay_failed; see $logs/suite-payments*)"; status=1; }

# med WORKLOAD LOADER COLUMN: the median over the rounds (empty when there were none).
med() { awk -F'\t' -v w="$1" -v l="$2" -v c="$3" '$1 == w && $3 == l { print $c }' "$rounds_tsv" | median; }
loader_label() { [ "$1" = h2load ] && echo h2load || echo "keel bench"; }

greeter_rows=()
for s in "${servers[@]}"; do
    first=1
    for loader in h2load keel-bench; do
        rps=$(med "$s" "$loader" 4) cpu=$(med "$s" "$loader" 7)
        if [ -n "${server_failed[$s]:-}" ] && [ -z "$rps" ]; then
            greeter_rows+=("$(greeter_label "$s")|$(loader_label "$loader")|failed: ${server_failed[$s]}|-|-|-|-|-|-|-|-|-")
            continue
        fi
        if [ "$first" = 1 ]; then
            ir="$(fmt_int "${ir_req[$s]:-}")|$(ratio "${ir_req[$s]:-}" "${ir_req[bare]:-}")"
            allocs="${alloc_req[$s]:--}|$(ratio "${alloc_req[$s]:-}" "${alloc_req[bare]:-}")"
            [ "$s" != go ] || allocs="-|-"
        else # measured once per server, not per loader
            [ -z "${ir_req[$s]:-}" ] || ir="same|same"
            [ -z "${alloc_req[$s]:-}" ] || allocs="same|same"
        fi
        greeter_rows+=("$(greeter_label "$s")|$(loader_label "$loader")|$(fmt_int "$rps")|$(ratio "$rps" "$(med bare "$loader" 4)")|$(fmt_2 "$(med "$s" "$loader" 5)")|$(fmt_2 "$(med "$s" "$loader" 6)")|$(fmt_2 "$cpu")|$(ratio "$cpu" "$(med bare "$loader" 7)")|$ir|$allocs")
        first=0
    done
done
greeter_header="server|loader|req/s|req/s vs bare|p50 ms|p99 ms|CPU µs/req|CPU vs bare|Ir/req|Ir vs bare|allocs/req|allocs vs bare"

pay_rows=()
if [ "$do_pay" = 1 ]; then
    cpu_grpc=$(med payments-grpc keel-bench 7)
    for way in grpc rest; do
        name="gRPC payments.v1.PaymentService/Process"
        [ "$way" = grpc ] || name="REST POST /v1/payments (JSON, keel-gateway)"
        rps=$(med "payments-$way" keel-bench 4)
        if [ -z "$rps" ]; then pay_rows+=("$name|keel bench|failed: $pay_failed|-|-|-|-|-|-"); continue; fi
        cpu=$(med "payments-$way" keel-bench 7)
        pay_rows+=("$name|keel bench|$(fmt_int "$rps")|$(fmt_2 "$(med "payments-$way" keel-bench 5)")|$(fmt_2 "$(med "payments-$way" keel-bench 6)")|$(fmt_2 "$cpu")|$(ratio "$cpu" "$cpu_grpc")|–|–")
    done
fi
pay_header="call|loader|req/s|p50 ms|p99 ms|CPU µs/req|CPU vs gRPC|Ir/req|allocs/req"

flags=$(greeter_flags)
[ "$do_pay" = 1 ] || flags+=" --no-payments"

md=$out/suite.md
{
    echo "$(run_facts "scripts/bench-suite.sh$flags"), load average $load_before before the rounds and $load_after after (other work shares this machine: compare ratios within a run, not across runs)."
    echo
    echo "**Greeter** \`SayHello\`, every server loaded by h2load and by keel bench, $ROUNDS alternating round(s) of $N calls each (\`-c $C -m $M\`: $C connections, $((C * M)) calls in flight), medians; ratios against bare tonic under the same loader."
    echo
    { echo "$greeter_header"; echo "$greeter_header" | sed 's/[^|]*/---:/g; s/^---:/---/; s/|---:/|---/'; printf '%s\n' "${greeter_rows[@]}"; } | markdown_rows
    echo
    echo "- p50/p99: h2load's per-request log (submit to last byte), keel bench's HDR histogram. CPU: the server's utime+stime over the run / calls."
    if [ "$do_cg" = 1 ]; then
        echo "- Ir/req: callgrind, one call at a time, (Ir after $CG_N2 calls − Ir after $CG_N1) / $((CG_N2 - CG_N1)), loaded by h2load (one value per server: \"same\" on its keel bench row)."
    fi
    if [ "$do_allocs" = 1 ]; then
        echo "- allocs/req: \`count-allocs\` builds (alloc + realloc calls), the same two-count difference; grpc-go not counted."
    fi
    if [ "$do_pay" = 1 ]; then
        echo
        echo "**Payments** \`Process\` (SQLite, synchronous=FULL, fresh file), $ROUNDS alternating round(s) of $PAY_N calls each ($PAY_C connections, $((PAY_C * PAY_M)) in flight), every call a new payment (idempotency key \`{{newUUID}}\`), medians."
        echo
        { echo "$pay_header"; echo "$pay_header" | sed 's/[^|]*/---:/g; s/^---:/---/; s/|---:/|---/'; printf '%s\n' "${pay_rows[@]}"; } | markdown_rows
        echo
        echo "- Loaded by keel bench only: h2load sends one fixed body, so every call after the first would replay one idempotency key (the replay path, not a payment)."
        echo "- Ir/req and allocs/req \"–\": each call waits on a SQLite commit (fsync), which instruction counts do not show, and payments has no count-allocs build; scripts/bench-rest.sh counts REST vs gRPC instructions on \`GetPayment\`."
    fi
} >"$md"

echo
echo "Greeter SayHello ($ROUNDS round(s) x $N calls per loader, medians; ratios vs bare tonic, same loader)"
{ echo "$greeter_header"; printf '%s\n' "${greeter_rows[@]}"; } | aligned_table
if [ "$do_pay" = 1 ]; then
    echo
    echo "Payments Process ($ROUNDS round(s) x $PAY_N calls, keel bench only: see $md)"
    { echo "$pay_header"; printf '%s\n' "${pay_rows[@]}"; } | aligned_table
fi
echo
echo "Markdown: $md; every run: $rounds_tsv"

if [ "$write_docs" = 1 ]; then
    doc=$root/docs/BENCHMARKS.md
    if [ "$(grep -c -e '^<!-- suite:begin -->$' -e '^<!-- suite:end -->$' "$doc")" != 2 ]; then
        log "docs/BENCHMARKS.md has no <!-- suite:begin --> ... <!-- suite:end --> section; not written"
        status=1
    else
        awk -v md="$md" '/^<!-- suite:begin -->$/ { print; while ((getline line < md) > 0) print line; skip = 1; next }
            /^<!-- suite:end -->$/ { skip = 0 } !skip' "$doc" >"$doc.new" && mv "$doc.new" "$doc"
        log "tables written to docs/BENCHMARKS.md"
    fi
fi
exit $status
