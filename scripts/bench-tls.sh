#!/usr/bin/env bash
# TLS benchmark: what TLS costs `keel serve` per unary call on a warm connection (against
# plaintext, same binary, same handler; bare tonic with tonic's TLS beside it), and how many
# full and resumed handshakes (TLS and mTLS) it does per second, all in one run with
# independent clients (h2load; OpenSSL through scripts/tls-handshakes.py). Run `scripts/bench-tls.sh --help` for what it
# measures and how; docs/BENCHMARKS.md has the recorded results.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-tls.sh [--quick] [--no-callgrind] [--no-warm] [--no-handshakes]
                            [--no-build] [--help]

Measures, in one run, on 127.0.0.1 only:

1. Warm-connection unary cost: helloworld.Greeter/SayHello (name "world") on long-lived
   connections, h2load as the client, against
     keel-plain       keel serve, plaintext (h2c)
     keel-tls         keel serve with tls.cert/tls.key (h2load over https://, ALPN h2)
     keel-tls-socat   the same server reached through socat (h2load -> socat, which
                      speaks TLS without a client certificate): the control for the next row
     keel-mtls-socat  keel serve with tls.client_ca and tls.client_auth=required, reached
                      through socat presenting the client certificate (h2load has no
                      client certificates)
     bare-plain       bare tonic (crates/bare-greeter), plaintext
     bare-tls         bare tonic with tonic's own TLS (ServerTlsConfig + identity)
   a) CPU: all servers run natively at once; after a warm-up, BENCH_ROUNDS rounds of
      h2load -n BENCH_N -c BENCH_C -m BENCH_M, the order rotating per round; server CPU
      time (utime+stime, /proc/PID/stat) per request, and h2load's req/s; medians.
   b) Instructions: each row's server under `valgrind --tool=callgrind`, twice, with
      BENCH_CG_N1 and BENCH_CG_N2 requests on one connection, one stream (after
      BENCH_CG_WARMUP warm-up requests): Ir/req = (Ir2 - Ir1) / (N2 - N1).
   Ratios are against the same server's plaintext row. Goal: keel TLS <= 1.15x plaintext.

2. Handshakes: new connections, one after another, against keel-tls, keel-mtls, bare-tls:
     full       scripts/tls-handshakes.py (OpenSSL through Python's ssl): a full TLS 1.3
                handshake (ALPN h2), the HTTP/2 preface and SETTINGS, the server's
                SETTINGS read, close_notify; mTLS presents the client certificate
     resumed    the same, every connection resuming the session of a first, uncounted one
                (checked: every counted connection must be resumed). `openssl s_time
                -reuse` cannot resume TLS 1.3 against an HTTP/2 port: see the client.
     full+call  h2load -c BENCH_HS_K -n BENCH_HS_K over https:// (TLS only; h2load has no
                client certificates): K new connections, each a full handshake and one
                SayHello, all at once, repeated
   a) Rate and CPU: natively, BENCH_HS_ROUNDS rounds of BENCH_HS_TIME seconds per row
      (h2load: BENCH_HS_BATCHES batches), interleaved; handshakes/s (connections over wall
      time; the client shares the 2 cores and bounds the rate) and server CPU per
      handshake; medians.
   b) Instructions: under callgrind, two runs of BENCH_CG_HS_K1 and BENCH_CG_HS_K2
      connections: Ir per handshake = (Ir2 - Ir1) / (K2 - K1).

Every request must be answered 2xx with the 18-byte HelloReply, every handshake must
succeed (resumed ones resumed, full ones not), and keel's keel_tls_handshakes_total must
count no failed handshake; otherwise the benchmark fails.

Options:
  --quick          smoke run (short rounds, callgrind 200/1200 requests, 1 s/3 s handshakes)
  --no-callgrind   skip the instruction counts (1b and 2b)
  --no-warm        skip measurement 1
  --no-handshakes  skip measurement 2
  --no-build       use the existing target/release binaries
  -h, --help       this text

Environment (defaults in brackets; --quick lowers them unless they are set):
  BENCH_N [100000]  BENCH_C [8]  BENCH_M [16]  BENCH_WARMUP [20000]  BENCH_ROUNDS [5]
  BENCH_CG_N1 [2000]  BENCH_CG_N2 [12000]  BENCH_CG_WARMUP [500]
  BENCH_HS_TIME [5]  BENCH_HS_ROUNDS [3]  BENCH_HS_K [100]  BENCH_HS_BATCHES [10]
  BENCH_CG_HS_K1 [30]  BENCH_CG_HS_K2 [150]
  BENCH_OUT [bench-out]   output directory (logs, raw data, callgrind files)

Output: the tables on stdout and as Markdown in $BENCH_OUT/tls.md; per-round numbers in
$BENCH_OUT/tls-rounds.tsv; callgrind profiles and per-function differences per request in
$BENCH_OUT/callgrind/tls-*; logs in $BENCH_OUT/logs/tls-*.

Exit status: non-zero if a build, a server, a request or a handshake fails. Meeting the
1.15x goal is reported, not enforced.
EOF
}

quick=0 do_cg=1 do_warm=1 do_hs=1 do_build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --no-callgrind) do_cg=0 ;;
        --no-warm) do_warm=0 ;;
        --no-handshakes) do_hs=0 ;;
        --no-build) do_build=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$quick" = 1 ]; then
    d_n=20000 d_warmup=2000 d_rounds=1 d_cg1=200 d_cg2=1200 d_cgw=100
    d_hst=1 d_hsr=1 d_hsb=2 d_chk1=10 d_chk2=40
