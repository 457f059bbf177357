//! EventBridge events as an SQS target delivers them (the body is the event JSON): which instance an
//! event names, and whether that instance is in scope.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::config::RegionSelection;

/// `detail-type` of EC2 state changes.
pub const STATE_CHANGE: &str = "EC2 Instance State-change Notification";
/// `detail-type` of tag changes (`aws.tag`).
pub const TAG_CHANGE: &str = "Tag Change on Resource";

/// What made an instance worth a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// It reached `running`.
    Running,
    /// Its tags changed.
    TagChange,
    /// It is `shutting-down` or `terminated`: its Arc machine, if ours, is deleted once
    /// `[lifecycle] delete_after` allows.
    Terminated,
}

/// An event about one EC2 instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEvent {
    /// The event's `account`.
    pub account: String,
    /// The event's `region`.
    pub region: String,
    /// The instance.
    pub instance_id: String,
    /// Which event.
    pub kind: EventKind,
}

/// A message body, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An event that names an instance to onboard (scope not checked yet).
    Instance(InstanceEvent),
    /// A well-formed event of another kind (another detail-type, another state, another resource type).
    Ignored(String),
    /// Not an EventBridge event, or one missing what its kind must carry.
    Malformed(String),
}

/// The result label of `arc_onboard_events_total{result}` for each outcome of a message.
pub mod result {
    /// What became of one queue message; a string (the `result` label) only at Prometheus.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum EventResult {
        /// In scope: the instance was recorded (and is being onboarded, or needs nothing).
        Accepted,
        /// Not an EventBridge event, or missing fields.
        Malformed,
        /// An event of another kind.
        Ignored,
        /// An account, region or instance out of scope (the tag filter or a terminated instance included).
        OutOfScope,
        /// Could not be handled now (AWS or the state file failed); left on the queue to be redelivered.
        Retry,
        /// In scope, but another `--shard`'s account: left on the queue for that shard's daemon.
        OtherShard,
        /// The account's member role cannot be assumed (access denied, no such role): deleted; the
        /// scheduled passes report the account and take the instance once the role works.
        AccountUnreachable,
    }

    impl EventResult {
        /// The metric label.
        pub fn as_str(self) -> &'static str {
            match self {
                EventResult::Accepted => "accepted",
                EventResult::Malformed => "malformed",
                EventResult::Ignored => "ignored",
                EventResult::OutOfScope => "out-of-scope",
                EventResult::Retry => "retry",
                EventResult::OtherShard => "other-shard",
                EventResult::AccountUnreachable => "account-unreachable",
            }
        }
    }

    /// See [`EventResult::Accepted`].
    pub const ACCEPTED: EventResult = EventResult::Accepted;
    /// See [`EventResult::Malformed`].
    pub const MALFORMED: EventResult = EventResult::Malformed;
    /// See [`EventResult::Ignored`].
    pub const IGNORED: EventResult = EventResult::Ignored;
    /// See [`EventResult::OutOfScope`].
    pub const OUT_OF_SCOPE: EventResult = EventResult::OutOfScope;
    /// See [`EventResult::Retry`].
    pub const RETRY: EventResult = EventResult::Retry;
    /// See [`EventResult::OtherShard`].
    pub const OTHER_SHARD: EventResult = EventResult::OtherShard;
    /// See [`EventResult::AccountUnreachable`].
    pub const ACCOUNT_UNREACHABLE: EventResult = EventResult::AccountUnreachable;
    /// Every result, exported at 0 from the start.
    pub const ALL: [EventResult; 7] = [
        ACCEPTED,
        MALFORMED,
        IGNORED,
        OUT_OF_SCOPE,
        RETRY,
        OTHER_SHARD,
        ACCOUNT_UNREACHABLE,
    ];
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_instance_id(s: &str) -> bool {
    s.strip_prefix("i-").is_some_and(|rest| {
        (1..=32).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// Reads a message body.
pub fn parse(body: &str) -> Parsed {
    let Ok(event) = serde_json::from_str::<Value>(body) else {
        return Parsed::Malformed("the body is not JSON".into());
    };
    let Some(event) = event.as_object() else {
        return Parsed::Malformed("the body is not a JSON object".into());
    };
    let text = |key: &str| event.get(key).and_then(Value::as_str);
    let Some(detail_type) = text("detail-type") else {
        return Parsed::Malformed("no detail-type (not an EventBridge event)".into());
    };
    let (Some(account), Some(region)) = (text("account"), text("region")) else {
        return Parsed::Malformed(format!("{detail_type}: no account or region"));
    };
    if !is_account_id(account) || !crate::config::is_region_name(region) {
        return Parsed::Malformed(format!(
            "{detail_type}: account {account:?} or region {region:?} is not valid"
        ));
    }
    let Some(detail) = event.get("detail").and_then(Value::as_object) else {
        return Parsed::Malformed(format!("{detail_type}: no detail object"));
    };
    let detail_text = |key: &str| detail.get(key).and_then(Value::as_str);
    let (instance_id, kind) = match detail_type {
        STATE_CHANGE => {
            let (Some(id), Some(state)) = (detail_text("instance-id"), detail_text("state")) else {
                return Parsed::Malformed(format!(
                    "{detail_type}: no detail.instance-id or detail.state"
                ));
            };
            let kind = match state {
                "running" => EventKind::Running,
                "shutting-down" | "terminated" => EventKind::Terminated,
                _ => {
                    return Parsed::Ignored(format!(
                        "{id} is {state}, not running, shutting-down or terminated"
                    ))
                }
            };
            (id.to_string(), kind)
        }
        TAG_CHANGE => {
            if detail_text("service") != Some("ec2")
                || detail_text("resource-type") != Some("instance")
            {
                return Parsed::Ignored(format!(
                    "tag change on {} {}, not an EC2 instance",
                    detail_text("service").unwrap_or("?"),
                    detail_text("resource-type").unwrap_or("?")
                ));
            }
            let arn = event
                .get("resources")
                .and_then(Value::as_array)
                .and_then(|r| r.first())
                .and_then(Value::as_str);
            let Some(id) = arn
                .and_then(|a| a.rsplit_once(":instance/"))
                .map(|(_, id)| id)
            else {
                return Parsed::Malformed(format!("{detail_type}: no instance ARN in resources"));
            };
            (id.to_string(), EventKind::TagChange)
        }
        other => return Parsed::Ignored(format!("detail-type {other:?}")),
    };
    if !is_instance_id(&instance_id) {
        return Parsed::Malformed(format!("{instance_id:?} is not an instance id"));
    }
    Parsed::Instance(InstanceEvent {
        account: account.to_string(),
        region: region.to_string(),
        instance_id,
        kind,
    })
}

/// Whether an event's account and region are in scope: `accounts` are the accounts the daemon handles
/// (the caller's, or with `[aws.accounts]` every account in scope of its shard: see
/// [`crate::daemon::event_accounts`]), `regions` the configured regions.
/// `Err` says why not.
pub fn in_scope(
    event: &InstanceEvent,
    accounts: &BTreeSet<String>,
    regions: &RegionSelection,
) -> Result<(), String> {
    if !accounts.contains(&event.account) {
        return Err(format!("account {} is not in scope", event.account));
    }
    match regions {
        RegionSelection::List(list) if !list.contains(&event.region) => Err(format!(
            "region {} is not among the configured regions",
            event.region
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(state: &str) -> String {
        json!({"version": "0", "id": "e1", "source": "aws.ec2", "detail-type": STATE_CHANGE,
               "account": "123456789012", "region": "us-east-1", "time": "2026-11-29T05:00:00Z",
               "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-0abc1234"],
               "detail": {"instance-id": "i-0abc1234", "state": state}})
        .to_string()
    }

    fn tag(service: &str, resource_type: &str) -> String {
        json!({"version": "0", "id": "e2", "source": "aws.tag", "detail-type": TAG_CHANGE,
               "account": "123456789012", "region": "eu-west-1",
               "resources": ["arn:aws:ec2:eu-west-1:123456789012:instance/i-0def5678"],
               "detail": {"changed-tag-keys": ["arc"], "service": service,
                          "resource-type": resource_type, "tags": {"arc": "onboard"}}})
        .to_string()
    }

    #[test]
    fn running_and_tag_change_events_name_their_instance() {
        assert_eq!(
            parse(&state("running")),
            Parsed::Instance(InstanceEvent {
                account: "123456789012".into(),
                region: "us-east-1".into(),
                instance_id: "i-0abc1234".into(),
                kind: EventKind::Running,
            })
        );
        assert_eq!(
            parse(&tag("ec2", "instance")),
            Parsed::Instance(InstanceEvent {
                account: "123456789012".into(),
                region: "eu-west-1".into(),
                instance_id: "i-0def5678".into(),
                kind: EventKind::TagChange,
            })
        );
    }

    #[test]
    fn terminating_and_terminated_events_name_their_instance() {
        for s in ["shutting-down", "terminated"] {
            let Parsed::Instance(ev) = parse(&state(s)) else {
                panic!("{s} is not read as an instance event")
            };
            assert_eq!(
                (ev.instance_id.as_str(), ev.kind),
                ("i-0abc1234", EventKind::Terminated)
            );
        }
    }

    #[test]
    fn other_states_kinds_and_resources_are_ignored() {
        for body in [
            state("pending"),
            state("stopped"),
            tag("ec2", "volume"),
            tag("s3", "bucket"),
            json!({"detail-type": "AWS API Call via CloudTrail", "account": "123456789012",
                   "region": "us-east-1", "detail": {}})
            .to_string(),
        ] {
            assert!(matches!(parse(&body), Parsed::Ignored(_)), "{body}");
        }
    }

    #[test]
    fn bodies_that_are_not_such_events_are_malformed() {
        for body in [
            "not json".to_string(),
            "[1, 2]".to_string(),
            json!({"hello": "world"}).to_string(),
            json!({"detail-type": STATE_CHANGE, "region": "us-east-1", "detail": {}}).to_string(),
            json!({"detail-type": STATE_CHANGE, "account": "1234", "region": "us-east-1",
                   "detail": {"instance-id": "i-1", "state": "running"}})
            .to_string(),
            json!({"detail-type": STATE_CHANGE, "account": "123456789012", "region": "us-east-1",
                   "detail": {"state": "running"}})
            .to_string(),
            json!({"detail-type": STATE_CHANGE, "account": "123456789012", "region": "us-east-1",
                   "detail": {"instance-id": "vol-1", "state": "running"}})
            .to_string(),
            json!({"detail-type": TAG_CHANGE, "account": "123456789012", "region": "us-east-1",
                   "detail": {"service": "ec2", "resource-type": "instance"}})
            .to_string(),
        ] {
            assert!(matches!(parse(&body), Parsed::Malformed(_)), "{body}");
        }
    }

    #[test]
    fn scope_is_the_accounts_and_the_configured_regions() {
        let Parsed::Instance(event) = parse(&state("running")) else {
            panic!()
        };
        let ours: BTreeSet<String> = ["123456789012".to_string()].into();
        let other: BTreeSet<String> = ["210987654321".to_string()].into();
        let east = RegionSelection::List(vec!["us-east-1".into()]);
        let west = RegionSelection::List(vec!["us-west-2".into()]);
        assert_eq!(in_scope(&event, &ours, &east), Ok(()));
        assert_eq!(
            in_scope(&event, &ours, &RegionSelection::AllEnabled),
            Ok(())
        );
        assert!(in_scope(&event, &other, &east)
            .unwrap_err()
            .contains("account"));
        assert!(in_scope(&event, &ours, &west)
            .unwrap_err()
            .contains("region"));
    }
}
