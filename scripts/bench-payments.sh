#!/usr/bin/env bash
# Payments benchmark: PaymentService/Process throughput and latency of the `payments` server
# on SQLite and on PostgreSQL at fixed concurrency, driven by `payments-load` (closed loop).
# Run `scripts/bench-payments.sh --help` for what it measures and how; docs/BENCHMARKS.md has
# the recorded results.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-payments.sh [--quick] [--concurrency LIST] [--backends LIST]
                                 [--warmup S] [--duration S] [--no-build] [--help]

Measures payments.v1 PaymentService/Process on the `payments` server, one backend at a time:
  sqlite          a fresh SQLite file under $BENCH_OUT (the embedded default: WAL,
                  synchronous=FULL, one writer connection)
  postgres        a fresh PostgreSQL database payments_bench_<random> (server defaults:
                  synchronous_commit=on, one WAL flush per commit)
  postgres-delay  the same with commit_delay=200 (µs) and commit_siblings=5 set on the bench
                  database only: PostgreSQL's built-in group commit, still durable
  postgres-async  the same with synchronous_commit=off on the bench database only.
                  NOT DURABLE and NOT the production setting: a crash can lose the last
                  commits. Shown only as the ceiling that batching commits could approach.

For every backend and every concurrency in LIST, a fresh database and a fresh server
(`payments --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --database-url URL`) are
started, then `payments-load` creates 100 funded accounts and keeps CONCURRENCY Process
calls in flight over 4 HTTP/2 connections (fresh idempotency key each, random payer and
payee, 1..100 minor units) for a warm-up, then measures for the duration. Reported per run:
req/s, latency p50/p90/p99/max of the successful calls, errors by gRPC code, and CPU time
per request (utime+stime from /proc/PID/stat over the whole load run divided by every call
made, warm-up and setup included) of the payments server, of PostgreSQL (the backends of the
bench database plus the WAL writer), and of the load generator. payments-load also checks
at the end that the balances sum to the deposits, none negative.

With PostgreSQL, a second table shows PostgreSQL alone, driven by pgbench (no gRPC, no
service, a C client that costs little): scripts/pgbench/payments-per-payment.sql runs the
store's statements for one payment per transaction (16 clients, synchronous_commit on, then
off), and scripts/pgbench/payments-batch.sql commits K payments in one transaction with one
set-based statement (K = 16 and 64, one client): the shape of the store's group commit,
which sends the same rows in a few set-based statements.

The table also compares with the seed deployment's 12,400 req/s on three 4-core nodes
(12 cores): the raw ratio, and per core (req/s / 2 cores here vs 12,400 / 12 there).

Options:
  --quick             smoke run: concurrency 64, warm-up 1 s, 3 s measured
  --concurrency LIST  comma-separated concurrencies to sweep (default: 64)
  --backends LIST     comma-separated subset of sqlite,postgres,postgres-delay,postgres-async
                      (default: all four; PostgreSQL rows are skipped with a note if
                      PostgreSQL cannot be reached)
  --warmup S          warm-up seconds per run (default 3)
  --duration S        measured seconds per run (default 10)
  --no-build          use the existing target/release binaries
  --no-pgbench        skip the PostgreSQL-alone table
  -h, --help          this text

Environment:
  BENCH_OUT [bench-out]   output directory (table, raw JSON, logs, the SQLite temp dir)
  BENCH_PG [postgres://postgres@127.0.0.1:5432]  PostgreSQL server (superuser, to create
                          and drop the bench databases and set commit_delay)
  BENCH_CONNECTIONS [4]   HTTP/2 connections of the load generator
  BENCH_REV               label of the code measured (default: git describe --always --dirty)

Output: the table on stdout and as Markdown in $BENCH_OUT/payments.md; one JSON line per
run in $BENCH_OUT/payments-runs.jsonl; logs in $BENCH_OUT/logs/payments-*.

Exit status: non-zero if the build fails, a server does not start, a call fails or the
balance check fails. Passing 12,400 req/s is reported, not enforced.
EOF
}

