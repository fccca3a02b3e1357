//! mTLS client identities on three real replica processes: a matrix of
//! presented credentials (none, unknown, wrong role, out of scope, good,
//! a replica's own, expired, a foreign CA's, certificate plus token) ×
//! (a read, an append, an export), at the primary and at a backup (which
//! forwards appends and exports with the client's chain); the access trail
//! names the certificate's principal; a client may not forge the
//! forwarding header; the Rust client presents a certificate; a line
//! deleted from the file is refused by every replica without a restart;
//! `vellum verify --cluster` passes afterwards. One cluster for all of it.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use vellum::client::{Client, ClientConfig, ClientIdentity};
use vellum::local_cluster::LocalCluster;
use vellum::net::tls::{ClientCa, ClientCertSpec, certificate_sha256, certificates_from_pem};
use vellum::server::auth::{Role, Scope, digest_line};
use vellum_compliance::trail::{AccessAction, AccessEvent};

mod support;
use support::TestDir;

const WAIT: Duration = Duration::from_secs(60);
/// The stream every matrix cell touches.
const STREAM: u64 = 1001;
/// How long a replica may take to reload a changed client certificates
/// file (it checks once a second), with room for a loaded machine.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// What a request presented, and the statuses expected for (read, append,
/// export); None: the TLS handshake itself is refused.
struct Case {
    name: &'static str,
    /// Certificate and key PEM presented, if any.
    identity: Option<(String, String)>,
    /// Bearer token sent, if any.
    token: Option<String>,
    expected: [Option<u16>; 3],
}

/// A client certificate of `ca` for `name`, and its line in clients.txt
/// (None: left out of the table).
fn issue(ca: &ClientCa, name: &str, expired: bool) -> (String, String) {
    let (cert, key) = ca
        .issue(&ClientCertSpec {
            common_name: name,
            dns_names: &[],
            expired,
        })
        .expect("issue a client certificate");
    (cert, key.to_string())
}

fn line(cert_pem: &str, principal: &str, role: Role, scope: &str) -> String {
    let chain = certificates_from_pem(cert_pem.as_bytes(), Path::new("<test>")).expect("pem");
    let scope = Scope::parse(scope).expect("scope");
    digest_line(&certificate_sha256(&chain[0]), principal, role, &scope)
}

fn read_pem(path: &Path) -> String {
    std::fs::read_to_string(path).expect("pem file")
}

/// One request of the matrix: `(status or None when the handshake failed, body)`.
async fn call(
    cluster: &LocalCluster,
    replica: usize,
    case: &Case,
    route: usize,
) -> Option<(u16, Value)> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cluster.ca_pem()).expect("ca"))
        .timeout(WAIT);
    if let Some((cert, key)) = &case.identity {
        let pem = format!("{cert}\n{key}");
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    let http = builder.build().expect("http client");
    let base = &cluster.dev.api_urls[replica];
    let request = match route {
        0 => http.get(format!("{base}/v1/streams/{STREAM}/events")),
        1 => http
            .post(format!("{base}/v1/streams/{STREAM}/append"))
            .json(&json!({"events": [{"json": {"case": case.name}}]})),
        _ => http
            .post(format!("{base}/v1/export/events"))
            .json(&json!({"stream": STREAM, "from": 0, "to": 1, "purpose": "TREAT"})),
    };
    let request = match &case.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let answer = request.send().await.ok()?;
    let status = answer.status().as_u16();
    Some((status, answer.json().await.unwrap_or(Value::Null)))
}

