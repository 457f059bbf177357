//! The [`Accounts`] port over the SDK: the caller (`sts:GetCallerIdentity`), the organization
//! (`organizations:ListAccounts`, `ListChildren`, `ListAccountsForParent`, all pages), and entering member
//! accounts with `sts:AssumeRole` through aws-config's [`AssumeRoleProvider`].
//!
//! Credentials of an entered account live in that account's [`SdkConfig`], whose identity cache keeps them
//! and refreshes them before they expire; the configs are kept across the daemon's passes
//! ([`SdkAccounts::for_pass`] shares them), so a long pass or a long-running daemon never works with expired
//! credentials and does not assume a role again per pass. Every account gets its own clients, one per region,
//! with retry partitions per account and region ([`crate::adapters::aws::retry_partition`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_config::sts::AssumeRoleProvider;
use aws_config::{Region, SdkConfig};
use aws_credential_types::provider::{
    error::CredentialsError, future, ProvideCredentials, SharedCredentialsProvider,
};
use aws_credential_types::Credentials;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::adapters::aws::{aws_error, SdkEc2, SdkIam, SdkSsm};
use crate::config::AccountsConfig;
use crate::model::{ApiCounts, AwsError, AwsErrorKind};
use crate::ports::accounts::{
    AccountClients, AccountStatus, Accounts, Caller, KnownAccount, OrgAccount,
};
use crate::ports::ApiCounter;

/// The accounts port over the SDK.
pub struct SdkAccounts {
    /// The caller's configuration (credential chain, retries, timeouts).
    base: SdkConfig,
    /// Region of the global services' clients.
    home: String,
    /// Counts this port's calls and those of the clients it hands out.
    counter: ApiCounter,
    sts: aws_sdk_sts::Client,
    organizations: aws_sdk_organizations::Client,
    /// Role name (with path) assumed in member accounts.
    member_role: String,
    /// `ExternalId` of `sts:AssumeRole`.
    external_id: Option<String>,
    /// `RoleSessionName`: names the run, so CloudTrail in each member account shows who acted.
    session_name: String,
    /// The configurations of entered accounts, shared by the passes of one process.
    entered: Arc<Mutex<HashMap<String, SdkConfig>>>,
}

impl SdkAccounts {
    /// The port for one command; `session_name` names the run (`arc-onboard-run-…`).
    pub fn new(
        sdk: &SdkConfig,
        home: &str,
        accounts: &AccountsConfig,
        session_name: &str,
        counter: ApiCounter,
    ) -> SdkAccounts {
        SdkAccounts {
            base: sdk.clone(),
            home: home.to_string(),
            sts: sts_client(sdk, home, &counter),
            organizations: organizations_client(sdk, home, &counter),
            counter,
            member_role: accounts.member_role.clone(),
            external_id: accounts.external_id.clone(),
            session_name: session_name_of(session_name),
            entered: Arc::default(),
        }
    }

    /// The same port with a new call counter (one per daemon pass), keeping the entered accounts'
    /// credentials.
    pub fn for_pass(&self, counter: ApiCounter) -> SdkAccounts {
        SdkAccounts {
            base: self.base.clone(),
            home: self.home.clone(),
            sts: sts_client(&self.base, &self.home, &counter),
            organizations: organizations_client(&self.base, &self.home, &counter),
            counter,
            member_role: self.member_role.clone(),
            external_id: self.external_id.clone(),
            session_name: self.session_name.clone(),
            entered: self.entered.clone(),
        }
    }

    /// The call counter.
    pub fn counter(&self) -> &ApiCounter {
        &self.counter
    }

    /// The member account's configuration: cached, or a new AssumeRole provider whose first credentials
    /// are fetched now, so a role that cannot be assumed fails here with its AWS code.
    async fn member_config(
        &self,
        caller: &Caller,
        account_id: &str,
    ) -> Result<SdkConfig, AwsError> {
        if let Some(conf) = self.lock().get(account_id) {
            return Ok(conf.clone());
        }
        let arn = format!(
            "arn:{}:iam::{account_id}:role/{}",
            caller.partition, self.member_role
        );
        let mut builder = AssumeRoleProvider::builder(arn.clone())
            .session_name(self.session_name.clone())
            .region(Region::new(self.home.clone()))
            .configure(&self.base);
        if let Some(id) = &self.external_id {
            builder = builder.external_id(id.clone());
        }
        let provider = builder.build().await;
        self.counter.record("sts:AssumeRole");
        let first = provider
            .provide_credentials()
            .await
            .map_err(|e| assume_role_error(&arn, &e))?;
        let provider = FirstThenRefresh {
            first: Mutex::new(Some(first)),
            inner: provider,
        };
        let conf = self
            .base
            .to_builder()
            .credentials_provider(SharedCredentialsProvider::new(provider))
            .build();
        self.lock()
            .entry(account_id.to_string())
            .or_insert(conf.clone());
        Ok(conf)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SdkConfig>> {
        self.entered.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn sts_client(sdk: &SdkConfig, home: &str, counter: &ApiCounter) -> aws_sdk_sts::Client {
    let conf = aws_sdk_sts::config::Builder::from(sdk)
        .region(Region::new(home.to_string()))
        .interceptor(counter.clone())
        .build();
    aws_sdk_sts::Client::from_conf(conf)
}

fn organizations_client(
    sdk: &SdkConfig,
    home: &str,
    counter: &ApiCounter,
) -> aws_sdk_organizations::Client {
    let conf = aws_sdk_organizations::config::Builder::from(sdk)
        .region(Region::new(home.to_string()))
        .interceptor(counter.clone())
        .build();
    aws_sdk_organizations::Client::from_conf(conf)
}

/// `RoleSessionName` allows 2..=64 of `[\w+=,.@-]`: other characters become `-`, the rest is cut.
fn session_name_of(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    while s.len() < 2 {
        s.push('-');
    }
    s
}

/// Hands the credentials fetched when the account was entered to the SDK's identity cache once, then
/// asks STS again whenever the cache refreshes.
#[derive(Debug)]
struct FirstThenRefresh {
    first: Mutex<Option<Credentials>>,
    inner: AssumeRoleProvider,
}

impl ProvideCredentials for FirstThenRefresh {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let first = self.first.lock().unwrap_or_else(|e| e.into_inner()).take();
        match first {
            Some(c) => future::ProvideCredentials::ready(Ok(c)),
            None => self.inner.provide_credentials(),
        }
    }
}

/// An AssumeRole failure with the AWS code when STS answered (`AccessDenied`), else the SDK's words.
fn assume_role_error(arn: &str, e: &CredentialsError) -> AwsError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(sts) = s.downcast_ref::<aws_sdk_sts::operation::assume_role::AssumeRoleError>()
        {
            return AwsError::from_code(
                "sts:AssumeRole",
                sts.code().unwrap_or("Unknown"),
                &format!("{arn}: {}", sts.message().unwrap_or_default()),
            );
        }
        source = s.source();
    }
    AwsError {
        operation: "sts:AssumeRole".into(),
        kind: AwsErrorKind::Other,
        code: "AssumeRoleFailed".into(),
        message: format!("{arn}: {}", DisplayErrorContext(e)),
        origin: None,
    }
}

