//! An in-memory Azure Resource Manager (the [`Arm`] port) for pass tests: resource groups, machines,
//! Resource Graph, and injected token, graph and delete failures.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use crate::model::{ArcMachine, ArcStatus, AzureError, GraphMachine, Secret};
use crate::ports::{ApiCounter, Arm, MutationToken};

/// An in-memory Azure for pass tests: resource groups, machines, and an optional token failure.
#[derive(Debug, Default)]
pub struct FakeArm {
    state: Mutex<FakeArmState>,
    /// Calls by operation.
    pub calls: ApiCounter,
}

#[derive(Debug, Default)]
struct FakeArmState {
    groups: HashMap<String, String>,
    machines: HashMap<(String, String), ArcMachine>,
    token_error: Option<AzureError>,
    /// Machines Resource Graph finds (anywhere), and whether it refuses.
    graph: Vec<GraphMachine>,
    graph_denied: bool,
    delete_error: Option<AzureError>,
}

impl FakeArm {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeArmState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes token requests fail.
    pub fn fail_token(&self, e: AzureError) {
        self.lock().token_error = Some(e);
    }

    /// Adds or replaces a machine (and its group).
    pub fn put_machine(&self, rg: &str, name: &str, status: &str) {
        let mut s = self.lock();
        s.groups
            .entry(rg.to_ascii_lowercase())
            .or_insert_with(|| "eastus".into());
        s.machines.insert(
            (rg.to_ascii_lowercase(), name.to_string()),
            ArcMachine {
                name: name.into(),
                status: ArcStatus::parse(status),
                errors: vec![],
                agent_version: None,
                ..ArcMachine::default()
            },
        );
    }

    /// Sets the agent version Azure reports for a machine put before.
    pub fn set_agent_version(&self, rg: &str, name: &str, version: &str) {
        if let Some(m) = self
            .lock()
            .machines
            .get_mut(&(rg.to_ascii_lowercase(), name.to_string()))
        {
            m.agent_version = Some(version.into());
        }
    }

    /// A machine only Resource Graph shows (in another group or subscription).
    pub fn put_graph_machine(&self, machine: GraphMachine) {
        self.lock().graph.push(machine);
    }

    /// Makes Resource Graph refuse with 403 `AuthorizationFailed`.
    pub fn deny_graph(&self) {
        self.lock().graph_denied = true;
    }

    /// Adds or replaces a machine with these tags and `lastStatusChange` (and its group).
    pub fn put_tagged_machine(
        &self,
        rg: &str,
        name: &str,
        status: &str,
        tags: BTreeMap<String, String>,
        last_status_change: Option<std::time::SystemTime>,
    ) {
        self.put_machine(rg, name, status);
        if let Some(m) = self
            .lock()
            .machines
            .get_mut(&(rg.to_ascii_lowercase(), name.to_string()))
        {
            m.tags = tags;
            m.last_status_change = last_status_change;
        }
    }

    /// Makes deleting machines fail with this error.
    pub fn fail_delete(&self, e: AzureError) {
        self.lock().delete_error = Some(e);
    }

    /// Whether a machine exists.
    pub fn has_machine(&self, rg: &str, name: &str) -> bool {
        self.lock()
            .machines
            .contains_key(&(rg.to_ascii_lowercase(), name.to_string()))
    }

    /// Whether a group exists.
    pub fn has_group(&self, rg: &str) -> bool {
        self.lock().groups.contains_key(&rg.to_ascii_lowercase())
    }
}

impl Arm for FakeArm {
    async fn token(&self) -> Result<Secret, AzureError> {
        self.calls.record("azure:Token");
        match &self.lock().token_error {
            Some(e) => Err(e.clone()),
            None => Ok(Secret::new("fake-arm-token")),
        }
    }

    async fn script_token(&self, _at_least: Duration) -> Result<(Secret, Duration), AzureError> {
        Ok((self.token().await?, Duration::from_secs(3600)))
    }

    async fn resource_group_exists(&self, rg: &str) -> Result<bool, AzureError> {
        self.calls.record("arm:GetResourceGroup");
        if let Some(e) = &self.lock().token_error {
            return Err(e.clone());
        }
        Ok(self.has_group(rg))
    }

    async fn create_resource_group(
        &self,
        _token: &MutationToken,
        rg: &str,
        location: &str,
        _tags: &BTreeMap<String, String>,
    ) -> Result<(), AzureError> {
        self.calls.record("arm:PutResourceGroup");
        self.lock()
            .groups
            .insert(rg.to_ascii_lowercase(), location.into());
        Ok(())
    }

    async fn list_machines(&self, rg: &str) -> Result<Vec<ArcMachine>, AzureError> {
        self.calls.record("arm:ListMachines");
        if let Some(e) = &self.lock().token_error {
            return Err(e.clone());
        }
        let rg = rg.to_ascii_lowercase();
        Ok(self
            .lock()
            .machines
            .iter()
            .filter(|((g, _), _)| *g == rg)
            .map(|(_, m)| m.clone())
            .collect())
    }

    async fn delete_machine(
        &self,
        _token: &MutationToken,
        rg: &str,
        name: &str,
    ) -> Result<(), AzureError> {
        self.calls.record("arm:DeleteMachine");
        let mut s = self.lock();
        if let Some(e) = &s.delete_error {
            return Err(e.clone());
        }
        s.machines
            .remove(&(rg.to_ascii_lowercase(), name.to_string()));
        Ok(())
    }

    async fn get_machine(&self, rg: &str, name: &str) -> Result<Option<ArcMachine>, AzureError> {
        self.calls.record("arm:GetMachine");
        Ok(self
            .lock()
            .machines
            .get(&(rg.to_ascii_lowercase(), name.to_string()))
            .cloned())
    }

    async fn find_machines(
        &self,
        instance_ids: &[String],
    ) -> Result<Vec<GraphMachine>, AzureError> {
        self.calls.record("arm:ResourceGraph");
        let s = self.lock();
        if s.graph_denied {
            return Err(AzureError::Arm {
                operation: "arm:ResourceGraph",
                status: 403,
                code: "AuthorizationFailed".into(),
                message: "the fake denies Resource Graph".into(),
            });
        }
        let named = |v: &str| instance_ids.iter().any(|id| id.eq_ignore_ascii_case(v));
        Ok(s.graph
            .iter()
            .filter(|m| named(&m.name) || m.instance_id_tag.as_deref().is_some_and(named))
            .cloned()
            .collect())
    }
}
