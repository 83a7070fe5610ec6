//! The CUDA driver API (`libcuda.so.1`), loaded at run time: GPU buffers for
//! `--src-mem/--dst-mem vram`, page-locked host memory, a device-to-device
//! copy rate for the verdict, and device facts for `doctor`.
//!
//! Three layers in one file, as for NVML: [`raw`] declares the C signatures
//! kvprobe calls (hand-written from the driver API reference; every symbol is
//! the versioned name `cuda.h` maps its macros to, stable since CUDA 4), one
//! [`check`] turns every `CUresult` into a `Result`, and the safe types own
//! what they create: [`Gpu`] retains the device's primary context (released
//! on drop), [`DeviceBuffer`] frees its allocation and keeps its `Gpu` alive.
//!
//! Building needs no CUDA; a process that never asks for GPU memory never
//! loads the library. One library and one context per device are shared by a
//! process ([`gpu`] caches them per thread: kvprobe's helpers run their
//! transfers on one thread).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, OsString};
use std::os::raw::{c_char, c_int, c_uint, c_void};
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::mem::{MemError, Verify};

/// Raw declarations.
pub mod raw {
    use std::os::raw::{c_char, c_int, c_uint, c_void};

    /// `CUresult`.
    pub type CuResult = c_int;
    /// `CUDA_SUCCESS`.
    pub const SUCCESS: CuResult = 0;
    /// `CUDA_ERROR_NO_DEVICE`.
    pub const ERROR_NO_DEVICE: CuResult = 100;
    /// `CUdevice`.
    pub type CuDevice = c_int;
    /// `CUcontext`: an opaque pointer the driver owns.
    pub type CuContext = *mut c_void;
    /// `CUdeviceptr` (64-bit builds).
    pub type CuDevicePtr = u64;
    /// `CU_POINTER_ATTRIBUTE_SYNC_MEMOPS`.
    pub const POINTER_ATTRIBUTE_SYNC_MEMOPS: c_int = 6;
    /// `CU_MEMHOSTREGISTER_PORTABLE`.
    pub const MEMHOSTREGISTER_PORTABLE: c_uint = 1;
    /// `CU_DEVICE_ATTRIBUTE_MAX_PITCH`.
    pub const ATTR_MAX_PITCH: c_int = 11;
    /// `CU_DEVICE_ATTRIBUTE_PCI_BUS_ID`.
    pub const ATTR_PCI_BUS_ID: c_int = 33;
    /// `CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID`.
    pub const ATTR_PCI_DEVICE_ID: c_int = 34;
    /// `CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID`.
    pub const ATTR_PCI_DOMAIN_ID: c_int = 50;
    /// `CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED`.
    pub const ATTR_GPU_DIRECT_RDMA_SUPPORTED: c_int = 116;
    /// `CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED`.
    pub const ATTR_DMA_BUF_SUPPORTED: c_int = 124;

    /// `CU_MEMORYTYPE_HOST`.
    pub const MEMORYTYPE_HOST: c_int = 1;
    /// `CU_MEMORYTYPE_DEVICE`.
    pub const MEMORYTYPE_DEVICE: c_int = 2;

    /// `CUDA_MEMCPY2D` (`cuda.h`): a copy of `Height` rows of `WidthInBytes`,
    /// each side with its own pitch.
    #[allow(non_snake_case)]
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct Memcpy2D {
        /// Source column offset, bytes.
        pub srcXInBytes: usize,
        /// Source row offset.
        pub srcY: usize,
        /// `CUmemorytype` of the source.
        pub srcMemoryType: c_int,
        /// Source, host memory.
        pub srcHost: *const c_void,
        /// Source, device memory.
        pub srcDevice: CuDevicePtr,
        /// Source, a CUDA array (unused: null).
        pub srcArray: *mut c_void,
        /// Source pitch, bytes.
        pub srcPitch: usize,
        /// Destination column offset, bytes.
        pub dstXInBytes: usize,
        /// Destination row offset.
        pub dstY: usize,
        /// `CUmemorytype` of the destination.
        pub dstMemoryType: c_int,
        /// Destination, host memory.
        pub dstHost: *mut c_void,
        /// Destination, device memory.
        pub dstDevice: CuDevicePtr,
        /// Destination, a CUDA array (unused: null).
        pub dstArray: *mut c_void,
        /// Destination pitch, bytes.
        pub dstPitch: usize,
        /// Bytes per row.
        pub WidthInBytes: usize,
        /// Rows.
        pub Height: usize,
    }

