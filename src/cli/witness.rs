//! `vellum witness`: run an outside witness (c2sp.org/tlog-witness) for the
//! logs of the given trust policies. Wiring only; see `crate::witness`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use vellum_audit::policy::Policy;

/// `vellum witness`
#[derive(Debug, Args)]
pub struct WitnessArgs {
    /// The witness's own directory: its key and its store (created if missing).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Where to serve `POST /add-checkpoint`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7380")]
    listen: SocketAddr,
    /// A trust policy naming one log (origin, replica keys, quorum) to
    /// witness; repeat for more logs.
    #[arg(long, value_name = "FILE", required = true)]
    policy: Vec<PathBuf>,
    /// The witness's key name, used when its key is created on first start.
    #[arg(long, value_name = "NAME", default_value = "vellum.local/witness")]
    name: String,
}

pub fn run(args: WitnessArgs) -> anyhow::Result<ExitCode> {
    let mut policies: Vec<Policy> = Vec::with_capacity(args.policy.len());
    for path in &args.policy {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("policy {}: {e}", path.display()))?;
        let policy =
            Policy::parse(&text).map_err(|e| anyhow::anyhow!("policy {}: {e}", path.display()))?;
        if policies.iter().any(|p| p.origin == policy.origin) {
            anyhow::bail!(
                "policy {}: origin {} is given twice",
                path.display(),
                policy.origin
            );
        }
        policies.push(policy);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let witness = crate::witness::open(&args.data_dir, &args.name, policies).await?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("listen on {}: {e}", args.listen))?;
        println!("witness {}", witness.vkey());
        println!("listening on http://{}", listener.local_addr()?);
        crate::witness::server::serve(listener, Arc::new(witness)).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
