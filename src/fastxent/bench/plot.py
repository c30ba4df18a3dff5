"""The bandwidth plot: effective GB/s against the number of classes, one line per system."""

from __future__ import annotations

from fastxent.bench.workloads import DISPLAY, PEERS

_STYLES = {"roofline": {"color": "black", "linestyle": "--", "marker": ""},
           "fastxent": {"color": "tab:red", "linewidth": 2.5, "marker": "o"},
           "numpy": {"color": "tab:blue", "marker": "s"},
           "sklearn": {"color": "tab:orange", "marker": "^"},
           "torch": {"color": "tab:green", "marker": "v"},
           "jax": {"color": "tab:purple", "marker": "D"}}


def write_plot(points: list, path: str, title: str) -> bool:
    """Write the plot as a PNG with Matplotlib's Agg canvas (no pyplot state).

    Parameters
    ----------
    points : list of dict
        ``{"classes": C, "gbps": {system: GB/s}}`` per number of classes.
    path : str
    title : str

    Returns
    -------
    bool
        False when Matplotlib is not installed (nothing written).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(7.5, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for system in ["roofline", "fastxent", *PEERS]:
        xs = [pt["classes"] for pt in points if system in pt["gbps"]]
        ys = [pt["gbps"][system] for pt in points if system in pt["gbps"]]
        if xs:
            ax.plot(xs, ys, label=DISPLAY[system], **_STYLES[system])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of classes C (rows = logits bytes / (4 C))")
    ax.set_ylabel("effective bandwidth, GB/s\n(logits read + gradient written) / time")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return True
