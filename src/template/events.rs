//! `template events`: CloudFormation for event-driven onboarding.
//!
//! Two documents, chosen with `--forwarder`:
//! - the orchestrator's stack (default), in the queue's region of the orchestrator account: the SQS queue
//!   (with a dead-letter queue), two rules on the default event bus (an instance entering `running`; a tag
//!   change on an EC2 instance) that target it, and the queue policy letting exactly those rules send. The
//!   rules name no account, so with `[aws.accounts]` (source `list` or `organization`) they also match the
//!   events member accounts forward, and the stack adds the bus policy that lets those accounts
//!   `events:PutEvents` (`aws:PrincipalOrgID` for an organization, the listed accounts for `list`);
//!   `--organization-id` adds the organization's policy without a configuration too. Both queues state
//!   their `DeletionPolicy` and `UpdateReplacePolicy` (`Delete`: they go with the stack).
//! - the forwarder (`--forwarder`), deployed as a StackSet in the member accounts and regions, and as a
//!   stack in the orchestrator account's other regions: the same two rules, targeting the orchestrator's
//!   default event bus through a role EventBridge assumes.
//!
//! One rule per event kind keeps each pattern a plain match (no `$or`) and lets the queue policy name
//! both rules as `aws:SourceArn`.

use serde_json::{json, Map, Value};

use super::{QueueRef, TemplateArgs, TemplateError};
use crate::config::{AccountSource, Config};

/// Queue name without `[events]` in the configuration.
pub const DEFAULT_QUEUE_NAME: &str = "arc-onboard-events";

/// The event pattern of an instance entering `running`.
pub fn running_pattern() -> Value {
    json!({
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Instance State-change Notification"],
        "detail": {"state": ["running"]}
    })
}

/// The event pattern of a tag change on an EC2 instance.
pub fn tag_change_pattern() -> Value {
    json!({
        "source": ["aws.tag"],
        "detail-type": ["Tag Change on Resource"],
        "detail": {"service": ["ec2"], "resource-type": ["instance"]}
    })
}

/// The events template: the orchestrator's stack, or the forwarder with `--forwarder`.
pub fn template(config: Option<&Config>, args: &TemplateArgs) -> Result<Value, TemplateError> {
    let queue = match config.and_then(|c| c.events.as_ref()) {
        Some(e) => {
            Some(
                QueueRef::parse(&e.queue_url).map_err(|problem| TemplateError::Config {
                    key: "events.queue_url",
                    problem,
                })?,
            )
        }
        None => None,
    };
    if args.forwarder {
        Ok(forwarder(queue.as_ref(), args))
    } else {
        Ok(orchestrator(config, queue.as_ref(), args))
    }
}

fn rule(description: &str, pattern: Value, target: Value) -> Value {
    json!({
        "Type": "AWS::Events::Rule",
        "Properties": {
            "Description": description,
            "EventBusName": "default",
            "EventPattern": pattern,
            "State": "ENABLED",
            "Targets": [target]
        }
    })
}

/// `DeletionPolicy` and `UpdateReplacePolicy` of both queues, stated rather than left to CloudFormation's
/// default: they go with the stack. They hold only transient events (the schedules are the safety net), and
/// a retained queue would block redeploying the stack under the same `QueueName`.
const QUEUE_RETENTION: &str = "Delete";

const RUNNING_DESCRIPTION: &str = "arc-onboard: an EC2 instance entered the running state";
const TAG_DESCRIPTION: &str = "arc-onboard: the tags of an EC2 instance changed";

