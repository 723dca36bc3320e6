"""Certificates (证书) of CQCER uses as a small, valid PDF 1.4 written here: one A4 page, text in
Helvetica and in Adobe's predefined Chinese font STSong-Light (UniGB-UCS2-H, which every PDF
reader provides, so nothing is embedded), and a QR code drawn as vector squares that opens the
public verification page listing the serial ranges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import qrcode

__all__ = ["Certificate", "qr_matrix", "render_pdf"]

TITLES = {
    "neutrality": ("碳中和证书", "Carbon Neutrality Certificate"),
    "judicial": ("司法认购证明", "Judicial Purchase Certificate"),
    "public_good": ("公益注销证书", "Public-Good Cancellation Certificate"),
    "donation": ("捐赠证书", "Donation Certificate"),
}


@dataclass(frozen=True, slots=True)
class Certificate:
    kind: str
    number: str
    holder: str
    quantity: int
    issued_on: str
    lines: Sequence[tuple[str, str]]
    serials: Sequence[str]
    verify_url: str


def qr_matrix(data: str) -> list[list[bool]]:
    """The QR code's modules (with a 2-module quiet zone), row 0 at the top."""
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=1, border=2)
    qr.add_data(data)
    qr.make(fit=True)
    return [list(row) for row in qr.get_matrix()]


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _text(x: float, y: float, size: float, s: str) -> str:
    """Runs of ASCII in Helvetica, everything else in STSong-Light (UCS-2, BMP only)."""
    out: list[str] = []
    i = 0
    while i < len(s):
        ascii_run = s[i].isascii()
        j = i
        while j < len(s) and s[j].isascii() == ascii_run:
            j += 1
        run = s[i:j]
        if ascii_run:
            out.append(f"BT /F1 {size} Tf {x:.1f} {y:.1f} Td ({_escape(run)}) Tj ET")
            x += 0.52 * size * len(run)
        else:
            hexed = "".join(f"{ord(c):04X}" if ord(c) <= 0xFFFF else "FF1F" for c in run)
            out.append(f"BT /F2 {size} Tf {x:.1f} {y:.1f} Td <{hexed}> Tj ET")
            x += size * len(run)
        i = j
    return "\n".join(out)


def _qr(x: float, y: float, size: float, matrix: list[list[bool]]) -> str:
    m = size / len(matrix)
    rects = [f"{x + c * m:.2f} {y + size - (r + 1) * m:.2f} {m:.2f} {m:.2f} re"
             for r, row in enumerate(matrix) for c, dark in enumerate(row) if dark]
    return "0 0 0 rg\n" + "\n".join(rects) + "\nf"


def _content(c: Certificate) -> str:
    zh, en = TITLES[c.kind]
    parts = [
        "0.1 0.35 0.2 RG 2 w 30 30 535 782 re S",
        _text(60 + (475 - 26 * len(zh)) / 2, 760, 26, zh),
        _text(60 + (475 - 0.52 * 12 * len(en)) / 2, 735, 12, en),
        _text(60, 700, 11, f"证书编号 No. {c.number}"),
        _text(60, 680, 11, f"签发日期 Date {c.issued_on}"),
        _text(60, 650, 13, f"持有人 Holder: {c.holder}"),
        _text(60, 628, 13, f"数量 Quantity: {c.quantity} tCO2e (CQCER)"),
    ]
    y = 606.0
    for label, value in c.lines:
        parts.append(_text(60, y, 12, f"{label}: {value}"))
        y -= 22
    y -= 8
    parts.append(_text(60, y, 12, "序列号 Serial ranges:"))
    y -= 18
    shown = list(c.serials[:20])
    for s in shown:
        parts.append(_text(72, y, 10, s))
        y -= 15
    if len(c.serials) > len(shown):
        parts.append(_text(72, y, 10, f"... {len(c.serials) - len(shown)} more, see the page"))
    parts.append(_qr(60, 60, 120, qr_matrix(c.verify_url)))
    parts.append(_text(200, 140, 11, "扫码核验 Scan to verify:"))
    parts.append(_text(200, 120, 8, c.verify_url))
    parts.append(_text(200, 80, 10, "重庆市\u201c碳惠通\u201d温室气体自愿减排管理系统"))
    return "\n".join(parts)


def render_pdf(c: Certificate) -> bytes:
    """The certificate as a PDF file (bytes)."""
    content = _content(c).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R /F2 5 0 R >> >> /Contents 8 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type0 /BaseFont /STSong-Light /Encoding /UniGB-UCS2-H "
        b"/DescendantFonts [6 0 R] >>",
        b"<< /Type /Font /Subtype /CIDFontType0 /BaseFont /STSong-Light "
        b"/CIDSystemInfo << /Registry (Adobe) /Ordering (GB1) /Supplement 2 >> "
        b"/FontDescriptor 7 0 R /DW 1000 >>",
        b"<< /Type /FontDescriptor /FontName /STSong-Light /Flags 6 "
        b"/FontBBox [-25 -254 1000 880] /ItalicAngle 0 /Ascent 880 /Descent -120 "
        b"/CapHeight 880 /StemV 93 >>",
        b"<< /Length " + str(len(content)).encode() + b" >>\nstream\n" + content
        + b"\nendstream",
        b"<< /Title (" + _escape(c.number).encode("latin-1") + b") /Producer (tanhui) >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n".encode() + b"0000000000 65535 f \n"
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {len(objects)} 0 R >>\n"
            f"startxref\n{xref}\n%%EOF\n").encode()
    return bytes(out)
