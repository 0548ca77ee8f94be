//! The one door for writing a feature's events: check them against the state machine
//! (`Feature::prepare`), then append with the feature's version as the expected one.

use crate::{Store, StoreError};
use builder_core::event::{Event, NewEvent};
use builder_core::{Feature, Transition, TransitionError};

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The stream moved since `feature` was loaded: reload and decide again.
    #[error("the feature changed concurrently")]
    Conflict,
    #[error("illegal transition: {0}")]
    Illegal(#[from] TransitionError),
    #[error("store: {0}")]
    Store(StoreError),
}

/// Appends `events` after `feature`'s last event and returns the new state.
pub async fn append_events(
    store: &dyn Store,
    feature: &Feature,
    events: Vec<Event>,
    causation_id: Option<uuid::Uuid>,
    producer: &str,
) -> Result<Transition, AppendError> {
    let mut next_id = uuid::Uuid::now_v7;
    let mut ctx = NewEvent {
        now: chrono::Utc::now(),
        causation_id,
        producer,
        next_id: &mut next_id,
    };
    let mut transition = feature.prepare(events, &mut ctx)?;
    match store
        .append(
            feature.id,
            feature.version,
            &transition.envelopes,
            &transition.feature,
        )
        .await
    {
        Ok(stored) => {
            transition.envelopes = stored;
            Ok(transition)
        }
        Err(StoreError::Conflict { .. }) => Err(AppendError::Conflict),
        Err(e) => Err(AppendError::Store(e)),
    }
}
