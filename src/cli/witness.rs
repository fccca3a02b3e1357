//! `vellum witness`: run an outside witness (c2sp.org/tlog-witness) for the
//! logs of the given trust policies, or feed one from a cluster
//! (`vellum witness submit`). Wiring only; see `crate::witness`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use vellum_audit::policy::Policy;

use crate::client::{Client, ClientConfig};

/// `vellum witness`
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WitnessArgs {
    #[command(subcommand)]
    command: Option<WitnessCommand>,
    /// The witness's own directory: its key and its store (created if missing).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Where to serve `POST /add-checkpoint`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7380")]
    listen: SocketAddr,
    /// A trust policy naming one log (origin, replica keys, quorum) to
    /// witness; repeat for more logs.
    #[arg(long, value_name = "FILE")]
    policy: Vec<PathBuf>,
    /// The witness's key name, used when its key is created on first start.
    #[arg(long, value_name = "NAME", default_value = "vellum.local/witness")]
    name: String,
}

#[derive(Debug, Subcommand)]
enum WitnessCommand {
    /// Submit a cluster's newest certificate to a witness and write the
    /// cosigned certificate (certificate plus cosignature lines).
    Submit(SubmitArgs),
}

/// `vellum witness submit`
#[derive(Debug, Args)]
struct SubmitArgs {
    /// A `vellum dev` cluster directory (API URLs, CA, auditor token).
    #[arg(long, value_name = "DIR")]
    cluster: PathBuf,
    /// The witness's submission URL, e.g. http://127.0.0.1:7380.
    #[arg(long, value_name = "URL")]
    witness: String,
    /// Where to write the cosigned certificate (the cluster's newest).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "bundle",
        conflicts_with = "bundle"
    )]
    out: Option<PathBuf>,
    /// Cosign an export bundle's certificate instead, and write the
    /// cosignature lines to DIR/cosignatures.txt.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
}

pub fn run(args: WitnessArgs) -> anyhow::Result<ExitCode> {
    if let Some(WitnessCommand::Submit(submit)) = args.command {
        return run_submit(submit);
    }
    let data_dir = args
        .data_dir
        .ok_or_else(|| anyhow::anyhow!("--data-dir is required"))?;
    anyhow::ensure!(!args.policy.is_empty(), "give at least one --policy");
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
        let witness = crate::witness::open(&data_dir, &args.name, policies).await?;
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

fn run_submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let dev = crate::cluster::DevCluster::load(&args.cluster)?;
    let mut config = ClientConfig::new(dev.api_urls.clone(), dev.auditor_token.clone());
    config.ca_pem = Some(
        std::fs::read(&dev.ca_pem_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dev.ca_pem_path.display()))?,
    );
    let client = Client::new(config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    if let Some(bundle) = &args.bundle {
        let path = bundle.join(vellum_compliance::bundle::CERTIFICATE_FILE);
        let certificate = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let submitted = runtime.block_on(crate::witness::submit::submit_certificate(
            &client,
            &args.witness,
            &certificate,
        ))?;
        let lines = submitted
            .cosigned
            .strip_prefix(certificate.as_str())
            .expect("the cosigned note is the certificate plus the witness's lines");
        let out = bundle.join(vellum_compliance::bundle::COSIGNATURES_FILE);
        let mut all = std::fs::read_to_string(&out).unwrap_or_default();
        all.push_str(lines);
        crate::fsutil::replace_durable(&out, all.as_bytes(), 0o644)
            .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
        eprintln!(
            "cosignature of size {} added to {}",
            submitted.size,
            out.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let out = args.out.expect("clap requires --out without --bundle");
    let submitted = runtime.block_on(crate::witness::submit::submit(&client, &args.witness))?;
    crate::fsutil::replace_durable(&out, submitted.cosigned.as_bytes(), 0o644)
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    eprintln!(
        "cosigned certificate of size {} written to {}",
        submitted.size,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
