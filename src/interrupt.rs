//! Ctrl-C and SIGTERM, handled one way everywhere: the first signal asks the work to stop at
//! the next safe point (the trainer finishes its step and writes a checkpoint); a second one
//! exits at once with status 130. A Slurm time limit or preemption (SIGTERM, then SIGKILL)
//! is handled like Ctrl-C.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// A stop request, shared between the signal handler and the work.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<AtomicBool>);

static INSTALLED: OnceLock<Interrupt> = OnceLock::new();

impl Interrupt {
    /// A flag no signal sets (library use, tests).
    pub fn new() -> Self {
        Self::default()
    }

    /// The process's flag, set by Ctrl-C or SIGTERM; `message` is printed on the first
    /// signal. The handler is installed once; later calls return the same flag.
    pub fn install(message: &'static str) -> Self {
        INSTALLED
            .get_or_init(|| {
                let flag = Interrupt::new();
                let f = flag.clone();
                let _ = ctrlc::set_handler(move || {
                    if f.0.swap(true, Ordering::SeqCst) {
                        eprintln!("second interrupt: stopping now");
                        std::process::exit(130);
                    }
                    eprintln!("{message}");
                });
                flag
            })
            .clone()
    }

    /// Whether a stop was requested.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Requests a stop (as a signal would).
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn clones_share_the_flag() {
        let a = Interrupt::new();
        let b = a.clone();
        assert!(!b.is_set());
        a.trigger();
        assert!(b.is_set());
    }
}
