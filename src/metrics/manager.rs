//! A manager's page: Raft and the store (read from `Store::status` and `Store::stats` at each
//! scrape), the cluster's objects as the index holds them (tasks by state, pending tasks, nodes),
//! proxies (the config's generation; each proxy's live generation, reloads, failures and config
//! age from the status it keeps), certificate expiry, the HTTP surfaces' connections, then the
//! event-driven families of [`families::MANAGER`].

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use shoal_raft::{LatencyStats, Range, Store, LATENCY_BOUNDS};
use shoal_tls::Credentials;

use super::families;
use super::text::Text;
use super::Buckets;
use crate::api::conn::{ApiConns, ConnStats};
use crate::model::{keys, NodeStatus, ProxyStatus};
use crate::objects::{ObjectStore, Objects};

/// What a manager's page is read from; cheap to clone.
#[derive(Clone)]
pub struct ManagerMetrics {
    pub store: Store,
    pub objects: Objects,
    pub conns: ApiConns,
    pub creds: Credentials,
}

impl ManagerMetrics {
    /// The whole page.
    pub async fn render(&self) -> String {
        let mut out = Text::new();
        self.raft(&mut out).await;
        self.objects(&mut out);
        self.proxies(&mut out).await;
        tls(&mut out, &self.creds);
        connections(&mut out, &self.conns);
        for f in families::MANAGER {
            f.encode(&mut out);
        }
        out.finish()
    }

    async fn raft(&self, out: &mut Text) {
        let s = self.store.status().await;
        let id = self.store.id();
        let stats = self.store.stats();
        let b = |v: bool| if v { 1.0 } else { 0.0 };
        let g = |out: &mut Text, name: &str, help: &str, v: f64| out.single(name, "gauge", help, v);
        let c = |out: &mut Text, name: &str, help: &str, v: u64| {
            out.single(name, "counter", help, v as f64)
        };
        g(
            out,
            "shoal_is_leader",
            "1 if this manager is the Raft leader.",
            b(s.leader == Some(id)),
        );
        g(
            out,
            "shoal_has_leader",
            "1 if this manager knows a leader.",
            b(s.leader.is_some()),
        );
        g(
            out,
            "shoal_leader_id",
            "Raft id of the leader this manager knows (0: none).",
            s.leader.unwrap_or(0) as f64,
        );
        g(out, "shoal_raft_term", "Current Raft term.", s.term as f64);
        g(
            out,
            "shoal_raft_commit_index",
            "Highest log index known committed.",
            s.commit_index as f64,
        );
        g(
            out,
            "shoal_raft_applied_index",
            "Highest log index applied by this manager.",
            s.applied_index as f64,
        );
        g(
            out,
            "shoal_raft_apply_lag",
            "Committed log entries this manager has not applied yet.",
            s.commit_index.saturating_sub(s.applied_index) as f64,
        );
        g(
            out,
            "shoal_raft_snapshot_index",
            "Log index of this manager's latest snapshot.",
            s.snapshot_index as f64,
        );
        c(
            out,
            "shoal_raft_leader_changes_total",
            "Times the leader this manager knows changed (to another manager or to none).",
            stats.leader_changes,
        );
        c(
            out,
            "shoal_raft_proposals_total",
            "Entries this manager proposed to the Raft log as the leader.",
            stats.proposals,
        );
        c(
            out,
            "shoal_raft_proposals_failed_total",
            "Proposals that failed (leadership lost, store stopping).",
            stats.proposals_failed,
        );
        latency(
            out,
            "shoal_raft_append_duration_seconds",
            "Group commits of the Raft log: writing the appended entries and syncing them.",
            &stats.append,
        );
        latency(
            out,
            "shoal_raft_fsync_duration_seconds",
            "Syncs of the write-ahead log (appends and votes).",
            &stats.fsync,
        );
        latency(
            out,
            "shoal_raft_snapshot_duration_seconds",
            "Snapshots built, by how long each took.",
            &stats.snapshot,
        );
        c(
            out,
            "shoal_raft_snapshots_total",
            "Snapshots this manager built.",
            stats.snapshot.counts.iter().sum(),
        );
        g(
            out,
            "shoal_raft_snapshot_size_bytes",
            "Size of the latest snapshot file this manager built (0: none yet).",
            stats.snapshot_bytes as f64,
        );
        g(
            out,
            "shoal_managers",
            "Managers in the membership.",
            s.members.len() as f64,
        );
        g(
            out,
            "shoal_voters",
            "Voting managers.",
            s.members.iter().filter(|m| m.voter).count() as f64,
        );
        g(
            out,
            "shoal_store_revision",
            "Store revision this manager has applied.",
            s.revision as f64,
        );
        g(
            out,
            "shoal_store_keys",
            "Live keys (RocksDB's estimate).",
            stats.keys as f64,
        );
        g(
            out,
            "shoal_store_leases",
            "Leases (RocksDB's estimate).",
            stats.leases as f64,
        );
        g(
            out,
            "shoal_store_watches",
            "Watches open on this manager.",
            stats.watches as f64,
        );
        g(
            out,
            "shoal_store_db_size_bytes",
            "Bytes of this manager's RocksDB: SST files plus memtables.",
            stats.db_bytes as f64,
        );
        g(
            out,
            "shoal_store_used_bytes",
            "Bytes the store holds, as its quota counts them.",
            s.used_bytes as f64,
        );
        g(
            out,
            "shoal_store_quota_bytes",
            "The storage quota in force (0: none recorded yet).",
            s.quota_bytes as f64,
        );
        g(
            out,
            "shoal_store_quota_used_ratio",
            "Used bytes over the quota (0 without a quota).",
            if s.quota_bytes == 0 {
                0.0
            } else {
                s.used_bytes as f64 / s.quota_bytes as f64
            },
        );
        g(
            out,
            "shoal_store_alarm_nospace",
            "1 while the NOSPACE alarm is raised: writes that add data are refused.",
            b(s.alarms.iter().any(|a| a.starts_with("NOSPACE"))),
        );
    }