    /// The functions kvprobe calls, named as the symbols they are loaded from.
    #[allow(non_snake_case)]
    #[derive(Debug, Clone, Copy)]
    pub struct Api {
        /// `cuInit`.
        pub cuInit: unsafe extern "C" fn(c_uint) -> CuResult,
        /// `cuDriverGetVersion`.
        pub cuDriverGetVersion: unsafe extern "C" fn(*mut c_int) -> CuResult,
        /// `cuGetErrorName`.
        pub cuGetErrorName: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
        /// `cuGetErrorString`.
        pub cuGetErrorString: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
        /// `cuDeviceGetCount`.
        pub cuDeviceGetCount: unsafe extern "C" fn(*mut c_int) -> CuResult,
        /// `cuDeviceGet`.
        pub cuDeviceGet: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
        /// `cuDeviceGetName`.
        pub cuDeviceGetName: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
        /// `cuDeviceGetAttribute`.
        pub cuDeviceGetAttribute: unsafe extern "C" fn(*mut c_int, c_int, CuDevice) -> CuResult,
        /// `cuDeviceTotalMem_v2`.
        pub cuDeviceTotalMem_v2: unsafe extern "C" fn(*mut usize, CuDevice) -> CuResult,
        /// `cuDevicePrimaryCtxRetain`.
        pub cuDevicePrimaryCtxRetain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
        /// `cuDevicePrimaryCtxRelease_v2`.
        pub cuDevicePrimaryCtxRelease_v2: unsafe extern "C" fn(CuDevice) -> CuResult,
        /// `cuCtxSetCurrent`.
        pub cuCtxSetCurrent: unsafe extern "C" fn(CuContext) -> CuResult,
        /// `cuCtxSynchronize`.
        pub cuCtxSynchronize: unsafe extern "C" fn() -> CuResult,
        /// `cuMemAlloc_v2`.
        pub cuMemAlloc_v2: unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult,
        /// `cuMemFree_v2`.
        pub cuMemFree_v2: unsafe extern "C" fn(CuDevicePtr) -> CuResult,
        /// `cuMemcpyHtoD_v2`.
        pub cuMemcpyHtoD_v2: unsafe extern "C" fn(CuDevicePtr, *const c_void, usize) -> CuResult,
        /// `cuMemcpyDtoH_v2`.
        pub cuMemcpyDtoH_v2: unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize) -> CuResult,
        /// `cuMemcpyDtoD_v2`.
        pub cuMemcpyDtoD_v2: unsafe extern "C" fn(CuDevicePtr, CuDevicePtr, usize) -> CuResult,
        /// `cuMemsetD8_v2`.
        pub cuMemsetD8_v2: unsafe extern "C" fn(CuDevicePtr, u8, usize) -> CuResult,
        /// `cuMemcpy2D_v2`.
        pub cuMemcpy2D_v2: unsafe extern "C" fn(*const Memcpy2D) -> CuResult,
        /// `cuMemHostRegister_v2`.
        pub cuMemHostRegister_v2: unsafe extern "C" fn(*mut c_void, usize, c_uint) -> CuResult,
        /// `cuMemHostUnregister`.
        pub cuMemHostUnregister: unsafe extern "C" fn(*mut c_void) -> CuResult,
        /// `cuPointerSetAttribute`.
        pub cuPointerSetAttribute: unsafe extern "C" fn(*const c_void, c_int, CuDevicePtr) -> CuResult,
    }
}

/// The file kvprobe asks the dynamic loader for.
pub const LIBRARY: &str = "libcuda.so.1";

/// CUDA failed.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// The driver library is not on the loader path (no NVIDIA driver here).
    #[error(
        "GPU memory needs the CUDA driver, and {LIBRARY} cannot be loaded ({reason}); searched the dynamic loader path (LD_LIBRARY_PATH, ld.so.cache, /lib, /usr/lib). Install the NVIDIA driver, or put the directory holding {LIBRARY} on LD_LIBRARY_PATH (in containers: /usr/local/nvidia/lib64 or the nvidia-container-toolkit mounts); host-memory sweeps (--src-mem dram --dst-mem dram) need no GPU"
    )]
    NotFound {
        /// What dlopen said.
        reason: String,
    },
    /// A symbol kvprobe needs is missing (a driver older than CUDA 11).
    #[error("{LIBRARY} has no {symbol}: the NVIDIA driver is too old for kvprobe")]
    Symbol {
        /// The symbol.
        symbol: &'static str,
    },
    /// The driver loads but sees no GPU.
    #[error("the CUDA driver sees no GPU ({detail}); check nvidia-smi and CUDA_VISIBLE_DEVICES")]
    NoDevice {
        /// What the driver said.
        detail: String,
    },
    /// `--gpu N` past the devices present.
    #[error(
        "GPU {index} does not exist: the CUDA driver sees {count} GPU(s) (indices 0..{count}, after CUDA_VISIBLE_DEVICES)"
    )]
    BadIndex {
        /// Asked for.
        index: u32,
        /// Present.
        count: u32,
    },
    /// A call returned an error.
    #[error("{call} failed: {name}: {message} (CUresult {code})")]
    Call {
        /// The function.
        call: &'static str,
        /// The return code.
        code: i32,
        /// `cuGetErrorName`.
        name: String,
        /// `cuGetErrorString`.
        message: String,
    },
}

