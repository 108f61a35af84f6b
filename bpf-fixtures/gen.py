#!/usr/bin/env python3
"""Writes bpf-fixtures/vectors/*.toml: inputs and expected outputs built with scapy.

Frames come from the packet library, never from ipipd's code: scapy computes every checksum and
length. Run `python3 bpf-fixtures/gen.py` (needs scapy: Debian's python3-scapy, or pip) after
changing a vector here; the .toml files it writes are what the runner reads and what reviewers
read. A vector can also be written by hand: the runner needs no Rust change for a new one.
"""
import os
import sys

from scapy.all import ARP, ICMP, IP, UDP, TCP, Dot1AD, Dot1Q, Ether, IPv6, Raw, raw  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "vectors")

# The seed's worker node ("node"): uplink eth0, 172.31.242.156/20; master 172.31.242.157.
NODE_IP, NODE_MAC = "172.31.242.156", "00:16:3e:00:89:75"
PEER_IP, PEER_MAC = "172.31.242.157", "00:16:3e:01:aa:f2"
# Calico gives every host-side cali* veth this MAC.
HOST_MAC = "ee:ee:ee:ee:ee:ee"
POD1, POD1_MAC, POD1_IF = "192.168.83.129", "0a:58:c0:a8:53:81", "cali513e7f6c556"
POD2, POD2_MAC, POD2_IF = "192.168.83.130", "0a:58:c0:a8:53:82", "cali85f45a254f4"
REMOTE_POD = "192.168.179.2"  # in the master's block 192.168.179.0/26
UNUSED_OWN = "192.168.83.140"  # in the node's block, no endpoint
STRANGER = "172.31.242.200"  # on the underlay, not a peer
# Cross-subnet base: a far node behind the router, owning 192.168.200.0/26.
FAR_NODE, FAR_POD = "10.0.5.7", "192.168.200.3"
ROUTER_IP, ROUTER_MAC = "172.31.240.1", "00:16:3e:00:00:01"
# The tunnel device the bases create (ipipd's stand-in for tunl0): a NOARP device, so the
# kernel's frames into it carry its own MAC on both sides.
TUNNEL_IF, TUNNEL_MAC = "ipipd0", "02:69:70:69:70:64"

vectors = []


def h(pkt):
    return raw(pkt).hex()


def counter(interface, hook, reason, frame):
    return {"interface": interface, "hook": hook, "reason": reason, "packets": 1, "bytes": len(raw(frame))}


def recorded(interface, hook):
    """A flow handed to the kernel, recorded once: a note without bytes."""
    return {"interface": interface, "hook": hook, "reason": "kernel_flow_recorded", "packets": 1, "bytes": 0}


def vec(file, name, program, interface, frame, verdict, counters, output=None, base="node.toml", **extra):
    v = {"file": file, "name": name, "base": base, "program": program, "interface": interface,
         "input": h(frame), "verdict": verdict, "counters": counters, "output": output}
    v.update(extra)
    vectors.append(v)


def from_pod1(inner):
    """A frame pod 1 sends to its gateway: dst is the host veth's MAC."""
    return Ether(src=POD1_MAC, dst=HOST_MAC) / inner


def encap(inner, ttl_dec=True, src=NODE_IP, dst=PEER_IP, smac=NODE_MAC, dmac=PEER_MAC, ip_id=0):
    """What the tunnel puts on the wire: outer header per the from_pod rules."""
    inner = inner.copy()
    if ttl_dec:
        inner.ttl -= 1
    inner.chksum = None
    df = "DF" if "DF" in str(inner.flags) else 0
    return Ether(src=smac, dst=dmac) / IP(src=src, dst=dst, ttl=64, proto=4, tos=inner.tos, flags=df, id=ip_id) / inner


def tunnel(inner, src=PEER_IP, dst=NODE_IP, tos=0, **outer):
    """An IP-in-IP frame arriving on the uplink from src."""
    return Ether(src=PEER_MAC, dst=NODE_MAC) / IP(src=src, dst=dst, proto=4, ttl=63, tos=tos, **outer) / inner


def icmp(src, dst, ttl=64, **kw):
    return IP(src=src, dst=dst, ttl=ttl, flags="DF", id=1, **kw) / ICMP(id=7, seq=1) / Raw(b"ipipd-fixture-payload")


def udp(src, dst, ttl=64, size=0, **kw):
    ip = dict(src=src, dst=dst, ttl=ttl, id=2)
    ip.update(kw)
    return IP(**ip) / UDP(sport=40000, dport=5201) / Raw(b"u" * max(size, 16))


# ---------------------------------------------------------------- from_pod: ARP
for n, (target, what) in enumerate([("169.254.1.1", "the pods' gateway"), (REMOTE_POD, "a remote pod")]):
    req = Ether(src=POD1_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=POD1_MAC, psrc=POD1, pdst=target)
    rep = Ether(src=HOST_MAC, dst=POD1_MAC) / ARP(op=2, hwsrc=HOST_MAC, psrc=target, hwdst=POD1_MAC, pdst=POD1)
    vec(f"pod-arp-{n + 1}.toml", f"ARP request for {what} is answered with the host veth's MAC, back into the pod",
        "from_pod", POD1_IF, req, "redirect", [counter(POD1_IF, "from_pod", "arp_reply", req)], h(rep))
req = Ether(src=POD1_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=POD1_MAC, psrc="0.0.0.0", pdst="169.254.1.1")
rep = Ether(src=HOST_MAC, dst=POD1_MAC) / ARP(op=2, hwsrc=HOST_MAC, psrc="169.254.1.1", hwdst=POD1_MAC, pdst="0.0.0.0")
vec("pod-arp-probe.toml", "ARP probe (sender 0.0.0.0) is answered too", "from_pod", POD1_IF, req, "redirect",
    [counter(POD1_IF, "from_pod", "arp_reply", req)], h(rep))
req = Ether(src=POD1_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=POD1_MAC, psrc=POD1, pdst=POD1)
vec("pod-arp-own.toml", "ARP for the pod's own address is not answered: the kernel takes it", "from_pod", POD1_IF,
    req, "ok", [counter(POD1_IF, "from_pod", "arp_pass", req)])
rep = Ether(src=POD1_MAC, dst=HOST_MAC) / ARP(op=2, hwsrc=POD1_MAC, psrc=POD1, hwdst=HOST_MAC, pdst="169.254.1.1")
vec("pod-arp-reply.toml", "ARP reply from a pod goes to the kernel", "from_pod", POD1_IF, rep, "ok",
    [counter(POD1_IF, "from_pod", "arp_pass", rep)])
req = Ether(src=POD1_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=POD1_MAC, psrc=POD2, pdst="169.254.1.1")
vec("pod-arp-spoofed.toml", "ARP request claiming another pod's address is dropped", "from_pod", POD1_IF, req, "shot",
    [counter(POD1_IF, "from_pod", "drop_arp_spoofed", req)])

