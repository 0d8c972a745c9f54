//! AWS ECR: the password is a 12-hour token from `GetAuthorizationToken`,
//! asked with the AWS SDK's default credential chain (environment variables,
//! shared profile, web identity/IRSA, EKS Pod Identity, ECS task role, EC2
//! instance metadata), so a pod with an IAM role needs no secret at all.

use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_sdk_ecr::error::DisplayErrorContext;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use tracing::info;

use super::Secret;

/// A token is asked for again this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 60);
/// The shortest a token is kept, whatever ECR says its expiry is.
const MIN_KEEP: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Ecr {
    /// From the registry's host; `None` leaves it to the SDK (`AWS_REGION`, profile).
    region: Option<String>,
    /// An `~/.aws/config` profile; `None` leaves it to the SDK (`AWS_PROFILE`).
    profile: Option<String>,
    client: tokio::sync::OnceCell<aws_sdk_ecr::Client>,
    /// Held while asking: one request at a time, and its waiters take its answer.
    token: tokio::sync::Mutex<Option<(Secret, SystemTime)>>,
}

impl Ecr {
    pub fn new(region: Option<String>) -> Ecr {
        Ecr {
            region,
            profile: None,
            client: tokio::sync::OnceCell::new(),
            token: tokio::sync::Mutex::new(None),
        }
    }

    pub fn with_profile(self, profile: Option<String>) -> Ecr {
        Ecr { profile, ..self }
    }

    pub async fn get(&self) -> Result<Option<Secret>, String> {
        let mut token = self.token.lock().await;
        if let Some((secret, renew_at)) = token.as_ref()
            && SystemTime::now() < *renew_at
        {
            return Ok(Some(secret.clone()));
        }
        let client = self.client.get_or_init(|| client(self.region.clone(), self.profile.clone())).await;
        let out = client
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| format!("AWS ECR GetAuthorizationToken failed: {}", DisplayErrorContext(&e)))?;
        let data = out.authorization_data().first().ok_or("AWS ECR sent no authorization data")?;
        let encoded = data.authorization_token().ok_or("AWS ECR sent no authorization token")?;
        let secret = Secret::from_basic(encoded)
            .ok_or("AWS ECR's authorization token is not base64 of user:password")?;
        let expires = data.expires_at().and_then(|t| SystemTime::try_from(*t).ok());
        let renew_at = match expires {
            Some(e) => (e - RENEW_BEFORE).max(SystemTime::now() + MIN_KEEP),
            None => SystemTime::now() + MIN_KEEP,
        };
        info!(expires = ?expires.map(httpdate::fmt_http_date), "got an AWS ECR authorization token");
        *token = Some((secret.clone(), renew_at));
        Ok(Some(secret))
    }
}

async fn client(region: Option<String>, profile: Option<String>) -> aws_sdk_ecr::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r));
    }
    if let Some(p) = profile {
        loader = loader.profile_name(p);
    }
    aws_sdk_ecr::Client::new(&loader.load().await)
}

/// The region of an ECR registry host, `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`.
pub fn region_of(host: &str) -> Option<String> {
    let host = host.split(':').next()?.to_ascii_lowercase();
    let rest = host.strip_suffix(".amazonaws.com").or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let mut parts = rest.split('.');
    let (account, dkr, ecr, region) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let is_account = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    let valid = is_account && dkr == "dkr" && (ecr == "ecr" || ecr == "ecr-fips") && parts.next().is_none();
    let region_ok = !region.is_empty()
        && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (valid && region_ok).then(|| region.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecr_hosts_name_their_region() {
        assert_eq!(region_of("123456789012.dkr.ecr.us-east-1.amazonaws.com").as_deref(), Some("us-east-1"));
        assert_eq!(
            region_of("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com").as_deref(),
            Some("us-gov-west-1")
        );
        assert_eq!(
            region_of("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn").as_deref(),
            Some("cn-north-1")
        );
        for not in [
            "quay.io",
            "public.ecr.aws",
            "12345.dkr.ecr.us-east-1.amazonaws.com",
            "x.123456789012.dkr.ecr.us-east-1.amazonaws.com",
        ] {
            assert_eq!(region_of(not), None, "{not}");
        }
    }
}
