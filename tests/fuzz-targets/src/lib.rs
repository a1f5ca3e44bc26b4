//! Fuzz target logic (work in progress).
