//! `attune serve`: the web app and its API on an address, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use attune::serve::{ServeConfig, serve};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on. Anything but loopback requires --token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Directory for the database, uploads, checkpoints and indexes.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Directory holding one folder per model (as `make run` fetches them).
    #[arg(long, default_value = "./models")]
    models_dir: PathBuf,
    /// The built web app (Trunk's output).
    #[arg(long, default_value = "./dist")]
    dist_dir: PathBuf,
    /// Where model math runs: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Largest file accepted by uploads, in MB.
    #[arg(long, default_value_t = super::corpus::DEFAULT_MAX_UPLOAD_MB)]
    max_upload_mb: u64,
    /// Bearer token required on /api and /ws (at least 8 URL-safe characters). Prefer the
    /// ATTUNE_TOKEN variable: other users of the machine can read command lines.
    #[arg(long, env = "ATTUNE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Another host name (or name:port) the server answers to, beside localhost, 127.0.0.1 and
    /// [::1]; with a port it is also an origin whose pages may use the API (`trunk serve`'s
    /// 127.0.0.1:8081). Repeatable.
    #[arg(long = "allowed-host", value_name = "HOST[:PORT]")]
    allowed_hosts: Vec<String>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServeConfig {
        data_dir: args.data_dir,
        models_dir: args.models_dir,
        dist_dir: args.dist_dir,
        token: args.token,
        device: attune::model::describe_device(&attune::model::device::select(&args.device)?),
        device_spec: args.device.clone(),
        max_upload_bytes: args.max_upload_mb * 1024 * 1024,
        host_rules: attune::serve::origin::HostRules::new(&args.allowed_hosts).map_err(anyhow::Error::msg)?,
        document_parser: attune::engine::ingest::DocumentParser::Sandboxed(
            attune::engine::ingest::SandboxLimits::for_program(std::env::current_exe()?),
        ),
    };
    // Check before binding, so a refused configuration never opens a socket.
    config.check_for(args.addr)?;
    let listener =
        tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("cannot listen on {}", args.addr))?;
    serve(listener, config, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
