//! The offline half of `semcache eval`: reading labelled pair files, turning what the lookups
//! observed into precision, recall and false-hit rate, and drawing the curve.
//!
//! A threshold is only as good as the evidence behind it, and the evidence is a labelled pair
//! set scored the way a gateway would experience the cache: every pair's `a` stored in a fresh
//! namespace, every `b` looked up. Each lookup is made once, at a threshold below any we want to
//! report, and what it saw is kept as an [`Observation`]; every point of the curve is then
//! computed from those observations without asking the server again (see [`score`] for why
//! that is exact). Everything here is pure, so the scoring rule is tested on small hand-made
//! cases with known answers, apart from the gRPC driver that fills the observations.

pub mod dataset;
pub mod plot;
pub mod run;
pub mod score;
pub mod stream;

pub use dataset::{read_pairs, sample, Format, Pair, Position};
pub use run::{curves, render, run, Lookup, Progress, RunConfig, RunResult};
pub use score::{
    at, best_recall_within_false_hits, curve, is_own, lowest_meeting_precision, thresholds, Match, Observation, Point,
};

use std::fmt::Write as _;
use std::path::PathBuf;

/// Why an evaluation failed: a pair file that cannot be used or a plot not written (these name
/// the file), or the server unreachable or refusing.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The file as a whole is unusable: not JSON, not an array, an unknown layout, no pairs.
    #[error("{}: {what}", path.display())]
    File { path: PathBuf, what: String },
    /// One row is unusable: a missing key, a label that is not 0/1, an empty text.
    #[error("{}: {at}: {what}", path.display())]
    Row { path: PathBuf, at: Position, what: String },
    #[error("{}: cannot draw the plot: {what}", path.display())]
    Plot { path: PathBuf, what: String },
    #[error("namespace {0:?} exists; evaluation needs a fresh one (pass another --scratch-namespace or drop it)")]
    NamespaceExists(String),
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
}

impl From<tonic::Status> for EvalError {
    fn from(status: tonic::Status) -> Self {
        Self::Client(status.into())
    }
}

/// A plain-text table, valid markdown, of both curves at the thresholds in `rows` (a threshold
/// missing from a curve shows `-`, as does a recall that is undefined because the set has no
/// duplicate pairs).
pub fn render_table(off: &[Point], on: &[Point], rows: &[f32]) -> String {
    let header = [
        "threshold",
        "off: precision",
        "off: recall",
        "off: false-hit rate",
        "on: precision",
        "on: recall",
        "on: false-hit rate",
    ];
    let mut lines = vec![header.map(String::from).to_vec()];
    for &t in rows {
        let mut line = vec![fmt_threshold(t)];
        for points in [off, on] {
            match points.iter().find(|p| (p.threshold - t).abs() < 5e-4) {
                Some(p) => line.extend([fmt_rate(p.precision), fmt_rate(p.recall), fmt_rate(p.false_hit_rate)]),
                None => line.extend(["-".to_string(), "-".to_string(), "-".to_string()]),
            }
        }
        lines.push(line);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line.iter().zip(&widths).map(|(cell, &w)| format!("{cell:>w$}")).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        if i == 0 {
            // Right-aligned columns, as wide as the padded cells above.
            let rules: Vec<String> = widths.iter().map(|&w| format!("{}:", "-".repeat(w + 1))).collect();
            let _ = writeln!(out, "|{}|", rules.join("|"));
        }
    }
    out
}

/// The headline: the data set, its size, and both guard settings at the reported threshold,
/// with the counts behind each rate. `lookup_threshold` is the threshold the lookups were made
/// at (the curve is exact from there up).
pub fn render_summary(name: &str, lookup_threshold: f32, off: &Point, on: &Point) -> String {
    let mut out = format!(
        "{name}: {} lookups, {} duplicate pairs (looked up at {})\n",
        off.lookups,
        off.duplicates,
        fmt_threshold(lookup_threshold)
    );
    for (label, p) in [("guards off", off), ("guards on ", on)] {
        let _ = writeln!(
            out,
            "  {label} at {}: precision {}  recall {}  false-hit rate {}  \
             ({} hits: {} correct, {} false; {} missed)",
            fmt_threshold(p.threshold),
            fmt_rate(p.precision),
            fmt_rate(p.recall),
            fmt_rate(p.false_hit_rate),
            p.hits,
            p.correct,
            p.false_hits,
            p.missed
        );
    }
    out
}

/// Thresholds live on a 0.001 grid: two decimals unless the third is needed.
fn fmt_threshold(t: f32) -> String {
    let s = format!("{t:.3}");
    match s.strip_suffix('0') {
        Some(two) => two.to_string(),
        None => s,
    }
}

fn fmt_rate(r: f64) -> String {
    if r.is_nan() {
        "-".to_string()
    } else {
        format!("{r:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(threshold: f32, precision: f64, recall: f64, fhr: f64) -> Point {
        Point {
            threshold,
            lookups: 10,
            duplicates: 4,
            hits: 5,
            correct: 3,
            false_hits: 2,
            missed: 1,
            precision,
            recall,
            false_hit_rate: fhr,
        }
    }

    #[test]
    fn table_has_one_row_per_threshold_and_dashes_for_gaps() {
        let off = [point(0.8, 0.6, 0.75, 0.2), point(0.85, 0.7, 0.5, 0.1)];
        let on = [point(0.8, 0.9, f64::NAN, 0.05)];
        let table = render_table(&off, &on, &[0.8, 0.85]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].contains("off: precision") && lines[0].contains("on: false-hit rate"));
        assert!(lines[1].starts_with("|--"));
        let row: Vec<&str> = lines[2].split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
        assert_eq!(row, ["0.80", "0.600", "0.750", "0.200", "0.900", "-", "0.050"]);
        let row: Vec<&str> = lines[3].split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
        assert_eq!(row, ["0.85", "0.700", "0.500", "0.100", "-", "-", "-"]);
        // Aligned: every line is as wide as the header.
        assert!(lines.iter().all(|l| l.chars().count() == lines[0].chars().count()), "{table}");
    }

    #[test]
    fn summary_names_the_set_and_both_settings() {
        let s = render_summary("qqp", 0.5, &point(0.85, 0.6, 0.75, 0.2), &point(0.85, 0.9, 0.5, 0.05));
        assert!(s.starts_with("qqp: 10 lookups, 4 duplicate pairs (looked up at 0.50)"), "{s}");
        assert!(s.contains("guards off at 0.85: precision 0.600  recall 0.750  false-hit rate 0.200"), "{s}");
        assert!(s.contains("guards on  at 0.85: precision 0.900"), "{s}");
        assert!(s.contains("(5 hits: 3 correct, 2 false; 1 missed)"), "{s}");
    }

    #[test]
    fn thresholds_print_with_two_or_three_decimals() {
        assert_eq!(fmt_threshold(0.85), "0.85");
        assert_eq!(fmt_threshold(0.855), "0.855");
        assert_eq!(fmt_threshold(1.0), "1.00");
    }
}
