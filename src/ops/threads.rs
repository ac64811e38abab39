//! Where the model's work runs: on one of rayon's threads.
//!
//! The kernels split each operation over rayon's global pool. Called from a thread outside
//! the pool (a program's main thread), every parallel operation hands its parts to the
//! pool's threads and puts the caller to sleep until they are done, then wakes it: a sleep
//! and a wake-up per convolution, BatchNorm, ReLU or product, hundreds per training step,
//! while the caller's core does nothing useful in between. Called from a pool thread, the
//! caller works on the first part itself and the other threads take the rest, with no
//! hand-off (measured, ResNet-18 at 64 px, batch 16, 2 threads: PGD-7 about 1.1x,
//! Integrated Gradients about 1.2x, one input-gradient pass or training step about 1.03x;
//! the README's eighth step of issue 23).

use std::sync::mpsc::{Receiver, TryRecvError};

/// Runs `f` on a thread of rayon's global pool (at once where the calling thread is one)
/// and returns its result; a panic in `f` is resumed on the caller.
///
/// The `robustlens` binary runs every command this way. A library user gets the same speed
/// by calling the models through it:
///
/// ```
/// let sum = robustlens::ops::on_pool_thread(|| 2 + 2);
/// assert_eq!(sum, 4);
/// ```
///
/// Inside `f`, a wait for something that needs the pool's threads (a value from a thread
/// that runs parallel work) must not block its thread: with one pool thread, that would
/// wait forever. [`recv_cooperatively`] is such a wait for a channel.
pub fn on_pool_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    // From outside the pool, `join` runs both closures on a pool thread and waits.
    rayon::join(f, || ()).0
}

/// The next value from `rx`, as `Receiver::recv` gives it, but on a pool thread without
/// blocking that thread: while nothing has arrived it runs the pool's pending work (the
/// sender's own parallel work among it), so the wait cannot hold up the value it waits for.
/// Elsewhere, a plain `recv`.
pub fn recv_cooperatively<T>(rx: &Receiver<T>) -> Option<T> {
    if rayon::current_thread_index().is_none() {
        return rx.recv().ok();
    }
    loop {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    // nothing to run: let the sender's threads have the core a moment
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::sync::mpsc::sync_channel;

    #[test]
    fn runs_on_a_pool_thread_and_returns() {
        // from outside any pool: the global pool's thread runs it
        assert!(rayon::current_thread_index().is_none());
        let idx = on_pool_thread(rayon::current_thread_index);
        assert!(idx.is_some());
        // on a pool thread already: runs there, in place
        let (outer, inner) = crate::ops::testing::on_threads(2, || {
            let me = std::thread::current().id();
            (me, on_pool_thread(|| std::thread::current().id()))
        });
        assert_eq!(outer, inner);
        let r = std::panic::catch_unwind(|| on_pool_thread(|| panic!("boom")));
        assert!(r.is_err());
    }

    /// A sender whose values need the pool's parallel work, and a receiver that holds the
    /// pool's only thread: a blocking `recv` there would wait forever.
    #[test]
    fn a_wait_on_the_only_pool_thread_lets_the_sender_run() {
        let pool = std::sync::Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap(),
        );
        let (tx, rx) = sync_channel(1);
        let sender_pool = pool.clone();
        let sender = std::thread::spawn(move || {
            for k in 0..4u64 {
                // a parallel sum, queued on the one-thread pool from outside it
                let v: u64 =
                    sender_pool.install(|| (0..1000u64).into_par_iter().map(|i| i * k).sum());
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        // the receiver on the pool's thread, watched from here with a time limit
        let (done_tx, done_rx) = sync_channel(1);
        std::thread::spawn(move || {
            let got: Vec<u64> =
                pool.install(move || std::iter::from_fn(|| recv_cooperatively(&rx)).collect());
            done_tx.send(got).unwrap();
        });
        let got = done_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the wait held the pool's only thread: the sender never ran");
        sender.join().unwrap();
        assert_eq!(got, [0, 499_500, 999_000, 1_498_500]);
        // off the pool, a plain wait
        let (tx, rx) = sync_channel(1);
        tx.send(7).unwrap();
        drop(tx);
        assert_eq!(recv_cooperatively(&rx), Some(7));
        assert_eq!(recv_cooperatively(&rx), None);
    }
}
