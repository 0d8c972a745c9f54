//! Docker's credential-helper protocol: `docker-credential-<name> get` reads a
//! registry's URL on its standard input and answers
//! `{"ServerURL": …, "Username": …, "Secret": …}`. Helpers such as
//! `ecr-login`, `gcr` or `acr-env` exchange the machine's cloud identity for a
//! short-lived registry password this way.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use super::Secret;
use crate::oci::RegistryHost;

/// How long an answer is used before the helper is asked again. Helpers cache
/// their own tokens (ecr-login for hours), so asking again is cheap; a short
/// time means a rotated credential is picked up soon.
const ANSWER_TTL: Duration = Duration::from_secs(300);
/// A helper that has no credentials for a registry is asked again after this.
const NONE_TTL: Duration = Duration::from_secs(30);
/// A helper that hangs is killed after this.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Larger answers are refused: an answer is a few hundred bytes, ECR's a few KiB.
const MAX_ANSWER: u64 = 1024 * 1024;
/// Registries whose answers are kept at most (`credsStore` applies to any).
const MAX_CACHED: usize = 256;

/// One helper program and its recent answers by registry.
#[derive(Debug)]
pub struct Helper {
    program: PathBuf,
    /// Held across the helper's run: one run per registry at a time, and the
    /// callers waiting behind it take its answer.
    answers: tokio::sync::Mutex<HashMap<String, (Option<Secret>, Instant)>>,
}

impl Helper {
    /// `ecr-login` runs `docker-credential-ecr-login` from `PATH`; a name with
    /// a `/` is the program's path.
    pub fn new(name: &str) -> Helper {
        let program = if name.contains('/') {
            PathBuf::from(name)
        } else {
            PathBuf::from(format!("docker-credential-{name}"))
        };
        Helper { program, answers: tokio::sync::Mutex::new(HashMap::new()) }
    }

    pub fn program(&self) -> &std::path::Path {
        &self.program
    }

    /// The helper's answer for `server`, from its cache when recent.
    pub async fn get(&self, server: &str) -> Result<Option<Secret>, String> {
        let mut answers = self.answers.lock().await;
        if let Some((answer, until)) = answers.get(server)
            && *until > Instant::now()
        {
            return Ok(answer.clone());
        }
        let answer = self.run(server).await?;
        let ttl = if answer.is_some() { ANSWER_TTL } else { NONE_TTL };
        answers.retain(|_, (_, until)| *until > Instant::now());
        if answers.len() >= MAX_CACHED
            && let Some(oldest) = answers.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| k.clone())
        {
            answers.remove(&oldest);
        }
        answers.insert(server.to_owned(), (answer.clone(), Instant::now() + ttl));
        Ok(answer)
    }

    async fn run(&self, server: &str) -> Result<Option<Secret>, String> {
        let name = self.program.display();
        let mut child = tokio::process::Command::new(&self.program)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("credential helper {name} could not be started: {e}"))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(format!("credential helper {name}: no pipes to it"));
        };
        let talk = async {
            // A helper that exits without reading its input is fine.
            let _ = stdin.write_all(server.as_bytes()).await;
            drop(stdin);
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let (mut stdout, mut stderr) = (stdout.take(MAX_ANSWER), stderr.take(MAX_ANSWER));
            let (o, e) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            o.and(e).map_err(|e| format!("reading credential helper {name}: {e}"))?;
            let status =
                child.wait().await.map_err(|e| format!("waiting for credential helper {name}: {e}"))?;
            Ok::<_, String>((status, out, err))
        };
        let (status, out, err) = tokio::time::timeout(TIMEOUT, talk).await.map_err(|_| {
            format!("credential helper {name} gave no answer within {}s", TIMEOUT.as_secs())
        })??;
        if !status.success() {
            let said = String::from_utf8_lossy(if err.is_empty() { &out } else { &err }).trim().to_owned();
            // The protocol's "not found": anonymous, not an error.
            if said.contains("credentials not found") {
                info!(helper = %name, server, "the credential helper has no credentials for this registry");
                return Ok(None);
            }
            let said: String = said.chars().take(300).collect();
            return Err(format!("credential helper {name} failed ({status}): {said}"));
        }
        parse_answer(&out).map_err(|e| format!("credential helper {name}: {e}"))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    username: String,
    secret: String,
}

fn parse_answer(out: &[u8]) -> Result<Option<Secret>, String> {
    let a: Answer =
        serde_json::from_slice(out).map_err(|e| format!("its answer is not the protocol's JSON: {e}"))?;
    if a.secret.is_empty() {
        return Ok(None);
    }
    if a.username == "<token>" {
        // An OAuth2 refresh token (Docker's identity token): exchanging it
        // needs the registry's OAuth flow, which nothing here speaks yet.
        warn!(
            "a credential helper answered with an identity token, which is not supported; configure a helper or credentials that give a user and password"
        );
        return Err("it answered with an identity token (Username <token>), which is not supported".into());
    }
    Ok(Some(Secret::Login { user: a.username, password: a.secret }))
}

/// The server a helper is asked about: Docker's own spelling for Docker Hub,
/// the host (and port) for every other registry.
pub fn server_url(host: &RegistryHost) -> String {
    if host.as_str() == "docker.io" { "https://index.docker.io/v1/".to_owned() } else { host.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_and_identity_tokens_are_refused() {
        let s = parse_answer(br#"{"ServerURL":"quay.io","Username":"AWS","Secret":"pw"}"#).unwrap();
        assert_eq!(s, Some(Secret::Login { user: "AWS".into(), password: "pw".into() }));
        assert_eq!(parse_answer(br#"{"Username":"","Secret":""}"#).unwrap(), None);
        assert!(
            parse_answer(br#"{"Username":"<token>","Secret":"r"}"#).unwrap_err().contains("identity token")
        );
        assert!(parse_answer(b"nope").is_err());
    }
}
