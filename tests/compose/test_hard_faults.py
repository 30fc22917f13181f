"""Hard faults on the composed stack, PostgreSQL as the store, under a bounded load: the
container of each service killed (SIGKILL of its first process from the host, as a crash or
the OOM killer would: no graceful stop, in-flight requests cut), PostgreSQL and Redis
included, so Docker's restart policy has to bring each back; then every PostgreSQL
connection terminated. Clients retry an ambiguous failure with the same request id, as
docs/reliability.md tells them to.

Afterwards, read from PostgreSQL in its container: every 201 equals its stored record
(detections, model version, client, user hash), every stored row was acknowledged (201, or
409 to a retry of an attempt that had stored it), and no answer was a 5xx but a clean 503.
The local-stack counterpart is tests/system/test_hard_faults.py."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import uuid

import requests

from tests.compose.conftest import Composed
from tests.conftest import frame
from tests.system.faults import AMBIGUOUS, RetryingLoad, wait_for

USERS = 3  # a bounded load the 2-core machine sustains beside Triton
PROGRESS = 3  # 201s the load must get after each fault before the next one
KILLED = ("results-service", "gateway", "feature-service", "model-serving", "postgres", "redis")


class ComposedLoad(RetryingLoad):
    """RetryingLoad against the composed gateway: HTTPS with the stack's CA and its client key."""

    def _session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env, session.verify = False, self.stack.ca
        return session

    def _send(self, request_id: str, session: requests.Session) -> requests.Response:
        return session.post(self.stack.url("GATEWAY_PORT", "/api/detect"), timeout=60,
                            headers={"X-API-Key": self.stack.key("client"), "X-Request-ID": request_id},
                            files={"image": ("frame.jpg", frame(), "image/jpeg")}, data={"user_id": self.user_id})


def _state(container: str) -> dict:
    out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True, timeout=30)
    return json.loads(out.stdout)[0]


def _kill_container(composed: Composed, service: str) -> dict:
    """SIGKILL of the container's first process (docker-init, or postgres/redis itself) from
    the host: Docker sees a crash (exit 137), not a `docker stop`, so its restart policy applies."""
    container = composed.container(service)
    before = _state(container)
    assert before["State"]["Running"], f"{service} is not running before the fault"
    os.kill(before["State"]["Pid"], signal.SIGKILL)

    def back() -> bool:
        state = _state(container)
        return state["RestartCount"] > before["RestartCount"] and composed.health(service) == "healthy"

    took = wait_for(back, 300, 1.0)
    assert took is not None, f"{service} did not come back healthy after SIGKILL:\n" + "\n".join(composed.logs(service)[-30:])
    return {"killed": service, "restarted_and_healthy_in_s": round(took, 1)}


def _stored(composed: Composed, prefix: str) -> dict[str, dict]:
    rows = json.loads(composed.psql(
        "SELECT coalesce(json_agg(json_build_object('request_id', request_id, 'detections', detections, "
        "'model_version', model_version, 'client_id', client_id, 'user_hash', user_hash)), '[]') "
        f"FROM predictions WHERE request_id LIKE '{prefix}%'"))
    return {r["request_id"]: {**r, "detections": json.loads(r["detections"]) if isinstance(r["detections"], str)
                              else r["detections"]} for r in rows}


def test_no_acknowledged_result_is_lost_or_wrong_when_containers_are_killed(composed: Composed) -> None:
    prefix = f"chard-{uuid.uuid4().hex[:8]}"
    faults: list[dict] = []
    with ComposedLoad(composed, users=USERS, prefix=prefix) as load:
        assert wait_for(lambda: load.acknowledged() >= PROGRESS, 180, 0.5) is not None, "no 201 before any fault"

        def injected(name: str, action) -> None:
            figures = action()
            before = load.acknowledged()  # from the moment the container is back, not before
            recovered = wait_for(lambda: load.acknowledged() >= before + PROGRESS, 180, 0.5)
            assert recovered is not None, f"no detect acknowledged after {name}"
            faults.append({"fault": name, **figures, "next_201s_after_s": round(recovered, 1)})

        for service in KILLED:
            injected(f"SIGKILL {service} container", lambda s=service: _kill_container(composed, s))

        def terminate() -> dict:
            terminated = int(composed.psql(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"))
            assert terminated >= 1, "the results service held no connection to terminate"
            return {"connections_terminated": terminated}

        injected("pg_terminate_backend", terminate)

    stored = _stored(composed, prefix)
    expected_user = hmac.new(composed.env["PSEUDONYM_KEY"].encode(), load.user_id.encode(), hashlib.sha256).hexdigest()
    expected_client = hashlib.sha256(composed.key("client").encode()).hexdigest()[:32]
    acknowledged = {d.request_id: d for d in load.deliveries if d.final == 201}
    stored_by_retry = {d.request_id: d for d in load.deliveries if d.final == 409}
    unknown = [d for d in load.deliveries if d.final not in (201, 409)]

    assert len(acknowledged) >= PROGRESS * (len(KILLED) + 2), f"too little load: {len(acknowledged)} acknowledged"
    assert not unknown, [(d.request_id, [a.status for a in d.attempts]) for d in unknown[:5]]
    # the faults hit requests in flight (cut connections, 503s), else nothing was proven about them
    assert any(a.status == AMBIGUOUS for d in load.deliveries for a in d.attempts), "no fault cut a request"
    for delivery in load.deliveries:  # only clean 503s, cut connections or 429s before the end
        assert all(a.status in (AMBIGUOUS, 429) for a in delivery.attempts[:-1]), (delivery.request_id, delivery.attempts)
    for request_id, delivery in stored_by_retry.items():  # a 409 only ever answers a retry
        assert len(delivery.attempts) > 1 and request_id in stored, (request_id, delivery.attempts)
    lost = set(acknowledged) - set(stored)
    assert not lost, f"acknowledged but not stored: {sorted(lost)[:10]}"
    wrong = [(rid, stored[rid], d.answer) for rid, d in acknowledged.items()
             if (stored[rid]["detections"], stored[rid]["model_version"]) != (d.answer["detections"], d.answer["model_version"])
             or (stored[rid]["client_id"], stored[rid]["user_hash"]) != (expected_client, expected_user)]
    assert not wrong, f"{len(wrong)} stored records differ from their 201: {wrong[:2]}"
    for request_id in stored_by_retry:
        assert (stored[request_id]["client_id"], stored[request_id]["user_hash"]) == (expected_client, expected_user)
    without_acknowledgement = set(stored) - set(acknowledged) - set(stored_by_retry)
    assert not without_acknowledgement, f"stored but never acknowledged: {sorted(without_acknowledgement)[:10]}"
    print(f"\ncompose hard faults: {json.dumps({'faults': faults, 'acknowledged': len(acknowledged)})}")