else
    d_n=100000 d_warmup=20000 d_rounds=5 d_cg1=2000 d_cg2=12000 d_cgw=500
    d_hst=5 d_hsr=3 d_hsb=10 d_chk1=30 d_chk2=150
fi
N=${BENCH_N:-$d_n}
C=${BENCH_C:-8}
M=${BENCH_M:-16}
WARMUP=${BENCH_WARMUP:-$d_warmup}
ROUNDS=${BENCH_ROUNDS:-$d_rounds}
CG_N1=${BENCH_CG_N1:-$d_cg1}
CG_N2=${BENCH_CG_N2:-$d_cg2}
CG_WARMUP=${BENCH_CG_WARMUP:-$d_cgw}
HS_TIME=${BENCH_HS_TIME:-$d_hst}
HS_ROUNDS=${BENCH_HS_ROUNDS:-$d_hsr}
HS_K=${BENCH_HS_K:-100}
HS_BATCHES=${BENCH_HS_BATCHES:-$d_hsb}
CG_HS_K1=${BENCH_CG_HS_K1:-$d_chk1}
CG_HS_K2=${BENCH_CG_HS_K2:-$d_chk2}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${BENCH_OUT:-bench-out}
mkdir -p "$out/logs" "$out/callgrind"
out=$(cd "$out" && pwd)
logs=$out/logs
cgdir=$out/callgrind

# shellcheck source=scripts/bench-lib.sh
source "$root/scripts/bench-lib.sh" # processes, apt_install, ports, h2load_verify; servers are this script's own

log() { printf '[bench-tls] %s\n' "$*" >&2; }
die() { printf '[bench-tls] ERROR: %s\n' "$*" >&2; exit 1; }

trap kill_started EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- tools
command -v h2load >/dev/null || apt_install nghttp2-client
command -v socat >/dev/null || apt_install socat
command -v openssl >/dev/null || apt_install openssl
command -v curl >/dev/null || apt_install curl
if [ "$do_cg" = 1 ] && ! command -v valgrind >/dev/null; then apt_install valgrind; fi
command -v python3 >/dev/null || apt_install python3
for t in h2load socat openssl curl python3; do command -v "$t" >/dev/null || die "$t not found"; done

# ---------------------------------------------------------------- build and certificates
if [ "$do_build" = 1 ]; then
    # Built apart, as scripts/bench-greeter.sh does, so bare-greeter (with tonic's TLS) gets
    # none of the features keel's dependencies turn on in shared crates.
    log "cargo build --release -p keel-cli; cargo build --release -p bare-greeter --features tls"
    { cargo build --release -p keel-cli && cargo build --release -p bare-greeter --features tls; } \
        >"$logs/tls-cargo-build.log" 2>&1 ||
        { tail -30 "$logs/tls-cargo-build.log" >&2; die "cargo build failed (see $logs/tls-cargo-build.log)"; }
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
bare_bin=$target_dir/release/bare-greeter
keel_bin=$target_dir/release/keel
[ -x "$bare_bin" ] || die "$bare_bin not built"
[ -x "$keel_bin" ] || die "$keel_bin not built"

certs=$out/tls-certs
"$keel_bin" certs dev --out "$certs" --force >"$logs/tls-certs.log" 2>&1 ||
    die "keel certs dev failed (see $logs/tls-certs.log)"
for f in ca.pem server.pem server.key client.pem client.key; do
    [ -s "$certs/$f" ] || die "keel certs dev did not write $certs/$f"
done

# ---------------------------------------------------------------- servers
# Server kinds: keel-plain keel-tls keel-mtls bare-plain bare-tls.
server_label() {
    case "$1" in
        keel-plain) echo "keel serve, plaintext" ;;
        keel-tls) echo "keel serve, TLS" ;;
        keel-mtls) echo "keel serve, mTLS" ;;
        bare-plain) echo "bare tonic, plaintext" ;;
        bare-tls) echo "bare tonic, TLS" ;;
    esac
}

# socat listens on pick_port (bench-lib.sh): below the ephemeral range.

# start_server KIND LOGBASE [CALLGRIND_OUT]: starts it in the background, sets $started_pid.
started_pid=''
start_server() {
    local kind=$1 logbase=$2 cgout=${3:-} cmd
    case "$kind" in
        bare-plain) cmd=("$bare_bin" 127.0.0.1:0) ;;
        bare-tls) cmd=("$bare_bin" 127.0.0.1:0 --tls "$certs/server.pem" "$certs/server.key") ;;
        keel-*)
            cmd=("$keel_bin" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
                --set shutdown.drain_delay=0s)
            case "$kind" in
                keel-tls | keel-mtls)
                    cmd+=(--set "tls.cert=$certs/server.pem" --set "tls.key=$certs/server.key") ;;
            esac
            [ "$kind" != keel-mtls ] ||
                cmd+=(--set "tls.client_ca=$certs/ca.pem" --set tls.client_auth=required) ;;
        *) die "unknown server kind $kind" ;;
    esac
    # --fair-sched: valgrind runs one thread at a time; fair scheduling avoids long livelocks.
    [ -z "$cgout" ] || cmd=(valgrind --tool=callgrind --fair-sched=yes "--callgrind-out-file=$cgout" "${cmd[@]}")
    echo "${cmd[*]}" >"$logbase.cmd"
    : >"$logbase.out" # not a previous run's "listening on" line (see bench-lib.sh start_server)
    "${cmd[@]}" >"$logbase.out" 2>"$logbase.err" &
    started_pid=$!
    started_pids+=("$started_pid")
}

