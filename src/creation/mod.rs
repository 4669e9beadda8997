//! The VM creation engine: a JSON spec (seed 000's nested storage layout),
//! merged with a template, validated against the shipped JSON Schema,
//! resolved (paths, targets, boot ISO), turned into domain XML, and carried
//! out all-or-nothing. Knows nothing about D-Bus.

pub mod cloud_init;
pub mod domain_xml;
pub mod engine;
pub mod legacy;
pub mod limits;
pub mod resolve;
pub mod spec;
pub mod template;
pub mod validate;
