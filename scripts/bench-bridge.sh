#!/usr/bin/env bash
# Bridge benchmark: device payments over MQTT through `keel bridge` to committed payments on
# PostgreSQL, for each log backend, next to direct gRPC Process on the same PostgreSQL, in one
# run. Run `scripts/bench-bridge.sh --help` for what it measures; docs/BENCHMARKS.md has the
# recorded results.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-bridge.sh [--quick] [--backends LIST] [--devices N] [--requests N]
                               [--concurrency C] [--paced-rate R] [--paced-requests N]
                               [--no-build] [--help]

Measures the device path of the payments reference system, one run per log backend:

  devices (payments-devices, one MQTT 5 connection each, QoS 1)
    -> Mosquitto (a private broker started for the run)
    -> keel bridge (ingest: PUBACK after the log has the request;
                    deliver: at most C calls in flight, one per device at a time)
    -> payments (Process, on a fresh PostgreSQL database) -> the outcome back over MQTT

and, as the baseline, the same payments server called directly: payments-load keeping C
Process calls in flight (closed loop, 3 s warm-up, 10 s measured, 100 accounts).

Backends (log between the bridge's stages):
  embedded   the default: a SQLite file under $BENCH_OUT
  jetstream  NATS JetStream: a private nats-server -js on a free port, store under $BENCH_OUT
  kafka      Kafka protocol: a private tansu broker on a free port, store under $BENCH_OUT
             (skipped with a note when tansu is not installed; scripts/test.sh installs it)

Per backend, two runs of payments-devices against one bridge:
  saturated  --requests requests published as fast as the broker takes them, no resends:
             throughput = first outcomes per second from the first publish to the last
             outcome, which is what the pipeline sustains (the latency of this run is mostly
             queueing, so it is not reported)
  paced      --paced-requests requests at --paced-rate publishes per second: latency from a
             request's first publish to its outcome, p50/p90/p99/max
Both end with the simulator's ledger check (every acknowledged request has exactly one
payment, balances exact); a failed check fails the benchmark.

CPU per message: utime+stime from /proc/PID/stat over the saturated run, divided by its
requests, for the bridge, Mosquitto, the log's broker (nats-server, tansu; the embedded log
is inside the bridge), payments and PostgreSQL (the bench database's backends and the WAL
writer). For the direct run, per call, as scripts/bench-payments.sh does.

Options:
  --quick               smoke run: 2,000 saturated and 1,000 paced requests, 1 + 3 s direct
  --backends LIST       comma-separated subset of embedded,jetstream,kafka (default: all)
  --devices N           simulated devices (default 128; each has one request in flight in
                        the deliver stage at a time, so keep N above C)
  --requests N          requests in the saturated run (default 20000)
  --concurrency C       the deliver stage's max in flight and the direct baseline's
                        concurrency (default 64)
  --paced-rate R        publishes per second in the paced run (default 1000)
  --paced-requests N    requests in the paced run (default 5000)
  --no-build            use the existing target/release binaries
  -h, --help            this text

Environment:
  BENCH_OUT [bench-out]  output directory (table, raw JSON, logs, stores)
  BENCH_PG [postgres://postgres@127.0.0.1:5432]  PostgreSQL server (superuser, to create and
                         drop the bench databases)
  BENCH_REV              label of the code measured (default: git describe --always --dirty)

Output: the tables on stdout and as Markdown in $BENCH_OUT/bridge.md; one JSON line per run
in $BENCH_OUT/bridge-runs.jsonl; logs in $BENCH_OUT/logs/bridge-*.

Exit status: non-zero if the build fails, a process does not start, or a run's ledger check
fails (the other backends are still measured and tabled). Reaching 0.8x of the direct throughput is reported, not enforced.
EOF
}