# ---------------------------------------------------------------- from_pod: local delivery
for proto, mk in [("icmp", icmp), ("udp", udp)]:
    f = from_pod1(mk(POD1, POD2))
    exp_inner = mk(POD1, POD2, ttl=63)
    out = Ether(src=HOST_MAC, dst=POD2_MAC) / exp_inner
    vec(f"pod-to-pod-{proto}.toml", f"{proto.upper()} pod to pod on one node: TTL-1, MACs rewritten, redirect_peer to the peer's veth",
        "from_pod", POD1_IF, f, "redirect", [counter(POD2_IF, "from_pod", "deliver_pod_to_pod", f)], h(out))
f = from_pod1(udp(POD1, POD2, ttl=1))
vec("pod-to-pod-ttl1.toml", "TTL 1 to a local pod: the kernel takes it (time exceeded)", "from_pod", POD1_IF, f, "ok",
    [counter(POD1_IF, "from_pod", "pass_ttl_expired", f)])

# ---------------------------------------------------------------- from_pod: encapsulation
inner = icmp(POD1, REMOTE_POD, tos=0x02)
f = from_pod1(inner)
vec("pod-encap-icmp-df.toml", "ICMP to a remote block, DF set, ECT(0): encapsulated (TTL 64, TOS copied, DF copied, ID 0), inner TTL-1, L2 from the FIB",
    "from_pod", POD1_IF, f, "redirect", [counter(POD1_IF, "from_pod", "encap", f)], h(encap(inner)))
inner = udp(POD1, REMOTE_POD, tos=0xbb, size=100)
f = from_pod1(inner)
vec("pod-encap-udp-noDF-cpu0.toml", "UDP, DF clear, DSCP 46 + CE: outer TOS copied (RFC 6040 normal mode), DF clear, ID from CPU 0's counter",
    "from_pod", POD1_IF, f, "redirect", [counter(POD1_IF, "from_pod", "encap", f)], h(encap(inner, ip_id=0)), cpu=0)
vec("pod-encap-udp-noDF-cpu1.toml", "UDP, DF clear, on CPU 1: the CPU number, bit-reversed, is in the ID's high bits",
    "from_pod", POD1_IF, f, "redirect", [counter(POD1_IF, "from_pod", "encap", f)], h(encap(inner, ip_id=0x8000)), cpu=1)
inner = icmp(POD1, PEER_IP)
f = from_pod1(inner)
vec("pod-encap-peer-ip.toml", "A pod to a peer node's own IP is encapsulated: pod addresses never appear bare on the underlay",
    "from_pod", POD1_IF, f, "redirect", [counter(POD1_IF, "from_pod", "encap", f)], h(encap(inner)))
inner = IP(src=POD1, dst=REMOTE_POD, ttl=64, flags="DF", id=3) / TCP(sport=40001, dport=80, flags="S", seq=1000)
f = from_pod1(inner)
vec("pod-encap-tcp-syn.toml", "TCP SYN to a remote pod is encapsulated", "from_pod", POD1_IF, f, "redirect",
    [counter(POD1_IF, "from_pod", "encap", f)], h(encap(inner)))
inner = icmp(POD1, REMOTE_POD)
f = from_pod1(inner)
vec("pod-encap-no-neigh.toml", "No neighbour entry for the peer: encapsulated and handed to bpf_redirect_neigh (L2 left to the kernel)",
    "from_pod", POD1_IF, f, "redirect", [counter(POD1_IF, "from_pod", "encap", f)],
    raw(f)[:14].hex() + raw(encap(inner))[14:].hex(),
    setup=["ip neigh flush dev eth0", "ip neigh del 172.31.242.157 dev eth0 || true"])
# The daemon caches the peer's MAC in the route (flag l2, from the neighbour table): the program
# writes it without asking the FIB, so even with no neighbour entry the frame leaves with it.
CACHED_MAC = "00:16:3e:01:aa:f9"
CACHED_L2 = [dict(cidr="192.168.179.0/26", kind="remote_block", node=PEER_IP, flags=["encap"],
                  next_hop_mac=CACHED_MAC, uplink_mac=NODE_MAC)]
vec("pod-encap-cached-l2.toml", "The peer's L2 cached in the route: encapsulated with that MAC, no FIB lookup (none would find a neighbour)",
    "from_pod", POD1_IF, f, "redirect", [counter(POD1_IF, "from_pod", "encap", f)], h(encap(inner, dmac=CACHED_MAC)),
    setup=["ip neigh flush dev eth0", "ip neigh del 172.31.242.157 dev eth0 || true"], routes=CACHED_L2)
# Route changes take effect on the next packet: the programs cache the trie's answers per CPU,
# tagged with the route generation the daemon raises after each change (`then` steps rerun the
# input after a change; the runner raises the generation as the daemon does).
PEER2_IP, PEER2_MAC = "172.31.242.158", "00:16:3e:01:aa:f3"
MASTER_BLOCK = "192.168.179.0/26"
vec("pod-encap-route-changes.toml", "A remote block moves to another node, goes away and comes back: each change holds from the next packet on",
    "from_pod", POD1_IF, f, "redirect", [counter(POD1_IF, "from_pod", "encap", f)], h(encap(inner)),
    setup=[f"ip neigh replace {PEER2_IP} lladdr {PEER2_MAC} dev eth0 nud permanent"],
    then=[
        dict(name="the block moves to 172.31.242.158",
             routes=[dict(cidr=MASTER_BLOCK, kind="remote_block", node=PEER2_IP, flags=["encap"])],
             verdict="redirect", output=h(encap(inner, dst=PEER2_IP, dmac=PEER2_MAC)),
             counters=[counter(POD1_IF, "from_pod", "encap", f)]),
        dict(name="the block is removed", remove=[MASTER_BLOCK],
             verdict="ok", output=None, counters=[counter(POD1_IF, "from_pod", "pass_to_kernel", f),
                                                  recorded(POD1_IF, "from_pod")]),
        dict(name="the block is back on 172.31.242.157",
             routes=[dict(cidr=MASTER_BLOCK, kind="remote_block", node=PEER_IP, flags=["encap"])],
             verdict="redirect", output=h(encap(inner)), counters=[counter(POD1_IF, "from_pod", "encap", f)]),
    ])
vec("pod-encap-no-route.toml", "No route to the peer node: dropped before the packet is touched", "from_pod", POD1_IF, f, "shot",
    [counter(POD1_IF, "from_pod", "drop_no_route_to_peer", f)], setup=["ip neigh flush dev eth0", "ip addr flush dev eth0"])
f = from_pod1(udp(POD1, REMOTE_POD, ttl=1))
vec("pod-encap-ttl1.toml", "TTL 1 toward a remote block: the kernel takes it (time exceeded)", "from_pod", POD1_IF, f, "ok",
    [counter(POD1_IF, "from_pod", "pass_ttl_expired", f)])
