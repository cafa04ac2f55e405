#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    token_rotator::cli::main()
}
