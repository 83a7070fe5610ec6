//! Memory kvprobe transfers from and to, and the data pattern that proves a
//! transfer moved the right bytes.
//!
//! Host buffers are anonymous `mmap`s: page-aligned (what NIXL/UCX register
//! best), advised for transparent huge pages and pre-faulted (written once, or
//! `MAP_POPULATE` without huge pages) so first-touch page faults do not land
//! inside timed transfers.
//!
//! NIXL and the peer read and write these buffers behind Rust's back while a
//! transfer is in flight, so the accessors that look at or change the bytes
//! are `unsafe fn`: the caller promises no transfer touches the range.
//!
//! The pattern is a function of (seed, absolute byte offset), so a transfer
//! that lands at the wrong offset, moves stale data (a different seed) or
//! misses bytes (the poison value stays) is caught.

use std::ptr::NonNull;

/// Something NIXL and UCX can register: a contiguous range of addresses, in
/// host memory or (unified addressing) on a GPU.
///
/// # Safety
/// `addr()..addr()+len()` must be valid, writable memory of the kind
/// `kind()` says, that stays valid for as long as the implementing value
/// lives, and the methods must always return the same values.
pub unsafe trait Region {
    /// Start address.
    fn addr(&self) -> usize;
    /// Length in bytes.
    fn len(&self) -> usize;
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Host or GPU memory.
    fn kind(&self) -> MemKind {
        MemKind::Dram
    }
    /// The device id NIXL registers it with (the CUDA ordinal for GPU memory, 0 for host memory).
    fn dev_id(&self) -> u64 {
        0
    }
}

/// Where a buffer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemKind {
    /// Host memory.
    #[default]
    Dram,
    /// GPU memory.
    Vram,
}

impl std::fmt::Display for MemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemKind::Dram => "dram",
            MemKind::Vram => "vram",
        })
    }
}

impl std::str::FromStr for MemKind {
    type Err = String;
    fn from_str(s: &str) -> Result<MemKind, String> {
        match s.to_ascii_lowercase().as_str() {
            "dram" | "host" | "cpu" => Ok(MemKind::Dram),
            "vram" | "gpu" | "cuda" => Ok(MemKind::Vram),
            _ => Err(format!("unknown memory {s:?}: dram (host) or vram (GPU)")),
        }
    }
}

/// The memory one side of a transfer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct MemSpec {
    /// Host or GPU.
    pub kind: MemKind,
    /// CUDA ordinal: the GPU holding VRAM, or the GPU host memory is
    /// page-locked for when `pin` is set.
    #[serde(default)]
    pub gpu: u32,
    /// Host memory: page-lock it with `cuMemHostRegister` (the other side is
    /// a GPU, so UCX's cuda_copy can DMA it directly).
    #[serde(default)]
    pub pin: bool,
}

impl MemSpec {
    /// Host memory, not pinned.
    pub fn dram() -> MemSpec {
        MemSpec::default()
    }

    /// GPU memory on GPU `gpu`.
    pub fn vram(gpu: u32) -> MemSpec {
        MemSpec { kind: MemKind::Vram, gpu, pin: false }
    }

    /// `dram`, `dram (pinned for GPU 0)` or `vram (GPU 1)`.
    pub fn describe(&self) -> String {
        match (self.kind, self.pin) {
            (MemKind::Vram, _) => format!("vram (GPU {})", self.gpu),
            (MemKind::Dram, true) => "dram (page-locked)".into(),
            (MemKind::Dram, false) => "dram".into(),
        }
    }
}

/// Memory allocation failures.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// mmap refused.
    #[error("cannot allocate {len} bytes of host memory: {source}")]
    Alloc {
        /// Requested length.
        len: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// GPU memory could not be allocated, pinned, copied or checked.
    #[error("{0}")]
    Device(String),
    /// A range outside the buffer.
    #[error("range {off}+{len} is outside the {size}-byte buffer")]
    Range {
        /// Offset asked for.
        off: usize,
        /// Length asked for.
        len: usize,
        /// Buffer size.
        size: usize,
    },
}

/// A page-aligned, pre-faulted host buffer.
///
/// Its bytes are also written by NIXL (local READ destinations) and by the
/// peer (remote WRITEs), so it is never exposed as a long-lived `&mut [u8]`;
/// the methods below touch it only between transfers, which the engine's
/// protocol guarantees.
#[derive(Debug)]
pub struct HostBuffer {
    ptr: NonNull<u8>,
    len: usize,
    map_len: usize,
}

