"""The front door holds: a README of at most 8,000 bytes that links every docs page, links that
resolve, code blocks that run, and the packaging files a user of the wheel relies on."""

from __future__ import annotations

import contextlib
import io
import re
import unicodedata
from pathlib import Path

import pytest
import torch

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))  # docs/results/<study>/ holds the study's generated reports
MARKDOWN = [README, ROOT / "CHANGELOG.md", *PAGES]

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text without its fenced code blocks and inline code (links there are not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def code_blocks(path: Path, language: str = "python") -> list[str]:
    return [body for lang, body in FENCE.findall(path.read_text()) if lang == language]


def relative_links(path: Path) -> list[str]:
    # A target in angle brackets (`[a](<b c.md>)`, how `pdt-bench results` writes links) is the path inside them.
    targets = [t.removeprefix("<").removesuffix(">") for t in LINK.findall(prose(path.read_text()))]
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", path.read_text()), re.M)}


def test_readme_is_at_most_8000_bytes():
    size = len(README.read_bytes())
    assert size <= 8000, f"README.md is {size} bytes; move detail into a docs/ page"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.split("#")[0]).resolve() for t in relative_links(README)}
    assert PAGES, "no docs pages found"
    missing = [p.name for p in PAGES if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    broken = []
    for target in relative_links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.exists() and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{path.name}: " + "; ".join(broken)


def test_slug_matches_github_anchors():
    assert slug("Optimizer state after a jump: `on_jump`") == "optimizer-state-after-a-jump-on_jump"
    assert slug('Why the defaults are `"fixed"` and `"keep"`') == "why-the-defaults-are-fixed-and-keep"
    assert slug("4. Bad input and faults tried") == "4-bad-input-and-faults-tried"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_compile(path: Path):
    for i, block in enumerate(code_blocks(path)):
        compile(block, f"{path.name}, python block {i}", "exec")


def _tiny_task(seed: int = 0):
    """A small regression task whose full-batch loss keeps falling for a few dozen epochs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=g)
    y = x @ torch.randn(8, 2, generator=g)

    def make_model() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    def train_one_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
        losses = []
        for batch in torch.randperm(64).split(16):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[batch]), y[batch])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return sum(losses) / len(losses)

    def train_loss(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return torch.nn.functional.mse_loss(model(x), y).item()

    return make_model, train_one_epoch, train_loss


def test_readme_loop_runs_and_predicts():
    blocks = code_blocks(README)
    assert blocks, "the README shows no Python code"
    make_model, train_one_epoch, _ = _tiny_task()
    torch.manual_seed(0)
    namespace = {"model": make_model(), "epochs": 8, "train_one_epoch": train_one_epoch}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    pdt = namespace["pdt"]
    assert pdt.epoch == 8, "the loop should call pdt.step() once per epoch"
    # The paper's defaults (T0 = 5, Ti = 1) predict after epochs 5 and 7 of 0..7.
    assert namespace["stats"]["predicted"] and namespace["stats"]["epoch"] == 7


def test_does_pdt_help_ab_runs():
    blocks = code_blocks(DOCS / "does-pdt-help.md")
    assert len(blocks) == 1
    make_model, train_one_epoch, train_loss = _tiny_task()
    namespace = {"make_model": make_model, "train_one_epoch": train_one_epoch, "train_loss": train_loss}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "does-pdt-help.md", "exec"), namespace)
    assert len(namespace["baseline"]) == len(namespace["with_pdt"]) == 30
    assert any(row["pdt"].get("predicted") for row in namespace["with_pdt"])
    assert out.getvalue().startswith("PDT"), out.getvalue()


def test_readme_results_tables_are_small():
    """Three small tables: the paper's protocols, the tuned configurations where PDT mostly loses,
    and the budget curves (what a shorter schedule costs)."""
    text = README.read_text()
    section = text.split("## Does it help?", 1)[1].split("\n## ", 1)[0]
    tables = [block.splitlines() for block in section.split("\n\n") if block.startswith("|")]
    assert len(tables) == 3, f"{len(tables)} results tables in the README (paper's protocols, tuned, budget)"
    for rows in tables:
        assert len(rows) - 2 <= 6, f"{len(rows) - 2} rows in a results table (at most 6)"
        assert max(map(len, rows)) <= 100, "a results table is wider than 100 columns"
    paper, tuned, budget = (rows[0] for rows in tables)
    assert "baseline" in budget and "PDT" in budget, "the budget curves lost the baseline or PDT"
    assert "pdt-linear" in paper and "schedule-free" in paper, "the controls where PDT does not win are gone"
    assert "tuned baseline" in tuned and "LAWA" in tuned and "random mask" in tuned, "the tuned verdict lost a peer"


def test_license_and_type_marker_are_shipped():
    license = ROOT / "LICENSE"
    assert license.is_file() and "BSD 3-Clause" in license.read_text()
    assert (ROOT / "torch_pdt" / "py.typed").is_file()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["torch_pdt"]
    assert project["project"]["license"] == "BSD-3-Clause"
    assert "LICENSE" in project["project"]["license-files"]
    assert project["project"]["readme"] == "README.md"
    assert {"Homepage", "Documentation", "Changelog", "Issues"} <= set(project["project"]["urls"])


def test_changelog_names_the_current_version():
    import torch_pdt

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "torch_pdt.__version__"}
    released = re.findall(r"^## (\d+\.\d+\.\d+)\b", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert released and released[0] == torch_pdt.__version__, (released, torch_pdt.__version__)
