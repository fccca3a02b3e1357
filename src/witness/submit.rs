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
const ANSWER_BYTES_MAX: usize = 64 * 1024;

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
        let (certificate, proof) = if old == 0 || old == latest.size {
            (latest.certificate.clone(), Vec::new())
        } else {
            anyhow::ensure!(
                old < latest.size,
                "the witness holds size {old}, above this certificate's ({}): it cannot cosign \
                 a smaller tree (or the cluster was rolled back)",
                latest.size
            );
            let answer = cluster.consistency(old, Some(latest.size)).await?;
            (latest.certificate.clone(), answer.hashes)
        };
        let body = request_body(old, &proof, &certificate)?;
        let response = http
            .post(format!("{}/add-checkpoint", url.trim_end_matches('/')))
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let is_size = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == super::server::SIZE_CONTENT_TYPE.as_bytes());
        let bytes = response.bytes().await?;
        anyhow::ensure!(
            bytes.len() <= ANSWER_BYTES_MAX,
            "witness answer is too large"
        );
        let text = String::from_utf8_lossy(&bytes);
        match status {
            200 => {
                parse_signature_lines(&text).map_err(|e| anyhow::anyhow!("witness answer: {e}"))?;
                let cosigned = format!("{certificate}{text}");
                Certificate::parse(&cosigned)
                    .map_err(|e| anyhow::anyhow!("cosigned certificate: {e}"))?;
                return Ok(Submitted {
                    size: latest.size,
                    cosigned,
                });
            }
            409 if is_size => {
                let held = crate::bounds::parse_canonical("witness size", text.trim_end())
                    .map_err(|e| anyhow::anyhow!("witness 409 answer: {e}"))?;
                anyhow::ensure!(
                    held != old,
                    "witness answered 409 with the size it was sent"
                );
                old = held;
            }
            _ => anyhow::bail!("witness refused with {status}: {}", text.trim_end()),
        }
    }
    anyhow::bail!("the witness kept moving: gave up after {SUBMIT_ATTEMPTS_MAX} requests")
}

/// `old <size>`, one base64 line per proof hash (the API gives hex), an
/// empty line, the certificate.
fn request_body(old: u64, proof_hex: &[String], certificate: &str) -> anyhow::Result<String> {
    let mut body = format!("old {old}\n");
    for hex in proof_hex {
        let bytes = vellum_audit::hash::from_hex(hex)
            .ok_or_else(|| anyhow::anyhow!("proof hash {hex:?} is not hex"))?;
        body.push_str(&BASE64.encode(bytes));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(certificate);
    Ok(body)
}
