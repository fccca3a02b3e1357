//! The VSR client table: each client session's latest committed request and
//! what it returned, so a retried request is answered again instead of
//! executing twice (DESIGN §1: `ConsensusFailed` is safe to retry).
//!
//! Every replica applies committed ops to its table, so it survives view
//! changes; a restarted replica rebuilds it from its journal's committed
//! headers. Applying is idempotent and keeps the newest op per client, so
//! ops repaired late may be applied out of order.

use std::collections::BTreeMap;

use vellum_audit::record::OpHeader;

/// One session's latest committed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Session {
    /// The request number.
    pub request: u64,
    /// The op that carried it (its header gives the reply).
    pub header: OpHeader,
}

/// Sessions by client id, at most `clients_max`.
#[derive(Debug, Clone)]
pub(super) struct ClientTable {
    sessions: BTreeMap<u128, Session>,
    clients_max: usize,
}

impl ClientTable {
    /// An empty table holding at most `clients_max` sessions.
    pub fn new(clients_max: usize) -> ClientTable {
        assert!(clients_max > 0, "the client table needs room for a session");
        ClientTable {
            sessions: BTreeMap::new(),
            clients_max,
        }
    }

    /// The session of `client`.
    pub fn get(&self, client: u128) -> Option<&Session> {
        self.sessions.get(&client)
    }

    /// Records the committed op `header`. When the table is full, the
    /// session whose latest op is oldest is evicted (deterministic on every
    /// replica, since all apply the same committed ops).
    pub fn apply(&mut self, header: &OpHeader) {
        if header.client_id == 0 {
            return;
        }
        if let Some(session) = self.sessions.get_mut(&header.client_id) {
            if session.header.op < header.op {
                *session = Session {
                    request: header.request,
                    header: *header,
                };
            }
            return;
        }
        if self.sessions.len() >= self.clients_max {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.header.op)
                .map(|(client, s)| (*client, s.header.op));
            match oldest {
                Some((_, op)) if op > header.op => return,
                Some((client, _)) => {
                    self.sessions.remove(&client);
                }
                None => {}
            }
        }
        self.sessions.insert(
            header.client_id,
            Session {
                request: header.request,
                header: *header,
            },
        );
    }

    /// Number of sessions.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vellum_audit::record::RecordKind;

    fn header(op: u64, client: u128, request: u64) -> OpHeader {
        let mut h = OpHeader::empty(RecordKind::Op, 1);
        h.op = op;
        h.client_id = client;
        h.request = request;
        h
    }

    /// Goal: the table keeps the newest request per client and evicts the
    /// session with the oldest op when full.
    #[test]
    fn keeps_newest_and_evicts_oldest() {
        let mut table = ClientTable::new(2);
        table.apply(&header(1, 7, 1));
        table.apply(&header(3, 7, 2));
        table.apply(&header(2, 7, 1)); // repaired late: older, ignored
        assert_eq!(table.get(7).map(|s| s.request), Some(2));
        table.apply(&header(4, 8, 1));
        table.apply(&header(5, 9, 1));
        assert_eq!(table.len(), 2);
        assert!(table.get(7).is_none(), "client 7 had the oldest op");
        assert!(table.get(8).is_some() && table.get(9).is_some());
    }
}