quick=0 do_build=1 do_pgbench=1 concurrency_arg="" backends_arg="sqlite,postgres,postgres-delay,postgres-async"
warmup="" duration=""
need_value() { [ "$2" -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --no-build) do_build=0 ;;
        --no-pgbench) do_pgbench=0 ;;
        --concurrency) need_value "$1" $#; concurrency_arg=$2; shift ;;
        --concurrency=*) concurrency_arg=${1#--concurrency=} ;;
        --backends) need_value "$1" $#; backends_arg=$2; shift ;;
        --backends=*) backends_arg=${1#--backends=} ;;
        --warmup) need_value "$1" $#; warmup=$2; shift ;;
        --warmup=*) warmup=${1#--warmup=} ;;
        --duration) need_value "$1" $#; duration=$2; shift ;;
        --duration=*) duration=${1#--duration=} ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$quick" = 1 ]; then
    warmup=${warmup:-1} duration=${duration:-3} concurrency_arg=${concurrency_arg:-64}
fi
warmup=${warmup:-3} duration=${duration:-10} concurrency_arg=${concurrency_arg:-64}
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
CONNECTIONS=${BENCH_CONNECTIONS:-4}
ACCOUNTS=100
SEED_RPS=12400 SEED_CORES=12

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${BENCH_OUT:-bench-out}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
rev=${BENCH_REV:-$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)}

# shellcheck source=scripts/bench-lib.sh
. "$root/scripts/bench-lib.sh"

# ---------------------------------------------------------------- cleanup of what we started
server_pid='' sqlite_dir='' pg_db=''
# shellcheck disable=SC2317 # invoked by the trap and between runs
stop_everything() {
    if [ -n "$server_pid" ]; then
        stop_process "$server_pid"
        server_pid=''
    fi
    if [ -n "$pg_db" ]; then
        drop_pg_database "$pg_db"
        pg_db=''
    fi
    if [ -n "$sqlite_dir" ]; then
        rm -rf "$sqlite_dir"
        sqlite_dir=''
    fi
}
trap stop_everything EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- tools and binaries
command -v jq >/dev/null || {
    log "apt-get install jq"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q jq; } \
        >"$out/logs/payments-apt.log" 2>&1 || die "cannot install jq (see $out/logs/payments-apt.log)"
}
if [ "$do_build" = 1 ]; then
    log "cargo build --release -p payments --bins"
    cargo build --release -p payments --bins >"$out/logs/payments-build.log" 2>&1 ||
        { tail -30 "$out/logs/payments-build.log" >&2; die "cargo build failed (see $out/logs/payments-build.log)"; }
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
server_bin=$target_dir/release/payments
load_bin=$target_dir/release/payments-load
for bin in "$server_bin" "$load_bin"; do [ -x "$bin" ] || die "$bin not built"; done

IFS=, read -r -a backends <<<"$backends_arg"
IFS=, read -r -a concurrencies <<<"$concurrency_arg"
for b in "${backends[@]}"; do
    case "$b" in
        sqlite | postgres | postgres-delay | postgres-async) ;;
        *) die "unknown backend '$b' (sqlite, postgres, postgres-delay, postgres-async)" ;;
    esac
done
for c in "${concurrencies[@]}"; do
    [[ "$c" =~ ^[1-9][0-9]*$ ]] || die "bad concurrency '$c'"
done
pg_ok=1
psql_admin -c 'SELECT 1' >/dev/null 2>&1 || { pg_ok=0; log "PostgreSQL at $PG not reachable: PostgreSQL rows skipped"; }

label() {
    case "$1" in
        sqlite) echo "SQLite (synchronous=FULL)" ;;
        postgres) echo "PostgreSQL (defaults)" ;;
        postgres-delay) echo "PostgreSQL, commit_delay=200µs" ;;
        postgres-async) echo "PostgreSQL, synchronous_commit=off (NOT durable)" ;;
    esac
}

