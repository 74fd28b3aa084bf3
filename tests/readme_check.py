"""Runs README.md's commands as written against the real binaries and checks their answers.

The commands come from README.md itself: every ```sh block of the sections "The two
commands", "A first payment", "keel call", "keel bench", "Devices over MQTT", "Security: ..." and "Keel's demo server", split into shell
commands. What each command must answer (exit status, JSON fields, lines) lives here, one
expectation per command in README order; a command without an expectation, or an expectation
whose command is gone, fails the check, so the two stay in step. JSON checks are strict on
the fields the README claims and tolerant of extra ones. Claims the README makes in prose
(a replay comes back with "replayed": true, a reused key is FAILED_PRECONDITION, ...) are
checked with the README's own commands, changed only where the claim says so.

Servers start on the README's ports (50051, 9090; `keel gateway` 8080, 9091), each from a
fresh working directory under target/ (payments keeps SQLite in ./data), and are stopped
however the check ends. `keel` in the README is the keel-cli release binary: target/release
goes first on PATH.

Usage: python3 tests/readme_check.py   (from scripts/test.sh, after the cargo tests)
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GRPC_PORT, ADMIN_PORT = 50051, 9090
GATEWAY_PORT, GATEWAY_ADMIN_PORT = 8080, 9091
BRIDGE_ADMIN_PORT = 9093
# Bounds: a client command, a server's start (cargo checks freshness; the build ran before)
# and a graceful stop (the README's drain delay, 5 s, is well inside it).
COMMAND_TIMEOUT_S = 120
START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 45
DRAIN_DELAY_S = 5.0


class CheckFailed(Exception):
    """A README command failed, or answered other than the README says."""


# ----------------------------------------------------------------------------- README


@dataclass
class Command:
    """One shell command of a README block, with the comments the README puts beside it."""

    text: str
    comment: str = ""  # the trailing `# ...` on its last line
    notes: list[str] = field(default_factory=list)  # whole-line comments right after it

    def __str__(self) -> str:
        return self.text


def section(title: str) -> str:
    """The text of README section `## title`, up to the next `## ` heading."""
    pattern = rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)"
    match = re.search(pattern, README.read_text(), re.M | re.S)
    if not match:
        raise CheckFailed(f'README.md has no section "## {title}"')
    return match.group(1)


def blocks(title: str, language: str) -> list[str]:
    """The ```language fenced blocks of a README section, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", section(title), re.M | re.S)


def is_complete(text: str) -> bool:
    """Whether bash reads `text` as whole commands (no open quote, pipe or continuation)."""
    if text.rstrip().endswith("\\"):
        return False
    return subprocess.run(["bash", "-n", "-c", text], capture_output=True).returncode == 0


def trailing_comment(text: str) -> str:
    """The `# ...` comment ending the command's last line, if any (a `#` outside quotes)."""
    last_line_start = text.rfind("\n") + 1
    for match in re.finditer(r"\s#", text[last_line_start:]):
        at = last_line_start + match.start()
        try:
            shlex.split(text[:at])
        except ValueError:  # inside a quoted string
            continue
        return text[at:].strip()[1:].strip()
    return ""


def commands(block: str) -> list[Command]:
    """The commands of a shell block: lines joined until bash reads a whole command."""
    found: list[Command] = []
    pending = ""
    for line in block.splitlines():
        if not pending and line.startswith("#"):
            if not found:
                raise CheckFailed(f"a block starts with a comment, not a command: {line}")
            found[-1].notes.append(line[1:].strip())
            continue
        if not pending and not line.strip():
            continue
        pending = f"{pending}\n{line}" if pending else line
        if is_complete(pending):
            found.append(Command(pending, trailing_comment(pending)))
            pending = ""
    if pending:
        raise CheckFailed(f"a README block ends inside a command:\n{pending}")
    return found


# ----------------------------------------------------------------------------- processes


def scratch_dir() -> Path:
    """A fresh working directory under target/ (cargo still finds the workspace from it)."""
    (ROOT / "target").mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="readme-check-", dir=ROOT / "target"))


@dataclass
class Result:
    """What a finished command printed and how it exited."""

    command: str
    code: int
    stdout: str
    stderr: str

    def json(self):
        """stdout as one JSON value."""
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as error:
            raise CheckFailed(f"stdout is not one JSON value ({error})") from None


