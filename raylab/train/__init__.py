"""Ray Train harness: TrainSpec -> TorchTrainer, per-worker checkpoint/restore helpers."""

from raylab.train.harness import TrainSpec, fit, load_result_state, prepare, report_epoch, restore_state, resume, unwrap

__all__ = ["TrainSpec", "fit", "load_result_state", "prepare", "report_epoch", "restore_state", "resume", "unwrap"]
