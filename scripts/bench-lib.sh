# shellcheck shell=bash
# What the scripts/bench-*.sh benchmarks share, sourced by them: messages, CPU time of
# processes from /proc, PostgreSQL bench databases and their backends' CPU time, and waiting
# for a server's "... listening on ADDR" line.

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# shellcheck disable=SC2034 # read by the scripts that source this
clk_tck=$(getconf CLK_TCK)

# cpu_ticks PID...: utime + stime of the given processes, in clock ticks (0 for any gone).
cpu_ticks() {
    local total=0 p stat rest
    for p in "$@"; do
        stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        rest=${stat##*) }
        # shellcheck disable=SC2086 # split into fields on purpose
        set -- $rest
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}

# psql_admin ARGS...: psql as the superuser of $PG (postgres://USER@HOST:PORT), quiet.
psql_admin() { psql "$PG/postgres" -v ON_ERROR_STOP=1 -Atq "$@"; }

# new_pg_database PREFIX: creates PREFIX_<random> and prints its name.
new_pg_database() {
    local name
    name="$1_$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
    psql_admin -c "CREATE DATABASE \"$name\"" >/dev/null || return 1
    echo "$name"
}

# drop_pg_database NAME: drops it, closing its connections.
drop_pg_database() {
    psql_admin -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" >/dev/null 2>&1 ||
        log "could not drop database $1"
}

# pg_pids DB: the backends serving DB and the WAL writer.
pg_pids() {
    ps -eo pid=,args= | awk -v db="$1" '$2 == "postgres:" && ($0 ~ " " db " " || $0 ~ "walwriter") { print $1 }'
}

# pg_ticks_by_pid DB: "PID TICKS" lines, to diff before/after with pg_ticks_delta.
pg_ticks_by_pid() {
    local p
    for p in $(pg_pids "$1"); do echo "$p $(cpu_ticks "$p")"; done
}

# pg_ticks_delta BEFORE AFTER: ticks spent between two pg_ticks_by_pid snapshots (a backend
# that is new counts in full).
pg_ticks_delta() {
    awk 'NR == FNR { before[$1] = $2; next } { d += $2 - ($1 in before ? before[$1] : 0) } END { print d + 0 }' \
        <(echo "$1") <(echo "$2")
}

# wait_listening FILE PREFIX PID SECONDS: waits until FILE has a line "PREFIX ADDR" and prints
# ADDR; fails if PID exits first or SECONDS pass.
wait_listening() {
    local file=$1 prefix=$2 pid=$3 deadline=$((SECONDS + $4)) addr=''
    while [ -z "$addr" ]; do
        kill -0 "$pid" 2>/dev/null || { log "process $pid exited before listening"; return 1; }
        [ $SECONDS -lt "$deadline" ] || { log "no '$prefix' line after $4 s in $file"; return 1; }
        sleep 0.1
        addr=$(sed -n "s/^$prefix \\(.*\\)\$/\\1/p" "$file" | head -1)
    done
    echo "$addr"
}

# stop_process PID: SIGTERM, then SIGKILL after 5 s.
stop_process() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
        [ "$i" != 50 ] || kill -KILL "$pid" 2>/dev/null || true
    done
    wait "$pid" 2>/dev/null || true
}

# free_port: an unused TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# median: the median of the numbers on stdin, one a line (empty for none).
median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) print ""; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# ratio VALUE BASE: "1.234x", or "-" when either is missing.
ratio() {
    if [ -n "${1:-}" ] && [ -n "${2:-}" ]; then awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3fx", a / b}'; else echo "-"; fi
}
# fmt_int 12345.6 -> 12,346 ("-" for nothing); fmt_2 1.234 -> 1.23.
fmt_int() {
    if [ -n "${1:-}" ]; then printf '%.0f' "$1" | sed -e :a -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/; ta'; else echo "-"; fi
}
fmt_2() { if [ -n "${1:-}" ]; then printf "%.2f" "$1"; else echo "-"; fi; }

# aligned_table: "a|b|c" rows on stdin (the first the header) as aligned columns, the first
# left-aligned, the others right-aligned.
aligned_table() {
    awk -F'|' '{ for (i = 1; i <= NF; i++) { c[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NR; if (NF > nf) nf = NF }
        END { for (r = 1; r <= n; r++) { line = ""; for (i = 1; i <= nf; i++) line = line sprintf(i == 1 ? "%-" w[i] "s" : "  %" w[i] "s", c[r, i]); print line } }'
}

# markdown_rows: the same "a|b|c" rows as Markdown table rows.
markdown_rows() { while IFS= read -r row; do echo "| ${row//|/ | } |"; done; }

