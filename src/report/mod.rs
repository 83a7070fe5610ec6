//! Reports: everything here is a pure function of [`schema::SweepResults`]
//! (table, CSV, JSON text), plus the atomic file writer and the progress bar.

pub mod csv;
pub mod doctor;
pub mod kv;
pub mod plot;
pub mod progress;
pub mod schema;
pub mod style;
pub mod table;

use std::io::Write;
use std::path::Path;

use schema::SweepResults;

/// Writes `results.json` and `results.csv` into `dir`, each atomically
/// (write to a temporary file, then rename), so a crash mid-write never leaves
/// a truncated file. Called after every row.
pub fn write_all(dir: &Path, results: &SweepResults) -> std::io::Result<()> {
    let mut json = serde_json::to_vec_pretty(results).map_err(std::io::Error::other)?;
    json.push(b'\n');
    write_atomic(&dir.join("results.json"), &json)?;
    write_atomic(&dir.join("results.csv"), csv::to_csv(results).as_bytes())
}

/// Writes `data` to `path` through a temporary file in the same directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)
}
