"""Run a benchmark's two sides (ours, the Hugging Face peer) each in its own subprocess, so
that each side's peak memory and threads are its own, and collect their results.

A benchmark's main() builds its argument parser and calls `main(parser, {"ours": f, "peer": g},
report, __file__)`: the parent runs the same script once per side with `--side NAME`; each child
calls its side's function and prints the result; the parent hands all results to `report`.
Every benchmark also takes `--set KEY=VALUE` (repeatable, in `args.set`): config overrides for
our side, to compare a setting against the peer and the default in one command each.
"""

import argparse
import json
import resource
import subprocess
import sys

from bertjax.errors import UserError


def emit(result: dict) -> None:
    """Print a side's result (with its process's peak RSS) for the parent to read."""
    result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def run_sides(script: str, sides: tuple[str, ...]) -> list[dict]:
    """Each side's result, in order; exits with the side's stderr when one fails."""
    results = []
    for side in sides:
        out = subprocess.run([sys.executable, script, *sys.argv[1:], "--side", side],
                             capture_output=True, text=True, check=False)
        lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode == 2 and out.stderr.startswith("error: "):  # bad input: its one line
            print(out.stderr.strip(), file=sys.stderr)
            sys.exit(2)
        if out.returncode or not lines:
            sys.exit(f"{side} side failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(lines[-1][7:]))
    return results


def main(parser: argparse.ArgumentParser, sides: dict, report, script: str) -> None:
    parser.add_argument("--side", choices=list(sides), help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for our side (repeatable), e.g. model.remat=true")
    args = parser.parse_args()
    if args.side:
        try:
            emit(sides[args.side](args))
        except UserError as e:  # a bad --size or --set: one line and exit 2, as bertjax's CLIs
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    else:
        report(args, run_sides(script, tuple(sides)))
