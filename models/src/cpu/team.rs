//! A small fork-join thread team for the decoder's matmuls.
//!
//! Decoding one token runs ~200 short matmuls (tens of microseconds each). A general pool that parks
//! its workers between jobs (rayon) pays a futex wake-up per job, and the woken worker often arrives
//! after the caller has done all the work alone. Here the calling thread takes part, helpers spin
//! briefly after each job before they park, and work is handed out in chunks through an atomic
//! counter, so both cores stream weights during every matmul.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
#[cfg(not(target_arch = "wasm32"))]
use std::time::{Duration, Instant};

/// How long an idle helper spins before it parks.
#[cfg(not(target_arch = "wasm32"))]
const SPIN: Duration = Duration::from_micros(500);

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Incremented for every job; helpers watch it.
    generation: AtomicUsize,
    /// Points at the caller's (fat) pointer to the current job; valid until `pending` reaches 0.
    job: AtomicPtr<*const Job>,
    n_tasks: AtomicUsize,
    next_task: AtomicUsize,
    /// Helpers still working on the current job.
    pending: AtomicUsize,
    /// The first panic of a helper's task during the current job.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    park: Mutex<()>,
    wake: Condvar,
}

pub struct Team {
    shared: Arc<Shared>,
    helpers: usize,
    /// Serialises jobs from different callers.
    busy: Mutex<()>,
}

impl Team {
    /// A team of `threads` (the caller plus `threads - 1` helpers).
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            n_tasks: AtomicUsize::new(0),
            next_task: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            panic: Mutex::new(None),
            park: Mutex::new(()),
            wake: Condvar::new(),
        });
        #[allow(unused_mut)] // no helper threads in wasm32
        let mut helpers = 0;
        #[cfg(not(target_arch = "wasm32"))]
        for i in 1..threads.max(1) {
            let s = shared.clone();
            if std::thread::Builder::new().name(format!("vigil-team-{i}")).spawn(move || helper(s)).is_ok() {
                helpers += 1;
            }
        }
        let _ = threads;
        Team { shared, helpers, busy: Mutex::new(()) }
    }

    pub fn threads(&self) -> usize {
        self.helpers + 1
    }

    /// Runs `f(0..n_tasks)` across the team and returns when every task is done.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        // Serial when there is no one to share with, and for a job started from inside a task
        // (the team is busy with the outer job; waiting for it would deadlock).
        if self.helpers == 0 || n_tasks == 1 || IN_TASK.with(|t| t.get()) {
            (0..n_tasks).for_each(f);
            return;
        }
        let _guard = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let s = &*self.shared;
        // SAFETY: the pointers are only dereferenced by helpers between the generation bump below
        // and `pending` reaching 0, and this function does not return before that; erasing the
        // closure's lifetime is sound for that span.
        let fat: *const Job = unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const Job>(f) };
        s.job.store(&fat as *const *const Job as *mut *const Job, Ordering::Release);
        s.n_tasks.store(n_tasks, Ordering::Release);
        s.next_task.store(0, Ordering::Release);
        s.pending.store(self.helpers, Ordering::Release);
        s.generation.fetch_add(1, Ordering::AcqRel);
        {
            let _g = s.park.lock().unwrap_or_else(|p| p.into_inner());
            s.wake.notify_all();
        }
        // Whatever happens in our share of the work, wait for the helpers before returning or
        // unwinding: they borrow `f`, which lives in our caller's frame.
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(s, f)));
        while s.pending.load(Ordering::Acquire) != 0 {
            std::thread::yield_now();
        }
        s.job.store(std::ptr::null_mut(), Ordering::Release);
        // Take the helpers' panic first, so no stale one is left for the next job.
        let theirs = s.panic.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if let Some(p) = theirs {
            std::panic::resume_unwind(p);
        }
    }
}

thread_local! {
    /// Set while this thread runs a task of the team.
    static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn work(s: &Shared, f: &(dyn Fn(usize) + Sync)) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_TASK.with(|t| t.set(false));
        }
    }
    IN_TASK.with(|t| t.set(true));
    let _reset = Reset;
    let n = s.n_tasks.load(Ordering::Acquire);
    loop {
        let t = s.next_task.fetch_add(1, Ordering::AcqRel);
        if t >= n {
            break;
        }
        f(t);
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn helper(s: Arc<Shared>) {
    // Start from the generation at construction (0), not the current one: a job published before
    // this thread first runs must still be joined, or its caller would wait forever.
    let mut seen = 0;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.generation.load(Ordering::Acquire) != seen {
                break;
            }
            spins += 1;
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                let g = s.park.lock().unwrap_or_else(|p| p.into_inner());
                if s.generation.load(Ordering::Acquire) == seen {
                    let _ = s.wake.wait_timeout(g, Duration::from_millis(100));
                }
            } else {
                // Yield rather than spin: on a machine with as many threads as cores a pure spin
                // can hold a core for a whole scheduler slice while the thread it waits for cannot run.
                std::thread::yield_now();
            }
        }
        seen = s.generation.load(Ordering::Acquire);
        let job = s.job.load(Ordering::Acquire);
        if !job.is_null() {
            // SAFETY: see `Team::run`: the job outlives this use because the caller waits for
            // `pending` to reach 0.
            let f: &Job = unsafe { &**job };
            // A panicking task must not kill the helper (the caller would wait forever): record
            // it, and the caller re-raises it.
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&s, f))) {
                s.panic.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(p);
            }
        }
        s.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The process-wide team, sized from `RAYON_NUM_THREADS` / `VIGIL_THREADS` or the core count.
pub fn global() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let from_env = ["VIGIL_THREADS", "RAYON_NUM_THREADS"]
            .iter()
            .find_map(|k| std::env::var(k).ok()?.parse::<usize>().ok().filter(|&n| n > 0));
        let n = from_env.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Team::new(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once_across_many_jobs() {
        let team = Team::new(3);
        for n in [1usize, 2, 7, 64, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            team.run(n, &|t| {
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n = {n}");
        }
        // after helpers have parked
        std::thread::sleep(Duration::from_millis(5));
        let total = AtomicUsize::new(0);
        team.run(100, &|t| {
            total.fetch_add(t, Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 4950);
    }

    /// A panicking task reaches the caller as a panic, on either thread, and the team keeps working.
    #[test]
    fn a_panicking_task_is_reported_and_the_team_survives() {
        let team = Team::new(2);
        for bad in [0usize, 63] {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                team.run(64, &|t| {
                    if t == bad {
                        panic!("task {t} fails");
                    }
                    std::thread::sleep(Duration::from_micros(50));
                })
            }));
            assert!(r.is_err(), "task {bad}'s panic was swallowed");
        }
        // both sides panicking in one job leaves nothing behind for the next
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.run(64, &|_| {
                std::thread::sleep(Duration::from_micros(20));
                panic!("every task fails");
            })
        }));
        assert!(r.is_err());
        for _ in 0..20 {
            let count = AtomicUsize::new(0);
            team.run(32, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(count.load(Ordering::Relaxed), 32);
        }
    }

    /// A job started from inside a task runs serially instead of deadlocking.
    #[test]
    fn nested_jobs_run_serially() {
        let team = Team::new(2);
        let total = AtomicUsize::new(0);
        team.run(8, &|_| {
            team.run(4, &|_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 32);
    }
}
