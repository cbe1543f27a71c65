//! Rill's benchmark harness: the load generator behind `rill bench`, and its reports.