impl From<CudaError> for MemError {
    fn from(e: CudaError) -> MemError {
        MemError::Device(e.to_string())
    }
}

struct Lib {
    api: raw::Api,
    path: Option<std::path::PathBuf>,
    _lib: libloading::Library,
}

/// The loaded, initialised driver API (clones share it).
#[derive(Clone)]
pub struct Cuda(Rc<Lib>);

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda").field("path", &self.0.path).finish()
    }
}

fn c_text(p: *const c_char) -> String {
    if p.is_null() {
        return "unknown".into();
    }
    // SAFETY: non-null, NUL-terminated static string from the driver.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The status->Result helper every CUDA call goes through.
fn check(api: &raw::Api, call: &'static str, code: raw::CuResult) -> Result<(), CudaError> {
    if code == raw::SUCCESS {
        return Ok(());
    }
    let (mut n, mut s): (*const c_char, *const c_char) = (std::ptr::null(), std::ptr::null());
    // SAFETY: both accept any code and write a static string pointer (or
    // leave it null for an unknown code).
    unsafe {
        (api.cuGetErrorName)(code, &mut n);
        (api.cuGetErrorString)(code, &mut s);
    }
    Err(CudaError::Call { call, code, name: c_text(n), message: c_text(s) })
}

/// Calls a driver function through [`check`], naming it in the error.
macro_rules! cu_call {
    ($lib:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        check(&$lib.api, stringify!($f), ($lib.api.$f)($($arg),*))
    };
}

impl Cuda {
    /// Loads `libcuda.so.1` and calls `cuInit(0)`.
    pub fn open() -> Result<Cuda, CudaError> {
        let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL;
        // SAFETY: loading the NVIDIA driver's library runs its initialisers, as
        // in every CUDA program. RTLD_GLOBAL: UCX's and NIXL's CUDA modules
        // dlopen the same file and get this copy.
        let lib = unsafe { libloading::os::unix::Library::open(Some(OsString::from(LIBRARY)), flags) }
            .map_err(|e| CudaError::NotFound { reason: e.to_string() })?;
        let lib = libloading::Library::from(lib);
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the field's type is the documented C signature of this symbol.
                *unsafe { lib.get($name.as_bytes()) }.map_err(|_| CudaError::Symbol { symbol: $name })?
            };
        }
        let api = raw::Api {
            cuInit: sym!("cuInit"),
            cuDriverGetVersion: sym!("cuDriverGetVersion"),
            cuGetErrorName: sym!("cuGetErrorName"),
            cuGetErrorString: sym!("cuGetErrorString"),
            cuDeviceGetCount: sym!("cuDeviceGetCount"),
            cuDeviceGet: sym!("cuDeviceGet"),
            cuDeviceGetName: sym!("cuDeviceGetName"),
            cuDeviceGetAttribute: sym!("cuDeviceGetAttribute"),
            cuDeviceTotalMem_v2: sym!("cuDeviceTotalMem_v2"),
            cuDevicePrimaryCtxRetain: sym!("cuDevicePrimaryCtxRetain"),
            cuDevicePrimaryCtxRelease_v2: sym!("cuDevicePrimaryCtxRelease_v2"),
            cuCtxSetCurrent: sym!("cuCtxSetCurrent"),
            cuCtxSynchronize: sym!("cuCtxSynchronize"),
            cuMemAlloc_v2: sym!("cuMemAlloc_v2"),
            cuMemFree_v2: sym!("cuMemFree_v2"),
            cuMemcpyHtoD_v2: sym!("cuMemcpyHtoD_v2"),
            cuMemcpyDtoH_v2: sym!("cuMemcpyDtoH_v2"),
            cuMemcpyDtoD_v2: sym!("cuMemcpyDtoD_v2"),
            cuMemsetD8_v2: sym!("cuMemsetD8_v2"),
            cuMemcpy2D_v2: sym!("cuMemcpy2D_v2"),
            cuMemHostRegister_v2: sym!("cuMemHostRegister_v2"),
            cuMemHostUnregister: sym!("cuMemHostUnregister"),
            cuPointerSetAttribute: sym!("cuPointerSetAttribute"),
        };
        // SAFETY: cuInit takes flags 0; repeated calls are allowed.
        let rc = unsafe { (api.cuInit)(0) };
        if rc == raw::ERROR_NO_DEVICE {
            let e = check(&api, "cuInit", rc).err().map(|e| e.to_string()).unwrap_or_default();
            return Err(CudaError::NoDevice { detail: e });
        }
        check(&api, "cuInit", rc)?;
        let path = crate::elf::mapped(|p| p.contains("libcuda.so"));
        Ok(Cuda(Rc::new(Lib { api, path, _lib: lib })))
    }

    /// The driver's CUDA version, `13.0` style.
    pub fn driver_version(&self) -> Result<String, CudaError> {
        let mut v: c_int = 0;
        // SAFETY: valid out-pointer.
        unsafe { cu_call!(self.0, cuDriverGetVersion(&mut v)) }?;
        Ok(format!("{}.{}", v / 1000, (v % 1000) / 10))
    }

    /// Number of GPUs the driver sees.
    pub fn device_count(&self) -> Result<u32, CudaError> {
        let mut n: c_int = 0;
        // SAFETY: valid out-pointer.
        unsafe { cu_call!(self.0, cuDeviceGetCount(&mut n)) }?;
        Ok(n.max(0) as u32)
    }

    /// Facts about every GPU.
    pub fn devices(&self) -> Result<Vec<CudaDevice>, CudaError> {
        (0..self.device_count()?).map(|i| self.device_facts(i)).collect()
    }

    fn device(&self, index: u32) -> Result<raw::CuDevice, CudaError> {
        let count = self.device_count()?;
        if index >= count {
            return Err(CudaError::BadIndex { index, count });
        }
        let mut d: raw::CuDevice = 0;
        // SAFETY: index < count, valid out-pointer.
        unsafe { cu_call!(self.0, cuDeviceGet(&mut d, index as c_int)) }?;
        Ok(d)
    }

    fn attribute(&self, dev: raw::CuDevice, attr: c_int) -> Result<i32, CudaError> {
        let mut v: c_int = 0;
        // SAFETY: valid out-pointer, a device from cuDeviceGet.
        unsafe { cu_call!(self.0, cuDeviceGetAttribute(&mut v, attr, dev)) }?;
        Ok(v)
    }

    /// Name, PCI address, memory and GPUDirect attributes of GPU `index`.
    pub fn device_facts(&self, index: u32) -> Result<CudaDevice, CudaError> {
        let dev = self.device(index)?;
        let mut name = [0u8; 128];
        // SAFETY: the buffer has the stated length.
        unsafe { cu_call!(self.0, cuDeviceGetName(name.as_mut_ptr().cast(), name.len() as c_int, dev)) }?;
        let mut total: usize = 0;
        // SAFETY: valid out-pointer.
        unsafe { cu_call!(self.0, cuDeviceTotalMem_v2(&mut total, dev)) }?;
        let pci = format!(
            "{:04x}:{:02x}:{:02x}.0",
            self.attribute(dev, raw::ATTR_PCI_DOMAIN_ID)?,
            self.attribute(dev, raw::ATTR_PCI_BUS_ID)?,
            self.attribute(dev, raw::ATTR_PCI_DEVICE_ID)?
        );
        // Older drivers do not know the newer attributes: an error reads as "no".
        let gdr = self.attribute(dev, raw::ATTR_GPU_DIRECT_RDMA_SUPPORTED).map(|v| v != 0).ok();
        let dmabuf = self.attribute(dev, raw::ATTR_DMA_BUF_SUPPORTED).map(|v| v != 0).ok();
        Ok(CudaDevice {
            index,
            name: CStr::from_bytes_until_nul(&name)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_else(|_| String::from_utf8_lossy(&name).into_owned()),
            pci,
            memory_bytes: total as u64,
            gpudirect_rdma: gdr,
            dma_buf: dmabuf,
        })
    }

    /// The library file the loader used.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.0.path.as_deref()
    }
}

