//! Rill's storage engine.
