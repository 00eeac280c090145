"""Hydra sweeps beyond the basic launcher: an Optuna search (conf/hparams_search/) and SLURM jobs through the
submitit launcher (conf/launcher/slurm.yaml), with the `sweep` and `slurm` extras (both in `dev`)."""

import importlib.util
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from sslseg.errors import UserError
from sslseg.run.cli import CONF_DIR, is_launcher_rank
from sslseg.run.experiment import SLURM_LAUNCHER, check_launch
from tests.conftest import run_cli


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # no hydra_plugins package at all
        return False


needs_optuna = pytest.mark.skipif(not _installed("hydra_plugins.hydra_optuna_sweeper"),
                                  reason='hydra-optuna-sweeper not installed (pip install -e ".[sweep]")')
needs_submitit = pytest.mark.skipif(not _installed("hydra_plugins.hydra_submitit_launcher"),
                                    reason='hydra-submitit-launcher not installed (pip install -e ".[slurm]")')

TINY = ["logger=none", "trainer.max_steps=2", "trainer.limit_val_batches=2", "data.num_workers=0",
        "trainer.enable_progress_bar=false"]


def _common(data_dir: Path, out: Path) -> list[str]:
    return [f"paths.data_dir={data_dir}", f"paths.output_dir={out}"]


@pytest.fixture(autouse=True)
def _restore_hydra_config():
    """Tests here set HydraConfig (what a run sees); later tests get it back as it was."""
    saved = HydraConfig.instance().cfg
    yield
    HydraConfig.instance().cfg = saved


