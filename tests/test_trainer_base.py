"""The shared trainer base and train.py: schedule, checkpoints, resume, precision, errors."""

import glob
import math
import os
import shutil

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import trainers
from tests.conftest import ROOT
from tests.dataset_layouts import make_oxford_pets
from tests.e2e import TINY_OPTS, randomise_images, read_log, result_accuracy, run_train
from tools.protocols import DG_TARGETS, REGISTERED
from trainers.runs.schedule import EpochLRSchedule

PETS = "configs/datasets/oxford_pets.yaml"
COOP = "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml"


# ----------------------------------------------------------------------------- schedule


def dassl_reference_lrs(base_lr, max_epoch, warmup, warmup_lr, successor=None):
    """Dassl's ConstantWarmupScheduler(recount) around a torch scheduler (CosineAnnealingLR by
    default, as Dassl builds it), replayed by hand (Dassl's own class cannot be built on torch
    2.14)."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base_lr)
    inner = (successor or (lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, float(max_epoch))))(opt)
    lrs, last_epoch = [], 0
    for _ in range(max_epoch):
        lrs.append(warmup_lr if last_epoch < warmup else inner.get_last_lr()[0])
        # Dassl's step(): before warm-up ends its own counter advances; afterwards the successor's.
        if last_epoch >= warmup:
            inner.step()
        else:
            last_epoch += 1
    return lrs


def schedule_lrs(max_epoch, warmup, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))], lr=0.002)
    sched = EpochLRSchedule(opt, max_epoch, warmup, "constant", 1e-5, **kw)
    got = []
    for _ in range(max_epoch):
        got.append(opt.param_groups[0]["lr"])
        sched.step()
    return got


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize("max_epoch, warmup", [(10, 1), (25, 3), (5, 0)])
def test_learning_rate_per_epoch_matches_dassl(max_epoch, warmup):
    got = schedule_lrs(max_epoch, warmup)
    expected = dassl_reference_lrs(0.002, max_epoch, warmup, 1e-5)
    assert got == pytest.approx(expected, rel=1e-12)
    if warmup:
        assert got[:warmup] == [1e-5] * warmup and got[warmup] == 0.002
    assert got[-1] == pytest.approx(
        0.002 * (1 + math.cos(math.pi * (max_epoch - 1 - warmup) / max_epoch)) / 2
    )


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize(
    "policy, stepsize, successor",
    [
        ("single_step", (4,), lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5)),
        ("single_step", (2, 5), lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5)),
        ("single_step", (-1,), lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=12, gamma=0.5)),
        (
            "multi_step",
            (3, 7),
            lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[3, 7], gamma=0.5),
        ),
    ],
)
def test_step_schedules_match_dassl(policy, stepsize, successor):
    for warmup in (0, 2):
        got = schedule_lrs(12, warmup, policy=policy, stepsize=stepsize, gamma=0.5)
        assert got == pytest.approx(dassl_reference_lrs(0.002, 12, warmup, 1e-5, successor), rel=1e-12)
    # A step size <= 0 means one step for the whole run: no decay within it.
    assert (len(set(got[2:])) > 1) == (stepsize[-1] > 0)


def test_schedule_policy_errors():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="OPTIM.LR_SCHEDULER 'linear' is not supported"):
        EpochLRSchedule(opt, 10, policy="linear")
    with pytest.raises(ValueError, match="OPTIM.STEPSIZE .* positive milestone"):
        EpochLRSchedule(opt, 10, policy="multi_step", stepsize=(-1,))


def test_schedule_keeps_group_multipliers_and_resumes():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.SGD([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.0002}], lr=0.002)
    sched = EpochLRSchedule(opt, 10, 1, "constant", 1e-5)
    assert sched.get_last_lr() == [1e-5, 1e-5]
    for _ in range(3):
        sched.step()
    assert sched.get_last_lr()[1] == pytest.approx(sched.get_last_lr()[0] / 10)
    again = EpochLRSchedule(opt, 10, 1, "constant", 1e-5)
    again.load_state_dict(sched.state_dict())
    assert again.get_last_lr() == sched.get_last_lr()


# ----------------------------------------------------------------------------- train.py config


def test_unknown_trainer_dataset_and_key_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown trainer 'CoOOp': choose one of .*CoOp"):
        trainers.make_cfg("CoOOp")
    bad = tmp_path / "bad.yaml"
    bad.write_text("DATASET:\n  NAME: OxfordPet\n")
    with pytest.raises(ValueError, match="Unknown dataset 'OxfordPet'.*OxfordPets"):
        trainers.make_cfg("CoOp", str(bad))
    with pytest.raises(ValueError, match=r"vit_b16_ep25.yaml: Non-existent config key: TRAINER.MOCOOP"):
        trainers.make_cfg("CoOp", PETS, "configs/trainers/MoCoOp/paper_vit_b16_ep25.yaml")
    with pytest.raises(ValueError, match="command-line options: Non-existent key: TRAINER.COOP.NCTX"):
        trainers.make_cfg("CoOp", PETS, opts=["TRAINER.COOP.NCTX", "4"])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        trainers.make_cfg("CoOp", config_file="missing.yaml")


def test_bad_values_fail_when_the_config_is_made():
    with pytest.raises(ValueError, match="TRAINER.PREC must be one of"):
        trainers.make_cfg("CoOp", PETS, opts=["TRAINER.PREC", "fp8"])
    with pytest.raises(
        ValueError, match=r"TRAINER.MOCOOP.TOPK must be between 1 and the number of experts \(6\)"
    ):
        trainers.make_cfg(
            "MoCoOp", PETS, "configs/trainers/MoCoOp/paper_vit_b16_ep25.yaml", ["TRAINER.MOCOOP.TOPK", "7"]
        )


@pytest.mark.parametrize(
    "trainer, config, key",
    [
        ("CoOp", COOP, "TRAINER.COOP.N_CTX"),
        ("CoCoOp", "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml", "TRAINER.COCOOP.N_CTX"),
        ("KgCoOp", "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml", "TRAINER.KGCOOP.N_CTX"),
        ("MoPD", "configs/trainers/MoPD/vit_b16_c4_bs128/oxford_pets.yaml", "TRAINER.MOPD.N_CTX"),
    ],
)
def test_context_length_must_be_positive(trainer, config, key):
    for n_ctx in ("0", "-4"):
        with pytest.raises(
            ValueError, match=rf"{key} must be at least 1 \(learnable context vectors\), not {n_ctx}"
        ):
            trainers.make_cfg(trainer, PETS, config, [key, n_ctx])


def test_flags_come_after_the_files_and_before_the_options():
    cfg = trainers.make_cfg(
        "CoOp",
        PETS,
        COOP,
        ["OUTPUT_DIR", "from_opts"],
        root="data",
        output_dir="from_flag",
        seed=3,
        backbone="x.pt",
    )
    assert (cfg.DATASET.ROOT, cfg.OUTPUT_DIR, cfg.SEED, cfg.MODEL.BACKBONE.NAME) == (
        "data",
        "from_opts",
        3,
        "x.pt",
    )
    assert cfg.OPTIM.MAX_EPOCH == 50 and cfg.is_frozen()


def test_variant_configs_inherit_imagenet_prompts():
    imagenet = trainers.make_cfg("MoCoOp", "configs/datasets/imagenet.yaml")
    for name in DG_TARGETS:
        variant = trainers.make_cfg("MoCoOp", f"configs/datasets/{name}.yaml")
        assert variant.DATASET.NAME == REGISTERED[name]
        assert variant.DATASET.PROMPTS == imagenet.DATASET.PROMPTS
        assert len(variant.DATASET.PROMPTS.EXPERT_GROUPS) == 20


def test_seed_zero_is_kept():
    assert trainers.make_cfg("CoOp", PETS, seed=0).SEED == 0
    assert trainers.make_cfg("CoOp", PETS).SEED == -1


# ----------------------------------------------------------------------------- in-process trainer


@pytest.fixture(scope="module")
def pets5(tmp_path_factory):
    """Like conftest's `pets`, with 5 test images per class (several test batches of 4)."""
    root = tmp_path_factory.mktemp("data")
    generated = make_oxford_pets(str(root), num_classes=6, per_class=(4, 2, 5))
    randomise_images(generated.dataset_dir)
    return str(root), generated


