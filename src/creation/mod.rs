//! Planning a VM creation, purely: a JSON spec (seed 000's nested storage
//! layout), merged with a template, validated against the shipped JSON
//! Schema, resolved (paths, targets, boot ISO) against a [`resolve::StorageView`],
//! and turned into domain XML. Carrying a plan out is the creation service's
//! (`services::creation`). Knows nothing about D-Bus, and uses no service
//! (see the `layering` test in `src/layering_tests.rs`).

pub mod boot;
pub mod cloud_init;
pub mod domain_xml;
pub mod legacy;
pub mod limits;
pub mod resolve;
pub mod spec;
pub mod template;
pub mod validate;
