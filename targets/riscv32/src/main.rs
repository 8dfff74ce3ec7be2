//! edgeq on RV32IMAC bare metal: QEMU's `virt` board
//! (`qemu-system-riscv32 -machine virt -bios none -nographic -kernel IMAGE`).
//!
//! The same program as the Cortex-M4 firmware (`edgeq-fw-common::run`):
//! generates `EDGEQ_TOKENS` tokens from BOS with the model embedded at build
//! time, prints them on the NS16550 UART at 0x1000_0000 (QEMU's stdout with
//! `-nographic`), prints the stack's high-water mark (the stack is painted
//! in `__pre_init`, before RAM is initialised), and stops QEMU through the
//! SiFive test device at 0x10_0000: 0x5555 = pass, `code << 16 | 0x3333` = fail.
#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_volatile};
use edgeq_fw_common as fw;

const UART: usize = 0x1000_0000;
const UART_LSR: usize = UART + 5;
const LSR_THRE: u8 = 1 << 5;
const TEST_DEV: usize = 0x10_0000;
/// CLINT `mtime`, 10 MHz on QEMU virt.
const MTIME: usize = 0x0200_BFF8;
const MTIME_HZ: u64 = 10_000_000;

// Paints the stack (`__estack`..`_stack_start`, everything below the initial
// stack pointer) with 0xCCCC_CCCC. Called by riscv-rt's start code right
// after it set `sp` and before .data/.bss are initialised; uses only t0-t2.
core::arch::global_asm!(
    r#".section .text.__pre_init, "ax"
    .global __pre_init
    .balign 4
__pre_init:
    la t0, __estack
    la t1, _stack_start
    li t2, 0xCCCCCCCC
1:  bgeu t0, t1, 2f
    sw t2, 0(t0)
    addi t0, t0, 4
    j 1b
2:  ret
"#
);

extern "C" {
    static __estack: u32;
    static _stack_start: u32;
}

fn stack_region() -> (usize, usize) {
    (&raw const __estack as usize, &raw const _stack_start as usize)
}

struct Uart;

impl fw::Console for Uart {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            // SAFETY: QEMU virt's 16550 registers (MMIO), byte accesses.
            unsafe {
                while read_volatile(UART_LSR as *const u8) & LSR_THRE == 0 {}
                write_volatile(UART as *mut u8, b);
            }
        }
    }
}

fn clock() -> u64 {
    // SAFETY: the CLINT's 64-bit mtime, read as hi/lo/hi (no tearing).
    unsafe {
        loop {
            let hi = read_volatile((MTIME + 4) as *const u32);
            let lo = read_volatile(MTIME as *const u32);
            if hi == read_volatile((MTIME + 4) as *const u32) {
                return (hi as u64) << 32 | lo as u64;
            }
        }
    }
}

fn exit(ok: bool) -> ! {
    // SAFETY: the SiFive test device's finisher register (MMIO).
    unsafe { write_volatile(TEST_DEV as *mut u32, if ok { 0x5555 } else { (1 << 16) | 0x3333 }) };
    loop {
        riscv::asm::wfi();
    }
}

#[riscv_rt::entry]
fn main() -> ! {
    let ok = fw::run(
        &mut Uart,
        "riscv32 (riscv32imac-unknown-none-elf, virt)",
        &mut clock,
        MTIME_HZ,
        Some(stack_region()),
    );
    exit(ok)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    use core::fmt::Write;
    let _ = writeln!(fw::Fmt(&mut Uart), "\npanic: {info}");
    exit(false)
}

#[export_name = "ExceptionHandler"]
fn exception(_tf: &riscv_rt::TrapFrame) -> ! {
    use core::fmt::Write;
    let _ = writeln!(
        fw::Fmt(&mut Uart),
        "\nexception: mcause {:#x} mepc {:#x} mtval {:#x}",
        riscv::register::mcause::read().bits(),
        riscv::register::mepc::read(),
        riscv::register::mtval::read(),
    );
    exit(false)
}
