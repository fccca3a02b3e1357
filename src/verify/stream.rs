//! The audit index compared with the log while the log is read, in
//! bounded memory: the log walk (`vellum_audit::verify::verify_log_stream`)
//! hands each fact to [`IndexSink`], which merges events with the index's
//! rows a page ([`INDEX_PAGE_ROWS_MAX`]) at a time and keeps of the rest
//! only what the later checks need: a hash per certificate, one entry per
//! data key, and the access-trail events and atomic-group ops (a log
//! written through the API has one of each per request; see the report of
//! issue 11 for what is still kept per request).
//!
//! The verdict, every failure's place, kind and message, and every count
//! are those of the collecting comparison (`check_index`): the merge visits
//! rows and events in position order exactly as it does.

use std::collections::{BTreeMap, VecDeque};

use vellum_audit::report::{Check, FailureKind};
use vellum_audit::verify::{CommitFact, EventFact, FactSink, LogFacts, OpFact};

use super::{
    CommitKey, INDEX_PAGE_ROWS_MAX, compare_commits, compare_event, compare_keys, extra_event,
    missing_event,
};
use crate::index::{EventRow, Index, IndexTarget};

/// Facts of the log as the index comparison consumes them.
pub(super) struct IndexSink {
    /// `None`: no index is compared (no cluster in the policy, a bad URL).
    active: Option<Active>,
    /// Certificates, one hash each.
    commits: Vec<CommitKey>,
    /// Each key id's stream (the last op that used it wins, as in `check_index`).
    keys: BTreeMap<u64, u64>,
    /// The trail check's facts: access-trail events and the ops of atomic
    /// groups of more than one op (the only ones it looks at).
    trail: LogFacts,
    /// Whether the last op continued its atomic group.
    previous_continues: bool,
    /// An incremental run (`--since`): the log before this point was not
    /// read, so index rows before it are not compared.
    floor: Option<Floor>,
    /// The stored tiles compared with the log's leaves (a whole walk of a
    /// directory that has tiles only).
    tiles: Option<super::tiles::TileAudit>,
}

/// Where an incremental run's log walk began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Floor {
    /// The first position read (the kept tree size).
    pub(super) position: u64,
    /// The kept op: commits of ops up to it are not compared.
    pub(super) op: u64,
}

struct Active {
    runtime: tokio::runtime::Runtime,
    /// `Err`: the index could not be opened (the check says why).
    index: Result<Index, String>,
    /// The "audit index" check being built.
    check: Check,
    /// Index rows read ahead, in position order.
    rows: VecDeque<EventRow>,
    /// The next page starts here.
    next_position: u64,
    /// No rows after `rows`.
    exhausted: bool,
    /// A page query failed: the comparison of events stopped there.
    failed: bool,
    /// The index's newest commit (op, tree size; (0, 0) for none): a
    /// stopped replica's index may end before its log (killed before the
    /// indexer caught up), and the events after it are counted in
    /// `behind`, not each reported missing.
    index_end: (u64, u64),
    /// Events of the log at or after `index_end`'s tree size without a row.
    behind: u64,
}

impl IndexSink {
    /// A sink that compares nothing with an index (it still keeps the
    /// facts the trail check would need, which is then not run).
    pub(super) fn idle() -> IndexSink {
        IndexSink {
            active: None,
            commits: Vec::new(),
            keys: BTreeMap::new(),
            trail: LogFacts::default(),
            previous_continues: false,
            floor: None,
            tiles: None,
        }
    }

