//! Runs every vector of bpf-fixtures/ through BPF_PROG_TEST_RUN on the real object, and checks
//! that the runner itself catches a wrong expectation.

use dataplane_common::Reason;
mod fixtures;

use fixtures::{Mutation, load_vectors, run_vector};
use ipipd_tests::require_root;

#[test]
fn every_vector_passes() {
    if !require_root() {
        return;
    }
    let vectors = load_vectors().unwrap();
    assert!(!vectors.is_empty(), "no vectors in bpf-fixtures/vectors");
    let mut failures = Vec::new();
    // Every run is also interpreted by the bench's instruction counter (`ipipd_bench::trace`),
    // which must reach the kernel's verdict and bytes. Vectors it cannot run to the end call a
    // helper it does not model (the FIB lookup of a next hop whose MACs are not cached); the
    // paths the bench counts must not be among them.
    let mut untraced = Vec::new();
    for (file, v) in &vectors {
        match run_vector(v, Mutation::None) {
            Ok(traced) => {
                println!("ok   {file}: {} ({traced} runs traced alike)", v.name);
                if traced == 0 {
                    untraced.push(file.clone());
                }
            }
            Err(e) => {
                println!("FAIL {file}: {}\n{e:#}", v.name);
                failures.push(file.clone());
            }
        }
    }
    println!(
        "{} passed, {} failed",
        vectors.len() - failures.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failing vectors: {failures:?}");
    println!("not traced by the bench's interpreter: {untraced:?}");
    for file in [
        "pod-to-pod-icmp.toml",
        "pod-encap-cached-l2.toml",
        "egress-cached-l2.toml",
        "uplink-decap-plain.toml",
    ] {
        assert!(
            !untraced.contains(&file.to_string()),
            "{file}: the bench's interpreter could not run it"
        );
    }
}

/// Every drop reason the data plane has is shown by at least one vector.
#[test]
fn every_drop_reason_has_a_vector() {
    let vectors = load_vectors().unwrap();
    let shown: Vec<&str> = vectors
        .iter()
        .flat_map(|(_, v)| {
            v.expect
                .iter()
                .flat_map(|e| e.counters.iter().map(|c| c.reason.as_str()))
        })
        .collect();
    // Not reachable through BPF_PROG_TEST_RUN: an skb whose headers cannot be pulled linear after
    // a successful adjust_room (helper failure after modification), and adjust_room refusing
    // (test_run skbs are never already encapsulated); the end-to-end suite covers the paths
    // around them.
    let untestable = [
        Reason::DropHelperFailed,
        Reason::DropEncapFailed,
        Reason::DropDecapFailed,
    ];
    let missing: Vec<&str> = Reason::ALL
        .iter()
        .filter(|r| r.is_drop() && !untestable.contains(r))
        .map(|r| r.name())
        .filter(|n| !shown.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "drop reasons without a vector: {missing:?}"
    );
}

/// The runner fails when one expected byte is flipped or one map entry changed.
#[test]
fn runner_catches_a_flipped_byte_and_a_changed_map_entry() {
    if !require_root() {
        return;
    }
    let vectors = load_vectors().unwrap();
    let get = |file: &str| {
        vectors
            .iter()
            .find(|(f, _)| f == file)
            .unwrap_or_else(|| panic!("vector {file}"))
            .1
            .clone()
    };
    for file in [
        "pod-to-pod-icmp.toml",
        "pod-encap-icmp-df.toml",
        "uplink-decap-plain.toml",
    ] {
        let v = get(file);
        run_vector(&v, Mutation::None).unwrap_or_else(|e| panic!("{file} as written: {e:#}"));
        let flipped = run_vector(&v, Mutation::FlipExpectedByte);
        assert!(
            flipped.is_err(),
            "{file}: a flipped expected byte went unnoticed"
        );
        let changed = run_vector(&v, Mutation::ChangeMapEntry);
        assert!(
            changed.is_err(),
            "{file}: a changed map entry went unnoticed"
        );
    }
}