# wait_ready KIND PID LOGBASE TIMEOUT_S: sets $ready_port (and $admin_port for keel).
ready_port='' admin_port=''
wait_ready() {
    local kind=$1 pid=$2 logbase=$3 deadline=$((SECONDS + $4)) addr
    admin_port=
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$pid" 2>/dev/null || { log "$(server_label "$kind") exited early: $(tail -3 "$logbase.err" | tr '\n' ' ')"; return 1; }
        addr=$(sed -n 's/^grpc listening on \(.*\)$/\1/p' "$logbase.out" 2>/dev/null | head -1)
        if [ -n "$addr" ]; then
            ready_port=${addr##*:}
            if [[ "$kind" == keel-* ]]; then
                addr=$(sed -n 's/^admin listening on \(.*\)$/\1/p' "$logbase.out" 2>/dev/null | head -1)
                [ -n "$addr" ] || { sleep 0.1; continue; }
                admin_port=${addr##*:}
            fi
            return 0
        fi
        sleep 0.1
    done
    log "$(server_label "$kind") not ready after $4 s (see $logbase.err)"
    return 1
}

# start_socat PORT CLIENT_CERT(yes|no) LOGBASE: a plaintext listener on a port of its own
# that forwards every connection over TLS to PORT (with the client certificate or without),
# TCP_NODELAY on both sides like h2load and the servers. Sets $socat_pid and $socat_port.
socat_pid='' socat_port=''
start_socat() {
    local port=$1 cert=$2 logbase=$3 tls deadline
    socat_port=$(pick_port)
    tls="OPENSSL:127.0.0.1:$port,cafile=$certs/ca.pem,commonname=localhost,nodelay"
    [ "$cert" = no ] || tls+=",cert=$certs/client.pem,key=$certs/client.key"
    socat "TCP-LISTEN:$socat_port,bind=127.0.0.1,reuseaddr,fork,nodelay" "$tls" \
        >"$logbase.out" 2>"$logbase.err" &
    socat_pid=$!
    started_pids+=("$socat_pid")
    deadline=$((SECONDS + 10))
    # Ready when it listens (looked up, not connected to: a probe would be a handshake).
    while ! ss -Hltn "sport = :$socat_port" 2>/dev/null | grep -q LISTEN; do
        kill -0 "$socat_pid" 2>/dev/null || { log "socat exited: $(tail -3 "$logbase.err")"; return 1; }
        [ $SECONDS -lt $deadline ] || { log "socat not listening after 10 s"; return 1; }
        sleep 0.05
    done
}

# ---------------------------------------------------------------- warm-connection rows
# Row -> server kind and access path (direct, or through socat with or without a certificate).
warm_rows=(bare-plain bare-tls keel-plain keel-tls keel-tls-socat keel-mtls-socat)
row_label() {
    case "$1" in
        bare-plain) echo "bare tonic, plaintext" ;;
        bare-tls) echo "bare tonic, TLS (tonic's)" ;;
        keel-plain) echo "keel serve, plaintext" ;;
        keel-tls) echo "keel serve, TLS" ;;
        keel-tls-socat) echo "keel serve, TLS via socat (control)" ;;
        keel-mtls-socat) echo "keel serve, mTLS via socat" ;;
    esac
}
row_server() {
    case "$1" in
        keel-tls-socat) echo keel-tls ;;
        keel-mtls-socat) echo keel-mtls ;;
        *) echo "$1" ;;
    esac
}
row_base() { # the plaintext row a row is compared with
    case "$1" in bare-*) echo bare-plain ;; *) echo keel-plain ;; esac
}

body=$out/hello-request.bin
# gRPC frame: uncompressed flag 0, length 7 (big-endian), then HelloRequest{name: "world"}.
printf '\x00\x00\x00\x00\x07\x0a\x05world' >"$body"

# h2load_run URL N C M LOGFILE: runs h2load and checks every request succeeded with a full
# HelloReply (and, over https, that ALPN chose h2). Sets $h2_rps and $h2_secs.
h2_secs=''
h2load_run() {
    local url=$1 n=$2 c=$3 m=$4 logf=$5
    [ "$c" -le "$n" ] || c=$n
    if ! timeout --kill-after=5 900 h2load -n "$n" -c "$c" -m "$m" -t 1 -d "$body" \
        -H 'content-type: application/grpc' -H 'te: trailers' "$url$PATH_SAYHELLO" >"$logf" 2>&1; then
        log "h2load failed (see $logf)"
        return 1
    fi
    h2load_verify "$logf" "$n" "$REPLY_BYTES" || return 1
    h2_secs=$(awk '/^finished in/ {t = $3; sub(/,$/, "", t); if (t ~ /ms$/) {sub(/ms$/, "", t); t /= 1000} else if (t ~ /us$/) {sub(/us$/, "", t); t /= 1e6} else sub(/s$/, "", t); print t}' "$logf")
    if [[ "$url" == https://* ]] && ! grep -q '^Application protocol: h2$' "$logf"; then
        log "ALPN did not choose h2 (see $logf)"
        return 1
    fi
}

clk_tck=$(getconf CLK_TCK)
# Server CPU time (user + system, all threads) in clock ticks.
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat") || return 1
    stat=${stat##*) }
    awk '{print $12 + $13}' <<<"$stat"
}
median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) print ""; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# keel's handshake counter by outcome: "OUTCOME COUNT" lines from the admin port.
hs_counts() {
    curl -fsS --max-time 30 "http://127.0.0.1:$1/metrics" |
        awk '/^keel_tls_handshakes_total\{/ { if (match($0, /outcome="[^"]*"/)) { o = substr($0, RSTART + 9, RLENGTH - 10); print o, $NF } }'
}
# hs_failed_delta BEFORE AFTER: handshakes that ended in anything but "ok" between two scrapes.
hs_failed_delta() {
    awk 'NR == FNR { b[$1] = $2; next } $1 != "ok" { d += $2 - b[$1] } END { printf "%d", d }' \
        <(printf '%s\n' "$1") <(printf '%s\n' "$2")
}

status=0
declare -A spid=() sport=() sadmin=() proxy_port=() failed=() cg_failed=()
declare -A rps_med=() cpu_med=() cpu_all=() ir_req=()
rounds_tsv=$out/tls-rounds.tsv
printf 'part\tround\trow\tcount\tper_s\tcpu_ticks\tcpu_us_each\n' >"$rounds_tsv"
log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# Native servers, one per kind, shared by the warm rows and the handshake rows.
kinds=()
[ "$do_warm" = 1 ] && kinds+=(bare-plain keel-plain)
kinds+=(bare-tls keel-tls keel-mtls)
for k in "${kinds[@]}"; do
    start_server "$k" "$logs/tls-$k-native"
    spid[$k]=$started_pid
done
for k in "${kinds[@]}"; do
    wait_ready "$k" "${spid[$k]}" "$logs/tls-$k-native" 60 || die "$(server_label "$k") did not start"
    sport[$k]=$ready_port sadmin[$k]=$admin_port
done

# row_url ROW: where h2load sends a warm row's requests (starting its socat on first use).
row_url() {
    case "$1" in
        *-plain) echo "http://127.0.0.1:${sport[$1]}" ;;
        *-socat) echo "http://127.0.0.1:${proxy_port[$1]}" ;;
        *) echo "https://127.0.0.1:${sport[$1]}" ;;
    esac
}

