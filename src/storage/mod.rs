//! Storage pools and volumes: what a caller may ask for (specs, validated
//! field by field) and the XML libvirt is given. Pure; no libvirt calls.

pub mod spec;
