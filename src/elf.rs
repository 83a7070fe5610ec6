//! Just enough ELF64 to answer "which libraries does this shared object
//! need, and where would the dynamic loader find them": `DT_NEEDED`,
//! `DT_RPATH`/`DT_RUNPATH` with `$ORIGIN`, `LD_LIBRARY_PATH`, the loader's
//! cache and default folders.
//!
//! kvprobe uses it to find the exact UCX that NIXL's UCX plugin links, and to
//! tell why a UCX transport module cannot load (a missing `libefa.so.1`, say),
//! without loading anything.

use std::path::{Path, PathBuf};

/// The dynamic-section facts of a shared object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// `DT_NEEDED` entries, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` folders (colon-split, unexpanded).
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` folders (colon-split, unexpanded).
    pub runpath: Vec<String>,
}

/// Why a file could not be read as ELF.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ElfError {
    /// The file.
    pub path: String,
    /// What was wrong.
    pub reason: String,
}

fn rd<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}
fn u16le(b: &[u8], off: usize) -> Option<u16> {
    rd::<2>(b, off).map(u16::from_le_bytes)
}
fn u32le(b: &[u8], off: usize) -> Option<u32> {
    rd::<4>(b, off).map(u32::from_le_bytes)
}
fn u64le(b: &[u8], off: usize) -> Option<u64> {
    rd::<8>(b, off).map(u64::from_le_bytes)
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// Reads the dynamic section of a 64-bit little-endian ELF file.
pub fn read_dynamic(path: &Path) -> Result<Dynamic, ElfError> {
    let err = |reason: &str| ElfError { path: path.display().to_string(), reason: reason.to_string() };
    let b = std::fs::read(path).map_err(|e| err(&e.to_string()))?;
    parse_dynamic(&b).ok_or_else(|| err("not a 64-bit little-endian ELF shared object, or a damaged one"))
}

/// Parses the dynamic section from the bytes of an ELF file.
pub fn parse_dynamic(b: &[u8]) -> Option<Dynamic> {
    if b.get(0..4)? != b"\x7fELF" || *b.get(4)? != 2 || *b.get(5)? != 1 {
        return None;
    }
    let phoff = u64le(b, 0x20)? as usize;
    let phentsize = u16le(b, 0x36)? as usize;
    let phnum = u16le(b, 0x38)? as usize;
    let mut loads = Vec::new(); // (vaddr, offset, filesz)
    let mut dynamic = None; // (offset, size)
    for i in 0..phnum {
        let p = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let ty = u32le(b, p)?;
        let offset = u64le(b, p + 8)?;
        let vaddr = u64le(b, p + 16)?;
        let filesz = u64le(b, p + 32)?;
        match ty {
            PT_LOAD => loads.push((vaddr, offset, filesz)),
            PT_DYNAMIC => dynamic = Some((offset as usize, filesz as usize)),
            _ => {}
        }
    }
    let (doff, dsize) = dynamic?;
    let mut entries = Vec::new();
    let mut strtab_vaddr = None;
    let mut i = 0;
    while i + 16 <= dsize {
        let tag = u64le(b, doff + i)?;
        let val = u64le(b, doff + i + 8)?;
        if tag == DT_NULL {
            break;
        }
        if tag == DT_STRTAB {
            strtab_vaddr = Some(val);
        }
        entries.push((tag, val));
        i += 16;
    }
    let strtab_vaddr = strtab_vaddr?;
    let (lv, lo, _) = loads.iter().copied().find(|&(v, _, sz)| strtab_vaddr >= v && strtab_vaddr < v + sz)?;
    let strtab = (strtab_vaddr - lv + lo) as usize;
    let string = |off: u64| -> Option<String> {
        let start = strtab.checked_add(off as usize)?;
        let rest = b.get(start..)?;
        let end = rest.iter().position(|&c| c == 0)?;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    let mut d = Dynamic::default();
    for (tag, val) in entries {
        match tag {
            DT_NEEDED => d.needed.push(string(val)?),
            DT_RPATH => d.rpath.extend(string(val)?.split(':').filter(|s| !s.is_empty()).map(String::from)),
            DT_RUNPATH => d.runpath.extend(string(val)?.split(':').filter(|s| !s.is_empty()).map(String::from)),
            _ => {}
        }
    }
    Some(d)
}

/// The loader's default folders (after the cache).
const DEFAULT_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// Where the dynamic loader would find `name` for an object at `origin`
/// with dynamic section `dynamic` (DT_RPATH only when there is no
/// DT_RUNPATH, then LD_LIBRARY_PATH, DT_RUNPATH, the cache, defaults).
pub fn resolve(name: &str, origin: &Path, dynamic: &Dynamic) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let dir_of = origin.parent().unwrap_or(Path::new("/"));
    let expand = |d: &str| {
        PathBuf::from(d.replace("$ORIGIN", &dir_of.to_string_lossy()).replace("${ORIGIN}", &dir_of.to_string_lossy()))
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    if dynamic.runpath.is_empty() {
        dirs.extend(dynamic.rpath.iter().map(|d| expand(d)));
    }
    if let Some(llp) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&llp).filter(|p| !p.as_os_str().is_empty()));
    }
    dirs.extend(dynamic.runpath.iter().map(|d| expand(d)));
    for d in &dirs {
        let p = d.join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    if let Some(p) = ld_cache().into_iter().find(|(n, _)| n == name).map(|(_, p)| p) {
        return Some(p);
    }
    DEFAULT_DIRS.iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// The loader cache (`ldconfig -p`), as (name, path); empty if unavailable.
pub fn ld_cache() -> Vec<(String, PathBuf)> {
    use std::sync::OnceLock;
    static CACHE: OnceLock<Vec<(String, PathBuf)>> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let out = ["/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"].iter().find_map(|exe| {
                crate::locate::run_with_timeout(
                    std::process::Command::new(exe).arg("-p"),
                    std::time::Duration::from_secs(5),
                )
                .ok()
            });
            out.unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let (left, path) = l.split_once("=>")?;
                    let name = left.split_whitespace().next()?;
                    Some((name.to_string(), PathBuf::from(path.trim())))
                })
                .collect()
        })
        .clone()
}

/// The first file mapped into this process whose path satisfies `pred`
/// (from /proc/self/maps): which build of a library the loader really used.
pub fn mapped(pred: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| pred(p)).map(PathBuf::from)
}

/// The NEEDED libraries of `path` that the loader would not find.
pub fn missing_needed(path: &Path) -> Result<Vec<String>, ElfError> {
    let d = read_dynamic(path)?;
    Ok(d.needed.iter().filter(|n| resolve(n, path, &d).is_none()).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_test_binary_and_finds_libc() {
        let exe = std::env::current_exe().unwrap();
        let d = read_dynamic(&exe).unwrap();
        assert!(d.needed.iter().any(|n| n.starts_with("libc.so")), "{d:?}");
        let libc = d.needed.iter().find(|n| n.starts_with("libc.so")).unwrap();
        assert!(resolve(libc, &exe, &d).is_some());
        assert!(missing_needed(&exe).unwrap().is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_dynamic(b"").is_none());
        assert!(parse_dynamic(b"\x7fELF\x02\x01garbage").is_none());
        let mut b = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        b.truncate(200);
        assert!(parse_dynamic(&b).is_none());
        assert!(read_dynamic(Path::new("/nonexistent")).is_err());
    }

    #[test]
    fn rpath_with_origin_is_expanded() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("lib")).unwrap();
        std::fs::create_dir_all(tmp.path().join("bin")).unwrap(); // $ORIGIN exists, as for a real library
        std::fs::write(tmp.path().join("lib/libdep.so.1"), b"").unwrap();
        let d = Dynamic { needed: vec!["libdep.so.1".into()], rpath: vec!["$ORIGIN/../lib".into()], runpath: vec![] };
        let origin = tmp.path().join("bin/libx.so");
        let got = resolve("libdep.so.1", &origin, &d).unwrap();
        assert!(got.ends_with("lib/libdep.so.1"), "{got:?}");
        assert!(resolve("libnope-kvprobe.so.9", &origin, &d).is_none());
    }
}