/// One GPU as the CUDA driver reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CudaDevice {
    /// CUDA ordinal (after CUDA_VISIBLE_DEVICES).
    pub index: u32,
    /// `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// PCI address as sysfs names it.
    pub pci: String,
    /// Device memory.
    pub memory_bytes: u64,
    /// `CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED` (None: the driver does not say).
    pub gpudirect_rdma: Option<bool>,
    /// `CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED`.
    pub dma_buf: Option<bool>,
}

struct GpuInner {
    cuda: Cuda,
    dev: raw::CuDevice,
    ctx: NonNull<c_void>,
    index: u32,
    name: String,
}

impl Drop for GpuInner {
    fn drop(&mut self) {
        // SAFETY: pairs the retain in `Gpu::open`; every buffer of this
        // context holds an Rc of this struct, so none is left. The result is
        // ignored (nothing useful to do with it in Drop).
        let _ = unsafe { (self.cuda.0.api.cuDevicePrimaryCtxRelease_v2)(self.dev) };
    }
}

/// A GPU with its primary context retained and made current on this thread
/// (clones share it; the context is released when the last one goes).
#[derive(Clone)]
pub struct Gpu(Rc<GpuInner>);

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("index", &self.0.index).field("name", &self.0.name).finish()
    }
}

thread_local! {
    static GPUS: RefCell<(Option<Cuda>, HashMap<u32, Gpu>)> = RefCell::new((None, HashMap::new()));
}

