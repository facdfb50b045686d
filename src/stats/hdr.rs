//! Counts per HDR bucket, laid out as `hdrhistogram::Histogram::<u64>::new(3)`
//! lays them out (3 significant figures, 1 µs units, bucket `i` below
//! `i + 1`), but kept small: only the buckets hit, each count as narrow as
//! the largest count needs, and dense only once that is smaller. Percentiles
//! read from it are the dense histogram's, bit for bit.

use super::Summary;

/// Sub-buckets per half bucket at 3 significant figures (2,048 per bucket).
const HALF_MAGNITUDE: u32 = 10;
const HALF: u64 = 1 << HALF_MAGNITUDE;
/// Values below 2,048 µs are exact: the first bucket holds them all.
const SUB_BUCKET_MASK: u64 = 2 * HALF - 1;
/// 64 − log2(sub-bucket count).
const LEADING_ZERO_BASE: u32 = 64 - (HALF_MAGNITUDE + 1);

/// The index of the bucket `us` falls in. Every `u64` has one below 56,320,
/// so a `u16` holds it.
pub fn index_of(us: u64) -> u16 {
    let bucket = LEADING_ZERO_BASE - (us | SUB_BUCKET_MASK).leading_zeros();
    let sub = us >> bucket;
    (((u64::from(bucket) + 1) << HALF_MAGNITUDE) + sub - HALF) as u16
}

/// The magnitude of bucket `index`'s sub-bucket width (`2^magnitude` µs).
fn magnitude(index: u16) -> u32 {
    (u32::from(index) >> HALF_MAGNITUDE).saturating_sub(1)
}

/// The lowest value of bucket `index`, µs.
pub fn lowest(index: u16) -> u64 {
    let i = u64::from(index);
    let sub = match i >> HALF_MAGNITUDE {
        0 => i,
        _ => (i & (HALF - 1)) + HALF,
    };
    sub << magnitude(index)
}

/// The highest value of bucket `index`, µs (as `hdrhistogram` caps it: one
/// below `u64::MAX` in the top bucket).
fn highest(index: u16) -> u64 {
    lowest(index).saturating_add(1 << magnitude(index)) - 1
}

/// The middle of bucket `index` (rounded up), µs: what a mean counts it as.
fn median(index: u16) -> u64 {
    lowest(index) + ((1 << magnitude(index)) >> 1)
}

/// Counts in the narrowest integer that holds the largest of them.
#[derive(Debug, Clone)]
enum Counts {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
}

macro_rules! each {
    ($counts:expr, $v:ident => $e:expr) => {
        match $counts {
            Counts::U8($v) => $e,
            Counts::U16($v) => $e,
            Counts::U32($v) => $e,
            Counts::U64($v) => $e,
        }
    };
}

// `each!` writes one body for every width, u64 included, where the
// conversions to u64 are the identity.
#[allow(clippy::useless_conversion)]
impl Counts {
    /// Bytes per count.
    fn width(&self) -> usize {
        match self {
            Counts::U8(_) => 1,
            Counts::U16(_) => 2,
            Counts::U32(_) => 4,
            Counts::U64(_) => 8,
        }
    }

    fn len(&self) -> usize {
        each!(self, v => v.len())
    }

    fn capacity(&self) -> usize {
        each!(self, v => v.capacity())
    }

    fn get(&self, i: usize) -> u64 {
        each!(self, v => v[i].into())
    }

    /// Makes room for `additional` more counts, exactly.
    fn reserve_exact(&mut self, additional: usize) {
        each!(self, v => v.reserve_exact(additional))
    }

    /// Widens every count so that `n` fits.
    fn fit(&mut self, n: u64) {
        let need = match n {
            n if n <= u64::from(u8::MAX) => 1,
            n if n <= u64::from(u16::MAX) => 2,
            n if n <= u64::from(u32::MAX) => 4,
            _ => 8,
        };
        if need <= self.width() {
            return;
        }
        // Keeps the room there was: growth stays as `BucketCounts` plans it.
        let mut wider = match need {
            2 => Counts::U16(Vec::with_capacity(self.capacity())),
            4 => Counts::U32(Vec::with_capacity(self.capacity())),
            _ => Counts::U64(Vec::with_capacity(self.capacity())),
        };
        for i in 0..self.len() {
            // Every count fits a wider integer.
            let c = self.get(i);
            each!(&mut wider, w => w.push(c.try_into().unwrap_or_else(|_| unreachable!("wider"))));
        }
        *self = wider;
    }

