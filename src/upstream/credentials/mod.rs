//! Where a registry's credentials come from: written in the configuration,
//! found in a Docker `config.json` (a Kubernetes `dockerconfigjson` Secret),
//! or asked of a `docker-credential-*` helper or of AWS ECR. The last two are read when a
//! registry asks, so a rotated Secret or a helper's short-lived token is used
//! without a restart.

mod docker_config;
mod ecr;
mod helper;

use std::sync::Arc;

pub use docker_config::DockerConfig;
pub use ecr::{Ecr, region_of as ecr_region};
pub use helper::Helper;

use crate::oci::RegistryHost;

/// What goes to the registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// Sent as Basic, or to the registry's token server for a bearer token.
    Login { user: String, password: String },
    /// A bearer token sent as it is to the registry's own endpoints.
    Token(String),
}

impl Secret {
    /// A login from base64 of `user:password`: how Docker's `auth`, ECR's
    /// token and the reference's static token all carry one.
    pub fn from_basic(encoded: &str) -> Option<Secret> {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        Some(Secret::Login { user: user.to_owned(), password: password.to_owned() })
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Login { user, .. } => write!(f, "Login {{ user: {user:?}, password: <redacted> }}"),
            Secret::Token(_) => write!(f, "Token(<redacted>)"),
        }
    }
}

/// A registry's credentials, as configured.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// `auth.user`/`password` or `auth.token`.
    Given(Secret),
    /// `auth.credentialHelper`.
    Helper(Arc<Helper>),
    /// `auth.ecr`, or a registry on an ECR host with no `auth`.
    Ecr(Arc<Ecr>),
    /// `dockerConfig`, for a registry with no `auth` of its own.
    DockerConfig(Arc<DockerConfig>),
}

impl Credentials {
    /// What to send to `host` now; `None` means anonymous.
    pub async fn secret(&self, host: &RegistryHost) -> Result<Option<Secret>, String> {
        match self {
            Credentials::Given(s) => Ok(Some(s.clone())),
            Credentials::Helper(h) => h.get(&helper::server_url(host)).await,
            // Boxed: the SDK's request future is deep enough to overflow the
            // layout of every future that awaits a fetch.
            Credentials::Ecr(e) => Box::pin(e.get()).await,
            Credentials::DockerConfig(d) => d.secret(host).await,
        }
    }
}
