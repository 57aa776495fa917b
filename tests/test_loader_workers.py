"""``--num-workers`` with the stream task: windows are slices of tensors in memory, so the
task reads them in the training process whatever the option says; fairseq's loader
processes used to stop each other at every mid-epoch validation (issue 32: a stray
"can only test a child process" traceback and a ~5 s wait per validation)."""

import multiprocessing

import pytest
from fairseq_cli_helpers import binarize, json_logs, real_text_lines, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    return binarize(root / "bin", {"train": real_text_lines("train", 300),
                                   "valid": real_text_lines("valid", 60)})


def test_mid_epoch_validation_with_loader_workers(data, tmp_path):
    logs = {}
    for workers in (0, 2):
        proc = train(data, tmp_path / f"w{workers}", [
            "--max-epoch", "2", "--validate-interval-updates", "40",
            "--save-interval-updates", "40", "--num-workers", str(workers)],
            check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "can only test a child process" not in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        logs[workers] = [(r["valid_num_updates"], r["valid_loss"])
                         for r in json_logs(proc.stdout, "valid")]
    assert len(logs[0]) >= 4  # mid-epoch validations in both epochs, and the epochs' ends
    assert logs[2] == logs[0]


def test_windows_are_read_without_loader_processes(data):
    from fairseq import tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.options import get_training_parser, parse_args_and_arch
    from fairseq_cli_helpers import TINY_MODEL, TRAIN_DEFAULTS

    args = parse_args_and_arch(get_training_parser(), [str(data), *TRAIN_DEFAULTS, *TINY_MODEL])
    task = tasks.setup_task(convert_namespace_to_omegaconf(args).task)
    task.load_dataset("train")
    before = set(multiprocessing.active_children())  # other tests' in this worker
    batches = task.get_batch_iterator(task.dataset("train"), num_workers=2).next_epoch_itr()
    sample = next(batches)
    assert sample["net_input"]["src_tokens"].shape[0] == 4  # --batch-size streams
    assert set(multiprocessing.active_children()) - before == set()