def build_trainer(root, clip_path, output_dir, *opts, trainer="CoOp", config=COOP):
    options = ["MODEL.BACKBONE.NAME", clip_path, *TINY_OPTS, "DATASET.NUM_SHOTS", "4", *opts]
    cfg = trainers.make_cfg(trainer, PETS, config, options, root=root, output_dir=str(output_dir), seed=1)
    return trainers.build_trainer(cfg)


def test_evaluation_encodes_prompts_once(pets5, tiny_clip_path, tmp_path, monkeypatch):
    trainer = build_trainer(pets5[0], tiny_clip_path, tmp_path, "DATALOADER.TEST.BATCH_SIZE", "4")
    assert len(trainer.test_loader) > 2
    calls = []
    encode = trainer.model.text_encoder.forward
    monkeypatch.setattr(trainer.model.text_encoder, "forward", lambda *a: calls.append(1) or encode(*a))
    trainer.test()
    assert len(calls) == 1


@pytest.mark.parametrize("prec", ["fp32", "fp16", "amp"])
def test_precision_modes_train(pets5, tiny_clip_path, tmp_path, prec):
    trainer = build_trainer(pets5[0], tiny_clip_path, tmp_path, "TRAINER.PREC", prec)
    expected = {"fp32": torch.float32, "fp16": torch.float16, "amp": torch.float32}[prec]
    assert trainer.model.image_encoder.conv1.weight.dtype == expected
    assert trainer.model.prompt_learner.ctx.dtype == torch.float32
    before = trainer.model.prompt_learner.ctx.detach().clone()
    trainer.num_batches, trainer.batch_idx = 10, 0
    summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
    assert math.isfinite(summary["loss"]) and "acc" in summary
    assert not torch.equal(before, trainer.model.prompt_learner.ctx)


