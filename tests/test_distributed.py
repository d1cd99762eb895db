"""Multi-process start-up: the decision from config and environment, and a real two-process
CPU job on 127.0.0.1 (always under a hard timeout: a lonely JAX process aborts, never errors)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from chinchax.errors import LaunchError
from launch.distributed import (DistributedConfig, attached_tpu_chips, plan_startup, slurm_local_device_ids)
from launch.multihost_local import (
    check_outcomes,
    free_port,
    log_dir_for,
    process_env,
    run_processes,
)


REPO = Path(__file__).resolve().parent.parent
SLURM_STEP = {
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_NODELIST": "gpu[01-02]",
    "SLURM_NTASKS": "16",
    "SLURM_PROCID": "9",
    "SLURM_LOCALID": "1",
}
EIGHT_GPUS = [f"/dev/nvidia{i}" for i in range(8)] + ["/dev/nvidiactl", "/dev/nvidia-uvm"]


def test_nothing_in_the_environment_means_one_process():
    plan = plan_startup(DistributedConfig(), {})
    assert plan.mode == "single" and not plan.multi_process


def test_explicit_settings_from_config_or_environment():
    from_env = plan_startup(
        DistributedConfig(),
        {
            "CHINCHAX_COORDINATOR": "10.0.0.1:1234",
            "CHINCHAX_NUM_PROCESSES": "4",
            "CHINCHAX_PROCESS_ID": "3",
        },
    )
    assert (
        from_env.mode,
        from_env.coordinator_address,
        from_env.num_processes,
        from_env.process_id,
    ) == ("explicit", "10.0.0.1:1234", 4, 3)
    cfg = DistributedConfig(
        coordinator_address="[::1]:99", num_processes=2, process_id=0, local_device_ids=[1]
    )
    from_cfg = plan_startup(
        cfg, {"CHINCHAX_PROCESS_ID": "1", **SLURM_STEP}
    )  # config wins over env and SLURM
    assert (from_cfg.mode, from_cfg.process_id, from_cfg.local_device_ids) == ("explicit", 0, (1,))
    alone = plan_startup(
        DistributedConfig(),
        {"CHINCHAX_COORDINATOR": "h:1", "CHINCHAX_NUM_PROCESSES": "1", "CHINCHAX_PROCESS_ID": "0"},
    )
    assert alone.mode == "single"


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"CHINCHAX_COORDINATOR": "10.0.0.1:1234"}, "number of processes and process id"),
        ({"CHINCHAX_NUM_PROCESSES": "2", "CHINCHAX_PROCESS_ID": "0"}, "coordinator address"),
        (
            {
                "CHINCHAX_COORDINATOR": "10.0.0.1",
                "CHINCHAX_NUM_PROCESSES": "2",
                "CHINCHAX_PROCESS_ID": "0",
            },
            "host:port",
        ),
        (
            {
                "CHINCHAX_COORDINATOR": "h:1",
                "CHINCHAX_NUM_PROCESSES": "2",
                "CHINCHAX_PROCESS_ID": "2",
            },
            "outside",
        ),
        ({"CHINCHAX_NUM_PROCESSES": "two"}, "not an integer"),
    ],
)
def test_incomplete_or_bad_explicit_settings_are_errors(env, needle):
    with pytest.raises(LaunchError, match=needle):
        plan_startup(DistributedConfig(), env)


@pytest.mark.parametrize(
    "env",
    [
        {"TPU_WORKER_HOSTNAMES": "t1v-w-0,t1v-w-1,t1v-w-2,t1v-w-3", "TPU_WORKER_ID": "2"},
        {
            "MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2:8080",
            "MEGASCALE_NUM_SLICES": "2",
            "MEGASCALE_SLICE_ID": "1",
        },
        {"MEGASCALE_NUM_SLICES": "4"},
        {"CLOUD_TPU_TASK_ID": "0"},
    ],
)
def test_tpu_pods_are_detected_from_the_environment(env):
    plan = plan_startup(
        DistributedConfig(), {**env, **SLURM_STEP}
    )  # TPU wins over a stray SLURM env
    assert plan.mode == "tpu" and plan.coordinator_address is None  # JAX asks the TPU runtime


def test_tpu_vms_are_detected_from_attached_chips_and_single_host_env_is_not_a_pod():
    assert plan_startup(DistributedConfig(), {"TPU_WORKER_HOSTNAMES": "localhost"}).mode == "single"
    assert plan_startup(DistributedConfig(), {}, tpu_chips=4).mode == "tpu"


def test_attached_tpu_chips_reads_pci_vendor_and_device_ids(tmp_path):
    # two v5e chips, a Google virtual NIC (same vendor, not a TPU), an Intel and an NVIDIA device
    ids = [
        ("0x1ae0", "0x0063"),
        ("0x1ae0", "0x0042"),
        ("0x8086", "0x0063"),
        ("0x1ae0", "0x0063"),
        ("0x10de", "0x2330"),
    ]
    for i, (vendor, device_id) in enumerate(ids):
        device = tmp_path / "bus" / "pci" / "devices" / f"0000:00:0{i}.0"
        device.mkdir(parents=True)
        (device / "vendor").write_text(vendor + "\n")
        (device / "device").write_text(device_id + "\n")
    assert attached_tpu_chips(tmp_path) == 2
    assert attached_tpu_chips(tmp_path / "missing") == 0


def test_slurm_steps_with_several_tasks():
    plan = plan_startup(DistributedConfig(), SLURM_STEP, gpu_device_files=EIGHT_GPUS)
    assert (plan.mode, plan.num_processes, plan.process_id) == ("slurm", 16, 9)
    assert plan.local_device_ids is None  # one task per GPU: JAX picks GPU SLURM_LOCALID
    one_task = {**SLURM_STEP, "SLURM_NTASKS": "1"}
    assert plan_startup(DistributedConfig(), one_task).mode == "single"
    batch_shell = {k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"}
    assert plan_startup(DistributedConfig(), batch_shell).mode == "single"


def test_slurm_gpu_visibility_rules():
    one_per_node = {**SLURM_STEP, "SLURM_NTASKS_PER_NODE": "1"}
    assert slurm_local_device_ids(one_per_node, EIGHT_GPUS) == tuple(range(8))
    assert slurm_local_device_ids(
        {**SLURM_STEP, "SLURM_STEP_TASKS_PER_NODE": "1(x16)"}, EIGHT_GPUS
    ) == tuple(range(8))
    bound = {
        **SLURM_STEP,
        "CUDA_VISIBLE_DEVICES": "5",
    }  # --gpus-per-task=1: index 0 of what it sees
    assert slurm_local_device_ids(bound, EIGHT_GPUS) == (0,)
    assert (
        slurm_local_device_ids({**SLURM_STEP, "SLURM_STEP_TASKS_PER_NODE": "8(x2)"}, EIGHT_GPUS)
        is None
    )
    assert slurm_local_device_ids(one_per_node, []) is None  # CPU-only nodes


def test_open_mpi_jobs():
    env = {
        "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911",
        "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_RANK": "2",
    }
    plan = plan_startup(DistributedConfig(), env)
    assert (plan.mode, plan.num_processes, plan.process_id) == ("mpi", 4, 2)


def test_enabled_off_and_on():
    pod = {"TPU_WORKER_HOSTNAMES": "a,b"}
    assert plan_startup(DistributedConfig(enabled="off"), pod).mode == "single"
    assert plan_startup(DistributedConfig(enabled="on"), pod).mode == "tpu"
    with pytest.raises(LaunchError, match="no multi-process environment"):
        plan_startup(DistributedConfig(enabled="on"), {})


def test_cpu_device_count_from_config_or_environment():
    assert (
        plan_startup(
            DistributedConfig(cpu_devices_per_process=3), {"CHINCHAX_CPU_DEVICES": "5"}
        ).cpu_devices
        == 3
    )
    assert plan_startup(DistributedConfig(), {"CHINCHAX_CPU_DEVICES": "5"}).cpu_devices == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(enabled="yes"),
        dict(initialization_timeout=0),
        dict(num_processes=0),
        dict(num_processes=2, process_id=2),
        dict(coordinator_address="nohost"),
        dict(cpu_devices_per_process=0),
        dict(local_device_ids=[-1]),
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(LaunchError):
        DistributedConfig(**kwargs)


def test_config_is_an_omegaconf_structured_config():
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(
        OmegaConf.structured(DistributedConfig),
        OmegaConf.from_dotlist(["initialization_timeout=900", "local_device_ids=[0,1]"]),
    )
    cfg = OmegaConf.to_object(merged)
    assert cfg == DistributedConfig(initialization_timeout=900, local_device_ids=[0, 1])


def test_process_env_sets_the_job_and_drops_forced_device_counts():
    env = process_env(
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/d", "A": "1"},
        port=5555,
        num_processes=3,
        process_id=2,
        cpu_devices=4,
    )
    assert env["CHINCHAX_COORDINATOR"] == "127.0.0.1:5555"
    assert (
        env["CHINCHAX_NUM_PROCESSES"],
        env["CHINCHAX_PROCESS_ID"],
        env["CHINCHAX_CPU_DEVICES"],
    ) == ("3", "2", "4")
    assert (
        env["XLA_FLAGS"] == "--xla_dump_to=/tmp/d"
        and env["A"] == "1"
        and env["JAX_PLATFORMS"] == "cpu"
    )


WORKER = textwrap.dedent("""
    import json, sys
    from launch.distributed import DistributedConfig, initialize_distributed
    info = initialize_distributed(DistributedConfig(initialization_timeout=20))
    again = initialize_distributed()
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    local = np.arange(jax.local_device_count(), dtype=np.float32) + 100 * jax.process_index()
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
    psum = jax.jit(jax.shard_map(lambda a: jax.lax.psum(a, "data"), mesh=mesh, in_specs=P("data"), out_specs=P()))
    total = float(np.asarray(psum(x).addressable_data(0))[0])
    print(json.dumps({**info.__dict__, "same": again is info, "lead": jax.process_index() == 0, "psum": total}))
