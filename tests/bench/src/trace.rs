//! The BPF instructions one packet of a path executes, counted exactly: the bench's answer to
//! "where do a path's nanoseconds go" that does not depend on the host's clock or its noise.
//!
//! [`Object`] takes a program out of an eBPF object the way aya loads it (its maps relocated,
//! its calls linked into one instruction stream), and [`Object::run`] interprets it on a packet,
//! counting each instruction it executes. The maps are the live ones of a loaded object,
//! read through its fds: a lookup copies the kernel's value (for a per-CPU map, the value of the
//! CPU the object stands for) into this object's own copy, which the program then reads and
//! writes, so a second run sees what the first one cached (a route-cache slot, a no-flow slot),
//! as the kernel's second packet would. Nothing is written back to the kernel.
//!
//! What is counted is the program as compiled, before the verifier's rewrites: a context field
//! load is one instruction here, and an array lookup one call here where the verifier inlines a
//! few instructions. Its floor is counted the same way, so the two compare.

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// Where the interpreter's memory regions live: the top byte of an address names the region,
/// the low 24 bits the offset in it. Every address fits in 32 bits, as `data` and `data_end`
/// in a context must.
const CTX: u64 = 1 << 24;
const PACKET: u64 = 2 << 24;
/// Stack frames, one region each (bpf-to-bpf calls), from here.
const STACK: u64 = 3 << 24;
const MAX_FRAMES: u64 = 8;
const STACK_SIZE: usize = 512;
/// Map values (this object's copies), from here.
const VALUES: u64 = 16 << 24;
/// A map's handle in a register (what `ld_imm64` of a map gives): never dereferenced.
const MAP_HANDLE: u64 = 0xf0 << 24;

/// No program path is this long (the verifier allows a million instructions).
const MAX_STEPS: u64 = 1_000_000;

const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;

/// One map of the object: the live kernel map behind it, or a data section's bytes.
enum Backing {
    Kernel {
        fd: RawFd,
        percpu: bool,
    },
    Data,
    /// A map the caller has no fd for (a lookup finds nothing).
    None,
}

struct MapSpec {
    backing: Backing,
    key_size: usize,
    value_size: usize,
}

/// What one run of a program on one packet did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The program's return value.
    pub verdict: u64,
    /// BPF instructions executed (an `ld_imm64`, two slots, counts once).
    pub insns: u64,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
}

/// The programs of one eBPF object, ready to interpret.
pub struct Object {
    programs: HashMap<String, (Vec<Insn>, bool)>,
    maps: Vec<MapSpec>,
    /// This object's copies of map values: (map, key) → value region, None where the key is
    /// known to be absent. Kept across runs.
    values: HashMap<(usize, Vec<u8>), Option<usize>>,
    regions: Vec<Vec<u8>>,
    possible_cpus: usize,
    /// The CPU whose per-CPU values the runs see (and `bpf_get_smp_processor_id` answers).
    cpu: usize,
}

#[derive(Clone, Copy, Debug)]
struct Insn {
    code: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
}

impl Object {
    /// The programs of the eBPF object `bytes` on the maps of `loaded` (the same object, or
    /// one sharing its maps by name), as CPU `cpu` sees them. The fds stay `loaded`'s: this
    /// must not outlive it.
    pub fn on(bytes: &[u8], loaded: &aya::Ebpf, cpu: usize) -> Result<Self> {
        Self::new(bytes, |n| loaded.map(n).and_then(map_fd), cpu)
    }

