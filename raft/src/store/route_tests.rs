//! The routing rules on a scripted cluster: which manager runs a leader-only request, when it
//! is routed again, and what a read waits for. Time is tokio's paused clock.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::route::forward_failed;
use super::route::leader_call;
use super::route::linearize;
use super::route::read_barrier;
use super::route::retry;
use super::route::Retry;
use super::route::Router;
use super::LEADER_WAIT;
use crate::command::Request;
use crate::command::Response;
use crate::error::StoreError;
use crate::forward::LeaderRequest;
use crate::forward::LeaderResponse;
use crate::types::NodeId;

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Execute(&'static str),
    Forward(NodeId, &'static str, Duration),
    ReadHere,
    WaitApplied(u64),
}

fn kind(req: &LeaderRequest) -> &'static str {
    match req {
        LeaderRequest::Write(_) => "write",
        LeaderRequest::ReadIndex => "read-index",
        LeaderRequest::KeepAlive(_) => "keep-alive",
        LeaderRequest::Join { .. } => "join",
        LeaderRequest::Remove(_) => "remove",
        LeaderRequest::Status => "status",
    }
}

/// One manager of a scripted cluster.
struct Fake {
    me: NodeId,
    start: Instant,
    /// The leader from each offset on (the last offset passed wins).
    leaders: Vec<(Duration, Option<NodeId>)>,
    /// Answers of `execute` and `forward`, in order; once spent, each request gets its usual one.
    answers: Mutex<VecDeque<Result<LeaderResponse, StoreError>>>,
    calls: Mutex<Vec<Call>>,
}

impl Fake {
    fn new(me: NodeId, leader: Option<NodeId>) -> Fake {
        Fake::scripted(me, vec![(Duration::ZERO, leader)])
    }

    fn scripted(me: NodeId, leaders: Vec<(Duration, Option<NodeId>)>) -> Fake {
        Fake {
            me,
            start: Instant::now(),
            leaders,
            answers: Mutex::new(VecDeque::new()),
            calls: Mutex::new(Vec::new()),
        }
    }

    fn answering(self, answers: Vec<Result<LeaderResponse, StoreError>>) -> Fake {
        *self.answers.lock().unwrap() = answers.into();
        self
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn answer(&self, req: &LeaderRequest) -> Result<LeaderResponse, StoreError> {
        if let Some(a) = self.answers.lock().unwrap().pop_front() {
            return a;
        }
        Ok(match req {
            LeaderRequest::ReadIndex => LeaderResponse::ReadIndex(7),
            LeaderRequest::KeepAlive(_) => LeaderResponse::KeptAlive { ttl_ms: 1000 },
            LeaderRequest::Remove(_) => LeaderResponse::Removed(vec![1]),
            other => panic!("no answer scripted for {other:?}"),
        })
    }
}

impl Router for Fake {
    fn me(&self) -> NodeId {
        self.me
    }

    fn leader(&self) -> Option<NodeId> {
        let now = self.start.elapsed();
        self.leaders
            .iter()
            .rev()
            .find(|(from, _)| *from <= now)
            .and_then(|(_, l)| *l)
    }

    async fn execute(&self, req: LeaderRequest) -> Result<LeaderResponse, StoreError> {
        self.calls.lock().unwrap().push(Call::Execute(kind(&req)));
        self.answer(&req)
    }

    async fn forward(
        &self,
        leader: NodeId,
        req: &LeaderRequest,
        timeout: Duration,
    ) -> Result<LeaderResponse, StoreError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Forward(leader, kind(req), timeout));
        self.answer(req)
    }

    async fn read_here(&self) -> Result<bool, StoreError> {
        self.calls.lock().unwrap().push(Call::ReadHere);
        Ok(self.leader() == Some(self.me))
    }

    async fn wait_applied(&self, index: u64) -> Result<(), StoreError> {
        self.calls.lock().unwrap().push(Call::WaitApplied(index));
        Ok(())
    }
}

const T: Duration = Duration::from_secs(3);

fn not_leader(id: NodeId) -> StoreError {
    StoreError::NotLeader { id, leader: None }
}