# ---------------------------------------------------------------- 1a. warm: CPU per request
cipher=
if [ "$do_warm" = 1 ]; then
    start_socat "${sport[keel-tls]}" no "$logs/tls-socat-tls-native" || die "socat did not start"
    proxy_port[keel-tls-socat]=$socat_port
    start_socat "${sport[keel-mtls]}" yes "$logs/tls-socat-mtls-native" || die "socat did not start"
    proxy_port[keel-mtls-socat]=$socat_port
    for r in "${warm_rows[@]}"; do
        log "$(row_label "$r"): warm-up, $WARMUP requests"
        h2load_run "$(row_url "$r")" "$WARMUP" "$C" "$M" "$logs/tls-$r-warmup.h2load" || failed[$r]="requests failed"
    done
    cipher=$(awk -F': ' '/^TLS Protocol:/ {p = $2} /^Cipher:/ {c = $2} /^Server Temp Key:/ {k = $2} END {if (p != "") print p ", " c ", " k}' "$logs/tls-keel-tls-warmup.h2load")
    k=${#warm_rows[@]}
    for ((round = 1; round <= ROUNDS; round++)); do
        for ((i = 0; i < k; i++)); do
            r=${warm_rows[$(((i + round - 1) % k))]}
            [ -z "${failed[$r]:-}" ] || continue
            p=${spid[$(row_server "$r")]}
            before=$(cpu_ticks "$p") || { failed[$r]="server exited"; continue; }
            h2load_run "$(row_url "$r")" "$N" "$C" "$M" "$logs/tls-$r-round$round.h2load" || { failed[$r]="requests failed"; continue; }
            after=$(cpu_ticks "$p") || { failed[$r]="server exited"; continue; }
            us=$(awk -v t=$((after - before)) -v hz="$clk_tck" -v n="$N" 'BEGIN {printf "%.3f", t * 1e6 / hz / n}')
            printf 'warm\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$r" "$N" "$h2_rps" "$((after - before))" "$us" >>"$rounds_tsv"
            log "round $round/$ROUNDS $(row_label "$r"): $h2_rps req/s, $us CPU us/req"
        done
    done
    for r in "${warm_rows[@]}"; do
        [ -z "${failed[$r]:-}" ] || continue
        rps_med[$r]=$(awk -v s="$r" -F'\t' '$1 == "warm" && $3 == s {print $5}' "$rounds_tsv" | median)
        cpu_med[$r]=$(awk -v s="$r" -F'\t' '$1 == "warm" && $3 == s {print $7}' "$rounds_tsv" | median)
        cpu_all[$r]=$(awk -v s="$r" -F'\t' '$1 == "warm" && $3 == s {printf "%s%.2f", sep, $7; sep = ", "}' "$rounds_tsv")
    done
fi

# ---------------------------------------------------------------- 2a. handshakes: rate and CPU
# Row -> server kind, client and mode.
hs_rows=(keel-tls-full keel-mtls-full keel-tls-resumed keel-mtls-resumed keel-tls-full-call bare-tls-full bare-tls-resumed bare-tls-full-call)
hs_label() {
    case "$1" in
        keel-tls-full) echo "keel serve, TLS, full" ;;
        keel-mtls-full) echo "keel serve, mTLS, full" ;;
        keel-tls-resumed) echo "keel serve, TLS, resumed" ;;
        keel-mtls-resumed) echo "keel serve, mTLS, resumed" ;;
        keel-tls-full-call) echo "keel serve, TLS, full + 1 call (h2load)" ;;
        bare-tls-full) echo "bare tonic, TLS, full" ;;
        bare-tls-resumed) echo "bare tonic, TLS, resumed" ;;
        bare-tls-full-call) echo "bare tonic, TLS, full + 1 call (h2load)" ;;
    esac
}
hs_server() { case "$1" in keel-mtls-*) echo keel-mtls ;; keel-*) echo keel-tls ;; *) echo bare-tls ;; esac; }

