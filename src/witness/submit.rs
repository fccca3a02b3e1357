//! Feeding a witness from a cluster (`vellum witness submit`): fetch the
//! cluster's newest certificate, learn the witness's size (a first request
//! from `old 0`; a 409 answers the size it holds, per c2sp.org/tlog-witness),
//! fetch the consistency proof from that size, submit, and return the
//! certificate with the witness's cosignature lines appended.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use vellum_audit::checkpoint::Certificate;
use vellum_audit::cosignature::parse_signature_lines;

use crate::client::Client;

/// Requests to the witness per submission: `old 0`, then from its size,
/// then once more if it moved in between.
pub const SUBMIT_ATTEMPTS_MAX: usize = 3;
/// Deadline of one request to the witness.
pub const WITNESS_TIMEOUT_MS_MAX: u64 = 10_000;
/// The largest witness answer read, in bytes.
pub const ANSWER_BYTES_MAX: usize = 64 * 1024;

/// A certificate the witness cosigned.
#[derive(Clone, Debug)]
pub struct Submitted {
    /// The tree size cosigned.
    pub size: u64,
    /// The certificate text with the cosignature lines appended (a signed
    /// note that `vellum proof check` and `Certificate::verify` read).
    pub cosigned: String,
}

/// Submits the cluster's newest certificate to the witness at `url` (its
/// submission prefix, e.g. `http://127.0.0.1:7380`).
pub async fn submit(cluster: &Client, url: &str) -> anyhow::Result<Submitted> {
    let latest = cluster.certificate().await?;
    submit_certificate(cluster, url, &latest.certificate).await
}

/// Submits `certificate` (a certificate of the cluster, e.g. an export
/// bundle's) to the witness at `url`, with the consistency proof from the
/// size the witness holds. A witness that already cosigned a larger tree
/// cannot cosign this one (c2sp.org/tlog-witness has no way back).
pub async fn submit_certificate(
    cluster: &Client,
    url: &str,
    certificate: &str,
) -> anyhow::Result<Submitted> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(WITNESS_TIMEOUT_MS_MAX))
        .build()?;
    let parsed =
        Certificate::parse(certificate).map_err(|e| anyhow::anyhow!("certificate: {e}"))?;
    let latest = crate::api::CertificateAnswer {
        size: parsed.checkpoint.size,
        certificate: certificate.to_owned(),
    };
    let mut old = 0u64;
    for _ in 0..SUBMIT_ATTEMPTS_MAX {
        let proof = if old == 0 || old == latest.size {
            Vec::new()
        } else {
            anyhow::ensure!(
                old < latest.size,
                "the witness holds size {old}, above this certificate's ({}): it cannot cosign \
                 a smaller tree (or the cluster was rolled back)",
                latest.size
            );
            let answer = cluster.consistency(old, Some(latest.size)).await?;
            answer
                .hashes
                .iter()
                .map(|hex| {
                    vellum_audit::hash::from_hex(hex)
                        .ok_or_else(|| anyhow::anyhow!("proof hash {hex:?} is not hex"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?
        };
        match add_checkpoint(&http, url, old, &proof, &latest.certificate).await? {
            Answer::Cosigned(text) => {
                let cosigned = format!("{}{text}", latest.certificate);
                Certificate::parse(&cosigned)
                    .map_err(|e| anyhow::anyhow!("cosigned certificate: {e}"))?;
                return Ok(Submitted {
                    size: latest.size,
                    cosigned,
                });
            }
            Answer::Size(held) => {
                anyhow::ensure!(
                    held != old,
                    "witness answered 409 with the size it was sent"
                );
                old = held;
            }
        }
    }
    anyhow::bail!("the witness kept moving: gave up after {SUBMIT_ATTEMPTS_MAX} requests")
}

/// What a witness answered an `add-checkpoint` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200: its signature lines (parsed, not yet verified), as text.
    Cosigned(String),
    /// 409 `text/x.tlog.size`: the size it holds.
    Size(u64),
}

/// Why an `add-checkpoint` exchange gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The request did not complete (refused connection, timeout, ...).
    #[error("witness request failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The witness refused with this status.
    #[error("witness refused with {status}: {text}")]
    Refused { status: u16, text: String },
    /// The answer is not what the protocol allows (too large, not signature
    /// lines, a size that is not a canonical decimal).
    #[error("witness answer is malformed: {0}")]
    Malformed(String),
}

/// One `add-checkpoint` request to the witness at `url` (its submission
/// prefix): `old`, the consistency proof from it, the certificate text.
pub async fn add_checkpoint(
    http: &reqwest::Client,
    url: &str,
    old: u64,
    proof: &[vellum_audit::Hash],
    certificate: &str,
) -> Result<Answer, ExchangeError> {
    let response = http
        .post(format!("{}/add-checkpoint", url.trim_end_matches('/')))
        .body(request_body(old, proof, certificate))
        .send()
        .await?;
    let status = response.status().as_u16();
    let is_size = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == super::server::SIZE_CONTENT_TYPE.as_bytes());
    let bytes = read_bounded(response).await?;
    let text = String::from_utf8_lossy(&bytes);
    match status {
        200 => {
            parse_signature_lines(&text).map_err(|e| ExchangeError::Malformed(e.to_string()))?;
            Ok(Answer::Cosigned(text.into_owned()))
        }
        409 if is_size => crate::bounds::parse_canonical("witness size", text.trim_end())
            .map(Answer::Size)
            .map_err(|e| ExchangeError::Malformed(format!("409 answer: {e}"))),
        _ => Err(ExchangeError::Refused {
            status,
            text: text.trim_end().chars().take(200).collect(),
        }),
    }
}

/// The answer's body, refused beyond [`ANSWER_BYTES_MAX`] bytes (read in
/// chunks, so a witness streaming garbage costs at most that much memory).
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, ExchangeError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if bytes.len() + chunk.len() > ANSWER_BYTES_MAX {
            return Err(ExchangeError::Malformed("answer is too large".into()));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// `old <size>`, one base64 line per proof hash, an empty line, the
/// certificate.
fn request_body(old: u64, proof: &[vellum_audit::Hash], certificate: &str) -> String {
    let mut body = format!("old {old}\n");
    for hash in proof {
        body.push_str(&BASE64.encode(hash));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(certificate);
    body
}
