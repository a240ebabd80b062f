//! A classic BPF interpreter for tests: runs a program on a frame the way the kernel's
//! `bpf_prog_run` would for a socket filter, so our program and tcpdump's can be compared
//! in user space. Covers every classic opcode except the kernel's ancillary loads
//! (offsets at `SKF_AD_OFF` and below), which neither program uses.

use super::Insn;

/// What running a program ended in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep this many bytes (0: drop).
    Keep(u32),
    /// The program is not one the kernel would accept, or uses what this does not model.
    Invalid(&'static str),
}

impl Verdict {
    pub fn accepts(self) -> bool {
        matches!(self, Verdict::Keep(n) if n > 0)
    }
}

fn load(frame: &[u8], at: u64, size: usize) -> Option<u32> {
    let at = usize::try_from(at).ok()?;
    let bytes = frame.get(at..at.checked_add(size)?)?;
    Some(bytes.iter().fold(0, |acc, b| (acc << 8) | u32::from(*b)))
}

pub fn run(program: &[Insn], frame: &[u8]) -> Verdict {
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    let len = frame.len() as u32;
    loop {
        let Some(insn) = program.get(pc) else {
            return Verdict::Invalid("ran off the end of the program");
        };
        pc += 1;
        let k = insn.k;
        let class = insn.code & 0x07;
        match class {
            // LD / LDX
            0x00 | 0x01 => {
                let size = match insn.code & 0x18 {
                    0x00 => 4,
                    0x08 => 2,
                    0x10 => 1,
                    _ => return Verdict::Invalid("bad load size"),
                };
                let mode = insn.code & 0xe0;
                if (k as i32) < 0 && matches!(mode, 0x20 | 0x40) {
                    return Verdict::Invalid("ancillary load");
                }
                let value = match mode {
                    0x00 => Some(k),                                        // IMM
                    0x20 => load(frame, u64::from(k), size),                // ABS
                    0x40 => load(frame, u64::from(x) + u64::from(k), size), // IND
                    0x60 => mem.get(k as usize).copied(),                   // MEM
                    0x80 => Some(len),                                      // LEN
                    0xa0 if class == 0x01 => {
                        load(frame, u64::from(k), 1).map(|b| (b & 0xf) * 4) // MSH
                    }
                    _ => return Verdict::Invalid("bad load mode"),
                };
                // An out-of-bounds packet load ends the program with 0, as in the kernel.
                let Some(value) = value else {
                    return Verdict::Keep(0);
                };
                if class == 0x00 {
                    a = value;
                } else {
                    x = value;
                }
            }
            0x02 | 0x03 => {
                let Some(slot) = mem.get_mut(k as usize) else {
                    return Verdict::Invalid("bad scratch slot");
                };
                *slot = if class == 0x02 { a } else { x };
            }
            // ALU
            0x04 => {
                let operand = if insn.code & 0x08 != 0 { x } else { k };
                a = match insn.code & 0xf0 {
                    0x00 => a.wrapping_add(operand),
                    0x10 => a.wrapping_sub(operand),
                    0x20 => a.wrapping_mul(operand),
                    0x30 | 0x90 if operand == 0 => return Verdict::Keep(0),
                    0x30 => a / operand,
                    0x90 => a % operand,
                    0x40 => a | operand,
                    0x50 => a & operand,
                    0x60 => a.checked_shl(operand).unwrap_or(0),
                    0x70 => a.checked_shr(operand).unwrap_or(0),
                    0x80 => a.wrapping_neg(),
                    0xa0 => a ^ operand,
                    _ => return Verdict::Invalid("bad ALU op"),
                };
            }
            // JMP
            0x05 => {
                let operand = if insn.code & 0x08 != 0 { x } else { k };
                let taken = match insn.code & 0xf0 {
                    0x00 => {
                        pc += k as usize;
                        continue;
                    }
                    0x10 => a == operand,
                    0x20 => a > operand,
                    0x30 => a >= operand,
                    0x40 => a & operand != 0,
                    _ => return Verdict::Invalid("bad jump op"),
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
            // RET
            0x06 => {
                return match insn.code & 0x18 {
                    0x00 => Verdict::Keep(k),
                    0x10 => Verdict::Keep(a),
                    _ => Verdict::Invalid("bad return source"),
                };
            }
            // MISC: TAX / TXA
            _ => match insn.code & 0xf8 {
                0x00 => x = a,
                0x80 => a = x,
                _ => return Verdict::Invalid("bad misc op"),
            },
        }
    }
}

/// Parses `tcpdump -dd` output: one `{ 0x28, 0, 0, 0x0000000c },` per line.
pub fn parse_tcpdump_dd(text: &str) -> Result<Vec<Insn>, String> {
    let number = |s: &str| -> Result<u64, String> {
        let s = s.trim();
        match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        }
        .map_err(|e| format!("`{s}`: {e}"))
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let inner = line
                .strip_prefix('{')
                .and_then(|l| l.trim_end_matches(',').strip_suffix('}'))
                .ok_or_else(|| format!("not a BPF instruction: {line}"))?;
            let fields: Vec<u64> = inner.split(',').map(number).collect::<Result<_, _>>()?;
            let [code, jt, jf, k] = fields[..] else {
                return Err(format!("expected 4 fields: {line}"));
            };
            let narrow = |v: u64| format!("field out of range in {line}: {v}");
            Ok(Insn {
                code: u16::try_from(code).map_err(|_| narrow(code))?,
                jt: u8::try_from(jt).map_err(|_| narrow(jt))?,
                jf: u8::try_from(jf).map_err(|_| narrow(jf))?,
                k: u32::try_from(k).map_err(|_| narrow(k))?,
            })
        })
        .collect()
}
