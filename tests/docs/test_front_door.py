"""The README's results table is the committed measurements, and its code blocks are the
tested ones.

Each row's "measured" and verdict cells are rebuilt from `benchmarks/results/*.json`; the
README's snippets must equal the blocks of docs/ that tests run against a live service.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from support.readme import README, RESULTS, marked_block


def results(name: str) -> Any:
    return json.loads((RESULTS / f"{name}.json").read_text())


def verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def table() -> dict[str, list[str]]:
    """The results table as {first cell: [measured, verdict], ...}; rows with an empty first
    cell continue the benchmark above them and are keyed `<benchmark> (2)`, `(3)`, ..."""
    text = README.read_text()
    block = text[text.index("<!-- results-table -->") :].split("\n\n", 1)[0]
    rows: dict[str, list[str]] = {}
    last, continued = "", 1
    for line in block.splitlines()[3:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        continued = continued + 1 if not cells[0] else 1
        last = cells[0] or last
        rows[cells[0] or f"{last} ({continued})"] = cells[2:]
    return rows


def expected() -> dict[str, list[str]]:
    load = results("load")
    speed = results("allocation_speed")
    targets = speed["targets"]
    variance = results("variance")
    u_shaped = variance["raft"]["u-shaped"]["strategies"]["gvm"]
    topup = variance["topups"]["raft"]["rows"][variance["topups"]["raft"]["best_topup"]]
    cpu = [
        method["speedup_of_batched"]
        for name in ("grad_norms", "grad_norms_2threads")
        for workload in results(name)["workloads"].values()
        for method in (workload["per_sample"], workload["published"])
    ]
    gpu_run = results("grad_norms_gpu")
    gpu = [w["per_sample"]["speedup_of_batched"] for w in gpu_run["workloads"].values()]
    tiny, smollm2 = results("vllm_weight_update")["results"]
    learning = results("learning")["summary"]["train_pool"]
    online = learning["gvm-online"]["samples_ratio_to_reach_uniform_final"]["median"]
    paper = learning["gvm-paper"]["samples_ratio_to_reach_uniform_final"]["median"]
    soak = results("soak")
    failover = results("failover")
    on, off = failover["modes"]["on"], failover["modes"]["off"]
    windows = on["unavailability_window_s"]
    chaos = results("chaos")
    trl = results("trl_overhead")
    return {
        "service under load (8 clients, 1,024 prompts)": [
            f"{load['ratios']['allocate_p99_vs_floor']}x, "
            f"{load['ratios']['report_p99_vs_floor']}x; 0 errors",
            verdict(all(load["targets_met"].values())),
        ],
        "allocation speed, 10^6 prompts": [
            f"{targets['gvm_paper_speedup_1e6_paired']['value']:.1f}x, identical",
            verdict(
                all(row["identical_integers"] for row in speed["rows"])
                and targets["gvm_paper_speedup_1e6_paired"]["met"]
            ),
        ],
        "allocation speed, 10^6 prompts (2)": [
            f"{targets['gvm_ms_1e6_wall']['value']:.0f} ms, "
            f"{targets['gvm_speedup_1e6_paired']['value']:.1f}x",
            verdict(targets["gvm_ms_1e6_wall"]["met"] and targets["gvm_speedup_1e6_paired"]["met"]),
        ],
        "allocation speed, 10^6 prompts (3)": [
            f"{targets['gvm_drawn_ms_1e6_wall']['value']:.0f} ms",
            verdict(targets["gvm_drawn_ms_1e6_wall"]["met"]),
        ],
        "gradient variance, U-shaped difficulty": [
            f"{u_shaped['to_uniform']:.3f}x",
            verdict(variance["targets"]["gvm_to_uniform_u_shaped"]["met"]),
        ],
        "gradient variance, U-shaped difficulty (2)": [
            f"{u_shaped['to_oracle']:.3f}x (no pilot-only allocation gets below "
            f"{variance['limits_u_shaped_to_oracle']['any_pilot_only_allocator_floor']:.3f}x)",
            verdict(variance["targets"]["gvm_to_oracle_u_shaped"]["met"]),
        ],
        "gradient variance, U-shaped difficulty (3)": [
            f"{topup['to_today']:.3f}x, {topup['to_oracle']:.3f}x "
            f"({variance['topups']['raft']['best_topup']})",
            verdict(
                variance["targets"]["best_topup_to_today_u_shaped"]["met"]
                and variance["targets"]["best_topup_to_oracle_u_shaped"]["met"]
            ),
        ],
        "gradient norms, 32 responses": [
            f"H100: {min(gpu):.1f}x; 2-core CPU: {min(cpu):.1f}x-{max(cpu):.1f}x",
            f"{'met' if min(gpu) >= gpu_run['target_speedup'] else 'not met'} on the GPU, "
            f"{'met' if min(cpu) >= gpu_run['target_speedup'] else 'not'} on the CPU",
        ],
        "vLLM weight update": [
            f"{tiny['update_direct']['median_s']:.2f} s (tiny), "
            f"{smollm2['update_direct']['median_s']:.2f} s (SmolLM2) vs "
            f"{tiny['rebuild_engine_s']:.1f} s, {smollm2['rebuild_engine_s']:.1f} s to rebuild",
            verdict(tiny["rebuild_over_update"] > 1 and smollm2["rebuild_over_update"] > 1),
        ],
        "learning per generated sample, 20 seeds": [
            f"training prompts {online:.2f}x (`gvm` online), {paper:.2f}x (paper mode); "
            f"uniform against itself {learning['uniform']['null_cross_seed_median']:.2f}x",
            verdict(max(online, paper) <= 0.5),
        ],
        "learning in one pass over 1,024 prompts, pilot counted, 10 seeds": regime_row(
            "learning_regime"
        ),
        "learning in one pass over 1,024 prompts, pilot counted, 10 seeds (2)": regime_row(
            "learning_regime_grpo"
        ),
        "learning in one pass over 1,024 prompts, pilot counted, 10 seeds (3)": regime_row(
            "learning_regime_lr", replication="learning_regime_lr_replication"
        ),
        "soak, 16 trainers, 10 minutes": [
            f"exact over {soak['requests_total']:,} requests",
            verdict(soak["ledger_check"]["exact"] and not soak["error_answers"]),
        ],
        "Redis Cluster failover, 8 trainers, replica acknowledgement on": [
            f"{len(on['kills'])} kills: {on['reports_lost']} of {on['reports_acknowledged']:,} "
            f"acknowledged reports lost, {on['answers_other_than_200_503']} answers other than "
            f"200/503, clients saw 503s for {min(windows):.1f}-{max(windows):.1f} s",
            verdict(
                len(on["kills"]) >= 5
                and on["reports_lost"] == 0
                and on["answers_other_than_200_503"] == 0
            ),
        ],
        "Redis Cluster failover, 8 trainers, replica acknowledgement on (2)": [
            f"{failover['p99_ratio_on_off']:.1f}x ({on['normal_report_p99_ms']:.0f} vs "
            f"{off['normal_report_p99_ms']:.0f} ms)",
            verdict(failover["p99_ratio_on_off"] <= 2),
        ],
        "chaos in a training run (service, Redis killed; Redis paused)": [
            f"exact in {sum(run['exact'] for run in chaos['runs'])} of {len(chaos['runs'])} runs",
            verdict(chaos["all_exact"] and len(chaos["runs"]) >= 3),
        ],
        "TRL GVMGRPOTrainer, service round trips": [
            f"{trl['round_trips_per_step_ms']:.1f} ms a step: "
            f"{100 * trl['share_of_tiny_step']:.2f}% of a tiny CPU step, "
            f"{100 * trl['gpu_step']['share']:.3f}% of an assumed "
            f"{trl['gpu_step']['assumed_step_s']:.0f} s GPU step",
            verdict(trl["gpu_step"]["target_met"]),
        ],
    }


def regime_row(name: str, replication: str | None = None) -> list[str]:
    """A setting of the learning regime: the best arm that pays for its pilot (or that none
    reaches uniform's final held-out score), gvm-paper, and the paper's accounting; with
    `replication`, the best arm again on fresh seeds (the verdict needs both)."""
    arms = results(name)["summary"]["arms"]
    counted = {n: a for n, a in arms.items() if n not in ("uniform", "gvm-paper, pilot free")}
    best = min(counted, key=lambda n: (counted[n]["samples_ratio"] or math.inf, _upper(counted[n])))
    if counted[best]["samples_ratio"] is None:
        head = f"none of {len(counted)} arms reaches it"
    else:
        head = f"best {best} {ratio(counted[best])}"
    free = ratio(arms["gvm-paper, pilot free"])
    text = (
        f"{head}; gvm-paper {ratio(arms['gvm-paper'])}; pilot free (the paper's accounting) {free}"
    )
    met = _upper(counted[best]) <= 0.7
    if replication:
        again = results(replication)["summary"]["arms"][best]
        text += f"; {best} on 10 fresh seeds {ratio(again)}"
        met = met and _upper(again) <= 0.7
    return [text, verdict(met)]


def _upper(arm: dict[str, Any]) -> float:
    """The upper end of an arm's 90% interval on the samples ratio (inf: not reached)."""
    high = arm["samples_ratio_90ci"][1]
    return math.inf if high is None else float(high)


def ratio(arm: dict[str, Any]) -> str:
    """`0.95x (90%: 0.87x to not reached)`: samples to reach uniform's final held-out accuracy."""

    def show(value: float | None) -> str:
        return "not reached" if value is None else f"{value:.2f}x"

    low, high = arm["samples_ratio_90ci"]
    if arm["samples_ratio"] is None and low is None:
        return "not reached"
    return f"{show(arm['samples_ratio'])} (90%: {show(low)} to {show(high)})"


def test_the_results_table_is_the_committed_measurements() -> None:
    assert table() == expected()


def test_the_readme_snippets_are_the_tested_ones() -> None:
    text = README.read_text()
    copies = re.findall(r"<!-- copy-of: ([\w-]+) -->\n```\w*\n(.*?)\n```", text, flags=re.DOTALL)
    assert {name for name, _ in copies} == {"integrate-curl", "integrate-python"}
    for name, body in copies:
        assert body == marked_block(name), name
