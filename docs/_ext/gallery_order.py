"""The gallery's reading order (sphinx-gallery's ``within_subsection_order``).

Basics of weight decay first, then choosing and placing it, then L1 and sparsity, then
reference material; an example not listed here comes after the listed ones, by file name.
"""

from __future__ import annotations

from pathlib import Path

ORDER = [
    "plot_overfitting.py",
    "plot_coupled_vs_decoupled.py",
    "plot_optimizers_and_decay.py",
    "plot_choosing_lambda.py",
    "plot_which_parameters.py",
    "plot_transformer_decay.py",
    "plot_l1_exact_zeros.py",
    "plot_l1_vs_l2.py",
    "plot_linear_paths.py",
    "plot_feature_selection.py",
    "plot_sparsity_that_pays.py",
    "plot_conversion_table.py",
]


class ReadingOrder:
    """Sort key: position in :data:`ORDER`, then file name; a listed file that does not
    exist is an error (a renamed example must be renamed here too)."""

    def __init__(self, src_dir):
        self.src_dir = str(src_dir)
        if Path(self.src_dir).name == "examples":  # the gallery's own folder (not a sub-gallery)
            missing = [f for f in ORDER if not (Path(self.src_dir) / f).exists()]
            if missing:
                raise ValueError(f"docs/_ext/gallery_order.py lists {missing}, which are not in "
                                 f"{self.src_dir}; rename or remove them in ORDER")

    def __call__(self, filename) -> tuple[int, str]:
        name = Path(filename).name
        return (ORDER.index(name) if name in ORDER else len(ORDER), name)

    def __repr__(self) -> str:  # stable, so sphinx's environment does not see a changed config
        return f"<{type(self).__name__}>"