    /// The programs of the eBPF object `bytes`; `fd_of` gives the live map of each map name
    /// (None: a lookup in that map finds nothing).
    pub fn new(bytes: &[u8], fd_of: impl Fn(&str) -> Option<RawFd>, cpu: usize) -> Result<Self> {
        let mut obj = aya_obj::Object::parse(bytes).context("parsing the eBPF object")?;
        let names: Vec<String> = obj.maps.keys().cloned().collect();
        let mut maps = Vec::new();
        for name in &names {
            let m = &obj.maps[name];
            use aya_obj::EbpfSectionKind::{Bss, Data, Rodata};
            let backing = if matches!(m.section_kind(), Data | Rodata | Bss) {
                Backing::Data
            } else {
                match fd_of(name) {
                    Some(fd) => Backing::Kernel {
                        fd,
                        percpu: matches!(
                            m.map_type(),
                            BPF_MAP_TYPE_PERCPU_HASH
                                | BPF_MAP_TYPE_PERCPU_ARRAY
                                | BPF_MAP_TYPE_LRU_PERCPU_HASH
                        ),
                    },
                    None => Backing::None,
                }
            };
            maps.push(MapSpec {
                backing,
                key_size: m.key_size() as usize,
                value_size: m.value_size() as usize,
            });
        }
        let mut this = Self {
            programs: HashMap::new(),
            maps,
            values: HashMap::new(),
            regions: Vec::new(),
            possible_cpus: aya::util::nr_cpus().map_err(|(_, e)| anyhow!("possible CPUs: {e}"))?,
            cpu,
        };
        if cpu >= this.possible_cpus {
            bail!("CPU {cpu}: there are {} possible CPUs", this.possible_cpus);
        }
        // A data section is one value at key 0, its bytes as the object holds them.
        for (i, name) in names.iter().enumerate() {
            if matches!(this.maps[i].backing, Backing::Data) {
                let data = obj.maps[name].data().to_vec();
                let r = this.alloc(data)?;
                this.values
                    .insert((i, 0u32.to_ne_bytes().to_vec()), Some(r));
            }
        }
        let text: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        let map_objs: Vec<(String, aya_obj::Map)> = names
            .iter()
            .map(|n| (n.clone(), obj.maps[n].clone()))
            .collect();
        obj.relocate_maps(
            map_objs
                .iter()
                .enumerate()
                .map(|(i, (n, m))| (n.as_str(), i as RawFd, m)),
            &text,
        )
        .map_err(|e| anyhow!("relocating maps: {e}"))?;
        obj.relocate_calls(&text)
            .map_err(|e| anyhow!("linking calls: {e}"))?;
        for (name, prog) in &obj.programs {
            let f = obj
                .functions
                .get(&prog.function_key())
                .with_context(|| format!("{name}: no function"))?;
            let insns = f
                .instructions
                .iter()
                .map(|i| Insn {
                    code: i.code,
                    dst: i.dst_reg(),
                    src: i.src_reg(),
                    off: i.off,
                    imm: i.imm,
                })
                .collect();
            let xdp = matches!(prog.section, aya_obj::ProgramSection::Xdp { .. });
            this.programs.insert(name.clone(), (insns, xdp));
        }
        Ok(this)
    }

    fn alloc(&mut self, data: Vec<u8>) -> Result<usize> {
        if self.regions.len() as u64 >= (MAP_HANDLE - VALUES) >> 24 {
            bail!("more map values than the interpreter has regions for");
        }
        self.regions.push(data);
        Ok(self.regions.len() - 1)
    }

    /// Runs program `name` once on `packet`, with the context [`crate::testrun::run`] gives it:
    /// on interface `ifindex` (a tc program's skb device, an XDP program's ingress interface),
    /// a tc program with `mark` and `gso_size`.
    pub fn run(
        &mut self,
        name: &str,
        ifindex: u32,
        (mark, gso_size): (u32, u32),
        packet: &[u8],
    ) -> Result<Trace> {
        let (insns, xdp) = self
            .programs
            .get(name)
            .with_context(|| format!("no program {name}"))?
            .clone();
        let ctx = if xdp {
            crate::testrun::xdp_ctx(ifindex, packet.len())
        } else {
            let mut c = crate::testrun::skb_ctx(ifindex, mark, gso_size);
            c[36..40].copy_from_slice(&ifindex.to_ne_bytes());
            if packet.len() >= 14 {
                // skb->protocol, as eth_type_trans sets it (network order).
                let proto = u16::from_ne_bytes([packet[12], packet[13]]) as u32;
                c[16..20].copy_from_slice(&proto.to_ne_bytes());
            }
            c
        };
        let mut vm = Vm {
            obj: self,
            insns: &insns,
            xdp,
            ctx,
            packet: packet.to_vec(),
            stacks: vec![vec![0; STACK_SIZE]],
            regs: [0; 11],
            insn_count: 0,
        };
        vm.sync_ctx();
        vm.regs[1] = CTX;
        vm.regs[10] = STACK + STACK_SIZE as u64;
        let verdict = vm.exec().with_context(|| format!("interpreting {name}"))?;
        Ok(Trace {
            verdict,
            insns: vm.insn_count,
            packet: vm.packet,
        })
    }

