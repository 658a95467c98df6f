//! The integration tests, one test binary (one link for all of them): each module drives
//! the built binary (or the library) for one area. `common` holds what they share.

#[allow(dead_code)]
mod common;

mod adversarial;
mod adversarial_review;
mod cli_errors;
mod cli_run;
mod conformance;
mod container_images;
mod docker_remote;
mod docker_session;
mod html_report;
mod humaneval;
mod judge;
mod kubernetes;
mod languages;
mod libraries;
mod mcp;
mod plots;
mod preload;
mod reports;
mod schema;
mod session;
mod spec_errors;
mod streaming;
mod warm_containers;
mod watch;
