"""What the webhook injects and when: one ``InjectSpec``, read from the YAML file the chart renders.

Defaults live here, once; the chart's ``values.yaml`` documents the same defaults and a test
checks the two agree. Keys in the file are camelCase (like the Kubernetes objects it embeds);
``settings`` is a mapping of the sidecar's own option names (``sidecar.config.OPTIONS``) and
is validated with the sidecar's own parsers when the spec is loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from .. import config

# Pod annotations (``<prefix>/<name>``) that override one sidecar setting each.
ANNOTATED_SETTINGS: Mapping[str, str] = {
    "cache-size": "cache_size",
    "chunk-size": "chunk_size",
    "bandwidth-cap": "bandwidth_cap",
    "upstream": "upstream",
    "metadata-ttl": "metadata_ttl",
    "prefetch": "prefetch",
}
# Other annotations under the prefix that the webhook reads or writes.
INJECT_KEY = "inject"                  # "true"/"enabled" opts in, "false"/"disabled" opts out (label or annotation)
STATUS_KEY = "status"                  # written: "injected"
INJECTED_LABEL_KEY = "injected"        # written as a label: "true" (for a PodMonitor's selector)
EXCLUDE_CONTAINERS_KEY = "exclude-containers"  # comma-separated container names left without the endpoint env
KNOWN_KEYS = frozenset((INJECT_KEY, STATUS_KEY, INJECTED_LABEL_KEY, EXCLUDE_CONTAINERS_KEY, *ANNOTATED_SETTINGS))

# Settings the webhook derives from ports and mounts; never taken from the spec or annotations.
OWNED_SETTINGS = ("listen", "admin_listen", "cache_dir", "config")

CACHE_MOUNT_PATH = "/var/cache/sidecar"
TMP_MOUNT_PATH = "/tmp"
ADMIN_PORT_NAME = "sidecar-admin"
ENDPOINT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


class SpecError(ValueError):
    """An invalid injection spec; ``str()`` is the one line shown to the operator."""


def _default_image() -> str:
    try:
        return f"sidecar:{metadata.version('sidecar')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "sidecar:latest"


def _probe(path: str, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": ADMIN_PORT_NAME}, "periodSeconds": period,
            "failureThreshold": failures, "timeoutSeconds": timeout}


@dataclasses.dataclass(frozen=True)
class CacheVolume:
    """The volume holding the chunk cache: node-local ``emptyDir`` or a generic ephemeral PVC."""

    type: str = "emptyDir"                  # emptyDir | ephemeral
    medium: str = ""                        # emptyDir only: "" (node disk) or "Memory"
    storage_class_name: str | None = None   # ephemeral only: None is the cluster's default class
    headroom_percent: int = 10              # volume size = cache_size * (1 + headroom/100)
    request_ephemeral_storage: bool = True  # emptyDir on disk: request the volume size for scheduling


@dataclasses.dataclass(frozen=True)
class InjectSpec:
    annotation_prefix: str = "sidecar.s3cache.io"
    # When true a pod is injected only with <prefix>/inject: "true" (label or annotation);
    # when false every pod the API server sends is injected unless it opts out.
    require_pod_opt_in: bool = False
    container_name: str = "s3-cache"
    image: str = dataclasses.field(default_factory=_default_image)
    image_pull_policy: str = "IfNotPresent"
    # Native sidecar (init container with restartPolicy: Always, Kubernetes >= 1.29): starts
    # before init and app containers, stops after them, never keeps a Job's pod alive.
    native_sidecar: bool = True
    port: int = 9400
    admin_port: int = 9401
    # SIDECAR_* settings of every injected sidecar (option names of sidecar.config);
    # pod annotations override some of them.
    settings: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"cache_size": "2GiB", "log_format": "json"})
    resources: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    })
    security_context: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
    startup_probe: Mapping[str, Any] = dataclasses.field(default_factory=lambda: _probe("/healthz", 1, 120, 1))
    readiness_probe: Mapping[str, Any] = dataclasses.field(default_factory=lambda: _probe("/readyz", 5, 3, 1))
    liveness_probe: Mapping[str, Any] = dataclasses.field(default_factory=lambda: _probe("/healthz", 10, 6, 2))
    cache_volume: CacheVolume = dataclasses.field(default_factory=CacheVolume)
    tmp_size_limit: str = "64Mi"
    # hostNetwork pods share the node's ports: "skip" admits them unchanged with a warning,
    # "inject" uses the hostNetwork ports below (one such pod per node and port pair).
    host_network: str = "skip"
    host_network_port: int = 19400
    host_network_admin_port: int = 19401
    # Copy AWS_* env (except the endpoint variables) and these volume mounts from the first
    # app container, so the sidecar signs upstream requests with the app's identity (IRSA,
    # EKS Pod Identity, static keys from a Secret via valueFrom).
    copy_aws_credentials: bool = True
    credential_volume_mounts: tuple[str, ...] = ("aws-iam-token", "eks-pod-identity-token")
    extra_env: tuple[Mapping[str, Any], ...] = ()
    # The shared tier (docs/shared-tier.md): location s3://BUCKET/PREFIX (empty: off), endpoint,
    # region, and a Secret mounted for the tier alone: key "credentials" (an AWS shared credentials
    # file) and, with hmacKey, key "hmac-key" (the key every pod of the job signs blocks with).
    shared_tier: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    # --- derived names

    def key(self, name: str) -> str:
        return f"{self.annotation_prefix}/{name}"

    @property
    def cache_volume_name(self) -> str:
        return f"{self.container_name}-cache"

    @property
    def tmp_volume_name(self) -> str:
        return f"{self.container_name}-tmp"

    @property
    def shared_tier_volume_name(self) -> str:
        return f"{self.container_name}-tier"

    def settings_env(self) -> dict[str, str]:
        """The spec's settings as SIDECAR_* environment values (before annotations)."""
        return {config.env_name(k): setting_text(v) for k, v in self.settings.items()}

    def to_mapping(self) -> dict[str, Any]:
        """The spec as the camelCase mapping ``from_mapping`` reads (round-trips)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, CacheVolume):
                v = {_camel(k): x for k, x in dataclasses.asdict(v).items()}
            elif isinstance(v, tuple):
                v = [dict(x) if isinstance(x, Mapping) else x for x in v]
            elif isinstance(v, Mapping):
                v = copy.deepcopy(dict(v))
            out[_camel(f.name)] = v
        return out


def setting_text(value: Any) -> str:
    """A YAML scalar as the text the sidecar's env parser expects (booleans as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value).strip()


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(w.capitalize() for w in rest)


