//! Tests of per-stream scopes and break-glass against the in-memory
//! `FakeNode` of the server's tests: scope spellings at load, the
//! role x scope x route matrix over every route of the route table, the
//! filtering of global reads and subscriptions, and break-glass grants
//! (reason, expiry, per principal, trail marks, metrics).

use super::*;

use crate::server::auth::AuthError;
use crate::server::routes::RouteSpec;

/// The stream every matrix request names.
const STREAM: u64 = 16;
/// The privacy officer's token (key custody only).
const PRIVACY: &str = "vlm_privacy_token";

/// The scopes of the matrix: what `streams=` the token carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Given {
    /// No `streams=` member (an old line, or minimum necessary).
    Nothing,
    /// `streams=16` (the stream asked for).
    Stream,
    /// `streams=17-20` (other streams only).
    Other,
    /// `streams=*`.
    All,
}

impl Given {
    const ALL: [Given; 4] = [Given::Nothing, Given::Stream, Given::Other, Given::All];

    fn member(self) -> &'static str {
        match self {
            Given::Nothing => "",
            Given::Stream => " streams=16",
            Given::Other => " streams=17-20",
            Given::All => " streams=*",
        }
    }

    fn covers_stream(self) -> bool {
        matches!(self, Given::Stream | Given::All)
    }
}

/// What the matrix expects of one (route, scope), for a role the route
/// allows: written here, independently of `Action::scope_rule`, so a
/// changed rule must change this table too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Allowed whatever the scope.
    Any,
    /// Allowed only when the scope covers [`STREAM`].
    Stream,
    /// Allowed only with `streams=*`.
    AllOnly,
}

/// The decision of every route, by method and path, and the request that
/// exercises it (targeting [`STREAM`]). A route missing here fails the
/// matrix: a new route cannot ship without a scope decision.
fn decision(spec: &RouteSpec) -> Option<(Expect, &'static str, Option<&'static str>)> {
    let export = r#"{"stream":16,"from":0,"to":1}"#;
    let append = r#"{"events":[{"base64":"AA=="}]}"#;
    let glass = r#"{"reason":"patient unconscious in the ED","duration_s":60}"#;
    let custody = r#"{"reason":"patient asked for erasure"}"#;
    let retain = r#"{"reason":"six-year rule","retain_until_ms":1}"#;
    let group = r#"{"name":"g16","streams":"16"}"#;
    let positions = r#"{"positions":[0]}"#;
    let verification = r#"{"scope":"s","passed":true,"report_sha256":"0000000000000000000000000000000000000000000000000000000000000000"}"#;
    Some(match (spec.method, spec.path) {
        ("POST", "/v1/streams/{stream}/append") => {
            (Expect::Stream, "/v1/streams/16/append", Some(append))
        }
        ("GET", "/v1/streams/{stream}/events") => (Expect::Stream, "/v1/streams/16/events", None),
        ("GET", "/v1/streams/{stream}/events/{offset}/proof") => {
            (Expect::Stream, "/v1/streams/16/events/0/proof", None)
        }
        ("POST", "/v1/export/events") => (Expect::Stream, "/v1/export/events", Some(export)),
        ("GET", "/v1/export/audit") => (Expect::Stream, "/v1/export/audit?stream=16", None),
        ("GET", "/v1/log") => (Expect::Any, "/v1/log", None),
        ("GET", "/v1/subscribe") => (Expect::Any, "/v1/subscribe", None),
        ("GET", "/v1/consistency") => (Expect::Any, "/v1/consistency?from=1&to=1", None),
        ("GET", "/v1/certificate") => (Expect::Any, "/v1/certificate", None),
        ("POST", "/v1/verifications") => (Expect::Any, "/v1/verifications", Some(verification)),
        ("GET", "/v1/tlog/checkpoint") => (Expect::Any, "/v1/tlog/checkpoint", None),
        ("GET", "/v1/tlog/tile/{*path}") => (Expect::AllOnly, "/v1/tlog/tile/0/000", None),
        ("POST", "/v1/streams/{stream}/break-glass") => {
            (Expect::Any, "/v1/streams/16/break-glass", Some(glass))
        }
        ("POST", "/v1/streams/{stream}/shred") => {
            (Expect::Stream, "/v1/streams/16/shred", Some(custody))
        }
        ("POST", "/v1/streams/{stream}/hold") => {
            (Expect::Stream, "/v1/streams/16/hold", Some(custody))
        }
        ("POST", "/v1/streams/{stream}/hold/release") => {
            (Expect::Stream, "/v1/streams/16/hold/release", Some(custody))
        }
        ("POST", "/v1/streams/{stream}/retention") => {
            (Expect::Stream, "/v1/streams/16/retention", Some(retain))
        }
        // A consumer group's filter (the fake's groups follow stream 16)
        // must be inside the scope.
        ("POST", "/v1/groups") => (Expect::Stream, "/v1/groups", Some(group)),
        ("GET", "/v1/groups/{group}") => (Expect::Stream, "/v1/groups/g16", None),
        ("DELETE", "/v1/groups/{group}") => (Expect::Stream, "/v1/groups/g16", None),
        ("POST", "/v1/groups/{group}/pull") => (Expect::Stream, "/v1/groups/g16/pull", Some("{}")),
        ("POST", "/v1/groups/{group}/ack") => {
            (Expect::Stream, "/v1/groups/g16/ack", Some(positions))
        }
        ("POST", "/v1/groups/{group}/nack") => {
            (Expect::Stream, "/v1/groups/g16/nack", Some(positions))
        }
        ("GET", "/v1/groups/{group}/parked") => (Expect::Stream, "/v1/groups/g16/parked", None),
        ("POST", "/v1/groups/{group}/replay") => {
            (Expect::Stream, "/v1/groups/g16/replay", Some("{}"))
        }
        ("GET", "/v1/health") => (Expect::Any, "/v1/health", None),
        ("GET", "/metrics") => (Expect::Any, "/metrics", None),
        ("GET", "/openapi.json") => (Expect::Any, "/openapi.json", None),
        _ => return None,
    })
}

