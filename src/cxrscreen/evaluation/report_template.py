"""The HTML skeleton and style of ``report.html``: one self-contained page (no external file, no script)."""

from __future__ import annotations

import base64
from html import escape
from typing import Sequence

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #1d232a; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; border-bottom: 2px solid #d8dee4; padding-bottom: 0.2rem; margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
.notice { background: #fff4e5; border-left: 4px solid #e8890c; padding: 0.6rem 0.9rem; margin: 1rem 0; }
.verdict { font-weight: 600; font-size: 1.05rem; }
.muted { color: #57606a; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f6f8fa; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
.figures img { max-width: 340px; height: auto; border: 1px solid #d0d7de; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 0.6rem; }
figure { margin: 0; }
figure img { width: 100%; height: auto; border: 1px solid #d0d7de; }
figure.wide { max-width: 820px; }
figcaption { font-size: 0.75rem; color: #57606a; word-break: break-all; }
.wrong figcaption { color: #b42318; }
"""


def page(title: str, body: str) -> str:
    """A whole HTML document around ``body`` (already escaped HTML)."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{escape(title)}</title>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def section(anchor: str, title: str, content: str) -> str:
    return f'<section id="{escape(anchor)}">\n<h2>{escape(title)}</h2>\n{content}\n</section>'


def paragraph(text: str, css: str | None = None) -> str:
    cls = f' class="{css}"' if css else ""
    return f"<p{cls}>{escape(text)}</p>"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def key_value_table(rows: Sequence[Sequence[str]]) -> str:
    """A two-column table without a header: the first column names, the second values."""
    body = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table><tbody>{body}</tbody></table>"


def png_img(data: bytes, alt: str) -> str:
    """An ``<img>`` holding the PNG bytes as a data URI."""
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}" alt="{escape(alt)}">'


def figure(data: bytes, caption: str, css: str | None = None) -> str:
    cls = f' class="{css}"' if css else ""
    return f"<figure{cls}>{png_img(data, caption)}<figcaption>{escape(caption)}</figcaption></figure>"
