//! The bench's and the fixtures' side of BPF_PROG_TEST_RUN: [`testrun`] runs a loaded program
//! on a crafted packet; the `ipipd-bench` binary measures ipipd's paths against the floor
//! programs (tests/floors), which build.rs builds and embeds here, never into ipipd.

pub mod testrun;
pub mod trace;