# 1480 + 20 = 1500 fits; 1481 does not.
inner = IP(src=POD1, dst=REMOTE_POD, ttl=64, flags="DF", id=4) / UDP(sport=1, dport=2) / Raw(b"x" * (1480 - 28))
f = from_pod1(inner)
vec("pod-encap-mtu-fits.toml", "1480-byte packet: exactly fits the 1500 underlay once encapsulated", "from_pod", POD1_IF, f,
    "redirect", [counter(POD1_IF, "from_pod", "encap", f)], h(encap(inner)))
f = from_pod1(IP(src=POD1, dst=REMOTE_POD, ttl=64, flags="DF", id=5) / UDP(sport=1, dport=2) / Raw(b"x" * (1481 - 28)))
vec("pod-too-big-df.toml", "1481-byte packet, DF set, not GSO: the kernel takes it (its mtu-20 route answers fragmentation-needed)",
    "from_pod", POD1_IF, f, "ok", [counter(POD1_IF, "from_pod", "pass_too_big", f)])
f = from_pod1(IP(src=POD1, dst=REMOTE_POD, ttl=64, id=6) / UDP(sport=1, dport=2) / Raw(b"x" * (3000 - 28)))
vec("pod-too-big-nodf.toml", "3000-byte packet, DF clear: the kernel takes it (and fragments it)", "from_pod", POD1_IF, f, "ok",
    [counter(POD1_IF, "from_pod", "pass_too_big", f)])
f = from_pod1(IP(src=POD1, dst=REMOTE_POD, ttl=64, flags="DF", id=7) / UDP(sport=1, dport=2) / Raw(b"x" * (1390 - 28)))
vec("pod-too-big-config-mtu.toml", "The configured mtu (1400), not the device's, bounds the tunnel: 1390 + 20 > 1400", "from_pod",
    POD1_IF, f, "ok", [counter(POD1_IF, "from_pod", "pass_too_big", f)],
    node={"address": NODE_IP, "uplink": "eth0", "mtu": 1400, "mode": "always"})

# A GSO skb that adjust_room refuses (test_run sets gso_size without a gso_type: -ENOTSUPP) is a
# counted drop, never sent half-built.
inner = IP(src=POD1, dst=REMOTE_POD, ttl=64, flags="DF", id=11) / TCP(sport=40002, dport=80, flags="A") / Raw(b"g" * 1000)
f = from_pod1(inner)
vec("pod-encap-refused.toml", "adjust_room refuses to encapsulate (a GSO skb it cannot handle): dropped and counted",
    "from_pod", POD1_IF, f, "shot", [counter(POD1_IF, "from_pod", "drop_encap_failed", f)], gso_size=500)
f = tunnel(IP(src=REMOTE_POD, dst=POD1, ttl=63, flags="DF", id=12) / TCP(sport=80, dport=40002, flags="A") / Raw(b"g" * 1000))
vec("uplink-decap-refused.toml", "adjust_room refuses to decapsulate (a GSO skb it cannot handle): dropped and counted",
    "from_uplink", "eth0", f, "shot", [counter("eth0", "from_uplink", "drop_decap_failed", f)], gso_size=500)

# ---------------------------------------------------------------- from_pod: other decisions and drops
f = from_pod1(icmp(POD1, UNUSED_OWN))
vec("pod-blackhole.toml", "An unused address of the node's own block: dropped (the blackhole route)", "from_pod", POD1_IF, f,
    "shot", [counter(POD1_IF, "from_pod", "drop_blackhole", f)])
f = from_pod1(udp(POD1, "10.96.0.10"))
vec("pod-to-service.toml", "A service address (not a pod, not a block): the kernel takes it unchanged, its flow recorded",
    "from_pod", POD1_IF, f, "ok", [counter(POD1_IF, "from_pod", "pass_to_kernel", f), recorded(POD1_IF, "from_pod")])
vec("pod-to-service-recorded.toml", "A service flow already recorded: the kernel takes it, nothing written again",
    "from_pod", POD1_IF, f, "ok", [counter(POD1_IF, "from_pod", "pass_to_kernel", f)],
    kernel_flows=[dict(addr=POD1, port=40000, proto="udp")])
f = from_pod1(icmp(POD1, NODE_IP))
vec("pod-to-own-node.toml", "The node's own address: the kernel takes it unchanged, its flow recorded", "from_pod", POD1_IF, f,
    "ok", [counter(POD1_IF, "from_pod", "pass_to_kernel", f), recorded(POD1_IF, "from_pod")])

# The node's tunnel address (Calico's ipv4IPIPTunnelAddr, on ipipd0 as on tunl0): the first
# address of its own block, the node's own ("local ... dev tunl0"), not the blackhole's.
TUNNEL_ADDR = "192.168.83.128"
TUNNEL_ADDR_ROUTE = [dict(cidr=TUNNEL_ADDR + "/32", kind="tunnel_address")]
f = from_pod1(icmp(POD1, TUNNEL_ADDR))
vec("pod-to-tunnel-address.toml", "The node's tunnel address (inside its block): the kernel takes it unchanged, its flow recorded, not the blackhole",
    "from_pod", POD1_IF, f, "ok", [counter(POD1_IF, "from_pod", "pass_to_kernel", f), recorded(POD1_IF, "from_pod")],
    routes=TUNNEL_ADDR_ROUTE)

# Replies of flows the kernel handles (a Service's DNAT, a masquerade) go to the kernel: the
# end they are addressed to was recorded when the flow's first packet was handed to it.
SVC_REPLY_FLOW = [dict(addr=POD1, port=40000, proto="udp")]
f = Ether(src=POD2_MAC, dst=HOST_MAC) / IP(src=POD2, dst=POD1, ttl=64, id=1) / UDP(sport=53, dport=40000) / Raw(b"answer")
vec("pod-to-pod-kernel-flow.toml", "A local pod's reply to a flow the kernel translated (a Service backend on the same node): the kernel takes it",
    "from_pod", POD2_IF, f, "ok", [counter(POD2_IF, "from_pod", "pass_kernel_flow", f)], kernel_flows=SVC_REPLY_FLOW)
f = Ether(src=POD2_MAC, dst=HOST_MAC) / IP(src=POD2, dst=POD1, ttl=64, id=1) / UDP(sport=53, dport=40001) / Raw(b"answer")
out = Ether(src=HOST_MAC, dst=POD1_MAC) / IP(src=POD2, dst=POD1, ttl=63, id=1) / UDP(sport=53, dport=40001) / Raw(b"answer")
vec("pod-to-pod-other-port.toml", "The same pods, another port than the recorded flow's: delivered by ipipd",
    "from_pod", POD2_IF, f, "redirect", [counter(POD1_IF, "from_pod", "deliver_pod_to_pod", f)], h(out),
    kernel_flows=SVC_REPLY_FLOW)
