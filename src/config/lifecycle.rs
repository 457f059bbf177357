//! The `[lifecycle]` section: what happens to machines after onboarding (deletion of terminated
//! instances' machines, repair of broken agents).

use std::time::Duration;

use toml::Table;

use crate::config::duration::parse_duration;
use crate::config::validate::Validator;

/// The `[lifecycle]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// Delete our Arc machine when its instance is terminated or gone.
    pub delete_terminated: bool,
    /// Grace after the termination was first seen.
    pub delete_after: Duration,
    /// Reconnect Expired, long-Disconnected and cloned agents on running instances (`reconnect-agent`).
    pub repair: bool,
    /// How long an Arc machine must have been Disconnected (ARM `lastStatusChange`) before a repair.
    pub repair_after: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            delete_terminated: true,
            delete_after: Duration::from_secs(3_600),
            repair: false,
            repair_after: Duration::from_secs(86_400),
        }
    }
}

/// Every key of `[lifecycle]`.
pub(super) const KEYS: &[&str] = &[
    "delete_terminated",
    "delete_after",
    "repair",
    "repair_after",
];

impl Validator<'_> {
    /// `[lifecycle]`: booleans and durations (`0s` allowed: at once).
    pub(super) fn lifecycle(&mut self, t: &Table) -> LifecycleConfig {
        self.unknown_keys(t, "lifecycle", KEYS);
        let d = LifecycleConfig::default();
        LifecycleConfig {
            delete_terminated: self.bool(t, "lifecycle", "delete_terminated", d.delete_terminated),
            delete_after: self.grace(t, "delete_after", d.delete_after),
            repair: self.bool(t, "lifecycle", "repair", d.repair),
            repair_after: self.grace(t, "repair_after", d.repair_after),
        }
    }

    /// A `[lifecycle]` duration; unlike a schedule's interval it may be `0s`.
    fn grace(&mut self, t: &Table, key: &str, default: Duration) -> Duration {
        let Some(s) = self.string(t, "lifecycle", key) else {
            return default;
        };
        match parse_duration(s) {
            Ok(d) => d,
            Err(e) => {
                self.issue(format!("lifecycle.{key}"), e.to_string());
                default
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::Config;

    fn parse(lifecycle: &str) -> Result<Config, String> {
        let text = format!("[aws]\nregions = [\"us-east-1\"]\n[lifecycle]\n{lifecycle}\n");
        Config::parse(&text, Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn repair_is_off_by_default_and_waits_a_day() {
        let c = parse("").unwrap();
        assert!(!c.lifecycle.repair);
        assert_eq!(c.lifecycle.repair_after, Duration::from_secs(86_400));
        let c = parse("repair = true\nrepair_after = \"6 hours\"").unwrap();
        assert!(c.lifecycle.repair);
        assert_eq!(c.lifecycle.repair_after, Duration::from_secs(6 * 3_600));
    }

    #[test]
    fn bad_repair_keys_are_named() {
        let e = parse("repair = \"yes\"").unwrap_err();
        assert!(e.contains("lifecycle.repair: must be true or false"), "{e}");
        let e = parse("repair_after = \"soon\"").unwrap_err();
        assert!(e.contains("lifecycle.repair_after"), "{e}");
        let e = parse("repare = true").unwrap_err();
        assert!(e.contains("lifecycle.repare: unknown key"), "{e}");
    }
}
