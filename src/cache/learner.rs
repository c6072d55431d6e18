//! Verified mode's model: P(the nearest entry's answer is right | what the lookup saw), learned
//! from judged lookups, and the error budget that turns it into HIT or EXPLORE.
//!
//! The idea is vCache's (arXiv 2502.03771: learn from the gateway's own answers when to trust
//! a cached one); the model and the decision rule here are our own, chosen by replaying the
//! Banking77 train split (see the README's verified-mode section):
//!
//! - **Features.** The similarity of the nearest entry alone separates right from wrong
//!   poorly. What does is the *margin*: how much nearer the nearest entry is than the nearest
//!   one with a *different* answer, plus how many near neighbours share its answer.
//! - **Model.** A Bayesian logistic regression over those features, pooled per namespace (the
//!   namespace prior), with a per-entry offset shrunk towards 0: a new entry serves on what
//!   the namespace learned, and an entry that was judged wrong more often than its neighbours
//!   drops below them. Observations are kept as counts per quantised cell, so a refit costs
//!   the same at ten or a million observations, and a Laplace approximation gives the
//!   uncertainty of every prediction.
//! - **Decision.** Each lookup's upper bound on P(wrong) is spent from a budget of δ per
//!   lookup: the lookups with the smallest bounds are served, up to the largest bound λ at
//!   which the expected wrong answers of everything served stay within δ of all lookups
//!   (over a decaying window of the namespace's lookups), and never beyond what has actually
//!   been spent so far. The rest EXPLORE.
//! - **Audits.** A pooled model is calibrated where it was taught, which is where it was
//!   unsure; what it serves it never sees judged. So one would-be hit in twenty is explored
//!   instead, as an audit: the wrong answers found there against the ones the model expected
//!   give a calibration factor (never below 1) that scales every bound. On the training
//!   stream this was what kept the hardest seeded orders within their bound.
//!
//! Nothing here does I/O; the cache persists the observations and calls `refit` on Store and
//! Feedback, never on the Lookup path.

use crate::store::ObservationRecord;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

/// Observations kept per entry; the oldest goes first.
pub const MAX_OBSERVATIONS: usize = 16;
/// Queries an entry may be refused for before it is deleted instead.
pub const MAX_REFUSED: usize = 64;
/// Below this similarity nothing is explored: such neighbours are never right enough to learn
/// about.
pub const EXPLORE_MIN_SIMILARITY: f32 = 0.5;
/// Neighbours nearer than the nearest's similarity minus this count as agreeing.
const AGREE_WINDOW: f32 = 0.1;
/// Margins beyond this say nothing more.
const MAX_MARGIN: f32 = 0.3;
const MAX_AGREEING: u32 = 7;

/// Standard deviations of the fitted logit the bound adds: about a one-sided 84% bound per
/// prediction; on the training stream 2 served a fifth fewer hits for no measured gain.
const BOUND_Z: f64 = 1.0;
/// Prior of the namespace model: centred on "one nearest entry in eight is right" with unit
/// precision on every weight, so a new namespace explores until it has seen answers.
const PRIOR_MEAN: [f64; D] = [-2.0, 0.0, 0.0, 0.0];
const PRIOR_PRECISION: f64 = 1.0;
/// Standard deviation of an entry's offset from its namespace (in logits); its uncertainty
/// is part of every bound, since near-synonym answers make some entries much worse than
/// their namespace.
const ENTRY_SD: f64 = 0.5;
/// Share of would-be hits explored as audits.
pub const AUDIT_RATE: f64 = 0.05;
const NEWTON_STEPS: usize = 4;

/// Budget bins over the bound, log-spaced from 1e-4 to 1.
const BINS: usize = 41;
/// Once a namespace has seen this many lookups, its budget window halves (old lookups fade).
const BUDGET_WINDOW: u64 = 8192;

const D: usize = 4;

/// What a lookup saw of its nearest entry.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Features {
    pub similarity: f32,
    /// `similarity` minus that of the nearest candidate with another answer.
    pub margin: f32,
    /// Candidates that share the nearest's answer and are nearly as near.
    pub agreeing: u32,
}

