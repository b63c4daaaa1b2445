"""The printed table of one run, and whether other processes made its figures unreliable."""

from __future__ import annotations

from typing import Any

__all__ = ["BUSY_LOAD", "BUSY_OTHERS", "format_number", "format_stats", "format_table", "was_busy"]

#: Where /proc cannot tell what other processes used: a 1-minute load average at the start at or above this means
#: other processes were running, so the figures are unreliable. (The average lags by minutes, so it also counts a
#: benchmark that has just ended; ``other_cpu_load`` does not.)
BUSY_LOAD = 1.0
#: Other processes keeping this many cores busy on average during the run (``other_cpu_load``) make it unreliable.
BUSY_OTHERS = 0.25


def format_number(value: float) -> str:
    """Three significant figures, or whole numbers with thousands separators from 100 up."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def format_stats(stats: dict[str, Any] | None) -> str:
    """``median [min-max]``."""
    if not stats:
        return "-"
    return f"{format_number(stats['median'])} [{format_number(stats['min'])}-{format_number(stats['max'])}]"


def was_busy(machine: dict[str, Any]) -> bool:
    """Whether other processes ran during a run: by the CPU time they used while it ran (Linux), else by the
    load average at the start and, beyond what the benchmark's own threads account for, at the end."""
    if machine.get("other_cpu_load") is not None:
        return machine["other_cpu_load"] >= BUSY_OTHERS
    start, end = machine.get("load_average_at_start"), machine.get("load_average")
    return bool(start and start[0] >= BUSY_LOAD) or bool(end and end[0] >= machine["usable_cores"] + BUSY_LOAD)


def format_table(result: dict[str, Any]) -> str:
    """The printed table: one row per measurement."""
    m = result["machine"]
    lines = [
        f"resnet bench -- backend {result['backend']} ({result['fast_path']}), "
        f"{', '.join(f'{k} {v}' for k, v in m.get('versions', {}).items())}",
        f"{m['cpu']}, {m['usable_cores']} usable cores, load average {m['load_average_at_start']} at start, "
        f"{m['load_average']} at end, other processes {m.get('other_cpu_load')} cores"
        + ("  [--quick: tiny sizes; the numbers mean nothing]" * result["quick"]),
        "",
    ]
    if was_busy(m):
        lines[-1:-1] = [
            "WARNING: other processes were running ("
            + (
                f"they kept {m['other_cpu_load']} cores busy"
                if m.get("other_cpu_load") is not None
                else f"load average {m['load_average_at_start'][0]} at the start"
            )
            + "), so these numbers are unreliable."
        ]
    header = ("measurement", "unit", "ours median [min-max]", "reference median [min-max]", "ours/ref", "%peak", "note")
    rows = [header]
    for e in result["measurements"]:
        if e["status"] != "ok":
            rows.append((e["name"], "", e["status"].upper(), "", "", "", e["reason"].splitlines()[0][:100]))
            continue
        ratio = f"{e['ratio']:.2f}x" if e.get("ratio") is not None else "n/c"
        peak = e.get("peak_fraction", {}).get("ours")
        note = e.get("note") or e.get("reference_is", "")
        rows.append(
            (
                e["name"],
                e["unit"],
                format_stats(e["ours"]),
                format_stats(e.get("reference")),
                ratio,
                f"{100 * peak:.0f}%" if peak is not None else "",
                note,
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    lines.append("")
    lines.append(
        "ours/ref: ratio of the medians, > 1 means ours is faster; n/c: no comparable reference. "
        "Throughputs per second except import times (s)."
    )
    return "\n".join(lines)
