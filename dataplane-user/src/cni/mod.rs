//! `ipipd-cni`, the CNI plugin: [`spec`] is the protocol (environment, config, results,
//! errors), [`plugin`] what each command does to the node, the pod and the daemon;
//! [`install`] puts it and its conflist where a runtime looks (`ipipd install-cni`).

pub mod install;
pub mod plugin;
pub mod spec;
