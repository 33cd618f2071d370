"""The Train widget's live loss plot: a small Qt widget, drawn with QPainter (no plotting
library), fed from the training thread through a Qt signal (queued onto the GUI thread)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt, Signal
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget


class LossPlot(QWidget):
    """Training progress: the loss per pixel after each iteration (the squared error on the
    [0, 255] scale; with SURE its estimate on the training pixels, which the optimiser fits;
    with Noise2Noise against the noisy targets) and, in the caption, the PSNR estimated by
    the run's judge (held-out pixels, or SURE's twin run) at the last checkpoint (what picks the
    result), phases (greedy stages, joint)
    marked by a change of colour. The vertical scale leaves out the first iteration (the
    plain initialisation's loss, often several times the rest); points above it are drawn at
    the top edge.

    :meth:`add_step` may be called from any thread (the training worker's)."""

    # phase, iteration, total, loss, psnr, the held-out (validation) estimate
    step_added = Signal(str, int, int, float, float, float)
    COLOURS = ("#4e9ad6", "#e8a33d", "#6cbf6c", "#d65f5f", "#a07fd1", "#c9c95c")

    def __init__(self, parent=None):
        super().__init__(parent)
        self.points: list[tuple[str, int, float]] = []  # (phase, iteration, loss per pixel)
        self.total = 0
        self.caption = "training loss: no run yet"
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("the training loss per pixel after each iteration (with SURE its "
                        "estimate); colours mark the greedy stages and the joint phase")
        self.step_added.connect(self._add, Qt.ConnectionType.QueuedConnection)

    def clear(self, total=0):
        self.points, self.total = [], int(total)
        self.caption = "training loss: starting..."
        self.update()

    def add_step(self, step):
        """Record a :class:`skimage_trd.train.TrainingStep` (thread-safe)."""
        try:
            self.step_added.emit(str(step.phase), int(step.iteration), int(step.total),
                                 float(step.loss), float(step.psnr),
                                 float(getattr(step, "validation", math.nan)))
        except RuntimeError:  # the widget was closed (and deleted) while training ran on
            pass

    def _add(self, phase, iteration, total, loss, psnr, validation=math.nan):
        self.points.append((phase, iteration, loss))
        self.total = max(self.total, total)
        as_psnr = f" ({psnr:.2f} dB)" if loss > 0 and math.isfinite(psnr) else ""
        # (SURE's own PSNR is the optimiser's fitted figure and comes as NaN: the judge's
        # estimate is the one that tells)
        held = f", estimated {validation:.2f} dB" if math.isfinite(validation) else ""
        self.caption = (f"{phase}: iteration {iteration}/{total}, loss/px {loss:.4g}{as_psnr}"
                        f"{held}")
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        text_h = painter.fontMetrics().height() + 4
        left, right, top, bottom = 6, w - 6, 4, h - text_h - 2
        painter.setPen(QPen(QColor("#888888")))
        painter.drawRect(left, top, right - left, bottom - top)
        painter.drawText(left, h - 4, self.caption)
        finite = [p for p in self.points if math.isfinite(p[2])]
        if finite and bottom - top > 4:
            scaled = finite[1:] if len(finite) > 2 else finite
            lo = min(p[2] for p in scaled)
            hi = max(p[2] for p in scaled)
            if hi - lo <= 1e-9 * max(abs(hi), 1.0):
                lo, hi = lo - 0.5, hi + 0.5
            n = max(self.total, finite[-1][1], 2)
            painter.drawText(left + 4, top + painter.fontMetrics().ascent() + 2,
                             f"loss/px {hi:.4g}")
            painter.drawText(left + 4, bottom - 4, f"{lo:.4g}")

            def at(iteration, value):
                x = left + (right - left) * (iteration - 1) / max(n - 1, 1)
                y = bottom - (bottom - top) * (min(value, hi) - lo) / (hi - lo)
                return QPointF(x, y)

            phases = list(dict.fromkeys(p[0] for p in finite))
            for k, phase in enumerate(phases):
                pts = [at(i, v) for ph, i, v in finite if ph == phase]
                painter.setPen(QPen(QColor(self.COLOURS[k % len(self.COLOURS)]), 2))
                if len(pts) == 1:
                    painter.drawEllipse(pts[0], 2, 2)
                else:
                    painter.drawPolyline(QPolygonF(pts))
        painter.end()
