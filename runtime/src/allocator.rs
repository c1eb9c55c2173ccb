//! The server's allocator: mimalloc (set as the global allocator by the
//! binary), tuned to hand freed memory back to the system at once.
//!
//! With thousands of runs in flight, glibc's malloc left the RSS about twice
//! the live heap (per-thread arenas), and mimalloc with its defaults kept
//! freed pages for a while and committed its arenas eagerly. The run-engine
//! benchmark's 10,000 concurrent turns peak at 338-365 MiB with either
//! default, 292-309 MiB with the options set here, and 275 MiB when
//! `MIMALLOC_ARENA_EAGER_COMMIT=0` is also in the environment: mimalloc
//! reads it for its first arena before `main` runs, so `scripts/serve`
//! sets it.

use std::ffi::{c_int, c_long};

unsafe extern "C" {
    /// From the mimalloc library that `libmimalloc-sys` builds and links.
    fn mi_option_set(option: c_int, value: c_long);
}

/// `mi_option_arena_eager_commit` in the `mi_option_e` enumeration of the
/// mimalloc v3 header shipped with the pinned `libmimalloc-sys`.
const ARENA_EAGER_COMMIT: c_int = 4;
/// `mi_option_purge_delay`, same enumeration.
const PURGE_DELAY: c_int = 15;

/// Commit arena memory on demand and purge freed pages at once. Call first
/// thing in `main`; the variables `MIMALLOC_ARENA_EAGER_COMMIT` and
/// `MIMALLOC_PURGE_DELAY`, when set, win.
pub fn tune() {
    for (option, variable) in [
        (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT"),
        (PURGE_DELAY, "MIMALLOC_PURGE_DELAY"),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: setting an option is a plain store in mimalloc's
            // option table, valid at any time.
            unsafe { mi_option_set(option, 0) };
        }
    }
}
