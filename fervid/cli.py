"""The `fervid` command. Each subcommand lives in its own module with `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when their subcommand runs, so `fervid api` never loads an ML runtime."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fervid.errors import FervidError

# name -> (module, help). A module serving several subcommands defines `add_<name>_arguments` / `run_<name>`;
# one serving a single subcommand defines plain `add_arguments` / `run`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "analyze": ("worker.analyze_command", "analyze one file in process (embedded SQLite, no broker)"),
    "demo": ("worker.analyze_command", "analyze a real face clip and print its per-face emotion summary"),
    "db": ("fervid.migrate", "database migrations: upgrade / downgrade"),
    "submit": ("fervid.submit_command", "submit files and folders of media to a service, wait, write results"),
    "api": ("api.serve", "run the HTTP API"),
    "worker": ("worker.serve", "run a Celery worker"),
    "worker-health": ("worker.health_command", "exit 0 when a worker process on this host can take jobs"),
    "models": ("models.commands.detector_fetch", "face-detector model files: fetch"),
    "train": ("models.training.commands.train", "train the emotion classifier on FER-2013 train"),
    "eval": ("models.training.commands.evaluate", "evaluate a checkpoint or ONNX model on PublicTest / PrivateTest"),
    "export": ("models.training.commands.export", "export a checkpoint to the ONNX artifact the runtime loads"),
    "calibrate": ("models.training.commands.calibrate",
                  "fit the emotion model's temperature on PublicTest so its probabilities say how often it is right"),
    "quantize": ("models.training.commands.quantize",
                 "INT8 copy of a model for ONNX Runtime on the CPU or for TensorRT"),
    "engines": ("models.commands.engines", "TensorRT engines: build / list / clear"),
    "doctor": ("models.commands.doctor", "which inference backend each option would be here, and why"),
    "config-docs": ("fervid.config_docs", "write docs/configuration.md from the Settings class"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fervid", description="Facial-emotion timelines from video.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        # add_help=False: `-h` must reach the subcommand's own parser, built lazily in main().
        sub = commands.add_parser(name, help=help_text, description=help_text, add_help=False)
        sub.set_defaults(module_name=module_name)
        # Arguments are added lazily (in main) so `fervid --help` does not import every module.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    name = known.command
    module = importlib.import_module(SUBCOMMANDS[name][0])
    sub_parser = argparse.ArgumentParser(prog=f"fervid {name}", description=SUBCOMMANDS[name][1])
    add = getattr(module, f"add_{name}_arguments", None) or module.add_arguments
    run = getattr(module, f"run_{name}", None) or module.run
    add(sub_parser)
    rest = argv[argv.index(name) + 1 :]
    args = sub_parser.parse_args(rest)
    # One-shot file commands keep stderr for the progress bar and a one-line error; services log what they do.
    quiet = name in ("analyze", "demo")
    logging.basicConfig(
        level=logging.DEBUG if known.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not known.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # every embedded run checks the schema
    if quiet:  # a first-use download takes a while: say so, however quiet
        logging.getLogger("models.detector_files.download").setLevel(logging.INFO)
    try:
        return int(run(args))
    except FervidError as error:
        print(f"fervid {name}: {error.code}: {error.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