/// Drops this thread's cached GPUs: each primary context is released once the
/// last buffer of it is gone (the driver stays loaded).
pub fn release_all() {
    GPUS.with(|g| g.borrow_mut().1.clear());
}

/// GPU `index` with its primary context current, loading the driver on first
/// use; later calls on this thread return the same context.
pub fn gpu(index: u32) -> Result<Gpu, CudaError> {
    GPUS.with(|g| {
        let mut g = g.borrow_mut();
        if let Some(gpu) = g.1.get(&index) {
            gpu.make_current()?;
            return Ok(gpu.clone());
        }
        let cuda = match &g.0 {
            Some(c) => c.clone(),
            None => Cuda::open()?,
        };
        g.0 = Some(cuda.clone());
        let gpu = Gpu::open(&cuda, index)?;
        g.1.insert(index, gpu.clone());
        Ok(gpu)
    })
}

impl Gpu {
    fn open(cuda: &Cuda, index: u32) -> Result<Gpu, CudaError> {
        let dev = cuda.device(index)?;
        let facts = cuda.device_facts(index)?;
        let mut ctx: raw::CuContext = std::ptr::null_mut();
        // SAFETY: a device from cuDeviceGet, valid out-pointer.
        unsafe { cu_call!(cuda.0, cuDevicePrimaryCtxRetain(&mut ctx, dev)) }?;
        let Some(ctx) = NonNull::new(ctx) else {
            return Err(CudaError::Call {
                call: "cuDevicePrimaryCtxRetain",
                code: 0,
                name: "null context".into(),
                message: "the driver returned no context".into(),
            });
        };
        // The retain is owed a release from here on (Drop).
        let gpu = Gpu(Rc::new(GpuInner { cuda: cuda.clone(), dev, ctx, index, name: facts.name }));
        gpu.make_current()?;
        Ok(gpu)
    }

    fn make_current(&self) -> Result<(), CudaError> {
        // SAFETY: a retained primary context of this process.
        unsafe { cu_call!(self.0.cuda.0, cuCtxSetCurrent(self.0.ctx.as_ptr())) }
    }

    /// CUDA ordinal.
    pub fn index(&self) -> u32 {
        self.0.index
    }

    /// Device name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The largest pitch a 2D copy may use, bytes (at least 1 MiB assumed).
    fn max_pitch(&self) -> usize {
        self.0.cuda.attribute(self.0.dev, raw::ATTR_MAX_PITCH).map_or(1 << 20, |v| (v.max(1 << 20)) as usize)
    }

    /// Allocates `len` bytes of device memory, with synchronous memory
    /// operations (see below).
    pub fn alloc(&self, len: usize) -> Result<DeviceBuffer, CudaError> {
        let buf = self.alloc_plain(len)?;
        let one: c_uint = 1;
        // SYNC_MEMOPS: copies kvprobe makes to check data are ordered after
        // whatever another process's IPC copy did to this memory (what UCX's
        // cuda_ipc users set on exported memory).
        // SAFETY: `one` is the u32 this attribute takes; the pointer is our allocation.
        unsafe {
            cu_call!(
                self.0.cuda.0,
                cuPointerSetAttribute((&one as *const c_uint).cast(), raw::POINTER_ATTRIBUTE_SYNC_MEMOPS, buf.ptr)
            )
        }?;
        Ok(buf)
    }

    /// Allocates `len` bytes of device memory with the driver's defaults
    /// (asynchronous device-to-device copies: the copy-rate yardstick).
    fn alloc_plain(&self, len: usize) -> Result<DeviceBuffer, CudaError> {
        self.make_current()?;
        let mut p: raw::CuDevicePtr = 0;
        // SAFETY: valid out-pointer; the context is current.
        unsafe { cu_call!(self.0.cuda.0, cuMemAlloc_v2(&mut p, len.max(1))) }?;
        Ok(DeviceBuffer { ptr: p, len, gpu: self.clone() })
    }

