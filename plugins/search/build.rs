//! Links the plugin with an initial memory that covers a request, which
//! `initial_heap` hands out before it grows memory: a request never grows
//! memory, so the host makes no `mprotect` call for it.
fn main() {
    initial_heap::link_initial_memory(initial_heap::INITIAL_MEMORY);
}