impl HostBuffer {
    /// Allocates `len` bytes (rounded up to whole pages), zero-filled, asking
    /// for transparent huge pages (see [`HostBuffer::with_options`]).
    pub fn new(len: usize) -> Result<HostBuffer, MemError> {
        HostBuffer::with_options(len, true)
    }

    /// Allocates `len` bytes. With `hugepages`, the range is `madvise`d
    /// `MADV_HUGEPAGE` before it is touched, as numpy and many allocators do
    /// for large buffers; the kernel honours it when THP is `always` or
    /// `madvise`. Pages are faulted in here, never inside a timed transfer.
    pub fn with_options(len: usize, hugepages: bool) -> Result<HostBuffer, MemError> {
        if len == 0 {
            return Err(MemError::Alloc { len, source: std::io::Error::from(std::io::ErrorKind::InvalidInput) });
        }
        let page = page_size();
        let map_len = len.div_ceil(page) * page;
        // SAFETY: anonymous private mapping with no address hint; the result is
        // checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if hugepages { 0 } else { libc::MAP_POPULATE },
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(MemError::Alloc { len, source: std::io::Error::last_os_error() });
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| MemError::Alloc { len, source: std::io::Error::last_os_error() })?;
        if hugepages {
            // SAFETY: advice on the mapping just created; failure only means
            // the kernel keeps small pages.
            unsafe { libc::madvise(p, map_len, libc::MADV_HUGEPAGE) };
            // Fault every page in now (writing zeros to fresh anonymous memory
            // changes nothing but the page tables).
            // SAFETY: the whole mapping is ours and nothing else uses it yet.
            unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, map_len) };
        }
        Ok(HostBuffer { ptr, len, map_len })
    }

    fn check(&self, off: usize, len: usize) -> Result<(), MemError> {
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(MemError::Range { off, len, size: self.len }),
        }
    }

    /// Writes the pattern for `seed` into `[off, off+len)`.
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn fill(&self, off: usize, len: usize, seed: u64) -> Result<(), MemError> {
        self.check(off, len)?;
        // SAFETY: the range is inside the mapping (checked) and no transfer
        // touches it now (this function's contract).
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(off), len) };
        fill_pattern(bytes, off as u64, seed);
        Ok(())
    }

    /// Writes the pattern for `seed` into `[off, off+len)` as if the range
    /// began at offset `base` (KV chunks use 0: their pattern does not depend
    /// on where the chunk lives, so the two sides can compare).
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn fill_as(&self, off: usize, len: usize, base: u64, seed: u64) -> Result<(), MemError> {
        self.check(off, len)?;
        // SAFETY: as in fill.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(off), len) };
        fill_pattern(bytes, base, seed);
        Ok(())
    }

    /// Checks `[off, off+len)` against the pattern written by
    /// [`HostBuffer::fill_as`] with the same `base`; offsets in the result
    /// are absolute in this buffer.
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn verify_as(&self, off: usize, len: usize, base: u64, seed: u64) -> Result<Verify, MemError> {
        self.check(off, len)?;
        // SAFETY: as in verify.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) };
        let mut v = verify_pattern(bytes, base, seed);
        v.first_bad_offset = v.first_bad_offset.map(|p| p - base + off as u64);
        Ok(v)
    }

    /// Checks that `[off, off+len)` still holds the poison byte everywhere
    /// (nothing was written there); offsets in the result are absolute.
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn verify_poison(&self, off: usize, len: usize) -> Result<Verify, MemError> {
        self.check(off, len)?;
        // SAFETY: as in verify.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) };
        Ok(poison_check(bytes, off as u64))
    }

    /// Fills `[off, off+len)` with the poison byte.
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn poison(&self, off: usize, len: usize) -> Result<(), MemError> {
        self.check(off, len)?;
        // SAFETY: as in fill.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(off), POISON, len) };
        Ok(())
    }

    /// Checks `[off, off+len)` against the pattern for `seed`.
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn verify(&self, off: usize, len: usize, seed: u64) -> Result<Verify, MemError> {
        self.check(off, len)?;
        // SAFETY: as in fill; read-only view while no transfer is in flight.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) };
        Ok(verify_pattern(bytes, off as u64, seed))
    }

    /// Copies `[off, off+len)` out.
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn read(&self, off: usize, len: usize) -> Result<Vec<u8>, MemError> {
        self.check(off, len)?;
        // SAFETY: in range (checked); no transfer in flight (contract).
        Ok(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }.to_vec())
    }

    /// Flips every bit of the byte at `off` (fault injection for self-tests).
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn corrupt(&self, off: usize) -> Result<(), MemError> {
        self.check(off, 1)?;
        // SAFETY: in range (checked); no transfer in flight (contract).
        unsafe {
            let p = self.ptr.as_ptr().add(off);
            *p ^= 0xFF;
        }
        Ok(())
    }
}