impl Features {
    /// From the candidates of one lookup, nearest first: `(similarity, answer)`, where answer 0
    /// (unknown) agrees with nothing. `full` says whether the search returned as many as it
    /// was asked for (if so, an answer that differs may lie just beyond the last).
    pub fn of(candidates: &[(f32, u64)], full: bool) -> Option<Self> {
        let (&(s1, a1), rest) = candidates.split_first()?;
        let same = |a: u64| a != 0 && a == a1;
        let other = rest.iter().find(|(_, a)| !same(*a)).map(|(s, _)| *s);
        let other = other.unwrap_or(match (full, rest.last()) {
            (true, Some((last, _))) => *last,
            _ => 0.0,
        });
        let agreeing = rest.iter().filter(|(s, a)| same(*a) && *s >= s1 - AGREE_WINDOW).count() as u32;
        Some(Self { similarity: s1, margin: (s1 - other).max(0.0), agreeing })
    }

    fn x(&self) -> [f64; D] {
        [
            1.0,
            10.0 * (f64::from(self.similarity) - 0.8),
            10.0 * f64::from(self.margin.clamp(0.0, MAX_MARGIN)),
            f64::from(self.agreeing.min(MAX_AGREEING)),
        ]
    }

    fn cell(&self) -> Cell {
        (
            (self.similarity * 100.0).round() as i16,
            (self.margin.clamp(0.0, MAX_MARGIN) * 100.0).round() as i16,
            self.agreeing.min(MAX_AGREEING) as u8,
        )
    }

    fn of_cell(cell: Cell) -> Self {
        Self { similarity: f32::from(cell.0) / 100.0, margin: f32::from(cell.1) / 100.0, agreeing: u32::from(cell.2) }
    }

    pub fn observation(&self, correct: bool, source: Source) -> ObservationRecord {
        ObservationRecord {
            similarity: self.similarity,
            margin: self.margin,
            agreeing: self.agreeing,
            correct,
            source: source as u32,
            audit_p_wrong: 0.0,
        }
    }

    pub fn of_observation(o: &ObservationRecord) -> Self {
        Self { similarity: o.similarity, margin: o.margin, agreeing: o.agreeing }
    }
}

/// Where an observation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Probe = 1,
    Feedback = 2,
}

type Cell = (i16, i16, u8);

/// The posterior of the namespace model: mean and covariance of the weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    w: [f64; D],
    cov: [[f64; D]; D],
}

impl Default for Fit {
    fn default() -> Self {
        let mut cov = [[0.0; D]; D];
        (0..D).for_each(|i| cov[i][i] = 1.0 / PRIOR_PRECISION);
        Self { w: PRIOR_MEAN, cov }
    }
}

/// An entry's shift from its namespace model, in logits: the posterior mean and variance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Offset {
    pub mean: f64,
    pub var: f64,
}

impl Default for Offset {
    /// An entry never judged: its namespace's, with the prior's uncertainty.
    fn default() -> Self {
        Self { mean: 0.0, var: ENTRY_SD * ENTRY_SD }
    }
}

/// A lookup's chance of a wrong answer: the point estimate and the bound decisions use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub p_wrong: f64,
    pub upper_wrong: f64,
    /// `p_wrong` before calibration: what an audit checks the model against.
    pub model_p_wrong: f64,
}

impl Fit {
    fn logit(&self, x: &[f64; D]) -> f64 {
        (0..D).map(|i| self.w[i] * x[i]).sum()
    }

    /// P(wrong) for a lookup with these features whose nearest entry has this offset, its
    /// bound, both scaled by the audits' `calibration` factor.
    pub fn predict(&self, f: &Features, entry: Offset, calibration: f64) -> Prediction {
        let x = f.x();
        let z = self.logit(&x) + entry.mean;
        let var: f64 =
            (0..D).map(|i| (0..D).map(|j| x[i] * self.cov[i][j] * x[j]).sum::<f64>()).sum::<f64>() + entry.var;
        let c = calibration.max(1.0);
        Prediction {
            p_wrong: (c * sigmoid(-z)).min(1.0),
            upper_wrong: (c * sigmoid(BOUND_Z * var.max(0.0).sqrt() - z)).min(1.0),
            model_p_wrong: sigmoid(-z),
        }
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z.clamp(-40.0, 40.0)).exp())
}

