//! The VM creation engine: a JSON spec (seed 000's nested storage layout),
//! merged with a template, validated against the shipped JSON Schema,
//! resolved (paths, targets, boot ISO), turned into domain XML, and carried
//! out all-or-nothing. Knows nothing about D-Bus.

pub mod spec;
