#!/usr/bin/env python3
"""Check the enum values in ops/metal_stubs/ against Apple's SDK, as PyObjC records them.

The stubs let the Objective-C++ Metal backend type-check on Linux, but a type-check
cannot see a wrong enum *value*. PyObjC's macOS wheels carry every constant of the
Metal and MetalPerformanceShaders SDK headers in their generated ``_metadata.py``; this
tool downloads those wheels (no macOS needed), reads the values without importing
anything, and compares every enumerator the stubs define.

PyObjC's format, as found in the 12.x wheels: a module-level string
``enums = '$NAME@VALUE$NAME@VALUE$...'`` (triple-quoted there, values in decimal), plus
an ``aliases = {"OLD": "NEW", ...}`` dict for renamed constants.

Exit status: 0 all match; 1 a value differs or an enumerator is not in the metadata;
2 the stubs could not be parsed; 3 the wheels could not be downloaded or read (network).
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Pinned: the metadata format is PyObjC's own; a new release must be checked, not
# picked up by surprise in CI.
PYOBJC_VERSION = "12.2.2"
WHEELS = (f"pyobjc-framework-Metal=={PYOBJC_VERSION}", f"pyobjc-framework-MetalPerformanceShaders=={PYOBJC_VERSION}")
PLATFORM = "macosx_11_0_universal2"

EXIT_MISMATCH, EXIT_STUBS, EXIT_DOWNLOAD = 1, 2, 3


class StubError(Exception):
    pass


class DownloadError(Exception):
    pass


# ------------------------------------------------------------------------ the stubs
_BLOCK = re.compile(r"\bNS_(?:ENUM|OPTIONS)\s*\(\s*\w+\s*,\s*(\w+)\s*\)\s*\{(.*?)\}", re.S)
_INT_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)(?:[uU]?[lL]{0,2}|[lL]{1,2}[uU])\b")
_BINOPS = {
    ast.LShift: lambda a, b: a << b,
    ast.RShift: lambda a, b: a >> b,
    ast.BitOr: lambda a, b: a | b,
    ast.BitAnd: lambda a, b: a & b,
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
}


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _eval(expr: str, known: dict[str, int], where: str) -> int:
    """Evaluates a C constant expression of the kind Apple's enums use
    (1UL << 4, MPSDataTypeFloatBit | 32); refuses anything else."""
    py = _INT_SUFFIX.sub(lambda m: m.group(1), expr.strip())

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in known:
                raise StubError(f"{where}: '{node.id}' is not an earlier enumerator")
            return known[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise StubError(f"{where}: cannot evaluate '{expr.strip()}'")

    try:
        return ev(ast.parse(py, mode="eval").body)
    except SyntaxError:
        raise StubError(f"{where}: cannot parse '{expr.strip()}'") from None


def stub_enumerators(stub_dir: Path) -> list[tuple[str, str, int]]:
    """(header, name, value) for every enumerator of every NS_ENUM/NS_OPTIONS."""
    headers = sorted(stub_dir.rglob("*.h"))
    if not headers:
        raise StubError(f"no headers under {stub_dir}")
    found, known = [], {}
    for header in headers:
        rel = header.relative_to(stub_dir).as_posix()
        for enum_name, body in _BLOCK.findall(_strip_comments(header.read_text())):
            for item in (i.strip() for i in body.split(",")):
                if not item:
                    continue
                name, eq, expr = item.partition("=")
                name = name.strip()
                if not eq or not re.fullmatch(r"[A-Za-z_]\w*", name):
                    raise StubError(
                        f"{rel}: enumerator '{item}' of {enum_name} has no explicit "
                        "'NAME = VALUE' (write every value out, so it can be checked)"
                    )
                value = _eval(expr, known, f"{rel}: {name}")
                known[name] = value
                found.append((rel, name, value))
    return found


# ---------------------------------------------------------------- PyObjC metadata
def download_wheels(cache: Path) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    wheels = []
    for project in WHEELS:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--platform", PLATFORM, "--timeout", "30", "--retries", "1",
               "--disable-pip-version-check", project, "-d", str(cache)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise DownloadError(f"pip download {project} failed:\n{r.stdout}{r.stderr}")
        # The saved file's name is in pip's output; fall back to the newest match.
        m = re.findall(r"(?:Saved|File was already downloaded) (\S+\.whl)", r.stdout)
        if m:
            wheels.append(Path(m[-1]))
            continue
        prefix = project.replace("-", "_").lower()
        candidates = sorted(p for p in cache.glob("*.whl") if p.name.lower().startswith(prefix))
        if not candidates:
            raise DownloadError(f"pip download {project} reported success but saved no wheel")
        wheels.append(max(candidates, key=lambda p: p.stat().st_mtime))
    return wheels


def metadata_constants(wheel: Path) -> dict[str, int | float | str]:
    """Enum values from a PyObjC wheel's _metadata.py, read with ast (the module itself
    imports objc, which only exists on macOS)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.endswith("/_metadata.py")]
            if len(names) != 1:
                raise DownloadError(f"{wheel.name}: expected one _metadata.py, found {names}")
            source = z.read(names[0]).decode("utf-8")
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{wheel.name}: not a wheel: {e}") from None

    enums_text, aliases = None, {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            continue
        target = node.targets[0].id
        if target == "enums" and isinstance(node.value, ast.Constant):
            enums_text = node.value.value
        elif target == "aliases" and isinstance(node.value, ast.Dict):
            aliases = ast.literal_eval(node.value)
    if not isinstance(enums_text, str):
        raise DownloadError(f"{wheel.name}: no module-level 'enums' string in _metadata.py; "
                            "PyObjC's format has changed, update this tool")

    values: dict[str, int | float | str] = {}
    for item in filter(None, enums_text.split("$")):
        name, _, raw = item.partition("@")
        try:
            values[name] = int(raw)
        except ValueError:
            try:
                values[name] = float(raw)
            except ValueError:
                values[name] = raw
    for old, new in aliases.items():
        if new in values and old not in values:
            values[old] = values[new]
    return values


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0 match, 1 mismatch or missing, "
                                            "2 bad stubs, 3 download failed.")
    parser.add_argument("--cache-dir", type=Path,
                        help="where to download (and reuse) the wheels; default: a "
                             "temporary directory, removed afterwards")
    parser.add_argument("--stubs", type=Path, default=ROOT / "ops" / "metal_stubs",
                        help="stub directory (default: %(default)s)")
    args = parser.parse_args(argv)

    try:
        stubs = stub_enumerators(args.stubs)
    except (StubError, OSError) as e:
        print(f"check_metal_enums: {e}", file=sys.stderr)
        return EXIT_STUBS

    tmp = None
    cache = args.cache_dir
    if cache is None:
        tmp = tempfile.mkdtemp(prefix="tfmps-pyobjc-")
        cache = Path(tmp)
    try:
        sdk: dict[str, tuple[int | float | str, str]] = {}
        for wheel in download_wheels(cache):
            for name, value in metadata_constants(wheel).items():
                sdk[name] = (value, wheel.name.split("-")[0] + " " + wheel.name.split("-")[1])
    except (DownloadError, OSError) as e:
        print(f"check_metal_enums: {e}", file=sys.stderr)
        return EXIT_DOWNLOAD
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    rows, bad = [], 0
    for header, name, value in stubs:
        if name not in sdk:
            rows.append((header, name, str(value), "-", "MISSING from PyObjC metadata"))
            bad += 1
            continue
        expected, _ = sdk[name]
        ok = expected == value
        bad += not ok
        rows.append((header, name, str(value), str(expected), "ok" if ok else "MISMATCH"))

    widths = [max(len(r[i]) for r in rows + [("stub", "enumerator", "stub", "PyObjC", "")])
              for i in range(4)]
    print(f"{'stub':<{widths[0]}}  {'enumerator':<{widths[1]}}  {'stub':>{widths[2]}}  "
          f"{'PyObjC':>{widths[3]}}  result")
    for header, name, mine, theirs, result in rows:
        print(f"{header:<{widths[0]}}  {name:<{widths[1]}}  {mine:>{widths[2]}}  "
              f"{theirs:>{widths[3]}}  {result}")
    sources = sorted({src for _, src in sdk.values()})
    print(f"\n{len(rows)} enumerators checked against {', '.join(sources)}: "
          + ("all match." if not bad else f"{bad} wrong or missing."))
    return EXIT_MISMATCH if bad else 0


if __name__ == "__main__":
    sys.exit(main())