    /// The value of `key` in map `m`: this object's copy, made from the kernel's on first use.
    fn lookup(&mut self, m: usize, key: Vec<u8>) -> Result<Option<usize>> {
        if let Some(v) = self.values.get(&(m, key.clone())) {
            return Ok(*v);
        }
        let spec = &self.maps[m];
        let found = match spec.backing {
            Backing::Kernel { fd, percpu } => {
                let per = spec.value_size.div_ceil(8) * 8;
                let mut buf = vec![
                    0u8;
                    if percpu {
                        per * self.possible_cpus
                    } else {
                        per
                    }
                ];
                if kernel_lookup(fd, &key, &mut buf)? {
                    if percpu {
                        buf.drain(..per * self.cpu);
                    }
                    buf.truncate(spec.value_size);
                    Some(self.alloc(buf)?)
                } else {
                    None
                }
            }
            Backing::Data | Backing::None => None,
        };
        self.values.insert((m, key), found);
        Ok(found)
    }
}

/// BPF_MAP_LOOKUP_ELEM on a live map: false when the key is absent.
fn kernel_lookup(fd: RawFd, key: &[u8], value: &mut [u8]) -> Result<bool> {
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let attr = Attr {
        map_fd: fd as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    // SAFETY: the attribute points at buffers that live across the call and are as large as
    // the map's key and (per-CPU) value.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            &attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOENT) {
        return Ok(false);
    }
    Err(anyhow!("BPF_MAP_LOOKUP_ELEM: {e}"))
}

/// Return-address frames of bpf-to-bpf calls.
struct Frame {
    ret: usize,
    saved: [u64; 4],
}

struct Vm<'a> {
    obj: &'a mut Object,
    insns: &'a [Insn],
    xdp: bool,
    ctx: Vec<u8>,
    packet: Vec<u8>,
    stacks: Vec<Vec<u8>>,
    regs: [u64; 11],
    insn_count: u64,
}

