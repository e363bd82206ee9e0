"""Turns a pod into the JSONPatch that adds the sidecar: a pure function of (pod, spec).

Decisions, in order: already injected (only top up the endpoint env, for reinvocation)?
opted out or not opted in? hostNetwork? a run-to-completion pod with a non-native sidecar?
annotation overrides valid (checked with the sidecar's own ``config.load``)? volume names
free? Then: endpoint env on the app containers (and, with a native sidecar, on the init
containers that start after it), the sidecar itself, its volumes, and the marks that make
the next review of the same pod a no-op.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .. import config
from .spec import (
    ADMIN_PORT_NAME,
    ANNOTATED_SETTINGS,
    CACHE_MOUNT_PATH,
    ENDPOINT_ENV,
    EXCLUDE_CONTAINERS_KEY,
    INJECT_KEY,
    INJECTED_LABEL_KEY,
    KNOWN_KEYS,
    SHARED_TIER_MOUNT_PATH,
    STATUS_KEY,
    TMP_MOUNT_PATH,
    InjectSpec,
    setting_text,
)

DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
_OPT_IN = ("true", "enabled", "yes", "on", "1")
_OPT_OUT = ("false", "disabled", "no", "off", "0")
_MI = 1024**2


@dataclasses.dataclass
class Mutation:
    """The answer for one pod: JSONPatch operations (maybe none) and warnings for the user."""

    outcome: str          # injected | updated | skipped | invalid
    reason: str
    patch: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)


def pointer(*parts: str | int) -> str:
    """A JSON pointer (RFC 6901) from raw path segments: ``~`` → ``~0``, ``/`` → ``~1``."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def quantity(n: int) -> str:
    """Bytes as a Kubernetes quantity, rounded up to whole MiB."""
    mib = max(1, math.ceil(n / _MI))
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def volume_bytes(cache_size: int, spec: InjectSpec) -> int:
    return math.ceil(cache_size * (100 + spec.cache_volume.headroom_percent) / 100)


def plan(pod: Mapping[str, Any], spec: InjectSpec) -> Mutation:
    meta = pod.get("metadata") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    pod_spec: Mapping[str, Any] = pod.get("spec") or {}
    if not isinstance(pod_spec, Mapping) or not pod_spec.get("containers"):
        return Mutation("skipped", "pod has no containers")
    containers: Sequence[Mapping[str, Any]] = pod_spec["containers"]
    init_containers: Sequence[Mapping[str, Any]] = pod_spec.get("initContainers") or []

    if _already_injected(annotations, containers, init_containers, spec):
        return _top_up(pod_spec, annotations, spec)
    declined = _declined(annotations, labels, pod_spec, spec)
    if declined is not None:
        return declined
    configured = _annotated_settings(annotations, spec)
    if isinstance(configured, Mutation):
        return configured
    settings, env_settings = configured
    taken = {v.get("name") for v in pod_spec.get("volumes") or []}
    for vol in (spec.cache_volume_name, spec.tmp_volume_name):
        if vol in taken:
            return Mutation("skipped", "volume name taken", warnings=[
                f"pod already has a volume named {vol}; S3 cache sidecar not added"])
    return Mutation("injected", "injected", _injection(pod, pod_spec, annotations, spec, settings, env_settings))


def _declined(annotations: Mapping[str, str], labels: Mapping[str, str], pod_spec: Mapping[str, Any],
              spec: InjectSpec) -> Mutation | None:
    """Why this pod gets no sidecar (opted out, not opted in, a pod kind it cannot serve), or None."""
    # Opt in / out: the annotation wins over the label of the same name.
    choice = annotations.get(spec.key(INJECT_KEY), labels.get(spec.key(INJECT_KEY)))
    if choice is not None:
        c = str(choice).strip().lower()
        if c in _OPT_OUT:
            return Mutation("skipped", "opted out")
        if c not in _OPT_IN:
            return _invalid(f"{spec.key(INJECT_KEY)}={choice!r} is neither true nor false")
    elif spec.require_pod_opt_in:
        return Mutation("skipped", "not opted in")

    if pod_spec.get("hostNetwork") and spec.host_network == "skip":
        return Mutation("skipped", "hostNetwork", warnings=[
            "hostNetwork pod left without the S3 cache sidecar: its ports would clash on the node "
            "(set the chart's sidecar.hostNetwork.mode=inject to use dedicated ports)"])
    if not spec.native_sidecar and pod_spec.get("restartPolicy") in ("Never", "OnFailure"):
        return Mutation("skipped", "run-to-completion pod", warnings=[
            "pod with restartPolicy " + pod_spec["restartPolicy"] + " left without the S3 cache sidecar: "
            "a regular sidecar container would keep it running (use native sidecars)"])
    return None