fn scoped_tokens(given: Given) -> TokenStore {
    let line = |token: &str, name: &str, role: Role| {
        format!(
            "{}{}",
            token_line(token, name, role, &Scope::none()),
            given.member()
        )
    };
    let text = [
        line(WRITER, "alice", Role::Writer),
        line(READER, "bob", Role::Reader),
        line(AUDITOR, "carol", Role::Auditor),
        line(PRIVACY, "dana", Role::PrivacyOfficer),
    ]
    .join("\n");
    TokenStore::from_lines(&text).expect("valid tokens")
}

fn scoped_app(node: Arc<FakeNode>, given: Given) -> (Router, AppState) {
    let state = AppState::new(node, scoped_tokens(given), Vec::new(), b"")
        .expect("state")
        .with_heartbeat_ms(100);
    (router(state.clone()), state)
}

/// Sends one request; the status and, for a 403, the error code (the body
/// of other answers is not read: a subscription never ends).
async fn status_and_code(app: &Router, call: Call<'_>) -> (StatusCode, Option<String>) {
    let response = app
        .clone()
        .oneshot(call.request())
        .await
        .expect("infallible");
    let status = response.status();
    if status != StatusCode::FORBIDDEN {
        return (status, None);
    }
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let value: Value = serde_json::from_slice(&bytes).expect("json error body");
    (status, Some(error_of(&value).error.code))
}