/// A namespace's pooled observations: right and wrong counts per quantised cell, and what the
/// audits found against what the model expected of them.
#[derive(Debug, Default, Clone)]
pub struct Cells {
    counts: HashMap<Cell, [u32; 2]>,
    total: u64,
    audits_wrong: f64,
    audits_expected: f64,
}

impl Cells {
    pub fn add(&mut self, o: &ObservationRecord) {
        let c = self.counts.entry(Features::of_observation(o).cell()).or_default();
        c[usize::from(!o.correct)] += 1;
        self.total += 1;
        if o.audit_p_wrong > 0.0 {
            self.audits_wrong += f64::from(u8::from(!o.correct));
            self.audits_expected += f64::from(o.audit_p_wrong);
        }
    }

    /// How many times more wrong answers the audits found than the model expected (at least
    /// 1; one pseudo-audit on each side keeps a handful of audits from swinging it).
    pub fn calibration(&self) -> f64 {
        ((self.audits_wrong + 1.0) / (self.audits_expected + 1.0)).max(1.0)
    }

    pub fn remove(&mut self, o: &ObservationRecord) {
        if o.audit_p_wrong > 0.0 {
            self.audits_wrong = (self.audits_wrong - f64::from(u8::from(!o.correct))).max(0.0);
            self.audits_expected = (self.audits_expected - f64::from(o.audit_p_wrong)).max(0.0);
        }
        let cell = Features::of_observation(o).cell();
        if let Some(c) = self.counts.get_mut(&cell) {
            let slot = &mut c[usize::from(!o.correct)];
            if *slot > 0 {
                *slot -= 1;
                self.total -= 1;
            }
            if c == &[0, 0] {
                self.counts.remove(&cell);
            }
        }
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The posterior by Newton's method from `start` (the last fit: one observation more
    /// moves it little, so a few steps suffice).
    pub fn refit(&self, start: &Fit) -> Fit {
        let rows: Vec<([f64; D], f64, f64)> = self
            .counts
            .iter()
            .map(|(cell, [right, wrong])| (Features::of_cell(*cell).x(), f64::from(*right), f64::from(*wrong)))
            .collect();
        let mut w = start.w;
        let mut hessian = [[0.0; D]; D];
        for _ in 0..NEWTON_STEPS {
            let mut grad = [0.0; D];
            hessian = [[0.0; D]; D];
            for i in 0..D {
                grad[i] = -PRIOR_PRECISION * (w[i] - PRIOR_MEAN[i]);
                hessian[i][i] = PRIOR_PRECISION;
            }
            for (x, right, wrong) in &rows {
                let n = right + wrong;
                let p = sigmoid((0..D).map(|i| w[i] * x[i]).sum());
                for i in 0..D {
                    grad[i] += x[i] * (right - n * p);
                    for j in 0..D {
                        hessian[i][j] += n * p * (1.0 - p) * x[i] * x[j];
                    }
                }
            }
            let Some(step) = solve(hessian, grad) else { break };
            // Damped: with few observations (or all of one kind) a full step can overshoot.
            let largest = step.iter().fold(0.0f64, |m, s| m.max(s.abs()));
            let scale = if largest > 5.0 { 5.0 / largest } else { 1.0 };
            (0..D).for_each(|i| w[i] += scale * step[i]);
        }
        match invert(hessian) {
            Some(cov) => Fit { w, cov },
            None => *start,
        }
    }
}

/// Gauss-Jordan on a small positive-definite system.
fn solve(mut a: [[f64; D]; D], mut b: [f64; D]) -> Option<[f64; D]> {
    for col in 0..D {
        let pivot = (col..D).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in 0..D {
            if row != col {
                let f = a[row][col] / a[col][col];
                let pivot_row = a[col];
                a[row].iter_mut().zip(pivot_row).for_each(|(x, p)| *x -= f * p);
                b[row] -= f * b[col];
            }
        }
    }
    Some(std::array::from_fn(|i| b[i] / a[i][i]))
}

fn invert(a: [[f64; D]; D]) -> Option<[[f64; D]; D]> {
    let mut columns = [[0.0; D]; D];
    for (j, column) in columns.iter_mut().enumerate() {
        *column = solve(a, std::array::from_fn(|i| f64::from(u8::from(i == j))))?;
    }
    // The inverse of a symmetric matrix is symmetric: its columns are its rows.
    Some(std::array::from_fn(|i| std::array::from_fn(|j| columns[j][i])))
}

/// What is known about one entry: its recent judged lookups, the queries it must never
/// answer, and its offset from the namespace model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntryEvidence {
    pub observations: VecDeque<ObservationRecord>,
    pub refused: Vec<u64>,
    /// Shift from the namespace model (the prior's until the entry has been judged).
    pub offset: Offset,
}

