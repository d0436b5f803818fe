//! **Test fixture: never serve this plugin.** It exports `handle` written by
//! hand against the canonical ABI instead of through wit-bindgen's `export!`,
//! so that it can return what no well-behaved plugin can: pointers and
//! lengths out of bounds, invalid UTF-8, an invalid discriminant, and
//! hundreds of header fields that all point at one large string. The host's
//! tests use it to show that none of this crashes the server or makes it
//! copy more than a response may hold. `cargo xtask plugins` builds it into
//! `target/test-plugins/`, apart from the plugins meant to be served.
//!
//! The request's content chooses the return value:
//! - `alias-fields`: 4096 header fields whose values are all the same 1 MiB
//!   string: 4 GiB for a host that copies each, 1 MiB of guest memory;
//! - `out-of-bounds`: content whose pointer and length run past the memory;
//! - `bad-utf8`: a content-type that is not UTF-8;
//! - `bad-discriminant`: a `result` whose discriminant is neither ok nor error;
//! - `misaligned`: a return pointer that is not 4-aligned;
//! - anything else: a valid `text/plain` answer, `hostile-abi: fine`.
//!
//! The world's types and imports still come from wit-bindgen (it embeds the
//! world that `wit-component` needs); only the export is by hand.

wit_bindgen::generate!({ world: "handler", path: "../../../wit" });

/// The canonical ABI's flat return area of `result<response, handler-error>`:
/// a one-byte discriminant, then at offset 4 the response's content-type,
/// content-encoding, fields and content, each a (pointer, length) pair of
/// 32-bit words.
#[repr(C, align(8))]
struct ReturnArea([u32; 10]);

/// One `field` record in memory: the name's and the value's (pointer, length).
#[repr(C)]
struct RawField([u32; 4]);

const FIELD_COUNT: usize = 4096;
const ALIASED_VALUE_LEN: usize = 1 << 20;

/// Leaks `bytes` and returns the address and length of the leaked copy.
fn leak(bytes: Vec<u8>) -> (u32, u32) {
    let bytes = bytes.leak();
    (bytes.as_ptr() as usize as u32, bytes.len() as u32)
}

fn text(s: &str) -> (u32, u32) {
    leak(s.as_bytes().to_vec())
}

/// The fields of `alias-fields`: each value points at the same string.
fn aliased_fields() -> (u32, u32) {
    let (value, value_len) = leak(vec![b'1'; ALIASED_VALUE_LEN]);
    let fields: Vec<RawField> = (0..FIELD_COUNT)
        .map(|i| {
            let (name, name_len) = text(&format!("f{i}"));
            RawField([name, name_len, value, value_len])
        })
        .collect();
    let fields = fields.leak();
    (fields.as_ptr() as usize as u32, fields.len() as u32)
}

/// # Safety
///
/// Called by the host through the canonical ABI: every (pointer, length)
/// pair points at memory the host wrote for this call.
#[unsafe(export_name = "handle")]
pub unsafe extern "C" fn handle(
    _content_type: *const u8,
    _content_type_len: usize,
    _content_encoding: *const u8,
    _content_encoding_len: usize,
    _byteorder: *const u8,
    _byteorder_len: usize,
    _fields: *const u8,
    _fields_len: usize,
    content: *const u8,
    content_len: usize,
) -> *mut u8 {
    wit_bindgen::rt::maybe_link_cabi_realloc();
    // SAFETY: the host lowered the request's content at (content, content_len).
    let command = unsafe { std::slice::from_raw_parts(content, content_len) };
    let mut content_type = text("text/plain");
    let encoding = text("utf-8");
    let mut fields = (0, 0);
    let mut body = text("hostile-abi: fine");
    let mut discriminant = 0;
    match command {
        b"alias-fields" => fields = aliased_fields(),
        b"out-of-bounds" => body = (0xFFFF_0000, 0x1_0000),
        b"bad-utf8" => content_type = leak(vec![0xFF, 0xFE, b'/', 0xC0]),
        b"bad-discriminant" => discriminant = 7,
        _ => {}
    }
    let area = Box::leak(Box::new(ReturnArea([0; 10])));
    area.0[0] = discriminant;
    area.0[1..9].copy_from_slice(&[
        content_type.0,
        content_type.1,
        encoding.0,
        encoding.1,
        fields.0,
        fields.1,
        body.0,
        body.1,
    ]);
    let pointer = area as *mut ReturnArea as *mut u8;
    if command == b"misaligned" {
        return pointer.wrapping_add(1);
    }
    pointer
}
