//! A fork-join pool for the many short parallel sections of a decode step
//! (a SmolLM2 token is ~200 matrix products of 20–2000 µs): persistent
//! workers that spin while work keeps coming and park after a pause.
//!
//! Why not rayon here: rayon's idle workers go to sleep within
//! microseconds, and waking a sleeping thread on another vCPU costs
//! 0.1–1 ms on the VMs we measured (a `std::thread::scope` spawn+join
//! costs ~1 ms there), so a rayon-split GEMV was *slower* than one thread.
//! llama.cpp's threadpool spins for the same reason. Rayon stays the
//! host's pool for coarse work (evaluation windows, calibration).
//!
//! Protocol (one job at a time, guarded by a mutex): the caller publishes a
//! job `&dyn Fn(usize)` and bumps each worker's `go` epoch; worker `k` runs
//! `job(k + 1)` and stores the epoch in its `done`; the caller runs
//! `job(0)` and returns only when every worker is done, so the borrowed
//! job outlives every use.
extern crate alloc;
extern crate std;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking.
const SPIN: Duration = Duration::from_millis(3);

type Job = dyn Fn(usize) + Sync;

struct Slot {
    go: AtomicU64,
    done: AtomicU64,
    sleeping: AtomicBool,
}

struct Shared {
    /// The current job, a `*const &Job` (a thin pointer to a fat one).
    job: AtomicPtr<&'static Job>,
    slots: Vec<Slot>,
}

pub struct SpinPool {
    shared: Arc<Shared>,
    workers: Vec<Thread>,
    epoch: Mutex<u64>,
}

impl SpinPool {
    /// A pool running jobs on `threads` threads (the caller and
    /// `threads − 1` workers).
    pub fn new(threads: usize) -> SpinPool {
        let n = threads.max(1) - 1;
        let shared = Arc::new(Shared {
            job: AtomicPtr::new(core::ptr::null_mut()),
            slots: (0..n)
                .map(|_| Slot {
                    go: AtomicU64::new(0),
                    done: AtomicU64::new(0),
                    sleeping: AtomicBool::new(false),
                })
                .collect(),
        });
        let workers = (0..n)
            .map(|k| {
                let sh = Arc::clone(&shared);
                thread::Builder::new()
                    .name(alloc::format!("edgeq-gemv-{}", k + 1))
                    .spawn(move || worker(&sh, k))
                    .expect("spawn a GEMV worker thread")
                    .thread()
                    .clone()
            })
            .collect();
        SpinPool {
            shared,
            workers,
            epoch: Mutex::new(0),
        }
    }

    /// Threads a job runs on.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `job(i)` for `i < self.threads()`, `job(0)` on the calling
    /// thread, and returns when all have finished.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let mut epoch = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        *epoch += 1;
        let e = *epoch;
        // SAFETY: the lifetime is erased only for the duration of this call:
        // workers dereference the pointer after seeing `go == e` and before
        // storing `done = e`, and we return only once every worker has
        // stored `done = e` (below), so `job` and `fat` outlive every use.
        let fat: &'static Job = unsafe { core::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(job) };
        self.shared
            .job
            .store(&fat as *const &'static Job as *mut &'static Job, Ordering::Release);
        for (slot, t) in self.shared.slots.iter().zip(&self.workers) {
            slot.go.store(e, Ordering::Release);
            if slot.sleeping.load(Ordering::Acquire) {
                t.unpark();
            }
        }
        job(0);
        for slot in &self.shared.slots {
            while slot.done.load(Ordering::Acquire) != e {
                core::hint::spin_loop();
            }
        }
        self.shared.job.store(core::ptr::null_mut(), Ordering::Release);
    }
}

fn worker(sh: &Shared, k: usize) {
    let slot = &sh.slots[k];
    let mut seen = 0u64;
    loop {
        let mut since = Instant::now();
        let e = loop {
            let g = slot.go.load(Ordering::Acquire);
            if g != seen {
                break g;
            }
            if since.elapsed() < SPIN {
                for _ in 0..64 {
                    core::hint::spin_loop();
                }
            } else {
                slot.sleeping.store(true, Ordering::Release);
                if slot.go.load(Ordering::Acquire) == seen {
                    thread::park_timeout(Duration::from_millis(100));
                }
                slot.sleeping.store(false, Ordering::Release);
                since = Instant::now();
            }
        };
        seen = e;
        let p = sh.job.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: `p` points at the `&Job` of the `run` call with epoch
            // `e`, which is still executing: it waits for our `done = e`.
            let job: &Job = unsafe { *p };
            job(k + 1);
        }
        slot.done.store(e, Ordering::Release);
    }
}

/// The process-wide pool of at least `threads` threads (grown on demand;
/// idle workers park after a few milliseconds).
pub fn global(threads: usize) -> &'static SpinPool {
    static POOLS: OnceLock<Mutex<Vec<&'static SpinPool>>> = OnceLock::new();
    let pools = POOLS.get_or_init(|| Mutex::new(Vec::new()));
    let mut v = pools.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = v.iter().find(|p| p.threads() == threads) {
        return p;
    }
    let p: &'static SpinPool = alloc::boxed::Box::leak(alloc::boxed::Box::new(SpinPool::new(threads)));
    v.push(p);
    p
}
