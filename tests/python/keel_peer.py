"""An independent gRPC peer (Python grpcio, i.e. grpc-core) for testing `keel serve`.

Keel's own tests talk to the server with tonic; a misunderstanding of the protocol
shared by tonic's client and server would pass them unnoticed. This peer exercises
the server with a different gRPC implementation:

* ``interop``: the standard interop cases (as described in the gRPC repository's
  doc/interop-test-descriptions.md), the grpc.health.v1 service and server
  reflection v1 and v1alpha. Prints ``PASS name`` or ``FAIL name: why`` per check
  and exits non-zero if any check fails.
* ``load``: continuous unary helloworld.Greeter/SayHello calls from C concurrent
  tasks on ONE channel for S seconds; prints one JSON line
  ``{"ok": N, "failed": M, "errors": {"StatusCode.X": count}}``. Used to check that
  the server's connection-age GOAWAYs cost a real grpc-core client no RPC.
* ``hello``: one unary helloworld.Greeter/SayHello call; prints ``OK message`` or
  ``FAIL StatusCode.X: details`` and exits 0 or 1. For handshakes that must pass or
  fail.
* ``serve``: a helloworld.Greeter server over TLS (BoringSSL), optionally asking for or
  requiring client certificates: prints ``listening on PORT``, then, for each call, one
  JSON line ``{"method": ..., "name": ..., "peer": {...}}`` with what grpc-core read
  from the client's certificate (its auth context: ``peer_spiffe_id``,
  ``x509_subject_alternative_name``, ``x509_common_name``, ...). Serves until its
  standard input ends or it is killed. For testing Keel's client against another TLS
  stack.

The client commands speak TLS when given ``--ca`` (the roots the server's chain must
build to), with ``--cert``/``--key`` for mutual TLS and ``--server-name`` for a server
reached by address whose certificate names a host (``grpc.ssl_target_name_override``).

Stubs are generated at run time from the repository's proto/ directory with
``python -m grpc_tools.protoc`` into a temporary directory; nothing generated is
committed. Requirements: tests/python/requirements.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import concurrent.futures
import dataclasses
import json
import queue
import subprocess
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
PROTO_FILES = (
    "helloworld/helloworld.proto",
    "grpc/testing/empty.proto",
    "grpc/testing/messages.proto",
    "grpc/testing/test.proto",
    "grpc/health/v1/health.proto",
)
# Deadline for every RPC of the interop checks, so a stuck server fails a check
# instead of hanging the run.
RPC_TIMEOUT = 10.0
ECHO_INITIAL_KEY = "x-grpc-test-echo-initial"
ECHO_INITIAL_VALUE = "test_initial_metadata_value"
ECHO_TRAILING_KEY = "x-grpc-test-echo-trailing-bin"
ECHO_TRAILING_VALUE = b"\xab\xab\xab"
REQUIRED_SERVICES = (
    "helloworld.Greeter",
    "grpc.testing.TestService",
    "grpc.health.v1.Health",
)


# --- stubs ---


def generate_stubs(out_dir: Path) -> None:
    """Runs grpc_tools.protoc on PROTO_FILES, writing *_pb2.py and *_pb2_grpc.py."""
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"protoc failed ({result.returncode}):\n{result.stderr}")


def load_stubs() -> types.SimpleNamespace:
    """Generates the stubs into a temporary directory and imports them.

    The protos' package ``grpc.*`` collides with grpcio's own top-level ``grpc``
    package, so the generated ``grpc/`` directory is appended to ``grpc.__path__``:
    ``grpc.testing`` and ``grpc.health.v1`` then resolve to the generated modules.
    """
    tmp = tempfile.TemporaryDirectory(prefix="keel-peer-stubs-")
    atexit.register(tmp.cleanup)
    out_dir = Path(tmp.name)
    generate_stubs(out_dir)
    sys.path.insert(0, str(out_dir))
    grpc.__path__.append(str(out_dir / "grpc"))

    from grpc.health.v1 import health_pb2, health_pb2_grpc
    from grpc.testing import empty_pb2, messages_pb2, test_pb2_grpc
    from helloworld import helloworld_pb2, helloworld_pb2_grpc

    return types.SimpleNamespace(
        empty=empty_pb2,
        messages=messages_pb2,
        test_grpc=test_pb2_grpc,
        health=health_pb2,
        health_grpc=health_pb2_grpc,
        hello=helloworld_pb2,
        hello_grpc=helloworld_pb2_grpc,
    )


# --- helpers ---


class CheckFailed(Exception):
    """A check's assertion did not hold; the message says what was expected and got."""


