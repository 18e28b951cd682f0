//! Places a group of tasks with the same request (one service, the same host ports) as
//! SwarmKit's `scheduleNTasksOnNodes` does: the nodes are filtered once, then each task takes
//! the node the strategy ranks first (a heap; for random, the same draw over the same sorted
//! list). Decisions equal placing the tasks one by one (`naive.rs` in tests checks it): only the
//! chosen node changes, so only it is checked again, and it stays a candidate only if it still
//! passes every filter. Requests with soft preferences are not placed here.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::Rng;

use crate::model::{Reservations, Service, Task};

use super::filter;
use super::strategy::{Rank, Strategy};
use super::view::{NodeInfo, Placed, Request};
use super::Decision;

/// Decides a node for each of `group` (tasks of `service`, all with `request`), in order.
pub(crate) fn place<'a, R: Rng + ?Sized>(
    group: &[&Task],
    service: &'a Service,
    request: &Request,
    nodes: &mut [NodeInfo<'a>],
    strategy: Strategy,
    rng: &mut R,
    decisions: &mut Vec<Decision>,
) {
    debug_assert!(!request.has_preferences());
    debug_assert!(nodes.is_sorted_by(|a, b| a.node.id <= b.node.id));
    let want = request.reservations;
    let mut pool: Option<Pool> = None;
    for (k, task) in group.iter().enumerate() {
        if pool.as_ref().is_none_or(Pool::is_empty) {
            // The nodes no longer change in this group: the reason holds for all the rest.
            match filter::candidates(request, nodes) {
                Ok(candidates) => pool = Some(Pool::new(strategy, candidates, nodes, want)),
                Err(reason) => {
                    decisions.extend(group[k..].iter().map(|t| Decision::Unschedulable {
                        task_id: t.id.clone(),
                        reason: reason.clone(),
                    }));
                    return;
                }
            }
        }
        let pool = pool.as_mut().expect("a pool with candidates");
        let (i, at) = pool.take(rng);
        let node = &mut nodes[i];
        node.add(&Placed::new(task, Some(service)));
        decisions.push(Decision::Assign {
            task_id: task.id.clone(),
            node_id: node.node.id.clone(),
        });
        if filter::still_passes(request, node) {
            pool.put_back(i, at, node);
        } else {
            pool.drop_at(at);
        }
    }
}

/// The candidates of one request, as the strategy takes them.
enum Pool {
    /// Node indices in ascending order, as `filter::candidates` lists them.
    Random(Vec<usize>),
    /// Ranks and node indices: nodes are sorted by id, so the index breaks ties as the id does.
    Ranked {
        heap: BinaryHeap<Reverse<(Rank, usize)>>,
        strategy: Strategy,
        want: Reservations,
    },
}

impl Pool {
    fn new(
        strategy: Strategy,
        candidates: Vec<usize>,
        nodes: &[NodeInfo],
        want: Reservations,
    ) -> Pool {
        match strategy {
            Strategy::Random => Pool::Random(candidates),
            _ => Pool::Ranked {
                heap: candidates
                    .into_iter()
                    .map(|i| Reverse((strategy.rank(&nodes[i], want), i)))
                    .collect(),
                strategy,
                want,
            },
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Pool::Random(v) => v.is_empty(),
            Pool::Ranked { heap, .. } => heap.is_empty(),
        }
    }

    /// The chosen node's index and where it was in the pool. A random pick stays in place
    /// until `drop_at`; a ranked one leaves the heap until `put_back`.
    fn take<R: Rng + ?Sized>(&mut self, rng: &mut R) -> (usize, usize) {
        match self {
            Pool::Random(v) => {
                let at = rng.random_range(0..v.len());
                (v[at], at)
            }
            Pool::Ranked { heap, .. } => {
                let Reverse((_, i)) = heap.pop().expect("take from a non-empty pool");
                (i, 0)
            }
        }
    }

    /// Node `i`, taken from `at`, is still a candidate with its new counters.
    fn put_back(&mut self, i: usize, _at: usize, node: &NodeInfo) {
        if let Pool::Ranked {
            heap,
            strategy,
            want,
        } = self
        {
            heap.push(Reverse((strategy.rank(node, *want), i)));
        }
    }

    /// The node taken from `at` no longer passes the filters.
    fn drop_at(&mut self, at: usize) {
        if let Pool::Random(v) = self {
            v.remove(at);
        }
    }
}
