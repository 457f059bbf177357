//! The reconcile core: observe an account through the ports, plan with a pure function, apply the plan.

pub mod accounts;
pub mod apply;
pub mod batches;
pub mod interrupt;
pub mod leases;
pub mod lifecycle;
pub mod observe;
pub mod onboard;
pub mod outcome;
pub mod pass;
pub mod plan;
pub mod report;
pub mod saved;
