//! The scoring rule, from observations to rates.
//!
//! Store `a` of every pair in a fresh namespace, then look up `b` of every pair. A hit whose
//! entry is the pair's own `a` on a duplicate pair is correct; a hit on a non-duplicate pair, or
//! on any other entry, is a false hit; no hit on a duplicate pair is a miss. Precision =
//! correct / hits, recall = correct / duplicates, false-hit rate = false hits / lookups.
//!
//! Each lookup is made once, at a low lookup threshold, and recorded as an [`Observation`];
//! the rates at any threshold `t` at or above it follow from the observations alone:
//!
//! - Guards off, the cache serves the nearest entry when its similarity is at least `t`. The
//!   nearest entry does not depend on `t` (a lookup reports it hit or miss), so this is exact at
//!   every `t`.
//! - Guards on, the cache serves the nearest entry when it clears `t` and no guard vetoes it
//!   (a vetoed nearest entry is a miss). A veto depends on the query and the entry, never on
//!   `t`, so the lookup at `t0 <= t` records it once: `guarded` is the nearest entry if it
//!   cleared `t0` unvetoed, else None, and hit(t) iff `guarded.similarity >= t`, exactly, for
//!   every `t >= t0` (below `t0` the guarded curve would undercount hits).
//! - The same holds for a cache that passed over a vetoed entry to the next candidate: the
//!   first unvetoed candidate does not depend on `t` either, and candidates clearing `t` are a
//!   prefix of those clearing `t0`. That is how both policies were compared.

/// The entry a lookup found, as far as scoring needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Match {
    pub similarity: f32,
    /// Whether the entry is the pair's own `a` (see [`is_own`]).
    pub own: bool,
}

/// What one lookup of a pair's `b` saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub duplicate: bool,
    /// The nearest stored entry (top-1): its similarity and whether it is the pair's own `a`.
    /// None when the namespace partition had no candidate.
    pub nearest: Option<Match>,
    /// What the cache served with hit guards on: the nearest entry, if it cleared the lookup
    /// threshold and no guard vetoed it (or, for a cache that moves on past a vetoed entry, the
    /// first unvetoed candidate). None = no hit at the lookup threshold.
    pub guarded: Option<Match>,
}

/// Whether a hit entry, stored with query text `entry_query`, is the pair's own `a`. Identity is
/// by normalised text, as the cache's: the same `a` appears in several pairs, and storing it
/// again replaces the one entry, so any of those pairs may be answered by it.
pub fn is_own(entry_query: &str, a: &str) -> bool {
    crate::text::normalize(entry_query) == crate::text::normalize(a)
}

/// The counts and rates at one threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub threshold: f32,
    pub lookups: u64,
    /// Pairs labelled duplicate.
    pub duplicates: u64,
    pub hits: u64,
    /// Hits on a duplicate pair that served its own `a`.
    pub correct: u64,
    /// Every other hit: `hits = correct + false_hits`.
    pub false_hits: u64,
    /// Duplicate pairs without a hit. A duplicate pair that hit another entry is a false hit,
    /// not a miss, so `duplicates = correct + missed + (false hits on duplicate pairs)`.
    pub missed: u64,
    /// correct / hits; 1.0 when there is no hit (no answer served, none wrong), so that a
    /// threshold above every similarity does not read as a bad one.
    pub precision: f64,
    /// correct / duplicates; NaN when the set has no duplicate pair (a set of pairs that must
    /// never hit has no recall to speak of).
    pub recall: f64,
    /// false_hits / lookups; 0.0 without lookups.
    pub false_hit_rate: f64,
}

