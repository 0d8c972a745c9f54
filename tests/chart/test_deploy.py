"""The deployment pieces beside the chart: the examples in the READMEs, the
systemd unit, and the Dockerfile's promises. (No Docker engine here: the image
is built by deploy/build-image.sh and run under containerd in tests/image.)"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from test_chart import (CHART, NAMESPACE, RELEASE, ROOT, Server, free_port, ociregistry_bin, render,
                        validate_objects)

SYSTEMD = ROOT / "deploy" / "systemd"


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def test_chart_readme_value_examples_render_and_validate(chart):
    """Every YAML example in the chart README that sets chart values renders to valid objects."""
    top = set(yaml.safe_load((CHART / "values.yaml").read_text()))
    examples = [yaml.safe_load(b) for b in fenced((CHART / "README.md").read_text(), "yaml")]
    examples = [e for e in examples if isinstance(e, dict) and set(e) <= top]
    assert len(examples) >= 4, "the README's TLS, observability, configuration and httpRoute examples"
    for values in examples:
        if values.get("serverTls", {}).get("enabled") and not values["serverTls"].get("secretName"):
            continue  # inline PEMs come from --set-file
        validate_objects(render(chart, values))


def test_chart_readme_quick_start_matches_the_chart(chart):
    readme = (CHART / "README.md").read_text()
    assert "helm upgrade --install ociregistry ./charts/ociregistry" in readme
    assert "--namespace ociregistry --create-namespace" in readme
    assert "kubectl -n ociregistry logs -f -l app.kubernetes.io/name=ociregistry" in readme
    assert '[host."http://localhost:31080"]' in readme
    svc = next(o for o in render(chart) if o["kind"] == "Service")
    assert svc["spec"]["ports"][0]["nodePort"] == 31080 and NAMESPACE == RELEASE == "ociregistry"


def systemd_readme_config() -> str:
    readme = (SYSTEMD / "README.md").read_text()
    [config] = re.findall(r"cat > /etc/ociregistry/registry-config.yaml <<'EOF'\n(.*?)^EOF", readme, re.M | re.S)
    return config


def test_systemd_readme_config_runs(tmp_path):
    """The configuration the install steps write, read by the real server (on free loopback ports)."""
    config = systemd_readme_config()
    health, metrics = free_port(), free_port()
    config = re.sub(r"^health: \d+$", f"health: {health}", config, flags=re.M)
    config = re.sub(r"^metrics: \d+$", f"metrics: {metrics}", config, flags=re.M)
    server = Server(config, tmp_path, env={"DOCKERHUB_TOKEN": "token"})
    try:
        server.wait_ready(health)
        assert server.get(server.port, "/v2/")[0] == 200
    finally:
        server.stop()


def unit() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in (SYSTEMD / "ociregistry.service").read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            keys.setdefault(k, []).append(v)
    return keys


def test_systemd_unit_stops_after_the_server_drains():
    u = unit()
    grace = yaml.safe_load(systemd_readme_config())["shutdownGracePeriod"]
    assert grace == "30s"
    assert int(u["TimeoutStopSec"][0]) > 30
    assert u["KillSignal"] == ["SIGTERM"]
    assert u["StateDirectory"] == ["ociregistry"]  # /var/lib/ociregistry, the imagePath
    assert yaml.safe_load(systemd_readme_config())["imagePath"] == "/var/lib/ociregistry"
    assert u["ExecStart"] == ["/usr/local/bin/ociregistry serve --config-file /etc/ociregistry/registry-config.yaml"]


def test_systemd_unit_verifies(tmp_path):
    """`systemd-analyze verify` on the unit, pointed at the built binary."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: apt-get install -y systemd")
    text = (SYSTEMD / "ociregistry.service").read_text().replace("/usr/local/bin/ociregistry", str(ociregistry_bin()))
    path = tmp_path / "ociregistry.service"
    path.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    problems = [l for l in (r.stdout + r.stderr).splitlines() if "ociregistry.service" in l]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
    # The unit's command line is one the binary accepts.
    help_ = subprocess.run([str(ociregistry_bin()), "serve", "--config-file", "/dev/null", "--help"],
                           capture_output=True, text=True)
    assert help_.returncode == 0, help_.stderr


def test_dockerfile_promises():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) == 2 and stages[-1] in {"gcr.io/distroless/static-debian12:nonroot", "scratch"}
    assert re.search(r"^USER 65532:65532$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["/ociregistry/server"\]$', text, re.M)
    assert "COPY --from=build /ociregistry-server /ociregistry/server" in text
    assert "/var/lib/ociregistry" in text and "/var/ociregistry/config" in text
    # What the build copies is in the repository and passes the build's ignore file.
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text()
    for src in re.findall(r"^COPY (?!--)(.+) \S+$", text, re.M):
        for item in src.split():
            assert (ROOT / item).exists(), item
            assert f"!{item.rstrip('/')}" in ignore.replace("/\n", "\n"), f"{item} is excluded by Dockerfile.dockerignore"