// Goal: every route of the route table, for every role and scope, is
// allowed or refused as the matrix says; a refusal is 403 with the typed
// code (forbidden for the role, scope_denied for the scope) and is
// recorded in the access trail; a route with no decision fails the test.
#[tokio::test]
async fn role_scope_route_matrix_covers_every_route() {
    let roles = [
        (WRITER, Role::Writer, "alice"),
        (READER, Role::Reader, "bob"),
        (AUDITOR, Role::Auditor, "carol"),
        (PRIVACY, Role::PrivacyOfficer, "dana"),
    ];
    let mut checked = 0usize;
    for spec in ROUTES {
        let Some((expect, uri, body)) = decision(spec) else {
            panic!(
                "route {} {} has no scope decision in this matrix",
                spec.method, spec.path
            );
        };
        for given in Given::ALL {
            for (token, role, name) in roles {
                let node = Arc::new(FakeNode::default());
                node.push(STREAM, b"x");
                let (app, _) = scoped_app(node.clone(), given);
                let call = Call {
                    method: spec.method,
                    uri,
                    token: Some(token),
                    body,
                    content_type: "application/json",
                };
                let (status, code) = status_and_code(&app, call).await;
                let place = format!("{} {uri} as {role} with{}", spec.method, given.member());
                let role_allows = spec.action.is_none_or(|a| role.allows(a));
                let scope_allows = match expect {
                    Expect::Any => true,
                    Expect::Stream => given.covers_stream(),
                    Expect::AllOnly => given == Given::All,
                };
                let expected_code = match (role_allows, scope_allows) {
                    (false, _) => Some(api::code::FORBIDDEN),
                    (true, false) => Some(api::code::SCOPE_DENIED),
                    (true, true) => None,
                };
                match expected_code {
                    None => assert_ne!(status, StatusCode::FORBIDDEN, "{place}: {code:?}"),
                    Some(expected) => {
                        assert_eq!(status, StatusCode::FORBIDDEN, "{place}");
                        assert_eq!(code.as_deref(), Some(expected), "{place}");
                        let trail = node.lock().trail.clone();
                        let recorded = trail.iter().any(|e| {
                            e.principal == name
                                && (e.outcome.starts_with("denied: 403")
                                    || e.outcome == "refused: 403")
                        });
                        assert!(recorded, "{place}: refusal not in the trail: {trail:?}");
                    }
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, ROUTES.len() * Given::ALL.len() * roles.len());
}

// Goal: the whole-trail export (no `?stream=`) needs `streams=*`, since
// the trail names every patient's stream.
#[tokio::test]
async fn whole_trail_export_needs_every_stream() {
    for (given, allowed) in [
        (Given::Nothing, false),
        (Given::Stream, false),
        (Given::All, true),
    ] {
        let (app, _) = scoped_app(Arc::new(FakeNode::default()), given);
        let (status, code) =
            status_and_code(&app, Call::get("/v1/export/audit", Some(AUDITOR))).await;
        if allowed {
            assert_eq!(status, StatusCode::OK, "{given:?}");
        } else {
            assert_eq!(
                (status, code.as_deref()),
                (StatusCode::FORBIDDEN, Some(api::code::SCOPE_DENIED)),
                "{given:?}"
            );
        }
    }
}

// Goal: odd spellings of a scope are refused when the tokens file loads,
// with the line and the item named; good ones mean what they say.
#[test]
fn scope_spellings_are_checked_at_load() {
    let line = |scope: &str| {
        format!(
            "{}\n{} {scope}\n",
            token_line("vlm_a", "ann", Role::Reader, &Scope::all()),
            token_line("vlm_b", "ben", Role::Reader, &Scope::none())
        )
    };
    for (bad, says) in [
        ("streams=5-3", "reversed"),
        ("streams=18446744073709551615", "18446744073709551615"),
        ("streams=9223372036854775808", "9223372036854775808"),
        ("streams=16-18446744073709551615", "18446744073709551615"),
        ("streams=007", "007"),
        ("streams=16-020", "020"),
        ("streams=", "empty"),
        ("streams=16,,17", "\"\""),
        ("streams=16,", "\"\""),
        ("streams=16-", "\"16-\""),
        ("streams=-16", "\"-16\""),
        ("streams=+16", "+16"),
        ("streams=0x10", "0x10"),
        ("streams=1-2-3", "1-2-3"),
        ("streams=*,16", "alone"),
        ("streams=١٦", "١٦"),
        ("stream=16", "streams="),
        ("streams=16 extra", "after the role"),
    ] {
        let error = TokenStore::from_lines(&line(bad)).expect_err(bad);
        let text = error.to_string();
        assert!(
            matches!(error, AuthError::Line { line: 2, .. }) && text.contains(says),
            "{bad}: {text}"
        );
    }
    let many = (0..=crate::server::auth::SCOPE_ITEMS_MAX)
        .map(|i| (i * 2 + 16).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let error = TokenStore::from_lines(&line(&format!("streams={many}"))).expect_err("too many");
    assert!(error.to_string().contains("items"), "{error}");

    let store = TokenStore::from_lines(&line("streams=40-50,16,17,30-30,45-60")).expect("good");
    let ben = store.authenticate("vlm_b", 0).expect("ben");
    let inside = [16, 17, 30, 40, 50, 51, 60];
    let outside = [0, 1, 15, 18, 29, 31, 39, 61, u64::MAX];
    assert!(
        inside.iter().all(|s| ben.scope.contains(*s)),
        "{}",
        ben.scope
    );
    assert!(
        !outside.iter().any(|s| ben.scope.contains(*s)),
        "{}",
        ben.scope
    );
    assert_eq!(ben.scope.to_string(), "16-17,30,40-60");
    let ann = store.authenticate("vlm_a", 0).expect("ann");
    assert!(ann.scope.is_all() && ann.scope.contains(u64::MAX));
    // A line without streams= (as written before scopes) loads, granting nothing.
    let store = TokenStore::from_lines(&token_line("vlm_c", "cy", Role::Writer, &Scope::none()))
        .expect("an old three-field line");
    let cy = store.authenticate("vlm_c", 0).expect("cy");
    assert!(cy.scope.is_empty() && !cy.scope.contains(16) && !cy.scope.contains(0));
    // The line a scope writes reads back as the same scope.
    let scope = Scope::parse("16-17,30,40-60").expect("parses");
    let again = TokenStore::from_lines(&token_line("vlm_d", "di", Role::Reader, &scope))
        .expect("round trip");
    assert_eq!(again.authenticate("vlm_d", 0).expect("di").scope, scope);
}

// Goal: global reads and subscriptions leave out events of streams outside
// the scope, yet page past them; the trail lists only the streams returned.
#[tokio::test]
async fn global_reads_and_subscriptions_leave_out_other_streams() {
    let node = Arc::new(FakeNode::default());
    for stream in [16, 17, 16, 17, 17] {
        node.push(stream, format!("event of {stream}").as_bytes());
    }
    let (app, _) = scoped_app(node.clone(), Given::Stream);
    let (status, page) = send(&app, Call::get("/v1/log", Some(READER))).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let streams: Vec<u64> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["stream"].as_u64().expect("stream"))
        .collect();
    assert_eq!(streams, vec![16, 16]);
    assert_eq!(
        page["next_position"],
        json!(5),
        "pages past left-out events"
    );
    let last = node.lock().trail.last().cloned().expect("recorded");
    assert_eq!(last.streams, Some(vec![16]));

    let response = app
        .clone()
        .oneshot(Call::get("/v1/subscribe?from=0", Some(READER)).request())
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let mut buffer = String::new();
    let lines = read_lines(&mut body, &mut buffer, 3, "\n").await;
    let first: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(
        (first[0]["stream"].as_u64(), first[1]["stream"].as_u64()),
        (Some(16), Some(16)),
        "{lines:?}"
    );
    assert_eq!(first[2]["heartbeat"], json!(true), "{lines:?}");
    assert!(
        lines.iter().all(|l| !l.contains("\"stream\":17")),
        "{lines:?}"
    );
    // A page of other streams only moves the subscriber on with a heartbeat.
    node.push(17, b"later, not for bob");
    node.push(16, b"later, for bob");
    let more = read_lines(&mut body, &mut buffer, 4, "\n").await;
    let delivered: Vec<&String> = more.iter().filter(|l| l.contains("\"stream\"")).collect();
    assert!(
        delivered.iter().all(|l| l.contains("\"stream\":16")) && !delivered.is_empty(),
        "{more:?}"
    );
}

/// Opens break-glass on [`STREAM`] for `token`; the status and body.
async fn open_glass(app: &Router, token: &str, body: &'static str) -> (StatusCode, Value) {
    send(
        app,
        Call::post("/v1/streams/16/break-glass", Some(token), body),
    )
    .await
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

// Goal: break-glass opens reads of a stream outside the scope, every such
// access is recorded in the trail as break-glass (v2, with the reason) and
// counted in /metrics, and after its expiry access is refused again.
#[tokio::test]
async fn break_glass_opens_records_counts_and_expires() {
    let node = Arc::new(FakeNode::default());
    node.push(STREAM, b"chart");
    let (app, _) = scoped_app(node.clone(), Given::Other);
    let read = || Call::get("/v1/streams/16/events", Some(READER));
    let (status, code) = status_and_code(&app, read()).await;
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::FORBIDDEN, Some("scope_denied"))
    );

    let (status, answer) = open_glass(
        &app,
        READER,
        r#"{"reason":"patient unconscious in the ED","duration_s":1}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let answer: api::BreakGlassAnswer = serde_json::from_value(answer).expect("answer");
    assert_eq!((answer.stream, answer.principal.as_str()), (16, "bob"));
    assert_eq!(answer.expires_ns - answer.opened_ns, 1_000_000_000);

    let (status, events) = send(&app, read()).await;
    assert_eq!(status, StatusCode::OK, "{events}");
    let (status, _) = send(
        &app,
        Call::get("/v1/streams/16/events/0/proof", Some(READER)),
    )
    .await;
    assert_ne!(status, StatusCode::FORBIDDEN, "break-glass opens proofs");
    // It does not open exports nor other streams.
    let (status, code) = status_and_code(
        &app,
        Call::post(
            "/v1/export/events",
            Some(READER),
            r#"{"stream":16,"from":0,"to":1}"#,
        ),
    )
    .await;
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::FORBIDDEN, Some("scope_denied"))
    );
    let (status, _) = status_and_code(&app, Call::get("/v1/streams/21/events", Some(READER))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let trail = node.lock().trail.clone();
    let opened: Vec<_> = trail
        .iter()
        .filter(|e| e.action == vellum_compliance::trail::AccessAction::BreakGlass)
        .collect();
    assert_eq!(opened.len(), 1, "{trail:?}");
    let grant = opened[0]
        .break_glass
        .clone()
        .expect("the opening carries its grant");
    assert_eq!(grant.reason, "patient unconscious in the ED");
    assert_eq!((opened[0].v, opened[0].stream), (2, Some(16)));
    let reads: Vec<_> = trail
        .iter()
        .filter(|e| e.action == vellum_compliance::trail::AccessAction::ReadStream)
        .collect();
    assert_eq!(
        reads.len(),
        3,
        "refused, under the grant, refused: {reads:?}"
    );
    assert!(reads[0].break_glass.is_none() && reads[0].outcome.starts_with("denied: 403"));
    assert_eq!(reads[1].break_glass.as_ref(), Some(&grant));
    assert_eq!((reads[1].v, reads[1].outcome.as_str()), (2, "success"));
    assert!(reads[2].break_glass.is_none(), "stream 21 has no grant");
    for event in &trail {
        let bytes = event.to_payload();
        let back = vellum_compliance::trail::AccessEvent::from_payload(&bytes).expect("decodes");
        assert_eq!(&back, event);
    }

    let (_, text) = send(&app, Call::get("/metrics", None)).await;
    let text = text.as_str().expect("text").to_string();
    assert_eq!(metric(&text, "vellum_break_glass_opened_total"), 1);
    assert_eq!(metric(&text, "vellum_break_glass_accesses_total"), 2);
    assert_eq!(metric(&text, "vellum_scope_denied_total"), 3);

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, code) = status_and_code(&app, read()).await;
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::FORBIDDEN, Some("scope_denied")),
        "refused after expiry"
    );
}

