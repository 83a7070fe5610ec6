//! Just enough ELF64 to answer "which libraries does this shared object
//! need, and where would the dynamic loader find them": `DT_NEEDED`,
//! `DT_RPATH`/`DT_RUNPATH` with `$ORIGIN`, `LD_LIBRARY_PATH`, the loader's
//! cache and default folders; and "would the loader accept the file it finds":
//! the symbol versions an object needs from each library (`DT_VERNEED`) against
//! those the library defines (`DT_VERDEF`).
//!
//! kvprobe uses it to find the exact UCX that NIXL's UCX plugin links, to
//! tell why a UCX transport module cannot load (a missing `libefa.so.1`, say),
//! and why NIXL's LIBFABRIC plugin cannot (a libfabric without
//! `FABRIC_1.10`), without loading anything. Damaged input is an error, never
//! a panic: every offset is checked and every walk is bounded.

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
    /// `DT_VERNEED`: the symbol versions the object requires from each
    /// library, as (`DT_NEEDED` name, versions), in file order (`libc.so.6`,
    /// [`GLIBC_2.14`, ...]). References marked weak (`VER_FLG_WEAK`), which
    /// the loader does not insist on, are left out.
    pub version_needs: Vec<(String, Vec<String>)>,
    /// `DT_VERDEF`: the symbol versions the object defines, in file order; the
    /// first is usually its base version, named after its soname
    /// (`libfabric.so.1`, `FABRIC_1.0`, ...).
    pub version_defs: Vec<String>,
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
const DT_VERDEF: u64 = 0x6fff_fffc;
const DT_VERDEFNUM: u64 = 0x6fff_fffd;
const DT_VERNEED: u64 = 0x6fff_fffe;
const DT_VERNEEDNUM: u64 = 0x6fff_ffff;
/// `vna_flags`: a weak version reference (the loader tolerates its absence).
const VER_FLG_WEAK: u16 = 0x2;
/// At most this many program headers, dynamic entries, version entries per
/// table and auxiliary entries per version entry are read.
const MAX_ENTRIES: usize = 65_536;

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
    let at = |base: usize, off: usize| base.checked_add(off);
    let phoff = usize::try_from(u64le(b, 0x20)?).ok()?;
    let phentsize = usize::from(u16le(b, 0x36)?);
    let phnum = usize::from(u16le(b, 0x38)?);
    let mut loads = Vec::new(); // (vaddr, offset, filesz)
    let mut dynamic = None; // (offset, size)
    for i in 0..phnum.min(MAX_ENTRIES) {
        let p = at(phoff, i.checked_mul(phentsize)?)?;
        let ty = u32le(b, p)?;
        let offset = u64le(b, at(p, 8)?)?;
        let vaddr = u64le(b, at(p, 16)?)?;
        let filesz = u64le(b, at(p, 32)?)?;
        match ty {
            PT_LOAD => loads.push((vaddr, offset, filesz)),
            PT_DYNAMIC => dynamic = Some((usize::try_from(offset).ok()?, usize::try_from(filesz).ok()?)),
            _ => {}
        }
    }
    let (doff, dsize) = dynamic?;
    let mut entries = Vec::new();
    let mut strtab_vaddr = None;
    for i in 0..(dsize / 16).min(MAX_ENTRIES) {
        let e = at(doff, i * 16)?;
        let tag = u64le(b, e)?;
        let val = u64le(b, at(e, 8)?)?;
        if tag == DT_NULL {
            break;
        }
        if tag == DT_STRTAB {
            strtab_vaddr = Some(val);
        }
        entries.push((tag, val));
    }
    let strtab = file_offset(&loads, strtab_vaddr?)?;
    let string = |off: u64| -> Option<String> {
        let start = at(strtab, usize::try_from(off).ok()?)?;
        let rest = b.get(start..)?;
        let end = rest.iter().position(|&c| c == 0)?;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    let value = |tag: u64| entries.iter().find(|(t, _)| *t == tag).map(|&(_, v)| v);
    let mut d = Dynamic::default();
    for &(tag, val) in &entries {
        match tag {
            DT_NEEDED => d.needed.push(string(val)?),
            DT_RPATH => d.rpath.extend(string(val)?.split(':').filter(|s| !s.is_empty()).map(String::from)),
            DT_RUNPATH => d.runpath.extend(string(val)?.split(':').filter(|s| !s.is_empty()).map(String::from)),
            _ => {}
        }
    }
    if let Some(vaddr) = value(DT_VERNEED) {
        d.version_needs = version_needs(b, file_offset(&loads, vaddr)?, value(DT_VERNEEDNUM), &string)?;
    }
    if let Some(vaddr) = value(DT_VERDEF) {
        d.version_defs = version_defs(b, file_offset(&loads, vaddr)?, value(DT_VERDEFNUM), &string)?;
    }
    Some(d)
}

