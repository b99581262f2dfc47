"""The benchmark figures in the docs are the committed measurements, not typed-in numbers.

Each check rebuilds the docs' rendering of a figure from `benchmarks/results/*.json` and
requires it in the benchmark's section of docs/benchmarks.md (the soak: docs/deployment.md), so a
rerun that is not copied into the docs (or a docs edit that no run produced) fails here. The load
table has its own test in test_api_readme.py, the README's results table in
tests/docs/test_front_door.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from support.readme import DOCS, RESULTS, section

from budget_service.settings import Settings


def results(name: str) -> Any:
    return json.loads((RESULTS / f"{name}.json").read_text())


def subsection(title: str, page: str = "benchmarks.md") -> str:
    """The section `title` of docs/`page`, subsections included."""
    return section(DOCS / page, title)


def ms(seconds: float) -> str:
    value = seconds * 1e3
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def test_allocation_speed_rows() -> None:
    text = subsection("Allocation speed")
    for row in results("allocation_speed")["rows"]:
        best, cpu = row["best_s"], row["best_cpu_s"]
        cells = (
            f"| {row['prompts']:,} | {ms(best['loop'])} ({ms(cpu['loop'])}) ms "
            f"| {ms(best['gvm_paper'])} ({ms(cpu['gvm_paper'])}) ms "
            f"| {row['speedup_gvm_paper']:.1f}x ({row['speedup_gvm_paper_cpu']:.1f}x) "
            f"| {ms(best['gvm'])} ({ms(cpu['gvm'])}) ms "
            f"| {row['speedup_gvm']:.1f}x ({row['speedup_gvm_cpu']:.1f}x) |"
        )
        assert cells in text, cells
    top = results("allocation_speed")["rows"][-1]
    for name, key in (("gvm-paper", "gvm_paper"), ("gvm", "gvm")):
        rounds = ", ".join(f"{r:.1f}x" for r in top["speedup_per_round"][key])
        assert f"`{name}` {rounds}" in text, rounds
    targets = results("allocation_speed")["targets"]

    def said(key: str) -> str:
        return "met" if targets[key]["met"] else "not met"

    paper = targets["gvm_paper_speedup_1e6_paired"]
    assert f"{said('gvm_paper_speedup_1e6_paired')} ({paper['value']:.1f}x; identical" in text
    for key, figure in (
        ("gvm_ms_1e6_wall", "{:.0f} ms"),
        ("gvm_speedup_1e6_paired", "{:.1f}x"),
        ("gvm_drawn_ms_1e6_wall", "{:.0f} ms"),
    ):
        assert f"{said(key)} ({figure.format(targets[key]['value'])})" in text, key


@pytest.mark.parametrize("name", ["grad_norms", "grad_norms_2threads", "grad_norms_gpu"])
def test_gradient_norm_speedups(name: str) -> None:
    text = subsection("Gradient norms")
    run = results(name)
    device = run["machine"].get("device", "cpu")  # the GPU's name on a GPU
    threads = run["machine"]["torch_threads"] if device == "cpu" else f"GPU: {device}"
    for workload in run["workloads"].values():
        rows, width = workload["padded_shape"]
        batched = workload["batched"]["median_seconds"] * 1e3
        lean, published = workload["per_sample"], workload["published"]
        passes = " + ".join(
            f"{size} × {length}" for size, length in workload["batched_pass_shapes"]
        )
        cells = (
            f"| {threads} | {rows} × {width} ({passes}) | {batched:.0f} ms "
            f"| {lean['median_seconds'] * 1e3:.0f} ms "
            f"(batched **{lean['speedup_of_batched']:.1f}x** faster) "
            f"| {published['median_seconds'] * 1e3:.0f} ms "
            f"(**{published['speedup_of_batched']:.1f}x**) |"
        )
        assert cells in text, cells


def ratio_cell(entry: dict[str, Any], null: float | None) -> str:
    """A GVM mode's samples-to-reach-uniform's-final ratio as the docs show it."""
    ratio = entry["samples_ratio_to_reach_uniform_final"]
    top = "not reached" if ratio["max"] is None else f"{ratio['max']:.2f}"
    median = "not reached" if ratio["median"] is None else f"{ratio['median']:.2f}"
    cross = ratio["cross_seed_median"]
    cross_text = "not reached" if cross is None else f"{cross:.2f}"
    null_text = "not reached" if null is None else f"{null:.2f}"
    return f"**{median}** ({ratio['min']:.2f}-{top}); across seeds {cross_text}, null {null_text}"


def learning_rows(name: str, label: str = "") -> list[str]:
    """The rows of one learning run in the docs: per strategy (after `label`), finals (and,
    for GVM, against uniform's paired by seed) and ratios on held-out and training-prompt
    accuracy, acceptance and where the samples went."""
    run = results(name)
    summary = run["summary"]
    rows = []
    for strategy in run["settings"]["strategies"]:
        cells = [label + strategy]
        for metric in ("held_out", "train_pool"):
            entry = summary[metric][strategy]
            finals = entry["final"]["per_seed"]
            final = f"{entry['final']['mean']:.3f} ({min(finals):.3f}-{max(finals):.3f})"
            if strategy != "uniform":
                paired = entry["final_vs_uniform"]
                final += (
                    f"; vs uniform {paired['mean_difference']:+.3f}, "
                    f"{paired['wins']}-{paired['ties']}-{paired['losses']}, "
                    f"p {paired['sign_test_p']:.2f}"
                )
            cells.append(final)
            if strategy == "uniform":
                cells.append("1 (the reference)")
            else:
                null = summary[metric]["uniform"].get("null_cross_seed_median")
                cells.append(ratio_cell(entry, null))
        mine = [r for r in run["runs"] if r["strategy"] == strategy]
        accepted = sum(r["train_accept_rate"] for r in mine) / len(mine)
        levels = sorted(mine[0]["generated_share_by_level"], key=int)
        shares = [
            sum(r["generated_share_by_level"][level] for r in mine) / len(mine) for level in levels
        ]
        cells.append(f"{accepted:.3f}")
        cells.append(" / ".join(f"{100 * share:.0f}%" for share in shares))
        rows.append("| " + " | ".join(cells) + " |")
    return rows


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("learning", ""),
        ("learning_grpo", "GRPO: "),
        ("learning_grpo_rejected", "GRPO, rejected norms reported: "),
        ("learning_lr3e-5", "lr 3e-5: "),
        ("learning_l6", "levels 1-6: "),
        ("learning_smollm2_gpu", "SmolLM2, H100: "),
    ],
)
def test_learning_rows(name: str, label: str) -> None:
    text = subsection("Learning per generated sample")
    for row in learning_rows(name, label):
        assert row in text, row


def test_soak_figures() -> None:
    text = subsection("Reliability", "deployment.md")
    soak = results("soak")
    assert f"{soak['requests_total']:,} requests ({soak['requests_per_s']:.0f}/s)" in text
    ledger = soak["ledger_check"]
    assert (
        f"{ledger['live_runs']} runs still live at the end ({ledger['prompts_checked']} prompts)"
        in text
    )
    # the table says "0 errors of any kind" and "exactly": the run must have shown that
    assert "0 errors of any kind" in text
    assert not soak["error_answers"]
    assert not soak["transport_errors"]
    assert not soak["violations"]
    assert ledger["exact"]
    assert not ledger["mismatches"]
    assert not ledger["stray_keys"]


def test_variance_table() -> None:
    text = subsection("Gradient variance")
    mixes = results("variance")["raft"]
    names = mixes["uniform"]["strategies"].keys()
    for name in names:
        cells = " | ".join(
            f"{s['to_uniform']:.3f}, {s['to_oracle']:.3f}, {s['starved']:.0f}"
            for s in (
                mixes[mix]["strategies"][name] for mix in ("uniform", "u-shaped", "easy", "hard")
            )
        )
        assert f" | {cells} |" in text, (name, cells)


def test_topup_table() -> None:
    """One row per protocol: RAFT's J and GRPO's RLOO MSE, each to today's protocol and to the
    oracle; a protocol measured on one side only has a dash on the other."""
    text = subsection("Gradient variance")
    topups = results("variance")["topups"]
    raft, grpo = topups["raft"]["rows"], topups["grpo"]["rows"]
    for name in dict.fromkeys([*raft, *grpo]):
        cells = " | ".join(
            f"{side[name]['to_today']:.3f} | {side[name]['to_oracle']:.3f}"
            if name in side
            else "- | -"
            for side in (raft, grpo)
        )
        assert f"| {name} | {cells} |" in text, (name, cells)
    for side, rows in (("raft", raft), ("grpo", grpo)):
        best = topups[side]["best_topup"]
        figures = f"`{best}`: {rows[best]['to_today']:.3f}x today's, "
        assert f"{figures}{rows[best]['to_oracle']:.3f}x the oracle" in text, side
    plain = raft["gvm, three rounds (2 + 4 + 5 + 5)"]
    assert f"`gvm`, {plain['to_today']:.3f}x today's but {plain['to_oracle']:.3f}x the" in text
    plain = grpo["gvm, two rounds (4 + 6 + 6)"]
    assert f"on the same schedule is at {plain['to_today']:.3f}x" in text


def test_grpo_figures() -> None:
    text = subsection("Gradient variance")
    grpo = results("variance")["grpo"]
    u_shaped, uniform = grpo["u-shaped"]["mse_to_uniform"], grpo["uniform"]["mse_to_uniform"]
    for name in ("gvm, algo=grpo (p(1-p) G^2)", "gvm, algo=grpo, accepted samples' norms only"):
        assert f"**{u_shaped[name]:.3f} / {uniform[name]:.3f}**" in text, name
    true = "bound: algo=grpo with true p and G"
    assert f"`G`: {u_shaped[true]:.3f} / {uniform[true]:.3f})" in text


def failover_table() -> str:
    """docs/deployment.md's failover table, rebuilt from benchmarks/results/failover.json."""
    run = results("failover")
    off, on = run["modes"]["off"], run["modes"]["on"]

    def both(fn: Callable[[dict[str, Any]], str]) -> str:
        return f"| {fn(off)} | {fn(on)} |"

    def seconds(values: list[float]) -> str:
        return ", ".join(f"{v:.1f}" for v in values)

    def promoted(mode: dict[str, Any]) -> str:
        times = [kill["promoted_after_s"] for kill in mode["kills"]]
        return f"{min(times):.1f}-{max(times):.1f}"

    rows = [
        "| | ack off | ack on (`N=1`, timeout 0.5 s) |",
        "|---|---|---|",
        "| kills " + both(lambda m: str(len(m["kills"]))),
        "| reports acknowledged " + both(lambda m: f"{m['reports_acknowledged']:,}"),
        "| acknowledged reports lost " + both(lambda m: str(m["reports_lost"])),
        "| stored samples = acknowledged samples "
        + both(
            lambda m: (
                ("yes" if m["samples_stored"] == m["samples_acknowledged"] else "no")
                + f" ({m['samples_stored']:,})"
            )
        ),
        "| answers other than 200/503 " + both(lambda m: str(m["answers_other_than_200_503"])),
        "| 503 answers " + both(lambda m: f"{m['answers_503']:,}"),
        "| window with non-200 answers after a kill (s) "
        + both(lambda m: seconds(m["unavailability_window_s"])),
        "| promotion after the kill (s) " + both(promoted),
        "| report latency p50 / p99 before any kill (ms) "
        + both(lambda m: f"{m['normal_report_p50_ms']:.1f} / {m['normal_report_p99_ms']:.1f}"),
    ]
    return "\n".join(rows)


def test_failover_table() -> None:
    text = section(DOCS / "deployment.md", "Failover and acknowledgement")
    assert failover_table() in text, failover_table()
    ratio = results("failover")["p99_ratio_on_off"]
    assert f"p99 ratio on/off: {ratio:.2f}x" in text


def test_capacity_figures() -> None:
    """docs/deployment.md's capacity figures and fleet arithmetic, rebuilt from capacity.json
    (Redis) and load.json (the service)."""
    text = " ".join(section(DOCS / "deployment.md", "Capacity").split())
    capacity, load = results("capacity"), results("load")
    memory, run, cpu = capacity["memory"], capacity["run"], capacity["cpu"]
    report, allocate, step = cpu["report"], cpu["allocate"], cpu["step"]
    keys = run["key_bytes"]
    per_prompt = memory["per_prompt_bytes_used_memory"]
    service = load["scenarios"]
    allocations_rps = service["service allocate"]["throughput_rps"]
    reports_rps = service["service report"]["throughput_rps"]
    replica_steps = 1 / (1 / allocations_rps + 1 / reports_rps)
    figures = [
        f"redis-server {capacity['redis_version']}",
        f"{memory['per_prompt_bytes_memory_usage']} B by `MEMORY USAGE`",
        f"{per_prompt} B by the `used_memory` delta",
        f"for {memory['prompts']:,} prompts with {memory['prompt_id_bytes']}-byte ids",
        f"beyond its prompts: {run['fixed_bytes']:,} B (config hash {keys['run']:,} B, totals "
        f"{keys['totals']:,} B, the latest allocation's JSON {keys['latest']:,} B for "
        f"{run['latest_allocation_prompts']:,} prompts), {run['per_history_point_bytes']} B per "
        f"history point (at most {run['history_points']:,}), {run['per_report_id_bytes']:.1f} B "
        "per remembered report id",
        f"{report['cpu_ms_per_request_main_thread']:.3f} ms of main-thread CPU on a report of "
        f"{report['prompts_per_request']:,} observations and "
        f"{allocate['cpu_ms_per_request_main_thread']:.3f} ms on an allocation of "
        f"{allocate['prompts_per_request']:,} prompts (`INFO cpu` over {report['requests']:,}",
        f"{report['script_ms_per_request']:.3f} / {allocate['script_ms_per_request']:.3f} ms",
        f"1 / {report['cpu_ms_per_request_main_thread']:.3f} ms = {report['shard_max_rps']} "
        f"reports/s, 1 / {allocate['cpu_ms_per_request_main_thread']:.3f} ms = "
        f"{allocate['shard_max_rps']} allocations/s, or {step['shard_max_per_s']} training "
        f"steps/s (one of each: 1 / {step['cpu_ms']:.3f} ms)",
        f"{allocations_rps:.0f} allocations/s (p99 {service['service allocate']['p99_ms']:.0f} "
        f"ms), {reports_rps:.0f} reports/s (p99 {service['service report']['p99_ms']:.0f} ms): "
        f"{replica_steps:.0f} steps/s (1 / (1/{allocations_rps} + 1/{reports_rps}))",
    ]
    statistics_gb = 1e8 * per_prompt / 1e9
    runs_gb = 1000 * (run["fixed_bytes"] + keys["history"]) / 1e9
    figures += [
        f"10^8 x {per_prompt} B = {statistics_gb:.1f} GB",
        f"{math.ceil(statistics_gb / 4)} shards of 8 GB hold them",  # 8 GB filled to half
        f"one primary with ~{math.ceil(2 * statistics_gb)} GB",
        f"{runs_gb:.1f} GB of run keys at {run['history_points']:,} history points",
    ]
    settings = Settings.model_fields
    window_s = settings["report_id_ttl_s"].default
    cap = settings["report_id_max"].default
    for period_s in (30, 5):
        steps = 1000 / period_s
        ids = min(window_s // period_s, cap)
        ids_gb = 1000 * ids * run["per_report_id_bytes"] / 1e9
        total_gb = statistics_gb + runs_gb + ids_gb
        shards = math.ceil(total_gb / 4)  # 8 GB shards filled to half
        figures.append(f"one step every {period_s} s each: {steps:.0f} steps/s")
        if period_s == 30:
            figures += [
                f"{steps / step['shard_max_per_s']:.0%} of one shard's CPU and "
                f"{steps / replica_steps:.2f} of a service replica",
                f"{ids:,} report ids per run in 7 days, {ids_gb:.1f} GB: {total_gb:.1f} GB with "
                f"the statistics above, inside the {shards} shards",
            ]
        else:
            one_day = 1000 * (86400 // period_s) * run["per_report_id_bytes"] / 1e9
            figures += [
                f"{steps / step['shard_max_per_s']:.2f} shards' CPU",
                f"{steps / replica_steps:.1f} service replicas",
                f"the id cap of {cap:,} per run binds, {ids_gb:.1f} GB: {total_gb:.1f} GB in all, "
                f"{shards} shards of 8 GB, or "
                f"{math.ceil((statistics_gb + runs_gb + one_day) / 4)} with "
                f"`GVM_REPORT_ID_TTL_S=86400` ({86400 // period_s:,} ids per run, "
                f"{one_day:.1f} GB)",
            ]
    for figure in figures:
        assert figure in text, figure


def chaos_table() -> str:
    """docs/deployment.md's chaos table, rebuilt from benchmarks/results/chaos.json."""
    rows = [
        "| seed | exit code | steps on the uniform fallback | generated / stored samples "
        "| accepted / stored | exact |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for run in results("chaos")["runs"]:
        rows.append(
            f"| {run['seed']} | {run['exit_code']} | {len(run['fallback_steps'])} "
            f"| {run['generated']} / {run['stored_samples']:.0f} "
            f"| {run['accepted']} / {run['stored_accepted']:.0f} "
            f"| {'yes' if run['exact'] else 'no'} |"
        )
    return "\n".join(rows)


def test_chaos_table() -> None:
    text = section(DOCS / "deployment.md", "Failover and acknowledgement")
    assert chaos_table() in text, chaos_table()
