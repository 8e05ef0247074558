"""Reading back the Markdown tables the harness prints (``pdt_bench.report.markdown_table``)."""


def table_rows(text: str) -> list[list[str]]:
    """The cells of the first Markdown table in ``text``: the header row, then the body (no rule row)."""
    lines = text[text.index("| ") :].splitlines()
    table = _leading_table(lines)
    return [[c.strip() for c in line.strip().strip("|").split("|")] for i, line in enumerate(table) if i != 1]


def _leading_table(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if not line.startswith("|"):
            break
        out.append(line)
    return out
