//! The firewall's only `unsafe` code, each block with the invariant it relies on:
//!
//! - libnftnl, for what nftnl's safe API lacks: a set's map flag, key and data types, its
//!   elements with data, the map `lookup` expression (source and destination register) and
//!   the `fib` expression (anti-spoofing);
//! - libnftables (the library behind `nft`, linked, not run), to list the live table.
//!
//! Every function here is safe to call; the rest of `firewall/` denies `unsafe_code`.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::ptr::NonNull;

use nftnl::nftnl_sys as sys;
use nftnl::set::Set;

#[derive(Debug, thiserror::Error)]
pub(crate) enum FfiError {
    #[error("libnftnl could not allocate a set element")]
    OutOfMemory,
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
    #[error("libnftables could not create a context")]
    NoContext,
}

/// Key and data types of a set: (nftables data type, length in bytes).
pub(crate) type TypeLen = (u32, u32);

/// Gives `set` its key type and length, and makes it a map with `data` values when given.
pub(crate) fn set_types<K>(set: &Set<'_, K>, key: TypeLen, data: Option<TypeLen>) {
    let raw = set.as_ptr().as_ptr();
    // SAFETY: `raw` is the live nftnl_set owned by `set`, which outlives this call; each
    // call stores a plain integer attribute in it, and nothing else holds a reference to
    // the C object meanwhile (nftnl reads it only when the set is added to a batch).
    unsafe {
        sys::nftnl_set_set_u32(raw, sys::NFTNL_SET_KEY_TYPE as u16, key.0);
        sys::nftnl_set_set_u32(raw, sys::NFTNL_SET_KEY_LEN as u16, key.1);
        if let Some((data_type, data_len)) = data {
            sys::nftnl_set_set_u32(raw, sys::NFTNL_SET_FLAGS as u16, libc::NFT_SET_MAP as u32);
            sys::nftnl_set_set_u32(raw, sys::NFTNL_SET_DATA_TYPE as u16, data_type);
            sys::nftnl_set_set_u32(raw, sys::NFTNL_SET_DATA_LEN as u16, data_len);
        }
    }
}

/// Gives `set` nft's user data saying its keys are big-endian and its values host-endian
/// (`NFTNL_UDATA_SET_KEYBYTEORDER` and `_DATABYTEORDER`, nft's `BYTEORDER_BIG_ENDIAN` and
/// `BYTEORDER_HOST_ENDIAN`), as nft itself records for a map to marks. The kernel ignores it;
/// without it `nft list` would print the marks byte-swapped.
pub(crate) fn set_host_endian_values<K>(set: &Set<'_, K>) {
    let mut udata = Vec::with_capacity(12);
    for (kind, byteorder) in [(0u8, 2u32), (1u8, 1u32)] {
        udata.extend_from_slice(&[kind, 4]);
        udata.extend_from_slice(&byteorder.to_ne_bytes());
    }
    let raw = set.as_ptr().as_ptr();
    // SAFETY: `raw` is the live nftnl_set owned by `set` (see `set_types`); libnftnl copies
    // `udata.len()` bytes out of the live vector.
    unsafe {
        sys::nftnl_set_set_data(
            raw,
            sys::NFTNL_SET_USERDATA as u16,
            udata.as_ptr() as *const c_void,
            udata.len() as u32,
        );
    }
}

/// Adds element `key` (with map value `data`) to `set`.
pub(crate) fn add_element<K>(
    set: &Set<'_, K>,
    key: &[u8],
    data: Option<&[u8]>,
) -> Result<(), FfiError> {
    let raw = set.as_ptr().as_ptr();
    // SAFETY: a freshly allocated element (checked non-null) is given the key and data:
    // libnftnl copies `len` bytes from each pointer, which point into the live slices `key`
    // and `data` of exactly that length (an address: 4 or 16 bytes, under libnftnl's 64).
    // `nftnl_set_elem_add` hands the element to the live set `raw` (see `set_types`), which
    // frees it with itself: it is not used again here.
    unsafe {
        let elem = NonNull::new(sys::nftnl_set_elem_alloc()).ok_or(FfiError::OutOfMemory)?;
        sys::nftnl_set_elem_set(
            elem.as_ptr(),
            sys::NFTNL_SET_ELEM_KEY as u16,
            key.as_ptr() as *const c_void,
            key.len() as u32,
        );
        if let Some(v) = data {
            sys::nftnl_set_elem_set(
                elem.as_ptr(),
                sys::NFTNL_SET_ELEM_DATA as u16,
                v.as_ptr() as *const c_void,
                v.len() as u32,
            );
        }
        sys::nftnl_set_elem_add(raw, elem.as_ptr());
    }
    Ok(())
}

/// A fresh expression of kind `name` with the integer attributes `attrs` (libnftnl attribute,
/// value). The caller (nftnl's `Expression::to_expr`) hands it to the rule, which owns and
/// frees it.
fn expression(name: &CStr, attrs: &[(u32, u32)]) -> NonNull<sys::nftnl_expr> {
    // SAFETY: the expression is freshly allocated (checked non-null) and only given plain
    // integer attributes. Ownership goes to the caller.
    unsafe {
        let expr = NonNull::new(sys::nftnl_expr_alloc(name.as_ptr()))
            .expect("libnftnl could not allocate an expression");
        for &(attr, value) in attrs {
            sys::nftnl_expr_set_u32(expr.as_ptr(), attr as u16, value);
        }
        expr
    }
}

