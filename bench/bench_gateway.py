"""What the model gateway costs: every external agent's model traffic streams through it
(`server/forkyard/gateway/`), so its added latency and its load on the daemon matter.

In one run, against the fake model server of the tests (real HTTP on 127.0.0.1), with the
gateway in a child process of its own (as it is in the daemon, apart from the agent):

1. the latency it adds per call: streamed chat completions (`openai` SDK) and streamed
   Anthropic Messages (`anthropic` SDK), each called directly and through the gateway's
   Unix socket, interleaved (the order alternating) so machine noise hits both paths
   alike; time to the first content delta and to the whole response, median and p99,
   and the difference;
2. the gateway's memory and CPU with 16 agents streaming at once (one grant each, half
   of them OpenAI, half Anthropic): the child's VmRSS idle and at its peak during the
   load, and its CPU time (utime + stime) during the load, as a share of one core, per
   call and per MB relayed; every stream must arrive whole, and the usage the gateway
   metered for each grant must match what the model reported.

    uv run python bench/bench_gateway.py [--samples 200] [--agents 16] [--load-calls 3]
    uv run python bench/bench_gateway.py --quick    # CI: 20 samples, 1 call per agent
    uv run python bench/bench_gateway.py --nagle    # the fake model without TCP_NODELAY

Any failed call, truncated stream or wrong metering exits non-zero. The child is this file
run with `--serve-gateway SPEC` (SPEC: the grants, as JSON); it prints its grants' tokens
and sockets as a JSON line, then on a line of expected call counts on stdin it prints
what it metered per grant and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import anthropic
    import openai
    from tests.fakes.model_server import FakeModelServer, Reply

# The fake model server of the tests: real HTTP on 127.0.0.1, no key, no network.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: The variable the child's grants read the key from, and the key the model must see.
KEY_ENV = "FORKYARD_BENCH_KEY"
REAL_KEY = "sk-bench-real-key"
MODEL = "fake-model"
PROMPT = [{"role": "user", "content": "Say something."}]
CALL_TIMEOUT = 60.0


class BenchFailure(Exception):
    """A call failed, a stream came back incomplete, or the metering is wrong."""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def words(count: int) -> str:
    """A reply of `count` words: the fake model streams one word per content chunk."""
    return " ".join(f"word{n}" for n in range(count))


# -- the child: a gateway and its grants ---------------------------------------------------


def serve_gateway(spec: dict[str, Any]) -> None:
    """Run a Gateway with the grants of `spec` until told what to expect on stdin."""
    from forkyard.gateway.grants import Grant
    from forkyard.gateway.host import Gateway
    from forkyard_protocol import Usage

    directory = Path(tempfile.mkdtemp(prefix="fy-gw-bench-"))
    gateway = Gateway(directory)
    gateway.start()
    metered: list[list[Usage]] = []
    refused: list[str] = []
    changed = threading.Condition()

    def recorder(calls: list[Usage]) -> Callable[[Usage], None]:
        def on_usage(part: Usage) -> None:
            with changed:
                calls.append(part)
                changed.notify_all()

        return on_usage

    try:
        issued = []
        for entry in spec["grants"]:
            calls: list[Usage] = []
            metered.append(calls)
            grant = Grant(
                label=str(entry["label"]),
                upstream=str(entry["upstream"]),
                anthropic_upstream=bool(entry["anthropic"]),
                key_env=KEY_ENV,
                environ=lambda: {KEY_ENV: REAL_KEY},
                price=lambda _model: None,
                refusal=lambda _spent: None,
                on_usage=recorder(calls),
                on_refused=refused.append,
            )
            token, path = gateway.issue(grant)
            issued.append({"token": token, "socket": str(path)})
        print(json.dumps({"grants": issued}), flush=True)
        line = sys.stdin.readline()
        expected: list[int] = json.loads(line)["expect"] if line.strip() else []
        with changed:
            # A call is metered just after its last byte went out: wait for the last ones.
            changed.wait_for(
                lambda: all(len(m) >= n for m, n in zip(metered, expected, strict=False)),
                timeout=10,
            )
            totals = [
                {
                    "calls": len(calls),
                    "input_tokens": sum(u.input_tokens for u in calls),
                    "output_tokens": sum(u.output_tokens for u in calls),
                }
                for calls in metered
            ]
        print(json.dumps({"metered": totals, "refused": refused}), flush=True)
    finally:
        # Not closed: `Gateway.close()` with grants live waits for their sockets' tasks,
        # which never end, and revoking just before closing makes the loop log an
        # InvalidStateError. The loop's thread is a daemon: the process exits anyway.
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Issued:
    token: str
    socket: str


class GatewayChild:
    """The gateway's process, seen from the bench: its pid, its grants, its metering."""

    def __init__(self, grants: list[dict[str, Any]]) -> None:
        spec = json.dumps({"grants": grants})
        command = [sys.executable, str(Path(__file__).resolve()), "--serve-gateway", spec]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=30)
            raise BenchFailure(f"the gateway child exited ({self.process.returncode})")
        self.grants = [Issued(**entry) for entry in json.loads(line)["grants"]]

    @property
    def pid(self) -> int:
        return self.process.pid

    def finish(self, expected_calls: list[int]) -> list[dict[str, int]]:
        """What the child metered per grant, once it saw `expected_calls` calls each."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"expect": expected_calls}) + "\n")
        self.process.stdin.close()
        line = self.process.stdout.readline()
        self.process.wait(timeout=30)
        if not line:
            raise BenchFailure("the gateway child printed no metering")
        report = json.loads(line)
        if report["refused"]:
            raise BenchFailure(f"the gateway refused calls: {report['refused']}")
        metered: list[dict[str, int]] = report["metered"]
        return metered

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextmanager
def gateway_child(grants: list[dict[str, Any]]) -> Iterator[GatewayChild]:
    child = GatewayChild(grants)
    try:
        yield child
    finally:
        child.close()


def proc_status_mb(pid: int, field_name: str) -> float:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise BenchFailure(f"no {field_name} for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid`, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- clients -------------------------------------------------------------------------------


@dataclass
class Timing:
    first_token: float
    whole: float


def openai_client(base_url: str, key: str, socket: str | None) -> openai.OpenAI:
    import httpx2
    import openai

    transport = httpx2.HTTPTransport(uds=socket) if socket else None
    return openai.OpenAI(
        base_url=base_url,
        api_key=key,
        max_retries=0,
        timeout=CALL_TIMEOUT,
        http_client=httpx2.Client(transport=transport, timeout=CALL_TIMEOUT),
    )


def anthropic_client(base_url: str, key: str, socket: str | None) -> anthropic.Anthropic:
    import anthropic
    import httpx2

    transport = httpx2.HTTPTransport(uds=socket) if socket else None
    return anthropic.Anthropic(
        base_url=base_url,
        api_key=key,
        max_retries=0,
        timeout=CALL_TIMEOUT,
        http_client=httpx2.Client(transport=transport, timeout=CALL_TIMEOUT),
    )


def stream_openai(client: openai.OpenAI, expected: str) -> Timing:
    """One streamed chat completion; usage asked for on both paths alike."""
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    with client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say something."}],
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        for chunk in stream:
            if chunk.choices and (text := chunk.choices[0].delta.content):
                if first is None:
                    first = time.perf_counter()
                parts.append(text)
    ended = time.perf_counter()
    return checked(started, first, ended, "".join(parts), expected)


def stream_anthropic(client: anthropic.Anthropic, expected: str) -> Timing:
    from anthropic.types import RawContentBlockDeltaEvent, TextDelta

    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    with client.messages.create(
        model=MODEL,
        max_tokens=4096,
        messages=[{"role": "user", "content": "Say something."}],
        stream=True,
    ) as stream:
        for event in stream:
            if isinstance(event, RawContentBlockDeltaEvent) and isinstance(event.delta, TextDelta):
                if first is None:
                    first = time.perf_counter()
                parts.append(event.delta.text)
    ended = time.perf_counter()
    return checked(started, first, ended, "".join(parts), expected)


def checked(started: float, first: float | None, ended: float, got: str, expected: str) -> Timing:
    if first is None or got != expected:
        raise BenchFailure(f"stream incomplete: {len(got)} of {len(expected)} characters")
    return Timing(first - started, ended - started)


# -- 1. latency ----------------------------------------------------------------------------


@dataclass
class Route:
    """One API, called directly and through the gateway."""

    name: str
    direct: Callable[[], Timing]
    gateway: Callable[[], Timing]
    timings: dict[str, list[Timing]] = field(default_factory=lambda: {"direct": [], "gateway": []})


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


def report_latency(path: Route, chunks: int, delay_ms: float) -> None:
    print(f"{path.name}: {chunks} content chunks, {delay_ms:g} ms apart")
    for label, attribute in (("first token", "first_token"), ("whole response", "whole")):
        direct: list[float] = [getattr(t, attribute) for t in path.timings["direct"]]
        gateway: list[float] = [getattr(t, attribute) for t in path.timings["gateway"]]
        med_d, med_g = statistics.median(direct), statistics.median(gateway)
        p99_d, p99_g = percentile(direct, 0.99), percentile(gateway, 0.99)
        print(
            f"  {label:<15} direct median {ms(med_d)} p99 {ms(p99_d)}   "
            f"gateway median {ms(med_g)} p99 {ms(p99_g)}   "
            f"added median {(med_g - med_d) * 1000:+7.2f} ms p99 {(p99_g - p99_d) * 1000:+7.2f} ms"
            f"   (n={len(direct)} each)"
        )
    whole_d = statistics.median(t.whole for t in path.timings["direct"])
    whole_g = statistics.median(t.whole for t in path.timings["gateway"])
    print(f"  added per chunk (median whole response) {(whole_g - whole_d) / chunks * 1e6:+.1f} µs")


def latency(fake: FakeModelServer, samples: int, chunks: int, delay_ms: float) -> None:
    text = words(chunks)
    grants = [
        {"label": "bench openai", "upstream": fake.openai_base_url, "anthropic": False},
        {"label": "bench anthropic", "upstream": fake.anthropic_base_url, "anthropic": True},
    ]
    warmup = 5
    with gateway_child(grants) as child:
        oa, an = child.grants
        direct_oa = openai_client(fake.openai_base_url, "sk-direct", None)
        via_oa = openai_client("http://gateway", oa.token, oa.socket)
        direct_an = anthropic_client(fake.anthropic_base_url, "sk-direct", None)
        via_an = anthropic_client("http://gateway", an.token, an.socket)
        paths = [
            Route(
                "openai chat completions, streamed",
                lambda: stream_openai(direct_oa, text),
                lambda: stream_openai(via_oa, text),
            ),
            Route(
                "anthropic messages, streamed",
                lambda: stream_anthropic(direct_an, text),
                lambda: stream_anthropic(via_an, text),
            ),
        ]
        for index in range(warmup + samples):
            order = ("direct", "gateway") if index % 2 == 0 else ("gateway", "direct")
            for path in paths:
                for which in order:
                    timing = path.direct() if which == "direct" else path.gateway()
                    if index >= warmup:
                        path.timings[which].append(timing)
        metered = child.finish([warmup + samples] * 2)
    for path, counted in zip(paths, metered, strict=True):
        if counted["calls"] != warmup + samples:
            raise BenchFailure(f"{path.name}: {counted['calls']} calls metered")
        report_latency(path, chunks, delay_ms)


# -- 2. sixteen agents at once -------------------------------------------------------------


class PeakRss:
    """The largest VmRSS of a process, sampled every 20 ms while in the `with` block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.mb = proc_status_mb(pid, "VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.mb = max(self.mb, proc_status_mb(self.pid, "VmRSS"))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def response_bytes(fake: FakeModelServer, anthropic_api: bool) -> int:
    """The size of one streamed answer's body, as the gateway relays it."""
    import httpx2

    if anthropic_api:
        url = fake.anthropic_base_url + "/v1/messages"
        body: dict[str, Any] = {"model": MODEL, "max_tokens": 4096, "stream": True}
    else:
        url = fake.openai_base_url + "/chat/completions"
        body = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True}}
    body["messages"] = PROMPT
    with (
        httpx2.Client(timeout=CALL_TIMEOUT) as client,
        client.stream("POST", url, json=body) as response,
    ):
        return sum(len(chunk) for chunk in response.iter_raw())


