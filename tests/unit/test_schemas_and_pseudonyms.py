"""The prediction schema and the pseudonymisation keyring, without the stack: the
committed OpenAPI documents are what the models generate, and key rotation, key ids and
Unicode normalisation behave as governance/RGPD.md says."""
from __future__ import annotations

import subprocess
import sys
import unicodedata

import pytest
import yaml
from pydantic import ValidationError

from services.common import pseudonym, schemas
from tests.conftest import REPO_ROOT


@pytest.fixture
def keys(monkeypatch):
    def use(current: str, previous: str = "") -> None:
        monkeypatch.setenv("PSEUDONYM_KEY", current)
        monkeypatch.setenv("PSEUDONYM_PREVIOUS_KEYS", previous)
        pseudonym.keyring.cache_clear()
    yield use
    pseudonym.keyring.cache_clear()


def test_the_committed_openapi_documents_are_generated_from_the_models():
    run = subprocess.run([sys.executable, "scripts/openapi.py", "--check"], cwd=REPO_ROOT, capture_output=True,
                         text=True, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    document = yaml.safe_load((REPO_ROOT / "services" / "results_service" / "openapi.yaml").read_text())
    body = document["components"]["schemas"]["PredictionIn"]
    assert body["properties"]["detections"]["items"] == {"$ref": "#/components/schemas/Detection"}
    assert set(schemas.Detection.model_fields) == set(document["components"]["schemas"]["Detection"]["properties"])


def test_hashes_are_of_the_nfc_form_and_lookups_cover_every_spelling_and_key(keys):
    keys("old-key")
    old = pseudonym.hash_user_id("Zoé")
    keys("new-key", "old-key")
    nfc, nfd = unicodedata.normalize("NFC", "Zoé"), unicodedata.normalize("NFD", "Zoé")
    assert pseudonym.hash_user_id(nfd) == pseudonym.hash_user_id(nfc) != old
    lookups = pseudonym.lookup_hashes(nfd)
    assert lookups[0] == pseudonym.hash_user_id(nfc) and old in lookups
    legacy_nfd = pseudonym.PseudonymKey("x", b"old-key").hash(nfd)  # stored before normalisation
    assert legacy_nfd in lookups and len(lookups) == len(set(lookups)) <= schemas.MAX_LOOKUP_HASHES
    ids = [key.key_id for key in pseudonym.keyring()]
    assert len(ids) == 2 and ids[0] == pseudonym.key_id() and all(len(i) == 8 for i in ids)
    keys("new-key")
    assert old not in pseudonym.lookup_hashes("Zoé")  # a retired key finds nothing


def test_the_prediction_record_names_the_field_at_fault():
    good = {"request_id": "r1", "user_id": "u", "detections": [], "model_version": "1", "inference_time_ms": 1.0}
    assert schemas.PredictionIn.model_validate({**good, "predictions": good.pop("detections")}).detections == []
    for change, field in (({"inference_time_ms": True}, "inference_time_ms"), ({"user_id": " u"}, "user_id"),
                          ({"user_hash": "a" * 64}, "user_id"), ({"user_id": None, "user_hash": "a" * 64}, "key_id")):
        with pytest.raises(ValidationError) as refused:
            schemas.PredictionIn.model_validate({**good, "detections": [], **change})
        assert schemas.first_error(refused.value).startswith(field), (change, schemas.first_error(refused.value))