# ----------------------------------------------------------------------------- subprocess runs


def coop_run(root, clip_path, out, *extra, seed=0, check=True):
    return run_train(
        "--seed",
        seed,
        "--trainer",
        "CoOp",
        "--config-file",
        COOP,
        "--root",
        root,
        "--dataset-config-file",
        PETS,
        "--output-dir",
        out,
        "MODEL.BACKBONE.NAME",
        clip_path,
        *TINY_OPTS,
        "DATASET.NUM_SHOTS",
        "4",
        "OPTIM.MAX_EPOCH",
        "2",
        *extra,
        check=check,
    )


@pytest.fixture(scope="module")
def straight_run(pets5, tiny_clip_path, tmp_path_factory):
    """A 2-epoch CoOp run that was never interrupted."""
    out = str(tmp_path_factory.mktemp("coop") / "straight")
    coop_run(pets5[0], tiny_clip_path, out)
    return out


def interrupted_copy(run_dir, dst, epoch):
    """`dst` as `run_dir` was after `epoch`: only that epoch's checkpoint (logs left out)."""
    os.makedirs(os.path.join(dst, "prompt_learner"))
    name = f"model.pth.tar-{epoch}"
    shutil.copy(os.path.join(run_dir, "prompt_learner", name), os.path.join(dst, "prompt_learner"))
    with open(os.path.join(dst, "prompt_learner", "checkpoint"), "w") as f:
        f.write(f"{name}\n")
    return dst


@pytest.mark.e2e
def test_interrupted_run_resumes_exactly(pets5, straight_run, tiny_clip_path, tmp_path):
    assert "Setting fixed seed: 0" in read_log(straight_run)
    resumed = interrupted_copy(straight_run, str(tmp_path / "resumed"), 1)
    coop_run(pets5[0], tiny_clip_path, resumed)
    log = read_log(resumed)
    assert "Resumed" in log and "epoch [1/2]" not in log and "epoch [2/2]" in log
    final = [
        torch.load(os.path.join(d, "prompt_learner", "model.pth.tar-2"), weights_only=True)
        for d in (straight_run, resumed)
    ]
    assert torch.equal(
        final[0]["state_dict"]["prompt_learner.ctx"], final[1]["state_dict"]["prompt_learner.ctx"]
    )
    assert result_accuracy(log) == result_accuracy(read_log(straight_run))