# The programs remember, per CPU, ends the kernel-flows map did not hold, under the map's
# generation: an end recorded later (by a program that hands a packet to the kernel, or by user
# space) is the kernel's from the next packet on.
f = Ether(src=POD2_MAC, dst=HOST_MAC) / IP(src=POD2, dst=POD1, ttl=64, id=1) / UDP(sport=53, dport=40002) / Raw(b"answer")
out = Ether(src=HOST_MAC, dst=POD1_MAC) / IP(src=POD2, dst=POD1, ttl=63, id=1) / UDP(sport=53, dport=40002) / Raw(b"answer")
to_svc = from_pod1(IP(src=POD1, dst="10.96.0.10", ttl=64, id=2) / UDP(sport=40002, dport=53) / Raw(b"query"))
vec("pod-to-pod-flow-recorded-later.toml", "Delivered while the end is no flow's; once pod 1 sends from that port to a Service (its flow recorded), the kernel takes the next packet",
    "from_pod", POD2_IF, f, "redirect", [counter(POD1_IF, "from_pod", "deliver_pod_to_pod", f)], h(out),
    then=[dict(name="pod 1 sends from port 40002 to a Service: from_pod records the end",
               send=[dict(program="from_pod", interface=POD1_IF, input=h(to_svc))],
               verdict="ok", output=None, counters=[counter(POD2_IF, "from_pod", "pass_kernel_flow", f)])])
def reply_to_pod1(ttl):
    return IP(src=REMOTE_POD, dst=POD1, ttl=ttl, flags="DF", id=13) / TCP(sport=80, dport=41002, flags="A") / Raw(b"reply")


f = tunnel(reply_to_pod1(63))
vec("uplink-decap-flow-recorded-later.toml", "Decapsulated to the pod while the end is no flow's; once user space records it, decapsulated to the kernel",
    "from_uplink", "eth0", f, "redirect", [counter(POD1_IF, "from_uplink", "decap_deliver", f)],
    h(Ether(src=HOST_MAC, dst=POD1_MAC) / reply_to_pod1(62)),
    then=[dict(name="user space records the end 192.168.83.129:41002/tcp",
               kernel_flows=[dict(addr=POD1, port=41002, proto="tcp")],
               verdict="redirect", output=h(Ether(src=PEER_MAC, dst=TUNNEL_MAC) / reply_to_pod1(63)),
               counters=[counter("eth0", "from_uplink", "decap_kernel_flow", f)])])
f = from_pod1(IP(src=POD1, dst=REMOTE_POD, ttl=64, id=9) / TCP(sport=8080, dport=33000, flags="SA"))
vec("pod-encap-kernel-flow.toml", "A reply to a remote pod whose flow the kernel translated here (a NodePort, a hostPort): the kernel takes it",
    "from_pod", POD1_IF, f, "ok", [counter(POD1_IF, "from_pod", "pass_kernel_flow", f)],
    kernel_flows=[dict(addr=REMOTE_POD, port=33000, proto="tcp")])
f = from_pod1(IP(src=POD1, dst=POD2, ttl=64, id=10, flags="MF") / UDP(sport=5, dport=6) / Raw(b"f" * 64))
vec("pod-to-pod-fragment.toml", "A fragment to a local pod: the kernel's (not every piece carries ports; conntrack reassembles)",
    "from_pod", POD1_IF, f, "ok", [counter(POD1_IF, "from_pod", "pass_kernel_flow", f)])
f = from_pod1(udp(POD1, POD2))
vec("pod-to-pod-slow-path.toml", "fast_path = false: a local pod's packet is the kernel's to forward (its FORWARD chain sees it)",
    "from_pod", POD1_IF, f, "ok", [counter(POD1_IF, "from_pod", "pass_slow_path", f)],
    node={"address": NODE_IP, "uplink": "eth0", "mtu": 1500, "mode": "always", "tunnel": TUNNEL_IF, "fast_path": False})
f = from_pod1(icmp(POD2, REMOTE_POD))
vec("pod-spoofed-source.toml", "A pod sending from another pod's address: dropped", "from_pod", POD1_IF, f, "shot",
    [counter(POD1_IF, "from_pod", "drop_spoofed_source", f)])
f = Ether(src="0a:58:00:00:00:09", dst=HOST_MAC) / icmp("192.168.83.133", REMOTE_POD)
vec("pod-unknown-endpoint.toml", "A packet on a veth ipipd has no endpoint for: dropped", "from_pod", "cali0000000009", f, "shot",
    [counter("cali0000000009", "from_pod", "drop_unknown_endpoint", f)],
    setup=["ip link add cali0000000009 type veth peer name pod9", "ip link set cali0000000009 up"])
f = Ether(src=POD1_MAC, dst=HOST_MAC, type=0x86dd) / IPv6(src="fe80::1", dst="ff02::2", nh=59)
vec("pod-ipv6.toml", "IPv6 from a pod: not ipipd's, the kernel takes it", "from_pod", POD1_IF, f, "ok",
    [counter(POD1_IF, "from_pod", "pass_not_ipv4", f)])
# (BPF_PROG_TEST_RUN itself refuses an IPv4 frame shorter than an IPv4 header, so ARP shows it.)
f = Ether(src=POD1_MAC, dst="ff:ff:ff:ff:ff:ff", type=0x0806) / Raw(bytes.fromhex("0001080006040001"))
vec("pod-truncated.toml", "ARP frame shorter than an ARP body: dropped", "from_pod", POD1_IF, f, "shot",
    [counter(POD1_IF, "from_pod", "drop_truncated", f)])
bad = bytearray(raw(from_pod1(icmp(POD1, REMOTE_POD))))
bad[14] = 0x44
vec("pod-bad-ihl.toml", "IHL 4: dropped", "from_pod", POD1_IF, Ether(bytes(bad)), "shot",
    [{"interface": POD1_IF, "hook": "from_pod", "reason": "drop_bad_ip_header", "packets": 1, "bytes": len(bad)}])
bad = bytearray(raw(from_pod1(icmp(POD1, REMOTE_POD))))
bad[16:18] = (len(bad) - 14 + 1).to_bytes(2, "big")
vec("pod-bad-totlen.toml", "Total length beyond the frame: dropped", "from_pod", POD1_IF, Ether(bytes(bad)), "shot",
    [{"interface": POD1_IF, "hook": "from_pod", "reason": "drop_bad_ip_header", "packets": 1, "bytes": len(bad)}])

f = Ether(src=POD1_MAC, dst=HOST_MAC) / Dot1Q(vlan=7) / icmp(POD1, REMOTE_POD)
vec("pod-vlan-tagged.toml", "An 802.1Q-tagged frame from a pod: dropped, never tunnelled with its tag", "from_pod", POD1_IF, f,
    "shot", [counter(POD1_IF, "from_pod", "drop_vlan_tagged", f)])
