//! The proxy-config generator: renders the nginx and haproxy configs from the proxy model of
//! one store read (`crate::proxy::model`) and writes them to `/shoal/proxy/config` once per
//! change. Additions wait until 50 ms after the last change, never more than 150 ms after the
//! first (the bounds are 100 and 250 ms), so a scale of many tasks is one new config; a server that leaves (its task died, its
//! node is DOWN) is written at once. A new leader computes the same model from the same objects,
//! so a failover writes nothing.

use crate::model::{ProxyConfig, ProxyModel, Service};
use crate::objects::{Expect, View, Write};
use crate::proxy::labels;
use crate::proxy::model::build;
use crate::proxy::render::{render, ProxyKind, RenderOptions};

use super::Plan;

/// Quiet time after the last change before a new config is written.
pub const QUIET_MS: u64 = 50;
/// Longest a change waits, however busy the cluster.
pub const MAX_WAIT_MS: u64 = 150;

/// The generator's memory between rounds: the model waiting to be written and since when.
#[derive(Debug, Default)]
pub struct ProxyGen {
    waiting: Option<Waiting>,
}

#[derive(Debug)]
struct Waiting {
    model: ProxyModel,
    first_ms: u64,
    last_ms: u64,
}

impl ProxyGen {
    pub fn plan(&mut self, state: &View, now_ms: u64) -> Plan {
        let nodes: Vec<_> = state.nodes().map(|n| &n.value).collect();
        let services: Vec<_> = state.services().map(|s| &s.value).collect();
        // Only the tasks of services that ask for the proxy (or whose labels are wrong, for
        // the error) can be in the model.
        let tasks: Vec<_> = services
            .iter()
            .filter(|s| {
                let s: &Service = s;
                std::iter::once(s)
                    .chain(s.previous.as_deref())
                    .any(|spec| spec.labels.contains_key(labels::HOSTNAME))
            })
            .flat_map(|s| state.tasks_of_service(&s.id))
            .map(|t| &t.value)
            .collect();
        let model = build(&nodes, &services, &tasks);
        let stored = state.proxy();
        if stored.is_some_and(|s| s.value.model == model) {
            self.waiting = None;
            return Plan::default();
        }
        let due = match &mut self.waiting {
            Some(w) if w.model == model => w,
            Some(w) => {
                w.model = model.clone();
                w.last_ms = now_ms;
                w
            }
            None => self.waiting.insert(Waiting {
                model: model.clone(),
                first_ms: now_ms,
                last_ms: now_ms,
            }),
        };
        let due_ms = (due.last_ms + QUIET_MS).min(due.first_ms + MAX_WAIT_MS);
        let removes = stored.is_some_and(|s| loses_a_server(&s.value.model, &model));
        if now_ms < due_ms && !removes {
            return Plan {
                writes: Vec::new(),
                wake_at_ms: Some(due_ms),
            };
        }
        self.waiting = None;
        let generation = stored.map_or(0, |s| s.value.generation) + 1;
        let options = RenderOptions::default();
        let rendered = (
            render(ProxyKind::Nginx, &model, generation, &options, None),
            render(ProxyKind::Haproxy, &model, generation, &options, None),
        );
        let (nginx, haproxy) = match rendered {
            (Ok(n), Ok(h)) => (n, h),
            (Err(e), _) | (_, Err(e)) => {
                // The built-in templates render every model; this is a bug, not bad input.
                tracing::error!(error = %e, "rendering the built-in proxy templates failed");
                return Plan::default();
            }
        };
        let expect = stored.map_or(Expect::Absent, |s| Expect::ModRevision(s.mod_revision));
        Plan {
            writes: vec![Write::Proxy {
                config: ProxyConfig {
                    generation,
                    model,
                    nginx,
                    haproxy,
                },
                expect,
            }],
            wake_at_ms: None,
        }
    }
}

