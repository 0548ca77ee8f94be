//! A seccomp filter as a second wall behind the namespaces: bwrap loads it (`--seccomp FD`)
//! just before exec of the command, after its own mounts, so bwrap is unaffected. It denies
//! with EPERM the system calls a build or test has no business with and that are large
//! kernel attack surfaces or cross-process reach (ptrace, keyrings, bpf, perf, io_uring,
//! userfaultfd, module loading, mount, namespaces re-entry), and every foreign-ABI call
//! (32-bit and x32 entry points have their own, unfiltered numbering).
//!
//! Hand-assembled classic BPF: no dependency, and the program is small enough to read.

use std::io::{Seek, Write};

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Denied system calls: name (as OCI seccomp profiles and libseccomp spell it) and number
/// on this architecture.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn denied_table() -> Vec<(&'static str, libc::c_long)> {
    let mut v: Vec<(&'static str, libc::c_long)> = vec![
        ("ptrace", libc::SYS_ptrace),
        ("process_vm_readv", libc::SYS_process_vm_readv),
        ("process_vm_writev", libc::SYS_process_vm_writev),
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("bpf", libc::SYS_bpf),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("add_key", libc::SYS_add_key),
        ("request_key", libc::SYS_request_key),
        ("keyctl", libc::SYS_keyctl),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("pivot_root", libc::SYS_pivot_root),
        ("setns", libc::SYS_setns),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
        ("reboot", libc::SYS_reboot),
        ("acct", libc::SYS_acct),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("name_to_handle_at", libc::SYS_name_to_handle_at),
        ("quotactl", libc::SYS_quotactl),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("io_uring_enter", libc::SYS_io_uring_enter),
        ("io_uring_register", libc::SYS_io_uring_register),
        ("fsopen", libc::SYS_fsopen),
        ("fsmount", libc::SYS_fsmount),
        ("move_mount", libc::SYS_move_mount),
        ("open_tree", libc::SYS_open_tree),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([("iopl", libc::SYS_iopl), ("ioperm", libc::SYS_ioperm)]);
    v
}

/// Denied system calls, by number on this architecture.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn denied() -> Vec<u32> {
    denied_table()
        .into_iter()
        .filter_map(|(_, n)| u32::try_from(n).ok())
        .collect()
}

/// The deny-list by name, for runtimes that take an OCI seccomp profile; empty on
/// architectures this module has no table for.
pub(crate) fn denied_names() -> Vec<&'static str> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        denied_table().into_iter().map(|(n, _)| n).collect()
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Vec::new()
    }
}

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..2].copy_from_slice(&code.to_ne_bytes());
    b[2] = jt;
    b[3] = jf;
    b[4..].copy_from_slice(&k.to_ne_bytes());
    b
}

/// The filter as the raw `struct sock_filter` array bwrap reads; `None` on architectures
/// this module has no table for.
pub(crate) fn program() -> Option<Vec<u8>> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let nrs = denied();
        // Jump offsets are u8: the list must stay well under 250 entries.
        let n = u8::try_from(nrs.len()).ok()?;
        // Layout: [0] ld arch, [1] jeq arch, [2] ld nr, [3] jge x32, [4..4+n] jeq nr,
        // [4+n] allow, [5+n] deny. Offsets count from the next instruction.
        let mut p: Vec<[u8; 8]> = vec![
            insn(LD_W_ABS, 0, 0, OFF_ARCH),
            insn(JEQ_K, 0, n.checked_add(3)?, AUDIT_ARCH),
            insn(LD_W_ABS, 0, 0, OFF_NR),
            // x32 system calls have bit 30 set (never on aarch64, so harmless there).
            insn(JGE_K, n.checked_add(1)?, 0, 0x4000_0000),
        ];
        for (i, nr) in nrs.iter().enumerate() {
            let left = n - u8::try_from(i).ok()?;
            p.push(insn(JEQ_K, left, 0, *nr));
        }
        p.push(insn(RET_K, 0, 0, RET_ALLOW));
        p.push(insn(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32));
        Some(p.concat())
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        None
    }
}

/// The program in an unlinked temporary file, positioned at its start, for `--seccomp FD`.
pub(crate) fn program_file() -> std::io::Result<Option<std::fs::File>> {
    let Some(bytes) = program() else {
        return Ok(None);
    };
    let mut f = tempfile::tempfile()?;
    f.write_all(&bytes)?;
    f.rewind()?;
    Ok(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn every_jump_lands_on_the_allow_or_deny_return() {
        let p = program().unwrap();
        let insns: Vec<&[u8]> = p.chunks(8).collect();
        let len = insns.len();
        let (allow, deny) = (len - 2, len - 1);
        assert_eq!(&insns[allow][..2], &RET_K.to_ne_bytes());
        for (i, ins) in insns.iter().enumerate() {
            let code = u16::from_ne_bytes([ins[0], ins[1]]);
            if code == JEQ_K || code == JGE_K {
                let jt = i + 1 + usize::from(ins[2]);
                let jf = i + 1 + usize::from(ins[3]);
                if i == 1 {
                    assert_eq!((jt, jf), (2, deny), "arch check");
                } else if i == 3 {
                    assert_eq!((jt, jf), (deny, 4), "x32 check");
                } else {
                    assert_eq!((jt, jf), (deny, i + 1), "syscall check at {i}");
                }
            }
        }
        assert_eq!(len, denied().len() + 6);
    }
}
