"""What the notebook generators share: the notebook of a list of ``("md" | "code", source)``
cells, with the kernel metadata the committed notebooks carry."""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


def notebook_from(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A notebook of markdown (``"md"``) and code cells, for the Python 3 kernel."""
    notebook = new_notebook(
        cells=[
            new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells
        ]
    )
    notebook.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook
