//! Learning-rate schedules: `step:E:F` (x F after epoch E, as StepLR / MultiStepLR with one
//! milestone), `plateau:P:F` (x F when the monitored loss has not improved for P epochs, as
//! ReduceLROnPlateau with its default threshold 1e-4 relative), or `none`.

use serde::{Deserialize, Serialize};

pub use crate::config::Schedule;

/// The schedule's running state (saved with the run, so a resume continues it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    pub lr: f64,
    pub best: f64,
    pub bad_epochs: usize,
}

impl ScheduleState {
    pub fn new(lr: f64) -> Self {
        ScheduleState {
            lr,
            best: f64::MAX,
            bad_epochs: 0,
        }
    }

    /// Called after epoch `epoch` (1-based) with the monitored loss; returns the next lr.
    pub fn after_epoch(&mut self, sched: &Schedule, epoch: usize, loss: f64) -> f64 {
        match sched {
            Schedule::None => {}
            Schedule::Step { epoch: e, factor } => {
                if epoch == *e {
                    self.lr *= factor;
                }
            }
            Schedule::Plateau { patience, factor } => {
                if loss < self.best * (1.0 - 1e-4) {
                    self.best = loss;
                    self.bad_epochs = 0;
                } else {
                    self.bad_epochs += 1;
                    if self.bad_epochs > *patience {
                        self.lr *= factor;
                        self.bad_epochs = 0;
                    }
                }
            }
        }
        self.lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn schedules() {
        assert_eq!(
            Schedule::parse("step:15:0.1").unwrap(),
            Schedule::Step {
                epoch: 15,
                factor: 0.1
            }
        );
        assert!(Schedule::parse("cosine").is_err());
        assert!(Schedule::parse("step:3:2").is_err());
        let s = Schedule::parse("step:2:0.1").unwrap();
        let mut st = ScheduleState::new(1.0);
        assert_eq!(st.after_epoch(&s, 1, 0.0), 1.0);
        assert!((st.after_epoch(&s, 2, 0.0) - 0.1).abs() < 1e-12);
        let p = Schedule::parse("plateau:1:0.5").unwrap();
        let mut st = ScheduleState::new(1.0);
        st.after_epoch(&p, 1, 1.0);
        st.after_epoch(&p, 2, 1.0); // 1 bad epoch: patience not exceeded
        assert_eq!(st.lr, 1.0);
        st.after_epoch(&p, 3, 1.0); // 2 bad epochs > patience 1
        assert_eq!(st.lr, 0.5);
        st.after_epoch(&p, 4, 0.5);
        assert_eq!(st.lr, 0.5);
    }
}