    fn set(&mut self, i: usize, n: u64) {
        self.fit(n);
        // `fit` made the width hold `n`.
        each!(self, v => v[i] = n.try_into().unwrap_or_else(|_| unreachable!("fitted")))
    }

    fn insert(&mut self, i: usize, n: u64) {
        self.fit(n);
        each!(self, v => v.insert(i, n.try_into().unwrap_or_else(|_| unreachable!("fitted"))))
    }
}

/// Non-zero counts per HDR bucket, up to a largest bucket. Memory: 2 bytes
/// (the bucket) plus the width of one count per bucket hit, with up to an
/// eighth more room to grow into; or, once that would be more, the width
/// of one count per bucket up to the largest, whichever is less. So never
/// more than `8 × (largest + 1)` bytes.
#[derive(Debug, Clone)]
pub struct BucketCounts {
    /// Indexes of the buckets hit, ascending; unused when dense.
    keys: Vec<u16>,
    /// The count of each bucket in `keys`, or of every bucket when dense.
    counts: Counts,
    dense: bool,
    /// Buckets above this one are counted in it.
    largest: u16,
    total: u64,
}

impl BucketCounts {
    /// Empty; values above `max_us` are to be counted in its bucket.
    pub fn new(max_us: u64) -> Self {
        BucketCounts {
            keys: Vec::new(),
            counts: Counts::U8(Vec::new()),
            dense: false,
            largest: index_of(max_us),
            total: 0,
        }
    }

    #[cfg(test)]
    pub fn is_dense(&self) -> bool {
        self.dense
    }

    /// Values counted (saturating).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Adds `n` to bucket `index` (the largest bucket if above it).
    pub fn add(&mut self, index: u16, n: u64) {
        if n == 0 {
            return;
        }
        let index = index.min(self.largest);
        self.total = self.total.saturating_add(n);
        if self.dense {
            return self.add_dense(index, n);
        }
        match self.keys.binary_search(&index) {
            Ok(i) => self.counts.set(i, self.counts.get(i).saturating_add(n)),
            Err(i) => {
                if self.keys.len() == self.keys.capacity() && !self.grow() {
                    self.densify();
                    self.add_dense(index, n);
                    return;
                }
                self.keys.insert(i, index);
                self.counts.insert(i, n);
            }
        }
    }

    fn add_dense(&mut self, index: u16, n: u64) {
        let i = usize::from(index);
        self.counts.set(i, self.counts.get(i).saturating_add(n));
    }

    /// Makes room for an eighth more buckets (at least 4), unless dense
    /// would then be smaller; returns whether it did.
    fn grow(&mut self) -> bool {
        let len = self.keys.len();
        let more = (len / 8).max(4);
        let width = self.counts.width().max(1);
        let dense = (usize::from(self.largest) + 1) * width;
        if (len + more) * (2 + width) >= dense {
            return false;
        }
        self.keys.reserve_exact(more);
        self.counts.reserve_exact(more);
        true
    }

    /// One count per bucket up to the largest, hit or not.
    fn densify(&mut self) {
        let mut dense = match self.counts {
            Counts::U8(_) => Counts::U8(Vec::new()),
            Counts::U16(_) => Counts::U16(Vec::new()),
            Counts::U32(_) => Counts::U32(Vec::new()),
            Counts::U64(_) => Counts::U64(Vec::new()),
        };
        let len = usize::from(self.largest) + 1;
        each!(&mut dense, v => v.resize(len, 0));
        for (k, i) in self.keys.iter().zip(0..) {
            dense.set(usize::from(*k), self.counts.get(i));
        }
        self.counts = dense;
        self.keys = Vec::new();
        self.dense = true;
    }

    /// The buckets hit and their counts, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u16, u64)> + Clone + '_ {
        let keys = (!self.dense).then_some(&self.keys);
        (0..self.counts.len()).filter_map(move |i| {
            let n = self.counts.get(i);
            let index = match keys {
                Some(k) => k[i],
                None if n == 0 => return None,
                None => i as u16,
            };
            Some((index, n))
        })
    }

    /// Forgets every count. Keeps room for as many buckets as were hit,
    /// no more: memory taken by a burst is given back at the next clear.
    pub fn clear(&mut self) {
        let hit = if self.dense {
            self.iter().count()
        } else {
            self.keys.len()
        };
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        keys.shrink_to(hit);
        let counts = match std::mem::replace(&mut self.counts, Counts::U8(Vec::new())) {
            Counts::U8(mut v) if !self.dense => {
                v.clear();
                v.shrink_to(hit);
                v
            }
            _ => Vec::with_capacity(hit),
        };
        keys.reserve_exact(hit);
        *self = BucketCounts {
            keys,
            counts: Counts::U8(counts),
            dense: false,
            largest: self.largest,
            total: 0,
        };
    }
}

