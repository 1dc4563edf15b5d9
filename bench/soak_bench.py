"""Soak: a mixed predict/explain load for minutes; the server's memory, threads and files stay flat.

The service runs as its own process on a free loopback port (bench/serving.py: the real
``python -m app.cli serve`` on the embedded model, or ``--tiny`` for tests/api/serve_tiny.py);
this process waits for ``/readyz``, then keeps ``--clients`` requests in flight for ``--seconds``:
/v1/predict and /v1/explain (Score-CAM with ``--max-channels`` channels, outputs ``heatmap``),
multipart or JSON, on generated images of several sizes, modes and formats plus the shared
ImageNet photos when present. Every ``--interval`` seconds it reads the server's
/proc/PID/status and /proc/PID/fd.

Pass criteria (exit 0; any failure exits 1):

* memory: resident memory (VmRSS) of the settled end sample is less than 10% above the first
  sample at or after ``--warmup`` (60 s): (rss_end - rss_warm) / rss_warm < 0.10;
* threads and file descriptors "do not grow": the settled end sample's count is at most the
  maximum count of the samples taken during the warm-up (t = 0 .. ``--warmup`` inclusive);
* answers: every answer is 2xx except 503 (load shedding is allowed; counts are reported), no
  transport error, and at least one predict and one explain answered 2xx.

The end sample is *settled*: taken after the load stops and every in-flight request has been
answered, with the client's connections still open. A count taken mid-load includes what a
request holds only while it runs (a temporary file for an upload over 1 MiB, an AnyIO worker
thread for a sync dependency, retired after 10 s idle), so one sample can exceed the warm-up peak
by chance; a leak keeps what it took after its request ends, so it still shows in the settled
sample. RSS swings by up to a third within seconds under this load (large images and their
full-size heatmaps); the settled sample is also the steadiest point to read it.

    python bench/soak_bench.py                          # 5 minutes on the embedded model
    python bench/soak_bench.py --tiny --seconds 60 --warmup 20
    python bench/soak_bench.py --url http://127.0.0.1:8000 --pid 1234

Samples, counts and the verdict are written to bench/out/soak/soak-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving import ServerProcess

OUT = ROOT / "bench/out/soak"
PHOTOS = ROOT.parent / "shared" / "eval" / "imagenet-samples"
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "BMP": "image/bmp", "GIF": "image/gif"}
REQUEST_TIMEOUT_S = 120.0


# ---- the server process's resources ----------------------------------------------------


@dataclass(frozen=True)
class ProcessStats:
    rss_kib: int
    threads: int
    fds: int


def process_stats(pid: int) -> ProcessStats:
    """VmRSS and Threads from /proc/PID/status, open descriptors from /proc/PID/fd."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        raise RuntimeError(f"the server process {pid} is gone") from None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return ProcessStats(rss_kib=int(fields["VmRSS"].split()[0]), threads=int(fields["Threads"]), fds=fds)


# ---- the load ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes
    mime: str


def encode(image: Image.Image, fmt: str, name: str) -> Upload:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return Upload(f"{name}.{fmt.lower()}", buffer.getvalue(), MIME[fmt])


def generated_uploads() -> list[Upload]:
    """Images of several sizes, colour modes and formats; one PNG over 1 MiB (spooled to disk)."""
    shapes = [
        ((64, 48), "RGB", "PNG"),
        ((224, 224), "RGB", "JPEG"),
        ((320, 240), "RGB", "WEBP"),
        ((500, 375), "RGBA", "PNG"),
        ((640, 480), "RGB", "BMP"),
        ((300, 200), "P", "GIF"),
        ((1024, 768), "L", "JPEG"),
        ((2048, 1536), "RGB", "JPEG"),
        ((97, 701), "RGB", "PNG"),
    ]
    uploads = []
    for (w, h), mode, fmt in shapes:
        fractal = Image.effect_mandelbrot((w, h), (-2.0, -1.2, 1.0, 1.2), 64)
        gradient = Image.linear_gradient("L").resize((w, h))
        noise = Image.effect_noise((w, h), 40)
        uploads.append(encode(Image.merge("RGB", (fractal, gradient, noise)).convert(mode), fmt, f"gen-{w}x{h}-{mode}"))
    noise = Image.merge("RGB", [Image.effect_noise((1024, 768), 80) for _ in range(3)])
    uploads.append(encode(noise, "PNG", "noise-1024x768"))
    return uploads


def photo_uploads(folder: Path = PHOTOS) -> list[Upload]:
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    return [Upload(p.name, p.read_bytes(), "image/png" if p.suffix.lower() == ".png" else "image/jpeg") for p in files]


@dataclass(frozen=True)
class Mix:
    """What each request is: explain with probability ``explain_share``, JSON with ``json_share``."""

    explain_share: float = 0.3
    json_share: float = 0.25
    max_channels: int = 16
    outputs: str = "heatmap"