impl EntryEvidence {
    /// Adds an observation; returns the one that fell out of the window, if any.
    pub fn observe(&mut self, o: ObservationRecord) -> Option<ObservationRecord> {
        self.observations.push_back(o);
        if self.observations.len() > MAX_OBSERVATIONS {
            self.observations.pop_front()
        } else {
            None
        }
    }

    /// Refuses a query id; false when the entry is already refused for as many queries as it
    /// may be (the caller deletes it instead).
    pub fn refuse(&mut self, query: u64) -> bool {
        if self.refused.contains(&query) {
            return true;
        }
        if self.refused.len() >= MAX_REFUSED {
            return false;
        }
        self.refused.push(query);
        true
    }

    pub fn refuses(&self, query: u64) -> bool {
        self.refused.contains(&query)
    }

    /// The entry's offset given the namespace fit: the posterior mode of a logit shift with a
    /// N(0, ENTRY_SD²) prior, from its own observations.
    pub fn refit(&mut self, fit: &Fit) {
        let zs: Vec<(f64, bool)> =
            self.observations.iter().map(|o| (fit.logit(&Features::of_observation(o).x()), o.correct)).collect();
        let mut b = 0.0;
        let mut curvature = 1.0 / (ENTRY_SD * ENTRY_SD);
        for _ in 0..NEWTON_STEPS + 2 {
            let mut grad = -b / (ENTRY_SD * ENTRY_SD);
            curvature = 1.0 / (ENTRY_SD * ENTRY_SD);
            for (z, correct) in &zs {
                let p = sigmoid(z + b);
                grad += f64::from(u8::from(*correct)) - p;
                curvature += p * (1.0 - p);
            }
            b += grad / curvature;
        }
        self.offset = Offset { mean: b, var: 1.0 / curvature };
    }

    pub fn to_record(&self) -> crate::store::EvidenceRecord {
        crate::store::EvidenceRecord {
            observations: self.observations.iter().copied().collect(),
            refused_queries: self.refused.clone(),
        }
    }

    pub fn from_record(r: crate::store::EvidenceRecord) -> Self {
        let skip = r.observations.len().saturating_sub(MAX_OBSERVATIONS);
        let mut refused = r.refused_queries;
        refused.truncate(MAX_REFUSED);
        Self { observations: r.observations.into_iter().skip(skip).collect(), refused, offset: Offset::default() }
    }
}

/// What the budget made of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Serve,
    /// Not trusted enough: learn what the right answer is.
    Explore,
    /// Trusted, but explored anyway, to check the model where it serves.
    Audit,
}

/// How a namespace spends its error budget, lock-free on the Lookup path: a histogram of the
/// bounds its lookups carried, and the largest bound λ that may be served.
#[derive(Debug)]
pub struct Budget {
    bins: [AtomicU64; BINS],
    lookups: AtomicU64,
    /// λ as f64 bits; 0 serves nothing.
    lambda: AtomicU64,
    /// The bounds of what was served in the window, in millionths: never more than δ of the
    /// window's lookups.
    spent_micros: AtomicU64,
    /// The model's estimate of wrong answers served, in millionths.
    expected_wrong_micros: AtomicU64,
    verified_lookups: AtomicU64,
    /// Lookups counted, for audit draws (a Weyl sequence through SplitMix64).
    draws: AtomicU64,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            bins: std::array::from_fn(|_| AtomicU64::new(0)),
            lookups: AtomicU64::new(0),
            lambda: AtomicU64::new(0),
            spent_micros: AtomicU64::new(0),
            expected_wrong_micros: AtomicU64::new(0),
            verified_lookups: AtomicU64::new(0),
            draws: AtomicU64::new(0),
        }
    }
}

