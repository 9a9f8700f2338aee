"""Writes the generated pages of pvae's documentation before Sphinx reads the sources.

At ``builder-inited`` this extension (re)writes, from the code and the repository:

- ``api/``: one page per public module of ``pvae`` (found by walking the package), each an
  ``automodule`` of the module's own members; a package's page also lists what it re-exports
  (its ``__all__``), linked to where each object is defined, and its submodules;
- ``models/``: the model gallery, one page per registered model (:mod:`pvae.models.registry`):
  its generative story (the module docstring), its options (``Config.describe()``), the command
  that trains it, its rows in the benchmark tables, and the tutorials that use it;
- ``tutorials/``: the notebooks of ``tutorials/`` as committed (with their outputs; never
  executed here), rendered by MyST-NB;
- ``benchmarks/``: the results files ``benchmarks/results/*.md``, one page each.

These folders are build products (ignored by git). A file is rewritten only when its text
changes, so an incremental build re-reads only what changed. A model registered later, a new
module, notebook or results file gets its page with no edit here.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import pkgutil
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GENERATED = ("api", "models", "tutorials", "benchmarks")
# Defaults whose repr is longer than this are abridged in the options tables.
MAX_DEFAULT = 40


# -- what is documented ----------------------------------------------------------------------
def public_modules() -> list[str]:
    """Every public module of ``pvae`` (no path component starting with ``_``), sorted."""
    import pvae

    names = ["pvae"]
    for info in pkgutil.walk_packages(pvae.__path__, "pvae."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def public_objects(module_name: str) -> list[str]:
    """Qualified names of the public classes and functions *defined* in ``module_name``."""
    module = importlib.import_module(module_name)
    names = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) == module_name:
            names.append(f"{module_name}.{name}")
    return sorted(names)


# -- reST helpers ----------------------------------------------------------------------------
def title(text: str, char: str = "=") -> str:
    return f"{text}\n{char * len(text)}\n"


def literal(text: str) -> str:
    """``text`` as an inline literal (backticks, which a literal cannot hold, become quotes)."""
    text = text.replace("`", "'").replace("\n", " ")
    return f"``{text}``" if text.strip() else "(empty)"


_ESCAPED = re.compile(r"([\\*|_`<>\[\]])")


def escape(text: str) -> str:
    """Plain text as reST text: markup characters lose their meaning."""
    text = _ESCAPED.sub(r"\\\1", text.replace("\n", " "))
    # a cell that starts like a list item would become a nested list
    return "\\" + text if text[:1] in "-+#" else text


_MD_INLINE = re.compile(r"(`[^`]+`|\*\*[^*]+\*\*)")


def markdown_cell(text: str) -> str:
    """One cell of a Markdown table as reST: code spans and bold kept, the rest escaped."""
    text = text.strip().replace("\\|", "|")
    parts = []
    for piece in _MD_INLINE.split(text):
        if not piece:
            continue
        if piece.startswith("`"):
            parts.append(literal(piece[1:-1]))
        elif piece.startswith("**"):
            parts.append(f"**{escape(piece[2:-2])}**")
        else:
            parts.append(escape(piece))
    # reST inline markup must be separated from surrounding word characters
    return "\\ ".join(parts) if len(parts) > 1 else (parts[0] if parts else "")


def list_table(header: list[str], rows: Iterable[list[str]], widths: str | None = None) -> str:
    """A ``list-table`` of already-reST cells."""
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append(f"   :widths: {widths}")
    lines.append("")
    for row in [header, *rows]:
        for i, cell in enumerate(row):
            lines.append(f"   {'*' if i == 0 else ' '} - {cell}")
    return "\n".join(lines) + "\n"


def abridged_default(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_DEFAULT else text[: MAX_DEFAULT - 1] + "…"


# -- benchmarks ------------------------------------------------------------------------------
@dataclass
class Table:
    """A Markdown pipe table of a results file: header cells and rows of cells."""

    header: list[str]
    rows: list[list[str]] = field(default_factory=list)


def _cells(line: str) -> list[str]:
    inner = line.strip()[1:]
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [c.strip() for c in re.split(r"(?<!\\)\|", inner)]


def markdown_tables(text: str) -> list[Table]:
    tables: list[Table] = []
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2 and set(block[1].replace("|", "").strip()) <= set("-: "):
            tables.append(Table(_cells(block[0]), [_cells(row) for row in block[2:]]))
        block = []
    return tables


def _plain(cell: str) -> str:
    return cell.strip().strip("`").strip()


def benchmark_rows(name: str, text: str) -> list[Table]:
    """What a results file's tables say about model ``name``: the rows of a table with a
    ``model`` column whose value is ``name``, and whole tables with a column named ``name``
    (beyond the first, which names the rows)."""
    found = []
    for table in markdown_tables(text):
        header = [_plain(c).lower() for c in table.header]
        if "model" in header:
            col = header.index("model")
            rows = [r for r in table.rows if len(r) > col and _plain(r[col]) == name]
            if rows:
                found.append(Table(table.header, rows))
        elif name in header[1:]:
            found.append(table)
    return found


def mentions(name: str, text: str) -> bool:
    """Whether ``text`` (code) names model ``name``: ``"name"``, ``'name'`` or ``--model name``."""
    pattern = rf"""(["']){re.escape(name)}\1|--model[ =]{re.escape(name)}\b"""
    return re.search(pattern, text) is not None


def results_order() -> list[str]:
    """The order of ``benchmarks/collect_results.py`` (the one of ``RESULTS.md``)."""
    path = ROOT / "benchmarks" / "collect_results.py"
    try:
        spec = importlib.util.spec_from_file_location("_pvae_collect_results", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return list(module.ORDER)
    except Exception:  # the order is a nicety; alphabetical order will do
        return []


def local_images(markdown: str) -> list[str]:
    """The file names of the images a Markdown text shows from its own folder
    (``![caption](name.png)``; not URLs, not paths into other folders)."""
    return re.findall(r"!\[[^\]]*\]\(([\w.-]+\.(?:png|svg|jpg))\)", markdown)


def results_files() -> list[Path]:
    order = results_order()
    files = (ROOT / "benchmarks" / "results").glob("*.md")
    return sorted(files, key=lambda p: (order.index(p.stem) if p.stem in order else 99, p.stem))


def first_heading(text: str, default: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return default


# -- tutorials -------------------------------------------------------------------------------
def notebooks() -> list[Path]:
    return sorted((ROOT / "tutorials").glob("*.ipynb"))


def notebook_summary(path: Path) -> tuple[str, str, str]:
    """``(title, first paragraph, code)`` of a notebook: its first heading, the paragraph
    after it, and all its code cells joined."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    markdown = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    heading, paragraph = path.stem, ""
    if markdown:
        blocks = [b.strip() for b in markdown[0].split("\n\n") if b.strip()]
        if blocks and blocks[0].startswith("#"):
            heading = blocks.pop(0).lstrip("#").strip()
        paragraph = " ".join(blocks[0].split()) if blocks else ""
    return heading, paragraph, code


# -- pages -----------------------------------------------------------------------------------
class Writer:
    """Writes files under ``docs/``, each only when its text changed, and removes the files
    of the generated folders that were not written this time."""

    def __init__(self, root: Path = DOCS) -> None:
        self.root = root
        self.written: set[Path] = set()

    def text(self, relative: str, text: str) -> None:
        self._write(relative, text.encode("utf-8"))

    def copy(self, relative: str, source: Path) -> None:
        self._write(relative, source.read_bytes())

    def _write(self, relative: str, data: bytes) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        self.written.add(path)

    def prune(self) -> None:
        for folder in GENERATED:
            for path in sorted((self.root / folder).rglob("*"), reverse=True):
                if path.is_file() and path not in self.written:
                    path.unlink()
                elif path.is_dir() and not any(path.iterdir()):
                    path.rmdir()


def _children(name: str, modules: list[str]) -> list[str]:
    depth = name.count(".") + 1
    return [m for m in modules if m.startswith(name + ".") and m.count(".") == depth]


def api_page(name: str, modules: list[str]) -> str:
    module = importlib.import_module(name)
    is_package = hasattr(module, "__path__")
    lines = [title(name)]
    lines.append(
        f".. automodule:: {name}\n   :members:\n   :undoc-members:\n   :show-inheritance:\n"
        "   :ignore-module-all:\n"
    )
    exported = [n for n in getattr(module, "__all__", []) if not n.startswith("_")]
    links = []
    for export in exported:
        obj = getattr(module, export, None)
        if inspect.ismodule(obj):
            continue  # listed with the submodules
        home = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if home and qualname and home != name and (inspect.isclass(obj) or callable(obj)):
            links.append(f"- :py:obj:`{name}.{export} <{home}.{qualname}>`")
    if links:
        lines.append(title("Exported here", "-"))
        lines.append(f"Importable as ``from {name} import ...``; documented where defined:\n")
        lines.append("\n".join(links) + "\n")
    children = _children(name, modules)
    if is_package and children:
        lines.append(title("Submodules", "-"))
        if name.count(".") == 0:  # the API index's toctree holds the top-level modules
            lines.append("\n".join(f"- :doc:`{c}`" for c in children))
        else:
            lines.append(
                ".. toctree::\n   :maxdepth: 1\n\n" + "\n".join(f"   {c}" for c in children)
            )
    return "\n".join(lines) + "\n"


def api_index(modules: list[str]) -> str:
    top = [m for m in modules if m.count(".") == 1]
    return (
        title("API reference")
        + "\nEvery public module of ``pvae``, generated from the docstrings at build time. "
        "Packages re-export their main classes and functions (``from pvae.models import VAE``); "
        "each object is documented once, in the module that defines it.\n\n"
        ".. toctree::\n   :maxdepth: 2\n\n   pvae\n" + "".join(f"   {m}\n" for m in top)
    )


@dataclass
class Context:
    """What the gallery pages link to: tutorials ``(doc, title, code)`` and results files
    ``(doc, title, text)``, plus the benchmark scripts' sources by stem."""

    tutorials: list[tuple[str, str, str]]
    results: list[tuple[str, str, str]]
    scripts: dict[str, str]


def model_page(name: str, context: Context) -> str:
    from pvae.models.registry import get_model_class, smoke_config, smoke_dataset

    cls = get_model_class(name)
    module = cls.__module__
    config = cls.Config
    dataset = smoke_dataset(name)
    lead = (inspect.getdoc(cls) or "").split("\n\n")[0]

    out = [f".. _model-{name}:\n", title(f"{name}: {cls.__name__}")]
    out.append(f".. currentmodule:: {module}\n")
    if lead:
        out.append(lead + "\n")
    out.append(
        f"Class :class:`~{module}.{cls.__name__}`, config "
        f":class:`~{config.__module__}.{config.__qualname__}`, in :mod:`{module}`.\n"
    )

    out.append(title("Train it", "-"))
    try:
        smoke = smoke_config(name)
    except ValueError:
        smoke = {}
    out.append(
        f"On the dataset of its smoke run (``{dataset}``), with the default options:\n\n"
        f".. code-block:: bash\n\n   pvae train --model {name} --dataset {dataset}\n\n"
        "Set any option below with ``--model-option KEY=VALUE`` (VALUE read as JSON; "
        "``pvae train --model list`` prints every model's options), or from Python with "
        ":class:`~pvae.runs.spec.TrainSpec`, here with the registry's smoke config (the "
        "options of the test suite's seconds-long run):\n\n"
        ".. code-block:: python\n\n"
        "   from pathlib import Path\n\n"
        "   from pvae.runs import TrainSpec, train_run\n\n"
        "   spec = TrainSpec(\n"
        f'       model="{name}",\n'
        f'       dataset="{dataset}",\n'
        f"       model_options={smoke!r},\n"
        f'       out=Path("runs/{name}"),\n'
        "   )\n"
        "   metrics = train_run(spec)  # the dataset supplies "
        + (", ".join(getattr(cls, "data_keys", ())) or "nothing")
        + "\n"
    )

    out.append(title("Generative story", "-"))
    out.append(f".. automodule:: {module}\n   :no-index:\n")

    out.append(title("Options", "-"))
    data_keys = tuple(getattr(cls, "data_keys", ()))
    rows = [
        [literal(option), literal(abridged_default(default)), escape(help) if help else ""]
        for option, default, help in config.describe()
        if option not in data_keys
    ]
    if rows:
        out.append(f"The fields of :class:`~{config.__module__}.{config.__qualname__}`:\n")
        out.append(list_table(["option", "default", "meaning"], rows, "20 20 60"))
    else:
        out.append("This model has no options.\n")
    if data_keys:
        keys = ", ".join(literal(k) for k in data_keys)
        out.append(f"Set from the dataset, not by hand: {keys}.\n")

    out.append(title("Evaluation", "-"))
    samples = getattr(cls, "default_eval_samples", None)
    if getattr(cls, "exact_likelihood", False):
        out.append(
            "The model has no latent variable: its test log-likelihood is exact "
            f"(K = {samples} importance sample{'s' if samples != 1 else ''} by default).\n"
        )
    else:
        out.append(
            f"The test NLL is importance-sampled with K = {samples} samples by default "
            "(``--eval-samples``), a stochastic lower bound on log p(x): see :doc:`/concepts`.\n"
        )

    out.append(title("Benchmarks", "-"))
    found = False
    for doc, heading, text in context.results:
        tables = benchmark_rows(name, text)
        script = context.scripts.get(Path(doc).name, "")
        if not tables and not (script and mentions(name, script)):
            continue
        found = True
        out.append(f":doc:`{heading} <{doc}>`\n")
        for table in tables:
            out.append(
                list_table(
                    [markdown_cell(c) for c in table.header],
                    [[markdown_cell(c) for c in row] for row in table.rows],
                )
            )
    results_stems = {Path(doc).name for doc, _, _ in context.results}
    for stem, script in sorted(context.scripts.items()):
        if stem not in results_stems and mentions(name, script):
            found = True
            out.append(f"``benchmarks/{stem}.py`` (no results recorded yet).\n")
    if not found:
        out.append("No benchmark measures this model yet.\n")

    out.append(title("Tutorials", "-"))
    used = [
        (doc, heading)
        for doc, heading, code in context.tutorials
        if mentions(name, code) or re.search(rf"\b{re.escape(cls.__name__)}\(", code)
    ]
    if used:
        out.append("\n".join(f"- :doc:`{heading} <{doc}>`" for doc, heading in used) + "\n")
    else:
        out.append("No tutorial uses this model yet.\n")
    return "\n".join(out)


def gallery_index(names: list[str]) -> str:
    from pvae.models.registry import get_model_class, smoke_dataset

    rows = []
    for name in names:
        cls = get_model_class(name)
        lead = (inspect.getdoc(cls) or "").split("\n\n")[0]
        rows.append(
            [
                f":doc:`{name} <{name}>`",
                f":class:`~{cls.__module__}.{cls.__name__}`",
                literal(smoke_dataset(name)),
                " ".join(lead.split()),
            ]
        )
    return (
        title("Model gallery")
        + "\nOne page per model of the registry (``pvae train --model list``), generated at "
        "build time: its generative story, its options with their defaults, the command that "
        "trains it, what the benchmarks measured and the tutorials that use it. A model "
        "registered with ``@register_model`` gets its page here without a documentation edit.\n\n"
        + list_table(["model", "class", "smoke dataset", "summary"], rows, "15 20 15 50")
        + "\n.. toctree::\n   :hidden:\n\n"
        + "".join(f"   {name}\n" for name in names)
    )


def tutorials_index(entries: list[tuple[str, str, str]]) -> str:
    body = "\n".join(
        f"- :doc:`{heading} <{stem}>`: {escape(paragraph)} (source: ``tutorials/{stem}.ipynb``)"
        for stem, heading, paragraph in entries
    )
    return (
        title("Tutorials")
        + "\nThe notebooks of ``tutorials/``, rendered as committed, with the outputs of their "
        "real run where one was saved (the docs build never executes them). Run them yourself "
        "as the README says: ``PVAE_SMOKE=1 .venv/bin/jupyter execute tutorials/*.ipynb`` for "
        "the seconds-long smoke setting.\n\n"
        + body
        + "\n\n.. toctree::\n   :hidden:\n\n"
        + "".join(f"   {stem}\n" for stem, _, _ in entries)
    )


def benchmarks_index(entries: list[tuple[str, str]]) -> str:
    return (
        title("Benchmark results")
        + "\nEach file of ``benchmarks/results/`` (the sections of ``benchmarks/RESULTS.md``): "
        "the exact command, the machine, and the baseline measured in the same run. They were "
        "measured on two CPU cores shared with other jobs, so absolute times are noisy; the "
        "ratios are the meaningful part.\n\n"
        ".. toctree::\n   :maxdepth: 1\n\n" + "".join(f"   {stem}\n" for stem, _ in entries)
    )


def generate(root: Path = DOCS) -> Writer:
    """Writes every generated page under ``root``; returns the writer (its ``written``)."""
    from pvae.models.registry import available_models

    writer = Writer(root)

    modules = public_modules()
    writer.text("api/index.rst", api_index(modules))
    for name in modules:
        writer.text(f"api/{name}.rst", api_page(name, modules))

    tutorials, entries = [], []
    for path in notebooks():
        heading, paragraph, code = notebook_summary(path)
        writer.copy(f"tutorials/{path.name}", path)
        tutorials.append((f"/tutorials/{path.stem}", heading, code))
        entries.append((path.stem, heading, paragraph))
    writer.text("tutorials/index.rst", tutorials_index(entries))

    results, bench_entries = [], []
    for path in results_files():
        text = path.read_text(encoding="utf-8")
        heading = first_heading(text, path.stem)
        writer.text(f"benchmarks/{path.name}", text)
        for image in local_images(text):  # figures a results file shows, next to it
            if (path.parent / image).is_file():
                writer.copy(f"benchmarks/{image}", path.parent / image)
        results.append((f"/benchmarks/{path.stem}", heading, text))
        bench_entries.append((path.stem, heading))
    writer.text("benchmarks/index.rst", benchmarks_index(bench_entries))
    scripts = {p.stem: p.read_text(encoding="utf-8") for p in (ROOT / "benchmarks").glob("*.py")}
    scripts.pop("collect_results", None)

    context = Context(tutorials, results, scripts)
    names = available_models()
    for name in names:
        writer.text(f"models/{name}.rst", model_page(name, context))
    writer.text("models/index.rst", gallery_index(names))

    writer.prune()
    return writer


def _on_builder_inited(app: Any) -> None:
    generate(Path(app.srcdir))


def _on_process_docstring(app: Any, what: str, name: str, obj: Any, options: Any, lines) -> None:
    join_references(lines)


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _on_builder_inited)
    # after napoleon (priority 500), which turns "References:" into a rubric
    app.connect("autodoc-process-docstring", _on_process_docstring, priority=600)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


def clean(root: Path = DOCS) -> None:
    """Removes the generated folders (``make docs-clean``)."""
    for folder in GENERATED:
        shutil.rmtree(root / folder, ignore_errors=True)


# -- docstrings: the house style of numbered references ---------------------------------------
_REFERENCE = re.compile(r"^\[\d+\]\s")


def join_references(lines: list[str]) -> None:
    """Makes the ``References:`` block of a docstring (napoleon's ``.. rubric:: References``,
    entries ``[1] ...`` with indented continuation lines) one paragraph per entry, in place.
    As written in pvae's docstrings the block is a reST definition list without blank lines,
    which docutils rejects."""
    out: list[str] = []
    inside = False
    for line in lines:
        if line.strip() == ".. rubric:: References":
            inside = True
            out.append(line)
            continue
        if inside:
            if _REFERENCE.match(line):
                out.extend(["", line.rstrip()])
                continue
            if line.strip() and line[:1].isspace() and out and _REFERENCE.match(out[-1]):
                out[-1] += " " + line.strip()
                continue
            if line.strip() and not line[:1].isspace():
                inside = False
                out.append("")
        out.append(line)
    lines[:] = out