def _annotated_settings(annotations: Mapping[str, str],
                        spec: InjectSpec) -> tuple[config.Settings, dict[str, str]] | Mutation:
    """The sidecar's settings with the pod's annotation overrides, validated by the sidecar's own
    settings loader, and the environment that carries them; an invalid Mutation if they are wrong."""
    env_settings = spec.settings_env()
    prefix = spec.annotation_prefix + "/"
    for key, value in annotations.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name in ANNOTATED_SETTINGS:
            env_settings[config.env_name(ANNOTATED_SETTINGS[name])] = setting_text(value)
        elif name not in KNOWN_KEYS:
            return _invalid(f"unknown annotation {key} (known: "
                            f"{', '.join(prefix + k for k in sorted(ANNOTATED_SETTINGS))})")
    try:
        return config.load({}, env=env_settings), env_settings
    except config.ConfigError as e:
        where = [prefix + a for a, s in ANNOTATED_SETTINGS.items() if s == e.setting and prefix + a in annotations]
        return _invalid(f"annotation {where[0]}: {e}" if where else f"sidecar settings: {e}")


def _injection(pod: Mapping[str, Any], pod_spec: Mapping[str, Any], annotations: Mapping[str, str],
               spec: InjectSpec, settings: config.Settings, env_settings: dict[str, str]) -> list[dict[str, Any]]:
    """The JSON patch that adds the sidecar: the app containers' endpoint env, the container,
    its volumes, pod security changes, and the status annotation and label."""
    containers: Sequence[Mapping[str, Any]] = pod_spec["containers"]
    init_containers: Sequence[Mapping[str, Any]] = pod_spec.get("initContainers") or []
    host_network = bool(pod_spec.get("hostNetwork"))
    port = spec.host_network_port if host_network else spec.port
    admin_port = spec.host_network_admin_port if host_network else spec.admin_port
    endpoint = f"http://127.0.0.1:{port}"
    excluded = _excluded(annotations, spec)

    patch: list[dict[str, Any]] = []
    # Env first, while the original container indices still hold.
    for i, c in enumerate(containers):
        if c.get("name") not in excluded:
            patch += _endpoint_env_ops(("spec", "containers", i), c, endpoint)
    if spec.native_sidecar:
        # The sidecar goes first among the init containers, so every one of them starts after it.
        for i, c in enumerate(init_containers):
            if c.get("name") not in excluded:
                patch += _endpoint_env_ops(("spec", "initContainers", i), c, endpoint)

    run_as_group, pod_security_ops = _volume_ownership(pod_spec, spec)
    app = next((c for c in containers if c.get("name") not in excluded), containers[0])
    sidecar = _container(spec, settings, env_settings, port, admin_port, app, run_as_group)
    field = "initContainers" if spec.native_sidecar else "containers"
    existing = init_containers if spec.native_sidecar else containers
    if existing:
        patch.append({"op": "add", "path": pointer("spec", field, 0), "value": sidecar})
    else:
        patch.append({"op": "add", "path": pointer("spec", field), "value": [sidecar]})

    volumes = [_cache_volume(spec, settings), {"name": spec.tmp_volume_name,
                                               "emptyDir": {"sizeLimit": spec.tmp_size_limit}}]
    if spec.shared_tier.get("location") and spec.shared_tier.get("secretName"):
        volumes.append({"name": spec.shared_tier_volume_name,
                        "secret": {"secretName": str(spec.shared_tier["secretName"]), "defaultMode": 0o440}})
    if pod_spec.get("volumes"):
        patch += [{"op": "add", "path": pointer("spec", "volumes", "-"), "value": v} for v in volumes]
    else:
        patch.append({"op": "add", "path": pointer("spec", "volumes"), "value": volumes})
    patch += pod_security_ops

    new_annotations = {spec.key(STATUS_KEY): "injected"}
    if not spec.native_sidecar and DEFAULT_CONTAINER_ANNOTATION not in annotations and containers[0].get("name"):
        # The sidecar is now containers[0]; keep `kubectl logs/exec` pointing at the app.
        new_annotations[DEFAULT_CONTAINER_ANNOTATION] = containers[0]["name"]
    patch += _metadata_ops(pod, {"annotations": new_annotations,
                                 "labels": {spec.key(INJECTED_LABEL_KEY): "true"}})
    return patch


def _invalid(message: str) -> Mutation:
    return Mutation("invalid", message, warnings=[f"S3 cache sidecar not added: {message}"])


def _already_injected(annotations: Mapping[str, str], containers: Sequence[Mapping[str, Any]],
                      init_containers: Sequence[Mapping[str, Any]], spec: InjectSpec) -> bool:
    if annotations.get(spec.key(STATUS_KEY)) == "injected":
        return True
    return any(c.get("name") == spec.container_name for c in (*containers, *init_containers))


