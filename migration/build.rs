//! Fingerprints the migrations' source (`TURNQ_MIGRATIONS_HASH`, FNV-1a over each file's
//! name and text, in name order), so whatever keeps a migrated copy of the schema (the
//! test kit's template database) can tell when a migration changed, not only when one
//! was added.

use std::{fs, path::Path};

fn main() {
    let dir = Path::new("src");
    println!("cargo:rerun-if-changed=src");
    let mut files: Vec<_> = fs::read_dir(dir)
        .expect("migration/src is readable")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for path in files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let text = fs::read(&path).expect("a migration file is readable");
        for byte in name.unwrap_or_default().bytes().chain(text) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    println!("cargo:rustc-env=TURNQ_MIGRATIONS_HASH={hash:016x}");
}
