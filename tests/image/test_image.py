"""The container image, built without Docker and run by containerd.

deploy/build-image.sh builds the image (a static musl binary in one layer, written
with tar and gzip: no daemon). These tests check what is in it, that the same
inputs give the same digest, and then run it the way a node does: imported into a
throwaway containerd (Debian 1.6, its own root, state and socket in a temporary
directory) and started with `ctr run --net-host` and no command, so the image's
ENTRYPOINT and CMD are what runs. The running mirror is pulled through with skopeo
and containerd from a local CNCF `docker-registry` upstream on 127.0.0.1, and its
process must run as 65532:65532.

    deploy/build-image.sh --help
    .venv/bin/python -m pytest tests/image -q

The build takes the release profile (about 4 minutes on 2 cores the first time);
OCIREGISTRY_E2E_IMAGE_PROFILE picks another cargo profile, and
OCIREGISTRY_E2E_IMAGE_BINARY packages an already built static binary instead.
Runs as root (containerd and runc need it). Nothing is skipped: a missing tool
fails with the package to install.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "build-image.sh"
SOURCE = "https://example.com/ociregistry"  # --source: git has no remote in CI
DEBIAN_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
NONROOT = "65532"

# command -> Debian package
TOOLS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "openssl": "openssl",
    "readelf": "binutils",
    "tar": "tar",
    "gzip": "gzip",
    "git": "git",
}


def require(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None)
    if not path:
        pytest.fail(f"{tool} is not installed: apt-get install {TOOLS.get(tool, tool)}")
    return path


def run(cmd, *, check=True, timeout=120, **kw) -> subprocess.CompletedProcess:
    cmd = [str(c) for c in cmd]
    require(cmd[0])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        last = lambda text: "\n".join(text.splitlines()[-60:])  # noqa: E731 (cargo's output is long)
        pytest.fail(f"`{' '.join(cmd)}` exited {r.returncode}\n--- stdout\n{last(r.stdout)}\n--- stderr\n{last(r.stderr)}")
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_for(what: str, check, timeout=30.0, explain=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{what} within {timeout:.0f} s\n{explain()}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tail(path: Path, n=40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"({path}: {e})"


def cargo_package_version() -> str:
    text = (ROOT / "Cargo.toml").read_text()
    package = text.split("[package]", 1)[1].split("\n[", 1)[0]
    return re.search(r'^version\s*=\s*"([^"]+)"', package, re.M).group(1)


def git(*args) -> str:
    return run(["git", "-C", ROOT, *args]).stdout.strip()


# --------------------------------------------------------------------------
# Building


@dataclass
class Built:
    out: Path
    binary: Path
    digest: str  # sha256:...
    stdout: str

    @property
    def layout(self) -> Path:
        return self.out / "oci"

    def blob(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.split(":", 1)[1]

    def json_blob(self, digest: str) -> dict:
        return json.loads(self.blob(digest).read_bytes())

    @property
    def index(self) -> dict:
        return json.loads((self.layout / "index.json").read_bytes())

    @property
    def manifest(self) -> dict:
        return self.json_blob(self.digest)

    @property
    def config(self) -> dict:
        return self.json_blob(self.manifest["config"]["digest"])


def build(out: Path, *args, epoch: int, umask: str = "022") -> Built:
    r = run(["bash", "-c", f'umask {umask} && exec bash "$0" "$@"', SCRIPT, "--output", out, "--source", SOURCE, *args],
            env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}, timeout=1800)
    binary = re.search(r"^binary\s+(\S+)$", r.stdout, re.M)
    assert binary, r.stdout
    return Built(out, Path(binary.group(1)), (out / "digest").read_text().strip(), r.stdout)


@pytest.fixture(scope="session")
def epoch() -> int:
    return int(git("log", "-1", "--format=%ct"))


@pytest.fixture(scope="session")
def revision() -> str:
    return git("rev-parse", "HEAD")


@pytest.fixture(scope="session")
def image(tmp_path_factory, epoch, revision) -> Built:
    """The image as CI builds it: cargo builds the static binary, the script packages it."""
    for tool in ("tar", "gzip", "readelf", "git"):
        require(tool)
    if binary := os.environ.get("OCIREGISTRY_E2E_IMAGE_BINARY"):
        args = ["--binary", binary]
    else:
        args = ["--profile", os.environ.get("OCIREGISTRY_E2E_IMAGE_PROFILE", "release")]
    return build(tmp_path_factory.mktemp("image"), *args, epoch=epoch)


# --------------------------------------------------------------------------
# What the image is


def test_help_teaches():
    r = run(["bash", SCRIPT, "--help"])
    for word in ("--output", "--tag", "--profile", "--binary", "--ca-bundle", "SOURCE_DATE_EPOCH",
                 "ctr -n k8s.io images import", "agent/images", "musl-tools"):
        assert word in r.stdout, word
    bad = run(["bash", SCRIPT, "--no-such-flag"], check=False)
    assert bad.returncode != 0 and "--help" in bad.stderr


def test_layer_holds_the_promised_files(image, epoch, tmp_path):
    layers = image.manifest["layers"]
    assert [l["mediaType"] for l in layers] == ["application/vnd.oci.image.layer.v1.tar+gzip"]
    with tarfile.open(image.blob(layers[0]["digest"])) as t:
        members = {m.name.rstrip("/"): m for m in t.getmembers()}
        entries = {name: (m.type, oct(m.mode), m.uid, m.gid) for name, m in members.items()}
        assert entries == {
            "etc": (tarfile.DIRTYPE, "0o755", 0, 0),
            "etc/group": (tarfile.REGTYPE, "0o644", 0, 0),
            "etc/passwd": (tarfile.REGTYPE, "0o644", 0, 0),
            "etc/ssl": (tarfile.DIRTYPE, "0o755", 0, 0),
            "etc/ssl/certs": (tarfile.DIRTYPE, "0o755", 0, 0),
            "etc/ssl/certs/ca-certificates.crt": (tarfile.REGTYPE, "0o644", 0, 0),
            "ociregistry": (tarfile.DIRTYPE, "0o755", 0, 0),
            "ociregistry/server": (tarfile.REGTYPE, "0o755", 0, 0),
            "tmp": (tarfile.DIRTYPE, "0o1777", 0, 0),
            "var": (tarfile.DIRTYPE, "0o755", 0, 0),
            "var/lib": (tarfile.DIRTYPE, "0o755", 0, 0),
            "var/lib/ociregistry": (tarfile.DIRTYPE, "0o755", 65532, 65532),
            "var/ociregistry": (tarfile.DIRTYPE, "0o755", 0, 0),
            "var/ociregistry/config": (tarfile.DIRTYPE, "0o755", 0, 0),
        }
        assert {m.mtime for m in members.values()} == {epoch}
        read = lambda name: t.extractfile(members[name]).read()  # noqa: E731
        passwd, group = read("etc/passwd").decode(), read("etc/group").decode()
        server = read("ociregistry/server")
        ca = read("etc/ssl/certs/ca-certificates.crt")
    assert "nonroot:x:65532:65532:" in passwd and "nonroot:x:65532:" in group
    assert ca == DEBIAN_CA_BUNDLE.read_bytes(), "the CA bundle is Debian's ca-certificates"
    assert server == image.binary.read_bytes()
    # Static: no program interpreter, no shared libraries (there is no libc in the image).
    (tmp_path / "server").write_bytes(server)
    assert "program interpreter" not in run(["readelf", "-l", tmp_path / "server"]).stdout
    assert "(NEEDED)" not in run(["readelf", "-d", tmp_path / "server"]).stdout


def test_config_and_labels(image, epoch, revision):
    version = cargo_package_version()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    c = image.config
    assert (c["architecture"], c["os"], c["created"]) == ("amd64", "linux", created)
    cfg = c["config"]
    assert cfg["User"] == "65532:65532"
    assert cfg["Entrypoint"] == ["/ociregistry/server"] and cfg["Cmd"] == ["serve"]
    assert cfg["ExposedPorts"] == {"8080/tcp": {}}
    assert cfg["Volumes"] == {"/var/lib/ociregistry": {}}
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.revision"] == revision
    assert labels["org.opencontainers.image.created"] == created
    assert labels["org.opencontainers.image.source"] == SOURCE
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert image.manifest["annotations"] == labels
    layer = gzip.decompress(image.blob(image.manifest["layers"][0]["digest"]).read_bytes())
    assert c["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    # The name containerd files it under is the one the chart runs by default
    # (image.repository "ociregistry", tag = the chart's appVersion).
    app_version = re.search(r'^appVersion:\s*"?([^"\s]+)"?', (ROOT / "charts/ociregistry/Chart.yaml").read_text(),
                            re.M).group(1)
    assert app_version == version, "Chart.yaml appVersion and Cargo.toml version differ"
    [m] = image.index["manifests"]
    assert m["digest"] == image.digest and m["platform"] == {"architecture": "amd64", "os": "linux"}
    assert m["annotations"] == {"io.containerd.image.name": f"docker.io/library/ociregistry:{version}",
                                "org.opencontainers.image.ref.name": version}
    # Every blob is what its name says.
    for blob in (image.layout / "blobs" / "sha256").iterdir():
        assert sha256_file(blob) == blob.name
    # skopeo (containers/image) reads the OCI archive and the docker-archive as the same image.
    skopeo = ["skopeo", "--insecure-policy"]
    oci = json.loads(run([*skopeo, "inspect", f"oci-archive:{image.out / 'ociregistry.oci.tar'}"]).stdout)
    assert oci["Digest"] == image.digest
    docker = json.loads(run([*skopeo, "inspect", "--config",
                             f"docker-archive:{image.out / 'ociregistry.docker.tar'}"]).stdout)
    assert docker["rootfs"] == c["rootfs"] and docker["config"] == cfg


def test_same_inputs_same_digest(image, epoch, tmp_path):
    # The same binary, CA bundle, date and commit (the label; HEAD may have moved
    # since) in another output directory under another umask: the same bytes.
    same = ["--binary", image.binary, "--revision", image.config["config"]["Labels"]["org.opencontainers.image.revision"]]
    again = build(tmp_path / "again", *same, epoch=epoch, umask="077")
    assert again.digest == image.digest
    for name in ("ociregistry.oci.tar", "ociregistry.docker.tar"):
        assert sha256_file(again.out / name) == sha256_file(image.out / name), name
    later = build(tmp_path / "later", *same, epoch=epoch + 1)
    assert later.digest != image.digest, "SOURCE_DATE_EPOCH does not reach the image"


# --------------------------------------------------------------------------
# Running it: containerd, an upstream, the mirror in a container


class Containerd:
    """A private containerd: root, state and socket under `dir`."""

    def __init__(self, dir: Path):
        self.dir = dir
        self.sock = dir / "containerd.sock"
        self.log = dir / "containerd.log"
        self.hosts = dir / "certs.d"
        (self.hosts / "_default").mkdir(parents=True)
        dead = free_port()
        (dir / "config.toml").write_text(f"""version = 2