def ensure(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def expect_status(
    call: Callable[[], object], code: grpc.StatusCode, details: str | None = None
) -> None:
    """Runs ``call`` (which must raise grpc.RpcError) and checks its status."""
    try:
        result = call()
    except grpc.RpcError as err:
        ensure(
            err.code() == code, f"expected {code}, got {err.code()}: {err.details()!r}"
        )
        if details is not None:
            ensure(
                err.details() == details,
                f"expected details {details!r}, got {err.details()!r}",
            )
        return
    raise CheckFailed(f"expected {code}, but the call succeeded with {result!r:.200}")


def zeros(size: int) -> bytes:
    return bytes(size)


def check_payload(body: bytes, size: int, what: str = "payload") -> None:
    ensure(len(body) == size, f"{what} is {len(body)} bytes, expected {size}")
    ensure(body == zeros(size), f"{what} is not all zeros")


def metadata_value(
    metadata: Iterable[tuple[str, object]] | None, key: str
) -> object | None:
    for k, v in metadata or ():
        if k == key:
            return v
    return None


class RequestQueue:
    """A request iterator fed one message at a time, for bidi and client streams."""

    _CLOSE = object()

    def __init__(self) -> None:
        self._queue: queue.Queue[object] = queue.Queue()

    def put(self, request: object) -> None:
        self._queue.put(request)

    def close(self) -> None:
        """Half-closes the stream (ends the iterator)."""
        self._queue.put(self._CLOSE)

    def __iter__(self):
        while (item := self._queue.get()) is not self._CLOSE:
            yield item


# --- TLS ---


@dataclasses.dataclass(frozen=True)
class ClientTls:
    """A client's TLS: roots, an optional certificate and key, a name override."""

    ca: bytes
    cert: bytes | None
    key: bytes | None
    server_name: str | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClientTls | None:
        """TLS when ``--ca`` is given; plaintext otherwise."""
        if args.ca is None:
            for flag in ("cert", "key", "server_name"):
                if getattr(args, flag) is not None:
                    raise SystemExit(f"--{flag.replace('_', '-')} needs --ca")
            return None
        if (args.cert is None) != (args.key is None):
            raise SystemExit("--cert and --key go together")
        return cls(
            ca=Path(args.ca).read_bytes(),
            cert=Path(args.cert).read_bytes() if args.cert else None,
            key=Path(args.key).read_bytes() if args.key else None,
            server_name=args.server_name,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=self.key,
            certificate_chain=self.cert,
        )

    def options(self) -> list[tuple[str, str]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def open_channel(target: str, tls: ClientTls | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, tls.credentials(), options=tls.options())


def open_aio_channel(target: str, tls: ClientTls | None) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, tls.credentials(), options=tls.options())


# --- interop cases ---


class Peer:
    """The checks; each method named ``check_*`` raises on failure."""

    def __init__(self, channel: grpc.Channel, pb: types.SimpleNamespace) -> None:
        self.channel = channel
        self.pb = pb
        self.test = pb.test_grpc.TestServiceStub(channel)
        self.health = pb.health_grpc.HealthStub(channel)

    # Requests --------------------------------------------------------------

    def payload(self, size: int):
        return self.pb.messages.Payload(body=zeros(size))

    def duplex_request(self, response_size: int, payload_size: int):
        m = self.pb.messages
        return m.StreamingOutputCallRequest(
            response_parameters=[m.ResponseParameters(size=response_size)],
            payload=self.payload(payload_size),
        )

    def large_unary_request(self):
        return self.pb.messages.SimpleRequest(
            response_size=314159, payload=self.payload(271828)
        )

    # Interop cases -------------------------------------------------------------

    def check_empty_unary(self) -> None:
        response = self.test.EmptyCall(self.pb.empty.Empty(), timeout=RPC_TIMEOUT)
        ensure(response is not None, "response is None")
        ensure(response.ByteSize() == 0, f"response is not empty: {response!r}")

    def check_large_unary(self) -> None:
        response = self.test.UnaryCall(self.large_unary_request(), timeout=RPC_TIMEOUT)
        check_payload(response.payload.body, 314159)

    def check_client_streaming(self) -> None:
        m = self.pb.messages
        requests = [
            m.StreamingInputCallRequest(payload=self.payload(n))
            for n in (27182, 8, 1828, 45904)
        ]
        response = self.test.StreamingInputCall(iter(requests), timeout=RPC_TIMEOUT)
        ensure(
            response.aggregated_payload_size == 74922,
            f"aggregated_payload_size is {response.aggregated_payload_size}, expected 74922",
        )

    def check_server_streaming(self) -> None:
        m = self.pb.messages
        sizes = [31415, 9, 2653, 58979]
        request = m.StreamingOutputCallRequest(
            response_parameters=[m.ResponseParameters(size=n) for n in sizes]
        )
        responses = list(self.test.StreamingOutputCall(request, timeout=RPC_TIMEOUT))
        got = [len(r.payload.body) for r in responses]
        ensure(got == sizes, f"response sizes {got}, expected {sizes}")
        for r in responses:
            check_payload(r.payload.body, len(r.payload.body))

    def check_ping_pong(self) -> None:
        steps = [(31415, 27182), (9, 8), (2653, 1828), (58979, 45904)]
        requests = RequestQueue()
        responses = self.test.FullDuplexCall(iter(requests), timeout=RPC_TIMEOUT)
        try:
            for response_size, payload_size in steps:
                requests.put(self.duplex_request(response_size, payload_size))
                response = next(responses, None)
                ensure(
                    response is not None,
                    f"stream ended before the {response_size}-byte response",
                )
                check_payload(response.payload.body, response_size, "response payload")
        finally:
            requests.close()
        extra = list(responses)
        ensure(not extra, f"{len(extra)} responses after half-close, expected none")
        ensure(responses.code() == grpc.StatusCode.OK, f"status {responses.code()}")

    def check_empty_stream(self) -> None:
        responses = list(self.test.FullDuplexCall(iter(()), timeout=RPC_TIMEOUT))
        ensure(not responses, f"{len(responses)} responses, expected none")

    def check_cancel_after_begin(self) -> None:
        requests = RequestQueue()
        future = self.test.StreamingInputCall.future(
            iter(requests), timeout=RPC_TIMEOUT
        )
        try:
            # Let the headers reach the server first: the spec cancels "after
            # metadata has been sent", so the server sees the stream and its RST.
            # sleep: grpcio's future exposes no "headers sent" event to wait on
            time.sleep(0.1)
            future.cancel()
            ensure(
                future.code() == grpc.StatusCode.CANCELLED,
                f"status {future.code()}, expected CANCELLED",
            )
        finally:
            requests.close()
        self.ensure_still_serving()

    def check_cancel_after_first_response(self) -> None:
        requests = RequestQueue()
        responses = self.test.FullDuplexCall(iter(requests), timeout=RPC_TIMEOUT)
        try:
            requests.put(self.duplex_request(31415, 27182))
            response = next(responses, None)
            ensure(response is not None, "stream ended before the first response")
            responses.cancel()
            ensure(
                responses.code() == grpc.StatusCode.CANCELLED,
                f"status {responses.code()}, expected CANCELLED",
            )
        finally:
            requests.close()
        self.ensure_still_serving()

    def check_timeout_on_sleeping_server(self) -> None:
        requests = RequestQueue()
        requests.put(
            self.pb.messages.StreamingOutputCallRequest(payload=self.payload(27182))
        )
        responses = self.test.FullDuplexCall(iter(requests), timeout=0.001)
        try:
            expect_status(lambda: list(responses), grpc.StatusCode.DEADLINE_EXCEEDED)
        finally:
            requests.close()

    def check_status_code_and_message(self) -> None:
        m = self.pb.messages
        status = m.EchoStatus(code=2, message="test status message")
        unary = m.SimpleRequest(response_status=status)
        expect_status(
            lambda: self.test.UnaryCall(unary, timeout=RPC_TIMEOUT),
            grpc.StatusCode.UNKNOWN,
            status.message,
        )
        duplex = m.StreamingOutputCallRequest(response_status=status)
        expect_status(
            lambda: list(self.test.FullDuplexCall(iter([duplex]), timeout=RPC_TIMEOUT)),
            grpc.StatusCode.UNKNOWN,
            status.message,
        )

    def check_custom_metadata(self) -> None:
        metadata = (
            (ECHO_INITIAL_KEY, ECHO_INITIAL_VALUE),
            (ECHO_TRAILING_KEY, ECHO_TRAILING_VALUE),
        )
        response, call = self.test.UnaryCall.with_call(
            self.large_unary_request(), metadata=metadata, timeout=RPC_TIMEOUT
        )
        check_payload(response.payload.body, 314159)
        self.check_echoed_metadata("UnaryCall", call)

        duplex = self.test.FullDuplexCall(
            iter([self.duplex_request(314159, 271828)]),
            metadata=metadata,
            timeout=RPC_TIMEOUT,
        )
        responses = list(duplex)
        ensure(
            len(responses) == 1,
            f"FullDuplexCall: {len(responses)} responses, expected 1",
        )
        check_payload(responses[0].payload.body, 314159, "FullDuplexCall payload")
        self.check_echoed_metadata("FullDuplexCall", duplex)

    @staticmethod
    def check_echoed_metadata(rpc: str, call) -> None:
        initial = metadata_value(call.initial_metadata(), ECHO_INITIAL_KEY)
        ensure(
            initial == ECHO_INITIAL_VALUE,
            f"{rpc}: initial metadata {ECHO_INITIAL_KEY}={initial!r}",
        )
        trailing = metadata_value(call.trailing_metadata(), ECHO_TRAILING_KEY)
        ensure(
            trailing == ECHO_TRAILING_VALUE,
            f"{rpc}: trailing metadata {ECHO_TRAILING_KEY}={trailing!r}",
        )

    def check_unimplemented_method(self) -> None:
        # TestService declares UnimplementedCall; the server must not implement it.
        expect_status(
            lambda: self.test.UnimplementedCall(
                self.pb.empty.Empty(), timeout=RPC_TIMEOUT
            ),
            grpc.StatusCode.UNIMPLEMENTED,
        )

    def check_unimplemented_service(self) -> None:
        stub = self.pb.test_grpc.UnimplementedServiceStub(self.channel)
        expect_status(
            lambda: stub.UnimplementedCall(self.pb.empty.Empty(), timeout=RPC_TIMEOUT),
            grpc.StatusCode.UNIMPLEMENTED,
        )

    def ensure_still_serving(self) -> None:
        """After a cancelled call, the connection and server must still work."""
        self.test.EmptyCall(self.pb.empty.Empty(), timeout=RPC_TIMEOUT)

    # Health ----------------------------------------------------------------------

    def health_status(self, service: str):
        request = self.pb.health.HealthCheckRequest(service=service)
        return self.health.Check(request, timeout=RPC_TIMEOUT).status

    def status_name(self, status: int) -> str:
        return self.pb.health.HealthCheckResponse.ServingStatus.Name(status)

    def check_health_check_server(self) -> None:
        status = self.status_name(self.health_status(""))
        ensure(status == "SERVING", f'Check("") is {status}, expected SERVING')

    def check_health_check_greeter(self) -> None:
        status = self.status_name(self.health_status("helloworld.Greeter"))
        ensure(
            status == "SERVING",
            f'Check("helloworld.Greeter") is {status}, expected SERVING',
        )

    def check_health_check_unknown(self) -> None:
        expect_status(
            lambda: self.health_status("no.such.Service"), grpc.StatusCode.NOT_FOUND
        )

    @staticmethod
    def first_watch_message(call):
        first = next(call, None)
        if first is None:
            raise CheckFailed(
                f"Watch ended without a message: {call.code()} {call.details()!r}"
            )
        return first

    def check_health_watch_known(self) -> None:
        request = self.pb.health.HealthCheckRequest(service="helloworld.Greeter")
        call = self.health.Watch(request, timeout=RPC_TIMEOUT)
        try:
            first = self.first_watch_message(call)
            status = self.status_name(first.status)
            ensure(
                status == "SERVING",
                f"first Watch message is {status}, expected SERVING",
            )
        finally:
            call.cancel()

    def check_health_watch_unknown(self) -> None:
        request = self.pb.health.HealthCheckRequest(service="no.such.Service")
        call = self.health.Watch(request, timeout=RPC_TIMEOUT)
        try:
            first = self.first_watch_message(call)
            status = self.status_name(first.status)
            ensure(
                status == "SERVICE_UNKNOWN",
                f"first Watch message is {status}, expected SERVICE_UNKNOWN",
            )
            # sleep: the behaviour under test is that nothing happens: Watch stays open
            time.sleep(0.6)
            if call.done():
                raise CheckFailed(
                    f"Watch ended within 0.6 s ({call.code()} {call.details()!r}); it must stay open"
                )
        finally:
            call.cancel()

    def check_health_list(self) -> None:
        response = self.health.List(
            self.pb.health.HealthListRequest(), timeout=RPC_TIMEOUT
        )
        statuses = {
            name: self.status_name(r.status) for name, r in response.statuses.items()
        }
        ensure(statuses, "List returned no entries")
        greeter = statuses.get("helloworld.Greeter")
        ensure(
            greeter == "SERVING",
            f"List has helloworld.Greeter={greeter}; all entries: {statuses}",
        )

    # Reflection ------------------------------------------------------------------

    def reflection_exchange(self, version: str, requests: list) -> list:
        """Sends ``requests`` on one ServerReflectionInfo stream, returns the responses.

        grpcio-reflection ships only v1alpha's messages; v1's are identical on the
        wire (same messages and field numbers, another package), so both versions
        are spoken through the raw stream with the v1alpha classes.
        """
        method = self.channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        responses = list(method(iter(requests), timeout=RPC_TIMEOUT))
        ensure(
            len(responses) == len(requests),
            f"{len(responses)} responses to {len(requests)} requests",
        )
        for response in responses:
            if response.HasField("error_response"):
                err = response.error_response
                raise CheckFailed(
                    f"error_response {err.error_code}: {err.error_message!r}"
                )
        return responses

    def check_reflection_list(self, version: str) -> None:
        request = reflection_pb2.ServerReflectionRequest(list_services="*")
        (response,) = self.reflection_exchange(version, [request])
        names = {s.name for s in response.list_services_response.service}
        missing = [s for s in REQUIRED_SERVICES if s not in names]
        ensure(not missing, f"list_services lacks {missing}; got {sorted(names)}")

    def check_reflection_symbol(self, version: str) -> None:
        request = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="helloworld.Greeter"
        )
        (response,) = self.reflection_exchange(version, [request])
        blobs = response.file_descriptor_response.file_descriptor_proto
        ensure(blobs, "file_descriptor_response has no file_descriptor_proto")
        files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in blobs]
        greeter = [
            f.name
            for f in files
            if f.package == "helloworld" and any(s.name == "Greeter" for s in f.service)
        ]
        ensure(
            greeter,
            f"no returned file declares helloworld.Greeter; files: {[f.name for f in files]}",
        )


