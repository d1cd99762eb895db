"""Fit pictures (PNG), built on the Agg canvas directly, never ``pyplot``: no global state, no display."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from chinchax.errors import ScalingError
from scaling.fit import Bootstrap, FitReport, FitWarning, PowerLawFit, fit_isoflop
from scaling.laws import Law, ParametricLaw, PowerLawAllocation, get_law

# One loss unit everywhere: eval cross-entropy in nats per token (a byte-level token is a byte).
LOSS_UNIT = "nats per token"
PUBLISHED_FOR_COMPARISON = ("chinchilla", "epoch-2024", "chinchilla-approach1", "chinchilla-approach2")
# Coefficients whose bootstrap distributions are log-normal-like (long right tails).
LOG_SCALE_QUANTITIES = ("A", "B", "n_coef", "d_coef", "n_opt", "tokens_opt")
LABELS = {"E": "E", "A": "A", "B": "B", "alpha": "α", "beta": "β", "gamma": "γ", "a": "a",
          "b": "b", "n_coef": "N coefficient", "d_coef": "D coefficient", "n_opt": "N_opt(C*)",
          "tokens_opt": "D_opt(C*)", "loss_opt": "L(C*)"}


def new_figure(width: float, height: float) -> Figure:
    # Margins are set by hand per plot: matplotlib's layout engines double the drawing time.
    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def plot_isoflops(profiles_fit: PowerLawFit, path: str | Path, law: Law | None = None) -> Path:
    """A parametric ``law``'s own isoFLOP curves are drawn dotted: where approach 3 and the parabolas part."""
    figure = new_figure(7.5, 5.0)
    axes = figure.add_subplot()
    colours = colours_for(len(profiles_fit.profiles))
    for colour, profile in zip(colours, profiles_fit.profiles):
        x = np.log(profile.n_params)
        span = np.linspace(min(x.min(), np.log(profile.n_opt)) - 0.2,
                           max(x.max(), np.log(profile.n_opt)) + 0.2, 100)
        axes.scatter(profile.n_params, profile.loss, color=colour, s=18)
        axes.plot(np.exp(span), np.polyval(profile.coefficients, span), color=colour,
                  label=f"{profile.exact_flops:.2g} FLOPs (exact counter)"
                  if np.isfinite(profile.exact_flops) else f"{profile.flops:.2g} FLOPs (6ND)")
        axes.scatter([profile.n_opt], [profile.loss_opt], color=colour, marker="*", s=120,
                     edgecolor="black", linewidth=0.5, zorder=3)
        if isinstance(law, ParametricLaw):
            sizes = np.exp(span)
            axes.plot(sizes, law.loss(sizes, profile.flops / (6.0 * sizes)), color=colour,
                      linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.set_xlabel("parameters N")
    axes.set_ylabel(f"eval loss ({LOSS_UNIT})")
    axes.set_title("isoFLOP profiles: parabolas in log N (stars: minima; dotted: parametric law)")
    axes.legend(fontsize=7, ncols=2)
    figure.subplots_adjust(left=0.09, right=0.98, bottom=0.1, top=0.93)
    return save_figure(figure, path)


def colours_for(count: int, high: float = 0.9) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(v) for v in np.linspace(0.05, high, max(count, 1))]