# command_line SCRIPT ARGS...: the command as run, the BENCH_* and KEEL_SERVE_ARGS settings
# in front, for the tables' "Command:" line.
command_line() {
    local v line=''
    for v in $(compgen -v BENCH_) KEEL_SERVE_ARGS; do
        [ -z "${!v:-}" ] || line+="$v=$(printf '%q' "${!v}") "
    done
    echo "$line$*"
}

# run_facts SCRIPT_AND_ARGS: "Command: `...` — date, git commit, cores (CPU model)", the
# opening of a results table's caption.
run_facts() {
    # shellcheck disable=SC2016 # the backquotes are Markdown
    printf 'Command: `%s` — %s, git %s, %s cores (%s)' "$(command_line "$1")" "$(date -u '+%Y-%m-%d %H:%M UTC')" \
        "$(git_label)" "$(nproc)" "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
}

# git_label: the short commit measured, saying so when tracked files have changes.
# shellcheck disable=SC2154 # $root is the caller's
git_label() {
    local rev
    rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "no commit")
    if [ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null | head -1)" ]; then rev="$rev (with uncommitted changes)"; fi
    echo "$rev"
}

# ---------------------------------------------------------------- processes started
# What a script starts in the background and must not leave running: add each PID to
# started_pids, and `trap kill_started EXIT` once.
started_pids=()
# shellcheck disable=SC2317 # invoked by a trap
kill_started() {
    local p
    for p in "${started_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${started_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
forget_pid() {
    local p keep=()
    for p in "${started_pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    started_pids=("${keep[@]}")
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

# apt_install PACKAGE...: apt-get install (after one apt-get update), logged to
# $out/logs/apt.log.
apt_updated=0
# shellcheck disable=SC2154 # $out is the caller's
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

# ---------------------------------------------------------------- Greeter servers
# The Greeter servers of bench-greeter.sh and bench-suite.sh: which there are, building,
# starting and loading them, and counting their instructions and allocations per call.
# The caller sets: $out (output directory, with logs/, callgrind/ and bin/), $root, $body
# (where the request is written), KEEL_SERVE_ARGS, WARMUP C M (the warm-up), CG_N1 CG_N2
# CG_WARMUP CG_C CG_M (the callgrind and allocation runs) and sink_addr (keel-traced's OTLP
# sink, or empty). What is measured lands in the arrays below, by server name.
# shellcheck disable=SC2034 # read by the callers
declare -A spid=() sport=() server_failed=() ir_req=() alloc_req=() bytes_req=() alloc_failed=()

# Bytes of DATA per response: 5-byte gRPC frame header + HelloReply{message: "Hello world"}.
REPLY_BYTES=18
PATH_SAYHELLO=/helloworld.Greeter/SayHello
GREETER_SERVERS="floor bare keel keel-tpc keel-off keel-traced go"

# greeter_option ARGS...: takes the option in $1 if it is one every Greeter benchmark has
# (--quick, --no-callgrind, --no-allocs, --no-build, --servers LIST, -h/--help: the
# caller's `usage`), setting quick, do_cg, do_allocs, do_build or servers_arg, and sets
# $option_args to the arguments it used; an unknown option is a usage error (exit 2).
option_args=1
greeter_option() {
    option_args=1
    # shellcheck disable=SC2034 # read by the callers
    case "$1" in
        --quick) quick=1 ;;
        --no-callgrind) do_cg=0 ;;
        --no-allocs) do_allocs=0 ;;
        --no-build) do_build=0 ;;
        --servers) [ $# -ge 2 ] || { echo "--servers needs a value" >&2; exit 2; }; servers_arg=$2; option_args=2 ;;
        --servers=*) servers_arg=${1#--servers=} ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
}

# greeter_flags: those options as given (the default --servers list left out), for the
# tables' "Command:" line.
greeter_flags() {
    [ "$quick" = 0 ] || printf ' --quick'
    [ "$servers_arg" = "floor,bare,keel,keel-tpc,go" ] || printf ' --servers %s' "$servers_arg"
    [ "$do_cg" = 1 ] || printf ' --no-callgrind'
    [ "$do_allocs" = 1 ] || printf ' --no-allocs'
}

