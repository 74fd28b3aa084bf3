#!/usr/bin/env python3
"""An OTLP/gRPC trace sink for benchmarks: accepts every Export call and discards the spans.

Usage: otlp-sink.py [HOST:PORT]   (default 127.0.0.1:0)
Prints "otlp sink listening on HOST:PORT" once serving, and after every export
"otlp sink received E exports, S spans" (running totals), so a benchmark can tell that
spans really arrived. Uses grpcio's generic handlers with raw bytes, so no OpenTelemetry
stubs are needed: the spans are counted by walking the protobuf wire format, and an empty
message is a valid ExportTraceServiceResponse.
"""
import signal
import sys
from concurrent import futures

import grpc

exports = 0
spans = 0


def fields(message: bytes):
    """(field number, bytes) of each length-delimited field; other wire types skipped."""
    i = 0
    while i < len(message):
        key, i = varint(message, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = varint(message, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = varint(message, i)
            yield number, message[i : i + length]
            i += length
        else:
            raise ValueError(f"wire type {wire}")


def varint(data: bytes, i: int):
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def count_spans(request: bytes) -> int:
    """ExportTraceServiceRequest.resource_spans(1) -> scope_spans(2) -> spans(2)."""
    return sum(
        1
        for n, resource_spans in fields(request) if n == 1
        for m, scope_spans in fields(resource_spans) if m == 2
        for k, _ in fields(scope_spans) if k == 2
    )


def export(request: bytes, context) -> bytes:
    global exports, spans
    exports += 1
    spans += count_spans(request)
    print(f"otlp sink received {exports} exports, {spans} spans", flush=True)
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
