//! Learning-rate schedules: `step:E:F` (x F after epoch E, as StepLR / MultiStepLR with one
//! milestone), `plateau:P:F` (x F when the monitored loss has not improved for P epochs, as
//! ReduceLROnPlateau with its default threshold 1e-4 relative), or `none`.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// A schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    None,
    Step { epoch: usize, factor: f64 },
    Plateau { patience: usize, factor: f64 },
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Schedule> {
        let t = s.trim().to_ascii_lowercase();
        if t == "none" || t.is_empty() {
            return Ok(Schedule::None);
        }
        let parts: Vec<&str> = t.split(':').collect();
        let bad = || {
            Error::arg(format!("--schedule {s}: use step:EPOCH:FACTOR (e.g. step:15:0.1), plateau:PATIENCE:FACTOR (e.g. plateau:5:0.1) or none"))
        };
        if parts.len() != 3 {
            return Err(bad());
        }
        let n: usize = parts[1].parse().map_err(|_| bad())?;
        let f: f64 = parts[2].parse().map_err(|_| bad())?;
        if !(f > 0.0 && f <= 1.0) {
            return Err(Error::arg(format!(
                "--schedule {s}: the factor must be in (0, 1]"
            )));
        }
        match parts[0] {
            "step" => Ok(Schedule::Step {
                epoch: n,
                factor: f,
            }),
            "plateau" => Ok(Schedule::Plateau {
                patience: n,
                factor: f,
            }),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::None => write!(f, "none"),
            Schedule::Step { epoch, factor } => write!(f, "step:{epoch}:{factor}"),
            Schedule::Plateau { patience, factor } => write!(f, "plateau:{patience}:{factor}"),
        }
    }
}

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
