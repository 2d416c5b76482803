"""The accuracies the paper reports, transcribed from its Tables 1 and 2 (test accuracy in %,
mean of five runs). Shown beside a preset sweep's own numbers, never mixed with them.

Methods carry missmod's names: Lower Bound → `lower_bound`, HGR maximal correlation → `hgr`,
ZP → `zero_padding`, AE1/AE2 → `ae1`/`ae2`, Ours → `mle`. Modalities carry the paper's roles,
`visual` and `audio`; a preset maps them onto the dataset's two modalities.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PaperTable:
    name: str
    title: str
    dataset: str  # where the paper measured these
    setting: str  # how, in a few words
    # (method, fusion or None, features or None, missing role, missing rate) → accuracy in %.
    # fusion None: the paper does not say which fusion that table used.
    values: dict[tuple[str, str | None, str | None, str, float], float] = field(repr=False)

    def lookup(self, method: str, fusion: str, features: str | None, role: str, rate: float) -> float | None:
        """The reported accuracy (%) for this setting, or None where the paper has none."""
        for key_fusion in (fusion, None):
            value = self.values.get((method, key_fusion, features, role, round(rate, 4)))
            if value is not None:
                return value
        return None


def _table(rows, rates: tuple[float, ...]) -> dict:
    """Rows as printed: (method, fusion, features, visual-missing values, audio-missing values)."""
    values = {}
    for method, fusion, features, visual, audio in rows:
        for role, numbers in (("visual", visual), ("audio", audio)):
            assert len(numbers) == len(rates)
            for rate, number in zip(rates, numbers):
                values[(method, fusion, features, role, rate)] = number
    return values


TABLE_1 = PaperTable(
    name="table1",
    title="Table 1",
    dataset="eNTERFACE'05",
    setting="ResNet-50 backbones trained end to end on the video segments",
    values=_table(
        [
            ("lower_bound", "add", None, (46.91, 35.26, 26.39), (50.93, 35.26, 27.53)),
            ("lower_bound", "concat", None, (46.49, 36.39, 27.11), (46.29, 33.71, 27.84)),
            ("lower_bound", "outer", None, (42.78, 37.53, 26.91), (48.14, 34.95, 28.56)),
            ("hgr", "add", None, (58.97, 59.69, 41.34), (77.32, 74.12, 54.95)),
            ("hgr", "concat", None, (63.51, 57.84, 41.34), (79.18, 75.67, 57.42)),
            ("hgr", "outer", None, (64.64, 59.69, 49.90), (77.94, 76.29, 55.46)),
            ("zero_padding", "add", None, (69.07, 67.84, 58.66), (80.41, 78.35, 76.49)),
            ("zero_padding", "concat", None, (68.76, 67.11, 60.21), (80.93, 78.25, 76.70)),
            ("mle", "add", None, (72.37, 71.65, 66.29), (81.24, 80.31, 79.38)),
            ("mle", "concat", None, (72.27, 70.82, 64.74), (81.24, 80.21, 79.79)),
            ("mle", "outer", None, (72.06, 71.13, 66.08), (81.65, 81.03, 80.31)),
        ],
        rates=(0.8, 0.9, 0.95),
    ),
)

TABLE_2 = PaperTable(
    name="table2",
    title="Table 2",
    dataset="RAVDESS",
    setting="features of pre-trained VGG-16 / ResNet-34 / ResNet-50; the fusion is not stated",
    values=_table(
        [
            ("ae1", None, "vgg16", (62.66, 57.92, 48.67), (69.48, 68.67, 66.59)),
            ("ae2", None, "vgg16", (66.24, 58.15, 48.90), (70.64, 69.48, 66.59)),
            ("mle", None, "vgg16", (78.84, 61.16, 49.71), (91.45, 89.36, 87.51)),
            ("ae1", None, "resnet34", (60.92, 53.64, 47.17), (67.40, 62.66, 62.43)),
            ("ae2", None, "resnet34", (62.31, 54.10, 49.60), (68.67, 63.47, 62.77)),
            ("mle", None, "resnet34", (80.46, 64.62, 52.37), (92.14, 90.06, 86.59)),
            ("ae1", None, "resnet50", (67.05, 60.12, 54.45), (72.60, 70.40, 68.32)),
            ("ae2", None, "resnet50", (69.13, 61.16, 50.64), (73.76, 70.06, 66.94)),
            ("mle", None, "resnet50", (84.05, 68.90, 57.11), (91.91, 89.48, 88.79)),
        ],
        rates=(0.5, 0.8, 0.9),
    ),
)

PAPER_TABLES = {table.name: table for table in (TABLE_1, TABLE_2)}
