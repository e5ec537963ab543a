"""The live progress display of ``python -m replicator reconcile`` on a terminal, in the
manner of ``rclone --progress``: a few lines redrawn in place, with the log scrolling
above them.

rich draws it: it redraws in place as the terminal is resized, and while it runs it
takes stdout and stderr over, so a log line or a dry run's plan is printed above the
display instead of tearing it. (The log sink looks ``sys.stderr`` up at every write for
this reason: observability/logging.py.) rich respects ``NO_COLOR`` by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from ..printable import printable
from ..progress import Progress, duration, size


class LiveProgress:
    """A context manager; ``follow`` names where the run's progress is found once the
    reconcile exists. Entered before the object graph is built, so that what the run
    prints to stdout goes above the display too."""

    def __init__(self, title: str) -> None:
        self.title = printable(title)
        self._progress: Callable[[], Progress | None] = lambda: None
        self._live = Live(get_renderable=self._render, console=Console(), refresh_per_second=4,
                          redirect_stdout=True, redirect_stderr=True)

    def follow(self, progress: Callable[[], Progress | None]) -> None:
        self._progress = progress

    def __enter__(self) -> LiveProgress:
        self._live.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 _trace: TracebackType | None) -> None:
        self._live.stop()  # the last frame stays on the screen, above the shell's prompt

    def _render(self) -> RenderableType:
        progress = self._progress()
        if progress is None:
            return f"{self.title}: checking the endpoints…"
        s = progress.snapshot()
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        listing = "" if s.listed else "  (listing…)"
        grid.add_row("Listed", f"{s.source_listed:,} source / {s.dest_listed:,} destination{listing}")
        grid.add_row("Compared", f"{s.compared:,}")
        share = f", {s.bytes_copied / s.bytes_to_copy:.0%}" if s.bytes_to_copy else ""
        grid.add_row("Copied", f"{s.copied:,} / {s.to_copy:,} objects, {size(s.bytes_copied)} / "
                               f"{size(s.bytes_to_copy)}{share}")
        grid.add_row("Failed", f"{s.failed:,}")
        grid.add_row("To delete", f"{s.to_delete:,}")
        eta = f", ETA {duration(s.eta)}" if s.eta is not None else ""
        grid.add_row("Rate", f"{size(s.rate)}/s{eta}")
        grid.add_row("Elapsed", duration(s.elapsed))
        bar = ProgressBar(total=max(s.bytes_to_copy, 1), completed=s.bytes_copied if s.bytes_to_copy else 0,
                          width=50)
        return Group(self.title, grid, bar)