impl Vm<'_> {
    /// The context's packet pointers (and an skb's length) after the packet changed.
    fn sync_ctx(&mut self) {
        let end = (PACKET + self.packet.len() as u64) as u32;
        let (data, data_end) = if self.xdp { (0, 4) } else { (76, 80) };
        self.ctx[data..data + 4].copy_from_slice(&(PACKET as u32).to_ne_bytes());
        self.ctx[data_end..data_end + 4].copy_from_slice(&end.to_ne_bytes());
        if !self.xdp {
            self.ctx[0..4].copy_from_slice(&(self.packet.len() as u32).to_ne_bytes());
            self.ctx[140..144].copy_from_slice(&(PACKET as u32).to_ne_bytes());
        }
    }

    fn mem(&mut self, addr: u64, len: usize) -> Result<&mut [u8]> {
        let region = addr >> 24;
        let off = (addr & 0xff_ffff) as usize;
        let buf: &mut Vec<u8> = match addr & !0xff_ffff {
            CTX => &mut self.ctx,
            PACKET => &mut self.packet,
            a if (STACK..STACK + (MAX_FRAMES << 24)).contains(&a) => {
                let i = ((a - STACK) >> 24) as usize;
                self.stacks.get_mut(i).context("a stack frame not in use")?
            }
            a if (VALUES..MAP_HANDLE).contains(&a) => {
                let i = ((a - VALUES) >> 24) as usize;
                self.obj.regions.get_mut(i).context("no such map value")?
            }
            _ => bail!("access to {addr:#x} (region {region:#x}): no memory there"),
        };
        buf.get_mut(off..off + len)
            .with_context(|| format!("access of {len} bytes at {addr:#x}: out of bounds"))
    }

    fn load(&mut self, addr: u64, size: usize) -> Result<u64> {
        let b = self.mem(addr, size)?;
        let mut w = [0u8; 8];
        w[..size].copy_from_slice(b);
        Ok(u64::from_le_bytes(w))
    }

    fn store(&mut self, addr: u64, size: usize, v: u64) -> Result<()> {
        self.mem(addr, size)?
            .copy_from_slice(&v.to_le_bytes()[..size]);
        Ok(())
    }

    fn bytes(&mut self, addr: u64, len: usize) -> Result<Vec<u8>> {
        Ok(self.mem(addr, len)?.to_vec())
    }

    fn exec(&mut self) -> Result<u64> {
        let mut pc = 0usize;
        let mut frames: Vec<Frame> = Vec::new();
        loop {
            if self.insn_count >= MAX_STEPS {
                bail!("more than {MAX_STEPS} instructions");
            }
            let i = *self
                .insns
                .get(pc)
                .with_context(|| format!("pc {pc} out of the program"))?;
            self.insn_count += 1;
            pc += 1;
            let (d, s) = (i.dst as usize, i.src as usize);
            if d > 10 || s > 10 {
                bail!("pc {}: register out of range", pc - 1);
            }
            let class = i.code & 7;
            match class {
                // ld_imm64, the one LD this ABI has.
                0 => {
                    let next = *self
                        .insns
                        .get(pc)
                        .context("ld_imm64 without its second half")?;
                    pc += 1;
                    let imm = (i.imm as u32 as u64) | ((next.imm as u32 as u64) << 32);
                    self.regs[d] = match i.src {
                        0 => imm,
                        1 => MAP_HANDLE + i.imm as u64,
                        2 => {
                            let m = i.imm as usize;
                            let r = self
                                .obj
                                .lookup(m, 0u32.to_ne_bytes().to_vec())?
                                .with_context(|| format!("map {m} has no value to point into"))?;
                            VALUES + ((r as u64) << 24) + next.imm as u32 as u64
                        }
                        k => bail!("ld_imm64 of kind {k}"),
                    };
                }
                // LDX
                1 => {
                    let size = size_of_code(i.code);
                    let addr = self.regs[s].wrapping_add(i.off as i64 as u64);
                    let v = self.load(addr, size)?;
                    self.regs[d] = match i.code & 0xe0 {
                        0x60 => v,
                        0x80 => sign_extend(v, size * 8),
                        m => bail!("LDX mode {m:#x}"),
                    };
                }
                // ST, STX
                2 | 3 => {
                    let size = size_of_code(i.code);
                    let addr = self.regs[d].wrapping_add(i.off as i64 as u64);
                    let v = if class == 2 {
                        i.imm as i64 as u64
                    } else {
                        self.regs[s]
                    };
                    match i.code & 0xe0 {
                        0x60 => self.store(addr, size, v)?,
                        0xc0 => self.atomic(i, addr, size)?,
                        m => bail!("ST mode {m:#x}"),
                    }
                }
                4 | 7 => {
                    let wide = class == 7;
                    let src = if i.code & 0x08 != 0 {
                        self.regs[s]
                    } else {
                        i.imm as i64 as u64
                    };
                    let v = alu(i, self.regs[d], src, wide)?;
                    // A byte swap sets its own width; every other 32-bit op zero-extends.
                    self.regs[d] = if wide || i.code & 0xf0 == 0xd0 {
                        v
                    } else {
                        v as u32 as u64
                    };
                }
                5 | 6 => {
                    let op = i.code & 0xf0;
                    match op {
                        0x80 => {
                            if i.src == 1 {
                                if frames.len() as u64 + 1 >= MAX_FRAMES {
                                    bail!("calls nested too deep");
                                }
                                frames.push(Frame {
                                    ret: pc,
                                    saved: [self.regs[6], self.regs[7], self.regs[8], self.regs[9]],
                                });
                                self.stacks.push(vec![0; STACK_SIZE]);
                                self.regs[10] =
                                    STACK + ((frames.len() as u64) << 24) + STACK_SIZE as u64;
                                pc = (pc as i64 + i.imm as i64) as usize;
                            } else {
                                self.regs[0] = self.helper(i.imm)?;
                            }
                        }
                        0x90 => match frames.pop() {
                            None => return Ok(self.regs[0]),
                            Some(f) => {
                                self.stacks.pop();
                                pc = f.ret;
                                self.regs[6..10].copy_from_slice(&f.saved);
                                self.regs[10] =
                                    STACK + ((frames.len() as u64) << 24) + STACK_SIZE as u64;
                            }
                        },
                        0x00 => {
                            let by = if class == 6 {
                                i.imm as i64
                            } else {
                                i.off as i64
                            };
                            pc = (pc as i64 + by) as usize;
                        }
                        _ => {
                            let src = if i.code & 0x08 != 0 {
                                self.regs[s]
                            } else {
                                i.imm as i64 as u64
                            };
                            if jump(op, self.regs[d], src, class == 5)? {
                                pc = (pc as i64 + i.off as i64) as usize;
                            }
                        }
                    }
                }
                _ => unreachable!(),
            }
        }
    }

    fn atomic(&mut self, i: Insn, addr: u64, size: usize) -> Result<()> {
        let old = self.load(addr, size)?;
        let s = i.src as usize;
        let val = self.regs[s];
        let new = match i.imm & !1 {
            0x00 => old.wrapping_add(val),
            0x40 => old | val,
            0x50 => old & val,
            0xa0 => old ^ val,
            0xe0 => val,
            0xf0 => {
                let expected = self.regs[0];
                let hit = if size == 4 {
                    old as u32 == expected as u32
                } else {
                    old == expected
                };
                self.regs[0] = old;
                if hit {
                    self.store(addr, size, val)?;
                }
                return Ok(());
            }
            op => bail!("atomic op {op:#x}"),
        };
        self.store(addr, size, new)?;
        if i.imm & 1 != 0 {
            self.regs[s] = old;
        }
        Ok(())
    }

    fn map_of(&self, handle: u64) -> Result<usize> {
        let m = handle
            .checked_sub(MAP_HANDLE)
            .filter(|m| (*m as usize) < self.obj.maps.len())
            .with_context(|| format!("{handle:#x} is not a map"))?;
        Ok(m as usize)
    }

    /// The helpers ipipd's and the floors' programs call, as the kernel answers them for a
    /// packet that stays on this host: a redirect is its verdict, the ring buffer has no room
    /// (no one watches), the packet is linear.
    fn helper(&mut self, id: i32) -> Result<u64> {
        let r = self.regs;
        Ok(match id {
            1 => {
                let m = self.map_of(r[1])?;
                let key = self.bytes(r[2], self.obj.maps[m].key_size)?;
                match self.obj.lookup(m, key)? {
                    Some(v) => VALUES + ((v as u64) << 24),
                    None => 0,
                }
            }
            2 => {
                let m = self.map_of(r[1])?;
                let (ks, vs) = (self.obj.maps[m].key_size, self.obj.maps[m].value_size);
                let key = self.bytes(r[2], ks)?;
                let value = self.bytes(r[3], vs)?;
                const BPF_NOEXIST: u64 = 1;
                match self.obj.lookup(m, key.clone())? {
                    Some(_) if r[4] == BPF_NOEXIST => -(libc::EEXIST as i64) as u64,
                    Some(v) => {
                        self.obj.regions[v].copy_from_slice(&value);
                        0
                    }
                    None => {
                        let v = self.obj.alloc(value)?;
                        self.obj.values.insert((m, key), Some(v));
                        0
                    }
                }
            }
            3 => {
                let m = self.map_of(r[1])?;
                let key = self.bytes(r[2], self.obj.maps[m].key_size)?;
                self.obj.values.insert((m, key), None);
                0
            }
            5 => 0,
            8 => self.obj.cpu as u64,
            23 => {
                if self.xdp {
                    4
                } else {
                    7
                }
            }
            26 => {
                let (off, len) = (r[2] as usize, r[4] as usize);
                match self.packet.get(off..off + len).map(<[u8]>::to_vec) {
                    Some(b) => {
                        self.mem(r[3], len)?.copy_from_slice(&b);
                        0
                    }
                    None => -(libc::EFAULT as i64) as u64,
                }
            }
            32 => 0,
            39 => 0,
            44 => {
                let delta = r[2] as i32;
                if delta > 0 {
                    self.packet.drain(..(delta as usize).min(self.packet.len()));
                } else {
                    let grow = vec![0u8; (-delta) as usize];
                    self.packet.splice(0..0, grow);
                }
                self.sync_ctx();
                0
            }
            50 => {
                const BPF_ADJ_ROOM_MAC: u64 = 1;
                if r[3] != BPF_ADJ_ROOM_MAC {
                    bail!(
                        "skb_adjust_room mode {} (only BPF_ADJ_ROOM_MAC is modelled)",
                        r[3]
                    );
                }
                // SKB_GSO_* as test-run leaves it: a GSO packet of no type, which the helper
                // refuses (only TCP's can be resized).
                if u32::from_ne_bytes(self.ctx[176..180].try_into()?) != 0 {
                    return Ok(-524i64 as u64); // ENOTSUPP
                }
                let diff = r[2] as i32;
                const ETH: usize = 14;
                if diff < 0 {
                    let n = (-diff) as usize;
                    if self.packet.len() < ETH + n {
                        return Ok(-(libc::EINVAL as i64) as u64);
                    }
                    self.packet.drain(ETH..ETH + n);
                } else {
                    self.packet.splice(ETH..ETH, vec![0u8; diff as usize]);
                }
                self.sync_ctx();
                0
            }
            130 => 0,
            131 => 0,
            132 | 133 => bail!("ringbuf submit or discard without a reservation"),
            134 => 0,
            152 => 7,
            155 => 7,
            id => bail!("helper {id} is not modelled"),
        })
    }
}

