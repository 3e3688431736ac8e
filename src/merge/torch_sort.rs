//! A replica of the unstable sort torch uses on CPU (`std::sort` from libstdc++: introsort with
//! median-of-three pivots, a heapsort fallback, and a final insertion sort).
//!
//! mergekit's TIES picks the top-k magnitudes with `torch.argsort(descending=True)`; when several
//! elements tie at the cut-off, which of them survive depends on this exact algorithm. Replaying
//! it reproduces mergekit's choice (verified bit-exact on the reference vectors), where any other
//! sort differs on up to a few percent of a bf16 tensor.

const THRESHOLD: usize = 16;

/// Indices `0..n` ordered by `keys` as torch's `argsort(keys, descending)` orders them.
pub fn argsort(keys: &[f32], descending: bool) -> Vec<u32> {
    let mut v: Vec<(f32, u32)> = keys.iter().enumerate().map(|(i, k)| (*k, i as u32)).collect();
    // torch's comparators also order NaN; merge inputs never hold NaN deltas that matter here.
    if descending {
        std_sort(&mut v, &|a: &(f32, u32), b: &(f32, u32)| a.0 > b.0);
    } else {
        std_sort(&mut v, &|a: &(f32, u32), b: &(f32, u32)| a.0 < b.0);
    }
    v.into_iter().map(|(_, i)| i).collect()
}

/// libstdc++'s `std::sort(first, last, comp)`.
pub fn std_sort<T: Copy, C: Fn(&T, &T) -> bool>(a: &mut [T], comp: &C) {
    let n = a.len();
    if n > 1 {
        let depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize;
        introsort_loop(a, 0, n, depth, comp);
        final_insertion_sort(a, comp);
    }
}

fn introsort_loop<T: Copy, C: Fn(&T, &T) -> bool>(
    a: &mut [T],
    first: usize,
    mut last: usize,
    mut depth: usize,
    comp: &C,
) {
    while last - first > THRESHOLD {
        if depth == 0 {
            heap_sort(&mut a[first..last], comp);
            return;
        }
        depth -= 1;
        let cut = partition_pivot(a, first, last, comp);
        introsort_loop(a, cut, last, depth, comp);
        last = cut;
    }
}

fn partition_pivot<T: Copy, C: Fn(&T, &T) -> bool>(a: &mut [T], first: usize, last: usize, comp: &C) -> usize {
    let mid = first + (last - first) / 2;
    let (x, y, z) = (first + 1, mid, last - 1);
    let pick = if comp(&a[x], &a[y]) {
        if comp(&a[y], &a[z]) {
            y
        } else if comp(&a[x], &a[z]) {
            z
        } else {
            x
        }
    } else if comp(&a[x], &a[z]) {
        x
    } else if comp(&a[y], &a[z]) {
        z
    } else {
        y
    };
    a.swap(first, pick);
    // Unguarded Hoare partition of [first+1, last) around the pivot at `first`.
    // The pivot never moves during the partition (swaps only touch positions > first), so a copy
    // compares the same and keeps the hot loops free of a second load.
    let pivot = a[first];
    let (mut lo, mut hi) = (first + 1, last);
    loop {
        while comp(&a[lo], &pivot) {
            lo += 1;
        }
        hi -= 1;
        while comp(&pivot, &a[hi]) {
            hi -= 1;
        }
        if lo >= hi {
            return lo;
        }
        a.swap(lo, hi);
        lo += 1;
    }
}

fn final_insertion_sort<T: Copy, C: Fn(&T, &T) -> bool>(a: &mut [T], comp: &C) {
    if a.len() > THRESHOLD {
        insertion_sort(&mut a[..THRESHOLD], comp);
        for i in THRESHOLD..a.len() {
            unguarded_linear_insert(a, i, comp);
        }
    } else {
        insertion_sort(a, comp);
    }
}

fn insertion_sort<T: Copy, C: Fn(&T, &T) -> bool>(a: &mut [T], comp: &C) {
    for i in 1..a.len() {
        if comp(&a[i], &a[0]) {
            let v = a[i];
            a.copy_within(0..i, 1);
            a[0] = v;
        } else {
            unguarded_linear_insert(a, i, comp);
        }
    }
}

fn unguarded_linear_insert<T: Copy, C: Fn(&T, &T) -> bool>(a: &mut [T], mut last: usize, comp: &C) {
    let v = a[last];
    // Safe without a bound check on the left: an element not less than a[0] is known to exist there.
    while last > 0 && comp(&v, &a[last - 1]) {
        a[last] = a[last - 1];
        last -= 1;
    }
    a[last] = v;
}

/// `std::__partial_sort(first, last, last)`: make_heap then sort_heap.
fn heap_sort<T: Copy, C: Fn(&T, &T) -> bool>(a: &mut [T], comp: &C) {
    let len = a.len();
    if len >= 2 {
        let mut parent = (len - 2) / 2;
        loop {
            let v = a[parent];
            adjust_heap(a, parent, len, v, comp);
            if parent == 0 {
                break;
            }
            parent -= 1;
        }
    }
    let mut last = len;
    while last > 1 {
        last -= 1;
        let v = a[last];
        a[last] = a[0];
        adjust_heap(a, 0, last, v, comp);
    }
}

fn adjust_heap<T: Copy, C: Fn(&T, &T) -> bool>(a: &mut [T], mut hole: usize, len: usize, v: T, comp: &C) {
    let top = hole;
    let mut child = hole;
    while child < (len - 1) / 2 {
        child = 2 * (child + 1);
        if comp(&a[child], &a[child - 1]) {
            child -= 1;
        }
        a[hole] = a[child];
        hole = child;
    }
    if len.is_multiple_of(2) && child == (len - 2) / 2 {
        child = 2 * (child + 1);
        a[hole] = a[child - 1];
        hole = child - 1;
    }
    // push_heap
    while hole > top {
        let parent = (hole - 1) / 2;
        if !comp(&a[parent], &v) {
            break;
        }
        a[hole] = a[parent];
        hole = parent;
    }
    a[hole] = v;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn sorts_like_a_sort() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for n in [0usize, 1, 2, 5, 16, 17, 100, 1000, 5000] {
            // Few distinct values: many ties, as in bf16 deltas.
            let keys: Vec<f32> = (0..n).map(|_| rng.gen_range(0..20) as f32).collect();
            for desc in [false, true] {
                let idx = argsort(&keys, desc);
                let mut seen = idx.clone();
                seen.sort();
                assert_eq!(seen, (0..n as u32).collect::<Vec<_>>());
                for w in idx.windows(2) {
                    let (a, b) = (keys[w[0] as usize], keys[w[1] as usize]);
                    assert!(if desc { a >= b } else { a <= b }, "n={n}");
                }
            }
        }
    }

    #[test]
    fn heap_fallback_sorts() {
        let mut v: Vec<i32> = (0..200).map(|i| (i * 7919) % 211).collect();
        heap_sort(&mut v, &|a: &i32, b: &i32| a < b);
        assert!(v.windows(2).all(|w| w[0] <= w[1]));
        let mut v: Vec<i32> = (0..200).map(|i| (i * 31) % 17).collect();
        introsort_loop(&mut v, 0, 200, 0, &|a: &i32, b: &i32| a < b);
        final_insertion_sort(&mut v, &|a: &i32, b: &i32| a < b);
        assert!(v.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn ties_follow_introsort_not_index_order() {
        // 40 equal keys: introsort's partition swaps ties around, unlike a stable sort.
        let keys = vec![1.0f32; 40];
        let idx = argsort(&keys, true);
        assert_ne!(idx, (0..40).collect::<Vec<u32>>());
    }
}
