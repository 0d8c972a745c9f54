//! The kubelet's path into containerd: the CRI ImageService over containerd's
//! socket (what `kubectl run` ends up calling), through the `k8s-cri` bindings.

use std::path::{Path, PathBuf};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{ImageSpec, PullImageRequest, RemoveImageRequest};
use tonic::transport::{Channel, Endpoint, Uri};

use super::rt;

pub struct Cri {
    client: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI service on containerd's grpc socket.
    pub fn connect(socket: &Path) -> Cri {
        let socket: PathBuf = socket.to_path_buf();
        let channel = rt()
            .block_on(async move {
                // The URI is a placeholder: every connection goes to the unix socket.
                Endpoint::try_from("http://[::1]:1")?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(socket).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                        }
                    }))
                    .await
            })
            .unwrap_or_else(|e| panic!("connecting to containerd's CRI socket: {e}"));
        Cri { client: ImageServiceClient::new(channel) }
    }

    /// `PullImage`, as the kubelet does before starting a pod. Returns the image ref.
    pub fn pull(&self, image: &str) -> Result<String, String> {
        let mut client = self.client.clone();
        let request = PullImageRequest {
            image: Some(ImageSpec { image: image.to_string(), ..Default::default() }),
            auth: None,
            sandbox_config: None,
        };
        rt().block_on(async move { client.pull_image(request).await })
            .map(|r| r.into_inner().image_ref)
            .map_err(|s| format!("CRI PullImage {image}: {} {}", s.code(), s.message()))
    }

    /// `RemoveImage`, so the next pull has to fetch again.
    pub fn remove(&self, image: &str) -> Result<(), String> {
        let mut client = self.client.clone();
        let request =
            RemoveImageRequest { image: Some(ImageSpec { image: image.to_string(), ..Default::default() }) };
        rt().block_on(async move { client.remove_image(request).await })
            .map(|_| ())
            .map_err(|s| format!("CRI RemoveImage {image}: {} {}", s.code(), s.message()))
    }
}
