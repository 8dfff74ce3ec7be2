//! edgeq on a Cortex-M4F: QEMU's mps2-an386 board
//! (`qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic
//! -semihosting-config enable=on,target=native -kernel IMAGE`). The same
//! crate built for `thumbv7m-none-eabi` runs on a Cortex-M3 (mps2-an385).
//!
//! Generates `EDGEQ_TOKENS` tokens from BOS with the model embedded at build
//! time (`EDGEQ_MODEL`), prints them through semihosting (or, with the
//! `defmt` feature, logs them through defmt), prints the stack's high-water
//! mark (the stack is painted by cortex-m-rt's `paint-stack` at reset), and
//! exits QEMU with status 0, or 1 on any error or panic.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use edgeq_fw_common as fw;

extern "C" {
    // cortex-m-rt's linker script: the stack grows down from `_stack_start`
    // to at most `_stack_end` (the end of .bss/.uninit); `paint-stack`
    // fills that range with 0xCCCC_CCCC before `main`.
    static _stack_start: u32;
    static _stack_end: u32;
}

fn stack_region() -> (usize, usize) {
    (&raw const _stack_end as usize, &raw const _stack_start as usize)
}

/// Semihosting SYS_CLOCK: centiseconds since the program started.
fn clock() -> u64 {
    // SAFETY: SYS_CLOCK takes no argument.
    let cs = unsafe { cortex_m_semihosting::syscall!(CLOCK) } as isize;
    cs.max(0) as u64
}

/// The console: a line buffer (one semihosting call or one defmt frame per
/// line, not per token) in front of semihosting stdout, or of defmt.
mod out {
    use edgeq_fw_common::Console;

    pub struct Out {
        #[cfg(not(feature = "defmt"))]
        h: Option<cortex_m_semihosting::hio::HostStream>,
        buf: [u8; 128],
        n: usize,
    }

    impl Out {
        pub fn new() -> Self {
            Out {
                #[cfg(not(feature = "defmt"))]
                h: cortex_m_semihosting::hio::hstdout().ok(),
                buf: [0; 128],
                n: 0,
            }
        }
        pub fn flush(&mut self) {
            if self.n == 0 {
                return;
            }
            let line = &self.buf[..self.n];
            #[cfg(not(feature = "defmt"))]
            if let Some(h) = &mut self.h {
                let _ = h.write_all(line);
            }
            #[cfg(feature = "defmt")]
            defmt::println!("{=[u8]:a}", line);
            self.n = 0;
        }
    }

    impl Console for Out {
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                if self.n == self.buf.len() {
                    self.flush();
                }
                self.buf[self.n] = b;
                self.n += 1;
                if b == b'\n' {
                    self.flush();
                }
            }
        }
    }
}

#[cfg(feature = "defmt")]
use defmt_semihosting as _; // the global logger: defmt frames on semihosting stdout

#[cfg(feature = "defmt")]
defmt::timestamp!("{=u64}", clock());

/// This image's CPU and board: the crate also builds for the Cortex-M3
/// (`thumbv7m-none-eabi`, no FPU: soft float) on QEMU's mps2-an385, which
/// has the same memory map.
const TARGET: &str = if cfg!(target_abi = "eabihf") {
    "cortex-m4f (thumbv7em-none-eabihf, mps2-an386)"
} else if cfg!(target_feature = "dsp") {
    "cortex-m4 (thumbv7em-none-eabi, soft float)"
} else {
    "cortex-m3 (thumbv7m-none-eabi, mps2-an385, soft float)"
};

#[entry]
fn main() -> ! {
    let mut out = out::Out::new();
    let ok = fw::run(&mut out, TARGET, &mut clock, 100, Some(stack_region()));
    out.flush();
    exit(ok)
}

fn exit(ok: bool) -> ! {
    use cortex_m_semihosting::debug;
    debug::exit(if ok { debug::EXIT_SUCCESS } else { debug::EXIT_FAILURE });
    loop {
        cortex_m::asm::bkpt();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    #[cfg(not(feature = "defmt"))]
    if let Ok(mut h) = cortex_m_semihosting::hio::hstdout() {
        use core::fmt::Write;
        let _ = writeln!(h, "\npanic: {info}");
    }
    #[cfg(feature = "defmt")]
    defmt::error!("panic: {}", defmt::Display2Format(info));
    exit(false)
}

#[cortex_m_rt::exception]
unsafe fn HardFault(ef: &cortex_m_rt::ExceptionFrame) -> ! {
    #[cfg(not(feature = "defmt"))]
    if let Ok(mut h) = cortex_m_semihosting::hio::hstdout() {
        use core::fmt::Write;
        let _ = writeln!(h, "\nhard fault: {ef:?}");
    }
    #[cfg(feature = "defmt")]
    defmt::error!("hard fault at pc {=u32:#x}", ef.pc());
    exit(false)
}