// Goal: break-glass without a reason, with a blank one, or with a duration
// outside 1 s..=4 h is refused (400) and opens nothing.
#[tokio::test]
async fn break_glass_needs_a_reason_and_a_bounded_duration() {
    let node = Arc::new(FakeNode::default());
    node.push(STREAM, b"chart");
    let (app, _) = scoped_app(node.clone(), Given::Nothing);
    for body in [
        r#"{}"#,
        r#"{"reason":""}"#,
        r#"{"reason":"   "}"#,
        r#"{"reason":null}"#,
        r#"{"reason":"x","duration_s":0}"#,
        r#"{"reason":"x","duration_s":14401}"#,
        r#"{"reason":"x","duration_s":18446744073709551615}"#,
        r#"{"reason":"x","duration_s":-1}"#,
        r#"{"reason":"x","duration_s":null}"#,
        r#"{"reason":"x","until":"tomorrow"}"#,
    ] {
        let (status, value) = open_glass(&app, READER, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {value}");
        let (status, code) =
            status_and_code(&app, Call::get("/v1/streams/16/events", Some(READER))).await;
        assert_eq!(
            (status, code.as_deref()),
            (StatusCode::FORBIDDEN, Some("scope_denied")),
            "{body} must open nothing"
        );
    }
    let long = format!(
        r#"{{"reason":"{}"}}"#,
        "r".repeat(api::BREAK_GLASS_REASON_BYTES_MAX + 1)
    );
    let (status, _) = send(
        &app,
        Call::post("/v1/streams/16/break-glass", Some(READER), &long),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = open_glass(&app, READER, r#"{"reason":"x","duration_s":14400}"#).await;
    assert_eq!(status, StatusCode::OK, "the maximum itself is allowed");
}

// Goal: a grant opens the stream to the principal who opened it only; an
// auditor may not open one; appends stay refused under a grant; a grant
// whose opening could not be recorded is not open.
#[tokio::test]
async fn break_glass_is_per_principal_and_read_only() {
    let node = Arc::new(FakeNode::default());
    node.push(STREAM, b"chart");
    let (app, _) = scoped_app(node.clone(), Given::Nothing);
    let glass = r#"{"reason":"code blue","duration_s":60}"#;
    let (status, code) = {
        let (status, value) = open_glass(&app, AUDITOR, glass).await;
        (status, error_of(&value).error.code)
    };
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let (status, _) = open_glass(&app, WRITER, glass).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(&app, Call::get("/v1/streams/16/events", Some(WRITER))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, code) =
        status_and_code(&app, Call::get("/v1/streams/16/events", Some(READER))).await;
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::FORBIDDEN, Some("scope_denied")),
        "another principal's grant opens nothing for bob"
    );
    let (status, code) = status_and_code(
        &app,
        Call::post(
            "/v1/streams/16/append",
            Some(WRITER),
            r#"{"events":[{"base64":"AA=="}]}"#,
        ),
    )
    .await;
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::FORBIDDEN, Some("scope_denied"))
    );

    node.lock().trail_down = true;
    let (status, _) = open_glass(&app, READER, glass).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    node.lock().trail_down = false;
    let (status, code) =
        status_and_code(&app, Call::get("/v1/streams/16/events", Some(READER))).await;
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::FORBIDDEN, Some("scope_denied")),
        "an unrecorded opening opens nothing"
    );
}

