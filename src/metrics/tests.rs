use super::text::{escape, Text};
use super::{Buckets, Counter, Gauge, Histogram};

static REQUESTS: Counter = Counter::new("t_requests_total", "Requests.", &["route"]);
static PLAIN: Counter = Counter::new("t_plain_total", "No labels.", &[]);
static OPEN: Gauge = Gauge::new("t_open", "Open things.", &[]);
static LATENCY: Histogram = Histogram::new("t_seconds", "Latency.", &["op"], &[0.1, 1.0]);

fn page(f: impl FnOnce(&mut Text)) -> String {
    let mut t = Text::new();
    f(&mut t);
    t.finish()
}

#[test]
fn histogram_buckets_are_cumulative_and_end_at_inf_with_sum_and_count() {
    LATENCY.observe(&["put"], 0.05);
    LATENCY.observe(&["put"], 0.5);
    LATENCY.observe(&["put"], 0.7);
    LATENCY.observe(&["put"], 3.0);
    let text = page(|t| LATENCY.encode(t));
    let expected = "# HELP t_seconds Latency.\n# TYPE t_seconds histogram\n\
        t_seconds_bucket{op=\"put\",le=\"0.1\"} 1\n\
        t_seconds_bucket{op=\"put\",le=\"1\"} 3\n\
        t_seconds_bucket{op=\"put\",le=\"+Inf\"} 4\n\
        t_seconds_sum{op=\"put\"} 4.25\n\
        t_seconds_count{op=\"put\"} 4\n";
    assert_eq!(text, expected);
}

#[test]
fn an_unlabelled_histogram_without_observations_shows_zeros() {
    let text = page(|t| t.histogram("h", &[], &[1.0], &Buckets::default()));
    assert_eq!(
        text,
        "h_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n"
    );
}

#[test]
fn label_values_escape_backslash_quote_and_newline() {
    assert_eq!(escape(r#"a\b"c"#), r#"a\\b\"c"#);
    assert_eq!(escape("two\nlines"), "two\\nlines");
    REQUESTS.inc(&["/x\"y\\z\nw"]);
    let text = page(|t| REQUESTS.encode(t));
    assert!(
        text.contains("t_requests_total{route=\"/x\\\"y\\\\z\\nw\"} 1\n"),
        "{text}"
    );
}

#[test]
fn help_text_escapes_newlines_and_every_family_has_help_and_type() {
    let text = page(|t| t.single("x", "gauge", "first\nsecond \\ third", 2.5));
    assert_eq!(
        text,
        "# HELP x first\\nsecond \\\\ third\n# TYPE x gauge\nx 2.5\n"
    );
}

#[test]
fn unlabelled_families_show_zero_before_any_event_and_gauges_track_guards() {
    let text = page(|t| PLAIN.encode(t));
    assert!(text.ends_with("t_plain_total 0\n"), "{text}");
    {
        let _a = OPEN.track(&[]);
        let _b = OPEN.track(&[]);
        assert_eq!(OPEN.get(&[]), 2);
    }
    assert_eq!(OPEN.get(&[]), 0);
}

#[test]
fn every_family_of_the_binary_has_a_conventional_name() {
    let mut t = Text::new();
    for f in super::families::MANAGER
        .iter()
        .chain(super::families::AGENT)
    {
        f.encode(&mut t);
    }
    let text = t.finish();
    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        let mut parts = line.split(' ').skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(name.starts_with("shoal_"), "{line}");
        assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        if kind == "histogram" {
            assert!(name.ends_with("_seconds"), "{line}");
        }
    }
}

#[test]
fn routes_keep_known_words_only() {
    use super::routes::{consul, docker};
    assert_eq!(docker("/containers/json"), "/containers/json");
    assert_eq!(docker("/containers/abc123/logs"), "/containers/{id}/logs");
    assert_eq!(docker("/containers/abc123"), "/containers/{id}");
    assert_eq!(docker("/images/library/nginx/json"), "/images/{id}/json");
    assert_eq!(docker("/containers/x/made-up"), "/containers/{id}/{other}");
    assert_eq!(docker("/random/path"), "other");
    assert_eq!(consul("/v1/kv/a/b"), "/v1/kv");
    assert_eq!(consul("/v1/session/create"), "/v1/session/create");
    assert_eq!(consul("/v1/session/zzz"), "other");
    assert_eq!(consul("/metrics"), "/metrics");
    assert_eq!(consul("/nope"), "other");
}
