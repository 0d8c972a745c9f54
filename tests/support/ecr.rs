//! A stand-in for AWS ECR's API endpoint (`AWS_ENDPOINT_URL_ECR`): answers
//! `GetAuthorizationToken` (AWS JSON 1.1) with a token that is base64 of the
//! upstream's `user:password`, and records what each request carried, so a
//! test can check the SDK signed it (SigV4) with the credentials the default
//! chain found.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::{Explain, rt};

/// One request the endpoint answered.
#[derive(Debug, Clone)]
pub struct EcrRequest {
    /// `X-Amz-Target`.
    pub target: String,
    /// `Authorization`, up to the signature.
    pub authorization: String,
}

pub struct FakeEcr {
    port: u16,
    requests: Arc<Mutex<Vec<EcrRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeEcr {
    /// Hands out `user:password`, valid for `valid_for_secs`.
    pub fn start(user: &str, password: &str, valid_for_secs: u64) -> FakeEcr {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let requests: Arc<Mutex<Vec<EcrRequest>>> = Arc::default();
        let listener =
            rt().block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("binding the fake ECR");
        let port = listener.local_addr().expect("fake ECR local_addr").port();
        let log = requests.clone();
        let task = rt().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (log, token) = (log.clone(), token.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (log, token) = (log.clone(), token.clone());
                        async move { Ok::<_, Infallible>(answer(&log, &token, valid_for_secs, &req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeEcr { port, requests, task }
    }

    /// `AWS_ENDPOINT_URL_ECR`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<EcrRequest> {
        self.requests.lock().expect("fake ECR log lock").clone()
    }
}

fn answer(
    log: &Mutex<Vec<EcrRequest>>,
    token: &str,
    valid_for_secs: u64,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let header =
        |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let authorization = header("authorization");
    let authorization = authorization.split("Signature=").next().unwrap_or_default().to_owned();
    let target = header("x-amz-target");
    log.lock().expect("fake ECR log lock").push(EcrRequest { target: target.clone(), authorization });
    if target != "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken" {
        let mut r =
            Response::new(Full::new(Bytes::from_static(b"{\"__type\":\"UnknownOperationException\"}")));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs();
    let body = json!({"authorizationData": [{
        "authorizationToken": token,
        "expiresAt": now + valid_for_secs,
        "proxyEndpoint": "https://123456789012.dkr.ecr.us-east-1.amazonaws.com",
    }]});
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-amz-json-1.1"));
    r
}

impl Drop for FakeEcr {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Explain for FakeEcr {
    fn explain(&self) -> String {
        let mut s = format!("---- fake ECR {} ----\n", self.url());
        for r in self.requests() {
            s.push_str(&format!("{} {}\n", r.target, r.authorization));
        }
        s
    }
}