# hs_client_run ROW PORT (--seconds S | --count N) LOGFILE: one run of
# scripts/tls-handshakes.py. Sets
# $hs_count (connections; in resumed rows all checked to be resumed) and $hs_wall (seconds).
hs_count='' hs_wall='' hs_cipher=''
hs_client_run() {
    local row=$1 port=$2 logf=$5 args resumed
    args=("127.0.0.1:$port" "$3" "$4")
    case "$row" in *-resumed) args+=(--resume) ;; esac
    case "$row" in *-mtls-*) args+=(--cert "$certs/client.pem" --key "$certs/client.key") ;; esac
    if ! timeout --kill-after=5 1800 python3 "$root/scripts/tls-handshakes.py" "${args[@]}" >"$logf" 2>&1; then
        log "tls-handshakes.py failed (see $logf)"
        return 1
    fi
    read -r hs_count resumed hs_wall hs_cipher < <(awk '/^connections / {print $2, $4, $6, $8}' "$logf") || true
    if [ -z "${hs_count:-}" ] || [ "$hs_count" -eq 0 ]; then log "no connection made (see $logf)"; return 1; fi
    if [[ "$row" == *-resumed ]] && [ "$resumed" -lt "$hs_count" ]; then
        log "$(hs_label "$row"): only $resumed of $hs_count connections resumed (see $logf)"
        return 1
    fi
    if [[ "$row" != *-resumed ]] && [ "$resumed" -gt 0 ]; then
        log "$(hs_label "$row"): $resumed of $hs_count connections resumed, none should (see $logf)"
        return 1
    fi
}

# hs_measure ROW LOGBASE: one round of a handshake row against the native server. Sets
# $hs_count and $hs_wall.
hs_measure() {
    local row=$1 logbase=$2 port b
    port=${sport[$(hs_server "$row")]}
    case "$row" in
        *-full-call)
            hs_count=0 hs_wall=0
            for ((b = 1; b <= HS_BATCHES; b++)); do
                h2load_run "https://127.0.0.1:$port" "$HS_K" "$HS_K" 1 "$logbase.b$b.h2load" || return 1
                hs_count=$((hs_count + HS_K))
                hs_wall=$(awk -v a="$hs_wall" -v b="$h2_secs" 'BEGIN {printf "%.6f", a + b}')
            done ;;
        *) hs_client_run "$row" "$port" --seconds "$HS_TIME" "$logbase.client" ;;
    esac
}

declare -A hs_rate=() hs_cpu=() hs_cpu_all=() hs_ir=()
if [ "$do_hs" = 1 ]; then
    k=${#hs_rows[@]}
    for ((round = 1; round <= HS_ROUNDS; round++)); do
        for ((i = 0; i < k; i++)); do
            r=${hs_rows[$(((i + round - 1) % k))]}
            [ -z "${failed[$r]:-}" ] || continue
            s=$(hs_server "$r")
            p=${spid[$s]}
            [[ "$s" != keel-* ]] || m_before=$(hs_counts "${sadmin[$s]}") || { failed[$r]="no metrics"; continue; }
            before=$(cpu_ticks "$p") || { failed[$r]="server exited"; continue; }
            hs_measure "$r" "$logs/tls-$r-round$round" || { failed[$r]="handshakes failed"; continue; }
            after=$(cpu_ticks "$p") || { failed[$r]="server exited"; continue; }
            if [[ "$s" == keel-* ]]; then
                m_after=$(hs_counts "${sadmin[$s]}") || { failed[$r]="no metrics"; continue; }
                bad=$(hs_failed_delta "$m_before" "$m_after")
                [ "$bad" = 0 ] || { log "$(hs_label "$r"): $bad handshakes failed (keel_tls_handshakes_total)"; failed[$r]="$bad handshakes failed"; continue; }
            fi
            rate=$(awk -v n="$hs_count" -v w="$hs_wall" 'BEGIN {printf "%.1f", n / w}')
            us=$(awk -v t=$((after - before)) -v hz="$clk_tck" -v n="$hs_count" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
            printf 'handshake\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$r" "$hs_count" "$rate" "$((after - before))" "$us" >>"$rounds_tsv"
            log "round $round/$HS_ROUNDS $(hs_label "$r"): $hs_count connections, $rate/s, $us CPU us each"
        done
    done
    for r in "${hs_rows[@]}"; do
        [ -z "${failed[$r]:-}" ] || continue
        hs_rate[$r]=$(awk -v s="$r" -F'\t' '$1 == "handshake" && $3 == s {print $5}' "$rounds_tsv" | median)
        hs_cpu[$r]=$(awk -v s="$r" -F'\t' '$1 == "handshake" && $3 == s {print $7}' "$rounds_tsv" | median)
        hs_cpu_all[$r]=$(awk -v s="$r" -F'\t' '$1 == "handshake" && $3 == s {printf "%s%.1f", sep, $7; sep = ", "}' "$rounds_tsv")
    done
fi
for k in "${kinds[@]}"; do stop_server "${spid[$k]}" 10 || true; done
for p in "${started_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
started_pids=()
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- callgrind helpers
cg_total() { awk '/^totals:/ {print $2}' "$1" 2>/dev/null; }

# cg_functions FILE INCLUSIVE(yes|no): "Ir<TAB>function" for every function of a profile
# (as scripts/bench-greeter.sh: inlined parts added up for self cost, largest for inclusive).
cg_functions() {
    callgrind_annotate --auto=no --threshold=100 --inclusive="$2" "$1" 2>/dev/null |
        awk -v inc="$2" '/^ *[0-9,]+ \([ 0-9.]+%\)  / && !/PROGRAM TOTALS/ {
            ir = $1; gsub(",", "", ir); name = $0
            sub(/^ *[0-9,]+ \([ 0-9.]+%\)  /, "", name); sub(/ \[[^]]*\]$/, "", name); sub(/^[^:]*:/, "", name)
            if (inc == "yes") { if (ir + 0 > f[name] + 0) f[name] = ir } else f[name] += ir
        }
        END { for (k in f) print f[k] "\t" k }'
}

