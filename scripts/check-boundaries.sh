#!/usr/bin/env bash
# Checks the crate boundaries docs/ARCHITECTURE.md promises: a crate a user may take alone
# (the client, the gateway, the dynamic codec, the shared vocabulary, health, TLS, authz,
# certificates) compiles neither Keel's server nor the OpenTelemetry SDK nor prometheus-client.
# Reads `cargo tree` of each
# crate's normal dependencies, so a new dependency that drags one in fails CI here, and
# checks each crate alone (`cargo check -p`), with only the features it asks for: inside
# the workspace another crate's features can hide a missing one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LEAVES=(keel-core keel-tls keel-client keel-dynamic keel-health keel-gateway keel-certs keel-authz)
FORBIDDEN='^(keel|keel-telemetry|opentelemetry_sdk|opentelemetry-otlp|prometheus-client) '

status=0
for crate in "${LEAVES[@]}"; do
    found="$(cargo tree --quiet -p "$crate" -e normal --prefix none | grep -E "$FORBIDDEN" | sort -u || true)"
    if [[ -n $found ]]; then
        echo "error: $crate depends on what it must not (see docs/ARCHITECTURE.md, \"Crates\"):" >&2
        echo "  ${found//$'\n'/$'\n'  }" >&2
        echo "  find the path with: cargo tree -p $crate -e normal -i <name>" >&2
        status=1
    else
        echo "$crate: no server, no OpenTelemetry SDK, no prometheus-client"
    fi
    if ! cargo check --quiet -p "$crate" --lib; then
        echo "error: $crate does not build on its own (a tonic or hyper feature it uses is not in its Cargo.toml?)" >&2
        status=1
    fi
done
exit "$status"
