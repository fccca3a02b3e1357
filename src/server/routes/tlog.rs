//! The log served read-only as C2SP tlog-tiles (<https://c2sp.org/tlog-tiles>)
//! under [`TLOG_PREFIX`], so any tool that speaks tlog-tiles can follow and
//! audit it: `checkpoint` (the newest certificate, a signed note whose body
//! is a checkpoint), hash tiles `tile/<L>/<N>[.p/<W>]` and entry bundles
//! `tile/entries/<N>[.p/<W>]` (the 97-byte leaf preimages).
//!
//! Both routes sit behind the trail guard like every other read (auditor
//! role, one access-trail event per request, the tile named in `detail`).
//! Paths are parsed from the raw request path with the one parser of
//! `vellum_audit::tiles`, which accepts only the canonical spelling: axum's
//! percent-decoding never sees them, so `%30%30%30` is not `000`.
//!
//! Tiles are served for the tree of the newest certificate and for every
//! smaller tree a tile fits, since every request (this one too) appends to
//! the access trail and so moves the checkpoint on: a client that read a
//! checkpoint can always fetch that checkpoint's partial tiles afterwards.

use axum::extract::State;
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use vellum_audit::tiles::{
    EntryBundleId, TileId, TilePathError, encode_entry_bundle, encode_hash_tile,
};

use super::errors::ApiError;
use super::guard::Touched;
use super::{AppState, run_blocking};
use crate::server::node::{FaultKind, InternalFault};

/// Where the tlog-tiles resources live: the specification's `<prefix>`.
pub const TLOG_PREFIX: &str = "/v1/tlog/";
/// `Cache-Control` of the checkpoint: it changes with every commit. Private:
/// every answer is behind a token and recorded in the access trail, so no
/// shared cache may hand it to anyone else.
pub const CHECKPOINT_CACHE_CONTROL: &str = "private, no-store";
/// `Cache-Control` of a full tile or bundle: its bytes never change.
pub const FULL_TILE_CACHE_CONTROL: &str = "private, max-age=31536000, immutable";
/// `Cache-Control` of a partial tile or bundle: its bytes do not change
/// either, but the specification lets a log drop it once the full tile
/// exists, so clients should not keep it long.
pub const PARTIAL_TILE_CACHE_CONTROL: &str = "private, max-age=60";

const CHECKPOINT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
const TILE_CONTENT_TYPE: &str = "application/octet-stream";

/// `GET /v1/tlog/checkpoint`: the newest certificate's text.
pub(crate) async fn checkpoint(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (size, text) = run_blocking(&state, |node| node.certificate())
        .await?
        .ok_or_else(|| ApiError::not_found("no checkpoint yet (nothing committed)"))?;
    let touched = Touched {
        to: Some(size),
        detail: Some(format!("tlog checkpoint size {size}")),
        ..Touched::default()
    };
    Ok(answer(
        text.into_bytes(),
        CHECKPOINT_CONTENT_TYPE,
        CHECKPOINT_CACHE_CONTROL,
        touched,
    ))
}

/// What a `tile/...` path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TilePath {
    Hashes(TileId),
    Entries(EntryBundleId),
}

/// The tile or bundle the raw request path names, or a 400 saying why the
/// path is not the canonical spelling of one.
fn tile_path(uri: &Uri) -> Result<TilePath, ApiError> {
    let refuse = |error: TilePathError| ApiError::bad_request(error.to_string());
    let path = uri
        .path()
        .strip_prefix(TLOG_PREFIX)
        .ok_or_else(|| ApiError::bad_request("not a tlog-tiles path"))?;
    if path.starts_with("tile/entries/") {
        EntryBundleId::parse(path)
            .map(TilePath::Entries)
            .map_err(refuse)
    } else {
        TileId::parse(path).map(TilePath::Hashes).map_err(refuse)
    }
}

/// `GET /v1/tlog/tile/...`: a hash tile or an entry bundle.
pub(crate) async fn tile(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let (bytes, tile, path) = match tile_path(&uri)? {
        TilePath::Hashes(tile) => {
            let hashes = run_blocking(&state, move |node| node.tlog_tile(tile))
                .await?
                .map_err(ApiError::from)?;
            if hashes.len() != usize::from(tile.width()) {
                return Err(unexpected(format!(
                    "the node gave {} hashes for {tile}",
                    hashes.len()
                )));
            }
            (encode_hash_tile(&hashes), tile, tile.path())
        }
        TilePath::Entries(bundle) => {
            let preimages = run_blocking(&state, move |node| node.tlog_entries(bundle))
                .await?
                .map_err(ApiError::from)?;
            if preimages.len() != usize::from(bundle.width()) {
                return Err(unexpected(format!(
                    "the node gave {} entries for {bundle}",
                    preimages.len()
                )));
            }
            let entries: Vec<_> = preimages.iter().map(|p| p.encode()).collect();
            let bytes = encode_entry_bundle(&entries).map_err(unexpected)?;
            (bytes, bundle.tile(), bundle.path())
        }
    };
    let (from, to) = tile.leaf_range().unzip();
    let touched = Touched {
        from,
        to,
        detail: Some(format!("tlog {path}")),
        ..Touched::default()
    };
    let cache_control = match tile.is_partial() {
        true => PARTIAL_TILE_CACHE_CONTROL,
        false => FULL_TILE_CACHE_CONTROL,
    };
    Ok(answer(bytes, TILE_CONTENT_TYPE, cache_control, touched))
}

/// A node answer that breaks the node's contract: the replica's bug, 500.
fn unexpected(detail: impl std::fmt::Display) -> ApiError {
    InternalFault::new(FaultKind::Unexpected, detail).into()
}

fn answer(
    bytes: Vec<u8>,
    content_type: &'static str,
    cache_control: &'static str,
    touched: Touched,
) -> Response {
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    response.extensions_mut().insert(touched);
    response
}
