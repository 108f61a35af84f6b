//! ipipd's user space. The flow of a change, one direction:
//!
//! desired state ([`config`] + [`desired`]) → [`plan::KernelView::read`] (reads only) →
//! [`plan::plan`] (pure) → [`apply`] (the only writer: maps, [`attach`]ments, routes,
//! [`tunnel`] device).
//!
//! Around it: [`daemon`] (tokio: the owner task, signals, events, the [`control`] socket),
//! [`metrics`] (hyper), [`netlink`] (rtnetlink), [`loader`] and [`pins`] (the object and
//! bpffs), [`maps`] (typed map access), [`inspect`] and [`monitor`] (the CLI's read side),
//! [`ipam`] (pod addresses from the node's blocks) and [`cni`] (the `ipipd-cni` plugin).

pub mod apply;
pub mod attach;
pub mod autodetect;
pub mod cni;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datastore;
pub mod desired;
pub mod host;
pub mod incremental;
pub mod inspect;
pub mod ipam;
pub mod loader;
pub mod lock;
pub mod maps;
pub mod metrics;
pub mod monitor;
pub mod nat;
pub mod net;
pub mod netlink;
pub mod pins;
pub mod plan;
pub mod record;
pub mod rules;
pub mod teardown;
pub mod tunnel;

/// The eBPF object built by build.rs (bpfel, BTF), aligned for the ELF parser.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ipipd-dataplane"));

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use dataplane_common::{map_names, program_names};

    /// The object the binary embeds declares exactly the programs and maps dataplane-common
    /// names.
    #[test]
    fn the_embedded_object_matches_dataplane_commons_names() {
        let obj = aya_obj::Object::parse(crate::EBPF_OBJECT).expect("the embedded object parses");
        let programs: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
        assert_eq!(programs, program_names::ALL.into_iter().collect());
        let ours: BTreeSet<&str> = obj
            .maps
            .keys()
            .map(String::as_str)
            .filter(|m| m.starts_with("ipipd_"))
            .collect();
        assert_eq!(ours, map_names::ALL.iter().copied().collect());
    }
}
