"""Long steps in a notebook whose saved copy shows how they ended, not how they started.

In Jupyter, tqdm draws its progress bar as a widget. A saved notebook keeps a widget only as the
text it had when it appeared ("0% 0/135"), and JupyterLab on an untrusted notebook, nbviewer and
GitHub show just that text, for a step that finished long ago. :func:`final_output_only` runs a
step with its live bar and, when the step is done, replaces the cell's output by what the step
printed: the cell's next lines then print the result (e.g. the extraction's summary), and that is
what every viewer of the saved notebook reads. Outside a Jupyter kernel it does nothing.
"""
from __future__ import annotations

import contextlib
import sys


def in_jupyter_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (where tqdm's bars are widgets)."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


@contextlib.contextmanager
def final_output_only():
    """Run the block with its live progress widget; afterwards clear the cell's output and print again
    what the block wrote to stdout and stderr (warnings included). If the block raises, nothing is
    cleared: the bar shows where it stopped."""
    if not in_jupyter_kernel():
        yield
        return
    from IPython.display import clear_output
    from IPython.utils.capture import capture_output

    finished = False
    try:
        with capture_output(stdout=True, stderr=True, display=False) as captured:
            yield
        finished = True
    finally:
        if finished:
            clear_output()
        sys.stdout.write(captured.stdout)
        sys.stderr.write(captured.stderr)
