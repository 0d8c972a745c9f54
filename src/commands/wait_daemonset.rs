//! `ociregistry wait-daemonset`: the chart's uninstall hook waits with it for
//! the DaemonSet that restores every node's runtime configuration, so the
//! hook needs no image besides the server's own.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use ociregistry::kube::{self, Settings};

#[derive(Args, Debug)]
pub struct WaitDaemonSetArgs {
    /// The DaemonSet's name
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Its namespace
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: String,
    /// How long to wait (10s, 5m, 1h)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The API server [default: in-cluster, from KUBERNETES_SERVICE_HOST]
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token file [default: the pod's service-account token]
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate file [default: the pod's service-account CA]
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

pub fn run(args: &WaitDaemonSetArgs) -> Result<()> {
    let settings = Settings {
        server: args.server.clone(),
        token_file: args.token_file.clone(),
        ca_file: args.ca_file.clone(),
    };
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(kube::daemonset::wait(&settings, &args.namespace, &args.name, args.timeout))
}
