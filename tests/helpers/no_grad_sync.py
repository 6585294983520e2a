"""`fg-edge` with the gradient all-reduce switched off (test-only): Accelerate's prepare_model is replaced by one
that does not wrap the model in DistributedDataParallel, so every process steps on its own share of the batch and
the ranks drift apart. tests/test_distributed.py runs it to show that the cross-rank check catches that."""

import accelerate


def _prepare_model_without_ddp(self, model, device_placement=None, evaluation_mode=False):
    self._models.append(model)
    return model.to(self.device)


accelerate.Accelerator.prepare_model = _prepare_model_without_ddp

from fg_edge.cli import main  # noqa: E402

main()
