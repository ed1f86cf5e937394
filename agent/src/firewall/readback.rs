//! `GET /v1/firewall/rules`: the live table read back from the kernel, with counters, as nft
//! text. libnftables (the library behind `nft`, linked, not run) lists it: the kernel, not
//! the agent's memory, is the source of truth, and it renders exactly as `nft list` would.

use std::ffi::{c_char, c_int, c_uint, CStr, CString};

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

#[derive(Debug, thiserror::Error)]
#[error("listing the ruleset: {0}")]
pub struct ReadbackError(String);

/// `Ok(None)` when the table does not exist (no config applied yet).
pub fn list_table(table: &str) -> Result<Option<String>, ReadbackError> {
    let cmd = CString::new(format!("list table inet {table}"))
        .map_err(|_| ReadbackError("table name contains NUL".into()))?;
    // SAFETY: the context is created, used and freed here, on one thread; the buffers it
    // returns are valid until it is freed and are copied out before that.
    unsafe {
        let ctx = nft_ctx_new(0);
        if ctx.is_null() {
            return Err(ReadbackError(
                "libnftables could not create a context".into(),
            ));
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
        let out = text(nft_ctx_get_output_buffer(ctx));
        let err = text(nft_ctx_get_error_buffer(ctx));
        nft_ctx_free(ctx);
        if rc == 0 {
            Ok(Some(out))
        } else if err.contains("No such file or directory") {
            Ok(None)
        } else {
            Err(ReadbackError(err.trim().to_string()))
        }
    }
}
