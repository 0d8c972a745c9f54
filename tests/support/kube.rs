//! A stand-in for the Kubernetes API server, for `pinRunningImages`: `GET
//! /api/v1/pods` answers a `PodList` whose pods run the images given (phase
//! `Running`), or a fixed error status; and for `wait-daemonset`: `GET
//! /apis/apps/v1/namespaces/NS/daemonsets/NAME` answers the DaemonSet status set
//! with [`KubeApi::set_daemonset`] (404 until one is set). It stands for the outside world (a
//! cluster), like the upstream registry does; the server under test is not mocked.
//!
//! Every request is recorded (method, path, whether it carried a bearer token),
//! so a test can wait for the mirror's first list before relying on it.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::task::JoinSet;

use super::{Explain, rt};

/// What `GET /api/v1/pods` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pods {
    /// A `PodList` with one `Running` pod per image reference given.
    Running(Vec<String>),
    /// This status with a `Status` body (as the API server words its errors).
    Error(u16),
}

/// One request the fake API answered.
#[derive(Debug, Clone)]
pub struct KubeRequest {
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    pub had_bearer: bool,
    pub status: u16,
}

/// (namespace, name, pods desired, updated, available)
type DaemonSetState = (String, String, i64, i64, i64);

struct State {
    pods: Mutex<Pods>,
    daemonset: Mutex<Option<DaemonSetState>>,
    requests: Mutex<Vec<KubeRequest>>,
}

/// The running fake API server (plain HTTP on 127.0.0.1). Stops when dropped.
pub struct KubeApi {
    port: u16,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl KubeApi {
    /// Pods running these images (`registry/repo:tag` as a pod spec names them).
    pub fn running(images: &[&str]) -> KubeApi {
        Self::start(Pods::Running(images.iter().map(|s| s.to_string()).collect()))
    }

    /// Every pod list fails with `status` (say 500).
    pub fn failing(status: u16) -> KubeApi {
        Self::start(Pods::Error(status))
    }

    pub fn start(pods: Pods) -> KubeApi {
        let state = Arc::new(State {
            pods: Mutex::new(pods),
            daemonset: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
        });
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binding the fake Kubernetes API");
        let port = listener.local_addr().expect("fake Kubernetes API local_addr").port();
        let st = state.clone();
        let task = rt().spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                let st = st.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(&st, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        KubeApi { port, state, task }
    }

    /// `http://127.0.0.1:PORT`, for `kubernetesApi.server`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Changes what the next pod lists answer.
    pub fn set_pods(&self, pods: Pods) {
        *self.state.pods.lock().expect("fake Kubernetes API lock") = pods;
    }

    /// What the DaemonSet `namespace/name` reports: pods desired, updated and available.
    pub fn set_daemonset(&self, namespace: &str, name: &str, desired: i64, updated: i64, available: i64) {
        *self.state.daemonset.lock().expect("fake Kubernetes API lock") =
            Some((namespace.to_owned(), name.to_owned(), desired, updated, available));
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<KubeRequest> {
        self.state.requests.lock().expect("fake Kubernetes API lock").clone()
    }

    /// How many `GET /api/v1/pods` were answered.
    pub fn pod_lists(&self) -> usize {
        self.requests().iter().filter(|r| r.method == "GET" && r.path.starts_with("/api/v1/pods")).count()
    }

    /// Waits until the mirror has asked for the pod list at least once.
    pub fn wait_for_pod_list(&self, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.pod_lists() > 0)
    }
}

fn handle(st: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let had_bearer = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "));
    let is_pods = req.method() == http::Method::GET && req.uri().path() == "/api/v1/pods";
    let daemonset = st.daemonset.lock().expect("fake Kubernetes API lock").clone();
    let ds_path =
        daemonset.as_ref().map(|(ns, name, ..)| format!("/apis/apps/v1/namespaces/{ns}/daemonsets/{name}"));
    let (status, body) = if ds_path.as_deref() == Some(req.uri().path()) && req.method() == http::Method::GET
    {
        let (ns, name, desired, updated, available) = daemonset.expect("set above");
        let ds = json!({
            "kind": "DaemonSet", "apiVersion": "apps/v1",
            "metadata": {"name": name, "namespace": ns, "generation": 1},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": desired,
                       "updatedNumberScheduled": updated, "numberAvailable": available},
        });
        (StatusCode::OK, ds.to_string())
    } else if !is_pods {
        (StatusCode::NOT_FOUND, status_body(404, "only GET /api/v1/pods is served here"))
    } else {
        match &*st.pods.lock().expect("fake Kubernetes API lock") {
            Pods::Running(images) => (StatusCode::OK, pod_list(images)),
            Pods::Error(code) => (
                StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                status_body(*code, "the fake API server is failing on purpose"),
            ),
        }
    };
    st.requests.lock().expect("fake Kubernetes API lock").push(KubeRequest {
        method: req.method().to_string(),
        path,
        had_bearer,
        status: status.as_u16(),
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("building a fake Kubernetes API response")
}

/// `{"kind":"PodList","items":[{"spec":{"containers":[{"image":…}]},"status":{"phase":"Running"}}]}`.
fn pod_list(images: &[String]) -> String {
    let items: Vec<_> = images
        .iter()
        .enumerate()
        .map(|(n, image)| {
            json!({
                "metadata": {"name": format!("e2e-pod-{n}"), "namespace": "default"},
                "spec": {"containers": [{"name": "main", "image": image}]},
                "status": {"phase": "Running"},
            })
        })
        .collect();
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})
        .to_string()
}

/// The API server's error shape (`kind: Status`).
fn status_body(code: u16, message: &str) -> String {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code})
        .to_string()
}

impl Explain for KubeApi {
    fn explain(&self) -> String {
        let reqs = self.requests();
        let mut s = format!(
            "---- fake Kubernetes API {} ({} requests; answering {:?}) ----\n",
            self.url(),
            reqs.len(),
            *self.state.pods.lock().expect("fake Kubernetes API lock")
        );
        for r in reqs.iter().rev().take(20).rev() {
            s.push_str(&format!(
                "  {} {} -> {}{}\n",
                r.method,
                r.path,
                r.status,
                if r.had_bearer { " (bearer token)" } else { "" }
            ));
        }
        s
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.explain());
        }
        self.task.abort();
    }
}