# cg_per_unit FILE1 FILE2 UNITS TOTAL TITLE: per-unit Ir of each function (self cost), the
# difference of two profiles divided by the difference in units, largest first.
cg_per_unit() {
    echo "# $5: Ir per unit by function (self cost), (profile 2 - profile 1) / $3; total $4"
    awk -F'\t' -v dn="$3" -v total="$4" '
        NR == FNR { a[$2] = $1; next }
        { b[$2] = $1 }
        END {
            for (k in a) if (!(k in b)) b[k] = 0
            for (k in b) { d = (b[k] - a[k]) / dn; if (d >= 1 || d <= -1) printf "%10.0f\t%7.2f%%\t%s\n", d, 100 * d / total, k }
        }' <(cg_functions "$1" no) <(cg_functions "$2" no) | sort -t $'\t' -k1,1 -g -r
}

# cg_delta NAME_A FILE_A NAME_B FILE_B: per-unit self cost by function, B minus A.
cg_delta() {
    echo "# Ir per request by function (self cost): $3 minus $1"
    printf '# %8s  %10s  %10s  %s\n' "delta" "A" "B" "function"
    awk -F'\t' 'FNR == 1 { f++ } /^#/ { next } { v[f, $3] = $1; k[$3] = 1 }
        END { for (n in k) { d = v[2, n] - v[1, n]; if (d >= 1 || d <= -1) printf "%10.0f  %10.0f  %10.0f  %s\n", d, v[1, n], v[2, n], n } }' \
        "$2" "$4" | sort -g -r >"$cgdir/.tls-delta"
    head -40 "$cgdir/.tls-delta"
    echo "# ..."
    tail -15 "$cgdir/.tls-delta"
    rm -f "$cgdir/.tls-delta"
}

# cg_server KIND LOGBASE CGFILE: a server under callgrind, ready; sets $cg_pid and $cg_port.
cg_pid='' cg_port=''
cg_server() {
    rm -f "$3"
    start_server "$1" "$2" "$3"
    cg_pid=$started_pid
    wait_ready "$1" "$cg_pid" "$2" 180 || { stop_server "$cg_pid" 5 || true; return 1; }
    cg_port=$ready_port
}
cg_stop() {
    stop_server "$cg_pid" 120 || { log "server under callgrind did not stop on SIGTERM"; return 1; }
}

# cg_pair UNIT_NAME N1 N2 IR1 IR2: checks the implied fixed part is positive, prints Ir/unit.
cg_pair() {
    awk -v a="$4" -v b="$5" -v n1="$2" -v n2="$3" 'BEGIN {x = (b - a) / (n2 - n1); if (x > 0 && a - n1 * x > 0) printf "%.0f", x; else exit 1}'
}

# ---------------------------------------------------------------- 1b. warm: instructions
# cg_warm_run ROW N: one warm row under callgrind: warm-up, N requests, stop. Sets $cg_ir.
cg_ir=''
cg_warm_run() {
    local r=$1 n=$2 s base f url
    s=$(row_server "$r")
    base=$logs/tls-$r-cg$n
    f=$cgdir/tls-$r-$n.out
    cg_server "$s" "$base" "$f" || return 1
    case "$r" in
        *-socat)
            start_socat "$cg_port" "$([ "$s" = keel-mtls ] && echo yes || echo no)" "$base-socat" || { cg_stop || true; return 1; }
            url="http://127.0.0.1:$socat_port" ;;
        *-plain) url="http://127.0.0.1:$cg_port" ;;
        *) url="https://127.0.0.1:$cg_port" ;;
    esac
    if ! h2load_run "$url" "$CG_WARMUP" 1 1 "$base-warmup.h2load" || ! h2load_run "$url" "$n" 1 1 "$base.h2load"; then
        cg_stop || true
        return 1
    fi
    cg_stop || return 1
    [[ "$r" != *-socat ]] || { kill -TERM "$socat_pid" 2>/dev/null || true; wait "$socat_pid" 2>/dev/null || true; forget_pid "$socat_pid"; }
    cg_ir=$(cg_total "$f")
    [ -n "$cg_ir" ] || { log "no totals in $f (see $base.err)"; return 1; }
}

if [ "$do_cg" = 1 ] && [ "$do_warm" = 1 ]; then
    [ "$CG_N2" -gt "$CG_N1" ] || die "BENCH_CG_N2 must be larger than BENCH_CG_N1"
    for r in "${warm_rows[@]}"; do
        [ -z "${failed[$r]:-}" ] || continue
        log "$(row_label "$r") under callgrind: $CG_N1 and $CG_N2 requests"
        ok=0
        for attempt in 1 2; do
            cg_warm_run "$r" "$CG_N1" || break
            ir1=$cg_ir
            cg_warm_run "$r" "$CG_N2" || break
            ir2=$cg_ir
            if x=$(cg_pair req "$CG_N1" "$CG_N2" "$ir1" "$ir2"); then ok=1; break; fi
            log "$(row_label "$r"): inconsistent counts (Ir $ir1 after $CG_N1 requests, $ir2 after $CG_N2), attempt $attempt"
        done
        if [ "$ok" = 1 ]; then
            ir_req[$r]=$x
            log "$(row_label "$r"): Ir $ir1 -> $ir2, ${ir_req[$r]} Ir/req"
            cg_per_unit "$cgdir/tls-$r-$CG_N1.out" "$cgdir/tls-$r-$CG_N2.out" $((CG_N2 - CG_N1)) "$x" "$(row_label "$r")" \
                >"$cgdir/tls-$r-self.txt" || true
        else
            cg_failed[$r]=1
        fi
    done
    for r in keel-tls keel-tls-socat keel-mtls-socat bare-tls; do
        b=$(row_base "$r")
        if [ -z "${ir_req[$r]:-}" ] || [ -z "${ir_req[$b]:-}" ]; then continue; fi
        cg_delta "$(row_label "$b")" "$cgdir/tls-$b-self.txt" "$(row_label "$r")" "$cgdir/tls-$r-self.txt" \
            >"$cgdir/tls-$r-vs-$b.txt" || true
    done
    if [ -n "${ir_req[keel-mtls-socat]:-}" ] && [ -n "${ir_req[keel-tls-socat]:-}" ]; then
        cg_delta "$(row_label keel-tls-socat)" "$cgdir/tls-keel-tls-socat-self.txt" \
            "$(row_label keel-mtls-socat)" "$cgdir/tls-keel-mtls-socat-self.txt" >"$cgdir/tls-keel-mtls-vs-tls.txt" || true
    fi