def _excluded(annotations: Mapping[str, str], spec: InjectSpec) -> set[str]:
    raw = annotations.get(spec.key(EXCLUDE_CONTAINERS_KEY), "")
    return {n.strip() for n in str(raw).split(",") if n.strip()} | {spec.container_name}


def _top_up(pod_spec: Mapping[str, Any], annotations: Mapping[str, str], spec: InjectSpec) -> Mutation:
    """An injected pod seen again (reinvocation after another webhook added containers):
    give containers that lack the endpoint env the same env as their siblings; nothing else."""
    containers = pod_spec.get("containers") or []
    init_containers = pod_spec.get("initContainers") or []
    sidecar = next((c for c in (*init_containers, *containers) if c.get("name") == spec.container_name), None)
    if sidecar is None:
        return Mutation("skipped", "already injected")
    endpoint = _endpoint_of(sidecar, spec)
    excluded = _excluded(annotations, spec)
    patch: list[dict[str, Any]] = []
    for i, c in enumerate(containers):
        if c.get("name") not in excluded:
            patch += _endpoint_env_ops(("spec", "containers", i), c, endpoint)
    native_at = next((i for i, c in enumerate(init_containers) if c.get("name") == spec.container_name), None)
    if native_at is not None:
        # Only init containers that start after the sidecar can reach it.
        for i, c in enumerate(init_containers):
            if i > native_at and c.get("name") not in excluded:
                patch += _endpoint_env_ops(("spec", "initContainers", i), c, endpoint)
    if patch:
        return Mutation("updated", "endpoint env added to containers added since injection", patch)
    return Mutation("skipped", "already injected")


def _endpoint_of(sidecar: Mapping[str, Any], spec: InjectSpec) -> str:
    for e in sidecar.get("env") or []:
        if e.get("name") == config.env_name("listen") and isinstance(e.get("value"), str):
            try:
                _, port = config.parse_hostport(e["value"])
                return f"http://127.0.0.1:{port}"
            except ValueError:
                break
    return f"http://127.0.0.1:{spec.port}"


def _endpoint_env_ops(path: tuple[str | int, ...], container: Mapping[str, Any], endpoint: str) -> list[dict[str, Any]]:
    """Both endpoint variables, unless the container sets either: then it has chosen an
    endpoint of its own (MinIO, LocalStack...) and routing S3 elsewhere would override it."""
    env = container.get("env") or []
    if any(e.get("name") in ENDPOINT_ENV for e in env):
        return []
    values = [{"name": n, "value": endpoint} for n in ENDPOINT_ENV]
    if env:
        return [{"op": "add", "path": pointer(*path, "env", "-"), "value": v} for v in values]
    return [{"op": "add", "path": pointer(*path, "env"), "value": values}]


def _volume_ownership(pod_spec: Mapping[str, Any], spec: InjectSpec) -> tuple[int | None, list[dict[str, Any]]]:
    """A PVC-backed cache volume is writable by the pod's fsGroup only. Reuse the pod's
    fsGroup as the sidecar's group, or set the sidecar's group as the pod's fsGroup."""
    if spec.cache_volume.type != "ephemeral":
        return None, []
    psc = pod_spec.get("securityContext")
    if psc and psc.get("fsGroup") is not None:
        return int(psc["fsGroup"]), []
    gid = spec.security_context.get("runAsGroup", 65532)
    if not psc:
        return None, [{"op": "add", "path": pointer("spec", "securityContext"),
                       "value": {"fsGroup": gid, "fsGroupChangePolicy": "OnRootMismatch"}}]
    ops = [{"op": "add", "path": pointer("spec", "securityContext", "fsGroup"), "value": gid}]
    if "fsGroupChangePolicy" not in psc:
        ops.append({"op": "add", "path": pointer("spec", "securityContext", "fsGroupChangePolicy"),
                    "value": "OnRootMismatch"})
    return None, ops


def _cache_volume(spec: InjectSpec, settings: config.Settings) -> dict[str, Any]:
    size = quantity(volume_bytes(settings.cache_size, spec))
    cv = spec.cache_volume
    if cv.type == "ephemeral":
        claim: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
        if cv.storage_class_name:
            claim["storageClassName"] = cv.storage_class_name
        return {"name": spec.cache_volume_name, "ephemeral": {"volumeClaimTemplate": {
            "metadata": {"labels": {spec.key(INJECTED_LABEL_KEY): "true"}}, "spec": claim}}}
    empty_dir: dict[str, Any] = {"sizeLimit": size}
    if cv.medium:
        empty_dir["medium"] = cv.medium
    return {"name": spec.cache_volume_name, "emptyDir": empty_dir}