def environment(target: Path) -> dict[str, str]:
    """The environment commands run in: this one, with target/release first on PATH and no
    KEEL_*, PAYMENTS_* or OTEL_* settings that would change the servers' behaviour."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KEEL_", "PAYMENTS_", "OTEL_"))
    }
    env["PATH"] = f"{target / 'release'}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(command: str, cwd: Path, env: dict[str, str]) -> Result:
    """Runs a command with bash (pipefail), in its own process group, killed at the bound."""
    process = subprocess.Popen(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise CheckFailed(
            f"no answer within {COMMAND_TIMEOUT_S}s\nstdout:\n{stdout}\nstderr:\n{stderr}"
        ) from None
    except BaseException:  # the checker itself is stopped: leave nothing running
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return Result(command, process.returncode, stdout, stderr)


def port_in_use(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def http_get(path: str, port: int = ADMIN_PORT) -> tuple[int, str]:
    """GET 127.0.0.1:port/path: status and body (any status, not an exception)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as answer:
        return answer.code, answer.read().decode()


def not_serving(status: int, body: str) -> bool:
    """Whether an answer of /readyz says NOT_SERVING: 503 and {"status": "not_serving"}."""
    try:
        return status == 503 and json.loads(body).get("status") == "not_serving"
    except (json.JSONDecodeError, AttributeError):
        return False


