//! The small runtime shared by the gateway's example plugins.
//!
//! The plugins are `no_std` on wasm so that their components import nothing
//! but the gateway's own interfaces: Rust's `std` on `wasm32-wasip2` drags in
//! WASI imports (`wasi:cli/*`, `wasi:io/*`) that a host without WASI cannot
//! satisfy. Without `std` something else has to provide what it did, and on
//! wasm this crate does:
//!
//! * a global allocator (`dlmalloc`, the one `std` itself uses on wasm),
//! * a panic handler that traps (the host then ignores the plugin for that
//!   request),
//! * the `cabi_realloc` export that the component model uses to pass
//!   strings and lists into the guest.
//!
//! It also holds what more than one plugin needs: [`OnceBox`], a cache that
//! is filled once, and [`hash`] and [`mix`], a stable 64-bit hash.
//!
//! A plugin links it with `extern crate plugin_rt;` (or by using any item).

#![no_std]

extern crate alloc;

use alloc::boxed::Box;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

#[cfg(target_arch = "wasm32")]
mod wasm {
    use core::alloc::Layout;

    // `memcpy`, `memset`, `memcmp` and `memmove`: on `wasm32-wasip2` the
    // compiler leaves them to wasi-libc (the target ships it), whose
    // `libc.a` we link for them. Only the objects that define symbols we use
    // are taken from it; those are plain code, with no WASI imports.
    #[link(name = "c")]
    unsafe extern "C" {}

    #[global_allocator]
    static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

    /// Any panic, including a failed allocation, traps. The host treats a
    /// trap as "no answer" and uses its built-in behaviour.
    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
        core::arch::wasm32::unreachable()
    }

    /// The canonical ABI's allocator, through which the host copies strings
    /// and lists into the guest. `std` (through wasi-libc) provides it on
    /// `wasm32-wasip2`; without `std` we must.
    ///
    /// # Safety
    ///
    /// Called by the host under the canonical ABI's contract: `old_ptr` is
    /// null with `old_len == 0`, or a block that this function returned with
    /// size `old_len` and alignment `align`; `align` is a power of two.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn cabi_realloc(
        old_ptr: *mut u8,
        old_len: usize,
        align: usize,
        new_len: usize,
    ) -> *mut u8 {
        if new_len == 0 {
            // A zero-sized block needs no memory, only a well-aligned,
            // non-null address.
            return align as *mut u8;
        }
        let Ok(new_layout) = Layout::from_size_align(new_len, align) else {
            core::arch::wasm32::unreachable()
        };
        // SAFETY: the canonical ABI's contract above, with new_len > 0.
        let ptr = unsafe {
            if old_len == 0 {
                alloc::alloc::alloc(new_layout)
            } else {
                let old = Layout::from_size_align_unchecked(old_len, align);
                alloc::alloc::realloc(old_ptr, old, new_len)
            }
        };
        if ptr.is_null() {
            core::arch::wasm32::unreachable()
        }
        ptr
    }
}

/// A value computed once, on first use, and kept for the life of the
/// instance: for `static` caches of what the host says (configuration,
/// backend URLs), which does not change while an instance lives.
///
/// Like `once_cell::race::OnceBox`: if two threads race to fill it (which
/// cannot happen in a single-threaded wasm instance, but this type is sound
/// anyway), both compute the value, one wins and the other's copy is
/// dropped.
pub struct OnceBox<T> {
    ptr: AtomicPtr<T>,
}

impl<T> OnceBox<T> {
    /// An empty cell.
    pub const fn new() -> Self {
        Self {
            ptr: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// The value, computing it with `init` if the cell is still empty.
    pub fn get_or_init(&self, init: impl FnOnce() -> T) -> &T {
        let current = self.ptr.load(Ordering::Acquire);
        if !current.is_null() {
            // SAFETY: a non-null pointer was stored by the compare-exchange
            // below from `Box::into_raw` and is never freed or replaced.
            return unsafe { &*current };
        }
        let fresh = Box::into_raw(Box::new(init()));
        match self
            .ptr
            .compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: `fresh` is now owned by the cell, for ever.
            Ok(_) => unsafe { &*fresh },
            Err(winner) => {
                // SAFETY: `fresh` came from `Box::into_raw` above and was not
                // published; `winner` is the published value, never freed.
                drop(unsafe { Box::from_raw(fresh) });
                unsafe { &*winner }
            }
        }
    }
}

impl<T> Default for OnceBox<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Drop for OnceBox<T> {
    fn drop(&mut self) {
        let p = *self.ptr.get_mut();
        if !p.is_null() {
            // SAFETY: a non-null pointer came from `Box::into_raw` and is
            // owned by this cell alone.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

// SAFETY: the cell hands out `&T` to any thread and may drop a `T` on a
// thread other than the one that made it, so `T` must be `Sync + Send`.
unsafe impl<T: Sync + Send> Sync for OnceBox<T> {}
unsafe impl<T: Send> Send for OnceBox<T> {}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// MurmurHash3's 64-bit finaliser: FNV-1a alone mixes its last bytes
/// poorly into the high bits; after this every input bit affects every
/// output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// A stable 64-bit hash of `s`: FNV-1a, then a finaliser. The same on every
/// gateway, every run and every platform (no random seed), so that all
/// gateways in front of the same backends make the same choices.
pub fn hash(s: &str) -> u64 {
    fmix64(fnv1a(FNV_OFFSET, s.as_bytes()))
}

/// Combines two [`hash`]es into one, for choices made per (client, backend)
/// pair: a backend's hash is computed once, and each request then costs one
/// multiply and a finaliser per backend instead of hashing the backend's URL
/// again. Not symmetric: `mix(a, b)` and `mix(b, a)` differ.
pub fn mix(a: u64, b: u64) -> u64 {
    fmix64(a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable() {
        // Pinned: changing the hash moves every sticky user and canary
        // bucket, so it must not change by accident.
        assert_eq!(fnv1a(FNV_OFFSET, b""), FNV_OFFSET);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(""), fmix64(FNV_OFFSET));
        assert_eq!(mix(1, 2), 0xe850_28e6_b31f_8e7a);
        assert_ne!(mix(hash("a"), hash("b")), mix(hash("b"), hash("a")));
    }

    #[test]
    fn once_box_keeps_the_first_value() {
        let cell = OnceBox::new();
        assert_eq!(*cell.get_or_init(|| 1), 1);
        assert_eq!(*cell.get_or_init(|| 2), 1);
    }
}
