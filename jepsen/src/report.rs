//! The HTML report of a run: verdicts, throughput and latency over time with the fault windows
//! shaded, and the witness of every illegal verdict. One self-contained file (inline SVG, no
//! scripts, nothing fetched).

use std::fmt::Write as _;

use crate::checker::{overall, Validity, Verdict};
use crate::history::{pairs, Kind, Op};
use crate::nemesis::NEMESIS;

const W: f64 = 900.0;
const H: f64 = 220.0;
const PAD: f64 = 40.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// (start, end, name) of each fault, in seconds.
fn windows(history: &[Op], end: f64) -> Vec<(f64, f64, String)> {
    let mut out = Vec::new();
    let mut open: Option<(f64, String)> = None;
    for op in history.iter().filter(|o| o.process == NEMESIS) {
        let t = op.time as f64 / 1e9;
        let name = op.value["fault"].as_str().unwrap_or("fault").to_string();
        match op.f.as_str() {
            "start" => open = Some((t, name)),
            "stop" => {
                if let Some((s, n)) = open.take() {
                    out.push((s, t, n));
                }
            }
            _ => {}
        }
    }
    if let Some((s, n)) = open {
        out.push((s, end, n));
    }
    out
}

struct Axes {
    t_max: f64,
    y_max: f64,
}

impl Axes {
    fn x(&self, t: f64) -> f64 {
        PAD + (t / self.t_max.max(1e-9)) * (W - 2.0 * PAD)
    }
    fn y(&self, v: f64) -> f64 {
        H - PAD + -(v / self.y_max.max(1e-9)) * (H - 2.0 * PAD)
    }
}

fn frame(svg: &mut String, axes: &Axes, faults: &[(f64, f64, String)], y_label: &str) {
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-size="11" font-family="sans-serif">"#
    );
    for (s, e, name) in faults {
        let (x0, x1) = (axes.x(*s), axes.x(*e));
        let _ = write!(
            svg,
            r##"<rect x="{x0:.1}" y="{PAD}" width="{:.1}" height="{:.1}" fill="#f4b6b6" opacity="0.5"><title>{}</title></rect><text x="{x0:.1}" y="{:.1}" fill="#a33">{}</text>"##,
            (x1 - x0).max(1.0),
            H - 2.0 * PAD,
            esc(name),
            PAD - 4.0,
            esc(name)
        );
    }
    let _ = write!(
        svg,
        r#"<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="black"/><text x="{r}" y="{t}" text-anchor="end">time (s), {tm:.0}</text><text x="4" y="{PAD}" >{ym:.0}</text><text x="4" y="{l}">{y_label}</text>"#,
        b = H - PAD,
        r = W - PAD,
        t = H - PAD + 16.0,
        tm = axes.t_max,
        ym = axes.y_max,
        l = PAD - 20.0,
    );
}

