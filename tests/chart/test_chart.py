"""The Helm chart, tested without a cluster and without a `helm` binary.

Helm itself runs in-process: PyPI `helm-python-sdk` binds the Helm v4 Go SDK
(`helm_python.lint`, `Chart.render` = `helm template`, with values.schema.json
enforced). Every rendered object is checked against the Kubernetes 1.30 OpenAPI
schemas by PyPI `kubernetes-validate` in strict mode (unknown fields fail). The
rendered server configuration is run by the real `ociregistry` binary.

    pip install helm-python-sdk kubernetes-validate promql-parser pytest pyyaml
    cargo build && python3 -m pytest tests/chart -q

Nothing here is skipped: a missing binary or tool fails with what to do.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import helm_python as helm
import helm_python._native
import kubernetes_validate
import kubernetes_validate.utils
import promql_parser
import pytest
import yaml

import values_doc

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ociregistry"
RELEASE = "ociregistry"
NAMESPACE = "ociregistry"
KUBE_VERSION = "1.30.0"

# Kinds from CRDs. kubernetes-validate ships only the core Kubernetes schemas,
# so it cannot validate these; they are checked by the assertions below instead
# (apiVersion, names, selectors, rule expressions). Every other kind must validate.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
}

# A stand-in PEM for rendering-only tests; the tests that run the server use
# real certificates from the `pki` fixture.
FAKE_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


# --------------------------------------------------------------------------
# Rendering helpers


# The API versions of the cluster the chart is rendered for, besides Kubernetes'
# own: one with prometheus-operator and the Gateway API, as in `helm template
# --api-versions ...`. Tests of a cluster without them pass api_versions=().
CLUSTER_CRDS = ("monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor",
                "monitoring.coreos.com/v1/PrometheusRule", "gateway.networking.k8s.io/v1",
                "gateway.networking.k8s.io/v1/HTTPRoute")


def render_raw(chart, values=None, api_versions=CLUSTER_CRDS) -> dict[str, str]:
    """`helm template ociregistry charts/ociregistry -n ociregistry -f values --api-versions ...`:
    template path -> rendered text. Raises HelmValuesError (schema) or HelmRenderError (`fail`).
    helm-python-sdk's Chart.render has no api_versions argument, but the function it
    calls (helm_render) takes them, so this calls it directly."""
    opts = {"name": RELEASE, "namespace": NAMESPACE, "api_versions": list(api_versions)}
    return json.loads(helm_python._native.call_string("helm_render", chart._raw(), json.dumps(values or {}),
                                                      json.dumps(opts)))


def render(chart, values=None, api_versions=CLUSTER_CRDS) -> list[dict]:
    """The rendered objects, hooks included (NOTES.txt and empty templates left out)."""
    objects = []
    for path, text in sorted(render_raw(chart, values, api_versions).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def notes(chart, values=None, api_versions=CLUSTER_CRDS) -> str:
    return render_raw(chart, values, api_versions)["ociregistry/templates/NOTES.txt"]


def hook(o) -> str | None:
    """The Helm hook an object is (test, post-delete, ...), or None for a release object."""
    return (o["metadata"].get("annotations") or {}).get("helm.sh/hook")


def release_objects(objects) -> list[dict]:
    """What `helm install` creates and `helm uninstall` deletes: no hooks."""
    return [o for o in objects if not hook(o)]


def find(objects, kind, name=None) -> dict:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in matches]}"
    return matches[0]


def kinds(objects) -> list[str]:
    return sorted(o["kind"] for o in objects)


def workload(objects) -> dict:
    """The mirror's Deployment (or DaemonSet, with kind: DaemonSet)."""
    # The node-configuration DaemonSets select on a component label; the mirror does not.
    [w] = [o for o in objects if o["kind"] in ("Deployment", "DaemonSet")
           and "app.kubernetes.io/component" not in o["spec"]["selector"]["matchLabels"]]
    return w


def pod_spec(objects) -> dict:
    return workload(objects)["spec"]["template"]["spec"]


def server_container(objects) -> dict:
    return next(c for c in pod_spec(objects)["containers"] if c["name"] == "ociregistry")


def config_text(objects) -> str:
    """The server's configuration file, as the ConfigMap holds it."""
    [text] = [o["data"]["registry-config.yaml"] for o in objects
              if o["kind"] == "ConfigMap" and "registry-config.yaml" in o.get("data", {})]
    return text


def server_config(objects) -> dict:
    return yaml.safe_load(config_text(objects))


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# kubernetes-validate re-reads its JSON schemas (megabytes) on every call;
# caching the loader makes validation ten times faster. It is the function the
# library's own validate() calls, so behaviour is unchanged.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(kubernetes_validate.utils.schema_contents)


def validate_objects(objects):
    """Every object against the Kubernetes schemas (strict); CRD kinds are named in CRD_KINDS."""
    for o in objects:
        if (o["apiVersion"], o["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(o, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{o['kind']}/{o['metadata']['name']} is invalid for Kubernetes {KUBE_VERSION}: {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"no Kubernetes schema for {o['kind']} ({o['apiVersion']}): add it to CRD_KINDS only if it is a CRD: {e.message}")


# --------------------------------------------------------------------------
# Value sets. Every set is linted, rendered and validated.

EXISTING_SECRET_TLS = {"serverTls": {"enabled": True, "secretName": "mirror-tls", "clientAuth": "verify"}}
INLINE_TLS = {"serverTls": {"enabled": True, "cert": FAKE_PEM, "key": FAKE_PEM, "ca": FAKE_PEM}}


def full_configuration(*, ca="/etc/ociregistry/upstream/ca.crt", cert="/etc/ociregistry/upstream/client.crt",
                       key="/etc/ociregistry/upstream/client.key", htpasswd="/etc/ociregistry/auth/htpasswd",
                       docker_config="/etc/ociregistry/docker/config.json", health=8081, metrics=9090, admin=9095):
    """A server configuration that uses every key values.schema.json allows, so
    running it through the server proves the schema asks for nothing the server rejects."""
    return {
        "imagePath": "/var/lib/ociregistry",
        "host": "0.0.0.0",
        "port": 5000,
        "defaultNs": "docker.io",
        "logLevel": "info,ociregistry=debug",
        "logFormat": "json",
        "pullTimeout": 30000,
        "allowUnconfigured": False,
        "airGapped": False,
        "alwaysPullLatest": True,
        "tagPolicy": [{"match": "*:latest", "ttl": "1h"}, {"match": "*", "policy": "never"}],
        "revalidate": "background",
        "timeouts": {"connect": "5s", "response": "30s", "stall": "1m"},
        "resilience": {"maxConcurrentRequests": 8, "maxBackgroundFills": 16, "resumeAttempts": 8,
                       "probeInterval": "5s", "maxProbeInterval": "5m"},
        "health": health,
        "metrics": metrics,
        "shutdownGracePeriod": "20s",
        "pullAuth": {"htpasswd": htpasswd},
        # Capacity, bandwidth and the admin API.
        "cacheSize": {"max": "1GiB", "target": "900MiB"},  # within 90% of the default emptyDir (2Gi)
        "minFreeDisk": "64MiB",
        "manifestCacheBytes": "2MiB",
        "pinned": ["docker.io/library/*:*"],
        "upstreamBandwidth": "2MiB/s",
        "loadWindow": "22:00-06:00",
        "pinRunningImages": True,  # the API is unreachable: eviction waits, the server runs
        "kubernetesApi": {"server": "http://127.0.0.1:1"},
        "connections": {"max": 1000, "firstByteTimeout": "10s", "idleTimeout": "2m"},
        "verify": {"interval": "24h", "rate": "32MiB"},
        "admin": admin,
        "adminAuth": {"tokenFromEnv": "ADMIN_TOKEN"},
        "registries": [
            {"name": "docker.io", "description": "Docker Hub", "bandwidth": "1MiB/s",
             "auth": {"user": "edge-site", "passwordFromEnv": "HUB_TOKEN", "tokenHosts": ["auth.docker.io"]}},
            {"name": "ghcr.io", "auth": {"token": "static-bearer-token"}},
            {"name": "gitlab.example.com", "auth": {"tokenFromEnv": "HUB_TOKEN"}},
            {"name": "123456789012.dkr.ecr.eu-west-1.amazonaws.com", "auth": {"credentialHelper": "ecr-login"}},
            {"name": "123456789012.dkr.ecr.us-east-1.amazonaws.com", "auth": {"ecr": True}},
            {"name": "registry.internal:5000", "scheme": "http"},
            {"name": "quay.io", "endpoint": "https://quay-mirror.example.com"},
            {"name": "registry.example.com", "scheme": "https",
             "endpoints": ["https://mirror.region.example.com", "https://registry.example.com"],
             "auth": {"user": "u", "password": "p"},
             "tls": {"ca": ca, "cert": cert, "key": key, "insecureSkipVerify": False}},
        ],
        # The reference server's keys this server accepts with a warning.
        "logFile": "/dev/null", "preloadImages": "", "imageFile": "", "resolveRef": "", "os": "linux",
        "arch": "amd64", "helloWorld": False, "dockerConfig": docker_config,
        "pruneConfig": {"enabled": False, "type": "accessed", "duration": "30d", "frequency": "1d",
                        "count": -1, "expr": "", "dryRun": False},
        "listConfig": {},
    }


KITCHEN_SINK = {
    "image": {"registry": "registry.example.com", "repository": "edge/ociregistry", "tag": "1.2.3",
              "digest": "sha256:" + "a" * 64, "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "nameOverride": "mirror",
    "serviceAccount": {"annotations": {"example.com/owner": "edge"}},
    "podAnnotations": {"example.com/team": "edge"},
    "podLabels": {"example.com/tier": "infra"},
    "service": {"type": "LoadBalancer", "annotations": {"example.com/lb": "internal"}},
    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}},
    "env": [{"name": "HUB_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}],
    "envFrom": [{"secretRef": {"name": "more-credentials"}}],
    "extraVolumes": [{"name": "upstream", "secret": {"secretName": "upstream-tls"}},
                     {"name": "auth", "secret": {"secretName": "htpasswd"}}],
    "extraVolumeMounts": [{"name": "upstream", "mountPath": "/etc/ociregistry/upstream", "readOnly": True},
                          {"name": "auth", "mountPath": "/etc/ociregistry/auth", "readOnly": True}],
    "hostAliases": [{"ip": "10.0.0.5", "hostnames": ["registry.internal"]}],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "edge.example.com/cache", "operator": "In", "values": ["true"]}]}]}}},
    "priorityClassName": "system-cluster-critical",
    "initContainers": [{"name": "warm-up", "image": "busybox:1.36", "command": ["true"]}],
    "sidecarContainers": [{"name": "log-shipper", "image": "busybox:1.36", "command": ["sleep", "infinity"]}],
    "terminationGracePeriodSeconds": 30,
    "serverConfig": {"configuration": full_configuration()},
}

