"""Several replicas sharing one cache in a bucket: `storage.s3` and `replicaCount`,
the peer port the replicas stream downloads in progress on (`storage.s3.peers`),
the local disk tier (`storage.s3.localCacheSize`) and redirects of cached blobs
to the bucket (`storage.s3.redirect`).

Rendered and validated like the rest of the chart; then the rendered
configuration runs in the real `ociregistry` binary against a real S3 server,
`s3s-fs` (a directory served over the S3 API), with the environment the kubelet
would give the pod (the Secrets' keys through `secretKeyRef`, `POD_IP` from
`status.podIP`, and `$(POD_IP)` expanded in the advertised address): replicas
start from the rendered configuration, listen on their peer ports with the
shared token, and what one pulled, a replica started later serves from the
bucket with the upstream gone.

    cargo install s3s-fs@0.14.1 --locked --features binary

A missing `s3s-fs` fails the tests that need it, never skips them.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from test_chart import (CHART, RELEASE, Server, TinyUpstream, config_text, deep_merge, find, free_port, helm,
                        kinds, lint_problems, notes, pki, pod_spec, release_objects, render, render_raw, server_config,
                        server_container, validate_objects, workload)

__all__ = ["pki"]  # the fixture, used below

BUCKET = "mirror-cache"
S3 = {"storage": {"s3": {"bucket": BUCKET}}}
# The Secret the user created (kubectl create secret generic mirror-s3 --from-literal=...).
SECRET = {"name": "mirror-s3", "data": {"accessKeyId": "AKIACHARTTEST", "secretAccessKey": "chart-test-secret"}}
MINIO = {"replicaCount": 3, "storage": {"s3": {
    "bucket": BUCKET, "prefix": "edge/site-1", "endpoint": "https://minio.minio.svc:9000", "region": "us-east-1",
    "pathStyle": True, "existingSecret": SECRET["name"], "caSecret": {"name": "minio-ca"}}}}
CA_DIR = "/var/ociregistry/s3-ca"
SELECTOR = {"app.kubernetes.io/name": "ociregistry", "app.kubernetes.io/instance": RELEASE}
SPREAD = {"preferredDuringSchedulingIgnoredDuringExecution": [
    {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                        "labelSelector": {"matchLabels": SELECTOR}}}]}
# What the chart adds for the peer port: the pod's address, advertised through the variable the server lays over
# storage.s3.peers.advertise (the kubelet expands $(POD_IP)), and the token from the Secret the chart generates.
PEER_ENV = [
    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    {"name": "OCIREGISTRY_STORAGE__S3__PEERS__ADVERTISE", "value": "http://$(POD_IP):5003"},
    {"name": "PEER_TOKEN", "valueFrom": {"secretKeyRef": {"name": f"{RELEASE}-peer-token", "key": "token"}}}]
PEERS_CONFIG = {"port": 5003, "tokenFromEnv": "PEER_TOKEN"}
# A token Secret the user created (kubectl create secret generic mirror-peers --from-literal=token=...).
PEER_SECRET = {"name": "mirror-peers", "data": {"token": "chart-test-peer-token-0123456789"}}
ZERO_BLOB = "/peer/blobs/docker.io/sha256:" + "0" * 64


def volume(objects, name):
    return next((v for v in pod_spec(objects)["volumes"] if v["name"] == name), None)


def mount(objects, name):
    return next((m for m in server_container(objects)["volumeMounts"] if m["name"] == name), None)


# --------------------------------------------------------------------------
# One replica unless there is a bucket


def test_one_replica_and_no_bucket_by_default(chart):
    objects = render(chart)
    assert workload(objects)["spec"]["replicas"] == 1
    assert "PodDisruptionBudget" not in kinds(objects)
    assert "affinity" not in pod_spec(objects)
    assert "storage" not in server_config(objects)
    assert volume(objects, "s3-ca") is None
    assert "bucket" not in notes(chart)
    # No peer port without a bucket, whatever peers says.
    objects = render(chart, {"storage": {"s3": {"peers": {"enabled": True, "networkPolicy": {"enabled": True}},
                                                "localCacheSize": "1GiB"}}})
    assert kinds(release_objects(objects)) == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    assert "env" not in server_container(objects) and "storage" not in server_config(objects)


@pytest.mark.parametrize("values, message", [
    # Replicas share one cache only in a bucket: without one each would pull everything again.
    ({"replicaCount": 2}, "at '/storage/s3/bucket': minLength: got 0, want 1"),
    ({"replicaCount": 3, "storage": {"s3": {"prefix": "edge"}}}, "at '/storage/s3/bucket': minLength: got 0, want 1"),
    ({"replicaCount": 2, "storage": {"s3": {"bucket": ""}}}, "at '/storage/s3/bucket'"),
    # A DaemonSet has a pod per node.
    ({"replicaCount": 2, "kind": "DaemonSet", **S3}, "at '/replicaCount': maximum: got 2, want 1"),
    ({"replicaCount": 0}, "at '/replicaCount': minimum: got 0, want 1"),
    ({"replicaCount": "3"}, "/replicaCount"),
    # What the server would refuse at start, refused at install.
    ({"storage": {"s3": {"bucket": "mirror/cache"}}}, "/storage/s3/bucket"),
    ({"storage": {"s3": {"bucket": BUCKET, "prefix": "edge/../other"}}}, "/storage/s3/prefix"),
    ({"storage": {"s3": {"bucket": BUCKET, "prefix": "./edge"}}}, "/storage/s3/prefix"),
    ({"storage": {"s3": {"bucket": BUCKET, "endpoint": "minio.internal:9000"}}}, "/storage/s3/endpoint"),
    ({"storage": {"s3": {"bucket": BUCKET, "endpoint": "s3://minio.internal"}}}, "/storage/s3/endpoint"),
    ({"storage": {"s3": {"bucket": BUCKET, "pathStyle": "yes"}}}, "/storage/s3/pathStyle"),
    ({"storage": {"s3": {"bukcet": BUCKET}}}, "additional properties 'bukcet' not allowed"),
    ({"storage": {"s3": {"bucket": BUCKET, "accessKeyIdKey": ""}}}, "/storage/s3/accessKeyIdKey"),
    ({"storage": {"s3": {"bucket": BUCKET, "caSecret": {"name": "ca", "key": ""}}}}, "/storage/s3/caSecret/key"),
    ({"storage": {"s3": {"bucket": BUCKET, "accessKeyIdFromEnv": "X"}}},
     "additional properties 'accessKeyIdFromEnv' not allowed"),
    ({"podDisruptionBudget": {"minAvailable": "half"}}, "/podDisruptionBudget/minAvailable"),
    ({"podDisruptionBudget": {"maxUnavailable": 0}}, "/podDisruptionBudget/maxUnavailable"),
    # The peer port and the local tier: what the server would refuse at start, refused at install.
    ({"storage": {"s3": {"bucket": BUCKET, "peers": {"port": 0}}}}, "/storage/s3/peers/port"),
    ({"storage": {"s3": {"bucket": BUCKET, "peers": {"port": 70000}}}}, "/storage/s3/peers/port"),
    ({"storage": {"s3": {"bucket": BUCKET, "peers": {"port": "5003x"}}}}, "/storage/s3/peers/port"),
    ({"storage": {"s3": {"bucket": BUCKET, "peers": {"enabled": "yes"}}}}, "/storage/s3/peers/enabled"),
    ({"storage": {"s3": {"bucket": BUCKET, "peers": {"advertise": "https://$(POD_IP):5003"}}}},
     "/storage/s3/peers/advertise"),
    ({"storage": {"s3": {"bucket": BUCKET, "peers": {"advertise": "$(POD_IP):5003"}}}},
     "/storage/s3/peers/advertise"),
    ({"storage": {"s3": {"bucket": BUCKET, "peers": {"tokenSecret": {"name": "t", "key": ""}}}}},
     "/storage/s3/peers/tokenSecret/key"),
    ({"storage": {"s3": {"bucket": BUCKET, "peers": {"tokenFromEnv": "PEER_TOKEN"}}}},
     "additional properties 'tokenFromEnv' not allowed"),
    ({"storage": {"s3": {"bucket": BUCKET, "peers": {"networkPolicy": {"enabled": "true"}}}}},
     "/storage/s3/peers/networkPolicy/enabled"),
    ({"storage": {"s3": {"bucket": BUCKET, "peers": {"networkPolicy": {"enable": True}}}}},
     "additional properties 'enable' not allowed"),
    ({"storage": {"s3": {"bucket": BUCKET, "localCacheSize": "0"}}}, "/storage/s3/localCacheSize"),
    ({"storage": {"s3": {"bucket": BUCKET, "localCacheSize": "0GiB"}}}, "/storage/s3/localCacheSize"),
    ({"storage": {"s3": {"bucket": BUCKET, "localCacheSize": 0}}}, "/storage/s3/localCacheSize"),
    ({"storage": {"s3": {"bucket": BUCKET, "localCacheSize": "1.5GiB"}}}, "/storage/s3/localCacheSize"),
    ({"storage": {"s3": {"bucket": BUCKET, "localCacheSize": "10Gi"}}}, "/storage/s3/localCacheSize"),
    ({"storage": {"s3": {"bucket": BUCKET, "localCacheSize": "lots"}}}, "/storage/s3/localCacheSize"),
    ({"storage": {"s3": {"bucket": BUCKET, "redirect": "true"}}}, "/storage/s3/redirect"),
])
def test_the_schema_refuses_at_install(chart, values, message):
    with pytest.raises(helm.HelmValuesError) as e:
        render_raw(chart, values)
    assert message in str(e.value)


@pytest.mark.parametrize("values, message", [
    ({**S3, "replicaCount": 2, "persistence": {"persistentVolumeClaim": {"enabled": True}}},
     "replicaCount (2) with persistence.persistentVolumeClaim: each replica stages its downloads in a directory of "
     "its own, and a claim or a node's directory would be shared by several"),
    ({**S3, "replicaCount": 3, "persistence": {"hostPath": {"enabled": True}}},
     "replicaCount (3) with persistence.hostPath: each replica stages its downloads"),
    ({**S3, "replicaCount": 3, "podDisruptionBudget": {"minAvailable": 3}},
     "podDisruptionBudget.minAvailable (3) must be below replicaCount (3): otherwise no replica may ever be evicted, "
     "and node drains hang"),
    ({"storage": {"s3": {"bucket": BUCKET, "caSecret": {"name": "a"}, "caConfigMap": {"name": "b"}}}},
     "storage.s3.caSecret and storage.s3.caConfigMap are both set: give the endpoint's CA one way"),
    ({"storage": {"s3": {"bucket": BUCKET, "caSecret": {"name": "a"}, "insecureSkipVerify": True}}},
     "storage.s3: a CA (caSecret or caConfigMap) and insecureSkipVerify are both set"),
    ({"serverConfig": {"configuration": {"storage": {"s3": {"bucket": BUCKET}}}}},
     "serverConfig.configuration.storage: configure the bucket with the chart's storage.s3 values instead"),
    # The peer port on a port of its own.
    ({"storage": {"s3": {"bucket": BUCKET, "peers": {"port": 8080}}}},
     "storage.s3.peers.port (8080) must differ from the data port (8080), health.port (8081), metrics.port (9090) "
     "and admin.port (none)"),
    ({"storage": {"s3": {"bucket": BUCKET, "peers": {"port": 8081}}}}, "storage.s3.peers.port (8081) must differ"),
    ({"storage": {"s3": {"bucket": BUCKET, "peers": {"port": 9090}}}}, "storage.s3.peers.port (9090) must differ"),
    ({"storage": {"s3": {"bucket": BUCKET}}, "admin": {"port": 5003}},
     "storage.s3.peers.port (5003) must differ from the data port (8080), health.port (8081), metrics.port (9090) "
     "and admin.port (5003)"),
    ({"storage": {"s3": {"bucket": BUCKET}}, "serverConfig": {"configuration": {"port": 5003}}},
     "storage.s3.peers.port (5003) must differ from the data port (5003)"),
    ({"storage": {"s3": {"bucket": BUCKET, "peers": {"networkPolicy": {"enabled": True}}}}, "kind": "DaemonSet",
      "hostNetwork": True},
     "storage.s3.peers.networkPolicy with hostNetwork: NetworkPolicies do not apply to pods in the node's network"),
    # The local tier shares the emptyDir with the downloads being staged.
    ({"storage": {"s3": {"bucket": BUCKET, "localCacheSize": "10GiB"}}},
     "storage.s3.localCacheSize (10GiB = 10737418240 bytes) is above 90% of persistence.emptyDir.sizeLimit "
     "(2Gi = 2147483648 bytes, 90% = 1932735283 bytes): the local tier shares the emptyDir with the downloads being "
     "staged, and the kubelet evicts the pod once the emptyDir passes its sizeLimit. Lower localCacheSize to at most "
     "1843MiB, or raise sizeLimit"),
    ({"storage": {"s3": {"bucket": BUCKET, "localCacheSize": "1844MiB"}}}, "Lower localCacheSize to at most 1843MiB"),
    ({"storage": {"s3": {"bucket": BUCKET, "localCacheSize": 1932735284}}},
     "storage.s3.localCacheSize (1932735284 = 1932735284 bytes) is above 90%"),
    ({"storage": {"s3": {"bucket": BUCKET, "localCacheSize": "1TiB"}}, "persistence": {"emptyDir": {"sizeLimit": "1Ti"}}},
     "(1Ti = 1099511627776 bytes, 90% = 989560464998 bytes)"),
])
def test_render_fails_with_a_clear_message(chart, values, message):
    with pytest.raises(helm.HelmRenderError) as e:
        render_raw(chart, values)
    assert message in str(e.value)


# --------------------------------------------------------------------------
# Three replicas sharing a MinIO bucket


def test_three_replicas_on_a_bucket_render_and_validate(chart):
    objects = render(chart, MINIO)
    validate_objects(objects)
    assert lint_problems(MINIO) == []
    assert kinds(release_objects(objects)) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service",
                                               "Service", "ServiceAccount"], "no PVC; the peer token and Service"
    deployment = workload(objects)
    assert deployment["spec"]["replicas"] == 3
    # Nothing ties a pod to a node: the old pods serve until the new ones are ready.
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    spec = pod_spec(objects)
    assert spec["affinity"] == {"podAntiAffinity": SPREAD}
    assert deployment["spec"]["selector"]["matchLabels"] == SELECTOR
    assert SELECTOR.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()

    pdb = find(objects, "PodDisruptionBudget", RELEASE)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": SELECTOR}}

    # The pod's address and the peer token, then the keys, from the Secret, in the variables the configuration
    # names.
    c = server_container(objects)
    assert c["env"] == PEER_ENV + [
        {"name": "S3_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "mirror-s3", "key": "accessKeyId"}}},
        {"name": "S3_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "mirror-s3", "key": "secretAccessKey"}}}]
    cfg = server_config(objects)
    assert cfg["storage"] == {"s3": {
        "bucket": BUCKET, "prefix": "edge/site-1", "endpoint": "https://minio.minio.svc:9000", "region": "us-east-1",
        "pathStyle": True, "accessKeyIdFromEnv": "S3_ACCESS_KEY_ID", "secretAccessKeyFromEnv": "S3_SECRET_ACCESS_KEY",
        "tls": {"ca": f"{CA_DIR}/ca.crt"}, "peers": PEERS_CONFIG}}
    # The CA: a file in a directory of its own, read-only.
    assert volume(objects, "s3-ca") == {"name": "s3-ca", "secret": {"secretName": "minio-ca",
                                                                      "items": [{"key": "ca.crt", "path": "ca.crt"}]}}
    assert mount(objects, "s3-ca") == {"name": "s3-ca", "mountPath": CA_DIR, "readOnly": True}
    # imagePath stages downloads in each pod's own emptyDir; the cache is in the bucket, so no cap
    # is derived from the emptyDir's size.
    assert volume(objects, "images") == {"name": "images", "emptyDir": {"sizeLimit": "2Gi"}}
    assert mount(objects, "images")["mountPath"] == cfg["imagePath"]
    assert "cacheSize" not in cfg
    # The peer port, on a headless Service of its own; the data Service is unchanged.
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "health": 8081, "metrics": 9090,
                                                                   "peer": 5003}
    assert {o["metadata"]["name"]: o["spec"].get("clusterIP") for o in objects if o["kind"] == "Service"} == {
        RELEASE: None, f"{RELEASE}-peers": "None"}
    assert [p["name"] for p in find(objects, "Service", RELEASE)["spec"]["ports"]] == ["http"]


def test_the_secret_keys_and_a_ca_from_a_configmap(chart):
    values = deep_merge(MINIO, {"storage": {"s3": {"accessKeyIdKey": "root-user", "secretAccessKeyKey": "root-password",
                                                   "caSecret": {"name": ""},
                                                   "caConfigMap": {"name": "trust-bundle", "key": "bundle.pem"}}}})
    objects = render(chart, values)
    validate_objects(objects)
    refs = [e["valueFrom"]["secretKeyRef"] for e in server_container(objects)["env"] if e["name"].startswith("S3_")]
    assert refs == [{"name": "mirror-s3", "key": "root-user"}, {"name": "mirror-s3", "key": "root-password"}]
    assert volume(objects, "s3-ca") == {"name": "s3-ca", "configMap": {
        "name": "trust-bundle", "items": [{"key": "bundle.pem", "path": "ca.crt"}]}}
    assert server_config(objects)["storage"]["s3"]["tls"] == {"ca": f"{CA_DIR}/ca.crt"}
    # Without a CA: nothing mounted; insecureSkipVerify alone is written as it is.
    no_ca = {"storage": {"s3": {"caConfigMap": {"name": ""}, "insecureSkipVerify": True}}}
    objects = render(chart, deep_merge(values, no_ca))
    assert volume(objects, "s3-ca") is None and mount(objects, "s3-ca") is None
    assert server_config(objects)["storage"]["s3"]["tls"] == {"insecureSkipVerify": True}


def test_aws_s3_with_irsa_needs_no_secret(chart):
    """No existingSecret: no variables, and the server's AWS chain finds the role IRSA sets up."""
    role = {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/mirror"}
    values = {"replicaCount": 2, "storage": {"s3": {"bucket": BUCKET, "region": "eu-west-1"}},
              "serviceAccount": {"annotations": role}}
    objects = render(chart, values)
    validate_objects(objects)
    assert server_container(objects)["env"] == PEER_ENV, "no keys: the AWS chain finds them"
    assert server_config(objects)["storage"] == {"s3": {"bucket": BUCKET, "region": "eu-west-1", "pathStyle": False,
                                                        "peers": PEERS_CONFIG}}
    sa = find(objects, "ServiceAccount", RELEASE)
    assert sa["metadata"]["annotations"] == role and pod_spec(objects)["serviceAccountName"] == RELEASE
    text = notes(chart, values)
    assert "The cache is in the bucket s3://mirror-cache/ (the 2 replicas share it)" in text
    assert "Its credentials come from the AWS chain" in text and "eks.amazonaws.com/role-arn" in text
    assert "AWS chain" not in notes(chart, MINIO)


def test_a_bucket_with_one_replica_keeps_a_single_pod_and_rolls(chart):
    """storage.s3 alone: one pod, no budget or spreading, and no Recreate (no claim ties it to a node)."""
    objects = render(chart, S3)
    validate_objects(objects)
    deployment = workload(objects)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "PodDisruptionBudget" not in kinds(objects) and "affinity" not in pod_spec(objects)
    # The peer port too: the pod shares its downloads with the one replacing it in a rolling update.
    assert server_config(objects)["storage"] == {"s3": {"bucket": BUCKET, "pathStyle": False, "peers": PEERS_CONFIG}}
    # A claim for the staging directory still ties the one pod to a node.
    pvc = deep_merge(S3, {"persistence": {"persistentVolumeClaim": {"enabled": True}}})
    assert workload(render(chart, pvc))["spec"]["strategy"] == {"type": "Recreate"}


def test_replicas_with_a_node_port_roll_one_at_a_time(chart):
    """Two pods of one node cannot hold one node port: one replica at a time frees its port, the others serve."""
    for port in ({"hostPort": 5080}, {"hostNetwork": True}):
        deployment = workload(render(chart, {**S3, "replicaCount": 3, **port}))
        assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                                  "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}, port
        assert workload(render(chart, {**S3, **port}))["spec"]["strategy"] == {"type": "Recreate"}, port
    mine = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2, "maxSurge": 1}}
    assert workload(render(chart, {**S3, "replicaCount": 3, "deploymentStrategy": mine}))["spec"]["strategy"] == mine


