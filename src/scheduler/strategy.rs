//! Strategies choose one node among those the filters left: spread (fewest tasks), binpack
//! (fullest that still fits) and random (through the caller's seeded RNG, so it replays).

use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::error::UnknownStrategy;
use super::view::NodeInfo;
use crate::model::Reservations;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Fewest tasks; ties go to the least reserved node, then the smallest node id.
    #[default]
    Spread,
    /// Highest reserved share of CPU plus memory once the task is added; ties go to the node
    /// with more tasks, then the smallest node id.
    Binpack,
    Random,
}

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    fn from_str(s: &str) -> Result<Self, UnknownStrategy> {
        match s {
            "spread" => Ok(Strategy::Spread),
            "binpack" => Ok(Strategy::Binpack),
            "random" => Ok(Strategy::Random),
            other => Err(UnknownStrategy(other.to_string())),
        }
    }
}

impl Strategy {
    /// One of `candidates` (indices into `nodes`, not empty) for a task reserving `want`.
    pub(crate) fn pick<R: Rng + ?Sized>(
        self,
        candidates: &[usize],
        nodes: &[NodeInfo],
        want: Reservations,
        rng: &mut R,
    ) -> usize {
        let pick = match self {
            Strategy::Random => Some(candidates[rng.random_range(0..candidates.len())]),
            _ => candidates
                .iter()
                .copied()
                .min_by_key(|&i| (self.rank(&nodes[i], want), nodes[i].node.id.as_str())),
        };
        pick.expect("strategies choose among at least one candidate")
    }

    /// How spread and binpack order nodes for a task reserving `want`: the smallest rank wins,
    /// ties go to the smallest node id. Spread: fewest tasks, then least reserved. Binpack:
    /// highest load once the task is added, then most tasks. Random ignores it.
    pub(crate) fn rank(self, node: &NodeInfo, want: Reservations) -> Rank {
        let tasks = node.held.tasks as u128;
        match self {
            Strategy::Spread | Strategy::Random => (tasks, node.load(Reservations::default())),
            Strategy::Binpack => (u128::MAX - node.load(want), u128::MAX - tasks),
        }
    }
}

/// See `Strategy::rank`.
pub(crate) type Rank = (u128, u128);

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::super::testutil::*;
    use super::*;

    #[test]
    fn spread_prefers_fewest_tasks_then_least_reserved_then_id() {
        let (n1, n2, n3) = (node(1, &[]), node(2, &[]), node(3, &[]));
        let (small, mut big) = (service("small"), service("big"));
        big.reservations.memory_bytes = 1 << 30;
        let nodes = [
            info(&n1, vec![placed(&small, 1), placed(&small, 2)]),
            info(&n2, vec![placed(&big, 1)]),
            info(&n3, vec![placed(&small, 3)]),
        ];
        let mut rng = StdRng::seed_from_u64(1);
        let none = Reservations::default();
        assert_eq!(Strategy::Spread.pick(&[0, 1, 2], &nodes, none, &mut rng), 2);
        assert_eq!(Strategy::Spread.pick(&[0, 1], &nodes, none, &mut rng), 1);
        let empty = [info(&n2, vec![]), info(&n1, vec![])];
        assert_eq!(
            Strategy::Spread.pick(&[0, 1], &empty, none, &mut rng),
            1,
            "n1 < n2"
        );
    }

    #[test]
    fn binpack_prefers_the_fullest_node() {
        let (n1, n2) = (node(1, &[]), node(2, &[]));
        let mut big = service("big");
        big.reservations.nano_cpus = 1_000_000_000;
        let small = service("small");
        let nodes = [
            info(&n1, vec![placed(&small, 1), placed(&small, 2)]),
            info(&n2, vec![placed(&big, 1)]),
        ];
        let mut rng = StdRng::seed_from_u64(1);
        let want = big.reservations;
        assert_eq!(Strategy::Binpack.pick(&[0, 1], &nodes, want, &mut rng), 1);
        let counts = [
            info(&n1, vec![placed(&small, 1)]),
            info(&n2, vec![placed(&small, 2), placed(&small, 3)]),
        ];
        assert_eq!(
            Strategy::Binpack.pick(&[0, 1], &counts, Reservations::default(), &mut rng),
            1
        );
    }

    #[test]
    fn random_replays_with_its_seed_and_reaches_every_candidate() {
        let (n1, n2, n3) = (node(1, &[]), node(2, &[]), node(3, &[]));
        let nodes = [info(&n1, vec![]), info(&n2, vec![]), info(&n3, vec![])];
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..30)
                .map(|_| Strategy::Random.pick(&[0, 2], &nodes, Reservations::default(), &mut rng))
                .collect::<Vec<_>>()
        };
        let picks = draw(7);
        assert_eq!(picks, draw(7));
        assert!(picks.contains(&0) && picks.contains(&2) && !picks.contains(&1));
    }

    #[test]
    fn names_parse() {
        assert_eq!("binpack".parse(), Ok(Strategy::Binpack));
        let err = "fastest".parse::<Strategy>().unwrap_err();
        assert!(err.to_string().contains("\"fastest\""));
    }
}