VALUE_SETS = {
    "defaults": {},
    "inline-tls": INLINE_TLS,
    "existing-secret-tls-verify": EXISTING_SECRET_TLS,
    "observability": {"observability": {"enabled": True}},
    "pvc": {"persistence": {"persistentVolumeClaim": {"enabled": True, "newClaimSpec": {"storageClassName": "local-path"}}}},
    "pvc-existing": {"persistence": {"persistentVolumeClaim": {"enabled": True, "existingClaimName": "cache"}}},
    "hostpath": {"persistence": {"hostPath": {"enabled": True, "path": "/srv/ociregistry"}}},
    "ingress": {"service": {"type": "ClusterIP"}, "ingress": {
        "enabled": True, "className": "nginx",
        "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "0"},
        "hosts": [{"host": "mirror.example.com", "paths": [{"path": "/v2", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "mirror-tls", "hosts": ["mirror.example.com"]}]}},
    "ingress-default-backend": {"ingress": {"enabled": True}},
    "httproute": {"service": {"type": "ClusterIP"}, "httpRoute": {
        "enabled": True, "parentRefs": [{"name": "gateway", "namespace": "gateway-system"}],
        "hostnames": ["mirror.example.com"]}},
    "kitchen-sink": KITCHEN_SINK,
    "admin": {"admin": {"port": 9095, "tokenSecret": {"name": "ociregistry-admin", "key": "token"}}},
    "node-config": {"nodeConfig": {"enabled": True, "registries": ["docker.io", "quay.io"]}},
    "node-config-k3s-https": {"serverTls": {"enabled": True, "secretName": "mirror-tls"},
                              "nodeConfig": {"enabled": True, "format": "k3s", "ca": "/etc/ssl/mirror-ca.pem"}},
    "daemonset-hostport": {"kind": "DaemonSet", "hostPort": 5080, "service": {"internalTrafficPolicy": "Local"},
                           "persistence": {"hostPath": {"enabled": True}}, "nodeConfig": {"enabled": True}},
    "daemonset-hostnetwork": {"kind": "DaemonSet", "hostNetwork": True, "nodeConfig": {"enabled": True, "fallback": False}},
    "tests-mtls": {"serverTls": {"enabled": True, "secretName": "mirror-tls", "clientAuth": "verify"},
                   "tests": {"clientCertSecret": "mirror-client"}},
    "pvc-cache-size": {"persistence": {"persistentVolumeClaim": {"enabled": True}},
                       "serverConfig": {"configuration": {"cacheSize": {"max": "40GiB", "target": "36GiB"},
                                                          "minFreeDisk": "2GiB", "pinned": ["docker.io/library/*:*"]}}},
    # A cache in a bucket (storage.s3): replicas sharing it (MinIO, keys and CA from the cluster),
    # AWS S3 with IRSA, and a mirror on every node sharing one bucket.
    "s3-replicas": {"replicaCount": 3, "storage": {"s3": {
        "bucket": "mirror-cache", "prefix": "edge/site-1", "endpoint": "https://minio.minio.svc:9000",
        "region": "us-east-1", "pathStyle": True, "existingSecret": "mirror-s3", "caSecret": {"name": "minio-ca"}}}},
    "s3-irsa": {"replicaCount": 2, "storage": {"s3": {"bucket": "mirror-cache", "region": "eu-west-1"}},
                "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/mirror"}}},
    "s3-daemonset": {"kind": "DaemonSet", "hostPort": 5080, "service": {"internalTrafficPolicy": "Local"},
                     "storage": {"s3": {"bucket": "mirror-cache", "endpoint": "https://rgw.internal",
                                        "pathStyle": True, "existingSecret": "mirror-s3",
                                        "caConfigMap": {"name": "trust-bundle", "key": "bundle.pem"}}}},
}


# --------------------------------------------------------------------------
# Lint, render, validate


