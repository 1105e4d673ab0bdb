"""Loan outcomes whose rule changes between two periods: the data the demo's loop has to learn from.

Period 1: whether a loan is repaid depends on the debt ratio (above 0.55 defaults).
Period 2: incomes rose (the inputs drift) and the rule changed: now income decides (below 72 defaults)
and the debt ratio no longer matters. A model of period 1 is right about half the time on period 2;
one trained on period 2 is right about as often as the 4% label noise allows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FEATURES = ["income", "debt_ratio", "years_employed"]
TARGET = "outcome"
NOISE = 0.04


def period(which: int, rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    income = np.clip(rng.normal(50.0 if which == 1 else 75.0, 12.0, rows), 5.0, 200.0).round(2)
    debt = rng.uniform(0.0, 1.0, rows).round(4)
    years = rng.integers(0, 31, rows)
    defaulted = debt > 0.55 if which == 1 else income < 72.0
    defaulted ^= rng.uniform(size=rows) < NOISE
    return pd.DataFrame({"income": income, "debt_ratio": debt, "years_employed": years,
                         TARGET: np.where(defaulted, "defaulted", "repaid")})


def accuracy(predictions: list, labels: list) -> float:
    return float(np.mean([p == y for p, y in zip(predictions, labels)])) if labels else float("nan")
