"""The chart's own checks and defaults: the `helm test` Pod (rendered, and its
command run against the real server), probes, the monitoring objects only
where their CRDs are served, the update strategy, the hostPath cache handed to
the non-root server, a mirror on every node (DaemonSet, hostPort, hostNetwork,
internalTrafficPolicy), extraObjects, Chart.yaml, and the values table generator."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

import values_doc
from test_chart import (CHART, INLINE_TLS, NAMESPACE, RELEASE, Server, config_text, deep_merge, find, free_port,
                        helm, hook, kinds, lint_problems, notes, ociregistry_bin, pki, pod_spec, release_objects, render,
                        render_raw, server_config, server_container, validate_objects, workload)

__all__ = ["pki"]  # the fixture, used below

SERVICE = f"{RELEASE}.{NAMESPACE}.svc:8080"


# --------------------------------------------------------------------------
# helm test


def test_pod(objects) -> dict:
    [pod] = [o for o in objects if hook(o) == "test" and o["kind"] == "Pod"]
    return pod


test_pod.__test__ = False  # a helper, not a test


def test_config(objects) -> str:
    [cm] = [o for o in objects if hook(o) == "test" and o["kind"] == "ConfigMap"]
    return cm["data"]["config.yaml"]


test_config.__test__ = False


def test_helm_test_pulls_an_image_through_the_service(chart):
    objects = render(chart)
    pod = test_pod(objects)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    [c] = pod["spec"]["containers"]
    assert c["image"] == server_container(objects)["image"], "the chart's own image: nothing else to pull"
    # The server's `load`, from the Service, in the in-path form.
    assert c["args"] == ["--config-file", "/etc/ociregistry-test/config.yaml", "load", "--image-path", "/cache",
                         f"{SERVICE}/docker.io/library/hello-world:latest"]
    assert yaml.safe_load(test_config(objects)) == {"logLevel": "info", "registries": [{"name": SERVICE, "scheme": "http"}]}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["securityContext"]["runAsNonRoot"] is True
    assert {v["name"]: v for v in pod["spec"]["volumes"]}["cache"]["emptyDir"] == {"sizeLimit": "256Mi"}
    # Its labels keep it out of the mirror's Service.
    svc = find(objects, "Service", RELEASE)
    assert not svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    validate_objects(objects)
    assert "helm test ociregistry -n ociregistry\n" in notes(chart)
    assert "kubectl -n ociregistry logs ociregistry-test-pull" in notes(chart)
    assert pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    # Configurable: what it pulls, and its image.
    objects = render(chart, {"tests": {"pull": "quay.io/prometheus/busybox:latest", "image": {"registry": "registry.example.com"}}})
    [c] = test_pod(objects)["spec"]["containers"]
    assert c["args"][-1] == f"{SERVICE}/quay.io/prometheus/busybox:latest"
    assert c["image"] == "registry.example.com/ociregistry:0.1.0"
    assert not [o for o in render(chart, {"tests": {"enabled": False}}) if hook(o) == "test"]


def test_helm_test_over_tls(chart):
    objects = render(chart, INLINE_TLS)
    cfg = yaml.safe_load(test_config(objects))
    assert cfg["registries"] == [{"name": SERVICE, "scheme": "https", "tls": {"insecureSkipVerify": True}}]
    # Client certificates: only with a Secret holding one.
    verify = deep_merge(INLINE_TLS, {"serverTls": {"clientAuth": "verify"}})
    assert not [o for o in render(chart, verify) if hook(o) == "test"]
    assert "No `helm test` Pod: with serverTls.clientAuth verify" in notes(chart, verify)
    objects = render(chart, deep_merge(verify, {"tests": {"clientCertSecret": "mirror-client"}}))
    cfg = yaml.safe_load(test_config(objects))
    assert cfg["registries"][0]["tls"] == {"insecureSkipVerify": True, "cert": "/etc/ociregistry-test-client/tls.crt",
                                           "key": "/etc/ociregistry-test-client/tls.key"}
    pod = test_pod(objects)
    assert {"name": "client-cert", "secret": {"secretName": "mirror-client"}} in pod["spec"]["volumes"]
    validate_objects(objects)


def run_helm_test(objects, server: Server, tmp: Path, config_dir: Path | None = None):
    """The test Pod's command, run with the real binary: the Service's name is the server's loopback address,
    the ConfigMap and the emptyDir are files in tmp."""
    address = f"127.0.0.1:{server.port}"
    cfg = tmp / "test-config.yaml"
    text = test_config(objects).replace(SERVICE, address)
    if config_dir:
        text = text.replace("/etc/ociregistry-test-client", str(config_dir))
    cfg.write_text(text)
    [c] = test_pod(objects)["spec"]["containers"]
    args = [a.replace(SERVICE, address) for a in c["args"]]
    args[args.index("/etc/ociregistry-test/config.yaml")] = str(cfg)
    args[args.index("/cache")] = str(tmp / "test-cache")
    return subprocess.run([str(ociregistry_bin()), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("tls", ["plain", "tls", "mtls"])
def test_helm_test_pulls_the_built_in_image_from_the_real_server(chart, pki, tmp_path, tls):
    """With helloWorld the server serves docker.io/library/hello-world:latest itself: the test passes with no
    upstream at all (airGapped). Without it, the same test fails: it does exercise the mirror."""
    health = free_port()
    values = {"health": {"port": health}, "metrics": {"port": None},
              "serverConfig": {"configuration": {"helloWorld": True, "airGapped": True}}}
    mount = tmp_path / "tls"
    if tls != "plain":
        mount.mkdir()
        for key, src in [("tls.crt", "server.crt"), ("tls.key", "server.key"), ("ca.crt", "ca.crt")]:
            (mount / key).write_bytes((pki / src).read_bytes())
        values["serverTls"] = {"enabled": True, "secretName": "mirror-tls", "mountPath": str(mount),
                               "clientAuth": "verify" if tls == "mtls" else "none"}
    client = tmp_path / "client"
    if tls == "mtls":
        values["tests"] = {"clientCertSecret": "mirror-client"}
        client.mkdir()
        (client / "tls.crt").write_bytes((pki / "client.crt").read_bytes())
        (client / "tls.key").write_bytes((pki / "client.key").read_bytes())
    objects = render(chart, values)
    server = Server(config_text(objects), tmp_path)
    try:
        server.wait_ready(health)
        r = run_helm_test(objects, server, tmp_path, client)
        assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{server.explain()}"
        assert "loaded 1 of 1" in r.stdout, r.stdout
        assert "path=/v2/docker.io/library/hello-world/manifests/latest" in server.log.read_text()
    finally:
        server.stop()

    values["serverConfig"]["configuration"]["helloWorld"] = False
    objects = render(chart, values)
    again = tmp_path / "again"
    again.mkdir()
    server = Server(config_text(objects), again)
    try:
        server.wait_ready(health)
        r = run_helm_test(objects, server, again, client)
        assert r.returncode != 0, "a mirror that cannot serve the image must fail the test"
    finally:
        server.stop()


# --------------------------------------------------------------------------
# Probes, monitoring CRDs, strategy


def test_startup_probe_holds_the_liveness_probe_back(chart):
    c = server_container(render(chart))
    assert c["startupProbe"] == {"httpGet": {"path": "/health", "port": "health"},
                                 "periodSeconds": 2, "timeoutSeconds": 3, "failureThreshold": 30}
    assert c["livenessProbe"]["httpGet"] == c["startupProbe"]["httpGet"]


@pytest.mark.parametrize("api_versions, expected", [
    ((), set()),
    (("monitoring.coreos.com/v1/ServiceMonitor",), {"ServiceMonitor"}),
    (("monitoring.coreos.com/v1/PrometheusRule",), {"PrometheusRule"}),
    (("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule"),
     {"ServiceMonitor", "PrometheusRule"}),
])
def test_monitoring_objects_only_where_their_crds_are_served(chart, api_versions, expected):
    values = {"observability": {"enabled": True}}
    objects = render(chart, values, api_versions=api_versions)
    assert {"ServiceMonitor", "PrometheusRule"} & set(kinds(objects)) == expected
    # The rest of observability does not depend on them.
    assert {"ociregistry-metrics", "ociregistry-dashboards"} <= {o["metadata"]["name"] for o in objects}
    text = notes(chart, values, api_versions=api_versions)
    for kind in {"ServiceMonitor", "PrometheusRule"} - expected:
        assert f"No {kind}: the cluster does not serve monitoring.coreos.com/v1 {kind}" in text
        assert f"--api-versions monitoring.coreos.com/v1/{kind}" in text
    for kind in expected:
        assert f"No {kind}" not in text


def strategy(chart, values):
    return workload(render(chart, values))["spec"]["strategy"]


@pytest.mark.parametrize("values, expected", [
    ({}, {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}),
    ({"persistence": {"persistentVolumeClaim": {"enabled": True}}}, {"type": "Recreate"}),
    ({"persistence": {"persistentVolumeClaim": {"enabled": True, "newClaimSpec": {"accessModes": ["ReadWriteOncePod"]}}}},
     {"type": "Recreate"}),
    ({"persistence": {"persistentVolumeClaim": {"enabled": True, "existingClaimName": "cache"}}}, {"type": "Recreate"}),
    ({"persistence": {"persistentVolumeClaim": {"enabled": True, "newClaimSpec": {"accessModes": ["ReadWriteMany"]}}}},
     {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}),
    ({"hostPort": 5080}, {"type": "Recreate"}),
    ({"hostNetwork": True}, {"type": "Recreate"}),
    ({"persistence": {"persistentVolumeClaim": {"enabled": True}},
      "deploymentStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}},
     {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
])
def test_recreate_when_a_second_pod_could_not_start(chart, values, expected):
    assert strategy(chart, values) == expected


def test_a_rolling_update_with_a_single_node_claim_is_warned_about(chart):
    values = {"persistence": {"persistentVolumeClaim": {"enabled": True}},
              "deploymentStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}}
    assert "WARNING: deploymentStrategy is RollingUpdate and the cache is a claim" in notes(chart, values)
    assert "WARNING" not in notes(chart, {"persistence": {"persistentVolumeClaim": {"enabled": True}}})


# --------------------------------------------------------------------------
# A hostPath cache for the non-root server


def test_a_hostpath_cache_is_handed_to_the_server_user(chart):
    objects = render(chart, {"persistence": {"hostPath": {"enabled": True}},
                             "initContainers": [{"name": "mine", "image": "busybox:1.36", "command": ["true"]}]})
    init = pod_spec(objects)["initContainers"]
    assert [c["name"] for c in init] == ["cache-owner", "mine"], "before the user's own init containers"
    owner = init[0]
    assert owner["image"] == server_container(objects)["image"], "the server's own image: nothing else to pull"
    assert owner["command"] == ["/ociregistry/server", "prepare-cache", "--owner", "65532:65532", "/var/lib/ociregistry"]
    assert owner["volumeMounts"] == [{"name": "images", "mountPath": "/var/lib/ociregistry"}]
    sc = owner["securityContext"]
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "DAC_READ_SEARCH"]}, \
        "root, with CHOWN and DAC_READ_SEARCH and nothing else"
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    validate_objects(objects)
    # The server's user, wherever it is set.
    other = pod_spec(render(chart, {"persistence": {"hostPath": {"enabled": True, "path": "/srv/cache"}},
                                    "securityContext": {"runAsUser": 1000, "runAsGroup": 2000},
                                    "serverConfig": {"configuration": {"imagePath": "/cache"}}}))
    assert other["initContainers"][0]["command"][-2:] == ["1000:2000", "/cache"]
    # Not for the emptyDir or a PVC (fsGroup does it), nor when turned off.
    for values in ({}, {"persistence": {"persistentVolumeClaim": {"enabled": True}}},
                   {"persistence": {"hostPath": {"enabled": True, "chown": {"enabled": False}}}}):
        assert "initContainers" not in pod_spec(render(chart, values)), values


def test_the_non_root_server_runs_on_a_fresh_root_owned_hostpath_after_the_init_container(chart, tmp_path, request):
    """A directory as the kubelet creates it (root, 0755) is not writable by 65532; after the init container's
    command, the server, run as 65532 with the rendered configuration, starts and caches into it."""
    if subprocess.run(["setpriv", "--version"], capture_output=True).returncode != 0:
        pytest.fail("`setpriv` is missing: apt-get install -y util-linux")
    health = free_port()
    objects = render(chart, {"persistence": {"hostPath": {"enabled": True}}, "health": {"port": health},
                             "metrics": {"port": None},
                             "serverConfig": {"configuration": {"helloWorld": True, "airGapped": True}}})
    # pytest's temporary directories are private to root: this one is readable by 65532, as / is.
    node = Path(tempfile.mkdtemp(prefix="ociregistry-hostpath-"))
    request.addfinalizer(lambda: shutil.rmtree(node, ignore_errors=True))
    node.chmod(0o755)
    cache = node / "var-lib-ociregistry"
    cache.mkdir(mode=0o755)  # as the kubelet's DirectoryOrCreate makes it: root's, 0755
    config = node / "registry-config.yaml"
    config.write_text(config_text(objects))
    config.chmod(0o644)
    port = free_port()
    as_server = ["setpriv", "--reuid", "65532", "--regid", "65532", "--clear-groups", str(ociregistry_bin()), "serve",
                 "--config-file", str(config), "--host", "127.0.0.1", "--port", str(port), "--image-path", str(cache)]
    refused = subprocess.run(as_server, capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and str(cache) in refused.stderr, (
        f"a root-owned cache directory should not be writable by 65532:\n{refused.stderr}")

    [owner] = pod_spec(objects)["initContainers"]
    cmd = owner["command"]
    assert cmd[0] == "/ociregistry/server" and cmd[-1] == "/var/lib/ociregistry"
    # The init container's command, with the binary and the directory as they are here.
    subprocess.run([str(ociregistry_bin()), *cmd[1:-1], str(cache)], check=True)
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(as_server, stdout=out, stderr=subprocess.STDOUT)
    server = Server.__new__(Server)  # reuse its helpers on this process
    server.proc, server.log, server.port, server.cmd, server.config = proc, log, port, as_server, config
    try:
        server.wait_ready(health)
        assert server.get(port, "/v2/library/hello-world/manifests/latest?ns=docker.io")[0] == 200, server.explain()
        assert "uid=65532" in log.read_text()
    finally:
        server.stop()


# --------------------------------------------------------------------------
# A mirror on every node


def test_a_daemonset_mirror_with_a_cache_on_every_node(chart):
    values = {"kind": "DaemonSet", "hostPort": 5080, "persistence": {"hostPath": {"enabled": True}},
              "service": {"internalTrafficPolicy": "Local"}}
    objects = render(chart, values)
    validate_objects(objects)
    assert lint_problems(values) == []
    ds = workload(objects)
    assert ds["kind"] == "DaemonSet" and "Deployment" not in kinds(objects)
    assert "replicas" not in ds["spec"] and "strategy" not in ds["spec"]
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    http = next(p for p in server_container(objects)["ports"] if p["name"] == "http")
    assert http == {"name": "http", "containerPort": 8080, "hostPort": 5080, "protocol": "TCP"}
    assert find(objects, "Service", RELEASE)["spec"]["internalTrafficPolicy"] == "Local"
    assert "a mirror on every node" in notes(chart, values)
    assert "The mirror answers on port 5080 of every node" in notes(chart, values)
    assert "port-forward daemonset/ociregistry" in notes(chart, deep_merge(values, {"admin": {"port": 9095}}))
    ours = workload(render(chart, deep_merge(values, {"daemonSetUpdateStrategy": {"type": "OnDelete"}})))
    assert ours["spec"]["updateStrategy"] == {"type": "OnDelete"}


def test_host_network(chart):
    objects = render(chart, {"hostNetwork": True})
    spec = pod_spec(objects)
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert all("hostPort" not in p for p in server_container(objects)["ports"]), "the API sets them from containerPort"
    validate_objects(objects)
    text = notes(chart, {"hostNetwork": True, "admin": {"port": 9095}})
    assert "with\nhostNetwork that is the node's 127.0.0.1" in text
    assert "hostNetwork" not in pod_spec(render(chart))


# --------------------------------------------------------------------------
# extraObjects, Chart.yaml, the values table


def test_extra_objects_are_templates(chart):
    values = {"extraObjects": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "{{ .Release.Name }}-extra", "namespace": NAMESPACE},
         "data": {"image": '{{ include "ociregistry.image" . }}'}},
        'apiVersion: v1\nkind: Secret\nmetadata: {name: "{{ include "ociregistry.fullname" . }}-s", namespace: ociregistry}\n']}
    objects = render(chart, values)
    assert find(objects, "ConfigMap", "ociregistry-extra")["data"] == {"image": "ociregistry:0.1.0"}
    assert find(objects, "Secret", "ociregistry-s")
    validate_objects(objects)


def test_chart_yaml_metadata():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    for key in ("home", "icon"):
        assert re.match(r"^https://[^/]+/", meta[key]), key
    assert meta["sources"] and all(s.startswith("https://") for s in meta["sources"])
    assert meta["kubeVersion"] == ">=1.25.0-0"
    assert meta["icon"].endswith("/charts/ociregistry/icon.svg") and (CHART / "icon.svg").is_file()
    report = helm.lint(CHART, {}, strict=True, kube_version="v1.30.0")
    assert not [m for m in report["messages"] if "icon" in m["error"].lower()], report["messages"]


def test_the_values_doc_generator_reads_helm_docs_comments():
    text = """# A file comment, not a value's.