fn orchestrator(config: Option<&Config>, queue: Option<&QueueRef>, args: &TemplateArgs) -> Value {
    let queue_name = queue.map_or(DEFAULT_QUEUE_NAME, |q| q.name.as_str());
    let mut parameters = Map::new();
    parameters.insert(
        "QueueName".into(),
        json!({
            "Type": "String",
            "Description": "Name of the queue arc-onboard's [events] queue_url points at",
            "AllowedPattern": "^[A-Za-z0-9_-]{1,76}$",
            "Default": queue_name
        }),
    );
    let queue_target =
        json!({"Id": "arc-onboard-queue", "Arn": {"Fn::GetAtt": ["EventQueue", "Arn"]}});
    let mut resources = Map::new();
    resources.insert(
        "DeadLetterQueue".into(),
        json!({
            "Type": "AWS::SQS::Queue",
            "DeletionPolicy": QUEUE_RETENTION,
            "UpdateReplacePolicy": QUEUE_RETENTION,
            "Properties": {
                "QueueName": {"Fn::Join": ["", [{"Ref": "QueueName"}, "-dlq"]]},
                "MessageRetentionPeriod": 1_209_600,
                "SqsManagedSseEnabled": true
            }
        }),
    );
    resources.insert(
        "EventQueue".into(),
        json!({
            "Type": "AWS::SQS::Queue",
            "DeletionPolicy": QUEUE_RETENTION,
            "UpdateReplacePolicy": QUEUE_RETENTION,
            "Properties": {
                "QueueName": {"Ref": "QueueName"},
                "MessageRetentionPeriod": 345_600,
                "VisibilityTimeout": 120,
                "SqsManagedSseEnabled": true,
                "RedrivePolicy": {
                    "deadLetterTargetArn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
                    "maxReceiveCount": 5
                }
            }
        }),
    );
    resources.insert(
        "InstanceRunningRule".into(),
        rule(RUNNING_DESCRIPTION, running_pattern(), queue_target.clone()),
    );
    resources.insert(
        "InstanceTagChangeRule".into(),
        rule(TAG_DESCRIPTION, tag_change_pattern(), queue_target),
    );
    resources.insert(
        "EventQueuePolicy".into(),
        json!({
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [{"Ref": "EventQueue"}],
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Sid": "EventBridgeSendsInstanceEvents",
                        "Effect": "Allow",
                        "Principal": {"Service": "events.amazonaws.com"},
                        "Action": "sqs:SendMessage",
                        "Resource": {"Fn::GetAtt": ["EventQueue", "Arn"]},
                        "Condition": {"ArnEquals": {"aws:SourceArn": [
                            {"Fn::GetAtt": ["InstanceRunningRule", "Arn"]},
                            {"Fn::GetAtt": ["InstanceTagChangeRule", "Arn"]}
                        ]}}
                    }]
                }
            }
        }),
    );

    let accounts = config.map(|c| &c.aws.accounts);
    let bus_arn = json!({"Fn::Join": ["", [
        "arn:", {"Ref": "AWS::Partition"}, ":events:", {"Ref": "AWS::Region"}, ":",
        {"Ref": "AWS::AccountId"}, ":event-bus/default"
    ]]});
    // `--organization-id` alone (a member account's events, no configuration at hand) is as good as
    // `source = "organization"`: the organization's accounts may forward.
    let organization = args.organization_id.is_some()
        || accounts.is_some_and(|a| a.source == AccountSource::Organization);
    if organization {
        let mut p = json!({
            "Type": "String",
            "Description": "The AWS Organizations id whose accounts may forward instance events here",
            "AllowedPattern": "^o-[a-z0-9]{10,32}$"
        });
        if let Some(org) = &args.organization_id {
            p["Default"] = json!(org);
        }
        parameters.insert("OrganizationId".into(), p);
        resources.insert(
            "OrganizationPutsEvents".into(),
            bus_policy(
                "ArcOnboardOrganizationForwardsInstanceEvents",
                json!("*"),
                bus_arn.clone(),
                Some(json!({"StringEquals": {"aws:PrincipalOrgID": {"Ref": "OrganizationId"}}})),
            ),
        );
    }
    if let Some(ids) = accounts
        .filter(|a| a.source == AccountSource::List)
        .map(|a| &a.ids)
        .filter(|ids| !ids.is_empty())
    {
        let principals: Vec<Value> = ids
            .iter()
            .map(|id| {
                json!({"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":iam::", id, ":root"]]})
            })
            .collect();
        resources.insert(
            "MemberAccountsPutEvents".into(),
            bus_policy(
                "ArcOnboardMembersForwardInstanceEvents",
                json!({"AWS": principals}),
                bus_arn,
                None,
            ),
        );
    }

    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "arc-onboard event-driven onboarding: EventBridge rules for EC2 instances entering running and EC2 instance tag changes, delivered to an SQS queue with a dead-letter queue (generated by `arc-onboard template events`)",
        "Parameters": parameters,
        "Resources": resources,
        "Outputs": {
            "QueueUrl": {
                "Description": "[events] queue_url of arc-onboard",
                "Value": {"Ref": "EventQueue"}
            },
            "QueueArn": {"Value": {"Fn::GetAtt": ["EventQueue", "Arn"]}},
            "DeadLetterQueueArn": {"Value": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}},
            "EventBusArn": {
                "Description": "Where the forwarder template sends member accounts' events",
                "Value": {"Fn::Join": ["", [
                    "arn:", {"Ref": "AWS::Partition"}, ":events:", {"Ref": "AWS::Region"}, ":",
                    {"Ref": "AWS::AccountId"}, ":event-bus/default"
                ]]}
            }
        }
    })
}