fi

# ---------------------------------------------------------------- 2b. handshakes: instructions
# cg_hs_run ROW K: one handshake row under callgrind, K connections. Sets $cg_ir and
# $cg_units (connections made).
cg_units=''
cg_hs_run() {
    local r=$1 amount=$2 s base f
    s=$(hs_server "$r")
    base=$logs/tls-$r-cg$amount
    f=$cgdir/tls-$r-$amount.out
    cg_server "$s" "$base" "$f" || return 1
    case "$r" in
        *-full-call)
            h2load_run "https://127.0.0.1:$cg_port" "$amount" "$amount" 1 "$base.h2load" || { cg_stop || true; return 1; }
            cg_units=$amount ;;
        *)
            hs_client_run "$r" "$cg_port" --count "$amount" "$base.client" || { cg_stop || true; return 1; }
            cg_units=$hs_count ;;
    esac
    cg_stop || return 1
    cg_ir=$(cg_total "$f")
    [ -n "$cg_ir" ] || { log "no totals in $f (see $base.err)"; return 1; }
}

if [ "$do_cg" = 1 ] && [ "$do_hs" = 1 ]; then
    for r in "${hs_rows[@]}"; do
        [ -z "${failed[$r]:-}" ] || continue
        a1=$CG_HS_K1 a2=$CG_HS_K2
        log "$(hs_label "$r") under callgrind: $a1 and $a2 connections"
        ok=0
        for attempt in 1 2; do
            cg_hs_run "$r" "$a1" || break
            ir1=$cg_ir u1=$cg_units
            cg_hs_run "$r" "$a2" || break
            ir2=$cg_ir u2=$cg_units
            if [ "$u2" -gt "$u1" ] && x=$(cg_pair handshake "$u1" "$u2" "$ir1" "$ir2"); then ok=1; break; fi
            log "$(hs_label "$r"): inconsistent counts (Ir $ir1 after $u1 connections, $ir2 after $u2), attempt $attempt"
        done
        if [ "$ok" = 1 ]; then
            hs_ir[$r]=$x
            log "$(hs_label "$r"): Ir $ir1 -> $ir2 over $u1 -> $u2 connections, ${hs_ir[$r]} Ir/handshake"
            cg_per_unit "$cgdir/tls-$r-$a1.out" "$cgdir/tls-$r-$a2.out" $((u2 - u1)) "$x" "$(hs_label "$r")" \
                >"$cgdir/tls-$r-self.txt" || true
        else
            cg_failed[$r]=1
        fi
    done
fi

# ---------------------------------------------------------------- report
ratio() { # ratio VALUE BASE
    if [ -n "${1:-}" ] && [ -n "${2:-}" ]; then awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3fx", a / b}'; else echo "-"; fi
}
fmt_int() { # 12345.6 -> 12,346
    if [ -n "${1:-}" ]; then printf '%.0f' "$1" | sed -e :a -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/; ta'; else echo "-"; fi
}
fmt_dec() { if [ -n "${1:-}" ]; then printf "%.${2}f" "$1"; else echo "-"; fi; }
fmt_ir() { if [ -n "${cg_failed[$1]:-}" ]; then echo failed; else fmt_int "${2:-}"; fi; }

warm_table=() hs_table=()
if [ "$do_warm" = 1 ]; then
    warm_table+=("row|req/s|CPU µs/req|Ir/req|CPU vs plaintext|Ir vs plaintext")
    for r in "${warm_rows[@]}"; do
        b=$(row_base "$r")
        if [ -n "${failed[$r]:-}" ]; then
            warm_table+=("$(row_label "$r")|failed: ${failed[$r]}|-|-|-|-")
            status=1
            continue
        fi
        [ -z "${cg_failed[$r]:-}" ] || status=1
        warm_table+=("$(row_label "$r")|$(fmt_int "${rps_med[$r]:-}")|$(fmt_dec "${cpu_med[$r]:-}" 2)|$(fmt_ir "$r" "${ir_req[$r]:-}")|$(ratio "${cpu_med[$r]:-}" "${cpu_med[$b]:-}")|$(ratio "${ir_req[$r]:-}" "${ir_req[$b]:-}")")
    done
