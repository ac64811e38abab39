//! The library's errors, one enum per area (config, data, weights and models, training,
//! attack), wrapped by the crate's [`Error`]. Every message names the file, setting or value
//! at fault and says what to do about it.
//!
//! A bad setting is a [`Setting`]: its name (the setting's name in `config.json` and in the
//! options, kebab-case: `lr`, `image-size`), the value and a hint, shown as
//! `lr 0: must be > 0`. The library never names command-line flags; the binary finds the
//! [`Setting`] with [`Error::setting`] and shows it as the flag (`--lr 0: must be > 0`).

use std::fmt;
use std::path::PathBuf;

/// A setting with a value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The setting's name, kebab-case (`image-size`): the flag without its dashes.
    pub name: String,
    /// The value given, as text (empty when the setting is missing).
    pub value: String,
    /// What is wrong and what to do.
    pub hint: String,
    /// Whether the hint continues the sentence (`window 64 is larger ...`) instead of
    /// following a colon.
    pub sentence: bool,
}

impl Setting {
    pub fn new(name: impl Into<String>, value: impl fmt::Display, hint: impl Into<String>) -> Self {
        Setting {
            name: name.into(),
            value: value.to_string(),
            hint: hint.into(),
            sentence: false,
        }
    }
    /// A setting whose hint reads on from its value: `window 64 is larger than the image`.
    pub fn sentence(
        name: impl Into<String>,
        value: impl fmt::Display,
        rest: impl Into<String>,
    ) -> Self {
        Setting {
            sentence: true,
            ..Setting::new(name, value, rest)
        }
    }
    /// The message with the setting written as `prefix` + name (`--` in the binary).
    pub fn render(&self, prefix: &str) -> String {
        let sep = if self.sentence { " " } else { ": " };
        if self.value.is_empty() {
            format!("{prefix}{}{sep}{}", self.name, self.hint)
        } else {
            format!("{prefix}{} {}{sep}{}", self.name, self.value, self.hint)
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(""))
    }
}

/// Configuration: settings, presets, config files.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting's value is out of range or malformed.
    #[error("{0}")]
    Invalid(Setting),
    /// Settings that do not fit together, or a missing one.
    #[error("{0}")]
    Conflict(String),
}

/// Data sets, splits, images and masks.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A data setting (`data`, `classes`, `split`, ...) that cannot be used.
    #[error("{0}")]
    Invalid(Setting),
    /// The data themselves are unusable.
    #[error("{0}")]
    Unusable(String),
}

/// Models: architectures, shapes, layers, heads.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model setting that cannot be used.
    #[error("{0}")]
    Invalid(Setting),
    /// The model cannot do what was asked.
    #[error("{0}")]
    Unsupported(String),
}

/// Training runs.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error("training stopped: the loss became {value} in phase {phase} epoch {epoch} step {step}; the last good checkpoint is kept in {} (try a lower lr)", dir.display())]
    LossNotFinite {
        value: f64,
        phase: String,
        epoch: usize,
        step: usize,
        dir: PathBuf,
    },
    /// Anything else that stops a run.
    #[error("{0}")]
    Failed(String),
}

/// Adversarial attacks.
#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    /// An attack setting that cannot be used.
    #[error("{0}")]
    Invalid(Setting),
    /// The inputs do not fit the attack (labels, targets).
    #[error("{0}")]
    Inputs(String),
}

