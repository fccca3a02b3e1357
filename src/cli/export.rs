//! `vellum export events|audit|disclosures`: compliance exports from a live
//! cluster through its API (so every export is itself recorded in the access
//! trail), written in formats the compliance officer's tools read.

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};

use vellum_compliance::tabular::TrailFormat;

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
pub(crate) struct ApiArgs {
    /// A `vellum dev` cluster directory (URLs, CA and a dev token from it).
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
    #[arg(long, value_parser = crate::cli::number_flag)]
    stream: u64,
    /// First offset.
    #[arg(long, default_value_t = 0, value_parser = crate::cli::number_flag)]
    from: u64,
    /// One past the last offset (default: 1000 events after --from).
    #[arg(long, value_parser = crate::cli::number_flag)]
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
    #[arg(long, value_parser = crate::cli::number_flag)]
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
    #[arg(long, value_parser = crate::cli::number_flag)]
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
    client_with(args, |dev| Ok(dev.writer_token.clone()))
}

/// A client for `args`; with `--cluster` and no `--token`, the dev token
/// `dev_token` picks.
pub(crate) fn client_with(
    args: &ApiArgs,
    dev_token: impl Fn(&crate::cluster::DevCluster) -> anyhow::Result<String>,
) -> anyhow::Result<Client> {
    let (urls, ca, token) = match &args.cluster {
        Some(dir) => {
            let dev = crate::cluster::DevCluster::load(dir)?;
            let token = match args.token.clone() {
                Some(token) => token,
                None => dev_token(&dev)?,
            };
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
/// refusing any name that would leave the directory. All or nothing: every
/// name is checked and every body decoded before anything is created, the
/// files are written into a hidden sibling directory that is renamed to
/// `out` only once complete, and removed on any failure, so a refused or
/// failed export leaves no partial bundle on disk.
fn write_bundle_files(out: &Path, bundle: &crate::api::ExportBundle) -> anyhow::Result<()> {
    let out_exists = out.exists();
    if out_exists && std::fs::read_dir(out)?.next().is_some() {
        anyhow::bail!(
            "{} exists and is not empty; choose a new directory",
            out.display()
        );
    }
    let mut files = Vec::with_capacity(bundle.files.len());
    for file in &bundle.files {
        let relative = Path::new(&file.name);
        let safe = relative.components().next().is_some()
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        anyhow::ensure!(
            safe,
            "the server sent a file name outside the bundle: {:?}; nothing was written",
            file.name
        );
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&file.base64)
            .map_err(|e| {
                anyhow::anyhow!(
                    "bundle file {:?} is not base64: {e}; nothing was written",
                    file.name
                )
            })?;
        files.push((relative.to_path_buf(), bytes));
    }
    let staging = staging_dir(out)?;
    let written = write_staged(&staging, &files).and_then(|()| {
        if out_exists {
            std::fs::remove_dir(out)?;
        }
        std::fs::rename(&staging, out)?;
        Ok(())
    });
    if let Err(error) = written {
        // Best effort: the error below is what the caller must see.
        let _ = std::fs::remove_dir_all(&staging);
        return Err(error.context(format!(
            "writing the bundle to {} failed; nothing was left there",
            out.display()
        )));
    }
    crate::fsutil::sync_parent(out)?;
    Ok(())
}

/// A new hidden directory beside `out` to write a bundle into.
fn staging_dir(out: &Path) -> anyhow::Result<PathBuf> {
    let name = out
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{} names no directory", out.display()))?;
    let staging = out.with_file_name(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::create_dir_all(&staging).map_err(|e| anyhow::anyhow!("{}: {e}", staging.display()))?;
    Ok(staging)
}

fn write_staged(staging: &Path, files: &[(PathBuf, Vec<u8>)]) -> anyhow::Result<()> {
    for (relative, bytes) in files {
        let path = staging.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        crate::fsutil::write_durable(&path, bytes, 0o600)?;
    }
    Ok(())
}

/// The `--from` and `--to` times of an export, parsed.
fn time_window(from: Option<&str>, to: Option<&str>) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let from = from.map(|t| parse_time("--from", t)).transpose()?;
    let to = to.map(|t| parse_time("--to", t)).transpose()?;
    Ok((from, to))
}

async fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    // Flags first: a bad number is refused before anything is contacted.
    let (from, to) = time_window(args.from.as_deref(), args.to.as_deref())?;
    let client = client(&args.api)?;
    let format = match args.format {
        AuditFormat::Fhir => TrailFormat::Fhir,
        AuditFormat::Csv => TrailFormat::Csv,
        AuditFormat::Ndjson => TrailFormat::Ndjson,
    };
    // The answer is read as it arrives and each record written out at
    // once: memory is one record whatever the trail's length. The file is
    // created only once the server has accepted the request, and removed
    // again if the answer breaks off.
    let reader = client
        .export_audit_stream(from, to, args.stream)
        .await?
        .into_reader();
    let out = args.out.clone();
    let written = tokio::task::spawn_blocking(move || {
        vellum_compliance::tabular::write_trail(&out, format, |rows| {
            crate::client::read_audit_export(reader, |source, record| {
                rows.push(source, &record.event, Some(record.position))
            })
            .map(|_| ())
        })
    })
    .await??;
    eprintln!("wrote {written} access records to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

async fn disclosures(args: DisclosuresArgs) -> anyhow::Result<ExitCode> {
    // Flags first: a bad number is refused before anything is contacted.
    let (from, to) = time_window(args.from.as_deref(), args.to.as_deref())?;
    let client = client(&args.api)?;
    // The whole trail of the period, not only events naming the stream:
    // global-log reads and subscriptions name none. They are attributed by
    // the streams they returned (the trail's `streams`); the stream's
    // positions are not supplied (that would mean reading the patient's
    // data to account for it), so the rest is reported as not attributable.
    // Read as it arrives: only what the accounting lists is kept.
    let reader = client
        .export_audit_stream(from, to, None)
        .await?
        .into_reader();
    let stream = args.stream;
    let accounting = tokio::task::spawn_blocking(move || {
        let mut builder = vellum_compliance::disclosures::AccountingBuilder::new(
            stream,
            &[],
            from.unwrap_or(0),
            to.unwrap_or(u64::MAX),
        );
        crate::client::read_audit_export(reader, |_, record| {
            builder.push(&record.event, Some(record.position));
            Ok(())
        })?;
        Ok::<_, std::io::Error>(builder.finish(crate::log::now_ns()))
    })
    .await??;
    // The CSV is one table of disclosures; the break-glass section is in
    // the JSON, so say on stderr how many uses there were.
    if !accounting.break_glass.is_empty() {
        eprintln!(
            "{} break-glass (emergency access) uses of stream {} in the period: see the \
             `break_glass` section of --format json",
            accounting.break_glass.len(),
            args.stream
        );
    }
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
/// Nanoseconds follow the edge rule ([`crate::bounds::parse_canonical`]):
/// one canonical spelling, at most `i64::MAX`; `flag` names the input.
pub(crate) fn parse_time(flag: &str, text: &str) -> anyhow::Result<u64> {
    let numeric = text
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'+' || b == b'-');
    if numeric && !text.is_empty() {
        return Ok(crate::bounds::parse_canonical(flag, text)?);
    }
    crate::cli::time::parse_rfc3339_utc(text)
        .map(|ns| crate::bounds::check(flag, ns))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{flag}: {text:?} is not RFC 3339 UTC (like 2026-11-27T10:00:00Z) or unix nanoseconds"
            )
        })?
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> crate::api::ExportFile {
        crate::api::ExportFile {
            name: name.to_string(),
            base64: base64::engine::general_purpose::STANDARD.encode(text),
        }
    }

    /// Goal: a bundle with one refused file name (or bad base64) leaves
    /// nothing on disk, not even the files before it; a good one is written whole.
    #[test]
    fn refused_bundle_leaves_no_partial_export() {
        let tmp = tempfile::tempdir().expect("tmp");
        for bad in [
            file("../escape.txt", "x"),
            file("/etc/passwd", "x"),
            file("", "x"),
            crate::api::ExportFile {
                name: "events.ndjson".into(),
                base64: "not base64!".into(),
            },
        ] {
            let out = tmp.path().join("bundle");
            let bundle = crate::api::ExportBundle {
                files: vec![file("manifest.json", "{}"), file("a/b.txt", "b"), bad],
            };
            let error = write_bundle_files(&out, &bundle).expect_err("refused");
            assert!(error.to_string().contains("nothing was written"), "{error}");
            assert!(!out.exists(), "no partial bundle");
            let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("ls").collect();
            assert!(left.is_empty(), "no staging left: {left:?}");
        }
        let out = tmp.path().join("bundle");
        std::fs::create_dir(&out).expect("an empty directory is accepted");
        let bundle = crate::api::ExportBundle {
            files: vec![file("manifest.json", "{}"), file("a/b.txt", "b")],
        };
        write_bundle_files(&out, &bundle).expect("written");
        assert_eq!(std::fs::read(out.join("a/b.txt")).expect("read"), b"b");
        assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 1);
    }
}
