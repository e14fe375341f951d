"""Step 5: a short copy-task run of the SAB-LSTM on the device: does it learn?

Copy memory with a short delay (sab_kernels.tasks.CopyTask), one-hot input, SAB k_top 5, k_att 1, k_trunc
5, Adam with grad-norm clip 1.0, evaluated on a fixed held-out batch before training and every few steps.
Pass (the check fails otherwise): the held-out cross-entropy over all steps falls to 60% of its initial value
or below. Reported beside it: last-10 accuracy against chance (1/8) and whether it is at least twice chance
(the copy task has a long plateau, so a short run may sit at chance: reported, not failed).
"""

from __future__ import annotations

import torch

from .config import CheckConfig
from .steps import StepResult

CHANCE = 1 / 8


def run_copy(cfg: CheckConfig) -> StepResult:
    from ...nn import build_model
    from ...tasks import CopyTask

    task = CopyTask(cfg.copy_T, "onehot")
    torch.manual_seed(0)
    model = build_model("sab", task.input_size, cfg.copy_hidden, task.output_size, k_top=cfg.k_top, k_att=cfg.k_att,
                        k_trunc=cfg.k_trunc, backend=cfg.copy_backend).to(cfg.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.copy_lr)
    g = torch.Generator().manual_seed(0)
    eval_x, eval_y = task.batch(cfg.copy_eval_size, torch.Generator().manual_seed(12345), split="test", device=cfg.device)

    def evaluate(step: int):
        model.eval()
        with torch.no_grad():
            m = task.metrics(model(eval_x), eval_y)
        model.train()
        return {"step": step, **m}

    curve = [evaluate(0)]
    for step in range(1, cfg.copy_steps + 1):
        x, y = task.batch(cfg.copy_B, g, device=cfg.device)
        opt.zero_grad(set_to_none=True)
        task.loss(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % cfg.copy_eval_every == 0 or step == cfg.copy_steps:
            curve.append(evaluate(step))
    first, last = curve[0], curve[-1]
    learns = last["loss"] <= 0.6 * first["loss"]
    above = last["acc10"] >= 2 * CHANCE
    rows = [dict(step="copy", what=k, value=r[k], unit="", T=cfg.copy_T, B=cfg.copy_B, note=f"step {r['step']}")
            for r in curve for k in ("loss", "acc10", "ce10")]
    summary = (f"held-out loss {first['loss']:.3f} -> {last['loss']:.3f} ({'falls' if learns else 'does NOT fall'} to <= 60%), "
               f"acc10 {last['acc10']:.3f} (chance {CHANCE:.3f}; >= 2x chance: {'yes' if above else 'no'})")
    table = "| step | loss (all steps) | acc10 | ce10 |\n|---|---|---|---|\n" + "\n".join(
        f"| {r['step']} | {r['loss']:.4f} | {r['acc10']:.3f} | {r['ce10']:.3f} |" for r in curve)
    details = (f"Copy task, delay T={cfg.copy_T} (sequences of {cfg.copy_T + 20}), batch {cfg.copy_B}, hidden {cfg.copy_hidden}, "
               f"backend {cfg.copy_backend!r}, "
               f"Adam lr {cfg.copy_lr:g}, clip 1.0, {cfg.copy_steps} steps; held-out batch of {cfg.copy_eval_size}.\n\n{table}")
    return StepResult("copy-task", learns, summary, details, rows, data={"curve": curve, "above_chance": above})