fn unreachable() -> StoreError {
    StoreError::LeaderUnreachable {
        leader: "10.0.0.1:7000".into(),
        reason: "connection refused".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn the_leader_runs_leader_only_requests_itself() {
    let fake = Fake::new(1, Some(1));
    let r = leader_call(&fake, LeaderRequest::KeepAlive(9), T).await;
    assert!(matches!(r, Ok(LeaderResponse::KeptAlive { ttl_ms: 1000 })));
    assert_eq!(fake.calls(), vec![Call::Execute("keep-alive")]);
}

#[tokio::test(start_paused = true)]
async fn a_follower_forwards_to_the_leader_with_the_callers_timeout() {
    let fake = Fake::new(2, Some(1));
    let r = leader_call(&fake, LeaderRequest::Remove(3), T).await;
    assert!(matches!(r, Ok(LeaderResponse::Removed(_))));
    assert_eq!(fake.calls(), vec![Call::Forward(1, "remove", T)]);
}

#[tokio::test(start_paused = true)]
async fn without_a_leader_a_request_waits_for_one() {
    let elected = Duration::from_millis(300);
    let fake = Fake::scripted(2, vec![(Duration::ZERO, None), (elected, Some(3))]);
    let started = Instant::now();
    let r = leader_call(&fake, LeaderRequest::KeepAlive(9), T).await;
    assert!(r.is_ok(), "{r:?}");
    assert!(started.elapsed() >= elected);
    assert!(started.elapsed() < elected + Duration::from_millis(100));
    // Nothing ran anywhere while there was no leader.
    assert_eq!(fake.calls(), vec![Call::Forward(3, "keep-alive", T)]);
}

#[tokio::test(start_paused = true)]
async fn without_a_leader_for_the_whole_wait_a_request_fails_with_no_leader() {
    let fake = Fake::new(2, None);
    let started = Instant::now();
    let r = leader_call(&fake, LeaderRequest::KeepAlive(9), T).await;
    match r {
        Err(StoreError::NoLeader { waited_ms }) => {
            assert!(waited_ms >= LEADER_WAIT.as_millis() as u64, "{waited_ms}")
        }
        other => panic!("expected NoLeader, got {other:?}"),
    }
    assert!(started.elapsed() < LEADER_WAIT + Duration::from_millis(100));
    assert!(fake.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn not_leader_from_a_deposed_leader_routes_the_request_to_the_new_one() {
    let fake = Fake::scripted(
        3,
        vec![
            (Duration::ZERO, Some(1)),
            (Duration::from_millis(10), Some(2)),
        ],
    )
    .answering(vec![Err(not_leader(1))]);
    let r = leader_call(&fake, LeaderRequest::KeepAlive(9), T).await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        fake.calls(),
        vec![
            Call::Forward(1, "keep-alive", T),
            Call::Forward(2, "keep-alive", T)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_manager_that_just_lost_leadership_forwards_to_its_successor() {
    let fake = Fake::scripted(
        1,
        vec![
            (Duration::ZERO, Some(1)),
            (Duration::from_millis(10), Some(2)),
        ],
    )
    .answering(vec![Err(not_leader(1))]);
    let r = leader_call(&fake, LeaderRequest::KeepAlive(9), T).await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        fake.calls(),
        vec![
            Call::Execute("keep-alive"),
            Call::Forward(2, "keep-alive", T)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_leader_is_tried_again_until_the_wait_runs_out() {
    let fake = Fake::new(2, Some(1)).answering(vec![Err(unreachable()), Err(unreachable())]);
    let r = leader_call(&fake, LeaderRequest::KeepAlive(9), T).await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(fake.calls().len(), 3);

    let always: Vec<_> = (0..1000).map(|_| Err(unreachable())).collect();
    let fake = Fake::new(2, Some(1)).answering(always);
    let r = leader_call(&fake, LeaderRequest::KeepAlive(9), T).await;
    assert!(matches!(r, Err(StoreError::NoLeader { .. })), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn a_write_with_an_unknown_outcome_is_never_sent_twice() {
    let fake = Fake::new(2, Some(1)).answering(vec![Err(StoreError::OutcomeUnknown {
        leader: "10.0.0.1:7000".into(),
        reason: "connection reset".into(),
    })]);
    let write = LeaderRequest::Write(Request::now(crate::command::Command::LeaseRevoke {
        ids: vec![1],
    }));
    let r = leader_call(&fake, write, T).await;
    assert!(matches!(r, Err(StoreError::OutcomeUnknown { .. })), "{r:?}");
    assert_eq!(fake.calls(), vec![Call::Forward(1, "write", T)]);
}

#[tokio::test(start_paused = true)]
async fn an_answer_of_the_leader_is_the_callers_even_when_it_is_an_error() {
    let fake = Fake::new(2, Some(1)).answering(vec![Err(StoreError::LeaseNotFound(9))]);
    let r = leader_call(&fake, LeaderRequest::KeepAlive(9), T).await;
    assert!(matches!(r, Err(StoreError::LeaseNotFound(9))), "{r:?}");
    assert_eq!(fake.calls().len(), 1);
}

#[test]
fn a_failed_forward_may_be_sent_again_only_if_it_cannot_have_run_twice() {
    let write = LeaderRequest::Write(Request::now(crate::command::Command::LeaseRevoke {
        ids: vec![1],
    }));
    let refused = tonic::Status::unavailable("tcp connect error: Connection refused");
    let reset = tonic::Status::unavailable("connection reset by peer");
    let addr = || "10.0.0.1:7000".to_string();
    // A write that may have reached the leader has an unknown outcome ...
    assert!(matches!(
        forward_failed(&write, addr(), &reset),
        StoreError::OutcomeUnknown { .. }
    ));
    // ... one that was refused at connect never arrived ...
    assert!(matches!(
        forward_failed(&write, addr(), &refused),
        StoreError::LeaderUnreachable { .. }
    ));
    // ... and anything else changes nothing if sent twice.
    for req in [
        LeaderRequest::ReadIndex,
        LeaderRequest::KeepAlive(1),
        LeaderRequest::Status,
    ] {
        assert!(matches!(
            forward_failed(&req, addr(), &reset),
            StoreError::LeaderUnreachable { .. }
        ));
    }
}

#[test]
fn only_requests_that_provably_did_not_run_are_retried_and_only_before_the_deadline() {
    let ms = Duration::from_millis;
    assert_eq!(retry(&not_leader(1), true), Retry::After(ms(25)));
    assert_eq!(
        retry(&StoreError::NoLeader { waited_ms: 0 }, true),
        Retry::After(ms(25))
    );
    assert_eq!(retry(&unreachable(), true), Retry::After(ms(50)));
    for e in [
        not_leader(1),
        StoreError::NoLeader { waited_ms: 0 },
        unreachable(),
    ] {
        assert_eq!(retry(&e, false), Retry::NoLeader);
    }
    let unknown = StoreError::OutcomeUnknown {
        leader: "l".into(),
        reason: "r".into(),
    };
    assert_eq!(retry(&unknown, true), Retry::Return);
    assert_eq!(retry(&StoreError::Timeout(1), true), Retry::Return);
    assert_eq!(
        retry(&StoreError::NoSpace { quota: 1, used: 2 }, true),
        Retry::Return
    );
}

#[tokio::test(start_paused = true)]
async fn stale_reads_never_leave_this_replica() {
    // Not even without a leader: a stale read is served as the replica is.
    let fake = Fake::new(2, None);
    let started = Instant::now();
    read_barrier(&fake, true).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(fake.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_linearizable_read_on_the_leader_uses_its_own_read_index() {
    let fake = Fake::new(1, Some(1));
    read_barrier(&fake, false).await.unwrap();
    assert_eq!(fake.calls(), vec![Call::ReadHere]);
}

#[tokio::test(start_paused = true)]
async fn a_linearizable_read_on_a_follower_waits_for_the_leaders_read_index() {
    let fake = Fake::new(2, Some(1)).answering(vec![Ok(LeaderResponse::ReadIndex(42))]);
    linearize(&fake).await.unwrap();
    assert_eq!(
        fake.calls(),
        vec![
            Call::ReadHere,
            Call::Forward(1, "read-index", super::FORWARD_TIMEOUT),
            Call::WaitApplied(42)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_linearizable_read_without_a_leader_fails_and_reads_nothing() {
    let fake = Fake::new(2, None);
    let r = read_barrier(&fake, false).await;
    assert!(matches!(r, Err(StoreError::NoLeader { .. })), "{r:?}");
    assert_eq!(fake.calls(), vec![Call::ReadHere]);
}

#[tokio::test(start_paused = true)]
async fn a_read_index_answered_with_something_else_is_a_protocol_error() {
    let fake =
        Fake::new(2, Some(1)).answering(vec![Ok(LeaderResponse::Written(Response::MemberId {
            id: 1,
        }))]);
    let r = linearize(&fake).await;
    assert!(matches!(r, Err(StoreError::Protocol(_))), "{r:?}");
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::WaitApplied(_))));
}