""")


def test_two_cpu_processes_form_one_job_and_psum_across_them(tmp_path):
    outcomes = run_processes(
        2,
        lambda i: [sys.executable, "-c", WORKER],
        tmp_path / "logs",
        cpu_devices=2,
        timeout_s=60,
        base_env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    check_outcomes(outcomes, 60)
    results = [json.loads(o.log_path.read_text().strip().splitlines()[-1]) for o in outcomes]
    for i, result in enumerate(results):
        assert result["mode"] == "explicit" and result["same"]
        assert (result["process_index"], result["process_count"]) == (i, 2)
        assert (result["local_device_count"], result["global_device_count"]) == (2, 4)
        assert result["lead"] == (i == 0)
        assert result["psum"] == 0 + 1 + 100 + 101  # every device's value, from both processes


def test_a_failing_process_stops_the_group_and_is_reported(tmp_path):
    script = "import sys, time; sys.exit(3) if sys.argv[1] == '1' else time.sleep(60)"
    outcomes = run_processes(
        2, lambda i: [sys.executable, "-c", script, str(i)], tmp_path, timeout_s=30, grace_s=0.5
    )
    assert outcomes[1].returncode == 3 and outcomes[0].stopped
    with pytest.raises(LaunchError, match="process 1 exited with code 3") as err:
        check_outcomes(outcomes, 30)
    assert "process 0 was stopped after another process failed" in str(err.value)


def test_the_deadline_stops_processes_that_never_finish(tmp_path):
    script = "import time; print('waiting for peers', flush=True); time.sleep(60)"
    outcomes = run_processes(2, lambda i: [sys.executable, "-c", script], tmp_path, timeout_s=1.0)
    assert all(o.stopped for o in outcomes)
    with pytest.raises(LaunchError, match="stopped at the 1 s deadline") as err:
        check_outcomes(outcomes, 1.0)
    assert "waiting for peers" in str(err.value)  # the log tail is quoted


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_logs_of_local_jobs_stay_local():
    assert log_dir_for("/tmp/runs/x") == Path("/tmp/runs/x/logs")
    assert log_dir_for("gs://bucket/runs/x/") == Path("runs/x/logs")