/// Errors raised by robustlens.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor computation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),

    /// Reading or writing a file failed. (The I/O error is part of the message, not a
    /// separate `source`, so that error chains do not print it twice.)
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error(transparent)]
    Data(#[from] DataError),

    #[error(transparent)]
    Model(#[from] ModelError),

    #[error(transparent)]
    Training(#[from] TrainingError),

    #[error(transparent)]
    Attack(#[from] AttackError),

    /// A weights file could not be used.
    #[error("weights {}: {msg}", path.display())]
    Weights { path: PathBuf, msg: String },

    /// An image could not be read or is unusable.
    #[error("image {}: {msg}", path.display())]
    Image { path: PathBuf, msg: String },

    /// A device the build does not support, or that cannot be opened.
    #[error("{0}")]
    Device(String),

    /// Downloading from the Hugging Face hub failed.
    #[error("{0}")]
    Hub(String),

    /// A JSON file could not be parsed or written.
    #[error("{}: {msg}", path.display())]
    Json { path: PathBuf, msg: String },

    /// The user stopped the work (Ctrl-C, SIGTERM) after a checkpoint was written. `resume`:
    /// the run folder to resume (otherwise the same command continues where it stopped).
    #[error("interrupted: {}", match resume {
        Some(d) => format!("checkpoint written to {}; resume that run folder to continue", d.display()),
        None => "checkpoints written; run the same command again to continue".to_string(),
    })]
    Interrupted { resume: Option<PathBuf> },

    /// The cluster scheduler (Slurm) refused or failed a request.
    #[error("{0}")]
    Scheduler(String),

    /// A bug in robustlens, not in its input.
    #[error("internal error: {0} (this is a bug in robustlens; please report it)")]
    Internal(String),
}

/// Shorthand for `Result<T, robustlens::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }
    pub(crate) fn weights(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Weights {
            path: path.into(),
            msg: msg.into(),
        }
    }
    /// A configuration setting with a bad value.
    pub(crate) fn config(
        name: impl Into<String>,
        value: impl fmt::Display,
        hint: impl Into<String>,
    ) -> Self {
        Error::Config(ConfigError::Invalid(Setting::new(name, value, hint)))
    }
    /// Settings that do not fit together, or a missing one.
    pub(crate) fn conflict(msg: impl Into<String>) -> Self {
        Error::Config(ConfigError::Conflict(msg.into()))
    }
    /// A data setting with a bad value.
    pub(crate) fn data_setting(
        name: impl Into<String>,
        value: impl fmt::Display,
        hint: impl Into<String>,
    ) -> Self {
        Error::Data(DataError::Invalid(Setting::new(name, value, hint)))
    }
    /// Data that cannot be used.
    pub(crate) fn data(msg: impl Into<String>) -> Self {
        Error::Data(DataError::Unusable(msg.into()))
    }
    /// A model setting with a bad value.
    pub(crate) fn model_setting(
        name: impl Into<String>,
        value: impl fmt::Display,
        hint: impl Into<String>,
    ) -> Self {
        Error::Model(ModelError::Invalid(Setting::new(name, value, hint)))
    }
    /// A model that cannot do what was asked.
    pub(crate) fn model(msg: impl Into<String>) -> Self {
        Error::Model(ModelError::Unsupported(msg.into()))
    }
    /// A training failure.
    pub(crate) fn training(msg: impl Into<String>) -> Self {
        Error::Training(TrainingError::Failed(msg.into()))
    }
    /// An attack setting with a bad value.
    pub(crate) fn attack_setting(
        name: impl Into<String>,
        value: impl fmt::Display,
        hint: impl Into<String>,
    ) -> Self {
        Error::Attack(AttackError::Invalid(Setting::new(name, value, hint)))
    }
    /// Attack inputs that do not fit.
    pub(crate) fn attack(msg: impl Into<String>) -> Self {
        Error::Attack(AttackError::Inputs(msg.into()))
    }
    /// A scheduler failure (what was run, and what it said).
    pub(crate) fn scheduler(msg: impl Into<String>) -> Self {
        Error::Scheduler(msg.into())
    }
    /// A bug, not bad input.
    pub(crate) fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }

    /// The bad setting behind this error, if it is one (the binary shows it as its flag).
    pub fn setting(&self) -> Option<&Setting> {
        match self {
            Error::Config(ConfigError::Invalid(s))
            | Error::Data(DataError::Invalid(s))
            | Error::Model(ModelError::Invalid(s))
            | Error::Attack(AttackError::Invalid(s)) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_render_with_and_without_the_flag_prefix() {
        let e = Error::config("lr", 0, "must be > 0");
        assert_eq!(e.to_string(), "lr 0: must be > 0");
        assert_eq!(e.setting().unwrap().render("--"), "--lr 0: must be > 0");
        let e = Error::data_setting("classes", "", "name at least one class");
        assert_eq!(e.to_string(), "classes: name at least one class");
        assert!(Error::data("broken").setting().is_none());
    }
}
