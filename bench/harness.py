#!/usr/bin/env python3
"""The harness behind bench/run.sh (which checks the tools, builds bench/loadgen.c
and cleans up): starts the servers, runs the workloads, writes the table.
Python 3 standard library only. `bench/run.sh --help` describes it all."""
import argparse, concurrent.futures, datetime, hashlib, http.client, json, os, platform, shutil
import signal, socket, statistics, subprocess, sys, threading, time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
SERVERS = ("ociregistry", "nginx", "docker-registry")
UPSTREAM_NAME = "up.bench"  # the registry name mkcache.py's images.txt uses
ACCEPT_ANY = ("application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, "
              "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
ACCEPT_MANIFEST = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"

HELP = """\
Warm and cold serving benchmark: ociregistry (ours) against nginx serving the same
bytes at the same URL paths with sendfile (the ceiling) and Debian's docker-registry
(distribution 2.8) in proxy mode (the incumbent), all warm, side by side. An upstream
docker-registry holds IMAGES generated images (OCI index -> linux/amd64 manifest ->
config + 3 layers of 1-64 KiB) plus bench/big (a BIG_MIB layer and a 50 KiB one) and
bench/cold (a COLD_MIB layer + 2 small ones); ours is filled with `ociregistry load`,
docker-registry's proxy by fetching every path once (which also checks every byte
served by all three servers).

Workloads (each run interleaves the servers, rotating their order; the table shows
medians over the runs and the ratios ours/nginx and ours/docker-registry):
  1. HEAD manifest by tag (an index), CONNS connections, SECS s: req/s     [loadgen]
  2. GET manifest by digest, CONNS connections: req/s                     [wrk]
  3. GET 50 KiB blob, CONNS connections: req/s                            [wrk]
  4. BIG_MIB blob to 4 concurrent curl clients: aggregate MB/s, median and best
  5. IMAGES warm image pulls, 7 requests each (HEAD index by tag, GET index by
     digest, GET amd64 manifest, GET config, GET 3 layers), every image in turn,
     CONNS connections: images/s = req/s / 7                              [loadgen]
  6. cold pull of bench/cold with skopeo through a fresh mirror (empty cache, new
     instance each run) against skopeo straight from the upstream: seconds, the
     ratio mirror/direct (target <= 1.05) and the requests the upstream saw
  7. RSS (VmRSS; nginx master + workers): 1 s after start, and after workload 4
  8. start-up (spawn to first 200, raw-socket polling, median of STARTS starts):
     to /v2/ and to a cached manifest by tag with the IMAGES cache, and to /v2/
     with an empty cache
wrk cannot do HEAD (wrk 4.1 waits for a body after a HEAD that has a Content-Length,
as every registry's has), so workloads 1 and 5 use bench/loadgen.c, a one-epoll-loop-
per-thread C client that matches wrk within a few percent on GETs.
Any non-2xx response, wrong bytes, short download or a server failing to start makes
the run exit 1 (the table is still written, failed cells marked ERR).

Environment (flags win): BIN (target/release/ociregistry), RUNS (3), SECS (10),
CONNS (32), THREADS (2: client threads for wrk and loadgen), IMAGES (1500),
BIG_MIB (256), COLD_MIB (64), STARTS (5), BENCH_WORK (a work dir kept between runs:
the generated images, ours' cache and docker-registry's storage are reused when the
sizes match; default a temporary dir removed at exit unless --keep).
--quick: IMAGES=20, SECS=1, RUNS=1, BIG_MIB=16, COLD_MIB=8, STARTS=3 (under ~90 s),
for CI to check the harness works; its numbers mean little.
Results: bench/results/YYYY-MM-DD-HHMM[-quick].md (or --out FILE), also printed.
"""


def env_int(name, default):
    return int(os.environ.get(name, default))


def parse_args():
    p = argparse.ArgumentParser(prog="bench/run.sh", description=HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small and short: check the harness runs (CI)")
    p.add_argument("--runs", type=int, default=env_int("RUNS", 3), help="runs per workload (median taken)")
    p.add_argument("--secs", type=int, default=env_int("SECS", 10), help="seconds per load workload (1, 2, 3, 5)")
    p.add_argument("--conns", type=int, default=env_int("CONNS", 32), help="connections (1, 2, 3, 5)")
    p.add_argument("--threads", type=int, default=env_int("THREADS", 2), help="client threads (wrk, loadgen)")
    p.add_argument("--images", type=int, default=env_int("IMAGES", 1500), help="images in the warm cache")
    p.add_argument("--big-mib", type=int, default=env_int("BIG_MIB", 256), help="blob size of workload 4")
    p.add_argument("--cold-mib", type=int, default=env_int("COLD_MIB", 64), help="big layer of workload 6")
    p.add_argument("--starts", type=int, default=env_int("STARTS", 5), help="starts per start-up measurement")
    p.add_argument("--out", help="results file (default bench/results/YYYY-MM-DD-HHMM.md)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (run.sh prints where)")
    p.add_argument("--work", required=True, help=argparse.SUPPRESS)
    p.add_argument("--loadgen", required=True, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.quick:
        a.images, a.secs, a.runs, a.big_mib, a.cold_mib, a.starts = 20, 1, 1, 16, 8, 3
    a.bin = os.path.abspath(os.environ.get("BIN", os.path.join(REPO, "target/release/ociregistry")))
    a.out = a.out or default_out(a.quick)
    return a


def default_out(quick):
    """bench/results/YYYY-MM-DD-HHMM[-quick].md, never an earlier run's file."""
    stem = os.path.join(BENCH, "results", datetime.datetime.now().strftime("%Y-%m-%d-%H%M") + ("-quick" if quick else ""))
    path, n = stem + ".md", 1
    while os.path.exists(path):
        n += 1
        path = f"{stem}-{n}.md"
    return path


def log(msg):
    print(msg, flush=True)


class Fatal(Exception):
    """Something the benchmark cannot go on without (a server that does not start)."""


# ---------------------------------------------------------------- processes

class Procs:
    """Every process started, so that all of them are stopped whatever happens.
    PIDs also go to a file: run.sh's trap kills them if this script dies hard."""

    def __init__(self, pidfile):
        self.pidfile, self.live = pidfile, []

    def spawn(self, argv, logfile):
        with open(logfile, "ab") as out:
            # A new session: a Ctrl-C in the terminal reaches us, not the servers
            # (we stop them in order, and nginx would otherwise die first).
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        p.logfile = logfile
        self.live.append(p)
        with open(self.pidfile, "a") as f:
            f.write(f"{p.pid}\n")
        return p

    def stop(self, p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.live:
            self.live.remove(p)

    def stop_all(self):
        for p in list(self.live):
            self.stop(p)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def wait_http(proc, port, path="/v2/", timeout=30):
    """Wait for a 200 on PATH; a process that exits first is fatal, with its log."""
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Fatal(f"{proc.args[0]} exited ({proc.returncode}) before answering; its log:\n{tail(proc.logfile)}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path)
            last = f"HTTP {c.getresponse().status}"
            if last == "HTTP 200":
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise Fatal(f"{proc.args[0]}: {last} on {path} for {timeout} s; its log:\n{tail(proc.logfile)}")


def rss_mib(pid):
    """VmRSS of PID plus its children (nginx's workers), MiB."""
    pids = [pid] + [int(d) for d in os.listdir("/proc") if d.isdigit() and ppid(d) == pid]
    kib = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                kib += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return kib / 1024


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, ValueError, IndexError):
        return 0


def settle(procs, quiet=0.2, timeout=10):
    """Wait until no process of ours (servers, upstream, nginx workers) used CPU for
    QUIET seconds: a slow server still works through the requests in flight when a
    load client stops, which would land in the next server's measurement."""
    pids = [p.pid for p in procs.live]
    pids += [int(d) for d in os.listdir("/proc") if d.isdigit() and ppid(d) in pids]
    deadline = time.monotonic() + timeout
    before = [cpu_ticks(p) for p in pids]
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = [cpu_ticks(p) for p in pids]
        if now == before:
            return
        before = now


def ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


# ---------------------------------------------------------------- servers

def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def registry_config(run, name, storage, port, proxy_port=None, level="info"):
    """docker-registry's config: upload purging off (a background walk we do not
    want mid-measurement); proxy mode when PROXY_PORT is given."""
    proxy = f"proxy: {{remoteurl: http://127.0.0.1:{proxy_port}}}\n" if proxy_port else ""
    return write(f"{run}/{name}.yml", f"""version: 0.1
storage: {{filesystem: {{rootdirectory: {storage}}}, maintenance: {{uploadpurging: {{enabled: false}}}}}}
http: {{addr: 127.0.0.1:{port}}}
log: {{level: {level}}}
{proxy}""")


def ours_config(run, name, cache, port, upstream):
    """As a deployment would run it (and as warm.sh does): logLevel info, the
    access log going to a file (stderr redirected there)."""
    return write(f"{run}/{name}.yaml", f"""imagePath: {cache}
host: 127.0.0.1
port: {port}
logLevel: info
defaultNs: {UPSTREAM_NAME}
registries:
  - {{name: {UPSTREAM_NAME}, endpoint: "http://127.0.0.1:{upstream}"}}
""")


def nginx_config(run, www, port):
    """The ceiling: nginx at its best here (a worker per core, sendfile, no access
    log, unlimited keep-alive); temp paths in the work dir so no root is needed."""
    temps = "\n".join(f"  {k}_temp_path {run}/nginx-{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # As root, workers would run as nobody, who cannot read a mktemp (0700) work dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return write(f"{run}/nginx.conf", f"""{user}worker_processes auto;
daemon off;
pid {run}/nginx.pid;
error_log {run}/nginx.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on; keepalive_requests 1000000;
  default_type application/octet-stream;
{temps}
  server {{
    listen 127.0.0.1:{port};
    root {www};
    location ~ /manifests/ {{ default_type application/vnd.oci.image.index.v1+json; }}
  }}
}}
""")


def start_ours(ctx, name, cache, port=None):
    port = port or free_port()
    cfg = ours_config(ctx.run, name, cache, port, ctx.upstream_port)
    p = ctx.procs.spawn([ctx.args.bin, "serve", "--config-file", cfg], f"{ctx.run}/{name}.log")
    wait_http(p, port)
    return p, port


def start_registry(ctx, name, storage, port=None):
    port = port or free_port()
    cfg = registry_config(ctx.run, name, storage, port, proxy_port=ctx.upstream_port)
    p = ctx.procs.spawn(["docker-registry", "serve", cfg], f"{ctx.run}/{name}.log")
    wait_http(p, port)
    return p, port


# ---------------------------------------------------------------- data

def ensure_data(ctx):
    """Generate the images (once per size combination under the work dir), start the
    upstream on them, and fill ours' cache with `ociregistry load` (it skips what is
    cached, so a kept work dir costs only the check)."""
    a = ctx.args
    data = f"{a.work}/data-{a.images}-{a.big_mib}-{a.cold_mib}"
    if not os.path.exists(f"{data}/meta.json"):
        shutil.rmtree(data, ignore_errors=True)
        log(f"generating {a.images} images + big ({a.big_mib} MiB) + cold ({a.cold_mib} MiB) in {data}")
        r = subprocess.run([sys.executable, f"{BENCH}/mkcache.py", data, str(a.images), str(a.big_mib << 20),
                            str(a.cold_mib << 20)])
        if r.returncode != 0:
            raise Fatal("mkcache.py failed")
    with open(f"{data}/meta.json") as f:
        ctx.meta = json.load(f)
    ctx.data = data
    ctx.upstream_port = free_port()
    # The upstream keeps its access log (level error hides the rest): workload 6
    # counts its lines to see how many requests a pull cost it.
    cfg = registry_config(ctx.run, "upstream", f"{data}/upstream", ctx.upstream_port, level="error")
    ctx.upstream = ctx.procs.spawn(["docker-registry", "serve", cfg], f"{ctx.run}/upstream.log")
    wait_http(ctx.upstream, ctx.upstream_port)
    log(f"loading ours' cache: ociregistry load of {a.images + 1} images")
    t = time.monotonic()
    cfg = ours_config(ctx.run, "load", f"{data}/ours-cache", 0, ctx.upstream_port)
    r = subprocess.run([a.bin, "--config-file", cfg, "load", "--image-file", f"{data}/images.txt", "--platform", "all",
                        "--parallel", "8"], stdout=subprocess.DEVNULL, stderr=open(f"{ctx.run}/load.log", "wb"))
    if r.returncode != 0:
        raise Fatal(f"ociregistry load failed ({r.returncode}):\n{tail(ctx.run + '/load.log')}")
    log(f"  loaded in {time.monotonic() - t:.1f} s")


def image_requests(meta, img, head_tag=True):
    """The requests of one warm pull, with the digest each body must have (None: HEAD)."""
    name = img["name"]
    reqs = [("HEAD" if head_tag else "GET", f"/v2/{name}/manifests/v1", ACCEPT_ANY, None if head_tag else img["index"]),
            ("GET", f"/v2/{name}/manifests/{img['index']}", ACCEPT_ANY, img["index"]),
            ("GET", f"/v2/{name}/manifests/{img['manifest']}", ACCEPT_MANIFEST, img["manifest"])]
    reqs += [("GET", f"/v2/{name}/blobs/{d}", None, d) for d in [img["config"]] + img["layers"]]
    return reqs


def raw_requests(path, reqs):
    """Write requests in loadgen's format: raw HTTP/1.1, back to back."""
    with open(path, "w") as f:
        for method, p, accept, _ in reqs:
            f.write(f"{method} {p} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + (f"Accept: {accept}\r\n" if accept else "") + "\r\n")
    return path


def fetch_all(port, reqs, workers=16):
    """Send every request once (16 keep-alive connections); check status 200 and that
    each body hashes to its digest. Returns the failures. This warms docker-registry's
    proxy and proves all three servers serve the same bytes."""
    local = threading.local()

    def one(req):
        method, path, accept, want = req
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            local.conn.request(method, path, headers={"Accept": accept} if accept else {})
            r = local.conn.getresponse()
            h = hashlib.sha256()
            while chunk := r.read(1 << 20):
                h.update(chunk)
        except (OSError, http.client.HTTPException) as e:
            local.conn = None
            return f"{method} {path}: {e!r}"
        if r.status != 200:
            return f"{method} {path}: HTTP {r.status}"
        if want and "sha256:" + h.hexdigest() != want:
            return f"{method} {path}: wrong bytes (sha256:{h.hexdigest()})"
        return None

    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        return [e for e in ex.map(one, reqs) if e]


# ---------------------------------------------------------------- workloads

def run_loadgen(ctx, port, reqfile):
    a = ctx.args
    out = subprocess.run([a.loadgen, "-p", str(port), "-t", str(a.threads), "-c", str(a.conns), "-d", str(a.secs),
                          "-f", reqfile], capture_output=True, text=True)
    if out.returncode != 0:
        return None, f"loadgen failed: {out.stderr.strip()}"
    r = json.loads(out.stdout)
    if r["non2xx"] or r["errors"] or not r["requests"]:
        return None, (f"{r['requests']} requests, {r['non2xx']} non-2xx (first: {r['first_non2xx']}), "
                      f"{r['errors']} connection errors")
    return r["rps"], None


def run_wrk(ctx, url, accept):
    """wrk with a done() that prints its summary as JSON. No response() callback:
    that makes wrk hand every body to Lua; wrk counts statuses >= 400 itself."""
    a = ctx.args
    # --timeout: wrk's 2 s default would count docker-registry's slowest answers as errors.
    cmd = ["wrk", "-t", str(a.threads), "-c", str(a.conns), "-d", f"{a.secs}s", "--timeout", "30s", "-s", ctx.wrk_lua]
    if accept:
        cmd += ["-H", f"Accept: {accept}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("{")), None)
    if out.returncode != 0 or not line:
        return None, f"wrk failed: {out.stdout.strip()} {out.stderr.strip()}"
    r = json.loads(line)
    if r["status_errors"] or r["socket_errors"] or not r["requests"]:
        return None, f"{r['requests']} requests, {r['status_errors']} statuses >= 400, {r['socket_errors']} socket errors"
    return r["requests"] / r["seconds"], None


WRK_LUA = """-- Written by bench/harness.py: wrk's summary as one JSON line.
function done(s, latency, requests)
  local e = s.errors
  io.write(string.format('{"requests": %d, "seconds": %.6f, "status_errors": %d, "socket_errors": %d}\\n',
    s.requests, s.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def big_blob(ctx, port):
    """4 curl clients download the big blob at once; MB/s = 4 x size / wall time."""
    big = ctx.meta["big"]
    url = f"http://127.0.0.1:{port}/v2/{big['name']}/blobs/{big['big_blob']}"
    t = time.monotonic()
    ps = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url],
                           stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate()[0].split() for p in ps]
    took = time.monotonic() - t
    bad = [o for o in outs if o != ["200", str(big["big_size"])]]
    if bad:
        return None, f"curl got (status, bytes) {bad}, wanted 200 and {big['big_size']} bytes"
    return 4 * big["big_size"] / took / 1e6, None


def upstream_requests(ctx):
    """Requests in the upstream's access log so far."""
    with open(ctx.upstream.logfile, errors="replace") as f:
        return sum(1 for l in f if '"GET ' in l or '"HEAD ' in l)


def cold_pull(ctx, who, run_no):
    """skopeo copy of bench/cold into a new OCI dir: from the upstream directly, or
    through a new mirror instance with an empty cache. Returns (seconds, upstream
    requests during the copy)."""
    tag = f"{who}-{run_no}"
    proc = None
    if who == "direct":
        port = ctx.upstream_port
    elif who == "ociregistry":
        proc, port = start_ours(ctx, f"cold-{tag}", f"{ctx.run}/cold-{tag}")
    else:
        proc, port = start_registry(ctx, f"cold-{tag}", f"{ctx.run}/cold-{tag}")
    dest = f"{ctx.run}/pulled-{tag}"
    before = upstream_requests(ctx)
    t = time.monotonic()
    r = subprocess.run(["skopeo", "copy", "-q", "--insecure-policy", "--src-tls-verify=false",
                        f"docker://127.0.0.1:{port}/bench/cold:v1", f"oci:{dest}:v1"], capture_output=True, text=True)
    took = time.monotonic() - t
    settle(ctx.procs)  # anything the mirror still does upstream counts too
    count = upstream_requests(ctx) - before
    if proc:
        ctx.procs.stop(proc)
        shutil.rmtree(f"{ctx.run}/cold-{tag}", ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    if r.returncode != 0:
        return None, None, f"skopeo copy failed: {r.stderr.strip()}"
    return took, count, None


def poll_status(port, request, t0, proc, timeout=60):
    """Milliseconds from T0 to the first 200 for REQUEST: connect, send, read the
    status line; refused or not 200 -> try again at once (a tight loop, on purpose)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = socket.socket()
        s.settimeout(10)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(request)
            status = s.recv(64).split(b" ", 2)
            if len(status) > 1 and status[1] == b"200":
                return (time.monotonic() - t0) * 1000
        except OSError:
            if proc.poll() is not None:
                raise Fatal(f"{proc.args[0]} exited during start-up; its log:\n{tail(proc.logfile)}")
        finally:
            s.close()
    raise Fatal(f"{proc.args[0]}: no 200 in {timeout} s at start-up; its log:\n{tail(proc.logfile)}")


def startup(ctx, who, cache):
    """Spawn WHO on CACHE (None: a new empty one); ms to /v2/ 200 and, with a
    cache, to a cached manifest by tag 200."""
    port = free_port()
    empty = cache is None
    name = f"start-{'empty-' if empty else ''}{who}"
    if empty:
        cache = f"{ctx.run}/{name}-cache"
        shutil.rmtree(cache, ignore_errors=True)
    if who == "ociregistry":
        argv = [ctx.args.bin, "serve", "--config-file", ours_config(ctx.run, name, cache, port, ctx.upstream_port)]
    else:
        argv = ["docker-registry", "serve", registry_config(ctx.run, name, cache, port, proxy_port=ctx.upstream_port)]
    v2 = b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    manifest = (f"GET /v2/bench/app0001/manifests/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {ACCEPT_ANY}\r\n"
                "Connection: close\r\n\r\n").encode()
    t0 = time.monotonic()
    p = ctx.procs.spawn(argv, f"{ctx.run}/{name}.log")
    try:
        ms_v2 = poll_status(port, v2, t0, p)
        ms_manifest = None if empty else poll_status(port, manifest, t0, p)
    finally:
        ctx.procs.stop(p)
    return ms_v2, ms_manifest


# ---------------------------------------------------------------- results

# Row key, label, unit, which way is better. {images} etc. filled in from the args.
ROWS = [
    ("head", "1. HEAD manifest by tag, {conns} conns", "req/s", "higher"),
    ("manifest", "2. GET manifest by digest, {conns} conns", "req/s", "higher"),
    ("blob", "3. GET 50 KB blob, {conns} conns", "req/s", "higher"),
    ("big", "4. {big_mib} MiB blob × 4 clients, median", "MB/s", "higher"),
    ("big_best", "4. {big_mib} MiB blob × 4 clients, best", "MB/s", "higher"),
    ("pulls", "5. {images:,} warm image pulls, 7 requests each", "images/s", "higher"),
    ("cold", "6. cold pull, {cold_mib} MiB image (direct: {direct_s} s)", "s", "lower"),
    ("cold_ratio", "6. cold pull, mirror / direct (target ≤ 1.05)", "×", "lower"),
    ("cold_upstream", "6. upstream requests in the cold pull (direct: {direct_n})", "requests", "lower"),
    ("rss_idle", "7. RSS idle, 1 s after start", "MiB", "lower"),
    ("rss_big", "7. RSS after workload 4", "MiB", "lower"),
    ("start_v2", "8. start-up to /v2/ 200, {images:,}-image cache", "ms", "lower"),
    ("start_manifest", "8. start-up to cached manifest 200, {images:,}-image cache", "ms", "lower"),
    ("start_empty", "8. start-up to /v2/ 200, empty cache", "ms", "lower"),
]
PRECISION = {"req/s": 0, "MB/s": 0, "images/s": 0, "s": 2, "×": 2, "requests": 0, "MiB": 1, "ms": 1}


class Results:
    def __init__(self):
        self.values = {}   # (row, server) -> [value per run]
        self.errors = []   # "row server: message"

    def add(self, row, server, value, error=None):
        if error:
            self.errors.append(f"{row} {server}: {error}")
            log(f"  ERROR {row} {server}: {error}")
            self.values.setdefault((row, server), []).append(None)
        else:
            self.values.setdefault((row, server), []).append(value)

    def median(self, row, server):
        vs = self.values.get((row, server))
        if not vs:
            return None
        if any(v is None for v in vs):
            return "ERR"
        return statistics.median(vs)


def fmt(v, unit):
    if v is None:
        return "—"
    if v == "ERR":
        return "ERR"
    return f"{v:,.{PRECISION[unit]}f}"


def ratio(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return f"{a / b:.2f}"
    return "—"


def table(ctx, res, started):
    a = ctx.args
    direct = res.median("cold", "direct")
    direct_n = res.median("cold_upstream", "direct")
    fill = dict(conns=a.conns, big_mib=a.big_mib, images=a.images, cold_mib=a.cold_mib,
                direct_s=fmt(direct, "s"), direct_n=fmt(direct_n, "requests"))
    out = ["| Workload | Unit | Better | ociregistry | nginx | docker-registry | ours/nginx | ours/docker-registry |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
    for key, label, unit, better in ROWS:
        ours, ngx, reg = (res.median(key, s) for s in SERVERS)
        out.append(f"| {label.format(**fill)} | {unit} | {better} | {fmt(ours, unit)} | {fmt(ngx, unit)} | "
                   f"{fmt(reg, unit)} | {ratio(ours, ngx)} | {ratio(ours, reg)} |")
    version = subprocess.run([a.bin, "version"], capture_output=True, text=True).stdout.strip()
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().replace("nginx version: ", "")
    reg_v = subprocess.run(["docker-registry", "--version"], capture_output=True, text=True).stdout.split()[-1:]
    took = time.monotonic() - started
    out += ["",
            f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, Linux {platform.release()}; "
            f"medians of {a.runs} run(s), servers interleaved in rotating order; {a.secs} s per load workload, "
            f"{a.conns} connections, {a.threads} client threads; whole benchmark {took / 60:.1f} min"
            f"{' (--quick: the numbers mean little)' if a.quick else ''}.",
            f"- ociregistry {version}: logLevel info, access log to a file (stderr redirected), "
            f"cache filled by `ociregistry load`.",
            f"- nginx {nginx_v}: worker_processes auto, sendfile, access_log off, the same files "
            f"(blobs symlinked to the upstream's storage).",
            f"- docker-registry {' '.join(reg_v)} in proxy mode, log level info with its access log to a file, "
            f"warmed by fetching every path once. It asks the upstream about a tag on every manifest-by-tag "
            f"request (by design), so rows 1 and 5 include an upstream round trip for it.",
            "- Clients: bench/loadgen.c for 1 and 5 (wrk cannot do HEAD), wrk for 2 and 3, 4 curl processes for 4, "
            "skopeo copy to an OCI dir for 6 (a new mirror with an empty cache per run). Ratios are ours / other of "
            "the medians: above 1 is better for req/s, MB/s, images/s; below 1 for s, ms, MiB.",
            "- The client runs on the same cores as the servers: compare ratios, not absolute numbers."]
    raw = ["", "<details><summary>Every run</summary>", "", "| Row | Server | Values |", "|---|---|---|"]
    for key, label, unit, _ in ROWS:
        for s in SERVERS + ("direct",):
            vs = res.values.get((key, s))
            if vs:
                raw.append(f"| {key} | {s} | {', '.join(fmt(v, unit) if v is not None else 'ERR' for v in vs)} |")
    raw.append("</details>")
    if res.errors:
        raw += ["", "Errors:", ""] + [f"- {e}" for e in res.errors]
    return "\n".join(out + raw) + "\n"


# ---------------------------------------------------------------- main

class Ctx:
    """What the steps share: args, work dirs, processes, the upstream, the metadata."""


def main():
    args = parse_args()
    started = time.monotonic()
    ctx = Ctx()
    ctx.args = args
    ctx.run = f"{args.work}/run"
    shutil.rmtree(ctx.run, ignore_errors=True)
    os.makedirs(ctx.run)
    ctx.procs = Procs(f"{ctx.run}/pids")
    # Measure a copy: a `cargo build` during the run must not swap the binary midway.
    shutil.copy2(args.bin, f"{ctx.run}/ociregistry")
    args.bin = f"{ctx.run}/ociregistry"
    ctx.wrk_lua = write(f"{ctx.run}/summary.lua", WRK_LUA)
    # A SIGTERM (run.sh's trap) unwinds like an exception, so the finally stops servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    res = Results()
    try:
        ensure_data(ctx)
        servers = start_servers(ctx, res)
        warm_and_verify(ctx, servers, res)
        if not res.errors:
            measure(ctx, servers, res)
            for s in ("ociregistry", "docker-registry"):
                ctx.procs.stop(servers[s][0])  # start-up timing needs the caches to itself
            measure_startup(ctx, res)
    except Fatal as e:
        res.errors.append(str(e))
        log(f"FATAL: {e}")
    finally:
        ctx.procs.stop_all()
    report = table(ctx, res, started) if hasattr(ctx, "meta") else "no results: setup failed\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write(args.out, f"# ociregistry benchmark{' (--quick)' if args.quick else ''}\n\n" + report)
    log("\n" + report)
    log(f"written to {args.out}")
    if res.errors:
        log(f"{len(res.errors)} error(s): exit 1")
        sys.exit(1)


def start_servers(ctx, res):
    """The three warm servers; RSS 1 s after each starts (workload 7)."""
    servers = {}
    p, port = start_ours(ctx, "ours", f"{ctx.data}/ours-cache")
    servers["ociregistry"] = (p, port)
    port = free_port()
    p = ctx.procs.spawn(["nginx", "-e", f"{ctx.run}/nginx.err", "-c", nginx_config(ctx.run, f"{ctx.data}/www", port)],
                        f"{ctx.run}/nginx.err")
    wait_http(p, port, "/v2/bench/app0001/manifests/v1")
    servers["nginx"] = (p, port)
    servers["docker-registry"] = start_registry(ctx, "registry", f"{ctx.data}/proxy")
    time.sleep(1)
    for s, (p, _) in servers.items():
        res.add("rss_idle", s, rss_mib(p.pid))
    return servers


def warm_and_verify(ctx, servers, res):
    """Every path of every image once through each server, bytes checked."""
    meta = ctx.meta
    reqs = [r for img in meta["apps"] + [meta["big"]] for head in (True, False) for r in image_requests(meta, img, head)]
    reqs = list(dict.fromkeys(reqs))  # the by-digest requests appear twice
    for s, (_, port) in servers.items():
        t = time.monotonic()
        bad = fetch_all(port, reqs)
        log(f"warm + verify {s}: {len(reqs)} requests in {time.monotonic() - t:.1f} s, {len(bad)} failed")
        for b in bad[:5]:
            res.add("verify", s, None, b)
        if len(bad) > 5:
            res.add("verify", s, None, f"... and {len(bad) - 5} more")


def measure(ctx, servers, res):
    a, meta = ctx.args, ctx.meta
    app, big = meta["apps"][0], meta["big"]
    head_req = raw_requests(f"{ctx.run}/head.req", [("HEAD", f"/v2/{app['name']}/manifests/v1", ACCEPT_ANY, None)])
    pull_req = raw_requests(f"{ctx.run}/pulls.req", [r for img in meta["apps"] for r in image_requests(meta, img)])
    order = list(SERVERS)
    for run_no in range(1, a.runs + 1):
        log(f"run {run_no}/{a.runs}: {', '.join(order)}")
        for s in order:
            p, port = servers[s]
            base = f"http://127.0.0.1:{port}"
            log(f"  {s}")
            settle(ctx.procs)
            res.add("head", s, *run_loadgen(ctx, port, head_req))
            settle(ctx.procs)
            res.add("manifest", s, *run_wrk(ctx, f"{base}/v2/{app['name']}/manifests/{app['manifest']}", ACCEPT_MANIFEST))
            settle(ctx.procs)
            res.add("blob", s, *run_wrk(ctx, f"{base}/v2/{big['name']}/blobs/{big['small_blob']}", None))
            settle(ctx.procs)
            mbs, err = big_blob(ctx, port)
            res.add("big", s, mbs, err)
            res.add("rss_big", s, rss_mib(p.pid))
            settle(ctx.procs)
            rps, err = run_loadgen(ctx, port, pull_req)
            res.add("pulls", s, rps / 7 if rps else None, err)
        # The cold pull, interleaved the same way (direct from the upstream first).
        for who in ["direct"] + [s for s in order if s != "nginx"]:
            settle(ctx.procs)
            took, count, err = cold_pull(ctx, who, run_no)
            res.add("cold", who, took, err)
            res.add("cold_upstream", who, count, err)
            log(f"  cold pull {who}: {took and round(took, 2)} s, {count} upstream requests")
        order = order[1:] + order[:1]
    # The best of workload 4's runs, and each mirror's cold pull against the direct one.
    for s in SERVERS:
        vs = [v for v in res.values.get(("big", s), []) if v is not None]
        res.values[("big_best", s)] = [max(vs)] if vs else [None]
    # Ratios per run (each mirror pull against the direct pull next to it), then the median.
    direct = res.values.get(("cold", "direct"), [])
    for s in ("ociregistry", "docker-registry"):
        mirror = res.values.get(("cold", s), [])
        res.values[("cold_ratio", s)] = [m / d if m and d else None for m, d in zip(mirror, direct)]


def measure_startup(ctx, res):
    a = ctx.args
    log(f"start-up, {a.starts} starts each")
    caches = {"ociregistry": f"{ctx.data}/ours-cache", "docker-registry": f"{ctx.data}/proxy"}
    for _ in range(a.starts):
        for s in ("ociregistry", "docker-registry"):
            settle(ctx.procs)
            v2, manifest = startup(ctx, s, caches[s])
            res.add("start_v2", s, v2)
            res.add("start_manifest", s, manifest)
            settle(ctx.procs)
            res.add("start_empty", s, startup(ctx, s, None)[0])


if __name__ == "__main__":
    main()
