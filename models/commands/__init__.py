"""The run-time `fervid` subcommands of the models room (`fervid engines`, `fervid doctor`, `fervid models`), one
module each with `add_arguments(parser)` and `run(args) -> int`, listed in fervid/cli.py."""
