//! The event path's short-lived memory of an account's IAM: what `GetInstanceProfile`, `GetRole` and
//! `ListAttachedRolePolicies` answered, reused for [`EVENT_IAM_TTL`] so that a burst of launches does not
//! spend an IAM chain per intake batch (IAM's API is global per account and throttled).
//!
//! # Guarantees
//! - An answer is reused for at most the TTL after it was fetched: a change made outside arc-onboard (a
//!   policy detached, a profile emptied) is seen by the first batch after that.
//! - A change arc-onboard makes through the cached port (create a role or profile, attach a policy, add a
//!   role to a profile) forgets what it changes at once, so the next read asks IAM again.
//! - Errors are never kept: a failed read is tried again by the next batch.
//! - Concurrent misses are fetched once: a miss holds the fetch lock, and those waiting on it find the
//!   answer when they get it.
//!
//! # Caveats
//! - Only the event path uses it; the scheduled passes read IAM afresh every pass.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::{AwsError, InstanceProfile, Role};
use crate::ports::{Iam, MutationToken};

/// How long the event path reuses an IAM answer. Short enough that a change is seen within half a
/// minute; long enough that an auto-scaling burst (tens of intake batches a minute) costs a few chains.
pub const EVENT_IAM_TTL: Duration = Duration::from_secs(30);

/// Answers by key, each with the time it was fetched.
struct Table<V>(HashMap<String, (Instant, V)>);

impl<V: Clone> Table<V> {
    fn fresh(&self, key: &str, ttl: Duration) -> Option<V> {
        self.0
            .get(key)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, v)| v.clone())
    }

    fn put(&mut self, key: &str, value: V) {
        self.0.insert(key.to_string(), (Instant::now(), value));
    }

    fn forget(&mut self, key: &str) {
        self.0.remove(key);
    }
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table(HashMap::new())
    }
}

#[derive(Default)]
struct Entries {
    profiles: Table<Option<InstanceProfile>>,
    roles: Table<Option<Role>>,
    policies: Table<Vec<String>>,
}

/// One account's cached IAM answers; lives as long as the event path.
pub struct IamCache {
    ttl: Duration,
    entries: Mutex<Entries>,
    /// Held while a miss is fetched, so that concurrent misses make one call.
    fetch: tokio::sync::Mutex<()>,
}

