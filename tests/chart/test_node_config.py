"""nodeConfig: the DaemonSet that points every node's container runtime at the
mirror, and the post-delete hook that puts the nodes back on `helm uninstall`.

Rendered and validated like the rest of the chart, and then run: the command
lines of the rendered containers (init, long-running, and the uninstall hook's)
are run with the real `ociregistry` binary against a temporary directory that
stands in for the node's / (the containers' /host), so the files are really
written, backed up and restored, and only inside the directories the pods mount.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from test_chart import (NAMESPACE, RELEASE, deep_merge, find, hook, lint_problems, notes, ociregistry_bin,
                        release_objects, render, validate_objects)

NODE_ROOT = "/host"  # where the pods mount the node's directories (hosts-toml --root)
ON = {"nodeConfig": {"enabled": True}}


def node_config(objects) -> dict:
    return find(objects, "DaemonSet", f"{RELEASE}-node-config")


def cleanup(objects) -> dict:
    return find(objects, "DaemonSet", f"{RELEASE}-node-cleanup")


def containers(ds) -> dict[str, dict]:
    spec = ds["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def args_of(ds) -> tuple[list[str], list[str]]:
    """(the init container's args, the long-running container's args)."""
    [init] = ds["spec"]["template"]["spec"]["initContainers"]
    [main] = ds["spec"]["template"]["spec"]["containers"]
    return init["args"], main["args"]


def flag(args, name):
    return args[args.index(name) + 1] if name in args else None


# --------------------------------------------------------------------------
# Rendering


def test_off_by_default(chart):
    objects = render(chart)
    assert not [o for o in objects if o["kind"] == "DaemonSet"]
    assert not [o for o in objects if hook(o) == "post-delete"]


@pytest.mark.parametrize("values", [
    ON,
    {"nodeConfig": {"enabled": True, "format": "k3s"}},
    {"nodeConfig": {"enabled": True, "format": "rke2", "registries": ["docker.io"], "fallback": False}},
    {"nodeConfig": {"enabled": True, "mirror": "https://mirror.example:8443", "ca": "/etc/ssl/mirror-ca.pem",
                    "containerdConfig": "/etc/containerd/config.toml", "hostsDir": "/etc/containerd/certs.d"}},
    {"kind": "DaemonSet", "hostPort": 5080, "persistence": {"hostPath": {"enabled": True}}, **ON},
], ids=["containerd", "k3s", "rke2", "https-ca", "mirror-daemonset"])
def test_renders_valid_objects_and_lints(chart, values):
    objects = render(chart, values)
    validate_objects(objects)
    assert lint_problems(values) == []
    for o in objects:
        assert o["metadata"]["namespace"] == NAMESPACE
        assert o["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_the_daemonset_writes_on_every_node_then_stays(chart):
    objects = render(chart, ON)
    ds = node_config(objects)
    assert not hook(ds), "the DaemonSet is part of the release"
    pod = ds["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}], "every node, control planes and tainted nodes included"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["automountServiceAccountToken"] is False
    init, main = args_of(ds)
    # The image has no shell: the binary is the long-running container.
    assert init[0] == "hosts-toml" and init[-1] == "--write" and "--stay-running" not in init
    assert main == init + ["--stay-running"]
    assert flag(init, "--root") == NODE_ROOT
    assert flag(init, "--mirror") == "http://127.0.0.1:31080"
    assert flag(init, "--format") == "containerd"
    assert flag(init, "--hosts-dir") == "/etc/containerd/certs.d"
    assert "--containerd-config" not in init, "the default one is read when it exists; a given one must exist"
    for c in containers(ds).values():
        assert "command" not in c, "the image's entry point, /ociregistry/server"
        assert c["image"] == "ociregistry:0.1.0"
        sc = c["securityContext"]
        assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False, "the files it writes belong to root"
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True and sc["privileged"] is False
        assert c["resources"]["limits"]["memory"] == "64Mi"


def test_its_pods_are_not_behind_the_mirrors_services(chart):
    objects = render(chart, deep_merge(ON, {"observability": {"enabled": True}}))
    labels = [ds["spec"]["template"]["metadata"]["labels"] for ds in (node_config(objects), cleanup(objects))]
    for svc in [o for o in objects if o["kind"] == "Service"]:
        for pod_labels in labels:
            assert not svc["spec"]["selector"].items() <= pod_labels.items(), svc["metadata"]["name"]
    # And the quick start's log selector shows the mirror only.
    assert all(l["app.kubernetes.io/name"] != "ociregistry" for l in labels)


@pytest.mark.parametrize("values, mirror", [
    ({}, "http://127.0.0.1:31080"),
    ({"serverTls": {"enabled": True, "secretName": "mirror-tls"}}, "https://127.0.0.1:31080"),
    ({"service": {"type": "LoadBalancer", "nodePort": 31999}}, "http://127.0.0.1:31999"),
    # hostPort on a Deployment reaches one node only: the NodePort reaches all of them.
    ({"hostPort": 5080}, "http://127.0.0.1:31080"),
    ({"kind": "DaemonSet", "hostPort": 5080}, "http://127.0.0.1:5080"),
    ({"kind": "DaemonSet", "hostNetwork": True}, "http://127.0.0.1:8080"),
    ({"kind": "DaemonSet", "hostNetwork": True, "serverConfig": {"configuration": {"port": 5000}}},
     "http://127.0.0.1:5000"),
    ({"service": {"type": "ClusterIP"}, "nodeConfig": {"mirror": "http://10.0.0.5:5000"}}, "http://10.0.0.5:5000"),
])
def test_the_mirror_is_derived_as_the_nodes_reach_it(chart, values, mirror):
    init, _ = args_of(node_config(render(chart, deep_merge(ON, values))))
    assert flag(init, "--mirror") == mirror


@pytest.mark.parametrize("nc, mounts", [
    # containerd's config directory holds the hosts directory: one mount, read-write.
    ({}, [("/etc/containerd", False)]),
    ({"hostsDir": "/etc/containerd/certs.d/"}, [("/etc/containerd", False)]),
    # A hosts directory elsewhere: the config directory read-only, the hosts directory read-write.
    ({"hostsDir": "/var/lib/containerd-hosts"}, [("/etc/containerd", True), ("/var/lib/containerd-hosts", False)]),
    ({"containerdConfig": "/var/lib/rancher/k3s/agent/etc/containerd/config.toml"},
     [("/var/lib/rancher/k3s/agent/etc/containerd", True), ("/etc/containerd/certs.d", False)]),
    ({"format": "k3s"}, [("/etc/rancher/k3s", False)]),
    ({"format": "rke2"}, [("/etc/rancher/rke2", False)]),
])
def test_only_the_directories_it_writes_are_mounted(chart, nc, mounts):
    objects = render(chart, deep_merge(ON, {"nodeConfig": nc}))
    for ds in (node_config(objects), cleanup(objects)):
        volumes = {v["name"]: v["hostPath"] for v in ds["spec"]["template"]["spec"]["volumes"]}
        assert all(v["type"] == "DirectoryOrCreate" for v in volumes.values())
        for c in containers(ds).values():
            got = [(volumes[m["name"]]["path"], m.get("readOnly", False)) for m in c["volumeMounts"]]
            assert got == mounts
            assert [m["mountPath"] for m in c["volumeMounts"]] == [NODE_ROOT + p for p, _ in mounts]
    init, _ = args_of(node_config(objects))
    if nc.get("containerdConfig"):
        assert flag(init, "--containerd-config") == NODE_ROOT + nc["containerdConfig"], "read in the container, under /host"


def test_the_flags_follow_the_values(chart):
    values = {"nodeConfig": {"enabled": True, "mirror": "https://mirror.example:8443", "registries": ["docker.io", "quay.io"],
                             "fallback": False, "ca": "/etc/ssl/mirror-ca.pem"}}
    init, main = args_of(node_config(render(chart, values)))
    assert flag(init, "--registry") == "docker.io,quay.io"
    assert "--no-fallback" in init and flag(init, "--ca") == "/etc/ssl/mirror-ca.pem" and "--insecure" not in init
    insecure, _ = args_of(node_config(render(chart, deep_merge(values, {"nodeConfig": {"ca": "", "insecure": True}}))))
    assert "--insecure" in insecure and "--ca" not in insecure
    k3s, _ = args_of(node_config(render(chart, {"nodeConfig": {"enabled": True, "format": "k3s"}})))
    assert flag(k3s, "--format") == "k3s" and "--hosts-dir" not in k3s
    image = containers(node_config(render(chart, {"nodeConfig": {"enabled": True, "image": {"tag": "9.9.9"}},
                                                   "image": {"registry": "registry.example.com"}})))
    assert {c["image"] for c in image.values()} == {"registry.example.com/ociregistry:9.9.9"}


def test_the_uninstall_hook_removes_on_every_node_and_waits_for_all(chart):
    objects = render(chart, ON)
    hooks = [o for o in objects if hook(o) == "post-delete"]
    weight = {(o["kind"], o["metadata"]["name"]): int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) for o in hooks}
    name = f"{RELEASE}-node-cleanup"
    assert weight == {("ServiceAccount", name): -1, ("Role", name): -1, ("RoleBinding", name): -1,
                      ("DaemonSet", name): 0, ("Pod", f"{name}-wait"): 1}
    for o in hooks:
        assert o["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"

    writer, remover = node_config(objects), cleanup(objects)
    w_init, _ = args_of(writer)
    r_init, r_main = args_of(remover)
    assert r_init[-1] == "--remove" and r_main == r_init + ["--stay-running"]
    # The same files, on the same nodes, through the same mounts.
    for f in ("--format", "--root", "--hosts-dir"):
        assert flag(r_init, f) == flag(w_init, f)
    w_pod, r_pod = writer["spec"]["template"]["spec"], remover["spec"]["template"]["spec"]
    for k in ("volumes", "nodeSelector", "tolerations"):
        assert w_pod[k] == r_pod[k], k
    assert containers(writer)["write"]["volumeMounts"] == containers(remover)["remove"]["volumeMounts"]

    # The waiting Pod: wait-daemonset from the same image on the cleanup DaemonSet, allowed to get it only.
    wait = find(hooks, "Pod")
    assert wait["spec"]["restartPolicy"] == "Never"
    [c] = wait["spec"]["containers"]
    assert c["image"] == containers(remover)["remove"]["image"], "the same image: nothing else to pull"
    assert c["command"] == ["/ociregistry/server", "wait-daemonset", name, "--namespace", NAMESPACE, "--timeout", "4m"]
    assert wait["spec"]["serviceAccountName"] == name and wait["spec"]["automountServiceAccountToken"] is True
    assert find(hooks, "Role")["rules"] == [{"apiGroups": ["apps"], "resources": ["daemonsets"],
                                             "resourceNames": [name], "verbs": ["get"]}]
    binding = find(hooks, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]
    # No hook without cleanup; nothing of it is part of the release.
    assert not [o for o in release_objects(objects) if "cleanup" in o["metadata"]["name"]]
    off = render(chart, deep_merge(ON, {"nodeConfig": {"cleanup": {"enabled": False}}}))
    assert not [o for o in off if hook(o) == "post-delete"]
    assert "leaves the files on the nodes" in notes(chart, deep_merge(ON, {"nodeConfig": {"cleanup": {"enabled": False}}}))


def test_the_notes_say_what_must_be_restarted(chart):
    text = notes(chart, ON)
    assert "config_path =\n\"/etc/containerd/certs.d\"" in text and "restart containerd once" in text
    assert "kubectl -n ociregistry logs daemonset/ociregistry-node-config -c write" in text
    assert "<file>.ociregistry-backup" in text and "`helm uninstall` puts it back" in text
    k3s = notes(chart, {"nodeConfig": {"enabled": True, "format": "k3s"}})
    assert "k3s reads it only when it starts" in k3s and "systemctl restart k3s" in k3s and "k3s-agent on agents" in k3s
    rke2 = notes(chart, {"nodeConfig": {"enabled": True, "format": "rke2"}})
    assert "RKE2 reads it only when it starts" in rke2
    assert "systemctl restart rke2-server" in rke2 and "rke2-agent on agents" in rke2


# --------------------------------------------------------------------------
# The rendered command lines, run by the real binary on a stand-in node


def on_node(args: list[str], node: Path) -> list[str]:
    """The container's args with the node's / (mounted at /host) replaced by the stand-in directory."""
    return [str(node) + a[len(NODE_ROOT):] if a == NODE_ROOT or a.startswith(NODE_ROOT + "/") else a for a in args]


def writable_dirs(ds) -> list[str]:
    """The node directories the pod may write: its read-write hostPath mounts."""
    [init] = ds["spec"]["template"]["spec"]["initContainers"]
    return [m["mountPath"][len(NODE_ROOT):] for m in init["volumeMounts"] if not m.get("readOnly")]


def kubelet_creates(ds, node: Path):
    """What the kubelet does before the pod starts: its DirectoryOrCreate hostPath directories exist."""
    for v in ds["spec"]["template"]["spec"]["volumes"]:
        assert v["hostPath"]["type"] == "DirectoryOrCreate"
        (node / v["hostPath"]["path"].lstrip("/")).mkdir(parents=True, exist_ok=True)


def snapshot(node: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and directory (None) under the stand-in node, by its path on the node."""
    out: dict[str, bytes | None] = {}
    for p in sorted(node.rglob("*")):
        out["/" + str(p.relative_to(node))] = None if p.is_dir() else p.read_bytes()
    return out


