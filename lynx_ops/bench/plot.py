# SPDX-License-Identifier: Apache-2.0
"""PNG line charts with no plotting library (the GPU machine has none and no network):
an RGB raster, Bresenham lines, a 3x5 pixel font, and a PNG encoder from zlib."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

_FONT = {  # 3x5 glyphs, rows top to bottom
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", "A": "010101111101101", "B": "110101110101110",
    "C": "011100100100011", "D": "110101101101110", "E": "111100110100111",
    "F": "111100110100100", "G": "011100101101011", "H": "101101111101101",
    "I": "111010010010111", "J": "001001001101010", "K": "101101110101101",
    "L": "100100100100111", "M": "101111111101101", "N": "110101101101101",
    "O": "010101101101010", "P": "110101110100100", "Q": "010101101110011",
    "R": "110101110101101", "S": "011100010001110", "T": "111010010010010",
    "U": "101101101101111", "V": "101101101101010", "W": "101101111111101",
    "X": "101101010101101", "Y": "101101010010010", "Z": "111001010100111",
    " ": "000000000000000", ".": "000000000000010", "-": "000000111000000",
    "/": "001001010100100", "(": "010100100100010", ")": "010001001001010",
    ":": "000010000010000", ",": "000000000010100", "%": "101001010100101",
    "=": "000111000111000", ">": "100010001010100", "_": "000000000000111",
}  # fmt: skip
COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
          (140, 86, 75), (127, 127, 127)]  # fmt: skip


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width, height
        self.px = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, color, size: int = 1) -> None:
        for dx in range(size):
            for dy in range(size):
                xx, yy = x + dx, y + dy
                if 0 <= xx < self.w and 0 <= yy < self.h:
                    i = (yy * self.w + xx) * 3
                    self.px[i : i + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color, width: int = 2) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.dot(x0, y0, color, width)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, s: str, color=(0, 0, 0), scale: int = 2) -> None:
        for ch in s.upper():
            glyph = _FONT.get(ch, _FONT[" "])
            for i, bit in enumerate(glyph):
                if bit == "1":
                    self.dot(x + (i % 3) * scale, y + (i // 3) * scale, color, scale)
            x += 4 * scale

    def save(self, path: Path) -> None:
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3 : (y + 1) * self.w * 3])
                       for y in range(self.h))  # fmt: skip

        def chunk(tag: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + tag + data
                    + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))  # fmt: skip

        png = (b"\x89PNG\r\n\x1a\n"
               + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
               + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))  # fmt: skip
        Path(path).write_bytes(png)


def line_chart(path: Path, title: str, xlabel: str, ylabel: str, xs: list,
               series: dict[str, list[float | None]]) -> Path:  # fmt: skip
    """Categorical x (equally spaced, labelled with xs), linear y from 0."""
    w, h, left, right, top, bottom = 760, 460, 80, 20, 50, 60
    c = Canvas(w, h)
    values = [v for ys in series.values() for v in ys if v is not None]
    ymax = max(values) * 1.1 if values else 1.0
    px = lambda i: left + (w - left - right) * (i / max(len(xs) - 1, 1))  # noqa: E731
    py = lambda v: h - bottom - (h - top - bottom) * (v / ymax)  # noqa: E731
    c.text(left, 12, title)
    c.line(left, h - bottom, w - right, h - bottom, (0, 0, 0), 1)
    c.line(left, top, left, h - bottom, (0, 0, 0), 1)
    for k in range(6):
        v = ymax * k / 5
        y = int(py(v))
        c.line(left - 4, y, left, y, (0, 0, 0), 1)
        c.text(4, y - 4, f"{v:.3g}")
    for i, x in enumerate(xs):
        c.line(int(px(i)), h - bottom, int(px(i)), h - bottom + 4, (0, 0, 0), 1)
        c.text(int(px(i)) - 8, h - bottom + 10, str(x))
    c.text(left + (w - left) // 2 - 40, h - 24, xlabel)
    c.text(4, top - 16, ylabel)
    for n, (label, ys) in enumerate(series.items()):
        color = COLORS[n % len(COLORS)]
        pts = [(int(px(i)), int(py(v))) for i, v in enumerate(ys) if v is not None]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
            c.line(x0, y0, x1, y1, color)
        for x, y in pts:
            c.dot(x - 3, y - 3, color, 7)
        c.dot(left + 12, top + 8 + 16 * n, color, 8)
        c.text(left + 26, top + 8 + 16 * n, label)
    c.save(path)
    return Path(path)


def plot_offline(
    rows: list[dict], ceiling: dict[int, dict[int, float]], out_dir: Path
) -> list[Path]:
    batches = [r["batch"] for r in rows]
    tpot = {"stock": [r["stock_tpot_ms_reference"] for r in rows],
            "lynx": [r["lynx_tpot_ms_median"] for r in rows]}  # fmt: skip
    for k, per_batch in sorted(ceiling.items()):
        tpot[f"ceiling {k} experts"] = [per_batch.get(b) for b in batches]
    experts = {"before (stock routing)": [r.get("lynx_experts_before") for r in rows],
               "after (lynx)": [r.get("lynx_experts_after") for r in rows],
               "uniform routing, expected": [r.get("experts_uniform_expected") for r in rows]}  # fmt: skip
    return [
        line_chart(
            out_dir / "tpot_vs_batch.png",
            "time per output token vs batch",
            "batch size",
            "ms",
            batches,
            tpot,
        ),  # fmt: skip
        line_chart(
            out_dir / "experts_vs_batch.png",
            "distinct experts per moe layer",
            "batch size",
            "experts",
            batches,
            experts,
        ),  # fmt: skip
    ]