impl IamCache {
    /// An empty cache whose answers live `ttl`.
    pub fn new(ttl: Duration) -> IamCache {
        IamCache {
            ttl,
            entries: Mutex::new(Entries::default()),
            fetch: tokio::sync::Mutex::new(()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached answer of `table` for `key`, or the fetched one (kept when it succeeded).
    async fn read<V, F>(
        &self,
        table: fn(&mut Entries) -> &mut Table<V>,
        key: &str,
        fetch: F,
    ) -> Result<V, AwsError>
    where
        V: Clone,
        F: std::future::Future<Output = Result<V, AwsError>>,
    {
        if let Some(v) = table(&mut self.entries()).fresh(key, self.ttl) {
            return Ok(v);
        }
        let _fetching = self.fetch.lock().await;
        if let Some(v) = table(&mut self.entries()).fresh(key, self.ttl) {
            return Ok(v);
        }
        let value = fetch.await?;
        table(&mut self.entries()).put(key, value.clone());
        Ok(value)
    }
}

/// The IAM port with an [`IamCache`] in front of its reads.
pub struct CachedIam<'a, I> {
    inner: &'a I,
    cache: &'a IamCache,
}

impl<'a, I: Iam> CachedIam<'a, I> {
    /// `inner`'s reads through `cache`.
    pub fn new(inner: &'a I, cache: &'a IamCache) -> Self {
        CachedIam { inner, cache }
    }

    fn forget(&self, f: impl FnOnce(&mut Entries)) {
        f(&mut self.cache.entries());
    }
}

impl<I: Iam> Iam for CachedIam<'_, I> {
    async fn get_instance_profile(&self, name: &str) -> Result<Option<InstanceProfile>, AwsError> {
        let fetch = self.inner.get_instance_profile(name);
        self.cache.read(|e| &mut e.profiles, name, fetch).await
    }

    async fn get_role(&self, name: &str) -> Result<Option<Role>, AwsError> {
        let fetch = self.inner.get_role(name);
        self.cache.read(|e| &mut e.roles, name, fetch).await
    }

    async fn attached_policies(&self, role: &str) -> Result<Vec<String>, AwsError> {
        let fetch = self.inner.attached_policies(role);
        self.cache.read(|e| &mut e.policies, role, fetch).await
    }

    async fn create_role(&self, token: &MutationToken, name: &str) -> Result<Role, AwsError> {
        let result = self.inner.create_role(token, name).await;
        self.forget(|e| {
            e.roles.forget(name);
            e.policies.forget(name);
        });
        result
    }

    async fn attach_role_policy(
        &self,
        token: &MutationToken,
        role: &str,
        policy_arn: &str,
    ) -> Result<(), AwsError> {
        let result = self.inner.attach_role_policy(token, role, policy_arn).await;
        self.forget(|e| e.policies.forget(role));
        result
    }

    async fn create_instance_profile(
        &self,
        token: &MutationToken,
        name: &str,
    ) -> Result<InstanceProfile, AwsError> {
        let result = self.inner.create_instance_profile(token, name).await;
        self.forget(|e| e.profiles.forget(name));
        result
    }

    async fn add_role_to_instance_profile(
        &self,
        token: &MutationToken,
        profile: &str,
        role: &str,
    ) -> Result<(), AwsError> {
        let result = self
            .inner
            .add_role_to_instance_profile(token, profile, role)
            .await;
        self.forget(|e| e.profiles.forget(profile));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeAws;

    const SSM: &str = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore";

    fn iam_calls(aws: &FakeAws) -> u64 {
        aws.calls
            .snapshot()
            .iter()
            .filter(|(k, _)| k.starts_with("iam:"))
            .map(|(_, v)| v)
            .sum()
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_reused_within_the_ttl_and_a_change_is_seen_after_it() {
        let aws = FakeAws::new(&["us-east-1"]);
        aws.add_role("AppRole", &[SSM], Some("AppProfile"));
        let cache = IamCache::new(EVENT_IAM_TTL);
        let iam = CachedIam::new(&aws, &cache);

        let first = iam.get_instance_profile("AppProfile").await.unwrap();
        assert_eq!(first.unwrap().roles, ["AppRole"]);
        assert_eq!(iam.attached_policies("AppRole").await.unwrap(), [SSM]);
        assert!(iam.get_role("AppRole").await.unwrap().is_some());
        assert_eq!(iam_calls(&aws), 3);
        for _ in 0..10 {
            iam.get_instance_profile("AppProfile").await.unwrap();
            iam.attached_policies("AppRole").await.unwrap();
            iam.get_role("AppRole").await.unwrap();
        }
        assert_eq!(
            iam_calls(&aws),
            3,
            "reads within the TTL are answered from the cache"
        );

        // Someone detaches the policy outside arc-onboard: the old answer within the TTL...
        aws.add_role("AppRole", &[], Some("AppProfile"));
        tokio::time::advance(EVENT_IAM_TTL - Duration::from_secs(1)).await;
        assert_eq!(iam.attached_policies("AppRole").await.unwrap(), [SSM]);
        // ...and the change once it has passed.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(iam.attached_policies("AppRole").await.unwrap().is_empty());
        assert_eq!(iam_calls(&aws), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn our_own_changes_and_errors_are_never_served_from_the_cache() {
        let aws = FakeAws::new(&["us-east-1"]);
        aws.add_role("AppRole", &[], None);
        let cache = IamCache::new(EVENT_IAM_TTL);
        let iam = CachedIam::new(&aws, &cache);
        assert!(iam.attached_policies("AppRole").await.unwrap().is_empty());
        let token = MutationToken::mint();
        iam.attach_role_policy(&token, "AppRole", SSM)
            .await
            .unwrap();
        assert_eq!(
            iam.attached_policies("AppRole").await.unwrap(),
            [SSM],
            "an attach through the cache is seen at once"
        );
        assert!(iam.get_instance_profile("New").await.unwrap().is_none());
        iam.create_instance_profile(&token, "New").await.unwrap();
        assert!(iam.get_instance_profile("New").await.unwrap().is_some());

        aws.fail("iam:GetRole", "Broken", "AccessDenied");
        assert!(iam.get_role("Broken").await.is_err());
        assert!(iam.get_role("Broken").await.is_err());
        assert_eq!(
            aws.calls.count("iam:GetRole"),
            2,
            "a failed read is not kept"
        );
    }
}
