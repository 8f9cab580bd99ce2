"""The lab's choices, read from its registries: the page the docs include is written from
the same tables the config's validation and ``decaylab --help`` read, so it cannot drift.

    python docs/_ext/registries.py        # print the Markdown

``decaylab.lab.build``'s MODELS, DATASETS and PENALTIES; ``decaylab.lab.figures.FIGURES``.
docs/conf.py writes :func:`markdown` to docs/_generated/lab-choices.md.inc.
"""

from __future__ import annotations


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    from decaylab.lab import build
    from decaylab.lab.figures import BOTH, FIGURES, RUNS

    out = ["## Models (`model.kind`)\n", "| kind | what it is |", "|---|---|"]
    out += [f"| `{k}` | {_cell(v)} |" for k, v in build.MODELS.items()]
    out += ["| `model.factory` | your own: `\"pkg.module:function\"` returning an `nn.Module` |",
            "", "## Data sets (`data.name`)\n", "| name | what it is |", "|---|---|"]
    out += [f"| `{k}` | {_cell(v)} |" for k, v in build.DATASETS.items()]
    out += ["| `data.factory` | your own: `\"path/file.py:function\"` returning tensors |",
            "", "## Penalties (`penalty`, `--penalty`)\n",
            "| penalty | what it is | `decaylab sweep` stacks a grid of it |", "|---|---|---|"]
    out += [f"| `{k}` | {_cell(p.help)} | {'yes' if p.sweeps else 'no'} |" for k, p in build.PENALTIES.items()]
    out += ["", "## Report figures\n",
            "A figure appears only where its folder has what it draws: the path and the Pareto "
            "figure need swept strengths (`decaylab sweep`, or `compare` with `alphas`), the input "
            "maps image inputs, the compaction figure a `decaylab compact`.\n",
            "| id | title | drawn for | what it shows |", "|---|---|---|---|"]
    kinds = {RUNS: "train, compare", BOTH: "train, compare, sweep"}
    out += [f"| `{f.id}` | {_cell(f.title)} | {kinds.get(f.kinds, ', '.join(f.kinds))} | "
            f"{_cell(f.caption.format(metric='accuracy (loss for regression)'))} |" for f in FIGURES]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