// SAFETY: the mapping lives exactly as long as the HostBuffer (munmap in Drop)
// and ptr/len never change.
unsafe impl Region for HostBuffer {
    fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in new(); nothing refers to it
        // afterwards (registrations keep an Rc to this buffer).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.map_len) };
    }
}

/// A buffer of either kind: what the engine allocates, registers and checks.
/// Host buffers are read and written in place; GPU buffers through copies
/// (the data check copies GPU memory back, so a wrong copy is caught on the
/// GPU side). The accessors have [`HostBuffer`]'s contracts.
#[derive(Debug)]
pub enum Buffer {
    /// Host memory, page-locked when `pinned` (unpinned before it is unmapped:
    /// fields drop in order).
    Host {
        /// The page lock, if any.
        pinned: Option<crate::cuda::Pinned>,
        /// The memory.
        buf: HostBuffer,
    },
    /// GPU memory.
    Device(crate::cuda::DeviceBuffer),
}

impl Buffer {
    /// Allocates `len` bytes as `spec` says (`hugepages` for host memory).
    pub fn alloc(len: usize, spec: &MemSpec, hugepages: bool) -> Result<Buffer, MemError> {
        match spec.kind {
            MemKind::Dram => {
                let buf = HostBuffer::with_options(len, hugepages)?;
                let pinned = if spec.pin {
                    let gpu = crate::cuda::gpu(spec.gpu)?;
                    // SAFETY: the range is exactly buf's mapping, and the guard
                    // drops before buf (field order of Buffer::Host).
                    Some(unsafe { gpu.pin(buf.addr(), buf.len()) }?)
                } else {
                    None
                };
                Ok(Buffer::Host { pinned, buf })
            }
            MemKind::Vram => {
                if len == 0 {
                    return Err(MemError::Alloc {
                        len,
                        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                    });
                }
                let gpu = crate::cuda::gpu(spec.gpu)?;
                Ok(Buffer::Device(gpu.alloc(len)?))
            }
        }
    }

    /// Writes the pattern for `seed` into `[off, off+len)`.
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn fill(&self, off: usize, len: usize, seed: u64) -> Result<(), MemError> {
        // SAFETY: forwarded contract.
        unsafe { self.fill_as(off, len, off as u64, seed) }
    }

    /// As [`HostBuffer::fill_as`].
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn fill_as(&self, off: usize, len: usize, base: u64, seed: u64) -> Result<(), MemError> {
        match self {
            // SAFETY: forwarded contract.
            Buffer::Host { buf, .. } => unsafe { buf.fill_as(off, len, base, seed) },
            Buffer::Device(d) => d.fill_as(off, len, base, seed),
        }
    }

    /// Checks `[off, off+len)` against the pattern for `seed`.
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn verify(&self, off: usize, len: usize, seed: u64) -> Result<Verify, MemError> {
        match self {
            // SAFETY: forwarded contract.
            Buffer::Host { buf, .. } => unsafe { buf.verify(off, len, seed) },
            Buffer::Device(d) => d.check_with(off, len, |s, done| verify_pattern(s, (off + done) as u64, seed)),
        }
    }

    /// As [`HostBuffer::verify_as`].
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn verify_as(&self, off: usize, len: usize, base: u64, seed: u64) -> Result<Verify, MemError> {
        match self {
            // SAFETY: forwarded contract.
            Buffer::Host { buf, .. } => unsafe { buf.verify_as(off, len, base, seed) },
            Buffer::Device(d) => d.check_with(off, len, |s, done| {
                let mut v = verify_pattern(s, base + done as u64, seed);
                v.first_bad_offset = v.first_bad_offset.map(|p| p - base + off as u64);
                v
            }),
        }
    }