fn edge(bin: usize) -> f64 {
    10f64.powf(-4.0 + 4.0 * bin as f64 / (BINS - 1) as f64)
}

fn bin_of(upper_wrong: f64) -> usize {
    let pos = (upper_wrong.max(1e-4).log10() + 4.0) / 4.0 * (BINS - 1) as f64;
    (pos.ceil().max(0.0) as usize).min(BINS - 1)
}

impl Budget {
    /// Counts one lookup of a verified namespace, whatever its outcome: every lookup adds δ
    /// to the budget, only served ones spend it.
    pub fn count_lookup(&self, delta: f64) {
        let n = self.lookups.fetch_add(1, Ordering::Relaxed) + 1;
        self.verified_lookups.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(16) {
            self.rebalance(delta);
        }
    }

    /// How a lookup (already counted) with this prediction is answered under bound `delta`.
    pub fn decide(&self, prediction: Prediction, delta: f64) -> Decision {
        self.bins[bin_of(prediction.upper_wrong)].fetch_add(1, Ordering::Relaxed);
        if prediction.upper_wrong > f64::from_bits(self.lambda.load(Ordering::Relaxed)) {
            return Decision::Explore;
        }
        let cost = (prediction.upper_wrong * 1e6) as u64;
        let allowed = (delta * self.lookups.load(Ordering::Relaxed) as f64 * 1e6) as u64;
        // A race may overspend by the bounds of the lookups in flight: a few millionths.
        if self.spent_micros.load(Ordering::Relaxed) + cost > allowed {
            return Decision::Explore;
        }
        if self.draw() < AUDIT_RATE {
            return Decision::Audit;
        }
        self.spent_micros.fetch_add(cost, Ordering::Relaxed);
        self.expected_wrong_micros.fetch_add((prediction.p_wrong * 1e6) as u64, Ordering::Relaxed);
        Decision::Serve
    }