fi
if [ "$do_hs" = 1 ]; then
    hs_table+=("row|handshakes/s|server CPU µs/handshake|Ir/handshake|CPU vs TLS full|Ir vs TLS full")
    for r in "${hs_rows[@]}"; do
        case "$r" in bare-*) b=bare-tls-full ;; *-full-call) b=keel-tls-full ;; *) b=keel-tls-full ;; esac
        if [ -n "${failed[$r]:-}" ]; then
            hs_table+=("$(hs_label "$r")|failed: ${failed[$r]}|-|-|-|-")
            status=1
            continue
        fi
        [ -z "${cg_failed[$r]:-}" ] || status=1
        hs_table+=("$(hs_label "$r")|$(fmt_int "${hs_rate[$r]:-}")|$(fmt_dec "${hs_cpu[$r]:-}" 1)|$(fmt_ir "$r" "${hs_ir[$r]:-}")|$(ratio "${hs_cpu[$r]:-}" "${hs_cpu[$b]:-}")|$(ratio "${hs_ir[$r]:-}" "${hs_ir[$b]:-}")")
    done
fi

verdict=
if [ -n "${ir_req[keel-tls]:-}${cpu_med[keel-tls]:-}" ]; then
    verdict=$(awk -v c="${cpu_med[keel-tls]:-}" -v cb="${cpu_med[keel-plain]:-}" -v i="${ir_req[keel-tls]:-}" -v ib="${ir_req[keel-plain]:-}" 'BEGIN {
        s = "Goal: keel serve over TLS <= 1.15x plaintext per call on a warm connection:"
        if (i != "" && ib != "") { q = i / ib; s = s sprintf(" instructions %.3fx (%s)", q, q <= 1.15 ? "met" : "NOT met") }
        if (c != "" && cb != "") { r = c / cb; s = s sprintf("%s CPU time %.3fx (%s)", (i != "" && ib != "") ? "," : "", r, r <= 1.15 ? "met" : "NOT met") }
        print s "." }')
fi

git_rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "no commit")
if [ -n "$(git -C "$root" status --porcelain 2>/dev/null | head -1)" ]; then git_rev="$git_rev (with uncommitted changes)"; fi
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
cmdline=
for v in $(compgen -v BENCH_); do
    [ -z "${!v:-}" ] || cmdline+="$v=$(printf '%q' "${!v}") "
done
cmdline+="scripts/bench-tls.sh"
[ "$quick" = 1 ] && cmdline+=" --quick"
[ "$do_cg" = 1 ] || cmdline+=" --no-callgrind"
[ "$do_warm" = 1 ] || cmdline+=" --no-warm"
[ "$do_hs" = 1 ] || cmdline+=" --no-handshakes"

md_table() { local row; echo "| ${1//|/ | } |"; echo "|---$(printf '%s' "${1//[^|]/}" | sed 's/|/|---:/g')|"; shift; for row in "$@"; do echo "| ${row//|/ | } |"; done; }
text_table() {
    printf '%s\n' "$@" | awk -F'|' '{ for (i = 1; i <= NF; i++) { c[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NR; nf = NF }
        END { for (r = 1; r <= n; r++) { line = ""; for (i = 1; i <= nf; i++) line = line sprintf(i == 1 ? "%-" w[i] "s" : "  %" w[i] "s", c[r, i]); print line } }'
}

md=$out/tls.md
{
    echo "### TLS: handshakes and per-call cost"
    echo
    echo "Command: \`$cmdline\` — $(date -u '+%Y-%m-%d %H:%M UTC'), git $git_rev, $(nproc) cores ($cpu_model), load average ${load_before} before and ${load_after} after the native rounds."
    if [ "$do_warm" = 1 ]; then
        echo
        echo "Warm connections (h2load; TLS: ${cipher:-?}):"
        echo
        md_table "${warm_table[@]}"
        echo
        echo "- CPU: h2load \`-n $N -c $C -m $M\`, $ROUNDS round(s) per row interleaved, after $WARMUP warm-up requests; medians of the server's utime+stime per request."
        for r in "${warm_rows[@]}"; do
            [ -z "${cpu_all[$r]:-}" ] || echo "  - $(row_label "$r"): CPU µs/req per round: ${cpu_all[$r]}"
        done
        [ "$do_cg" = 0 ] || echo "- Instructions: callgrind, h2load \`-c 1 -m 1\`, (Ir after $CG_N2 requests − Ir after $CG_N1) / $((CG_N2 - CG_N1)), each run after $CG_WARMUP warm-up requests."
    fi
    if [ "$do_hs" = 1 ]; then
        echo
        echo "Handshakes, TLS 1.3 (scripts/tls-handshakes.py: one connection at a time, handshake, HTTP/2 preface and SETTINGS, ${hs_cipher:-?}; h2load \`-c $HS_K -n $HS_K\`: handshake and one call each):"
        echo
        md_table "${hs_table[@]}"
        echo
        echo "- Rate and CPU: $HS_ROUNDS round(s) per row interleaved, $HS_TIME s per row (h2load: $HS_BATCHES batches); medians. Handshakes/s is connections over wall time with the client on the same 2 cores."
        for r in "${hs_rows[@]}"; do
            [ -z "${hs_cpu_all[$r]:-}" ] || echo "  - $(hs_label "$r"): CPU µs per handshake per round: ${hs_cpu_all[$r]}"
        done
        [ "$do_cg" = 0 ] || echo "- Instructions: callgrind, (Ir after $CG_HS_K2 connections − Ir after $CG_HS_K1) / $((CG_HS_K2 - CG_HS_K1))."
    fi
    [ -z "$verdict" ] || { echo; echo "$verdict"; }
} >"$md"

echo
if [ "$do_warm" = 1 ]; then
    echo "Warm connections (TLS: ${cipher:-?})"
    text_table "${warm_table[@]//µ/u}"
    echo
fi
if [ "$do_hs" = 1 ]; then
    echo "Handshakes"
    text_table "${hs_table[@]//µ/u}"
    echo
fi
[ -z "$verdict" ] || echo "$verdict"
echo "Markdown: $md; per-round data: $rounds_tsv; callgrind: $cgdir/tls-*"
exit $status