_SNAKE_RE = re.compile(r"(?<!^)(?=[A-Z])")


def _snake(camel: str) -> str:
    return _SNAKE_RE.sub("_", camel).lower()


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


SHARED_TIER_MOUNT_PATH = "/var/run/sidecar/shared-tier"
_SHARED_TIER_KEYS = ("location", "endpoint", "region", "secretName", "hmacKey")


def _shared_tier(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError("sharedTier must be a mapping")
    unknown = set(value) - set(_SHARED_TIER_KEYS)
    if unknown:
        raise SpecError(f"unknown key(s) {sorted(unknown)} in sharedTier (known: {', '.join(_SHARED_TIER_KEYS)})")
    out = {k: v for k, v in value.items() if v not in (None, "", False)}
    for name, setting in (("location", "shared_tier"), ("endpoint", "shared_tier_endpoint")):
        if name in out:
            try:
                config.load({setting: str(out[name])}, env={})
            except config.ConfigError as e:
                raise SpecError(f"sharedTier.{name}: {e}") from None
    if "secretName" in out and not _DNS_LABEL.match(str(out["secretName"])):
        raise SpecError(f"sharedTier.secretName {out['secretName']!r} is not a valid Secret name")
    if out.get("hmacKey") and "secretName" not in out:
        raise SpecError("sharedTier.hmacKey needs sharedTier.secretName (the Secret holding hmac-key)")
    return out


def from_mapping(data: Mapping[str, Any] | None) -> InjectSpec:
    """Build and validate a spec from the file's mapping; missing keys keep their defaults."""
    data = dict(data or {})
    kwargs: dict[str, Any] = {}
    names = {f.name: f for f in dataclasses.fields(InjectSpec)}
    for key, value in data.items():
        name = _snake(str(key))
        if name not in names:
            known = ", ".join(sorted(_camel(n) for n in names))
            raise SpecError(f"unknown key {key!r} in inject spec (known: {known})")
        if value is None:
            continue
        if name == "cache_volume":
            value = _cache_volume(value)
        elif name in ("credential_volume_mounts",):
            value = tuple(str(v) for v in value)
        elif name == "extra_env":
            value = tuple(dict(v) for v in value)
        elif name == "shared_tier":
            value = _shared_tier(value)
        kwargs[name] = value
    spec = InjectSpec(**kwargs)
    validate(spec)
    return spec


def _cache_volume(value: Mapping[str, Any]) -> CacheVolume:
    if not isinstance(value, Mapping):
        raise SpecError(f"cacheVolume must be a mapping, not {value!r}")
    names = {f.name for f in dataclasses.fields(CacheVolume)}
    kwargs = {}
    for key, v in value.items():
        name = _snake(str(key))
        if name not in names:
            raise SpecError(f"unknown key {key!r} in cacheVolume (known: "
                            f"{', '.join(sorted(_camel(n) for n in names))})")
        kwargs[name] = v
    if kwargs.get("storage_class_name") == "":
        kwargs["storage_class_name"] = None
    return CacheVolume(**kwargs)


def _port(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise SpecError(f"{_camel(name)} must be a port number from 1 to 65535, not {value!r}")


def validate(spec: InjectSpec) -> None:
    """Raise SpecError unless every field is usable; the sidecar settings go through config.load."""
    if not _PREFIX.match(spec.annotation_prefix):
        raise SpecError(f"annotationPrefix must be a DNS subdomain, not {spec.annotation_prefix!r}")
    if not _DNS_LABEL.match(spec.container_name) or len(spec.container_name) > 57:
        raise SpecError(f"containerName must be a DNS label of at most 57 characters, not {spec.container_name!r}")
    if not isinstance(spec.image, str) or not spec.image.strip():
        raise SpecError("image must be set")
    if spec.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
        raise SpecError(f"imagePullPolicy must be Always, IfNotPresent or Never, not {spec.image_pull_policy!r}")
    for name in ("port", "admin_port", "host_network_port", "host_network_admin_port"):
        _port(name, getattr(spec, name))
    if spec.port == spec.admin_port or spec.host_network_port == spec.host_network_admin_port:
        raise SpecError("the S3 port and the admin port must differ")
    if spec.host_network not in ("skip", "inject"):
        raise SpecError(f"hostNetwork must be skip or inject, not {spec.host_network!r}")
    for flag in ("require_pod_opt_in", "native_sidecar", "copy_aws_credentials"):
        if not isinstance(getattr(spec, flag), bool):
            raise SpecError(f"{_camel(flag)} must be true or false")
    for name in ("resources", "security_context", "startup_probe", "readiness_probe", "liveness_probe", "settings"):
        if not isinstance(getattr(spec, name), Mapping):
            raise SpecError(f"{_camel(name)} must be a mapping")
    cv = spec.cache_volume
    if cv.type not in ("emptyDir", "ephemeral"):
        raise SpecError(f"cacheVolume.type must be emptyDir or ephemeral, not {cv.type!r}")
    if cv.medium not in ("", "Memory"):
        raise SpecError(f"cacheVolume.medium must be empty or Memory, not {cv.medium!r}")
    if isinstance(cv.headroom_percent, bool) or not isinstance(cv.headroom_percent, int) \
            or not 0 <= cv.headroom_percent <= 1000:
        raise SpecError(f"cacheVolume.headroomPercent must be an integer from 0 to 1000, not {cv.headroom_percent!r}")
    if not isinstance(spec.tmp_size_limit, str) or not _QUANTITY.match(spec.tmp_size_limit):
        raise SpecError(f"tmpSizeLimit must be a Kubernetes quantity such as 64Mi, not {spec.tmp_size_limit!r}")
    for e in spec.extra_env:
        if not isinstance(e.get("name"), str) or not e["name"]:
            raise SpecError(f"extraEnv entries need a name: {e!r}")
    known = set(config.option_names())
    for k in spec.settings:
        if k in OWNED_SETTINGS:
            raise SpecError(f"settings.{k} is set by the webhook (from port, adminPort and the cache volume)")
        if k not in known:
            raise SpecError(f"settings.{k} is not a sidecar setting (known: {', '.join(sorted(known))})")
    try:
        config.load({}, env=spec.settings_env())
    except config.ConfigError as e:
        raise SpecError(f"settings: {e}") from None


def load(path: str | Path | None) -> InjectSpec:
    """The spec from a YAML file, or the defaults when no path is given."""
    if path is None:
        return from_mapping({})
    try:
        with open(path, "rb") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise SpecError(f"cannot read inject spec {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"inject spec {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is not None and not isinstance(data, Mapping):
        raise SpecError(f"inject spec {path} must be a YAML mapping")
    return from_mapping(data)