# -- The image.
image:
  # -- Its tag; empty: the appVersion.
  tag: ""
  repo: x
# -- Labels,
# over two lines.
labels:
  a: b
list:
  # -- Not documented: a comment on a list item.
  - name: one
    value: 1
# An example, not documentation:
# other: 1
"""
    assert values_doc.documented_keys(text) == [("image", "The image."), ("image.tag", "Its tag; empty: the appVersion."),
                                                ("labels", "Labels, over two lines.")]


def test_the_values_doc_generator_refuses_undocumented_values(tmp_path, monkeypatch):
    values = tmp_path / "values.yaml"
    values.write_text("# -- Documented.\na: 1\nb: 2\nc:\n  # -- Documented.\n  d: 1\n  e: 2\n")
    monkeypatch.setattr(values_doc, "VALUES", values)
    _, undocumented = values_doc.table()
    assert undocumented == ["b", "c.e"]
    assert values_doc.main(["--check"]) == 1


def test_the_values_doc_command_says_the_readme_is_current():
    r = subprocess.run([sys.executable, str(Path(values_doc.__file__)), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_readme_links_to_its_own_sections():
    readme = (CHART / "README.md").read_text()
    slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", readme, re.M)}
    anchors = set(re.findall(r"\]\(#([^)]+)\)", readme))
    assert anchors and not anchors - slugs, f"links to no section: {sorted(anchors - slugs)}"
