//! Seeds the kernel's random pool with Nova's per-server `random_seed` (the kernel RNG edge).
//!
//! Why: ring, under rustls, reads `getrandom()`, which blocks until the kernel's CRNG is
//! initialised. A guest without RDRAND or virtio-rng (any TCG guest, and KVM guests whose CPU
//! model hides RDRAND) otherwise waits for jitter entropy: measured at 0.7 s on an idle
//! 2-core host and 2 s on a loaded one, all of it before the API can answer.
//!
//! Why crediting is sound: the seed arrives on the config drive next to the appliance's TLS
//! private key, generated per server by Nova's API from its own CSPRNG. Whoever can read the
//! seed can read the key, so it is as secret as the key the random numbers protect.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use super::RandomSeed;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;

/// Bits credited: what initialises the CRNG (256). More would claim nothing more.
pub(crate) const CREDIT_BITS: u32 = 256;

/// Mixes the seed into the kernel's pool and credits it with up to [`CREDIT_BITS`] bits.
/// Needs CAP_SYS_ADMIN. Returns the bits credited.
pub(crate) fn credit(seed: &RandomSeed) -> std::io::Result<u32> {
    let bytes = seed.bytes();
    let bits = CREDIT_BITS.min(
        u32::try_from(bytes.len())
            .unwrap_or(u32::MAX)
            .saturating_mul(8),
    );
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len().next_multiple_of(4));
    info.extend_from_slice(&(bits as libc::c_int).to_ne_bytes());
    info.extend_from_slice(&(bytes.len() as libc::c_int).to_ne_bytes());
    info.extend_from_slice(bytes);
    info.resize(8 + bytes.len().next_multiple_of(4), 0);
    let random = OpenOptions::new().write(true).open("/dev/random")?;
    // SAFETY: `info` is a valid rand_pool_info: the two ints, then `buf_size` bytes (padded to
    // whole u32s), alive for the call; the kernel only reads it.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root only (CAP_SYS_ADMIN): the ioctl is accepted with a seed like Nova's.
    #[test]
    fn a_novas_seed_is_credited_root() {
        let seed = RandomSeed::from_base64(&"QUJD".repeat(171)).expect("base64");
        assert_eq!(seed.bytes().len(), 513);
        assert_eq!(credit(&seed).expect("RNDADDENTROPY"), CREDIT_BITS);
        let two = RandomSeed::from_base64("QUI=").unwrap();
        assert_eq!(
            credit(&two).unwrap(),
            16,
            "two bytes are credited as 16 bits, not more"
        );
    }
}
