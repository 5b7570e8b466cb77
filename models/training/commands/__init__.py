"""The offline bench's `fervid` subcommands (`train`, `eval`, `export`, `quantize`), one module each with
`add_arguments(parser)` and `run(args) -> int`, listed in fervid/cli.py. Default data paths are resolved here."""