    /// Device-to-device copy rate of this GPU, bytes/s: `iters` copies of
    /// `len` bytes between two fresh buffers, after one warm-up copy (what
    /// cuda_ipc between two processes on one GPU does at best).
    pub fn dtod_rate(&self, len: usize, iters: u32) -> Result<f64, CudaError> {
        let a = self.alloc_plain(len)?;
        let b = self.alloc_plain(len)?;
        let api = &self.0.cuda.0;
        // SAFETY: both allocations hold len bytes and live to the end of this function.
        unsafe { cu_call!(api, cuMemcpyDtoD_v2(b.ptr, a.ptr, len)) }?;
        // SAFETY: no arguments; waits for the warm-up copy.
        unsafe { cu_call!(api, cuCtxSynchronize()) }?;
        let t = Instant::now();
        for _ in 0..iters {
            // SAFETY: as above.
            unsafe { cu_call!(api, cuMemcpyDtoD_v2(b.ptr, a.ptr, len)) }?;
        }
        // SAFETY: no arguments.
        unsafe { cu_call!(api, cuCtxSynchronize()) }?;
        Ok(len as f64 * iters as f64 / t.elapsed().as_secs_f64())
    }

    /// Host-to-device copy rate from page-locked host memory, bytes/s
    /// (`iters` copies of `len` bytes after one warm-up copy).
    pub fn htod_rate(&self, len: usize, iters: u32) -> Result<f64, CudaError> {
        let host = crate::mem::HostBuffer::new(len).map_err(|e| CudaError::Call {
            call: "mmap",
            code: 0,
            name: "host buffer".into(),
            message: e.to_string(),
        })?;
        // SAFETY: exactly host's mapping; the guard drops before host (declared after it).
        let _pin = unsafe { self.pin(crate::mem::Region::addr(&host), len) }?;
        let dev = self.alloc_plain(len)?;
        let api = &self.0.cuda.0;
        let src = crate::mem::Region::addr(&host) as *const c_void;
        // SAFETY: both ranges hold len bytes and outlive the copies (synchronous for pinned sources once synchronized).
        unsafe { cu_call!(api, cuMemcpyHtoD_v2(dev.ptr, src, len)) }?;
        // SAFETY: no arguments.
        unsafe { cu_call!(api, cuCtxSynchronize()) }?;
        let t = Instant::now();
        for _ in 0..iters {
            // SAFETY: as above.
            unsafe { cu_call!(api, cuMemcpyHtoD_v2(dev.ptr, src, len)) }?;
        }
        // SAFETY: no arguments.
        unsafe { cu_call!(api, cuCtxSynchronize()) }?;
        Ok(len as f64 * iters as f64 / t.elapsed().as_secs_f64())
    }

    /// Page-locks `[addr, addr+len)` of host memory for DMA (portable to every
    /// context); undone when the returned guard drops.
    ///
    /// # Safety
    /// The range must be mapped host memory that outlives the guard.
    pub unsafe fn pin(&self, addr: usize, len: usize) -> Result<Pinned, CudaError> {
        self.make_current()?;
        // SAFETY: forwarded to the caller's contract.
        unsafe {
            cu_call!(self.0.cuda.0, cuMemHostRegister_v2(addr as *mut c_void, len, raw::MEMHOSTREGISTER_PORTABLE))
        }?;
        Ok(Pinned { addr, gpu: self.clone() })
    }
}

/// Host memory page-locked by [`Gpu::pin`].
pub struct Pinned {
    addr: usize,
    gpu: Gpu,
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinned").field("addr", &self.addr).finish()
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: pairs the successful cuMemHostRegister of `pin`; the memory
        // is still mapped (pin's contract). The result is ignored in Drop.
        let _ = unsafe { (self.gpu.0.cuda.0.api.cuMemHostUnregister)(self.addr as *mut c_void) };
    }
}

/// GPU memory from `cuMemAlloc`, freed on drop. Its address is a device
/// address (unified addressing), never dereferenced on the host: its bytes are
/// read and written only through copies.
pub struct DeviceBuffer {
    ptr: raw::CuDevicePtr,
    len: usize,
    gpu: Gpu,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("len", &self.len)
            .field("gpu", &self.gpu.0.index)
            .finish()
    }
}

/// Host staging for checks runs in pieces of this size, so checking a 1 GiB
/// buffer needs no 1 GiB host copy.
const STAGE: usize = 64 << 20;

