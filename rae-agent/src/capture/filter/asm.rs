//! A tiny classic-BPF assembler: the handful of instructions the filter uses, with named
//! jump targets so nobody has to count instructions by hand.
//!
//! Classic BPF only jumps forward, by at most 255 instructions for a conditional jump;
//! [`Asm::assemble`] checks both and that every label exists exactly once.

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

impl Insn {
    pub fn to_sock_filter(self) -> libc::sock_filter {
        libc::sock_filter {
            code: self.code,
            jt: self.jt,
            jf: self.jf,
            k: self.k,
        }
    }
}

/// Opcodes (`linux/bpf_common.h`), composed as the kernel composes them.
pub mod op {
    const LD: u16 = 0x00;
    const LDX: u16 = 0x01;
    const JMP: u16 = 0x05;
    const RET: u16 = 0x06;
    const H: u16 = 0x08;
    const B: u16 = 0x10;
    const ABS: u16 = 0x20;
    const IND: u16 = 0x40;
    const MSH: u16 = 0xa0;
    const K: u16 = 0x00;
    const JEQ: u16 = 0x10;
    const JGT: u16 = 0x20;
    const JGE: u16 = 0x30;
    const JSET: u16 = 0x40;

    /// A = the 16-bit big-endian word at k.
    pub const LD_H_ABS: u16 = LD | H | ABS;
    /// A = the byte at k.
    pub const LD_B_ABS: u16 = LD | B | ABS;
    /// A = the 16-bit big-endian word at X + k.
    pub const LD_H_IND: u16 = LD | H | IND;
    /// X = 4 * (the byte at k & 0xf): the IPv4 header length.
    pub const LDX_B_MSH: u16 = LDX | B | MSH;
    pub const JEQ_K: u16 = JMP | JEQ | K;
    pub const JGT_K: u16 = JMP | JGT | K;
    pub const JGE_K: u16 = JMP | JGE | K;
    pub const JSET_K: u16 = JMP | JSET | K;
    /// Accept k bytes of the frame (0: drop it).
    pub const RET_K: u16 = RET | K;
}

/// Where a conditional jump goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The next instruction.
    Next,
    Label(&'static str),
}

/// Why the program text does not assemble.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    #[error("BPF label `{0}` is used but never defined")]
    UnknownLabel(&'static str),
    #[error("BPF label `{0}` is defined twice")]
    DuplicateLabel(&'static str),
    #[error("BPF jump from instruction {from} to `{label}` goes backwards")]
    Backward { from: usize, label: &'static str },
    #[error("BPF jump from instruction {from} to `{label}` is {distance} long, 255 at most")]
    TooFar {
        from: usize,
        label: &'static str,
        distance: usize,
    },
    #[error("BPF program of {0} instructions is longer than the kernel's limit of 4096")]
    TooLong(usize),
}

enum Pending {
    Plain(Insn),
    Jump {
        code: u16,
        k: u32,
        jt: Target,
        jf: Target,
    },
}

/// Collects instructions and labels; [`Asm::assemble`] resolves the jumps.
#[derive(Default)]
pub struct Asm {
    pending: Vec<Pending>,
    labels: Vec<(&'static str, usize)>,
    duplicate: Option<&'static str>,
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    /// Names the next instruction.
    pub fn label(&mut self, name: &'static str) {
        if self.labels.iter().any(|(n, _)| *n == name) {
            self.duplicate.get_or_insert(name);
        }
        self.labels.push((name, self.pending.len()));
    }

    fn plain(&mut self, code: u16, k: u32) {
        self.pending.push(Pending::Plain(Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        }));
    }

    fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.pending.push(Pending::Jump { code, k, jt, jf });
    }

    pub fn ld_h(&mut self, offset: u32) {
        self.plain(op::LD_H_ABS, offset);
    }

    pub fn ld_b(&mut self, offset: u32) {
        self.plain(op::LD_B_ABS, offset);
    }

    /// A = the 16-bit word at X + `offset`.
    pub fn ld_h_x(&mut self, offset: u32) {
        self.plain(op::LD_H_IND, offset);
    }

    /// X = the length of the IPv4 header that starts at `offset`.
    pub fn ldx_ipv4_header_len(&mut self, offset: u32) {
        self.plain(op::LDX_B_MSH, offset);
    }

    pub fn jeq(&mut self, k: u32, jt: Target, jf: Target) {
        self.jump(op::JEQ_K, k, jt, jf);
    }

    pub fn jgt(&mut self, k: u32, jt: Target, jf: Target) {
        self.jump(op::JGT_K, k, jt, jf);
    }

    pub fn jge(&mut self, k: u32, jt: Target, jf: Target) {
        self.jump(op::JGE_K, k, jt, jf);
    }

    pub fn jset(&mut self, k: u32, jt: Target, jf: Target) {
        self.jump(op::JSET_K, k, jt, jf);
    }

    pub fn ret(&mut self, k: u32) {
        self.plain(op::RET_K, k);
    }

    pub fn assemble(self) -> Result<Vec<Insn>, AsmError> {
        if let Some(name) = self.duplicate {
            return Err(AsmError::DuplicateLabel(name));
        }
        if self.pending.len() > 4096 {
            return Err(AsmError::TooLong(self.pending.len()));
        }
        let offset = |from: usize, target: Target| -> Result<u8, AsmError> {
            let label = match target {
                Target::Next => return Ok(0),
                Target::Label(label) => label,
            };
            let at = self
                .labels
                .iter()
                .find(|(n, _)| *n == label)
                .map(|(_, at)| *at)
                .ok_or(AsmError::UnknownLabel(label))?;
            // Jumps count from the instruction after the jump.
            let distance = at
                .checked_sub(from + 1)
                .ok_or(AsmError::Backward { from, label })?;
            u8::try_from(distance).map_err(|_| AsmError::TooFar {
                from,
                label,
                distance,
            })
        };
        self.pending
            .iter()
            .enumerate()
            .map(|(at, insn)| match *insn {
                Pending::Plain(insn) => Ok(insn),
                Pending::Jump { code, k, jt, jf } => Ok(Insn {
                    code,
                    jt: offset(at, jt)?,
                    jf: offset(at, jf)?,
                    k,
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_resolve_to_the_distance_after_the_jump() {
        let mut a = Asm::new();
        a.jeq(1, Target::Label("yes"), Target::Next);
        a.ret(0);
        a.label("yes");
        a.ret(1);
        let program = a.assemble().unwrap();
        assert_eq!(
            program[0],
            Insn {
                code: op::JEQ_K,
                jt: 1,
                jf: 0,
                k: 1
            }
        );
    }

    #[test]
    fn broken_programs_are_errors() {
        let mut a = Asm::new();
        a.jeq(1, Target::Label("nowhere"), Target::Next);
        assert_eq!(a.assemble(), Err(AsmError::UnknownLabel("nowhere")));

        let mut a = Asm::new();
        a.label("top");
        a.ret(0);
        a.jeq(1, Target::Label("top"), Target::Next);
        assert_eq!(
            a.assemble(),
            Err(AsmError::Backward {
                from: 1,
                label: "top"
            })
        );

        let mut a = Asm::new();
        a.label("twice");
        a.label("twice");
        a.ret(0);
        assert_eq!(a.assemble(), Err(AsmError::DuplicateLabel("twice")));

        let mut a = Asm::new();
        a.jeq(1, Target::Label("far"), Target::Next);
        for _ in 0..256 {
            a.ret(0);
        }
        a.label("far");
        a.ret(1);
        assert!(matches!(
            a.assemble(),
            Err(AsmError::TooFar { distance: 256, .. })
        ));
    }
}
