"""`python -m sslseg <command>`: the project's small commands.

  list                      methods, recipes, datasets, backbones and decoders, one line each, with their sources
  check <data root> ...     check a dataset folder and a weights folder (python -m sslseg.data.check --help)
  results <folder> ...      the table of the runs under a folder (python -m sslseg.report.results --help)

Training and evaluation are `python train.py ...` and `python eval.py ...` (docs/running.md).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "list":
        from sslseg.catalog import format_catalog

        sys.stdout.write(format_catalog())
        return 0
    if command == "check":
        from sslseg.data.check import main as check

        return check(rest)
    if command == "results":
        from sslseg.report.results import main as results

        return results(rest)
    print(__doc__.strip())
    if command in ("", "-h", "--help", "help"):
        return 0
    print(f"error: unknown command {command!r} (one of: list, check, results)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
