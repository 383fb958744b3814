"""Progress bars of the builds (tqdm, on stderr)."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator


@contextlib.contextmanager
def closing_bar(bar: Any) -> Iterator[Any]:
    """Close ``bar`` (None: no bar) at the end of the block; a bar left by a failed step is erased rather than
    printed after the error (or at garbage collection), so the error is the last line on the terminal."""
    try:
        yield bar
    except BaseException:
        if bar is not None:
            bar.leave = False
        raise
    finally:
        if bar is not None:
            bar.close()
