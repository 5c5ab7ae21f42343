"""The PDF rendering of a monthly statement: the figures of ``statements.Statement``, laid out.

Nothing is computed here beyond formatting, so the PDF and the CSV of one statement show
the same totals. The line items stop after ``MAX_PDF_LINES`` with a note pointing to the
CSV, which lists them all. The built-in PDF fonts cover Latin-1 only, so other characters
(in a user or model name) are shown as ``?``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

from billing_platform.money import credits_text
from fpdf import FPDF
from fpdf.enums import XPos, YPos

from ledger.statements import ALL_MODELS, LineItem, ModelUsage, Statement, Total

MAX_PDF_LINES = 500
FONT = "Helvetica"


class _StatementPdf(FPDF):
    def __init__(self, statement: Statement) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self._footer_text = latin1(f"{statement.user_id} - statement {statement.period.label}")

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(FONT, size=7)
        self.cell(0, 5, f"{self._footer_text} - page {self.page_no()}/{{nb}}", align="C")


def render(statement: Statement) -> bytes:
    pdf = _StatementPdf(statement)
    pdf.set_title(latin1(f"Credit statement {statement.period.label}"))
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    _title(pdf, statement)
    _summary_table(pdf, statement)
    _usage_table(pdf, statement)
    _line_items(pdf, statement.lines)
    return bytes(pdf.output())


def latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")


def _title(pdf: FPDF, statement: Statement) -> None:
    period = statement.period
    pdf.set_font(FONT, style="B", size=16)
    pdf.cell(0, 10, f"Credit statement {period.label}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(FONT, size=10)
    for text in (
        f"User: {statement.user_id}",
        f"Period: {period.start:%Y-%m-%d} to {period.end:%Y-%m-%d} (UTC, end exclusive)",
        "1,000 credits = US$1.00. Amounts in credits; their effect on the balance is signed.",
    ):
        _text(pdf, latin1(text))
    pdf.ln(3)


def _text(pdf: FPDF, text: str, height: float = 6) -> None:
    pdf.cell(0, height, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _heading(pdf: FPDF, text: str) -> None:
    pdf.ln(2)
    pdf.set_font(FONT, style="B", size=12)
    _text(pdf, text, 8)
    pdf.set_font(FONT, size=9)


def _summary_lines(statement: Statement) -> list[tuple[str, str, int]]:
    """(item, count, signed effect on the balance) from the opening to the closing balance."""
    return [
        ("Opening balance", "", statement.opening),
        ("Purchases", str(statement.purchases.count), statement.purchases.millicredits),
        ("Usage", str(statement.usage_total.calls), -statement.usage_total.millicredits),
        ("Refunds", str(statement.refunds.count), -statement.refunds.millicredits),
        ("Adjustments", str(statement.adjustments.count), statement.adjustments.millicredits),
        ("Reversals", str(statement.reversals.count), statement.reversals.millicredits),
        ("Closing balance", "", statement.closing),
    ]


def _summary_table(pdf: FPDF, statement: Statement) -> None:
    _heading(pdf, "Summary")
    rows = [
        [item, count, credits_text(amount), str(amount)]
        for item, count, amount in _summary_lines(statement)
    ]
    _table(pdf, ["Item", "Count", "Credits", "Millicredits"], rows, (40, 15, 25, 25))
    pdf.set_font(FONT, size=8)
    _text(pdf, _money_note(statement.purchases, statement.refunds), 5)


def _money_note(purchases: Total, refunds: Total) -> str:
    return f"Paid for purchases: {_usd(purchases.cents)}; refunded: {_usd(refunds.cents)}."


def _usd(cents: int) -> str:
    return f"US${cents // 100}.{cents % 100:02d}"


def _usage_table(pdf: FPDF, statement: Statement) -> None:
    _heading(pdf, "Usage per model")
    header = ["Model", "Calls", "Input tokens", "Output tokens", "Credits"]
    rows = [_usage_cells(u) for u in (*statement.usage, statement.usage_total)]
    _table(pdf, header, rows, (40, 15, 25, 25, 25))


def _usage_cells(usage: ModelUsage) -> list[str]:
    return [
        "All models" if usage.model == ALL_MODELS else latin1(usage.model),
        str(usage.calls),
        str(usage.input_tokens),
        str(usage.output_tokens),
        credits_text(usage.millicredits),
    ]


LINE_HEADER = ("Date (UTC)", "Kind", "Model", "Amount", "Balance", "Reference", "Transaction")
LINE_WIDTHS = (26, 16, 22, 17, 17, 42, 50)
LINE_ALIGNS = ("L", "L", "L", "R", "R", "L", "L")
LINE_HEIGHT = 4.5


def _line_items(pdf: FPDF, lines: Sequence[LineItem]) -> None:
    # Plain cells rather than fpdf's table: a 500-line table takes seconds to lay out.
    _heading(pdf, f"Entries ({len(lines)})")
    pdf.set_font(FONT, size=7)
    _line_row(pdf, LINE_HEADER)
    for line in lines[:MAX_PDF_LINES]:
        if pdf.will_page_break(LINE_HEIGHT):
            pdf.add_page()
            _line_row(pdf, LINE_HEADER)
        _line_row(pdf, _line_cells(line))
    if not lines:
        _text(pdf, "No entries this month.")
    if len(lines) > MAX_PDF_LINES:
        _text(pdf, f"First {MAX_PDF_LINES} of {len(lines)} entries shown; the CSV lists all.")


def _line_row(pdf: FPDF, cells: Sequence[str]) -> None:
    for text, width, align in zip(cells, LINE_WIDTHS, LINE_ALIGNS, strict=True):
        pdf.cell(width, LINE_HEIGHT, _fit(pdf, text, width), border="B", align=align)
    pdf.ln(LINE_HEIGHT)


def _fit(pdf: FPDF, text: str, width: float) -> str:
    """The text, cut short with ".." where it would run into the next column."""
    room = width - 2 * pdf.c_margin
    if pdf.get_string_width(text) <= room:
        return text
    while text and pdf.get_string_width(text + "..") > room:
        text = text[:-1]
    return text + ".."


def _line_cells(line: LineItem) -> list[str]:
    return [
        f"{line.created_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
        line.kind,
        latin1(line.model or ""),
        credits_text(line.amount),
        credits_text(line.balance_after),
        latin1(line.reference_id),
        line.transaction_id,
    ]


def _table(pdf: FPDF, header: list[str], rows: list[list[str]], widths: tuple[int, ...]) -> None:
    """A table whose first column is text and the others figures, aligned right."""
    aligns = ("LEFT", *["RIGHT"] * (len(widths) - 1))
    with pdf.table(col_widths=widths, text_align=aligns, width=sum(widths), align="LEFT") as table:
        for cells in [header, *rows]:
            row = table.row()
            for text in cells:
                row.cell(text)