# ---------------------------------------------------------------- one run
results=$out/payments-runs.jsonl
: >"$results"
failed=0
# run_one BACKEND CONCURRENCY
run_one() {
    local backend=$1 c=$2 url logbase addr deadline s0 s1 pg0 pg1 json load_rc=0
    logbase=$out/logs/payments-$backend-c$c
    case "$backend" in
        sqlite)
            sqlite_dir=$(mktemp -d "$out/sqlite.XXXXXX") || return 1
            url="sqlite://$sqlite_dir/payments.db" ;;
        *)
            pg_db=$(new_pg_database payments_bench) || return 1
            case "$backend" in
                postgres-delay)
                    psql_admin -c "ALTER DATABASE \"$pg_db\" SET commit_delay = 200" \
                        -c "ALTER DATABASE \"$pg_db\" SET commit_siblings = 5" >/dev/null || return 1 ;;
                postgres-async)
                    psql_admin -c "ALTER DATABASE \"$pg_db\" SET synchronous_commit = off" >/dev/null || return 1 ;;
            esac
            url="$PG/$pg_db" ;;
    esac

    echo "$server_bin --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --database-url $url --set server.shutdown.drain_delay=0s" >"$logbase.cmd"
    : >"$logbase.out" # not a previous run's "listening on" line (see bench-lib.sh start_server)
    PAYMENTS_LOG=warn "$server_bin" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --database-url "$url" --set server.shutdown.drain_delay=0s \
        >"$logbase.out" 2>"$logbase.err" &
    server_pid=$!
    addr=$(wait_listening "$logbase.out" "grpc listening on" "$server_pid" 60) ||
        { log "payments did not start: $(tail -3 "$logbase.err" | tr '\n' ' ')"; return 1; }

    log "$(label "$backend"): concurrency $c, ${warmup} s warm-up + ${duration} s"
    s0=$(cpu_ticks "$server_pid")
    pg0=''
    [ -z "$pg_db" ] || pg0=$(pg_ticks_by_pid "$pg_db")
    "$load_bin" --target "http://$addr" --backend "$backend" --concurrency "$c" \
        --connections "$CONNECTIONS" --accounts "$ACCOUNTS" --warmup "$warmup" \
        --duration "$duration" --json >"$logbase.load.json" 2>"$logbase.load.err" || load_rc=$?
    s1=$(cpu_ticks "$server_pid")
    pg1=''
    [ -z "$pg_db" ] || pg1=$(pg_ticks_by_pid "$pg_db")
    local pg_delta=null
    if [ -n "$pg_db" ]; then
        # Per process: ticks after minus ticks before (0 for a process that is new).
        pg_delta=$(pg_ticks_delta "$pg0" "$pg1")
    fi
    stop_everything

    json=$(head -1 "$logbase.load.json")
    if [ "$load_rc" = 2 ] || [ -z "$json" ]; then
        log "payments-load failed: $(tail -3 "$logbase.load.err" | tr '\n' ' ')"
        return 1
    fi
    [ "$load_rc" = 0 ] || { log "payments-load reported failures: $json $(tail -1 "$logbase.load.err")"; failed=1; }
    jq -c --arg name "$(label "$backend")" --argjson s "$((s1 - s0))" --argjson pg "$pg_delta" \
        --argjson hz "$clk_tck" --argjson setup "$((3 * ACCOUNTS))" '
        . as $r | ($r.sent_total + $setup) as $calls
        | $r + {label: $name,
                server_cpu_us: ($s / $hz * 1e6 / $calls),
                pg_cpu_us: (if $pg == null then null else $pg / $hz * 1e6 / $calls end),
                client_cpu_us: (if $r.client_cpu_s == null then null else $r.client_cpu_s * 1e6 / $calls end)}' \
        <<<"$json" >>"$results"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for backend in "${backends[@]}"; do
    if [ "$backend" != sqlite ] && [ "$pg_ok" = 0 ]; then continue; fi
    for c in "${concurrencies[@]}"; do
        run_one "$backend" "$c" || { stop_everything; die "run $backend at concurrency $c failed (logs: $out/logs/payments-$backend-c$c.*)"; }
    done
done
[ -s "$results" ] || die "nothing was measured"