impl DeviceBuffer {
    /// Device address.
    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The GPU holding it.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    fn check(&self, off: usize, len: usize) -> Result<(), MemError> {
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(MemError::Range { off, len, size: self.len }),
        }
    }

    /// Copies `src` to device offset `off`.
    pub fn upload(&self, off: usize, src: &[u8]) -> Result<(), MemError> {
        self.check(off, src.len())?;
        self.gpu.make_current()?;
        // SAFETY: the range is inside the allocation (checked); src is a live slice.
        unsafe { cu_call!(self.gpu.0.cuda.0, cuMemcpyHtoD_v2(self.ptr + off as u64, src.as_ptr().cast(), src.len())) }?;
        Ok(())
    }

    /// Copies device `[off, off+dst.len())` into `dst`.
    pub fn download(&self, off: usize, dst: &mut [u8]) -> Result<(), MemError> {
        self.check(off, dst.len())?;
        self.gpu.make_current()?;
        // SAFETY: the range is inside the allocation (checked); dst is a live slice.
        unsafe {
            cu_call!(self.gpu.0.cuda.0, cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), self.ptr + off as u64, dst.len()))
        }?;
        Ok(())
    }

    /// Sets `[off, off+len)` to `byte`, synchronously.
    pub fn memset(&self, off: usize, len: usize, byte: u8) -> Result<(), MemError> {
        self.check(off, len)?;
        self.gpu.make_current()?;
        let api = &self.gpu.0.cuda.0;
        // SAFETY: the range is inside the allocation (checked).
        unsafe { cu_call!(api, cuMemsetD8_v2(self.ptr + off as u64, byte, len)) }?;
        // SAFETY: no arguments; the memset is asynchronous for device memory.
        unsafe { cu_call!(api, cuCtxSynchronize()) }?;
        Ok(())
    }

    /// Writes the pattern for `seed` into `[off, off+len)` as if the range
    /// began at absolute offset `base` (staged through host memory).
    pub fn fill_as(&self, off: usize, len: usize, base: u64, seed: u64) -> Result<(), MemError> {
        self.check(off, len)?;
        let mut stage = vec![0u8; len.min(STAGE)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(STAGE);
            crate::mem::fill_pattern(&mut stage[..n], base + done as u64, seed);
            self.upload(off + done, &stage[..n])?;
            done += n;
        }
        Ok(())
    }

    /// One strided copy between a dense host staging area (`rows` x `width`)
    /// and `rows` rows of `width` bytes, `pitch` apart, from `off` here.
    fn copy_2d(
        &self,
        off: usize,
        width: usize,
        pitch: usize,
        rows: usize,
        host: *mut u8,
        up: bool,
    ) -> Result<(), MemError> {
        if rows == 0 || width == 0 {
            return Ok(());
        }
        self.check(off, (rows - 1) * pitch + width)?;
        self.gpu.make_current()?;
        let dev = self.ptr + off as u64;
        let null = std::ptr::null_mut();
        let c = if up {
            raw::Memcpy2D {
                srcXInBytes: 0,
                srcY: 0,
                srcMemoryType: raw::MEMORYTYPE_HOST,
                srcHost: host.cast_const().cast(),
                srcDevice: 0,
                srcArray: null,
                srcPitch: width,
                dstXInBytes: 0,
                dstY: 0,
                dstMemoryType: raw::MEMORYTYPE_DEVICE,
                dstHost: null,
                dstDevice: dev,
                dstArray: null,
                dstPitch: pitch,
                WidthInBytes: width,
                Height: rows,
            }
        } else {
            raw::Memcpy2D {
                srcXInBytes: 0,
                srcY: 0,
                srcMemoryType: raw::MEMORYTYPE_DEVICE,
                srcHost: std::ptr::null(),
                srcDevice: dev,
                srcArray: null,
                srcPitch: pitch,
                dstXInBytes: 0,
                dstY: 0,
                dstMemoryType: raw::MEMORYTYPE_HOST,
                dstHost: host.cast(),
                dstDevice: 0,
                dstArray: null,
                dstPitch: width,
                WidthInBytes: width,
                Height: rows,
            }
        };
        // SAFETY: the device rows lie inside the allocation (checked above);
        // the caller's host staging holds rows x width bytes.
        unsafe { cu_call!(self.gpu.0.cuda.0, cuMemcpy2D_v2(&c)) }?;
        Ok(())
    }

    /// Writes every chunk (a pattern or poison) with one strided copy per
    /// batch of equally spaced rows ([`crate::mem::batches`]) instead of a
    /// copy per chunk: a KV request's head chunks are thousands of 4 KiB
    /// pieces, and GPUs time-slice the copies of processes sharing them.
    pub fn write_chunks(&self, chunks: &[crate::mem::Chunk]) -> Result<(), MemError> {
        for b in crate::mem::batches(chunks, STAGE, self.gpu.max_pitch()) {
            if b.width > STAGE {
                // one chunk larger than a staging piece: through the plain path
                for c in &chunks[b.rows[0].chunks.clone()] {
                    match c.content {
                        crate::mem::Content::Pattern(seed) => self.fill_as(c.off as usize, c.len as usize, 0, seed)?,
                        crate::mem::Content::Poison => {
                            self.memset(c.off as usize, c.len as usize, crate::mem::POISON)?
                        }
                    }
                }
                continue;
            }
            let mut stage = vec![0u8; b.width * b.rows.len()];
            for (j, row) in b.rows.iter().enumerate() {
                for c in &chunks[row.chunks.clone()] {
                    let at = j * b.width + (c.off - row.off) as usize;
                    c.content.write(&mut stage[at..at + c.len as usize]);
                }
            }
            self.copy_2d(b.rows[0].off as usize, b.width, b.pitch, b.rows.len(), stage.as_mut_ptr(), true)?;
        }
        // a copy from pageable memory may still be on its way when it returns
        // SAFETY: no arguments.
        unsafe { cu_call!(self.gpu.0.cuda.0, cuCtxSynchronize()) }?;
        Ok(())
    }

    /// Checks every chunk against its content, one strided copy per batch.
    pub fn check_chunks(&self, chunks: &[crate::mem::Chunk]) -> Result<Verify, MemError> {
        let mut v = Verify::clean();
        for b in crate::mem::batches(chunks, STAGE, self.gpu.max_pitch()) {
            if b.width > STAGE {
                for c in &chunks[b.rows[0].chunks.clone()] {
                    let content = c.content;
                    let off = c.off;
                    v.merge(self.check_with(c.off as usize, c.len as usize, |s, done| match content {
                        // the chunk's pattern continues at the piece's offset in it
                        crate::mem::Content::Pattern(seed) => {
                            let mut x = crate::mem::verify_pattern(s, done as u64, seed);
                            x.first_bad_offset = x.first_bad_offset.map(|p| p + off);
                            x
                        }
                        crate::mem::Content::Poison => content.check(s, off + done as u64),
                    })?);
                }
                continue;
            }
            let mut stage = vec![0u8; b.width * b.rows.len()];
            self.copy_2d(b.rows[0].off as usize, b.width, b.pitch, b.rows.len(), stage.as_mut_ptr(), false)?;
            for (j, row) in b.rows.iter().enumerate() {
                for c in &chunks[row.chunks.clone()] {
                    let at = j * b.width + (c.off - row.off) as usize;
                    v.merge(c.content.check(&stage[at..at + c.len as usize], c.off));
                }
            }
        }
        Ok(v)
    }

    /// Copies `[off, off+len)` back and checks it with `check(bytes, base of
    /// the piece)`; offsets in the result are as `check` reports them.
    pub fn check_with(
        &self,
        off: usize,
        len: usize,
        mut check: impl FnMut(&[u8], usize) -> Verify,
    ) -> Result<Verify, MemError> {
        self.check(off, len)?;
        let mut stage = vec![0u8; len.min(STAGE)];
        let mut v = Verify::clean();
        let mut done = 0;
        while done < len {
            let n = (len - done).min(STAGE);
            self.download(off + done, &mut stage[..n])?;
            v.merge(check(&stage[..n], done));
            done += n;
        }
        Ok(v)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: frees exactly the allocation made in `alloc`; registrations
        // and memory maps keep an Rc to the buffer that owns this, so nothing
        // refers to it afterwards. Errors are ignored in Drop.
        let _ = unsafe { (self.gpu.0.cuda.0.api.cuMemFree_v2)(self.ptr) };
    }
}