f = Ether(src=POD1_MAC, dst=HOST_MAC) / Dot1AD(vlan=100) / Dot1Q(vlan=7) / icmp(POD1, POD2)
vec("pod-qinq-tagged.toml", "An 802.1ad (QinQ) frame from a pod to a local pod: dropped", "from_pod", POD1_IF, f,
    "shot", [counter(POD1_IF, "from_pod", "drop_vlan_tagged", f)])
f = Ether(src=POD1_MAC, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=7) / ARP(op=1, hwsrc=POD1_MAC, psrc=POD1, pdst="169.254.1.1")
vec("pod-vlan-tagged-arp.toml", "A tagged ARP request from a pod: dropped, not answered", "from_pod", POD1_IF, f,
    "shot", [counter(POD1_IF, "from_pod", "drop_vlan_tagged", f)])
f = from_pod1(icmp(POD1, REMOTE_POD, chksum=0x1234))
vec("pod-bad-checksum.toml", "IPv4 header checksum wrong: dropped at the pod, as the kernel's forwarding would", "from_pod", POD1_IF,
    f, "shot", [counter(POD1_IF, "from_pod", "drop_bad_ip_checksum", f)])
f = from_pod1(icmp(POD1, POD2, chksum=0x1234))
vec("pod-to-pod-bad-checksum.toml", "IPv4 header checksum wrong, to a local pod: dropped", "from_pod", POD1_IF,
    f, "shot", [counter(POD1_IF, "from_pod", "drop_bad_ip_checksum", f)])
opt = [b"\x94\x04\x00\x00"]  # Router Alert
inner = icmp(POD1, REMOTE_POD, options=opt)
f = from_pod1(inner)
vec("pod-encap-options.toml", "A header with options and a good checksum: encapsulated as it is (options summed too)", "from_pod",
    POD1_IF, f, "redirect", [counter(POD1_IF, "from_pod", "encap", f)], h(encap(inner)))
bad = bytearray(raw(from_pod1(icmp(POD1, REMOTE_POD, options=opt))))
bad[14 + 20] ^= 0x01  # an option byte changed after the checksum was computed
f = Ether(bytes(bad))
vec("pod-options-bad-checksum.toml", "A header whose options do not match its checksum: dropped", "from_pod", POD1_IF, f, "shot",
    [counter(POD1_IF, "from_pod", "drop_bad_ip_checksum", f)])

# ---------------------------------------------------------------- cross-subnet
XS = "cross-subnet.toml"
inner = icmp(POD1, REMOTE_POD)
f = from_pod1(inner)
out = Ether(src=NODE_MAC, dst=PEER_MAC) / icmp(POD1, REMOTE_POD, ttl=63)
vec("xs-pod-same-subnet.toml", "Cross-subnet: a same-subnet node's block is routed to that node without encapsulation (next hop = the node)",
    "from_pod", POD1_IF, f, "redirect", [counter(POD1_IF, "from_pod", "forward_same_subnet", f)], h(out), base=XS)
inner = icmp(POD1, FAR_POD)
f = from_pod1(inner)
vec("xs-pod-far-subnet.toml", "Cross-subnet: a block of a node behind the router is encapsulated; outer next hop = the router's MAC",
    "from_pod", POD1_IF, f, "redirect", [counter(POD1_IF, "from_pod", "encap", f)],
    h(encap(inner, dst=FAR_NODE, dmac=ROUTER_MAC)), base=XS)
f = Ether(src=PEER_MAC, dst=NODE_MAC) / udp(REMOTE_POD, POD1)
out = Ether(src=HOST_MAC, dst=POD1_MAC) / udp(REMOTE_POD, POD1, ttl=63)
vec("xs-uplink-plain-to-pod.toml", "Cross-subnet: plain IPv4 from the wire to a local pod is delivered with redirect_peer",
    "from_uplink", "eth0", f, "redirect", [counter(POD1_IF, "from_uplink", "deliver_from_uplink", f)], h(out), base=XS)
vec("xs-uplink-plain-kernel-flow.toml", "Cross-subnet: plain from a same-subnet pod to a local pod's end of a flow the kernel translated: the kernel takes it",
    "from_uplink", "eth0", f, "ok", [counter("eth0", "from_uplink", "pass_kernel_flow", f)], base=XS,
    kernel_flows=[dict(addr=POD1, port=f[UDP].dport, proto="udp")])
f = Ether(src=PEER_MAC, dst=NODE_MAC) / udp(REMOTE_POD, POD1, chksum=0x1234)
vec("xs-uplink-plain-bad-checksum.toml", "Cross-subnet: plain IPv4 to a local pod with a wrong header checksum: dropped",
    "from_uplink", "eth0", f, "shot", [counter("eth0", "from_uplink", "drop_bad_ip_checksum", f)], base=XS)

# ---------------------------------------------------------------- from_uplink
def inner_to_pod1(ttl=63, tos=0):
    return udp(REMOTE_POD, POD1, ttl=ttl, tos=tos)


for name, inner_tos, outer_tos, result_tos, extra in [
    ("plain", 0x00, 0x00, 0x00, []),
    ("ecn-ect0-outer-ce", 0x02, 0x03, 0x03, []),
    ("ecn-ect0-outer-ect1", 0x02, 0x01, 0x01, []),
    ("ecn-ect1-outer-ect0", 0x01, 0x02, 0x01, []),
    ("ecn-dscp-kept", 0xb8 | 0x02, 0x03, 0xb8 | 0x03, []),
    ("ecn-notect-outer-ect0", 0x00, 0x02, 0x00, ["ecn_unused_combination"]),
    ("ecn-ce-outer-ect1", 0x03, 0x01, 0x03, ["ecn_unused_combination"]),
]:
    f = tunnel(inner_to_pod1(tos=inner_tos), tos=outer_tos)
    out = Ether(src=HOST_MAC, dst=POD1_MAC) / udp(REMOTE_POD, POD1, ttl=62, tos=result_tos)
    cs = [counter(POD1_IF, "from_uplink", "decap_deliver", f)] + [counter("eth0", "from_uplink", r, f) for r in extra]
    vec(f"uplink-decap-{name}.toml", f"IPIP from the peer to a local pod: decapsulated, TTL-1, delivered (inner TOS {inner_tos:#04x}, outer {outer_tos:#04x} -> {result_tos:#04x}, RFC 6040)",
        "from_uplink", "eth0", f, "redirect", cs, h(out))
