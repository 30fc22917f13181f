"""Locust scenarios against the gateway.

    make loadtest USERS=8 DURATION=60s          # headless, CSV + HTML under var/loadtest/
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080   # web UI

Keys: LOCUST_CLIENT_KEY / LOCUST_DPO_KEY, else taken from API_KEYS or the stack's
generated var/secrets/api_keys. Every answer's status and X-Request-ID are checked.
"""
from __future__ import annotations

import random
import uuid
from pathlib import Path

from locust import HttpUser, between, task

from services.common import config

DATA_DIR = Path(config.DATA_DIR)
FRAMES = [p.read_bytes() for p in sorted((DATA_DIR / "testing_images").glob("*.jpg"))[::5][:24]] + \
         [p.read_bytes() for p in sorted((DATA_DIR / "training_images").glob("*.jpg"))[::40][:16]]


def _keys() -> dict[str, str]:
    spec = config.API_KEYS
    keys_file = Path(config.VAR_DIR) / "secrets/api_keys"
    if not spec and keys_file.exists():
        spec = keys_file.read_text()
    found: dict[str, str] = {}
    for entry in spec.replace("\n", ",").split(","):
        key, _, role = entry.strip().rpartition(":")
        if key and role:
            found.setdefault(role, key)
    return {"client": config.LOCUST_CLIENT_KEY or found.get("client", ""),
            "dpo": config.LOCUST_DPO_KEY or found.get("dpo", "")}


KEYS = _keys()


class DriverAssistanceClient(HttpUser):
    """A client application sending frames, reading results, and occasionally a DPO
    serving a data subject's access or erasure request."""

    wait_time = between(0.05, 0.3)

    def on_start(self) -> None:
        if not KEYS["client"] or not KEYS["dpo"]:
            raise RuntimeError("no API keys: set LOCUST_CLIENT_KEY and LOCUST_DPO_KEY or API_KEYS")
        self.user_id = f"load-{uuid.uuid4().hex[:10]}"
        self.request_ids: list[str] = []

    def _checked(self, method: str, path: str, expected: int, name: str, role: str = "client", **kwargs) -> dict | None:
        request_id = f"lt-{uuid.uuid4().hex}"
        headers = {"X-API-Key": KEYS[role], "X-Request-ID": request_id}
        with self.client.request(method, path, headers=headers, name=name, catch_response=True, **kwargs) as answer:
            if answer.status_code != expected:
                answer.failure(f"status {answer.status_code}, expected {expected}: {answer.text[:200]}")
                return None
            if answer.headers.get("X-Request-ID") != request_id:
                answer.failure("X-Request-ID not echoed")
                return None
            answer.success()
            return answer.json() if answer.content else {}

    @task(10)
    def detect(self) -> None:
        body = self._checked("POST", "/api/detect", 201, "/api/detect",
                             files={"image": ("frame.jpg", random.choice(FRAMES), "image/jpeg")},
                             data={"user_id": self.user_id})
        if body is not None:
            self.request_ids.append(body["request_id"])

    @task(4)
    def read_result(self) -> None:
        if self.request_ids:
            self._checked("GET", f"/api/results/predictions/{random.choice(self.request_ids)}", 200,
                          "/api/results/predictions/[id]")

    @task(2)
    def export_user(self) -> None:
        self._checked("GET", f"/api/results/predictions/user/{self.user_id}", 200,
                      "/api/results/predictions/user/[id] (access)", role="dpo")

    @task(1)
    def erase_user(self) -> None:
        if random.random() < 0.2:  # rare: a data subject exercising the right to erasure
            self._checked("DELETE", f"/api/results/predictions/user/{self.user_id}", 200,
                          "/api/results/predictions/user/[id] (erasure)", role="dpo")
            self.request_ids.clear()

    @task(2)
    def health(self) -> None:
        with self.client.get("/health", name="/health", catch_response=True) as answer:
            if answer.status_code != 200 or not answer.headers.get("X-Request-ID"):
                answer.failure(f"health answered {answer.status_code}")
