//! `verify` (under construction): sinks that hold state compared with the container. What is
//! here is its decision, [`compare::compare`], pure and table-tested; the readers of each
//! sink's state and the command build on it.

pub mod compare;