fn bus_policy(id: &str, principal: Value, bus_arn: Value, condition: Option<Value>) -> Value {
    let mut statement = json!({
        "Sid": id,
        "Effect": "Allow",
        "Principal": principal,
        "Action": "events:PutEvents",
        "Resource": bus_arn
    });
    if let Some(c) = condition {
        statement["Condition"] = c;
    }
    json!({
        "Type": "AWS::Events::EventBusPolicy",
        "Properties": {
            "EventBusName": "default",
            "StatementId": id,
            "Statement": statement
        }
    })
}

fn forwarder(queue: Option<&QueueRef>, args: &TemplateArgs) -> Value {
    let mut bus = json!({
        "Type": "String",
        "Description": "The orchestrator's default event bus (the EventBusArn output of its events stack)",
        "AllowedPattern": "^arn:aws[a-z-]*:events:[a-z0-9-]+:[0-9]{12}:event-bus/default$"
    });
    let account = args
        .orchestrator_account
        .as_deref()
        .or(queue.map(|q| q.account.as_str()));
    if let (Some(account), Some(region)) = (account, queue.and_then(|q| q.region.as_deref())) {
        bus["Default"] = json!(format!(
            "arn:{}:events:{region}:{account}:event-bus/default",
            super::Partition::of_region(region).as_str()
        ));
    }
    let target = json!({
        "Id": "arc-onboard-orchestrator-bus",
        "Arn": {"Ref": "OrchestratorEventBusArn"},
        "RoleArn": {"Fn::GetAtt": ["ForwardRole", "Arn"]}
    });
    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "arc-onboard event forwarder: sends this account's and region's EC2 instance events (running, tag changes) to the arc-onboard orchestrator's event bus (generated by `arc-onboard template events --forwarder`)",
        "Parameters": {"OrchestratorEventBusArn": bus},
        "Resources": {
            "ForwardRole": {
                "Type": "AWS::IAM::Role",
                "Properties": {
                    "Description": "Lets EventBridge forward EC2 instance events to the arc-onboard orchestrator",
                    "AssumeRolePolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [{
                            "Effect": "Allow",
                            "Principal": {"Service": "events.amazonaws.com"},
                            "Action": "sts:AssumeRole"
                        }]
                    },
                    "Policies": [{
                        "PolicyName": "arc-onboard-forward-events",
                        "PolicyDocument": {
                            "Version": "2012-10-17",
                            "Statement": [{
                                "Effect": "Allow",
                                "Action": "events:PutEvents",
                                "Resource": {"Ref": "OrchestratorEventBusArn"}
                            }]
                        }
                    }]
                }
            },
            "InstanceRunningRule": rule(RUNNING_DESCRIPTION, running_pattern(), target.clone()),
            "InstanceTagChangeRule": rule(TAG_DESCRIPTION, tag_change_pattern(), target)
        }
    })
}
