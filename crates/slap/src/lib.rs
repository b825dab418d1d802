//! # slap — the SlapOS protocol
//!
//! SLAP (Simple Language for Accounting and Provisioning) is the HTTP protocol
//! spoken between SlapOS nodes, clients and the master. This crate is
//! wire-compatible with slapos.core 1.26.1 (see
//! `shared/design/slap-protocol.md`):
//!
//! * [`marshal`]: the `xml_marshaller` codec (`<marshal>` documents), byte for
//!   byte like the Python library;
//! * [`instance_xml`]: the flat `<instance><parameter id=…>` format that the
//!   master stores parameters in, and its `_` JSON variant;
//! * [`model`]: typed computers, partitions, software releases, instances,
//!   states, and their conversion from/to marshalled objects;
//! * [`client`]: a blocking HTTP client for every call the Python client makes;
//! * [`schema`]: software release schemas (`software.cfg.json`), bounded
//!   loading and parameter validation;
//! * [`pyjson`]: JSON written byte for byte as Python's `json.dumps`;
//! * [`tls`]: the clients' TLS files (`master_ca_file`, `cert_file`, `key_file`),
//!   checked when loaded.

#![warn(missing_docs)]

pub mod client;
pub mod instance_xml;
pub mod marshal;
pub mod model;
pub mod pyjson;
pub mod schema;

pub use client::{ClientConfig, InstanceRequest, RequestResult, SlapClient, SlapError};
pub use marshal::{Object, Value};
pub use model::{Computer, ComputerPartition, InstanceState, RequestedInstance, SoftwareInstance, SoftwareRelease, SoftwareState};
pub mod hateoas;
pub mod tls;
