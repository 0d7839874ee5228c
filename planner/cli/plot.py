"""`plan --plot FILE`: the breakdown of each method as stacked bars, the GPU's memory as a line.

What is drawn (``panels``) is pure data, computed from the plans and tested exactly; drawing
(``figure``, ``save``) imports matplotlib only when asked for, so that ``plan`` stays instant
and its only dependency stays click. One panel per model x GPU, one bar per method; a bar's
segments are the plan's components (the peak phase's breakdown, the allocator's reserve and
the CUDA context), so its top is the device-used total that ``plan`` prints.
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.plan import Plan
from planner.units import GIB

# Not part of the device totals (unified memory the driver can page out): never stacked.
OFF_DEVICE = ("optimizer/states_paged",)


class PlotError(RuntimeError):
    """The plot cannot be drawn (matplotlib missing, or a file that cannot be written)."""


@dataclass(frozen=True)
class Panel:
    """One model x GPU: the segments (bytes) of each method's bar and the GPU's memory."""

    model: str
    gpu: str
    methods: tuple[str, ...]
    keys: tuple[str, ...]  # stacking order, bottom first: the plans' component order
    segments: tuple[tuple[int, ...], ...]  # segments[i][j]: bytes of keys[i] in methods[j]
    device_used: tuple[int, ...]
    gpu_memory_bytes: int
    tokens_per_second: tuple[float | None, ...] = ()  # planned, per method (None: no time planned)

    @property
    def labels(self) -> tuple[str, ...]:
        """Each bar's label: the method and, where planned, its tokens per second."""
        speeds = self.tokens_per_second or (None,) * len(self.methods)
        return tuple(m if t is None else f"{m}\n{t:,.0f} tok/s" for m, t in zip(self.methods, speeds))

    @property
    def title(self) -> str:
        return f"{self.model} on {self.gpu}"


def _keys(plans: list[Plan]) -> tuple[str, ...]:
    """Every component that is non-zero in some plan, in first-seen order (as the table)."""
    keys: dict[str, None] = {}
    for p in plans:
        for k, v in p.components.items():
            if k not in OFF_DEVICE and any(q.components.get(k, 0) for q in plans):
                keys.setdefault(k)
    return tuple(keys)


def panels(plans: list[Plan]) -> list[Panel]:
    """Group plans by model x GPU (in the order given) into the panels of the plot."""
    groups: dict[tuple[str, str], list[Plan]] = {}
    for p in plans:
        groups.setdefault((p.model, p.gpu), []).append(p)
    out = []
    for (model, gpu), group in groups.items():
        keys = _keys(group)
        segments = tuple(tuple(p.components.get(k, 0) for p in group) for k in keys)
        used = tuple(p.device_used_bytes for p in group)
        for j, total in enumerate(used):
            stacked = sum(row[j] for row in segments)
            if stacked != total:  # the bars must add up to what `plan` prints
                raise PlotError(f"{model} {group[j].method}: components sum to {stacked} bytes, "
                                f"device used is {total}")
        out.append(Panel(model, gpu, tuple(p.method for p in group), keys, segments, used,
                         group[0].gpu_memory_bytes, tuple(p.tokens_per_second for p in group)))
    return out


def _colours(keys: tuple[str, ...]) -> dict[str, tuple]:
    """A distinct colour per component, in stacking order (tab20, then tab20b)."""
    from matplotlib import colormaps

    palette = [colormaps["tab20"](i) for i in range(20)] + [colormaps["tab20b"](i) for i in range(20)]
    return {k: palette[i % len(palette)] for i, k in enumerate(keys)}


def figure(plans: list[Plan]):
    """A matplotlib Figure with one stacked-bar panel per model x GPU (sizes in GiB)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install 'ftmem[plot]' (or pip install matplotlib)") from None
    drawn = panels(plans)
    all_keys = tuple(dict.fromkeys(k for p in drawn for k in p.keys))
    colours = _colours(all_keys)
    fig, axes = plt.subplots(1, len(drawn), figsize=(2.0 + 1.3 * sum(len(p.methods) for p in drawn), 5.5),
                             squeeze=False)
    for ax, panel in zip(axes[0], drawn):
        x = range(len(panel.methods))
        bottom = [0.0] * len(panel.methods)
        for key, row in zip(panel.keys, panel.segments):
            heights = [b / GIB for b in row]
            ax.bar(x, heights, bottom=bottom, color=colours[key], label=key, width=0.7)
            bottom = [a + h for a, h in zip(bottom, heights)]
        gpu_gib = panel.gpu_memory_bytes / GIB
        ax.axhline(gpu_gib, color="black", linestyle="--", linewidth=1.2, label="GPU memory")
        ax.text(0.99, gpu_gib, f"{panel.gpu} {gpu_gib:.1f} GiB", transform=ax.get_yaxis_transform(),
                ha="right", va="bottom", fontsize=8)
        for j, used in enumerate(panel.device_used):
            ax.annotate(f"{used / GIB:.1f}", (j, used / GIB), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(x), panel.labels, rotation=30, fontsize=8)
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel("GiB (device used, as nvidia-smi)")
    handles, labels = {}, []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels][::-1], labels[::-1], loc="center left",
               bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def save(plans: list[Plan], path: str) -> None:
    """Draw the plans and write the figure; the format follows the extension (.png, .svg, .pdf)."""
    fig = figure(plans)
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    except (OSError, ValueError) as exc:
        raise PlotError(f"cannot write the plot to {path}: {exc}") from None
    finally:
        plt.close(fig)