/// The rates at threshold `t`, with guards on or off. Guards on is exact only for `t` at or
/// above the threshold the lookups were made at (see the module docs).
pub fn at(obs: &[Observation], guards: bool, t: f32) -> Point {
    let (mut duplicates, mut hits, mut correct, mut missed) = (0u64, 0u64, 0u64, 0u64);
    for o in obs {
        let served = if guards { o.guarded } else { o.nearest };
        let hit = served.filter(|m| m.similarity >= t);
        duplicates += u64::from(o.duplicate);
        match hit {
            Some(m) => {
                hits += 1;
                correct += u64::from(o.duplicate && m.own);
            }
            None => missed += u64::from(o.duplicate),
        }
    }
    let lookups = obs.len() as u64;
    let false_hits = hits - correct;
    let ratio = |n: u64, d: u64, empty: f64| if d == 0 { empty } else { n as f64 / d as f64 };
    Point {
        threshold: t,
        lookups,
        duplicates,
        hits,
        correct,
        false_hits,
        missed,
        precision: ratio(correct, hits, 1.0),
        recall: ratio(correct, duplicates, f64::NAN),
        false_hit_rate: ratio(false_hits, lookups, 0.0),
    }
}

/// [`at`] for each threshold, in the order given.
pub fn curve(obs: &[Observation], guards: bool, thresholds: &[f32]) -> Vec<Point> {
    thresholds.iter().map(|&t| at(obs, guards, t)).collect()
}

/// `from`, `from + step`, ... up to and including `to`, on a 0.001 grid: each value is an
/// integer number of thousandths divided by 1000, so 0.85 is the same `f32` as a namespace
/// threshold parsed from "0.85" and no drift accumulates. Empty when `step` rounds to less than
/// 0.001, `from > to`, or either bound is not finite.
pub fn thresholds(from: f32, to: f32, step: f32) -> Vec<f32> {
    let milli = |x: f32| (f64::from(x) * 1000.0).round();
    let (from, to, step) = (milli(from), milli(to), milli(step));
    if !(from.is_finite() && to.is_finite() && step >= 1.0) || from > to {
        return Vec::new();
    }
    let (from, to, step) = (from as i64, to as i64, step as i64);
    (0..).map(|i| from + i * step).take_while(|&m| m <= to).map(|m| m as f32 / 1000.0).collect()
}

/// The lowest threshold to trust for a precision target: the lowest `t` with at least one hit
/// and precision >= `target`, such that precision also meets the target at every higher
/// threshold of the curve that has a hit.
///
/// Precision is not monotone in the threshold (a few wrong hits with high similarity can pull
/// it down in the middle of the range), so "the lowest `t` meeting the target" can pick a
/// threshold just below a dip, and nudging it up would then make precision worse. Requiring the
/// whole range above to meet the target picks a threshold from which raising it never breaks
/// the target. Points without hits do not count either way: their precision (1.0) is a
/// convention, and a threshold that serves nothing is no answer. None when no such threshold
/// is in the curve. The curve need not be sorted.
pub fn lowest_meeting_precision(curve: &[Point], target: f64) -> Option<&Point> {
    let mut by_threshold: Vec<&Point> = curve.iter().filter(|p| p.hits > 0).collect();
    by_threshold.sort_by(|x, y| y.threshold.total_cmp(&x.threshold));
    by_threshold.into_iter().take_while(|p| p.precision >= target).last()
}