/// Ok completions per second (one line per workload op kind would be too busy: ok and the rest).
fn throughput(history: &[Op], t_max: f64, faults: &[(f64, f64, String)]) -> String {
    let buckets = t_max.ceil().max(1.0) as usize;
    let mut ok = vec![0u32; buckets + 1];
    let mut bad = vec![0u32; buckets + 1];
    for p in pairs(history) {
        let Some(c) = &p.complete else { continue };
        let b = ((c.time as f64 / 1e9) as usize).min(buckets);
        if c.kind == Kind::Ok {
            ok[b] += 1;
        } else {
            bad[b] += 1;
        }
    }
    let axes = Axes {
        t_max,
        y_max: f64::from(*ok.iter().chain(&bad).max().unwrap_or(&1)).max(1.0),
    };
    let mut svg = String::new();
    frame(&mut svg, &axes, faults, "ops/s");
    for (series, colour) in [(&ok, "#2a7"), (&bad, "#d52")] {
        let points: Vec<String> = series
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", axes.x(i as f64 + 0.5), axes.y(f64::from(*v))))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Latency of each completed operation, plotted at its invoke time (at most 4000 points).
fn latency(history: &[Op], t_max: f64, faults: &[(f64, f64, String)]) -> String {
    let points: Vec<(f64, f64, Kind)> = pairs(history)
        .into_iter()
        .filter_map(|p| {
            let c = p.complete.as_ref()?;
            Some((
                p.invoke.time as f64 / 1e9,
                (c.time.saturating_sub(p.invoke.time)) as f64 / 1e6,
                c.kind,
            ))
        })
        .collect();
    let step = (points.len() / 4000).max(1);
    let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max);
    let axes = Axes { t_max, y_max };
    let mut svg = String::new();
    frame(&mut svg, &axes, faults, "latency (ms)");
    for (t, ms, kind) in points.iter().step_by(step) {
        let colour = match kind {
            Kind::Ok => "#2a7",
            Kind::Fail => "#d52",
            _ => "#e90",
        };
        let _ = write!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.5" fill="{colour}"/>"#,
            axes.x(*t),
            axes.y(*ms)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn witness_table(ops: &[Op]) -> String {
    let mut out = String::from(
        "<table><tr><th>index</th><th>time (s)</th><th>process</th><th>type</th><th>f</th><th>key</th><th>value</th><th>error</th></tr>",
    );
    for o in ops {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{:.6}</td><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            o.index,
            o.time as f64 / 1e9,
            o.process,
            o.kind,
            esc(&o.f),
            esc(&o.key),
            esc(&o.value.to_string()),
            esc(o.error.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</table>");
    out
}

/// Renders the whole report.
pub fn render(title: &str, history: &[Op], verdicts: &[Verdict]) -> String {
    let t_max = history.iter().map(|o| o.time).max().unwrap_or(0) as f64 / 1e9;
    let faults = windows(history, t_max);
    let verdict = overall(verdicts);
    let colour = |v: Validity| match v {
        Validity::Valid => "#2a7",
        Validity::Unknown => "#e90",
        Validity::Illegal => "#d22",
    };
    let mut html = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>{t}</title><style>
body{{font-family:sans-serif;margin:2em;max-width:960px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px;text-align:left}} code{{font-size:11px}}
</style></head><body><h1>{t}</h1><p>Overall: <b style="color:{c}">{v:?}</b> &middot; {n} history entries &middot; {d:.1} s</p>"#,
        t = esc(title),
        c = colour(verdict),
        v = verdict,
        n = history.len(),
        d = t_max
    );
    html.push_str("<h2>Verdicts</h2><table><tr><th>checker</th><th>verdict</th><th>ops</th><th>summary</th></tr>");
    for v in verdicts {
        let _ = write!(
            html,
            r#"<tr><td>{}</td><td style="color:{}"><b>{:?}</b></td><td>{}</td><td>{}</td></tr>"#,
            esc(&v.checker),
            colour(v.validity),
            v.validity,
            v.ops,
            esc(&v.summary)
        );
    }
    html.push_str("</table>");
    html.push_str("<h2>Throughput</h2><p>Completions per second: <span style=\"color:#2a7\">ok</span>, <span style=\"color:#d52\">fail or info</span>. Shaded: fault windows.</p>");
    html.push_str(&throughput(history, t_max, &faults));
    html.push_str("<h2>Latency</h2><p>Each operation at its invoke time: <span style=\"color:#2a7\">ok</span>, <span style=\"color:#d52\">fail</span>, <span style=\"color:#e90\">info</span>.</p>");
    html.push_str(&latency(history, t_max, &faults));
    html.push_str("<h2>Faults</h2><table><tr><th>from (s)</th><th>to (s)</th><th>fault</th></tr>");
    for (s, e, n) in &faults {
        let _ = write!(
            html,
            "<tr><td>{s:.1}</td><td>{e:.1}</td><td>{}</td></tr>",
            esc(n)
        );
    }
    html.push_str("</table>");
    for v in verdicts.iter().filter(|v| !v.witness.is_empty()) {
        let _ = write!(
            html,
            "<h2>Witness: {}</h2><p>{}</p><p>The smallest set of operations found that shows it:</p>",
            esc(&v.checker),
            esc(&v.summary)
        );
        html.push_str(&witness_table(&v.witness));
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::*;
    use serde_json::json;

    #[test]
    fn renders_windows_and_witness() {
        let mut h = vec![
            inv(1, "write", "k", json!(1), 1_000_000_000),
            ok(1, "write", "k", json!(1), 1_100_000_000),
        ];
        h.push(op(
            NEMESIS,
            Kind::Info,
            "start",
            "",
            json!({"fault": "kill"}),
            2_000_000_000,
        ));
        h.push(op(
            NEMESIS,
            Kind::Info,
            "stop",
            "",
            json!({"fault": "kill"}),
            3_000_000_000,
        ));
        let h = finish(h);
        let mut v = Verdict::new("linearizable", Validity::Illegal, 1, "bad <read>".into());
        v.witness = h[..2].to_vec();
        let html = render("t", &h, &[v]);
        assert!(html.contains("kill"));
        assert!(html.contains("Witness: linearizable"));
        assert!(html.contains("bad &lt;read&gt;"));
        assert!(!html.contains("<script"));
    }
}