def load(fake: FakeModelServer, agents: int, calls: int, chunks: int, delay_ms: float) -> None:
    text = words(chunks)
    grants = [
        {
            "label": f"agent #{n}",
            "upstream": fake.anthropic_base_url if n % 2 else fake.openai_base_url,
            "anthropic": bool(n % 2),
        }
        for n in range(agents)
    ]
    sizes = {api: response_bytes(fake, api) for api in (False, True)}
    calibration = len(fake.reported_usage)
    failures: list[str] = []
    done = [0] * agents
    with gateway_child(grants) as child:
        pid = child.pid
        idle_rss = proc_status_mb(pid, "VmRSS")
        start = threading.Barrier(agents + 1)

        def agent(n: int) -> None:
            grant = child.grants[n]
            try:
                if n % 2:
                    an = anthropic_client("http://gateway", grant.token, grant.socket)
                    call: Callable[[], Timing] = lambda: stream_anthropic(an, text)  # noqa: E731
                else:
                    oa = openai_client("http://gateway", grant.token, grant.socket)
                    call = lambda: stream_openai(oa, text)  # noqa: E731
            finally:
                start.wait()
            try:
                for _ in range(calls):
                    call()
                    done[n] += 1
            except Exception as error:
                failures.append(f"agent #{n}: {type(error).__name__}: {error}")

        threads = [threading.Thread(target=agent, args=(n,)) for n in range(agents)]
        for thread in threads:
            thread.start()
        start.wait()
        cpu_before, started = cpu_seconds(pid), time.perf_counter()
        with PeakRss(pid) as peak:
            for thread in threads:
                thread.join()
            cpu_used, wall = cpu_seconds(pid) - cpu_before, time.perf_counter() - started
        after_rss, hwm = proc_status_mb(pid, "VmRSS"), proc_status_mb(pid, "VmHWM")
        metered = child.finish(done)
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    total_calls = sum(done)
    relayed = sum(sizes[bool(n % 2)] * done[n] for n in range(agents)) / 1e6
    print(
        f"{agents} agents streaming at once, {calls} call(s) each of {chunks} chunks "
        f"{delay_ms:g} ms apart: {total_calls} calls, {relayed:.2f} MB relayed in {wall:.2f} s "
        f"({relayed / wall:.2f} MB/s)"
    )
    print(
        f"  gateway VmRSS idle {idle_rss:.1f} MB, peak during load {peak.mb:.1f} MB "
        f"(+{peak.mb - idle_rss:.1f} MB), after {after_rss:.1f} MB, VmHWM {hwm:.1f} MB"
    )
    print(
        f"  gateway CPU {cpu_used:.2f} s in {wall:.2f} s = {cpu_used / wall * 100:.1f} % of one "
        f"core; {cpu_used / max(total_calls, 1) * 1000:.1f} ms per call; "
        f"{cpu_used / max(relayed, 1e-9) * 1000:.0f} ms per MB relayed "
        f"({cpu_used / wall / max(relayed / wall, 1e-9) * 100:.1f} % of a core per MB/s)"
    )
    check_metering(fake, calibration, metered, done, chunks, text)
    if failures:
        raise BenchFailure(f"{len(failures)} of {agents} agents failed")