quick=0 do_build=1 backends_arg="embedded,jetstream,kafka"
devices=128 requests="" concurrency=64 paced_rate=1000 paced_requests=""
need_value() { [ "$2" -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --no-build) do_build=0 ;;
        --backends) need_value "$1" $#; backends_arg=$2; shift ;;
        --devices) need_value "$1" $#; devices=$2; shift ;;
        --requests) need_value "$1" $#; requests=$2; shift ;;
        --concurrency) need_value "$1" $#; concurrency=$2; shift ;;
        --paced-rate) need_value "$1" $#; paced_rate=$2; shift ;;
        --paced-requests) need_value "$1" $#; paced_requests=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$quick" = 1 ]; then
    requests=${requests:-2000} paced_requests=${paced_requests:-1000} warmup=1 duration=3
fi
requests=${requests:-20000} paced_requests=${paced_requests:-5000} warmup=${warmup:-3} duration=${duration:-10}
for n in "$devices" "$requests" "$concurrency" "$paced_rate" "$paced_requests"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bad number '$n' (see --help)" >&2; exit 2; }
done
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
SEED_RPS=12400 SEED_CORES=12

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/bench-lib.sh
. "$root/scripts/bench-lib.sh"
out=${BENCH_OUT:-bench-out}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
rev=${BENCH_REV:-$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)}

IFS=, read -r -a backends <<<"$backends_arg"
for b in "${backends[@]}"; do
    case "$b" in
        embedded | jetstream | kafka) ;;
        *) die "unknown backend '$b' (embedded, jetstream, kafka)" ;;
    esac
done

# ---------------------------------------------------------------- cleanup of what we started
pids=() pg_db='' work=''
# shellcheck disable=SC2317 # invoked by the trap and between runs
stop_everything() {
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_process "${pids[$i]}"; done
    pids=()
    if [ -n "$pg_db" ]; then
        drop_pg_database "$pg_db"
        pg_db=''
    fi
    if [ -n "$work" ]; then
        rm -rf "$work"
        work=''
    fi
}
trap stop_everything EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- tools and binaries
for tool in jq curl psql mosquitto nats-server; do
    command -v "$tool" >/dev/null || die "$tool not found (scripts/test.sh installs what the tests need)"
done
psql_admin -c 'SELECT 1' >/dev/null 2>&1 || die "PostgreSQL at $PG not reachable"
if [ "$do_build" = 1 ]; then
    log "cargo build --release --bin keel --bin payments --bin payments-load --bin payments-devices"
    cargo build --release --bin keel --bin payments --bin payments-load --bin payments-devices \
        >"$out/logs/bridge-build.log" 2>&1 ||
        { tail -30 "$out/logs/bridge-build.log" >&2; die "cargo build failed (see $out/logs/bridge-build.log)"; }
fi
bin=${CARGO_TARGET_DIR:-$root/target}/release
for b in keel payments payments-load payments-devices; do
    [ -x "$bin/$b" ] || die "$bin/$b not built"
done

# ---------------------------------------------------------------- the pieces of a run
# start_payments LOGBASE: a fresh database and a payments server on it; sets payments_addr.
start_payments() {
    local logbase=$1
    pg_db=$(new_pg_database bridge_bench) || return 1
    : >"$logbase.payments.out" # not a previous run's "listening on" line (see bench-lib.sh start_server)
    PAYMENTS_LOG=warn "$bin/payments" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --database-url "$PG/$pg_db" --set server.shutdown.drain_delay=0s \
        >"$logbase.payments.out" 2>"$logbase.payments.err" &
    payments_pid=$!
    pids+=("$payments_pid")
    payments_addr=$(wait_listening "$logbase.payments.out" "grpc listening on" "$payments_pid" 60)
}