// Goal: a stream spelled with percent-encoding in the path or the query
// (`%31%36` is `16`) is checked as the handler reads it, decoded: a token
// scoped to other streams is refused, never served stream 16.
#[tokio::test]
async fn percent_encoded_streams_are_checked_as_decoded() {
    let node = Arc::new(FakeNode::default());
    node.push(STREAM, b"chart");
    let (app, _) = scoped_app(node.clone(), Given::Other);
    for (call, what) in [
        (Call::get("/v1/streams/%31%36/events", Some(READER)), "read"),
        (
            Call::get("/v1/streams/%31%36/events/0/proof", Some(READER)),
            "proof",
        ),
        (
            Call::post(
                "/v1/streams/%31%36/append",
                Some(WRITER),
                r#"{"events":[{"base64":"AA=="}]}"#,
            ),
            "append",
        ),
        (
            Call::get("/v1/export/audit?stream=%31%36", Some(READER)),
            "trail export",
        ),
        (
            Call::get("/v1/export/audit?%73tream=16", Some(READER)),
            "trail export, encoded key",
        ),
    ] {
        let (status, code) = status_and_code(&app, call).await;
        assert_eq!(
            (status, code.as_deref()),
            (StatusCode::FORBIDDEN, Some("scope_denied")),
            "{what}"
        );
    }
    assert_eq!(node.lock().streams[&STREAM].len(), 1, "nothing appended");
    let denied_reads: Vec<_> = node
        .lock()
        .trail
        .iter()
        .filter(|e| e.action == vellum_compliance::trail::AccessAction::ReadStream)
        .map(|e| e.stream)
        .collect();
    assert_eq!(denied_reads, [Some(STREAM)], "the refusal names stream 16");
    // The same spellings work for a token whose scope holds the stream.
    let (app, _) = scoped_app(node, Given::Stream);
    let (status, _) = send(&app, Call::get("/v1/streams/%31%36/events", Some(READER))).await;
    assert_eq!(status, StatusCode::OK);
}
