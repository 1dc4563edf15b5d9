"""Replicas behind a real nginx on loopback (bench/cluster.py): rolling update, readiness gating, SIGKILL.

Two tiny-model replicas (one worker each) behind nginx with least_conn and the readiness controller;
three client threads (the Python client, which retries 503 + Retry-After) alternate predictions and
explanations through the balancer. The rolling update is run once under that load (the ``rollout``
fixture) and judged twice: no call failed, and a starting replica got no request before its /readyz
said 200. Then one replica is killed with SIGKILL under load. Bounded: a few hundred calls, and four
replica starts (two at once, then one at a time) that dominate the module's time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from bench.cluster import Cluster, Replica
from bench.loadbalancer import Routed, nginx_path
from scorecam_client import ApiError
from tests.api.conftest import cat_png  # noqa: F401 - shared fixture

from .load import Load, Outcome

FORWARD_DELAY_S = 0.02  # the tiny model's simulated compute per forward: an explanation takes ~0.2 s
PERIOD_S = 0.25  # the readiness controller's probe period (the kubelet's periodSeconds)
SLACK_S = 1.0  # a reload, a probe's own timeout and a loaded 2-core machine


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if nginx_path() is None:
        pytest.skip("nginx is not installed: .ci/run installs nginx-light (.ci/system-packages)")
    with Cluster(size=2, delay_s=FORWARD_DELAY_S, balance="least_conn", period_s=PERIOD_S) as running:
        yield running


@dataclass
class Rollout:
    outcomes: list[Outcome]
    exit_codes: list[int | None]
    old: list[Replica]
    new: list[Replica]
    routed: list[Routed]
    ready_at: dict[int, float]
    unrouted_at: dict[int, float]


@pytest.fixture(scope="module")
def rollout(cluster: Cluster, cat_png: bytes) -> Rollout:  # noqa: F811
    old = list(cluster.replicas)
    with Load(cluster.url, cat_png, threads=3) as load:
        load.wait_calls(6)
        codes = cluster.roll()
        load.wait_calls(len(load.outcomes) + 6)  # served by the new replicas alone
        outcomes = load.stop()
    controller = cluster.controller
    return Rollout(
        outcomes, codes, old, list(cluster.replicas), cluster.balancer.requests(), controller.ready_at, controller.unrouted_at
    )


def started(entry: Routed) -> float:
    return entry.at - entry.seconds


def test_a_rolling_update_under_load_fails_no_request(rollout: Rollout) -> None:
    failed = [(o.kind, repr(o.error)) for o in rollout.outcomes if not o.ok]
    assert failed == []
    assert {o.kind for o in rollout.outcomes} == {"predict", "explain"}
    assert rollout.exit_codes == [0, 0], "each old replica drained and exited 0 after SIGTERM"
    for old in rollout.old:
        to_old = [e for e in rollout.routed if e.went_to(old.port)]
        assert to_old, f"the old replica {old.port} served part of the load"
        late = [e for e in to_old if started(e) > rollout.unrouted_at[old.port] + SLACK_S]
        assert late == [], "no request went to a replica after it left the upstream"


def test_a_starting_replica_gets_no_request_until_its_readyz_is_200(rollout: Rollout) -> None:
    for new in rollout.new:
        to_new = [e for e in rollout.routed if e.went_to(new.port)]
        assert to_new, f"the new replica {new.port} served part of the load once ready"
        early = [e for e in to_new if started(e) < rollout.ready_at[new.port]]
        assert early == [], f"requests reached {new.port} before its /readyz said 200"


def in_flight(replica: Replica) -> float:
    text = httpx.get(f"{replica.url}/metrics", timeout=2).text
    line = next(x for x in text.splitlines() if x.startswith('scorecam_queue_requests{model="tiny"}'))
    return float(line.split()[-1])


def test_sigkill_fails_only_the_killed_replicas_requests(cluster: Cluster, rollout: Rollout, cat_png: bytes) -> None:  # noqa: F811
    victim = cluster.replicas[0]
    with Load(cluster.url, cat_png, threads=3) as load:
        deadline = time.monotonic() + 30
        while in_flight(victim) < 1:  # kill it holding work
            assert time.monotonic() < deadline, "the victim never held a request"
            time.sleep(0.005)
        killed_at = time.time()
        cluster.kill(victim)
        load.wait_calls(len(load.outcomes) + 12)
        outcomes = load.stop()
    failed = [o for o in outcomes if not o.ok]
    assert 1 <= len(failed) <= 3, "the victim's in-flight calls fail (three clients: at most three)"
    for outcome in failed:
        assert outcome.started < killed_at, "only calls already running when it died"
        assert isinstance(outcome.error, ApiError) and outcome.error.status == 502, repr(outcome.error)
        assert outcome.error.code == "replica_failed" and "may have run" in outcome.error.message
    after = [o for o in outcomes if o.started > killed_at]
    assert len(after) >= 10 and all(o.ok for o in after), "later calls go to the live replica"
    unrouted = cluster.controller.unrouted_at[victim.port]
    assert unrouted - killed_at < PERIOD_S + SLACK_S, "the controller took it out within a probe period"
    late = [e for e in cluster.balancer.requests() if e.went_to(victim.port) and started(e) > unrouted + SLACK_S]
    assert late == []
    assert victim.wait_exit(10) == -9
