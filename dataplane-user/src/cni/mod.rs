//! `ipipd-cni`, the CNI plugin: [`spec`] is the protocol (environment, config, results,
//! errors), [`plugin`] what each command does to the node, the pod and the daemon.

pub mod plugin;
pub mod spec;