f = tunnel(inner_to_pod1())
vec("uplink-peer-removed.toml", "A peer node is removed: its tunnel packets are dropped from the next packet on",
    "from_uplink", "eth0", f, "redirect", [counter(POD1_IF, "from_uplink", "decap_deliver", f)],
    h(Ether(src=HOST_MAC, dst=POD1_MAC) / udp(REMOTE_POD, POD1, ttl=62)),
    then=[dict(name="the peer's /32 is removed", remove=[PEER_IP + "/32"], verdict="shot", output=None,
               counters=[counter("eth0", "from_uplink", "drop_ipip_unknown_peer", f)])])
f = tunnel(inner_to_pod1(tos=0x00), tos=0x03)
vec("uplink-ecn-ce-not-ect.toml", "RFC 6040: outer CE over a Not-ECT inner packet is dropped", "from_uplink", "eth0", f, "shot",
    [counter("eth0", "from_uplink", "drop_ecn_ce_not_ect", f)])
f = tunnel(inner_to_pod1(ttl=1))
out = Ether(src=PEER_MAC, dst=TUNNEL_MAC) / inner_to_pod1(ttl=1)
vec("uplink-decap-ttl1.toml", "Inner TTL 1: decapsulated and handed to the kernel through the tunnel device (time exceeded)",
    "from_uplink", "eth0", f, "redirect", [counter("eth0", "from_uplink", "decap_ttl_expired", f)], h(out))
f = tunnel(icmp(REMOTE_POD, NODE_IP))
out = Ether(src=PEER_MAC, dst=TUNNEL_MAC) / icmp(REMOTE_POD, NODE_IP)
vec("uplink-decap-to-node.toml", "Inner destination is the node itself: decapsulated and handed to the kernel as received on the tunnel device, its flow recorded",
    "from_uplink", "eth0", f, "redirect", [counter("eth0", "from_uplink", "decap_to_kernel", f), recorded("eth0", "from_uplink")], h(out))
f = tunnel(icmp(REMOTE_POD, TUNNEL_ADDR))
out = Ether(src=PEER_MAC, dst=TUNNEL_MAC) / icmp(REMOTE_POD, TUNNEL_ADDR)
vec("uplink-decap-to-tunnel-address.toml", "Inner destination is the node's tunnel address (a reply to the node's own traffic to a remote pod): decapsulated and handed to the kernel through the tunnel device",
    "from_uplink", "eth0", f, "redirect", [counter("eth0", "from_uplink", "decap_to_kernel", f), recorded("eth0", "from_uplink")], h(out),
    routes=TUNNEL_ADDR_ROUTE)
reply = IP(src=REMOTE_POD, dst=POD1, ttl=63, flags="DF", id=13) / TCP(sport=8080, dport=41000, flags="SA")
f = tunnel(reply)
out = Ether(src=PEER_MAC, dst=TUNNEL_MAC) / reply
vec("uplink-decap-kernel-flow.toml", "A remote backend's reply to a flow the kernel translated here (a ClusterIP): decapsulated, to the kernel through the tunnel device",
    "from_uplink", "eth0", f, "redirect", [counter("eth0", "from_uplink", "decap_kernel_flow", f)], h(out),
    kernel_flows=[dict(addr=POD1, port=41000, proto="tcp")])
f = tunnel(inner_to_pod1())
out = Ether(src=PEER_MAC, dst=TUNNEL_MAC) / inner_to_pod1()
vec("uplink-decap-slow-path.toml", "fast_path = false: decapsulated, to the kernel through the tunnel device (its FORWARD chain sees it)",
    "from_uplink", "eth0", f, "redirect", [counter("eth0", "from_uplink", "decap_slow_path", f)], h(out),
    node={"address": NODE_IP, "uplink": "eth0", "mtu": 1500, "mode": "always", "tunnel": TUNNEL_IF, "fast_path": False})
f = tunnel(icmp(REMOTE_POD, UNUSED_OWN))
vec("uplink-blackhole.toml", "Inner destination in the own block without an endpoint: dropped", "from_uplink", "eth0", f, "shot",
    [counter("eth0", "from_uplink", "drop_blackhole", f)])
f = tunnel(inner_to_pod1(), src=STRANGER)
vec("uplink-unknown-peer.toml", "IPIP from a host that is not a peer: dropped", "from_uplink", "eth0", f, "shot",
    [counter("eth0", "from_uplink", "drop_ipip_unknown_peer", f)])
f = tunnel(inner_to_pod1(), src=REMOTE_POD)
vec("uplink-pod-source-outer.toml", "IPIP whose outer source is a pod address (in a remote block, not a peer): dropped", "from_uplink",
    "eth0", f, "shot", [counter("eth0", "from_uplink", "drop_ipip_unknown_peer", f)])
f = tunnel(inner_to_pod1(), flags="MF")
vec("uplink-outer-fragment.toml", "Outer fragment (MF): dropped", "from_uplink", "eth0", f, "shot",
    [counter("eth0", "from_uplink", "drop_outer_fragment", f)])
f = tunnel(inner_to_pod1(), frag=100)
vec("uplink-outer-fragment-offset.toml", "Outer non-first fragment (offset): dropped", "from_uplink", "eth0", f, "shot",
    [counter("eth0", "from_uplink", "drop_outer_fragment", f)])
f = tunnel(inner_to_pod1(), ihl=4)
f = Ether(raw(f))
vec("uplink-outer-ihl4.toml", "Outer IHL 4: dropped", "from_uplink", "eth0", f, "shot",
    [counter("eth0", "from_uplink", "drop_bad_outer_header", f)])
f = tunnel(inner_to_pod1(), options=[b"\x01\x01\x01\x00"])
vec("uplink-outer-options.toml", "Outer header with options: dropped", "from_uplink", "eth0", f, "shot",
    [counter("eth0", "from_uplink", "drop_outer_options", f)])
bad = bytearray(raw(tunnel(inner_to_pod1())))
bad[16:18] = (len(bad) - 14 + 4).to_bytes(2, "big")
f = Ether(bytes(bad))
vec("uplink-outer-len.toml", "Outer total length beyond the frame: dropped", "from_uplink", "eth0", f, "shot",
    [counter("eth0", "from_uplink", "drop_bad_outer_length", f)])
f = tunnel(inner_to_pod1(), chksum=0x1234)
vec("uplink-outer-checksum.toml", "Outer header checksum wrong: dropped", "from_uplink", "eth0", f, "shot",
    [counter("eth0", "from_uplink", "drop_bad_outer_checksum", f)])
f = tunnel(Raw(bytes.fromhex("43") + raw(inner_to_pod1())[1:]))
vec("uplink-inner-ihl3.toml", "Inner IHL 3 from a real peer: dropped", "from_uplink", "eth0", f, "shot",
    [counter("eth0", "from_uplink", "drop_bad_inner_header", f)])
inner = bytearray(raw(inner_to_pod1()))
inner[2:4] = (len(inner) + 8).to_bytes(2, "big")
f = tunnel(Raw(bytes(inner)))
vec("uplink-inner-truncated.toml", "Inner total length beyond what the outer carries, from a real peer: dropped", "from_uplink", "eth0",
    f, "shot", [counter("eth0", "from_uplink", "drop_bad_inner_length", f)])