/// The file offset of a virtual address, through the PT_LOAD segment holding it.
fn file_offset(loads: &[(u64, u64, u64)], vaddr: u64) -> Option<usize> {
    let &(v, off, _) = loads.iter().find(|&&(v, _, sz)| vaddr >= v && vaddr - v < sz)?;
    usize::try_from((vaddr - v).checked_add(off)?).ok()
}

/// How many entries of a version table to walk: its `*NUM` tag, bounded
/// (without the tag, until an entry's `next` is 0).
fn table_len(num: Option<u64>) -> usize {
    num.map_or(MAX_ENTRIES, |n| usize::try_from(n).unwrap_or(MAX_ENTRIES).min(MAX_ENTRIES))
}

/// Walks `Elf64_Verneed` entries (16 bytes: `vn_version` u16, `vn_cnt` u16,
/// `vn_file` u32, `vn_aux` u32, `vn_next` u32) and their `Elf64_Vernaux`
/// entries (16 bytes: `vna_hash` u32, `vna_flags` u16, `vna_other` u16,
/// `vna_name` u32, `vna_next` u32); `aux` and `next` are byte offsets from
/// the entry they are in.
fn version_needs(
    b: &[u8],
    start: usize,
    num: Option<u64>,
    string: &dyn Fn(u64) -> Option<String>,
) -> Option<Vec<(String, Vec<String>)>> {
    let mut out = Vec::new();
    let mut pos = start;
    for _ in 0..table_len(num) {
        let cnt = u16le(b, pos.checked_add(2)?)?;
        let file = u32le(b, pos.checked_add(4)?)?;
        let aux = u32le(b, pos.checked_add(8)?)?;
        let next = u32le(b, pos.checked_add(12)?)?;
        let mut versions = Vec::new();
        let mut apos = pos.checked_add(usize::try_from(aux).ok()?)?;
        for _ in 0..usize::from(cnt).min(MAX_ENTRIES) {
            let flags = u16le(b, apos.checked_add(4)?)?;
            let name = string(u64::from(u32le(b, apos.checked_add(8)?)?))?;
            let anext = u32le(b, apos.checked_add(12)?)?;
            if flags & VER_FLG_WEAK == 0 {
                versions.push(name);
            }
            if anext == 0 {
                break;
            }
            apos = apos.checked_add(usize::try_from(anext).ok()?)?;
        }
        out.push((string(u64::from(file))?, versions));
        if next == 0 {
            break;
        }
        pos = pos.checked_add(usize::try_from(next).ok()?)?;
    }
    Some(out)
}

/// Walks `Elf64_Verdef` entries (20 bytes: `vd_version` u16, `vd_flags` u16,
/// `vd_ndx` u16, `vd_cnt` u16, `vd_hash` u32, `vd_aux` u32, `vd_next` u32);
/// the first `Elf64_Verdaux` (`vda_name` u32, `vda_next` u32) of each names
/// the version, the others its parents.
fn version_defs(
    b: &[u8],
    start: usize,
    num: Option<u64>,
    string: &dyn Fn(u64) -> Option<String>,
) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut pos = start;
    for _ in 0..table_len(num) {
        let cnt = u16le(b, pos.checked_add(6)?)?;
        let aux = u32le(b, pos.checked_add(12)?)?;
        let next = u32le(b, pos.checked_add(16)?)?;
        if cnt > 0 {
            let apos = pos.checked_add(usize::try_from(aux).ok()?)?;
            out.push(string(u64::from(u32le(b, apos)?))?);
        }
        if next == 0 {
            break;
        }
        pos = pos.checked_add(usize::try_from(next).ok()?)?;
    }
    Some(out)
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