fn size_of_code(code: u8) -> usize {
    match code & 0x18 {
        0x00 => 4,
        0x08 => 2,
        0x10 => 1,
        _ => 8,
    }
}

fn sign_extend(v: u64, bits: usize) -> u64 {
    let shift = 64 - bits;
    (((v << shift) as i64) >> shift) as u64
}

fn alu(i: Insn, dst: u64, src: u64, wide: bool) -> Result<u64> {
    let (a, b) = if wide {
        (dst, src)
    } else {
        (dst as u32 as u64, src as u32 as u64)
    };
    let bits = if wide { 64 } else { 32 };
    let shift = (b & (bits - 1)) as u32;
    let signed = i.off == 1;
    Ok(match i.code & 0xf0 {
        0x00 => a.wrapping_add(b),
        0x10 => a.wrapping_sub(b),
        0x20 => a.wrapping_mul(b),
        0x30 if b == 0 => 0,
        0x30 if signed && wide => (a as i64).wrapping_div(b as i64) as u64,
        0x30 if signed => (a as i32).wrapping_div(b as i32) as u32 as u64,
        0x30 => a / b,
        0x40 => a | b,
        0x50 => a & b,
        0x60 => a << shift,
        0x70 => a >> shift,
        0x80 => a.wrapping_neg(),
        0x90 if b == 0 => a,
        0x90 if signed && wide => (a as i64).wrapping_rem(b as i64) as u64,
        0x90 if signed => (a as i32).wrapping_rem(b as i32) as u32 as u64,
        0x90 => a % b,
        0xa0 => a ^ b,
        0xb0 => match i.off {
            0 => b,
            8 | 16 | 32 => sign_extend(src, i.off as usize),
            o => bail!("mov with offset {o}"),
        },
        0xc0 if wide => ((a as i64) >> shift) as u64,
        0xc0 => ((a as i32) >> shift) as u32 as u64,
        0xd0 => {
            // BPF_END: to big endian (BPF_TO_BE, or ALU64's unconditional swap) or little.
            let swap = wide || i.code & 0x08 != 0;
            let w = i.imm as u32;
            match (w, swap) {
                (16, true) => (dst as u16).swap_bytes() as u64,
                (32, true) => (dst as u32).swap_bytes() as u64,
                (64, true) => dst.swap_bytes(),
                (16, false) => dst as u16 as u64,
                (32, false) => dst as u32 as u64,
                (64, false) => dst,
                _ => bail!("byte swap of {w} bits"),
            }
        }
        op => bail!("ALU op {op:#x}"),
    })
}