def interop_checks(peer: Peer) -> list[tuple[str, Callable[[], None]]]:
    """The checks in the order they run, as (name, function)."""
    checks = [
        (name[len("check_") :], getattr(peer, name))
        for name in (
            "check_empty_unary",
            "check_large_unary",
            "check_client_streaming",
            "check_server_streaming",
            "check_ping_pong",
            "check_empty_stream",
            "check_cancel_after_begin",
            "check_cancel_after_first_response",
            "check_timeout_on_sleeping_server",
            "check_status_code_and_message",
            "check_custom_metadata",
            "check_unimplemented_method",
            "check_unimplemented_service",
            "check_health_check_server",
            "check_health_check_greeter",
            "check_health_check_unknown",
            "check_health_watch_known",
            "check_health_watch_unknown",
            "check_health_list",
        )
    ]
    for version in ("v1", "v1alpha"):
        checks.append(
            (
                f"reflection_{version}_list_services",
                lambda v=version: peer.check_reflection_list(v),
            )
        )
        checks.append(
            (
                f"reflection_{version}_file_containing_symbol",
                lambda v=version: peer.check_reflection_symbol(v),
            )
        )
    return checks


def describe_failure(err: BaseException) -> str:
    if isinstance(err, CheckFailed):
        return str(err)
    if isinstance(err, grpc.RpcError):
        return f"RPC failed with {err.code()}: {err.details()!r}"
    return "".join(traceback.format_exception_only(type(err), err)).strip()


