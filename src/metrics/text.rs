//! Prometheus' text exposition format, version 0.0.4: `# HELP` and `# TYPE` lines, then
//! `name{label="value"} number` samples; histograms as cumulative `_bucket{le=...}` series
//! ending at `+Inf`, then `_sum` and `_count`.

use std::fmt::Write as _;

use super::Buckets;

/// The content type of the format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A page of metrics being written.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

impl Text {
    pub fn new() -> Text {
        Text::default()
    }

    pub fn finish(self) -> String {
        self.out
    }

    /// Starts a family: its help and its kind (`counter`, `gauge`, `histogram`).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the family just started.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        labels_into(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// One histogram series: `b.counts` per bucket of `bounds` (one more past the last), written
    /// cumulatively. Empty counts are all zero.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], bounds: &[f64], b: &Buckets) {
        let mut total = 0u64;
        for (i, bound) in bounds.iter().enumerate() {
            total += b.counts.get(i).copied().unwrap_or(0);
            let _ = write!(self.out, "{name}_bucket");
            labels_into(&mut self.out, labels, Some(&number(*bound)));
            let _ = writeln!(self.out, " {total}");
        }
        total += b.counts.get(bounds.len()).copied().unwrap_or(0);
        let _ = write!(self.out, "{name}_bucket");
        labels_into(&mut self.out, labels, Some("+Inf"));
        let _ = writeln!(self.out, " {total}");
        let _ = write!(self.out, "{name}_sum");
        labels_into(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", number(b.sum));
        let _ = write!(self.out, "{name}_count");
        labels_into(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {total}");
    }
}

/// A label value escaped: backslash, double quote and newline.
pub fn escape(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn labels_into(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    out.push('}');
}

/// A sample value as Prometheus reads it (`+Inf`, `-Inf`, `NaN`, else Rust's shortest form).
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}