class Server:
    """A README server command running in the background from a fresh working directory.

    Its output is read by threads as it comes, so waiting for a line waits on the line
    itself. `stop` shuts it down the way the README says (SIGTERM); `kill` ends its whole
    process group at once, whatever state it is in. `ports` are the ones it listens on,
    the admin port last.
    """

    def __init__(self, command: str, env: dict[str, str], workdir: Path | None = None,
                 ports: tuple[int, int] = (GRPC_PORT, ADMIN_PORT)):
        self.admin_port = ports[-1]
        for port in ports:
            if port_in_use(port):
                raise CheckFailed(
                    f"127.0.0.1:{port} is busy: the README's commands need it; stop what "
                    f"listens there (ss -ltnp 'sport = :{port}') and run again"
                )
        self.workdir = workdir or scratch_dir()
        self.command = command
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.changed = threading.Condition()
        self.process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for name in self.lines:
            threading.Thread(target=self._read, args=(name,), daemon=True).start()

    def _read(self, name: str) -> None:
        for line in getattr(self.process, name):
            with self.changed:
                self.lines[name].append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_for_stdout(self, expected: list[str]) -> None:
        """Waits for the first lines of stdout, which must be `expected`; fails if the server
        exits first."""
        deadline = time.monotonic() + START_TIMEOUT_S
        with self.changed:
            while len(self.lines["stdout"]) < len(expected):
                if self.process.poll() is not None:
                    raise CheckFailed(f"the server exited with {self.process.returncode}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CheckFailed(f"the server did not print {expected} in {START_TIMEOUT_S}s")
                # Wakes on every new line; the timeout only notices an exit without output.
                self.changed.wait(timeout=min(left, 1.0))
            printed = self.lines["stdout"][: len(expected)]
        if printed != expected:
            raise CheckFailed(f"the server printed {printed}, the README says {expected}")

    def log(self) -> str:
        """The last lines the server printed, for a failure report."""
        with self.changed:
            out, err = self.lines["stdout"][-20:], self.lines["stderr"][-40:]
        return "server stdout:\n  " + "\n  ".join(out) + "\nserver stderr:\n  " + "\n  ".join(err)

    def stop(self, while_draining: Callable[[], None] | None = None) -> None:
        """SIGTERM, then what the README promises: /readyz turns NOT_SERVING at once, the
        server keeps serving for the drain delay (`while_draining` runs then), and exits 0."""
        signalled = time.monotonic()
        os.killpg(self.process.pid, signal.SIGTERM)

        def readyz() -> tuple[int, str]:
            return http_get("/readyz", self.admin_port)

        # The signal is handled asynchronously: poll /readyz, briefly, until it says so.
        while not not_serving(*readyz()):
            if time.monotonic() - signalled > 2:
                raise CheckFailed(f"2s after SIGTERM /readyz still answers {readyz()}")
            # sleep: poll interval of a bounded poll on the condition
            time.sleep(0.02)
        if while_draining:
            while_draining()
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"no exit within {STOP_TIMEOUT_S}s of SIGTERM") from None
        took = time.monotonic() - signalled
        if code != 0:
            raise CheckFailed(f"the server exited with {code} after SIGTERM, not 0")
        if took < DRAIN_DELAY_S:
            raise CheckFailed(f"exited {took:.1f}s after SIGTERM, within the drain delay")
        print(f"   stopped: NOT_SERVING at once, exit 0 after {took:.1f}s")

    def kill(self) -> None:
        """Ends the server's process group now (if still running) and removes its directory."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


# ----------------------------------------------------------------------------- expectations


def subset(expected, actual, path: str = "") -> None:
    """Fails unless every field of `expected` is in `actual` with that value (recursively;
    a list must have as many elements, each holding the expected one's fields)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            raise CheckFailed(f"{path or 'answer'}: expected an object, got {actual!r}")
        for key, value in expected.items():
            if key not in actual:
                raise CheckFailed(f"{path}{key}: missing in {json.dumps(actual)}")
            subset(value, actual[key], f"{path}{key}.")
    elif isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            raise CheckFailed(f"{path.rstrip('.')}: expected {len(expected)} items: {actual!r}")
        for index, (want, got) in enumerate(zip(expected, actual)):
            subset(want, got, f"{path.rstrip('.')}[{index}].")
    elif expected != actual:
        raise CheckFailed(f"{path.rstrip('.')}: expected {expected!r}, got {actual!r}")


def readme_payment() -> dict:
    """The payment JSON the README shows ("abridged"), from its ```json block."""
    return json.loads(blocks("A first payment", "json")[0])["payment"]


def like_readme_payment(payment: dict) -> None:
    """Fails unless `payment` is the README's: equal fields, the same prefix where the
    README cuts a value short with …, and an RFC 3339 time where it shows one."""
    for key, shown in readme_payment().items():
        if key not in payment:
            raise CheckFailed(f"payment.{key}: missing in {json.dumps(payment)}")
        if shown.endswith("…"):  # an example id cut short: the prefix before its hex digits
            if not payment[key].startswith(shown[:-1].rstrip("0123456789abcdef")):
                raise CheckFailed(f"payment.{key}: {payment[key]!r} is not like {shown!r}")
        elif key == "createdAt":
            try:
                datetime.datetime.fromisoformat(payment[key].replace("Z", "+00:00"))
            except ValueError:
                raise CheckFailed(f"payment.createdAt: {payment[key]!r} is no time") from None
        elif payment[key] != shown:
            raise CheckFailed(f"payment.{key}: expected {shown!r}, got {payment[key]!r}")


def both(*checks: Callable[[Result], None]) -> Callable[[Result], None]:
    """Every one of `checks`."""

    def check(result: Result) -> None:
        for each in checks:
            each(result)

    return check


def exits(code: int) -> Callable[[Result], None]:
    """Exit status `code`."""

    def check(result: Result) -> None:
        if result.code != code:
            raise CheckFailed(f"exit status {result.code}, expected {code}")

    return check


def ok_json(expected: dict) -> Callable[[Result], None]:
    """Exit 0 and a JSON answer holding `expected`."""

    def check(result: Result) -> None:
        exits(0)(result)
        subset(expected, result.json())

    return check


def ok_payment(remember: dict | None = None, replayed: bool = False) -> Callable[[Result], None]:
    """Exit 0 and the README's payment; `remember` keeps its id, or must already hold it."""

    def check(result: Result) -> None:
        exits(0)(result)
        answer = result.json()
        like_readme_payment(answer.get("payment", {}))
        if answer.get("replayed", False) != replayed:
            raise CheckFailed(f'"replayed" should be {replayed}: {result.stdout}')
        if remember is not None:
            paid = remember.setdefault("paymentId", answer["payment"]["paymentId"])
            if answer["payment"]["paymentId"] != paid:
                raise CheckFailed(f"paymentId {answer['payment']['paymentId']}, expected {paid}")

    return check


def ok_lines(*expected: str) -> Callable[[Result], None]:
    """Exit 0 and stdout containing each of `expected` as a line."""

    def check(result: Result) -> None:
        exits(0)(result)
        missing = [line for line in expected if line not in result.stdout.splitlines()]
        if missing:
            raise CheckFailed(f"stdout lacks the lines {missing}")

    return check


def http_answer(status: int, expected: dict) -> Callable[[Result], None]:
    """curl ... -w ' %{http_code}\\n': the status at the end, a JSON body holding `expected`."""

    def check(result: Result) -> None:
        exits(0)(result)
        body, _, got = result.stdout.rstrip("\n").rpartition(" ")
        if got != str(status):
            raise CheckFailed(f"HTTP status {got}, expected {status}")
        try:
            subset(expected, json.loads(body))
        except json.JSONDecodeError:
            raise CheckFailed(f"the body is not JSON: {body!r}") from None

    return check


def rpc_error(code: int, reason: str) -> Callable[[Result], None]:
    """keel call failing with 64 + code and the ErrorInfo reason among its details."""

    def check(result: Result) -> None:
        exits(64 + code)(result)
        if not re.search(rf'"reason":\s*"{reason}"', result.stderr):
            raise CheckFailed(f"stderr lacks ErrorInfo reason {reason}")

    return check


def rest_error(code: int, *detail_types: str, reason: str) -> Callable[[Result], None]:
    """The REST answer to a failed call: 400 and the google.rpc.Status, its ErrorInfo with
    `reason` and details of each of `detail_types` (google.rpc names) among its details."""

    def check(result: Result) -> None:
        http_answer(400, {"code": code})(result)
        details = json.loads(result.stdout.rstrip("\n").rpartition(" ")[0]).get("details", [])
        types = {detail.get("@type", "").rpartition(".")[2] for detail in details}
        if not any(detail.get("reason") == reason for detail in details):
            raise CheckFailed(f"no ErrorInfo with reason {reason} in {details}")
        if missing := set(detail_types) - types:
            raise CheckFailed(f"no {missing} among the details {details}")

    return check


def shows_text_block(title: str) -> Callable[[Result], None]:
    """stderr holds the lines of the section's ```text block, in order ("..." skips)."""

    def check(result: Result) -> None:
        shown = [line.rstrip() for line in blocks(title, "text")[0].splitlines()]
        printed = iter(line.rstrip() for line in result.stderr.splitlines())
        for line in shown:  # `in` consumes `printed` up to the match: lines stay in order
            if line.strip() != "..." and line not in printed:
                raise CheckFailed(f"stderr lacks the README's line {line!r} (or not in order)")

    return check


def one_page_of_payments(remember: dict) -> Callable[[Result], None]:
    """Exit 0; a last page (no nextPageToken) holding the one payment made."""

    def check(result: Result) -> None:
        exits(0)(result)
        page = result.json()
        if [payment["paymentId"] for payment in page.get("payments", [])] != [remember["paymentId"]]:
            raise CheckFailed(f"expected a page of payment {remember['paymentId']}")
        if page.get("nextPageToken"):
            raise CheckFailed("one payment: the first page is the last, without nextPageToken")

    return check


@dataclass
class Expect:
    """What one README command must answer; `marker` must be in the command's text."""

    marker: str
    check: Callable[[Result], None] | None  # None: a server, started and checked apart
    skip: str = ""  # why the checker does not run it


def with_amount(command: Command, amount: int, key: str | None = None) -> str:
    """A README payment command with another amount (and idempotency key)."""
    text = re.sub(r'("amount_?[mM]inor": ?"?)2500', rf"\g<1>{amount}", command.text)
    return text.replace("pay-1", key) if key else text


# ----------------------------------------------------------------------------- the run


class Checker:
    """Runs the README's blocks in order, one server at a time, and reports as it goes."""

    def __init__(self) -> None:
        metadata = subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        )
        self.target = Path(json.loads(metadata.stdout)["target_directory"])
        self.env = environment(self.target)
        self.server: Server | None = None
        # Where client commands run when no server is up (the repository root otherwise).
        self.cwd: Path = ROOT
        self.checked = 0

    def start(self, command: Command | str, wait_for: list[str],
              workdir: Path | None = None) -> Server:
        print(f"\n$ {command}   (server)", flush=True)
        self.server = Server(str(command), self.env, workdir)
        self.server.wait_for_stdout(wait_for)
        print(f"   serving: {', '.join(wait_for)}")
        return self.server

    def stop(self, while_draining: Callable[[], None] | None = None) -> None:
        print(f"\n$ kill -TERM <{self.server.command}>", flush=True)
        self.server.stop(while_draining)
        self.server.kill()
        self.server = None

    def run(self, command: Command | str, check: Callable[[Result], None]) -> Result:
        """Runs a client command (where the server runs) and checks its answer."""
        print(f"$ {command}", flush=True)
        cwd = self.server.workdir if self.server else self.cwd
        result = run(str(command), cwd, self.env)
        try:
            check(result)
        except CheckFailed as failure:
            raise CheckFailed(
                f"{failure}\ncommand: {command}\nexit status: {result.code}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            ) from None
        self.checked += 1
        return result

    def block(self, title: str, index: int, expectations: list[Expect]) -> list[Command]:
        """Runs the `index`th sh block of a section, one expectation per command."""
        found = commands(blocks(title, "sh")[index])
        print(f"\n==> README \"{title}\", block {index + 1}: {len(found)} commands")
        if len(found) != len(expectations):
            listing = "\n".join(f"  {command}" for command in found)
            raise CheckFailed(
                f'"{title}" block {index + 1} has {len(found)} commands and the checker '
                f"{len(expectations)} expectations; update tests/readme_check.py:\n{listing}"
            )
        for command, expect in zip(found, expectations):
            if expect.marker not in command.text:
                raise CheckFailed(
                    f'"{title}" block {index + 1}: the command\n  {command}\nhas no '
                    f"{expect.marker!r}: the README changed; update tests/readme_check.py"
                )
            if expect.skip:
                print(f"$ {command}   (skipped: {expect.skip})")
            elif expect.check is not None:
                self.run(command, expect.check)
        return found

    def build(self) -> None:
        """Builds what the README's `cargo run --release` commands run, each as they will."""
        for package in ("payments", "keel-cli"):
            started = time.monotonic()
            print(f"\n==> cargo build --release -p {package}", flush=True)
            subprocess.run(["cargo", "build", "--release", "-p", package], cwd=ROOT, check=True)
            print(f"   built in {time.monotonic() - started:.0f}s")

    def payments_over_rest(self) -> None:
        """The run command, then "A first payment" over REST, with its prose claims."""
        run_block = commands(blocks("The two commands", "sh")[0])
        self.block("The two commands", 0, [Expect("cargo run --release -p payments", None)])
        self.block("The two commands", 1, [Expect("scripts/test.sh", None, "runs this check")])
        # The comment lines under the run command are what it prints once serving.
        if not run_block[0].notes:
            raise CheckFailed("the README no longer shows what `payments` prints when serving")
        self.start(run_block[0], run_block[0].notes)

        paid: dict = {}
        flow = self.block("A first payment", 0, [
            Expect('"alice"', ok_json({"account": {"accountId": "alice", "currency": "EUR"}})),
            Expect('"bob"', ok_json({"account": {"accountId": "bob", "currency": "EUR"}})),
            Expect(":deposit", ok_json({"account": {"balanceMinor": "10000"}})),
            Expect("/v1/payments", ok_payment(paid)),
            Expect("/alice/payments?page_size=", one_page_of_payments(paid)),
            Expect("--json '{}'", rest_error(3, "BadRequest", reason="INVALID_REQUEST")),
        ])
        print("\n==> README's claims about a first payment, over REST")
        pay = flow[3]
        self.run(pay, ok_payment(paid, replayed=True))
        self.run("curl -s 127.0.0.1:50051/v1/accounts/alice",
                 ok_json({"account": {"balanceMinor": "7500"}}))  # no money moved again
        status = " -w ' %{http_code}\\n'"
        self.run(with_amount(pay, 2600) + status, rest_error(9, reason="IDEMPOTENCY_KEY_REUSED"))
        self.run(with_amount(pay, 999999, key="pay-big") + status,
                 rest_error(9, "PreconditionFailure", reason="INSUFFICIENT_FUNDS"))
        self.run("curl -s 127.0.0.1:50051/v1/accounts -d 'accountId=dave&currency=EUR'" + status,
                 http_answer(415, {}))
        # Pages: a negative size, and a token of Bob's listing (two payments, one a page) given
        # for Alice's, are 400s with a BadRequest.
        pages = "curl -s '127.0.0.1:50051/v1/accounts/{}/payments?{}'"
        self.run(pages.format("alice", "page_size=-1") + status,
                 rest_error(3, "BadRequest", reason="INVALID_REQUEST"))
        self.run(with_amount(pay, 100, key="pay-2"), exits(0))
        first = self.run(pages.format("bob", "page_size=1"), exits(0)).json()
        self.run(pages.format("alice", "page_token=" + first["nextPageToken"]) + status,
                 rest_error(3, "BadRequest", reason="INVALID_REQUEST"))
        self.stop()

    def payments_over_grpc(self) -> None:
        """The gRPC flow of "A first payment" (on a fresh ./data, REST off), then "keel call"."""
        run_command = commands(blocks("The two commands", "sh")[0])[0]
        self.start(f"{run_command} -- --set rest_gateway=false", run_command.notes)
        print("\n==> README: `--set rest_gateway=false` serves gRPC only")
        self.run("curl -s 127.0.0.1:50051/v1/accounts/alice -w '%{http_code}'", not_rest)

        call, accounts = "keel call 127.0.0.1:50051", "payments.v1.AccountService"
        paid: dict = {}
        flow = self.block("A first payment", 1, [
            Expect(f"{call} {accounts}/CreateAccount", ok_json(
                {"account": {"accountId": "alice"}})),
            Expect(f"{call} {accounts}/CreateAccount", ok_json({"account": {"accountId": "bob"}})),
            Expect(f"{call} {accounts}/Deposit", ok_json({"account": {"balanceMinor": "10000"}})),
            Expect(f"{call} payments.v1.PaymentService/Process", ok_payment(paid)),
        ])
        print("\n==> README's claims about a first payment, over gRPC")
        self.run(flow[3], ok_payment(paid, replayed=True))
        self.run(with_amount(flow[3], 2600), rpc_error(9, "IDEMPOTENCY_KEY_REUSED"))

        completed = "PAYMENT_STATUS_COMPLETED"
        self.block("keel call", 0, [
            Expect(f"{call} list", ok_lines(
                "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                "payments.v1.AccountService", "payments.v1.PaymentService")),
            Expect(f"{call} list payments.v1.PaymentService", ok_lines(
                "payments.v1.PaymentService.Process", "payments.v1.PaymentService.ProcessBatch")),
            Expect(f"{call} describe payments.v1.ProcessRequest", ok_lines(
                "message ProcessRequest {", "  string idempotency_key = 1;")),
            Expect("CreateAccount", ok_json(
                {"account": {"accountId": "carol", "currency": "EUR"}})),
            Expect("idempotency-key: pay-2", ok_json({"payment": {
                "idempotencyKey": "pay-2", "payeeAccountId": "carol", "amountMinor": "2500",
                "status": completed}})),
            Expect("ProcessBatch -d @", ok_json({"accepted": 2, "results": [
                {"response": {"payment": {"idempotencyKey": key, "status": completed}}}
                for key in ("b-1", "b-2")]})),
        ])
        self.block("keel call", 1, [
            Expect('"amount_minor":999999', both(
                rpc_error(9, "INSUFFICIENT_FUNDS"), shows_text_block("keel call"))),
        ])
        self.block("keel bench", 0, [
            Expect("keel bench 127.0.0.1:50051 payments.v1.PaymentService/Process", ok_lines(
                "Summary:", "  Count:\t2000", "  [OK]\t2000 responses")),
        ])
        print("\n==> README's exit statuses of keel call")
        self.run(f"{call} payments.v1.AccountService/CreateAccount -d '{{'", exits(2))
        self.stop()
        self.run(f"{call} list", exits(1))

    def bridge(self) -> None:
        """ "Devices over MQTT": payments on its defaults, `keel bridge` beside it on the
        machine's Mosquitto, then a device's payment and a refused one, each answered on the
        response topic."""
        title = "Devices over MQTT (keel bridge)"
        run_command = commands(blocks("The two commands", "sh")[0])[0]
        self.start(run_command, run_command.notes)
        serve = commands(blocks(title, "sh")[0])[0]
        print(f"\n$ {serve}   (server, beside payments)", flush=True)
        bridge = Server(str(serve), self.env, self.server.workdir, ports=(BRIDGE_ADMIN_PORT,))
        try:
            bridge.wait_for_stdout(serve.notes)
            # Readiness is probed in the background (the broker connection every 200 ms), and
            # is NOT_SERVING until the log is open: wait for it as an operator or a Kubernetes
            # probe would, before the walk-through.
            deadline = time.monotonic() + 10
            while http_get("/readyz", BRIDGE_ADMIN_PORT)[0] != 200:
                if time.monotonic() > deadline:
                    raise CheckFailed("10s after it started, the bridge's /readyz answers "
                                      f"{http_get('/readyz', BRIDGE_ADMIN_PORT)}")
                # sleep: poll interval of a bounded poll on the condition
                time.sleep(0.02)
            ready = {"status": "serving", "checks": {
                name: {"status": "passing"} for name in ("mqtt", "log", "target")}}
            self.block(title, 1, [
                Expect('"dora"', ok_json({"account": {"accountId": "dora"}})),
                Expect('"ezra"', ok_json({"account": {"accountId": "ezra"}})),
                Expect("Deposit", ok_json({"account": {"balanceMinor": "1000"}})),
                Expect('"m-1"', ok_json({"code": "OK", "device": "meter-7", "key": "meter-7:m-1",
                                         "response": {"payment": {"amountMinor": "300"}}})),
                Expect('"m-2"', ok_json({"code": "FAILED_PRECONDITION", "status": {
                    "details": [{"reason": "INSUFFICIENT_FUNDS"}, {}]}})),
                Expect("9093/readyz", ok_json(ready)),
            ])
            print("\n==> README: one payment moved 300, the refused one nothing")
            self.run("keel call 127.0.0.1:50051 payments.v1.AccountService/GetAccount "
                     "-d '{\"account_id\":\"dora\"}'",
                     ok_json({"account": {"balanceMinor": "700"}}))
            print(f"\n$ kill -TERM <{serve}>", flush=True)
            os.killpg(bridge.process.pid, signal.SIGTERM)
            if bridge.process.wait(timeout=STOP_TIMEOUT_S) != 0:
                raise CheckFailed(f"keel bridge exited with {bridge.process.returncode} on SIGTERM")
        except CheckFailed as failure:
            raise CheckFailed(f"{failure}\n{bridge.log()}") from None
        finally:
            if bridge.process.poll() is None:
                os.killpg(bridge.process.pid, signal.SIGKILL)
                bridge.process.wait()
        self.stop()

    def security(self) -> None:
        """ "Security": certificates, payments with mTLS and a policy, then its callers, in a
        fresh directory standing for the repository root (deploy/ linked in)."""
        root = scratch_dir()
        (root / "deploy").symlink_to(ROOT / "deploy")
        self.cwd = root
        title = "Security: mutual TLS, identities, authorization"
        setup = self.block(title, 0, [
            Expect("keel certs dev --out certs", exits(0)),
            Expect("--spiffe spiffe://keel.test/intruder", exits(0)),
            Expect("server.tls.client_auth=required", None),
        ])
        self.start(setup[2], setup[2].notes, workdir=root)
        owner = "spiffe://keel.test/client"
        self.block(title, 1, [
            Expect("CreateAccount", ok_json({"account": {"accountId": "erin", "owner": owner}})),
            Expect("certs/intruder.pem", rpc_error(7, "POLICY_DENIED")),
            Expect("certs/ca.pem \\\n",
                   both(exits(1), stderr_has("requires a client certificate"))),
            Expect("curl -s", ok_json({"account": {"accountId": "erin", "owner": owner}})),
            Expect("tls doctor localhost:50051 --ca certs/ca.pem --cert", exits(0)),
            Expect("tls doctor localhost:50051 --ca certs/ca.pem", exits(1)),
        ])
        self.gateway_in_front(title, root, owner)
        self.stop()
        self.cwd = ROOT

    def gateway_in_front(self, title: str, root: Path, owner: str) -> None:
        """The Security section's gateway: HTTPS in front of payments' mTLS, beside payments
        (on its own ports), then stopped as the README says servers stop."""
        serve = commands(blocks(title, "sh")[2])[0]
        print(f"\n$ {serve}   (server, beside payments)", flush=True)
        gateway = Server(str(serve), self.env, root, ports=(GATEWAY_PORT, GATEWAY_ADMIN_PORT))
        try:
            gateway.wait_for_stdout(serve.notes)
            self.block(title, 2, [
                Expect("keel gateway --upstream https://localhost:50051", None),
                Expect("https://localhost:8080/v1/accounts/erin",
                       ok_json({"account": {"accountId": "erin", "owner": owner}})),
            ])
            print("\n==> README: without its client certificate the gateway stops at start")
            one_line = " ".join(str(serve).replace("\\\n", " ").split())
            without = re.sub(r" --upstream-cert \S+ --upstream-key \S+", "", one_line)
            if without == one_line:
                raise CheckFailed("the README's gateway no longer presents a client certificate")
            self.run(without, both(exits(1), stderr_has("requires a client certificate")))
            print(f"\n$ kill -TERM <{serve}>", flush=True)
            gateway.stop()
        except CheckFailed as failure:
            raise CheckFailed(f"{failure}\n{gateway.log()}") from None
        finally:
            if gateway.process.poll() is None:
                os.killpg(gateway.process.pid, signal.SIGKILL)
                gateway.process.wait()

    def demo_server(self) -> None:
        """ "Keel's demo server", then its Ctrl-C claims."""
        serve, *clients = commands(blocks("Keel's demo server", "sh")[0])
        self.start(serve, [f"grpc listening on 127.0.0.1:{GRPC_PORT}",
                           f"admin listening on 127.0.0.1:{ADMIN_PORT}"])
        hello = ok_json({"message": "Hello Ada"})
        self.block("Keel's demo server", 0, [
            Expect("-- serve", None),
            Expect("interop-client", interop_passed),
            # The README shows the answer as the command's comment.
            Expect("/readyz", ok_json(json.loads(clients[1].comment))),
            Expect("/metrics", metrics_lines),
            Expect("helloworld.Greeter/SayHello", hello),
        ])
        print("\n==> README: on SIGTERM, NOT_SERVING, served for the drain delay, exit 0")
        self.stop(while_draining=lambda: self.run(clients[-1], hello))


def stderr_has(text: str) -> Callable[[Result], None]:
    """`text` among what the command wrote to stderr."""

    def check(result: Result) -> None:
        if text not in result.stderr:
            raise CheckFailed(f"stderr lacks {text!r}")

    return check


def not_rest(result: Result) -> None:
    """No REST answer: the connection refused the request, or a status other than 2xx."""
    if result.stdout.strip()[-3:].startswith("2"):
        raise CheckFailed(f"a REST request was answered with {result.stdout[-3:]}")


def interop_passed(result: Result) -> None:
    """Exit 0 and a `PASS <case>` line for every case run."""
    exits(0)(result)
    lines = result.stdout.splitlines()
    if not lines or not all(line.startswith("PASS ") for line in lines):
        raise CheckFailed("not every interop case passed")
    print(f"   {len(lines)} interop cases passed")


def metrics_lines(result: Result) -> None:
    """Exit 0 and at least one keel_server_* sample."""
    exits(0)(result)
    if not re.search(r"^keel_server_\w+ \d", result.stdout, re.M):
        raise CheckFailed("no keel_server_* sample in /metrics")


def main() -> int:
    started = time.monotonic()
    checker = Checker()
    # SIGTERM (CI's timeout, a developer's kill) unwinds like an error, so servers are killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        checker.build()
        built = time.monotonic()
        checker.payments_over_rest()
        checker.payments_over_grpc()
        checker.bridge()
        checker.security()
        checker.demo_server()
    except CheckFailed as failure:
        print(f"\nREADME check FAILED: {failure}", file=sys.stderr)
        if checker.server:
            print(checker.server.log(), file=sys.stderr)
        return 1
    finally:
        if checker.server:
            checker.server.kill()
    print(f"\nREADME check passed: {checker.checked} answers checked in "
          f"{time.monotonic() - built:.0f}s, {time.monotonic() - started:.0f}s with the builds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
