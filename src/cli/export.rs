//! `vellum export events|audit|disclosures`: compliance exports from a live
//! cluster through its API (so every export is itself recorded in the access
//! trail), written in formats the compliance officer's tools read.

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};

use crate::client::{Client, ClientConfig};

/// `vellum export`
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(subcommand)]
    command: ExportCommand,
}

#[derive(Debug, Subcommand)]
enum ExportCommand {
    /// A signed bundle of one stream's events with a proof per event;
    /// `vellum verify --bundle DIR --policy P` checks it offline.
    Events(EventsArgs),
    /// The access trail as FHIR R4 AuditEvent (NDJSON), CSV or NDJSON.
    Audit(AuditArgs),
    /// HIPAA accounting of disclosures (45 CFR 164.528) for one patient's stream.
    Disclosures(DisclosuresArgs),
}

/// Where the cluster's API is and how to authenticate.
#[derive(Debug, Args)]
struct ApiArgs {
    /// A `vellum dev` cluster directory (URLs, CA and writer token from it).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["api", "ca"])]
    cluster: Option<PathBuf>,
    /// API base URL of a replica (repeat for every replica).
    #[arg(long, value_name = "URL", env = "VELLUM_API", value_delimiter = ',')]
    api: Vec<String>,
    /// The CA certificate (PEM) the API's TLS certificates are signed by.
    #[arg(long, value_name = "FILE", env = "VELLUM_CA")]
    ca: Option<PathBuf>,
    /// Bearer token (default with --cluster: the dev writer token).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "VELLUM_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

#[derive(Debug, Args)]
struct EventsArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The patient's stream.
    #[arg(long)]
    stream: u64,
    /// First offset.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// One past the last offset (default: 1000 events after --from).
    #[arg(long)]
    to: Option<u64>,
    /// Why the export is made (recorded in the trail and the manifest).
    #[arg(long)]
    purpose: Option<String>,
    /// The bundle directory to create (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AuditFormat {
    Fhir,
    Csv,
    Ndjson,
}

#[derive(Debug, Args)]
struct AuditArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// From this time (RFC 3339 UTC like 2026-11-27T00:00:00Z, or unix nanoseconds).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Until this time, excluded.
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Only accesses to this stream.
    #[arg(long)]
    stream: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "fhir")]
    format: AuditFormat,
    /// The file to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DisclosureFormat {
    Csv,
    Json,
}

#[derive(Debug, Args)]
struct DisclosuresArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The patient's stream.
    #[arg(long)]
    stream: u64,
    /// From this time (RFC 3339 UTC or unix nanoseconds).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Until this time, excluded.
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    format: DisclosureFormat,
    /// The file to write (default: standard output).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    match args.command {
        ExportCommand::Events(args) => runtime.block_on(events(args)),
        ExportCommand::Audit(args) => runtime.block_on(audit(args)),
        ExportCommand::Disclosures(args) => runtime.block_on(disclosures(args)),
    }
}

fn client(args: &ApiArgs) -> anyhow::Result<Client> {
    let (urls, ca, token) = match &args.cluster {
        Some(dir) => {
            let dev = crate::cluster::DevCluster::load(dir)?;
            let token = args.token.clone().unwrap_or(dev.writer_token.clone());
            (dev.api_urls.clone(), Some(dev.ca_pem_path.clone()), token)
        }
        None => {
            let token = args.token.clone().ok_or_else(|| {
                anyhow::anyhow!("--token (or VELLUM_TOKEN) is required without --cluster")
            })?;
            anyhow::ensure!(!args.api.is_empty(), "give --cluster DIR or --api URL");
            (args.api.clone(), args.ca.clone(), token)
        }
    };
    let mut config = ClientConfig::new(urls, token);
    if let Some(ca) = ca {
        let pem = std::fs::read(&ca).map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
        config.ca_pem = Some(pem);
    }
    Ok(Client::new(config)?)
}

async fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.api)?;
    let to = args.to.unwrap_or(args.from.saturating_add(1000));
    let request = crate::api::ExportEventsRequest {
        stream: args.stream,
        from: args.from,
        to,
        purpose: args.purpose.clone(),
    };
    let bundle = client.export_events(&request).await?;
    write_bundle_files(&args.out, &bundle)?;
    eprintln!(
        "wrote {} files to {} (check it with: vellum verify --bundle {} --policy <policy.txt>)",
        bundle.files.len(),
        args.out.display(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes the bundle's files under `out` (which must be new or empty),
/// refusing any name that would leave the directory.
fn write_bundle_files(out: &Path, bundle: &crate::api::ExportBundle) -> anyhow::Result<()> {
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        anyhow::bail!(
            "{} exists and is not empty; choose a new directory",
            out.display()
        );
    }
    std::fs::create_dir_all(out)?;
    for file in &bundle.files {
        let relative = Path::new(&file.name);
        let safe = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        anyhow::ensure!(
            safe,
            "the server sent a file name outside the bundle: {:?}",
            file.name
        );
        let path = out.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let bytes = base64::engine::general_purpose::STANDARD.decode(&file.base64)?;
        crate::fsutil::write_durable(&path, &bytes, 0o600)?;
    }
    Ok(())
}

async fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.api)?;
    let from = args.from.as_deref().map(parse_time).transpose()?;
    let to = args.to.as_deref().map(parse_time).transpose()?;
    let export = client.export_audit(from, to, args.stream).await?;
    let records: Vec<(vellum_compliance::trail::AccessEvent, Option<u64>)> = export
        .records
        .iter()
        .map(|r| (r.event.clone(), Some(r.position)))
        .collect();
    let written = match args.format {
        AuditFormat::Fhir => {
            vellum_compliance::fhir::write_fhir_ndjson(&args.out, &records, &export.source)?
        }
        AuditFormat::Csv => vellum_compliance::tabular::write_csv(&args.out, &records)?,
        AuditFormat::Ndjson => vellum_compliance::tabular::write_ndjson(&args.out, &records)?,
    };
    eprintln!("wrote {written} access records to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

async fn disclosures(args: DisclosuresArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.api)?;
    let from = args.from.as_deref().map(parse_time).transpose()?;
    let to = args.to.as_deref().map(parse_time).transpose()?;
    let export = client.export_audit(from, to, Some(args.stream)).await?;
    let events: Vec<(vellum_compliance::trail::AccessEvent, Option<u64>)> = export
        .records
        .iter()
        .map(|r| (r.event.clone(), Some(r.position)))
        .collect();
    // Global-log reads and subscriptions name no stream; they are listed only
    // when the caller supplies the stream's positions, which would mean
    // reading the patient's data just to account for it, so they are not.
    let accounting = vellum_compliance::disclosures::account(
        &events,
        args.stream,
        &[],
        from.unwrap_or(0),
        to.unwrap_or(u64::MAX),
        crate::log::now_ns(),
    );
    let text = match args.format {
        DisclosureFormat::Csv => vellum_compliance::disclosures::disclosures_csv(&accounting),
        DisclosureFormat::Json => vellum_compliance::disclosures::disclosures_json(&accounting),
    };
    match &args.out {
        Some(path) => crate::fsutil::write_durable(path, text.as_bytes(), 0o600)?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// RFC 3339 UTC (`2026-11-27T10:00:00Z`, optional fraction) or unix nanoseconds.
fn parse_time(text: &str) -> anyhow::Result<u64> {
    if let Ok(ns) = text.parse::<u64>() {
        return Ok(ns);
    }
    crate::cli::time::parse_rfc3339_utc(text).ok_or_else(|| {
        anyhow::anyhow!(
            "{text:?} is not RFC 3339 UTC (like 2026-11-27T10:00:00Z) or unix nanoseconds"
        )
    })
}
