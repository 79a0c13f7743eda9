"""The HTML kit shared by every report (trials, twins, surrogate explanations): one inline
style sheet, escaping, number formatting, tables and figures embedded as PNG data URIs, so
that each report is one self-contained file that loads nothing from elsewhere."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


#: The inline style sheet of every report.
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.group td { background: #fafafa; font-weight: 600; }
.meta { color: #555; }
.note { color: #555; font-size: 0.9em; }
.warning { background: #fff3cd; border: 2px solid #d39e00; color: #5c4400; padding: 0.8em 1em;
           margin: 1em 0; font-weight: 600; border-radius: 4px; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; height: auto; }
"""


def escape(value: Any) -> str:
    """`value` as text safe inside HTML (quotes too)."""
    return html.escape(str(value), quote=True)


def fmt_number(x: Any) -> str:
    """A computed number to three significant digits (no exponent for |x| >= 1)."""
    if x is None:
        return "–"
    x = float(x)
    if math.isnan(x):
        return "–"
    if math.isinf(x):
        return "not reached" if x > 0 else "-inf"
    x = float(f"{x:.3g}")
    if x == 0:
        return "0"
    decimals = min(max(0, 2 - math.floor(math.log10(abs(x)))), 6)
    return f"{x:.{decimals}f}"


def png_img(fig: Figure) -> str:
    """An `<img>` holding the figure as a base64 PNG (110 dpi)."""
    # imported here: matplotlib takes a second to import
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(fig.get_label())}">'


def html_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool] = ()
) -> str:
    """An HTML table; cells are already-escaped HTML."""
    numeric = list(numeric) + [False] * (len(header) - len(numeric))
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{c}</td>' if num else f"<td>{c}</td>"
            for c, num in zip(row, numeric, strict=False)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