def _compose(overrides: list[str]):
    """The config with its hydra node, as @hydra.main composes it (the launcher's settings live there)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


# -- Optuna ---------------------------------------------------------------------------------------------------------
@needs_optuna
@pytest.mark.slow
def test_optuna_search_maximises_the_returned_val_mIoU(data_dir, tmp_path):
    run = run_cli("train.py", "hparams_search=unimatch_toy_optuna", "hydra.sweeper.n_trials=2",
                  *_common(data_dir, tmp_path), *TINY)
    assert run.returncode == 0, run.stderr[-3000:]
    trials = sorted(tmp_path.rglob("results.json"))
    assert len(trials) == 2
    (sweep_dir,) = {t.parent.parent for t in trials}
    trial_params, values = [], []
    for path in trials:
        results = json.loads(path.read_text())
        cfg = OmegaConf.load(path.parent / ".hydra" / "config.yaml")
        assert results["method"] == "unimatch" and results["steps"] == 2
        assert 0.002 <= cfg.optim.lr <= 0.05 and 0.8 <= cfg.method.conf_thresh <= 0.98
        trial_params.append({"optim.lr": cfg.optim.lr, "method.conf_thresh": cfg.method.conf_thresh})
        values.append(results["best_val_mIoU"])
    assert trial_params[0] != trial_params[1]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    # the value train.py's main returned for the better trial: its results.json's best_val_mIoU
    assert best["name"] == "optuna" and best["best_value"] == pytest.approx(max(values))
    assert best["best_params"] in [pytest.approx(p) for p, v in zip(trial_params, values) if v == max(values)]


# -- SLURM through submitit -----------------------------------------------------------------------------------------
@needs_submitit
@pytest.mark.parametrize("overrides, devices, nodes", [
    (["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"], 4, 2),
    (["experiment=daw_pascal", "trainer=ddp", "trainer.devices=4"], 4, 1),  # a preset on 4 GPUs
    ([], 1, 1),                         # the default trainer: one GPU per job
])
def test_slurm_launcher_asks_for_one_task_and_gpu_per_device(overrides, devices, nodes):
    cfg = _compose(["launcher=slurm", *overrides])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == SLURM_LAUNCHER and cfg.hydra.mode == RunMode.MULTIRUN
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (devices, nodes)
    # Lightning under SLURM: ntasks-per-node == trainer.devices, nodes == trainer.num_nodes
    assert launcher.tasks_per_node == launcher.gpus_per_node == cfg.trainer.devices
    assert launcher.nodes == cfg.trainer.num_nodes


@needs_submitit
def test_slurm_launcher_writes_the_matching_sbatch_flags(tmp_path, monkeypatch):
    """The sbatch script submitit makes from the composed launcher (as Hydra's SlurmLauncher hands it over)."""
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from submitit import AutoExecutor

    _fake_slurm(tmp_path / "bin", monkeypatch)  # submitit wants an srun on PATH
    cfg = _compose(["launcher=slurm", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2",
                    "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    HydraConfig.instance().set_config(cfg)  # the launcher's ${hydra.job.name} needs it
    params = dict(instantiate(cfg.hydra.launcher).params)
    # as SlurmLauncher.launch hands them to submitit: its shared keys as they are, SLURM's own prefixed
    executor = AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"))
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()
                                  if k != "max_num_timeout"})
    script = executor._executor._make_submission_file_text("python -c pass", "uid")
    flags = dict(line[len("#SBATCH --"):].split("=", 1) for line in script.splitlines() if "=" in line
                 and line.startswith("#SBATCH --"))
    assert (flags["ntasks-per-node"], flags["gpus-per-node"], flags["nodes"]) == ("8", "8", "2")
    assert flags["partition"] == "gpu"
    assert sum(line.startswith("srun ") for line in script.splitlines()) == 1  # SLURM starts the 8 x 2 processes


def _hydra_mode(mode: RunMode, launcher_target: str):
    cfg = _compose(["trainer=ddp", "trainer.devices=2"])
    with open_dict(cfg):
        cfg.hydra.mode = mode
        cfg.hydra.launcher = {"_target_": launcher_target}
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize("mode, launcher, allowed", [
    (RunMode.MULTIRUN, "hydra._internal.core_plugins.basic_launcher.BasicLauncher", False),
    (RunMode.MULTIRUN, "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", False),
    (RunMode.MULTIRUN, SLURM_LAUNCHER, True),  # each job is a SLURM job: srun starts the ranks
    (RunMode.RUN, "hydra._internal.core_plugins.basic_launcher.BasicLauncher", True),
])
def test_ddp_under_a_sweep_only_with_the_slurm_launcher(mode, launcher, allowed):
    cfg = _hydra_mode(mode, launcher)
    if allowed:
        check_launch(cfg)
    else:
        with pytest.raises(UserError, match="launcher=slurm"):
            check_launch(cfg)


def test_only_slurm_task_0_claims_the_run_directory(monkeypatch):
    """srun starts every rank itself (no LOCAL_RANK): SLURM_PROCID says which one is rank 0."""
    for name in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert is_launcher_rank()
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert is_launcher_rank()
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert not is_launcher_rank()


# A stand-in for SLURM's sbatch, srun and sacct, enough for submitit: sbatch returns a job id at once and runs each
# job's script in the background (once submitit has moved the job's pickle into place); srun starts
# ntasks-per-node processes with the variables SLURM gives each task; sacct reports the jobs that ended.
FAKE_SBATCH = r'''
import os, re, subprocess, sys, time
script = open(sys.argv[1]).read()
flags = dict(re.findall(r"#SBATCH --([\w-]+)=(\S+)", script))
folder = re.search(r"submitit.core._submit (\S+)", script).group(1).strip("'")
if "array" in flags:  # one job per array index, each with its own SLURM_JOB_ID
    first, last = (int(x) for x in flags["array"].split("%")[0].split("-"))
    jobs = [(f"4242_{i}", {"SLURM_JOB_ID": str(5000 + i), "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": str(i)})
            for i in range(first, last + 1)]
else:
    jobs = [("4242", {"SLURM_JOB_ID": "4242"})]
if os.fork() == 0:  # the "cluster": runs after sbatch has answered, off submitit's pipe
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    for job, variables in jobs:
        pickle = os.path.join(folder.replace("%j", job), f"{job}_submitted.pkl")
        for _ in range(600):
            if os.path.exists(pickle):
                break
            time.sleep(0.1)
        env = os.environ | variables | {
            "SLURM_JOB_NAME": flags["job-name"], "SLURM_NNODES": flags["nodes"], "SLURM_JOB_NUM_NODES": flags["nodes"],
            "SLURM_NTASKS_PER_NODE": flags["ntasks-per-node"], "SLURM_NODELIST": "127.0.0.1",
            "SLURM_JOB_NODELIST": "127.0.0.1"}
        code = subprocess.run(["bash", sys.argv[1]], env=env).returncode
        with open(os.path.join(os.path.dirname(sys.argv[0]), "sacct.txt"), "a") as states:
            states.write(f"{job}|{'COMPLETED' if code == 0 else 'FAILED'}|127.0.0.1\n")
    os._exit(0)
print("Submitted batch job 4242")
'''
FAKE_SRUN = r'''
import os, subprocess, sys, time
args, files = sys.argv[1:], {}
while args[0].startswith("--"):
    option = args.pop(0)
    if option in ("--output", "--error"):
        files[option] = args.pop(0)
tasks = int(os.environ["SLURM_NTASKS_PER_NODE"]) * int(os.environ["SLURM_NNODES"])
running = []
for rank in range(tasks):
    def path(pattern):
        for key, name in (("%A", "SLURM_ARRAY_JOB_ID"), ("%a", "SLURM_ARRAY_TASK_ID"), ("%j", "SLURM_JOB_ID")):
            pattern = pattern.replace(key, os.environ.get(name, ""))
        pattern = pattern.replace("%t", str(rank))
        os.makedirs(os.path.dirname(pattern), exist_ok=True)
        return open(pattern, "a")
    env = os.environ | {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
                        "SLURM_NTASKS": str(tasks)}
    running.append(subprocess.Popen(args, env=env, stdout=path(files["--output"]), stderr=path(files["--error"])))
codes = {}
while len(codes) < len(running):
    for rank, task in enumerate(running):
        if rank not in codes and task.poll() is not None:
            codes[rank] = task.returncode
            if task.returncode:  # as srun --kill-on-bad-exit: one failed task ends the job
                for other in running:
                    if other.poll() is None:
                        other.kill()
    time.sleep(0.2)
sys.exit(1 if any(codes.values()) else 0)
'''
# The states of the jobs that ended, so that submitit sees a job that failed without writing its result.
FAKE_SACCT = r'''
import os, sys
states = os.path.join(os.path.dirname(sys.argv[0]), "sacct.txt")
print("JobID|State|NodeList")
if os.path.exists(states):
    print(open(states).read(), end="")
'''


def _fake_slurm(bin_dir: Path, monkeypatch) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, code in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("sacct", FAKE_SACCT)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{code}")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


@needs_submitit
@pytest.mark.slow
def test_ddp_job_of_a_sweep_on_fake_slurm(data_dir, tmp_path, monkeypatch):
    """launcher=slurm with trainer=ddp end to end, SLURM's two commands faked: the sweep submits one job of two
    tasks, Lightning takes both ranks from SLURM, check_launch lets DDP through and task 0 alone owns the run."""
    _fake_slurm(tmp_path / "bin", monkeypatch)
    run = run_cli("train.py", "launcher=slurm", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                  "seed=3", *_common(data_dir, tmp_path / "out"), *TINY, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (path,) = sorted((tmp_path / "out").rglob("results.json"))
    results = json.loads(path.read_text())
    assert results["devices"] == 2 and results["global_batch_size"] == 16 and results["seed"] == 3
    logs = sorted((tmp_path / "out").rglob("4242_*_log.out"))
    assert [p.name for p in logs] == ["4242_0_log.out", "4242_1_log.out"]  # one log per SLURM task
    assert f"val mIoU: {results['best_val_mIoU']:.2f}" in logs[0].read_text()  # rank 0 reports