f = tunnel(udp(REMOTE_POD, POD1, ttl=63, chksum=0x1234))
vec("uplink-inner-bad-checksum.toml", "Inner header checksum wrong, from a real peer: dropped, not delivered", "from_uplink", "eth0",
    f, "shot", [counter("eth0", "from_uplink", "drop_bad_inner_checksum", f)])
f = Ether(src=PEER_MAC, dst=NODE_MAC) / Dot1Q(vlan=7) / IP(src=PEER_IP, dst=NODE_IP, proto=4, ttl=63) / inner_to_pod1()
vec("uplink-vlan-tagged-ipip.toml", "Tagged IPIP from a peer: the kernel's (a VLAN device's), never decapsulated to a pod",
    "from_uplink", "eth0", f, "ok", [counter("eth0", "from_uplink", "pass_vlan_tagged", f)])
f = tunnel(inner_to_pod1(), dst="172.31.242.99")
vec("uplink-ipip-not-for-node.toml", "IPIP to another address: not ours, passed untouched", "from_uplink", "eth0", f, "ok",
    [counter("eth0", "from_uplink", "pass_ipip", f)])
f = Ether(src=PEER_MAC, dst=NODE_MAC) / udp(PEER_IP, NODE_IP)
vec("uplink-plain-udp.toml", "Plain UDP between nodes (always mode): passed untouched, its flow recorded (a NodePort's DNAT to a local pod would answer it)",
    "from_uplink", "eth0", f, "ok", [counter("eth0", "from_uplink", "pass_to_kernel", f), recorded("eth0", "from_uplink")])
f = Ether(src="00:16:3e:00:00:07", dst=NODE_MAC) / udp("172.31.242.7", NODE_IP)
vec("uplink-plain-stranger.toml", "Plain UDP from a host that is neither a peer nor a pod: passed untouched, nothing recorded (its replies take the kernel's routes)",
    "from_uplink", "eth0", f, "ok", [counter("eth0", "from_uplink", "pass_to_kernel", f)])
f = Ether(src=PEER_MAC, dst=NODE_MAC) / udp(REMOTE_POD, POD1)
vec("uplink-plain-to-pod-always.toml", "Always mode: bare pod traffic from the wire is not delivered by ipipd (the kernel decides)",
    "from_uplink", "eth0", f, "ok", [counter("eth0", "from_uplink", "pass_to_kernel", f), recorded("eth0", "from_uplink")])
f = Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst=NODE_IP)
vec("uplink-arp.toml", "ARP on the uplink: passed untouched", "from_uplink", "eth0", f, "ok",
    [counter("eth0", "from_uplink", "pass_not_ipv4", f)])

# ---------------------------------------------------------------- to_tunnel
# What the kernel routes into the tunnel device; everything leaves by the uplink or is dropped.
def into_tunnel(inner):
    return Ether(src=TUNNEL_MAC, dst=TUNNEL_MAC) / inner


inner = udp(NODE_IP, REMOTE_POD)
f = into_tunnel(inner)
vec("egress-host-to-remote-pod.toml", "Host traffic to a remote pod leaves the uplink encapsulated; the inner header is unchanged (no TTL-1)",
    "to_tunnel", TUNNEL_IF, f, "redirect", [counter(TUNNEL_IF, "to_tunnel", "encap", f)], h(encap(inner, ttl_dec=False, ip_id=0)))
vec("egress-cached-l2.toml", "Host traffic to a remote pod, the peer's L2 cached in the route: encapsulated with that MAC",
    "to_tunnel", TUNNEL_IF, f, "redirect", [counter(TUNNEL_IF, "to_tunnel", "encap", f)],
    h(encap(inner, ttl_dec=False, ip_id=0, dmac=CACHED_MAC)),
    setup=["ip neigh flush dev eth0", "ip neigh del 172.31.242.157 dev eth0 || true"], routes=CACHED_L2)
# The tunnel device's MTU is 1500 - 20, so the kernel's fragments carry at most 1456 data bytes.
inner = IP(src=POD1, dst=REMOTE_POD, ttl=63, id=9, flags="MF", frag=0) / Raw(b"f" * 1456)
f = into_tunnel(inner)
vec("egress-fragment.toml", "A fragment the kernel made of a DF-clear pod packet is encapsulated (outer DF clear)", "to_tunnel",
    TUNNEL_IF, f, "redirect", [counter(TUNNEL_IF, "to_tunnel", "encap", f)], h(encap(inner, ttl_dec=False, ip_id=0)))
inner = IP(src=POD1, dst=PEER_IP, ttl=63, id=11, flags="MF", frag=0) / Raw(b"g" * 1456)
f = into_tunnel(inner)
vec("egress-pod-to-peer-node.toml", "A pod's packet to a peer node's own address that the kernel forwarded (a fragment): encapsulated, so the pod address never appears bare on the underlay",
    "to_tunnel", TUNNEL_IF, f, "redirect", [counter(TUNNEL_IF, "to_tunnel", "encap", f)], h(encap(inner, ttl_dec=False, ip_id=0)))
inner = udp(NODE_IP, PEER_IP)
f = into_tunnel(inner)
vec("egress-host-to-peer.toml", "The node's own traffic to a peer node (routed into the tunnel device by the peer's /32): sent plain out the uplink, only L2 rewritten",
    "to_tunnel", TUNNEL_IF, f, "redirect", [counter(TUNNEL_IF, "to_tunnel", "host_to_peer", f)],
    h(Ether(src=NODE_MAC, dst=PEER_MAC) / inner))
f = into_tunnel(udp(NODE_IP, STRANGER))
vec("egress-not-tunnelled.toml", "A destination without a tunnelled route (a route left pointing at the device): dropped, never sent into the peer",
    "to_tunnel", TUNNEL_IF, f, "shot", [counter(TUNNEL_IF, "to_tunnel", "drop_not_tunnelled", f)])
f = Ether(src=TUNNEL_MAC, dst="33:33:00:00:00:02") / IPv6(src="fe80::1", dst="ff02::2") / Raw(b"rs")
vec("egress-not-ipv4.toml", "Not IPv4 (the kernel's own IPv6, were it enabled on the device): dropped", "to_tunnel", TUNNEL_IF, f,
    "shot", [counter(TUNNEL_IF, "to_tunnel", "drop_not_tunnelled", f)])
f = into_tunnel(IP(src=NODE_IP, dst=REMOTE_POD, id=12, chksum=0x1234) / UDP(sport=1, dport=2) / Raw(b"x" * 16))
vec("egress-bad-checksum.toml", "A packet with a bad header checksum sent into the tunnel device (a raw socket): dropped, never tunnelled",
    "to_tunnel", TUNNEL_IF, f, "shot", [counter(TUNNEL_IF, "to_tunnel", "drop_bad_ip_checksum", f)])
