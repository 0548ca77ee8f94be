//! builder's domain core: identifiers, the feature specification, the events of a feature
//! execution and the state machine that folds them (`evolve`), judges commands (`decide`)
//! and names the next step a worker must run (`next_step`).
//!
//! Pure by construction: no async, no I/O, no clock and no randomness. Callers pass time
//! and fresh ids in, so every rule here is deterministic and unit-testable. This crate must
//! not depend on any other builder crate, on tokio, on a database or on a network client.

pub mod credential;
pub mod event;
pub mod feature;
pub mod ids;
pub mod repository;
pub mod spec;

pub use credential::Credential;
pub use event::{Event, EventEnvelope, EventMetadata, LlmUsage, NewEvent, SCHEMA_VERSION};
pub use feature::{Feature, FeatureState, NextStep, Transition, TransitionError};
pub use ids::{FeatureId, RepositoryId};
pub use repository::{Provider, Repository, RepositoryState};
pub use spec::{FeatureConstraints, FeatureSpec, SpecError, feature_branch_name};
