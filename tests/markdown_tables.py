"""Reading the markdown tables pages draw (ui.common.markdown_table) back into rows."""

from __future__ import annotations

from ui.common import md_plain


def markdown_rows(text: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in ``text``, as a reader sees the cells."""
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    if len(lines) < 2:
        return []

    def cells(line: str) -> list[str]:
        out, cur, escaped = [], "", False
        for ch in line.strip()[1:-1]:
            if escaped:
                cur += "\\" + ch
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == "|":
                out.append(cur)
                cur = ""
            else:
                cur += ch
        out.append(cur)
        return [md_plain(c.strip()) for c in out]

    head = cells(lines[0])
    return [dict(zip(head, cells(line))) for line in lines[2:]]


def tables(at) -> list[list[dict[str, str]]]:
    """Every markdown table an AppTest run drew."""
    return [rows for m in at.markdown if (rows := markdown_rows(m.value))]
