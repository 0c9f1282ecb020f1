//! `quotagate-bindgen <input.wasm> <out-dir>`: the wasm-bindgen CLI's `--target module
//! --out-name index --no-typescript --experimental-reset-state-function
//! --force-enable-abort-handler`, and nothing else. The CLI itself also carries its test runner,
//! an HTTP client (with TLS and brotli) and an HTTP server, which made it 5 minutes of a fresh
//! machine's set-up; this is the same library call with the same settings, so its output is
//! byte-identical (scripts/build-worker.sh's comments say how that was checked).

use std::process::ExitCode;

use wasm_bindgen_cli_support::Bindgen;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, out_dir] = args.as_slice() else {
        eprintln!("usage: quotagate-bindgen <input.wasm> <out-dir>");
        return ExitCode::from(2);
    };
    match run(input, out_dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quotagate-bindgen: {e:?}");
            ExitCode::FAILURE
        }
    }
}

/// The CLI's settings for the flags above, in the CLI's order; every other one at its default.
#[allow(deprecated)]
fn run(input: &str, out_dir: &str) -> Result<(), anyhow::Error> {
    let mut b = Bindgen::new();
    b.module(true)?;
    b.input_path(input)
        .nodejs(false)?
        .web(false)?
        .browser(false)?
        .no_modules(false)?
        .debug(false)
        .demangle(true)
        .keep_lld_exports(false)
        .keep_debug(false)
        .split_debug_info(false)
        .remove_name_section(false)
        .remove_producers_section(false)
        .typescript(false)
        .omit_imports(false)
        .omit_default_module_path(false)
        .split_linked_modules(false)
        .js_string_builtins(false)
        .ts_typed_array_buffers(false)
        .reference_types(false)
        .reset_state_function(true)
        .force_enable_abort_handler(true);
    b.out_name("index");
    b.generate(out_dir)
}
