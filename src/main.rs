fn main() -> std::process::ExitCode {
    evoke::cli::main()
}
