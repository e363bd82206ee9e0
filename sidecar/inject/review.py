"""The ``admission.k8s.io/v1`` AdmissionReview protocol around ``mutate.plan``.

Every answer allows the pod. A review this webhook cannot read, or a bug while planning,
answers ``allowed: true`` with a warning and no patch: a pod is never blocked because of
the cache sidecar.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from typing import Any

from . import mutate
from .spec import InjectSpec

API_VERSION = "admission.k8s.io/v1"
WARNING_PREFIX = "sidecar-inject: "
_MAX_WARNING = 256  # the API server may truncate longer warnings

log = logging.getLogger("sidecar.inject")


@dataclasses.dataclass
class Answer:
    """One review's response document and how it went (for metrics and logs)."""

    document: dict[str, Any]
    outcome: str   # injected | updated | skipped | invalid | ignored | malformed | error
    reason: str


def _response(uid: str, outcome: str, reason: str, patch: list[dict[str, Any]] | None = None,
              warnings: list[str] | None = None) -> Answer:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode("ascii")
    if warnings:
        response["warnings"] = [(WARNING_PREFIX + w)[:_MAX_WARNING] for w in warnings]
    return Answer({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}, outcome, reason)


def _malformed(uid: str, why: str) -> Answer:
    log.warning("malformed admission review: %s", why)
    return _response(uid, "malformed", why, warnings=[f"could not read the admission review ({why}); pod admitted unchanged"])


def answer(body: bytes | str, spec: InjectSpec) -> Answer:
    """The AdmissionReview response for one request body."""
    try:
        review = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        return _malformed("", f"not JSON: {e}")
    if not isinstance(review, dict):
        return _malformed("", "not a JSON object")
    request = review.get("request")
    uid = request.get("uid") if isinstance(request, dict) else None
    uid = uid if isinstance(uid, str) else ""
    if review.get("apiVersion") != API_VERSION or review.get("kind") != "AdmissionReview":
        return _malformed(uid, f"expected kind AdmissionReview of {API_VERSION}, got "
                               f"{review.get('kind')!r} of {review.get('apiVersion')!r}")
    if not isinstance(request, dict) or not uid:
        return _malformed(uid, "no request or no request.uid")

    kind = request.get("kind") or {}
    if (request.get("operation") != "CREATE" or not isinstance(kind, dict) or kind.get("kind") != "Pod"
            or kind.get("group", "") != "" or request.get("subResource")):
        return _response(uid, "ignored", "not a pod creation")
    pod = request.get("object")
    if not isinstance(pod, dict):
        return _malformed(uid, "request.object is not a pod")

    namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or ""
    try:
        m = mutate.plan(pod, spec)
    except Exception as e:  # a bug here must never block a pod
        log.exception("planning the patch failed for a pod in namespace %s", namespace)
        return _response(uid, "error", f"internal error: {type(e).__name__}", warnings=[
            f"internal error ({type(e).__name__}); pod admitted without the S3 cache sidecar"])
    name = (pod.get("metadata") or {}).get("name") or (pod.get("metadata") or {}).get("generateName") or "?"
    level = logging.WARNING if m.warnings else logging.INFO
    log.log(level, "pod %s/%s: %s (%s)%s", namespace, name, m.outcome, m.reason,
            "".join(f"; warning: {w}" for w in m.warnings))
    return _response(uid, m.outcome, m.reason, m.patch, m.warnings)
