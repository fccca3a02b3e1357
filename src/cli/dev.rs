//! `vellum dev`: a local three-replica cluster on loopback, serving the
//! client API until Ctrl-C, with one outside witness the primary feeds.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::local_cluster::LocalCluster;
use crate::local_witness::LocalWitness;

/// `vellum dev`
#[derive(Debug, Args)]
pub struct DevArgs {
    /// The cluster directory (created on first use, reused after).
    #[arg(long, value_name = "DIR", default_value = "vellum-dev")]
    data_dir: PathBuf,
    /// Replicas (1, 3, 5 or 7).
    #[arg(long, default_value_t = 3, value_parser = crate::cli::number_flag_as::<u8>)]
    replicas: u8,
}

pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut witness = None;
    let mut cluster = LocalCluster::start_prepared(&args.data_dir, args.replicas, &exe, |dev| {
        let mut prepared = LocalWitness::prepare(dev, &exe)?;
        prepared.start()?;
        witness = Some(prepared);
        Ok(())
    })?;
    let witness = witness.expect("prepare ran before the replicas started");
    let primary = runtime.block_on(cluster.wait_primary(Duration::from_secs(30)));
    let primary = match primary {
        Ok(primary) => primary,
        Err(e) => {
            cluster.stop()?;
            return Err(e.into());
        }
    };
    let dev = &cluster.dev;
    println!(
        "vellum dev: {} replicas running; primary is replica {primary}",
        args.replicas
    );
    for (i, url) in dev.api_urls.iter().enumerate() {
        println!(
            "  replica {i}: {url}   (process log: {})",
            cluster.log_path(i).display()
        );
    }
    println!("  CA certificate:  {}", dev.ca_pem_path.display());
    println!("  writer token:    {}", dev.writer_token);
    println!("  auditor token:   {}", dev.auditor_token);
    if let Some(token) = &dev.privacy_officer_token {
        println!("  privacy officer: {token}   (vellum shred / hold / retain)");
    }
    if let Some((cert, key)) = &dev.service_cert {
        println!(
            "  service client certificate (mTLS, principal `service`, instead of a token): {} (key {})",
            cert.display(),
            key.display()
        );
    }
    println!("  trust policy:    {}", dev.policy_path.display());
    println!(
        "  witness:         {} (key {}, data {}, process log {})",
        witness.url,
        witness.key.to_vkey(),
        witness.dir.display(),
        witness.log_path().display()
    );
    println!(
        "  policy requiring the witness: {}",
        witness.witnessed_policy_path.display()
    );
    println!();
    println!("try:");
    println!(
        "  curl --cacert {} -H 'Authorization: Bearer {}' -H 'content-type: application/json' \\\n    -d '{{\"events\":[{{\"json\":{{\"resourceType\":\"Observation\"}}}}]}}' {}/v1/streams/1001/append",
        dev.ca_pem_path.display(),
        dev.writer_token,
        dev.api_urls[0]
    );
    if let Some((cert, key)) = &dev.service_cert {
        println!(
            "  curl --cacert {} --cert {} --key {} {}/v1/streams/1001/events",
            dev.ca_pem_path.display(),
            cert.display(),
            key.display(),
            dev.api_urls[0]
        );
    }
    println!("  API description: {}/openapi.json", dev.api_urls[0]);
    println!("press Ctrl-C to stop");
    runtime.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    eprintln!("stopping replicas and the witness");
    cluster.stop()?;
    drop(witness);
    Ok(ExitCode::SUCCESS)
}
