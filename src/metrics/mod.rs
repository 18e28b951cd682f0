//! Metrics for the whole binary, in Prometheus' text format (version 0.0.4): one registry of
//! the event-driven families (counters, gauges, histograms that code bumps as things happen:
//! API requests, control-loop passes, dispatcher sessions, agent engine errors) plus the
//! readings taken at scrape time (Raft and store status, tasks by state, proxies, certificate
//! expiry) that [`manager`] and [`agent`] add. [`serve`] is the `--metrics-addr` listener.
//!
//! Hand-written rather than the `prometheus` or `prometheus-client` crates: what shoal needs is
//! three metric kinds with fixed label names and a text encoder, about 300 lines, and neither
//! crate is in the workspace's dependency set (they would add protobuf or `dtoa`/`itoa` and
//! their own registries, with a process-global default registry, for no more than this does).
//! The families are statics: a process runs one manager or one agent; tests that run several
//! in one process add up.

pub mod agent;
pub mod families;
pub mod manager;
pub mod routes;
pub mod serve;
#[cfg(test)]
mod tests;
pub mod text;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

pub use self::serve::{serve, MetricsServer};
use self::text::Text;

/// Latency buckets, in seconds, of every request and pass histogram.
pub const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

type Values<T> = Mutex<BTreeMap<Vec<String>, T>>;

fn key(labels: &[&str]) -> Vec<String> {
    labels.iter().map(|l| (*l).to_string()).collect()
}

/// A counter family: a monotonic count per label set.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Values<u64>,
}

impl Counter {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Counter {
        Counter {
            name,
            help,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds one to the series of `labels` (one value per label name, in order).
    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1);
    }

    pub fn add(&self, labels: &[&str], n: u64) {
        debug_assert_eq!(labels.len(), self.labels.len(), "{}", self.name);
        let mut v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        *v.entry(key(labels)).or_default() += n;
    }

    pub fn get(&self, labels: &[&str]) -> u64 {
        let v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        v.get(&key(labels)).copied().unwrap_or(0)
    }

    fn encode(&self, out: &mut Text) {
        out.family(self.name, "counter", self.help);
        let v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        if v.is_empty() && self.labels.is_empty() {
            out.sample(self.name, &[], 0.0);
        }
        for (values, n) in v.iter() {
            out.sample(self.name, &pairs(self.labels, values), *n as f64);
        }
    }
}

/// A gauge family: a value per label set that goes up and down.
pub struct Gauge {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Values<i64>,
}

impl Gauge {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Gauge {
        Gauge {
            name,
            help,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn add(&self, labels: &[&str], n: i64) {
        let mut v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        *v.entry(key(labels)).or_default() += n;
    }

    pub fn set(&self, labels: &[&str], n: i64) {
        let mut v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        v.insert(key(labels), n);
    }

    pub fn get(&self, labels: &[&str]) -> i64 {
        let v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        v.get(&key(labels)).copied().unwrap_or(0)
    }

    /// Replaces every series with `series` (label values, value).
    pub fn replace(&self, series: impl IntoIterator<Item = (Vec<String>, i64)>) {
        let mut v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        *v = series.into_iter().collect();
    }

    /// Adds one for as long as the guard lives.
    pub fn track(&'static self, labels: &[&str]) -> Tracked {
        self.add(labels, 1);
        Tracked {
            gauge: self,
            labels: key(labels),
        }
    }

    fn encode(&self, out: &mut Text) {
        out.family(self.name, "gauge", self.help);
        let v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        if v.is_empty() && self.labels.is_empty() {
            out.sample(self.name, &[], 0.0);
        }
        for (values, n) in v.iter() {
            out.sample(self.name, &pairs(self.labels, values), *n as f64);
        }
    }
}

/// See [`Gauge::track`].
pub struct Tracked {
    gauge: &'static Gauge,
    labels: Vec<String>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let labels: Vec<&str> = self.labels.iter().map(String::as_str).collect();
        self.gauge.add(&labels, -1);
    }
}

/// Observations of one histogram series: per bucket (not cumulative; one past the last bound).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    pub counts: Vec<u64>,
    pub sum: f64,
}

/// A histogram family over fixed bucket bounds.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    bounds: &'static [f64],
    values: Values<Buckets>,
}

impl Histogram {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Histogram {
        Histogram {
            name,
            help,
            labels,
            bounds,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn observe(&self, labels: &[&str], value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        let mut v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        let b = v.entry(key(labels)).or_insert_with(|| Buckets {
            counts: vec![0; self.bounds.len() + 1],
            sum: 0.0,
        });
        b.counts[i] += 1;
        b.sum += value;
    }

    pub fn observe_duration(&self, labels: &[&str], took: Duration) {
        self.observe(labels, took.as_secs_f64());
    }

    /// How many observations the series of `labels` has.
    pub fn count(&self, labels: &[&str]) -> u64 {
        let v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        v.get(&key(labels)).map_or(0, |b| b.counts.iter().sum())
    }

    fn encode(&self, out: &mut Text) {
        out.family(self.name, "histogram", self.help);
        let v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        if v.is_empty() && self.labels.is_empty() {
            out.histogram(self.name, &[], self.bounds, &Buckets::default());
        }
        for (values, b) in v.iter() {
            out.histogram(self.name, &pairs(self.labels, values), self.bounds, b);
        }
    }
}

fn pairs<'a>(names: &'a [&'static str], values: &'a [String]) -> Vec<(&'a str, &'a str)> {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| (*n, v.as_str()))
        .collect()
}

/// One registered family, whichever its kind.
pub enum Family {
    Counter(&'static Counter),
    Gauge(&'static Gauge),
    Histogram(&'static Histogram),
}

impl Family {
    pub fn encode(&self, out: &mut Text) {
        match self {
            Family::Counter(c) => c.encode(out),
            Family::Gauge(g) => g.encode(out),
            Family::Histogram(h) => h.encode(out),
        }
    }
}
