"""Coming from the reference server's chart (the Go `ociregistry`, chart 1.17.0,
and its older 1.0-1.5 versions in `ociregistry-helm`): its values install here,
its different names are aliases that NOTES.txt names ours for, and the README
table lists every one of its values.

REFERENCE_VALUES is the reference chart's values.yaml (1.17.0) as data: every
key with its default, written out here (comments and commented-out examples
left out; those that document keys, `os`, `arch` and `serverTlsConfig`, are in
REFERENCE_COMMENTED_KEYS).
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml

from test_chart import (CHART, RELEASE, Server, config_text, deep_merge, find, free_port, hook, leaves, lint_problems,
                        notes, pod_spec, release_objects, render, server_config, server_container, validate_objects)

REFERENCE_VALUES = {
    "image": {"ociregistry": {"registry": "quay.io", "repository": "appzygy/ociregistry", "tag": "1.17.0",
                              "digest": None, "pullPolicy": "IfNotPresent"}},
    "imagePullSecrets": [],
    "nameOverride": "",
    "fullnameOverride": "",
    "serviceAccount": {"create": True, "automount": True, "annotations": {}, "name": ""},
    "podAnnotations": {},
    "podLabels": {},
    "podSecurityContext": {},
    "securityContext": {},
    "service": {"type": "NodePort", "nodePort": 31080, "port": 8080},
    "health": {"port": None},
    "metrics": {"port": None},
    "serverTls": {"enabled": False, "secretName": None, "cert": None, "key": None, "ca": None, "clientAuth": "none"},
    "hostAliases": [],
    "ingress": {"enabled": False, "className": "", "annotations": {}, "hosts": [], "tls": []},
    "httpRoute": {"enabled": False, "annotations": {}, "parentRefs": [], "hostnames": [], "rules": []},
    "resources": {},
    "volumes": [],
    "terminationGracePeriodSeconds": 70,
    "volumeMounts": [{"name": "images", "mountPath": "/var/lib/ociregistry", "readOnly": False}],
    "env": [],
    "nodeSelector": {},
    "tolerations": [],
    "affinity": {},
    "priorityClassName": "",
    "sidecarContainers": [],
    "initContainers": [],
    "deploymentStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
    "persistence": {
        "persistentVolumeClaim": {"enabled": False, "existingClaimName": "",
                                  "newClaimSpec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
                                                   "resources": {"requests": {"storage": "2Gi"}},
                                                   "storageClassName": "", "selector": {}}},
        "hostPath": {"enabled": False, "type": "DirectoryOrCreate", "path": "/var/lib/ociregistry"},
        "emptyDir": {"enabled": True, "sizeLimit": "2Gi"},
    },
    "extraManifests": [],
    "serverConfig": {
        "mountPath": "/var/ociregistry/config",
        "configuration": {
            "imagePath": "/var/lib/ociregistry", "logLevel": "info", "logFile": None, "preloadImages": None,
            "imageFile": None, "port": 8080, "pullTimeout": 60000, "alwaysPullLatest": False, "airGapped": False,
            "helloWorld": False, "health": 8081, "metrics": None, "registries": [],
            "pruneConfig": {"enabled": False, "duration": "30d", "type": "accessed", "frequency": "1d", "count": -1,
                            "dryRun": False},
        },
    },
    "observability": {"enabled": False,
                      "serviceMonitor": {"enabled": True, "port": "metrics", "interval": "15s", "scrapeTimeout": "10s"}},
}
# Keys the reference values.yaml shows commented out, as documentation.
REFERENCE_COMMENTED_KEYS = ["serverConfig.configuration.os", "serverConfig.configuration.arch",
                            "serverConfig.configuration.serverTlsConfig"]
# The reference chart 1.0-1.5 (ociregistry-helm): keys it had that 1.17.0 has not.
REFERENCE_OLD_VALUES = {
    "configs": {"logLevel": "info", "port": "", "configPath": "", "imagePath": None, "pullTimeout": ""},
    "upstreamConfig": {"mountPath": "/var/ociregistry/config",
                       "registries": [{"name": "my-upstream:8800", "description": "Basic auth, mTLS with mounted CA",
                                       "auth": {"user": "frobozz", "password": "flathead"},
                                       "tls": {"insecure_skip_verify": True, "ca": "/etc/pki/certs/ca.crt",
                                               "cert": "/etc/pki/certs/client.crt", "key": "/etc/pki/certs/client.key"}}]},
}

# This project's image, in the reference chart's spelling.
OUR_IMAGE = {"image": {"ociregistry": {"registry": "registry.example.com", "repository": "edge/ociregistry",
                                       "tag": "0.1.0", "digest": None, "pullPolicy": "Always"}}}


def reference(**over) -> dict:
    return deep_merge(copy.deepcopy(REFERENCE_VALUES), deep_merge(OUR_IMAGE, over))


def migration_table() -> str:
    readme = (CHART / "README.md").read_text()
    return readme[readme.index("## Coming from the reference chart"):]


def test_the_reference_charts_values_install_here(chart):
    values = reference()
    objects = render(chart, values)
    validate_objects(objects)
    assert lint_problems(values) == []
    c = server_container(objects)
    assert c["image"] == "registry.example.com/edge/ociregistry:0.1.0" and c["imagePullPolicy"] == "Always"
    # Its cache mount (volumeMounts[images]) is the chart's own: one mount of the cache, at imagePath.
    assert [m["mountPath"] for m in c["volumeMounts"]].count("/var/lib/ociregistry") == 1
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "health": 8081}, "metrics: null is no metrics"
    assert server_config(objects)["health"] == 8081
    text = notes(chart, values)
    for line in ["- image.ociregistry.*: use image.*", "- volumeMounts: use extraVolumeMounts",
                 "- serverConfig.configuration.health (8081): use health.port",
                 "- observability.serviceMonitor.port: not needed"]:
        assert line in text, text
    assert "DEPRECATED" not in notes(chart)


def test_the_reference_image_is_refused_with_the_reason(chart):
    import helm_python as helm
    with pytest.raises(helm.HelmRenderError) as e:
        render(chart, REFERENCE_VALUES)
    assert "quay.io/appzygy/ociregistry is the reference (Go) server's image" in str(e.value)
    assert "deploy/Dockerfile" in str(e.value)


def test_the_server_runs_the_configuration_rendered_from_the_reference_values(chart, tmp_path):
    health = free_port()
    values = reference(serverConfig={"configuration": {"health": health}}, observability={"enabled": False})
    objects = render(chart, values)
    server = Server(config_text(objects), tmp_path)
    try:
        server.wait_ready(health)
        assert server.get(server.port, "/v2/")[0] == 200, server.explain()
    finally:
        server.stop()


@pytest.mark.parametrize("values, ours", [
    ({"volumes": [{"name": "ca", "secret": {"secretName": "upstream-ca"}}],
      "volumeMounts": [{"name": "images", "mountPath": "/var/lib/ociregistry"}, {"name": "ca", "mountPath": "/etc/ca"}]},
     {"extraVolumes": [{"name": "ca", "secret": {"secretName": "upstream-ca"}}],
      "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ca"}]}),
    ({"extraManifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "{{ .Release.Name }}-x", "namespace": "ociregistry"}}]},
     {"extraObjects": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "{{ .Release.Name }}-x", "namespace": "ociregistry"}}]}),
    ({"image": {"ociregistry": {"registry": "registry.example.com", "repository": "edge/ociregistry", "tag": "2.0.0",
                                "digest": None, "pullPolicy": "Always"}}},
     {"image": {"registry": "registry.example.com", "repository": "edge/ociregistry", "tag": "2.0.0", "pullPolicy": "Always"}}),
    ({"serverConfig": {"configuration": {"metrics": 2112}}}, {"metrics": {"port": 2112}}),
    ({"serverConfig": {"configuration": {"health": 8555}}}, {"health": {"port": 8555}}),
    ({"observability": {"serviceMonitor": {"port": "metrics"}}}, {}),
    ({"configs": {"logLevel": "debug", "port": "5000", "configPath": "/etc/ociregistry", "imagePath": "/cache",
                  "pullTimeout": 3000}},
     {"serverConfig": {"mountPath": "/etc/ociregistry",
                       "configuration": {"logLevel": "debug", "port": 5000, "imagePath": "/cache", "pullTimeout": 3000}}}),
    (REFERENCE_OLD_VALUES,
     {"serverConfig": {"mountPath": "/var/ociregistry/config", "configuration": {"registries": [
         {"name": "my-upstream:8800", "description": "Basic auth, mTLS with mounted CA",
          "auth": {"user": "frobozz", "password": "flathead"},
          "tls": {"insecureSkipVerify": True, "ca": "/etc/pki/certs/ca.crt", "cert": "/etc/pki/certs/client.crt",
                  "key": "/etc/pki/certs/client.key"}}]}}}),
], ids=["volumes", "extraManifests", "image.ociregistry", "configuration.metrics", "configuration.health",
        "serviceMonitor.port", "configs", "upstreamConfig"])
def test_an_alias_renders_what_our_value_does_and_is_named_in_the_notes(chart, values, ours):
    aliased = render(chart, deep_merge(values, {"observability": {"enabled": True}}))
    expected = render(chart, deep_merge(ours, {"observability": {"enabled": True}}))
    # The same objects, but for the alias itself in the configuration (health/metrics stay where they were given).
    assert release_objects(aliased) == release_objects(expected)
    validate_objects(aliased)
    text = notes(chart, values)
    alias = next(iter(values))
    assert "DEPRECATED: these values are the reference chart's names" in text and f"- {alias}" in text, text


def test_the_metrics_port_may_come_from_the_configuration(chart):
    """The reference chart's way: serverConfig.configuration.metrics sets the metrics port (it used to fail unless it
    equalled metrics.port)."""
    values = {"serverConfig": {"configuration": {"metrics": 2112}}, "observability": {"enabled": True}}
    objects = render(chart, values)
    assert server_config(objects)["metrics"] == 2112
    assert {p["name"]: p["containerPort"] for p in server_container(objects)["ports"]}["metrics"] == 2112
    assert find(objects, "Service", f"{RELEASE}-metrics")["spec"]["ports"][0]["port"] == 2112
    assert "serverConfig.configuration.metrics (2112): use metrics.port" in notes(chart, values)
    # As in the reference chart, metrics.port may be left empty for it.
    assert server_config(render(chart, {"metrics": {"port": None}, **values}))["metrics"] == 2112


def reference_leaves() -> list[str]:
    out = []
    for path in leaves(REFERENCE_VALUES):
        out.append(path)
    return out + REFERENCE_COMMENTED_KEYS


def test_the_readme_lists_every_reference_value_with_ours():
    table = migration_table()
    rows = dict(re.findall(r"^\| `([^`]+)` \| (.+) \|$", table, re.M))
    old = leaves(REFERENCE_OLD_VALUES["configs"], ("configs",))
    expected = reference_leaves() + list(old) + ["upstreamConfig.mountPath", "upstreamConfig.registries"]
    missing = [p for p in expected if p not in rows]
    assert not missing, f"add these reference chart values to \"Coming from the reference chart\" in README.md: {missing}"
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, here in rows.items():
        # Each row names our value (one the schema knows), or says why none is needed.
        named = re.match(r"`([^`]+)`", here)
        assert named or here.startswith("not needed, because"), (path, here)
        if named:
            node = schema
            for k in named[1].split("."):
                if "properties" not in node:
                    break  # inside a free-form value, such as deploymentStrategy
                assert k in node["properties"], f"{path}: ours, {named[1]}, is not a value of this chart"
                node = node["properties"][k]


def test_every_alias_is_in_the_schema_and_nowhere_in_values_yaml():
    """Aliases are accepted (the schema) but not offered (values.yaml, the values table)."""
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]
    ours = yaml.safe_load((CHART / "values.yaml").read_text())
    for alias in ("volumes", "volumeMounts", "extraManifests", "configs", "upstreamConfig"):
        assert alias in schema and alias not in ours
        assert "reference chart" in schema[alias]["description"]
    assert "ociregistry" in schema["image"]["properties"] and "ociregistry" not in ours["image"]
    assert "port" in schema["observability"]["properties"]["serviceMonitor"]["properties"]
