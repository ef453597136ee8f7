"""nnU-Net v2 trainer that trains within a wall-clock deadline (runs inside the benchmark's nnU-Net venv only).

``benchmarks/hippocampus_nnunet.py`` copies this file into the venv's ``nnunetv2/training/nnUNetTrainer/`` as
``nnUNetTrainer_TimeBudget.py`` (a top-level module there, so nnU-Net's trainer lookup finds it before it crawls the
Primus trainers, whose ``timm -> torchvision`` import fails against the CPU-only torch wheel). Environment:

- ``CLINSEG_NNUNET_DEADLINE``: unix time (s) by which training, final checkpoint included, must end (required).
- ``CLINSEG_NNUNET_ITERS``: training iterations per epoch (default nnU-Net's 250; validation iterations scale
  with it, 50 per 250), only to shorten epochs for smoke runs.

Everything else is nnU-Net's default ``nnUNetTrainer`` (plans, loss, augmentation, SGD with Nesterov, poly LR,
250 training + 50 validation iterations per epoch, best/final checkpoints). On a 2-core CPU one 250-iteration
epoch takes about as long as the whole budget, so whole-epoch accounting cannot work: the budget is spent by
iteration. After every training iteration the measured seconds per iteration (and per validation pass, once
seen) give the total iterations ``N`` that still fit before the deadline; the poly schedule runs per iteration,
``lr = 0.01 * (1 - i / N) ** 0.9``, so it reaches zero at the last iteration that fits, and the epoch in progress
is ended early there (its validation pass still runs, so nnU-Net's logs and best checkpoint stay consistent).
nnU-Net's final validation of the fold (a full sliding-window prediction of the validation cases) is skipped:
the benchmark scores the test cases itself.
"""

from __future__ import annotations

import os
from time import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

_CUDA = torch.device("cuda")  # nnUNetTrainer's default device
_END_MARGIN_S = 15.0  # final checkpoint + dataloader shutdown
_VAL_COST_GUESS = 0.4  # one validation iteration vs one training iteration, until a validation pass is timed


class nnUNetTrainer_TimeBudget(nnUNetTrainer):
    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = _CUDA
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if "CLINSEG_NNUNET_DEADLINE" not in os.environ:
            raise RuntimeError("nnUNetTrainer_TimeBudget needs CLINSEG_NNUNET_DEADLINE (unix time in s)")
        self.deadline = float(os.environ["CLINSEG_NNUNET_DEADLINE"])
        iters = os.environ.get("CLINSEG_NNUNET_ITERS")
        if iters:
            self.num_iterations_per_epoch = int(iters)
            self.num_val_iterations_per_epoch = max(1, int(iters) // 5)
        self.iterations_done = 0
        self.planned_iterations = None
        self.train_seconds = 0.0  # summed training-iteration time
        self.val_pass_s = None  # last validation pass (s)

    def _plan(self, now: float) -> int:
        """Total training iterations that fit before the deadline, given the costs measured so far."""
        per_iter = self.train_seconds / self.iterations_done
        val_pass = (
            self.val_pass_s
            if self.val_pass_s is not None
            else (_VAL_COST_GUESS * per_iter * self.num_val_iterations_per_epoch)
        )
        left = self.deadline - _END_MARGIN_S - val_pass - now
        per_iter_all = per_iter + val_pass / self.num_iterations_per_epoch
        return self.iterations_done + max(0, int(left // per_iter_all))

    def _set_lr(self) -> None:
        total = max(self.planned_iterations or self.num_epochs * self.num_iterations_per_epoch, 1)
        self.lr_scheduler.max_steps = total
        self.lr_scheduler.step(min(self.iterations_done, total - 1))

    def on_train_epoch_start(self):
        """nnUNetTrainer's, with the per-iteration LR (its own steps the scheduler by epoch)."""
        self.network.train()
        self._set_lr()
        self.print_to_log_file("")
        self.print_to_log_file(f"Epoch {self.current_epoch}")
        self.print_to_log_file(f"Current learning rate: {self.optimizer.param_groups[0]['lr']:.5f}")
        self.logger.log("lrs", self.optimizer.param_groups[0]["lr"], self.current_epoch)

    def run_training(self):
        """nnUNetTrainer.run_training, with the LR stepped and the deadline checked per training iteration."""
        self.on_train_start()
        self.print_to_log_file(f"time budget: {self.deadline - time():.0f} s left at train start")
        out_of_time = False
        while not out_of_time and self.current_epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for _ in range(self.num_iterations_per_epoch):
                self._set_lr()
                start = time()
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                now = time()
                self.train_seconds += now - start
                self.iterations_done += 1
                self.planned_iterations = self._plan(now)
                if self.iterations_done >= self.planned_iterations:
                    out_of_time = True
                    break
            self.on_train_epoch_end(train_outputs)
            start = time()
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [
                    self.validation_step(next(self.dataloader_val))
                    for _ in range(self.num_val_iterations_per_epoch)
                ]
                self.on_validation_epoch_end(val_outputs)
            self.val_pass_s = time() - start
            self.print_to_log_file(
                f"time budget: {self.iterations_done} iterations done, {self.planned_iterations} planned, "
                f"{self.train_seconds / self.iterations_done:.2f} s per iteration, validation {self.val_pass_s:.1f} s"
            )
            self.on_epoch_end()
        self.on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation skipped (time-budget benchmark scores the test cases)")