fn jump(op: u8, a: u64, b: u64, wide: bool) -> Result<bool> {
    let (a, b) = if wide {
        (a, b)
    } else {
        (a as u32 as u64, b as u32 as u64)
    };
    let (sa, sb) = if wide {
        (a as i64, b as i64)
    } else {
        (a as u32 as i32 as i64, b as u32 as i32 as i64)
    };
    Ok(match op {
        0x10 => a == b,
        0x20 => a > b,
        0x30 => a >= b,
        0x40 => a & b != 0,
        0x50 => a != b,
        0x60 => sa > sb,
        0x70 => sa >= sb,
        0xa0 => a < b,
        0xb0 => a <= b,
        0xc0 => sa < sb,
        0xd0 => sa <= sb,
        op => bail!("jump op {op:#x}"),
    })
}

/// The fd of a loaded map, of the kinds ipipd's objects declare.
pub fn map_fd(m: &aya::maps::Map) -> Option<RawFd> {
    use aya::maps::Map::*;
    match m {
        Array(d) | HashMap(d) | LpmTrie(d) | LruHashMap(d) | PerCpuArray(d) | PerCpuHashMap(d)
        | PerCpuLruHashMap(d) | RingBuf(d) => Some(d.fd().as_fd().as_raw_fd()),
        _ => None,
    }
}

