#!/usr/bin/env python3
"""The harness behind bench/replicas.sh (which checks the tools and cleans up):
one replica on a directory against 1 and 3 replicas sharing an S3 bucket.
Python 3 standard library only; servers, wrk and the results helpers come from
bench/harness.py. `bench/replicas.sh --help` describes it all."""
import argparse, datetime, hashlib, http.client, json, os, platform, re, shutil, signal, socket, subprocess, sys
import statistics, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  (bench/ is not a package)
from harness import BENCH, REPO, Fatal, log  # noqa: E402

HELP = """\
Replicas benchmark: the same mirror in four setups, side by side, each started
fresh (new imagePaths, new bucket prefix) for every run:
  fs          one replica on the filesystem backend (imagePath)
  s3-1        one replica on an S3 bucket (s3s-fs: real S3 over a local directory)
  s3-3        three replicas on the bucket, with peers (each its own peer port)
  s3-3-local  the same with localCacheSize: 2GiB (a disk tier of hot blobs)
The upstream is Debian's docker-registry holding bench/big (a BIG_MIB layer and a
50 KiB one) and bench/cold (a BIG_MIB tar layer), written by bench/mkcache.py;
its access log counts what it sent.

Measurements (the table shows medians over the runs, means for upstream traffic,
and the ratios to fs):
  1. cold herd: the manifests are pulled through every replica, then HERD clients
     (spread evenly over the replicas, released together) GET the uncached
     BIG_MIB blob; every body is hashed. Upstream bytes and GETs of the blob
     (from the upstream's access log: one GET is one upstream fetch), and the
     wall time until the last client has its last byte.
  1b. (several replicas) the same on a second uncached blob (bench/cold's layer),
     replica 1's clients first and the others once its lease is in the bucket:
     s3s-fs checks If-None-Match before writing, without a lock, so replicas
     claiming a lease in the same instant can all win it (AWS S3, MinIO and
     Ceph RGW apply it atomically); 1b is what such a bucket gives the herd.
  2. warm big blob: CURLS curl clients per replica download the BIG_MIB blob over
     and over for SECS s, all replicas at once: aggregate MB/s (sizes and statuses
     checked; one hashed GET per replica afterwards).
  3. warm small blob: wrk, CONNS connections and THREADS threads per replica, on
     the 50 KiB blob (fetched once through each replica first, hashed), all
     replicas at once for SECS s: aggregate req/s.
  Also: upstream bytes during 2 and 3 (the 50 KiB blob once is 50 KiB; more
  means a replica went upstream for what the bucket held).
Any non-2xx, wrong byte, short body or a server that fails or dies makes the run
exit 1 (the table is still written, failed cells marked ERR).

Environment (flags win): BIN (target/release/ociregistry), S3S_FS (s3s-fs on PATH
or ~/.cargo/bin), RUNS (3), SECS (10), HERD (12), CURLS (4), CONNS (16),
THREADS (1), BIG_MIB (64), BENCH_WORK (a work dir kept between runs; default a
temporary dir removed at exit unless --keep).
--quick: RUNS=1, SECS=2, BIG_MIB=8 (under a minute): does the script still work.
Results: bench/results/replicas-YYYY-MM-DD-HHMM[-quick].md (or --out FILE), also printed.
"""

SETUPS = ("fs", "s3-1", "s3-3", "s3-3-local")
REPLICAS = {"fs": 1, "s3-1": 1, "s3-3": 3, "s3-3-local": 3}
BUCKET = "mirror"
# The replicas read these from the environment (accessKeyIdFromEnv, ...), as a
# deployment would; the values only need to match what s3s-fs is started with.
KEY_ID, SECRET, PEER_TOKEN = "AKIAOCIREGISTRYBENCH", "ociregistry-bench-secret", "ociregistry-bench-peer-token"
ENV = {"BENCH_S3_KEY_ID": KEY_ID, "BENCH_S3_SECRET": SECRET, "BENCH_PEER_TOKEN": PEER_TOKEN}