def _credentials(app: Mapping[str, Any], spec: InjectSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not spec.copy_aws_credentials:
        return [], []
    env = [copy.deepcopy(dict(e)) for e in app.get("env") or []
           if str(e.get("name", "")).startswith("AWS_") and e.get("name") not in ENDPOINT_ENV]
    mounts = [copy.deepcopy(dict(m)) for m in app.get("volumeMounts") or []
              if m.get("name") in spec.credential_volume_mounts]
    return env, mounts


def _container(spec: InjectSpec, settings: config.Settings, env_settings: Mapping[str, str], port: int,
               admin_port: int, app: Mapping[str, Any], run_as_group: int | None) -> dict[str, Any]:
    env = [
        {"name": config.env_name("listen"), "value": f"127.0.0.1:{port}"},
        # Kubelet probes and Prometheus reach the admin port on the pod IP.
        {"name": config.env_name("admin_listen"), "value": f"0.0.0.0:{admin_port}"},
        {"name": config.env_name("cache_dir"), "value": CACHE_MOUNT_PATH},
    ]
    # Ordered by setting name, as the chart's hand-injection snippet orders them.
    env += [{"name": k, "value": v} for k, v in sorted(env_settings.items(), key=lambda kv: kv[0].lower())]
    aws_env, aws_mounts = _credentials(app, spec)
    names = {e["name"] for e in env}
    env += [e for e in aws_env if e["name"] not in names]
    env += [copy.deepcopy(dict(e)) for e in spec.extra_env]
    tier_env, tier_mounts = _shared_tier(spec)
    names = {e["name"] for e in env}
    env += [e for e in tier_env if e["name"] not in names]  # the settings map, if it names them, wins

    resources = copy.deepcopy(dict(spec.resources))
    cv = spec.cache_volume
    if cv.type == "emptyDir" and not cv.medium and cv.request_ephemeral_storage:
        requests = resources.setdefault("requests", {})
        requests.setdefault("ephemeral-storage", quantity(volume_bytes(settings.cache_size, spec)))
    security = copy.deepcopy(dict(spec.security_context))
    if run_as_group is not None:
        security["runAsGroup"] = run_as_group

    container: dict[str, Any] = {
        "name": spec.container_name,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["sidecar"],
        "args": ["serve"],
        "env": env,
        "ports": [{"name": ADMIN_PORT_NAME, "containerPort": admin_port, "protocol": "TCP"}],
        "resources": resources,
        "securityContext": security,
        "startupProbe": copy.deepcopy(dict(spec.startup_probe)),
        "readinessProbe": copy.deepcopy(dict(spec.readiness_probe)),
        "livenessProbe": copy.deepcopy(dict(spec.liveness_probe)),
        "volumeMounts": [
            {"name": spec.cache_volume_name, "mountPath": CACHE_MOUNT_PATH},
            {"name": spec.tmp_volume_name, "mountPath": TMP_MOUNT_PATH},
            *aws_mounts,
            *tier_mounts,
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.native_sidecar:
        container["restartPolicy"] = "Always"
    return container


def _shared_tier(spec: InjectSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Env and mounts of the shared tier: its location, and its own Secret mounted read-only."""
    tier = spec.shared_tier
    if not tier.get("location"):
        return [], []
    env = [{"name": config.env_name("shared_tier"), "value": str(tier["location"])}]
    for key, setting in (("endpoint", "shared_tier_endpoint"), ("region", "shared_tier_region")):
        if tier.get(key):
            env.append({"name": config.env_name(setting), "value": str(tier[key])})
    if not tier.get("secretName"):
        return env, []
    env.append({"name": config.env_name("shared_tier_credentials_file"),
                "value": f"{SHARED_TIER_MOUNT_PATH}/credentials"})
    if tier.get("hmacKey"):
        env.append({"name": config.env_name("shared_tier_hmac_key_file"), "value": f"{SHARED_TIER_MOUNT_PATH}/hmac-key"})
    return env, [{"name": spec.shared_tier_volume_name, "mountPath": SHARED_TIER_MOUNT_PATH, "readOnly": True}]


def _metadata_ops(pod: Mapping[str, Any], maps: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    """Add keys to metadata.annotations / metadata.labels, creating the maps if absent."""
    meta = pod.get("metadata")
    if not isinstance(meta, Mapping):
        return [{"op": "add", "path": pointer("metadata"), "value": {f: dict(v) for f, v in maps.items()}}]
    ops: list[dict[str, Any]] = []
    for field, values in maps.items():
        if not meta.get(field):
            ops.append({"op": "add", "path": pointer("metadata", field), "value": dict(values)})
        else:
            ops += [{"op": "add", "path": pointer("metadata", field, k), "value": v} for k, v in values.items()]
    return ops