/// Whether an error of [`Object::run`] is only that the path calls a helper this interpreter
/// does not model (its count is then unknown, not wrong).
pub fn unmodelled(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.to_string().ends_with("is not modelled"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(code: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            dst: 1,
            src: 2,
            off,
            imm,
        }
    }

    #[test]
    fn arithmetic_follows_the_isa_at_its_edges() {
        // Division and modulo by zero: 0, and the dividend unchanged.
        assert_eq!(alu(op(0x3f, 0, 0), 7, 0, true).unwrap(), 0);
        assert_eq!(alu(op(0x9f, 0, 0), 7, 0, true).unwrap(), 7);
        // Signed division (offset 1), 32 and 64 bits.
        assert_eq!(
            alu(op(0x3f, 1, 0), -7i64 as u64, 2, true).unwrap(),
            -3i64 as u64
        );
        assert_eq!(
            alu(op(0x3c, 1, 0), -7i32 as u32 as u64, 2, false).unwrap() as u32,
            -3i32 as u32
        );
        // A 32-bit shift takes its amount modulo 32; an arithmetic shift keeps the sign.
        assert_eq!(alu(op(0x6c, 0, 0), 1, 33, false).unwrap(), 2);
        assert_eq!(
            alu(op(0xcc, 0, 0), 0x8000_0000, 4, false).unwrap() as u32,
            0xf800_0000
        );
        // Sign-extending moves (offset 8, 16, 32).
        assert_eq!(alu(op(0xbf, 8, 0), 0, 0x80, true).unwrap(), -128i64 as u64);
        assert_eq!(
            alu(op(0xbf, 32, 0), 0, 0xffff_ffff, true).unwrap(),
            u64::MAX
        );
        // Byte swaps: to big endian (on this little-endian ISA, a swap), to little (a
        // truncation), and ALU64's unconditional swap.
        assert_eq!(alu(op(0xdc, 0, 16), 0x1234_5678, 0, false).unwrap(), 0x7856);
        assert_eq!(alu(op(0xd4, 0, 16), 0x1234_5678, 0, false).unwrap(), 0x5678);
        assert_eq!(
            alu(op(0xd7, 0, 32), 0x1234_5678, 0, true).unwrap(),
            0x7856_3412
        );
        assert!(alu(op(0xdc, 0, 12), 0, 0, false).is_err());
    }

    #[test]
    fn jumps_compare_signed_and_unsigned_at_their_width() {
        // -1 is the largest unsigned and less than 0 signed, at 64 bits and at 32.
        assert!(jump(0x20, u64::MAX, 0, true).unwrap());
        assert!(jump(0xc0, u64::MAX, 0, true).unwrap());
        assert!(jump(0xc0, 0xffff_ffff, 0, false).unwrap());
        assert!(!jump(0xc0, 0xffff_ffff, 0, true).unwrap());
        // A 32-bit compare sees only the low halves.
        assert!(jump(0x10, 0x1_0000_0005, 5, false).unwrap());
        assert!(!jump(0x10, 0x1_0000_0005, 5, true).unwrap());
        assert!(jump(0x40, 0b1010, 0b0010, true).unwrap());
        assert!(jump(0x90, 0, 0, true).is_err());
    }
}