def parse_args():
    env = harness.env_int
    p = argparse.ArgumentParser(prog="bench/replicas.sh", description=HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small and short: check the script runs")
    p.add_argument("--runs", type=int, default=env("RUNS", 3), help="runs per setup (median taken)")
    p.add_argument("--secs", type=int, default=env("SECS", 10), help="seconds of measurements 2 and 3")
    p.add_argument("--herd", type=int, default=env("HERD", 12), help="clients in the cold herd")
    p.add_argument("--curls", type=int, default=env("CURLS", 4), help="curl clients per replica (2)")
    p.add_argument("--conns", type=int, default=env("CONNS", 16), help="wrk connections per replica (3)")
    p.add_argument("--threads", type=int, default=env("THREADS", 1), help="wrk threads per replica (3)")
    p.add_argument("--big-mib", type=int, default=env("BIG_MIB", 64), help="the big blob's size")
    p.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated subset of {','.join(SETUPS)}")
    p.add_argument("--out", help="results file (default bench/results/replicas-YYYY-MM-DD-HHMM.md)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (replicas.sh prints where)")
    p.add_argument("--work", required=True, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.quick:
        a.runs, a.secs, a.big_mib = 1, 2, 8
    a.setups = [s for s in a.setups.split(",") if s]
    unknown = set(a.setups) - set(SETUPS)
    if unknown:
        p.error(f"unknown setup(s) {', '.join(sorted(unknown))}: pick from {', '.join(SETUPS)}")
    a.bin = os.path.abspath(os.environ.get("BIN", os.path.join(REPO, "target/release/ociregistry")))
    a.s3s_fs = s3s_fs_binary()
    a.out = a.out or default_out(a.quick)
    return a


def s3s_fs_binary():
    """Where the tests look for it too: S3S_FS, PATH, then ~/.cargo/bin."""
    candidates = [os.environ.get("S3S_FS"), shutil.which("s3s-fs"), os.path.expanduser("~/.cargo/bin/s3s-fs")]
    found = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if not found:
        sys.exit("s3s-fs is needed (a real S3 server over a directory): "
                 "cargo install s3s-fs@0.14.1 --locked --features binary")
    return found


def default_out(quick):
    stem = os.path.join(BENCH, "results", "replicas-" + datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
                        + ("-quick" if quick else ""))
    path, n = stem + ".md", 1
    while os.path.exists(path):
        n += 1
        path = f"{stem}-{n}.md"
    return path


# ---------------------------------------------------------------- servers

def start_upstream(ctx):
    """docker-registry on the generated storage. Its access log (kept at level
    error, which hides the rest) has every request with the body bytes it sent,
    also for a client that hung up mid-body: that is what we count."""
    a = ctx.args
    data = f"{a.work}/data-{a.big_mib}-{a.big_mib}"
    if not os.path.exists(f"{data}/meta.json"):
        shutil.rmtree(data, ignore_errors=True)
        log(f"generating bench/big ({a.big_mib} MiB + 50 KiB layers) and bench/cold ({a.big_mib} MiB) in {data}")
        r = subprocess.run([sys.executable, f"{BENCH}/mkcache.py", data, "0", str(a.big_mib << 20),
                            str(a.big_mib << 20)])
        if r.returncode != 0:
            raise Fatal("mkcache.py failed")
    with open(f"{data}/meta.json") as f:
        meta = json.load(f)
    ctx.big, ctx.cold = meta["big"], meta["cold"]
    # Two uncached blobs of the same size, one per herd: bench/big's layer and
    # bench/cold's (a tar of BIG_MIB, a few KiB more).
    ctx.herd_blobs = {"all": (ctx.big, ctx.big["big_blob"], ctx.big["big_size"]),
                      "first": (ctx.cold, ctx.cold["layers"][0], ctx.cold["sizes"][1])}
    ctx.upstream_port = harness.free_port()
    cfg = harness.registry_config(ctx.run, "upstream", f"{data}/upstream", ctx.upstream_port, level="error")
    ctx.upstream = ctx.procs.spawn(["docker-registry", "serve", cfg], f"{ctx.run}/upstream.log")
    harness.wait_http(ctx.upstream, ctx.upstream_port)


def start_s3(ctx):
    """One s3s-fs for every setup; each setup run gets a prefix of its own."""
    ctx.s3_root = f"{ctx.run}/s3"
    os.makedirs(f"{ctx.s3_root}/{BUCKET}")
    ctx.s3_port = harness.free_port()
    p = ctx.procs.spawn([ctx.args.s3s_fs, "--host", "127.0.0.1", "--port", str(ctx.s3_port), "--access-key", KEY_ID,
                         "--secret-key", SECRET, ctx.s3_root], f"{ctx.run}/s3s-fs.log")
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", ctx.s3_port), timeout=1).close()
            return
        except OSError:
            if p.poll() is not None or time.monotonic() > deadline:
                raise Fatal(f"s3s-fs did not start; its log:\n{harness.tail(p.logfile)}")
            time.sleep(0.05)


def storage_yaml(ctx, setup, prefix, peer_port):
    if setup == "fs":
        return ""
    s3 = (f"storage:\n  s3:\n    bucket: {BUCKET}\n    prefix: {prefix}\n"
          f"    endpoint: \"http://127.0.0.1:{ctx.s3_port}\"\n    region: us-east-1\n    pathStyle: true\n"
          f"    accessKeyIdFromEnv: BENCH_S3_KEY_ID\n    secretAccessKeyFromEnv: BENCH_S3_SECRET\n")
    if setup == "s3-3-local":
        s3 += "    localCacheSize: 2GiB\n"
    if REPLICAS[setup] > 1:
        s3 += (f"    peers:\n      port: {peer_port}\n      advertise: \"http://127.0.0.1:{peer_port}\"\n"
               f"      tokenFromEnv: BENCH_PEER_TOKEN\n")
    return s3


def start_replicas(ctx, setup, tag):
    """REPLICAS[setup] mirrors, configured as bench/harness.py's plus the storage
    block; with s3, imagePath only stages downloads (and holds the disk tier)."""
    reps = []
    for i in range(REPLICAS[setup]):
        name = f"{tag}-r{i}"
        port = harness.free_port()
        cfg = harness.ours_config(ctx.run, name, f"{ctx.run}/{name}-cache", port, ctx.upstream_port)
        with open(cfg, "a") as f:
            f.write(storage_yaml(ctx, setup, f"bench/{tag}", harness.free_port()))
        p = ctx.procs.spawn([ctx.args.bin, "serve", "--config-file", cfg], f"{ctx.run}/{name}.log")
        reps.append((p, port))
    for p, port in reps:
        harness.wait_http(p, port)
    return reps


def check_alive(reps):
    """A replica that died mid-setup, or panicked in a task it survived, fails it."""
    bad = []
    for p, _ in reps:
        if p.poll() is not None:
            bad.append(f"{os.path.basename(p.logfile)} exited ({p.returncode}):\n{harness.tail(p.logfile)}")
        else:
            with open(p.logfile, errors="replace") as f:
                panics = [l for l in f if "panicked" in l]
            if panics:
                bad.append(f"{os.path.basename(p.logfile)} panicked: {panics[0].strip()}")
    return bad


# ---------------------------------------------------------------- the upstream's view

ACCESS = re.compile(r'"(\w+) (\S+) HTTP/[\d.]+" (\d{3}) (\d+)')


def upstream_offset(ctx):
    return os.path.getsize(ctx.upstream.logfile)


def upstream_since(ctx, offset, digest):
    """(body bytes sent, GETs of blob DIGEST, requests) in the access log after OFFSET."""
    with open(ctx.upstream.logfile, errors="replace") as f:
        f.seek(offset)
        hits = [m.groups() for m in map(ACCESS.search, f) if m]
    gets = sum(1 for method, path, _, _ in hits if method == "GET" and path.endswith(f"/blobs/{digest}"))
    return sum(int(n) for *_, n in hits), gets, len(hits)


# ---------------------------------------------------------------- clients

def get_hashed(port, path, want, accept=None, conn=None):
    """GET PATH, hashing the body; None if it is 200 with digest WANT, else what was wrong."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        c.request("GET", path, headers={"Accept": accept} if accept else {})
        r = c.getresponse()
        h, n = hashlib.sha256(), 0
        while chunk := r.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    except (OSError, http.client.HTTPException) as e:
        return f"GET {path} on :{port}: {e!r}"
    finally:
        c.close()
    if r.status != 200:
        return f"GET {path} on :{port}: HTTP {r.status}"
    # http.client's read(n) takes a connection closed mid-body for the end of it.
    length = r.getheader("Content-Length")
    if length is not None and int(length) != n:
        return f"GET {path} on :{port}: short body, {n} of {length} bytes (the connection closed mid-body)"
    if "sha256:" + h.hexdigest() != want:
        return f"GET {path} on :{port}: wrong bytes ({n} bytes, sha256:{h.hexdigest()})"
    return None


def pull_manifests(ctx, reps):
    """As a client would before its blobs (and it links them in the repository):
    each image's index by tag and amd64 manifest, through each replica in turn."""
    errors = []
    for _, port in reps:
        for img in (ctx.big, ctx.cold):
            errors += [e for e in (
                get_hashed(port, f"/v2/{img['name']}/manifests/v1", img["index"], harness.ACCEPT_ANY),
                get_hashed(port, f"/v2/{img['name']}/manifests/{img['manifest']}", img["manifest"],
                           harness.ACCEPT_MANIFEST)) if e]
    return errors


def herd(ctx, reps, kind, lease):
    """HERD clients, client i on replica i mod n, connected first; every body
    hashed. KIND "all": released together. "first": replica 0's clients first,
    the others once the lease file LEASE is in the bucket (or 10 s passed, or
    one of the first clients is done): on s3s-fs, whose conditional create is
    not atomic, replicas claiming the same instant can all win, which AWS S3,
    MinIO and Ceph RGW rule out. Returns (seconds to the last byte, errors,
    how the others were released)."""
    img, digest, _ = ctx.herd_blobs[kind]
    n = ctx.args.herd
    path = f"/v2/{img['name']}/blobs/{digest}"
    conns = [http.client.HTTPConnection("127.0.0.1", reps[i % len(reps)][1], timeout=300) for i in range(n)]
    for c in conns:
        c.connect()
    first = [i for i in range(n) if kind == "all" or i % len(reps) == 0]
    go_first = threading.Barrier(len(first) + 1)
    go_rest = threading.Event()
    errors, ends = [None] * n, [None] * n

    def client(i):
        if i in first:
            go_first.wait()
        else:
            go_rest.wait()
        errors[i] = get_hashed(conns[i].port, path, digest, conn=conns[i])
        ends[i] = time.monotonic()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    go_first.wait()
    t0 = time.monotonic()
    while not (seen := os.path.exists(lease)) and time.monotonic() < t0 + 10 and not any(ends):
        time.sleep(0.001)
    go_rest.set()
    released = f"the others {(time.monotonic() - t0) * 1000:.0f} ms later, {'lease seen' if seen else 'NO lease seen'}"
    for t in threads:
        t.join()
    return max(ends) - t0, [f"client {i}: {e}" for i, e in enumerate(errors) if e], released


def warm_big(ctx, reps):
    """CURLS curl processes per replica, each downloading the big blob again and
    again until SECS have passed: aggregate MB/s to the end of the last download.
    curl rather than Python so the client costs what it does in run.sh's
    workload 4; it checks status and size, the hashed GETs after check bytes."""
    a, big = ctx.args, ctx.big
    path = f"/v2/{big['name']}/blobs/{big['big_blob']}"
    lock, done, errors = threading.Lock(), [0], []
    t0 = time.monotonic()
    deadline = t0 + a.secs

    def client(port):
        while time.monotonic() < deadline and not errors:
            out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                                  f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout.split()
            with lock:
                if out != ["200", str(big["big_size"])]:
                    errors.append(f"curl on :{port} got (status, bytes) {out}, wanted 200 and {big['big_size']}")
                else:
                    done[0] += big["big_size"]

    threads = [threading.Thread(target=client, args=(port,)) for _, port in reps for _ in range(a.curls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    errors += [e for _, port in reps if (e := get_hashed(port, path, big["big_blob"]))]
    return (None if errors else done[0] / took / 1e6), errors


def warm_small(ctx, reps):
    """wrk on every replica at once; the sum of their req/s. The blob is fetched
    once through each replica first (hashed): the first from the upstream, the
    others from the bucket."""
    big = ctx.big
    path = f"/v2/{big['name']}/blobs/{big['small_blob']}"
    errors = [e for _, port in reps if (e := get_hashed(port, path, big["small_blob"]))]
    if errors:
        return None, errors
    harness.settle(ctx.procs)
    results = [None] * len(reps)

    def one(i, port):
        results[i] = harness.run_wrk(ctx, f"http://127.0.0.1:{port}{path}", None)

    threads = [threading.Thread(target=one, args=(i, port)) for i, (_, port) in enumerate(reps)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [f"wrk on :{port}: {err}" for (_, err), (_, port) in zip(results, reps) if err]
    return (None if errors else sum(rps for rps, _ in results)), errors


# ---------------------------------------------------------------- one setup, one run

def measure_setup(ctx, res, setup, run_no):
    tag = f"{setup}-{run_no}"
    reps = start_replicas(ctx, setup, tag)

    def fail(rows, errors):
        msg = "; ".join(errors[:3]) + (f" ... and {len(errors) - 3} more" if len(errors) > 3 else "")
        for row in rows:
            res.add(row, setup, None, msg)

    try:
        errors = pull_manifests(ctx, reps)
        if errors:
            return fail(["manifests"], errors)
        # One replica has no one to stagger: the second herd is for several.
        for kind in ("all", "first") if len(reps) > 1 else ("all",):
            harness.settle(ctx.procs)
            before = upstream_offset(ctx)
            digest = ctx.herd_blobs[kind][1]
            lease = f"{ctx.s3_root}/{BUCKET}/bench/{tag}/leases/{digest.replace(':', '-')}"
            took, errors, released = herd(ctx, reps, kind, lease)
            # The replicas finish uploading to the bucket (clients have their bytes once
            # verified, before that): the next measurement must not pay for it.
            harness.settle(ctx.procs)
            sent, gets, reqs = upstream_since(ctx, before, digest)
            log(f"  {setup}: herd ({kind}) {took:.2f} s, upstream {sent / 2**20:.1f} MiB in {reqs} requests, "
                f"{gets} GET(s) of the blob, {len(errors)} bad client(s)"
                + (f"; {released}" if kind == "first" else ""))
            rows = [f"herd_{kind}_mib", f"herd_{kind}_gets", f"herd_{kind}_s"]
            if errors:
                fail(rows, errors)
            else:
                for row, v in zip(rows, (sent / 2**20, gets, took)):
                    res.add(row, setup, v)
        before = upstream_offset(ctx)
        mbs, errors = warm_big(ctx, reps)
        log(f"  {setup}: warm {ctx.big['big_size'] >> 20} MiB blob {mbs and round(mbs)} MB/s")
        res.add("big", setup, mbs, "; ".join(errors[:3]) or None)
        harness.settle(ctx.procs)
        rps, errors = warm_small(ctx, reps)
        log(f"  {setup}: warm 50 KiB blob {rps and round(rps)} req/s")
        res.add("small", setup, rps, "; ".join(errors[:3]) or None)
        harness.settle(ctx.procs)
        res.add("warm_up_kib", setup, upstream_since(ctx, before, ctx.big["small_blob"])[0] / 1024)
        for e in check_alive(reps):
            res.add("alive", setup, None, e)
    finally:
        for p, _ in reps:
            ctx.procs.stop(p)
        # Each run starts fresh, and 64 MiB copies add up over runs.
        for i in range(len(reps)):
            shutil.rmtree(f"{ctx.run}/{tag}-r{i}-cache", ignore_errors=True)
        shutil.rmtree(f"{ctx.s3_root}/{BUCKET}/bench/{tag}", ignore_errors=True)


# ---------------------------------------------------------------- results

# Row key, label, unit, which way is better, whether a ratio to fs means anything.
# Upstream traffic is a mean over the runs: a median would hide the run whose
# herd cost two fetches.
ROWS = [
    ("herd_all_mib", "1. cold herd, {herd} clients at once: upstream bytes sent (mean)", "MiB", "lower", True),
    ("herd_all_gets", "1. cold herd, {herd} clients at once: upstream GETs of the blob (mean)", "GETs", "lower", True),
    ("herd_all_s", "1. cold herd, {herd} clients at once: wall time to the last byte", "s", "lower", True),
    ("herd_first_mib", "1b. cold herd, replica 1 first: upstream bytes sent (mean)", "MiB", "lower", False),
    ("herd_first_gets", "1b. cold herd, replica 1 first: upstream GETs of the blob (mean)", "GETs", "lower", False),
    ("herd_first_s", "1b. cold herd, replica 1 first: wall time to the last byte", "s", "lower", False),
    ("big", "2. warm {big_mib} MiB blob, {curls} curl clients per replica", "MB/s", "higher", True),
    ("small", "3. warm 50 KiB blob, wrk {conns} conns per replica", "req/s", "higher", True),
    ("warm_up_kib", "2+3. upstream bytes sent while warm (mean; 50 KiB blob once: 50)", "KiB", "lower", False),
]
MEAN = {"herd_all_mib", "herd_all_gets", "herd_first_mib", "herd_first_gets", "warm_up_kib"}
PRECISION = {**harness.PRECISION, "KiB": 0, "GETs": 2}


def summary(res, key, setup):
    """The median of the runs' values (the mean for MEAN rows); "ERR" if a run failed."""
    vs = res.values.get((key, setup))
    if key not in MEAN or not vs or None in vs:
        return res.median(key, setup)
    return statistics.mean(vs)


def fmt(v, unit):
    return v if v == "ERR" else "—" if v is None else f"{v:,.{PRECISION[unit]}f}"


def table(ctx, res, started):
    a = ctx.args
    fill = dict(big_mib=a.big_mib, curls=a.curls, conns=a.conns, herd=a.herd)
    others = [s for s in a.setups if s != "fs"]
    with_fs = "fs" in a.setups
    head = ["Measurement", "Unit", "Better"] + a.setups + ([f"{s} / fs" for s in others] if with_fs else [])
    out = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    for key, label, unit, better, ratios in ROWS:
        vals = {s: summary(res, key, s) for s in a.setups}
        cells = [fmt(vals[s], unit) for s in a.setups]
        if with_fs:
            cells += [harness.ratio(vals[s], vals["fs"]) if ratios else "—" for s in others]
        out.append(f"| {label.format(**fill)} | {unit} | {better} | " + " | ".join(cells) + " |")
    version = subprocess.run([a.bin, "version"], capture_output=True, text=True).stdout.strip()
    reg_v = subprocess.run(["docker-registry", "--version"], capture_output=True, text=True).stdout.split()[-1:]
    s3_v = subprocess.run([a.s3s_fs, "--version"], capture_output=True, text=True).stdout.strip()
    took = time.monotonic() - started
    out += ["",
            f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, Linux {platform.release()}; "
            f"medians (upstream traffic: means) of {a.runs} run(s), setups in rotating order, each started "
            f"fresh (new imagePaths, new bucket prefix); herd of {a.herd} clients; {a.secs} s per warm "
            f"measurement; whole benchmark {took / 60:.1f} min"
            f"{' (--quick: the numbers mean little)' if a.quick else ''}.",
            f"- {version}: logLevel info, access log to a file. fs: imagePath only. s3-*: "
            f"`storage.s3` on {s3_v or 's3s-fs'} (real S3 over a local directory, on the same machine); "
            "s3-3: `peers` on ports of their own, advertised as http://127.0.0.1:PORT; s3-3-local: also "
            "`localCacheSize: 2GiB`.",
            f"- Upstream: docker-registry {' '.join(reg_v)}, bytes and requests from its access log. Before the "
            "herds the index and manifest were pulled through every replica (they link the blob, as a client's "
            "pull would). 1b: a second blob, replica 1's clients released first and the others once its lease "
            "object is in the bucket (s3s-fs's conditional create is not atomic: replicas claiming in the same "
            "instant can all win; AWS S3, MinIO and Ceph RGW rule that out).",
            f"- Clients: Python threads hashing every body (1), curl (2), wrk with {a.threads} thread(s) per "
            "replica (3), all replicas loaded at once; the sum is the aggregate. Ratios are setup / fs of the "
            "figures shown.",
            "- s3s-fs 0.14.1 does not set TCP_NODELAY on its sockets: each GET on a reused connection is "
            "answered ~40 ms late (Nagle against the client's delayed ACK; 2 ms on a new connection), so rows 2 "
            "and 3 of s3-1 and s3-3, where every hit is a bucket read, are bound by that ("
            f"{a.conns} connections / 44 ms ≈ {a.conns / 0.044:,.0f} req/s per replica), not by the mirror.",
            "- Clients, servers and the S3 server share the same cores: three replicas cannot serve more than "
            "one here; compare ratios and upstream bytes, not absolute numbers."]
    raw = ["", "<details><summary>Every run</summary>", "", "| Row | Setup | Values |", "|---|---|---|"]
    for key, _, unit, _, _ in ROWS:
        for s in a.setups:
            vs = res.values.get((key, s))
            if vs:
                raw.append(f"| {key} | {s} | {', '.join(fmt(v, unit) if v is not None else 'ERR' for v in vs)} |")
    raw.append("</details>")
    if res.errors:
        raw += ["", "Errors:", ""] + [f"- {e}" for e in res.errors]
    return "\n".join(out + raw) + "\n"


# ---------------------------------------------------------------- main

def main():
    args = parse_args()
    started = time.monotonic()
    ctx = harness.Ctx()
    ctx.args = args
    ctx.run = f"{args.work}/run"
    shutil.rmtree(ctx.run, ignore_errors=True)
    os.makedirs(ctx.run)
    ctx.procs = harness.Procs(f"{ctx.run}/pids")
    # Measure a copy: a `cargo build` during the run must not swap the binary midway.
    shutil.copy2(args.bin, f"{ctx.run}/ociregistry")
    args.bin = f"{ctx.run}/ociregistry"
    ctx.wrk_lua = harness.write(f"{ctx.run}/summary.lua", harness.WRK_LUA)
    os.environ.update(ENV)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    res = harness.Results()
    try:
        start_upstream(ctx)
        start_s3(ctx)
        order = list(args.setups)
        for run_no in range(1, args.runs + 1):
            log(f"run {run_no}/{args.runs}: {', '.join(order)}")
            for setup in order:
                harness.settle(ctx.procs)
                measure_setup(ctx, res, setup, run_no)
            order = order[1:] + order[:1]
    except Fatal as e:
        res.errors.append(str(e))
        log(f"FATAL: {e}")
    finally:
        ctx.procs.stop_all()
    report = table(ctx, res, started) if hasattr(ctx, "big") else "no results: setup failed\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    harness.write(args.out, f"# ociregistry replicas benchmark{' (--quick)' if args.quick else ''}\n\n" + report)
    log("\n" + report)
    log(f"written to {args.out}")
    if res.errors:
        log(f"{len(res.errors)} error(s): exit 1")
        sys.exit(1)


if __name__ == "__main__":
    main()
