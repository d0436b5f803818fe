//! A global allocator for wasm32 plugins: dlmalloc (the allocator Rust's
//! standard library uses on wasm32) over a system allocator that first
//! hands out the linear memory the module already has, from `__heap_base`
//! to the end of its initial memory, and grows memory only when that is
//! used up.
//!
//! Why: the standard library's dlmalloc gets every byte of its heap with
//! `memory.grow`, even when the module was linked with a large initial
//! memory, so every request grows memory at least once. On the host, with
//! signals-based traps (which the Spectre mitigation needs), each growth
//! is an `mprotect` of the instance's slot, and the next instantiation in
//! that slot makes the grown pages inaccessible again with another: two
//! system calls and a TLB flush per request. Linked with an initial memory
//! that covers what a request allocates (see the plugins' `build.rs`), a
//! plugin using this allocator never grows memory, and the host does no
//! virtual-memory operation per instance.
//!
//! Use, in the plugin:
//!
//! ```ignore
//! #[cfg(target_arch = "wasm32")]
//! #[global_allocator]
//! static HEAP: initial_heap::InitialHeap = initial_heap::InitialHeap::new();
//! ```
//!
//! and in its `build.rs` (with `initial-heap` among its build-dependencies
//! too), so that the initial memory covers a request:
//!
//! ```ignore
//! fn main() {
//!     initial_heap::link_initial_memory(initial_heap::INITIAL_MEMORY);
//! }
//! ```
#![no_std]

#[cfg(not(target_arch = "wasm32"))]
extern crate std;

/// The initial memory the guide's plugins are linked with: 1 MiB of Rust
/// stack (the wasm32 default), the static data, and about 950 KiB of heap,
/// more than a request of theirs allocates. A plugin that allocates more
/// per request wants a larger one; each 64 KiB page of it is reset (only if
/// touched) when an instance is retired.
pub const INITIAL_MEMORY: usize = 2 << 20;

/// For a plugin's build script: links its `cdylib` with an initial memory
/// of `bytes` (a multiple of 64 KiB) when it is built for wasm32.
#[cfg(not(target_arch = "wasm32"))]
pub fn link_initial_memory(bytes: usize) {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        std::println!("cargo::rustc-link-arg-cdylib=--initial-memory={bytes}");
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use core::alloc::{GlobalAlloc, Layout};
    use core::arch::wasm32;
    use core::cell::{Cell, UnsafeCell};
    use core::ptr;

    const PAGE: usize = 64 * 1024;

    unsafe extern "C" {
        /// Where the linker put the end of static data and the stack: the
        /// first byte no one uses.
        static __heap_base: u8;
    }

    /// dlmalloc's source of memory: the initial memory's unused tail first,
    /// then `memory.grow`. Regions are handed out in address order and are
    /// contiguous, so dlmalloc merges them into one segment.
    pub struct Memory {
        /// The first byte not yet handed to dlmalloc (0: not started).
        next: Cell<usize>,
    }

    // wasm32 without threads: there is one thread.
    unsafe impl Send for Memory {}

    unsafe impl dlmalloc::Allocator for Memory {
        fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
            let end = wasm32::memory_size(0) * PAGE;
            let mut start = self.next.get();
            if start == 0 {
                start = (&raw const __heap_base as usize).next_multiple_of(16);
            }
            // Only this allocator grows memory, so `start <= end`; be safe
            // if something else did.
            let start = start.min(end);
            let have = end - start;
            let (start, len) = if have >= size {
                (start, have)
            } else {
                let pages = (size - have).div_ceil(PAGE);
                let prev = wasm32::memory_grow(0, pages);
                if prev == usize::MAX {
                    return (ptr::null_mut(), 0, 0);
                }
                if prev * PAGE == end {
                    (start, have + pages * PAGE)
                } else {
                    (prev * PAGE, pages * PAGE)
                }
            };
            if len == 0 {
                return (ptr::null_mut(), 0, 0);
            }
            self.next.set(start + len);
            (start as *mut u8, len, 0)
        }

        fn remap(&self, _ptr: *mut u8, _old: usize, _new: usize, _can_move: bool) -> *mut u8 {
            ptr::null_mut()
        }

        fn free_part(&self, _ptr: *mut u8, _old: usize, _new: usize) -> bool {
            false
        }

        fn free(&self, _ptr: *mut u8, _size: usize) -> bool {
            false
        }

        fn can_release_part(&self, _flags: u32) -> bool {
            false
        }

        fn allocates_zeros(&self) -> bool {
            // Fresh linear memory is zero, and nothing below `next` is
            // handed out twice.
            true
        }

        fn page_size(&self) -> usize {
            PAGE
        }
    }

    /// The global allocator.
    pub struct InitialHeap(UnsafeCell<dlmalloc::Dlmalloc<Memory>>);

    // wasm32 without threads: there is one thread.
    unsafe impl Sync for InitialHeap {}

    impl InitialHeap {
        pub const fn new() -> Self {
            Self(UnsafeCell::new(dlmalloc::Dlmalloc::new_with_allocator(Memory { next: Cell::new(0) })))
        }
    }

    impl Default for InitialHeap {
        fn default() -> Self {
            Self::new()
        }
    }

    unsafe impl GlobalAlloc for InitialHeap {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            unsafe { (*self.0.get()).malloc(layout.size(), layout.align()) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            unsafe { (*self.0.get()).calloc(layout.size(), layout.align()) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { (*self.0.get()).free(ptr, layout.size(), layout.align()) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            unsafe { (*self.0.get()).realloc(ptr, layout.size(), layout.align(), new_size) }
        }
    }
}

#[cfg(target_arch = "wasm32")]
pub use imp::InitialHeap;
