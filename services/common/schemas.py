"""The one definition of a prediction and of the data-subject documents around it.

The gateway builds its answer and the record it stores from these models, the
results service validates what it is sent and shapes what it answers with them,
the audit reads the stored columns through them, and both services' OpenAPI
documents are generated from their JSON schemas (`make openapi`, scripts/openapi.py).
Adding a field to the detection answer means adding it here (and, if it is stored,
a column in results_service/store.py with an Alembic revision).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from services.common.image_features import FEATURES
from services.common.pseudonym import HASH_PATTERN, KEY_ID_PATTERN

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
ACTOR_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
USER_HASH_PATTERN = HASH_PATTERN
EXPORT_FORMAT = "car-detection-export/1"
MAX_LOOKUP_HASHES = 32  # every known key x the Unicode spellings of one id (services/common/pseudonym.py)

# 1-256 characters, no control character, no leading or trailing whitespace (validation.py
# gives the readable message; this pattern is the same rule for the OpenAPI documents).
USER_ID_PATTERN = r"^[^\s\x00-\x1f\x7f-\x9f](?:[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"

UserId = Annotated[str, Field(min_length=1, max_length=256, pattern=USER_ID_PATTERN,
                              description="the data subject's id in clear; only ever hashed")]
RequestId = Annotated[str, Field(pattern=REQUEST_ID_PATTERN, description="1-128 characters from A-Z a-z 0-9 . _ : -")]
UserHash = Annotated[str, Field(pattern=USER_HASH_PATTERN, description="keyed HMAC-SHA256 of the user id, hex")]
KeyId = Annotated[str, Field(pattern=KEY_ID_PATTERN, description="id of the pseudonymisation key of the hash")]
# Stored text never holds NUL: PostgreSQL refuses it in text columns (a 500, not a 400).
NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, Field(pattern=NO_NUL)]
Coordinate = Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]


class Schema(BaseModel):
    """Strict: no silent coercion ("1" is not 1, true is not a number); unknown fields ignored."""
    model_config = ConfigDict(strict=True, extra="ignore", loc_by_alias=False)


class Answer(BaseModel):
    """Documents the services produce (response schemas): extra fields are allowed."""
    model_config = ConfigDict(extra="allow")


# -- the prediction -------------------------------------------------------------------------------

class BoundingBox(Schema):
    """Pixels of the original image."""
    x_min: Coordinate
    y_min: Coordinate
    x_max: Coordinate
    y_max: Coordinate


class Detection(Schema):
    class_name: Annotated[Text, Field(min_length=1, max_length=64)]
    confidence: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
    bbox: BoundingBox


class PredictionIn(Schema):
    """`POST /predictions` on the results service. The gateway sends the keyed hash
    (`user_hash` + `key_id`), never the id in clear; the seed's callers may send
    `user_id`, which the service hashes on arrival. The seed's name for the list,
    `predictions`, is accepted for `detections`."""
    request_id: RequestId
    user_id: UserId | None = None
    user_hash: UserHash | None = None
    key_id: KeyId | None = None
    client_id: Annotated[Text, Field(min_length=1, max_length=64)] = "internal"
    detections: list[Detection] = Field(validation_alias=AliasChoices("detections", "predictions"))
    features: dict[str, Any] | None = None
    model_name: Annotated[Text, Field(min_length=1, max_length=64)] = "car_detector"
    model_version: Annotated[Text, Field(min_length=1, max_length=32)]
    inference_time_ms: Annotated[float, Field(ge=0.0, le=3.6e6, allow_inf_nan=False)]

    @model_validator(mode="after")
    def _one_subject(self) -> PredictionIn:
        if (self.user_id is None) == (self.user_hash is None):
            raise ValueError("user_id: send exactly one of user_id (in clear) or user_hash (with key_id)")
        if (self.user_hash is None) != (self.key_id is None):
            raise ValueError("key_id: user_hash and key_id go together")
        return self


class StoredPrediction(Answer):
    """A prediction as the results service holds and returns it (table `predictions`)."""
    request_id: str
    user_hash: str
    key_id: str
    client_id: str
    detections: list[Detection]
    detection_count: Count
    features: dict[str, Any] | None = None
    model_name: str
    model_version: str
    inference_time_ms: float
    created_at: str


class StoreAck(Answer):
    request_id: str
    stored: Literal[True]


_FEATURE_TYPES: dict[str, type] = {"integer": int, "long": int, "float": float, "keyword": str}
# The monitoring features of one image, from the one list (services/common/image_features.py).
Features: type[BaseModel] = create_model(
    "Features", __base__=Answer, __doc__="The image's monitoring features (no pixels): header features and "
                                          "pixel statistics, for drift monitoring.",
    **{f.name: (_FEATURE_TYPES[f.es_type], Field(description=f.meaning)) for f in FEATURES})  # type: ignore[call-overload]


class PreprocessedSize(Answer):
    width: int
    height: int


class PreprocessResult(Answer):
    """The feature service's `POST /preprocess` answer."""
    request_id: str
    features: Features  # type: ignore[valid-type]
    preprocessed_image: str | None = Field(None, description="the model-ready image, base64 JPEG (unless include_image=false)")
    preprocessed_size: PreprocessedSize | None = None
    processing_time_ms: Annotated[float, Field(ge=0.0)]


