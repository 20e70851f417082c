//! The settings a master runs with, their defaults and their bounds.

use crate::Error;
use std::fmt;
use std::time::Duration;

/// Everything the master needs to know before it forks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) instances: usize,
    pub(crate) respawn_limit: u32,
    pub(crate) respawn_interval: Duration,
    pub(crate) shutdown_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            instances: 1,
            respawn_limit: 3,
            respawn_interval: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Rejects the settings the builder lets through but the master cannot run with.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.instances == 0 {
            return Err(Error::InvalidConfig {
                setting: "instances",
                expected: "at least 1",
            });
        }
        if self.respawn_interval.is_zero() {
            return Err(Error::InvalidConfig {
                setting: "respawn_interval",
                expected: "longer than zero",
            });
        }
        if self.shutdown_timeout.is_zero() {
            return Err(Error::InvalidConfig {
                setting: "shutdown_timeout",
                expected: "longer than zero",
            });
        }
        Ok(())
    }
}

/// The `key=value` form used in the master's `started` log line.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "instances={} respawn_limit={} respawn_interval={:?} shutdown_timeout={:?}",
            self.instances, self.respawn_limit, self.respawn_interval, self.shutdown_timeout
        )
    }
}
