"""Hard faults on the real local stack, PostgreSQL as the store, under a bounded load:
SIGKILL (no graceful shutdown, in-flight requests cut) of a worker and of the master of
the results service, the gateway and the feature service, SIGKILL of the adapter, every
PostgreSQL connection terminated, and Redis killed. Clients retry an ambiguous failure
with the same request id, as documented.

Afterwards, read from PostgreSQL directly: every 201 equals its stored record
(detections, model version, client, user hash), every stored row was acknowledged
(201, or 409 to a retry of an attempt that had stored it), nothing acknowledged is
missing, and no answer was a 5xx other than a clean 503."""
from __future__ import annotations

import hashlib
import hmac

import pytest

from tests.conftest import KEYS
from tests.system.faults import (
    AMBIGUOUS,
    STACK,
    RetryingLoad,
    child_pids,
    ctl_env,
    program_pid,
    record_figures,
    sigkill,
    stored_rows,
    terminate_database_connections,
    wait_for,
    wait_stack_healthy,
)

USERS = 3  # concurrent clients: a bounded load the 2-core machine sustains beside Triton
PROGRESS = 3  # 201s the load must get after each fault before the next one
SERVICES = ("results-service", "gateway", "feature-service")


def _progress(load: RetryingLoad, since: int, timeout_s: float = 120.0) -> float | None:
    return wait_for(lambda: load.acknowledged() >= since + PROGRESS, timeout_s, 0.2)


def _kill_worker(stack, program: str) -> dict:
    master = program_pid(stack, program)
    workers = child_pids(master)
    assert workers, f"{program}: no gunicorn worker under {master}"
    sigkill(workers[0])
    replaced = wait_for(lambda: workers[0] not in child_pids(master) and len(child_pids(master)) == len(workers), 60, 0.2)
    assert replaced is not None, f"{program}: the master did not replace the killed worker"
    assert program_pid(stack, program) == master
    return {"killed": "worker", "replaced_in_s": round(replaced, 1)}


def _kill_master(stack, program: str) -> dict:
    master = program_pid(stack, program)
    sigkill(master)
    probe = STACK.health_checks(ctl_env(stack))[program]
    back = wait_for(lambda: program_pid(stack, program) not in (0, master) and probe(), 120, 0.2)
    assert back is not None, f"{program} did not come back after SIGKILL of {master}:\n{STACK.log_tail(ctl_env(stack), program)}"
    return {"killed": "master" if program != "model-serving" else "process", "back_in_s": round(back, 1)}


def test_no_acknowledged_result_is_lost_or_wrong_under_hard_faults(stack):
    if not stack.redis.owned:
        pytest.skip("TEST_REDIS_URL names a Redis this session does not own, so it cannot be killed")
    faults: list[dict] = []
    with RetryingLoad(stack, users=USERS) as load:
        assert _progress(load, 0) is not None, "the load got no 201 before any fault"

        def injected(name: str, action) -> None:
            figures = action()
            # counted from the moment the fault's action is over (the killed process is
            # back): 201s that came while it was still going do not count as recovery
            recovered = _progress(load, load.acknowledged())
            assert recovered is not None, f"no detect acknowledged after {name}"
            faults.append({"fault": name, **figures, "next_201s_after_s": round(recovered, 1)})

        for program in SERVICES:
            injected(f"SIGKILL {program} worker", lambda p=program: _kill_worker(stack, p))
            injected(f"SIGKILL {program} master", lambda p=program: _kill_master(stack, p))
        injected("SIGKILL model-serving", lambda: _kill_master(stack, "model-serving"))

        def terminate() -> dict:
            terminated = terminate_database_connections(stack)
            assert terminated >= 1, "the results service held no connection to terminate"
            return {"connections_terminated": terminated}

        injected("pg_terminate_backend", terminate)

        def redis_down() -> dict:
            stack.redis.stop()
            try:  # the stack keeps answering while Redis is away (rate limits fall back to memory)
                before = load.acknowledged()
                served = _progress(load, before, 60)
                assert served is not None, "no detect acknowledged while Redis was down"
            finally:
                stack.redis.start()
            return {"redis_down_s": round(served, 1), "acknowledged_while_down": load.acknowledged() - before}

        injected("Redis killed", redis_down)
    wait_stack_healthy(stack)

    stored = stored_rows(stack, load.prefix)
    expected_user = hmac.new(stack.env["PSEUDONYM_KEY"].encode(), load.user_id.encode(), hashlib.sha256).hexdigest()
    expected_client = hashlib.sha256(KEYS["client"].encode()).hexdigest()[:32]
    acknowledged = {d.request_id: d for d in load.deliveries if d.final == 201}
    stored_by_retry = {d.request_id: d for d in load.deliveries if d.final == 409}
    unknown = [d for d in load.deliveries if d.final not in (201, 409)]

    assert len(acknowledged) >= PROGRESS * 10, f"too little load to prove anything: {len(acknowledged)} acknowledged"
    assert not unknown, [(d.request_id, [a.status for a in d.attempts]) for d in unknown[:5]]
    # the faults hit requests in flight (cut connections, 503s), else nothing was proven about them
    assert any(a.status == AMBIGUOUS for d in load.deliveries for a in d.attempts), "no fault cut a request"
    for delivery in load.deliveries:  # only clean 503s, cut connections or 429s before the end
        assert all(a.status in (AMBIGUOUS, 429) for a in delivery.attempts[:-1]), (delivery.request_id, delivery.attempts)
    for request_id, delivery in stored_by_retry.items():  # a 409 only ever answers a retry
        assert len(delivery.attempts) > 1, (request_id, delivery.attempts)
    lost = set(acknowledged) - set(stored)
    assert not lost, f"acknowledged but not stored: {sorted(lost)[:10]}"
    wrong = []
    for request_id, delivery in acknowledged.items():
        row, answer = stored[request_id], delivery.answer
        if (row["detections"], row["model_version"]) != (answer["detections"], answer["model_version"]) \
                or (row["client_id"], row["user_hash"]) != (expected_client, expected_user):
            wrong.append((request_id, row, answer))
    assert not wrong, f"{len(wrong)} stored records differ from their 201: {wrong[:2]}"
    for request_id in stored_by_retry:
        assert (stored[request_id]["client_id"], stored[request_id]["user_hash"]) == (expected_client, expected_user)
    without_acknowledgement = set(stored) - set(acknowledged) - set(stored_by_retry)
    assert not without_acknowledgement, f"stored but never acknowledged: {sorted(without_acknowledgement)[:10]}"
    assert set(stored_by_retry) <= set(stored)

    attempts = [a for d in load.deliveries for a in d.attempts]
    record_figures("hard_faults", {
        "users": USERS, "faults": faults, "deliveries": len(load.deliveries), "attempts": len(attempts),
        "ambiguous_attempts_retried": sum(1 for a in attempts if a.status == AMBIGUOUS),
        "acknowledged_201": len(acknowledged), "acknowledged_409_on_retry": len(stored_by_retry),
        "acknowledged_lost": len(lost), "stored_without_acknowledgement": len(without_acknowledgement),
        "stored_differing_from_201": len(wrong), "at_cpu": _cpu(),
    })


def _cpu() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"

