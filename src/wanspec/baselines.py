"""The baselines every wanspec figure is compared with, in ``emulate`` and ``simulate`` alike.

* ``target``     - target-only decoding (the reference output);
* ``sd``         - standard speculative decoding at the busy site with the configured window;
* ``sd-best``    - standard SD at the window that is fastest *for this setting*, searched over
                   :data:`SD_GAMMAS` in the same run on the same requests (an oracle choice: the
                   strongest fixed-window SD there is);
* ``sd-dynamic`` - standard SD with Hugging Face's heuristic window schedule (grow by 2 after a
                   fully accepted window, shrink by 1 after a rejection), starting at the
                   configured window.

Ratios in every report are taken against ``sd-best`` (``*_vs_best_sd``) and, for continuity,
against ``sd`` at the configured window (``*_vs_standard_sd``).
"""

from __future__ import annotations

from typing import Any, Mapping

from wanspec.core.rates import SD_WINDOWS

BASELINES = ("target", "sd", "sd-best", "sd-dynamic")
SD_GAMMAS = tuple(SD_WINDOWS)  # the windows best SD is searched over (the adaptive policy's
# latency reference searches the same ones)
LABELS = {"target": "target-only", "sd": "standard SD", "sd-best": "best SD",
          "sd-dynamic": "dynamic SD"}


def mode_label(rec: dict[str, Any]) -> str:
    """How a record's mode is shown: ``best SD (g=6)``, ``standard SD (g=4)``, ``adaptive``..."""
    label = LABELS.get(rec["mode"], rec["mode"])
    gamma = rec.get("sd_gamma")
    return f"{label} (g={gamma})" if rec["mode"] in ("sd", "sd-best") and gamma else label


def sd_gammas(gamma: int) -> tuple[int, ...]:
    """The windows to run standard SD at: the search range and the configured window."""
    return tuple(sorted({*SD_GAMMAS, gamma}))


def best_sd(by_gamma: Mapping[int, dict[str, Any]]) -> dict[str, Any]:
    """The ``sd-best`` record: the fastest (lowest mean TPOT) of the standard SD runs, with the
    window it used and the whole search, so the choice can be checked."""
    gamma = min(by_gamma, key=lambda g: (by_gamma[g]["tpot_ms_mean"], g))
    search = {str(g): rec["tpot_ms_mean"] for g, rec in sorted(by_gamma.items())}
    return {**by_gamma[gamma], "mode": "sd-best", "sd_gamma": gamma, "sd_search_tpot_ms": search}


def with_ratios(rec: dict[str, Any], target: dict[str, Any], sd: dict[str, Any],
                best: dict[str, Any]) -> dict[str, Any]:
    """Add the ratios to target-only, standard SD and best SD records of the same point."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    tpot, busy = rec["tpot_ms_mean"], rec["busy_site_draft_passes_per_token"]
    rec["speedup_vs_target"] = ratio(target["tpot_ms_mean"], tpot)
    rec["latency_vs_standard_sd"] = ratio(tpot, sd["tpot_ms_mean"])
    rec["busy_site_draft_passes_vs_standard_sd"] = ratio(
        busy, sd["busy_site_draft_passes_per_token"])
    rec["latency_vs_best_sd"] = ratio(tpot, best["tpot_ms_mean"])
    rec["busy_site_draft_passes_vs_best_sd"] = ratio(
        busy, best["busy_site_draft_passes_per_token"])
    rec["best_sd_gamma"] = best["sd_gamma"]
    return rec