class ImageSize(Answer):
    width: int
    height: int


class DetectResult(Answer):
    """The gateway's `POST /api/detect` answer (201)."""
    request_id: str
    detections: list[Detection]
    model_name: str
    model_version: str
    inference_time_ms: Annotated[float, Field(ge=0.0)]
    image: ImageSize
    features: dict[str, Any] | None = None


# -- feedback, data subjects, journal -------------------------------------------------------------

class FeedbackIn(Schema):
    correct: bool
    reason: Annotated[str, Field(min_length=1, max_length=500, pattern=r"^[^\x00]*[^\s\x00][^\x00]*$")]
    comment: Annotated[Text, Field(max_length=2000)] | None = None


class FeedbackAck(Answer):
    feedback_id: int
    request_id: str
    correct: bool
    status: str
    recorded_at: str


class FeedbackRecord(Answer):
    feedback_id: int
    request_id: str
    user_hash: str
    key_id: str
    client_id: str
    actor_role: str
    actor_id: str
    correct: bool
    reason: str
    comment: str | None = None
    created_at: str


class JournalEntry(Answer):
    at: str
    action: str
    actor_role: str
    actor_id: str
    user_hash: str | None = None
    request_id: str | None = None
    record_count: Count


class SubjectRequest(Schema):
    """Gateway `POST /api/results/subjects/{access,erasure}`: the id in the body, never in a URL."""
    user_id: UserId
    download: bool = False


class SubjectLookup(Schema):
    """Results service `POST /subjects/{access,erasure}`: the subject as the hashes of its id
    under every known key (the first is the current key's); no id in clear."""
    user_hashes: Annotated[list[UserHash], Field(min_length=1, max_length=MAX_LOOKUP_HASHES)]
    client_id: Annotated[Text, Field(min_length=1, max_length=64)] | None = None
    download: bool = False


class Export(Answer):
    """Access and portability (GDPR Art. 15, 20); format documented in governance/RGPD.md."""
    format: Literal["car-detection-export/1"]
    user_hash: str
    exported_at: str
    scope: Literal["client", "all"]
    count: Count
    predictions: list[StoredPrediction]
    feedback: list[FeedbackRecord]
    access_log: list[JournalEntry]
    not_held: list[str]


class Erasure(Answer):
    """Erasure (GDPR Art. 17): what was deleted, and whether the store's files were compacted."""
    user_hash: str
    deleted: Count
    deleted_feedback: Count
    compacted: bool
    erased_at: str
    request_id: str | None = None


class ErrorBody(Answer):
    error: Annotated[str, Field(min_length=1)]
    request_id: str | None


class Health(Answer):
    status: Literal["healthy"]
    service: str
    timestamp: str


class Ready(Answer):
    status: Literal["ready", "not ready"]
    service: str
    dependencies: dict[str, str]


_PATTERN_MEANING = {
    USER_ID_PATTERN: "must not contain control characters nor start or end with whitespace",
    REQUEST_ID_PATTERN: "must be 1-128 characters from A-Z a-z 0-9 . _ : -",
    USER_HASH_PATTERN: "must be 64 lowercase hexadecimal digits (a keyed hash)",
    KEY_ID_PATTERN: "must be 8 lowercase hexadecimal digits (a key id)",
    NO_NUL: "must not contain NUL characters",
    r"^[^\x00]*[^\s\x00][^\x00]*$": "must hold a non-blank text without NUL characters",
}


def first_error(error: ValidationError) -> str:
    """One readable line naming the field at fault, e.g. `detections.0.confidence: ...`."""
    problem = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in problem["loc"])
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "string_pattern_mismatch":
        message = _PATTERN_MEANING.get(problem.get("ctx", {}).get("pattern", ""), message)
    if message.split(":", 1)[0] in PredictionIn.model_fields:  # a model-level check names its own field
        return message
    return f"{where}: {message}" if where else message