    /// Writes every chunk's content (GPU memory: one strided copy per batch).
    ///
    /// # Safety
    /// No transfer may read or write the chunks while this runs (see the module docs).
    pub unsafe fn write_chunks(&self, chunks: &[Chunk]) -> Result<(), MemError> {
        match self {
            Buffer::Host { buf, .. } => {
                for c in chunks {
                    let (off, len) = (c.off as usize, c.len as usize);
                    // SAFETY: forwarded contract.
                    unsafe {
                        match c.content {
                            Content::Pattern(seed) => buf.fill_as(off, len, 0, seed),
                            Content::Poison => buf.poison(off, len),
                        }
                    }?;
                }
                Ok(())
            }
            Buffer::Device(d) => d.write_chunks(chunks),
        }
    }

    /// Checks every chunk against its content (GPU memory: one strided copy
    /// per batch).
    ///
    /// # Safety
    /// No transfer may write the chunks while this runs (see the module docs).
    pub unsafe fn check_chunks(&self, chunks: &[Chunk]) -> Result<Verify, MemError> {
        match self {
            Buffer::Host { buf, .. } => {
                let mut v = Verify::clean();
                for c in chunks {
                    let (off, len) = (c.off as usize, c.len as usize);
                    // SAFETY: forwarded contract.
                    v.merge(unsafe {
                        match c.content {
                            Content::Pattern(seed) => buf.verify_as(off, len, 0, seed),
                            Content::Poison => buf.verify_poison(off, len),
                        }
                    }?);
                }
                Ok(v)
            }
            Buffer::Device(d) => d.check_chunks(chunks),
        }
    }

    /// As [`HostBuffer::verify_poison`].
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn verify_poison(&self, off: usize, len: usize) -> Result<Verify, MemError> {
        match self {
            // SAFETY: forwarded contract.
            Buffer::Host { buf, .. } => unsafe { buf.verify_poison(off, len) },
            Buffer::Device(d) => d.check_with(off, len, |s, done| poison_check(s, (off + done) as u64)),
        }
    }

    /// Checks `[off, off+len)` against the pattern for `seed` block by block
    /// (`block` bytes each, the last one shorter), counting the blocks with
    /// a differing byte (`bad_blocks`). GPU memory is copied back once.
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn verify_blocks(&self, off: usize, len: usize, block: usize, seed: u64) -> Result<Verify, MemError> {
        let block = if block == 0 { len.max(1) } else { block };
        let mut v = Verify::clean();
        let tally = |b: Verify, v: &mut Verify| {
            let mut b = b;
            b.bad_blocks = u64::from(!b.ok());
            v.merge(b);
        };
        match self {
            Buffer::Host { buf, .. } => {
                let mut o = off;
                while o < off + len {
                    let l = block.min(off + len - o);
                    // SAFETY: forwarded contract.
                    tally(unsafe { buf.verify(o, l, seed) }?, &mut v);
                    o += l;
                }
            }
            Buffer::Device(_) => {
                // SAFETY: forwarded contract.
                let bytes = unsafe { self.read(off, len) }?;
                for (k, chunk) in bytes.chunks(block).enumerate() {
                    tally(verify_pattern(chunk, (off + k * block) as u64, seed), &mut v);
                }
            }
        }
        Ok(v)
    }

    /// Fills `[off, off+len)` with zeros (fault injection: a transfer that
    /// "completed" but delivered zeroed blocks, as in vLLM issue 27055).
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn zero(&self, off: usize, len: usize) -> Result<(), MemError> {
        match self {
            Buffer::Host { buf, .. } => {
                buf.check(off, len)?;
                // SAFETY: in range (checked); no transfer in flight (contract).
                unsafe { std::ptr::write_bytes(buf.ptr.as_ptr().add(off), 0, len) };
                Ok(())
            }
            Buffer::Device(d) => d.memset(off, len, 0),
        }
    }

    /// Fills `[off, off+len)` with the poison byte.
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn poison(&self, off: usize, len: usize) -> Result<(), MemError> {
        match self {
            // SAFETY: forwarded contract.
            Buffer::Host { buf, .. } => unsafe { buf.poison(off, len) },
            Buffer::Device(d) => d.memset(off, len, POISON),
        }
    }

    /// Flips every bit of the byte at `off`.
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn corrupt(&self, off: usize) -> Result<(), MemError> {
        match self {
            // SAFETY: forwarded contract.
            Buffer::Host { buf, .. } => unsafe { buf.corrupt(off) },
            Buffer::Device(d) => {
                let mut b = [0u8; 1];
                d.download(off, &mut b)?;
                b[0] ^= 0xFF;
                d.upload(off, &b)
            }
        }
    }