# ---------------------------------------------------------------- PostgreSQL alone (pgbench)
pgbench_md=''
# pgbench_one LABEL CLIENTS K SCRIPT [PGOPTIONS]: one pgbench run on the current $pg_db; appends
# a Markdown row to $pgbench_md.
pgbench_one() {
    local name=$1 clients=$2 k=$3 script=$4 options=${5:-} logf tps lat
    logf=$out/logs/payments-pgbench-$(echo "$name" | tr -c 'a-zA-Z0-9\n' '-').log
    PGOPTIONS=$options pgbench "$PG/$pg_db" -n -M prepared -c "$clients" -j "$(( clients < 2 ? 1 : 2 ))" \
        -T "$duration" -D "k=$k" --max-tries=20 -f "$root/scripts/pgbench/$script" >"$logf" 2>&1 ||
        { log "pgbench $name failed (see $logf)"; failed=1; return 0; }
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$logf")
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$logf")
    pgbench_md+="| $name | $clients | $k | $(printf '%.0f' "$tps") | $(awk -v t="$tps" -v k="$k" 'BEGIN { printf "%.0f", t * k }') | $lat |"$'\n'
}
if [ "$do_pgbench" = 1 ] && [ "$pg_ok" = 1 ] && [[ " ${backends[*]} " == *" postgres"* ]]; then
    command -v pgbench >/dev/null || die "pgbench not found (Debian: postgresql-client)"
    pg_db=$(new_pg_database payments_bench) || die "cannot create a bench database"
    psql "$PG/$pg_db" -v ON_ERROR_STOP=1 -Atq -f services/payments/migrations/postgres/0001_ledger.sql \
        -c "INSERT INTO accounts SELECT 'a' || g, 'EUR', 1000000000000, 0 FROM generate_series(0, 99) g" \
        >/dev/null || die "cannot load the schema into $pg_db"
    log "PostgreSQL alone (pgbench), ${duration} s per shape"
    pgbench_one "one payment per transaction (the store without group commit)" 16 1 payments-per-payment.sql
    pgbench_one "the same, synchronous_commit=off (NOT durable)" 16 1 payments-per-payment.sql "-c synchronous_commit=off"
    pgbench_one "16 payments per transaction, one statement" 1 16 payments-batch.sql
    pgbench_one "64 payments per transaction, one statement" 1 64 payments-batch.sql
    stop_everything
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- table
md=$out/payments.md
{
    echo "Measured with \`scripts/bench-payments.sh\` at $rev on $(nproc) cores; load average $load_before before, $load_after after; ${warmup} s warm-up + ${duration} s measured per run, $CONNECTIONS connections, $ACCOUNTS accounts."
    echo
    echo "| backend | concurrency | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | server CPU µs/req | PostgreSQL CPU µs/req | load generator CPU µs/req | vs 12,400 req/s | per core vs seed |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"
    jq -r --argjson seed "$SEED_RPS" --argjson seed_cores "$SEED_CORES" --argjson cores "$(nproc)" '
        def f(n): if n == null then "–" else (n * 10 | round / 10 | tostring) end;
        def f2(n): (n * 100 | round / 100 | tostring);
        "| \(.label) | \(.concurrency) | \(.rps | round) | \(f2(.p50_ms)) | \(f2(.p90_ms)) | \(f2(.p99_ms)) | \(f2(.max_ms)) | \(if (.errors | length) == 0 then "0" else (.errors | to_entries | map("\(.key) \(.value)") | join(", ")) end)\(if .balances_ok then "" else ", BALANCES WRONG" end) | \(f(.server_cpu_us)) | \(f(.pg_cpu_us)) | \(f(.client_cpu_us)) | \(f2(.rps / $seed))x | \(f2((.rps / $cores) / ($seed / $seed_cores)))x |"' \
        "$results"
    if [ -n "$pgbench_md" ]; then
        echo
        echo "PostgreSQL alone, driven by pgbench (no gRPC, no service; same schema, 100 accounts, ${duration} s per shape):"
        echo
        echo "| shape | clients | payments per transaction | transactions/s | payments/s | latency avg ms |"
        echo "|---|---:|---:|---:|---:|---:|"
        printf '%s' "$pgbench_md"
    fi
} >"$md"
echo
cat "$md"
echo
log "table written to $md; raw results in $results"
[ "$failed" = 0 ] || die "some calls failed or the balance check did not hold (see above)"