/// The access-trail events of `principal`, read at the primary.
async fn trail_of(cluster: &LocalCluster, primary: usize, principal: &str) -> Vec<AccessEvent> {
    let auditor = cluster.dev.auditor_token.clone();
    let (status, trail) = support::cluster_call(
        cluster,
        primary,
        "GET",
        Some(&auditor),
        &format!("/v1/export/audit?stream={STREAM}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{trail}");
    trail["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| serde_json::from_value(r["event"].clone()).expect("event"))
        .filter(|e: &AccessEvent| e.principal == principal)
        .collect()
}

/// The identities of the matrix, issued by the dev client CA (and one
/// foreign CA), with the clients.txt lines they need.
struct Identities {
    cases: Vec<Case>,
    lines: Vec<String>,
}

fn identities(cluster_dir: &Path) -> Identities {
    let tls = cluster_dir.join("tls");
    let ca = ClientCa::load(&tls.join("client-ca.pem"), &tls.join("client-ca.key")).expect("ca");
    let service = (
        read_pem(&tls.join("client-service.pem")),
        read_pem(&tls.join("client-service.key")),
    );
    let unknown = issue(&ca, "unknown", false);
    let auditor = issue(&ca, "cert-auditor", false);
    let scoped = issue(&ca, "cert-scoped", false);
    let expired = issue(&ca, "cert-expired", true);
    let foreign = issue(&ClientCa::generate().expect("foreign ca"), "foreign", false);
    let replica = (
        read_pem(&tls.join("replica-0.pem")),
        read_pem(&tls.join("replica-0.key")),
    );
    let lines = vec![
        line(&auditor.0, "cert-auditor", Role::Auditor, "*"),
        line(&scoped.0, "cert-scoped", Role::Writer, "2000-2999"),
        line(&expired.0, "cert-expired", Role::Writer, "*"),
        line(&foreign.0, "cert-foreign", Role::Writer, "*"),
        // Even listed, a replica's certificate is no client identity.
        line(&replica.0, "cert-impostor", Role::Writer, "*"),
    ];
    let writer_token = std::fs::read_to_string(cluster_dir.join("dev-token.txt"))
        .expect("dev tokens")
        .lines()
        .find_map(|l| l.strip_prefix("writer dev ").map(str::to_string))
        .expect("writer token");
    let case = |name, identity: Option<(String, String)>, expected| Case {
        name,
        identity,
        token: None,
        expected,
    };
    let (ok, unauthorized, forbidden) = (Some(200), Some(401), Some(403));
    // Certificate plus token first: failed logins that carry a token are
    // answered 429 once their source passed its limit (20 a minute), and
    // every refusal below counts against this test's one address.
    let cases = vec![
        Case {
            name: "cert+token",
            identity: Some(service.clone()),
            token: Some(writer_token),
            expected: [unauthorized; 3],
        },
        case("none", None, [unauthorized; 3]),
        case("unknown", Some(unknown), [unauthorized; 3]),
        case("wrong-role", Some(auditor), [forbidden; 3]),
        case("out-of-scope", Some(scoped), [forbidden; 3]),
        case("good", Some(service), [ok; 3]),
        case("replica", Some(replica), [unauthorized; 3]),
        case("expired", Some(expired), [None; 3]),
        case("foreign-ca", Some(foreign), [None; 3]),
    ];
    Identities { cases, lines }
}

// Goal: every (credential × route) cell answers its expected status at the
// primary and at a backup; the trail names the certificate's principal for
// a forwarded append; the forwarding header cannot be forged by a client;
// the Rust client authenticates with a certificate; verify passes after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_on_a_live_cluster() {
    let dir = TestDir::new("vellum-mtls");
    let root = dir.path().join("cluster");
    let mut matrix = None;
    let mut cluster = LocalCluster::start_prepared(&root, 3, support::vellum_exe(), |dev| {
        let made = identities(&dev.dir);
        let clients = dev.dir.join("clients.txt");
        let mut text = std::fs::read_to_string(&clients)?;
        for line in &made.lines {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&clients, text)?;
        matrix = Some(made.cases);
        Ok(())
    })
    .expect("cluster");
    let cases = matrix.expect("prepare ran");
    let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
    let backup = (primary + 1) % 3;
    let writer = cluster.client(None).expect("client");
    writer
        .append(STREAM, vec![Bytes::from_static(b"{\"first\":true}")], None)
        .await
        .expect("the first event, so exports have one");
    for replica in [primary, backup] {
        for case in &cases {
            for (route, expected) in case.expected.iter().enumerate() {
                let got = call(&cluster, replica, case, route).await;
                assert_eq!(
                    got.as_ref().map(|(status, _)| *status),
                    *expected,
                    "case {} route {route} at replica {replica} ({}): {got:?}",
                    case.name,
                    if replica == primary {
                        "primary"
                    } else {
                        "backup"
                    },
                );
            }
        }
    }

    // The forwarded append (at the backup) is recorded under the
    // certificate's principal, from the client via the backup.
    let events = trail_of(&cluster, primary, "service").await;
    let appends: Vec<&AccessEvent> = events
        .iter()
        .filter(|e| e.action == AccessAction::Append && e.outcome == "success")
        .collect();
    assert_eq!(appends.len(), 2, "one append per replica asked: {events:?}");
    assert!(
        appends
            .iter()
            .any(|e| e.remote.as_deref().is_some_and(|r| r.contains(" via "))),
        "the backup's forwarded append names the client via the backup: {appends:?}"
    );
    assert!(appends.iter().all(|e| e.role == "writer"), "{appends:?}");
    assert!(
        trail_of(&cluster, primary, "cert-impostor")
            .await
            .is_empty(),
        "a replica certificate never acted as a client"
    );

    // A client cannot name a certificate by header: only a replica may.
    let service = cases
        .iter()
        .find(|c| c.name == "good")
        .and_then(|c| c.identity.clone())
        .expect("service identity");
    let forged = vellum::net::tls::certificates_from_pem(service.0.as_bytes(), Path::new("<t>"))
        .expect("pem");
    let header = vellum::server::mtls::encode_chain(&forged);
    for replica in [primary, backup] {
        let http = support::dev_http(&cluster, WAIT);
        let answer = http
            .get(format!(
                "{}/v1/streams/{STREAM}/events",
                cluster.dev.api_urls[replica]
            ))
            .header(vellum::server::mtls::CLIENT_CERT_HEADER, header.clone())
            .send()
            .await
            .expect("request");
        assert_eq!(answer.status().as_u16(), 401, "forged header at {replica}");
    }

    // The Rust client presents the certificate (no token) and appends
    // through every replica it is given.
    let mut config = ClientConfig::new(cluster.dev.api_urls.clone(), "");
    config.ca_pem = Some(cluster.ca_pem().to_vec());
    config.client_identity = Some(ClientIdentity {
        cert_pem: service.0.clone().into_bytes(),
        key_pem: zeroize::Zeroizing::new(service.1.clone().into_bytes()),
    });
    let client = Client::new(config.clone()).expect("mtls client");
    let receipt = client
        .append(STREAM, vec![Bytes::from_static(b"{\"by\":\"mtls\"}")], None)
        .await
        .expect("append with a client certificate");
    assert!(receipt.next_offset >= 4, "{receipt:?}");
    config.token = cluster.dev.writer_token.clone();
    assert!(
        Client::new(config).is_err(),
        "a client with both a certificate and a token is refused before any request"
    );

    // Revocation without a restart: the service's line deleted from the
    // client certificates file (one file for the three dev replicas,
    // replaced by a rename); every replica reloads it and refuses the
    // certificate within a bounded wait.
    let clients = root.join("clients.txt");
    let kept: String = std::fs::read_to_string(&clients)
        .expect("clients")
        .lines()
        .filter(|l| !l.contains(" service "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(root.join("clients.txt.new"), kept).expect("write");
    std::fs::rename(root.join("clients.txt.new"), &clients).expect("rename");
    let good = cases.iter().find(|c| c.name == "good").expect("good case");
    for replica in 0..3 {
        let deadline = std::time::Instant::now() + RELOAD_WAIT;
        loop {
            let got = call(&cluster, replica, good, 0).await.map(|(s, _)| s);
            if got == Some(401) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replica {replica} still serves a revoked certificate: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    cluster.stop().expect("stop");
    let policy = cluster.dev.policy_path.to_string_lossy().into_owned();
    let root_text = root.to_string_lossy().into_owned();
    let (status, out, err) =
        support::vellum_cli(&["verify", "--cluster", &root_text, "--policy", &policy]);
    assert_eq!(status, 0, "verify --cluster passes:\n{out}\n{err}");
}