    /// Copies `[off, off+len)` out.
    ///
    /// # Safety
    /// No transfer may read or write the range while this runs (see the module docs).
    pub unsafe fn read(&self, off: usize, len: usize) -> Result<Vec<u8>, MemError> {
        match self {
            // SAFETY: forwarded contract.
            Buffer::Host { buf, .. } => unsafe { buf.read(off, len) },
            Buffer::Device(d) => {
                let mut v = vec![0u8; len];
                d.download(off, &mut v)?;
                Ok(v)
            }
        }
    }

    /// What this buffer is, for reports.
    pub fn spec(&self) -> MemSpec {
        match self {
            Buffer::Host { pinned, .. } => MemSpec { kind: MemKind::Dram, gpu: 0, pin: pinned.is_some() },
            Buffer::Device(d) => MemSpec::vram(d.gpu().index()),
        }
    }
}

// SAFETY: both variants own their memory for as long as the Buffer lives
// (HostBuffer: the mapping; DeviceBuffer: the allocation), and report its
// kind truthfully.
unsafe impl Region for Buffer {
    fn addr(&self) -> usize {
        match self {
            Buffer::Host { buf, .. } => buf.addr(),
            Buffer::Device(d) => d.addr(),
        }
    }
    fn len(&self) -> usize {
        match self {
            Buffer::Host { buf, .. } => buf.len(),
            Buffer::Device(d) => d.len(),
        }
    }
    fn kind(&self) -> MemKind {
        match self {
            Buffer::Host { .. } => MemKind::Dram,
            Buffer::Device(_) => MemKind::Vram,
        }
    }
    fn dev_id(&self) -> u64 {
        match self {
            Buffer::Host { .. } => 0,
            Buffer::Device(d) => u64::from(d.gpu().index()),
        }
    }
}

/// What one chunk of a batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// The pattern for this seed, as if the chunk began at offset 0.
    Pattern(u64),
    /// Poison bytes.
    Poison,
}

impl Content {
    /// Writes the content into `buf`.
    pub fn write(&self, buf: &mut [u8]) {
        match *self {
            Content::Pattern(seed) => fill_pattern(buf, 0, seed),
            Content::Poison => buf.fill(POISON),
        }
    }

    /// Checks `buf` (a chunk that lives at offset `off`) against the content.
    pub fn check(&self, buf: &[u8], off: u64) -> Verify {
        match *self {
            Content::Pattern(seed) => {
                let mut v = verify_pattern(buf, 0, seed);
                v.first_bad_offset = v.first_bad_offset.map(|p| p + off);
                v
            }
            Content::Poison => poison_check(buf, off),
        }
    }
}

/// One piece of a buffer and what it holds (KV head chunks: many small
/// pieces at regular distances).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Offset in the buffer.
    pub off: u64,
    /// Length.
    pub len: u64,
    /// Content.
    pub content: Content,
}

/// Adjacent chunks, merged: one contiguous row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Offset of the row.
    pub off: u64,
    /// Its chunks (indices into the batch's chunk list).
    pub chunks: std::ops::Range<usize>,
}

/// Rows of one width at a constant distance: one strided copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Bytes per row.
    pub width: usize,
    /// Distance from one row to the next (== width when they touch).
    pub pitch: usize,
    /// The rows.
    pub rows: Vec<Row>,
}

/// Groups `chunks` (in their order) into batches of strided copies: adjacent
/// chunks merge into rows of at most `max_bytes` (a longer chunk is a row of
/// its own), and consecutive rows of one width at a constant distance of at
/// most `max_pitch` form a batch of at most `max_bytes`. A KV request's head
/// chunks (heads adjacent in a block, blocks a stride apart) become one
/// batch per region and run of block ids.
pub fn batches(chunks: &[Chunk], max_bytes: usize, max_pitch: usize) -> Vec<Batch> {
    let mut rows: Vec<(u64, u64, std::ops::Range<usize>)> = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        match rows.last_mut() {
            Some((off, len, r)) if *off + *len == c.off && r.end == i && (*len + c.len) as usize <= max_bytes => {
                *len += c.len;
                r.end = i + 1;
            }
            _ => rows.push((c.off, c.len, i..i + 1)),
        }
    }
    let mut out: Vec<Batch> = Vec::new();
    for (off, len, r) in rows {
        let width = len as usize;
        let row = Row { off, chunks: r };
        if let Some(b) = out.last_mut() {
            let last = b.rows[b.rows.len() - 1].off;
            let fits = (b.rows.len() + 1) * b.width <= max_bytes;
            if b.width == width && fits && off > last {
                let gap = (off - last) as usize;
                if gap >= width && gap <= max_pitch && (b.rows.len() == 1 || gap == b.pitch) {
                    b.pitch = gap;
                    b.rows.push(row);
                    continue;
                }
            }
        }
        out.push(Batch { width, pitch: width, rows: vec![row] });
    }
    out
}

