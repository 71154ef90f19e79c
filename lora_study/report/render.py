"""The report as a page: sections of tables, figures, code and lists (a small document model),
rendered to one self-contained HTML page and to Markdown with its figures beside it."""

import html
import math
import numbers
from dataclasses import dataclass, field

import pandas as pd

from lora_study.report.read import StudyRuns


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame
    links: dict[str, list[str]] = field(default_factory=dict)  # column -> a URL per row


@dataclass(frozen=True)
class Figure:
    name: str
    svg: str
    caption: str


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Heading:
    text: str


@dataclass(frozen=True)
class Items:
    texts: tuple[str, ...]


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    blocks: list  # str (a paragraph), Heading, Items, Table, Figure or Code


# A table wider than the page scrolls inside its own box, each row one line; a two-column table
# (a name and its value) wraps its values instead.
STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { margin-bottom: 0.2em; }
.table { overflow-x: auto; } table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; } td.n { text-align: right; }
td { white-space: nowrap; } table.pairs td { white-space: normal; }
th { background: #f3f3f3; }
.answer { font-size: 1.15em; background: #eef6ee; border-left: 4px solid #3a3; padding: 0.6em 1em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 13px; }
svg { max-width: 100%; height: auto; } nav a { margin-right: 1em; }
"""


# Column names as a person reads them, with units: the report's tables keep MLflow's names in
# their frames (and in the tables logged beside the report); only the page shows these.
HEADINGS = {
    "config_trial": "configuration (trial)",
    "trial_number": "trial",
    "target_modules": "target modules",
    "learning_rate": "learning rate",
    "eval_perplexity": "validation perplexity",
    "test_perplexity": "test perplexity",
    "test_perplexity_mean": "test perplexity, mean",
    "test_perplexity_std": "test perplexity, seed std",
    "test_perplexity_stderr": "test perplexity, std error",
    "trainable_params": "trainable parameters",
    "peak_memory_mb": "peak memory (MB)",
    "forgetting_kl": "forgetting: KL (nats/token)",
    "forgetting_loss_delta": "forgetting: loss change",
    "train_tokens_per_s": "training tokens/s",
    "adapter_size_mb": "adapter size (MB)",
    "update_energy_rank_90_median": "update: 90%-energy directions (median)",
    "update_effective_rank_median": "update: effective rank (median)",
    "duration_s": "duration (s)",
    "use_dora": "DoRA",
    "use_rslora": "rsLoRA",
    "alpha_per_rank": "alpha / rank",
}


def heading(column) -> str:
    """A column's heading on the page: its words (`HEADINGS`), else its name with spaces."""
    name = str(column)
    return HEADINGS.get(name, name.replace("_", " "))


def title(study: StudyRuns) -> str:
    return f"lora-study report: {study.name}"


def to_html(study: StudyRuns, sections: list[Section]) -> str:
    """One self-contained page: styles and figures inline, no script."""
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(_html_section(s) for s in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title(study))}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title(study))}</h1><nav>{nav}</nav>{body}</body></html>\n"
    )


def _html_section(section: Section) -> str:
    blocks = []
    for i, block in enumerate(section.blocks):
        if isinstance(block, str):
            css = ' class="answer"' if section.id == "answer" and i == 0 else ""
            blocks.append(f"<p{css}>{html.escape(block)}</p>")
        elif isinstance(block, Heading):
            blocks.append(f"<h3>{html.escape(block.text)}</h3>")
        elif isinstance(block, Items):
            blocks.append("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in block.texts) + "</ul>")
        elif isinstance(block, Table):
            blocks.append(_html_table(block))
        elif isinstance(block, Figure):
            svg = block.svg[block.svg.index("<svg") :]  # inline: without the XML prolog
            blocks.append(
                f'<figure id="figure-{block.name}">{svg}<figcaption>{html.escape(block.caption)}</figcaption></figure>'
            )
        else:
            blocks.append(f"<pre>{html.escape(block.text)}</pre>")
    return f'<section id="{section.id}"><h2>{html.escape(section.title)}</h2>{"".join(blocks)}</section>'


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(heading(c))}</th>" for c in table.frame.columns)
    rows = []
    for i, (_, row) in enumerate(table.frame.iterrows()):
        cells = []
        for column, value in row.items():
            text = html.escape(cell_text(value))
            if column in table.links:
                text = f'<a href="{html.escape(table.links[column][i])}">{text}</a>'
            numeric = isinstance(value, numbers.Real) and not isinstance(value, bool)
            cells.append(f'<td class="n">{text}</td>' if numeric else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    kind = ' class="pairs"' if len(table.frame.columns) <= 2 else ""
    return f'<div class="table"><table{kind}><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def to_markdown(study: StudyRuns, sections: list[Section], figures_dir: str) -> tuple[str, dict[str, str]]:
    """The same page in Markdown, and its figures (file name -> SVG text) to write in `figures_dir`."""
    lines, figures = [f"# {title(study)}", ""], {}
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                lines += [block, ""]
            elif isinstance(block, Heading):
                lines += [f"### {block.text}", ""]
            elif isinstance(block, Items):
                lines += [*(f"- {t}" for t in block.texts), ""]
            elif isinstance(block, Table):
                lines += [*_markdown_table(block), ""]
            elif isinstance(block, Figure):
                figures[f"{block.name}.svg"] = block.svg
                lines += [f"![{block.caption}]({figures_dir}/{block.name}.svg)", ""]
            else:
                lines += ["```", block.text, "```", ""]
    return "\n".join(lines), figures


def _markdown_table(table: Table) -> list[str]:
    def cell(column, i, value) -> str:
        text = cell_text(value).replace("|", "\\|")
        return f"[{text}]({table.links[column][i]})" if column in table.links else text

    columns = list(table.frame.columns)
    rows = [
        "| " + " | ".join(cell(c, i, v) for c, v in row.items()) + " |"
        for i, (_, row) in enumerate(table.frame.iterrows())
    ]
    return ["| " + " | ".join(map(heading, columns)) + " |", "|" + "---|" * len(columns), *rows]


def cell_text(value) -> str:
    """A table cell: numbers to 4 significant digits, counts whole, missing values empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, numbers.Real):
        return f"{value:,.0f}" if abs(value) >= 10000 else f"{value:.4g}"
    return str(value)


def duration(seconds: float) -> str:
    seconds = float(seconds or 0)
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"