greeter_label() {
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
# Only grpc-go is optional: its failures are reported but do not fail a benchmark.
optional() { [ "$1" = go ]; }

# greeter_servers LIST: checks the comma-separated LIST and sets want_NAME=1 for each
# (want_floor, want_bare, want_keel, want_tpc, want_off, want_traced, want_go) and $servers
# to the natively built ones asked for, in the canonical order (keel-traced and go are added
# by the caller once they can run).
greeter_servers() {
    local s list
    # shellcheck disable=SC2034 # want_go and want_traced are read by the callers
    want_floor=0 want_bare=0 want_keel=0 want_go=0 want_off=0 want_traced=0 want_tpc=0
    IFS=, read -r -a list <<<"$1"
    for s in "${list[@]}"; do
        # shellcheck disable=SC2034 # want_go and want_traced are read by the callers
        case "$s" in
            floor) want_floor=1 ;;
            bare) want_bare=1 ;;
            keel) want_keel=1 ;;
            keel-off) want_off=1 ;;
            keel-tpc) want_tpc=1 ;;
            keel-traced) want_traced=1 ;;
            go) want_go=1 ;;
            *) die "unknown server '$s' in --servers (${GREETER_SERVERS// /, })" ;;
        esac
    done
    [ "$want_bare" = 1 ] || log "note: without 'bare' there is no baseline, ratios are left empty"
    servers=()
    [ "$want_floor" = 1 ] && servers+=(floor)
    [ "$want_bare" = 1 ] && servers+=(bare)
    [ "$want_keel" = 1 ] && servers+=(keel)
    [ "$want_tpc" = 1 ] && servers+=(keel-tpc)
    [ "$want_off" = 1 ] && servers+=(keel-off)
    want_any_keel=$([ "$want_keel$want_tpc$want_off$want_traced" = 0000 ] && echo 0 || echo 1)
}

# cargo_release LOG ARGS...: cargo build --release ARGS, output appended to LOG; dies showing
# its end on failure.
cargo_release() {
    local logf=$1
    shift
    log "cargo build --release $*"
    cargo build --release "$@" >>"$logf" 2>&1 || { tail -30 "$logf" >&2; die "cargo build failed (see $logf)"; }
}

# greeter_build DO_BUILD DO_ALLOCS: builds what greeter_servers asked for (when DO_BUILD is 1)
# and sets floor_bin, bare_bin, keel_bin, go_bin; with DO_ALLOCS, the count-allocs builds too,
# copied to $out/bin/NAME-count-allocs. Dies if a binary is missing.
greeter_build() {
    local do_build=$1 do_allocs=$2 builds=() pkg bin b target_dir
    target_dir=${CARGO_TARGET_DIR:-$root/target}
    if [ "$do_build" = 1 ]; then
        # One cargo invocation per binary: built together, bare-greeter would get the features
        # keel's dependencies turn on in shared crates (sqlx turns on tracing's `log`, which
        # makes every span h2 opens in a process without a subscriber go through the `log`
        # crate: +28% instructions per call; docs/BENCHMARKS.md, "Honest baselines").
        [ "$want_floor" = 1 ] && builds+=(h2-floor)
        [ "$want_bare" = 1 ] && builds+=(bare-greeter)
        [ "$want_any_keel" = 0 ] || builds+=(keel-cli)
        # The counting builds first, copied aside: the plain builds then put the measured
        # binaries back in the target directory.
        if [ "$do_allocs" = 1 ]; then
            for pkg in "${builds[@]}"; do
                cargo_release "$out/logs/cargo-build.log" -p "$pkg" --features count-allocs
                bin=$pkg
                [ "$pkg" != keel-cli ] || bin=keel
                cp "$target_dir/release/$bin" "$out/bin/$bin-count-allocs"
            done
        fi
        for pkg in "${builds[@]}"; do cargo_release "$out/logs/cargo-build.log" -p "$pkg"; done
    fi
    floor_bin=$target_dir/release/h2-floor
    bare_bin=$target_dir/release/bare-greeter
    keel_bin=$target_dir/release/keel
    go_bin=$out/go-peer/greeter_server
    [ "$want_floor" = 0 ] || [ -x "$floor_bin" ] || die "$floor_bin not built"
    [ "$want_bare" = 0 ] || [ -x "$bare_bin" ] || die "$bare_bin not built"
    [ "$want_any_keel" = 0 ] || [ -x "$keel_bin" ] || die "$keel_bin not built"
    if [ "$do_allocs" = 1 ]; then
        for b in $([ "$want_floor" = 0 ] || echo h2-floor) $([ "$want_bare" = 0 ] || echo bare-greeter) \
            $([ "$want_any_keel" = 0 ] || echo keel); do
            [ -x "$out/bin/$b-count-allocs" ] || die "$out/bin/$b-count-allocs not built (run without --no-build, or with --no-allocs)"
        done
    fi
}