/// The point with the highest recall whose false-hit rate is at most `max_fhr`; among equal
/// recalls the lower false-hit rate, then the lower threshold. None when no point qualifies or
/// recall is undefined (a set without duplicate pairs).
pub fn best_recall_within_false_hits(curve: &[Point], max_fhr: f64) -> Option<&Point> {
    curve.iter().filter(|p| p.false_hit_rate <= max_fhr && !p.recall.is_nan()).min_by(|x, y| {
        y.recall
            .total_cmp(&x.recall)
            .then(x.false_hit_rate.total_cmp(&y.false_hit_rate))
            .then(x.threshold.total_cmp(&y.threshold))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(similarity: f32, own: bool) -> Option<Match> {
        Some(Match { similarity, own })
    }

    fn obs(duplicate: bool, nearest: Option<Match>, guarded: Option<Match>) -> Observation {
        Observation { duplicate, nearest, guarded }
    }

    /// Six lookups at a lookup threshold of 0.5, with the answers worked out by hand below.
    fn toy() -> Vec<Observation> {
        vec![
            // Duplicate, nearest is its own a; guards agree.
            obs(true, m(0.95, true), m(0.95, true)),
            // Duplicate, nearest is another entry at 0.9 that a guard vetoes; next is its own
            // a at 0.8.
            obs(true, m(0.9, false), m(0.8, true)),
            // Duplicate, own a only at 0.7.
            obs(true, m(0.7, true), m(0.7, true)),
            // Not a duplicate, its own a at 0.92 (a follow-up hitting its main query); a guard
            // vetoes it and nothing else clears 0.5.
            obs(false, m(0.92, true), None),
            // Not a duplicate, another entry at 0.6.
            obs(false, m(0.6, false), m(0.6, false)),
            // Empty partition.
            obs(false, None, None),
        ]
    }

    #[test]
    fn guards_off_scores_the_nearest_entry() {
        let p = at(&toy(), false, 0.85);
        // Hits: 0.95 (correct), 0.9 (other entry: false), 0.92 (non-duplicate: false).
        assert_eq!((p.lookups, p.duplicates, p.hits, p.correct, p.false_hits, p.missed), (6, 3, 3, 1, 2, 1));
        assert_eq!(p.threshold, 0.85);
        assert!((p.precision - 1.0 / 3.0).abs() < 1e-12);
        assert!((p.recall - 1.0 / 3.0).abs() < 1e-12);
        assert!((p.false_hit_rate - 2.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn guards_on_scores_the_first_unvetoed_candidate() {
        let p = at(&toy(), true, 0.75);
        // Hits: 0.95 (correct), 0.8 (correct); the duplicate at 0.7 is missed.
        assert_eq!((p.hits, p.correct, p.false_hits, p.missed), (2, 2, 0, 1));
        assert_eq!((p.precision, p.false_hit_rate), (1.0, 0.0));
        assert!((p.recall - 2.0 / 3.0).abs() < 1e-12);
        // At the lookup threshold everything recorded is a hit.
        let p = at(&toy(), true, 0.5);
        assert_eq!((p.hits, p.correct, p.false_hits, p.missed), (4, 3, 1, 0));
        assert_eq!(p.recall, 1.0);
        assert_eq!(p.precision, 0.75);
    }

    #[test]
    fn a_wrong_hit_on_a_duplicate_pair_is_a_false_hit_not_a_miss() {
        let p = at(&[obs(true, m(0.9, false), None)], false, 0.8);
        assert_eq!((p.hits, p.correct, p.false_hits, p.missed, p.duplicates), (1, 0, 1, 0, 1));
        assert_eq!((p.precision, p.recall, p.false_hit_rate), (0.0, 0.0, 1.0));
    }

    #[test]
    fn empty_cases_follow_the_documented_conventions() {
        // No hit: precision 1 by convention.
        let p = at(&toy(), false, 0.99);
        assert_eq!((p.hits, p.precision, p.recall, p.false_hit_rate), (0, 1.0, 0.0, 0.0));
        // No duplicate pair: recall undefined.
        let p = at(&[obs(false, m(0.9, true), m(0.9, true))], true, 0.8);
        assert!(p.recall.is_nan());
        assert_eq!((p.false_hits, p.false_hit_rate), (1, 1.0));
        // No lookups at all.
        let p = at(&[], true, 0.8);
        assert_eq!((p.lookups, p.precision, p.false_hit_rate), (0, 1.0, 0.0));
    }

    #[test]
    fn curve_is_at_for_each_threshold() {
        let ts = thresholds(0.5, 1.0, 0.05);
        let c = curve(&toy(), true, &ts);
        assert_eq!(c.len(), ts.len());
        for (p, &t) in c.iter().zip(&ts) {
            assert_eq!(*p, at(&toy(), true, t));
        }
        // Hits only fall as the threshold rises.
        assert!(c.windows(2).all(|w| w[0].hits >= w[1].hits));
    }

    #[test]
    fn thresholds_sit_on_the_grid_without_drift() {
        assert_eq!(thresholds(0.5, 0.6, 0.05), vec![0.5, 0.55, 0.6]);
        let ts = thresholds(0.0, 1.0, 0.01);
        assert_eq!(ts.len(), 101);
        assert_eq!(ts[85], 0.85f32);
        assert_eq!(ts[100], 1.0);
        assert_eq!(ts[7], "0.07".parse::<f32>().unwrap());
        assert_eq!(thresholds(0.8, 0.9, 0.025), vec![0.8, 0.825, 0.85, 0.875, 0.9]);
        // The end is only included when on the grid.
        assert_eq!(thresholds(0.8, 0.87, 0.05), vec![0.8, 0.85]);
        assert_eq!(thresholds(0.9, 0.9, 0.01), vec![0.9]);
        assert!(thresholds(0.9, 0.8, 0.01).is_empty());
        assert!(thresholds(0.5, 0.9, 0.0).is_empty());
        assert!(thresholds(0.5, 0.9, -0.1).is_empty());
        assert!(thresholds(f32::NAN, 0.9, 0.1).is_empty());
    }

    fn point(threshold: f32, hits: u64, precision: f64, recall: f64, false_hit_rate: f64) -> Point {
        Point {
            threshold,
            lookups: 100,
            duplicates: 50,
            hits,
            correct: 0,
            false_hits: 0,
            missed: 0,
            precision,
            recall,
            false_hit_rate,
        }
    }

    #[test]
    fn lowest_meeting_precision_needs_the_whole_range_above() {
        // Precision dips at 0.75: 0.70 meets 0.95 on its own, but raising it would not.
        let curve = [
            point(0.70, 40, 0.96, 0.8, 0.02),
            point(0.75, 35, 0.90, 0.7, 0.03),
            point(0.80, 30, 0.97, 0.6, 0.01),
            point(0.85, 20, 0.99, 0.4, 0.002),
            point(0.90, 10, 1.0, 0.2, 0.0),
            point(0.95, 0, 1.0, 0.0, 0.0),
        ];
        assert_eq!(lowest_meeting_precision(&curve, 0.95).unwrap().threshold, 0.80);
        assert_eq!(lowest_meeting_precision(&curve, 0.90).unwrap().threshold, 0.70);
        assert_eq!(lowest_meeting_precision(&curve, 0.995).unwrap().threshold, 0.90);
        // The unsorted curve gives the same answer.
        let mut shuffled = curve;
        shuffled.reverse();
        shuffled.swap(1, 4);
        assert_eq!(lowest_meeting_precision(&shuffled, 0.95).unwrap().threshold, 0.80);
        // Points without hits are never the answer, and a top point below target leaves none.
        let curve = [point(0.8, 10, 0.99, 0.5, 0.0), point(0.9, 2, 0.5, 0.1, 0.01), point(0.95, 0, 1.0, 0.0, 0.0)];
        assert!(lowest_meeting_precision(&curve, 0.95).is_none());
        assert!(lowest_meeting_precision(&[point(0.9, 0, 1.0, 0.0, 0.0)], 0.5).is_none());
    }

    #[test]
    fn best_recall_respects_the_false_hit_budget() {
        let curve = [
            point(0.70, 40, 0.8, 0.8, 0.05),
            point(0.75, 35, 0.9, 0.6, 0.02),
            point(0.80, 30, 0.95, 0.6, 0.01),
            point(0.85, 20, 0.99, 0.4, 0.002),
        ];
        // Equal recall at 0.75 and 0.80: the lower false-hit rate wins.
        assert_eq!(best_recall_within_false_hits(&curve, 0.02).unwrap().threshold, 0.80);
        assert_eq!(best_recall_within_false_hits(&curve, 0.05).unwrap().threshold, 0.70);
        assert_eq!(best_recall_within_false_hits(&curve, 0.005).unwrap().threshold, 0.85);
        assert!(best_recall_within_false_hits(&curve, 0.001).is_none());
        let no_duplicates = [point(0.8, 3, 0.0, f64::NAN, 0.03)];
        assert!(best_recall_within_false_hits(&no_duplicates, 1.0).is_none());
    }

    #[test]
    fn own_is_by_normalised_text() {
        assert!(is_own("  How do I  reset my PASSWORD? ", "how do i reset my password?"));
        assert!(!is_own("How do I reset my password?", "How do I reset my email?"));
    }
}
