//! `resolve_data_dir` precedence (own test binary: it touches the process environment).

use std::path::{Path, PathBuf};

use supermask_datasets::resolve_data_dir;

#[test]
fn resolve_data_dir_prefers_flag_then_env_then_default() {
    std::env::set_var("SUPERMASK_DATA", "/env/data");
    assert_eq!(
        resolve_data_dir(Some(Path::new("/flag"))),
        PathBuf::from("/flag")
    );
    assert_eq!(resolve_data_dir(None), PathBuf::from("/env/data"));
    std::env::set_var("SUPERMASK_DATA", "");
    assert_eq!(resolve_data_dir(None), PathBuf::from("data"));
    std::env::remove_var("SUPERMASK_DATA");
    assert_eq!(resolve_data_dir(None), PathBuf::from("data"));
}
