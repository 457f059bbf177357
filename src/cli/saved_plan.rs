//! The saved plan file of `plan --out FILE` and `run --plan FILE`: writing it from a plan's report, and
//! the checks that refuse a file before any AWS or Azure call (format, tool version, configuration, age).
//! What `run` does with an accepted file is [`crate::reconcile::saved`].

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::{Config, RegionSelection, Shard};
use crate::output::report::Report;
use crate::reconcile::saved::{Provenance, SavedAccount, SavedPlan, FORMAT};

/// Why a saved plan cannot be written or used (exit 2, nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    /// The file cannot be written.
    #[error("cannot write the saved plan {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file cannot be read.
    #[error("cannot read the saved plan {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a saved plan this version reads.
    #[error("{path} is not a saved plan of arc-onboard {version} ({problem}); make it with `arc-onboard plan --out {path}`; nothing was changed")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// This version.
        version: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// It was made from another configuration.
    #[error("the saved plan {path} was made from another configuration (its fingerprint {saved}, this configuration's {current}); run `arc-onboard plan --out {path}` with this configuration; nothing was changed")]
    OtherConfig {
        /// The file.
        path: PathBuf,
        /// The file's fingerprint.
        saved: String,
        /// This configuration's.
        current: String,
    },
    /// It is older than `--plan-max-age`.
    #[error("the saved plan {path} was made {age} ago (at {created_at}), more than --plan-max-age {max}; run `arc-onboard plan --out {path}` again; nothing was changed")]
    TooOld {
        /// The file.
        path: PathBuf,
        /// Its `created_at`.
        created_at: String,
        /// How old it is.
        age: String,
        /// The limit.
        max: String,
    },
}

/// `sha256:<hex>` of the effective configuration (comments, spacing and key order do not count; secrets
/// are never part of it).
pub(super) fn fingerprint(config: &Config) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(config.to_effective_toml("-").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn regions(config: &Config) -> Vec<String> {
    match &config.aws.regions {
        RegionSelection::List(list) => list.clone(),
        RegionSelection::AllEnabled => vec!["all-enabled".into()],
    }
}

/// Writes the plan of `report` (a `plan` report) to `path`, through a temporary file beside it.
pub(super) fn write(
    path: &Path,
    report: &Report,
    config: &Config,
    shard: Option<Shard>,
) -> Result<SavedPlan, SavedPlanError> {
    let from = Provenance {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: report.started_at.clone(),
        config_fingerprint: fingerprint(config),
        shard: shard.map(|s| s.to_string()),
        regions: regions(config),
    };
    let accounts = report
        .accounts
        .iter()
        .map(|a| SavedAccount {
            account_id: a.account_id.clone(),
            actions: a.actions.iter().map(|x| x.to_string()).collect(),
            ssm_role_steps: a.ssm_role_steps.clone(),
            resource_group: a.resource_group.clone(),
            batches: a.batches.clone(),
        })
        .collect();
    let saved = SavedPlan::new(from, accounts, &report.instances);
    let text = serde_json::to_string_pretty(&saved).expect("a saved plan serializes");
    let err = |source| SavedPlanError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{text}\n")).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(saved)
}

/// Reads `path` and refuses it unless it is a saved plan of this version, made from `config`, at most
/// `max_age` old (and not from the future beyond a minute of clock skew).
pub(super) fn load(
    path: &Path,
    config: &Config,
    max_age: Duration,
) -> Result<SavedPlan, SavedPlanError> {
    let text = std::fs::read_to_string(path).map_err(|source| SavedPlanError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |problem: String| SavedPlanError::Invalid {
        path: path.to_path_buf(),
        version: env!("CARGO_PKG_VERSION"),
        problem,
    };
    // The format first: a file of another format is refused for that, whatever else it holds.
    #[derive(serde::Deserialize)]
    struct Head {
        format: u32,
    }
    let head: Head =
        serde_json::from_str(&text).map_err(|e| invalid(format!("unreadable: {e}")))?;
    if head.format != FORMAT {
        return Err(invalid(format!(
            "format {}, expected {FORMAT}: an older file keeps no install batches",
            head.format
        )));
    }
    let saved: SavedPlan =
        serde_json::from_str(&text).map_err(|e| invalid(format!("unreadable: {e}")))?;
    if saved.from.tool_version != env!("CARGO_PKG_VERSION") {
        return Err(invalid(format!(
            "made by arc-onboard {}",
            saved.from.tool_version
        )));
    }
    let current = fingerprint(config);
    if saved.from.config_fingerprint != current {
        return Err(SavedPlanError::OtherConfig {
            path: path.to_path_buf(),
            saved: saved.from.config_fingerprint,
            current,
        });
    }
    let created = humantime::parse_rfc3339(&saved.from.created_at)
        .map_err(|e| invalid(format!("created_at {:?}: {e}", saved.from.created_at)))?;
    let now = SystemTime::now();
    if created > now + Duration::from_secs(60) {
        return Err(invalid(format!(
            "created_at {} is in the future",
            saved.from.created_at
        )));
    }
    let age = now.duration_since(created).unwrap_or_default();
    if age > max_age {
        return Err(SavedPlanError::TooOld {
            path: path.to_path_buf(),
            created_at: saved.from.created_at,
            age: humantime::format_duration(Duration::from_secs(age.as_secs())).to_string(),
            max: humantime::format_duration(max_age).to_string(),
        });
    }
    Ok(saved)
}

/// The shard the saved plan was made with.
pub(super) fn shard_of(path: &Path, saved: &SavedPlan) -> Result<Option<Shard>, SavedPlanError> {
    saved
        .from
        .shard
        .as_deref()
        .map(|s| {
            s.parse().map_err(|e| SavedPlanError::Invalid {
                path: path.to_path_buf(),
                version: env!("CARGO_PKG_VERSION"),
                problem: format!("shard: {e}"),
            })
        })
        .transpose()
}