const REG_1: u32 = libc::NFT_REG_1 as u32;

/// A `lookup` expression: register 1 looked up in map `set` (batch-local id `set_id`), the
/// mapped value written to register 1.
pub(crate) fn map_lookup(set: &CStr, set_id: u32) -> NonNull<sys::nftnl_expr> {
    let expr = expression(
        c"lookup",
        &[
            (sys::NFTNL_EXPR_LOOKUP_SREG, REG_1),
            (sys::NFTNL_EXPR_LOOKUP_DREG, REG_1),
            (sys::NFTNL_EXPR_LOOKUP_SET_ID, set_id),
        ],
    );
    // SAFETY: `expr` is the live expression just made, not yet handed on; libnftnl copies the
    // set name out of the live `set`.
    unsafe {
        sys::nftnl_expr_set_str(
            expr.as_ptr(),
            sys::NFTNL_EXPR_LOOKUP_SET as u16,
            set.as_ptr(),
        );
    }
    expr
}

/// `NFT_CT_DST_IP` of `enum nft_ct_keys` (not in the libc crate).
const NFT_CT_DST_IP: u32 = 20;

/// A `ct` expression: the IPv4 destination of the session's original tuple (`reply: false`)
/// or reply tuple, into register 1. A session of another family makes the rule stop there.
pub(crate) fn ct_ipv4_daddr(reply: bool) -> NonNull<sys::nftnl_expr> {
    let expr = expression(
        c"ct",
        &[
            (sys::NFTNL_EXPR_CT_DREG, REG_1),
            (sys::NFTNL_EXPR_CT_KEY, NFT_CT_DST_IP),
        ],
    );
    // SAFETY: `expr` is the live expression just made, not yet handed on; a plain integer.
    unsafe {
        sys::nftnl_expr_set_u8(
            expr.as_ptr(),
            sys::NFTNL_EXPR_CT_DIR as u16,
            u8::from(reply),
        );
    }
    expr
}

/// `enum nft_fib_result` and `enum nft_fib_flags` of `linux/netfilter/nf_tables.h` (not in
/// the libc crate).
const NFT_FIB_RESULT_OIF: u32 = 1;
const NFTA_FIB_F_SADDR: u32 = 1 << 0;
const NFTA_FIB_F_IIF: u32 = 1 << 3;
const NFTA_FIB_F_PRESENT: u32 = 1 << 5;

/// A `fib` expression: `fib saddr . iif oif present`, written to register 1 (zero when the
/// route back to the source does not leave through the input NIC).
pub(crate) fn fib_saddr_iif_oif_present() -> NonNull<sys::nftnl_expr> {
    expression(
        c"fib",
        &[
            (sys::NFTNL_EXPR_FIB_DREG, REG_1),
            (sys::NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_OIF),
            (
                sys::NFTNL_EXPR_FIB_FLAGS,
                NFTA_FIB_F_SADDR | NFTA_FIB_F_IIF | NFTA_FIB_F_PRESENT,
            ),
        ],
    )
}

#[repr(C)]
struct NftCtx {
    _private: [u8; 0],
}

#[link(name = "nftables")]
extern "C" {
    fn nft_ctx_new(flags: u32) -> *mut NftCtx;
    fn nft_ctx_free(ctx: *mut NftCtx);
    fn nft_ctx_buffer_output(ctx: *mut NftCtx) -> c_int;
    fn nft_ctx_buffer_error(ctx: *mut NftCtx) -> c_int;
    fn nft_ctx_get_output_buffer(ctx: *mut NftCtx) -> *const c_char;
    fn nft_ctx_get_error_buffer(ctx: *mut NftCtx) -> *const c_char;
    fn nft_ctx_output_set_flags(ctx: *mut NftCtx, flags: c_uint);
    fn nft_run_cmd_from_buffer(ctx: *mut NftCtx, buf: *const c_char) -> c_int;
}

/// NFT_CTX_OUTPUT_HANDLE: show rule handles, useful when debugging a live router.
const OUTPUT_HANDLE: c_uint = 1 << 3;

/// What libnftables printed for one command.
pub(crate) struct Listing {
    /// The command succeeded.
    pub(crate) ok: bool,
    pub(crate) output: String,
    pub(crate) error: String,
}

/// Runs one libnftables command (`list table inet akanda`) and returns what it printed.
pub(crate) fn nft_list(command: &str) -> Result<Listing, FfiError> {
    let cmd = CString::new(command).map_err(|_| FfiError::Nul(command.to_string()))?;
    // SAFETY: the context is created (checked non-null), used and freed here, on this one
    // thread, and never escapes. The output and error buffers it returns are NUL-terminated
    // strings owned by the context, valid until it is freed: they are copied out (or are
    // null, read as empty) before `nft_ctx_free`. `cmd` is a live NUL-terminated string.
    unsafe {
        let ctx = nft_ctx_new(0);
        if ctx.is_null() {
            return Err(FfiError::NoContext);
        }
        nft_ctx_buffer_output(ctx);
        nft_ctx_buffer_error(ctx);
        nft_ctx_output_set_flags(ctx, OUTPUT_HANDLE);
        let rc = nft_run_cmd_from_buffer(ctx, cmd.as_ptr());
        let text = |p: *const c_char| {
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        let output = text(nft_ctx_get_output_buffer(ctx));
        let error = text(nft_ctx_get_error_buffer(ctx));
        nft_ctx_free(ctx);
        Ok(Listing {
            ok: rc == 0,
            output,
            error,
        })
    }
}