    /// Opens the index of `target` to compare with the log as it is read
    /// (from `floor` on, for an incremental run).
    pub(super) fn open(
        target: &IndexTarget,
        cluster: u128,
        floor: Option<Floor>,
    ) -> Result<IndexSink, Box<Check>> {
        let check = Check::start("audit index");
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                let mut check = check;
                check.fail(FailureKind::Unreadable, "runtime", e.to_string());
                return Err(Box::new(check.finish()));
            }
        };
        let index = runtime
            .block_on(Index::open_existing(target, cluster))
            .map_err(|e| crate::log::error_chain(&e));
        let index = match index {
            Ok(index) => match runtime.block_on(index.last_commit()) {
                Ok(last) => Ok((index, last.map_or((0, 0), |c| (c.op, c.tree_size)))),
                Err(e) => Err(crate::log::error_chain(&e)),
            },
            Err(e) => Err(e),
        };
        let (index, index_end) = match index {
            Ok((index, end)) => (Ok(index), end),
            Err(e) => (Err(e), (0, 0)),
        };
        let mut sink = IndexSink::idle();
        sink.floor = floor;
        sink.active = Some(Active {
            runtime,
            index,
            check,
            rows: VecDeque::new(),
            next_position: floor.map_or(0, |f| f.position),
            exhausted: false,
            failed: false,
            index_end,
            behind: 0,
        });
        Ok(sink)
    }

    /// Compares the tiles below `root` with the log's leaves as they come.
    pub(super) fn audit_tiles(&mut self, root: std::path::PathBuf) {
        self.tiles = super::tiles::TileAudit::new(root);
    }

    /// The "stored tiles" check (None: no tiles were compared).
    pub(super) fn finish_tiles(&mut self) -> Option<Check> {
        self.tiles.take().map(super::tiles::TileAudit::finish)
    }

    /// The first position the log walk read (0 unless incremental).
    pub(super) fn first_position(&self) -> u64 {
        self.floor.map_or(0, |f| f.position)
    }

    /// The facts the access-trail check reads.
    pub(super) fn trail_facts(&self) -> &LogFacts {
        &self.trail
    }

    /// The "audit index" check: the rows after the last event, then the
    /// commits and keys tables. `None` for an idle sink.
    pub(super) fn finish_index(&mut self) -> Option<Check> {
        let active = self.active.as_mut()?;
        if let Err(e) = &active.index {
            let mut check = Check::start("audit index");
            check.fail(FailureKind::Unreadable, "index", e.clone());
            return Some(check.finish());
        }
        while let Some(row) = active.next_row() {
            active.check.count("event rows", 1);
            extra_event(&row, &mut active.check);
        }
        let index = active.index.as_ref().expect("checked above");
        let check = &mut active.check;
        let runtime = &active.runtime;
        let after_op = self.floor.map_or(0, |f| f.op);
        // A stopped replica's index that ends before the log: one failure
        // naming both ends; commits after its end are not compared.
        let (end_op, end_events) = active.index_end;
        let log_last = self.commits.iter().map(|c| (c.op, c.tree_size)).max();
        let lagging = log_last.filter(|(op, _)| *op > end_op);
        if let Some(log) = lagging {
            let end = super::LiveBound {
                op: end_op,
                events: end_events,
            };
            super::index_behind(end, log, check);
        } else if active.behind > 0 {
            check.fail(
                FailureKind::IndexMismatch,
                format!("index row events.position={end_events}"),
                format!(
                    "missing: the log has {} events from this position on without index rows",
                    active.behind
                ),
            );
        }
        let compared: Vec<CommitKey>;
        let commits_in_reach = match lagging {
            Some(_) => {
                compared = self
                    .commits
                    .iter()
                    .filter(|c| c.op <= end_op)
                    .cloned()
                    .collect();
                &compared
            }
            None => &self.commits,
        };
        let commits = compare_commits(index, commits_in_reach, check, None, after_op);
        if let Err(e) = runtime.block_on(commits) {
            check.fail(
                FailureKind::Unreadable,
                "index commits",
                crate::log::error_chain(&e),
            );
        }
        // Incremental: a key first used before the floor is in the index
        // but not among the keys read; a key read must still match its row.
        let keys = compare_keys(index, &self.keys, check, self.floor.is_some());
        if let Err(e) = runtime.block_on(keys) {
            check.fail(
                FailureKind::Unreadable,
                "index keys",
                crate::log::error_chain(&e),
            );
        }
        let check = std::mem::replace(&mut active.check, Check::start("audit index"));
        Some(check.finish())
    }

    /// Closes the index (if open).
    pub(super) fn close(self) {
        if let Some(Active {
            runtime,
            index: Ok(index),
            ..
        }) = self.active
        {
            runtime.block_on(index.close());
        }
    }
}

impl Active {
    /// The next index row in position order, reading a page when needed.
    fn peek_row(&mut self) -> Option<&EventRow> {
        if self.rows.is_empty() && !self.exhausted && !self.failed {
            let Ok(index) = &self.index else {
                return None;
            };
            let page = self
                .runtime
                .block_on(index.events_after(self.next_position, INDEX_PAGE_ROWS_MAX));
            match page {
                Ok(page) => match page.last() {
                    Some(last) => {
                        self.next_position = last.position + 1;
                        self.rows.extend(page);
                    }
                    None => self.exhausted = true,
                },
                Err(e) => {
                    self.failed = true;
                    self.check.fail(
                        FailureKind::Unreadable,
                        "index events",
                        crate::log::error_chain(&e),
                    );
                }
            }
        }
        self.rows.front()
    }

    fn next_row(&mut self) -> Option<EventRow> {
        self.peek_row()?;
        self.rows.pop_front()
    }

    /// Merges one event of the log with the rows: rows before it are
    /// extra, a row at its position is compared, no row means missing.
    fn event(&mut self, fact: &EventFact) {
        if self.index.is_err() || self.failed {
            return;
        }
        while self.peek_row().is_some_and(|r| r.position < fact.position) {
            let row = self.rows.pop_front().expect("peeked");
            self.check.count("event rows", 1);
            extra_event(&row, &mut self.check);
        }
        if self.failed {
            return;
        }
        let at_fact = self.peek_row().map(|r| r.position == fact.position);
        match at_fact {
            Some(true) => {
                let row = self.rows.pop_front().expect("peeked");
                self.check.count("event rows", 1);
                compare_event(fact, &row, &mut self.check);
            }
            _ if self.failed => {}
            _ if fact.position >= self.index_end.1 => self.behind += 1,
            _ => missing_event(fact, &mut self.check),
        }
    }
}

impl FactSink for IndexSink {
    fn op(&mut self, fact: &OpFact) {
        self.trail.ops += 1;
        // A lone op (neither continuing a group nor closing one) is a
        // group of one, which the trail check skips.
        if fact.group_continues || self.previous_continues {
            self.trail.op_headers.push(fact.clone());
        }
        self.previous_continues = fact.group_continues;
    }

    fn event(&mut self, fact: &EventFact) {
        if let Some(tiles) = &mut self.tiles {
            tiles.leaf(fact.leaf_hash);
        }
        if fact.stream == vellum_compliance::trail::ACCESS_TRAIL_STREAM {
            self.trail.events.push(fact.clone());
        }
        if let Some(active) = &mut self.active {
            active.event(fact);
        }
    }

    fn key(&mut self, key_id: u64, stream: u64) {
        self.keys.insert(key_id, stream);
    }

    fn commit(&mut self, fact: &CommitFact) {
        self.commits.push(CommitKey::of(fact));
    }
}
