fn main() -> std::process::ExitCode {
    claude_failover::cli::main()
}
