//! The simulated network between replicas (and between clients and
//! replicas): per-message delay, loss, duplication, and so reordering;
//! partitions, symmetric or one-way, that start and heal.
//!
//! The network only decides the fate of each message (when it arrives, if
//! at all, and how many times); the cluster queues the deliveries. A
//! partition is checked both when a message is sent and when it would
//! arrive, so starting one also cuts the messages already in flight.

use crate::vsr::REPLICAS_MAX;

use super::prng::Prng;

/// Copies of one message delivered, at most (the original and a duplicate).
pub const COPIES_MAX: usize = 2;

/// How the links behave while faults are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkFaults {
    /// Fewest ticks a message takes.
    pub delay_ticks_min: u64,
    /// Most ticks a message takes.
    pub delay_ticks_max: u64,
    /// Chance a message is lost.
    pub loss_per_million: u32,
    /// Chance a delivered message arrives twice.
    pub duplicate_per_million: u32,
}

impl LinkFaults {
    /// A reliable, prompt network (the convergence phase).
    pub const QUIET: LinkFaults = LinkFaults {
        delay_ticks_min: 1,
        delay_ticks_max: 3,
        loss_per_million: 0,
        duplicate_per_million: 0,
    };
}

/// The fate of one sent message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// The ticks at which copies arrive (empty when lost).
    pub arrivals: Vec<u64>,
    /// Lost on the way (or cut by a partition).
    pub lost: bool,
    /// Blocked by a partition.
    pub partitioned: bool,
    /// Delivered twice.
    pub duplicated: bool,
    /// Arrives before a message sent earlier on the same link.
    pub reordered: bool,
}

/// The network state: link behaviour and partitions.
#[derive(Debug, Clone)]
pub struct Network {
    faults: LinkFaults,
    /// blocked[from][to]: messages from `from` to `to` are dropped.
    blocked: [[bool; REPLICAS_MAX]; REPLICAS_MAX],
    /// Latest arrival scheduled per link, to count reorderings.
    last_arrival: [[u64; REPLICAS_MAX]; REPLICAS_MAX],
    prng: Prng,
}

impl Network {
    /// A network with these link faults and no partition.
    pub fn new(faults: LinkFaults, prng: Prng) -> Network {
        Network {
            faults,
            blocked: [[false; REPLICAS_MAX]; REPLICAS_MAX],
            last_arrival: [[0; REPLICAS_MAX]; REPLICAS_MAX],
            prng,
        }
    }

    /// Changes the link behaviour (e.g. to [`LinkFaults::QUIET`]).
    pub fn set_faults(&mut self, faults: LinkFaults) {
        self.faults = faults;
    }

    /// Decides the fate of a replica-to-replica message sent at `now`.
    pub fn route(&mut self, from: u8, to: u8, now: u64) -> Route {
        if self.is_blocked(from, to) {
            return Route {
                lost: true,
                partitioned: true,
                ..Route::default()
            };
        }
        let mut route = self.route_link(now);
        let last = &mut self.last_arrival[usize::from(from)][usize::from(to)];
        if let Some(first) = route.arrivals.iter().min() {
            route.reordered = *first < *last;
            *last = (*last).max(*first);
        }
        route
    }

    /// Decides the fate of a client message (clients are never partitioned).
    pub fn route_client(&mut self, now: u64) -> Route {
        self.route_link(now)
    }

    fn route_link(&mut self, now: u64) -> Route {
        if self.prng.chance(self.faults.loss_per_million) {
            return Route {
                lost: true,
                ..Route::default()
            };
        }
        let copies = if self.prng.chance(self.faults.duplicate_per_million) {
            COPIES_MAX
        } else {
            1
        };
        let arrivals = (0..copies)
            .map(|_| {
                now + self
                    .prng
                    .range(self.faults.delay_ticks_min, self.faults.delay_ticks_max)
            })
            .collect();
        Route {
            arrivals,
            duplicated: copies > 1,
            ..Route::default()
        }
    }

    /// Whether messages from `from` to `to` are cut.
    pub fn is_blocked(&self, from: u8, to: u8) -> bool {
        self.blocked[usize::from(from)][usize::from(to)]
    }

    /// Cuts every link between `side` and the other replicas, both ways.
    pub fn partition(&mut self, side: &[u8], replica_count: u8) {
        for a in side {
            for b in 0..replica_count {
                if !side.contains(&b) {
                    self.blocked[usize::from(*a)][usize::from(b)] = true;
                    self.blocked[usize::from(b)][usize::from(*a)] = true;
                }
            }
        }
    }

    /// Cuts the link from `from` to `to` only.
    pub fn partition_one_way(&mut self, from: u8, to: u8) {
        self.blocked[usize::from(from)][usize::from(to)] = true;
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        self.blocked = [[false; REPLICAS_MAX]; REPLICAS_MAX];
    }

    /// Whether any link is cut.
    pub fn is_partitioned(&self) -> bool {
        self.blocked.iter().flatten().any(|b| *b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOSSY: LinkFaults = LinkFaults {
        delay_ticks_min: 1,
        delay_ticks_max: 20,
        loss_per_million: 200_000,
        duplicate_per_million: 100_000,
    };

    /// Goal: loss, duplication and reordering all happen at roughly their
    /// rates, and delays stay within bounds.
    #[test]
    fn link_faults_happen_at_their_rates() {
        let mut network = Network::new(LOSSY, Prng::new(1));
        let (mut lost, mut duplicated, mut reordered) = (0, 0, 0);
        for now in 0..10_000 {
            let route = network.route(0, 1, now);
            lost += usize::from(route.lost);
            duplicated += usize::from(route.duplicated);
            reordered += usize::from(route.reordered);
            assert!(
                route
                    .arrivals
                    .iter()
                    .all(|t| (now + 1..=now + 20).contains(t))
            );
            assert_eq!(
                route.arrivals.len(),
                if route.lost {
                    0
                } else if route.duplicated {
                    2
                } else {
                    1
                }
            );
        }
        assert!((1_500..2_500).contains(&lost), "lost {lost}");
        assert!(
            (500..1_100).contains(&duplicated),
            "duplicated {duplicated}"
        );
        assert!(reordered > 1_000, "reordered {reordered}");
    }

    /// Goal: a symmetric partition cuts both ways, a one-way one only its
    /// direction, and heal restores every link.
    #[test]
    fn partitions_cut_and_heal() {
        let mut network = Network::new(LinkFaults::QUIET, Prng::new(2));
        network.partition(&[2], 3);
        assert!(network.is_blocked(2, 0) && network.is_blocked(0, 2) && network.is_blocked(1, 2));
        assert!(!network.is_blocked(0, 1));
        assert!(network.route(0, 2, 5).partitioned);
        network.heal();
        assert!(!network.is_partitioned());
        network.partition_one_way(0, 1);
        assert!(network.is_blocked(0, 1) && !network.is_blocked(1, 0));
        assert_eq!(network.route(1, 0, 5).arrivals.len(), 1);
    }
}
