"""Ratio tables of benchmark rows: each row against its group's baseline, measured in the same
run (the suites print them at the end; the GPU suite writes them to markdown).

A row is a dict with at least ``group``, ``name`` and the ``extra_info`` fields that
``run_bench`` (bench/conftest.py) writes: ``provider``, ``wall_ms``, ``cpu_ms``,
``peak_extra_mib``, ``baseline`` (true for the row the others are compared with), and where
they apply ``tflops``, ``gbps``, ``pct_of_peak_flops``, ``deterministic``; rows of providers
from elsewhere (the loss suite) also ``version``, ``path``, ``settings``, ``kl``, ``quantity``
and ``value_rel_err_fp64``, listed under the table once per provider.
"""

from __future__ import annotations

from collections import defaultdict


def _time_ms(row: dict, cuda: bool) -> float:
    return row["wall_ms"] if cuda else row["cpu_ms"]


def _fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def ratio_table(rows: list[dict]) -> str:
    """Markdown: per group, each provider's time and extra memory and their ratios to the
    group's baseline. Time is wall time on CUDA, process CPU time on the CPU."""
    cuda = any("CPU" not in str(r.get("device", "CPU")) for r in rows)
    clock = "wall ms" if cuda else "CPU ms"
    lines = [
        f"| group | provider | {clock} | x baseline | extra MiB | x baseline | TF/s | GB/s | "
        "% peak | deterministic |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["group"]].append(row)
    for group, members in groups.items():
        base = next((r for r in members if r.get("baseline")), None)
        for r in members:
            t = _time_ms(r, cuda)
            t_ratio = t / _time_ms(base, cuda) if base else None
            mem, base_mem = r.get("peak_extra_mib"), base and base.get("peak_extra_mib")
            m_ratio = mem / base_mem if mem is not None and base_mem else None
            pct = r.get("pct_of_peak_flops", r.get("pct_of_peak_bandwidth"))
            version = f" {r['version']}" if r.get("version") else ""
            lines.append(
                f"| {group} | {r['provider']}{version}{' (baseline)' if r is base else ''} | "
                f"{t:.4g} | "
                f"{_fmt(t_ratio)} | {_fmt(mem, '.1f')} | {_fmt(m_ratio)} | "
                f"{_fmt(r.get('tflops'))} | {_fmt(r.get('gbps'))} | {_fmt(pct)} | "
                f"{_fmt(r.get('deterministic'), '')} |"
            )
    return "\n".join(lines + provider_notes(rows))


def provider_notes(rows: list[dict]) -> list[str]:
    """One line per provider that records its code path: path, settings, KL, quantity and the
    largest relative error of its loss against float64 over the rows."""
    notes: dict[str, dict] = {}
    for r in rows:
        if r.get("path"):
            note = notes.setdefault(r["provider"], dict(r, err=0.0))
            note["err"] = max(note["err"], r.get("value_rel_err_fp64") or 0.0)
    lines = [
        f"- {p} {n.get('version')}: `{n['path']}`; settings {n.get('settings')}; "
        f"KL: {n.get('kl')}; computes: {n.get('quantity')}; "
        f"loss vs float64: max rel err {n['err']:.2g}"
        for p, n in notes.items()
    ]
    return ["", "Providers:", *lines] if lines else []
