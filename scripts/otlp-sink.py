#!/usr/bin/env python3
"""An OTLP/gRPC trace sink for benchmarks: accepts every Export call and discards the spans.

Usage: otlp-sink.py [HOST:PORT]   (default 127.0.0.1:0)
Prints "otlp sink listening on HOST:PORT" once serving, then counts exports on SIGTERM.
Uses grpcio's generic handlers with raw bytes, so no OpenTelemetry stubs are needed: an
empty message is a valid ExportTraceServiceResponse.
"""
import signal
import sys
from concurrent import futures

import grpc

exports = 0


def export(request: bytes, context) -> bytes:
    global exports
    exports += 1
    return b""


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:0"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(address)
    server.start()
    host = address.rsplit(":", 1)[0]
    print(f"otlp sink listening on {host}:{port}", flush=True)

    def stop(*_):
        print(f"otlp sink received {exports} exports", flush=True)
        server.stop(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