# start_mosquitto: a private broker on a free port; sets mqtt_port, mosquitto_pid. Queues are
# sized for the saturated run: a persistent session may hold every request the bridge has
# not taken yet (Mosquitto's default of 1000 queued messages would drop the rest).
start_mosquitto() {
    mqtt_port=$(free_port)
    cat >"$work/mosquitto.conf" <<CONF
listener $mqtt_port 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 1000000
max_inflight_messages 0
CONF
    mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
    mosquitto_pid=$!
    pids+=("$mosquitto_pid")
    local deadline=$((SECONDS + 20))
    until (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null; do
        kill -0 "$mosquitto_pid" 2>/dev/null || { log "mosquitto exited: $(cat "$work/mosquitto.log")"; return 1; }
        [ $SECONDS -lt $deadline ] || { log "mosquitto not listening after 20 s"; return 1; }
        sleep 0.1
    done
}

# start_log_broker BACKEND: the log's own broker, if it has one; sets log_pid (empty for the
# embedded log) and log_section, the bridge's [log] settings.
start_log_broker() {
    local port deadline
    log_pid=''
    case "$1" in
        embedded)
            log_section=$'[log]\nbackend = "embedded"\n\n[log.embedded]\npath = "'"$work"'/log.db"'
            return 0 ;;
        jetstream)
            port=$(free_port)
            nats-server -a 127.0.0.1 -p "$port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
            log_section=$'[log]\nbackend = "jetstream"\n\n[log.jetstream]\nurl = "nats://127.0.0.1:'"$port"'"' ;;
        kafka)
            port=$(free_port)
            mkdir -p "$work/kafka"
            (cd "$work/kafka" && exec tansu broker --listener-url "tcp://127.0.0.1:$port" \
                --advertised-listener-url "tcp://127.0.0.1:$port" \
                --storage-engine sqlite://tansu.db --silent) >"$work/tansu.log" 2>&1 &
            log_section=$'[log]\nbackend = "kafka"\n\n[log.kafka]\nbrokers = "127.0.0.1:'"$port"'"' ;;
    esac
    log_pid=$!
    pids+=("$log_pid")
    deadline=$((SECONDS + 30))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        kill -0 "$log_pid" 2>/dev/null || { log "the $1 broker exited (see $work)"; return 1; }
        [ $SECONDS -lt $deadline ] || { log "the $1 broker not listening after 30 s"; return 1; }
        sleep 0.1
    done
}

# start_bridge LOGBASE: keel bridge from the mosquitto broker to payments over the log in
# $log_section; sets bridge_pid once /readyz answers 200.
start_bridge() {
    local logbase=$1 admin deadline
    cat >"$work/bridge.toml" <<TOML
target = "http://$payments_addr"

[mqtt]
url = "mqtt://127.0.0.1:$mqtt_port"
client_id = "bench-bridge"

[deliver]
max_in_flight = $concurrency

$log_section

[[routes]]
name = "payments"
topic = "payment/request/+"
method = "payments.v1.PaymentService/Process"
key = "device+field:idempotency_key"
response_topic = "payment/response/{device}"
TOML
    cp "$work/bridge.toml" "$logbase.bridge.toml"
    : >"$logbase.bridge.out"
    KEEL_LOG=warn "$bin/keel" bridge --admin-listen 127.0.0.1:0 --config "$work/bridge.toml" \
        >"$logbase.bridge.out" 2>"$logbase.bridge.err" &
    bridge_pid=$!
    pids+=("$bridge_pid")
    admin=$(wait_listening "$logbase.bridge.out" "admin listening on" "$bridge_pid" 60) ||
        { log "keel bridge did not start: $(tail -3 "$logbase.bridge.err" | tr '\n' ' ')"; return 1; }
    deadline=$((SECONDS + 30))
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$admin/readyz")" = 200 ]; do
        kill -0 "$bridge_pid" 2>/dev/null || { log "keel bridge exited: $(tail -3 "$logbase.bridge.err" | tr '\n' ' ')"; return 1; }
        [ $SECONDS -lt $deadline ] || { log "keel bridge not ready after 30 s"; return 1; }
        sleep 0.2
    done
}