def run_interop(target: str, tls: ClientTls | None, only: list[str] | None) -> int:
    pb = load_stubs()
    with open_channel(target, tls) as channel:
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
        checks = interop_checks(Peer(channel, pb))
        if only:
            unknown = set(only) - {name for name, _ in checks}
            if unknown:
                raise SystemExit(f"unknown case(s): {sorted(unknown)}")
            checks = [(name, fn) for name, fn in checks if name in only]
        failed = 0
        for name, check in checks:
            try:
                check()
            except Exception as err:  # noqa: BLE001 - every failure is reported, not raised
                failed += 1
                print(f"FAIL {name}: {describe_failure(err)}", flush=True)
            else:
                print(f"PASS {name}", flush=True)
    print(f"interop: {len(checks) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


# --- load ---


async def run_load(
    target: str, tls: ClientTls | None, seconds: float, concurrency: int
) -> dict:
    """Unary SayHello calls from ``concurrency`` tasks on one channel, ``seconds`` long."""
    pb = load_stubs()
    ok = 0
    errors: collections.Counter[str] = collections.Counter()
    async with open_aio_channel(target, tls) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=RPC_TIMEOUT)
        stub = pb.hello_grpc.GreeterStub(channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds

        async def worker(worker_id: int) -> None:
            nonlocal ok
            n = 0
            while loop.time() < deadline:
                name = f"load-{worker_id}-{n}"
                n += 1
                try:
                    reply = await stub.SayHello(
                        pb.hello.HelloRequest(name=name), timeout=RPC_TIMEOUT
                    )
                except grpc.aio.AioRpcError as err:
                    errors[str(err.code())] += 1
                    continue
                if reply.message == f"Hello {name}":
                    ok += 1
                else:
                    errors["BadReply"] += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return {"ok": ok, "failed": sum(errors.values()), "errors": dict(errors)}


# --- hello ---


def run_hello(target: str, tls: ClientTls | None, name: str) -> int:
    """One SayHello call, without waiting for the channel to be ready first: a failed
    handshake fails the call, and its details say why."""
    pb = load_stubs()
    with open_channel(target, tls) as channel:
        stub = pb.hello_grpc.GreeterStub(channel)
        try:
            reply = stub.SayHello(pb.hello.HelloRequest(name=name), timeout=RPC_TIMEOUT)
        except grpc.RpcError as err:
            print(f"FAIL {err.code()}: {err.details()}", flush=True)
            return 1
    print(f"OK {reply.message}", flush=True)
    return 0


# --- serve ---


def peer_report(context: grpc.ServicerContext) -> dict:
    """What grpc-core read from the client's certificate: the auth context's properties
    (the PEM certificate left out), each a list of strings, plus ``peer_identities``."""
    report = {
        key: sorted(v.decode(errors="replace") for v in values)
        for key, values in context.auth_context().items()
        if key != "x509_pem_cert"
    }
    report["peer_identities"] = sorted(
        v.decode(errors="replace") for v in context.peer_identities() or ()
    )
    return report


def run_serve(args: argparse.Namespace) -> int:
    """Serves helloworld.Greeter over TLS until standard input ends."""
    pb = load_stubs()
    if (args.client_auth == "none") != (args.client_ca is None):
        raise SystemExit("--client-ca and --client-auth optional|required go together")
    credentials = grpc.ssl_server_credentials(
        [(Path(args.key).read_bytes(), Path(args.cert).read_bytes())],
        root_certificates=(
            Path(args.client_ca).read_bytes() if args.client_auth != "none" else None
        ),
        require_client_auth=args.client_auth == "required",
    )

    class Greeter(pb.hello_grpc.GreeterServicer):
        def reply(self, method: str, request, context, greeting: str):
            line = {
                "method": method,
                "name": request.name,
                "peer": peer_report(context),
            }
            print(json.dumps(line, sort_keys=True), flush=True)
            return pb.hello.HelloReply(message=f"{greeting} {request.name}")

        def SayHello(self, request, context):
            return self.reply("SayHello", request, context, "Hello")

        def SayHelloAgain(self, request, context):
            return self.reply("SayHelloAgain", request, context, "Hello again")

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    pb.hello_grpc.add_GreeterServicer_to_server(Greeter(), server)
    port = server.add_secure_port(f"{args.host}:{args.port}", credentials)
    if port == 0:
        raise SystemExit(f"cannot listen on {args.host}:{args.port}")
    server.start()
    print(f"listening on {port}", flush=True)
    # The test that started this peer holds its standard input: when that ends (the test
    # is done or died), so does the server.
    sys.stdin.read()
    server.stop(grace=None)
    return 0


# --- CLI ---


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("interop", "load", "hello"):
        sub = commands.add_parser(name)
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, required=True)
        sub.add_argument("--ca", help="TLS: the roots (PEM) the server must chain to")
        sub.add_argument("--cert", help="TLS: this client's certificate chain (PEM)")
        sub.add_argument("--key", help="TLS: the private key of --cert (PEM)")
        sub.add_argument(
            "--server-name", help="TLS: the name the server's certificate must hold"
        )
        if name == "interop":
            sub.add_argument(
                "--case", action="append", help="run only this check (repeatable)"
            )
        elif name == "load":
            sub.add_argument("--seconds", type=float, required=True)
            sub.add_argument("--concurrency", type=int, required=True)
        else:
            sub.add_argument("--name", default="grpcio")
    serve = commands.add_parser("serve")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0: an ephemeral port")
    serve.add_argument("--cert", required=True, help="certificate chain (PEM)")
    serve.add_argument("--key", required=True, help="private key of --cert (PEM)")
    serve.add_argument("--client-ca", help="roots (PEM) client certificates chain to")
    serve.add_argument(
        "--client-auth",
        choices=("none", "optional", "required"),
        default="none",
        help="whether client certificates are asked for (optional) or required",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.command == "serve":
        return run_serve(args)
    target = f"{args.host}:{args.port}"
    tls = ClientTls.from_args(args)
    if args.command == "interop":
        return run_interop(target, tls, args.case)
    if args.command == "hello":
        return run_hello(target, tls, args.name)
    result = asyncio.run(run_load(target, tls, args.seconds, args.concurrency))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
