"""The documentation builds without a warning, offline, and covers the code and the registry.

The build (``make docs``: Sphinx with warnings as errors) runs once per session in a subprocess,
into a temporary folder; it needs the ``docs`` extra (part of ``dev``), and is skipped with the
reason when Sphinx or its extensions are not installed. The helpers of the docs' extension
(``docs/_ext/pvae_docs.py``) are tested without Sphinx.
"""

from __future__ import annotations

import html as html_lib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import pvae_docs  # noqa: E402

DOCS_PACKAGES = ("sphinx", "furo", "myst_nb")


def _missing_docs_packages() -> list[str]:
    return [name for name in DOCS_PACKAGES if importlib.util.find_spec(name) is None]


@pytest.fixture(scope="module")
def html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = _missing_docs_packages()
    if missing:
        pytest.skip(f"docs packages not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("docs")
    command = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-b",
        "html",
        "-d",
        str(out / "doctrees"),
        str(DOCS),
        str(out / "html"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, f"docs build failed:\n{result.stdout}\n{result.stderr}"
    return out / "html"


def test_docs_build_without_warnings(html: Path) -> None:
    for page in ("index", "getting_started", "concepts", "models/index", "api/index"):
        assert (html / f"{page}.html").is_file(), page


def test_every_registered_model_has_a_gallery_page(html: Path) -> None:
    from pvae.models.registry import available_models, get_model_class, smoke_dataset

    index = (html / "models" / "index.html").read_text(encoding="utf-8")
    for name in available_models():
        page = html / "models" / f"{name}.html"
        assert page.is_file(), f"no gallery page for model {name!r}"
        text = page.read_text(encoding="utf-8")
        words = html_lib.unescape(re.sub(r"<[^>]+>", "", text))  # code is highlighted
        assert f"pvae train --model {name} --dataset {smoke_dataset(name)}" in words
        cls = get_model_class(name)
        for option, _, _ in cls.Config.describe():
            if option not in cls.data_keys:
                assert f">{option}<" in text, f"option {option!r} missing from {name}'s page"
        assert f'href="{name}.html"' in index, f"{name} missing from the gallery's index"


def test_every_public_module_class_and_function_is_in_the_api_reference(html: Path) -> None:
    missing = []
    for module in pvae_docs.public_modules():
        page = html / "api" / f"{module}.html"
        text = page.read_text(encoding="utf-8") if page.is_file() else ""
        if f'id="module-{module}"' not in text:
            missing.append(module)
        missing += [name for name in pvae_docs.public_objects(module) if f'id="{name}"' not in text]
    assert not missing, f"not in the API reference: {missing}"


def test_tutorials_and_benchmarks_are_rendered(html: Path) -> None:
    for notebook in pvae_docs.notebooks():
        assert (html / "tutorials" / f"{notebook.stem}.html").is_file(), notebook.name
    for results in pvae_docs.results_files():
        assert (html / "benchmarks" / f"{results.stem}.html").is_file(), results.name


# -- the extension's helpers, without Sphinx --------------------------------------------------
def test_public_modules_cover_the_package() -> None:
    modules = pvae_docs.public_modules()
    assert {"pvae", "pvae.models", "pvae.models.vae", "pvae.infer.train", "pvae.cli"} <= set(
        modules
    )
    assert not [m for m in modules if "._" in m or m.startswith("_")]


def test_references_become_one_paragraph_each() -> None:
    lines = [
        "Text.",
        "",
        ".. rubric:: References",
        "",
        "[1] Kingma, Welling. Auto-Encoding Variational Bayes.",
        "    ICLR 2014.",
        "[2] Burda et al. IWAE. 2016.",
        "After.",
    ]
    pvae_docs.join_references(lines)
    assert lines == [
        "Text.",
        "",
        ".. rubric:: References",
        "",
        "",
        "[1] Kingma, Welling. Auto-Encoding Variational Bayes. ICLR 2014.",
        "",
        "[2] Burda et al. IWAE. 2016.",
        "",
        "After.",
    ]


def test_benchmark_rows_of_a_model() -> None:
    text = (
        "# Title\n\n| model | NLL | paper |\n|---|---|---|\n| vae | 118.5 | 93.8 |\n"
        "| `iaf` | 119.7 | 79.1 |\n\n| task | paper | neural_statistician |\n|---|---|---|\n"
        "| 5-way | 98.1 | 62.0 |\n"
    )
    (vae,) = pvae_docs.benchmark_rows("vae", text)
    assert vae.header == ["model", "NLL", "paper"] and vae.rows == [["vae", "118.5", "93.8"]]
    assert pvae_docs.benchmark_rows("iaf", text)[0].rows == [["`iaf`", "119.7", "79.1"]]
    (ns,) = pvae_docs.benchmark_rows("neural_statistician", text)
    assert ns.rows == [["5-way", "98.1", "62.0"]]
    assert pvae_docs.benchmark_rows("task", text) == []  # the first column names the rows
    assert pvae_docs.benchmark_rows("m2", text) == []


def test_table_cells_are_escaped() -> None:
    assert pvae_docs.markdown_cell("-log p(x \\| y)") == "\\-log p(x \\| y)"
    assert pvae_docs.markdown_cell("`a_b` and **c**") == "``a_b``\\  and \\ **c**"
    assert pvae_docs.escape("|X| of set_size") == "\\|X\\| of set\\_size"