# simulate LOGBASE NAME REQUESTS RATE: one payments-devices run; its JSON summary goes to
# LOGBASE.NAME.json. Fails when the run did not pass its checks.
simulate() {
    local logbase=$1 name=$2 n=$3 rate=$4 rc=0
    "$bin/payments-devices" --mqtt "mqtt://127.0.0.1:$mqtt_port" --target "http://$payments_addr" \
        --devices "$devices" --requests "$n" --rate "$rate" --resend 0 --wait 300 --json \
        >"$logbase.$name.json" 2>"$logbase.$name.err" || rc=$?
    [ "$rc" = 0 ] || { log "payments-devices ($name) failed: $(head -c 600 "$logbase.$name.json") $(tail -3 "$logbase.$name.err" | tr '\n' ' ')"; return 1; }
}

results=$out/bridge-runs.jsonl
: >"$results"

# run_direct: the baseline, payments-load straight at payments.
run_direct() {
    local logbase=$out/logs/bridge-direct s0 s1 pg0 pg1 rc=0
    work=$(mktemp -d "$out/bridge.XXXXXX")
    start_payments "$logbase" || return 1
    log "direct gRPC Process: concurrency $concurrency, ${warmup} s warm-up + ${duration} s"
    s0=$(cpu_ticks "$payments_pid") pg0=$(pg_ticks_by_pid "$pg_db")
    "$bin/payments-load" --target "http://$payments_addr" --backend postgres \
        --concurrency "$concurrency" --accounts 100 --warmup "$warmup" --duration "$duration" \
        --json >"$logbase.load.json" 2>"$logbase.load.err" || rc=$?
    s1=$(cpu_ticks "$payments_pid") pg1=$(pg_ticks_by_pid "$pg_db")
    [ "$rc" = 0 ] || { log "payments-load failed: $(tail -3 "$logbase.load.err" | tr '\n' ' ')"; return 1; }
    jq -c --argjson s "$((s1 - s0))" --argjson pg "$(pg_ticks_delta "$pg0" "$pg1")" \
        --argjson hz "$clk_tck" '
        (.sent_total + 300) as $calls
        | {path: "direct", backend: "–", rps, p50_ms, p90_ms, p99_ms, max_ms,
           payments_cpu_us: ($s / $hz * 1e6 / $calls), pg_cpu_us: ($pg / $hz * 1e6 / $calls)}' \
        "$logbase.load.json" >>"$results"
    stop_everything
}

# run_bridge BACKEND: the device path over one log backend.
run_bridge() {
    local backend=$1 logbase=$out/logs/bridge-$1 b0 b1 m0 m1 l0 l1 s0 s1 pg0 pg1
    work=$(mktemp -d "$out/bridge.XXXXXX")
    start_payments "$logbase" || return 1
    start_mosquitto || return 1
    start_log_broker "$backend" || return 1
    start_bridge "$logbase" || return 1

    log "bridge, $backend log: $requests requests from $devices devices, as fast as they go"
    b0=$(cpu_ticks "$bridge_pid") m0=$(cpu_ticks "$mosquitto_pid") l0=$(cpu_ticks $log_pid)
    s0=$(cpu_ticks "$payments_pid") pg0=$(pg_ticks_by_pid "$pg_db")
    simulate "$logbase" saturated "$requests" 0 || return 1
    b1=$(cpu_ticks "$bridge_pid") m1=$(cpu_ticks "$mosquitto_pid") l1=$(cpu_ticks $log_pid)
    s1=$(cpu_ticks "$payments_pid") pg1=$(pg_ticks_by_pid "$pg_db")

    log "bridge, $backend log: $paced_requests requests at $paced_rate/s"
    simulate "$logbase" paced "$paced_requests" "$paced_rate" || return 1

    jq -c -n --arg backend "$backend" --slurpfile sat "$logbase.saturated.json" \
        --slurpfile paced "$logbase.paced.json" --argjson hz "$clk_tck" \
        --argjson n "$requests" --argjson b "$((b1 - b0))" --argjson m "$((m1 - m0))" \
        --argjson l "$( [ -n "$log_pid" ] && echo $((l1 - l0)) || echo null)" \
        --argjson s "$((s1 - s0))" --argjson pg "$(pg_ticks_delta "$pg0" "$pg1")" '
        def us(t): if t == null then null else t / $hz * 1e6 / $n end;
        {path: "bridge", backend: $backend, rps: $sat[0].timing.outcomes_per_s,
         p50_ms: $paced[0].timing.p50_ms, p90_ms: $paced[0].timing.p90_ms,
         p99_ms: $paced[0].timing.p99_ms, max_ms: $paced[0].timing.max_ms,
         paced_rate: $paced[0].timing.outcomes_per_s,
         bridge_cpu_us: us($b), mosquitto_cpu_us: us($m), log_cpu_us: us($l),
         payments_cpu_us: us($s), pg_cpu_us: us($pg)}' >>"$results"
    stop_everything
}