f = Ether(src=TUNNEL_MAC, dst=TUNNEL_MAC) / Dot1Q(vlan=7) / IP(src=NODE_IP, dst=REMOTE_POD, id=11) / UDP(sport=1, dport=2)
vec("egress-vlan-tagged.toml", "A tagged frame routed into the tunnel device: dropped", "to_tunnel", TUNNEL_IF, f,
    "shot", [counter(TUNNEL_IF, "to_tunnel", "drop_vlan_tagged", f)])
f = into_tunnel(IP(src=NODE_IP, dst=REMOTE_POD, id=10) / UDP(sport=1, dport=2) / Raw(b"x" * (1500 - 28)))
vec("egress-too-big.toml", "Sent past the device's MTU (a raw socket, not GSO): the outer packet would exceed the MTU, dropped",
    "to_tunnel", TUNNEL_IF, f, "shot", [counter(TUNNEL_IF, "to_tunnel", "drop_too_big_egress", f)])
f = into_tunnel(udp(NODE_IP, REMOTE_POD))
vec("egress-no-neigh.toml", "No neighbour for the peer: dropped and counted, not queued under the tunnel device's route (whose L2 the kernel would re-send it with)",
    "to_tunnel", TUNNEL_IF, f, "shot", [counter(TUNNEL_IF, "to_tunnel", "drop_next_hop_unresolved", f)],
    setup=["ip neigh flush dev eth0", "ip neigh del 172.31.242.157 dev eth0 || true"])

# ---------------------------------------------------------------- xdp_uplink
f = tunnel(inner_to_pod1(), src=STRANGER)
vec("xdp-unknown-peer.toml", "XDP: IPIP from a non-peer is dropped before an skb exists", "xdp_uplink", "eth0", f, "drop",
    [counter("eth0", "xdp_uplink", "drop_ipip_unknown_peer", f)])
f = tunnel(inner_to_pod1())
vec("xdp-peer.toml", "XDP: IPIP from a peer passes (from_uplink does the rest)", "xdp_uplink", "eth0", f, "pass", [])
f = tunnel(inner_to_pod1(), flags="MF")
vec("xdp-outer-fragment.toml", "XDP: outer fragment dropped", "xdp_uplink", "eth0", f, "drop",
    [counter("eth0", "xdp_uplink", "drop_outer_fragment", f)])
f = Ether(raw(tunnel(inner_to_pod1(), ihl=4)))
vec("xdp-outer-ihl4.toml", "XDP: outer IHL 4 dropped", "xdp_uplink", "eth0", f, "drop",
    [counter("eth0", "xdp_uplink", "drop_bad_outer_header", f)])
bad = bytearray(raw(tunnel(inner_to_pod1())))
bad[16:18] = (30).to_bytes(2, "big")
f = Ether(bytes(bad))
vec("xdp-outer-short.toml", "XDP: outer total length too short for an inner header: dropped", "xdp_uplink", "eth0", f, "drop",
    [counter("eth0", "xdp_uplink", "drop_bad_outer_length", f)])
f = Ether(src=PEER_MAC, dst=NODE_MAC) / udp(PEER_IP, NODE_IP)
vec("xdp-plain.toml", "XDP: everything that is not IPIP to the node passes, uncounted", "xdp_uplink", "eth0", f, "pass", [])


def toml_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrap(hexstr):
    lines = [hexstr[i:i + 64] for i in range(0, len(hexstr), 64)]
    return '"""\n' + "\n".join(lines) + '\n"""'


def write(v):
    out = [f"name = {toml_str(v['name'])}", f"base = {toml_str(v['base'])}", f"program = {toml_str(v['program'])}",
           f"interface = {toml_str(v['interface'])}"]
    if v.get("cpu"):
        out.append(f"cpu = {v['cpu']}")
    if v.get("gso_size"):
        out.append(f"gso_size = {v['gso_size']}")
    if v.get("setup"):
        out.append("setup = [" + ", ".join(toml_str(s) for s in v["setup"]) + "]")
    out.append(f"input = {wrap(v['input'])}")
    if v.get("node"):
        n = v["node"]
        out.append(f"\n[node]\naddress = {toml_str(n['address'])}\nuplink = {toml_str(n['uplink'])}\nmtu = {n['mtu']}\nmode = {toml_str(n['mode'])}")
        if n.get("tunnel"):
            out.append(f"tunnel = {toml_str(n['tunnel'])}")
        if n.get("fast_path") is False:
            out.append("fast_path = false")
    for k in v.get("kernel_flows", []):
        out.append(f"\n[[kernel_flow]]\naddr = {toml_str(k['addr'])}\nport = {k['port']}\nproto = {toml_str(k['proto'])}")
    routes(out, "route", v.get("routes", []))
    expect(out, "expect", v)
    for t in v.get("then", []):
        out.append(f"\n[[then]]\nname = {toml_str(t['name'])}")
        if t.get("remove"):
            out.append("remove = [" + ", ".join(toml_str(c) for c in t["remove"]) + "]")
        for k in t.get("kernel_flows", []):
            out.append(f"\n[[then.kernel_flow]]\naddr = {toml_str(k['addr'])}\nport = {k['port']}\nproto = {toml_str(k['proto'])}")
        for p in t.get("send", []):
            out.append(f"\n[[then.send]]\nprogram = {toml_str(p['program'])}\ninterface = {toml_str(p['interface'])}\n"
                       f"input = {wrap(p['input'])}")
        routes(out, "then.route", t.get("routes", []))
        expect(out, "then.expect", t)
    return "\n".join(out) + "\n"


def routes(out, table, rs):
    for r in rs:
        out.append(f"\n[[{table}]]\n" + "\n".join(
            f"{k} = {toml_str(r[k]) if isinstance(r[k], str) else '[' + ', '.join(toml_str(x) for x in r[k]) + ']'}"
            for k in ["cidr", "kind", "node", "flags", "next_hop_mac", "uplink_mac"] if k in r))


def expect(out, table, v):
    out.append(f"\n[{table}]\nverdict = {toml_str(v['verdict'])}")
    if v["output"] is not None:
        out.append(f"output = {wrap(v['output'])}")
    for c in v["counters"]:
        out.append(f"\n[[{table}.counters]]\n" + "\n".join(
            f"{k} = {toml_str(c[k]) if isinstance(c[k], str) else c[k]}" for k in ["interface", "hook", "reason", "packets", "bytes"]))


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith(".toml"):
            os.remove(os.path.join(OUT, f))
    names = set()
    for v in vectors:
        assert v["file"] not in names, v["file"]
        names.add(v["file"])
        with open(os.path.join(OUT, v["file"]), "w") as fh:
            fh.write(write(v))
    print(f"wrote {len(vectors)} vectors to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
