//! The signed chain head extension line (`vellum-head <op> <checksum>`):
//! the documented example parses and re-encodes byte for byte, and every
//! non-canonical spelling is refused, so all readers (verify, the replica's
//! certifier, the shell, the simulator's checker) agree on one parser.

use vellum_audit::checkpoint::Checkpoint;
use vellum_audit::hash::from_hex;
use vellum_audit::verify::{CHAIN_HEAD_EXTENSION, ChainHead, chain_head_extension};

/// The example of `docs/format.md` ("Commit certificate").
const DOC_LINE: &str =
    "vellum-head 13 5b97e73a0a77b59b1c137c9df55185980d342bd4c3db8f87005db30c2f404d65";

/// Goal: the documented line parses to op 13 and its checksum, and writing
/// it back gives the same bytes.
#[test]
fn documented_line_round_trips() {
    let head = ChainHead::parse(DOC_LINE)
        .expect("a chain head line")
        .expect("well formed");
    assert_eq!(head.op, 13);
    assert_eq!(
        Some(head.checksum),
        from_hex("5b97e73a0a77b59b1c137c9df55185980d342bd4c3db8f87005db30c2f404d65")
    );
    assert_eq!(head.line(), DOC_LINE);
    assert_eq!(chain_head_extension(13, &head.checksum), DOC_LINE);
    assert!(DOC_LINE.starts_with(CHAIN_HEAD_EXTENSION));
}

/// Goal: other extension lines are not chain heads; a line that starts like
/// one but is not the canonical spelling is refused, never read leniently.
#[test]
fn non_canonical_lines_are_refused() {
    assert_eq!(ChainHead::parse("other-extension 1 2"), None);
    let hex = "5b97e73a0a77b59b1c137c9df55185980d342bd4c3db8f87005db30c2f404d65";
    let bad = [
        format!("vellum-head 013 {hex}"),
        format!("vellum-head 0 {hex}"),
        format!("vellum-head  13 {hex}"),
        format!("vellum-head 13 {hex} "),
        format!("vellum-head 13 {}", hex.to_uppercase()),
        format!("vellum-head 13 {}", &hex[..62]),
        format!("vellum-head +13 {hex}"),
        format!("vellum-headx 13 {hex}"),
        "vellum-head".to_string(),
        "vellum-head 13".to_string(),
    ];
    for line in bad {
        assert!(
            matches!(ChainHead::parse(&line), Some(Err(_))),
            "{line:?} must be refused"
        );
    }
}

/// Goal: `all_in` returns every chain head line of a checkpoint in order,
/// malformed ones as errors, and skips other extensions.
#[test]
fn all_in_lists_every_head_line() {
    let checkpoint = Checkpoint {
        origin: "vellum.local/cluster/00000000000000000000000000000001".to_string(),
        size: 13,
        root: [0; 32],
        extensions: vec![
            "note something".to_string(),
            DOC_LINE.to_string(),
            "vellum-head bad".to_string(),
        ],
    };
    let heads = ChainHead::all_in(&checkpoint);
    assert_eq!(heads.len(), 2);
    assert!(matches!(&heads[0], Ok(head) if head.op == 13));
    assert!(heads[1].is_err());
}