def check_metering(
    fake: FakeModelServer,
    calibration: int,
    metered: list[dict[str, int]],
    done: list[int],
    chunks: int,
    text: str,
) -> None:
    """Each grant metered each of its calls, at the usage the model reported; and the
    model saw the real key, never a token."""
    reported = fake.reported_usage[calibration:]
    per_call_output = max(1, len(text) // 4)
    for n, (counted, calls) in enumerate(zip(metered, done, strict=True)):
        if counted["calls"] != calls or counted["output_tokens"] != calls * per_call_output:
            raise BenchFailure(
                f"agent #{n}: the gateway metered {counted['calls']} of its {calls} calls "
                f"({counted['output_tokens']} of {calls * per_call_output} output tokens)"
            )
    for name in ("input_tokens", "output_tokens"):
        ours = sum(counted[name] for counted in metered)
        theirs = sum(getattr(usage, name) for usage in reported)
        if ours != theirs:
            raise BenchFailure(f"metered {ours} {name}, the model reported {theirs}")
    keys = {
        r.headers.get("x-api-key") or r.headers.get("authorization", "").removeprefix("Bearer ")
        for r in fake.requests[-sum(done) :]
    }
    if keys != {REAL_KEY}:
        raise BenchFailure(f"the model saw keys {keys}, not only the real one")
    print(
        f"  metering: {sum(done)} calls, {sum(c['output_tokens'] for c in metered)} output "
        f"tokens over {len(metered)} grants, each as the model reported; the model saw only "
        "the real key"
    )


def model_server(reply: Reply, *, nagle: bool) -> FakeModelServer:
    """The fake model, answering every call with `reply`. Its sockets send at once
    (TCP_NODELAY, as a real model server's do) unless `nagle`: with Nagle's algorithm on,
    its many small writes meet the gateway's delayed ACKs on a kept-alive upstream
    connection and each first token waits ~40 ms, which measures the fake, not the
    gateway (the direct path does not hit it)."""
    from tests.fakes.model_server import FakeModelServer, _Handler

    class Prompt(_Handler):
        disable_nagle_algorithm = not nagle

        def handle(self) -> None:
            # The gateway's child exits with its upstream connections open: not news.
            with contextlib.suppress(ConnectionResetError):
                super().handle()

    fake = FakeModelServer(default=reply)
    # socketserver builds one handler per connection from this attribute.
    fake._httpd.RequestHandlerClass = Prompt
    return fake


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=200, help="latency calls per path")
    parser.add_argument("--latency-chunks", type=int, default=64)
    parser.add_argument("--latency-delay-ms", type=float, default=0.0)
    parser.add_argument("--agents", type=int, default=16)
    parser.add_argument("--load-calls", type=int, default=3, help="calls per agent")
    parser.add_argument("--load-chunks", type=int, default=400)
    parser.add_argument("--load-delay-ms", type=float, default=5.0)
    parser.add_argument(
        "--nagle", action="store_true", help="leave Nagle's algorithm on in the fake model"
    )
    parser.add_argument("--quick", action="store_true", help="20 samples, 1 call per agent")
    parser.add_argument("--serve-gateway", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_gateway:
        serve_gateway(json.loads(args.serve_gateway))
        return
    if args.quick:
        args.samples, args.load_calls = 20, 1
    from tests.fakes.model_server import Reply

    try:
        brisk = Reply(text=words(args.latency_chunks), delay_per_chunk=args.latency_delay_ms / 1e3)
        with model_server(brisk, nagle=args.nagle) as fake:
            latency(fake, args.samples, args.latency_chunks, args.latency_delay_ms)
        slow = Reply(text=words(args.load_chunks), delay_per_chunk=args.load_delay_ms / 1e3)
        with model_server(slow, nagle=args.nagle) as fake:
            load(fake, args.agents, args.load_calls, args.load_chunks, args.load_delay_ms)
    except BenchFailure as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
