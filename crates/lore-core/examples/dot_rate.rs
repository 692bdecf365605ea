//! Instruction throughput of `vfmadd231ps` against `vdpbf16ps` (512-bit, 8 independent
//! accumulators, one core): does bf16 dot-product arithmetic compute faster than f32 FMAs here?
//! Run: cargo run --release -p lore-core --example dot_rate

#[cfg(target_arch = "x86_64")]
fn main() {
    use std::arch::asm;
    use std::time::Instant;
    if !(std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16"))
    {
        println!("this CPU has no AVX512-BF16");
        return;
    }
    let iterations: u64 = 200_000_000;
    let instructions = (8 * iterations) as f64;
    for round in 0..2 {
        let start = Instant::now();
        // SAFETY: register-only arithmetic on zmm0-7, zmm30-31, declared as clobbered.
        unsafe {
            asm!(
                "2:",
                "vfmadd231ps zmm0, zmm30, zmm31", "vfmadd231ps zmm1, zmm30, zmm31",
                "vfmadd231ps zmm2, zmm30, zmm31", "vfmadd231ps zmm3, zmm30, zmm31",
                "vfmadd231ps zmm4, zmm30, zmm31", "vfmadd231ps zmm5, zmm30, zmm31",
                "vfmadd231ps zmm6, zmm30, zmm31", "vfmadd231ps zmm7, zmm30, zmm31",
                "dec {n}", "jnz 2b",
                n = inout(reg) iterations => _,
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                out("zmm30") _, out("zmm31") _,
            );
        }
        let fma = start.elapsed().as_secs_f64();
        let start = Instant::now();
        // SAFETY: as above.
        unsafe {
            asm!(
                "2:",
                "vdpbf16ps zmm0, zmm30, zmm31", "vdpbf16ps zmm1, zmm30, zmm31",
                "vdpbf16ps zmm2, zmm30, zmm31", "vdpbf16ps zmm3, zmm30, zmm31",
                "vdpbf16ps zmm4, zmm30, zmm31", "vdpbf16ps zmm5, zmm30, zmm31",
                "vdpbf16ps zmm6, zmm30, zmm31", "vdpbf16ps zmm7, zmm30, zmm31",
                "dec {n}", "jnz 2b",
                n = inout(reg) iterations => _,
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                out("zmm30") _, out("zmm31") _,
            );
        }
        let dot = start.elapsed().as_secs_f64();
        // An FMA does 16 multiply-adds (32 flops), a bf16 dot product 32 (64 flops).
        println!(
            "round {round}: vfmadd231ps {:.2} G/s ({:.1} GFLOP/s), vdpbf16ps {:.2} G/s ({:.1} GFLOP/s)",
            instructions / fma / 1e9,
            instructions / fma * 32.0 / 1e9,
            instructions / dot / 1e9,
            instructions / dot * 64.0 / 1e9
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("x86_64 only");
}