/// Checks that `bytes` (first byte at absolute offset `base`) are all poison.
fn poison_check(bytes: &[u8], base: u64) -> Verify {
    let mut v = Verify::clean();
    for (i, &b) in bytes.iter().enumerate() {
        if b != POISON {
            v.mismatched_bytes += 1;
            if v.first_bad_offset.is_none() {
                v.first_bad_offset = Some(base + i as u64);
                v.first_bad = Some((POISON, b));
            }
        }
    }
    v
}

/// The NUMA node holding the page at `addr` (`get_mempolicy` with
/// MPOL_F_NODE | MPOL_F_ADDR, which faults the page in if needed); None when
/// the kernel has no NUMA support or the address is not mapped.
pub fn numa_node_of(addr: usize) -> Option<i32> {
    const MPOL_F_NODE: libc::c_ulong = 1;
    const MPOL_F_ADDR: libc::c_ulong = 2;
    let mut node: libc::c_int = -1;
    // SAFETY: get_mempolicy writes one int into `node`; nodemask is null with
    // maxnode 0; `addr` is only looked up by the kernel, never dereferenced here.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut node as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_ulong>(),
            0 as libc::c_ulong,
            addr as *mut libc::c_void,
            MPOL_F_NODE | MPOL_F_ADDR,
        )
    };
    (rc == 0 && node >= 0).then_some(node)
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

/// The byte written by [`HostBuffer::poison`].
pub const POISON: u8 = 0x5A;

/// The pattern word for the 8-byte-aligned word at absolute word index `w`.
#[inline(always)]
fn word(w: u64, seed: u64) -> u64 {
    let x = (w ^ seed.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 31) ^ seed
}

#[inline(always)]
fn byte_at(pos: u64, seed: u64) -> u8 {
    word(pos / 8, seed).to_le_bytes()[(pos % 8) as usize]
}

/// Writes the pattern into `buf`, whose first byte is at absolute offset `base`.
pub fn fill_pattern(buf: &mut [u8], base: u64, seed: u64) {
    let head = ((8 - base % 8) % 8).min(buf.len() as u64) as usize;
    for (i, b) in buf[..head].iter_mut().enumerate() {
        *b = byte_at(base + i as u64, seed);
    }
    let body_start = head;
    let words = (buf.len() - head) / 8;
    let w0 = (base + head as u64) / 8;
    for (i, chunk) in buf[body_start..body_start + words * 8].chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&word(w0 + i as u64, seed).to_le_bytes());
    }
    let tail_start = body_start + words * 8;
    for (i, b) in buf[tail_start..].iter_mut().enumerate() {
        *b = byte_at(base + (tail_start + i) as u64, seed);
    }
}

/// The outcome of a pattern check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verify {
    /// Bytes that differ from the pattern.
    pub mismatched_bytes: u64,
    /// Absolute offset of the first differing byte.
    pub first_bad_offset: Option<u64>,
    /// Expected and found byte there.
    pub first_bad: Option<(u8, u8)>,
    /// Blocks (descriptors) with at least one differing byte, when checked block by block.
    #[serde(default)]
    pub bad_blocks: u64,
}

impl Verify {
    /// True when every byte matched.
    pub fn ok(&self) -> bool {
        self.mismatched_bytes == 0
    }

    /// Adds another check's outcome (the first bad byte stays the earliest seen).
    pub fn merge(&mut self, o: Verify) {
        self.mismatched_bytes += o.mismatched_bytes;
        self.bad_blocks += o.bad_blocks;
        if self.first_bad_offset.is_none() {
            self.first_bad_offset = o.first_bad_offset;
            self.first_bad = o.first_bad;
        }
    }

    /// A clean result.
    pub fn clean() -> Verify {
        Verify { mismatched_bytes: 0, first_bad_offset: None, first_bad: None, bad_blocks: 0 }
    }
}

