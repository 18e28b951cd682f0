//! Unit tests of the session's pure parts: decoding sets, merging reports, reading a refusal.

use super::*;
use crate::model::TaskState;
use bytes::Bytes;
use shoal_proto::v1::Assignment as Wire;
use tonic::metadata::MetadataMap;

fn task_json(id: &str) -> Bytes {
    serde_json::to_vec(&Task::new(id.into(), "svc1".into(), 1, 0))
        .unwrap()
        .into()
}

fn service_json() -> Bytes {
    Bytes::from_static(br#"{"id":"svc1","name":"web","image":"shoal/whoami:latest","replicas":1}"#)
}

fn ids(held: &Held) -> Vec<(String, Option<String>)> {
    held.assignments()
        .into_iter()
        .map(|a| (a.task.id, a.service.map(|s| s.name)))
        .collect()
}

#[test]
fn a_whole_set_decodes_whole_or_not_at_all() {
    let set = AssignmentSet {
        revision: 7,
        tasks: vec![
            Wire {
                task: task_json("t1"),
                service: service_json(),
            },
            Wire {
                task: task_json("t2"),
                service: Bytes::new(),
            },
        ],
        ..Default::default()
    };
    let mut held = Held::default();
    held.apply(&set).unwrap();
    assert_eq!(
        ids(&held),
        [
            ("t1".into(), Some("web".into())),
            ("t2".into(), Some("web".into()))
        ],
        "t2's service came with t1"
    );

    let mut bad = set.clone();
    bad.tasks[1].service = Bytes::from_static(b"{");
    bad.tasks.remove(0);
    let err = held.apply(&bad).unwrap_err();
    assert!(err.contains("service of task t2"), "{err}");
    assert_eq!(
        ids(&held).len(),
        2,
        "a message that does not decode changes nothing"
    );

    // A whole set replaces everything: t1 and the service are gone with it.
    let only_t2 = AssignmentSet {
        revision: 8,
        tasks: vec![Wire {
            task: task_json("t2"),
            service: Bytes::new(),
        }],
        ..Default::default()
    };
    held.apply(&only_t2).unwrap();
    assert_eq!(ids(&held), [("t2".into(), None)], "the service is gone");
}

#[test]
fn incremental_messages_patch_the_held_set() {
    let bare = |id| Wire {
        task: task_json(id),
        service: Bytes::new(),
    };
    let mut held = Held::default();
    held.apply(&AssignmentSet {
        revision: 3,
        tasks: vec![bare("t1"), bare("t2")],
        services: vec![service_json()],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(ids(&held).len(), 2);
    held.apply(&AssignmentSet {
        revision: 4,
        changes: true,
        tasks: vec![bare("t3")],
        removed: vec!["t1".into()],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        ids(&held),
        [
            ("t2".into(), Some("web".into())),
            ("t3".into(), Some("web".into()))
        ]
    );
    held.apply(&AssignmentSet {
        revision: 5,
        changes: true,
        removed_services: vec!["svc1".into()],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(ids(&held), [("t2".into(), None), ("t3".into(), None)]);
    // A complete set (changes false) starts over.
    held.apply(&AssignmentSet {
        revision: 6,
        tasks: vec![bare("t9")],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(ids(&held), [("t9".into(), None)]);
}

fn report(task: &str, state: TaskState) -> TaskStatus {
    TaskStatus {
        task_id: task.into(),
        state,
        message: String::new(),
        container_id: None,
        ports: Vec::new(),
        exit_code: None,
        health: None,
    }
}

#[test]
fn pending_reports_keep_the_furthest_state() {
    let mut pending = BTreeMap::new();
    merge(&mut pending, report("t1", TaskState::Running));
    merge(&mut pending, report("t1", TaskState::Accepted));
    assert_eq!(pending["t1"].state, TaskState::Running);
    merge(&mut pending, report("t1", TaskState::Failed));
    merge(&mut pending, report("t2", TaskState::Shutdown));
    assert_eq!(pending["t1"].state, TaskState::Failed);
    assert_eq!(pending.len(), 2);
}

fn unavailable(leader: Option<&str>) -> Status {
    let mut metadata = MetadataMap::new();
    if let Some(leader) = leader {
        metadata.insert(LEADER_HEADER, leader.parse().unwrap());
    }
    Status::with_metadata(Code::Unavailable, "not the leader", metadata)
}

#[test]
fn answers_are_read_as_follow_retry_register_or_give_up() {
    assert!(matches!(
        classify(&unavailable(Some("127.0.0.1:7001"))),
        End::NotLeader(Some(l)) if l == "127.0.0.1:7001"
    ));
    assert!(matches!(
        classify(&unavailable(Some(""))),
        End::NotLeader(Some(l)) if l.is_empty()
    ));
    assert!(matches!(classify(&unavailable(None)), End::Failed(_)));
    assert!(matches!(
        classify(&Status::permission_denied("bad token")),
        End::Refused(m) if m == "bad token"
    ));
    assert!(matches!(
        classify(&Status::unauthenticated("")),
        End::Refused(_)
    ));
    assert!(matches!(
        classify(&Status::not_found("node")),
        End::NotRegistered
    ));
}

/// Sessions against fake managers serving the Dispatcher on loopback.
mod against_fake_managers {
    use std::sync::Mutex;

    use shoal_proto::v1::dispatcher_server::{Dispatcher, DispatcherServer};
    use shoal_proto::v1::{HeartbeatResponse, RegisterResponse, UpdateTaskStatusResponse};
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tokio_stream::StreamExt as _;

    use super::*;

    #[derive(Default)]
    struct Seen {
        registers: usize,
        reports: Vec<TaskStatus>,
    }

    /// A manager that leads (or names another leader, or refuses every token).
    struct Fake {
        not_leader: Option<String>,
        refuse: bool,
        /// Answer UpdateTaskStatus as a deposed leader naming this one.
        deposed_for: Option<String>,
        /// End every assignment stream right after its first set (a leader that keeps failing).
        end_streams: bool,
        seen: Arc<Mutex<Seen>>,
    }

    impl Fake {
        fn check<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
            let _ = request;
            if self.refuse {
                return Err(Status::permission_denied("certificate refused"));
            }
            match &self.not_leader {
                Some(leader) => Err(not_leader(leader)),
                None => Ok(()),
            }
        }
    }

    fn not_leader(leader: &str) -> Status {
        let mut metadata = MetadataMap::new();
        metadata.insert(LEADER_HEADER, leader.parse().unwrap());
        Status::with_metadata(Code::Unavailable, "not the leader", metadata)
    }

    type SetStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<AssignmentSet, Status>> + Send + 'static>,
    >;

    #[tonic::async_trait]
    impl Dispatcher for Fake {
        async fn register(
            &self,
            request: tonic::Request<RegisterRequest>,
        ) -> Result<tonic::Response<RegisterResponse>, Status> {
            self.check(&request)?;
            self.seen.lock().unwrap().registers += 1;
            let node_id = request.into_inner().node_id;
            Ok(tonic::Response::new(RegisterResponse {
                node_id,
                leader_id: 1,
            }))
        }

        async fn heartbeat(
            &self,
            request: tonic::Request<HeartbeatRequest>,
        ) -> Result<tonic::Response<HeartbeatResponse>, Status> {
            self.check(&request)?;
            Ok(tonic::Response::new(HeartbeatResponse { period_ms: 0 }))
        }

        type AssignmentsStream = SetStream;

        async fn assignments(
            &self,
            request: tonic::Request<AssignmentsRequest>,
        ) -> Result<tonic::Response<SetStream>, Status> {
            self.check(&request)?;
            let set = AssignmentSet {
                revision: 3,
                tasks: vec![Wire {
                    task: task_json("t1"),
                    service: service_json(),
                }],
                ..Default::default()
            };
            let first = tokio_stream::iter([Ok(set)]);
            if self.end_streams {
                return Ok(tonic::Response::new(Box::pin(first)));
            }
            let stream = first.chain(tokio_stream::pending());
            Ok(tonic::Response::new(Box::pin(stream)))
        }

        async fn update_task_status(
            &self,
            request: tonic::Request<UpdateTaskStatusRequest>,
        ) -> Result<tonic::Response<UpdateTaskStatusResponse>, Status> {
            self.check(&request)?;
            if let Some(leader) = &self.deposed_for {
                return Err(not_leader(leader));
            }
            let updates = request.into_inner().updates;
            let mut seen = self.seen.lock().unwrap();
            for u in &updates {
                seen.reports.push(serde_json::from_slice(u).unwrap());
            }
            Ok(tonic::Response::new(UpdateTaskStatusResponse {
                applied: updates.len() as u32,
                skipped: 0,
            }))
        }
    }

    /// Serves `fake` on a loopback port; returns its address and what it saw.
    async fn serve(mut fake: Fake) -> (String, Arc<Mutex<Seen>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Seen::default()));
        fake.seen = seen.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DispatcherServer::new(fake))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (addr, seen)
    }

    fn leader() -> Fake {
        Fake {
            not_leader: None,
            refuse: false,
            deposed_for: None,
            end_streams: false,
            seen: Arc::default(),
        }
    }

    struct Agent {
        assignments: watch::Receiver<Assignments>,
        reports: mpsc::UnboundedSender<TaskStatus>,
        session: tokio::task::JoinHandle<AgentError>,
    }

    fn start_agent(join: Vec<String>) -> Agent {
        start_agent_beating(join, Duration::from_millis(50))
    }

    fn start_agent_beating(join: Vec<String>, heartbeat: Duration) -> Agent {
        let engine = EngineInfo {
            name: "host".into(),
            version: "27.0.0".into(),
            api_version: "1.47".into(),
            cpus: 2,
            memory_bytes: 1 << 30,
            images: vec!["shoal/whoami:latest".into()],
        };
        let (_engine_tx, engine_rx) = watch::channel(engine);
        let (assignments_tx, assignments) = watch::channel(None);
        let (reports, reports_rx) = mpsc::unbounded_channel();
        let me = Identity {
            node_id: "0123456789abcdef0123".into(),
            name: "node-1".into(),
            addr: "127.0.0.2".into(),
            engine_addr: "127.0.0.2:2376".into(),
            labels: BTreeMap::new(),
            heartbeat,
        };
        let session = Session::new(me, &join, None, engine_rx, assignments_tx, reports_rx).unwrap();
        Agent {
            assignments,
            reports,
            session: tokio::spawn(session.run()),
        }
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_follower_leads_the_agent_to_the_leader() {
        let (leader_addr, seen) = serve(leader()).await;
        let mut follower = leader();
        follower.not_leader = Some(leader_addr);
        let (follower_addr, follower_seen) = serve(follower).await;

        let mut agent = start_agent(vec![follower_addr]);
        agent.assignments.changed().await.unwrap();
        let set = agent.assignments.borrow().clone().unwrap();
        assert_eq!(set[0].task.id, "t1");
        assert_eq!(seen.lock().unwrap().registers, 1);
        assert_eq!(follower_seen.lock().unwrap().registers, 0);

        agent
            .reports
            .send(report("t1", TaskState::Running))
            .unwrap();
        eventually("the report", || !seen.lock().unwrap().reports.is_empty()).await;
        assert_eq!(seen.lock().unwrap().reports[0].state, TaskState::Running);
        agent.session.abort();
    }

    #[tokio::test]
    async fn reports_a_deposed_leader_refuses_go_to_the_next_one() {
        let (next_addr, next_seen) = serve(leader()).await;
        let mut deposed = leader();
        deposed.deposed_for = Some(next_addr);
        let (deposed_addr, deposed_seen) = serve(deposed).await;

        let agent = start_agent(vec![deposed_addr]);
        agent.reports.send(report("t1", TaskState::Failed)).unwrap();
        eventually("the report at the next leader", || {
            !next_seen.lock().unwrap().reports.is_empty()
        })
        .await;
        assert_eq!(deposed_seen.lock().unwrap().registers, 1);
        assert_eq!(next_seen.lock().unwrap().reports[0].task_id, "t1");
        agent.session.abort();
    }

    #[tokio::test]
    async fn a_refused_certificate_ends_the_agent_with_one_clear_error() {
        let (addr, _) = serve(Fake {
            refuse: true,
            ..leader()
        })
        .await;
        let agent = start_agent(vec![addr.clone()]);
        let err = tokio::time::timeout(Duration::from_secs(5), agent.session)
            .await
            .expect("a refusal is fatal, not retried")
            .unwrap();
        assert_eq!(
            err.to_string(),
            format!("manager {addr} refused this agent: certificate refused")
        );
    }

    #[tokio::test]
    async fn an_unreachable_manager_is_left_for_the_next_join_address() {
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap().to_string();
        drop(dead);
        let (addr, seen) = serve(leader()).await;
        let mut agent = start_agent(vec![dead_addr, addr]);
        tokio::time::timeout(Duration::from_secs(3), agent.assignments.changed())
            .await
            .expect("registered through the second address")
            .unwrap();
        assert_eq!(seen.lock().unwrap().registers, 1);
        agent.session.abort();
    }

    #[tokio::test]
    async fn a_leader_that_keeps_dropping_the_session_is_retried_ever_more_slowly() {
        let (addr, seen) = serve(Fake {
            end_streams: true,
            ..leader()
        })
        .await;
        // A 10 s heartbeat (a large cluster's): the cap, half of it, is the policy's 5 s.
        let agent = start_agent_beating(vec![addr], Duration::from_secs(10));
        sleep(Duration::from_millis(2500)).await;
        let registers = seen.lock().unwrap().registers;
        agent.session.abort();
        // Pauses of 50..200, 100..400, 200..800, 400..1600, 800..3200 ms: at most 6 sessions
        // in 2.5 s, at least 3 (a fixed 150 ms pause made 15).
        assert!(
            (3..=6).contains(&registers),
            "{registers} sessions in 2.5 s"
        );
    }

    #[tokio::test]
    async fn with_a_short_heartbeat_retries_stay_within_a_new_leaders_grace() {
        let (addr, seen) = serve(Fake {
            end_streams: true,
            ..leader()
        })
        .await;
        // 500 ms periods: pauses stay under 250 ms, so a new leader (which waits 1.5 s) hears
        // from the node in time.
        let agent = start_agent_beating(vec![addr], Duration::from_millis(500));
        sleep(Duration::from_millis(2500)).await;
        let registers = seen.lock().unwrap().registers;
        agent.session.abort();
        assert!(registers >= 10, "{registers} sessions in 2.5 s");
    }
}