    fn objects(&self, out: &mut Text) {
        let view = self.objects.view();
        let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
        for t in view.tasks() {
            *by_state
                .entry(t.value.state.to_string().to_lowercase())
                .or_default() += 1;
        }
        out.family("shoal_tasks", "gauge", "Tasks in the cluster, by state.");
        for (state, n) in &by_state {
            out.sample("shoal_tasks", &[("state", state)], *n as f64);
        }
        out.single(
            "shoal_scheduler_pending_tasks",
            "gauge",
            "Tasks waiting for the scheduler to place them.",
            view.pending().count() as f64,
        );
        let ready = view
            .nodes()
            .filter(|n| n.value.status == NodeStatus::Ready)
            .count();
        out.family("shoal_nodes", "gauge", "Nodes in the cluster, by status.");
        out.sample("shoal_nodes", &[("status", "ready")], ready as f64);
        out.sample(
            "shoal_nodes",
            &[("status", "down")],
            (view.node_count() - ready) as f64,
        );
        out.single(
            "shoal_services",
            "gauge",
            "Services in the cluster.",
            view.services().count() as f64,
        );
        out.single(
            "shoal_proxy_config_generation",
            "gauge",
            "Generation of the proxy config the leader last wrote (0: none yet).",
            view.proxy().map_or(0, |p| p.value.generation) as f64,
        );
    }

    async fn proxies(&self, out: &mut Text) {
        let range = Range {
            key: keys::PROXY_STATUS.as_bytes().to_vec(),
            prefix: true,
            limit: 0,
            keys_only: false,
            count_only: false,
        };
        let statuses: Vec<ProxyStatus> = match self.store.range(&range, true).await {
            Ok((r, _)) => r
                .kvs
                .iter()
                .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                .collect(),
            Err(_) => Vec::new(),
        };
        let now = now_ms();
        type Reading = fn(&ProxyStatus, u64) -> f64;
        let families: [(&str, &str, &str, Reading); 5] = [
            (
                "shoal_proxy_generation",
                "gauge",
                "Generation of the proxy config live in each proxy.",
                |p, _| p.applied_generation as f64,
            ),
            (
                "shoal_proxy_reloads_total",
                "counter",
                "Reloads each proxy made since it started.",
                |p, _| p.reloads as f64,
            ),
            (
                "shoal_proxy_reload_failures_total",
                "counter",
                "Configs each proxy failed to validate or reload since it started.",
                |p, _| p.failures as f64,
            ),
            (
                "shoal_proxy_config_age_seconds",
                "gauge",
                "Seconds since each proxy made its live config live (since its start if it never reloaded).",
                |p, now| now.saturating_sub(p.applied_ms) as f64 / 1000.0,
            ),
            (
                "shoal_proxy_failing",
                "gauge",
                "1 while the latest config failed in a proxy (it keeps running the previous one).",
                |p, _| if p.error.is_some() { 1.0 } else { 0.0 },
            ),
        ];
        for (name, kind, help, read) in families {
            out.family(name, kind, help);
            for p in &statuses {
                out.sample(name, &[("proxy", &p.name), ("kind", &p.kind)], read(p, now));
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A histogram from the store's counters.
fn latency(out: &mut Text, name: &str, help: &str, l: &LatencyStats) {
    out.family(name, "histogram", help);
    let b = Buckets {
        counts: l.counts.clone(),
        sum: l.sum_seconds,
    };
    out.histogram(name, &[], LATENCY_BOUNDS, &b);
}

/// When this process's certificate and the cluster's roots expire.
pub(crate) fn tls(out: &mut Text, creds: &Credentials) {
    let name = "shoal_tls_cert_expiry_timestamp_seconds";
    out.family(
        name,
        "gauge",
        "When a certificate this process holds expires (seconds since the epoch), by role (its own; root: the cluster's roots).",
    );
    let secs = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    if let Some(id) = creds.identity() {
        out.sample(
            name,
            &[("role", id.role.as_str()), ("name", &id.name)],
            secs(id.not_after),
        );
    }
    for (root, expiry) in shoal_tls::pki::expiries(&creds.roots_pem()) {
        out.sample(name, &[("role", "root"), ("name", &root)], secs(expiry));
    }
}

/// A metric's name, kind, help and reading.
type ConnMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ConnStats) -> u64,
);

/// The HTTP surfaces' connection counters, labelled by surface (`api="docker"`, `api="http"`).
fn connections(out: &mut Text, conns: &ApiConns) {
    let surfaces = [("docker", &conns.docker), ("http", &conns.http)];
    let metrics: [ConnMetric; 3] = [
        (
            "shoal_api_connections_open",
            "gauge",
            "Connections open on a manager's HTTP surface (TLS handshakes and hijacked streams included).",
            ConnStats::open,
        ),
        (
            "shoal_api_connections_accepted_total",
            "counter",
            "Connections a manager's HTTP surface took.",
            ConnStats::accepted,
        ),
        (
            "shoal_api_connections_refused_total",
            "counter",
            "Connections closed at once because the surface had --api-max-connections open.",
            ConnStats::refused,
        ),
    ];
    for (name, kind, help, value) in metrics {
        out.family(name, kind, help);
        for (api, stats) in surfaces {
            out.sample(name, &[("api", api)], value(stats) as f64);
        }
    }
}
