//! Every program in the embedded object loads into the running kernel (real BPF_PROG_LOAD) and
//! attaches to a veth inside a namespace this test creates and removes.

use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, tc};
use dataplane_common::program_names;
use ipipd_tests::{NetNs, require_root};

#[test]
fn every_program_loads_and_attaches_to_a_veth() {
    if !require_root() {
        return;
    }
    let ns = NetNs::new("smoke").unwrap();
    ns.ip("link add up0 type veth peer name up0p").unwrap();
    ns.ip("link add cali0 type veth peer name cali0p").unwrap();
    ns.ip("link add tun0 type veth peer name tun0p").unwrap();
    for dev in ["up0", "up0p", "cali0", "cali0p", "tun0", "tun0p"] {
        ns.ip(&format!("link set {dev} up")).unwrap();
    }

    ns.enter(|| {
        let mut ebpf = dataplane_user::loader::open_object().unwrap();
        let mut names: Vec<&str> = ebpf.programs().map(|(n, _)| n).collect();
        names.sort_unstable();
        let mut expected = program_names::ALL.to_vec();
        expected.sort_unstable();
        assert_eq!(names, expected, "the object's programs");

        let loaded = dataplane_user::loader::load_all(&mut ebpf).unwrap();
        assert_eq!(loaded.len(), program_names::ALL.len());
        for p in &loaded {
            assert!(p.id > 0, "{} has a kernel program id", p.name);
        }

        // Netlink attach needs the clsact qdisc; TCX (6.6+) does not, and ignores it.
        for dev in ["up0", "cali0", "tun0"] {
            let _ = tc::qdisc_add_clsact(dev);
        }
        let attach = |ebpf: &mut aya::Ebpf, prog: &str, dev: &str, at: TcAttachType| {
            let p: &mut SchedClassifier = ebpf.program_mut(prog).unwrap().try_into().unwrap();
            p.attach(dev, at)
                .unwrap_or_else(|e| panic!("attaching {prog} to {dev}: {e}"));
        };
        attach(
            &mut ebpf,
            program_names::FROM_POD,
            "cali0",
            TcAttachType::Ingress,
        );
        attach(
            &mut ebpf,
            program_names::FROM_UPLINK,
            "up0",
            TcAttachType::Ingress,
        );
        attach(
            &mut ebpf,
            program_names::TO_TUNNEL,
            "tun0",
            TcAttachType::Egress,
        );
        let xdp: &mut Xdp = ebpf
            .program_mut(program_names::XDP_UPLINK)
            .unwrap()
            .try_into()
            .unwrap();
        // Native XDP on veth (driver mode), as `[node] xdp = "native"` would.
        xdp.attach("up0", XdpMode::Driver).unwrap();

        // The kernel reports what is attached where.
        let id_of = |name: &str| loaded.iter().find(|p| p.name == name).unwrap().id;
        if aya::util::KernelVersion::current().unwrap() >= aya::util::KernelVersion::new(6, 6, 0) {
            for (dev, at, prog) in [
                ("cali0", TcAttachType::Ingress, program_names::FROM_POD),
                ("up0", TcAttachType::Ingress, program_names::FROM_UPLINK),
                ("tun0", TcAttachType::Egress, program_names::TO_TUNNEL),
            ] {
                let (_, progs) = SchedClassifier::query_tcx(dev, at).unwrap();
                let ids: Vec<u32> = progs.iter().map(|p| p.id()).collect();
                assert_eq!(ids, vec![id_of(prog)], "{prog} on {dev}");
            }
        }
        let link = ns.ip("-d link show dev up0").unwrap();
        assert!(
            link.contains("prog/xdp"),
            "xdp attached in driver mode: {link}"
        );
        drop(ebpf);
    })
    .unwrap();

    // With the object dropped, nothing is left on the devices.
    let link = ns.ip("-d link show dev up0").unwrap();
    assert!(!link.contains("prog/xdp"), "xdp detached: {link}");
}
