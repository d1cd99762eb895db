"""The MFU sweep as a console table (the README table has the same columns)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional


def _si(value: Optional[float], unit: str) -> str:
    if value is None:
        return "—"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.2f} {unit}"


def _bytes(value: Optional[int]) -> str:
    if value is None:
        return "—"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"


def wide_console() -> Any:
    """A rich console that does not squeeze tables to 80 columns when output is piped."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


def _pct(x: Optional[float]) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def table_rows(report: Dict[str, Any]) -> List[List[str]]:
    rows = []
    for r in report["results"]:
        if r["status"] != "ok":
            rows.append([r["shape"], "—", "—", r["status"]] + ["—"] * 7)
            continue
        peak = r["device_memory"]["peak_bytes_in_use"]
        memory = _bytes(peak) if peak is not None else f"≈{_bytes(r['compiled_memory']['total'])} (XLA)"
        label = r["shape"] + (f" {r['variant']}" if r.get("variant", "as_configured") != "as_configured" else "")
        accum = f" /{r['grad_accum_steps']}" if r.get("grad_accum_steps", 1) > 1 else ""
        rows.append([label, f"{r['n_params'] / 1e6:.1f}M",
                     f"{r['global_batch']}×{r['seq_len']}{accum}", r["remat"],
                     f"{r['compile_time_s']:.1f} s", f"{1e3 * r['step_time_s']:.1f} ms",
                     f"{r['tokens_per_s']:,.0f}", _si(r["achieved_flops_per_s"], "FLOP/s"),
                     _pct(r["mfu"]), _pct(r["mfu_full_square"]), memory])
    return rows


HEADERS = ["shape", "params", "batch×seq", "remat", "compile", "step", "tokens/s",
           "model FLOP/s", "MFU", "MFU full square", "memory"]


def print_line(report: Dict[str, Any], r: Dict[str, Any]) -> None:
    """One result as one flushed line, the moment it exists."""
    head = f"[{report['device']['device_kind']}] {r['shape']} {r.get('variant', '')}:"
    if r["status"] != "ok":
        print(f"{head} {r['status']} {r.get('remat_tried', '')}", flush=True)
        return
    peak = r["device_memory"]["peak_bytes_in_use"]
    print(f"{head} compile {r['compile_time_s']:.1f} s, step {1e3 * r['step_time_s']:.1f} ms, "
          f"{r['tokens_per_s']:,.0f} tokens/s, {_si(r['achieved_flops_per_s'], 'FLOP/s')}, "
          f"MFU {_pct(r['mfu'])} (full square {_pct(r['mfu_full_square'])}), "
          f"peak {_bytes(peak)}, XLA estimate {_bytes(r['compiled_memory']['total'])}, "
          f"loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}, "
          f"attention calls {r['attention_custom_calls']}, f32 vocab dots {r['f32_vocab_dots']}",
          flush=True)


def print_table(report: Dict[str, Any]) -> None:
    from rich.table import Table

    device = report["device"]
    table = Table(title=f"MFU sweep '{report['preset']}' on {device['n_devices']}× "
                        f"{device['device_kind']} (jax {report['software']['jax']}, "
                        f"{report['date']}, load {report['host']['load_average'][0]:.1f})")
    for header in HEADERS:
        table.add_column(header, justify="left" if header in ("shape", "remat") else "right")
    for row in table_rows(report):
        table.add_row(*row)
    wide_console().print(table)
