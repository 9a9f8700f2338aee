"""Collects every ``benchmarks/results/*.md`` into ``benchmarks/RESULTS.md`` (quoted by the README).

Each benchmark script writes its own results file with the exact command that produced it;
this script only concatenates them, in a fixed order. Usage: ``python benchmarks/collect_results.py``
"""

import re
from pathlib import Path

ORDER = [
    "throughput",
    "throughput_text",
    "distributed",
    "distributed_nll",
    "distributed_nll_10k",
    "mnist_nll",
    "distributions",
    "zoo",
    "svae_sweep",
    "svae_sweep_30_epochs",
    "m2_accuracy",
    "few_shot",
    "ns_context",
    "acn",
    "acn_collapse",
    "acn_speed",
    "text_ptb",
    "ss_text",
    "ss_text_full_data",
    "diagnostics",
    "graph_link_prediction",
    "conv_draw",
    "variance_layers",
    "stein_vae",
    "info_vae",
]


def main() -> None:
    results = Path(__file__).parent / "results"
    files = sorted(
        results.glob("*.md"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem)
    )
    parts = [
        "# Benchmark results\n",
        "Collected from `benchmarks/results/*.md` by `python benchmarks/collect_results.py`. Each "
        "section states the exact command, the machine, and the baseline measured in the same run. "
        "All numbers below were measured on a 2-core CPU machine shared with other jobs (no GPU was "
        "lent to this task), so absolute times are noisy; ratios are the meaningful part.\n",
    ]
    for path in files:
        text = path.read_text().strip()
        # One level down: each file's title becomes a section, its sections subsections.
        text = "\n" + text
        # Figures sit next to their results file: from RESULTS.md they are in results/.
        text = re.sub(r"(!\[[^\]]*\]\()([\w.-]+\.(?:png|svg|jpg))\)", r"\1results/\2)", text)
        for level in ("### ", "## ", "# "):
            text = text.replace("\n" + level, "\n#" + level)
        parts.append(text + "\n")
    out = Path(__file__).parent / "RESULTS.md"
    out.write_text("\n".join(parts))
    print(f"wrote {out} from {len(files)} files")


if __name__ == "__main__":
    main()
