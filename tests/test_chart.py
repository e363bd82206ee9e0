"""The Helm chart, rendered by the real helm binary and checked against the Kubernetes schemas.

Built-in kinds are validated with kubernetes-validate's strict schemas for Kubernetes 1.29 and
the newest version it knows. The custom resources the chart can render (cert-manager's
Certificate and Issuer, Prometheus Operator's ServiceMonitor and PodMonitor) have no schema
there: they are validated against hand-written schemas in tests/crd_schemas/ covering the
fields the chart uses (unknown fields fail). Any other kind fails the test.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cryptography import x509

from k8s_support import K8S_VERSIONS, validate_k8s
from sidecar import config
from sidecar.inject import mutate
from sidecar.inject import spec as inject_spec

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "sidecar"
CRD_SCHEMAS = Path(__file__).resolve().parent / "crd_schemas"
NAMESPACE = "s3cache"
RELEASE = "cache"
FULLNAME = "cache-sidecar"

VALUES_FILES = ["default"] + sorted(p.name for p in (CHART / "ci").glob("*.yaml"))

DASHBOARD_METRICS = {
    "sidecar_requests_total", "sidecar_cache_hits_total", "sidecar_cache_misses_total",
    "sidecar_cache_hit_bytes_total", "sidecar_cache_miss_bytes_total", "sidecar_cache_tier_bytes_total",
    "sidecar_request_duration_seconds_bucket",
    "sidecar_upstream_bytes_total", "sidecar_prefetch_bytes_total", "sidecar_prefetch_useful_bytes_total",
    "sidecar_bandwidth_rate_bytes",
    # the webhook's own (sidecar/inject/server.py)
    "sidecar_inject_review_duration_seconds_bucket", "sidecar_inject_reviews_total",
}


def _helm() -> str:
    for candidate in (ROOT / ".tools" / "bin" / "helm", shutil.which("helm")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    if os.environ.get("CI"):
        pytest.fail("helm not found: `make tools` installs it into .tools/bin")
    pytest.skip("helm not found: run `make tools`")


HELM = None


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    global HELM
    HELM = HELM or _helm()
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/helm-cache", "HELM_CONFIG_HOME": "/tmp/helm-config",
           "HELM_DATA_HOME": "/tmp/helm-data"}
    p = subprocess.run([HELM, *args], capture_output=True, text=True, env=env, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{p.stderr}")
    return p


def _values_args(values: str) -> list[str]:
    return [] if values == "default" else ["-f", str(CHART / "ci" / values)]


@functools.lru_cache(maxsize=None)
def render(values: str, *extra: str, namespace: str = NAMESPACE) -> tuple[dict[str, Any], ...]:
    out = helm("template", RELEASE, str(CHART), "-n", namespace, *_values_args(values), *extra).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def find(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@functools.lru_cache(maxsize=None)
def _crd_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    group_version = api_version.replace("/", ".")
    path = CRD_SCHEMAS / f"{kind.lower()}.{group_version}.json"
    return json.loads(path.read_text()) if path.exists() else None


def validate_manifest(doc: dict[str, Any]) -> str:
    """Validate one rendered object; returns which schema did it."""
    crd = _crd_schema(doc["apiVersion"], doc["kind"])
    if crd is not None:
        jsonschema.Draft202012Validator(crd).validate(doc)
        return "crd-subset"
    validate_k8s(doc)
    return "kubernetes " + "/".join(K8S_VERSIONS)


# --- lint, render, validate every values file -------------------------------------------------

@pytest.mark.parametrize("values", VALUES_FILES)
def test_helm_lint(values: str) -> None:
    p = helm("lint", "--strict", str(CHART), "-n", NAMESPACE, *_values_args(values))
    assert "0 chart(s) failed" in p.stdout


@pytest.mark.parametrize("values", VALUES_FILES)
def test_rendered_manifests_are_valid(values: str) -> None:
    docs = render(values)
    assert docs, "nothing rendered"
    for doc in docs:
        try:
            validate_manifest(doc)
        except Exception as e:  # name the object in the failure
            raise AssertionError(f"{values}: {doc['kind']} {doc['metadata'].get('name')}: {e}") from e
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "sidecar" and labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm" and "app.kubernetes.io/version" in labels
        assert "helm.sh/chart" in labels
        if doc["kind"] not in ("MutatingWebhookConfiguration",):
            assert doc["metadata"]["namespace"] == NAMESPACE


def test_an_invalid_manifest_is_caught() -> None:
    """The validation above can fail: a misspelt field in a Deployment or a CRD is an error."""
    dep = json.loads(json.dumps(find(render("default"), "Deployment")))
    dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(Exception):
        validate_manifest(dep)
    dep = json.loads(json.dumps(find(render("default"), "Deployment")))
    dep["spec"]["replica"] = 2
    with pytest.raises(Exception):
        validate_manifest(dep)
    cert = json.loads(json.dumps(find(render("certmanager-values.yaml"), "Certificate", f"{FULLNAME}-tls")))
    cert["spec"]["dnsName"] = cert["spec"].pop("dnsNames")
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(cert)


def test_values_schema_rejects_mistakes() -> None:
    for bad in ("webhook.replicas=two", "injection.optIn=always", "sidecar.settings.cache_sise=1GiB",
                "sidecar.settings.bandwidth_cap=100",  # a number, not a string: would render as a float
                "sidecar.cacheVolume.type=hostPath", "webhook.failurePolicy=Sometimes", "nonsense=1"):
        p = helm("template", RELEASE, str(CHART), "--set", bad, check=False)
        assert p.returncode != 0, f"--set {bad} was accepted"
        assert "schema" in p.stderr.lower() or "values" in p.stderr.lower(), p.stderr


def test_schema_knows_every_sidecar_setting() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    listed = schema["properties"]["sidecar"]["properties"]["settings"]["propertyNames"]["enum"]
    expected = [n for n in config.option_names() if n not in inject_spec.OWNED_SETTINGS]
    assert sorted(listed) == sorted(expected), (
        "charts/sidecar/values.schema.json sidecar.settings must list the sidecar's options "
        "(sidecar/config.py OPTIONS, less the ones the webhook sets): run scripts/sync-chart-schema.py")


# --- the chart and the webhook agree -------------------------------------------------------------

def _inject_spec(docs: tuple[dict[str, Any], ...]) -> inject_spec.InjectSpec:
    cm = find(docs, "ConfigMap", f"{FULLNAME}-inject")
    return inject_spec.from_mapping(yaml.safe_load(cm["data"]["inject.yaml"]))


def test_default_values_are_the_webhook_defaults() -> None:
    assert _inject_spec(render("default")) == inject_spec.InjectSpec()


@pytest.mark.parametrize("values", [v for v in VALUES_FILES if v != "snippet-only-values.yaml"])
def test_every_values_file_gives_a_valid_inject_spec(values: str) -> None:
    spec = _inject_spec(render(values))  # from_mapping validates, settings through sidecar.config.load
    if values == "ephemeral-values.yaml":
        assert spec.cache_volume.type == "ephemeral" and spec.cache_volume.storage_class_name == "fast-ssd"
        assert spec.require_pod_opt_in and spec.settings["prefetch"] is False
    if values == "regular-container-values.yaml":
        assert spec.native_sidecar is False and spec.require_pod_opt_in


@pytest.mark.parametrize("values", ["snippet-only-values.yaml", "tuned-values.yaml"])
def test_hand_injection_snippet_equals_what_the_webhook_injects(values: str) -> None:
    template = find(render(values), "PodTemplate")["template"]
    validate_k8s({"apiVersion": "v1", "kind": "Pod", "metadata": template["metadata"], "spec": template["spec"]})
    spec = _inject_spec(render(values, "--set", "webhook.enabled=true"))
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "your-app-image"}]}}
    import jsonpatch

    injected = jsonpatch.apply_patch(pod, mutate.plan(pod, spec).patch)
    field = "initContainers" if spec.native_sidecar else "containers"
    assert template["spec"][field][0] == injected["spec"][field][0]
    assert template["spec"]["volumes"] == injected["spec"]["volumes"]
    app = [c for c in template["spec"]["containers"] if c["name"] == "app"][0]
    assert app["env"] == [c for c in injected["spec"]["containers"] if c["name"] == "app"][0]["env"]
    assert template["metadata"]["annotations"] == {k: v for k, v in injected["metadata"]["annotations"].items()
                                                   if k.endswith("/status")}
    assert template["metadata"]["labels"] == injected["metadata"]["labels"]


def test_snippet_sizes_the_cache_volume_like_the_webhook() -> None:
    vols = find(render("snippet-only-values.yaml"), "PodTemplate")["template"]["spec"]["volumes"]
    # 10G (SI) = 10^10 bytes, +10 % = 1.1e10 bytes, rounded up to MiB
    assert vols[0]["emptyDir"]["sizeLimit"] == "10491Mi"
    assert mutate.quantity(mutate.volume_bytes(10**10, inject_spec.InjectSpec())) == "10491Mi"


# --- the webhook's wiring ----------------------------------------------------------------------

def test_webhook_configuration() -> None:
    docs = render("default", namespace="platform-cache")
    mwc = find(docs, "MutatingWebhookConfiguration")
    (hook,) = mwc["webhooks"]
    assert hook["admissionReviewVersions"] == ["v1"] and hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Ignore" and hook["reinvocationPolicy"] == "IfNeeded"
    assert 1 <= hook["timeoutSeconds"] <= 30
    assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    svc = hook["clientConfig"]["service"]
    assert svc == {"name": FULLNAME, "namespace": "platform-cache", "path": "/mutate", "port": 443}
    excluded = hook["namespaceSelector"]["matchExpressions"][0]
    assert excluded["key"] == "kubernetes.io/metadata.name" and excluded["operator"] == "NotIn"
    assert "platform-cache" in excluded["values"] and "kube-system" in excluded["values"]
    assert hook["namespaceSelector"]["matchLabels"] == {"sidecar.s3cache.io/inject": "enabled"}
    assert "matchConditions" not in hook
    # the Service reaches the webhook's container port
    service, deployment = find(docs, "Service"), find(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in service["spec"]["selector"].items())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert service["spec"]["ports"][0]["targetPort"] in [p["name"] for p in container["ports"]]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


@pytest.mark.parametrize("values, labels, condition", [
    ("default", True, False),
    ("regular-container-values.yaml", False, True),  # optIn: pod
    ("ephemeral-values.yaml", True, True),           # optIn: both
])
def test_opt_in_modes(values: str, labels: bool, condition: bool) -> None:
    (hook,) = find(render(values), "MutatingWebhookConfiguration")["webhooks"]
    assert ("matchLabels" in hook["namespaceSelector"]) == labels
    assert ("matchConditions" in hook) == condition
    if condition:
        expr = hook["matchConditions"][0]["expression"]
        values_in_cel = re.findall(r"'([^']*)'", expr.split("].exists")[0])
        # the API server's filter accepts exactly the opt-in values the webhook accepts
        assert tuple(values_in_cel) == mutate._OPT_IN
        assert "object.metadata.annotations['sidecar.s3cache.io/inject'].lowerAscii()" in expr


def test_generated_tls_matches_the_ca_bundle() -> None:
    docs = render("default")
    secret = find(docs, "Secret")
    (hook,) = find(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert secret["type"] == "kubernetes.io/tls"
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert f"{FULLNAME}.{NAMESPACE}.svc" in names  # the name the API server dials
    deployment = find(docs, "Deployment")
    tls_volume = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"][0]
    assert tls_volume["secret"]["secretName"] == secret["metadata"]["name"]
    template = (CHART / "templates" / "webhook.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $secretName' in template  # kept across upgrades


@pytest.mark.parametrize("values", ["certmanager-values.yaml", "certmanager-issuer-values.yaml"])
def test_cert_manager_tls(values: str) -> None:
    docs = render(values)
    assert not [d for d in docs if d["kind"] == "Secret"]
    mwc = find(docs, "MutatingWebhookConfiguration")
    cert = find(docs, "Certificate", f"{FULLNAME}-tls")
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{FULLNAME}-tls"
    assert "caBundle" not in mwc["webhooks"][0]["clientConfig"]
    assert f"{FULLNAME}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    deployment = find(docs, "Deployment")
    tls_volume = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"][0]
    assert tls_volume["secret"]["secretName"] == cert["spec"]["secretName"]
    if values == "certmanager-issuer-values.yaml":
        assert cert["spec"]["issuerRef"] == {"name": "internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
        assert not [d for d in docs if d["kind"] == "Issuer"]
    else:
        ca_issuer = find(docs, "Issuer", f"{FULLNAME}-ca")
        assert cert["spec"]["issuerRef"]["name"] == ca_issuer["metadata"]["name"]
        assert find(docs, "Certificate", f"{FULLNAME}-ca")["spec"]["isCA"] is True


def test_deployment_availability_and_security() -> None:
    docs = render("default")
    dep, pdb = find(docs, "Deployment"), find(docs, "PodDisruptionBudget")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]
    assert all(pod["metadata"]["labels"][k] == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    anti = pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    c = pod["spec"]["containers"][0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    args = c["args"]
    assert args[:2] == ["inject", "serve"]
    config_arg = next(a for a in args if a.startswith("--config="))
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert config_arg == f"--config={mounts['inject-spec']}/inject.yaml"
    assert any(a == f"--tls-cert={mounts['tls']}/tls.crt" for a in args)
    sa = find(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False and pod["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_monitors() -> None:
    docs = render("monitoring-values.yaml")
    sm, pm = find(docs, "ServiceMonitor"), find(docs, "PodMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"][0]["port"] == "https"
    assert pm["spec"]["selector"]["matchLabels"] == {"sidecar.s3cache.io/injected": "true"}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "sidecar-admin"  # the injected container's port name
    assert pm["spec"]["namespaceSelector"] == {"any": True}


def test_dashboard() -> None:
    cm = find(render("default"), "ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["sidecar.json"])
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set(re.findall(r"\b(sidecar_[a-z_]+)\b", " ".join(exprs)))
    assert used <= DASHBOARD_METRICS, f"unknown metrics: {used - DASHBOARD_METRICS}"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("hit ratio", "bytes saved", "latency", "prefetch", "bucket"):
        assert topic in titles
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_snippet_only_renders_no_webhook() -> None:
    kinds = sorted(d["kind"] for d in render("snippet-only-values.yaml"))
    assert kinds == ["PodTemplate"]


def test_every_value_is_documented() -> None:
    doc = (ROOT / "docs" / "kubernetes.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def paths(node: Any, prefix: str = "") -> list[str]:
        out = []
        for k, v in node.items():
            p = f"{prefix}{k}"
            # Kubernetes objects passed through whole are documented as one value.
            if isinstance(v, dict) and v and k not in ("resources", "securityContext", "podSecurityContext",
                                                         "startupProbe", "readinessProbe", "livenessProbe",
                                                         "settings", "labels"):
                out += paths(v, p + ".")
            else:
                out.append(p)
        return out

    missing = [p for p in paths(values) if f"`{p}`" not in doc]
    assert not missing, f"values not explained in docs/kubernetes.md: {missing}"
