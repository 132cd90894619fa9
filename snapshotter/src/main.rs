//! `chunksnap`: the node daemon (`serve`) and node tools (`status`, `gc`, `fsck`, `prefetch`).

mod cli;

fn main() -> std::process::ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chunksnap: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
