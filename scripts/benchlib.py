"""Shared by the benchmark scripts: the machine and tool versions a report names, the
version of replicator measured, and the replacement of a Markdown document's
generated section."""

from __future__ import annotations

import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

from tests.servers import TOOLS_DIR, find_tool

REPO = Path(__file__).resolve().parents[1]


def sh(*cmd: str) -> str:
    """A command's output (trailing white space dropped), or why it could not run."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False).stdout.rstrip()
    except OSError as exc:
        return f"({exc})"


def machine_info() -> dict:
    """Date, machine, Python, and the versions of MinIO, mc and the SDKs."""
    cpu = next((line.split(":", 1)[1].strip() for line in sh("lscpu").splitlines()
                if line.startswith("Model name")), platform.processor())
    pins = {}
    for name in ("minio", "mc"):
        # install-tools.sh stamps the module version it built; --version only says DEVELOPMENT.GOGET.
        stamp = TOOLS_DIR / "bin" / f".{name}.pin"
        pins[name] = stamp.read_text().strip() if stamp.is_file() else sh(find_tool(name), "--version").splitlines()[0]
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": sh("nproc"),
        "free_h": sh("free", "-h"),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "minio": pins["minio"],
        "mc": pins["mc"],
        "minio_py": version("minio"),
        "boto3": version("boto3"),
    }


def update_doc(doc: Path, fragment: str, begin: str, end: str) -> bool:
    """Replace what stands between the markers ``begin`` and ``end`` in ``doc`` with
    ``fragment``. False (and nothing written) when the file or a marker is missing."""
    if not doc.is_file():
        return False
    text = doc.read_text()
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{fragment}\n{end}{tail}")
    return True


def targets_markdown(rows, header: tuple[str, str, str]) -> str:
    """A Markdown table of (target, measured, met) rows; a missed target in bold, a
    figure shown for context (met is None) marked as such."""
    lines = [f"| {' | '.join(header)} |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'not a target' if ok is None else 'yes' if ok else '**no**'} |"
              for name, value, ok in rows]
    return "\n".join(lines) + "\n"


def replicator_snapshot(rev: str, target: Path) -> tuple[Path, str]:
    """(directory to run ``python -m replicator`` from, the commit it holds).

    Others edit replicator/ in this tree while a benchmark runs for an hour, so one
    fixed version is measured: the package as committed at ``rev``, extracted into
    ``target``, from where ``python -m replicator`` imports it ahead of the editable
    install. ``rev == "worktree"`` measures the working tree as it is."""
    if rev == "worktree":
        described = sh("git", "-C", str(REPO), "describe", "--always", "--dirty")
        return REPO, f"{described} (worktree)"
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev],
                            capture_output=True, text=True, check=True).stdout.strip()
    shutil.rmtree(target, ignore_errors=True)  # a reused work dir holds an older one
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "replicator"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    probe = subprocess.run([sys.executable, "-c", "import replicator; print(replicator.__file__)"],
                           cwd=target, capture_output=True, text=True, check=True).stdout.strip()
    if not probe.startswith(str(target)):
        raise RuntimeError(f"the snapshot is not what python -m replicator imports: {probe}")
    return target, commit


def sigterm_as_interrupt() -> None:
    """Make a SIGTERM (a ``kill``, or nohup's parent going away) raise KeyboardInterrupt,
    so that a benchmark's ``finally`` still stops its servers and the tool it runs."""

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)


def measured(make, args, prefix: str):
    """``make(args, workdir)`` run and closed (SIGTERM as an interrupt), in ``args.workdir``
    or a temporary directory removed after; the bench, for its results."""
    sigterm_as_interrupt()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=prefix))
    bench = make(args, workdir)
    try:
        bench.run()
    finally:
        bench.close()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return bench


def published(fragment: str, doc: str | None, begin: str, end: str) -> int:
    """Print the report ``fragment`` and write it into ``doc`` between the markers; the exit code."""
    print(fragment)
    if doc and not update_doc(Path(doc), fragment, begin, end):
        print(f"{doc}: no markers {begin!r} … {end!r}; not updated", file=sys.stderr)
        return 1
    return 0