@pytest.mark.e2e
def test_output_dir_with_another_config_is_refused(pets5, straight_run, tiny_clip_path, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(straight_run, out)
    proc = coop_run(pets5[0], tiny_clip_path, out, "OPTIM.LR", "0.1", check=False)
    assert proc.returncode != 0 and "holds a run with a different configuration" in proc.stderr


@pytest.mark.e2e
def test_unfinished_run_is_not_evaluated_silently(pets5, straight_run, tiny_clip_path, tmp_path):
    out = interrupted_copy(straight_run, str(tmp_path / "run"), 1)
    proc = coop_run(
        pets5[0], tiny_clip_path, str(tmp_path / "eval"), "--eval-only", "--model-dir", out, check=False
    )
    assert proc.returncode != 0 and "unfinished run (epoch 1 of 2)" in proc.stderr


@pytest.mark.e2e
def test_zeroshot_clip_matches_direct_clip(pets5, tiny_clip, tiny_clip_path, tmp_path):
    import json

    from clip.clip import _transform
    from PIL import Image

    from clipprompt.templates import fill

    root, generated = pets5
    out = str(tmp_path / "zs")
    run_train(
        "--trainer",
        "ZeroshotCLIP",
        "--config-file",
        "configs/trainers/ZeroshotCLIP/vit_b16.yaml",
        "--root",
        root,
        "--dataset-config-file",
        PETS,
        "--output-dir",
        out,
        "--eval-only",
        "MODEL.BACKBONE.NAME",
        tiny_clip_path,
        *TINY_OPTS,
    )
    with open(os.path.join(generated.dataset_dir, "split_zhou_OxfordPets.json")) as f:
        test_rows = json.load(f)["test"]
    preprocess = _transform(32)
    images = torch.stack(
        [preprocess(Image.open(os.path.join(generated.dataset_dir, "images", r[0]))) for r in test_rows]
    )
    labels = torch.tensor([r[1] for r in test_rows])
    template = "a photo of a {}, a type of pet."
    import clip

    with torch.no_grad():
        text = tiny_clip.encode_text(clip.tokenize([fill(template, c) for c in generated.classnames]))
        image = tiny_clip.encode_image(images)
    logits = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).t()
    direct = 100.0 * (logits.argmax(1) == labels).float().mean().item()
    assert result_accuracy(read_log(out)) == pytest.approx(round(direct, 1))


@pytest.mark.e2e
def test_best_val_deploys_the_best_checkpoint(pets5, tiny_clip_path, tmp_path):
    out = str(tmp_path / "run")
    coop_run(pets5[0], tiny_clip_path, out, "OPTIM.MAX_EPOCH", "3", "TEST.FINAL_MODEL", "best_val")
    log = read_log(out)
    best = torch.load(os.path.join(out, "prompt_learner", "model-best.pth.tar"), weights_only=True)
    assert f"model-best.pth.tar (epoch {best['epoch']})" in log.split("Deploy the model with the best val")[1]


def test_frozen_clip_stays_in_eval_mode_while_training(pets5, tmp_path):
    from clipprompt.clip_loading import build_tiny_clip, save_clip_state_dict

    resnet = save_clip_state_dict(
        build_tiny_clip(vision_layers=(1, 1, 1, 1), vision_width=16), str(tmp_path / "rn.pt")
    )
    trainer = build_trainer(pets5[0], resnet, tmp_path / "out")
    bn = next(m for m in trainer.model.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    trainer.set_model_mode("train")
    assert trainer.model.training and trainer.model.prompt_learner.training
    assert not trainer.model.image_encoder.training and not trainer.model.text_encoder.training
    trainer.num_batches, trainer.batch_idx = 10, 0
    trainer.forward_backward(next(iter(trainer.train_loader_x)))
    assert torch.equal(before, bn.running_mean)


TRAINER_CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs/trainers/*/**/*.yaml"), recursive=True)
)


@pytest.mark.parametrize("config", TRAINER_CONFIGS)
def test_every_trainer_config_loads(config):
    trainer = config.split(os.sep)[2]
    cfg = trainers.make_cfg(trainer, PETS, os.path.join(ROOT, config))
    assert cfg.TRAINER.NAME == trainer and cfg.OPTIM.MAX_EPOCH > 0


def test_base_list_merges_in_order():
    cfg = trainers.make_cfg("MoCoOp", PETS, "configs/trainers/MoCoOp/demo.yaml")
    assert (
        cfg.OPTIM.LR == 0.064 and cfg.OPTIM.MAX_EPOCH == 30 and cfg.OPTIM.WARMUP_EPOCH == 1
    )  # demo base last
    assert cfg.TRAINER.MOCOOP.ROUTER_TARGET == "mean" and cfg.INPUT.SIZE == (64, 64)


def test_clip_is_loaded_onto_the_trainer_device(pets5, tiny_clip_path, tmp_path):
    """Prompt assemblers hold CLIP's token embedding outside their module tree, so CLIP must be
    on the device before they are built (a stand-in device shows where tensors go)."""
    trainer = build_trainer(pets5[0], tiny_clip_path, tmp_path)
    trainer.device = torch.device("meta")
    clip_model = trainer.load_clip()
    assert {p.device.type for p in clip_model.parameters()} == {"meta"}