fn org_account(a: &aws_sdk_organizations::types::Account) -> Option<OrgAccount> {
    let status = a
        .state()
        .map(|s| s.as_str().to_string())
        .or_else(|| {
            #[allow(deprecated)]
            a.status().map(|s| s.as_str().to_string())
        })
        .unwrap_or_default();
    Some(OrgAccount {
        id: a.id()?.to_string(),
        status: AccountStatus::parse(&status),
    })
}

impl Accounts for SdkAccounts {
    type Ec2 = SdkEc2;
    type Iam = SdkIam;
    type Ssm = SdkSsm;

    async fn caller(&self) -> Result<Caller, AwsError> {
        let out = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| aws_error("sts:GetCallerIdentity", e))?;
        let account = out.account().ok_or_else(|| AwsError {
            operation: "sts:GetCallerIdentity".into(),
            kind: AwsErrorKind::Other,
            code: "NoAccount".into(),
            message: "the response carried no account id".into(),
            origin: None,
        })?;
        Ok(Caller::from_arn(account, out.arn()))
    }

    async fn list_accounts(&self) -> Result<Vec<OrgAccount>, AwsError> {
        const OP: &str = "organizations:ListAccounts";
        let mut pages = self.organizations.list_accounts().into_paginator().send();
        let mut all = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(OP, e))?;
            all.extend(page.accounts().iter().filter_map(org_account));
        }
        Ok(all)
    }

    async fn child_units(&self, parent: &str) -> Result<Vec<String>, AwsError> {
        const OP: &str = "organizations:ListChildren";
        let mut pages = self
            .organizations
            .list_children()
            .parent_id(parent)
            .child_type(aws_sdk_organizations::types::ChildType::OrganizationalUnit)
            .into_paginator()
            .send();
        let mut all = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(OP, e))?;
            all.extend(
                page.children()
                    .iter()
                    .filter_map(|c| c.id().map(str::to_string)),
            );
        }
        Ok(all)
    }

    async fn accounts_for_parent(&self, parent: &str) -> Result<Vec<OrgAccount>, AwsError> {
        const OP: &str = "organizations:ListAccountsForParent";
        let mut pages = self
            .organizations
            .list_accounts_for_parent()
            .parent_id(parent)
            .into_paginator()
            .send();
        let mut all = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(OP, e))?;
            all.extend(page.accounts().iter().filter_map(org_account));
        }
        Ok(all)
    }

    async fn enter(
        &self,
        caller: &Caller,
        account_id: &str,
    ) -> Result<AccountClients<SdkEc2, SdkIam, SdkSsm>, AwsError> {
        let conf = if account_id == caller.account_id {
            self.base.clone()
        } else {
            self.member_config(caller, account_id).await?
        };
        let counter = self.counter.clone();
        let account = Some(account_id);
        Ok(AccountClients {
            sts: KnownAccount(account_id.to_string()),
            ec2: SdkEc2::for_account(&conf, &self.home, counter.clone(), account),
            iam: SdkIam::for_account(&conf, &self.home, counter.clone(), account),
            ssm: SdkSsm::for_account(&conf, counter.clone(), account),
            counter,
        })
    }

    fn api_calls(&self) -> ApiCounts {
        self.counter.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_keep_to_sts_rules() {
        assert_eq!(
            session_name_of("arc-onboard-run-1a2b"),
            "arc-onboard-run-1a2b"
        );
        assert_eq!(session_name_of("a b"), "a-b");
        assert_eq!(session_name_of("x"), "x-");
        assert_eq!(session_name_of(&"y".repeat(100)).len(), 64);
    }

    #[test]
    fn the_partition_comes_from_the_callers_arn() {
        let c = Caller::from_arn(
            "111111111111",
            Some("arn:aws-us-gov:sts::111111111111:assumed-role/x/y"),
        );
        assert_eq!(c.partition, "aws-us-gov");
        assert_eq!(Caller::from_arn("111111111111", None).partition, "aws");
    }
}