/// Whether `new` drops an upstream server or a host that `old` had.
fn loses_a_server(old: &ProxyModel, new: &ProxyModel) -> bool {
    old.hosts
        .iter()
        .any(|h| match new.hosts.iter().find(|n| n.name == h.name) {
            None => true,
            Some(n) => h
                .upstreams
                .iter()
                .any(|u| !n.upstreams.iter().any(|x| x.addr == u.addr)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Health, Node, NodeStatus, Protocol, PublishedPort, Service, Task, TaskState,
    };
    use crate::objects::Versioned;

    fn state(running: &[(&str, u16)]) -> View {
        let tasks: Vec<_> = running.iter().map(|&(id, port)| (id, port, None)).collect();
        state_with(&tasks)
    }

    /// Tasks (id, host port, health), all RUNNING on a READY node and meant to run.
    fn state_with(running: &[(&str, u16, Option<Health>)]) -> View {
        let node: Node = serde_json::from_value(serde_json::json!({
            "id": "n1", "name": "node-1", "addr": "127.0.0.2", "cpus": 1, "memory_bytes": 1,
            "status": NodeStatus::Ready,
        }))
        .unwrap();
        let service: Service = serde_json::from_value(serde_json::json!({
            "id": "s", "name": "web", "image": "i", "replicas": 1,
            "labels": {"interlock.hostname": "test", "interlock.domain": "local"},
        }))
        .unwrap();
        let tasks = running
            .iter()
            .map(|(id, port, health)| {
                let mut t = Task::new(id.to_string(), "s".into(), 1, 0);
                t.health = *health;
                t.node_id = Some("n1".into());
                t.state = TaskState::Running;
                t.ports = vec![PublishedPort {
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    host_ip: "127.0.0.2".into(),
                    host_port: *port,
                }];
                Versioned {
                    value: t,
                    mod_revision: 5,
                }
            })
            .collect::<Vec<_>>();
        View::build(
            9,
            vec![Versioned {
                value: node,
                mod_revision: 1,
            }],
            vec![Versioned {
                value: service,
                mod_revision: 2,
            }],
            tasks,
            None,
        )
    }

    fn written(plan: &Plan) -> Option<&ProxyConfig> {
        plan.writes.iter().find_map(|w| match w {
            Write::Proxy { config, .. } => Some(config),
            _ => None,
        })
    }

    #[test]
    fn a_change_waits_for_quiet_but_no_longer_than_the_cap() {
        let mut gen = ProxyGen::default();
        let s1 = state(&[("a", 1)]);
        let p = gen.plan(&s1, 1_000);
        assert!(p.writes.is_empty());
        assert_eq!(p.wake_at_ms, Some(1_000 + QUIET_MS));
        // Another change moves the quiet deadline, capped at MAX_WAIT_MS after the first.
        let s2 = state(&[("a", 1), ("b", 2)]);
        assert_eq!(gen.plan(&s2, 1_040).wake_at_ms, Some(1_040 + QUIET_MS));
        let s3 = state(&[("a", 1), ("b", 2), ("c", 3)]);
        assert_eq!(gen.plan(&s3, 1_140).wake_at_ms, Some(1_000 + MAX_WAIT_MS));
        let p = gen.plan(&s3, 1_000 + MAX_WAIT_MS);
        let config = written(&p).expect("written at the cap");
        assert_eq!(config.generation, 1);
        assert_eq!(config.model.hosts[0].upstreams.len(), 3);
        assert!(
            config.nginx.contains("server 127.0.0.2:3 "),
            "{}",
            config.nginx
        );
        assert!(config.haproxy.contains("backend test.local"));
    }

    #[test]
    fn an_unchanged_model_writes_nothing_and_a_lost_server_is_written_at_once() {
        let mut gen = ProxyGen::default();
        let mut s = state(&[("a", 1), ("b", 2)]);
        let first = gen.plan(&s, 0);
        assert!(first.writes.is_empty());
        let config = written(&gen.plan(&s, QUIET_MS)).unwrap().clone();
        s.put_record(
            crate::model::keys::PROXY_CONFIG,
            &serde_json::to_vec(&config).unwrap(),
            10,
        );
        // As a new leader would see it: nothing to write.
        assert!(ProxyGen::default().plan(&s, 5_000).writes.is_empty());
        // Task b dies: its server leaves without waiting.
        s.delete_record(&crate::model::keys::task("b"));
        let p = gen.plan(&s, 5_001);
        let config = written(&p).expect("written at once");
        assert_eq!(config.generation, 2);
        assert_eq!(config.model.hosts[0].upstreams.len(), 1);
        assert!(matches!(
            p.writes[0],
            Write::Proxy {
                expect: Expect::ModRevision(10),
                ..
            }
        ));
    }

    #[test]
    fn only_healthy_tasks_are_servers_and_one_turning_unhealthy_leaves_at_once() {
        let servers = |config: &ProxyConfig| -> Vec<String> {
            config.model.hosts[0]
                .upstreams
                .iter()
                .map(|u| u.task_id.clone())
                .collect()
        };
        let mut gen = ProxyGen::default();
        let s = state_with(&[
            ("a", 1, Some(Health::Healthy)),
            ("b", 2, Some(Health::Starting)),
            ("c", 3, None),
        ]);
        gen.plan(&s, 0);
        let config = written(&gen.plan(&s, QUIET_MS)).unwrap().clone();
        assert_eq!(servers(&config), ["a", "c"], "b has not passed a check yet");
        assert!(!config.nginx.contains("127.0.0.2:2 "), "{}", config.nginx);
        let mut s = state_with(&[
            ("a", 1, Some(Health::Unhealthy)),
            ("b", 2, Some(Health::Healthy)),
            ("c", 3, None),
        ]);
        s.put_record(
            crate::model::keys::PROXY_CONFIG,
            &serde_json::to_vec(&config).unwrap(),
            10,
        );
        // a leaves and b joins: a change that loses a server is written at once.
        let p = gen.plan(&s, 1_000);
        let next = written(&p).expect("written at once");
        assert_eq!(servers(next), ["b", "c"]);
        assert_eq!(next.generation, config.generation + 1);
    }
}