root = "{dir / 'root'}"
state = "{dir / 'state'}"
[grpc]
  address = "{self.sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "127.0.0.1:{dead}/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{self.hosts}"
""")
        require("runc")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([require("containerd"), "--config", dir / "config.toml"],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_for("containerd did not answer",
                 lambda: self.sock.exists() and self.ctr("version", check=False).returncode == 0,
                 explain=lambda: tail(self.log))

    def ctr(self, *args, ns="default", check=True, timeout=120):
        r = run(["ctr", "-a", self.sock, "-n", ns, *args], check=False, timeout=timeout)
        if check and r.returncode != 0:
            pytest.fail(f"ctr {' '.join(map(str, args))} exited {r.returncode}\n{r.stdout}{r.stderr}\n"
                        f"--- containerd log\n{tail(self.log)}")
        return r

    def stop(self):
        # Tasks outlive containerd (their shims do): kill and delete them first.
        for ns in self.ctr("namespaces", "ls", "-q", check=False).stdout.split():
            for task in self.ctr("tasks", "ls", "-q", ns=ns, check=False).stdout.split():
                self.ctr("tasks", "kill", "-s", "SIGKILL", task, ns=ns, check=False)
                for _ in range(50):
                    if self.ctr("tasks", "delete", task, ns=ns, check=False).returncode == 0:
                        break
                    time.sleep(0.1)
            for c in self.ctr("containers", "ls", "-q", ns=ns, check=False).stdout.split():
                self.ctr("containers", "delete", c, ns=ns, check=False)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def containerd(tmp_path_factory):
    c = Containerd(tmp_path_factory.mktemp("containerd"))
    yield c
    c.stop()


class Upstream:
    """Debian's docker-registry (CNCF distribution 2.8) on a free loopback port."""

    def __init__(self, dir: Path, tls: tuple[Path, Path] | None = None):
        self.log = dir / "registry.log"
        for _ in range(5):
            self.port = free_port()
            tls_yaml = f", tls: {{certificate: {tls[0]}, key: {tls[1]}}}" if tls else ""
            (dir / "config.yml").write_text(
                "version: 0.1\n"
                f"storage: {{filesystem: {{rootdirectory: {dir / 'data'}}}}}\n"
                f"http: {{addr: 127.0.0.1:{self.port}{tls_yaml}}}\n")
            with open(self.log, "wb") as log:
                self.proc = subprocess.Popen([require("docker-registry"), "serve", dir / "config.yml"],
                                             stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    time.sleep(0.1)
            self.stop()
        pytest.fail(f"docker-registry did not start\n{tail(self.log)}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    u = Upstream(tmp_path_factory.mktemp("upstream"))
    yield u
    u.stop()


class Mirror:
    """The image running under containerd with host networking."""

    def __init__(self, containerd: Containerd, ref: str, config: str, dir: Path):
        self.containerd, self.dir = containerd, dir
        self.id = f"mirror-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        conf = dir / "config"
        conf.mkdir()
        (conf / "registry-config.yaml").write_text(f"host: 127.0.0.1\nport: {self.port}\n{config}")
        # The container's user (65532) reads the mounted file.
        conf.chmod(0o755)
        (conf / "registry-config.yaml").chmod(0o644)
        self.log = dir / "container.log"
        # No command: the image's ENTRYPOINT and CMD (`/ociregistry/server serve`) run;
        # the config file is where the chart mounts it, named by OCIREGISTRY_CONFIG.
        containerd.ctr("run", "-d", "--net-host", "--log-uri", f"file://{self.log}",
                       "--env", "OCIREGISTRY_CONFIG=/var/ociregistry/config/registry-config.yaml",
                       "--mount", f"type=bind,src={conf},dst=/var/ociregistry/config,options=rbind:ro",
                       ref, self.id, ns="k8s.io")
        wait_for(f"the mirror in container {self.id} did not answer GET /v2/",
                 lambda: http_get(self.port, "/v2/")[0] == 200, explain=self.explain)

    def explain(self) -> str:
        tasks = self.containerd.ctr("tasks", "ls", ns="k8s.io", check=False).stdout
        return f"--- tasks\n{tasks}--- container log\n{tail(self.log)}\n--- containerd log\n{tail(self.containerd.log)}"

    @property
    def pid(self) -> int:
        out = self.containerd.ctr("tasks", "ps", self.id, ns="k8s.io").stdout.split()
        pids = [int(w) for w in out if w.isdigit()]
        assert len(pids) == 1, out
        return pids[0]

    def stop(self):
        self.containerd.ctr("tasks", "kill", "-s", "SIGKILL", self.id, ns="k8s.io", check=False)
        for _ in range(50):
            if self.containerd.ctr("tasks", "delete", self.id, ns="k8s.io", check=False).returncode == 0:
                break
            time.sleep(0.1)
        self.containerd.ctr("containers", "delete", self.id, ns="k8s.io", check=False)


@pytest.fixture(scope="module")
def imported(image, containerd) -> str:
    """The OCI archive imported the way a node without registry access loads it."""
    out = containerd.ctr("images", "import", image.out / "ociregistry.oci.tar", ns="k8s.io").stdout
    ref = f"docker.io/library/ociregistry:{cargo_package_version()}"
    listed = containerd.ctr("images", "ls", ns="k8s.io").stdout
    line = next((l for l in listed.splitlines() if l.startswith(ref + " ")), None)
    assert line and image.digest in line, f"{out}\n{listed}"
    return ref


@pytest.fixture(scope="module")
def mirror(containerd, imported, upstream, tmp_path_factory):
    m = Mirror(containerd, imported,
               f"registries:\n  - name: upstream.test\n    endpoint: http://127.0.0.1:{upstream.port}\n",
               tmp_path_factory.mktemp("mirror"))
    yield m
    m.stop()


def status_ids(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.split() for k, v in (l.split(":", 1) for l in lines) if k in ("Uid", "Gid", "Groups")}


def test_runs_entrypoint_and_cmd_as_65532(mirror):
    pid = mirror.pid
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1] == [b"/ociregistry/server", b"serve"]
    ids = status_ids(pid)
    assert ids["Uid"] == [NONROOT] * 4 and ids["Gid"] == [NONROOT] * 4, ids
    assert ids["Groups"] in ([], [NONROOT]), ids
    # The start-up banner says so too.
    assert re.search(r"\bready\b.* uid=65532 gid=65532 ", tail(mirror.log)), tail(mirror.log)


def test_pulls_through_the_container(image, mirror, upstream, containerd, tmp_path):
    skopeo = ["skopeo", "--insecure-policy"]
    # Seed the upstream with a real image: this one.
    run([*skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
         f"oci-archive:{image.out / 'ociregistry.oci.tar'}",
         f"docker://127.0.0.1:{upstream.port}/mirror/ociregistry:v1"])
    # skopeo through the mirror (the registry is the path's first component).
    src = f"docker://127.0.0.1:{mirror.port}/upstream.test/mirror/ociregistry:v1"
    raw = run([*skopeo, "inspect", "--raw", "--tls-verify=false", src]).stdout.encode()
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == image.digest
    run([*skopeo, "copy", "--preserve-digests", "--src-tls-verify=false", src, f"oci:{tmp_path / 'pulled'}:v1"])
    pulled = tmp_path / "pulled" / "blobs" / "sha256"
    assert sorted(p.name for p in pulled.iterdir()) == sorted(p.name for p in (image.layout / "blobs/sha256").iterdir())
    for blob in pulled.iterdir():
        assert blob.read_bytes() == image.blob("sha256:" + blob.name).read_bytes(), blob.name
    # containerd through the mirror, as a node pulls (`?ns=upstream.test`).
    hosts = containerd.hosts / "_default" / "hosts.toml"
    hosts.write_text(f'server = "http://127.0.0.1:{free_port()}"\n\n'
                     f'[host."http://127.0.0.1:{mirror.port}"]\n  capabilities = ["pull", "resolve"]\n')
    containerd.ctr("images", "pull", "--hosts-dir", containerd.hosts, "upstream.test/mirror/ociregistry:v1",
                   ns="pulled")
    listed = containerd.ctr("images", "ls", ns="pulled").stdout
    assert image.digest in listed, listed
    # The cache is the image's /var/lib/ociregistry, written by the server as 65532.
    cache = Path(f"/proc/{mirror.pid}/root/var/lib/ociregistry")
    layer_hex = image.manifest["layers"][0]["digest"].split(":")[1]
    cached = [p for p in cache.rglob("*") if p.is_file() and layer_hex in p.name]
    assert cached, sorted(str(p) for p in cache.rglob("*"))
    assert all((p.stat().st_uid, p.stat().st_gid) == (65532, 65532) for p in cached)


def test_version_runs_in_the_image(containerd, imported):
    r = containerd.ctr("run", "--rm", imported, f"version-{uuid.uuid4().hex[:8]}", "/ociregistry/server", "version",
                       ns="k8s.io")
    assert r.stdout.startswith(f"ociregistry {cargo_package_version()} ("), r.stdout


def test_digest_pinned_import(image, containerd):
    """A chart with image.digest makes the kubelet look up NAME@DIGEST: the import
    README gives for it files the image under that name too."""
    containerd.ctr("images", "import", "--base-name", "docker.io/library/ociregistry", "--digests",
                   image.out / "ociregistry.oci.tar", ns="pinned")
    names = containerd.ctr("images", "ls", "-q", ns="pinned").stdout.split()
    assert f"docker.io/library/ociregistry:{cargo_package_version()}" in names, names
    assert f"docker.io/library/ociregistry@{image.digest}" in names, names


def test_docker_archive_imports_and_runs(image, containerd):
    containerd.ctr("images", "import", image.out / "ociregistry.docker.tar", ns="docker")
    ref = f"docker.io/library/ociregistry:{cargo_package_version()}"
    assert ref in containerd.ctr("images", "ls", "-q", ns="docker").stdout.split()
    r = containerd.ctr("run", "--rm", ref, f"version-{uuid.uuid4().hex[:8]}", "/ociregistry/server", "version",
                       ns="docker")
    assert r.stdout.startswith("ociregistry "), r.stdout


def test_the_ca_bundle_is_the_trust_store(image, containerd, imported, epoch, tmp_path):
    """An upstream signed by a private CA is trusted by an image built with
    --ca-bundle holding that CA (and no `tls.ca` in the config), and not by the
    image with Debian's bundle: the server reads /etc/ssl/certs/ca-certificates.crt."""
    pki = tmp_path / "pki"
    pki.mkdir()
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(["openssl", "req", "-x509", *key, "-keyout", pki / "ca.key", "-out", pki / "ca.crt", "-days", "2",
         "-subj", "/CN=ociregistry image test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"])
    run(["openssl", "req", *key, "-keyout", pki / "srv.key", "-out", pki / "srv.csr", "-subj", "/CN=127.0.0.1"])
    (pki / "ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run(["openssl", "x509", "-req", "-in", pki / "srv.csr", "-CA", pki / "ca.crt", "-CAkey", pki / "ca.key",
         "-CAcreateserial", "-out", pki / "srv.crt", "-days", "2", "-extfile", pki / "ext"])
    (tmp_path / "up").mkdir()
    up = Upstream(tmp_path / "up", tls=(pki / "srv.crt", pki / "srv.key"))
    mirrors = []
    try:
        certs = tmp_path / "certs"
        certs.mkdir()
        shutil.copy(pki / "ca.crt", certs / "ca.crt")
        run(["skopeo", "--insecure-policy", "copy", "--dest-cert-dir", certs,
             f"oci-archive:{image.out / 'ociregistry.oci.tar'}", f"docker://127.0.0.1:{up.port}/tls/img:v1"])
        private = build(tmp_path / "private", "--binary", image.binary, "--ca-bundle", pki / "ca.crt",
                        "--tag", "ociregistry-private-ca:test", epoch=epoch)
        containerd.ctr("images", "import", private.out / "ociregistry.oci.tar", ns="k8s.io")
        config = f"registries:\n  - name: tls.test\n    endpoint: https://127.0.0.1:{up.port}\n"
        for ref in ("docker.io/library/ociregistry-private-ca:test", imported):
            (tmp_path / ref.split("/")[-1]).mkdir()
            mirrors.append(Mirror(containerd, ref, config, tmp_path / ref.split("/")[-1]))
        trusting, debian = mirrors
        path = "/v2/tls.test/tls/img/manifests/v1"
        status, body = http_get(trusting.port, path)
        assert status == 200, f"{status} {body[:300]!r}\n{trusting.explain()}"
        assert "sha256:" + hashlib.sha256(body).hexdigest() == image.digest
        status, body = http_get(debian.port, path)
        assert status >= 500, f"Debian's bundle trusted the private CA: {status} {body[:300]!r}"
        assert "UnknownIssuer" in tail(debian.log, 200), debian.explain()
    finally:
        for m in mirrors:
            m.stop()
        up.stop()
