//! The sandbox's limits, in one place, with the reason for each value.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits of one tool call. Every call gets a fresh instance, so these bound
/// everything a call can consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CallLimits {
    /// Largest linear memory of the instance, in bytes. 64 MiB holds any
    /// reasonable text-processing tool; a memory bomb traps at this size.
    pub max_memory_bytes: usize,
    /// Wall-clock deadline of a call, in milliseconds (epoch interruption,
    /// so a busy loop is stopped too). 10 s is long for a local tool and
    /// short enough that a stuck one does not hold a conversation.
    pub timeout_ms: u64,
    /// Largest result, in bytes of JSON. 1 MiB is far more than a model can
    /// use in one tool result and keeps a hostile plugin from flooding storage.
    pub max_output_bytes: usize,
    /// Log lines a call may write; more are dropped (and counted).
    pub max_log_lines: usize,
    /// Fuel (roughly, wasm instructions) a call may burn, when the engine
    /// meters fuel (`sandbox.fuel`); `None` for no budget. A deterministic
    /// cap on computation, independent of machine load, beside the deadline.
    pub max_fuel: Option<u64>,
    /// Calls of this plugin running at once; more wait. `None`: only the
    /// engine-wide cap applies. Keeps one busy plugin from taking every slot.
    pub max_concurrent_calls: Option<u32>,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits {
            max_memory_bytes: 64 << 20,
            timeout_ms: 10_000,
            max_output_bytes: 1 << 20,
            max_log_lines: 100,
            max_fuel: None,
            max_concurrent_calls: None,
        }
    }
}

impl CallLimits {
    /// The deadline as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Engine-wide settings, fixed at start.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Instances alive at once across all plugins. Each holds a pooled
    /// memory slot; callers beyond this wait for a slot rather than fail.
    pub max_concurrent_instances: u32,
    /// Upper bound of any plugin's memory (the per-plugin limit is at most this).
    pub max_memory_bytes: usize,
    /// Wasm stack per call: deep recursion traps here instead of exhausting
    /// the host thread's stack. wasmtime's default of 512 KiB.
    pub max_wasm_stack: usize,
    /// How often the epoch advances; the granularity of call deadlines.
    pub epoch_tick: std::time::Duration,
    /// Bytes at the start of each pooled memory slot that are reset by
    /// zeroing instead of being returned to the kernel when an instance ends.
    /// Zeroing is cheaper than `madvise` for the few pages a small plugin
    /// touches, dearer for large ones; see `benches/sandbox.rs`.
    pub memory_keep_resident: usize,
    /// Find the pages a call dirtied with Linux's `PAGEMAP_SCAN` (6.7+) and
    /// reset only those (up to `memory_keep_resident`), instead of zeroing
    /// the whole resident prefix and `madvise`-ing the rest. Ignored where
    /// the kernel lacks it.
    pub pagemap_scan: bool,
    /// Decommits (`madvise`) queued before they are flushed together; fewer
    /// system calls and TLB shootdowns when several threads run plugins.
    pub decommit_batch_size: usize,
    /// Meter fuel, so that `CallLimits::max_fuel` applies. Costs some speed
    /// on every call of every plugin, so it is off unless asked for.
    pub fuel: bool,
    /// Calls of one plugin at once unless its own
    /// `CallLimits::max_concurrent_calls` says otherwise; more wait.
    pub max_calls_per_plugin: u32,
    /// Calls made for one user at once, across plugins; more wait.
    pub max_calls_per_user: u32,
    /// Threads that run guest code (0: one per CPU). They run at a lower
    /// priority than the threads that serve requests, so busy plugins do not
    /// slow the API.
    pub guest_threads: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            max_concurrent_instances: 64,
            max_memory_bytes: 256 << 20,
            max_wasm_stack: 512 << 10,
            epoch_tick: std::time::Duration::from_millis(5),
            // With PAGEMAP_SCAN only the pages a call dirtied are reset, so a
            // large resident prefix costs nothing and saves the madvise and
            // page faults of the next call; without it, zeroing more than
            // 64 KiB per call costs more than it saves (`benches/sandbox.rs`).
            memory_keep_resident: if pagemap_scan_supported() {
                1 << 20
            } else {
                64 << 10
            },
            pagemap_scan: true,
            decommit_batch_size: 1,
            fuel: false,
            max_calls_per_plugin: 16,
            max_calls_per_user: 4,
            guest_threads: 0,
        }
    }
}

/// Whether the kernel has the `PAGEMAP_SCAN` ioctl (Linux 6.7 and later).
pub fn pagemap_scan_supported() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 7)
}

/// Bytes of stderr kept from a call, to explain a crash (a panic message).
pub const STDERR_CAPTURE_BYTES: usize = 4096;
/// Longest log line kept; longer lines are cut.
pub const MAX_LOG_LINE_BYTES: usize = 2048;
/// Longest key-value key, in bytes.
pub const MAX_KV_KEY_BYTES: usize = 256;
/// Largest key-value value: 256 KiB, room for a long note or a cached page.
pub const MAX_KV_VALUE_BYTES: usize = 256 << 10;
/// Keys one plugin may keep for one user.
pub const MAX_KV_KEYS: u64 = 10_000;
/// Most keys one `list-keys` returns.
pub const MAX_KV_LIST: u32 = 1000;
