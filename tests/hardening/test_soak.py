"""A short soak: mixed predict and explain against the tiny server (a separate process) for ~25 s.

Reuses bench/soak_bench.py: the same server start, load, /proc sampling and resource check as
the 5-minute bench. File descriptors of the settled end sample (load stopped, every request
answered, connections still open) must not exceed their maximum during the warm-up; threads may
exceed it by ``THREAD_SLACK`` (see below). Resident memory is not asserted: over 25 s the
allocator's arenas and the first uses of each image size and code path still move RSS by as much
as a leak would, so the 10% RSS criterion belongs to the 5-minute bench
(``python bench/soak_bench.py``) only.
"""

from __future__ import annotations

import asyncio

import pytest

from bench import soak_bench as sb
from bench.serving import ServerProcess

pytestmark = pytest.mark.slow

SECONDS, WARMUP, INTERVAL, CLIENTS = 24.0, 8.0, 1.0, 3
# Starlette reads uploads through AnyIO's worker pool, which starts threads on demand and retires
# them after 10 s idle, so over 24 s the settled count can sit one or two above the warm-up peak
# (seen: 18 against 17). A leak grows with the ~1,700 requests of the run, far past this slack.
THREAD_SLACK = 2


def test_a_short_mixed_soak_answers_200_and_keeps_threads_and_files_flat() -> None:
    uploads = sb.generated_uploads() + sb.photo_uploads()[:10]
    mix = sb.Mix(explain_share=0.4, json_share=0.25, max_channels=16, outputs="heatmap")
    with ServerProcess(tiny=True, tiny_delay_s=0.0) as server:
        samples, tally = asyncio.run(sb.soak(server.url, server.pid, SECONDS, INTERVAL, CLIENTS, mix, uploads))
    table = "\n".join([sb.HEADER, *(sb.row(s, p) for s, p in zip(samples, [None, *samples], strict=False))])

    assert {status for _, status in tally.counts} == {"200"}, tally.as_dict()
    assert tally.counts[("predict", "200")] and tally.counts[("explain", "200")], tally.as_dict()
    failures = sb.resource_failures(samples, WARMUP, max_rss_growth=None, thread_slack=THREAD_SLACK)
    assert not failures, f"{failures}\n{table}"