/// Checks `buf` (first byte at absolute offset `base`) against the pattern.
pub fn verify_pattern(buf: &[u8], base: u64, seed: u64) -> Verify {
    let mut v = Verify::clean();
    let note = |pos: u64, want: u8, got: u8, v: &mut Verify| {
        v.mismatched_bytes += 1;
        if v.first_bad_offset.is_none() {
            v.first_bad_offset = Some(pos);
            v.first_bad = Some((want, got));
        }
    };
    let head = ((8 - base % 8) % 8).min(buf.len() as u64) as usize;
    for (i, &b) in buf[..head].iter().enumerate() {
        let pos = base + i as u64;
        let want = byte_at(pos, seed);
        if b != want {
            note(pos, want, b, &mut v);
        }
    }
    let words = (buf.len() - head) / 8;
    let w0 = (base + head as u64) / 8;
    for (i, chunk) in buf[head..head + words * 8].chunks_exact(8).enumerate() {
        let want = word(w0 + i as u64, seed).to_le_bytes();
        if chunk != want {
            for k in 0..8 {
                if chunk[k] != want[k] {
                    note(base + (head + i * 8 + k) as u64, want[k], chunk[k], &mut v);
                }
            }
        }
    }
    let tail_start = head + words * 8;
    for (i, &b) in buf[tail_start..].iter().enumerate() {
        let pos = base + (tail_start + i) as u64;
        let want = byte_at(pos, seed);
        if b != want {
            note(pos, want, b, &mut v);
        }
    }
    v
}

#[cfg(test)]
mod tests {

    /// What the strided copies of `batches` do, on a host "device": each
    /// batch's dense staging written row by row at its pitch.
    fn write_batched(dev: &mut [u8], chunks: &[Chunk], max: usize) -> usize {
        let bs = batches(chunks, max, 1 << 30);
        for b in &bs {
            let mut stage = vec![0u8; b.width * b.rows.len()];
            for (j, row) in b.rows.iter().enumerate() {
                for c in &chunks[row.chunks.clone()] {
                    let at = j * b.width + (c.off - row.off) as usize;
                    c.content.write(&mut stage[at..at + c.len as usize]);
                }
            }
            for j in 0..b.rows.len() {
                let at = b.rows[0].off as usize + j * b.pitch;
                dev[at..at + b.width].copy_from_slice(&stage[j * b.width..(j + 1) * b.width]);
            }
        }
        bs.len()
    }

    #[test]
    fn kv_head_chunks_batch_into_one_strided_copy_per_region_and_land_where_chunk_writes_do() {
        // 3 regions x 5 blocks (stride 1000) x a slice of 2 adjacent 64-byte heads at offset 128
        let mut chunks = Vec::new();
        for r in 0..3u64 {
            for b in 0..5u64 {
                for h in 0..2u64 {
                    let off = r * 10_000 + b * 1000 + 128 + h * 64;
                    chunks.push(Chunk { off, len: 64, content: Content::Pattern(r * 100 + b * 10 + h + 1) });
                }
            }
        }
        let bs = batches(&chunks, 1 << 20, 1 << 30);
        assert_eq!(bs.len(), 3, "one per region");
        assert!(bs.iter().all(|b| b.width == 128 && b.pitch == 1000 && b.rows.len() == 5));
        let mut want = vec![7u8; 30_000];
        for c in &chunks {
            c.content.write(&mut want[c.off as usize..(c.off + c.len) as usize]);
        }
        let mut got = vec![7u8; 30_000];
        write_batched(&mut got, &chunks, 1 << 20);
        assert_eq!(got, want, "the bytes between slices are left alone");
        // the size limit splits a batch; irregular distances never join one
        // (a lone last row of one region pairs with the next region's first)
        assert_eq!(write_batched(&mut got, &chunks, 128 * 2), 8);
        assert_eq!(got, want);
        let odd = [0u64, 100, 300, 400].map(|off| Chunk { off, len: 10, content: Content::Poison });
        let bs = batches(&odd, 1 << 20, 1 << 30);
        assert_eq!(bs.iter().map(|b| b.rows.len()).collect::<Vec<_>>(), vec![2, 2]);
        // rows stop at the size limit; no copy's pitch passes the device's limit
        let long = [0u64, 10, 20, 30].map(|off| Chunk { off, len: 10, content: Content::Poison });
        assert_eq!(batches(&long, 20, 1 << 30).iter().map(|b| b.width).collect::<Vec<_>>(), vec![20, 20]);
        let far: Vec<Chunk> = (0..3u64).map(|i| Chunk { off: i * 5000, len: 64, content: Content::Poison }).collect();
        assert_eq!(batches(&far, 1 << 20, 4096).len(), 3);
        assert_eq!(batches(&far, 1 << 20, 5000).len(), 1);
        // a check finds a wrong byte at its absolute offset
        got[10_000 + 3 * 1000 + 128 + 64 + 5] ^= 1;
        let c = chunks[3 * 2 + 5 * 2 + 1];
        let v = c.content.check(&got[c.off as usize..(c.off + c.len) as usize], c.off);
        assert_eq!(v.first_bad_offset, Some(10_000 + 3 * 1000 + 128 + 64 + 5));
    }
    use super::*;