# ---------------------------------------------------------------- the runs
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
failed=''
run_direct || { stop_everything; die "the direct run failed (logs: $out/logs/bridge-direct.*)"; }
for backend in "${backends[@]}"; do
    if [ "$backend" = kafka ] && ! command -v tansu >/dev/null; then
        log "kafka skipped: tansu is not installed (scripts/test.sh installs it)"
        continue
    fi
    run_bridge "$backend" || {
        stop_everything
        log "the $backend run failed (logs: $out/logs/bridge-$backend.*); going on without it"
        failed="$failed $backend"
    }
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- tables
md=$out/bridge.md
{
    echo "Measured with \`scripts/bench-bridge.sh\` at $rev on $(nproc) cores; load average $load_before before, $load_after after; concurrency $concurrency (the deliver stage's max in flight, and the direct baseline's); $devices devices; $requests saturated and $paced_requests paced requests per backend; direct: ${warmup} s warm-up + ${duration} s."
    echo
    echo "| path | log | payments/s | vs direct | per core vs seed | bridge CPU µs/msg | Mosquitto CPU µs/msg | log broker CPU µs/msg | payments CPU µs/req | PostgreSQL CPU µs/req |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    jq -r -s --argjson seed "$SEED_RPS" --argjson seed_cores "$SEED_CORES" --argjson cores "$(nproc)" '
        def f(n): if n == null then "–" else (n * 10 | round / 10 | tostring) end;
        def f2(n): (n * 100 | round / 100 | tostring);
        (map(select(.path == "direct"))[0].rps) as $direct
        | .[] | "| \(.path) | \(.backend) | \(.rps | round) | \(f2(.rps / $direct))x | \(f2((.rps / $cores) / ($seed / $seed_cores)))x | \(f(.bridge_cpu_us)) | \(f(.mosquitto_cpu_us)) | \(f(.log_cpu_us)) | \(f(.payments_cpu_us)) | \(f(.pg_cpu_us)) |"' \
        "$results"
    echo
    echo "Latency: direct is payments-load's closed loop at concurrency $concurrency; bridge is publish to outcome at $paced_rate publishes/s."
    echo
    echo "| path | log | rate /s | p50 ms | p90 ms | p99 ms | max ms |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    jq -r '
        def f2(n): (n * 100 | round / 100 | tostring);
        "| \(.path) | \(.backend) | \(if .path == "direct" then (.rps | round | tostring) + " (closed loop)" else (.paced_rate | round | tostring) end) | \(f2(.p50_ms)) | \(f2(.p90_ms)) | \(f2(.p99_ms)) | \(f2(.max_ms)) |"' \
        "$results"
} >"$md"
echo
cat "$md"
echo
log "tables written to $md; raw results in $results"
[ -z "$failed" ] || die "these runs failed:$failed"