/// The symbol versions `needer` requires from its dependency `dep_soname`
/// (a `DT_NEEDED` name) that the file `dep_path` does not define: what the
/// loader refuses with "version `FABRIC_1.10' not found (required by ...)".
/// Empty when `needer` requires no version from it, or when `dep_path` has no
/// version definitions at all (the loader accepts that and only notes "no
/// version information available"), as glibc's `match_symbol` does.
pub fn missing_versions(needer: &Path, dep_soname: &str, dep_path: &Path) -> Result<Vec<String>, ElfError> {
    let need = read_dynamic(needer)?;
    let Some((_, wanted)) = need.version_needs.iter().find(|(file, _)| file == dep_soname) else {
        return Ok(Vec::new());
    };
    let dep = read_dynamic(dep_path)?;
    if dep.version_defs.is_empty() {
        return Ok(Vec::new());
    }
    Ok(wanted.iter().filter(|v| !dep.version_defs.contains(v)).cloned().collect())
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
        let d =
            Dynamic { needed: vec!["libdep.so.1".into()], rpath: vec!["$ORIGIN/../lib".into()], ..Dynamic::default() };
        let origin = tmp.path().join("bin/libx.so");
        let got = resolve("libdep.so.1", &origin, &d).unwrap();
        assert!(got.ends_with("lib/libdep.so.1"), "{got:?}");
        assert!(resolve("libnope-kvprobe.so.9", &origin, &d).is_none());
    }

    /// Adds `name` to a string table, returning its offset.
    fn add_str(strtab: &mut Vec<u8>, name: &str) -> u32 {
        let off = strtab.len() as u32;
        strtab.extend_from_slice(name.as_bytes());
        strtab.push(0);
        off
    }

    /// A minimal ELF64 shared object: one PT_LOAD mapping the whole file at
    /// 0x10000, a PT_DYNAMIC, DT_NEEDED for each needed file, a DT_VERNEED
    /// table (name, vna_flags) per file, and a DT_VERDEF table (the first
    /// entry flagged base), each table left out when empty.
    fn synthetic(needs: &[(&str, &[(&str, u16)])], defs: &[&str]) -> Vec<u8> {
        const VADDR: u64 = 0x10000;
        let mut strtab = vec![0u8];
        let mut needed = Vec::new();
        let mut vn = Vec::new();
        for (i, (file, vers)) in needs.iter().enumerate() {
            let file_off = add_str(&mut strtab, file);
            needed.push(file_off);
            let next = if i + 1 == needs.len() { 0 } else { 16 + 16 * vers.len() as u32 };
            vn.extend(1u16.to_le_bytes());
            vn.extend((vers.len() as u16).to_le_bytes());
            vn.extend(file_off.to_le_bytes());
            vn.extend(16u32.to_le_bytes());
            vn.extend(next.to_le_bytes());
            for (j, (v, flags)) in vers.iter().enumerate() {
                vn.extend(0u32.to_le_bytes());
                vn.extend(flags.to_le_bytes());
                vn.extend(0u16.to_le_bytes());
                vn.extend(add_str(&mut strtab, v).to_le_bytes());
                vn.extend((if j + 1 == vers.len() { 0u32 } else { 16 }).to_le_bytes());
            }
        }
        let mut vd = Vec::new();
        for (i, name) in defs.iter().enumerate() {
            let next = if i + 1 == defs.len() { 0u32 } else { 28 };
            vd.extend(1u16.to_le_bytes());
            vd.extend((if i == 0 { 1u16 } else { 0 }).to_le_bytes());
            vd.extend((i as u16 + 1).to_le_bytes());
            vd.extend(1u16.to_le_bytes());
            vd.extend(0u32.to_le_bytes());
            vd.extend(20u32.to_le_bytes());
            vd.extend(next.to_le_bytes());
            vd.extend(add_str(&mut strtab, name).to_le_bytes());
            vd.extend(0u32.to_le_bytes());
        }
        let pad8 = |n: usize| n.div_ceil(8) * 8;
        let str_off = 64 + 2 * 56;
        let vn_off = pad8(str_off + strtab.len());
        let vd_off = pad8(vn_off + vn.len());
        let dyn_off = pad8(vd_off + vd.len());
        let mut dynamic: Vec<(u64, u64)> = needed.iter().map(|&o| (DT_NEEDED, u64::from(o))).collect();
        dynamic.push((DT_STRTAB, VADDR + str_off as u64));
        if !needs.is_empty() {
            dynamic.push((DT_VERNEED, VADDR + vn_off as u64));
            dynamic.push((DT_VERNEEDNUM, needs.len() as u64));
        }
        if !defs.is_empty() {
            dynamic.push((DT_VERDEF, VADDR + vd_off as u64));
            dynamic.push((DT_VERDEFNUM, defs.len() as u64));
        }
        dynamic.push((DT_NULL, 0));
        let len = dyn_off + 16 * dynamic.len();
        let mut b = vec![0u8; len];
        b[0..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        let phdr = |b: &mut Vec<u8>, at: usize, ty: u32, off: u64, vaddr: u64, size: u64| {
            b[at..at + 4].copy_from_slice(&ty.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            b[at + 16..at + 24].copy_from_slice(&vaddr.to_le_bytes());
            b[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
        };
        phdr(&mut b, 64, PT_LOAD, 0, VADDR, len as u64);
        phdr(&mut b, 64 + 56, PT_DYNAMIC, dyn_off as u64, VADDR + dyn_off as u64, 16 * dynamic.len() as u64);
        b[str_off..str_off + strtab.len()].copy_from_slice(&strtab);
        b[vn_off..vn_off + vn.len()].copy_from_slice(&vn);
        b[vd_off..vd_off + vd.len()].copy_from_slice(&vd);
        for (i, (tag, val)) in dynamic.iter().enumerate() {
            let at = dyn_off + 16 * i;
            b[at..at + 8].copy_from_slice(&tag.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&val.to_le_bytes());
        }
        b
    }

    fn plugin_like() -> Vec<u8> {
        synthetic(
            &[
                ("libfabric.so.1", &[("FABRIC_1.0", 0), ("FABRIC_1.10", 0)]),
                ("libc.so.6", &[("GLIBC_2.2.5", 0), ("GLIBC_2.99", VER_FLG_WEAK)]),
            ],
            &[],
        )
    }

    #[test]
    fn version_tables_are_read_weak_references_left_out() {
        let d = parse_dynamic(&plugin_like()).unwrap();
        assert_eq!(d.needed, ["libfabric.so.1", "libc.so.6"]);
        assert_eq!(
            d.version_needs,
            [
                ("libfabric.so.1".to_string(), vec!["FABRIC_1.0".to_string(), "FABRIC_1.10".to_string()]),
                ("libc.so.6".to_string(), vec!["GLIBC_2.2.5".to_string()]),
            ]
        );
        assert!(d.version_defs.is_empty());
        let lib = parse_dynamic(&synthetic(&[], &["libfabric.so.1", "FABRIC_1.0", "FABRIC_1.9"])).unwrap();
        assert_eq!(lib.version_defs, ["libfabric.so.1", "FABRIC_1.0", "FABRIC_1.9"]);
        assert!(lib.version_needs.is_empty() && lib.needed.is_empty());
    }

    #[test]
    fn missing_versions_follow_the_loaders_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: Vec<u8>| {
            let p = tmp.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let plugin = write("libplugin.so", plugin_like());
        let old = write("old.so", synthetic(&[], &["libfabric.so.1", "FABRIC_1.0", "FABRIC_1.9"]));
        let new = write("new.so", synthetic(&[], &["libfabric.so.1", "FABRIC_1.0", "FABRIC_1.9", "FABRIC_1.10"]));
        let unversioned = write("unversioned.so", synthetic(&[], &[]));
        assert_eq!(missing_versions(&plugin, "libfabric.so.1", &old).unwrap(), ["FABRIC_1.10"]);
        assert!(missing_versions(&plugin, "libfabric.so.1", &new).unwrap().is_empty());
        // no version definitions at all: the loader only notes it
        assert!(missing_versions(&plugin, "libfabric.so.1", &unversioned).unwrap().is_empty());
        // the weak GLIBC_2.99 is not required
        let libc = write("libc.so", synthetic(&[], &["libc.so.6", "GLIBC_2.2.5"]));
        assert!(missing_versions(&plugin, "libc.so.6", &libc).unwrap().is_empty());
        // nothing needed from a library it does not name
        assert!(missing_versions(&plugin, "libz.so.1", &old).unwrap().is_empty());
        assert!(missing_versions(&plugin, "libfabric.so.1", Path::new("/nonexistent")).is_err());
    }

    #[test]
    fn damaged_version_tables_are_errors_not_panics() {
        let good = plugin_like();
        for len in 0..good.len() {
            let _ = parse_dynamic(&good[..len]);
        }
        for at in 0..good.len() {
            for byte in [0x00, 0x7f, 0xff] {
                let mut b = good.clone();
                b[at] = byte;
                let _ = parse_dynamic(&b);
            }
        }
        // counts far beyond the file: bounded walks, then an error
        let mut b = good.clone();
        let d = parse_dynamic(&b).unwrap();
        assert_eq!(d.version_needs.len(), 2);
        let dyn_entries = b.len() - 16 * 6; // NEEDED x2, STRTAB, VERNEED, VERNEEDNUM, NULL
        let at = (0..6).map(|i| dyn_entries + 16 * i).find(|&at| u64le(&b, at) == Some(DT_VERNEEDNUM)).unwrap();
        b[at + 8..at + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        // the last entry's vn_next is 0, so a huge count still stops there
        assert_eq!(parse_dynamic(&b).unwrap().version_needs.len(), 2);
    }

    /// libc of this test binary, as the loader finds it.
    fn this_libc() -> (PathBuf, Dynamic) {
        let exe = std::env::current_exe().unwrap();
        let d = read_dynamic(&exe).unwrap();
        let name = d.needed.iter().find(|n| n.starts_with("libc.so")).unwrap().clone();
        (resolve(&name, &exe, &d).unwrap(), d)
    }

    #[test]
    fn this_binary_needs_glibc_versions_its_libc_defines() {
        let exe = std::env::current_exe().unwrap();
        let (libc, d) = this_libc();
        let (_, wanted) = d.version_needs.iter().find(|(f, _)| f == "libc.so.6").expect("libc versions needed");
        assert!(!wanted.is_empty() && wanted.iter().all(|v| v.starts_with("GLIBC_")), "{wanted:?}");
        let defs = read_dynamic(&libc).unwrap().version_defs;
        assert_eq!(defs.first().map(String::as_str), Some("libc.so.6"), "the base version first");
        assert!(defs.iter().any(|v| v == "GLIBC_2.2.5"), "{defs:?}");
        assert!(missing_versions(&exe, "libc.so.6", &libc).unwrap().is_empty());
    }

    #[test]
    fn libstdcxx_needs_glibc_and_defines_glibcxx() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libstdc++.so.6");
        if !lib.is_file() {
            eprintln!("SKIPPED libstdcxx_needs_glibc_and_defines_glibcxx: no {}", lib.display());
            return;
        }
        let d = read_dynamic(lib).unwrap();
        assert!(d.version_defs.iter().any(|v| v == "GLIBCXX_3.4"), "{:?}", d.version_defs);
        let (_, wanted) = d.version_needs.iter().find(|(f, _)| f == "libc.so.6").unwrap();
        assert!(wanted.iter().any(|v| v == "GLIBC_2.2.5"), "{wanted:?}");
        let (libc, _) = this_libc();
        assert!(missing_versions(lib, "libc.so.6", &libc).unwrap().is_empty());
    }

    #[test]
    fn nixls_libfabric_plugin_needs_fabric_1_10() {
        let plugin = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("site-packages/.nixl_cu12.mesonpy.libs/plugins/libplugin_LIBFABRIC.so"))
            .find(|p| p.is_file())
            .unwrap_or_default();
        if !plugin.is_file() {
            eprintln!("SKIPPED nixls_libfabric_plugin_needs_fabric_1_10: no NIXL 1.5 plugin in .venv (debug/setup.sh)");
            return;
        }
        let d = read_dynamic(&plugin).unwrap();
        let (_, wanted) = d.version_needs.iter().find(|(f, _)| f == "libfabric.so.1").unwrap();
        assert!(wanted.iter().any(|v| v == "FABRIC_1.10"), "{wanted:?}");
        let debian = Path::new("/usr/lib/x86_64-linux-gnu/libfabric.so.1");
        if debian.is_file() && !read_dynamic(debian).unwrap().version_defs.iter().any(|v| v == "FABRIC_1.10") {
            // bookworm's 1.17 defines FABRIC_1.0 to FABRIC_1.6
            assert_eq!(missing_versions(&plugin, "libfabric.so.1", debian).unwrap(), ["FABRIC_1.10"]);
        }
    }
}