    /// A uniform draw in [0, 1), lock-free.
    fn draw(&self) -> f64 {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        let mut rng = crate::rng::SplitMix64::new(n.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5eed);
        (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Recomputes λ: the largest bin edge at which what would be served (each lookup counted
    /// at its bin's upper edge) stays within `delta` of all lookups. Old lookups fade.
    pub fn rebalance(&self, delta: f64) {
        let mut lookups = self.lookups.load(Ordering::Relaxed);
        if lookups > 2 * BUDGET_WINDOW {
            // Racy by design: a count lost or doubled while halving shifts λ negligibly.
            for b in &self.bins {
                b.store(b.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
            }
            lookups /= 2;
            self.lookups.store(lookups, Ordering::Relaxed);
            self.spent_micros.store(self.spent_micros.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
        }
        let allowed = delta * lookups as f64;
        let mut spent = 0.0;
        let mut lambda = 0.0;
        for (i, b) in self.bins.iter().enumerate() {
            spent += b.load(Ordering::Relaxed) as f64 * edge(i);
            if spent > allowed {
                break;
            }
            lambda = edge(i);
        }
        self.lambda.store(f64::to_bits(lambda), Ordering::Relaxed);
    }

    pub fn verified_lookups(&self) -> u64 {
        self.verified_lookups.load(Ordering::Relaxed)
    }

    /// The model's estimate of wrong answers per verified lookup since start.
    pub fn estimated_error_rate(&self) -> f64 {
        let n = self.verified_lookups.load(Ordering::Relaxed);
        if n == 0 {
            return 0.0;
        }
        self.expected_wrong_micros.load(Ordering::Relaxed) as f64 / 1e6 / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn obs(similarity: f32, margin: f32, agreeing: u32, correct: bool) -> ObservationRecord {
        Features { similarity, margin, agreeing }.observation(correct, Source::Probe)
    }

    #[test]
    fn features_measure_the_margin_to_the_nearest_other_answer() {
        let f = Features::of(&[(0.9, 7), (0.85, 7), (0.7, 3), (0.6, 7)], true).unwrap();
        assert!((f.margin - 0.2).abs() < 1e-6, "{f:?}");
        assert_eq!(f.agreeing, 1, "0.6 is too far below 0.9 to count");
        let all_same = Features::of(&[(0.9, 7), (0.88, 7)], true).unwrap();
        assert!((all_same.margin - 0.02).abs() < 1e-6, "a different answer may lie just past a full search");
        let short = Features::of(&[(0.9, 7), (0.88, 7)], false).unwrap();
        assert!((short.margin - 0.9).abs() < 1e-6, "nothing else exists");
        let unknown = Features::of(&[(0.9, 0), (0.88, 0)], true).unwrap();
        assert_eq!(unknown.agreeing, 0, "unknown answers agree with nothing");
        assert!(Features::of(&[], true).is_none());
    }

    #[test]
    fn a_new_namespace_serves_nothing_until_it_has_seen_answers() {
        let p =
            Fit::default().predict(&Features { similarity: 0.99, margin: 0.3, agreeing: 7 }, Offset::default(), 1.0);
        assert!(p.upper_wrong > 0.5, "{p:?}");
    }

    /// A stream whose truth is known: right with probability sigmoid(30 (s - 0.85) + 20 m).
    fn truth(f: &Features) -> f64 {
        sigmoid(30.0 * (f64::from(f.similarity) - 0.85) + 20.0 * f64::from(f.margin) - 2.0)
    }

    fn draw(rng: &mut SplitMix64) -> Features {
        let u = |rng: &mut SplitMix64| (rng.next_u64() >> 11) as f32 / (1u64 << 53) as f32;
        Features { similarity: 0.6 + 0.4 * u(rng), margin: 0.2 * u(rng), agreeing: (rng.next_u64() % 4) as u32 }
    }

    #[test]
    fn the_fit_recovers_a_known_answer_structure() {
        let mut rng = SplitMix64::new(7);
        let mut cells = Cells::default();
        for _ in 0..20_000 {
            let f = draw(&mut rng);
            let right = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= truth(&f);
            cells.add(&f.observation(right, Source::Probe));
        }
        let fit = cells.refit(&Fit::default());
        let fit = cells.refit(&fit);
        for f in [
            Features { similarity: 0.95, margin: 0.1, agreeing: 1 },
            Features { similarity: 0.8, margin: 0.02, agreeing: 0 },
            Features { similarity: 0.9, margin: 0.05, agreeing: 2 },
        ] {
            let p = fit.predict(&f, Offset { mean: 0.0, var: 0.0 }, 1.0);
            let want = 1.0 - truth(&f);
            assert!((p.p_wrong - want).abs() < 0.03, "{f:?}: {p:?} vs {want}");
            assert!(p.upper_wrong >= p.p_wrong);
        }
    }

    #[test]
    fn serving_by_budget_keeps_the_error_rate_under_the_bound() {
        for delta in [0.01, 0.02, 0.05] {
            let mut rng = SplitMix64::new(11);
            let (mut cells, mut fit) = (Cells::default(), Fit::default());
            let budget = Budget::default();
            let (mut served, mut wrong, n) = (0u64, 0u64, 30_000u64);
            for i in 0..n {
                let f = draw(&mut rng);
                let right = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= truth(&f);
                budget.count_lookup(delta);
                if budget.decide(fit.predict(&f, Offset::default(), cells.calibration()), delta) == Decision::Serve {
                    served += 1;
                    wrong += u64::from(!right);
                } else {
                    cells.add(&f.observation(right, Source::Probe));
                    if i % 50 == 0 {
                        fit = cells.refit(&fit);
                    }
                }
            }
            let error_rate = wrong as f64 / n as f64;
            assert!(error_rate <= delta, "delta {delta}: error rate {error_rate}");
            assert!(served as f64 / n as f64 > 0.1, "delta {delta}: only {served} of {n} served");
            assert!(
                (budget.estimated_error_rate() - error_rate).abs() < delta,
                "the estimate {} tracks the truth {error_rate}",
                budget.estimated_error_rate()
            );
        }
    }

    #[test]
    fn cells_count_and_forget_exactly() {
        let mut cells = Cells::default();
        let a = obs(0.9, 0.1, 2, true);
        cells.add(&a);
        cells.add(&obs(0.9, 0.1, 2, false));
        assert_eq!(cells.len(), 2);
        cells.remove(&a);
        cells.remove(&a);
        assert_eq!(cells.len(), 1, "removing what is not there changes nothing");
    }

    #[test]
    fn an_entry_judged_wrong_drops_below_its_namespace() {
        let fit = Fit { w: [0.0, 2.0, 0.0, 0.0], ..Fit::default() };
        let mut bad = EntryEvidence::default();
        for _ in 0..5 {
            bad.observe(obs(0.95, 0.1, 0, false));
        }
        bad.refit(&fit);
        assert!(bad.offset.mean < -1.0, "{:?}", bad.offset);
        assert!(bad.offset.var < Offset::default().var, "observations narrow it");
        let mut good = EntryEvidence::default();
        good.observe(obs(0.95, 0.1, 0, true));
        good.refit(&fit);
        assert!(good.offset.mean > 0.0 && good.offset.mean < 0.5, "one observation moves it little: {:?}", good.offset);
    }

    #[test]
    fn evidence_is_bounded_and_round_trips() {
        let mut e = EntryEvidence::default();
        for i in 0..(MAX_OBSERVATIONS + 3) {
            let dropped = e.observe(obs(0.5 + i as f32 / 100.0, 0.0, 0, true));
            assert_eq!(dropped.is_some(), i >= MAX_OBSERVATIONS);
        }
        assert_eq!(e.observations.len(), MAX_OBSERVATIONS);
        for q in 0..MAX_REFUSED as u64 {
            assert!(e.refuse(q));
        }
        assert!(e.refuse(3), "already refused");
        assert!(!e.refuse(9_999), "full: the caller deletes the entry");
        assert!(e.refuses(5) && !e.refuses(9_999));
        let back = EntryEvidence::from_record(e.to_record());
        assert_eq!(back.observations, e.observations);
        assert_eq!(back.refused, e.refused);
    }

    #[test]
    fn audits_that_find_more_wrong_answers_than_expected_scale_every_bound() {
        let mut cells = Cells::default();
        assert_eq!(cells.calibration(), 1.0);
        for i in 0..20 {
            let mut o = obs(0.95, 0.1, 2, i % 4 != 0);
            o.audit_p_wrong = 0.01;
            cells.add(&o);
        }
        // 5 wrong where 0.2 were expected.
        assert!((cells.calibration() - 6.0 / 1.2).abs() < 1e-6, "{}", cells.calibration());
        let f = Features { similarity: 0.95, margin: 0.1, agreeing: 2 };
        let fit = cells.refit(&Fit::default());
        let plain = fit.predict(&f, Offset::default(), 1.0);
        let scaled = fit.predict(&f, Offset::default(), cells.calibration());
        assert!(scaled.upper_wrong > plain.upper_wrong * 4.9 || scaled.upper_wrong == 1.0);
        let mut never_under = Cells::default();
        let mut o = obs(0.95, 0.1, 2, true);
        o.audit_p_wrong = 0.5;
        never_under.add(&o);
        assert_eq!(never_under.calibration(), 1.0, "right audits never make bounds laxer");
    }

    #[test]
    fn the_budget_never_spends_more_than_it_was_given() {
        let budget = Budget::default();
        let (mut served, delta) = (0u32, 0.01);
        for _ in 0..1000 {
            budget.count_lookup(delta);
            // Everything looks equally risky, at twice the bound: at most half may be served.
            if budget.decide(Prediction { p_wrong: 0.02, upper_wrong: 0.02, model_p_wrong: 0.02 }, delta)
                == Decision::Serve
            {
                served += 1;
            }
        }
        assert!(served <= 500, "{served}");
    }

    #[test]
    fn budget_bins_cover_the_range() {
        assert_eq!(bin_of(0.0), 0);
        assert_eq!(bin_of(1.0), BINS - 1);
        assert!(edge(bin_of(0.013)) >= 0.013);
        assert!((edge(BINS - 1) - 1.0).abs() < 1e-12);
    }
}
