//! The accounts port: who the caller is, the organization's accounts, and entering an account; and the
//! AWS ports of one entered account. The SDK adapter is `adapters::organizations`; the fake is in the test
//! kit (`fake::accounts`).

use std::future::Future;

use crate::model::{ApiCounts, AwsError};
use crate::ports::{ApiCounter, Ec2, Iam, Ssm, Sts};

/// Who the credentials are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// 12-digit account id.
    pub account_id: String,
    /// `aws`, `aws-us-gov`, `aws-cn`: from the caller's ARN, for the member roles' ARNs.
    pub partition: String,
}

impl Caller {
    /// From `sts:GetCallerIdentity`'s account and ARN (`arn:PARTITION:...`; `aws` when unreadable).
    pub fn from_arn(account_id: &str, arn: Option<&str>) -> Caller {
        let partition = arn
            .and_then(|a| a.split(':').nth(1))
            .filter(|p| !p.is_empty())
            .unwrap_or("aws");
        Caller {
            account_id: account_id.to_string(),
            partition: partition.to_string(),
        }
    }
}

/// An account as Organizations lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgAccount {
    /// 12-digit id.
    pub id: String,
    /// Only [`AccountStatus::Active`] accounts are handled.
    pub status: AccountStatus,
}

impl OrgAccount {
    /// Whether the account is handled.
    pub fn is_active(&self) -> bool {
        self.status == AccountStatus::Active
    }
}

/// An account's state as Organizations reports it (`State`, or the older `Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountStatus {
    /// `ACTIVE`: handled.
    Active,
    /// `SUSPENDED`.
    Suspended,
    /// `PENDING_ACTIVATION`.
    PendingActivation,
    /// `PENDING_CLOSURE`.
    PendingClosure,
    /// `CLOSED`.
    Closed,
    /// A state this version does not know (or none), as given.
    Other(String),
}

impl AccountStatus {
    /// From Organizations' name for it (any case).
    pub fn parse(s: &str) -> AccountStatus {
        match s.to_ascii_uppercase().as_str() {
            "ACTIVE" => AccountStatus::Active,
            "SUSPENDED" => AccountStatus::Suspended,
            "PENDING_ACTIVATION" => AccountStatus::PendingActivation,
            "PENDING_CLOSURE" => AccountStatus::PendingClosure,
            "CLOSED" => AccountStatus::Closed,
            _ => AccountStatus::Other(s.to_string()),
        }
    }

    /// Organizations' name for it.
    pub fn as_str(&self) -> &str {
        match self {
            AccountStatus::Active => "ACTIVE",
            AccountStatus::Suspended => "SUSPENDED",
            AccountStatus::PendingActivation => "PENDING_ACTIVATION",
            AccountStatus::PendingClosure => "PENDING_CLOSURE",
            AccountStatus::Closed => "CLOSED",
            AccountStatus::Other(s) => s,
        }
    }
}

/// STS of an account whose id is already known (the caller's, or the one whose role was assumed): the
/// pass asks it for the account id and gets it without a call.
#[derive(Debug, Clone)]
pub struct KnownAccount(pub String);

impl Sts for KnownAccount {
    async fn account_id(&self) -> Result<String, AwsError> {
        Ok(self.0.clone())
    }
}

/// The AWS ports of one entered account, owned.
pub struct AccountClients<E, I, S> {
    /// The account.
    pub sts: KnownAccount,
    /// EC2 (one client per region).
    pub ec2: E,
    /// IAM.
    pub iam: I,
    /// SSM (one client per region).
    pub ssm: S,
    /// Counts the calls of these ports.
    pub counter: ApiCounter,
}

/// The ports [`Accounts::enter`] hands out.
pub type Entered<X> =
    AccountClients<<X as Accounts>::Ec2, <X as Accounts>::Iam, <X as Accounts>::Ssm>;

/// The accounts port: who the caller is, the organization's accounts, and entering an account.
pub trait Accounts: Send + Sync {
    /// EC2 of an entered account.
    type Ec2: Ec2;
    /// IAM of an entered account.
    type Iam: Iam;
    /// SSM of an entered account.
    type Ssm: Ssm;

    /// `sts:GetCallerIdentity`.
    fn caller(&self) -> impl Future<Output = Result<Caller, AwsError>> + Send;

    /// `organizations:ListAccounts`, all pages.
    fn list_accounts(&self) -> impl Future<Output = Result<Vec<OrgAccount>, AwsError>> + Send;

    /// `organizations:ListChildren` of type `ORGANIZATIONAL_UNIT`, all pages: the OU ids under `parent`.
    fn child_units(
        &self,
        parent: &str,
    ) -> impl Future<Output = Result<Vec<String>, AwsError>> + Send;

    /// `organizations:ListAccountsForParent`, all pages: the accounts directly under `parent`.
    fn accounts_for_parent(
        &self,
        parent: &str,
    ) -> impl Future<Output = Result<Vec<OrgAccount>, AwsError>> + Send;

    /// The ports of `account_id`: the caller's own credentials for the caller's account, otherwise
    /// credentials of the member role (`sts:AssumeRole`, checked here so a denied role fails here).
    fn enter(
        &self,
        caller: &Caller,
        account_id: &str,
    ) -> impl Future<Output = Result<Entered<Self>, AwsError>> + Send;

    /// Every call made so far through this port and the ports it handed out.
    fn api_calls(&self) -> ApiCounts;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organizations_states_are_read_in_any_case_and_only_active_is_handled() {
        let account = |status: &str| OrgAccount {
            id: "111111111111".into(),
            status: AccountStatus::parse(status),
        };
        assert!(account("ACTIVE").is_active());
        assert!(account("active").is_active());
        for other in [
            "SUSPENDED",
            "PENDING_CLOSURE",
            "PENDING_ACTIVATION",
            "CLOSED",
            "",
            "NEW_STATE",
        ] {
            assert!(!account(other).is_active(), "{other}");
        }
        assert_eq!(AccountStatus::parse("suspended"), AccountStatus::Suspended);
        assert_eq!(
            AccountStatus::parse("NEW_STATE"),
            AccountStatus::Other("NEW_STATE".into())
        );
        assert_eq!(AccountStatus::parse("NEW_STATE").as_str(), "NEW_STATE");
        assert_eq!(AccountStatus::PendingClosure.as_str(), "PENDING_CLOSURE");
    }
}
