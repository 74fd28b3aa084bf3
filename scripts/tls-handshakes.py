#!/usr/bin/env python3
"""Opens new TLS connections one after another and reports how many it made, for
scripts/bench-tls.sh: each connection does a full handshake (or resumes the first one's
session with --resume), offers ALPN h2, starts HTTP/2 (client preface and SETTINGS), reads
until the server's SETTINGS arrive (by then TLS 1.3 session tickets have been read too) and
closes with close_notify, so the session stays resumable; a resumed connection offers the newest session, as clients do
(a TLS 1.3 ticket may be good for one use only). OpenSSL through Python's ssl module: no
code shared with rustls.

Why not `openssl s_time`: without -www it never reads, so TLS 1.3 tickets never arrive and
-reuse cannot resume; with -www it sends HTTP/1.0 to an HTTP/2 port, the server closes
without close_notify and OpenSSL then refuses to resume that session.

Usage: tls-handshakes.py HOST:PORT (--seconds S | --count N) [--resume]
                         [--cert FILE --key FILE]
Prints: "connections N resumed R seconds T cipher C". Exit 1 if any connection fails.
"""

import argparse
import socket
import ssl
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS_EMPTY = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
FRAME_SETTINGS = 4


def one_connection(ctx, host, port, session):
    """One connection; returns (resumed, session, cipher) or raises."""
    with socket.create_connection((host, port), timeout=60) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        try:
            if tls.selected_alpn_protocol() != "h2":
                raise RuntimeError(f"ALPN chose {tls.selected_alpn_protocol()!r}, not h2")
            tls.sendall(PREFACE + SETTINGS_EMPTY)
            buf = b""
            while True:
                while len(buf) >= 9:
                    length = int.from_bytes(buf[0:3], "big")
                    if len(buf) < 9 + length:
                        break
                    if buf[3] == FRAME_SETTINGS and not buf[4] & 1:
                        return tls.session_reused, tls.session, tls.cipher()[0]
                    buf = buf[9 + length :]
                data = tls.recv(65536)
                if not data:
                    raise RuntimeError("the server closed before its SETTINGS")
                buf += data
        finally:
            try:
                tls.unwrap()  # close_notify: a session is resumable only after a clean close
            except (OSError, ssl.SSLError):
                pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--seconds", type=float)
    group.add_argument("--count", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    host, port = args.address.rsplit(":", 1)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the client's cost is not what is measured
    ctx.set_alpn_protocols(["h2"])
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)

    session = None
    if args.resume:  # the session to resume, from a first connection that is not counted
        _, session, _ = one_connection(ctx, host, int(port), None)
        if session is None or not session.has_ticket:
            print("the first connection got no session ticket", file=sys.stderr)
            return 1
    made = resumed = 0
    cipher = "-"
    start = time.monotonic()
    deadline = start + (args.seconds or 0)
    while (args.count is not None and made < args.count) or (
        args.seconds is not None and time.monotonic() < deadline
    ):
        try:
            was_resumed, newest, cipher = one_connection(ctx, host, int(port), session)
        except Exception as error:  # noqa: BLE001 - any failure fails the run
            print(f"connection {made + 1} failed: {error!r}", file=sys.stderr)
            return 1
        made += 1
        resumed += was_resumed
        if args.resume:
            session = newest
    print(f"connections {made} resumed {resumed} seconds {time.monotonic() - start:.3f} cipher {cipher}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