    // SAFETY (every unsafe block below): these buffers are never registered
    // with NIXL, so no transfer can touch them.

    #[test]
    fn buffers_are_page_aligned_and_zeroed() {
        let b = HostBuffer::new(10_000).unwrap();
        assert_eq!(b.addr() % 4096, 0);
        assert_eq!(b.len(), 10_000);
        // SAFETY: see the module comment.
        assert!(unsafe { b.read(0, 10_000) }.unwrap().iter().all(|&x| x == 0));
        // SAFETY: see the module comment.
        assert!(unsafe { b.verify(0, 10, 1) }.unwrap().mismatched_bytes > 0);
        let small = HostBuffer::with_options(10_000, false).unwrap();
        assert_eq!(small.addr() % 4096, 0);
    }

    #[test]
    fn pattern_roundtrips_at_any_offset_and_length() {
        let b = HostBuffer::new(1 << 16).unwrap();
        for (off, len) in [(0, 4096), (3, 1000), (7, 1), (8, 8), (1, 65534), (65535, 1)] {
            // SAFETY: see the module comment.
            unsafe { b.fill(off, len, 42) }.unwrap();
            // SAFETY: see the module comment.
            assert!(unsafe { b.verify(off, len, 42) }.unwrap().ok(), "{off}+{len}");
        }
    }

    #[test]
    fn stale_data_wrong_offset_and_missing_bytes_are_caught() {
        let b = HostBuffer::new(8192).unwrap();
        // SAFETY: see the module comment.
        unsafe { b.fill(0, 8192, 1) }.unwrap();
        // stale: a different seed
        // SAFETY: see the module comment.
        assert!(!unsafe { b.verify(0, 8192, 2) }.unwrap().ok());
        // wrong place: copy shifted by 8 bytes
        let mut shifted = vec![0u8; 4096];
        fill_pattern(&mut shifted, 8, 1);
        assert!(!verify_pattern(&shifted, 0, 1).ok());
        // missing: poison stays
        // SAFETY: see the module comment.
        unsafe { b.poison(100, 10) }.unwrap();
        // SAFETY: see the module comment.
        let v = unsafe { b.verify(0, 8192, 1) }.unwrap();
        assert_eq!(v.mismatched_bytes, 10);
        assert_eq!(v.first_bad_offset, Some(100));
        assert_eq!(v.first_bad.unwrap().1, POISON);
    }

    #[test]
    fn one_corrupted_byte_is_found_exactly() {
        let b = HostBuffer::new(1 << 20).unwrap();
        // SAFETY: see the module comment.
        unsafe { b.fill(0, 1 << 20, 7) }.unwrap();
        // SAFETY: see the module comment.
        unsafe { b.corrupt(123_457) }.unwrap();
        // SAFETY: see the module comment.
        let v = unsafe { b.verify(0, 1 << 20, 7) }.unwrap();
        assert_eq!(v.mismatched_bytes, 1);
        assert_eq!(v.first_bad_offset, Some(123_457));
    }

    #[test]
    fn out_of_range_is_an_error() {
        let b = HostBuffer::new(4096).unwrap();
        // SAFETY: see the module comment (and the range is refused anyway).
        assert!(matches!(unsafe { b.fill(4000, 200, 1) }, Err(MemError::Range { .. })));
        // SAFETY: as above.
        assert!(matches!(unsafe { b.verify(usize::MAX, 2, 1) }, Err(MemError::Range { .. })));
        assert!(HostBuffer::new(0).is_err());
    }
}
