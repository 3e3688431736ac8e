//! A global allocator that asks Linux for transparent huge pages on large blocks.
//!
//! Why: decoding streams every weight once per token. With 4 KiB pages a 4 GB model spans a
//! million pages, far beyond the TLB's reach, so the walk misses on every page, and the
//! hardware prefetchers stop at each 4 KiB boundary. Linux's usual THP mode ("madvise") gives
//! 2 MiB pages only to regions that ask for them, which the system allocator never does.
//! Large blocks (the packed weights, the KV cache, prompt activations) are fresh `mmap`s that
//! nothing has touched yet, so advising them at allocation makes their first-touch faults
//! allocate huge pages. Elsewhere, or where THP is off, this is the system allocator.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

pub struct HugePageAlloc;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turn the advice off (or back on) for blocks allocated from now on; the binary reads
/// `BIOMISTRAL_HUGEPAGES=0` into this, so the two can be compared with one build.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

const HUGE_PAGE: usize = 2 << 20;
/// Below this the rounding to whole huge pages could waste a noticeable share of the block.
const MIN_BYTES: usize = 4 * HUGE_PAGE;

/// The whole 2 MiB pages inside `[p, p + size)`, advised as huge-page candidates.
fn advise(p: *mut u8, size: usize) {
    #[cfg(target_os = "linux")]
    if !p.is_null() && size >= MIN_BYTES && ENABLED.load(Ordering::Relaxed) {
        let start = (p as usize).next_multiple_of(HUGE_PAGE);
        let end = (p as usize + size) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // SAFETY: the range lies inside a block this allocator just returned; MADV_HUGEPAGE
            // changes only how its pages are backed, never their contents. Failure (THP
            // compiled out) leaves ordinary pages, so the result is ignored.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, size);
}

// SAFETY: every call is forwarded to `System` unchanged; `advise` only adds a hint.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        advise(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        advise(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        advise(q, new_size);
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_blocks_round_trip() {
        let a = HugePageAlloc;
        for size in [64, MIN_BYTES - 1, MIN_BYTES + 12345, 3 * MIN_BYTES] {
            let layout = Layout::from_size_align(size, 64).unwrap();
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                p.write_bytes(7, size);
                let q = a.realloc(p, layout, 2 * size);
                assert!(std::slice::from_raw_parts(q, size).iter().all(|&b| b == 7));
                a.dealloc(q, Layout::from_size_align(2 * size, 64).unwrap());
            }
        }
    }
}
