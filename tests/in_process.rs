//! `server::serve` run in-process, twice at once: each server counts its own
//! requests (metrics are state handed to the rooms, not a global), and each
//! stops when its shutdown signal fires. No upstream: both are air-gapped, and
//! one holds the built-in hello-world image.

use std::sync::Arc;
use std::time::Duration;

use ociregistry::cache::policy::{Revalidate, TagPolicy};
use ociregistry::cache::{self, Cache};
use ociregistry::metrics::Metrics;
use ociregistry::server::{self, ConnectionLimits};
use ociregistry::upstream::{self, Upstreams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

struct Running {
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(with_hello_world: bool) -> Running {
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = Arc::new(Metrics::new());
    let upstream = upstream::Settings {
        registries: Vec::new(),
        allow_unconfigured: false,
        air_gapped: true,
        timeouts: upstream::Timeouts::default(),
        limits: upstream::Limits {
            max_concurrent_requests: 4,
            probe_interval: Duration::from_secs(1),
            max_probe_interval: Duration::from_secs(1),
        },
        bandwidth: None,
        docker_config: None,
    };
    let upstreams = Upstreams::new(&upstream, metrics.clone()).expect("upstreams");
    let settings = cache::Settings {
        root: dir.path().join("cache"),
        tag_policy: TagPolicy::new(Vec::new(), false),
        revalidate: Revalidate::Inline,
        max_background_fills: 1,
        resume_attempts: 0,
        capacity: Default::default(),
        prune: None,
        manifest_cache_bytes: 1 << 20,
        backend: Default::default(),
    };
    let cache = Cache::open(settings, upstreams, metrics.clone()).await.expect("opening the cache");
    if with_hello_world {
        cache.install(ociregistry::hello::image().expect("image")).await.expect("installing hello-world");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding");
    let addr = listener.local_addr().expect("address");
    let settings = server::Settings {
        default_ns: None,
        pull_auth: None,
        connections: ConnectionLimits {
            max: 16,
            first_byte: Duration::from_secs(5),
            idle: Duration::from_secs(5),
        },
        shutdown_grace: Duration::from_secs(1),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let served = tokio::spawn(server::serve(listener, settings, cache, metrics.clone(), None, shutdown));
    Running { addr, metrics, stop, served, _dir: dir }
}

/// One HTTP/1.1 request on its own connection; the status code.
async fn status_of(addr: std::net::SocketAddr, path: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connecting");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("writing");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.expect("reading");
    let text = String::from_utf8_lossy(&answer);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {text:?}"))
}

fn count(metrics: &Metrics, series: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_one_process_count_apart_and_stop_on_their_signal() {
    let a = start(true).await;
    let b = start(false).await;
    let manifest = "/v2/library/hello-world/manifests/latest?ns=docker.io";
    assert_eq!(status_of(a.addr, manifest).await, 200, "A holds the image");
    assert_eq!(status_of(a.addr, manifest).await, 200);
    assert_eq!(status_of(b.addr, manifest).await, 404, "B is air-gapped and empty");

    let hits = "ociregistry_manifest_pulls_total{source=\"cache\"}";
    let unknown = "ociregistry_api_errors_total{code=\"MANIFEST_UNKNOWN\"}";
    assert_eq!(count(&a.metrics, hits), 2.0, "{}", a.metrics.encode());
    assert_eq!(count(&b.metrics, hits), 0.0, "B counted A's hits: {}", b.metrics.encode());
    assert_eq!(count(&b.metrics, unknown), 1.0, "{}", b.metrics.encode());
    assert_eq!(count(&a.metrics, unknown), 0.0);

    a.stop.send(()).expect("signalling A");
    let stopped = tokio::time::timeout(Duration::from_secs(5), a.served).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "A did not stop cleanly: {stopped:?}");
    assert!(tokio::net::TcpStream::connect(a.addr).await.is_err(), "A still accepts after shutdown");
    assert_eq!(status_of(b.addr, "/v2/").await, 200, "B keeps serving after A stopped");

    b.stop.send(()).expect("signalling B");
    let stopped = tokio::time::timeout(Duration::from_secs(5), b.served).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "B did not stop cleanly: {stopped:?}");
}
