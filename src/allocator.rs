//! The process's allocator: mimalloc, asked the way its own C `malloc` is.
//!
//! The sidecar allocates on every request (hyper, the Redis client, regorus
//! values); under load glibc's malloc took a tenth of its CPU, mimalloc far
//! less. It is built without transparent huge pages (`no_thp`): with them,
//! mimalloc's arenas held 14 MiB of huge pages in an idle sidecar that uses
//! 3.5 MiB.
//!
//! The `mimalloc` crate hands every request to `mi_malloc_aligned`, whose
//! plain path in mimalloc 3 takes only sizes whose block is a power of two:
//! any other (a 48-byte box, a 1.5 KiB buffer) went through the generic
//! aligned path, which costs more and may over-allocate. What is guaranteed
//! here: a request whose alignment is at most 16 and divides its size (every
//! Rust type's layout below 32-byte alignment) goes to `mi_malloc`,
//! `mi_zalloc` or `mi_realloc`, as C's `malloc` would, since mimalloc's
//! blocks meet it (size classes are multiples of 8, and of 16 from 16 bytes
//! up, and a page's first block is 16-aligned); any other keeps the aligned
//! calls. The unit tests check the alignment of every size class.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// mimalloc's `MI_MAX_ALIGN_SIZE`: what its plain allocation guarantees.
const PLAIN_ALIGN: usize = 16;

/// The global allocator of the `agentvault` binary.
pub struct MiMalloc;

/// Whether a plain mimalloc block of `size` bytes is aligned to `align`.
#[inline]
fn plain(size: usize, align: usize) -> bool {
    align <= PLAIN_ALIGN && size.is_multiple_of(align)
}

// SAFETY: every method passes on the caller's guarantees (a non-zero size,
// a pointer this allocator returned) to the mimalloc call that takes them,
// and a plain call only where `plain` says its block meets the alignment.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        if plain(size, align) {
            mi::mi_malloc(size).cast()
        } else {
            mi::mi_malloc_aligned(size, align).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        if plain(size, align) {
            mi::mi_zalloc(size).cast()
        } else {
            mi::mi_zalloc_aligned(size, align).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(new_size, layout.align()) {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size up to 64 KiB (each size class and the sizes between, and
    /// sizes below the alignment) at each alignment: the block is aligned,
    /// and it holds its bytes through a realloc to a larger and a smaller size.
    #[test]
    fn every_block_is_aligned_as_asked() {
        let a = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            let mut size = 1;
            while size <= 64 << 10 {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // Several at once, so that blocks after a page's first are checked too.
                let blocks: Vec<*mut u8> = (0..4)
                    .map(|i| unsafe {
                        let p = if i % 2 == 0 {
                            a.alloc(layout)
                        } else {
                            a.alloc_zeroed(layout)
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size}, align {align}");
                        if i % 2 == 1 {
                            assert!(std::slice::from_raw_parts(p, size).iter().all(|b| *b == 0));
                        }
                        p.write_bytes(0xa5, size);
                        p
                    })
                    .collect();
                for p in blocks {
                    unsafe {
                        let grown = a.realloc(p, layout, size * 2 + align);
                        assert!(!grown.is_null());
                        assert_eq!(
                            grown as usize % align,
                            0,
                            "realloc of {size}, align {align}"
                        );
                        assert!(std::slice::from_raw_parts(grown, size)
                            .iter()
                            .all(|b| *b == 0xa5));
                        let grown_layout =
                            Layout::from_size_align(size * 2 + align, align).expect("layout");
                        let shrunk = a.realloc(grown, grown_layout, size);
                        assert_eq!(shrunk as usize % align, 0);
                        assert!(std::slice::from_raw_parts(shrunk, size)
                            .iter()
                            .all(|b| *b == 0xa5));
                        a.dealloc(shrunk, layout);
                    }
                }
                size += match size {
                    s if s < 2 * align => 1,
                    s if s < 1024 => align,
                    s => s / 7 / align * align + align,
                };
            }
        }
    }

    #[test]
    fn plain_calls_only_where_mimalloc_blocks_are_aligned() {
        assert!(plain(48, 8));
        assert!(plain(48, 16));
        assert!(plain(1, 1));
        assert!(!plain(8, 16), "an 8-byte block is 8-aligned only");
        assert!(!plain(64, 32));
    }
}
