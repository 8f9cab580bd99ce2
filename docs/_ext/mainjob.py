"""Run the main job for the Getting-started page and draw its report's figures.

    python docs/_ext/mainjob.py            # experiments/main.toml as README command 1 runs it
    DECAYLAB_DOCS_FAST=1 python docs/_ext/mainjob.py   # 3 epochs, one seed (CI)

Writes the run folder to docs/_generated/mainjob/ and its figures, drawn by
``decaylab.lab.report.figures`` exactly as report.html draws them, to
docs/_generated/figures/<id>.png, plus docs/_generated/mainjob.md.inc: the figures and the
console summary for the page to include. docs/conf.py calls :func:`generate` during the build;
an existing run of the same mode is reused (docs/build.sh deletes it to start from scratch).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "_generated"


def generate(fast: bool) -> Path:
    run = OUT / ("mainjob-fast" if fast else "mainjob")
    if not (run / "report.html").is_file():
        args = ["compare", str(ROOT / "experiments" / "main.toml"), "--out", str(OUT),
                "--name", run.name, "--quiet"]
        if fast:
            args += ["--set", "train.epochs=3", "--set", "seeds=1"]
        subprocess.run([sys.executable, "-c", "import sys; from decaylab.lab.cli import main; "
                        "sys.exit(main(sys.argv[1:]))", *args], check=True, cwd=ROOT,
                       env=dict(os.environ, MPLBACKEND="Agg"), stdout=subprocess.DEVNULL)
    from decaylab.lab.report import figures

    figdir = OUT / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    lines = []
    if fast:
        lines += ["```{note}\nThis build ran the main job shortened (`DECAYLAB_DOCS_FAST=1`: "
                  "3 epochs, one seed), so its figures show the mechanics, not the result.\n```\n"]
    table = subprocess.run([sys.executable, "-c", "import sys; from decaylab.lab.cli import main; "
                            "sys.exit(main(sys.argv[1:]))", "report", "--markdown", str(run)],
                           check=True, cwd=ROOT, capture_output=True, text=True).stdout
    lines.append("What this build's run found (`decaylab report --markdown RUN_DIR`):\n\n" + table + "\n")
    from decaylab.lab.figures import FIGURES  # the report's own titles and captions

    captions = {f.id: f"**{f.title}.** " + f.caption.format(metric="accuracy") for f in FIGURES}
    for fig_id, png in figures(run).items():
        (figdir / f"{fig_id}.png").write_bytes(png)
        caption = captions.get(fig_id, fig_id)
        lines.append(f"```{{figure}} /_generated/figures/{fig_id}.png\n:alt: {fig_id}\n\n{caption}\n```\n")
    text = "\n".join(lines)
    inc = OUT / "mainjob.md.inc"
    if not inc.exists() or inc.read_text() != text:
        inc.write_text(text)
    return run


if __name__ == "__main__":
    print(generate(os.environ.get("DECAYLAB_DOCS_FAST") == "1"))