def _frontier_band(report: FitReport, flops: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Pointwise bootstrap percentile band of N_opt(C), or None without a bootstrap."""
    boot = report.bootstrap
    if boot is None or boot.samples.shape[0] < 2:
        return None
    rows = []
    if isinstance(report.law, ParametricLaw):
        for sample in report.law.sample_laws():
            if sample.beta > sample.gamma and sample.alpha > 0:
                rows.append(sample.optimal_params(flops))
    else:
        for a, n_coef in zip(boot.column("a"), boot.column("n_coef")):
            rows.append(n_coef * flops**a)
    if len(rows) < 2:
        return None
    tail = 50.0 * (1.0 - boot.confidence)
    low, high = np.nanpercentile(np.array(rows), [tail, 100.0 - tail], axis=0)
    return low, high


def plot_frontier(report: FitReport, path: str | Path,
                  published: Sequence[str] = PUBLISHED_FOR_COMPARISON,
                  points: PowerLawFit | None = None) -> Path:
    """``N_opt(C)`` and ``D_opt(C)`` of the fit, its bootstrap band, and published laws."""
    compute = report.observations.compute
    flops = np.geomspace(compute.min() / 3.0, max(compute.max(), report.target_flops) * 3.0, 200)
    figure = new_figure(11.0, 4.5)
    ax_n, ax_d = figure.subplots(1, 2)
    law = report.law
    n_fit = np.array([law.optimal_params(c) for c in flops])
    ax_n.plot(flops, n_fit, color="black", linewidth=2, label=f"this fit (approach {report.approach})")
    ax_d.plot(flops, flops / (6.0 * n_fit), color="black", linewidth=2, label="this fit")
    band = _frontier_band(report, flops)
    if band is not None:
        low, high = band
        share = f"{report.bootstrap.confidence:.0%} bootstrap band" if report.bootstrap else ""
        ax_n.fill_between(flops, low, high, color="black", alpha=0.15, label=share)
        ax_d.fill_between(flops, flops / (6.0 * high), flops / (6.0 * low), color="black", alpha=0.15)
    for name, style in zip(published, ("--", "-.", ":", (0, (5, 1)))):
        other = get_law(name)
        n_other = np.array([other.optimal_params(c) for c in flops])
        ax_n.plot(flops, n_other, linestyle=style, linewidth=1.2, label=name)
        ax_d.plot(flops, flops / (6.0 * n_other), linestyle=style, linewidth=1.2, label=name)
    if points is not None:
        marker = "o" if points.approach == 2 else "."
        label = "isoFLOP minima" if points.approach == 2 else "envelope"
        ax_n.scatter(points.flops, points.n_opt, color="crimson", marker=marker, s=20, zorder=3,
                     label=label)
        ax_d.scatter(points.flops, points.flops / (6.0 * points.n_opt), color="crimson",
                     marker=marker, s=20, zorder=3, label=label)
    ax_n.axvline(report.target_flops, color="grey", linewidth=0.8, label="target C*")
    ax_d.axvline(report.target_flops, color="grey", linewidth=0.8, label="target C*")
    for axes, what in ((ax_n, "N_opt (parameters)"), (ax_d, "D_opt (tokens)")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("training compute C = 6ND (FLOPs; the published laws' convention)")
        axes.set_ylabel(what)
        axes.legend(fontsize=7)
    ax_n.set_title(f"N_opt ∝ C^{report.estimates['a']:.3f}")
    ax_d.set_title(f"D_opt ∝ C^{report.estimates['b']:.3f}")
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.92, wspace=0.22)
    return save_figure(figure, path)


def plot_residuals(report: FitReport, path: str | Path, points: PowerLawFit | None = None) -> Path:
    """Relative loss residuals against N and D (parametric laws) or log residuals of N_opt."""
    figure = new_figure(11.0, 4.0)
    law = report.law
    if isinstance(law, ParametricLaw):
        obs = report.observations
        predicted = np.asarray(law.loss(obs.n_params, obs.tokens))
        relative = (obs.loss - predicted) / predicted
        panels = figure.subplots(1, 2)
        for axes, values, label in zip(panels, (obs.n_params, obs.tokens),
                                       ("parameters N", "tokens D")):
            dots = axes.scatter(values, relative, c=np.log10(obs.compute), s=10, cmap="viridis")
            axes.axhline(0.0, color="black", linewidth=0.8)
            axes.set_xscale("log")
            axes.set_xlabel(label)
            axes.set_ylabel("(L - L̂) / L̂")
        figure.subplots_adjust(left=0.07, right=0.9, bottom=0.13, top=0.9, wspace=0.25)
        figure.colorbar(dots, ax=list(panels), label="log10 C", fraction=0.03, pad=0.02)
        figure.suptitle(f"residuals of the fit: mean |L - L̂| / L = "
                        f"{np.mean(np.abs(obs.loss - predicted) / obs.loss):.3%}")
    else:
        fit = points if points is not None else report.detail
        assert isinstance(fit, PowerLawFit) and isinstance(law, PowerLawAllocation)
        axes = figure.add_subplot()
        ratio = np.log(fit.n_opt / (law.n_coef * fit.flops**law.a))
        axes.scatter(fit.flops, ratio, s=12, color="crimson")
        axes.axhline(0.0, color="black", linewidth=0.8)
        axes.set_xscale("log")
        axes.set_xlabel("training compute C (FLOPs)")
        axes.set_ylabel("ln(N_opt / fitted N_opt)")
        axes.set_title("residuals of the N_opt(C) power law")
        figure.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.9)
    return save_figure(figure, path)


def plot_bootstrap(boot: Bootstrap, path: str | Path, estimates: dict[str, float] | None = None) -> Path:
    names = [n for n in boot.names
             if np.isfinite(boot.column(n)).any() and np.ptp(boot.column(n)[np.isfinite(boot.column(n))]) > 0]
    columns = 4
    rows = max(1, -(-len(names) // columns))
    figure = new_figure(3.0 * columns, 2.4 * rows)
    grid = figure.subplots(rows, columns, squeeze=False)
    tail = 50.0 * (1.0 - boot.confidence)
    for axes, name in zip(grid.flat, names):
        values = boot.column(name)
        values = values[np.isfinite(values)]
        # Skewed quantities (A, B, N_opt...) are drawn as log10 on a linear axis: a poorly
        # constrained fit can put replicates 80 decades apart, beyond matplotlib's log ticks.
        skewed = name in LOG_SCALE_QUANTITIES and values.min() > 0
        shown = np.log10(values) if skewed else values
        axes.hist(shown, bins=40, color="steelblue", alpha=0.8)
        low, high = np.percentile(shown, [tail, 100.0 - tail])
        axes.axvline(low, color="black", linestyle="--", linewidth=0.8)
        axes.axvline(high, color="black", linestyle="--", linewidth=0.8)
        if estimates and name in estimates and (not skewed or estimates[name] > 0):
            axes.axvline(np.log10(estimates[name]) if skewed else estimates[name],
                         color="crimson", linewidth=1.2)
        label = LABELS.get(name, name)
        axes.set_title(f"log10 {label}" if skewed else label, fontsize=9)
        axes.tick_params(labelsize=7)
    for axes in list(grid.flat)[len(names):]:
        axes.set_visible(False)
    figure.suptitle(f"bootstrap over runs: {boot.samples.shape[0]} refits, "
                    f"{boot.confidence:.0%} intervals dashed, estimate red")
    figure.subplots_adjust(left=0.05, right=0.98, bottom=0.08, top=1.0 - 0.6 / figure.get_figheight(),
                           wspace=0.3, hspace=0.5)
    return save_figure(figure, path)


def write_plots(report: FitReport, out_dir: str | Path) -> list[Path]:
    """For approaches 1 and 3 the isoFLOP parabolas are fitted on the side when the data allow it."""
    out = Path(out_dir)
    written: list[Path] = []
    profiles: PowerLawFit | None = report.detail if isinstance(report.detail, PowerLawFit) else None
    isoflop = profiles if profiles is not None and profiles.approach == 2 else None
    if isoflop is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FitWarning)
                isoflop = fit_isoflop(report.observations, report.config, emit_warnings=False)
        except ScalingError:
            isoflop = None
    if isoflop is not None:
        written.append(plot_isoflops(isoflop, out / "isoflops.png", law=report.law))
    written.append(plot_frontier(report, out / "frontier.png", points=profiles or isoflop))
    written.append(plot_residuals(report, out / "residuals.png", points=profiles))
    if report.bootstrap is not None and report.bootstrap.samples.shape[0] > 1:
        written.append(plot_bootstrap(report.bootstrap, out / "bootstrap.png", report.estimates))
    return written