/// GPU `index`'s own copy rates, the verdict's yardsticks for GPU paths
/// (256 MiB copies: device-to-device, and host-to-device from page-locked
/// memory).
pub fn copy_rates(index: u32) -> Result<crate::report::schema::GpuCopy, CudaError> {
    let g = gpu(index)?;
    let len = 256 << 20;
    Ok(crate::report::schema::GpuCopy {
        gpu: index,
        dtod_gbps: g.dtod_rate(len, 20)? / 1e9,
        htod_gbps: g.htod_rate(len, 5)? / 1e9,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_driver_cuda_is_a_clear_error() {
        // On a GPU host this works; elsewhere the error says what was searched and how to fix it.
        match gpu(0) {
            Ok(g) => {
                let b = g.alloc(1 << 20).unwrap();
                b.fill_as(0, 1 << 20, 0, 9).unwrap();
                let v = b.check_with(0, 1 << 20, |s, d| crate::mem::verify_pattern(s, d as u64, 9)).unwrap();
                assert!(v.ok());
            }
            Err(e) => {
                let s = e.to_string();
                assert!(s.contains(LIBRARY) || s.contains("no GPU"), "{s}");
                assert!(s.contains("LD_LIBRARY_PATH") || s.contains("nvidia-smi"), "{s}");
            }
        }
    }
}