def run_once(args, node) -> str:
    r = subprocess.run([str(ociregistry_bin()), *on_node(args, node)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"{' '.join(on_node(args, node))}\nexit {r.returncode}\n{r.stdout}{r.stderr}"
    return r.stdout


def run_staying(args, node, tmp: Path) -> str:
    """A long-running container: it does its work, keeps running, and exits 0 on SIGTERM, changing nothing."""
    if "--stay-running" not in subprocess.run([str(ociregistry_bin()), "hosts-toml", "--help"],
                                              capture_output=True, text=True).stdout:
        pytest.fail(f"{ociregistry_bin()} has no `hosts-toml --stay-running`: rebuild it (cargo build)")
    log = tmp / "stay.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(ociregistry_bin()), *on_node(args, node)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)
        assert proc.poll() is None, f"it exited ({proc.returncode}) instead of staying:\n{log.read_text()}"
        before = snapshot(node)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log.read_text()
        assert snapshot(node) == before, "stopping changed the node's files: they must stay as they are"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return log.read_text()


CONTAINERD_CONFIG = """version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
"""
THEIR_HOSTS_TOML = '[host."https://registry.internal:5000"]\n  capabilities = ["pull", "resolve"]\n'
THEIR_REGISTRIES_YAML = "mirrors:\n  docker.io:\n    endpoint:\n      - https://mirror.internal\n"

SCENARIOS = {
    # containerd, with a _default/hosts.toml already there (kept, then restored).
    "containerd": (ON, {"/etc/containerd/config.toml": CONTAINERD_CONFIG,
                        "/etc/containerd/certs.d/_default/hosts.toml": THEIR_HOSTS_TOML},
                   ["/etc/containerd/certs.d/_default/hosts.toml"], '[host."http://127.0.0.1:31080"]'),
    # containerd with per-registry files, no fallback, and a hosts directory outside /etc/containerd.
    "containerd-registries": ({"nodeConfig": {"enabled": True, "registries": ["docker.io", "quay.io"], "fallback": False,
                                              "hostsDir": "/var/lib/containerd/hosts"}},
                              {"/etc/containerd/config.toml": CONTAINERD_CONFIG.replace("/etc/containerd/certs.d", "/var/lib/containerd/hosts"),
                               "/var/lib/containerd/hosts/docker.io/hosts.toml": THEIR_HOSTS_TOML},
                              ["/var/lib/containerd/hosts/_default/hosts.toml", "/var/lib/containerd/hosts/docker.io/hosts.toml",
                               "/var/lib/containerd/hosts/quay.io/hosts.toml"], 'server = "http://127.0.0.1:31080"'),
    # k3s, with its registries.yaml already there.
    "k3s": ({"nodeConfig": {"enabled": True, "format": "k3s"}, "kind": "DaemonSet", "hostPort": 5080},
            {"/etc/rancher/k3s/registries.yaml": THEIR_REGISTRIES_YAML, "/etc/rancher/k3s/config.yaml": "write-kubeconfig-mode: 644\n"},
            ["/etc/rancher/k3s/registries.yaml"], "http://127.0.0.1:5080"),
    # RKE2 on a node with no registries.yaml yet: written, then removed.
    "rke2": ({"nodeConfig": {"enabled": True, "format": "rke2", "registries": ["docker.io"]}}, {},
             ["/etc/rancher/rke2/registries.yaml"], "http://127.0.0.1:31080"),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_rendered_containers_write_keep_and_restore_the_node(chart, tmp_path, scenario):
    values, existing, written, mirror_line = SCENARIOS[scenario]
    node = tmp_path / "node"
    node.mkdir()
    for path, text in existing.items():
        (node / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (node / path.lstrip("/")).write_text(text)
    objects = render(chart, values)
    writer, remover = node_config(objects), cleanup(objects)
    kubelet_creates(writer, node)
    original = snapshot(node)
    w_init, w_main = args_of(writer)
    r_init, r_main = args_of(remover)

    # Install: the init container writes, keeping what was there.
    out = run_once(w_init, node)
    after_write = snapshot(node)
    for path in written:
        text = (node / path.lstrip("/")).read_text()
        assert text.startswith("# Written by `ociregistry hosts-toml`") and mirror_line in text, text
        if path in existing:
            assert (node / (path.lstrip("/") + ".ociregistry-backup")).read_text() == existing[path]
    if scenario == "containerd":
        assert "containerd reads these files" in out, out  # the node's config.toml points at them
    # Only inside the directories the pod mounts read-write.
    changed = [p for p in after_write if after_write[p] != original.get(p, b"missing")]
    assert changed
    for p in changed:
        assert any(p == d or p.startswith(d + "/") for d in writable_dirs(writer)), f"{p} is outside the pod's mounts"

    # The long-running container: the same write (nothing to do), then it waits; SIGTERM leaves the files.
    run_staying(w_main, node, tmp_path)
    assert snapshot(node) == after_write

    # An upgrade with other values rewrites its own files; the backups are made once.
    upgraded = deep_merge(values, {"nodeConfig": {"mirror": "http://10.9.9.9:31080"}})
    run_once(args_of(node_config(render(chart, upgraded)))[0], node)
    for path in written:
        assert "http://10.9.9.9:31080" in (node / path.lstrip("/")).read_text()
        if path in existing:
            assert (node / (path.lstrip("/") + ".ociregistry-backup")).read_text() == existing[path]

    # Uninstall: the hook's init container puts the node back as it was.
    run_once(r_init, node)
    assert snapshot(node) == original, "the node is not as it was before the install"
    # Its long-running container finds nothing left to do, and waits.
    assert "nothing to remove" in run_staying(r_main, node, tmp_path)
    assert snapshot(node) == original


def test_a_file_someone_else_wrote_since_is_not_lost(chart, tmp_path):
    """After the install, the operator replaces hosts.toml by hand: an upgrade refuses to overwrite it
    while a backup of another file exists (the pod fails, naming both files), and the uninstall leaves it."""
    node = tmp_path / "node"
    hosts = node / "etc/containerd/certs.d/_default/hosts.toml"
    hosts.parent.mkdir(parents=True)
    hosts.write_text(THEIR_HOSTS_TOML)
    objects = render(chart, ON)
    kubelet_creates(node_config(objects), node)
    w_init, _ = args_of(node_config(objects))
    run_once(w_init, node)
    hosts.write_text("# edited by hand\n")
    r = subprocess.run([str(ociregistry_bin()), *on_node(w_init, node)], capture_output=True, text=True)
    assert r.returncode != 0 and "ociregistry-backup" in r.stderr, r.stdout + r.stderr
    assert hosts.read_text() == "# edited by hand\n"
    run_once(args_of(cleanup(objects))[0], node)
    assert hosts.read_text() == "# edited by hand\n", "--remove leaves a file it did not write"
