#!/usr/bin/env bash
# The project's single test command, for developers and CI (.ci/run) alike:
#   1. local services the tests use are up (installed and started if need be; tansu, the Kafka
#      broker, is built with cargo install the first time), and Prometheus's
#      promtool and server binaries and Debian's chromium are installed;
#   2. .venv has tests/python/requirements.txt (the Python grpcio peer, the reference metrics parsers);
#   3. cargo fmt --check, buf lint of proto/, the crate-boundary and test-sleep checks, 4. clippy -D warnings (also the benchmark servers' count-allocs builds), 5. tests (nextest if installed), 6. doctests,
#   7. cargo doc with warnings denied, 8. README.md's commands as written, against release builds.
# Runs as root on a fresh Debian machine in CI; fast when everything is already in place.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

START_TIME=$SECONDS

step() {
    printf '\n==> %s  [+%ss]\n' "$*" "$((SECONDS - START_TIME))"
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# --------------------------------------------------------------------------- services

APT_UPDATED=0

apt_install() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        apt-get update -q
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The start commands are the machine's own (see the machine notes); each is idempotent
# enough to rerun when the port is closed.
start_postgresql() {
    local version
    version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)"
    [[ -n $version ]] || die "PostgreSQL is installed but has no cluster in /etc/postgresql"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
}

start_redis() {
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
}

start_mosquitto() {
    mkdir -p /run/mosquitto
    chown mosquitto: /run/mosquitto 2>/dev/null || true
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
}

start_nats() {
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
}

start_rabbitmq() {
    rabbitmq-server -detached
}

# ensure_service NAME PORT BINARY PACKAGE WAIT_SECONDS START_FUNCTION
# Nothing to do if PORT is open. Otherwise installs PACKAGE if BINARY is missing, runs
# START_FUNCTION, and waits up to WAIT_SECONDS for the port.
ensure_service() {
    local name=$1 port=$2 binary=$3 package=$4 wait_seconds=$5 start=$6
    if port_open "$port"; then
        echo "$name: up on 127.0.0.1:$port"
        return
    fi
    if ! command -v "$binary" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$binary ]]; then
        echo "$name: not installed; installing Debian package $package"
        apt_install "$package"
    fi
    if port_open "$port"; then # the package's install script may have started it
        echo "$name: up on 127.0.0.1:$port"
        return
    fi
    echo "$name: starting"
    "$start" || echo "$name: start command exited with $? (waiting for the port anyway)"
    local deadline=$((SECONDS + wait_seconds))
    until port_open "$port"; do
        if ((SECONDS >= deadline)); then
            die "$name did not open 127.0.0.1:$port within ${wait_seconds}s (start: $start)"
        fi
        sleep 0.5
    done
    echo "$name: up on 127.0.0.1:$port"
}

# Kafka, for the bridge's Kafka log backend: no registry this project reaches ships Apache
# Kafka, so the broker is tansu, a Kafka-protocol broker from crates.io, built with its
# SQLite storage engine so that acknowledged records and committed offsets survive a restart
# (docs/notes/kafka-broker.md). It has no Debian package: cargo builds it, once per machine,
# in the debug profile without debug info: about 15 CPU-minutes (the release profile takes
# 41), and the broker answers as fast either way.
TANSU_VERSION=0.6.0
KAFKA_PORT=9092
KAFKA_DIR=/var/lib/keel-kafka

tansu_installed() {
    command -v tansu >/dev/null 2>&1 && [[ "$(tansu --version 2>/dev/null)" == "tansu $TANSU_VERSION" ]]
}

# One broker at most: start-stop-daemon does nothing while the process in the pidfile runs.
# It runs in $KAFKA_DIR, where its database lives (tansu resolves sqlite:// paths against its
# working directory) and where no project .env is read; explicit flags beat tansu's
# environment variables (CLUSTER_ID, STORAGE_ENGINE, ...).
start_kafka() {
    mkdir -p "$KAFKA_DIR"
    start-stop-daemon --start --oknodo --background --make-pidfile --pidfile "$KAFKA_DIR/tansu.pid" \
        --chdir "$KAFKA_DIR" --output /var/log/keel-kafka.log --exec "$(command -v tansu)" -- \
        broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --storage-engine sqlite://tansu.db --silent
}

ensure_kafka() {
    if port_open "$KAFKA_PORT"; then
        echo "Kafka: up on 127.0.0.1:$KAFKA_PORT"
        return
    fi
    if ! tansu_installed; then
        echo "Kafka: tansu $TANSU_VERSION not installed; building it with cargo install (takes a while)"
        CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=0 \
            cargo install --locked --debug --no-default-features --features libsql \
            "tansu@$TANSU_VERSION"
    fi
    echo "Kafka: starting tansu $TANSU_VERSION (data in $KAFKA_DIR)"
    start_kafka || echo "Kafka: start command exited with $? (waiting for the port anyway)"
    local deadline=$((SECONDS + 30))
    until port_open "$KAFKA_PORT"; do
        if ((SECONDS >= deadline)); then
            die "Kafka (tansu) did not open 127.0.0.1:$KAFKA_PORT within 30s; see /var/log/keel-kafka.log"
        fi
        sleep 0.5
    done
    echo "Kafka: up on 127.0.0.1:$KAFKA_PORT"
}

