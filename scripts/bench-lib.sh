# shellcheck shell=bash
# What the scripts/bench-*.sh benchmarks share, sourced by them: messages, CPU time of
# processes from /proc, PostgreSQL bench databases and their backends' CPU time, and waiting
# for a server's "... listening on ADDR" line.

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

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