def test_the_users_affinity_is_kept_and_spreading_added_unless_it_has_its_own(chart):
    node = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "edge.example.com/cache", "operator": "In", "values": ["true"]}]}]}}}
    objects = render(chart, {**S3, "replicaCount": 3, "affinity": node})
    validate_objects(objects)
    assert pod_spec(objects)["affinity"] == {**node, "podAntiAffinity": SPREAD}
    own = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "topology.kubernetes.io/zone", "labelSelector": {"matchLabels": SELECTOR}}]}}
    assert pod_spec(render(chart, {**S3, "replicaCount": 3, "affinity": own}))["affinity"] == own
    # One replica: the user's affinity as given.
    assert pod_spec(render(chart, {**S3, "affinity": node}))["affinity"] == node


def test_the_disruption_budget(chart):
    three = {**S3, "replicaCount": 3}
    assert find(render(chart, three), "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    pdb = find(render(chart, {**three, "podDisruptionBudget": {"minAvailable": "50%"}}), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == "50%"
    objects = render(chart, {**three, "podDisruptionBudget": {"maxUnavailable": 1}})
    validate_objects(objects)
    assert find(objects, "PodDisruptionBudget")["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}}
    assert "PodDisruptionBudget" not in kinds(render(chart, {**three, "podDisruptionBudget": {"enabled": False}}))
    # Not for one pod (it could only block drains), nor a DaemonSet (drains leave its pods alone).
    assert "PodDisruptionBudget" not in kinds(render(chart, S3))
    assert "PodDisruptionBudget" not in kinds(render(chart, {**S3, "kind": "DaemonSet"}))


def test_a_mirror_on_every_node_sharing_one_bucket(chart):
    values = {"kind": "DaemonSet", "hostPort": 5080, "service": {"internalTrafficPolicy": "Local"},
              "persistence": {"hostPath": {"enabled": True}}, **S3}
    objects = render(chart, values)
    validate_objects(objects)
    assert workload(objects)["kind"] == "DaemonSet" and "replicas" not in workload(objects)["spec"]
    assert server_config(objects)["storage"]["s3"]["bucket"] == BUCKET
    assert "affinity" not in pod_spec(objects)
    assert "(the mirrors on every node share it)" in notes(chart, values)


def test_the_emptydir_caps_no_bucket(chart):
    """The emptyDir only stages downloads: no cacheSize derived from it, and a cacheSize given (it acts on the
    bucket) is not held to the emptyDir's size."""
    assert "cacheSize" not in server_config(render(chart, S3))
    assert "The cache is capped" not in notes(chart, S3)
    big = {"serverConfig": {"configuration": {"cacheSize": {"max": "500GiB", "target": "450GiB"}}}}
    assert server_config(render(chart, {**S3, **big}))["cacheSize"] == {"max": "500GiB", "target": "450GiB"}
    with pytest.raises(helm.HelmRenderError):
        render_raw(chart, big)  # without a bucket the emptyDir holds the cache: 500GiB does not fit in 2Gi


def test_the_notes_name_the_bucket_and_warn_about_evicting_from_several_pods(chart):
    text = notes(chart, MINIO)
    assert "The cache is in the bucket s3://mirror-cache/edge/site-1 (the 3 replicas share it):" in text
    assert "/var/lib/ociregistry only stages downloads" in text
    assert "kubectl -n ociregistry logs deployment/ociregistry | grep storage=" in text
    assert "WARNING" not in text
    capacity = {"serverConfig": {"configuration": {"cacheSize": {"max": "500GiB"}, "minFreeDisk": "1GiB",
                                                   "pruneConfig": {"enabled": True, "type": "accessed",
                                                                   "duration": "30d", "frequency": "1d"}}}}
    text = notes(chart, deep_merge(MINIO, capacity))
    assert "WARNING: these keys evict from the bucket: cacheSize, minFreeDisk, pruneConfig." in text
    assert "Running several\nreplicas" in text
    # One pod evicting alone is fine.
    assert "WARNING" not in notes(chart, deep_merge(deep_merge(MINIO, capacity), {"replicaCount": 1}))


def test_the_readme_examples_render_what_it_shows(chart):
    """"Running several replicas" in the chart README: the MinIO values give the configuration and the pod
    environment shown after them, and the IRSA values give a bucket with no keys in the pod."""
    readme = (CHART / "README.md").read_text()
    section = readme[readme.index("## Running several replicas"):readme.index("## Node configuration")]
    blocks = re.findall(r"^```(yaml|text)\n(.*?)^```", section, re.M | re.S)
    assert [lang for lang, _ in blocks] == ["yaml", "text", "text", "yaml"], (
        "MinIO values, their configuration and pod environment, IRSA values")
    (_, minio), (_, shown), (_, shown_env), (_, irsa) = blocks
    objects = render(chart, yaml.safe_load(minio))
    validate_objects(objects)
    assert {"storage": server_config(objects)["storage"]} == yaml.safe_load(shown)
    assert workload(objects)["spec"]["replicas"] == 3 and "PodDisruptionBudget" in kinds(objects)
    assert "NetworkPolicy" in kinds(objects) and "Secret" not in kinds(objects), "the user's token Secret"
    env = {}
    for e in server_container(objects)["env"]:
        source = e.get("value") or e["valueFrom"]
        if "fieldRef" in source:
            source = source["fieldRef"]["fieldPath"]
        elif "secretKeyRef" in source:
            source = f"{source['secretKeyRef']['name']}, key {source['secretKeyRef']['key']}"
        env[e["name"]] = source
    shown_env = dict(re.split(r"  +", line, maxsplit=1) for line in shown_env.splitlines())
    assert shown_env.items() <= env.items(), env
    objects = render(chart, yaml.safe_load(irsa))
    validate_objects(objects)
    assert not [e for e in server_container(objects)["env"] if e["name"].startswith("S3_")]
    assert "eks.amazonaws.com/role-arn" in find(objects, "ServiceAccount")["metadata"]["annotations"]
    assert set(server_config(objects)["storage"]["s3"]) == {"bucket", "prefix", "region", "pathStyle", "peers"}


# --------------------------------------------------------------------------
# The peer port and the local tier


def test_peers_are_on_with_a_bucket_and_give_each_pod_its_own_address(chart):
    """The pod's IP reaches the server as the advertised URL: POD_IP from status.podIP first (the kubelet expands
    $(POD_IP) only from a variable defined before), then the OCIREGISTRY_* variable the server lays over
    storage.s3.peers.advertise; the file has the port and the token's variable, and no address of its own."""
    for values in (S3, {**S3, "replicaCount": 3}, {**S3, "kind": "DaemonSet"}):
        objects = render(chart, values)
        validate_objects(objects)
        assert lint_problems(values) == []
        c = server_container(objects)
        assert c["env"] == PEER_ENV, values
        assert c["ports"][-1] == {"name": "peer", "containerPort": 5003, "protocol": "TCP"}
        assert server_config(objects)["storage"]["s3"]["peers"] == PEERS_CONFIG
        assert "advertise" not in config_text(objects)
        svc = find(objects, "Service", f"{RELEASE}-peers")
        assert svc["spec"] == {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": SELECTOR,
                               "ports": [{"name": "peer", "port": 5003, "targetPort": "peer", "protocol": "TCP"}]}
        assert svc["metadata"]["labels"]["app.kubernetes.io/component"] == "peers", "not the metrics Service"
        assert "NetworkPolicy" not in kinds(objects)
    # The user's own variables come after the chart's.
    mine = {"name": "HUB_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}
    assert server_container(render(chart, {**S3, "env": [mine]}))["env"] == PEER_ENV + [mine]


def test_the_peer_token_is_generated_unless_a_secret_is_given(chart):
    objects = render(chart, S3)
    secret = find(objects, "Secret", f"{RELEASE}-peer-token")
    assert secret["type"] == "Opaque" and list(secret["data"]) == ["token"]
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", token), token
    assert secret["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    # helm template cannot look the Secret up, so each render makes a new one (the README says to give a Secret
    # there); helm upgrade finds it with lookup and keeps it.
    assert find(render(chart, S3), "Secret")["data"] != secret["data"]
    assert "lookup \"v1\" \"Secret\" .Release.Namespace $secret" in (CHART / "templates" / "peers.yaml").read_text()
    assert ("with the token in the Secret ociregistry-peer-token\n(generated, kept across upgrades; give "
            "storage.s3.peers.tokenSecret when rendering with helm template).") in notes(chart, S3)
    # The user's Secret: nothing generated, its key in PEER_TOKEN.
    values = deep_merge(S3, {"storage": {"s3": {"peers": {"tokenSecret": {"name": "mirror-peers", "key": "peers"}}}}})
    objects = render(chart, values)
    validate_objects(objects)
    assert "Secret" not in kinds(objects)
    assert server_container(objects)["env"][-1] == {
        "name": "PEER_TOKEN", "valueFrom": {"secretKeyRef": {"name": "mirror-peers", "key": "peers"}}}
    assert "with the token in the Secret mirror-peers." in notes(chart, values)
    no_key = deep_merge(S3, {"storage": {"s3": {"peers": {"tokenSecret": {"name": "mirror-peers"}}}}})
    assert server_container(render(chart, no_key))["env"][-1]["valueFrom"]["secretKeyRef"]["key"] == "token"


def test_the_peer_port_and_address_can_be_chosen(chart):
    values = deep_merge(S3, {"storage": {"s3": {"peers": {"port": 7946, "advertise": "http://[$(POD_IP)]:7946"}}}})
    objects = render(chart, values)
    validate_objects(objects)
    env = {e["name"]: e for e in server_container(objects)["env"]}
    assert env["OCIREGISTRY_STORAGE__S3__PEERS__ADVERTISE"]["value"] == "http://[$(POD_IP)]:7946"
    assert server_container(objects)["ports"][-1]["containerPort"] == 7946
    assert find(objects, "Service", f"{RELEASE}-peers")["spec"]["ports"][0]["port"] == 7946
    assert server_config(objects)["storage"]["s3"]["peers"] == {"port": 7946, "tokenFromEnv": "PEER_TOKEN"}
    assert "on port 7946 (Service\nociregistry-peers)" in notes(chart, values)


def test_peers_off_leaves_only_the_bucket(chart):
    values = deep_merge(MINIO, {"storage": {"s3": {"peers": {"enabled": False, "networkPolicy": {"enabled": True}}}}})
    objects = render(chart, values)
    validate_objects(objects)
    assert kinds(release_objects(objects)) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service",
                                               "ServiceAccount"]
    assert "peers" not in server_config(objects)["storage"]["s3"]
    assert [e["name"] for e in server_container(objects)["env"]] == ["S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"]
    assert "peer" not in {p["name"] for p in server_container(objects)["ports"]}
    assert "stream downloads" not in notes(chart, values)


def test_the_network_policy_keeps_the_peer_port_to_the_releases_own_pods(chart):
    values = deep_merge(MINIO, {"admin": {"port": 9095}, "storage": {"s3": {"peers": {"networkPolicy": {"enabled": True}}}}})
    objects = render(chart, values)
    validate_objects(objects)
    assert lint_problems(values) == []
    policy = find(objects, "NetworkPolicy", f"{RELEASE}-peers")
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["spec"] == {
        "podSelector": {"matchLabels": SELECTOR},
        "policyTypes": ["Ingress"],
        "ingress": [
            # The peer port: the mirror's own pods only (same namespace, not the node-config or test pods).
            {"from": [{"podSelector": {"matchLabels": SELECTOR}}], "ports": [{"port": "peer", "protocol": "TCP"}]},
            # Every other port of the server, from anywhere, as without the policy.
            {"ports": [{"port": name, "protocol": "TCP"} for name in ("http", "health", "metrics", "admin")]}]}
    # The named ports are the container's.
    names = {p["name"] for p in server_container(objects)["ports"]}
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == names
    # The node-configuration and helm test pods carry another name: not the peers'.
    for o in objects:
        if o["kind"] == "Pod":
            assert not SELECTOR.items() <= o["metadata"]["labels"].items()
    # Without metrics and admin ports, rules only for the ports there are.
    values = deep_merge(values, {"admin": {"port": None}, "metrics": {"port": None}})
    policy = find(render(chart, values), "NetworkPolicy")
    assert [p["port"] for p in policy["spec"]["ingress"][1]["ports"]] == ["http", "health"]


def test_the_local_tier_is_written_and_fits_the_emptydir(chart):
    def local(values):
        return server_config(render(chart, deep_merge(S3, values)))["storage"]["s3"].get("localCacheSize")
    assert local({}) is None
    assert local({"storage": {"s3": {"localCacheSize": "1GiB"}}}) == "1GiB"
    assert local({"storage": {"s3": {"localCacheSize": "1843MiB"}}}) == "1843MiB"  # 90% of the 2Gi emptyDir
    # --set gives a number: written as the text the server reads.
    assert local({"storage": {"s3": {"localCacheSize": 1073741824}}}) == "1073741824"
    big = {"storage": {"s3": {"localCacheSize": "10GiB"}}, "persistence": {"emptyDir": {"sizeLimit": "12Gi"}}}
    assert local(big) == "10GiB"
    assert local({"storage": {"s3": {"localCacheSize": "1TB"}}, "persistence": {"emptyDir": {"sizeLimit": "2T"}}}) == "1TB"
    # No sizeLimit, or a claim: nothing to check it against (size the volume for it).
    assert local({"storage": {"s3": {"localCacheSize": "100GiB"}}, "persistence": {"emptyDir": {"sizeLimit": ""}}})
    assert local({"storage": {"s3": {"localCacheSize": "100GiB"}},
                  "persistence": {"persistentVolumeClaim": {"enabled": True}}}) == "100GiB"
    # The emptyDir still derives no cacheSize: the cache is the bucket.
    assert "cacheSize" not in server_config(render(chart, deep_merge(S3, big)))
    validate_objects(render(chart, deep_merge(MINIO, big)))


def test_redirect_is_written_only_when_on(chart):
    """storage.s3.redirect: true is the server's storage.s3.redirect and nothing else changes in the pod; false
    (the default) writes nothing, which is the server's own default; without a bucket there is nothing to
    redirect to."""
    def s3_config(values):
        return server_config(render(chart, deep_merge(S3, values)))["storage"]["s3"]
    assert "redirect" not in s3_config({})
    assert "redirect" not in s3_config({"storage": {"s3": {"redirect": False}}})
    assert s3_config({"storage": {"s3": {"redirect": True}}})["redirect"] is True
    before = render(chart, MINIO)
    after = render(chart, deep_merge(MINIO, {"storage": {"s3": {"redirect": True}}}))
    validate_objects(after)
    assert server_config(after)["storage"] == {"s3": {**server_config(before)["storage"]["s3"], "redirect": True}}
    assert server_container(after)["env"] == server_container(before)["env"]
    assert pod_spec(after)["volumes"] == pod_spec(before)["volumes"]
    assert kinds(release_objects(after)) == kinds(release_objects(before))
    objects = render(chart, {"storage": {"s3": {"redirect": True}}})
    assert "storage" not in server_config(objects)


# --------------------------------------------------------------------------
# The rendered configuration in the real server, on a real S3 server


def s3s_fs_bin() -> Path:
    """s3s-fs as the Rust tests find it: $S3S_FS, PATH, then ~/.cargo/bin."""
    candidates = [os.environ.get("S3S_FS"), shutil.which("s3s-fs"), Path.home() / ".cargo" / "bin" / "s3s-fs"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    pytest.fail("s3s-fs is missing (a real S3 server over a directory, which these tests run the chart's "
                "configuration against): cargo install s3s-fs@0.14.1 --locked --features binary")


class S3Server:
    """s3s-fs over tmp/s3 with one empty bucket, on a free loopback port."""

    def __init__(self, tmp: Path, key_id: str, secret: str):
        self.root = tmp / "s3"
        (self.root / BUCKET).mkdir(parents=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "s3s-fs.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(s3s_fs_bin()), "--host", "127.0.0.1", "--port", str(self.port),
                                          "--access-key", key_id, "--secret-key", secret, str(self.root)],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"s3s-fs exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"s3s-fs did not listen on port {self.port} within 10 s:\n{self.log.read_text()}")
                time.sleep(0.05)

    def objects(self, prefix: str) -> list[str]:
        """The keys under prefix (s3s-fs keeps them as paths)."""
        base = self.root / BUCKET
        return sorted(str(p.relative_to(base)) for p in (base / prefix).rglob("*") if p.is_file())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def s3(tmp_path):
    server = S3Server(tmp_path, SECRET["data"]["accessKeyId"], SECRET["data"]["secretAccessKey"])
    yield server
    server.stop()


def pod_env(objects, secrets: list[dict], pod_ip: str = "127.0.0.1") -> dict[str, str]:
    """The variables the kubelet gives the server container: values, with `$(VAR)` of the variables before them
    expanded; `status.podIP` as pod_ip; and secretKeyRefs resolved in secrets (the cluster's)."""
    by_name = {s["name"]: s["data"] for s in secrets}
    env = {}
    for e in server_container(objects).get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), e["value"])
        elif "fieldRef" in e["valueFrom"]:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP", e
            env[e["name"]] = pod_ip
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] in by_name, f"the pod needs the Secret {ref['name']}"
            env[e["name"]] = by_name[ref["name"]][ref["key"]]
    return env


def generated_secrets(objects) -> list[dict]:
    """The Secrets the chart renders, as pod_env takes them (their data decoded): in the cluster, one Secret every
    pod reads, whichever render made it."""
    return [{"name": o["metadata"]["name"], "data": {k: base64.b64decode(v).decode() for k, v in o["data"].items()}}
            for o in objects if o["kind"] == "Secret"]


def as_the_pod_sees_it(objects, s3: S3Server, ca: Path | None) -> str:
    """The rendered configuration with what differs here: the endpoint is the loopback s3s-fs, and the CA
    volume's directory is a local one holding the file the kubelet would put there."""
    text = config_text(objects).replace("https://minio.minio.svc:9000", s3.endpoint)
    if ca:
        text = text.replace(CA_DIR, str(ca))
    return text


def replica_values(s3: S3Server, health: int, **over) -> dict:
    """MINIO's values for a replica on this machine: ports of its own (all replicas have the pod IP 127.0.0.1
    here, where each pod has its own IP and the same ports), and the user's peer token Secret."""
    values = deep_merge(MINIO, {"health": {"port": health}, "metrics": {"port": None},
                                "storage": {"s3": {"peers": {"port": free_port(),
                                                             "tokenSecret": {"name": PEER_SECRET["name"]}}}}})
    return deep_merge(values, over)


def test_replicas_of_the_rendered_configuration_share_the_bucket(chart, s3, pki, tmp_path):
    """Replicas start from the one rendered ConfigMap, with the Secret's keys in the variables it names and the
    mounted CA, and answer /v2/; a replica started after an image was pulled through another (a pod rescheduled
    or added) serves it from the bucket with the upstream gone."""
    upstream = TinyUpstream()
    registries = [{"name": "upstream.test", "endpoint": f"http://127.0.0.1:{upstream.port}"}]
    ca = tmp_path / "s3-ca"
    ca.mkdir()
    shutil.copy(pki / "ca.crt", ca / "ca.crt")  # the caSecret's ca.crt, as the kubelet writes it
    replicas = []

    def start_replica() -> Server:
        health = free_port()
        values = replica_values(s3, health, serverConfig={"configuration": {"registries": registries}})
        objects = render(chart, values)
        env = pod_env(objects, [SECRET, PEER_SECRET])
        peer = values["storage"]["s3"]["peers"]["port"]
        assert env == {"POD_IP": "127.0.0.1", "OCIREGISTRY_STORAGE__S3__PEERS__ADVERTISE": f"http://127.0.0.1:{peer}",
                       "PEER_TOKEN": PEER_SECRET["data"]["token"],
                       "S3_ACCESS_KEY_ID": "AKIACHARTTEST", "S3_SECRET_ACCESS_KEY": "chart-test-secret"}
        home = tmp_path / f"replica-{len(replicas)}"
        home.mkdir()
        server = Server(as_the_pod_sees_it(objects, s3, ca), home, env)
        replicas.append(server)
        server.wait_ready(health)
        status, body = server.get(server.port, "/v2/")
        assert status == 200, f"GET /v2/ answered {status} {body!r}\n{server.explain()}"
        assert f"storage=s3://{BUCKET}/edge/site-1" in server.log.read_text(), server.explain()
        return server

    try:
        a, _ = start_replica(), start_replica()
        manifest = "/v2/hello/manifests/latest?ns=upstream.test"
        blob = f"/v2/hello/blobs/{upstream.layer_digest}?ns=upstream.test"
        assert a.get(a.port, manifest)[0] == 200, a.explain()
        assert a.get(a.port, blob)[0] == 200, a.explain()
        assert s3.objects("edge/site-1"), "nothing reached the bucket under the prefix"
        later = start_replica()
        upstream.close()
        upstream = None
        status, body = later.get(later.port, manifest)
        assert status == 200, f"a later replica answered {status} {body!r} with the upstream gone\n{later.explain()}"
        status, body = later.get(later.port, blob)
        assert status == 200 and body == b"not really a tar, but bytes with a digest", later.explain()
    finally:
        for server in replicas:
            server.stop()
        if upstream:
            upstream.close()


def test_with_redirect_a_cached_blob_is_a_redirect_to_the_bucket(chart, s3, tmp_path):
    """The rendered storage.s3.redirect in the real server: a blob not in the bucket yet is served through the
    pod; once committed there, its GET is a 307 to a presigned URL on the bucket's endpoint (the host clients
    must reach), which serves the bytes itself."""
    upstream = TinyUpstream()
    registries = [{"name": "upstream.test", "endpoint": f"http://127.0.0.1:{upstream.port}"}]
    health = free_port()
    values = replica_values(s3, health, storage={"s3": {"redirect": True, "caSecret": {"name": ""}}},
                            serverConfig={"configuration": {"registries": registries}})
    objects = render(chart, values)
    assert server_config(objects)["storage"]["s3"]["redirect"] is True
    server = Server(as_the_pod_sees_it(objects, s3, None), tmp_path, pod_env(objects, [SECRET, PEER_SECRET]))

    def get(url_path):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            conn.request("GET", url_path)
            r = conn.getresponse()
            return r.status, r.getheader("Location"), r.read()
        finally:
            conn.close()

    try:
        server.wait_ready(health)
        blob = f"/v2/hello/blobs/{upstream.layer_digest}?ns=upstream.test"
        assert server.get(server.port, "/v2/hello/manifests/latest?ns=upstream.test")[0] == 200, server.explain()
        status, location, body = get(blob)
        assert status in (200, 307), f"the first GET answered {status} {body!r}\n{server.explain()}"
        deadline = time.monotonic() + 10
        while status != 307 and time.monotonic() < deadline:  # until the blob is committed to the bucket
            time.sleep(0.1)
            status, location, body = get(blob)
        assert status == 307, f"a blob in the bucket answered {status} {body!r}\n{server.explain()}"
        url = urllib.parse.urlsplit(location)
        assert f"{url.scheme}://{url.netloc}" == s3.endpoint, f"not the bucket's endpoint: {location}"
        assert url.path.startswith(f"/{BUCKET}/edge/site-1/"), f"not path-style under the prefix: {location}"
        assert "X-Amz-Signature=" in url.query, f"not presigned: {location}"
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
        try:
            conn.request("GET", f"{url.path}?{url.query}")
            r = conn.getresponse()
            fetched = (r.status, r.read())
        finally:
            conn.close()
        assert fetched == (200, b"not really a tar, but bytes with a digest"), f"the presigned URL: {fetched}"
    finally:
        server.stop()
        upstream.close()


def test_the_aws_chain_configuration_runs_with_aws_variables(chart, s3, tmp_path):
    """Without existingSecret the server takes the AWS chain: here its first link, AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY (where IRSA gives it a web identity instead)."""
    health = free_port()
    values = replica_values(s3, health, storage={"s3": {"existingSecret": "", "caSecret": {"name": ""}}})
    objects = render(chart, values)
    env = pod_env(objects, [PEER_SECRET])
    assert set(env) == {"POD_IP", "OCIREGISTRY_STORAGE__S3__PEERS__ADVERTISE", "PEER_TOKEN"}, "no keys"
    aws = {"AWS_ACCESS_KEY_ID": SECRET["data"]["accessKeyId"],
           "AWS_SECRET_ACCESS_KEY": SECRET["data"]["secretAccessKey"], "AWS_REGION": "us-east-1"}
    server = Server(as_the_pod_sees_it(objects, s3, None), tmp_path, {**env, **aws})
    try:
        server.wait_ready(health)
        assert server.get(server.port, "/v2/")[0] == 200, server.explain()
    finally:
        server.stop()


def test_a_bucket_the_pod_cannot_write_to_stops_it_at_start(chart, s3, pki, tmp_path):
    """What the install notes promise: wrong keys are a failed start that says why, not a running mirror."""
    health = free_port()
    objects = render(chart, replica_values(s3, health))
    refused = {"accessKeyId": SECRET["data"]["accessKeyId"], "secretAccessKey": "wrong-secret-4f1c9"}
    env = pod_env(objects, [{"name": SECRET["name"], "data": refused}, PEER_SECRET])
    ca = tmp_path / "s3-ca"
    ca.mkdir()
    shutil.copy(pki / "ca.crt", ca / "ca.crt")
    server = Server(as_the_pod_sees_it(objects, s3, ca), tmp_path, env)
    try:
        code = server.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.stop()
        pytest.fail(f"the server ran with keys the bucket refuses\n{server.explain()}")
    log = server.log.read_text()
    assert code != 0 and f"cannot write to s3://{BUCKET}/edge/site-1" in log, server.explain()
    assert "wrong-secret-4f1c9" not in log, "the secret is never logged"


@pytest.mark.parametrize("token", ["generated", "secret"])
def test_two_replicas_listen_on_their_peer_ports_with_the_one_token(chart, s3, pki, tmp_path, token):
    """Two servers of the rendered configuration, with what the kubelet gives each pod: POD_IP (here both
    127.0.0.1, so each has a peer port of its own, and advertises it), the bucket's keys, and the peer token from
    the Secret every pod reads (the chart's generated one, made by the first render, or the user's). Each answers
    /v2/, and its peer port refuses a request without the token (401) and, with it, says it is downloading no such
    blob (404)."""
    ca = tmp_path / "s3-ca"
    ca.mkdir()
    shutil.copy(pki / "ca.crt", ca / "ca.crt")
    secrets = [SECRET]
    servers = []
    try:
        for i in range(2):
            health = free_port()
            peers = {"port": free_port()} if token == "generated" else {"port": free_port(),
                                                                       "tokenSecret": {"name": PEER_SECRET["name"]}}
            values = deep_merge(MINIO, {"health": {"port": health}, "metrics": {"port": None},
                                        "storage": {"s3": {"localCacheSize": "1GiB", "peers": peers}}})
            objects = render(chart, values)
            validate_objects(objects)
            if i == 0:  # the cluster's Secrets: the one the chart generated at install, or the user's
                secrets += generated_secrets(objects) if token == "generated" else [PEER_SECRET]
            env = pod_env(objects, secrets, pod_ip="127.0.0.1")
            assert env["OCIREGISTRY_STORAGE__S3__PEERS__ADVERTISE"] == f"http://127.0.0.1:{peers['port']}"
            assert len(env["PEER_TOKEN"]) >= 16
            cfg = server_config(objects)["storage"]["s3"]
            assert cfg["peers"] == {"port": peers["port"], "tokenFromEnv": "PEER_TOKEN"}
            assert cfg["localCacheSize"] == "1GiB"
            home = tmp_path / f"replica-{i}"
            home.mkdir()
            server = Server(as_the_pod_sees_it(objects, s3, ca), home, env)
            servers.append((server, health, peers["port"], env["PEER_TOKEN"]))
        tokens = {t for *_, t in servers}
        assert len(tokens) == 1, "every replica holds the same token"
        for server, health, peer, secret in servers:
            server.wait_ready(health)
            status, body = server.get(server.port, "/v2/")
            assert status == 200, f"GET /v2/ answered {status} {body!r}\n{server.explain()}"
            status, body = server.get(peer, ZERO_BLOB)
            assert status == 401, f"the peer port without the token: {status} {body!r}\n{server.explain()}"
            status, body = server.get(peer, ZERO_BLOB, headers={"Authorization": "Bearer not-the-replicas-token"})
            assert status == 401, f"the peer port with a wrong token: {status} {body!r}\n{server.explain()}"
            status, body = server.get(peer, ZERO_BLOB, headers={"Authorization": f"Bearer {secret}"})
            assert status == 404, f"the peer port with the token: {status} {body!r}\n{server.explain()}"
            assert secret not in server.log.read_text(), "the token is never logged"
    finally:
        for server, *_ in servers:
            server.stop()


def test_the_advertised_address_comes_from_the_pods_environment(chart, s3, tmp_path):
    """The file has no address (each pod has its own): without the variable the kubelet sets, the server refuses
    to start, naming what is missing; so the running replicas above took theirs from the environment."""
    health = free_port()
    values = deep_merge(replica_values(s3, health), {"storage": {"s3": {"caSecret": {"name": ""}}}})
    objects = render(chart, values)
    env = pod_env(objects, [SECRET, PEER_SECRET])
    del env["OCIREGISTRY_STORAGE__S3__PEERS__ADVERTISE"]
    server = Server(as_the_pod_sees_it(objects, s3, None), tmp_path, env)
    try:
        code = server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.stop()
        pytest.fail(f"the server ran with no address to advertise\n{server.explain()}")
    assert code != 0 and "advertise: required" in server.log.read_text(), server.explain()
