//! Act: what the hooks do once they have decided, one concern a module.
//!
//! - [`verdict`]: count a decision, pass to the kernel, and the hooks' single drop exit;
//! - [`deliver`]: to a local pod (`bpf_redirect_peer`), or up the tunnel device to the kernel;
//! - [`encap`]: IP-in-IP toward a peer node;
//! - [`next_hop`]: the L2 toward a peer node (cached in its route, or the FIB's), sending to it,
//!   and the plain (unencapsulated) forward;
//! - [`kernel_flow`]: the flows the kernel handles (a Service's DNAT, a masquerade), whose
//!   replies must reach it too.
//!
//! Every action returns a [`verdict::Verdict`]: the tc action on success, or the reason of a
//! drop, which the hook counts once, with the packet's length as it arrived.

pub mod deliver;
pub mod encap;
pub mod kernel_flow;
pub mod next_hop;
pub mod verdict;