ensure_services() {
    ensure_service PostgreSQL 5432 pg_ctlcluster postgresql 60 start_postgresql
    ensure_service Redis 6379 redis-server redis-server 30 start_redis
    ensure_service Mosquitto 1883 mosquitto mosquitto 30 start_mosquitto
    ensure_service NATS 4222 nats-server nats-server 30 start_nats
    ensure_service RabbitMQ 5672 rabbitmq-server rabbitmq-server 120 start_rabbitmq
    ensure_kafka
}

# The tests check deploy/prometheus and /metrics with promtool, and scrape a Keel server with
# a real Prometheus. The package's install script would also start a Prometheus server on
# :9090, the admin port of Keel's defaults and of the README's examples; a policy-rc.d that
# refuses (Debian's mechanism; Docker images ship one) keeps it from starting.
ensure_prometheus() {
    if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
        echo "prometheus: $(promtool --version 2>&1 | head -n 1)"
        return
    fi
    echo "prometheus: not installed; installing Debian package prometheus"
    local guard=/usr/sbin/policy-rc.d
    if [[ -e $guard ]]; then
        apt_install --no-install-recommends prometheus
        return
    fi
    printf '#!/bin/sh\nexit 101\n' >"$guard"
    chmod +x "$guard"
    local status=0
    apt_install --no-install-recommends prometheus || status=$?
    rm -f "$guard"
    return "$status"
}

# --------------------------------------------------------------------------- python

VENV="$ROOT/.venv"
REQUIREMENTS="$ROOT/tests/python/requirements.txt"
STAMP="$VENV/.requirements.sha256"

# Creates .venv and installs the requirements, unless the installed set matches the
# current requirements.txt (recorded as its hash) and still imports.
ensure_venv() {
    local want
    want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
    if [[ -x $VENV/bin/python && -f $STAMP && "$(cat "$STAMP")" == "$want" ]] &&
        "$VENV/bin/python" -c 'import grpc, grpc_tools, grpc_health, grpc_reflection, prometheus_client, yaml, openapi_spec_validator' 2>/dev/null; then
        echo "venv: up to date ($VENV)"
        return
    fi
    if ! "$VENV/bin/python" -c '' 2>/dev/null; then
        echo "venv: creating $VENV"
        rm -rf "$VENV"
        python3 -m venv "$VENV" || {
            rm -rf "$VENV"
            apt_install python3-venv
            python3 -m venv "$VENV"
        }
    fi
    echo "venv: installing $REQUIREMENTS"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    echo "$want" >"$STAMP"
}

# --------------------------------------------------------------------------- main

step "services"
ensure_services

step "prometheus tools"
ensure_prometheus

# keel bench's HTML report is rendered by a real headless browser in its test.
step "chromium (keel bench's HTML report test)"
command -v chromium >/dev/null 2>&1 || apt_install --no-install-recommends chromium
chromium --version

step "python venv"
ensure_venv
# The Rust tests find this venv's python themselves (tests/common/python.rs). Not exported
# as KEEL_TEST_PYTHON: `keel serve` treats every KEEL_* variable it doesn't know as a config
# error, and the test fixture passes its environment on to `keel serve`.

step "cargo fmt --check"
cargo fmt --all -- --check

step "buf lint (proto/ by buf's STANDARD rules)"
if ! command -v npx >/dev/null 2>&1; then
    echo "npx not found; installing Debian's nodejs and npm"
    apt_install nodejs npm
fi
npx --yes @bufbuild/buf@1.75.0 lint proto

step "crate boundaries (scripts/check-boundaries.sh)"
scripts/check-boundaries.sh

step "no sleeps ordering events in tests (scripts/check-sleeps.sh)"
scripts/check-sleeps.sh

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

# The benchmark servers' counting builds (scripts/bench-greeter.sh), so they cannot rot.
step "cargo clippy, count-allocs builds"
cargo clippy --workspace --all-targets \
    --features keel-cli/count-allocs,bare-greeter/count-allocs,h2-floor/count-allocs -- -D warnings

if command -v cargo-nextest >/dev/null 2>&1; then
    step "cargo nextest run"
    cargo nextest run --workspace --profile ci
else
    step "cargo test (cargo-nextest not installed)"
    cargo test --workspace --all-targets -- --test-threads 2
fi

step "doctests"
cargo test --workspace --doc

step "cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "README commands (tests/readme_check.py: release builds, then the README's examples)"
command -v curl >/dev/null 2>&1 || apt_install curl # the README's examples use it
"$VENV/bin/python" tests/readme_check.py

step "all passed in $((SECONDS - START_TIME))s"
