"""How the suite shares its work between xdist workers: the longest tests start first (none is left running alone
at the end), and the session's cache (DABNET_CACHE) is one for all workers, each entry built by one of them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List

# The tests that take longest (a subprocess that trains, a cold compile, a quantization), longest first: they start
# before the others, so that none is left running alone at the end of a parallel run. A test missing here only
# loses its head start; the other tests marked slow come next, then the rest.
LONGEST = (
    "test_import.py::test_the_printed_finetune_command_works_as_printed",
    "test_predict.py::test_int8_backend_keeps_real_frames_labels",
    "test_predict.py::test_every_backend_agrees_with_eager_fp32",
    "test_train.py::test_signal_to_the_whole_process_group_with_loader_workers",
    "test_fused.py::test_a_fused_training_step_equals_the_eager_one",
    "test_offline.py::test_the_default_path_from_a_cold_start_tries_no_connection",
    "test_guides.py::test_the_commands_of_each_guide_run_as_written",
    "test_package_weights.py::test_a_run_on_every_labelled_frame_ships_by_its_rule_with_the_history_of_earlier_weights",
    "test_train.py::test_init_from_weights_with_dead_channels_reinitialises_them_and_training_warns_when_channels_die",
    "test_package_weights.py::test_the_output_folders_are_made",
    "test_gpu_paths.py::test_train_eval_and_predict_on_cpu_leave_the_switches_as_found",
    "test_benchmarks.py::test_avx2_emulation_caps_onednn_and_reports_what_auto_keeps",
    "test_benchmarks.py::test_train_speed_keeps_other_machines_sections",
    "test_package_weights.py::test_a_distilled_run_with_ema_ships_its_last_epoch_with_the_teacher_on_its_card",
    "test_benchmarks.py::test_averaging_table_from_kept_epochs",
    "test_predict.py::test_segmenter_handles_any_size_and_mode",
)


def longest_first(items: List, workers: int) -> List:
    """`items` ordered for `workers` xdist workers: ranked (LONGEST, then marked slow, then the rest; collection
    order within each) and dealt in turn, each worker's share in one block, as xdist's worksteal scheduler (the
    default here) hands out the collection. A worker then runs its longest tests first, and an idle one steals the
    shortest from the end of a busy one's queue."""

    def rank(item) -> tuple:
        name = item.nodeid.split("[")[0]
        known = [i for i, test in enumerate(LONGEST) if name.endswith(test)]
        return (0, known[0]) if known else (1 if item.get_closest_marker("slow") else 2, 0)

    ranked = sorted(items, key=rank)  # stable: collection order within a rank
    return [item for w in range(workers) for item in ranked[w::workers]]


def session_folder(tmp_path_factory) -> Path:
    """A folder of this pytest run that all its xdist workers share (a worker's base temporary folder lies in the
    controller's), or this process's own base temporary folder without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def one_builder_per_entry(real_get: Callable, cache: Path, locks: Path) -> Callable:
    """`Store.get` that, for the stores under `cache`, lets one process of the run build a missing entry while the
    others wait for it and then read it: the workers share the session's cache, and each would otherwise quantize
    the same weights itself. Other stores (a test's own tmp_path) are left as they are."""
    import fcntl

    def get(self, name, build, load=lambda e: e, key=None):
        try:
            where = self.root.resolve().relative_to(cache)
        except ValueError:
            return real_get(self, name, build, load, key)
        found = self.read(name, load)
        if found is not None:
            return found
        locks.mkdir(exist_ok=True)
        with open(locks / f"{'-'.join(where.parts)}-{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, or when its process dies
            return real_get(self, name, build, load, key)  # reads what the first builder wrote, or builds it

    return get
