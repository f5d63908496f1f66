"""Training traces: loss and validation log-likelihood per epoch, as a table and a plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

__all__ = ["TrainingTrace"]


@dataclass
class TrainingTrace:
    """Collects the loss (and optionally a validation log-likelihood) per epoch from :func:`~pyro_mapa.training.fit`.

    Example:
        >>> trace = TrainingTrace(valid_ll=lambda: float(setup.learned_model().log_prob(x_val).mean()))  # doctest: +SKIP
        >>> fit(model, guide, loss, N, callback=trace)  # doctest: +SKIP
        >>> trace.to_dataframe()  # doctest: +SKIP
    """

    valid_ll: Callable[[], float] | None = None
    every: int = 1
    rows: list[dict[str, float]] = field(default_factory=list)

    def __call__(self, epoch: int, loss: float) -> bool:
        row = {"epoch": epoch, "loss": loss}
        if self.valid_ll is not None and epoch % self.every == 0:
            row["valid_ll"] = float(self.valid_ll())
        self.rows.append(row)
        return False

    def to_dataframe(self):
        """A tidy ``pandas.DataFrame``: one row per epoch, columns ``epoch, loss[, valid_ll]``."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def plot(self, ax=None):
        """Loss (left axis) and validation log-likelihood (right axis) against epoch; returns the figure."""
        import matplotlib.pyplot as plt

        df = self.to_dataframe()
        if ax is None:
            fig, ax = plt.subplots(figsize=(5, 3))
        else:
            fig = ax.figure
        ax.plot(df["epoch"], df["loss"], color="C0")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss / point", color="C0")
        if "valid_ll" in df:
            v = df.dropna(subset=["valid_ll"])
            ax2 = ax.twinx()
            ax2.plot(v["epoch"], v["valid_ll"], color="C1", marker=".")
            ax2.set_ylabel("validation LL / point", color="C1")
        fig.tight_layout()
        return fig
