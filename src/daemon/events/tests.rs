//! Tests of the event path over the stateful fakes, in paused time.