@dataclass
class Tally:
    """Answers by (endpoint, status); status is the HTTP code or a transport error's class name."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, endpoint: str, status: str) -> None:
        self.counts[(endpoint, status)] += 1

    def count(self, keep: Callable[[str, str], bool]) -> int:
        return sum(n for (endpoint, status), n in self.counts.items() if keep(endpoint, status))

    @property
    def ok(self) -> int:
        return self.count(lambda _, s: s.startswith("2"))

    @property
    def shed(self) -> int:
        return self.count(lambda _, s: s == "503")

    @property
    def failed(self) -> int:
        return self.count(lambda _, s: not s.startswith("2") and s != "503")

    def as_dict(self) -> dict[str, int]:
        return {f"{endpoint} {status}": n for (endpoint, status), n in sorted(self.counts.items())}


async def one_request(client: httpx.AsyncClient, upload: Upload, mix: Mix, rng: random.Random) -> tuple[str, str]:
    explain = rng.random() < mix.explain_share
    endpoint = "explain" if explain else "predict"
    options: dict[str, object] = {"top_k": rng.randint(1, 5)}
    if explain:
        options = {"max_channels": mix.max_channels, "outputs": mix.outputs.split(",")}
    try:
        if rng.random() < mix.json_share:
            body = {"image": base64.b64encode(upload.data).decode(), **options}
            response = await client.post(f"/v1/{endpoint}", json=body)
        else:
            form = {k: ",".join(v) if isinstance(v, list) else str(v) for k, v in options.items()}
            files = {"image": (upload.name, upload.data, upload.mime)}
            response = await client.post(f"/v1/{endpoint}", files=files, data=form)
    except httpx.HTTPError as exc:
        return endpoint, type(exc).__name__
    return endpoint, str(response.status_code)


async def client_loop(
    client: httpx.AsyncClient, uploads: list[Upload], mix: Mix, seed: int, tally: Tally, stop: asyncio.Event
) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        endpoint, status = await one_request(client, rng.choice(uploads), mix, rng)
        tally.add(endpoint, status)


# ---- sampling and verdict ----------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the load started (the schedule's time for periodic samples)
    rss_mib: float
    threads: int
    fds: int
    ok: int
    shed: int
    failed: int
    settled: bool = False  # taken after the load stopped and every request was answered


def take_sample(pid: int, t: float, tally: Tally, settled: bool = False) -> Sample:
    stats = process_stats(pid)
    rss_mib = round(stats.rss_kib / 1024, 1)
    return Sample(round(t, 1), rss_mib, stats.threads, stats.fds, tally.ok, tally.shed, tally.failed, settled)


async def soak(
    url: str,
    pid: int,
    seconds: float,
    interval: float,
    clients: int,
    mix: Mix,
    uploads: list[Upload],
    seed: int = 0,
    report: Callable[[Sample], None] = lambda s: None,
) -> tuple[list[Sample], Tally]:
    """Drive the load for ``seconds``; a sample every ``interval`` s (t = 0 first) and a settled one last."""
    tally, stop, samples = Tally(), asyncio.Event(), []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        started = time.monotonic()
        tasks = [asyncio.create_task(client_loop(client, uploads, mix, seed + i, tally, stop)) for i in range(clients)]
        try:
            for k in range(int(seconds // interval) + 1):
                await asyncio.sleep(max(0.0, started + k * interval - time.monotonic()))
                samples.append(take_sample(pid, k * interval, tally))
                report(samples[-1])
        except BaseException:
            for task in tasks:  # the server is gone (or Ctrl-C): stop the clients before the client closes
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        stop.set()
        await asyncio.gather(*tasks)
        samples.append(take_sample(pid, time.monotonic() - started, tally, settled=True))
        report(samples[-1])
    return samples, tally


def resource_failures(
    samples: list[Sample], warmup: float, max_rss_growth: float | None = 0.10, thread_slack: int = 0
) -> list[str]:
    """Threads (+ ``thread_slack``) and fds at the settled end <= their warm-up maximum; RSS growth after the warm-up."""
    warm = [s for s in samples if not s.settled and s.t <= warmup]
    after = next((s for s in samples if not s.settled and s.t >= warmup), None)
    end = samples[-1]
    if not warm or after is None or not end.settled:
        return [f"no sample at or after the warm-up ({warmup} s); run longer than the warm-up"]
    failures = []
    if max_rss_growth is not None and rss_growth(after, end) >= max_rss_growth:
        growth = rss_growth(after, end)
        failures.append(f"RSS grew {growth:+.1%} (>= {max_rss_growth:.0%}) from t={after.t:g} s to the end")
    for name, slack in (("threads", thread_slack), ("fds", 0)):
        peak, last = max(getattr(s, name) for s in warm), getattr(end, name)
        if last > peak + slack:
            allowed = f" + {slack}" if slack else ""
            failures.append(f"{name} grew: {last} at the end > {peak}{allowed}, the warm-up maximum{allowed and ' + slack'}")
    return failures


def rss_growth(first: Sample, last: Sample) -> float:
    return (last.rss_mib - first.rss_mib) / first.rss_mib


def answer_failures(tally: Tally) -> list[str]:
    failures = []
    if tally.failed:
        bad = {k: n for k, n in tally.as_dict().items() if not k.split()[1].startswith("2") and not k.endswith(" 503")}
        failures.append(f"{tally.failed} answers were neither 2xx nor 503: {bad}")
    for endpoint in ("predict", "explain"):
        if not tally.count(lambda e, s, want=endpoint: e == want and s.startswith("2")):
            failures.append(f"no {endpoint} request succeeded")
    return failures


def summary(samples: list[Sample], warmup: float, tally: Tally) -> list[str]:
    """The figures the verdict compares, one line each."""
    warm = [s for s in samples if not s.settled and s.t <= warmup]
    after = next((s for s in samples if not s.settled and s.t >= warmup), samples[0])
    loaded = [s for s in samples if not s.settled and s.t > warmup]
    end = samples[-1]
    growth = rss_growth(after, end)
    lines = [
        f"answers: {tally.as_dict()}",
        f"rss: {after.rss_mib:.1f} MiB at t={after.t:g} s -> {end.rss_mib:.1f} MiB at the end ({growth:+.1%})",
    ]
    for name in ("threads", "fds"):
        lines.append(
            f"{name}: warm-up max {max(getattr(s, name) for s in warm)}, end {getattr(end, name)} "
            f"(max under load after the warm-up: {max((getattr(s, name) for s in loaded), default='-')})"
        )
    return lines


HEADER = f"{'t s':>7} {'rss MiB':>8} {'threads':>7} {'fds':>5} {'ok':>7} {'503':>5} {'other':>5} {'ok/s':>6}"


def row(sample: Sample, previous: Sample | None) -> str:
    rate = (sample.ok - previous.ok) / (sample.t - previous.t) if previous and sample.t > previous.t else 0.0
    label = f"{sample.t:g}" + ("*" if sample.settled else "")
    return (
        f"{label:>7} {sample.rss_mib:>8.1f} {sample.threads:>7} {sample.fds:>5} {sample.ok:>7} {sample.shed:>5} "
        f"{sample.failed:>5} {rate:>6.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="length of the load (default 300)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the reference sample (default 60)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--clients", type=int, default=4, help="requests kept in flight (default 4)")
    parser.add_argument("--explain-share", type=float, default=0.3, help="share of requests that explain (default 0.3)")
    parser.add_argument("--json-share", type=float, default=0.25, help="share sent as JSON (default 0.25)")
    parser.add_argument("--max-channels", type=int, default=16, help="Score-CAM channels per explain (default 16)")
    parser.add_argument("--outputs", default="heatmap", help="explain outputs, comma-separated (default heatmap)")
    parser.add_argument("--no-photos", action="store_true", help=f"generated images only (not {PHOTOS})")
    parser.add_argument("--tiny", action="store_true", help="serve tests/api/serve_tiny.py instead of the real model")
    parser.add_argument("--env", action="append", default=[], metavar="SCORECAM_X=V", help="extra server setting")
    parser.add_argument("--url", help="drive an already running server (needs --pid)")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.url and args.pid is None:
        parser.error("--url needs --pid: the soak reads the server's /proc/PID")
    if args.seconds < args.warmup:
        parser.error("--seconds must be at least --warmup")

    mix = Mix(args.explain_share, args.json_share, args.max_channels, args.outputs)
    uploads = generated_uploads() + ([] if args.no_photos else photo_uploads())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = args.url or ("tiny" if args.tiny else "python -m app.cli serve (embedded model)")
    print(
        f"soak: {target}, {args.seconds:g} s, warm-up {args.warmup:g} s, {args.clients} clients, "
        f"explain share {mix.explain_share}, max_channels {mix.max_channels}, {len(uploads)} images, "
        f"{os.cpu_count()} cpu cores"
    )
    last: list[Sample] = []

    def report(sample: Sample) -> None:
        print(row(sample, last[-1] if last else None), flush=True)
        last.append(sample)

    def run(url: str, pid: int) -> tuple[list[Sample], Tally]:
        print(f"server pid {pid} at {url}\n{HEADER}", flush=True)
        return asyncio.run(soak(url, pid, args.seconds, args.interval, args.clients, mix, uploads, args.seed, report))

    server = None if args.url else ServerProcess(args.tiny, dict(e.split("=", 1) for e in args.env), tiny_delay_s=0.0)
    try:
        if server is not None:
            server.start()
        url, pid = (server.url, server.pid) if server is not None else (args.url, args.pid)
        samples, tally = run(url, pid)
    except RuntimeError as exc:
        print(f"FAIL: {exc}" + (f"\nserver log:\n{server.log_tail()}" if server is not None else ""))
        return 1
    finally:
        if server is not None:
            print(f"server exit code after SIGTERM: {server.stop()}")

    failures = resource_failures(samples, args.warmup) + answer_failures(tally)
    print("* settled: after the load stopped and every request was answered")
    print("\n".join(summary(samples, args.warmup, tally)))
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"soak-{stamp}.json"
    config = vars(args) | {"images": len(uploads), "cpu_count": os.cpu_count()}
    path.write_text(
        json.dumps(
            {
                "config": config,
                "samples": [asdict(s) for s in samples],
                "answers": tally.as_dict(),
                "failures": failures,
                "pass": not failures,
            },
            indent=2,
        )
    )
    print(f"wrote {path.relative_to(ROOT)}")
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