# greeter_go: builds grpc-go's greeter once (../shared/peers/build-go-greeter.sh) and adds
# go to $servers if it is there; says why not otherwise.
greeter_go() {
    local script=$root/../shared/peers/build-go-greeter.sh
    if [ ! -x "$go_bin" ]; then
        if [ -f "$script" ]; then
            log "building grpc-go greeter (informative column)"
            bash "$script" "$out/go-peer" >"$out/logs/go-build.log" 2>&1 ||
                log "grpc-go greeter build failed, skipping it (see $out/logs/go-build.log)"
        else
            log "no $script, skipping grpc-go"
        fi
    fi
    if [ -x "$go_bin" ]; then servers+=(go); fi
}

# pick_port: a free port for grpc-go (bare-greeter and keel serve listen on port 0 and print
# the port they got), below the kernel's ephemeral range so no outgoing connection holds it.
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
    # Emptied here, not only by the redirection below: that happens in the background child,
    # maybe after wait_ready has read a previous run's "listening on" line (a stale port).
    : >"$logbase.out"
    : >"$logbase.err"
    "${cmd[@]}" >"$logbase.out" 2>"$logbase.err" &
    started_pid=$!
    started_pids+=("$started_pid")
}

# wait_ready NAME PID PORT LOGBASE TIMEOUT_S: sets $ready_port. bare and keel print
# "grpc listening on ADDR"; grpc-go prints nothing, so its PORT is probed with a connection.
ready_port=
wait_ready() {
    local name=$1 pid=$2 port=$3 logbase=$4 deadline=$((SECONDS + $5)) addr
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$pid" 2>/dev/null || { log "$(greeter_label "$name") exited early: $(tail -3 "$logbase.err" | tr '\n' ' ')"; return 1; }
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
    log "$(greeter_label "$name") not ready after $5 s (see $logbase.err)"
    return 1
}

# greeter_body: writes the SayHello request to $body (set by the caller): a gRPC frame,
# uncompressed flag 0, length 7 (big-endian), then HelloRequest{name: "world"} = field 1,
# wire type 2 (0x0a), length 5, "world".
# shellcheck disable=SC2154 # $body is the caller's
greeter_body() { printf '\x00\x00\x00\x00\x07\x0a\x05world' >"$body"; }

# h2load_verify LOGFILE N REPLY_BYTES: checks one h2load run's output: N requests, every one
# answered 2xx, N x REPLY_BYTES of DATA. Sets $h2_rps. Returns 1 (with a message) if not.
h2_rps=''
h2load_verify() {
    local logf=$1 n=$2 reply=$3 total ok s2xx data
    read -r total ok < <(awk '/^requests:/ {print $2, $8}' "$logf") || true
    s2xx=$(awk '/^status codes:/ {print $3}' "$logf")
    data=$(sed -n 's/.*(\([0-9]*\)) data.*/\1/p' "$logf")
    h2_rps=$(awk '/^finished in/ {print $4}' "$logf")
    if [ "${total:-}" != "$n" ] || [ "${ok:-}" != "$n" ] || [ "${s2xx:-}" != "$n" ] ||
        [ "${data:-}" != "$((n * reply))" ] || [ -z "$h2_rps" ]; then
        log "requests failed: $n sent, ${ok:-?} succeeded, ${s2xx:-?} 2xx, ${data:-?} data bytes (want $((n * reply))); see $logf"
        grep -E '^(requests|status codes|traffic):' "$logf" >&2 || true
        return 1
    fi
}

# h2load_percentiles REQUEST_LOG: $h2_p50 and $h2_p99 in ms from h2load's per-request log
# (--log-file; its third column is microseconds from submitting a request to its last
# byte), which is removed after.
h2_p50='' h2_p99=''
h2load_percentiles() {
    # shellcheck disable=SC2034 # read by the callers
    read -r h2_p50 h2_p99 < <(cut -f3 "$1" | sort -n |
        awk '{ v[NR] = $1 } END { printf "%.3f %.3f\n", v[int(NR * 0.50) + 1] / 1000, v[int(NR * 0.99) + 1] / 1000 }')
    rm -f "$1"
}