/// The [`Summary`] that `hdrhistogram` gives for a histogram holding
/// `counts` (bucket index and count, ascending, each bucket once), `total`
/// in all: the same arithmetic in the same order, so the same bits.
pub fn summarize(counts: impl Iterator<Item = (u16, u64)> + Clone, total: u64) -> Summary {
    let (Some((first, _)), Some((last, _))) = (counts.clone().next(), counts.clone().last()) else {
        return Summary::default();
    };
    if total == 0 {
        return Summary::default();
    }
    let s = |us: u64| us as f64 / 1e6;
    // `Histogram::min`: 0 when bucket 0 holds anything, else the lowest non-zero value.
    let min = if first == 0 { 0 } else { lowest(first) };
    let max = highest(last);
    // `Histogram::value_at_quantile`: the highest value of the bucket in
    // which the running count reaches ⌈q·total⌉ (at least 1).
    let at = |q: f64| -> u64 {
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (index, n) in counts.clone() {
            seen = seen.saturating_add(n);
            if seen >= rank {
                return highest(index);
            }
        }
        0
    };
    let q = |p: f64| s(at(p).min(max));
    // `Histogram::mean`: each bucket's middle, weighted, summed in order.
    let mean = counts.clone().fold(0.0_f64, |sum, (index, n)| {
        sum + median(index) as f64 * n as f64 / total as f64
    });
    Summary {
        count: total,
        min: s(min),
        p50: q(0.50),
        p90: q(0.90),
        p95: q(0.95),
        p99: q(0.99),
        p999: q(0.999),
        max: s(max),
        mean: mean / 1e6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::Histogram;
    use rand::{Rng, SeedableRng};

    #[test]
    fn buckets_are_hdrhistograms() {
        let h = Histogram::<u64>::new(3).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let edges = (0..64).flat_map(|b| {
            let p = 1u64 << b;
            [p - 1, p, p + 1]
        });
        let random = (0..100_000).map(|_| rng.gen::<u64>() >> rng.gen_range(0..64));
        for v in edges.chain(random).chain([u64::MAX]) {
            let i = index_of(v);
            assert_eq!(lowest(i), h.lowest_equivalent(v), "{v}");
            if v < u64::MAX {
                // `Histogram` special-cases `u64::MAX` itself.
                assert_eq!(highest(i), h.highest_equivalent(v), "{v}");
            }
            assert_eq!(median(i), h.median_equivalent(v), "{v}");
            if i > 0 {
                assert_eq!(
                    index_of(lowest(i) - 1),
                    i - 1,
                    "{v}: buckets are contiguous"
                );
            }
        }
        assert_eq!(index_of(u64::MAX), 56_319);
        // The bucket counts `LatencyStats` documents for 5 s, 30 s and 1 h.
        assert_eq!(index_of(5_000_000) + 1, 13_509);
        assert_eq!(index_of(30_000_000) + 1, 16_168);
        assert_eq!(index_of(3_600_000_000) + 1, 23_221);
    }

    /// Sparse, then wider counts, then dense: every layout counts the same.
    #[test]
    fn counts_survive_widening_and_densifying() {
        let mut c = BucketCounts::new(5_000_000);
        c.add(7, 1);
        c.add(3, 300);
        c.add(7, 70_000);
        c.add(u16::MAX, 5_000_000_000);
        assert!(!c.dense);
        let largest = index_of(5_000_000);
        let want = [(3, 300), (7, 70_001), (largest, 5_000_000_000)];
        assert_eq!(c.iter().collect::<Vec<_>>(), want);
        assert!(matches!(c.counts, Counts::U64(_)));
        for i in 0..=largest {
            c.add(i, 1);
        }
        assert!(c.dense, "every bucket hit: dense is smaller");
        assert_eq!(c.counts.len(), usize::from(largest) + 1);
        let got: Vec<_> = c.iter().collect();
        assert_eq!(got.len(), usize::from(largest) + 1);
        assert_eq!(got[3], (3, 301));
        assert_eq!(got[usize::from(largest)], (largest, 5_000_000_001));
        assert_eq!(
            c.total(),
            300 + 70_001 + 5_000_000_000 + u64::from(largest) + 1
        );
        c.clear();
        assert_eq!((c.total(), c.iter().count(), c.dense), (0, 0, false));
    }
}
