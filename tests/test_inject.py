"""The admission webhook: real AdmissionReview JSON over HTTPS, patches applied with jsonpatch."""

from __future__ import annotations

import base64
import copy
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k8s_support import admission_review, dumps, running_webhook, validate_k8s, write_tls
from sidecar import cli, config
from sidecar.inject import mutate, review
from sidecar.inject import spec as inject_spec

PREFIX = "sidecar.s3cache.io"
ENDPOINT = "http://127.0.0.1:9400"
DEFAULT = inject_spec.InjectSpec()


# --- pods -------------------------------------------------------------------------------------

def pod(*containers: dict[str, Any], init: list[dict[str, Any]] | None = None, annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None, **spec_fields: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"generateName": "app-7d9c-", "namespace": "apps"}
    if annotations is not None:
        meta["annotations"] = annotations
    if labels is not None:
        meta["labels"] = labels
    spec: dict[str, Any] = {"containers": list(containers) or [app()], **spec_fields}
    if init is not None:
        spec["initContainers"] = init
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def app(name: str = "app", env: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": "registry.example/app:1.0", **fields}
    if env is not None:
        c["env"] = env
    return c


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def sidecar_of(p: dict[str, Any], spec: inject_spec.InjectSpec = DEFAULT) -> dict[str, Any]:
    found = [c for c in (*p["spec"].get("initContainers", []), *p["spec"]["containers"])
             if c["name"] == spec.container_name]
    assert len(found) == 1, f"expected exactly one sidecar, found {len(found)}"
    return found[0]


def apply(p: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """The pod as the API server stores it after this response."""
    r = response["response"]
    assert r["allowed"] is True
    if "patch" not in r:
        assert "patchType" not in r
        return copy.deepcopy(p)
    assert r["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(r["patch"]))
    return jsonpatch.apply_patch(p, ops)


def sidecar_settings(container: dict[str, Any]) -> config.Settings:
    """Parse the injected container's command line and env exactly as `sidecar serve` would."""
    assert container["command"] == ["sidecar"]
    args = cli.build_parser().parse_args(container["args"])
    assert args.command == "serve"
    flags = {k: getattr(args, k) for k in config.option_names()}
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("SIDECAR_")}
    return config.load(flags, env=env)


# --- an HTTPS webhook per spec ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def webhook(tls_files: tuple[Path, Path, Path]):
    """``webhook(review, spec=DEFAULT) -> response JSON``, one HTTPS server per distinct spec."""
    ca, cert, key = tls_files
    servers: dict[int, Any] = {}
    contexts = []
    session = requests.Session()
    session.verify = str(ca)
    session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise replace our CA

    def call(body: dict[str, Any] | bytes, spec: inject_spec.InjectSpec = DEFAULT) -> dict[str, Any]:
        if id(spec) not in servers:
            cm = running_webhook(spec, cert, key)
            servers[id(spec)] = cm.__enter__()[0]
            contexts.append(cm)
        data = body if isinstance(body, bytes) else dumps(body)
        r = session.post(servers[id(spec)] + "/mutate", data=data, headers={"Content-Type": "application/json"},
                         timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    call.base_url = lambda spec=DEFAULT: (call(admission_review(pod()), spec), servers[id(spec)])[1]
    call.session = session
    yield call
    for cm in reversed(contexts):
        cm.__exit__(None, None, None)
    session.close()


def inject(webhook, p: dict[str, Any], spec: inject_spec.InjectSpec = DEFAULT, uid: str = "uid-1"):
    response = webhook(admission_review(p, uid=uid), spec)
    assert response["apiVersion"] == "admission.k8s.io/v1" and response["kind"] == "AdmissionReview"
    assert response["response"]["uid"] == uid
    return apply(p, response), response["response"]


# --- shapes of pods -------------------------------------------------------------------------------

def test_single_container_pod_gets_a_native_sidecar(webhook) -> None:
    before = pod()
    after, r = inject(webhook, before)
    validate_k8s(after)
    assert "warnings" not in r
    s = after["spec"]["initContainers"][0]
    assert s["name"] == "s3-cache" and s["restartPolicy"] == "Always"
    assert env_of(after["spec"]["containers"][0]) == {"AWS_ENDPOINT_URL": ENDPOINT, "AWS_ENDPOINT_URL_S3": ENDPOINT}
    assert after["metadata"]["annotations"] == {f"{PREFIX}/status": "injected"}
    assert after["metadata"]["labels"] == {f"{PREFIX}/injected": "true"}
    # probes, ports, security and resources
    assert s["ports"] == [{"name": "sidecar-admin", "containerPort": 9401, "protocol": "TCP"}]
    for probe, path in (("startupProbe", "/healthz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert s[probe]["httpGet"] == {"path": path, "port": "sidecar-admin"}
    sc = s["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0 and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert s["resources"]["requests"]["ephemeral-storage"] == "2253Mi"  # 2 GiB cache + 10 % headroom
    # volumes: the cache (emptyDir sized from cache_size) and a small /tmp
    vols = {v["name"]: v for v in after["spec"]["volumes"]}
    assert vols["s3-cache-cache"] == {"name": "s3-cache-cache", "emptyDir": {"sizeLimit": "2253Mi"}}
    assert vols["s3-cache-tmp"]["emptyDir"] == {"sizeLimit": "64Mi"}
    assert {m["mountPath"] for m in s["volumeMounts"]} == {"/var/cache/sidecar", "/tmp"}


def test_injected_command_line_and_env_are_valid_sidecar_settings(webhook) -> None:
    after, _ = inject(webhook, pod())
    settings = sidecar_settings(sidecar_of(after))
    assert settings.listen == ("127.0.0.1", 9400)
    assert settings.admin_listen == ("0.0.0.0", 9401)  # probes reach the pod IP
    assert str(settings.cache_dir) == "/var/cache/sidecar"
    assert settings.cache_size == 2 * 1024**3 and settings.log_format == "json"


def test_multi_container_pod_with_init_containers_and_existing_env(webhook) -> None:
    before = pod(
        app("web", env=[{"name": "LOG_LEVEL", "value": "debug"}]),
        app("minio-client", env=[{"name": "AWS_ENDPOINT_URL", "value": "http://minio.minio:9000"}]),
        app("s3-only", env=[{"name": "AWS_ENDPOINT_URL_S3", "value": "http://elsewhere:9000"}]),
        app("worker"),
        init=[app("migrate"), app("fetch-model", env=[{"name": "X", "value": "1"}])],
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    after, _ = inject(webhook, before)
    validate_k8s(after)
    names = [c["name"] for c in after["spec"]["containers"]]
    assert names == ["web", "minio-client", "s3-only", "worker"]  # app containers untouched in order
    init = after["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["s3-cache", "migrate", "fetch-model"]  # sidecar starts first
    c = {c["name"]: env_of(c) for c in after["spec"]["containers"]}
    assert c["web"] == {"LOG_LEVEL": "debug", "AWS_ENDPOINT_URL": ENDPOINT, "AWS_ENDPOINT_URL_S3": ENDPOINT}
    assert c["minio-client"] == {"AWS_ENDPOINT_URL": "http://minio.minio:9000"}  # own endpoint kept
    assert c["s3-only"] == {"AWS_ENDPOINT_URL_S3": "http://elsewhere:9000"}
    assert c["worker"]["AWS_ENDPOINT_URL_S3"] == ENDPOINT
    for ic in init[1:]:
        assert env_of(ic)["AWS_ENDPOINT_URL"] == ENDPOINT  # init containers start after a native sidecar
    assert env_of(init[2])["X"] == "1"
    assert [v["name"] for v in after["spec"]["volumes"]] == ["data", "s3-cache-cache", "s3-cache-tmp"]


def test_already_injected_pod_is_left_alone(webhook) -> None:
    once, _ = inject(webhook, pod(app("a"), app("b"), init=[app("i")]))
    twice, r = inject(webhook, once, uid="uid-2")
    assert "patch" not in r and "warnings" not in r
    assert twice == once


def test_reinvocation_adds_env_only_to_containers_added_since(webhook) -> None:
    once, _ = inject(webhook, pod(app("a"), init=[app("i")]))
    # another webhook appends a container and an init container after ours ran
    once["spec"]["containers"].append(app("added-by-other-webhook"))
    once["spec"]["initContainers"].insert(0, app("runs-before-sidecar"))
    once["spec"]["initContainers"].append(app("runs-after-sidecar"))
    again, r = inject(webhook, once, uid="uid-3")
    assert len([c for c in again["spec"]["initContainers"] if c["name"] == "s3-cache"]) == 1
    assert env_of(again["spec"]["containers"][1])["AWS_ENDPOINT_URL"] == ENDPOINT
    init = {c["name"]: env_of(c) for c in again["spec"]["initContainers"]}
    assert "AWS_ENDPOINT_URL" not in init["runs-before-sidecar"]  # it cannot reach the sidecar
    assert init["runs-after-sidecar"]["AWS_ENDPOINT_URL"] == ENDPOINT
    assert again["metadata"] == once["metadata"] and again["spec"]["volumes"] == once["spec"]["volumes"]
    third, r3 = inject(webhook, again, uid="uid-4")
    assert "patch" not in r3 and third == again


@pytest.mark.parametrize("where", ["annotations", "labels"])
@pytest.mark.parametrize("value", ["false", "disabled", "False"])
def test_pods_that_opt_out_are_untouched(webhook, where: str, value: str) -> None:
    before = pod(**{where: {f"{PREFIX}/inject": value}})
    after, r = inject(webhook, before)
    assert after == before and "patch" not in r and "warnings" not in r


def test_pod_opt_in_mode_needs_the_annotation(webhook) -> None:
    spec = inject_spec.from_mapping({"requirePodOptIn": True})
    after, r = inject(webhook, pod(), spec)
    assert "patch" not in r
    after, r = inject(webhook, pod(annotations={f"{PREFIX}/inject": "true"}), spec)
    sidecar_of(after, spec)
    after, r = inject(webhook, pod(labels={f"{PREFIX}/inject": "enabled"}), spec)
    sidecar_of(after, spec)


def test_host_network_pods_are_skipped_with_a_warning(webhook) -> None:
    before = pod(hostNetwork=True)
    after, r = inject(webhook, before)
    assert after == before and "patch" not in r
    assert any("hostNetwork" in w for w in r["warnings"])


def test_host_network_pods_use_dedicated_ports_when_asked(webhook) -> None:
    spec = inject_spec.from_mapping({"hostNetwork": "inject"})
    after, _ = inject(webhook, pod(hostNetwork=True), spec)
    validate_k8s(after)
    s = sidecar_of(after, spec)
    assert sidecar_settings(s).listen == ("127.0.0.1", 19400)
    assert sidecar_settings(s).admin_listen == ("0.0.0.0", 19401)
    assert s["ports"][0]["containerPort"] == 19401
    assert env_of(after["spec"]["containers"][0])["AWS_ENDPOINT_URL"] == "http://127.0.0.1:19400"
    # a reinvocation keeps using the port the sidecar listens on
    after["spec"]["containers"].append(app("late"))
    again, _ = inject(webhook, after, spec, uid="uid-5")
    assert env_of(again["spec"]["containers"][1])["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:19400"


def test_annotations_override_settings(webhook) -> None:
    before = pod(annotations={
        f"{PREFIX}/cache-size": "20GiB",
        f"{PREFIX}/chunk-size": "8MiB",
        f"{PREFIX}/bandwidth-cap": "100MiB",
        f"{PREFIX}/upstream": "http://minio.storage.svc:9000",
        f"{PREFIX}/metadata-ttl": "5m",
        f"{PREFIX}/prefetch": "false",
    })
    after, r = inject(webhook, before)
    validate_k8s(after)
    s = sidecar_of(after)
    settings = sidecar_settings(s)
    assert settings.cache_size == 20 * 1024**3
    assert settings.chunk_size == 8 * 1024**2
    assert settings.bandwidth_cap == 100 * 1024**2
    assert settings.upstream == "http://minio.storage.svc:9000"
    assert settings.metadata_ttl == 300.0 and settings.prefetch is False
    vol = next(v for v in after["spec"]["volumes"] if v["name"] == "s3-cache-cache")
    assert vol["emptyDir"]["sizeLimit"] == "22Gi"  # 20 GiB + 10 %
    assert after["metadata"]["annotations"][f"{PREFIX}/cache-size"] == "20GiB"


@pytest.mark.parametrize("annotations, mentions", [
    ({f"{PREFIX}/cache-size": "lots"}, "cache-size"),
    ({f"{PREFIX}/chunk-size": "1KiB"}, "chunk-size"),  # parses, but below the sidecar's minimum
    ({f"{PREFIX}/metadata-ttl": "-5"}, "metadata-ttl"),
    ({f"{PREFIX}/upstream": "ftp://example"}, "upstream"),
    ({f"{PREFIX}/cache-size": "1MiB"}, "cache-size"),  # smaller than one chunk
    ({f"{PREFIX}/cache-sise": "1GiB"}, "cache-sise"),  # typo: unknown annotation
    ({f"{PREFIX}/inject": "maybe"}, "inject"),
])
def test_bad_annotations_admit_the_pod_unchanged_with_a_warning(webhook, annotations, mentions) -> None:
    before = pod(annotations=annotations)
    after, r = inject(webhook, before)
    assert after == before and "patch" not in r
    assert len(r["warnings"]) == 1 and mentions in r["warnings"][0]
    assert r["warnings"][0].startswith("sidecar-inject: ")


def test_annotation_keys_with_slash_and_tilde_are_escaped(webhook) -> None:
    before = pod(app(), annotations={"example.com/a~b/c": "1", "kubectl.kubernetes.io/default-container": "app"},
                 labels={"app.kubernetes.io/name": "x"})
    after, r = inject(webhook, before)
    ops = json.loads(base64.b64decode(r["patch"]))
    assert {"op": "add", "path": "/metadata/annotations/sidecar.s3cache.io~1status", "value": "injected"} in ops
    assert {"op": "add", "path": "/metadata/labels/sidecar.s3cache.io~1injected", "value": "true"} in ops
    assert after["metadata"]["annotations"]["example.com/a~b/c"] == "1"
    assert after["metadata"]["labels"] == {"app.kubernetes.io/name": "x", f"{PREFIX}/injected": "true"}
    assert mutate.pointer("metadata", "annotations", "a~b/c~/") == "/metadata/annotations/a~0b~1c~0~1"


def test_aws_credentials_follow_the_app(webhook) -> None:
    irsa = app("app", env=[
        {"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::123456789012:role/reader"},
        {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}}},
        {"name": "AWS_ENDPOINT_URL", "value": "http://127.0.0.1:9400"},
        {"name": "OTHER", "value": "x"},
    ], volumeMounts=[{"name": "aws-iam-token", "mountPath": "/var/run/secrets/eks.amazonaws.com/serviceaccount",
                      "readOnly": True}, {"name": "data", "mountPath": "/data"}])
    before = pod(irsa, volumes=[{"name": "aws-iam-token", "projected": {"sources": [{"serviceAccountToken": {
        "audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}}]}},
        {"name": "data", "emptyDir": {}}])
    after, _ = inject(webhook, before)
    validate_k8s(after)
    s = sidecar_of(after)
    e = env_of(s)
    assert e["AWS_ROLE_ARN"].endswith("role/reader") and "AWS_WEB_IDENTITY_TOKEN_FILE" in e
    assert e["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3", "key": "secret"}}
    assert "OTHER" not in e and "AWS_ENDPOINT_URL" not in e  # the sidecar must not call itself
    assert [m["name"] for m in s["volumeMounts"]] == ["s3-cache-cache", "s3-cache-tmp", "aws-iam-token"]


def test_exclude_containers_annotation(webhook) -> None:
    proxy = app("istio-proxy", env=[{"name": "AWS_REGION", "value": "wrong"}])
    before = pod(proxy, app("a", env=[{"name": "AWS_REGION", "value": "eu-west-1"}]),
                 annotations={f"{PREFIX}/exclude-containers": "istio-proxy, x"})
    after, _ = inject(webhook, before)
    assert after["spec"]["containers"][0] == proxy
    assert env_of(after["spec"]["containers"][1])["AWS_ENDPOINT_URL"] == ENDPOINT
    # credentials come from the first container that is not excluded
    assert env_of(sidecar_of(after))["AWS_REGION"] == "eu-west-1"


def test_regular_container_mode(webhook) -> None:
    spec = inject_spec.from_mapping({"nativeSidecar": False})
    before = pod(app("a"), app("b"), init=[app("migrate")])
    after, r = inject(webhook, before, spec)
    validate_k8s(after)
    cs = after["spec"]["containers"]
    assert [c["name"] for c in cs] == ["s3-cache", "a", "b"] and "restartPolicy" not in cs[0]
    assert after["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "a"
    # init containers run before a regular sidecar starts: no endpoint for them
    assert after["spec"]["initContainers"] == before["spec"]["initContainers"]
    # a Job's pod would never finish with a regular sidecar
    job = pod(restartPolicy="Never")
    after, r = inject(webhook, job, spec)
    assert after == job and "restartPolicy Never" in r["warnings"][0]


def test_ephemeral_volume_and_fs_group(webhook) -> None:
    spec = inject_spec.from_mapping({"cacheVolume": {"type": "ephemeral", "storageClassName": "fast-ssd"}})
    after, _ = inject(webhook, pod(), spec)
    validate_k8s(after)
    vol = next(v for v in after["spec"]["volumes"] if v["name"] == "s3-cache-cache")
    claim = vol["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim == {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast-ssd",
                     "resources": {"requests": {"storage": "2253Mi"}}}
    assert after["spec"]["securityContext"] == {"fsGroup": 65532, "fsGroupChangePolicy": "OnRootMismatch"}
    assert "ephemeral-storage" not in sidecar_of(after, spec)["resources"]["requests"]
    # a pod with its own fsGroup keeps it; the sidecar joins that group
    after, _ = inject(webhook, pod(securityContext={"fsGroup": 2000, "runAsNonRoot": True}), spec)
    assert after["spec"]["securityContext"] == {"fsGroup": 2000, "runAsNonRoot": True}
    assert sidecar_of(after, spec)["securityContext"]["runAsGroup"] == 2000
    after, _ = inject(webhook, pod(securityContext={"runAsNonRoot": True}), spec)
    assert after["spec"]["securityContext"]["fsGroup"] == 65532


def test_pod_without_metadata_maps(webhook) -> None:
    before = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
              "spec": {"containers": [app()]}}
    after, _ = inject(webhook, before)
    validate_k8s(after)
    assert after["metadata"]["annotations"] == {f"{PREFIX}/status": "injected"}


# --- what is not a pod creation, and what cannot be read ----------------------------------------

@pytest.mark.parametrize("operation, kind", [("UPDATE", "Pod"), ("CREATE", "ConfigMap"), ("DELETE", "Pod")])
def test_other_requests_are_allowed_without_patch(webhook, operation: str, kind: str) -> None:
    r = webhook(admission_review(pod(), operation=operation, kind=kind, uid="u-other"))["response"]
    assert r == {"uid": "u-other", "allowed": True}


@pytest.mark.parametrize("body, uid", [
    (b"this is not json", ""),
    (b"[1, 2, 3]", ""),
    (b"\xff\xfe\x00", ""),
    (dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "old"}}), "old"),
    (dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}), ""),
    (dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 5}}), ""),
    (dumps(admission_review(None, uid="no-object")), "no-object"),
    (dumps(admission_review("a string", uid="str-object")), "str-object"),  # type: ignore[arg-type]
])
def test_malformed_reviews_are_allowed_with_a_warning(webhook, body: bytes, uid: str) -> None:
    r = webhook(body)
    assert r["apiVersion"] == "admission.k8s.io/v1" and r["kind"] == "AdmissionReview"
    assert r["response"]["allowed"] is True and r["response"]["uid"] == uid
    assert "patch" not in r["response"] and r["response"]["warnings"]


def test_a_bug_while_planning_still_admits_the_pod(webhook) -> None:
    # containers that are not objects make the planner fail; the answer must still allow the pod
    r = webhook(admission_review({"metadata": {}, "spec": {"containers": ["not-a-container"]}}, uid="bug"))
    assert r["response"]["allowed"] is True and "internal error" in r["response"]["warnings"][0]


# --- the server around the protocol --------------------------------------------------------------

def test_health_ready_and_metrics(webhook) -> None:
    base = webhook.base_url()
    s = webhook.session
    assert s.get(base + "/healthz", timeout=5).text == "ok\n"
    assert s.get(base + "/readyz", timeout=5).status_code == 200
    webhook(b"garbage")
    text = s.get(base + "/metrics", timeout=5).text
    assert 'sidecar_inject_reviews_total{outcome="injected"}' in text
    assert 'sidecar_inject_reviews_total{outcome="malformed"}' in text
    assert "sidecar_inject_review_duration_seconds_bucket" in text


def _served_serial(port: int, cafile: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            from cryptography import x509
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_tls_certificate_is_reloaded_when_the_files_change(tmp_path: Path) -> None:
    ca, cert, key = write_tls(tmp_path / "tls", serial=1001)
    with running_webhook(DEFAULT, cert, key, reload_interval=0.05) as (url, tls):
        port = int(url.rsplit(":", 1)[1])
        snapshot = tmp_path / "ca-1.crt"
        snapshot.write_bytes(ca.read_bytes())
        assert _served_serial(port, snapshot) == 1001
        # a broken pair (cert without its key) is refused; the old pair keeps serving
        cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
        time.sleep(0.3)
        assert _served_serial(port, snapshot) == 1001
        write_tls(tmp_path / "tls", serial=2002)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and tls.reloads < 2:
            time.sleep(0.05)
        assert _served_serial(port, ca) == 2002  # signed by the new CA


# --- properties over many pod shapes (no HTTP: the planner is a pure function) -------------------

_names = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True).filter(lambda n: n != DEFAULT.container_name)
_env = st.lists(st.sampled_from(["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "HOME", "X"]),
                unique=True, max_size=3).map(lambda ns: [{"name": n, "value": "v"} for n in ns] or None)
_container = st.builds(lambda n, e: app(n, env=e), _names, _env)
_keys = st.sampled_from(["a/b", "x~y", "example.com/p~/q", "plain", "kubectl.kubernetes.io/default-container"])


@st.composite
def _pods(draw: st.DrawFn) -> dict[str, Any]:
    cs = draw(st.lists(_container, min_size=1, max_size=4, unique_by=lambda c: c["name"]))
    taken = {c["name"] for c in cs}
    ic = draw(st.lists(_container.filter(lambda c: c["name"] not in taken), max_size=3,
                       unique_by=lambda c: c["name"]))
    ann = draw(st.none() | st.dictionaries(_keys, st.just("v"), max_size=3))
    return pod(*cs, init=ic or None, annotations=ann)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=_pods(), native=st.booleans())
def test_injection_properties(p: dict[str, Any], native: bool) -> None:
    spec = NATIVE if native else REGULAR
    ans = review.answer(dumps(admission_review(p)), spec).document
    after = apply(p, ans)
    validate_k8s(after)
    sidecar_of(after, spec)
    # app containers keep their order and their own fields; each has the endpoint exactly once
    apps = [c for c in after["spec"]["containers"] if c["name"] != spec.container_name]
    assert [c["name"] for c in apps] == [c["name"] for c in p["spec"]["containers"]]
    for old, new in zip(p["spec"]["containers"], apps):
        old_env, new_env = [e["name"] for e in old.get("env") or []], [e["name"] for e in new.get("env") or []]
        assert new_env[:len(old_env)] == old_env
        assert sum(n in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3") for n in new_env) in (1, 2)
        if not set(old_env) & {"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"}:
            assert env_of(new)["AWS_ENDPOINT_URL"] == env_of(new)["AWS_ENDPOINT_URL_S3"] == ENDPOINT
    # other annotations survive; a second review changes nothing
    for k, v in ((p["metadata"].get("annotations")) or {}).items():
        assert after["metadata"]["annotations"][k] == v
    again = review.answer(dumps(admission_review(after)), spec).document
    assert "patch" not in again["response"]


NATIVE = DEFAULT
REGULAR = inject_spec.from_mapping({"nativeSidecar": False})


# --- the spec file --------------------------------------------------------------------------------

def test_spec_round_trips_and_rejects_mistakes(tmp_path: Path) -> None:
    assert inject_spec.from_mapping(DEFAULT.to_mapping()) == DEFAULT
    for bad, words in [
        ({"settings": {"cache_size": "huge"}}, "cache_size"),
        ({"settings": {"listen": "0.0.0.0:1"}}, "set by the webhook"),
        ({"settings": {"no_such_option": 1}}, "not a sidecar setting"),
        ({"cacheSize": "1GiB"}, "unknown key"),
        ({"cacheVolume": {"type": "hostPath"}}, "cacheVolume.type"),
        ({"port": 9401}, "must differ"),
        ({"hostNetwork": "maybe"}, "hostNetwork"),
        ({"tmpSizeLimit": "lots"}, "tmpSizeLimit"),
    ]:
        with pytest.raises(inject_spec.SpecError, match=words):
            inject_spec.from_mapping(bad)
    f = tmp_path / "inject.yaml"
    f.write_text("nativeSidecar: false\nsettings:\n  cache_size: 5GiB\n  prefetch: false\n")
    s = inject_spec.load(f)
    assert s.native_sidecar is False and s.settings_env()["SIDECAR_PREFETCH"] == "false"
    f.write_text("- a list\n")
    with pytest.raises(inject_spec.SpecError):
        inject_spec.load(f)


def test_cli_refuses_a_bad_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "inject.yaml"
    f.write_text("settings:\n  chunk_size: 1KiB\n")
    assert cli.main(["inject", "show-spec", "--config", str(f)]) == 2
    assert "chunk_size" in capsys.readouterr().err


def test_shared_tier_settings_and_its_secret_reach_the_sidecar(webhook) -> None:
    spec = inject_spec.from_mapping({"sharedTier": {"location": "s3://job-tier/blocks",
                                                    "endpoint": "http://minio.minio.svc:9000",
                                                    "secretName": "tier-creds", "hmacKey": True}})
    after, _ = inject(webhook, pod(), spec)
    sc = sidecar_of(after, spec)
    settings = sidecar_settings(sc)
    assert settings.shared_tier == "s3://job-tier/blocks"
    assert settings.shared_tier_endpoint == "http://minio.minio.svc:9000"
    assert str(settings.shared_tier_credentials_file) == "/var/run/sidecar/shared-tier/credentials"
    assert str(settings.shared_tier_hmac_key_file) == "/var/run/sidecar/shared-tier/hmac-key"
    mount = next(m for m in sc["volumeMounts"] if m["mountPath"] == "/var/run/sidecar/shared-tier")
    volume = next(v for v in after["spec"]["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] and volume["secret"]["secretName"] == "tier-creds"
    with pytest.raises(inject_spec.SpecError):
        inject_spec.from_mapping({"sharedTier": {"location": "http://not-s3"}})