# h2load_run PORT N C M LOGFILE [REQUEST_LOG]: runs h2load on SayHello and checks every
# request succeeded with a full HelloReply. Sets $h2_rps; with REQUEST_LOG, $h2_p50 and
# $h2_p99 too. Returns 1 (with a message) on any failure.
h2load_run() {
    local port=$1 n=$2 c=$3 m=$4 logf=$5 reqlog=${6:-} extra=()
    [ "$c" -le "$n" ] || c=$n
    [ -z "$reqlog" ] || extra=("--log-file=$reqlog")
    if ! timeout --kill-after=5 600 h2load -n "$n" -c "$c" -m "$m" -t 1 -d "$body" \
        -H 'content-type: application/grpc' -H 'te: trailers' "${extra[@]}" \
        "http://127.0.0.1:$port$PATH_SAYHELLO" >"$logf" 2>&1; then
        log "h2load failed (see $logf)"
        return 1
    fi
    h2load_verify "$logf" "$n" "$REPLY_BYTES" || return 1
    [ -z "$reqlog" ] || h2load_percentiles "$reqlog"
}

# greeter_start_native: starts every server in $servers natively, waits for each and warms
# it up with $WARMUP requests (C connections, M streams). Fills spid[NAME] and sport[NAME]
# and server_failed[NAME] for one that did not start or answer.
greeter_start_native() {
    local s
    for s in "${servers[@]}"; do
        start_server "$s" "$out/logs/$s-native"
        spid[$s]=$started_pid sport[$s]=$started_port
    done
    for s in "${servers[@]}"; do
        if ! wait_ready "$s" "${spid[$s]}" "${sport[$s]}" "$out/logs/$s-native" 60; then
            server_failed[$s]="did not start"
            continue
        fi
        sport[$s]=$ready_port
        log "$(greeter_label "$s"): warm-up, $WARMUP requests"
        # shellcheck disable=SC2034 # read by the callers
        h2load_run "${sport[$s]}" "$WARMUP" "$C" "$M" "$out/logs/$s-warmup.h2load" || server_failed[$s]="requests failed"
    done
}

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
    stop_server "$pid" 120 || { log "$(greeter_label "$s") under callgrind did not stop on SIGTERM"; return 1; }
    cg_ir=$(awk '/^totals:/ {print $2}' "$f" 2>/dev/null)
    [ -n "$cg_ir" ] || { log "no totals in $f (see $base.err)"; return 1; }
}

# cg_measure NAME: instructions per request of one server, ir_req[NAME] = (Ir after CG_N2
# requests - Ir after CG_N1) / (CG_N2 - CG_N1), which cancels start-up, warm-up and shutdown;
# the profiles stay in $out/callgrind/NAME-N.out. Returns 1 if it could not be measured.
cg_measure() {
    local s=$1 attempt ir1 ir2
    log "$(greeter_label "$s") under callgrind: $CG_N1 and $CG_N2 requests"
    for attempt in 1 2; do
        cg_run "$s" "$CG_N1" || return 1
        ir1=$cg_ir
        cg_run "$s" "$CG_N2" || return 1
        ir2=$cg_ir
        # The fixed part (start-up, warm-up, shutdown) implied by the two runs must be
        # positive; if not, one run did extra work (e.g. spinning) and the pair is redone.
        if awk -v a="$ir1" -v b="$ir2" -v n1="$CG_N1" -v n2="$CG_N2" \
            'BEGIN {x = (b - a) / (n2 - n1); exit !(x > 0 && a - n1 * x > 0)}'; then
            ir_req[$s]=$(awk -v a="$ir1" -v b="$ir2" -v n1="$CG_N1" -v n2="$CG_N2" 'BEGIN {printf "%.0f", (b - a) / (n2 - n1)}')
            log "$(greeter_label "$s"): Ir $ir1 -> $ir2, ${ir_req[$s]} Ir/req"
            return 0
        fi
        log "$(greeter_label "$s"): inconsistent counts (Ir $ir1 after $CG_N1 requests, $ir2 after $CG_N2), attempt $attempt"
    done
    return 1
}

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
    log "$(greeter_label "$s"): allocations $a0 -> $a1 -> $a2, ${alloc_req[$s]} allocations and ${bytes_req[$s]} bytes per call"
}

# alloc_measure NAME...: alloc_run for each (grpc-go is not counted) on the count-allocs
# builds in $out/bin; alloc_failed[NAME] for one that could not be counted.
alloc_measure() {
    local s plain=("$floor_bin" "$bare_bin" "$keel_bin")
    floor_bin=$out/bin/h2-floor-count-allocs bare_bin=$out/bin/bare-greeter-count-allocs keel_bin=$out/bin/keel-count-allocs
    for s in "$@"; do
        [ "$s" != go ] || continue
        log "$(greeter_label "$s"), counting build: allocations for $CG_N1 and $CG_N2 requests"
        # shellcheck disable=SC2034 # read by the callers
        alloc_run "$s" || alloc_failed[$s]=1
    done
    floor_bin=${plain[0]} bare_bin=${plain[1]} keel_bin=${plain[2]}
}