def lint_problems(values=None) -> list[str]:
    """`helm lint --strict --kube-version v1.30.0`. Findings come back as data, never raised.
    Helm lints in "lint mode", where a template's `fail` is only logged (to stderr,
    "INFO funcMap fail message=...") and not reported: the chart's own render-time
    checks are tested by rendering (test_render_fails_with_a_clear_message)."""
    report = helm.lint(CHART, values, strict=True, kube_version="v" + KUBE_VERSION, namespace=NAMESPACE)
    # Severity 1 is informational ("icon is recommended"); strict lint fails on 2 (warning) and 3 (error).
    return report["errors"] + [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_strict(name):
    assert lint_problems(VALUE_SETS[name]) == []


@pytest.mark.parametrize("name", VALUE_SETS)
def test_renders_objects_valid_for_kubernetes_1_30(chart, name):
    objects = render(chart, VALUE_SETS[name])
    assert objects, "nothing rendered"
    validate_objects(objects)
    for o in objects:
        if o["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            assert NAMESPACE in o["metadata"]["name"], "cluster-wide names carry the namespace: releases in two namespaces must not collide"
            continue
        assert o["metadata"].get("namespace") == NAMESPACE, f"{o['kind']} has no namespace"
        assert o["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_lint_catches_a_schema_violation():
    problems = lint_problems({"service": {"nodeport": 31080}})
    assert any("nodeport" in p for p in problems), problems


# --------------------------------------------------------------------------
# Values that must not render


@pytest.mark.parametrize("values, message", [
    ({"persistence": {"persistentVolumeClaim": {"enabled": True}, "hostPath": {"enabled": True}}},
     "persistentVolumeClaim.enabled and hostPath.enabled are both true"),
    ({"persistence": {"emptyDir": {"enabled": False}}}, "enable one of emptyDir, persistentVolumeClaim or hostPath"),
    ({"serverTls": {"enabled": True}}, "give serverTls.secretName"),
    ({"serverTls": {"enabled": True, "cert": FAKE_PEM, "key": FAKE_PEM, "clientAuth": "verify"}},
     "give the CA that signs client certificates"),
    ({"health": {"port": None}}, "health.port is required: the liveness and readiness probes use it"),
    ({"metrics": {"port": 8080}}, "the data port (8080), health.port (8081) and metrics.port (8080) must differ"),
    ({"health": {"port": 9090}}, "the data port (8080), health.port (9090) and metrics.port (9090) must differ"),
    ({"observability": {"enabled": True}, "metrics": {"port": None}}, "set metrics.port"),
    ({"terminationGracePeriodSeconds": 30}, "must be above serverConfig.configuration.shutdownGracePeriod (30s)"),
    ({"terminationGracePeriodSeconds": 100, "serverConfig": {"configuration": {"shutdownGracePeriod": "2m"}}},
     "must be above serverConfig.configuration.shutdownGracePeriod (2m)"),
    ({"serverConfig": {"configuration": {"serverTlsConfig": {"cert": "/x"}}}}, "configure TLS with the chart's serverTls"),
    ({"serverConfig": {"configuration": {"metrics": 8081}}}, "the data port (8080), health.port (8081) and metrics.port (8081) must differ"),
    # The cache must fit the emptyDir, or the kubelet evicts the pod and the cache is lost.
    ({"serverConfig": {"configuration": {"cacheSize": {"max": "20GiB", "target": "18GiB"}}}},
     "serverConfig.configuration.cacheSize.max (20GiB = 21474836480 bytes) is above 90% of "
     "persistence.emptyDir.sizeLimit (2Gi = 2147483648 bytes, 90% = 1932735283 bytes): downloads in flight "
     "also use the volume, and the kubelet evicts the pod, losing the cache"),
    ({"serverConfig": {"configuration": {"cacheSize": {"max": "1844MiB"}}}}, "Lower cacheSize.max to at most 1843MiB"),
    ({"serverConfig": {"configuration": {"cacheSize": {"max": 1932735284}}}},
     "cacheSize.max (1932735284 = 1932735284 bytes) is above 90%"),
    ({"persistence": {"emptyDir": {"sizeLimit": "5Gi"}}, "serverConfig": {"configuration": {"cacheSize": {"max": "5GiB"}}}},
     "(5Gi = 5368709120 bytes, 90% = 4831838208 bytes)"),
    ({"persistence": {"emptyDir": {"sizeLimit": "2GiB"}}},
     'persistence.emptyDir.sizeLimit: "2GiB" is not a Kubernetes quantity this chart can size the cache from'),
    ({"persistence": {"emptyDir": {"sizeLimit": "1e9"}}}, '"1e9" is not a Kubernetes quantity'),
    ({"persistence": {"emptyDir": {"sizeLimit": "lots"}}}, '"lots" is not a Kubernetes quantity'),
    # The admin API on a port of its own.
    ({"admin": {"port": 8080}}, "admin.port (8080) must differ from the data port (8080), health.port (8081) and metrics.port (9090)"),
    ({"admin": {"port": 8081}}, "admin.port (8081) must differ from the data port"),
    ({"admin": {"port": 9090}}, "admin.port (9090) must differ from the data port"),
    ({"admin": {"port": 5000}, "serverConfig": {"configuration": {"port": 5000}}}, "admin.port (5000) must differ from the data port (5000)"),
    ({"admin": {"port": 9095}, "serverConfig": {"configuration": {"admin": 9096}}},
     "admin.port (9095) and serverConfig.configuration.admin (9096) disagree"),
    ({"admin": {"port": 9095, "tokenSecret": {"name": "t"}},
      "serverConfig": {"configuration": {"adminAuth": {"tokenFile": "/t"}}}},
     "admin.tokenSecret and serverConfig.configuration.adminAuth are both set"),
    # A mirror on every node, and node ports.
    ({"kind": "DaemonSet", "persistence": {"persistentVolumeClaim": {"enabled": True}}},
     "kind: DaemonSet cannot keep its cache in persistence.persistentVolumeClaim: one claim cannot be mounted "
     "by a pod on every node. Use persistence.hostPath (a cache on each node) or the emptyDir"),
    ({"service": {"internalTrafficPolicy": "Local"}},
     "service.internalTrafficPolicy: Local sends each pod only to a mirror on its own node; with kind: Deployment"),
    ({"hostNetwork": True, "hostPort": 5080},
     "hostPort (5080) with hostNetwork: the pod's ports are the node's, so the data port is 8080: set "
     "serverConfig.configuration.port instead of hostPort"),
    # Node configuration.
    ({"nodeConfig": {"enabled": True}, "service": {"type": "ClusterIP"}},
     "nodeConfig.mirror: give the mirror's URL as the nodes reach it"),
    ({"nodeConfig": {"enabled": True}, "service": {"nodePort": None}}, "nodeConfig.mirror: give the mirror's URL"),
    ({"nodeConfig": {"enabled": True, "mirror": "https://m.example:8443", "ca": "/etc/ca.pem", "insecure": True}},
     "nodeConfig.ca and nodeConfig.insecure are both set"),
    ({"nodeConfig": {"enabled": True, "ca": "/etc/ca.pem"}},
     "nodeConfig.ca applies to an https:// mirror; the mirror is http://127.0.0.1:31080"),
    ({"nodeConfig": {"enabled": True, "insecure": True}}, "nodeConfig.insecure applies to an https:// mirror"),
    ({"nodeConfig": {"enabled": True}, "serverTls": {"enabled": True, "secretName": "t", "clientAuth": "verify"}},
     "nodeConfig with serverTls.clientAuth verify: the mirror asks the nodes for a client certificate, and "
     "ociregistry hosts-toml cannot write one"),
    ({"upstreamAuth": {"dockerConfigSecret": "regcred"},
      "serverConfig": {"configuration": {"dockerConfig": "/etc/docker.json"}}},
     "upstreamAuth.dockerConfigSecret and serverConfig.configuration.dockerConfig are both set"),
    # The reference chart's values.
    ({"image": {"ociregistry": {"registry": "quay.io", "repository": "appzygy/ociregistry", "tag": "1.17.0"}}},
     "image: quay.io/appzygy/ociregistry is the reference (Go) server's image; this chart runs this project's image"),
    ({"observability": {"serviceMonitor": {"port": "http-metrics"}}},
     "observability.serviceMonitor.port (http-metrics): the ServiceMonitor scrapes the metrics Service's port, which is named metrics"),
])
def test_render_fails_with_a_clear_message(chart, values, message):
    with pytest.raises(helm.HelmRenderError) as e:
        render_raw(chart, values)
    assert message in str(e.value)


@pytest.mark.parametrize("values, message", [
    ({"servce": {"type": "NodePort"}}, "additional properties 'servce' not allowed"),
    ({"serverConfig": {"configuration": {"logleve": "debug"}}}, "additional properties 'logleve' not allowed"),
    ({"serverTls": {"clientAuth": "required"}}, "/serverTls/clientAuth"),
    ({"health": {"port": "8081x"}}, "/health/port"),
    ({"persistence": {"hostPath": {"type": "File"}}}, "/persistence/hostPath/type"),
    ({"serverConfig": {"configuration": {"cacheSize": {"target": "1GiB"}}}}, "missing property 'max'"),
    ({"serverConfig": {"configuration": {"cacheSize": {"max": "1.5GiB"}}}}, "/serverConfig/configuration/cacheSize/max"),
    ({"serverConfig": {"configuration": {"minFreeDisk": "2 gigs"}}}, "/serverConfig/configuration/minFreeDisk"),
    ({"serverConfig": {"configuration": {"pruneConfig": {"enabled": True, "type": "sometimes"}}}},
     "/serverConfig/configuration/pruneConfig/type"),
    ({"serverConfig": {"configuration": {"adminAuth": {"tokenFile": "/t", "tokenFromEnv": "T"}}}},
     "/serverConfig/configuration/adminAuth"),
    ({"serverConfig": {"configuration": {"loadWindow": "tonight"}}}, "/serverConfig/configuration/loadWindow"),
    ({"admin": {"port": "9095x"}}, "/admin/port"),
    ({"kind": "StatefulSet"}, "/kind"),
    ({"hostPort": "5080x"}, "/hostPort"),
    ({"service": {"internalTrafficPolicy": "Nearby"}}, "/service/internalTrafficPolicy"),
    ({"nodeConfig": {"format": "docker"}}, "/nodeConfig/format"),
    ({"nodeConfig": {"mirror": "127.0.0.1:31080"}}, "/nodeConfig/mirror"),
    ({"nodeConfig": {"hostsDir": "etc/containerd/certs.d"}}, "/nodeConfig/hostsDir"),
    ({"nodeConfig": {"cleanup": {"timeout": "4 minutes"}}}, "/nodeConfig/cleanup/timeout"),
    ({"nodeConfig": {"registrys": ["docker.io"]}}, "additional properties 'registrys' not allowed"),
    ({"tests": {"pull": "hello-world"}}, "/tests/pull"),
    ({"persistence": {"hostPath": {"chown": {"enable": True}}}}, "additional properties 'enable' not allowed"),
])
def test_schema_rejects_typos_at_install(chart, values, message):
    with pytest.raises(helm.HelmValuesError) as e:
        render_raw(chart, values)
    assert message in str(e.value)


# --------------------------------------------------------------------------
# The objects


def test_defaults_nodeport_31080_and_emptydir(chart):
    objects = render(chart)
    assert kinds(release_objects(objects)) == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    assert {(o["kind"], hook(o)) for o in objects if hook(o)} == {("ConfigMap", "test"), ("Pod", "test")}
    svc = find(objects, "Service", RELEASE)
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP", "nodePort": 31080}]
    assert svc["spec"]["selector"] == {"app.kubernetes.io/name": "ociregistry", "app.kubernetes.io/instance": RELEASE}
    ports = {p["name"]: p["containerPort"] for p in server_container(objects)["ports"]}
    assert ports == {"http": 8080, "health": 8081, "metrics": 9090}
    images = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "images")
    assert images == {"name": "images", "emptyDir": {"sizeLimit": "2Gi"}}


def test_the_quick_start_log_selector_finds_the_pod(chart):
    # kubectl -n ociregistry logs -f -l app.kubernetes.io/name=ociregistry
    labels = find(render(chart), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "ociregistry"


def test_container_runs_the_image_entry_point_with_the_mounted_config(chart):
    objects = render(chart)
    c = server_container(objects)
    assert "command" not in c, "the image's entry point /ociregistry/server runs"
    assert c["args"] == ["--config-file", "/var/ociregistry/config/registry-config.yaml", "serve"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["config"]["mountPath"] == "/var/ociregistry/config"
    assert mounts["images"]["mountPath"] == server_config(objects)["imagePath"] == "/var/lib/ociregistry"
    assert c["image"] == "ociregistry:0.1.0"


def test_image_reference(chart):
    def image(**kw):
        return server_container(render(chart, {"image": kw}))["image"]
    digest = "sha256:" + "b" * 64
    assert image(registry="registry.example.com", repository="edge/ociregistry", tag="2.0.0") == "registry.example.com/edge/ociregistry:2.0.0"
    assert image(digest=digest) == f"ociregistry@{digest}"
    assert image(tag="2.0.0", digest=digest) == f"ociregistry:2.0.0@{digest}"
    assert image(tag=2.5) == "ociregistry:2.5"  # --set image.tag=2.5 gives a number


def test_security_context(chart):
    objects = render(chart)
    pod = pod_spec(objects)["securityContext"]
    assert pod["runAsUser"] == 65532 and pod["runAsGroup"] == 65532 and pod["runAsNonRoot"] is True
    assert pod["fsGroup"] == 65532
    c = server_container(objects)["securityContext"]
    assert c["readOnlyRootFilesystem"] is True
    assert c["allowPrivilegeEscalation"] is False
    assert c["privileged"] is False
    assert c["runAsUser"] == 65532 and c["runAsNonRoot"] is True
    assert c["capabilities"] == {"drop": ["ALL"]}
    assert pod_spec(objects)["automountServiceAccountToken"] is False


def test_probes_use_the_health_port(chart):
    for health in (8081, 9999):
        objects = render(chart, {"health": {"port": health}})
        c = server_container(objects)
        assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "health"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "health"}
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["health"] == health
        assert server_config(objects)["health"] == health


def test_health_port_may_come_from_the_configuration_as_in_the_reference_chart(chart):
    objects = render(chart, {"health": {"port": None}, "serverConfig": {"configuration": {"health": 8555}}})
    assert server_config(objects)["health"] == 8555
    assert {p["name"]: p["containerPort"] for p in server_container(objects)["ports"]}["health"] == 8555


def test_config_checksum_rolls_pods_only_when_the_configuration_changes(chart):
    def checksum(values):
        objects = render(chart, values)
        data = config_text(objects)
        annotation = find(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        # The annotation is the hash of exactly what the ConfigMap holds.
        assert annotation == hashlib.sha256(data.rstrip("\n").encode()).hexdigest()
        return annotation

    base = checksum({})
    assert checksum({"serverConfig": {"configuration": {"logLevel": "debug"}}}) != base
    assert checksum({"metrics": {"port": 9191}}) != base
    assert checksum({"serverTls": INLINE_TLS["serverTls"]}) != base
    assert checksum({"podLabels": {"a": "b"}, "resources": {"limits": {"memory": "1Gi"}}}) == base


def test_a_new_client_ca_rolls_pods_a_new_certificate_does_not(chart):
    """The server re-reads its certificate and key when they change, but the client CA only at start."""
    def annotations(**tls):
        values = {"serverTls": {"enabled": True, "cert": FAKE_PEM, "key": FAKE_PEM, "ca": FAKE_PEM,
                                "clientAuth": "verify", **tls}}
        return find(render(chart, values), "Deployment")["spec"]["template"]["metadata"]["annotations"]

    base = annotations()
    assert base["checksum/client-ca"] == hashlib.sha256(FAKE_PEM.encode()).hexdigest()
    assert annotations(ca=FAKE_PEM + "\n") != base
    assert annotations(cert=FAKE_PEM + "\n", key=FAKE_PEM + "\n") == base
    assert "checksum/client-ca" not in annotations(clientAuth="none")


def test_terminationgrace_is_above_the_server_drain(chart):
    objects = render(chart)
    grace = pod_spec(objects)["terminationGracePeriodSeconds"]
    assert server_config(objects)["shutdownGracePeriod"] == "30s"
    assert grace > 30


def test_observability_objects_only_when_enabled(chart):
    crd_kinds = {"ServiceMonitor", "PrometheusRule"}
    off = release_objects(render(chart))
    assert not crd_kinds & set(kinds(off))
    assert not [o for o in off if o["metadata"]["name"].endswith(("-metrics", "-dashboards"))]

    on = release_objects(render(chart, {"observability": {"enabled": True}}))
    assert kinds(on) == ["ConfigMap", "ConfigMap", "Deployment", "PrometheusRule", "Service", "Service",
                         "ServiceAccount", "ServiceMonitor"]
    metrics_svc = find(on, "Service", f"{RELEASE}-metrics")
    assert metrics_svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    sm = find(on, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    # It selects the metrics Service and nothing else.
    assert sm["spec"]["selector"]["matchLabels"].items() <= metrics_svc["metadata"]["labels"].items()
    assert not sm["spec"]["selector"]["matchLabels"].items() <= find(on, "Service", RELEASE)["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}

    parts = release_objects(render(chart, {"observability": {"enabled": True, "serviceMonitor": {"enabled": False},
                                                             "prometheusRule": {"enabled": False},
                                                             "grafanaDashboards": {"enabled": False}}}))
    assert kinds(parts) == ["ConfigMap", "Deployment", "Service", "Service", "ServiceAccount"]


def test_dashboards_in_the_chart_are_the_ones_in_deploy_grafana():
    shipped = {p.name: p.read_bytes() for p in (CHART / "dashboards").glob("*.json")}
    source = {p.name: p.read_bytes() for p in (ROOT / "deploy" / "grafana").glob("*.json")}
    assert shipped.keys() == source.keys(), "copy deploy/grafana/*.json to charts/ociregistry/dashboards/"
    for name in source:
        assert shipped[name] == source[name], f"charts/ociregistry/dashboards/{name} differs from deploy/grafana/{name}: copy it again"


def test_dashboards_configmap(chart):
    cm = find(render(chart, {"observability": {"enabled": True,
                                               "grafanaDashboards": {"annotations": {"grafana_folder": "Edge"}}}}),
              "ConfigMap", f"{RELEASE}-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Edge"}
    source = {p.name: p.read_text() for p in (ROOT / "deploy" / "grafana").glob("*.json")}
    assert set(cm["data"]) == set(source) == {"ociregistry-overview.json", "ociregistry-process.json"}
    for name, text in source.items():
        assert json.loads(cm["data"][name]) == json.loads(text)


def alert_rules(objects) -> list[dict]:
    return [r for g in find(objects, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]


def test_prometheus_rule_alerts(chart):
    objects = render(chart, {"observability": {"enabled": True}})
    rules = alert_rules(objects)
    names = [r["alert"] for r in rules]
    assert names == ["OciregistryDown", "OciregistryUpstreamDown", "OciregistryUpstreamErrors",
                     "OciregistryUpstreamRateLimited", "OciregistryUpstreamCredentialsRejected",
                     "OciregistryServerErrors", "OciregistrySlowManifests", "OciregistryServingStale",
                     "OciregistryHighMemory", "OciregistryDiskFilling", "OciregistryCacheFull",
                     "OciregistryEvictingHeavily"]
    for r in rules:
        assert r["labels"]["severity"] in {"critical", "warning", "info"}
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        # Every expression is scoped to this release's metrics Service.
        assert f'job="{RELEASE}-metrics", namespace="{NAMESPACE}"' in r["expr"], r["expr"]
    # Prometheus' own templating survives Helm's.
    by_name = {r["alert"]: r for r in rules}
    assert "{{ $labels.registry }}" in by_name["OciregistryUpstreamDown"]["annotations"]["summary"]
    assert "> 268435456" in by_name["OciregistryHighMemory"]["expr"]


def test_capacity_alerts(chart):
    """Disk filling, a cache full of pinned images (507s), and eviction churn."""
    by_name = {r["alert"]: r for r in alert_rules(render(chart, {"observability": {"enabled": True}}))}
    disk, full, churn = by_name["OciregistryDiskFilling"], by_name["OciregistryCacheFull"], by_name["OciregistryEvictingHeavily"]
    assert metric_names(disk["expr"]) == {"ociregistry_disk_free_bytes"}
    assert "predict_linear(" in disk["expr"] and disk["expr"].endswith("< 0")
    assert disk["labels"]["severity"] == "warning"
    assert metric_names(full["expr"]) == {"ociregistry_fills_refused_full_total"}
    assert "rate(" in full["expr"] and full["expr"].endswith("> 0") and full["for"] == "5m"
    assert full["labels"]["severity"] == "critical"
    assert metric_names(churn["expr"]) == {"ociregistry_evicted_images_total"}
    assert churn["expr"].endswith("[1h])) > 20"), churn["expr"]
    assert "{{ $value | humanize }}" in churn["annotations"]["summary"]
    # The threshold is a value.
    rules = alert_rules(render(chart, {"observability": {"enabled": True, "prometheusRule": {"evictionsPerHourThreshold": 75}}}))
    churn = next(r for r in rules if r["alert"] == "OciregistryEvictingHeavily")
    assert churn["expr"].endswith("> 75") and "More than 75 images an hour" in churn["annotations"]["description"]
    metric_names(churn["expr"])


def dashboard_queries() -> list[str]:
    """The PromQL of every dashboard panel, Grafana's variables replaced by values."""
    def exprs(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "expr" and isinstance(v, str):
                    yield v
                else:
                    yield from exprs(v)
        elif isinstance(node, list):
            for v in node:
                yield from exprs(v)
    queries = []
    for p in sorted((CHART / "dashboards").glob("*.json")):
        for e in exprs(json.loads(p.read_text())):
            e = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", e)
            queries.append(re.sub(r"\$\{?\w+(:\w+)?\}?", ".*", e))
    return queries


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects; a PromQL syntax error fails the test."""
    try:
        ast = promql_parser.parse(expr)
    except ValueError as e:
        pytest.fail(f"invalid PromQL: {e}: {expr}")
    names = set()
    promql_parser.walk(ast, lambda n: names.add(n.name) if isinstance(n, promql_parser.VectorSelector) else None)
    return names


def test_alert_and_dashboard_queries_are_valid_promql(chart):
    exprs = [r["expr"] for r in alert_rules(render(chart, {"observability": {"enabled": True}}))]
    exprs += dashboard_queries()
    assert len(exprs) > 20
    for e in exprs:
        assert metric_names(e), e


# The names the alerts and dashboards query; the server test checks that the
# real binary exports each of them.
def queried_metric_names(objects) -> set[str]:
    names = set()
    for e in [r["expr"] for r in alert_rules(objects)] + dashboard_queries():
        names |= metric_names(e)
    return names - {"up"}  # Prometheus' own


def test_tls_inline_pems_make_a_secret(chart):
    values = deep_merge(INLINE_TLS, {"serverTls": {"clientAuth": "verify"}})
    objects = render(chart, values)
    secret = find(objects, "Secret", f"{RELEASE}-tls")
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        "tls.crt": FAKE_PEM, "tls.key": FAKE_PEM, "ca.crt": FAKE_PEM}
    tls = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == f"{RELEASE}-tls"
    mount = next(m for m in server_container(objects)["volumeMounts"] if m["name"] == "tls")
    assert mount == {"name": "tls", "mountPath": "/var/ociregistry/tls", "readOnly": True}
    assert server_config(objects)["serverTlsConfig"] == {
        "cert": "/var/ociregistry/tls/tls.crt", "key": "/var/ociregistry/tls/tls.key",
        "ca": "/var/ociregistry/tls/ca.crt", "clientAuth": "verify"}


def test_tls_existing_secret(chart):
    objects = render(chart, EXISTING_SECRET_TLS)
    assert "Secret" not in kinds(objects)
    tls = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == "mirror-tls"
    assert server_config(objects)["serverTlsConfig"]["clientAuth"] == "verify"
    # Without client verification the CA is not handed to the server.
    assert "ca" not in server_config(render(chart, INLINE_TLS))["serverTlsConfig"]


def test_persistence_pvc_and_hostpath(chart):
    objects = render(chart, VALUE_SETS["pvc"])
    pvc = find(objects, "PersistentVolumeClaim", RELEASE)
    assert pvc["spec"]["resources"] == {"requests": {"storage": "20Gi"}}
    assert pvc["spec"]["storageClassName"] == "local-path"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    images = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "images")
    assert images == {"name": "images", "persistentVolumeClaim": {"claimName": RELEASE}}
    # An empty storageClassName is left out, so the cluster's default class applies.
    assert "storageClassName" not in find(render(chart, {"persistence": {"persistentVolumeClaim": {"enabled": True}}}),
                                          "PersistentVolumeClaim")["spec"]

    objects = render(chart, VALUE_SETS["pvc-existing"])
    assert "PersistentVolumeClaim" not in kinds(objects)
    assert next(v for v in pod_spec(objects)["volumes"] if v["name"] == "images")["persistentVolumeClaim"] == {"claimName": "cache"}

    objects = render(chart, VALUE_SETS["hostpath"])
    assert next(v for v in pod_spec(objects)["volumes"] if v["name"] == "images") == {
        "name": "images", "hostPath": {"path": "/srv/ociregistry", "type": "DirectoryOrCreate"}}


@pytest.mark.parametrize("size_limit, max_, target", [
    ("2Gi", "1536MiB", "1331MiB"),  # the default: 75% and 65% of 2048 MiB
    ("500Mi", "375MiB", "325MiB"),
    ("1.5Gi", "1152MiB", "998MiB"),
    ("1Ti", "786432MiB", "681574MiB"),
    ("10G", "7152MiB", "6198MiB"),  # decimal: 10^10 bytes
    ("100M", "71MiB", "61MiB"),
    (2147483648, "1536MiB", "1331MiB"),  # plain bytes, as a number
    ("2147483648", "1536MiB", "1331MiB"),  # and as a string
    ("1Ki", "768B", "665B"),  # too small for MiB: bytes
])
def test_cache_size_is_derived_from_the_emptydir_size_limit(chart, size_limit, max_, target):
    """Without a cap the cache fills the emptyDir and the kubelet evicts the pod (the cache is lost)."""
    objects = render(chart, {"persistence": {"emptyDir": {"sizeLimit": size_limit}}})
    assert server_config(objects)["cacheSize"] == {"max": max_, "target": target}
    images = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "images")
    assert str(images["emptyDir"]["sizeLimit"]) == str(size_limit)


def test_the_default_cache_size_is_three_quarters_of_the_default_emptydir(chart):
    cfg = server_config(render(chart))
    assert cfg["cacheSize"] == {"max": "1536MiB", "target": "1331MiB"}
    assert 1536 * 2**20 == 0.75 * 2 * 2**30
    assert "minFreeDisk" not in cfg and "pinned" not in cfg
    notes = render_raw(chart)["ociregistry/templates/NOTES.txt"]
    assert "The cache is capped at 1536MiB (evicting down to 1331MiB)" in notes


@pytest.mark.parametrize("cache_size", [
    {"max": "1843MiB"},  # just within 90% of 2Gi (1843.2 MiB)
    {"max": 1932735283, "target": "1GiB"},  # 90% of 2Gi in bytes, rounded down
    {"max": "1GB", "target": "900MB"},
    {"max": "1 GiB"},
])
def test_a_cache_size_within_90_percent_of_the_emptydir_is_used_unchanged(chart, cache_size):
    values = {"serverConfig": {"configuration": {"cacheSize": cache_size, "minFreeDisk": "1GiB",
                                                 "pinned": ["docker.io/library/*:*"]}}}
    cfg = server_config(render(chart, values))
    assert cfg["cacheSize"] == cache_size
    assert cfg["minFreeDisk"] == "1GiB" and cfg["pinned"] == ["docker.io/library/*:*"]


@pytest.mark.parametrize("persistence", [
    {"persistentVolumeClaim": {"enabled": True}},
    {"persistentVolumeClaim": {"enabled": True, "existingClaimName": "cache"}},
    {"hostPath": {"enabled": True}},
])
def test_pvc_and_hostpath_caches_pass_the_cache_size_unchanged_and_derive_none(chart, persistence):
    # Nothing derived: the chart does not know the volume's size.
    cfg = server_config(render(chart, {"persistence": persistence}))
    assert "cacheSize" not in cfg
    # The user's cap, larger than the emptyDir's sizeLimit (which does not apply), is used as given.
    capacity = {"cacheSize": {"max": "40GiB", "target": "36GiB"}, "minFreeDisk": "2GiB",
                "pinned": ["docker.io/library/*:*"],
                "pruneConfig": {"enabled": True, "type": "accessed", "duration": "30d", "frequency": "1d", "count": -1}}
    objects = render(chart, {"persistence": persistence, "serverConfig": {"configuration": capacity}})
    cfg = server_config(objects)
    assert {k: cfg[k] for k in capacity} == capacity
    assert "The cache is capped" not in render_raw(chart, {"persistence": persistence})["ociregistry/templates/NOTES.txt"]


def test_an_emptydir_without_size_limit_derives_no_cache_size(chart):
    for limit in (None, ""):
        objects = render(chart, {"persistence": {"emptyDir": {"sizeLimit": limit}}})
        assert "cacheSize" not in server_config(objects)
        assert next(v for v in pod_spec(objects)["volumes"] if v["name"] == "images") == {"name": "images", "emptyDir": {}}
    objects = render(chart, {"persistence": {"emptyDir": {"sizeLimit": None}},
                             "serverConfig": {"configuration": {"cacheSize": {"max": "500GiB"}}}})
    assert server_config(objects)["cacheSize"] == {"max": "500GiB"}


def test_no_admin_api_by_default(chart):
    objects = render(chart)
    assert "admin" not in server_config(objects) and "adminAuth" not in server_config(objects)
    assert "admin" not in {p["name"] for p in server_container(objects)["ports"]}
    assert "env" not in server_container(objects)
    assert "admin API" not in render_raw(chart)["ociregistry/templates/NOTES.txt"]


def test_admin_api_with_a_token_secret(chart):
    values = deep_merge(VALUE_SETS["admin"], {"env": [{"name": "A", "value": "b"}]})
    objects = render(chart, values)
    cfg = server_config(objects)
    assert cfg["admin"] == 9095
    assert cfg["adminAuth"] == {"tokenFromEnv": "OCIREGISTRY_ADMIN_TOKEN"}
    c = server_container(objects)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "health": 8081, "metrics": 9090, "admin": 9095}
    assert c["env"] == [
        {"name": "OCIREGISTRY_ADMIN_TOKEN", "valueFrom": {"secretKeyRef": {"name": "ociregistry-admin", "key": "token"}}},
        {"name": "A", "value": "b"}]
    # No Service carries the admin port.
    for o in render(chart, deep_merge(values, OBS)):
        if o["kind"] == "Service":
            assert all(p["port"] != 9095 and p["targetPort"] != "admin" for p in o["spec"]["ports"]), o
    notes = render_raw(chart, values)["ociregistry/templates/NOTES.txt"]
    assert "port-forward deployment/ociregistry 9095" in notes
    assert "WARNING" not in notes
    # The Secret's key may be another one.
    c = server_container(render(chart, deep_merge(values, {"admin": {"tokenSecret": {"key": "bearer"}}})))
    assert c["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "ociregistry-admin", "key": "bearer"}
    # A token Secret without a port: no admin API, nothing rendered for it.
    objects = render(chart, {"admin": {"tokenSecret": {"name": "ociregistry-admin"}}})
    assert "admin" not in server_config(objects) and "env" not in server_container(objects)


def test_admin_api_without_a_token_warns_in_the_notes(chart):
    objects = render(chart, {"admin": {"port": 9095}})
    assert server_config(objects)["admin"] == 9095
    assert "adminAuth" not in server_config(objects)
    assert "env" not in server_container(objects)
    notes = render_raw(chart, {"admin": {"port": 9095}})["ociregistry/templates/NOTES.txt"]
    assert "WARNING: the admin API has no token" in notes and "admin.tokenSecret" in notes
    # A token the user wires up in the configuration (e.g. tokenFile from extraVolumes) counts.
    values = {"admin": {"port": 9095}, "serverConfig": {"configuration": {"adminAuth": {"tokenFile": "/etc/admin/token"}}}}
    assert server_config(render(chart, values))["adminAuth"] == {"tokenFile": "/etc/admin/token"}
    assert "WARNING" not in render_raw(chart, values)["ociregistry/templates/NOTES.txt"]


def test_admin_port_may_come_from_the_configuration(chart):
    objects = render(chart, {"serverConfig": {"configuration": {"admin": 9100}}})
    assert server_config(objects)["admin"] == 9100
    assert {p["name"]: p["containerPort"] for p in server_container(objects)["ports"]}["admin"] == 9100


def test_ingress(chart):
    ing = find(render(chart, VALUE_SETS["ingress"]), "Ingress")
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["rules"] == [{"host": "mirror.example.com", "http": {"paths": [
        {"path": "/v2", "pathType": "Prefix", "backend": {"service": {"name": RELEASE, "port": {"number": 8080}}}}]}}]
    assert ing["spec"]["tls"] == [{"secretName": "mirror-tls", "hosts": ["mirror.example.com"]}]
    ing = find(render(chart, VALUE_SETS["ingress-default-backend"]), "Ingress")
    assert ing["spec"] == {"defaultBackend": {"service": {"name": RELEASE, "port": {"number": 8080}}}}


def test_httproute(chart):
    route = find(render(chart, VALUE_SETS["httproute"]), "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "gateway", "namespace": "gateway-system"}]
    assert route["spec"]["hostnames"] == ["mirror.example.com"]
    assert route["spec"]["rules"] == [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                       "backendRefs": [{"name": RELEASE, "port": 8080}]}]
    rules = [{"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}]},
             {"matches": [{"path": {"type": "PathPrefix", "value": "/other"}}], "backendRefs": [{"name": "x", "port": 1}]}]
    route = find(render(chart, deep_merge(VALUE_SETS["httproute"], {"httpRoute": {"rules": rules}})), "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": RELEASE, "port": 8080}]
    assert route["spec"]["rules"][1]["backendRefs"] == [{"name": "x", "port": 1}]


def test_notes_tell_the_quick_start(chart):
    notes = render_raw(chart)["ociregistry/templates/NOTES.txt"]
    assert '[host."http://localhost:31080"]' in notes
    assert "kubectl -n ociregistry logs -f -l app.kubernetes.io/name=ociregistry" in notes
    assert '[host."https://localhost:31080"]' in render_raw(chart, INLINE_TLS)["ociregistry/templates/NOTES.txt"]


# --------------------------------------------------------------------------
# Every value is exercised and documented.


def leaves(d, prefix=()):
    """Dotted paths of values.yaml's leaves (scalars, lists, empty maps, and maps
    keyed by label names such as `kubernetes.io/os`, which are one value)."""
    if isinstance(d, dict) and d and not any("." in k or "/" in k for k in d):
        for k, v in d.items():
            yield from leaves(v, prefix + (k,))
    else:
        yield ".".join(prefix)


def nested(path: str, value) -> dict:
    out = value
    for k in reversed(path.split(".")):
        out = {k: out}
    return out


OBS = {"observability": {"enabled": True}}
PVC = {"persistence": {"persistentVolumeClaim": {"enabled": True}}}
HOSTPATH = {"persistence": {"hostPath": {"enabled": True}}}
TLS = INLINE_TLS
VERIFY_TLS = {"serverTls": {**INLINE_TLS["serverTls"], "clientAuth": "verify"}}
NC = {"nodeConfig": {"enabled": True}}
NC_HTTPS = {"nodeConfig": {"enabled": True, "mirror": "https://mirror.example:8443"}}
S3 = {"storage": {"s3": {"bucket": "mirror-cache"}}}
S3_SECRET = deep_merge(S3, {"storage": {"s3": {"existingSecret": "mirror-s3"}}})
REPLICAS = deep_merge(S3, {"replicaCount": 3})
CONTAINER = {"name": "extra", "image": "busybox:1.36"}

# For each value: (values that make it matter, a different value). Changing it
# must change what renders. A value missing here fails the test.
EXERCISES = {
    "image.registry": ({}, "registry.example.com"),
    "image.repository": ({}, "edge/ociregistry"),
    "image.tag": ({}, "9.9.9"),
    "image.digest": ({}, "sha256:" + "c" * 64),
    "image.pullPolicy": ({}, "Always"),
    "imagePullSecrets": ({}, [{"name": "regcred"}]),
    "nameOverride": ({}, "mirror"),
    "fullnameOverride": ({}, "edge-mirror"),
    "serviceAccount.create": ({}, False),
    "serviceAccount.name": ({}, "mirror-sa"),
    "serviceAccount.annotations": ({}, {"a": "b"}),
    "serviceAccount.automount": ({}, True),
    "podAnnotations": ({}, {"a": "b"}),
    "podLabels": ({}, {"a": "b"}),
    "kind": ({}, "DaemonSet"),
    "replicaCount": (S3, 3),
    "deploymentStrategy": ({}, {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
    "podDisruptionBudget.enabled": (REPLICAS, False),
    "podDisruptionBudget.minAvailable": (REPLICAS, 2),
    "podDisruptionBudget.maxUnavailable": (REPLICAS, 1),
    "daemonSetUpdateStrategy": ({"kind": "DaemonSet"}, {"type": "OnDelete"}),
    "podSecurityContext.runAsNonRoot": ({}, False),
    "podSecurityContext.runAsUser": ({}, 1000),
    "podSecurityContext.runAsGroup": ({}, 1000),
    "podSecurityContext.fsGroup": ({}, 1000),
    "podSecurityContext.fsGroupChangePolicy": ({}, "Always"),
    "podSecurityContext.seccompProfile.type": ({}, "Unconfined"),
    "securityContext.allowPrivilegeEscalation": ({}, True),
    "securityContext.readOnlyRootFilesystem": ({}, False),
    "securityContext.privileged": ({}, True),
    "securityContext.runAsNonRoot": ({}, False),
    "securityContext.runAsUser": ({}, 1000),
    "securityContext.runAsGroup": ({}, 1000),
    "securityContext.capabilities.drop": ({}, ["NET_RAW"]),
    "service.type": ({}, "ClusterIP"),
    "service.port": ({}, 80),
    "service.nodePort": ({}, 31081),
    "service.annotations": ({}, {"a": "b"}),
    "service.internalTrafficPolicy": ({"kind": "DaemonSet"}, "Local"),
    "hostPort": ({}, 5080),
    "hostNetwork": ({}, True),
    "health.port": ({}, 8082),
    "metrics.port": ({}, 9091),
    "admin.port": ({}, 9095),
    "admin.tokenSecret.name": ({"admin": {"port": 9095}}, "ociregistry-admin"),
    "admin.tokenSecret.key": ({"admin": {"port": 9095, "tokenSecret": {"name": "ociregistry-admin"}}}, "admin-token"),
    "startupProbe.periodSeconds": ({}, 5),
    "startupProbe.timeoutSeconds": ({}, 5),
    "startupProbe.failureThreshold": ({}, 60),
    "livenessProbe.periodSeconds": ({}, 20),
    "livenessProbe.timeoutSeconds": ({}, 5),
    "livenessProbe.failureThreshold": ({}, 5),
    "readinessProbe.periodSeconds": ({}, 20),
    "readinessProbe.timeoutSeconds": ({}, 5),
    "readinessProbe.failureThreshold": ({}, 5),
    "upstreamAuth.dockerConfigSecret": ({}, "regcred"),
    "upstreamAuth.dockerConfigKey": ({"upstreamAuth": {"dockerConfigSecret": "regcred"}}, ".dockercfg"),
    "serverTls.enabled": ({"serverTls": {"cert": FAKE_PEM, "key": FAKE_PEM}}, True),
    "serverTls.secretName": (TLS, "mirror-tls"),
    "serverTls.cert": (TLS, FAKE_PEM + "#"),
    "serverTls.key": (TLS, FAKE_PEM + "#"),
    "serverTls.ca": (TLS, FAKE_PEM + "#"),
    "serverTls.clientAuth": (TLS, "verify"),
    "serverTls.mountPath": (TLS, "/etc/tls"),
    "ingress.enabled": ({}, True),
    "ingress.className": ({"ingress": {"enabled": True}}, "nginx"),
    "ingress.annotations": ({"ingress": {"enabled": True}}, {"a": "b"}),
    "ingress.hosts": ({"ingress": {"enabled": True}}, [{"host": "mirror.example.com"}]),
    "ingress.tls": ({"ingress": {"enabled": True}}, [{"secretName": "t", "hosts": ["mirror.example.com"]}]),
    "httpRoute.enabled": ({}, True),
    "httpRoute.annotations": ({"httpRoute": {"enabled": True}}, {"a": "b"}),
    "httpRoute.parentRefs": ({"httpRoute": {"enabled": True}}, [{"name": "gw"}]),
    "httpRoute.hostnames": ({"httpRoute": {"enabled": True}}, ["mirror.example.com"]),
    "httpRoute.rules": ({"httpRoute": {"enabled": True}}, [{"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}]}]),
    "resources.requests.cpu": ({}, "100m"),
    "resources.requests.memory": ({}, "128Mi"),
    "resources.limits.memory": ({}, "1Gi"),
    "terminationGracePeriodSeconds": ({}, 60),
    "persistence.emptyDir.enabled": (PVC, False),  # no difference with PVC on: see the note below
    "persistence.emptyDir.sizeLimit": ({}, "10Gi"),
    "persistence.persistentVolumeClaim.enabled": ({}, True),
    "persistence.persistentVolumeClaim.existingClaimName": (PVC, "cache"),
    "persistence.persistentVolumeClaim.newClaimSpec.accessModes": (PVC, ["ReadWriteMany"]),
    "persistence.persistentVolumeClaim.newClaimSpec.volumeMode": (PVC, "Block"),
    "persistence.persistentVolumeClaim.newClaimSpec.resources.requests.storage": (PVC, "100Gi"),
    "persistence.persistentVolumeClaim.newClaimSpec.storageClassName": (PVC, "local-path"),
    "persistence.persistentVolumeClaim.newClaimSpec.selector": (PVC, {"matchLabels": {"a": "b"}}),
    "persistence.hostPath.enabled": ({}, True),
    "persistence.hostPath.path": (HOSTPATH, "/srv/cache"),
    "persistence.hostPath.type": (HOSTPATH, "Directory"),
    "persistence.hostPath.chown.enabled": (HOSTPATH, False),
    "persistence.hostPath.chown.image": (HOSTPATH, "registry.example.com/ociregistry:9.9.9"),
    "storage.s3.bucket": ({}, "mirror-cache"),
    "storage.s3.prefix": (S3, "edge/site-1"),
    "storage.s3.endpoint": (S3, "https://minio.internal:9000"),
    "storage.s3.region": (S3, "eu-west-1"),
    "storage.s3.pathStyle": (S3, True),
    "storage.s3.existingSecret": (S3, "mirror-s3"),
    "storage.s3.accessKeyIdKey": (S3_SECRET, "id"),
    "storage.s3.secretAccessKeyKey": (S3_SECRET, "secret"),
    "storage.s3.caSecret.name": (S3, "minio-ca"),
    "storage.s3.caSecret.key": (deep_merge(S3, {"storage": {"s3": {"caSecret": {"name": "minio-ca"}}}}), "tls.crt"),
    "storage.s3.caConfigMap.name": (S3, "trust-bundle"),
    "storage.s3.caConfigMap.key": (deep_merge(S3, {"storage": {"s3": {"caConfigMap": {"name": "trust-bundle"}}}}),
                                   "bundle.pem"),
    "storage.s3.insecureSkipVerify": (S3, True),
    "storage.s3.localCacheSize": (S3, "1GiB"),
    "storage.s3.redirect": (S3, True),
    "storage.s3.peers.enabled": (S3, False),
    "storage.s3.peers.port": (S3, 5004),
    "storage.s3.peers.advertise": (S3, "http://[$(POD_IP)]:5003"),
    "storage.s3.peers.tokenSecret.name": (S3, "mirror-peers"),
    "storage.s3.peers.tokenSecret.key": (deep_merge(S3, {"storage": {"s3": {"peers": {"tokenSecret": {
        "name": "mirror-peers"}}}}}), "peer-token"),
    "storage.s3.peers.networkPolicy.enabled": (S3, True),
    "serverConfig.mountPath": ({}, "/etc/ociregistry"),
    "serverConfig.configuration.imagePath": ({}, "/cache"),
    "serverConfig.configuration.port": ({}, 5000),
    "serverConfig.configuration.logLevel": ({}, "debug"),
    "serverConfig.configuration.logFormat": ({}, "json"),
    "serverConfig.configuration.pullTimeout": ({}, 1000),
    "serverConfig.configuration.alwaysPullLatest": ({}, True),
    "serverConfig.configuration.airGapped": ({}, True),
    "serverConfig.configuration.shutdownGracePeriod": ({}, "10s"),
    "serverConfig.configuration.registries": ({}, [{"name": "quay.io"}]),
    "env": ({}, [{"name": "A", "value": "b"}]),
    "envFrom": ({}, [{"secretRef": {"name": "s"}}]),
    "extraVolumes": ({}, [{"name": "x", "emptyDir": {}}]),
    "extraVolumeMounts": ({"extraVolumes": [{"name": "x", "emptyDir": {}}]}, [{"name": "x", "mountPath": "/x"}]),
    "hostAliases": ({}, [{"ip": "10.0.0.5", "hostnames": ["r.internal"]}]),
    "nodeSelector": ({}, {"a": "b"}),
    "tolerations": ({}, [{"operator": "Exists"}]),
    "affinity": ({}, {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                          "labelSelector": {"matchLabels": {"a": "b"}}}}]}}),
    "priorityClassName": ({}, "system-cluster-critical"),
    "initContainers": ({}, [CONTAINER]),
    "sidecarContainers": ({}, [CONTAINER]),
    "extraObjects": ({}, [{"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "{{ .Release.Name }}-extra", "namespace": NAMESPACE}}]),
    "observability.enabled": ({}, True),
    "observability.serviceMonitor.enabled": (OBS, False),
    "observability.serviceMonitor.interval": (OBS, "30s"),
    "observability.serviceMonitor.scrapeTimeout": (OBS, "20s"),
    "observability.serviceMonitor.labels": (OBS, {"release": "kps"}),
    "observability.prometheusRule.enabled": (OBS, False),
    "observability.prometheusRule.labels": (OBS, {"release": "kps"}),
    "observability.prometheusRule.memoryThresholdBytes": (OBS, 1 << 30),
    "observability.prometheusRule.evictionsPerHourThreshold": (OBS, 50),
    "observability.prometheusRule.additionalRules": (OBS, [{"alert": "Extra", "expr": "vector(1)"}]),
    "observability.grafanaDashboards.enabled": (OBS, False),
    "observability.grafanaDashboards.labels": (OBS, {"a": "b"}),
    "observability.grafanaDashboards.annotations": (OBS, {"grafana_folder": "Edge"}),
    "tests.enabled": ({}, False),
    "tests.pull": ({}, "quay.io/prometheus/busybox:latest"),
    "tests.image": ({}, {"registry": "registry.example.com"}),
    "tests.clientCertSecret": (VERIFY_TLS, "mirror-client"),
    "nodeConfig.enabled": ({}, True),
    "nodeConfig.format": (NC, "k3s"),
    "nodeConfig.mirror": (NC, "http://10.0.0.5:31080"),
    "nodeConfig.registries": (NC, ["docker.io", "quay.io"]),
    "nodeConfig.fallback": (NC, False),
    "nodeConfig.hostsDir": (NC, "/etc/containerd/registries"),
    "nodeConfig.containerdConfig": (NC, "/etc/containerd/config.toml"),
    "nodeConfig.ca": (NC_HTTPS, "/etc/ssl/mirror-ca.pem"),
    "nodeConfig.insecure": (NC_HTTPS, True),
    "nodeConfig.nodeSelector": (NC, {"edge.example.com/mirror": "yes"}),
    "nodeConfig.tolerations": (NC, []),
    "nodeConfig.resources.requests.cpu": (NC, "10m"),
    "nodeConfig.resources.requests.memory": (NC, "32Mi"),
    "nodeConfig.resources.limits.memory": (NC, "128Mi"),
    "nodeConfig.image": (NC, {"tag": "9.9.9"}),
    "nodeConfig.securityContext.runAsUser": (NC, 1),
    "nodeConfig.securityContext.runAsGroup": (NC, 1),
    "nodeConfig.securityContext.runAsNonRoot": (NC, True),
    "nodeConfig.securityContext.allowPrivilegeEscalation": (NC, True),
    "nodeConfig.securityContext.readOnlyRootFilesystem": (NC, False),
    "nodeConfig.securityContext.privileged": (NC, True),
    "nodeConfig.securityContext.capabilities.drop": (NC, ["NET_RAW"]),
    "nodeConfig.securityContext.seccompProfile.type": (NC, "Unconfined"),
    "nodeConfig.cleanup.enabled": (NC, False),
    "nodeConfig.cleanup.timeout": (NC, "2m"),
}


def test_every_value_has_an_exercise():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert sorted(leaves(values)) == sorted(EXERCISES), "add the new value to EXERCISES (and README.md)"


def without_generated_tokens(objects) -> list[dict]:
    """The objects with the peer token the chart generates (randAlphaNum, new on every `helm template`,
    where `lookup` finds no Secret to keep) replaced by a fixed one, so that two renders compare."""
    out = copy.deepcopy(objects)
    for o in out:
        if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-peer-token"):
            o["data"] = {k: "generated" for k in o["data"]}
    return out


@pytest.mark.parametrize("path", EXERCISES)
def test_every_value_changes_what_renders(chart, path):
    context, value = EXERCISES[path]
    before = without_generated_tokens(render(chart, context))
    after = without_generated_tokens(render(chart, deep_merge(context, nested(path, value))))
    if path == "persistence.emptyDir.enabled":
        # emptyDir.enabled only matters when nothing else is chosen: turning it
        # off then is an error (covered in test_render_fails_with_a_clear_message).
        assert before == after
        with pytest.raises(helm.HelmRenderError):
            render(chart, nested(path, value))
        return
    assert before != after, f"{path}={value!r} changed nothing in the rendered chart"
    validate_objects(after)


def test_every_value_is_documented_in_values_yaml():
    """Each value has a `# --` comment (its own, or an enclosing key's that documents nothing else in it)."""
    _, undocumented = values_doc.table()
    assert not undocumented, f"document these values in charts/ociregistry/values.yaml with a `# --` comment: {undocumented}"


def test_the_readme_values_table_is_generated_from_values_yaml():
    tbl, _ = values_doc.table()
    readme = (CHART / "README.md").read_text()
    assert values_doc.render_readme(readme, tbl) == readme, (
        f"charts/ociregistry/README.md's values table is not current with values.yaml: run `{values_doc.COMMAND}`")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in leaves(values):  # every value is in the table, in its own row or its enclosing key's
        parts = path.split(".")
        assert any(f"| `{'.'.join(parts[:i])}` |" in readme for i in range(len(parts), 0, -1)), path


# --------------------------------------------------------------------------
# The real server reads the rendered configuration.


def ociregistry_bin() -> Path:
    path = Path(os.environ.get("OCIREGISTRY_BIN", ROOT / "target" / "debug" / "ociregistry"))
    if not path.is_file():
        pytest.fail(f"the ociregistry binary is missing at {path}: run `cargo build` first "
                    "(or set OCIREGISTRY_BIN to a built binary)")
    return path


_handed_out: set[int] = set()


def free_port() -> int:
    """A free loopback port, never the same one twice in a session."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def run(cmd, **kw):
    tool = cmd[0]
    if shutil.which(tool) is None:
        pytest.fail(f"`{tool}` is missing: apt-get install -y {dict(htpasswd='apache2-utils').get(tool, tool)}")
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(["openssl", "req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.crt", "-days", "2",
         "-subj", "/CN=chart-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    for name, ext in [("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")]:
        (d / f"{name}.ext").write_text(ext)
        run(["openssl", "req", *ec, "-keyout", d / f"{name}.key", "-out", d / f"{name}.csr", "-subj", f"/CN={name}"])
        run(["openssl", "x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", d / f"{name}.ext", "-out", d / f"{name}.crt"])
    return d


class Server:
    """The real binary with a rendered configuration, on loopback."""

    def __init__(self, config_text: str, tmp: Path, env=None):
        self.config = tmp / "registry-config.yaml"
        self.config.write_text(config_text)
        self.port = free_port()
        self.log = tmp / "server.log"
        self.cmd = [str(ociregistry_bin()), "serve", "--config-file", str(self.config),
                    "--host", "127.0.0.1", "--port", str(self.port), "--image-path", str(tmp / "cache")]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(env or {})})

    def explain(self) -> str:
        return f"command: {' '.join(self.cmd)}\nconfig:\n{self.config.read_text()}\nlog:\n{self.log.read_text()[-4000:]}"

    def get(self, port, path, context=None, headers=None):
        conn = (http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5) if context
                else http.client.HTTPConnection("127.0.0.1", port, timeout=5))
        try:
            conn.request("GET", path, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def wait_ready(self, health_port):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}\n{self.explain()}")
            try:
                if self.get(health_port, "/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail(f"the server did not become ready in 20 s\n{self.explain()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"the server did not exit within 15 s of SIGTERM\n{self.explain()}")
            assert code == 0, f"exit code {code} after SIGTERM\n{self.explain()}"


def start_rendered(chart, values, tmp, env=None):
    objects = render(chart, values)
    return objects, Server(config_text(objects), tmp, env)


def test_the_server_runs_the_default_configuration(chart, tmp_path):
    health, metrics = free_port(), free_port()
    objects, server = start_rendered(chart, {"health": {"port": health}, "metrics": {"port": metrics}}, tmp_path)
    try:
        server.wait_ready(health)
        status, body = server.get(server.port, "/v2/")
        assert status == 200, f"GET /v2/ answered {status} {body!r}\n{server.explain()}"
        assert server.get(health, "/health")[0] == 200
        assert server.get(metrics, "/metrics")[0] == 200
        assert "WARN" not in server.log.read_text(), server.explain()
    finally:
        server.stop()


ADMIN_TOKEN = "chart-test-admin-token-0123456789"


@pytest.mark.parametrize("token", [True, False], ids=["token", "no-token"])
def test_the_server_runs_the_default_configuration_with_the_admin_api(chart, tmp_path, token):
    """The default values (with the cacheSize derived from the emptyDir) plus admin.port,
    and admin.tokenSecret, whose Secret reaches the server as OCIREGISTRY_ADMIN_TOKEN."""
    health, metrics, admin = free_port(), free_port(), free_port()
    values = {"health": {"port": health}, "metrics": {"port": metrics}, "admin": {"port": admin}}
    if token:
        values["admin"]["tokenSecret"] = {"name": "ociregistry-admin", "key": "token"}
    objects = render(chart, values)
    assert server_config(objects)["cacheSize"] == {"max": "1536MiB", "target": "1331MiB"}
    env = {}
    for e in server_container(objects).get("env", []):  # what the kubelet would set from the Secret
        assert e["valueFrom"]["secretKeyRef"] == {"name": "ociregistry-admin", "key": "token"}
        env[e["name"]] = ADMIN_TOKEN
    assert bool(env) == token
    server = Server(config_text(objects), tmp_path, env)
    try:
        server.wait_ready(health)
        assert server.get(server.port, "/v2/")[0] == 200, server.explain()
        bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if token else {}
        status, body = server.get(admin, "/api/v1/stats", headers=bearer)
        assert status == 200, f"GET /api/v1/stats answered {status} {body!r}\n{server.explain()}"
        stats = json.loads(body)
        assert isinstance(stats, dict) and "images" in stats, stats
        if token:
            assert "WARN" not in server.log.read_text(), server.explain()
            assert server.get(admin, "/api/v1/stats")[0] == 401, "the admin API requires the bearer token"
            assert server.get(admin, "/api/v1/stats", headers={"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
        else:
            assert "listens on 127.0.0.1 only" in server.log.read_text(), server.explain()
        # Not on the data port.
        assert server.get(server.port, "/api/v1/stats", headers=bearer)[0] == 404
    finally:
        server.stop()


class TinyUpstream:
    """A registry serving one image (an OCI manifest with a config and a layer),
    so the server pulls, caches and counts for real."""

    def __init__(self, repo="hello"):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        import threading

        def digest(b):
            return "sha256:" + hashlib.sha256(b).hexdigest()
        config, layer = b'{"architecture":"amd64","os":"linux"}', b"not really a tar, but bytes with a digest"
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(layer), "size": len(layer)}],
        }).encode()
        self.layer_digest = digest(layer)
        content = {"/v2/": (b"{}", "application/json"),
                   f"/v2/{repo}/manifests/latest": (manifest, "application/vnd.oci.image.manifest.v1+json"),
                   f"/v2/{repo}/manifests/{digest(manifest)}": (manifest, "application/vnd.oci.image.manifest.v1+json"),
                   f"/v2/{repo}/blobs/{digest(config)}": (config, "application/octet-stream"),
                   f"/v2/{repo}/blobs/{digest(layer)}": (layer, "application/octet-stream")}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.answer(True)

            def do_HEAD(self):
                self.answer(False)

            def answer(self, body):
                found = content.get(self.path.split("?")[0])
                data, media = found or (b'{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}', "application/json")
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", media)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Docker-Content-Digest", digest(data))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_the_server_exports_every_metric_the_alerts_and_dashboards_query(chart, tmp_path):
    """The PrometheusRule and the Grafana dashboards query only names the real server exports."""
    upstream = TinyUpstream()
    dead = socket.socket()  # bound, never listening: connections are refused, and no one else gets the port
    dead.bind(("127.0.0.1", 0))
    health, metrics = free_port(), free_port()
    registries = [{"name": "upstream.test", "endpoint": f"http://127.0.0.1:{upstream.port}"},
                  {"name": "dead.test", "endpoint": f"http://127.0.0.1:{dead.getsockname()[1]}"}]
    objects, server = start_rendered(chart, {"health": {"port": health}, "metrics": {"port": metrics},
                                             "observability": {"enabled": True},
                                             "serverConfig": {"configuration": {"registries": registries}}}, tmp_path)
    try:
        server.wait_ready(health)
        for _ in range(2):  # an upstream pull, then a cache hit
            assert server.get(server.port, "/v2/hello/manifests/latest?ns=upstream.test")[0] == 200, server.explain()
            assert server.get(server.port, f"/v2/hello/blobs/{upstream.layer_digest}?ns=upstream.test")[0] == 200
        assert server.get(server.port, "/v2/hello/manifests/latest?ns=dead.test")[0] == 503  # upstream down
        assert server.get(server.port, "/v2/UPPER/manifests/latest")[0] == 400  # an API error
        with socket.create_connection(("127.0.0.1", server.port)) as s:  # a connection error
            s.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
            s.recv(1024)
        deadline = time.monotonic() + 5
        while True:  # the connection error is counted as the server closes that connection
            status, exposition = server.get(metrics, "/metrics")
            assert status == 200
            exported = set(re.findall(r"^# TYPE (\S+) (\w+)", exposition.decode(), re.M))
            series = {n + s for n, t in exported for s in
                      {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(t, [""])}
            unknown = queried_metric_names(objects) - series
            if not unknown or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not unknown, f"alerts or dashboards query metrics the server does not export: {sorted(unknown)}\n{exposition.decode()}"
    finally:
        server.stop()
        upstream.close()
        dead.close()


def test_the_server_runs_the_inline_tls_configuration(chart, pki, tmp_path):
    """The Secret the chart renders, mounted where the chart says: HTTPS with client certificates."""
    mount = tmp_path / "tls"
    mount.mkdir()
    health = free_port()
    values = {"health": {"port": health}, "metrics": {"port": None},
              "serverTls": {"enabled": True, "mountPath": str(mount), "clientAuth": "verify",
                            "cert": (pki / "server.crt").read_text(), "key": (pki / "server.key").read_text(),
                            "ca": (pki / "ca.crt").read_text()}}
    objects = render(chart, values)
    for key, data in find(objects, "Secret", f"{RELEASE}-tls")["data"].items():
        (mount / key).write_bytes(base64.b64decode(data))
    _, server = start_rendered(chart, values, tmp_path)
    try:
        server.wait_ready(health)
        ctx = ssl.create_default_context(cafile=pki / "ca.crt")
        ctx.load_cert_chain(pki / "client.crt", pki / "client.key")
        status, body = server.get(server.port, "/v2/", context=ctx)
        assert status == 200, f"GET /v2/ answered {status} {body!r}\n{server.explain()}"
        anonymous = ssl.create_default_context(cafile=pki / "ca.crt")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            server.get(server.port, "/v2/", context=anonymous)
        assert "mtls" in server.log.read_text(), server.explain()
    finally:
        server.stop()


def test_the_server_runs_the_existing_secret_tls_configuration(chart, pki, tmp_path):
    """An existing Secret (tls.crt, tls.key, ca.crt) with clientAuth: verify."""
    mount = tmp_path / "tls"
    mount.mkdir()
    for key, src in [("tls.crt", "server.crt"), ("tls.key", "server.key"), ("ca.crt", "ca.crt")]:
        shutil.copy(pki / src, mount / key)
    health = free_port()
    values = deep_merge(EXISTING_SECRET_TLS, {"health": {"port": health}, "metrics": {"port": None},
                                              "serverTls": {"mountPath": str(mount)}})
    _, server = start_rendered(chart, values, tmp_path)
    try:
        server.wait_ready(health)
        ctx = ssl.create_default_context(cafile=pki / "ca.crt")
        ctx.load_cert_chain(pki / "client.crt", pki / "client.key")
        assert server.get(server.port, "/v2/", context=ctx)[0] == 200, server.explain()
    finally:
        server.stop()


def test_the_server_runs_a_configuration_with_every_key(chart, pki, tmp_path):
    """Every key values.schema.json allows in serverConfig.configuration, read by the real server."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    allowed = set(schema["properties"]["serverConfig"]["properties"]["configuration"]["properties"])
    health, metrics, admin = free_port(), free_port(), free_port()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(run(["htpasswd", "-Bbn", "puller", "secret"]).stdout)
    docker_config = tmp_path / "config.json"
    docker_config.write_text('{"auths": {}}')
    config = full_configuration(ca=str(pki / "ca.crt"), cert=str(pki / "client.crt"), key=str(pki / "client.key"),
                                htpasswd=str(htpasswd), docker_config=str(docker_config),
                                health=health, metrics=metrics, admin=admin)
    # serverTlsConfig and storage are the chart's to write (from serverTls and storage.s3).
    assert allowed - set(config) == {"serverTlsConfig", "storage"}, "full_configuration() must use every key the schema allows"
    values = deep_merge(KITCHEN_SINK, {"health": {"port": health}, "metrics": {"port": metrics}})
    values["serverConfig"] = {"configuration": config}
    _, server = start_rendered(chart, values, tmp_path, env={"HUB_TOKEN": "hub-secret", "ADMIN_TOKEN": ADMIN_TOKEN})
    try:
        server.wait_ready(health)
        assert server.get(server.port, "/v2/")[0] == 401, "pullAuth.htpasswd is in force"
        assert server.get(admin, "/api/v1/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})[0] == 200
        assert server.get(admin, "/api/v1/stats")[0] == 401, "adminAuth is in force"
        basic = "Basic " + base64.b64encode(b"puller:secret").decode()
        assert server.get(server.port, "/v2/", headers={"Authorization": basic})[0] == 200, server.explain()
    finally:
        server.stop()


def test_pin_running_images_gets_a_read_only_pod_list_role(chart):
    plain = render(chart)
    assert not [o for o in plain if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert pod_spec(plain)["automountServiceAccountToken"] is False
    objects = render(chart, {"serverConfig": {"configuration": {"pinRunningImages": True}}})
    validate_objects(objects)
    role = find(objects, "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}], "list pods, nothing more"
    binding = find(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    assert pod_spec(objects)["automountServiceAccountToken"] is True
    assert server_config(objects)["pinRunningImages"] is True


def test_upstream_auth_from_a_dockerconfigjson_secret(chart, tmp_path):
    """upstreamAuth.dockerConfigSecret: the Secret mounted as a directory (so the
    kubelet's updates reach the server) and named by dockerConfig; the real
    server runs that configuration."""
    objects = render(chart, {"upstreamAuth": {"dockerConfigSecret": "regcred"}})
    validate_objects(objects)
    assert server_config(objects)["dockerConfig"] == "/var/ociregistry/docker/config.json"
    spec = pod_spec(objects)
    volume = next(v for v in spec["volumes"] if v["name"] == "docker-config")
    assert volume["secret"] == {"secretName": "regcred", "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}
    mount = next(m for m in server_container(objects)["volumeMounts"] if m["name"] == "docker-config")
    assert mount == {"name": "docker-config", "mountPath": "/var/ociregistry/docker", "readOnly": True}, \
        "a directory mount, never subPath (which the kubelet does not update)"
    other = render(chart, {"upstreamAuth": {"dockerConfigSecret": "regcred", "dockerConfigKey": ".dockercfg"}})
    assert next(v for v in pod_spec(other)["volumes"] if v["name"] == "docker-config")["secret"]["items"][0]["key"] == ".dockercfg"
    assert "dockerConfig" not in server_config(render(chart, {})), "nothing without the value"

    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text('{"auths": {"quay.io": {"auth": "dTpw"}}}')
    health = free_port()
    values = {"upstreamAuth": {"dockerConfigSecret": "regcred"}, "health": {"port": health}, "metrics": {"port": None}}
    text = config_text(render(chart, values)).replace("/var/ociregistry/docker/config.json", str(docker / "config.json"))
    server = Server(text, tmp_path)
    try:
        server.wait_ready(health)
    finally:
        server.stop()


def test_the_references_token_block_passes_the_schema_and_the_server(chart, tmp_path):
    """auth.token as the reference wrote it ({provider: ecr, providerOpts, expiry} or
    {static}) is accepted by the schema and started by the real server."""
    health = free_port()
    registries = [
        {"name": "111122223333.dkr.ecr.us-east-1.amazonaws.com",
         "auth": {"token": {"provider": "ecr", "providerOpts": "profile=default,region=us-east-1", "expiry": "6h"}}},
        {"name": "static.example", "auth": {"token": {"static": "dXNlcjpwYXNz"}}},
        {"name": "bearer.example", "auth": {"token": "a-static-bearer-token"}},
    ]
    values = {"health": {"port": health}, "metrics": {"port": None},
              "serverConfig": {"configuration": {"registries": registries}}}
    objects = render(chart, values)
    assert server_config(objects)["registries"] == registries
    server = Server(config_text(objects), tmp_path)
    try:
        server.wait_ready(health)
    finally:
        server.stop()
    with pytest.raises(helm.HelmValuesError) as e:
        render_raw(chart, {"serverConfig": {"configuration": {"registries": [
            {"name": "x.example", "auth": {"token": {"provider": "ecr", "region": "us-east-1"}}}]}}})
    assert "additional properties 'region' not allowed" in str(e.value)
