"""Does this Python have everything the repository needs? Standard library only: it runs
before anything is installed (scripts/setup_env.sh, `make test`, `make demo`).

    python scripts/check_env.py [--dev] [--no-dassl]

Exit status 0 when every requirement of requirements.txt (and requirements-dev.txt with
--dev) is installed at a version its specifier allows and Dassl imports; else 1, with one line
per missing or unsuitable requirement on stdout.
"""

import argparse
import importlib
import importlib.metadata
import os
import sys

try:
    from packaging.requirements import Requirement
except ImportError:  # pip vendors packaging; every Python with pip has it
    from pip._vendor.packaging.requirements import Requirement

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def requirements(path):
    with open(path, encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [Requirement(line) for line in lines if line]


def problems(reqs, dassl=True):
    found = []
    for req in reqs:
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{req.name}: not installed (needs {req.name}{req.specifier})")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            found.append(f"{req.name}: {version} installed, needs {req.specifier}")
    if dassl:
        try:
            importlib.import_module("dassl")
        except Exception as err:  # noqa: BLE001 - any failure means Dassl is not usable
            found.append(f"dassl: cannot be imported ({type(err).__name__}: {err})")
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dev", action="store_true", help="also requirements-dev.txt (lint and tests)")
    parser.add_argument("--no-dassl", action="store_true", help="do not require Dassl")
    args = parser.parse_args(argv)
    files = ["requirements.txt"] + (["requirements-dev.txt"] if args.dev else [])
    reqs = {req.name: req for name in files for req in requirements(os.path.join(REPO, name))}.values()
    found = problems(reqs, dassl=not args.no_dassl)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
